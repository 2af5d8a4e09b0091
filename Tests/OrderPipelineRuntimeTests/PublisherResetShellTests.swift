import OrderPipelineCore
import OrderPipelineRuntime
import OrderPipelineTestSupport
import Synchronization
import Testing

/// A Kafka producer whose session is fenced from the start: every batch handed to it answers `.sessionUnusable`
/// until `reset()` replaces the session. Logs what happened, in order.
final class FencedPublisher: OutboxPublishing {
    enum Step: Equatable { case failed(Int), delivered(Int), reset }
    /// Whether the live session is fenced, and the log; one lock, so a hand-over and a reset never interleave.
    let state = Mutex<(fenced: Bool, log: [Step])>((true, []))
    var log: [Step] { state.withLock { $0.log } }

    func publish(_ messages: [OutboxMessage]) async -> [PublishOutcome] {
        // The session is the one live when the batch is handed over (logged then), whenever its answer comes.
        let onFencedSession = state.withLock { state in
            state.log.append(state.fenced ? .failed(messages.count) : .delivered(messages.count))
            return state.fenced
        }
        try? await Task.sleep(for: .milliseconds(Int.random(in: 0...3)))
        return messages.map { _ in onFencedSession ? .sessionUnusable("producer session unusable (test: fenced)") : .delivered }
    }

    func reset() {
        state.withLock { state in
            state.fenced = false
            state.log.append(.reset)
        }
    }
}

extension ShellTests {
    @Test("a fenced publisher is reset once by the relay in the production loop, then every row goes out")
    func fencedPublisherIsResetOnce() async {
        let store = FakeOutboxStore(rows: rows(30))
        let publisher = FencedPublisher()
        // This fake store hands each row out once: rows of the failed batches show up as settled retries.
        await runRelay(store: store, publisher: publisher, outbox: .kafka) { store.state.withLock { $0.published.count + $0.retried.count } == 30 }
        let log = publisher.log
        let resetAt = log.firstIndex(of: .reset)
        #expect(log.filter { $0 == .reset }.count == 1, "one reset for one broken session: \(log)")
        #expect(resetAt.map { at in log[..<at].allSatisfy { if case .failed = $0 { true } else { false } } } == true, "\(log)")
        #expect(resetAt.map { at in log[(at + 1)...].allSatisfy { if case .delivered = $0 { true } else { false } } } == true, "\(log)")
        let failed = log.reduce(0) { if case .failed(let n) = $1 { $0 + n } else { $0 } }
        let state = store.state.withLock { $0 }
        #expect(failed > 0 && state.retried.count == failed, "the broken batches' rows are retried")
        #expect(state.published.count == 30 - failed)
        #expect(state.rejected.isEmpty, "nothing dead-lettered")
    }
}

extension ShellTests {
    @Test("the tracing wrapper passes the relay's reset on to the publisher it wraps")
    func tracedPublisherForwardsReset() {
        let publisher = FencedPublisher()
        TracedPublisher(publisher, outbox: .kafka).reset()
        #expect(publisher.log == [.reset])
    }
}
