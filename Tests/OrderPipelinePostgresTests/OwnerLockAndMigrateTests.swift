import Foundation
import OrderPipelineCore
import OrderPipelinePostgres
import Testing

@Suite("Relay owner lock and concurrent migrations", .enabled(if: TestDatabase.isConfigured, "DATABASE_URL is not set"), .timeLimit(.minutes(5)))
struct OwnerLockAndMigrateTests {
    @Test("a second live process with the same RELAY_ID is refused, naming it; another owner is not; released, it is free")
    func ownerLock() async throws {
        let store = try await PostgresUnderTest()
        let first = try await OwnerLock.acquire(owner: "relay-a", settings: store.settings, logger: TestDatabase.logger)
        let start = ContinuousClock.now
        do {
            let second = try await OwnerLock.acquire(owner: "relay-a", settings: store.settings, logger: TestDatabase.logger, patience: .milliseconds(600))
            second.release()
            Issue.record("the second lock with the same owner was granted")
        } catch let refusal as OwnerLock.Refusal {
            #expect(refusal.description.contains("RELAY_ID relay-a"))
            #expect(ContinuousClock.now - start >= .milliseconds(600))
        }
        let other = try await OwnerLock.acquire(owner: "relay-b", settings: store.settings, logger: TestDatabase.logger)
        #expect(try await first.verify())
        first.release()
        let again = try await OwnerLock.acquire(owner: "relay-a", settings: store.settings, logger: TestDatabase.logger, patience: .seconds(5))
        #expect(try await again.verify())
        again.release()
        other.release()
        await store.tearDown()
    }

    @Test("the lock's session terminated (a database restart): verify() takes it again")
    func ownerLockRetaken() async throws {
        let store = try await PostgresUnderTest()
        let lock = try await OwnerLock.acquire(owner: "relay-r", settings: store.settings, logger: TestDatabase.logger)
        let terminated = try await adminQuery(store.settings, "SELECT pg_terminate_backend($1::int, 5000)::text", [.int(Int(lock.backendPID))])
        #expect(terminated == ["true"])
        #expect(try await lock.verify())
        // Held again: a newcomer is refused.
        await #expect(throws: OwnerLock.Refusal.self) {
            try await OwnerLock.acquire(owner: "relay-r", settings: store.settings, logger: TestDatabase.logger, patience: .zero).release()
        }
        lock.release()
        await store.tearDown()
    }

    @Test("two concurrent migrate runs on a new schema both succeed", arguments: 0..<3)
    func concurrentMigrate(round: Int) async throws {
        let url = try #require(TestDatabase.url)
        let schema = "migrate_" + String(UInt64.random(in: 0...UInt64.max) & 0xFFFF_FFFF_FFFF, radix: 16)
        var settings = PostgresConnection.Settings(url: url)
        _ = try await adminQuery(settings, "CREATE SCHEMA \(schema)")
        settings.schema = schema
        settings.applicationName = schema
        let migrator = settings
        let runs = await withTaskGroup(of: Result<[Int], PostgresError>.self) { group in
            for _ in 0..<2 {
                group.addTask {
                    let session = PostgresSession(settings: migrator, logger: TestDatabase.logger)
                    defer { session.close() }
                    return await session.withConnection { c in
                        Result { () throws(PostgresError) in try Migrations.apply(on: try c.get(), logger: TestDatabase.logger) }
                    }
                }
            }
            return await group.reduce(into: []) { $0.append($1) }
        }
        let applied = try runs.map { try $0.get() }
        // Both succeed and every migration is applied exactly once, by one run or the other (each migration is its
        // own transaction under the lock, so the two runs may take turns).
        #expect(applied.flatMap { $0 }.sorted() == Migrations.all.map(\.version).sorted())
        _ = try await adminQuery(PostgresConnection.Settings(url: url), "DROP SCHEMA \(schema) CASCADE")
    }
}
