#if canImport(Glibc)
import Glibc
#endif
import OrderPipelineCore
@testable import OrderPipelinePostgres
import Testing

/// `notifiesOutbox = false` (`all`'s API and consumer sessions, `-c orderpipeline.notify=off`): the outbox trigger
/// skips its NOTIFY — PostgreSQL serialises notifying commits on one lock held through their WAL flush.
@Suite("PostgreSQL: the outbox NOTIFY can be switched off per session", .enabled(if: TestDatabase.isConfigured, "DATABASE_URL is not set"))
struct RelayNotifyTests {
    static func store(_ settings: PostgresConnection.Settings, notifies: Bool) -> PostgresStore {
        var configuration = PostgresPool.Configuration(url: settings.url)
        configuration.connection = settings
        configuration.connection.notifiesOutbox = notifies
        configuration.size = 1
        return PostgresStore(configuration: configuration, logger: TestDatabase.logger)
    }

    static func backendPID(_ store: PostgresStore) async -> Int32? {
        await store.pool.withConnection { c in (try? c.get().query("SELECT pg_backend_pid()"))?.int(0, 0).map { Int32($0) } }
    }

    @Test("an order created by a non-notifying session sends no NOTIFY; the same write by a notifying one does")
    func silentSession() async throws {
        let fixture = try await PostgresUnderTest()
        let silent = Self.store(fixture.settings, notifies: false), loud = Self.store(fixture.settings, notifies: true)
        let silentPID = try #require(await Self.backendPID(silent)), loudPID = try #require(await Self.backendPID(loud))
        // Other suites write to the same database (one channel for every schema): notifications are told apart by
        // the sending backend.
        let listening = PostgresConnection(settings: fixture.settings)
        try listening.connect()
        _ = try listening.execute(constant: "LISTEN orderpipeline_outbox")

        #expect(await silent.perform(.createOrder(newOrder(1))) == .committed(.orderCreated(newOrder(1).order)))
        #expect(await loud.perform(.createOrder(newOrder(2))) == .committed(.orderCreated(newOrder(2).order)))
        // Notifications arrive in commit order: one of the silent commit would come before the loud one's.
        var senders: [Int32] = []
        let deadline = ContinuousClock.now + .seconds(10)
        while !senders.contains(loudPID), ContinuousClock.now < deadline {
            var descriptor = pollfd(fd: listening.socket, events: Int16(POLLIN), revents: 0)
            guard poll(&descriptor, 1, 100) > 0 else { continue }
            senders += try listening.consumeNotifications().filter { $0.payload == "kafka" }.map(\.sender)
        }
        #expect(senders.contains(loudPID), "the notifying session's order was heard")
        #expect(!senders.contains(silentPID), "the silent session's order notified")

        listening.close()
        silent.close()
        loud.close()
        await fixture.tearDown()
    }
}
