import OrderPipelineCore
import Testing

/// The create recipe over a batch (the intake's group commit): one transaction, one answer per order in order,
/// and each order written or refused exactly as if it had been created alone.
@Suite(.timeLimit(.minutes(5))) struct StoreCreateBatchTests {
    @Test("a batch creates, replays and refuses per order, and writes only what it creates", arguments: Implementation.available)
    func mixedBatch(_ implementation: Implementation) async throws {
        try await withStore(implementation) { store in
            let first = newOrder(1, key: "k-1")
            let other = newOrder(5, key: "k-5")
            #expect(await store.perform(.createOrders([first, other])) == .committed(.ordersCreated([.created(first.order), .created(other.order)])))
            var traced = newOrder(2)
            traced.event.traceParent = TraceParent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            let batch = [
                traced,
                newOrder(3, key: "k-1"),  // a retry of order 1 with a fresh id: replayed
                newOrder(6, key: "k-5", name: "Jane Doe"),  // key 5 with another body: refused
                newOrder(7),
            ]
            #expect(
                await store.perform(.createOrders(batch))
                    == .committed(.ordersCreated([.created(traced.order), .replayed(first.order), .keyReused, .created(newOrder(7).order)])))
            let rows = await store.perform(claim()).claimed
            #expect(rows.map(\.event) == [first.event, other.event, traced.event, newOrder(7).event])
            #expect(await store.history(of: orderID(3)).isEmpty)
            #expect(await store.history(of: orderID(6)).isEmpty)
            #expect(await store.history(of: orderID(7)) == [StatusChange(from: nil, to: .pending)])

            // Re-issued whole (after an unknown outcome): every order finds its key and nothing more is written.
            #expect(
                await store.perform(.createOrders(batch))
                    == .committed(.ordersCreated([.replayed(traced.order), .replayed(first.order), .keyReused, .replayed(newOrder(7).order)])))
            #expect(await store.perform(claim(owner: "relay-2")).claimed.isEmpty)
            #expect(await store.perform(.createOrders([])) == .committed(.ordersCreated([])))
        }
    }

    @Test("a batch locks its keys in key order: waiting on one key, it holds none of the later ones", arguments: Implementation.transactional)
    func keysLockedInKeyOrder(_ implementation: Implementation) async throws {
        try await withStore(implementation) { store in
            let postgres = try #require(store as? PostgresUnderTest)
            let holder = try await store.openSession()
            #expect(await holder.performHoldingOpen(.createOrders([newOrder(1, key: "key-a")])) == .committed(.ordersCreated([.created(newOrder(1).order)])))
            let waiter = try #require(try await store.openSession() as? PostgresSessionUnderTest)
            async let blocked = waiter.perform(.createOrders([newOrder(2, key: "key-b"), newOrder(3, key: "key-a")]))
            try await postgres.waitUntilWaitingOnLock(pid: waiter.pid)
            // key-b is free: had the batch taken it first, this create would wait behind it, and two such batches
            // naming the keys in opposite orders would deadlock.
            #expect(await store.perform(.createOrders([newOrder(4, key: "key-b")])) == .committed(.ordersCreated([.created(newOrder(4).order)])))
            await holder.kill()
            #expect(await blocked == .committed(.ordersCreated([.replayed(newOrder(4).order), .created(newOrder(3).order)])))
            await waiter.kill()  // a session left open keeps ConnectionGate (and every test behind it) waiting
        }
    }
}
