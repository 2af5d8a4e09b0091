import OrderPipelineCore
import Testing

@testable import OrderPipelinePostgres

@Suite("PostgreSQL: the claim's plan", .enabled(if: TestDatabase.isConfigured, "DATABASE_URL is not set"))
struct ClaimPlanTests {
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
        await drop()
    }
}
