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

public enum Simulation {
    /// Runs one seed: safety phase with faults, heal, liveness phase to quiescence, then the checker.
    public static func run(_ options: SimulationOptions) -> SeedOutcome {
        let world = World(options: options)
        world.run()
        return SeedOutcome(
            seed: options.seed, options: options, ordersPersisted: world.database.orderIDs.count, violations: Checker.check(world),
            simulatedMicroseconds: world.now, faultsFired: world.faultsFired, recoveries: world.recoveries, history: world.history, schedule: world.schedule)
    }
}
