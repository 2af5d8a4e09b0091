import Foundation
import OrderPipelineCore
import OrderPipelinePostgres
import OrderPipelineSimulation
import OrderPipelineTestSupport

/// What one implementation answered to a sequence, and what it holds afterwards.
struct Outcome: Hashable, Sendable {
    var replies: [StoreResult]
    var snapshot: StoreSnapshot

    /// One line per difference, `self` being the model's outcome. `concurrent`: the steps' transactions overlapped,
    /// and a batch re-issued while its first attempt was still committing reads the snapshot from before that
    /// commit, so PostgreSQL may answer `.duplicate` where a serial run says `.fulfilledByEarlierAttempt` (a count
    /// missed, never one made twice; the work and everything written are the same).
    func differences(from postgres: Outcome, steps: [Step], concurrent: Bool = false) -> [String] {
        func same(_ model: StoreResult, _ actual: StoreResult) -> Bool {
            guard concurrent, case .committed(.fulfilments(let m)) = model, case .committed(.fulfilments(let p)) = actual, m.count == p.count
            else { return model == actual }
            return zip(m, p).allSatisfy { $0 == $1 || ($0 == .fulfilledByEarlierAttempt && $1 == .duplicate) }
        }
        var lines: [String] = []
        for index in steps.indices where !same(replies[index], postgres.replies[index]) {
            lines.append("step \(index) \(steps[index])")
            lines.append("  model:      \(replies[index])")
            lines.append("  PostgreSQL: \(postgres.replies[index])")
        }
        return lines + snapshot.differences(from: postgres.snapshot)
    }
}

enum Differential {
    /// The sequences the default `swift test` runs; ORDERPIPELINE_DIFF_SEQUENCES asks for more (or fewer).
    static var sequences: Int { environment("ORDERPIPELINE_DIFF_SEQUENCES") ?? 1_000 }
    /// The first seed; with ORDERPIPELINE_DIFF_SEQUENCES=1 it replays one reported seed.
    static var firstSeed: UInt64 { environment("ORDERPIPELINE_DIFF_SEED") ?? 0 }

    private static func environment<T: LosslessStringConvertible>(_ name: String) -> T? {
        TestEnvironment.value(name).flatMap { T($0) }
    }

    /// Steps per sequence for `seed`: mostly short (where most bugs show), some long (where state piles up).
    static func length(seed: UInt64) -> Int {
        var random = SplitMix64(seed: seed ^ 0x5EED_1E57)
        return random.chance(0.2) ? 30 + Int(random.below(31)) : 5 + Int(random.below(21))
    }

    /// Runs `steps` on a fresh model whose clock starts where `DatabaseClock.reset` puts PostgreSQL's.
    static func runModel(_ steps: [Step], model: PostgresModel = PostgresModel()) -> Outcome {
        model.now = Step.instant(0)
        let replies = steps.map { perform($0, on: model) }
        return Outcome(replies: replies, snapshot: StoreSnapshot(model))
    }

    /// One step on the model at the step's database time.
    static func perform(_ step: Step, on model: PostgresModel) -> StoreResult { .committed(reply(step, on: model)) }

    static func reply(_ step: Step, on model: PostgresModel) -> StoreReply {
        if let time = step.time { model.now = Step.instant(time) }
        return model.perform(step.command).reply
    }

    /// Runs `steps` on an emptied schema, one transaction each, on one connection.
    static func runPostgres(_ steps: [Step], on c: PostgresConnection) throws(PostgresError) -> Outcome {
        try StoreSnapshot.reset(c)
        try DatabaseClock.reset(c)
        var replies: [StoreResult] = []
        for step in steps {
            if let time = step.time { try DatabaseClock.set(time, c) }
            replies.append(StoreRecipes.perform(step.command, on: c))
        }
        return Outcome(replies: replies, snapshot: try StoreSnapshot(c))
    }

    /// Removes steps greedily — halves, quarters, … single steps — as long as `fails` still holds.
    static func shrink(_ steps: [Step], fails: ([Step]) async -> Bool) async -> [Step] {
        var current = steps
        var chunk = max(1, current.count / 2)
        while true {
            var removed = false
            var start = 0
            while start < current.count {
                var candidate = current
                candidate.removeSubrange(start..<min(start + chunk, current.count))
                if await fails(candidate) {
                    current = candidate
                    removed = true
                } else {
                    start += chunk
                }
            }
            if chunk == 1 && !removed { return current }
            chunk = max(1, chunk / 2)
        }
    }

    /// The report of a difference: the seed, the shrunk sequence as Swift source, and what differs.
    static func report(
        seed: UInt64?, original: Int, shrunk: [Step], differences: [String], suite: String = "StoreDifferentialTests",
        pasteInto: String = "`StoreDifferentialTests.regressions`"
    ) -> String {
        var text = ""
        if let seed {
            text +=
                "The model and PostgreSQL differ on seed \(seed) (\(original) steps; replay: "
                + "ORDERPIPELINE_DIFF_SEED=\(seed) ORDERPIPELINE_DIFF_SEQUENCES=\(suite == "StoreDifferentialTests" ? 1 : 10) swift test --filter \(suite)).\n"
        }
        text += "Shrunk to \(shrunk.count) steps (paste into \(pasteInto)):\n\(Step.source(shrunk))\n"
        return text + differences.joined(separator: "\n")
    }
}

/// A scratch schema and one session on it; sequences run one after another, each on emptied tables.
final class DifferentialDatabase: Sendable {
    let session: PostgresSession
    let settings: PostgresConnection.Settings
    private let drop: @Sendable () async -> Void

    /// A fresh schema with a clock the steps set (`DatabaseClock`): every connection of the differential suite
    /// reads `now()` from it.
    init() async throws {
        var (settings, drop) = try await TestDatabase.freshSchema()
        self.drop = drop
        guard let schema = settings.schema else { throw PostgresError(code: .protocolViolation, message: "a test schema has a name") }
        settings.schema = DatabaseClock.searchPath(schema)
        self.settings = settings
        session = PostgresSession(settings: settings, logger: TestDatabase.logger, name: "pg-diff")
        let installed: Result<Void, PostgresError> = await session.withConnection { connection in
            Result { () throws(PostgresError) in try DatabaseClock.install(schema: schema, on: try connection.get()) }
        }
        do { try installed.get() } catch {
            session.close()
            await drop()
            throw error
        }
    }

    func run(_ steps: [Step]) async throws -> Outcome {
        let result: Result<Outcome, PostgresError> = await session.withConnection { connection in
            Result { () throws(PostgresError) in try Differential.runPostgres(steps, on: try connection.get()) }
        }
        return try result.get()
    }

    func snapshot() async throws -> StoreSnapshot {
        let result: Result<StoreSnapshot, PostgresError> = await session.withConnection { connection in
            Result { () throws(PostgresError) in try StoreSnapshot(try connection.get()) }
        }
        return try result.get()
    }

    /// The differences between the model and PostgreSQL on `steps` (empty: they agree).
    func differences(_ steps: [Step]) async throws -> [String] {
        Differential.runModel(steps).differences(from: try await run(steps), steps: steps)
    }

    /// Checks one sequence; on a difference, shrinks it and answers the report.
    func check(_ steps: [Step], seed: UInt64? = nil) async throws -> String? {
        let found = try await differences(steps)
        guard !found.isEmpty else { return nil }
        let shrunk = await Differential.shrink(steps) { candidate in
            (try? await self.differences(candidate).isEmpty == false) ?? false
        }
        return Differential.report(seed: seed, original: steps.count, shrunk: shrunk, differences: try await differences(shrunk))
    }

    /// Runs `body` on a fresh scratch schema and always drops it.
    static func with(_ body: (DifferentialDatabase) async throws -> Void) async throws {
        try await withTearDown(try await DifferentialDatabase(), tearDown: { await $0.tearDown() }, body)
    }

    func tearDown() async {
        session.close()
        await drop()
    }
}
