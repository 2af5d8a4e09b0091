import OrderPipelineCore
import Testing

/// The fulfilment recipe over a batch: one transaction whose records are handled in order, each with its own answer,
/// exactly as if they had been fulfilled one after another.
@Suite(.timeLimit(.minutes(5))) struct StoreFulfilBatchTests {
    @Test(
        "a batch answers per record in order, and fulfils, skips, dedupes and records as a serial run would",
        arguments: Implementation.available)
    func mixedBatch(_ implementation: Implementation) async throws {
        try await withStore(implementation) { store in
            for n: UInt64 in 1...3 { _ = await store.perform(.createOrders([newOrder(n)])) }
            _ = await store.perform(.transition(OrderTransition(orderID: orderID(2), to: .failed, at: at(1))))
            let earlier = Fulfilment(envelope: created(3).envelope, at: at(1))
            _ = await store.perform(.fulfil([earlier]))  // delivered before: its inbox row exists
            let failed = envelope(PipelineEvent(type: .orderFailed, orderID: orderID(2), at: at(1), status: .failed))
            let batch = [
                created(1), created(2), created(3), created(9), Fulfilment(envelope: failed, at: at(2)),
                created(1),  // the same record twice in one batch (a relay re-sent it): the first one counts
            ]
            #expect(
                await store.perform(.fulfil(batch))
                    == .committed(
                        .fulfilments([
                            .fulfilled, .skipped(.failed), .duplicate, .orderMissing, .recorded, .duplicate,
                        ])))
            #expect(await store.history(of: orderID(1)).map(\.to) == [.pending, .processing, .fulfilled])
            #expect(await store.history(of: orderID(2)).map(\.to) == [.pending, .failed])
            // The Service Bus rows of the fulfilled orders, in record order (3 was fulfilled by the earlier batch).
            let rows = await store.perform(claim(.serviceBus)).claimed
            #expect(rows.map(\.event.orderID) == [orderID(3), orderID(1)])
            #expect(rows.last?.event == created(1).fulfilmentEvent)

            // Re-issued whole (after an unknown outcome): every record finds its inbox row; nothing is written. The
            // order this batch fulfilled says so, once (counted now); the redelivery of 3 and the repeat of 1 stay
            // duplicates.
            #expect(
                await store.perform(.fulfil(batch))
                    == .committed(.fulfilments([.fulfilledByEarlierAttempt, .duplicate, .duplicate, .duplicate, .duplicate, .duplicate])))
            #expect(await store.history(of: orderID(1)).filter { $0.to == .fulfilled }.count == 1)
            #expect(await store.perform(.fulfil([])) == .committed(.fulfilments([])))
        }
    }

    @Test("the Service Bus rows of one batch keep the records' order and each its own trace", arguments: Implementation.available)
    func outboxRowsInRecordOrder(_ implementation: Implementation) async throws {
        try await withStore(implementation) { store in
            let numbers: [UInt64] = [5, 2, 7, 1]
            for n in numbers { _ = await store.perform(.createOrders([newOrder(n)])) }
            var batch = numbers.map(created)
            batch[1].fulfilmentEvent.traceParent = TraceParent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            #expect(await store.perform(.fulfil(batch)) == .committed(.fulfilments(Array(repeating: .fulfilled, count: 4))))
            let rows = await store.perform(claim(.serviceBus)).claimed
            #expect(rows.map(\.event.orderID) == numbers.map(orderID))
            #expect(rows.map(\.event.traceParent) == batch.map(\.fulfilmentEvent.traceParent))
        }
    }
}
