import Logging
import OrderPipelineCore
import Synchronization
import Testing

@testable import OrderPipelineRuntime

/// `/health/live` of `consume` turns not-live when the group never gives the consumer a partition: an unassigned
/// consumer awaits nothing (it fetches once assigned), so the stall rule alone sees an idle loop, not a wedged join.
@Suite("Liveness: a consumer the group leaves without partitions")
struct ConsumerLivenessTests {
    static let second: Int64 = 1_000_000

    @Test("the unassigned spell: from the start and from a revocation, ended by an assignment; bound and off switch")
    func unassignedSpells() {
        let progress = LoopProgress()
        let t0: Int64 = 1_000 * Self.second
        progress.awaitAssignment(at: t0)
        #expect(progress.snapshot(at: t0 + 59 * Self.second).live(stallSeconds: 30, unassignedSeconds: 60))
        let wedged = progress.snapshot(at: t0 + 61 * Self.second)
        #expect(wedged.secondsUnassigned == 61)
        #expect(!wedged.live(stallSeconds: 30, unassignedSeconds: 60))
        #expect(wedged.live(stallSeconds: 30, unassignedSeconds: 0), "0 turns the rule off")
        // Its empty fetches keep being answered: they do not end the spell.
        progress.requested()
        progress.turned(after: .fetched(Ticket(1), []), at: t0 + 61 * Self.second)
        #expect(progress.snapshot(at: t0 + 62 * Self.second).secondsUnassigned == 62)

        progress.turned(after: .assigned(generation: 1, partitions: [0, 2]), at: t0 + 62 * Self.second)
        #expect(progress.snapshot(at: t0 + 500 * Self.second).secondsUnassigned == nil)
        // A revocation (an empty assignment) starts a new spell; a second one does not restart it.
        progress.turned(after: .assigned(generation: 2, partitions: []), at: t0 + 600 * Self.second)
        progress.turned(after: .assigned(generation: 3, partitions: []), at: t0 + 630 * Self.second)
        #expect(progress.snapshot(at: t0 + 659 * Self.second).live(stallSeconds: 30, unassignedSeconds: 60))
        #expect(!progress.snapshot(at: t0 + 661 * Self.second).live(stallSeconds: 30, unassignedSeconds: 60))
        progress.turned(after: .assigned(generation: 4, partitions: [1]), at: t0 + 662 * Self.second)
        #expect(progress.snapshot(at: t0 + 700 * Self.second).live(stallSeconds: 30, unassignedSeconds: 60))
    }

    @Test("a loop that is no group member (a relay) never has an unassigned spell")
    func relaysAreNotGroupMembers() {
        let progress = LoopProgress()
        progress.turned(after: .assigned(generation: 1, partitions: []), at: 0)
        #expect(progress.snapshot(at: 3_600 * Self.second).secondsUnassigned == nil)
    }

    /// Answers every fetch, empty, after 100 ms; never assigns until the test says so.
    final class SilentGroup: GroupConsuming {
        let loop: MachineLoop
        init(loop: MachineLoop) { self.loop = loop }
        func fetch(_ ticket: Ticket, max: Int) {
            Task { [loop] in
                try? await Task.sleep(for: .milliseconds(100))
                loop.deliver(.fetched(ticket, []))
            }
        }
        func commit(_ ticket: Ticket, _ offsets: [PartitionOffset], generation: Int64) { loop.deliver(.offsetsCommitted(ticket, .committed)) }
    }

    struct NoStore: StorePerforming {
        func perform(_ command: StoreCommand) async -> StoreResult { .failed(.unavailable("test")) }
    }

    @Test("the consumer's loop with a group that never assigns: live by the stall rule, not live by the unassigned bound; an assignment makes it live", .timeLimit(.minutes(2)))
    func consumerLoop() async throws {
        let name = "consumer-test-\(UInt32.random(in: 0...UInt32.max))"
        let loop = MachineLoop(name: name)
        loop.progress.awaitAssignment()
        let machine = FulfilmentConsumer(seed: 1)
        let observer = NoteObserver(logger: Logger(label: "test.consumer-liveness"), metrics: PipelineMetrics())
        let running = Task { await loop.run(machine, performers: Performers(store: NoStore(), group: SilentGroup(loop: loop)), observer: observer) }
        defer { loop.stop(); running.cancel() }

        /// The loop's snapshot once `condition` holds (polled; at most 30 s on a loaded machine).
        func snapshot(until condition: (LoopProgress.Snapshot) -> Bool) async -> LoopProgress.Snapshot? {
            let deadline = ContinuousClock.now + .seconds(30)
            while ContinuousClock.now < deadline {
                if let s = Liveness.shared.snapshots.first(where: { $0.name == name })?.snapshot, condition(s) { return s }
                try? await Task.sleep(for: .milliseconds(50))
            }
            return nil
        }
        let wedged = try #require(await snapshot { ($0.secondsUnassigned ?? 0) >= 1.2 })
        #expect(wedged.awaiting == 0)
        #expect(wedged.live(stallSeconds: 30, unassignedSeconds: 0), "it awaits nothing: the stall rule sees an idle loop")
        #expect(!wedged.live(stallSeconds: 30, unassignedSeconds: 1))
        let json = Liveness.shared.report(stallSeconds: 30, unassignedSeconds: 1).json
        #expect(json.contains(#""name":"\#(name)","live":false"#), "\(json)")

        loop.deliver(.assigned(generation: 1, partitions: [0]))
        let assigned = try #require(await snapshot { $0.secondsUnassigned == nil && $0.awaiting > 0 })
        #expect(assigned.live(stallSeconds: 30, unassignedSeconds: 1), "assigned, it fetches and hears back")

        loop.deliver(.assigned(generation: 2, partitions: []))
        let revoked = try #require(await snapshot { ($0.secondsUnassigned ?? 0) >= 1.2 })
        #expect(!revoked.live(stallSeconds: 30, unassignedSeconds: 1))
        loop.stop()
        await running.value
    }
}
