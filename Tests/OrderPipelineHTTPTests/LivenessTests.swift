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
        func reset() {}
    }

    /// Runs a relay loop over `store` until `done` holds for its snapshot (at most 30 s: a loaded machine starts the
    /// loop late), then answers whether it held, the last liveness report, and stops the loop.
    func watch(store: Store, stall: Double, until done: (LoopProgress.Snapshot, _ registeredFor: Duration) -> Bool) async -> (held: Bool, live: Bool, json: String) {
        let name = "relay-test-\(UInt32.random(in: 0...UInt32.max))"
        let loop = MachineLoop(name: name)
        let relay = OutboxRelay(configuration: .init(outbox: .kafka, owner: name), seed: 1)
        let observer = NoteObserver(logger: Logger(label: "test.liveness"), metrics: PipelineMetrics())
        let running = Task { await loop.run(relay, performers: Performers(store: store, publisher: Publisher()), observer: observer) }
        let deadline = ContinuousClock.now + .seconds(30)
        var held = false
        var snapshot: LoopProgress.Snapshot?
        var registered: ContinuousClock.Instant?
        while !held, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(100))
            snapshot = Liveness.shared.snapshots.first { $0.name == name }?.snapshot
            if snapshot != nil, registered == nil { registered = .now }
            if let snapshot, let registered { held = done(snapshot, .now - registered) }
        }
        let live = snapshot?.live(stallSeconds: stall) ?? false
        let json = Liveness.shared.report(stallSeconds: stall).json
        loop.stop()
        running.cancel()
        await running.value
        #expect(!Liveness.shared.snapshots.contains { $0.name == name }, "the loop is gone once it stopped")
        return (held, live, json)
    }

    @Test func aLoopWaitingForeverOnItsStoreIsStuck() async {
        let (held, live, json) = await watch(store: Store(hang: true), stall: 1) { snapshot, _ in !snapshot.live(stallSeconds: 1) }
        #expect(held && !live, "never reported stuck: \(json)")
        #expect(json.contains(#""awaiting":1,"#), "\(json)")
        #expect(json.contains(#""status":"stuck""#), "\(json)")
    }

    @Test func aLoopBackingOffFromAnOutageIsLive() async {
        // Its store fails at once, again and again (backing off in between): well past the bound, still live.
        let (held, live, json) = await watch(store: Store(hang: false), stall: 5) { _, registeredFor in registeredFor > .seconds(6) }
        #expect(held && live, "\(json)")
    }
}
