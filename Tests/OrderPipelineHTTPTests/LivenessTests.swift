import Logging
import OrderPipelineCore
import OrderPipelineRuntime
import Synchronization
import Testing

/// `/health/live` of `relay`/`consume` reads `Liveness.shared`: a machine loop that awaits an answer and has not
/// heard back within the stall bound is stuck, however often its timers fire; one that waits on a timer (backing off) is not.
@Suite("Liveness: a machine loop that awaits an answer and hears nothing back is reported stuck", .serialized)
struct LivenessTests {
    /// A store whose every call hangs until cancelled (a wedged driver), or fails at once (an outage: back off).
    struct Store: StorePerforming {
        let hang: Bool
        func perform(_ command: StoreCommand) async -> StoreResult {
            if hang { try? await Task.sleep(for: .seconds(3600)) }
            return .failed(.unavailable("test"))
        }
    }

    struct Publisher: OutboxPublishing {
        func publish(_ messages: [OutboxMessage]) async -> [PublishOutcome] { [] }
    }

    /// Runs a relay loop over `store` for `seconds`, then answers the loop's liveness report and stops it.
    func report(store: Store, after seconds: Duration, stall: Double) async -> (live: Bool, json: String) {
        let name = "relay-test-\(UInt32.random(in: 0...UInt32.max))"
        let loop = MachineLoop(name: name)
        let relay = OutboxRelay(configuration: .init(outbox: .kafka, owner: name), seed: 1)
        let observer = NoteObserver(logger: Logger(label: "test.liveness"), metrics: PipelineMetrics())
        let running = Task { await loop.run(relay, performers: Performers(store: store, publisher: Publisher()), observer: observer) }
        try? await Task.sleep(for: seconds)
        let mine = Liveness.shared.snapshots.filter { $0.name == name }
        #expect(mine.count == 1, "the loop is registered while it runs")
        let live = mine.allSatisfy { $0.snapshot.live(stallSeconds: stall) }
        let json = Liveness.shared.report(stallSeconds: stall).json
        loop.stop()
        running.cancel()
        await running.value
        #expect(!Liveness.shared.snapshots.contains { $0.name == name }, "the loop is gone once it stopped")
        return (live, json)
    }

    @Test func aLoopWaitingForeverOnItsStoreIsStuck() async {
        let (live, json) = await report(store: Store(hang: true), after: .milliseconds(2500), stall: 1)
        #expect(!live)
        #expect(json.contains(#""awaiting":1,"#), "\(json)")
        #expect(json.contains(#""status":"stuck""#), "\(json)")
    }

    @Test func aLoopBackingOffFromAnOutageIsLive() async {
        let (live, json) = await report(store: Store(hang: false), after: .milliseconds(2500), stall: 1)
        #expect(live, "\(json)")
    }
}
