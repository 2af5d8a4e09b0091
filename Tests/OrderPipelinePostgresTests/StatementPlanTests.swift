import OrderPipelineCore
import OrderPipelineTestSupport
import Testing

@testable import OrderPipelinePostgres

/// A session caches a prepared statement's generic plan, made with whatever statistics the tables had then, until
/// the next analyze: every statement that reaches a row by key must plan a lookup by key even on empty or small tables.
@Suite("PostgreSQL: statement plans whatever the statistics", .enabled(if: TestDatabase.isConfigured, "DATABASE_URL is not set"), .timeLimit(.minutes(5)))
struct StatementPlanTests {
    /// A session caches a prepared statement's generic plan, made with whatever statistics the tables had then. On
    /// fresh, empty tables the head-of-line probe planned as an anti join had no index condition: every candidate
    /// scanned the whole partial index, and a 27,000-row backlog drained at 250 rows/s until an analyze.
    @Test("planned on empty tables, the head-of-line probe is an index lookup by order and sequence", arguments: OutboxKind.allCases)
    func headOfLineProbeUsesTheIndex(_ kind: OutboxKind) async throws {
        let (settings, drop) = try await TestDatabase.freshSchema()
        let connection = PostgresConnection(settings: settings)
        defer { connection.close() }
        try connection.connect()
        _ = try connection.execute(constant: "SET plan_cache_mode = force_generic_plan")
        _ = try connection.execute(script: "PREPARE probe(text, int8, int) AS \(SQL.claim(kind).sql)")
        let plan = try connection.execute(script: "EXPLAIN EXECUTE probe('owner', 1000000, 500)")
        let text = (0..<plan.count).compactMap { plan.string($0, 0) }.joined(separator: "\n")
        #expect(text.contains("SubPlan"), "\(text)")
        #expect(text.contains("Index Cond: ((order_id = o.order_id) AND (sequence < o.sequence))"), "\(text)")
        // The held-back check: the owner's claimed rows by their index, then one probe each for a later row.
        #expect(text.contains("_claimed_by on") && text.contains("Index Cond: (claimed_by = $1)"), "\(text)")
        #expect(text.contains(".order_id) AND (sequence > "), "\(text)")
        #expect(!text.contains("Seq Scan"), "\(text)")
        // The take-over of expired leases: the expired ones by `_lease`, the same probe, the update by key.
        _ = try connection.execute(script: "PREPARE takeover(text, int8, int) AS \(SQL.takeOverExpired(kind).sql)")
        let takeover = try connection.execute(script: "EXPLAIN EXECUTE takeover('owner', 1000000, 500)")
        let takeoverText = (0..<takeover.count).compactMap { takeover.string($0, 0) }.joined(separator: "\n")
        #expect(takeoverText.contains("_lease on") && takeoverText.contains("Index Cond: (claimed_until <= now())"), "\(takeoverText)")
        #expect(takeoverText.contains("Index Cond: ((order_id = e.order_id) AND (sequence < e.sequence))"), "\(takeoverText)")
        #expect(!takeoverText.contains("Seq Scan"), "\(takeoverText)")
        await drop()
    }

    /// Until autovacuum's first analyze the planner has no statistics and costs every path over the partial indexes
    /// alike: on a backlog it probed the head of line through the `(sequence)` index (walking the backlog before each
    /// candidate) and settled by scanning every unsettled row. A never-analyzed table with a backlog, generic plans:
    /// the probes and the settle must find their rows by order, by primary key or by owner (`Migrations.plans`).
    @Test("on a table never analyzed, with a backlog, the probes look up by order and the settle by key or owner", arguments: OutboxKind.allCases)
    func neverAnalyzedBacklog(_ kind: OutboxKind) async throws {
        let (settings, drop) = try await TestDatabase.freshSchema()
        let table = kind == .kafka ? "kafka_outbox" : "service_bus_outbox"
        let plans = try await withCleanup {
            try await offPool { () throws -> [String] in
                let connection = PostgresConnection(settings: settings)
                defer { connection.close() }
                try connection.connect()
                func plan(_ statement: String) throws -> String {
                    let rows = try connection.execute(script: statement)
                    return (0..<rows.count).compactMap { rows.string($0, 0) }.joined(separator: "\n")
                }
                _ = try connection.execute(
                    script: """
                        ALTER TABLE \(table) SET (autovacuum_enabled = off);
                        INSERT INTO \(table) (event_id, order_id, event_type, occurred_at, payload, next_attempt_at)
                            SELECT gen_random_uuid(), gen_random_uuid(), 'OrderCreated', now(), '\\x7b7d', now() FROM generate_series(1, 20000);
                        UPDATE \(table) SET published_at = now() WHERE sequence <= 4000;
                        UPDATE \(table) SET claimed_by = 'owner', claimed_until = now() + interval '1 minute'
                            WHERE sequence > 4000 AND sequence <= 5000;
                        UPDATE \(table) SET claimed_by = 'gone', claimed_until = now() - interval '1 minute'
                            WHERE sequence > 5000 AND sequence <= 5200;
                        SET plan_cache_mode = force_generic_plan;
                        """)
                _ = try connection.execute(script: "PREPARE claim(text, int8, int) AS \(SQL.claim(kind).sql)")
                _ = try connection.execute(script: "PREPARE settle AS \(SQL.settle(kind).sql)")
                _ = try connection.execute(script: "PREPARE takeover(text, int8, int) AS \(SQL.takeOverExpired(kind).sql)")
                let batch = "'{" + (4_001...4_500).map(String.init).joined(separator: ",") + "}'"
                let settleArguments = kind == .kafka ? "'owner', \(batch), '{}', '{}', '{}', '{}', '{}', '{}', '{}'" : "'owner', \(batch), '{}', '{}', '{}', '{}', '{}'"
                var plans: [String] = []
                // A full claim, a claim short of its limit (the held-back check runs), a settle, a take-over of the
                // expired leases; each rolled back.
                for statement in [
                    "EXECUTE claim('owner', 60000000, 500)", "EXECUTE claim('owner', 60000000, 100000)", "EXECUTE settle(\(settleArguments))",
                    "EXECUTE takeover('owner', 60000000, 500)",
                ] {
                    _ = try connection.execute(constant: "BEGIN")
                    plans.append(try plan("EXPLAIN (ANALYZE, BUFFERS, TIMING OFF) \(statement)"))
                    _ = try connection.execute(constant: "ROLLBACK")
                }
                return plans
            }
        } cleanup: {
            await drop()
        }
        let (full, short, settle, takeover) = (plans[0], plans[1], plans[2], plans[3])
        for claim in [full, short] {
            #expect(claim.contains("Index Scan using \(table)_claimable on \(table) o "), "\(claim)")
            #expect(claim.contains("Index Cond: ((order_id = o.order_id) AND (sequence < o.sequence))"), "\(claim)")
            // Neither probe (p: earlier rows of a candidate's order, s: later rows of a held one) walks the claim index.
            #expect(!claim.contains("_claimable on \(table) p") && !claim.contains("_claimable on \(table) s"), "\(claim)")
        }
        #expect(short.contains(".order_id) AND (sequence > "), "\(short)")
        #expect(!settle.contains("_claimable") && !settle.contains("_unsettled_order"), "\(settle)")
        #expect(settle.contains("\(table)_pkey") || settle.contains("\(table)_claimed_by"), "\(settle)")
        // The take-over visits the expired leases only, not the backlog nor the live leases, and takes all 200.
        #expect(takeover.contains("\(table)_lease on \(table) e"), "\(takeover)")
        #expect(takeover.contains("Index Cond: ((order_id = e.order_id) AND (sequence < e.sequence))"), "\(takeover)")
        #expect(!takeover.contains("Seq Scan") && !takeover.contains("_claimable"), "\(takeover)")
        #expect(takeover.contains("Update on \(table) o") && takeover.contains("(actual rows=200 loops=1)"), "\(takeover)")
    }

    /// Planned while `orders` was small (analyzed at 300 rows), the fulfil joined every record to `orders` through a
    /// hash of a sequential scan; the cached plan kept scanning as the table grew, and at 1,000 orders/s on a fresh
    /// database a fulfil went from 0.6 to 2 ms within 10 s (docs/POSTGRES.md). Every read of `orders` must be by key.
    @Test("planned while orders is small, the fulfil reads orders by key only")
    func fulfilReadsOrdersByKey() async throws {
        let (settings, drop) = try await TestDatabase.freshSchema()
        let plan = try await withCleanup {
            try await offPool { () throws -> String in
                let connection = PostgresConnection(settings: settings)
                defer { connection.close() }
                try connection.connect()
                _ = try connection.execute(
                    script: """
                        INSERT INTO orders (id, customer_name, customer_email, status, total_amount, created_at)
                            SELECT gen_random_uuid(), 'John Smith', 'john@example.com', 'Pending', 1, now() FROM generate_series(1, 2000);
                        ANALYZE orders;
                        SET plan_cache_mode = force_generic_plan;
                        """)
                _ = try connection.execute(script: "PREPARE fulfil AS \(SQL.fulfil.sql)")
                let id = "'{00000000-0000-0000-0000-000000000001}'"
                let rows = try connection.execute(
                    script: "EXPLAIN EXECUTE fulfil(\(id), '{OrderCreated}', \(id), '{2026-01-01T00:00:00Z}', \(id), '{7b7d}', '{\"\"}')")
                return (0..<rows.count).compactMap { rows.string($0, 0) }.joined(separator: "\n")
            }
        } cleanup: {
            await drop()
        }
        #expect(!plan.contains("Seq Scan on orders"), "\(plan)")
        #expect(plan.contains("using orders_pkey on orders"), "\(plan)")
    }
}
