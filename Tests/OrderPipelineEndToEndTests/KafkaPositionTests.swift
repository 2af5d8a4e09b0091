import Foundation
import Testing

/// The partition and offset stored with a published Kafka outbox row (from librdkafka's delivery report, through
/// `orderpipeline all`) are where the record really is, as a separate consumer reads it back.
@Suite(
    "Kafka positions: stored with the outbox row, shown in the journey, equal to the consumed record's",
    .enabled(if: EndToEnd.isConfigured, "DATABASE_URL, KAFKA_BROKERS or SERVICEBUS_CONNECTION_STRING is not set"),
    .serialized,
    .timeLimit(.minutes(10))
)
struct KafkaPositionTests {
    @Test("a POSTed order's OrderCreated record: stored partition/offset = the consumed record's")
    func positionOfAPostedOrder() async throws {
        try await ScratchPipeline.run("position-") { pipeline in
            let trace = TraceContextTests()
            // A few orders, so that partitions and offsets differ between them.
            var ids: [String] = []
            for _ in 0..<4 { ids.append(try await trace.post(pipeline.port, traceparent: nil)) }
            for id in ids {
                let journey = try await trace.sentJourney(pipeline.port, id)
                let stored = try #require(journey["publishedPosition"] as? [String: Any], "journey without a position: \(journey)")
                let kafkaRow = try #require(journey["kafka"] as? [String: Any])
                #expect((kafkaRow["position"] as? [String: Any])?["offset"] as? Int == stored["offset"] as? Int)

                let record = try await LivePageBrowserTests.runScript(
                    ["--brokers", pipeline.environment["KAFKA_BROKERS"]!, "--topic", pipeline.name, "--key", id],
                    script: TraceContextTests.headersScript, python: LivePageBrowserTests.servicesPython)
                let consumed = try #require(try JSONSerialization.jsonObject(with: Data(record.output.utf8)) as? [String: Any], "\(record.output)")
                #expect(stored["partition"] as? Int == consumed["partition"] as? Int, "order \(id): stored \(stored), consumed \(consumed)")
                #expect(stored["offset"] as? Int == consumed["offset"] as? Int, "order \(id): stored \(stored), consumed \(consumed)")
            }
        }
    }
}
