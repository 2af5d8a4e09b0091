import Foundation
import OrderPipelineCore
import OrderPipelineSimulation
import OrderPipelineTestSupport
import PropertyBased
import Testing

func options(seed: UInt64, orders: Int = 100, faults: FaultProfile = .all, trace: Bool = false) -> SimulationOptions {
    var options = SimulationOptions()
    options.seed = seed
    options.orders = orders
    options.faults = faults.kinds
    options.recordHistory = trace
    return options
}

/// One simulated world, run off the cooperative pool (`compute`): seed loops held both of its threads for the first
/// half minute of a `swift test` run, and every other test waited.
func simulate(_ options: SimulationOptions) async -> SeedOutcome { await compute { Simulation.run(options) } }

/// The promise, checked over many failure schedules: with every fault on, every seed holds every invariant.
/// `ORDER_SIM_SOAK=N` runs N more seeds (see docs/SIMULATION.md).
@Suite struct ExactlyOnceProperties {
    @Test func everySeedWithAllFaultsHoldsEveryInvariant() async {
        await propertyCheck(count: 500, input: Gen.uint64()) { seed in
            let outcome = await simulate(options(seed: seed))
            #expect(outcome.violations.isEmpty, "seed \(seed): \(outcome.violations.prefix(3)) — replay: order-sim --seed \(seed) --faults all")
            #expect(outcome.ordersPersisted > 80, "seed \(seed): the workload really ran")
        }
    }

    @Test(.enabled(if: TestEnvironment.value("ORDER_SIM_SOAK") != nil))
    func soak() async {
        let count = UInt64(TestEnvironment.value("ORDER_SIM_SOAK") ?? "") ?? 10_000
        for seed in 1_000_000..<(1_000_000 + count) {
            let outcome = await simulate(options(seed: seed))
            #expect(outcome.violations.isEmpty, "seed \(seed): \(outcome.violations.prefix(3))")
        }
    }

    @Test(arguments: FaultProfile.allCases)
    func eachProfileHoldsAndItsFaultsFire(profile: FaultProfile) async {
        var fired = [Int](repeating: 0, count: FaultKind.allCases.count)
        for seed in UInt64(1)...20 {
            var options = options(seed: seed, orders: 50, faults: profile)
            // The rarest chances (a few Service Bus sends per seed) made likelier, so 20 small seeds see every kind.
            options.rates.sendTimeout *= 4
            options.rates.transientRefusal *= 4
            let outcome = await simulate(options)
            #expect(outcome.violations.isEmpty, "seed \(seed) under \(profile): \(outcome.violations.prefix(3))")
            for kind in FaultKind.allCases { fired[kind.index] += outcome.faultsFired[kind.index] }
        }
        for kind in FaultKind.allCases {
            if profile.kinds.contains(kind) {
                #expect(fired[kind.index] > 0, "\(kind.rawValue) never fired under \(profile)")
            } else {
                #expect(fired[kind.index] == 0, "\(kind.rawValue) fired under \(profile)")
            }
        }
    }

    /// 60 seeds: a record loss strands an order (for the reconciler) only when it hits records the group has not
    /// committed yet, and the batching consumer leaves few of those (30 seeds ran it three times or not at all).
    @Test func recoveryPathsReallyRun() async {
        var total = RecoveryCounts()
        for seed in UInt64(1)...60 { total = await total + simulate(options(seed: seed)).recoveries }
        for (name, count) in total.rows { #expect(count > 0, "\(name) never ran in 60 seeds") }
    }
}

@Suite struct Determinism {
    @Test func theSameSeedGivesAByteIdenticalHistory() async {
        let first = await compute { Simulation.run(options(seed: 7, trace: true)).history.jsonLines }
        let second = await compute { Simulation.run(options(seed: 7, trace: true)).history.jsonLines }
        #expect(first.count > 10_000)
        #expect(first == second)
    }

    @Test func differentSeedsDiffer() async {
        let a = await compute { Simulation.run(options(seed: 7, trace: true)).history.jsonLines }
        let b = await compute { Simulation.run(options(seed: 8, trace: true)).history.jsonLines }
        #expect(a != b)
    }

    @Test func recordingTheHistoryDoesNotChangeTheRun() async {
        let traced = await simulate(options(seed: 11, trace: true))
        let plain = await simulate(options(seed: 11))
        #expect(traced.simulatedMicroseconds == plain.simulatedMicroseconds)
        #expect(traced.faultsFired == plain.faultsFired)
        #expect(plain.history.entries.isEmpty)
    }

    @Test func historyLinesAreJSONWithTheJepsenShape() async throws {
        let lines = await compute { Simulation.run(options(seed: 3, orders: 10, trace: true)).history.jsonLines }.split(separator: "\n")
        var types: Set<String> = []
        for line in lines.prefix(2_000) {
            let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            types.insert(try #require(object["type"] as? String))
            #expect(object["process"] is String && object["f"] is String && object["time"] is Int)
        }
        #expect(types == ["invoke", "ok", "fail", "info"])
    }
}

/// The checker must be able to fail: break the store and see it named.
@Suite struct CheckerCatchesBrokenPipelines {
    @Test func ordersWithoutAnOutboxRowAreReportedStuck() async {
        var broken = options(seed: 5, orders: 20, faults: .none)
        broken.recipeVariants.createWithoutOutbox = true
        broken.livenessDeadline = .seconds(20)
        let outcome = await simulate(broken)
        #expect(outcome.violations.first?.invariant == .nothingPending)
        #expect(outcome.violations.first?.detail.contains("orders neither Fulfilled nor Failed") == true)
    }

    @Test func aCleanRunWithoutFaultsPasses() async {
        let outcome = await simulate(options(seed: 5, orders: 20, faults: .none))
        #expect(outcome.violations.isEmpty)
        #expect(outcome.faultsFired.allSatisfy { $0 == 0 })
    }
}

/// Every replay file in fixtures/ gives the verdict it records.
@Suite struct Fixtures {
    static var directory: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("fixtures")
    }

    static var replayFiles: [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        return names.filter { $0.hasSuffix(".json") && $0.hasPrefix("replay-") }.sorted()
    }

    @Test func thereAreFixtures() { #expect(!Self.replayFiles.isEmpty) }

    @Test(arguments: Fixtures.replayFiles)
    func replayGivesTheRecordedVerdict(name: String) async throws {
        let file = try ReplayFile.load(path: Self.directory.appendingPathComponent(name).path)
        let outcome = try await simulate(file.options())
        #expect(outcome.violations.first?.invariant == file.expectedInvariant, "\(name): \(outcome.violations.prefix(3))")
    }

    @Test func replayFilesRefuseOtherFormats() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("bad-replay.json").path
        try Data(#"{"format":"order-sim-replay/99","seed":1,"orders":1,"faults":[],"apiInstances":1,"relays":1,"serviceBusRelays":1,"consumers":1,"partitions":1}"#.utf8).write(
            to: URL(fileURLWithPath: path))
        #expect(throws: ReplayFile.LoadError.self) { try ReplayFile.load(path: path) }
    }
}

@Suite struct SwarmAndZoo {
    @Test func swarmSeedsDrawTheirOwnWorldsAndAllHold() async {
        var shapes: Set<String> = []
        for seed in UInt64(1)...60 {
            let options = SimulationOptions.swarm(seed: seed, orders: 40)
            shapes.insert("\(options.apiInstances)/\(options.relays)/\(options.consumers)/\(options.partitions)/\(options.faults.count)")
            let outcome = await simulate(options)
            #expect(outcome.violations.isEmpty, "swarm seed \(seed): \(outcome.violations.prefix(3))")
        }
        #expect(shapes.count > 20, "swarm seeds should differ in shape and faults")
        #expect(SimulationOptions.swarm(seed: 9, orders: 40) == SimulationOptions.swarm(seed: 9, orders: 40))
    }

    @Test(arguments: ZooBug.allCases)
    func everyBugHasAFixtureThatCatchesIt(bug: ZooBug) throws {
        let path = Fixtures.directory.appendingPathComponent("replay-bug-\(bug.rawValue).json").path
        let file = try ReplayFile.load(path: path)
        #expect(file.bug == bug.rawValue)
        #expect(file.expectedInvariant != nil, "the fixture must record the invariant the bug breaks")
    }
}

@Suite struct Shrinking {
    @Test func aZooBugShrinksToAShortReplayWithTheSameVerdict() async throws {
        var failing = SimulationOptions.swarm(seed: 1, orders: 40)
        failing.bug = .dualWrite
        let original = await simulate(failing)
        let invariant = try #require(original.violations.first?.invariant)
        let result = await compute { [failing] in
            var shrinker = Shrinker(invariant: invariant, budget: 150)
            return shrinker.shrink(failing)
        }
        #expect(result.outcome.violations.first?.invariant == invariant)
        #expect(result.events <= 20)
        #expect(result.options.orders < failing.orders)
        // The shrunk options replay bit for bit (also through a replay file).
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("shrunk-test.json").path
        try ReplayFile(options: result.options, expectedViolation: invariant).write(to: path)
        let replayed = try await simulate(ReplayFile.load(path: path).options())
        #expect(replayed.violations == result.outcome.violations)
        #expect(replayed.schedule == result.outcome.schedule)
    }
}

@Suite struct TimelinePage {
    @Test func aTimelineHasEveryLaneAndPinsTheViolation() async throws {
        var failing = SimulationOptions.swarm(seed: 1, orders: 10)
        failing.bug = .randomMessageID
        failing.recordHistory = true
        let outcome = await simulate(failing)
        let violation = try #require(outcome.violations.first)
        let html = Timeline.html(for: outcome)
        for lane in ["clients", "api-1", "relay-1", "consumer-1", "sb-relay-1", "database", "kafka-p0", "service-bus", "downstream", "nemesis"] {
            #expect(html.contains(">\(lane)</text>"), "lane \(lane)")
        }
        #expect(html.contains(violation.invariant.rawValue))
        #expect(html.contains("Events that led to it"))
        // Self-contained: no scripts, styles or images fetched from anywhere.
        #expect(!html.contains("src=\"http") && !html.contains("href=\"http") && !html.contains("@import"))
    }
}
