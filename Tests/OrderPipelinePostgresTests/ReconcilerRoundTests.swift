import Foundation
import OrderPipelineCore
import OrderPipelineTestSupport
import Testing

@testable import OrderPipelinePostgres

/// The reconciler's round reads the pending orders and their rows, never the history (`SQL.pendingOrdersPage`,
/// `SQL.reopenOverdue`): its single join read every order and the whole Kafka outbox each round.
@Suite("PostgreSQL: the reconciler's round", .enabled(if: TestDatabase.isConfigured, "DATABASE_URL is not set"), .timeLimit(.minutes(5)))
struct ReconcilerRoundTests {
    @Test("over several pages: the oldest overdue orders first, at most the limit; the history is not read")
    func pagesOldestFirst() async throws {
        let (settings, drop) = try await TestDatabase.freshSchema()
        // 1,200 pending orders published 10 minutes ago, one every millisecond, then 2,000 fulfilled ones.
        let pending = (0..<1_200).map { _ in OrderID(UUID().uuidString.lowercased())! }
        let fulfilled = (0..<2_000).map { _ in OrderID(UUID().uuidString.lowercased())! }
        let limit = StoreRecipes.reannouncePage * 2 + 100
        let (reply, reopened, plans) = try await withCleanup {
            try await offPool { () throws -> (StoreResult, Int, [String]) in
                let connection = PostgresConnection(settings: settings)
                defer { connection.close() }
                try connection.connect()
                for (orders, status) in [(pending, "Pending"), (fulfilled, "Fulfilled")] {
                    let ids = SQL.arrayLiteral(orders.map(\.description))
                    let events = SQL.arrayLiteral(orders.map { EventID.derived(order: $0, type: .orderCreated).description })
                    _ = try connection.execute(
                        script: """
                            WITH input AS (
                                SELECT * FROM unnest('\(ids)'::uuid[], '\(events)'::uuid[]) WITH ORDINALITY AS i(id, event_id, n)
                            ), o AS (
                                INSERT INTO orders (id, customer_name, customer_email, status, total_amount, created_at)
                                SELECT id, 'John Smith', 'john@example.com', '\(status)', 1, now() - interval '1 hour' + n * interval '1 millisecond'
                                FROM input
                            )
                            INSERT INTO kafka_outbox (event_id, order_id, event_type, occurred_at, payload, next_attempt_at, published_at)
                            SELECT event_id, id, 'OrderCreated', now(), '\\x7b7d', now(), now() - interval '10 minutes' FROM input
                            """)
                }
                let reply = StoreRecipes.perform(.reannounceOverdue(overdueAfter: .seconds(60), limit: limit), on: connection)
                let reopened = try connection.query("SELECT count(*) FROM kafka_outbox WHERE published_at IS NULL").int(0, 0) ?? -1
                // Both statements' plans, generic (as a session caches them), on tables never analyzed.
                _ = try connection.execute(constant: "SET plan_cache_mode = force_generic_plan")
                _ = try connection.execute(script: "PREPARE page AS \(SQL.pendingOrdersPage.sql)")
                _ = try connection.execute(script: "PREPARE reopen AS \(SQL.reopenOverdue.sql)")
                var plans: [String] = []
                for statement in ["EXECUTE page('-infinity', '00000000-0000-0000-0000-000000000000', 500)", "EXECUTE reopen(60000000, '{\(pending[0])}', 10)"] {
                    let rows = try connection.execute(script: "EXPLAIN \(statement)")
                    plans.append((0..<rows.count).compactMap { rows.string($0, 0) }.joined(separator: "\n"))
                }
                return (reply, Int(reopened), plans)
            }
        } cleanup: {
            await drop()
        }
        guard case .committed(.reannounced(let orders)) = reply else {
            Issue.record("reannounceOverdue answered \(reply)")
            return
        }
        #expect(orders.count == limit)
        #expect(Set(orders) == Set(pending.prefix(limit)), "the oldest first, across pages")
        #expect(reopened == limit)
        #expect(plans[0].contains("orders_pending"), "\(plans[0])")
        #expect(plans[1].contains("kafka_outbox_event_id_key"), "\(plans[1])")
        // The check for a later unsettled row looks up the order's rows, never walks the unsettled index per order.
        #expect(plans[1].contains("Index Cond: (order_id = o.id)"), "\(plans[1])")
        for plan in plans { #expect(!plan.contains("Seq Scan"), "\(plan)") }
    }
}
