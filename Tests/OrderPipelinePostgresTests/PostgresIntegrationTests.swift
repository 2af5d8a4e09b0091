import Foundation
import OrderPipelineCore
import OrderPipelinePostgres
import Testing

@Suite("PostgreSQL adapter", .enabled(if: TestDatabase.isConfigured, "DATABASE_URL is not set"))
struct PostgresIntegrationTests {
    @Test("migrations are recorded and applying them again changes nothing")
    func migrationsIdempotent() async throws {
        let store = try await PostgresUnderTest()
        defer { Task { await store.tearDown() } }
        let session = PostgresSession(settings: store.settings, logger: TestDatabase.logger)
        defer { session.close() }
        let again: Result<[Int], PostgresError> = await session.withConnection { c in
            Result { () throws(PostgresError) in try Migrations.apply(on: try c.get(), logger: TestDatabase.logger) }
        }
        #expect(try again.get() == [])
        #expect(try await store.store.schemaVersion() == Migrations.latest)
    }

    @Test("an outbox-inserting transaction wakes a LISTEN subscriber")
    func listenNotify() async throws {
        let store = try await PostgresUnderTest()
        let listener = PostgresListener(settings: store.settings, logger: TestDatabase.logger)
        var wakes = listener.wakes(for: .kafka).makeAsyncIterator()
        // The first wake comes on connect (notifications sent while not listening are lost).
        #expect(await wakes.next() == .kafka)
        #expect(await store.perform(.createOrder(newOrder(1))) == .committed(.orderCreated(newOrder(1).order)))
        #expect(await wakes.next() == .kafka)
        listener.close()
        await store.tearDown()
    }

    @Test("reads: an order by id and the newest-first list with a keyset cursor")
    func reads() async throws {
        let store = try await PostgresUnderTest()
        for n in UInt64(1)...5 {
            _ = await store.perform(.createOrder(newOrder(n, created: at(Double(n)))))
        }
        #expect(try await store.store.order(orderID(3)) == newOrder(3, created: at(3)).order)
        #expect(try await store.store.order(orderID(99)) == nil)
        let first = try await store.store.orders(limit: 2, after: nil)
        #expect(first.map(\.id) == [orderID(5), orderID(4)])
        let second = try await store.store.orders(limit: 2, after: OrderCursor(createdAt: first[1].createdAt, id: first[1].id))
        #expect(second.map(\.id) == [orderID(3), orderID(2)])
        #expect(second[0].items == newOrder(3).order.items)
        let pending = try await store.store.pending(.kafka)
        #expect(pending.count == 5)
        await store.tearDown()
    }

    @Test("a dead database answers .failed, and the pool reconnects when it is back")
    func killedConnectionsReconnect() async throws {
        let store = try await PostgresUnderTest()
        _ = await store.perform(.createOrder(newOrder(1)))
        // Kill every connection of the pool from a separate session.
        var adminSettings = store.settings
        adminSettings.applicationName = "admin-" + store.settings.applicationName
        let admin = PostgresSession(settings: adminSettings, logger: TestDatabase.logger)
        let name = store.settings.applicationName
        let _: Void = await admin.withConnection { c in
            _ = try? c.get().query(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE application_name = $1::text", [.text(name)])
        }
        admin.close()
        // The next command on a dead connection fails (or is unknown); a later one succeeds after reconnecting.
        var result = await store.perform(.createOrder(newOrder(2)))
        for _ in 0..<20 where result != .committed(.orderCreated(newOrder(2).order)) && result != .committed(.orderReplayed(newOrder(2).order)) {
            try await Task.sleep(for: .milliseconds(100))
            result = await store.perform(.createOrder(newOrder(2)))
        }
        #expect(result == .committed(.orderCreated(newOrder(2).order)) || result == .committed(.orderReplayed(newOrder(2).order)))
        await store.tearDown()
    }
}
