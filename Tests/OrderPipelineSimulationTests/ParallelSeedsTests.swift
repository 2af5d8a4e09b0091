import OrderPipelineCore
import OrderPipelineSimulation
import OrderPipelineTestSupport
import Testing

/// `order-sim --jobs N` runs seeds side by side; the outcomes must reach the caller in seed order and add up to
/// exactly what one thread gives.
@Suite struct ParallelSeeds {
    /// What one seed's run says, comparable across runs (the outcome itself is not Equatable).
    struct Verdict: Hashable {
        var index: Int
        var seed: UInt64
        var ordersPersisted: Int
        var simulatedMicroseconds: Int64
        var violations: [Violation]
        var schedule: [FaultReference]
        var faultsFired: [Int]
        var recoveries: RecoveryCounts
    }

    /// Off the cooperative pool, like every simulated world in the tests (`simulate`).
    func runAll(jobs: Int, count: Int, options: @escaping @Sendable (Int) -> SimulationOptions) async -> (SeedsSummary, [Verdict]) {
        await compute { Self.runAllHere(jobs: jobs, count: count, options: options) }
    }

    static func runAllHere(jobs: Int, count: Int, options: @escaping @Sendable (Int) -> SimulationOptions) -> (SeedsSummary, [Verdict]) {
        var summary = SeedsSummary()
        var verdicts: [Verdict] = []
        Simulation.run(count: count, jobs: jobs, options: options) { n, outcome in
            summary.add(outcome)
            verdicts.append(
                Verdict(
                    index: n, seed: outcome.seed, ordersPersisted: outcome.ordersPersisted, simulatedMicroseconds: outcome.simulatedMicroseconds,
                    violations: outcome.violations, schedule: outcome.schedule, faultsFired: outcome.faultsFired, recoveries: outcome.recoveries))
        }
        return (summary, verdicts)
    }

    @Test func twoJobsGiveTheSameSummaryAsOne() async {
        let options: @Sendable (Int) -> SimulationOptions = { n in
            var options = SimulationOptions()
            options.seed = 40 + UInt64(n)
            options.orders = 40
            return options
        }
        let (one, oneVerdicts) = await runAll(jobs: 1, count: 9, options: options)
        let (two, twoVerdicts) = await runAll(jobs: 2, count: 9, options: options)
        #expect(one.seeds == 9)
        #expect(one.ordersPersisted > 9 * 30, "the workload really ran")
        #expect(oneVerdicts.map(\.index) == Array(0..<9))
        #expect(two == one)
        #expect(twoVerdicts == oneVerdicts)
    }

    /// Failing seeds (a bug-zoo variant under swarm faults) are reported in the same order too.
    @Test func failuresComeInSeedOrder() async {
        let options: @Sendable (Int) -> SimulationOptions = { n in
            var options = SimulationOptions.swarm(seed: 1 + UInt64(n), orders: 30)
            options.bug = .dualWrite
            return options
        }
        let (one, oneVerdicts) = await runAll(jobs: 1, count: 12, options: options)
        let (three, threeVerdicts) = await runAll(jobs: 3, count: 12, options: options)
        #expect(!one.failures.isEmpty, "the bug is caught in 12 swarm seeds")
        #expect(three == one)
        #expect(threeVerdicts == oneVerdicts)
    }
}
