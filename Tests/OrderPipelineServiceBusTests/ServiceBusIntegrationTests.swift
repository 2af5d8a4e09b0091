import Foundation
import Logging
import OrderPipelineCore
import OrderPipelineServiceBus
import OrderPipelineTestSupport
import Synchronization
import Testing

enum TestServiceBus {
    static var connectionString: String? { TestEnvironment.value("SERVICEBUS_CONNECTION_STRING") }
    static var isConfigured: Bool { connectionString != nil }
    static let logger = TestEnvironment.logger("test.servicebus")
}

@Suite("Service Bus connection strings")
struct ConnectionStringTests {
    @Test("amqp:// URL with SASL PLAIN credentials")
    func amqpURL() throws {
        let c = try ServiceBusConfiguration.parse("amqp://guest:gu%40st@127.0.0.1:55672")
        #expect(c.host == "127.0.0.1")
        #expect(c.port == 55672)
        #expect(!c.useTLS)
        #expect(c.authentication == .plain(user: "guest", password: "gu@st"))
        #expect(!c.redactedDescription.contains("gu@st"))
        #expect(c.redactedDescription == "amqp://guest:***@127.0.0.1:55672")
    }

    @Test("amqps:// defaults to 5671 and TLS")
    func amqpsURL() throws {
        let c = try ServiceBusConfiguration.parse("amqps://broker.example.com")
        #expect(c.port == 5671)
        #expect(c.useTLS)
        #expect(c.authentication == .anonymous)
    }

    @Test("Azure connection string with EntityPath")
    func azure() throws {
        let c = try ServiceBusConfiguration.parse(
            "Endpoint=sb://ns1.servicebus.windows.net/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=abc+def/ghi=;EntityPath=orders-q")
        #expect(c.host == "ns1.servicebus.windows.net")
        #expect(c.port == 5671)
        #expect(c.useTLS)
        #expect(c.authentication == .sharedAccessKey(name: "RootManageSharedAccessKey", key: "abc+def/ghi="))
        #expect(c.queue == "orders-q")
        #expect(!c.redactedDescription.contains("abc+def"))
    }

    @Test("Azure development emulator: no TLS, port 5672")
    func emulator() throws {
        let c = try ServiceBusConfiguration.parse(
            "Endpoint=sb://localhost;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true;")
        #expect(c.host == "localhost")
        #expect(c.port == 5672)
        #expect(!c.useTLS)
        #expect(c.isDevelopmentEmulator)
    }

    @Test("garbage is refused with a message that names the variable")
    func garbage() {
        #expect(throws: ServiceBusError.self) { try ServiceBusConfiguration.parse("http://nope") }
        #expect(throws: ServiceBusError.self) { try ServiceBusConfiguration.parse("Endpoint=sb://x;SharedAccessKeyName=a") }
    }
}

@Suite(
    "Service Bus sender against a real AMQP 1.0 broker", .enabled(if: TestServiceBus.isConfigured, "SERVICEBUS_CONNECTION_STRING is not set"), .serialized, .timeLimit(.minutes(5)))
struct ServiceBusIntegrationTests {
    @Test("send fulfilment events, receive them with message-id, subject, content-type and properties")
    func sendAndReceive() async throws {
        var configuration = try ServiceBusConfiguration.parse(TestServiceBus.connectionString!)
        // A queue of its own, so messages of the pipeline's queue are left alone.
        configuration.queue = "test-" + String(UInt64.random(in: 0...UInt64.max), radix: 16)
        configuration.sendTimeout = .seconds(10)
        let sender = try ServiceBusSender(configuration: configuration, logger: TestServiceBus.logger)
        var random = SystemRandomNumberGenerator()
        let events = (0..<5).map { _ in
            PipelineEvent(type: .orderFulfilled, orderID: OrderID(UUID128.random(using: &random)), at: Instant(microseconds: 1_800_000_000_000_000), status: .fulfilled)
        }
        let outcomes = await sender.publish(events.enumerated().map { OutboxMessage(sequence: Int64($0.offset + 1), event: $0.element, attempts: 1) })
        #expect(outcomes == Array(repeating: .delivered, count: 5))
        await sender.shutdown()

        let received = Mutex<[AMQPMessage]>([])
        let receiver = try ServiceBusReceiver(configuration: configuration, logger: TestServiceBus.logger) { message in
            received.withLock { $0.append(message) }
        }
        let deadline = Date().addingTimeInterval(15)
        while Date() < deadline, received.withLock({ $0.count }) < events.count {
            try await Task.sleep(for: .milliseconds(50))
        }
        await receiver.shutdown()
        let messages = received.withLock { $0 }
        #expect(messages.count == events.count)
        for event in events {
            let message = try #require(messages.first { $0.messageID == event.id.description })
            #expect(message.subject == "OrderFulfilled")
            #expect(message.contentType == "application/json")
            #expect(message.applicationProperties["orderId"] == event.orderID.description)
            #expect(message.applicationProperties["eventType"] == "OrderFulfilled")
            #expect(message.body == event.payload)
        }
    }

    @Test("a batch larger than a relay's is answered in one piece: each message delivered, on the queue once, in order")
    func largeBatch() async throws {
        var configuration = try ServiceBusConfiguration.parse(TestServiceBus.connectionString!)
        configuration.queue = "test-" + String(UInt64.random(in: 0...UInt64.max), radix: 16)
        let sender = try ServiceBusSender(configuration: configuration, logger: TestServiceBus.logger)
        let rows = Self.rows(250)
        // Two batches at once, as a relay with two batches in the air sends them.
        async let first = sender.publish(Array(rows[..<150]))
        async let second = sender.publish(Array(rows[150...]))
        let outcomes = await first + second
        #expect(outcomes == Array(repeating: .delivered, count: rows.count))
        await sender.shutdown()

        let received = Mutex<[String]>([])
        let receiver = try ServiceBusReceiver(configuration: configuration, logger: TestServiceBus.logger) { message in
            received.withLock { $0.append(message.messageID ?? "") }
        }
        let deadline = Date().addingTimeInterval(15)
        while Date() < deadline, received.withLock({ $0.count }) < rows.count {
            try await Task.sleep(for: .milliseconds(50))
        }
        await receiver.shutdown()
        let ids = received.withLock { $0 }
        #expect(Set(ids) == Set(rows.map(\.event.id.description)))
        #expect(ids.count == rows.count)
        // Each batch in its own order (the two may interleave).
        for batch in [rows[..<150], rows[150...]] {
            let sent = batch.map(\.event.id.description)
            #expect(ids.filter(Set(sent).contains) == sent)
        }
    }

    @Test("a batch to an unreachable broker: each message gets a retriable failure, within the timeout")
    func unreachableBatch() async throws {
        var configuration = try ServiceBusConfiguration.parse("amqp://guest:guest@127.0.0.1:1")
        configuration.sendTimeout = .milliseconds(800)
        let sender = try ServiceBusSender(configuration: configuration, logger: TestServiceBus.logger)
        let started = ContinuousClock.now
        let outcomes = await sender.publish(Self.rows(3))
        #expect(ContinuousClock.now - started < .seconds(5))
        // Stopped with a batch queued: every message of it is answered, none left hanging.
        async let queued = sender.publish(Self.rows(4))
        await sender.shutdown()
        let stopped = await queued
        for outcome in outcomes + stopped {
            if case .failed(retriable: true, _) = outcome {} else { Issue.record("expected a retriable failure, got \(outcome)") }
        }
        #expect(outcomes.count == 3)
        #expect(stopped.count == 4)
        #expect(await sender.publish([]) == [])
    }

    static func rows(_ count: Int) -> [OutboxMessage] {
        var random = SystemRandomNumberGenerator()
        return (0..<count).map { index in
            let event = PipelineEvent(
                type: .orderFulfilled, orderID: OrderID(UUID128.random(using: &random)), at: Instant(microseconds: 1_800_000_000_000_000), status: .fulfilled)
            return OutboxMessage(sequence: Int64(index + 1), event: event, attempts: 1)
        }
    }

    @Test("an unreachable broker: the send fails (retriable) within the timeout")
    func unreachable() async throws {
        var configuration = try ServiceBusConfiguration.parse("amqp://guest:guest@127.0.0.1:1")
        configuration.sendTimeout = .milliseconds(800)
        let sender = try ServiceBusSender(configuration: configuration, logger: TestServiceBus.logger)
        let started = ContinuousClock.now
        let outcome = await sender.send(AMQPMessage(messageID: "x", subject: nil, contentType: nil, body: [1]))
        await sender.shutdown()
        if case .failed(retriable: true, _) = outcome {} else { Issue.record("expected a retriable failure, got \(outcome)") }
        #expect(ContinuousClock.now - started < .seconds(5))
    }
}
