import OrderPipelineCore
import OrderPipelineKafka
import Testing

/// The producer reports an unusable session and is recreated only when told (`reset()`, the relay's decision).
@Suite("Kafka producer reset", .enabled(if: TestKafka.isConfigured, "KAFKA_BROKERS is not set"), .serialized, .timeLimit(.minutes(2)))
struct ProducerResetTests {
    @Test("a timed-out idempotent session answers .sessionUnusable, at once for later batches, until reset() replaces it")
    func unusableUntilReset() async throws {
        var configuration = TestKafka.configuration
        configuration.brokers = "127.0.0.1:9"  // nothing listens: every delivery times out
        configuration.messageTimeout = .seconds(1)
        let producer = try KafkaProducer(configuration: configuration, logger: TestKafka.logger)
        let first = await producer.publish([TestKafka.message(sequence: 1), TestKafka.message(sequence: 2)])
        #expect(first.count == 2 && first.allSatisfy(\.isSessionUnusable), "\(first)")

        let clock = ContinuousClock()
        let start = clock.now
        let second = await producer.publish([TestKafka.message(sequence: 3)])
        #expect(second.count == 1 && second.allSatisfy(\.isSessionUnusable), "\(second)")
        #expect(clock.now - start < .milliseconds(500), "answered at once: the broken session is not used")
        #expect(producer.sessionNumber == 1, "not recreated on its own")

        producer.reset()
        #expect(producer.sessionNumber == 2)
        await producer.shutdown()
    }

    @Test("after reset() the new session publishes to the broker")
    func resetThenPublish() async throws {
        let producer = try KafkaProducer(configuration: TestKafka.configuration, logger: TestKafka.logger)
        #expect(await producer.publish([TestKafka.message(sequence: 1)]).allSatisfy(\.isDelivered))
        producer.reset()
        #expect(producer.sessionNumber == 2)
        let after = await producer.publish([TestKafka.message(sequence: 2)])
        #expect(after.count == 1 && after.allSatisfy(\.isDelivered), "\(after)")
        await producer.shutdown()
    }
}
