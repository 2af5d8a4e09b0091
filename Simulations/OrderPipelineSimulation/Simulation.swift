import Foundation
import OrderPipelineCore

/// The result of one seed.
public struct SeedOutcome: Sendable {
    public var seed: UInt64
    /// The options that produced it (replay them to get the same run).
    public var options: SimulationOptions
    public var ordersPersisted: Int
    public var violations: [Violation]
    public var simulatedMicroseconds: Int64
    public var faultsFired: [Int]
    public var recoveries: RecoveryCounts
    public var history: History
    /// The fault chances that struck, in order.
    public var schedule: [FaultReference]

    public var passed: Bool { violations.isEmpty }
}

/// What a batch of seeds adds up to: the figures of order-sim's closing lines.
public struct SeedsSummary: Sendable, Hashable {
    public var seeds = 0
    public var ordersPersisted = 0
    public var simulatedMicroseconds: Int64 = 0
    public var faultsFired = [Int](repeating: 0, count: FaultKind.allCases.count)
    public var recoveries = RecoveryCounts()
    /// The failing seeds, in seed order, and each one's first violation.
    public var failures: [UInt64] = []
    public var firstViolations: [Violation] = []

    public init() {}

    public mutating func add(_ outcome: SeedOutcome) {
        seeds += 1
        ordersPersisted += outcome.ordersPersisted
        simulatedMicroseconds += outcome.simulatedMicroseconds
        for i in faultsFired.indices { faultsFired[i] += outcome.faultsFired[i] }
        recoveries = recoveries + outcome.recoveries
        if let first = outcome.violations.first {
            failures.append(outcome.seed)
            firstViolations.append(first)
        }
    }
}

public enum Simulation {
    /// Runs one seed: safety phase with faults, heal, liveness phase to quiescence, then the checker.
    public static func run(_ options: SimulationOptions) -> SeedOutcome {
        let world = World(options: options)
        world.run()
        return SeedOutcome(
            seed: options.seed, options: options, ordersPersisted: world.database.orderIDs.count, violations: Checker.check(world),
            simulatedMicroseconds: world.now, faultsFired: world.faultsFired, recoveries: world.recoveries, history: world.history, schedule: world.schedule)
    }

    /// Runs the seeds `options(0) … options(count - 1)` on `jobs` threads and hands each outcome to `each` on the
    /// calling thread, strictly in that order: whatever `each` prints or adds up is the same for any `jobs`.
    /// Every seed is its own `World` (the simulation has no shared mutable state, which Swift 6 checks), so the
    /// threads only run seeds side by side; nothing a seed decides depends on them. At most `jobs × 4` finished
    /// outcomes wait for their turn.
    public static func run(
        count: Int, jobs: Int, options: @escaping @Sendable (Int) -> SimulationOptions, each: (Int, SeedOutcome) -> Void
    ) {
        let jobs = max(1, min(jobs, count))
        guard jobs > 1 else {
            for n in 0..<count { each(n, run(options(n))) }
            return
        }
        let queue = InOrderResults(count: count, window: jobs * 4)
        for _ in 0..<jobs {
            let worker = Thread {
                while let n = queue.nextSeed() { queue.finish(n, run(options(n))) }
            }
            worker.stackSize = 8 << 20  // as the main thread's: a seed runs the same code on either
            worker.start()
        }
        for n in 0..<count { each(n, queue.take(n)) }
    }
}

/// Seed indexes for the workers, finished outcomes for the caller in index order; one lock, one condition.
private final class InOrderResults: @unchecked Sendable {  // every field is read and written under `condition`
    private let condition = NSCondition()
    private let count: Int
    private let window: Int
    private var handedOut = 0
    private var taken = 0
    private var finished: [Int: SeedOutcome] = [:]

    init(count: Int, window: Int) {
        self.count = count
        self.window = window
    }

    /// The next seed to run, waiting while `window` outcomes are ahead of the caller; nil when all are handed out.
    func nextSeed() -> Int? {
        condition.lock()
        defer { condition.unlock() }
        while handedOut < count, handedOut - taken >= window { condition.wait() }
        guard handedOut < count else { return nil }
        handedOut += 1
        return handedOut - 1
    }

    func finish(_ n: Int, _ outcome: SeedOutcome) {
        condition.lock()
        finished[n] = outcome
        condition.broadcast()
        condition.unlock()
    }

    func take(_ n: Int) -> SeedOutcome {
        condition.lock()
        defer { condition.unlock() }
        while finished[n] == nil { condition.wait() }
        taken += 1
        condition.broadcast()
        return finished.removeValue(forKey: n)!
    }
}
