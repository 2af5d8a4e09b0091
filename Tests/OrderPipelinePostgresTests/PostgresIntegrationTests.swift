import Foundation
import OrderPipelineCore
import OrderPipelinePostgres
import Testing

@Suite("PostgreSQL adapter", .enabled(if: TestDatabase.isConfigured, "DATABASE_URL is not set"), .timeLimit(.minutes(5)))
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
        #expect(await store.perform(.createOrders([newOrder(1)])) == .committed(.ordersCreated([.created(newOrder(1).order)])))
        #expect(await wakes.next() == .kafka)
        listener.close()
        await store.tearDown()
    }

    @Test("a wake for one outbox is never pushed out by the other outbox's wakes")
    func wakesPerOutbox() async throws {
        let store = try await PostgresUnderTest()
        let listener = PostgresListener(settings: store.settings, logger: TestDatabase.logger)
        var kafka = listener.wakes(for: .kafka).makeAsyncIterator()
        #expect(await kafka.next() == .kafka, "the wake on connect")
        // Wakes not yet taken fold into one; a Service Bus burst must not replace the Kafka wake (its relay, with a
        // batch in the air, would not claim the new rows until the next wake or the poll).
        for kind in [OutboxKind.serviceBus, .kafka, .serviceBus, .serviceBus] { listener.wake(kind) }
        listener.close()
        #expect(await kafka.next() == .kafka)
        #expect(await kafka.next() == nil, "closed: nothing more")
        await store.tearDown()
    }

    @Test("reads: an order by id and the newest-first list with a keyset cursor")
    func reads() async throws {
        let store = try await PostgresUnderTest()
        for n in UInt64(1)...5 {
            _ = await store.perform(.createOrders([newOrder(n, created: at(Double(n)))]))
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
        _ = await store.perform(.createOrders([newOrder(1)]))
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
        var result = await store.perform(.createOrders([newOrder(2)]))
        for _ in 0..<20 where result != .committed(.ordersCreated([.created(newOrder(2).order)])) && result != .committed(.ordersCreated([.replayed(newOrder(2).order)])) {
            try await Task.sleep(for: .milliseconds(100))
            result = await store.perform(.createOrders([newOrder(2)]))
        }
        #expect(result == .committed(.ordersCreated([.created(newOrder(2).order)])) || result == .committed(.ordersCreated([.replayed(newOrder(2).order)])))
        await store.tearDown()
    }
}

@Suite("PostgreSQL outcomes", .enabled(if: TestDatabase.isConfigured, "DATABASE_URL is not set"), .timeLimit(.minutes(5)))
struct PostgresOutcomeTests {
    /// Makes every COMMIT that touched order_status_transitions take two seconds (a deferred constraint trigger that
    /// sleeps), so a test can kill the session while it is committing.
    static func slowCommits(_ store: PostgresUnderTest) async throws {
        let result: Result<Int, PostgresError> = await store.store.pool.withConnection { c in
            Result { () throws(PostgresError) in
                try c.get().execute(
                    script: """
                        CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
                        BEGIN PERFORM pg_sleep(2); RETURN NULL; END $$;
                        CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON order_status_transitions
                            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit();
                        """
                ).count
            }
        }
        _ = try result.get()
    }

    /// Polls pg_stat_activity until the backend sleeps in the deferred trigger, i.e. inside COMMIT.
    static func waitUntilCommitting(_ pid: Int32, _ store: PostgresUnderTest) async throws {
        for _ in 0..<200 {
            let event: String? = await store.store.pool.withConnection { c in
                try? c.get().query("SELECT wait_event FROM pg_stat_activity WHERE pid = $1::int", [.int(Int(pid))]).string(0, 0)
            }
            if event == "PgSleep" { return }
            try await Task.sleep(for: .milliseconds(20))
        }
        Issue.record("the session never reached its COMMIT")
    }

    @Test("a session killed during COMMIT answers .unknown; re-issuing the command converges")
    func unknownOutcome() async throws {
        let store = try await PostgresUnderTest()
        _ = await store.perform(.createOrders([newOrder(1)]))
        try await Self.slowCommits(store)
        for command in [StoreCommand.transition(OrderTransition(orderID: orderID(1), to: .processing, at: at(1))), .createOrders([newOrder(2)])] {
            let session = try #require(try await store.openSession() as? PostgresSessionUnderTest)
            async let outcome = session.perform(command)
            try await Self.waitUntilCommitting(session.pid, store)
            await session.kill()
            #expect(await outcome == .unknown, "\(command)")
        }
        // The killed COMMITs did not happen here; doing the same again commits once.
        #expect(await store.history(of: orderID(1)).map(\.to) == [.pending])
        guard case .committed(.transitioned) = await store.perform(.transition(OrderTransition(orderID: orderID(1), to: .processing, at: at(1)))) else {
            Issue.record("re-issued transition did not commit"); return
        }
        #expect(await store.perform(.createOrders([newOrder(2)])) == .committed(.ordersCreated([.created(newOrder(2).order)])))
        #expect(await store.perform(.createOrders([newOrder(2)])) == .committed(.ordersCreated([.replayed(newOrder(2).order)])))
        await store.tearDown()
    }

    @Test("a lock held longer than the lock timeout answers .failed(.timedOut) and writes nothing")
    func lockTimeout() async throws {
        let store = try await PostgresUnderTest()
        _ = await store.perform(.createOrders([newOrder(1)]))
        let holder = try await store.openSession()
        guard case .committed(.transitioned) = await holder.performHoldingOpen(.transition(OrderTransition(orderID: orderID(1), to: .processing, at: at(1)))) else {
            Issue.record("could not hold the order's lock"); return
        }
        var settings = store.settings
        settings.statementTimeout = .milliseconds(300)
        let impatient = PostgresSession(settings: settings, logger: TestDatabase.logger)
        let result: StoreResult = await impatient.withConnection { c in
            switch c {
            case .success(let c): StoreRecipes.perform(.transition(OrderTransition(orderID: orderID(1), to: .failed, at: at(2))), on: c)
            case .failure(let error): .failed(.unavailable(error.message))
            }
        }
        #expect(result == .failed(.timedOut))
        impatient.close()
        await holder.kill()
        #expect(await store.history(of: orderID(1)).map(\.to) == [.pending])
        await store.tearDown()
    }
}
