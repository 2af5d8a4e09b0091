import OrderPipelineCore
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Whether a `MachineLoop` is making progress, for `/health/live`: when it last handled an input ("turned"), how
/// many requests (store, publish, dead-letter, fetch, commit — not timers) await their answer, and since when it
/// has heard nothing back while awaiting. A loop that awaits a request and has had no answer for longer than the
/// stall bound is stuck — however often its timers fire (they are not progress): every effect has its own deadline
/// (statement timeout 5 s, message and send timeouts 10 s, fetch wait 0.5 s), so a healthy loop always hears back.
/// An idle loop (nothing awaited, a timer set) is live however long it sleeps: a relay backing off from a broker
/// outage is not restarted by the orchestrator.
///
/// A consumer-group member (`awaitAssignment()`) also tracks since when it has held no partition: from its start
/// until its first assignment, and from a revocation until the next assignment. Unassigned, it awaits nothing (it
/// fetches once assigned), so the stall rule sees an idle loop, never a join the group does not complete; the
/// unassigned bound does.
public final class LoopProgress: Sendable {
    private let lastTurn = Atomic<Int64>(LoopProgress.monotonicMicroseconds())
    private let awaiting = Atomic<Int>(0)
    /// The last answer, or the request that ended an idle spell: the start of the current wait.
    private let waitingSince = Atomic<Int64>(LoopProgress.monotonicMicroseconds())
    /// A group member without partitions: since when; `notUnassigned` when it holds some or is no group member.
    private let unassignedSince = Atomic<Int64>(LoopProgress.notUnassigned)
    private static let notUnassigned = Int64.min
    private let isGroupMember = Atomic<Bool>(false)

    public init() {}

    /// This loop is a consumer-group member that holds no partition yet (call before it runs).
    public func awaitAssignment(at now: Int64 = LoopProgress.monotonicMicroseconds()) {
        isGroupMember.store(true, ordering: .relaxed)
        unassignedSince.store(now, ordering: .relaxed)
    }

    func requested() {
        if awaiting.add(1, ordering: .relaxed).oldValue <= 0 { waitingSince.store(Self.monotonicMicroseconds(), ordering: .relaxed) }
    }

    /// After each handled input; an answer ends the request it answers; an assignment (a revocation is an empty
    /// one) starts or ends an unassigned spell.
    func turned(after input: Input?, at now: Int64 = LoopProgress.monotonicMicroseconds()) {
        switch input {
        case .stored?, .published?, .fetched?, .offsetsCommitted?:
            awaiting.subtract(1, ordering: .relaxed)
            waitingSince.store(now, ordering: .relaxed)
        case .assigned(_, let partitions)? where partitions.isEmpty && isGroupMember.load(ordering: .relaxed):
            _ = unassignedSince.compareExchange(expected: Self.notUnassigned, desired: now, ordering: .relaxed)
        case .assigned?:
            unassignedSince.store(Self.notUnassigned, ordering: .relaxed)
        default: break
        }
        lastTurn.store(now, ordering: .relaxed)
    }

    public struct Snapshot: Sendable, Equatable {
        public var secondsSinceTurn: Double
        public var awaiting: Int
        /// Since the last answer (or the first request after an idle spell).
        public var secondsWaiting: Double
        /// A group member holding no partition: for how long (nil when it holds some, or is no group member).
        public var secondsUnassigned: Double? = nil

        /// Live unless it awaits an answer heard nothing back for `stallSeconds`, or is a group member that has held
        /// no partition for `unassignedSeconds` (0: that rule is off).
        public func live(stallSeconds: Double, unassignedSeconds: Double = Liveness.defaultUnassignedSeconds) -> Bool {
            let answered = awaiting <= 0 || secondsWaiting < stallSeconds
            let assigned = unassignedSeconds <= 0 || (secondsUnassigned ?? 0) < unassignedSeconds
            return answered && assigned
        }
    }

    public var snapshot: Snapshot { snapshot(at: Self.monotonicMicroseconds()) }

    func snapshot(at now: Int64) -> Snapshot {
        let unassigned = unassignedSince.load(ordering: .relaxed)
        return Snapshot(
            secondsSinceTurn: Double(now - lastTurn.load(ordering: .relaxed)) / 1_000_000, awaiting: awaiting.load(ordering: .relaxed),
            secondsWaiting: Double(now - waitingSince.load(ordering: .relaxed)) / 1_000_000,
            secondsUnassigned: unassigned == Self.notUnassigned ? nil : Double(now - unassigned) / 1_000_000)
    }

    public static func monotonicMicroseconds() -> Int64 {
        var spec = timespec()
        clock_gettime(CLOCK_MONOTONIC, &spec)
        return Int64(spec.tv_sec) * 1_000_000 + Int64(spec.tv_nsec) / 1_000
    }
}

/// The running machine loops of this process, by name, for the health endpoint.
public final class Liveness: Sendable {
    public static let shared = Liveness()
    private let loops = Mutex<[(name: String, progress: LoopProgress)]>([])

    public init() {}

    func register(_ name: String, _ progress: LoopProgress) { loops.withLock { $0.append((name, progress)) } }
    func unregister(_ progress: LoopProgress) { loops.withLock { $0.removeAll { $0.progress === progress } } }

    /// Name and snapshot of every running loop, in start order.
    public var snapshots: [(name: String, snapshot: LoopProgress.Snapshot)] {
        loops.withLock { $0.map { ($0.name, $0.progress.snapshot) } }
    }
}

extension Liveness {
    /// The default bound: three times the longest effect deadline (10 s).
    public static let defaultStallSeconds = 30.0
    /// The default unassigned bound: ten session timeouts (6 s) — a join takes one or two (Tansu holds one for
    /// about half a rebalance timeout), a member replacing a dead one waits one session timeout for it.
    public static let defaultUnassignedSeconds = 60.0

    /// `/health/live` of `relay`/`consume`: live unless a loop awaits an answer and has heard nothing back for
    /// `stallSeconds`, or a consumer has held no partition for `unassignedSeconds`; the body lists every loop.
    public func report(stallSeconds: Double, unassignedSeconds: Double = Liveness.defaultUnassignedSeconds) -> (live: Bool, json: String) {
        let loops = snapshots
        let live = loops.allSatisfy { $0.snapshot.live(stallSeconds: stallSeconds, unassignedSeconds: unassignedSeconds) }
        let entries = loops.map { loop in
            let s = loop.snapshot
            func rounded(_ seconds: Double) -> Double { (seconds * 1000).rounded() / 1000 }
            let unassigned = s.secondsUnassigned.map { #","secondsUnassigned":\#(rounded($0))"# } ?? ""
            return
                #"{"name":"\#(loop.name)","live":\#(s.live(stallSeconds: stallSeconds, unassignedSeconds: unassignedSeconds)),"secondsSinceTurn":\#(rounded(s.secondsSinceTurn)),"awaiting":\#(s.awaiting),"secondsWaiting":\#(rounded(s.secondsWaiting))\#(unassigned)}"#
        }
        return (
            live,
            #"{"status":"\#(live ? "live" : "stuck")","stallSeconds":\#(stallSeconds),"unassignedSeconds":\#(unassignedSeconds),"loops":[\#(entries.joined(separator: ","))]}"#
        )
    }
}
