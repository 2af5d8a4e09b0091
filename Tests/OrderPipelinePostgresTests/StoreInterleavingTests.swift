import Foundation
import OrderPipelineCore
import OrderPipelinePostgres
import OrderPipelineSimulation
import Synchronization
import Testing

/// Interleavings over several connections: after a random prefix, a group of 2–3 steps runs at once, each on its
/// own connection. Every member but the last runs its transaction up to COMMIT and holds it open (with its
/// locks); the last then runs until it finishes or waits on a lock (seen in `pg_stat_activity`, no sleeping);
/// then the held transactions commit in order and the last one completes. The outcome (the group's replies and
/// the final state) must be one of the model's serial orders of the group.
@Suite("Store interleavings", .enabled(if: TestDatabase.isConfigured, "DATABASE_URL is not set"), .timeLimit(.minutes(5)))
struct StoreInterleavingTests {
    /// A tenth of the sequences, in two parallel shards.
    static let shards = 2

    @Test("concurrent groups end as one of their serial orders", arguments: 0..<shards)
    func concurrentGroups(shard: Int) async throws {
        try await DifferentialDatabase.with { database in
            let peers = try await Peers(database)
            defer { peers.close() }
            let indices = Array(stride(from: shard, to: max(1, Differential.sequences / 10), by: Self.shards))
            for index in indices {
                let seed = Differential.firstSeed + UInt64(index)
                var generator = StoreCommandGenerator(seed: seed)
                let prefix = (0..<Differential.length(seed: seed)).map { _ in generator.next() }
                let group = generator.concurrentGroup()
                if let report = try await peers.check(prefix: prefix, group: group, seed: seed) {
                    Issue.record(Comment(rawValue: report))
                    return
                }
            }
            // The groups really overlapped: in some (about a third), the last member waited on a held member's lock.
            if indices.count >= 20 { #expect(peers.blocked.value > 0, "\(peers.blocked.value) of \(indices.count) groups waited on a lock") }
        }
    }

    struct Pinned: Sendable, CustomTestStringConvertible {
        var prefix: [Step]
        var group: [Step]
        var testDescription: String { "\(group.count) concurrent after \(prefix.count) steps" }
    }

    /// Reported groups pinned as regression tests: the shrunk prefix and the group.
    static let regressions: [Pinned] = [
        // The same event delivered twice at once to a Processing order: skipped, then a duplicate.
        Pinned(
            prefix: [
                .create(order: 1, key: "key-1", body: 3, at: 2233982),
                .transition(order: 1, to: .processing, at: 9733677, reason: nil),
            ],
            group: [
                .fulfil([.init(1, .orderCreated)], at: 27576905),
                .fulfil([.init(1, .orderCreated)], at: 27576905),
            ]),
        // Three claimers at once share the heads of three orders without overlap.
        Pinned(
            prefix: [
                .create(order: 1, key: "key-1", body: 0, at: 1_000_000),
                .transition(order: 1, to: .failed, at: 1_500_000, reason: "out of stock"),
                .create(order: 2, key: "key-2", body: 1, at: 2_000_000),
                .create(order: 3, key: "key-3", body: 2, at: 3_000_000),
            ],
            group: [
                .claim(.kafka, owner: "relay-1", limit: 1, at: 4_000_000, lease: 5_000_000),
                .claim(.kafka, owner: "relay-2", limit: 1, at: 4_000_000, lease: 5_000_000),
                .claim(.kafka, owner: "relay-3", limit: 3, at: 4_000_000, lease: 5_000_000),
            ]),
    ]

    @Test("pinned groups end as one of their serial orders", arguments: regressions)
    func regression(_ pinned: Pinned) async throws {
        try await DifferentialDatabase.with { database in
            let peers = try await Peers(database)
            defer { peers.close() }
            let differences = try await peers.differences(prefix: pinned.prefix, group: pinned.group)
            #expect(differences.isEmpty, Comment(rawValue: differences.joined(separator: "\n")))
        }
    }
}

/// Extra sessions on a differential database, one per member of a concurrent group.
final class Peers: Sendable {
    let database: DifferentialDatabase
    let sessions: [PostgresSession]
    let pids: [Int32]
    /// How many groups' last member waited on a lock (the runs' evidence that the groups overlapped).
    let blocked = Counter()

    init(_ database: DifferentialDatabase) async throws {
        self.database = database
        sessions = (0..<3).map { PostgresSession(settings: database.settings, logger: TestDatabase.logger, name: "pg-peer-\($0)") }
        var pids: [Int32] = []
        for session in sessions {
            let pid: Result<Int32, PostgresError> = await session.withConnection { c in c.map(\.backendPID) }
            pids.append(try pid.get())
        }
        self.pids = pids
    }

    func close() { sessions.forEach { $0.close() } }

    /// The model's outcome for every serial order of the group (replies in the group's own order).
    static func serialOutcomes(prefix: [Step], group: [Step]) -> [Outcome] {
        permutations(Array(group.indices)).map { order in
            let model = PostgresModel()
            var outcome = Differential.runModel(prefix, model: model)
            var replies = [StoreResult](repeating: .unknown, count: group.count)
            for index in order { replies[index] = Differential.perform(group[index], on: model) }
            outcome.replies += replies
            outcome.snapshot = StoreSnapshot(model)
            return outcome
        }
    }

    static func permutations(_ values: [Int]) -> [[Int]] {
        guard values.count > 1 else { return [values] }
        return values.indices.flatMap { index in
            var rest = values
            let head = rest.remove(at: index)
            return permutations(rest).map { [head] + $0 }
        }
    }

    /// Runs the prefix on the main session, then the group as described on `StoreInterleavingTests`.
    func run(prefix: [Step], group: [Step]) async throws -> Outcome {
        var outcome = try await database.run(prefix)
        var replies: [StoreResult] = []
        for (index, step) in group.dropLast().enumerated() {
            try await setClock(step)
            replies.append(
                await sessions[index].withConnection { c in
                    switch c {
                    case .success(let c): StoreRecipes.perform(step.command, on: c, mode: .holdOpen)
                    case .failure(let error): .failed(.unavailable(error.message))
                    }
                })
        }
        let last = group.count - 1
        try await setClock(group[last])
        let finished = Flag()
        async let lastReply = sessions[last].withConnection { [command = group[last].command] c -> StoreResult in
            defer { finished.set() }
            switch c {
            case .success(let c): return StoreRecipes.perform(command, on: c)
            case .failure(let error): return .failed(.unavailable(error.message))
            }
        }
        if try await waitUntilFinishedOrBlocked(pid: pids[last], finished: finished) { blocked.add() }
        for index in 0..<last {
            let committed = await sessions[index].withConnection { c in
                (try? c.get()).map { StoreRecipes.finish(on: $0, commit: true) } ?? .unknown
            }
            if case .failed = committed { replies[index] = committed }
        }
        replies.append(await lastReply)
        outcome.replies += replies
        outcome.snapshot = try await database.snapshot()
        return outcome
    }

    /// Sets the database clock to the step's time on the main session (a transaction of its own: held members only
    /// read the clock, so this never waits on them).
    private func setClock(_ step: Step) async throws {
        guard let time = step.time else { return }
        let result: Result<Void, PostgresError> = await database.session.withConnection { c in
            Result { () throws(PostgresError) in try DatabaseClock.set(time, try c.get()) }
        }
        try result.get()
    }

    /// Polls the server until the session has finished its step or waits on a lock (a held member's); true if
    /// it waited.
    private func waitUntilFinishedOrBlocked(pid: Int32, finished: Flag) async throws -> Bool {
        let started = ContinuousClock.now
        while !finished.isSet {
            let waiting: Result<Bool, PostgresError> = await database.session.withConnection { c in
                Result { () throws(PostgresError) in
                    try c.get().query("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1::int", [.int(Int(pid))]).string(0, 0) == "t"
                }
            }
            if try waiting.get() { return true }
            if ContinuousClock.now - started > .seconds(10) { throw PostgresError(code: .protocolViolation, message: "a concurrent step neither finished nor waited") }
        }
        return false
    }

    /// The differences between PostgreSQL's outcome and the nearest serial outcome of the model (empty: allowed).
    func differences(prefix: [Step], group: [Step]) async throws -> [String] {
        let actual = try await run(prefix: prefix, group: group)
        let steps = prefix + group
        let candidates = Self.serialOutcomes(prefix: prefix, group: group).map { $0.differences(from: actual, steps: steps, concurrent: true) }
        return candidates.contains(where: \.isEmpty) ? [] : candidates.min { $0.count < $1.count } ?? []
    }

    func check(prefix: [Step], group: [Step], seed: UInt64) async throws -> String? {
        let found = try await differences(prefix: prefix, group: group)
        guard !found.isEmpty else { return nil }
        let shrunk = await Differential.shrink(prefix) { candidate in
            (try? await self.differences(prefix: candidate, group: group).isEmpty == false) ?? false
        }
        return "Concurrent group (members on their own connections, all but the last held open until the last runs):\n"
            + Step.source(group) + "\nmatches no serial order of the model after the prefix below.\n"
            + Differential.report(
                seed: seed, original: prefix.count, shrunk: shrunk,
                differences: try await differences(prefix: shrunk, group: group), suite: "StoreInterleavingTests",
                pasteInto: "`StoreInterleavingTests.regressions` as the prefix, with the group above")
    }
}

/// Set once, from the thread that runs a session's job.
final class Flag: Sendable {
    private let state = Mutex(false)
    func set() { state.withLock { $0 = true } }
    var isSet: Bool { state.withLock { $0 } }
}

final class Counter: Sendable {
    private let state = Mutex(0)
    func add() { state.withLock { $0 += 1 } }
    var value: Int { state.withLock { $0 } }
}
