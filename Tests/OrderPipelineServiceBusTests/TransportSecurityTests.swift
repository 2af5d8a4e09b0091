import Foundation
import OrderPipelineCore
import OrderPipelineServiceBus
import Testing

@Suite("Service Bus transport security: TLS fails closed, no clear-text password off this machine")
struct TransportSecurityTests {
    @Test("amqps to a broker that speaks no TLS: nothing is delivered (no fall back to plaintext)",
          .enabled(if: TestServiceBus.isConfigured, "SERVICEBUS_CONNECTION_STRING is not set"), .timeLimit(.minutes(5)))
    func noPlaintextFallback() async throws {
        // The local broker accepts exactly this message over plain amqp (see the integration tests); over amqps
        // the TLS handshake must fail and the message stay unsent.
        var configuration = try ServiceBusConfiguration.parse(TestServiceBus.connectionString!)
        configuration.useTLS = true
        configuration.queue = "test-tls-" + String(UInt64.random(in: 0...UInt64.max), radix: 16)
        configuration.sendTimeout = .milliseconds(1_500)
        let sender = try ServiceBusSender(configuration: configuration, logger: TestServiceBus.logger)
        let outcome = await sender.send(AMQPMessage(messageID: "tls-1", subject: nil, contentType: nil, body: [1]))
        await sender.shutdown()
        #expect(outcome != .delivered)
        if case .failed(retriable: true, _) = outcome {} else { Issue.record("expected a retriable failure, got \(outcome)") }
    }

    @Test("a password over plain amqp to another host is refused before any connection")
    func plainToRemoteRefused() throws {
        var configuration = ServiceBusConfiguration(host: "broker.example", port: 5672, useTLS: false,
                                                    authentication: .plain(user: "u", password: "secret"))
        #expect(throws: ServiceBusError.self) { try ServiceBusSender(configuration: configuration, logger: TestServiceBus.logger) }
        configuration.host = "127.0.0.1"
        #expect(throws: Never.self) { try configuration.checkTransportSecurity() }
    }
}
