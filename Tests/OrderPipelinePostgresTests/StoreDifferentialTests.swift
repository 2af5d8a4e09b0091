import OrderPipelineCore
import OrderPipelineSimulation
import OrderPipelineTestSupport
import Testing

/// Random differential testing of the store: the same seeded sequences of store commands run against the
/// simulator's model and against PostgreSQL; every reply and the final state must agree. A difference is reported
/// with its seed and a shrunk sequence to paste into a regression test below. See docs/POSTGRES.md.
@Suite(
    "Store differential", .enabled(if: TestDatabase.isConfigured, "DATABASE_URL is not set"),
    .timeLimit(.minutes(max(5, Differential.sequences / 200))))  // longer runs (ORDERPIPELINE_DIFF_SEQUENCES) get longer
struct StoreDifferentialTests {
    /// Shards run in parallel, each on its own scratch schema and connection.
    static let shards = 4

    @Test("random sequences: the model and PostgreSQL give the same replies and end in the same state", arguments: 0..<shards)
    func randomSequences(shard: Int) async throws {
        try await DifferentialDatabase.with { database in
            for index in stride(from: shard, to: Differential.sequences, by: Self.shards) {
                let seed = Differential.firstSeed + UInt64(index)
                let steps = StoreCommandGenerator.sequence(seed: seed, count: Differential.length(seed: seed))
                if let report = try await database.check(steps, seed: seed) {
                    Issue.record(Comment(rawValue: report))
                    return  // one report per shard keeps the run short and the output readable
                }
            }
        }
    }

    /// Shrunk sequences pinned as regression tests: paste a reported sequence here.
    static let regressions: [[Step]] = [
        // `fulfil` moves only a Pending order (caught with the Pending guard of SQL.fulfil removed).
        [
            .create(order: 4, key: "key-4", body: 4, at: 29716070),
            .transition(order: 4, to: .processing, at: 41931290, reason: nil),
            .fulfil([.init(4, .orderCreated)], at: 54447023),
        ],
        // A retry by an owner that holds no claim on the row changes nothing (caught with the owner fence of the
        // retry part of SQL.settle removed).
        [
            .create(order: 4, key: "key-3", body: 2, at: 17367981),
            .settle(.kafka, owner: "relay-2", at: 17640561, published: [], retries: [.init(1, delay: 5476957, "NULL")], rejections: []),
        ],
        // A retried row is not claimed before its delay has passed on the database clock (caught with
        // `next_attempt_at <= now()` removed from SQL.claim).
        [
            .create(order: 1, key: "key-1", body: 0, at: 1898838),
            .claim(.kafka, owner: "relay-3", limit: 2, at: 10715514, lease: 5740280),
            .settle(.kafka, owner: "relay-3", at: 28376658, published: [], retries: [.init(1, delay: 6609468, "message too large")], rejections: []),
            .claim(.kafka, owner: "relay-1", limit: 3, at: 32543808, lease: 10635420),
        ],
    ]

    @Test("pinned sequences: the model and PostgreSQL agree", arguments: regressions)
    func regression(_ steps: [Step]) async throws {
        try await DifferentialDatabase.with { database in
            let differences = try await database.differences(steps)
            #expect(differences.isEmpty, Comment(rawValue: Differential.report(seed: nil, original: steps.count, shrunk: steps, differences: differences)))
        }
    }

    @Test("the generator is deterministic and covers every command, every reply, stale owners and skewed clocks")
    func generatorCoverage() async {
        #expect(StoreCommandGenerator.sequence(seed: 7, count: 50) == StoreCommandGenerator.sequence(seed: 7, count: 50))
        // 200 sequences through the model: seconds of CPU, off the cooperative pool (`compute`).
        let (replies, staleSettlements, skewed, mixedBatches, mixedCreateBatches, heldBack) = await compute { () -> (Set<String>, Int, Int, Int, Int, Int) in
            var replies: Set<String> = []
            var staleSettlements = 0
            var skewed = 0
            var mixedBatches = 0
            var mixedCreateBatches = 0
            var heldBack = 0
            for seed in UInt64(0)..<200 {
                let model = PostgresModel()
                model.now = Step.instant(0)
                for step in StoreCommandGenerator.sequence(seed: seed, count: Differential.length(seed: seed)) {
                    // A settlement naming a row that another owner has claimed since.
                    if case .settle(let outbox, let owner, _, let published, let retries, let rejections) = step,
                        (published + retries.map(\.sequence) + rejections.map(\.sequence)).contains(where: { sequence in
                            model.outbox(outbox).row(sequence).map { $0.claimedBy != nil && $0.claimedBy != owner } ?? false
                        })
                    {
                        staleSettlements += 1
                    }
                    if case .skewed = step { skewed += 1 }
                    let reply = Differential.reply(step, on: model)
                    replies.insert(String(String(describing: reply).prefix { $0 != "(" }))
                    if case .claimed(_, heldBack: true) = reply { heldBack += 1 }
                    if case .ordersCreated(let outcomes) = reply {
                        for outcome in outcomes { replies.insert("create." + String(String(describing: outcome).prefix { $0 != "(" })) }
                        if Set(outcomes.map(\.isCreated)).count > 1 { mixedCreateBatches += 1 }
                    }
                    if case .fulfilments(let outcomes) = reply {
                        for outcome in outcomes { replies.insert("fulfil." + String(String(describing: outcome).prefix { $0 != "(" })) }
                        if Set(outcomes).count > 1 { mixedBatches += 1 }
                    }
                }
            }
            return (replies, staleSettlements, skewed, mixedBatches, mixedCreateBatches, heldBack)
        }
        let expected: Set<String> = [
            "ordersCreated", "create.created", "create.replayed", "create.keyReused", "transitioned", "orderNotFound", "illegalTransition",
            "claimed", "settled", "released", "fulfilments", "deadLettered",
            "fulfil.fulfilled", "fulfil.duplicate", "fulfil.skipped", "fulfil.recorded", "fulfil.orderMissing",
            "fulfil.fulfilledByEarlierAttempt",
        ]
        #expect(replies == expected)
        #expect(mixedBatches > 50, "\(mixedBatches) fulfil batches with more than one kind of answer")
        #expect(mixedCreateBatches > 20, "\(mixedCreateBatches) create batches where some orders were created and some not")
        #expect(staleSettlements > 10, "\(staleSettlements) settlements by a stale owner")
        #expect(skewed > 50, "\(skewed) steps stamped by a skewed clock")
        #expect(heldBack > 20, "\(heldBack) claims that reported rows held back")
    }
}
