import OrderPipelineCore
import Testing

/// The claim rules the relay's pipelining relies on: two batches of one relay in the air at once.
@Suite("Store contract: pipelined claims of one relay", .serialized, .timeLimit(.minutes(5)))
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

    @Test("a claim says whether rows wait behind the owner's own claimed rows, and only when it was not full", arguments: Implementation.available)
    func heldBackBehindTheOwnersRows(_ implementation: Implementation) async throws {
        try await withStore(implementation) { store in
            let x = newOrder(1), y = newOrder(2), z = newOrder(3)
            _ = await store.perform(.createOrders([x]))
            _ = await store.perform(.transition(OrderTransition(orderID: x.order.id, to: .failed, at: at(0.5), reason: "out of stock")))
            // A full claim does not look.
            let full = await store.perform(claim(owner: "relay-1", limit: 1))
            #expect(full.claimed.map(\.event.id) == [x.event.id] && full.heldBack == false)
            _ = await store.perform(.createOrders([y]))
            // x's OrderFailed waits behind x's head, which relay-1 held before this claim.
            let second = await store.perform(claim(owner: "relay-1"))
            #expect(second.claimed.map(\.event.orderID) == [y.order.id] && second.heldBack == true)
            // Not relay-2's: it holds nothing.
            let other = await store.perform(claim(owner: "relay-2"))
            #expect(other.claimed.isEmpty && other.heldBack == false)
            #expect(await store.perform(claim(owner: "relay-1")).heldBack == true, "an empty claim reports it too")
            let settled = await store.perform(.settleOutbox(OutboxSettlement(outbox: .kafka, owner: "relay-1", published: [full.claimed[0].sequence])))
            #expect(settled == .committed(.settled(rows: 1)))
            let freed = await store.perform(claim(owner: "relay-2"))
            #expect(freed.claimed.map(\.event.type) == [.orderFailed] && freed.heldBack == false)

            // A head taken by this very claim counts; a head in retry backoff (unclaimed) does not.
            _ = await store.perform(.createOrders([z]))
            _ = await store.perform(.transition(OrderTransition(orderID: z.order.id, to: .failed, at: at(0.5), reason: "out of stock")))
            let taken = await store.perform(claim(owner: "relay-3"))
            #expect(taken.claimed.map(\.event.id) == [z.event.id] && taken.heldBack == true)
            let retry = OutboxSettlement(
                outbox: .kafka, owner: "relay-3", retries: [.init(sequence: taken.claimed[0].sequence, delay: .seconds(60), error: "down")])
            #expect(await store.perform(.settleOutbox(retry)) == .committed(.settled(rows: 1)))
            let waiting = await store.perform(claim(owner: "relay-3"))
            #expect(waiting.claimed.isEmpty && waiting.heldBack == false)
        }
    }
}

extension StoreResult {
    /// Whether a claim reported rows held back behind its owner.
    var heldBack: Bool? {
        if case .committed(.claimed(_, let heldBack)) = self { return heldBack }
        Issue.record("expected a claim, got \(self)")
        return nil
    }
}
