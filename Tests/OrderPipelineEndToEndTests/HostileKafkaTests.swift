import Foundation
import OrderPipelineCore
import OrderPipelineTestSupport
import Testing

/// Kafka faults of the hostile world (issue 8) on the real broker (Tansu) with the binary's `relay` and `consume`
/// processes, each on its own scratch topic, database, group and queue. Tansu creates a missing topic on first use
/// and does not implement DeleteRecords (it closes the connection), so the faults are made as described per test.
@Suite(
    "Hostile world on the real services: Kafka",
    .enabled(
        if: EndToEnd.isConfigured && TestEnvironment.value("SERVICES_PYTHON") != nil, "DATABASE_URL, KAFKA_BROKERS, SERVICEBUS_CONNECTION_STRING or SERVICES_PYTHON is not set"),
    .serialized,
    .timeLimit(.minutes(10))
)
struct HostileKafkaTests {
    /// The run's environment on a fresh scratch topic of 2 partitions.
    private func scratchTopic(_ run: RestartTests.Run) async throws -> (environment: [String: String], topic: String) {
        let topic = Restart.randomName("hostile-orders-")
        try await KafkaAdmin.run("create", topic)
        var environment = run.environment
        environment["KAFKA_TOPIC"] = topic
        return (environment, topic)
    }

    @Test("dead-letter topic unusable: the poison record is kept in dead_letters and later orders are still fulfilled")
    func deadLetterTopicUnusable() async throws {
        try await RestartTests.Run.with { run in
            var (environment, topic) = try await scratchTopic(run)
            // Tansu would create a missing topic on the first produce; a name Kafka forbids makes the forward fail
            // as a missing topic with auto-create off does (the broker answers "Invalid topic").
            environment["KAFKA_DEAD_LETTER_TOPIC"] = "no such topic!"
            try await KafkaAdmin.run("produce", topic, "poison: not an order event")
            let relay = PipelineProcess(role: "relay", environment: environment, name: run.name)
            let consumer = PipelineProcess(role: "consume", environment: environment, name: run.name)
            defer { relay.abandon(); consumer.abandon() }
            try relay.start()
            try consumer.start()
            let stream = OrderStream()
            stream.start(store: run.store, total: 20, every: .milliseconds(10))
            let done = try await run.wait(upTo: 45) {
                guard try await run.fulfilled() == 20 else { return false }
                return try await run.database.int("SELECT count(*) FROM dead_letters") == 1
            }
            let fulfilled = try await run.fulfilled()
            if !done { print("--- consume:\n\(consumer.tail())\n--- relay:\n\(relay.tail())") }
            #expect(done, "within 45 s: \(fulfilled) of 20 orders fulfilled")
            let letters = try await run.database.rows("SELECT source, reason FROM dead_letters")
            #expect(letters.count == 1 && letters.first?[0]?.hasPrefix(topic + "/") == true, "dead letters: \(letters)")
            // The forward really failed: otherwise this test proves nothing.
            #expect(consumer.output.contains("dead-letters table only"), "the consumer never gave up on the topic copy:\n\(consumer.tail())")
            await relay.stop()
            await consumer.stop()
            try? await KafkaAdmin.run("delete", topic)
        }
    }

    @Test("records lost from the topic while the consumer is stopped: the reconciler brings every order to Fulfilled once")
    func recordsLost() async throws {
        try await RestartTests.Run.with { run in
            var (environment, topic) = try await scratchTopic(run)
            environment["RECONCILE_AFTER_SECONDS"] = "3"
            environment["RECONCILE_INTERVAL_SECONDS"] = "1"
            let relay = PipelineProcess(role: "relay", environment: environment, name: run.name)
            let consumer = PipelineProcess(role: "consume", environment: environment, name: run.name)
            defer { relay.abandon(); consumer.abandon() }
            try relay.start()
            try consumer.start()
            // The group has committed offsets before the loss.
            let stream = OrderStream()
            stream.start(store: run.store, total: 10, every: .milliseconds(10))
            let started = try await run.wait(upTo: 45) { try await run.fulfilled() == 10 }
            #expect(started, "the first 10 orders were not fulfilled within 45 s:\n\(consumer.tail())")
            await consumer.stop()

            let lost = OrderStream()
            lost.start(store: run.store, total: 30, every: .milliseconds(5))
            let published = try await run.wait(upTo: 20) {
                guard lost.ids.count == 30 else { return false }
                return try await run.database.int("SELECT count(*) FROM kafka_outbox WHERE published_at IS NULL") == 0
            }
            #expect(published, "the relay did not publish the 30 orders within 20 s")
            // Tansu has no DeleteRecords and keeps records in memory regardless of retention.ms: delete the topic and
            // create it again, empty (the relay may recreate it first; then it is empty too).
            try await KafkaAdmin.run("recreate", topic)
            let lostAt = Date()
            try consumer.start()
            let ids = stream.ids + lost.ids
            let done = try await run.wait(upTo: 45) { try await run.fulfilled() == ids.count }
            let recovery = Date().timeIntervalSince(lostAt)
            let fulfilled = try await run.fulfilled()
            if !done { print("--- consume:\n\(consumer.tail())\n--- relay:\n\(relay.tail())") }
            #expect(done, "\(fulfilled) of \(ids.count) orders fulfilled 45 s after the records were lost")
            let twice = try await run.database.rows(
                "SELECT order_id, count(*) FROM order_status_transitions WHERE to_status = $1::text GROUP BY order_id HAVING count(*) <> 1",
                [.text("Fulfilled")])
            #expect(twice.isEmpty, "orders with more than one Fulfilled transition: \(twice)")
            let transitions = try await run.database.int("SELECT count(*) FROM order_status_transitions WHERE to_status = 'Fulfilled'")
            #expect(transitions == ids.count)
            // The reconciler did it: nothing else re-sends a record that was published.
            #expect(relay.output.contains("Overdue orders re-announced"), "the relay never re-announced an order:\n\(relay.tail())")
            print("records lost: \(lost.ids.count) orders' records deleted with the topic; all \(ids.count) fulfilled \(String(format: "%.1f", recovery)) s after the loss")
            await relay.stop()
            await consumer.stop()
            try? await KafkaAdmin.run("delete", topic)
        }
    }
}

/// Topic administration and raw produce through confluent-kafka under `$SERVICES_PYTHON` (librdkafka 2.16).
enum KafkaAdmin {
    static let script = #"""
        import sys
        from confluent_kafka import Producer
        from confluent_kafka.admin import AdminClient, NewTopic
        brokers, action, topic = sys.argv[1:4]
        admin = AdminClient({"bootstrap.servers": brokers})
        def create():
            for future in admin.create_topics([NewTopic(topic, 2, 1)]).values():
                try: future.result(10)
                except Exception as error:
                    if "TOPIC_ALREADY_EXISTS" not in str(error): raise
        if action in ("delete", "recreate"):
            for future in admin.delete_topics([topic]).values(): future.result(10)
        if action in ("create", "recreate"):
            create()
        if action == "produce":
            producer = Producer({"bootstrap.servers": brokers, "message.timeout.ms": 10000})
            producer.produce(topic, sys.argv[4].encode(), key=b"poison")
            if producer.flush(15) != 0: sys.exit("not delivered")
        """#

    static func run(_ action: String, _ topic: String, _ value: String? = nil) async throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: TestEnvironment.value("SERVICES_PYTHON")!)
        process.arguments = ["-c", script, Restart.environment["KAFKA_BROKERS"]!, action, topic] + (value.map { [$0] } ?? [])
        try process.run()
        let status = await process.finish(within: .seconds(30)).status
        guard status == 0 else { throw TestFailure("kafka \(action) \(topic) failed with \(status)") }
    }
}
