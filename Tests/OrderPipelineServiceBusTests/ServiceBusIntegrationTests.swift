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
