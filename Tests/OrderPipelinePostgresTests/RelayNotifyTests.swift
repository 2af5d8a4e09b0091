import OrderPipelineCore
import Testing

@testable import OrderPipelinePostgres

#if canImport(Glibc)
    import Glibc
#endif

/// `notifiesOutbox = false` (`all`'s API and consumer sessions, `-c orderpipeline.notify=off`): the outbox trigger
/// skips its NOTIFY — PostgreSQL serialises notifying commits on one lock held through their WAL flush.
@Suite(
    "PostgreSQL: the outbox NOTIFY can be switched off per session", .enabled(if: TestDatabase.isConfigured, "DATABASE_URL is not set"), .timeLimit(.minutes(5)))
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

    /// Whether the listening socket has input, asked without blocking and slept on between (`Task.sleep`): a
    /// `poll` with a timeout would hold a thread of the cooperative pool that every other test shares.
    static func readable(_ connection: PostgresConnection) async throws -> Bool {
        var descriptor = pollfd(fd: connection.socket, events: Int16(POLLIN), revents: 0)
        if poll(&descriptor, 1, 0) > 0 { return true }
        try await Task.sleep(for: .milliseconds(20))
        return false
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

        #expect(await silent.perform(.createOrders([newOrder(1)])) == .committed(.ordersCreated([.created(newOrder(1).order)])))
        #expect(await loud.perform(.createOrders([newOrder(2)])) == .committed(.ordersCreated([.created(newOrder(2).order)])))
        // Notifications arrive in commit order: one of the silent commit would come before the loud one's.
        var senders: [Int32] = []
        let deadline = ContinuousClock.now + .seconds(10)
        while !senders.contains(loudPID), ContinuousClock.now < deadline {
            guard try await Self.readable(listening) else { continue }
            senders += try listening.consumeNotifications().filter { $0.payload == "kafka" }.map(\.sender)
        }
        #expect(senders.contains(loudPID), "the notifying session's order was heard")
        #expect(!senders.contains(silentPID), "the silent session's order notified")

        listening.close()
        silent.close()
        loud.close()
        await fixture.tearDown()
    }

    @Test("the notifier wakes listeners from its own session, folding a burst of requests into a few NOTIFYs")
    func notifierCoalesces() async throws {
        let fixture = try await PostgresUnderTest()
        var settings = fixture.settings
        settings.applicationName = "orderpipeline-notifier-test-\(UInt32.random(in: 0...UInt32.max))"
        let listening = PostgresConnection(settings: fixture.settings)
        try listening.connect()
        _ = try listening.execute(constant: "LISTEN orderpipeline_outbox")
        let notifier = PostgresNotifier(settings: settings, logger: TestDatabase.logger)
        for _ in 0..<1_000 { notifier.notify(.serviceBus) }

        // Other suites notify on the same database: count only what the notifier's backend sent.
        var notifierPID: Int32?
        var heard = 0
        let deadline = ContinuousClock.now + .seconds(3)
        while ContinuousClock.now < deadline {
            guard try await Self.readable(listening) else { continue }
            for notification in try listening.consumeNotifications() where notification.payload == "service-bus" {
                if notifierPID == nil {
                    let name = try listening.query("SELECT application_name FROM pg_stat_activity WHERE pid = $1", [.int(Int64(notification.sender))]).string(0, 0)
                    if name == settings.applicationName { notifierPID = notification.sender }
                }
                if notification.sender == notifierPID { heard += 1 }
            }
        }
        #expect(heard >= 1, "the notifier's NOTIFY was heard")
        #expect(heard < 100, "1,000 requests folded into a few NOTIFYs (heard \(heard))")

        notifier.close()
        listening.close()
        await fixture.tearDown()
    }
}
