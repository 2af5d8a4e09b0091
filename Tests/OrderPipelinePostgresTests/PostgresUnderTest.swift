import Foundation
import Logging
import OrderPipelineCore
import OrderPipelinePostgres
import OrderPipelineTestSupport

enum TestDatabase {
    /// Integration tests run only when DATABASE_URL names a reachable PostgreSQL (CI always sets it).
    static var url: String? { TestEnvironment.value("DATABASE_URL") }
    static var isConfigured: Bool { url != nil }
    static let logger = TestEnvironment.logger("test.postgres")

    /// A fresh schema with the migrations applied: every test gets its own, so tests may run in parallel.
    static func freshSchema() async throws -> (settings: PostgresConnection.Settings, drop: @Sendable () async -> Void) {
        guard let url else { throw PostgresError(code: .connectionLost, message: "DATABASE_URL is not set") }
        var random = SystemRandomNumberGenerator()
        let schema = "test_" + String(random.next() & 0xFFFF_FFFF_FFFF, radix: 16)
        let admin = PostgresSession(settings: .init(url: url), logger: logger, name: "pg-admin")
        let created: Result<Void, PostgresError> = await admin.withConnection { connection in
            Result { () throws(PostgresError) in
                try connection.get().execute(script: "CREATE SCHEMA \(schema)")
            }.map { _ in () }
        }
        try created.get()
        var settings = PostgresConnection.Settings(url: url)
        settings.schema = schema
        settings.applicationName = schema
        let migrator = PostgresSession(settings: settings, logger: logger, name: "pg-migrate")
        let migrated: Result<[Int], PostgresError> = await migrator.withConnection { connection in
            Result { () throws(PostgresError) in try Migrations.apply(on: try connection.get(), logger: logger) }
        }
        migrator.close()
        try migrated.get()
        let drop: @Sendable () async -> Void = {
            let _: Void = await admin.withConnection { connection in
                _ = try? connection.get().execute(script: "DROP SCHEMA \(schema) CASCADE")
            }
            admin.close()
        }
        return (settings, drop)
    }
}

/// The real adapter under the contract suite: a pool for `perform`, sessions on their own connections.
final class PostgresUnderTest: StoreUnderTest {
    let store: PostgresStore
    let settings: PostgresConnection.Settings
    private let drop: @Sendable () async -> Void

    init() async throws {
        let (settings, drop) = try await TestDatabase.freshSchema()
        var configuration = PostgresPool.Configuration(url: settings.url)
        configuration.connection = settings
        configuration.size = 2
        self.settings = settings
        self.drop = drop
        self.store = PostgresStore(configuration: configuration, logger: TestDatabase.logger)
    }

    func perform(_ command: StoreCommand) async -> StoreResult { await store.perform(command) }

    func openSession() async throws -> any SessionUnderTest {
        let session = PostgresSession(settings: settings, logger: TestDatabase.logger)
        // The backend pid, read now: `kill()` must not queue behind work the session is busy with.
        let pid: Result<Int32, PostgresError> = await session.withConnection { c in c.map(\.backendPID) }
        return PostgresSessionUnderTest(session: session, store: store, pid: try pid.get())
    }

    func transitions(of order: OrderID) async throws -> [StatusChange] {
        let result: Result<[StatusChange], PostgresError> = await store.pool.withConnection { connection in
            Result { () throws(PostgresError) in
                let rows = try connection.get().query(
                    "SELECT from_status, to_status FROM order_status_transitions WHERE order_id = $1::uuid ORDER BY id",
                    [.text(order.description)])
                return (0..<rows.count).map { row in
                    StatusChange(
                        from: rows.string(row, 0).flatMap { OrderStatus(rawValue: $0) },
                        to: OrderStatus(rawValue: rows.string(row, 1) ?? "") ?? .pending)
                }
            }
        }
        return try result.get()
    }

    func deadLetterSources() async throws -> [String] {
        let result: Result<[String], PostgresError> = await store.pool.withConnection { connection in
            Result { () throws(PostgresError) in
                let rows = try connection.get().query("SELECT source FROM dead_letters ORDER BY source")
                return (0..<rows.count).compactMap { rows.string($0, 0) }
            }
        }
        return try result.get()
    }

    func advanceClock(by seconds: Double) async throws {
        let result: Result<Void, PostgresError> = await store.pool.withConnection { connection in
            Result { () throws(PostgresError) in
                for table in ["kafka_outbox", "service_bus_outbox"] {
                    _ = try connection.get().query(
                        """
                        UPDATE \(table) SET next_attempt_at = next_attempt_at - $1::float8 * interval '1 second',
                            claimed_until = claimed_until - $1::float8 * interval '1 second',
                            published_at = published_at - $1::float8 * interval '1 second'
                        """, [.text(String(seconds))])
                }
            }
        }
        try result.get()
    }

    /// Polls the server until the backend `pid` waits on a lock (no sleeping; gives up after 10 s).
    func waitUntilWaitingOnLock(pid: Int32) async throws {
        let started = ContinuousClock.now
        while ContinuousClock.now - started < .seconds(10) {
            let waiting: Result<Bool, PostgresError> = await store.pool.withConnection { c in
                Result { () throws(PostgresError) in
                    try c.get().query("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1::int", [.int(Int(pid))]).string(0, 0) == "t"
                }
            }
            if try waiting.get() { return }
        }
        throw PostgresError(code: .protocolViolation, message: "backend \(pid) never waited on a lock")
    }

    func tearDown() async {
        store.close()
        await drop()
    }
}

final class PostgresSessionUnderTest: SessionUnderTest {
    let session: PostgresSession
    let store: PostgresStore
    let pid: Int32

    init(session: PostgresSession, store: PostgresStore, pid: Int32) {
        self.session = session
        self.store = store
        self.pid = pid
    }

    func perform(_ command: StoreCommand) async -> StoreResult {
        await session.withConnection { connection in
            switch connection {
            case .success(let c): StoreRecipes.perform(command, on: c)
            case .failure(let error): .failed(.unavailable(error.message))
            }
        }
    }

    func performHoldingOpen(_ command: StoreCommand) async -> StoreResult {
        await session.withConnection { connection in
            switch connection {
            case .success(let c): StoreRecipes.perform(command, on: c, mode: .holdOpen)
            case .failure(let error): .failed(.unavailable(error.message))
            }
        }
    }

    /// `pg_terminate_backend` from another connection: the server ends the session like a crashed client.
    func kill() async {
        let pid = self.pid
        let _: Void = await store.pool.withConnection { connection in
            _ = try? connection.get().query("SELECT pg_terminate_backend($1::int, 5000)", [.int(Int(pid))])
        }
        session.close()
    }
}
