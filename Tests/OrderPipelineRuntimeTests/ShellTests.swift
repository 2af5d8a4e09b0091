import Logging
import OrderPipelineCore
import OrderPipelineRuntime
import Synchronization
import Testing

/// A store that answers the relay's recipes from memory, with a delay drawn per call so that results complete out
/// of order, as the pool's do.
final class FakeOutboxStore: StorePerforming {
    struct State {
        var unpublished: [OutboxMessage]
        var published: [Int64] = []
        var retried: [Int64] = []
        var rejected: [Int64] = []
        var claims = 0
    }
    let state: Mutex<State>

    init(rows: [OutboxMessage]) { state = Mutex(State(unpublished: rows)) }

    func perform(_ command: StoreCommand) async -> StoreResult {
        try? await Task.sleep(for: .milliseconds(Int.random(in: 0...3)))
        return state.withLock { state in
            switch command {
            case .releaseClaims: return .committed(.released(rows: 0))
            case .claimOutbox(let claim):
                state.claims += 1
                let batch = Array(state.unpublished.prefix(claim.limit))
                state.unpublished.removeFirst(batch.count)
                return .committed(.claimed(batch))
            case .settleOutbox(let settlement):
                state.published += settlement.published
                state.retried += settlement.retries.map(\.sequence)
                state.rejected += settlement.rejections.map(\.sequence)
                return .committed(.settled(rows: settlement.published.count + settlement.retries.count + settlement.rejections.count))
            default:
                return .failed(.unavailable("not a relay recipe"))
            }
        }
    }
}

/// A broker that delivers everything, or refuses the first `refusals` messages with `com.microsoft:server-busy`.
final class FakePublisher: OutboxPublishing {
    let sent = Mutex<[Int64]>([])
    let refusals: Mutex<Int>
    init(refusals: Int = 0) { self.refusals = Mutex(refusals) }

    func publish(_ messages: [OutboxMessage]) async -> [PublishOutcome] {
        try? await Task.sleep(for: .milliseconds(Int.random(in: 0...3)))
        return messages.map { message in
            if refusals.withLock({ left in defer { left = max(0, left - 1) }; return left > 0 }) {
                return .refused(condition: "com.microsoft:server-busy", description: "The server is busy.")
            }
            sent.withLock { $0.append(message.sequence) }
            return .delivered
        }
    }
}

func rows(_ count: Int) -> [OutboxMessage] {
    (1...count).map { n in
        let order = OrderID(UUID128(high: 0x2222_0000_0000_4000 | UInt64(n) << 16, low: 0x8000_0000_0000_0000 | UInt64(n)))
        return OutboxMessage(sequence: Int64(n), event: PipelineEvent(type: .orderCreated, orderID: order, at: Instant(microseconds: 0), status: .pending), attempts: 1)
    }
}

let logger = Logger(label: "test.shell")

@Suite("Production shells with fake performers")
struct ShellTests {
    /// Runs a relay in the production loop until `done` holds (or 60 s pass), then stops it.
    func runRelay(store: FakeOutboxStore, publisher: FakePublisher, until done: @escaping @Sendable () -> Bool) async {
        let loop = MachineLoop()
        var configuration = OutboxRelay.Configuration(outbox: .serviceBus, owner: "relay-test")
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
                guard case .createOrder(let new) = command else { return .failed(.unavailable("unexpected")) }
                let call = calls.withLock { $0 += 1; return $0 }
                return call == 1 ? .unknown : .committed(.orderReplayed(new.order))
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
}
