import OrderPipelineCore

/// Turns a failing seed into a small story: fewer orders, fewer components, fewer faults, while the **same
/// invariant** still fails. Greedy and deterministic: every candidate is one more `Simulation.run`.
///
/// Workload and shape first (each step halves or drops to one), then the fault schedule: whole fault kinds, then
/// single fault chances, keeping only those without which the failure goes away. The result replays bit for bit
/// from its options (seed + shape + `faultSchedule`).
public struct Shrinker {
    public struct Result: Sendable {
        public var options: SimulationOptions
        public var outcome: SeedOutcome
        public var runs: Int
        /// Orders plus fault events: the length of the story.
        public var events: Int { options.orders + outcome.schedule.count }
    }

    public let invariant: Invariant
    public private(set) var runs = 0
    private let budget: Int

    public init(invariant: Invariant, budget: Int = 400) {
        self.invariant = invariant
        self.budget = budget
    }

    public mutating func shrink(_ failing: SimulationOptions) -> Result {
        var best = failing
        best.recordHistory = false
        guard var bestOutcome = fails(best) else {
            return Result(options: failing, outcome: Simulation.run(failing), runs: runs)
        }
        // Pin the schedule that struck, so later steps only ever take faults away.
        best.faultSchedule = Set(bestOutcome.schedule)

        func attempt(_ change: (inout SimulationOptions) -> Void) -> Bool {
            guard runs < budget else { return false }
            var candidate = best
            change(&candidate)
            guard candidate != best, let outcome = fails(candidate) else { return false }
            best = candidate
            best.faultSchedule = Set(outcome.schedule)
            bestOutcome = outcome
            return true
        }

        for _ in 0..<3 {
            // A workload where every order also has a cancellation fails with fewer orders when ordering matters.
            if best.cancelShare > 0, best.cancelShare < 1 { _ = attempt { $0.cancelShare = 1 } }
            // Workload: the smallest order count that still fails.
            for orders in [1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64] where orders < best.orders {
                if attempt({ $0.orders = orders }) { break }
            }
            var steps = 0
            while best.orders > 1, steps < 6, attempt({ $0.orders -= 1 }) { steps += 1 }
            // Shape: one of each where possible, else half.
            for dimension in [\SimulationOptions.apiInstances, \.relays, \.serviceBusRelays, \.consumers, \.partitions] {
                if !attempt({ $0[keyPath: dimension] = 1 }), best[keyPath: dimension] > 2 {
                    _ = attempt { $0[keyPath: dimension] = max(2, $0[keyPath: dimension] / 2) }
                }
            }
            _ = attempt { $0.cancelShare = 0 }
            _ = attempt { $0.invalidRequestShare = 0 }
            // Faults: whole kinds, then single chances.
            for kind in best.faults.sorted() { _ = attempt { $0.faults.removeAll { $0 == kind } } }
            for reference in bestOutcome.schedule.sorted() where best.faultSchedule?.contains(reference) == true {
                _ = attempt { $0.faultSchedule?.remove(reference) }
            }
        }
        var final = best
        final.recordHistory = true
        return Result(options: best, outcome: Simulation.run(final), runs: runs)
    }

    private mutating func fails(_ options: SimulationOptions) -> SeedOutcome? {
        runs += 1
        let outcome = Simulation.run(options)
        return outcome.violations.first?.invariant == invariant ? outcome : nil
    }
}
