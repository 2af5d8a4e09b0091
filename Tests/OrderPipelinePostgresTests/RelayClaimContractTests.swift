import OrderPipelineCore
import Testing

/// The claim rules the relay's pipelining relies on: two batches of one relay in the air at once.
@Suite("Store contract: pipelined claims of one relay", .serialized)
struct RelayClaimContractTests {
    @Test("the owner's second claim skips the next row of an order whose head it holds unsettled", arguments: Implementation.available)
    func headOfLineAcrossOneOwnersBatches(_ implementation: Implementation) async throws {
        try await withStore(implementation) { store in
            let x = newOrder(1), y = newOrder(2)
            _ = await store.perform(.createOrders([x]))
            _ = await store.perform(.transition(OrderTransition(orderID: x.order.id, to: .failed, at: at(0.5), reason: "out of stock")))
            let first = await store.perform(claim(owner: "relay-1", limit: 1)).claimed
            #expect(first.map(\.event.id) == [x.event.id])
            _ = await store.perform(.createOrders([y]))
            // Batch two of the same relay, while batch one (x's head) is in the air: y only, not x's OrderFailed.
            let second = await store.perform(claim(owner: "relay-1")).claimed
            #expect(second.map(\.event.orderID) == [y.order.id])
            // Batch two is settled first; x's next row still waits for x's head.
            _ = await store.perform(.settleOutbox(OutboxSettlement(outbox: .kafka, owner: "relay-1", published: second.map(\.sequence))))
            #expect(await store.perform(claim(owner: "relay-1")).claimed.isEmpty)
            let settled = OutboxSettlement(
                outbox: .kafka, owner: "relay-1", published: first.map(\.sequence),
                positions: [first[0].sequence: RecordPosition(partition: 2, offset: 117)])
            #expect(await store.perform(.settleOutbox(settled)) == .committed(.settled(rows: 1)))
            #expect(await store.perform(claim(owner: "relay-1")).claimed.map(\.event.type) == [.orderFailed])
        }
    }
}
