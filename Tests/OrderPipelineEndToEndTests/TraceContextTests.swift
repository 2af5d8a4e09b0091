import Foundation
import Logging
import OrderPipelineCore
import OrderPipelineRuntime
import OrderPipelineServiceBus
import OrderPipelineTestSupport
import Synchronization
import Testing

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// W3C trace context end to end through `orderpipeline all`: the POST's `traceparent` (or a new trace) is in the
/// Kafka record's `traceparent` header and in the Service Bus message's `traceparent` and `Diagnostic-Id`
/// application properties, with the same trace id; the live page's journey shows it.
@Suite(
    "Trace context: POST → Kafka header → consumer → Service Bus application properties",
    .enabled(if: EndToEnd.isConfigured, "DATABASE_URL, KAFKA_BROKERS or SERVICEBUS_CONNECTION_STRING is not set"),
    .serialized,
    .timeLimit(.minutes(10))
)
struct TraceContextTests {
    static let headersScript = LivePageBrowserTests.script.deletingLastPathComponent().appendingPathComponent("kafka_record_headers.py")
    static let traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
    static let callerSpan = "00f067aa0ba902b7"

    func post(_ port: Int, traceparent: String?) async throws -> String {
        var request = URLRequest(url: URL(string: "http://127.0.0.1:\(port)/api/orders")!)
        request.httpMethod = "POST"
        request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        if let traceparent { request.setValue(traceparent, forHTTPHeaderField: "traceparent") }
        request.httpBody = Data(#"{"customerName":"Trace","customerEmail":"t@example.com","items":[{"productName":"Widget","quantity":1,"unitPrice":1.00}]}"#.utf8)
        let (data, response) = try await URLSession.shared.data(for: request)
        try #require((response as? HTTPURLResponse)?.statusCode == 201)
        return try #require((try JSONSerialization.jsonObject(with: data) as? [String: Any])?["id"] as? String)
    }

    /// The order's journey once its fulfilment message is sent.
    func sentJourney(_ port: Int, _ id: String) async throws -> [String: Any] {
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            if let text = await httpGet(port: port, path: "/ui/api/orders/\(id)/journey", upTo: 5),
                let journey = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any], journey["stage"] as? String == "sent"
            {
                return journey
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw TestFailure("order \(id) was not sent within 60 s")
    }

    @Test("one trace id from the POST to the Kafka header and the Service Bus application properties")
    func traceEndToEnd() async throws {
        try await ScratchPipeline.run("trace-") { pipeline in
            let traced = try await post(pipeline.port, traceparent: "00-\(Self.traceID)-\(Self.callerSpan)-01")
            let fresh = try await post(pipeline.port, traceparent: nil)
            let garbage = try await post(pipeline.port, traceparent: "00-not-a-trace-01")

            // The page's journey names each order's trace.
            #expect(try await sentJourney(pipeline.port, traced)["traceId"] as? String == Self.traceID)
            let freshTrace = try #require(try await sentJourney(pipeline.port, fresh)["traceId"] as? String)
            let garbageTrace = try #require(try await sentJourney(pipeline.port, garbage)["traceId"] as? String)
            #expect(freshTrace.count == 32 && freshTrace != Self.traceID && garbageTrace != freshTrace, "new traces: \(freshTrace), \(garbageTrace)")

            // The Kafka record: the same trace, continued by the API's span.
            let record = try await LivePageBrowserTests.runScript(
                ["--brokers", pipeline.environment["KAFKA_BROKERS"]!, "--topic", pipeline.name, "--key", traced],
                script: Self.headersScript, python: LivePageBrowserTests.servicesPython)
            let headers = (try? JSONSerialization.jsonObject(with: Data(record.output.utf8)) as? [String: Any])?["headers"] as? [String: String]
            let kafkaTrace = try #require(headers?["traceparent"].flatMap { TraceParent($0) }, "Kafka record: \(record.output)")
            #expect(kafkaTrace.traceID == Self.traceID)
            #expect(kafkaTrace.parentID != Self.callerSpan, "the API's own span is the record's parent")

            // The Service Bus message: the same trace, continued by the consumer's span.
            var serviceBus = try BrokerConfiguration.fromEnvironment(pipeline.environment, needsServiceBus: true).serviceBus!
            serviceBus.queue = pipeline.name
            let received = Mutex<[AMQPMessage]>([])
            let receiver = try ServiceBusReceiver(configuration: serviceBus, logger: Restart.logger) { message in received.withLock { $0.append(message) } }
            let messageID = EventID.derived(order: try #require(OrderID(traced)), type: .orderFulfilled).description
            let deadline = Date().addingTimeInterval(30)
            while Date() < deadline, !received.withLock({ $0.contains { $0.messageID == messageID } }) { try await Task.sleep(for: .milliseconds(100)) }
            await receiver.shutdown()
            let message = try #require(received.withLock { $0.first { $0.messageID == messageID } }, "no message \(messageID) on \(pipeline.name)")
            let sbTrace = try #require(message.applicationProperties["traceparent"].flatMap { TraceParent($0) }, "\(message.applicationProperties)")
            #expect(sbTrace.traceID == Self.traceID)
            #expect(message.applicationProperties["Diagnostic-Id"] == sbTrace.description)
            #expect(sbTrace.parentID != kafkaTrace.parentID, "the consumer's span is the message's parent")
            print("trace \(Self.traceID): POST parent \(Self.callerSpan) → Kafka \(kafkaTrace) → Service Bus \(sbTrace)")
        }
    }
}
