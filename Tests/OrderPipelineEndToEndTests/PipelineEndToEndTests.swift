import Foundation
import Logging
import OrderPipelineCore
import OrderPipelineKafka
import OrderPipelinePostgres
import OrderPipelineRuntime
import OrderPipelineServiceBus
import OrderPipelineTestSupport
import ServiceLifecycle
import Synchronization
import Testing

/// The whole pipeline in one process against the real servers of `scripts/services`: intake shell → PostgreSQL →
/// Kafka relay → Kafka → fulfilment consumer → PostgreSQL → Service Bus relay → AMQP queue. Isolated from other
/// runs by a fresh schema and its own topic (`ScratchTopic`), consumer group and queue.
enum EndToEnd {
    static let environment = TestEnvironment.variables
    static var isConfigured: Bool {
        ["DATABASE_URL", "KAFKA_BROKERS", "SERVICEBUS_CONNECTION_STRING"].allSatisfy { TestEnvironment.value($0) != nil }
    }

    static let logger = TestEnvironment.logger("test.e2e")

    static func freshSchema(url: String) async throws -> (PostgresConnection.Settings, @Sendable () async -> Void) {
        let schema = "e2e_" + String(UInt64.random(in: 0...UInt64.max) & 0xFFFF_FFFF_FFFF, radix: 16)
        let admin = PostgresSession(settings: .init(url: url), logger: logger, name: "pg-admin")
        let created: Result<Void, PostgresError> = await admin.withConnection { connection in
            Result { () throws(PostgresError) in _ = try connection.get().execute(script: "CREATE SCHEMA \(schema)") }
        }
        try created.get()
        var settings = PostgresConnection.Settings(url: url)
        settings.schema = schema
        let migrator = PostgresSession(settings: settings, logger: logger, name: "pg-migrate")
        let migrated: Result<[Int], PostgresError> = await migrator.withConnection { connection in
            Result { () throws(PostgresError) in try Migrations.apply(on: try connection.get(), logger: logger) }
        }
        migrator.close()
        _ = try migrated.get()
        return (
            settings,
            {
                let _: Void = await admin.withConnection { connection in _ = try? connection.get().execute(script: "DROP SCHEMA \(schema) CASCADE") }
                admin.close()
            }
        )
    }
}

@Suite(
    "End to end: order → Kafka → fulfilment → Service Bus", .enabled(if: EndToEnd.isConfigured, "DATABASE_URL, KAFKA_BROKERS or SERVICEBUS_CONNECTION_STRING is not set"),
    .timeLimit(.minutes(10)))
struct PipelineEndToEndTests {
    @Test("orders reach Fulfilled and exactly one message per order, with the derived MessageId, lands on the queue")
    func ordersFlowThrough() async throws {
        let environment = EndToEnd.environment
        let (settings, drop) = try await EndToEnd.freshSchema(url: environment["DATABASE_URL"]!)
        var pool = PostgresPool.Configuration(url: settings.url)
        pool.connection = settings
        pool.size = 4
        let store = PostgresStore(configuration: pool, logger: EndToEnd.logger)
        var brokers = try BrokerConfiguration.fromEnvironment(environment, needsServiceBus: true)
        let name = "e2e-" + String(UInt64.random(in: 0...UInt64.max), radix: 16)
        try await ScratchTopic.create(name)
        brokers.kafka.topic = name
        brokers.kafka.groupID = name
        brokers.serviceBus!.queue = name
        let serviceBus = brokers.serviceBus!

        let listener = PostgresListener(settings: settings, logger: EndToEnd.logger)
        let producer = try KafkaProducer(configuration: brokers.kafka, logger: EndToEnd.logger)
        let sender = try ServiceBusSender(configuration: serviceBus, logger: EndToEnd.logger)
        let group = ServiceGroup(
            services: [
                RelayService(outbox: .kafka, owner: "e2e", store: store, publisher: producer, listener: listener, logger: EndToEnd.logger, onStop: { await producer.shutdown() }),
                RelayService(outbox: .serviceBus, owner: "e2e", store: store, publisher: sender, listener: listener, logger: EndToEnd.logger, onStop: { await sender.shutdown() }),
                ConsumerService(
                    configuration: brokers.kafka, store: store, deadLetters: try KafkaProducer(configuration: brokers.kafka, logger: EndToEnd.logger), logger: EndToEnd.logger),
            ],
            logger: EndToEnd.logger
        )
        let running = Task { try await group.run() }

        let intake = IntakeShell(store: store, logger: EndToEnd.logger)
        let body = Array(#"{"customerName":"Ada","customerEmail":"ada@example.com","items":[{"productId":"p-1","productName":"Widget","quantity":2,"unitPrice":9.99}]}"#.utf8)
        var orders: [OrderID] = []
        for _ in 0..<5 {
            guard case .created(let order) = await intake.createOrder(body: body, idempotencyKey: nil) else {
                Issue.record("order not created")
                continue
            }
            orders.append(order.id)
        }

        // Every order reaches Fulfilled (the first one waits for the consumer group join: ~3 s on Tansu, up to ~25 s
        // when the suites load the machine in parallel).
        let deadline = Date().addingTimeInterval(60)
        var fulfilled: Set<OrderID> = []
        while Date() < deadline, fulfilled.count < orders.count {
            for id in orders where !fulfilled.contains(id) {
                if try await store.order(id)?.status == .fulfilled { fulfilled.insert(id) }
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(fulfilled.count == orders.count)

        // The queue holds exactly one message per order, with the derived MessageId. Wait for the Service Bus
        // outbox to drain, then read the queue.
        let drained = Date().addingTimeInterval(15)
        while Date() < drained, try await store.pending(.serviceBus).count > 0 { try await Task.sleep(for: .milliseconds(100)) }
        let received = Mutex<[AMQPMessage]>([])
        let receiver = try ServiceBusReceiver(configuration: serviceBus, logger: EndToEnd.logger) { message in received.withLock { $0.append(message) } }
        let quiet = Date().addingTimeInterval(5)
        while Date() < quiet { try await Task.sleep(for: .milliseconds(100)) }
        await receiver.shutdown()

        await group.triggerGracefulShutdown()
        try await running.value
        listener.close()
        store.close()
        await drop()
        await ScratchTopic.delete(name)

        let messages = received.withLock { $0 }
        #expect(messages.count == orders.count)
        for id in orders {
            let expected = EventID.derived(order: id, type: .orderFulfilled).description
            let copies = messages.filter { $0.messageID == expected }
            #expect(copies.count == 1, "order \(id): \(copies.count) messages")
            #expect(copies.first?.subject == "OrderFulfilled")
            #expect(copies.first?.contentType == "application/json")
            #expect(copies.first?.applicationProperties["orderId"] == id.description)
        }
    }
}
