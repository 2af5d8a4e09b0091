import Foundation
import Logging
import OrderPipelineCore
import OrderPipelinePostgres
import OrderPipelineRuntime
import OrderPipelineServiceBus
import OrderPipelineTestSupport
import ServiceLifecycle
import Synchronization
import Testing

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif
#if canImport(Glibc)
    import Glibc
#endif

@Suite(
    "Restart: kill -9 the consumer or the relay mid-stream, every order is still fulfilled exactly once",
    .enabled(if: EndToEnd.isConfigured, "DATABASE_URL, KAFKA_BROKERS or SERVICEBUS_CONNECTION_STRING is not set"),
    .serialized,
    .timeLimit(.minutes(10))
)
struct RestartTests {
    /// Cap of one stream; it is stopped 1.5 s after the restart, so a run has orders created before, while and
    /// after the process is down.
    static let orders = 400

    /// The parts every run shares: a database migrated by the binary, a topic, a group, a queue, the child environment.
    struct Run {
        let database: TestDatabase
        let topic: String
        let store: PostgresStore
        let environment: [String: String]
        let queue: String
        let serviceBus: ServiceBusConfiguration
        let name: String

        /// A run for `body`, closed afterwards whether `body` returns or throws: a failed test leaves no database
        /// or topic behind (leftover databases slow autovacuum's rounds for every later test).
        static func with(_ body: (Run) async throws -> Void) async throws {
            let run = try await make()
            do {
                try await body(run)
            } catch {
                await run.close()
                throw error
            }
            await run.close()
        }

        private static func make() async throws -> Run {
            let base = Restart.environment
            await ConnectionGate.wait()
            let name = Restart.randomName("restart-")
            try await ScratchTopic.create(name)
            let database: TestDatabase
            do {
                database = try await TestDatabase(adminURL: base["DATABASE_URL"]!)
            } catch {
                await ScratchTopic.delete(name)
                throw error
            }
            do {
                return try await prepare(database: database, topic: name, base: base)
            } catch {
                await database.drop()
                await ScratchTopic.delete(name)
                throw error
            }
        }

        private static func prepare(database: TestDatabase, topic name: String, base: [String: String]) async throws -> Run {
            var environment = base
            environment["DATABASE_URL"] = database.url
            environment["KAFKA_TOPIC"] = name
            environment["KAFKA_GROUP_ID"] = name
            environment["SERVICEBUS_QUEUE"] = name
            environment["RELAY_ID"] = name
            environment["LOG_LEVEL"] = "info"
            // Few connections: the whole test run shares PostgreSQL's 100 (this run holds about 9).
            environment["DB_POOL_SIZE"] = "2"
            let migrate = PipelineProcess(role: "migrate", environment: environment, name: name)
            let status = try await migrate.runToCompletion(timeout: .seconds(60))
            guard status == 0 else { throw TestFailure("migrate exited with \(status):\n\(migrate.tail())") }
            var pool = PostgresPool.Configuration(url: database.url)
            pool.size = 1
            var serviceBus = try BrokerConfiguration.fromEnvironment(base, needsServiceBus: true).serviceBus!
            serviceBus.queue = name
            return Run(
                database: database, topic: name, store: PostgresStore(configuration: pool, logger: Restart.logger), environment: environment,
                queue: name, serviceBus: serviceBus, name: name)
        }

        /// Polls until `condition` holds or the deadline passes; answers whether it held.
        func wait(upTo seconds: TimeInterval, poll: Duration = .milliseconds(100), _ condition: () async throws -> Bool) async throws -> Bool {
            let deadline = Date().addingTimeInterval(seconds)
            while Date() < deadline {
                if try await condition() { return true }
                try await Task.sleep(for: poll)
            }
            return try await condition()
        }

        func fulfilled() async throws -> Int { try await database.int("SELECT count(*) FROM orders WHERE status = 'Fulfilled'") }
        func publishedToKafka() async throws -> Int { try await database.int("SELECT count(*) FROM kafka_outbox WHERE published_at IS NOT NULL") }

        /// Everything created is Fulfilled, exactly one Fulfilled transition per order, the Service Bus outbox
        /// drained, and the queue holds exactly one message per order with its derived MessageId.
        func verify(orders ids: [OrderID], processes: [PipelineProcess]) async throws {
            let total = ids.count
            let done = try await wait(upTo: 120) {
                guard try await fulfilled() == total else { return false }
                return try await database.int("SELECT count(*) FROM service_bus_outbox WHERE published_at IS NULL") == 0
            }
            let fulfilledCount = try await fulfilled()
            if !done {
                for process in processes { print("--- \(process.role) (\(process.log.path)):\n\(process.tail())") }
            }
            #expect(done, "not all \(total) orders fulfilled and published in time: \(fulfilledCount) fulfilled")
            #expect(try await database.int("SELECT count(*) FROM orders") == total)
            #expect(try await database.int("SELECT count(*) FROM order_status_transitions WHERE to_status = 'Fulfilled'") == total)
            let twice = try await database.rows(
                "SELECT order_id, count(*) FROM order_status_transitions WHERE to_status = $1::text GROUP BY order_id HAVING count(*) <> 1",
                [.text("Fulfilled")])
            #expect(twice.isEmpty, "orders with more than one Fulfilled transition: \(twice)")
            #expect(try await database.int("SELECT count(*) FROM dead_letters") == 0)

            // The queue: read until every order's message is there, then 2 s more for any duplicate.
            let received = Mutex<[AMQPMessage]>([])
            let receiver = try ServiceBusReceiver(configuration: serviceBus, logger: Restart.logger) { message in received.withLock { $0.append(message) } }
            _ = try await wait(upTo: 30) { received.withLock { $0.count } >= total }
            try await Task.sleep(for: .seconds(2))
            await receiver.shutdown()
            let messages = received.withLock { $0 }
            #expect(messages.count == total, "\(messages.count) messages on the queue for \(total) orders")
            let byID = Dictionary(grouping: messages, by: { $0.messageID ?? "" })
            for id in ids {
                let expected = EventID.derived(order: id, type: .orderFulfilled).description
                #expect(byID[expected]?.count == 1, "order \(id): \(byID[expected]?.count ?? 0) messages with MessageId \(expected)")
            }
        }

        func close() async {
            store.close()
            await database.drop()
            await ScratchTopic.delete(topic)
        }
    }

    @Test("kill -9 the consumer mid-stream and restart it")
    func consumerKilled() async throws {
        try await Run.with { run in
            // Both serve /metrics (METRICS_PORT), checked at the end.
            let relayPort = try FreePort.pick()
            let consumerPort = try FreePort.pick()
            var relayEnvironment = run.environment
            relayEnvironment["METRICS_PORT"] = "\(relayPort)"
            var consumerEnvironment = run.environment
            consumerEnvironment["METRICS_PORT"] = "\(consumerPort)"
            let relay = PipelineProcess(role: "relay", environment: relayEnvironment, name: run.name)
            let consumer = PipelineProcess(role: "consume", environment: consumerEnvironment, name: run.name)
            defer { relay.abandon(); consumer.abandon() }
            try relay.start()
            try consumer.start()

            let stream = OrderStream()
            stream.start(store: run.store, total: Self.orders, every: .milliseconds(40))
            // Kill once the consumer has fulfilled some orders, while orders keep coming.
            let some = try await run.wait(upTo: 60) { try await run.fulfilled() >= 10 }
            #expect(some, "the consumer fulfilled nothing within 60 s:\n\(consumer.tail())")
            // A burst, and the kill as soon as the consumer is working through it.
            let base = try await run.fulfilled()
            stream.burst(store: run.store, count: 40)
            _ = try await run.wait(upTo: 10, poll: .milliseconds(2)) { try await run.fulfilled() > base + 3 }
            let before = stream.ids.count
            try await consumer.kill9()
            let fulfilledAtKill = try await run.fulfilled()
            try await Task.sleep(for: .milliseconds(500))
            try consumer.start()
            try await Task.sleep(for: .milliseconds(1500))
            await stream.finish()
            let ids = stream.ids
            #expect(before < ids.count, "the kill came after the last order was created")
            #expect(fulfilledAtKill < ids.count, "everything was fulfilled before the kill")

            try await run.verify(orders: ids, processes: [relay, consumer])
            #expect(consumer.starts == 2)

            // The standalone roles' /metrics: the relay counted its publishes (both outboxes, pending 0 now), the
            // restarted consumer its fulfilments since the restart.
            let relayMetrics = await httpGet(port: relayPort, path: "/metrics") ?? ""
            #expect(relayMetrics.contains(#"orderpipeline_outbox_published_total{outbox="kafka"}"#), "relay /metrics:\n\(relayMetrics.prefix(2000))")
            #expect(relayMetrics.contains(#"orderpipeline_outbox_pending{outbox="service-bus"} 0"#), "relay /metrics:\n\(relayMetrics.prefix(2000))")
            let consumerMetrics = await httpGet(port: consumerPort, path: "/metrics") ?? ""
            #expect(consumerMetrics.contains("orderpipeline_orders_fulfilled_total"), "consumer /metrics:\n\(consumerMetrics.prefix(2000))")
            #expect(await httpGet(port: consumerPort, path: "/health/live") != nil)
            let inbox = try await run.database.int("SELECT count(*) FROM consumer_inbox")
            print("consumer killed after \(fulfilledAtKill) of \(ids.count) orders were fulfilled (\(before) created); inbox rows: \(inbox)")
            await relay.stop()
            await consumer.stop()
        }
    }

    @Test("kill -9 the Kafka relay mid-stream and restart it (same RELAY_ID)")
    func relayKilled() async throws {
        try await Run.with { run in
            // The killed process relays the Kafka outbox only (no SERVICEBUS_CONNECTION_STRING): Kafka duplicates
            // are removed by the consumer's inbox. A Service Bus relay killed between send and settle sends that
            // row again with the same MessageId (Service Bus duplicate detection removes it, RabbitMQ keeps it), so
            // it runs here in the test process, where it is not killed.
            var kafkaOnly = run.environment
            kafkaOnly["SERVICEBUS_CONNECTION_STRING"] = nil
            let relay = PipelineProcess(role: "relay", environment: kafkaOnly, name: run.name)
            let consumer = PipelineProcess(role: "consume", environment: run.environment, name: run.name)
            defer { relay.abandon(); consumer.abandon() }

            var settings = PostgresConnection.Settings(url: run.database.url)
            settings.applicationName = "restart-test-sb-relay"
            let listener = PostgresListener(settings: settings, logger: Restart.logger)
            let sender = try ServiceBusSender(configuration: run.serviceBus, logger: Restart.logger)
            let group = ServiceGroup(
                services: [
                    RelayService(
                        outbox: .serviceBus, owner: run.name + "-test", store: run.store, publisher: sender, listener: listener,
                        logger: Restart.logger, onStop: { await sender.shutdown() })
                ],
                logger: Restart.logger
            )
            let serviceBusRelay = Task { try await group.run() }

            try consumer.start()
            try relay.start()
            let stream = OrderStream()
            stream.start(store: run.store, total: Self.orders, every: .milliseconds(40))
            let some = try await run.wait(upTo: 60) { try await run.publishedToKafka() >= 10 }
            #expect(some, "the relay published nothing within 60 s:\n\(relay.tail())")
            // A burst, and the kill while the relay holds claimed rows (a batch between claim and settle).
            stream.burst(store: run.store, count: 40)
            let inFlight = try await run.wait(upTo: 10, poll: .milliseconds(1)) {
                try await run.database.int("SELECT count(*) FROM kafka_outbox WHERE claimed_by IS NOT NULL") > 0
            }
            let before = stream.ids.count
            try await relay.kill9()
            let publishedAtKill = try await run.publishedToKafka()
            let claimedAtKill = try await run.database.int("SELECT count(*) FROM kafka_outbox WHERE claimed_by IS NOT NULL")
            try await Task.sleep(for: .milliseconds(500))
            try relay.start()
            try await Task.sleep(for: .milliseconds(1500))
            await stream.finish()
            let ids = stream.ids
            #expect(before < ids.count, "the kill came after the last order was created")

            try await run.verify(orders: ids, processes: [relay, consumer])
            #expect(try await run.database.int("SELECT count(*) FROM kafka_outbox WHERE published_at IS NULL") == 0)
            #expect(relay.starts == 2)
            print("relay killed after \(publishedAtKill) Kafka rows published (\(claimedAtKill) claimed, caught in flight: \(inFlight), \(before) orders created) of \(ids.count)")

            await group.triggerGracefulShutdown()
            try await serviceBusRelay.value
            listener.close()
            await relay.stop()
            await consumer.stop()
        }
    }
}
