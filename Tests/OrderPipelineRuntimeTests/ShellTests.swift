import Logging
import OrderPipelineCore
import OrderPipelineRuntime
import OrderPipelineTestSupport
import Synchronization
import Testing

func rows(_ count: Int) -> [OutboxMessage] {
    (1...count).map { n in Sample.row(Int64(n), order: Sample.orderID(UInt64(n)), at: Instant(microseconds: 0)) }
}

let logger = Logger(label: "test.shell")

@Suite("Production shells with fake performers")
struct ShellTests {
    /// Runs a relay in the production loop until `done` holds (or 60 s pass), then stops it.
    func runRelay(
        store: FakeOutboxStore, publisher: some OutboxPublishing, outbox: OutboxKind = .serviceBus, until done: @escaping @Sendable () -> Bool
    ) async {
        let loop = MachineLoop()
        var configuration = OutboxRelay.Configuration(outbox: outbox, owner: "relay-test")
        configuration.batchSize = 7
        configuration.pollInterval = .milliseconds(20)
        configuration.backoff = Backoff(base: .milliseconds(5), cap: .milliseconds(50))
        let relay = OutboxRelay(configuration: configuration, seed: 1)
        await withDiscardingTaskGroup { group in
            group.addTask { await loop.run(relay, performers: Performers(store: store, publisher: publisher), observer: NoteObserver(logger: logger, metrics: PipelineMetrics())) }
            let clock = ContinuousClock()
            // Generous: other suites running in parallel may hold the cooperative threads for a while.
            let deadline = clock.now + .seconds(60)
            while !done(), clock.now < deadline { try? await Task.sleep(for: .milliseconds(5)) }
            loop.stop()
        }
    }

    @Test("MachineLoop drives the relay: every row published once and settled as published")
    func relayLoopPublishesEverything() async {
        let store = FakeOutboxStore(rows: rows(50))
        let publisher = FakePublisher()
        await runRelay(store: store, publisher: publisher) { store.state.withLock { $0.published.count } == 50 }
        #expect(publisher.sent.withLock { $0.sorted() } == Array(1...50))
        #expect(store.state.withLock { $0.published.sorted() } == Array(1...50))
    }

    @Test("a transient refusal is retried by the relay in the production loop, not dead-lettered")
    func transientRefusalIsRetried() async {
        let store = FakeOutboxStore(rows: rows(3))
        let publisher = FakePublisher(refusals: 2)
        // Retried rows go back to the store's queue only through the relay's settlement; this fake hands each
        // row out once, so the refused ones show up as settled retries, never as published or rejected.
        await runRelay(store: store, publisher: publisher) { store.state.withLock { $0.published.count + $0.retried.count } == 3 }
        #expect(publisher.sent.withLock { $0 } == [3])
        #expect(store.state.withLock { $0.published } == [3])
        #expect(store.state.withLock { $0.retried.sorted() } == [1, 2], "server-busy is retried")
        #expect(store.state.withLock { $0.rejected }.isEmpty, "nothing dead-lettered")
    }

    @Test("IntakeShell: a create whose COMMIT outcome was unknown is re-issued and answered with the stored order")
    func intakeReissuesUnknownOutcome() async throws {
        final class Store: StorePerforming {
            let calls = Mutex(0)
            func perform(_ command: StoreCommand) async -> StoreResult {
                guard case .createOrders(let batch) = command, let new = batch.first else { return .failed(.unavailable("unexpected")) }
                let call = calls.withLock {
                    $0 += 1; return $0
                }
                return call == 1 ? .unknown : .committed(.ordersCreated([.replayed(new.order)]))
            }
        }
        let store = Store()
        let shell = IntakeShell(store: store, logger: logger)
        let body = Array(#"{"customerName":"Ada","customerEmail":"ada@example.com","items":[{"productName":"Widget","quantity":1,"unitPrice":9.99}]}"#.utf8)
        guard case .replayed(let order) = await shell.createOrder(body: body, idempotencyKey: "k-1") else {
            Issue.record("expected the stored order after the re-issue"); return
        }
        #expect(order.customerName == "Ada")
        #expect(store.calls.withLock { $0 } == 2)
        #expect(await shell.changeStatus(order.id, body: Array("not json".utf8)) == .rejected(.malformed("the body is not valid JSON")))
    }

    @Test("IntakeShell: creates that arrive while the create transactions are busy share the next one; each request gets its own order")
    func intakeGroupCommit() async throws {
        /// Holds the first two transactions until the test opens the gate (nil once open: a transaction that comes
        /// later is not held); records the size of every batch.
        final class Store: StorePerforming {
            let batches = Mutex<[Int]>([])
            let held = Mutex<[CheckedContinuation<Void, Never>]?>([])
            func perform(_ command: StoreCommand) async -> StoreResult {
                guard case .createOrders(let batch) = command else { return .failed(.unavailable("unexpected")) }
                let first = batches.withLock {
                    $0.append(batch.count)
                    return $0.count <= 2
                }
                if first {
                    await withCheckedContinuation { gate in
                        if !held.withLock({ $0?.append(gate) != nil }) { gate.resume() }
                    }
                }
                return .committed(.ordersCreated(batch.map { .created($0.order) }))
            }
            func open() {
                let gates = held.withLock { held in
                    defer { held = nil }
                    return held ?? []
                }
                for gate in gates { gate.resume() }
            }
        }
        let store = Store()
        let shell = IntakeShell(store: store, logger: logger)  // two create transactions at once (the default)
        let body = Array(#"{"customerName":"Ada","customerEmail":"ada@example.com","items":[{"productName":"Widget","quantity":1,"unitPrice":9.99}]}"#.utf8)
        let answers = await withTaskGroup(of: IntakeResponse.self) { group in
            for n in 1...6 { group.addTask { await shell.createOrder(body: body, idempotencyKey: "group-\(n)") } }
            // Every request has reached the machine and both transactions are held: then let them commit.
            let deadline = ContinuousClock.now + .seconds(30)
            while shell.requestsInFlight < 6 || store.held.withLock({ $0?.count ?? 0 }) < 2, ContinuousClock.now < deadline { await Task.yield() }
            let (inFlight, held) = (shell.requestsInFlight, store.held.withLock { $0?.count ?? 0 })
            #expect(inFlight == 6 && held == 2, "within 30 s: \(inFlight) of 6 requests in flight, \(held) of 2 transactions held")
            store.open()
            return await group.reduce(into: []) { $0.append($1) }
        }
        let orders = answers.compactMap { if case .created(let order) = $0 { order.id } else { nil } }
        #expect(orders.count == 6 && Set(orders).count == 6, "\(answers)")
        #expect(store.batches.withLock { $0 } == [1, 1, 4], "two creates alone, then the four that waited in one transaction")
        #expect(shell.requestsInFlight == 0)
    }
}
