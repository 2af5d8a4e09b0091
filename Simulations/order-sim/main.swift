import ArgumentParser
import Foundation
import OrderPipelineCore
import OrderPipelineSimulation

/// The simulator CLI. Everything it decides comes from the seed; only the progress lines read the wall clock.
struct OrderSim: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "order-sim",
        abstract: "Runs the order pipeline in a deterministic simulated world and checks exactly-once fulfilment.",
        discussion: """
            Each seed runs a safety phase (faults on), heals every fault, restarts what crashed, runs to quiescence \
            and checks the invariants. Exit 0 when every invariant held on every seed; exit 1 naming the first \
            violated invariant, its seed and the command that replays it.
            """)

    @Option(help: "Run this one seed (or the first of --seeds).") var seed: UInt64?
    @Option(help: "Number of consecutive seeds to run.") var seeds: Int = 1
    @Option(help: "Orders (client requests) per seed.") var orders: Int = 100
    @Option(help: "Fault profile: none, crash, outage, duplicates, all, or swarm (each seed draws its faults, rates and shape).") var faults: String = "all"
    @Option(help: "Run a bug-zoo variant of the pipeline instead of the correct one (see --list-bugs).") var bug: String?
    @Flag(help: "List the bug-zoo variants and exit.") var listBugs = false
    @Flag(help: "Shrink the first failing seed to a minimal replay (fewer orders, components, faults).") var shrink = false
    @Option(help: "API instances.") var apis: Int = 2
    @Option(help: "Kafka outbox relays.") var relays: Int = 2
    @Option(name: .customLong("sb-relays"), help: "Service Bus outbox relays.") var serviceBusRelays: Int = 1
    @Option(help: "Fulfilment consumers in the group.") var consumers: Int = 2
    @Option(help: "Partitions of the orders topic.") var partitions: Int = 3
    @Option(help: "Write the history of the (single) seed as JSON lines to this file.") var trace: String?
    @Option(help: "Draw the (single) seed as a self-contained HTML timeline in this file.") var timeline: String?
    @Option(help: "Run a replay file (from a failure or fixtures/) and check its expected verdict.") var replay: String?
    @Option(help: "Directory for replay files of failing seeds.") var failuresDir: String = "."
    @Option(help: "Save the (single) seed as a replay file with the verdict it gave, e.g. for fixtures/.") var saveReplay: String?
    @Option(help: "Run seeds on this many cores (default: all); the output is the same for any number.") var jobs: Int?
    @Option(help: "Check the history of a real run (scripts/chaos) against the same invariants; print its summary.") var checkHistory: String?

    func validate() throws {
        guard faults == "swarm" || FaultProfile(rawValue: faults) != nil else {
            throw ValidationError("--faults must be one of \(FaultProfile.allCases.map(\.rawValue).joined(separator: ", ")), swarm; got \"\(faults)\"")
        }
        if let bug, ZooBug(rawValue: bug) == nil {
            throw ValidationError("unknown bug \"\(bug)\"; order-sim --list-bugs shows them")
        }
        guard seeds >= 1 else { throw ValidationError("--seeds must be at least 1") }
        if let jobs, !(1...1024).contains(jobs) { throw ValidationError("--jobs must be in 1...1024; got \(jobs)") }
        guard orders >= 1, orders <= 100_000 else { throw ValidationError("--orders must be in 1...100000") }
        for (name, value) in [("--apis", apis), ("--relays", relays), ("--sb-relays", serviceBusRelays), ("--consumers", consumers), ("--partitions", partitions)] {
            guard (1...64).contains(value) else { throw ValidationError("\(name) must be in 1...64; got \(value)") }
        }
        if trace != nil, seeds > 1 { throw ValidationError("--trace records one seed: use it with --seed S and no --seeds") }
        if timeline != nil, seeds > 1 { throw ValidationError("--timeline draws one seed: use it with --seed S and no --seeds") }
        if saveReplay != nil, seeds > 1 { throw ValidationError("--save-replay records one seed: use it with --seed S and no --seeds") }
    }

    func run() throws {
        if listBugs {
            let width = ZooBug.allCases.map(\.rawValue.count).max() ?? 0
            for bug in ZooBug.allCases { say("\(bug.rawValue.padding(toLength: width + 2, withPad: " ", startingAt: 0))\(bug.summary)") }
            return
        }
        if let replay { return try runReplay(replay) }
        if let checkHistory { return try runHistoryCheck(checkHistory) }
        var options = SimulationOptions()
        options.orders = orders
        options.faults = FaultProfile(rawValue: faults)?.kinds ?? []
        options.bug = bug.flatMap(ZooBug.init(rawValue:))
        options.apiInstances = apis
        options.relays = relays
        options.serviceBusRelays = serviceBusRelays
        options.consumers = consumers
        options.partitions = partitions
        options.recordHistory = trace != nil || timeline != nil
        let first = seed ?? 1
        let report = runSeeds(options, from: first, count: seeds)
        if shrink, let failure = report.failures.first { shrinkAndReport(failure) }
        if !report.failures.isEmpty { throw ExitCode(1) }
    }

    private func runHistoryCheck(_ path: String) throws {
        let report: HistoryCheck.Report
        do { report = HistoryCheck.check(try HistoryCheck.parse(jsonLines: String(contentsOfFile: path, encoding: .utf8))) } catch {
            FileHandle.standardError.write(Data("error: cannot read the history \(path): \(error)\n".utf8))
            throw ExitCode(2)
        }
        for violation in report.violations.prefix(50) { say("VIOLATION \(violation)") }
        say(report.summary)
        if !report.violations.isEmpty { throw ExitCode(1) }
    }

    private func runReplay(_ path: String) throws {
        let file: ReplayFile
        do { file = try ReplayFile.load(path: path) } catch {
            FileHandle.standardError.write(Data("error: \(error)\n".utf8))
            throw ExitCode(2)
        }
        var options = try file.options()
        options.recordHistory = trace != nil || timeline != nil
        say("replaying \(path): seed \(file.seed), \(file.orders) orders, expected \(file.expectedViolation ?? "pass")")
        let report = runSeeds(options, from: file.seed, count: 1)
        let got = report.failures.first?.violations.first?.invariant
        if got != file.expectedInvariant {
            say("replay verdict differs: expected \(file.expectedViolation ?? "pass"), got \(got?.rawValue ?? "pass")")
            throw ExitCode(1)
        }
        say("replay reproduced: \(got?.rawValue ?? "pass")")
        if got != nil { throw ExitCode(1) }
    }

    struct Report {
        var failures: [SeedOutcome] = []
        var failingOptions: [SimulationOptions] = []
    }

    private func shrinkAndReport(_ failure: SeedOutcome) {
        let invariant = failure.violations[0].invariant
        var options = failure.options
        options.recordHistory = false
        say("shrinking seed \(failure.seed) (\(invariant.rawValue)) …")
        var shrinker = Shrinker(invariant: invariant)
        let result = shrinker.shrink(options)
        let minimal = result.options
        say(
            "minimal run after \(result.runs) runs: \(minimal.orders) orders, \(minimal.apiInstances) api, \(minimal.relays) relays, \(minimal.serviceBusRelays) sb-relays, \(minimal.consumers) consumers, \(minimal.partitions) partitions, \(result.outcome.schedule.count) faults"
        )
        say("  \(result.outcome.violations.first.map(String.init(describing:)) ?? "no violation?")")
        say("schedule:")
        for entry in result.outcome.history.entries where entry.process == "nemesis" || (entry.type == .invoke && entry.process.hasPrefix("client-")) {
            say(String(format: "  t=%8.3fs  %@  %@  %@", Double(entry.time) / 1e6, entry.process, entry.function, entry.value))
        }
        let path = (failuresDir as NSString).appendingPathComponent("order-sim-shrunk-\(failure.seed).json")
        let file = ReplayFile(options: minimal, expectedViolation: invariant, note: "shrunk from seed \(failure.seed): \(result.outcome.violations.first?.detail ?? "")")
        do { try file.write(to: path) } catch { say("error: cannot write \(path): \(error.localizedDescription)") }
        say("shrunk: events=\(result.events) file=\(path)")
    }

    private func runSeeds(_ base: SimulationOptions, from first: UInt64, count: Int) -> Report {
        let interactive = isatty(STDOUT_FILENO) != 0
        let clock = ContinuousClock()
        let start = clock.now
        var lastProgress = start
        var report = Report()
        var summary = SeedsSummary()
        let swarm = faults == "swarm" && replay == nil
        let optionsOfSeed: @Sendable (Int) -> SimulationOptions = { n in
            var options = base
            options.seed = first &+ UInt64(n)
            if swarm {
                options = SimulationOptions.swarm(seed: options.seed, orders: base.orders)
                options.bug = base.bug
                options.recordHistory = base.recordHistory
            }
            return options
        }
        // Outcomes arrive in seed order whatever --jobs is, so every line below comes out the same.
        Simulation.run(count: count, jobs: jobs ?? ProcessInfo.processInfo.activeProcessorCount, options: optionsOfSeed) { n, outcome in
            let options = outcome.options
            summary.add(outcome)
            if let saveReplay {
                let file = ReplayFile(options: options, expectedViolation: outcome.violations.first?.invariant)
                do {
                    try file.write(to: saveReplay)
                    say("replay file written to \(saveReplay) (expected verdict: \(file.expectedViolation ?? "pass"))")
                } catch {
                    say("error: cannot write \(saveReplay): \(error.localizedDescription)")
                }
            }
            if let timeline {
                do {
                    try Timeline.html(for: outcome).write(toFile: timeline, atomically: true, encoding: .utf8)
                    say("timeline written to \(timeline)")
                } catch {
                    say("error: cannot write \(timeline): \(error.localizedDescription)")
                }
            }
            if let trace {
                try? outcome.history.jsonLines.write(toFile: trace, atomically: true, encoding: .utf8)
                say("history: \(outcome.history.entries.count) entries written to \(trace)")
            }
            if !outcome.passed {
                if interactive { say() }
                report.failures.append(outcome)
                announce(outcome, options: options)
            }
            let sinceLast = clock.now - lastProgress
            if count > 1, sinceLast > (interactive ? .milliseconds(200) : .seconds(2)) || n == count - 1 {
                lastProgress = clock.now
                let wall = (clock.now - start).seconds
                let rate = Double(n + 1) / max(wall, 0.001)
                let line = String(
                    format: "progress: %d/%d seeds, %d failures, %.0f seeds/s, eta %.0fs", n + 1, count, report.failures.count, rate, Double(count - n - 1) / max(rate, 0.001))
                if interactive {
                    // One live line on a terminal; a plain line per period when piped or logged.
                    // stdout on a terminal is line-buffered, so earlier lines are out already.
                    FileHandle.standardOutput.write(Data(("\r\u{1B}[2K" + line + (n == count - 1 ? "\n" : "")).utf8))
                } else {
                    say(line)
                }
            }
        }
        let wall = (clock.now - start).seconds
        printCoverage(base, fired: summary.faultsFired, recoveries: summary.recoveries)
        say(
            String(
                format: "seeds=%d orders=%d failures=%d sim_seconds=%.1f wall_seconds=%.2f", count, summary.ordersPersisted, report.failures.count,
                Double(summary.simulatedMicroseconds) / 1e6, wall))
        return report
    }

    private func announce(_ outcome: SeedOutcome, options: SimulationOptions) {
        let first = outcome.violations[0]
        say("FAILED seed \(outcome.seed): invariant \(first.invariant.rawValue) violated")
        for violation in outcome.violations.prefix(5) { say("  - \(violation)") }
        if outcome.violations.count > 5 { say("  … \(outcome.violations.count - 5) more") }
        let path = (failuresDir as NSString).appendingPathComponent("order-sim-failure-\(outcome.seed).json")
        let file = ReplayFile(options: options, expectedViolation: first.invariant, note: first.detail)
        if (try? file.write(to: path)) != nil { say("  replay file: \(path)") }
        let shape =
            faults == "swarm"
            ? ""
            : " --apis \(options.apiInstances) --relays \(options.relays) --sb-relays \(options.serviceBusRelays) --consumers \(options.consumers) --partitions \(options.partitions)"
        say(
            "  replay: order-sim --seed \(outcome.seed) --orders \(options.orders) --faults \(faults)\(options.bug.map { " --bug \($0.rawValue)" } ?? "")\(shape) --trace seed-\(outcome.seed).jsonl"
        )
        say("      or: order-sim --replay \(path)")
    }

    private func printCoverage(_ options: SimulationOptions, fired: [Int], recoveries: RecoveryCounts) {
        say("faults fired:")
        for kind in FaultKind.allCases {
            let count = fired[kind.index]
            let enabled = faults == "swarm" || options.enabled(kind)  // swarm seeds draw every kind now and then
            let flag = enabled ? (count == 0 ? "  <- enabled but never fired" : "") : "  (off)"
            say("  \(kind.rawValue.padding(toLength: 22, withPad: " ", startingAt: 0)) \(String(count).leftPadded(8))\(flag)")
        }
        say("recovery paths run:")
        for (name, count) in recoveries.rows {
            say("  \(name.padding(toLength: 52, withPad: " ", startingAt: 0)) \(String(count).leftPadded(8))\(count == 0 ? "  <- never ran" : "")")
        }
    }
}

/// Writes a line to stdout at once (unbuffered), so progress lines appear as they happen even when piped.
func say(_ line: String = "") {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) * 1e-18 }
}

extension String {
    func leftPadded(_ width: Int) -> String { String(repeating: " ", count: max(0, width - count)) + self }
}

OrderSim.main()
