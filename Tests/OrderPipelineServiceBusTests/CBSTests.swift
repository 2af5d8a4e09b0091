import Foundation
import Logging
import OrderPipelineCore
import OrderPipelineServiceBus
import OrderPipelineTestSupport
import Testing

@Suite("SAS tokens")
struct SharedAccessSignatureTests {
    @Test("token layout, percent-encoding and a signature that depends on resource, expiry and key")
    func token() {
        let token = SharedAccessSignature.token(resource: "sb://ns1.servicebus.windows.net/orders q", keyName: "Root Key", key: "k3y", expiry: 1_800_000_000)
        #expect(token.hasPrefix("SharedAccessSignature sr=sb%3A%2F%2Fns1.servicebus.windows.net%2Forders%20q&sig="))
        #expect(token.hasSuffix("&se=1800000000&skn=Root%20Key"))
        let other = SharedAccessSignature.token(resource: "sb://ns1.servicebus.windows.net/orders q", keyName: "Root Key", key: "k3y", expiry: 1_800_000_001)
        #expect(token != other)
        #expect(SharedAccessSignature.percentEncoded("a+b/c=") == "a%2Bb%2Fc%3D")
    }
}

/// The CBS exchange against a scripted AMQP 1.0 peer (no local broker speaks `$cbs`): the peer runs under the
/// Python of `scripts/services` (python-qpid-proton), which `scripts/services env` exports as SERVICES_PYTHON.
@Suite("CBS put-token against a scripted AMQP peer", .enabled(if: ScriptedAMQPPeer.python != nil, "SERVICES_PYTHON is not set"), .serialized, .timeLimit(.minutes(5)))
struct CBSTests {
    @Test("put-token with a valid SAS token, then the queue link opens and the send is accepted")
    func putTokenThenSend() async throws {
        let peer = try await ScriptedAMQPPeer(status: 202)
        defer { peer.stop() }
        var configuration = try ServiceBusConfiguration.parse(
            "Endpoint=sb://127.0.0.1:\(peer.port)/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=s3cret+key=;UseDevelopmentEmulator=true")
        configuration.queue = "order-fulfilment"
        configuration.sendTimeout = .seconds(5)
        let sender = try ServiceBusSender(configuration: configuration, logger: TestEnvironment.logger("test.cbs"))
        let event = PipelineEvent(type: .orderFulfilled, orderID: OrderID(UUID128(high: 1, low: 2)), at: Instant(microseconds: 0), status: .fulfilled)
        let outcomes = await sender.publish([OutboxMessage(sequence: 1, event: event, attempts: 1)])
        await sender.shutdown()
        #expect(outcomes == [.delivered])
        let lines = peer.records()
        let put = try #require(lines.first { $0["event"] as? String == "put-token" })
        #expect(put["operation"] as? String == "put-token")
        #expect(put["type"] as? String == "servicebus.windows.net:sastoken")
        #expect(put["name"] as? String == "sb://127.0.0.1/order-fulfilment")
        #expect(put["resource"] as? String == "sb://127.0.0.1/order-fulfilment")
        #expect(put["skn"] as? String == "RootManageSharedAccessKey")
        #expect(put["signature_ok"] as? Bool == true)
        let expiry = try #require(put["expiry"] as? Int)
        #expect(abs(expiry - Int(Date().timeIntervalSince1970) - 3_600) < 120)
        // The queue link is attached only after the token was accepted.
        let putIndex = try #require(lines.firstIndex { $0["event"] as? String == "put-token" })
        let attachIndex = try #require(lines.firstIndex { $0["event"] as? String == "attach" && $0["target"] as? String == "order-fulfilment" })
        #expect(putIndex < attachIndex)
        let message = try #require(lines.first { $0["event"] as? String == "message" })
        #expect(message["message_id"] as? String == event.id.description)
        #expect(message["subject"] as? String == "OrderFulfilled")
    }

    @Test("a refused token: no queue link, the send fails (retriable) with the CBS status")
    func refused() async throws {
        let peer = try await ScriptedAMQPPeer(status: 401)
        defer { peer.stop() }
        var configuration = try ServiceBusConfiguration.parse(
            "Endpoint=sb://127.0.0.1:\(peer.port)/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=wrong;UseDevelopmentEmulator=true")
        configuration.sendTimeout = .seconds(2)
        let sender = try ServiceBusSender(configuration: configuration, logger: TestEnvironment.logger("test.cbs"))
        let outcome = await sender.send(AMQPMessage(messageID: "m1", subject: nil, contentType: nil, body: [1]))
        await sender.shutdown()
        guard case .failed(retriable: true, let reason) = outcome else {
            Issue.record("expected a retriable failure, got \(outcome)")
            return
        }
        #expect(reason.contains("401"))
        #expect(!peer.records().contains { $0["event"] as? String == "message" })
    }
}
