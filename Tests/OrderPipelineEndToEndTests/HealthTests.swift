import Foundation
import OrderPipelineCore
import OrderPipelineTestSupport
import Testing

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// `relay` and `consume` as real processes on the real services: `/health/live` lists their machine loops and
/// their progress, `/health/ready` each dependency; consumer lag counts from the committed offset (0 once every
/// record is done); outbox gauges vanish when the outbox cannot be read, rather than keep their last value.
@Suite(
    "Health and honest metrics of relay and consume",
    .enabled(if: EndToEnd.isConfigured, "DATABASE_URL, KAFKA_BROKERS or SERVICEBUS_CONNECTION_STRING is not set"),
    .serialized,
    .timeLimit(.minutes(10))
)
struct HealthTests {
    /// Status and body of one GET (no retry).
    static func get(port: Int, path: String) async -> (status: Int, body: String) {
        guard let (data, response) = try? await URLSession.shared.data(from: URL(string: "http://127.0.0.1:\(port)\(path)")!) else { return (0, "") }
        return ((response as? HTTPURLResponse)?.statusCode ?? 0, String(decoding: data, as: UTF8.self))
    }

    /// Polls until `condition` holds for a GET (or the deadline passes); answers the last response.
    static func poll(port: Int, path: String, upTo seconds: TimeInterval, _ condition: (Int, String) -> Bool) async -> (status: Int, body: String) {
        let deadline = Date().addingTimeInterval(seconds)
        var last = await get(port: port, path: path)
        while !condition(last.status, last.body), Date() < deadline {
            try? await Task.sleep(for: .milliseconds(200))
            last = await get(port: port, path: path)
        }
        return last
    }

    @Test("live and ready list the loops and PostgreSQL; lag reaches 0 from the committed offset; gauges vanish with the database")
    func healthAndMetrics() async throws {
        // The run's own topic: on the shared `orders` topic a new group also works through every other test's
        // records, so its lag would say nothing about this test's orders.
        try await RestartTests.Run.with { run in
            let relayPort = try FreePort.pick()
            let consumerPort = try FreePort.pick()
            let relay = PipelineProcess(role: "relay", environment: run.environment.merging(["METRICS_PORT": "\(relayPort)"]) { $1 }, name: run.name)
            let consumer = PipelineProcess(role: "consume", environment: run.environment.merging(["METRICS_PORT": "\(consumerPort)"]) { $1 }, name: run.name)
            defer { relay.abandon(); consumer.abandon() }
            try relay.start()
            try consumer.start()

            let live = await Self.poll(port: relayPort, path: "/health/live", upTo: 20) { status, body in status == 200 && body.contains("relay-service-bus") }
            #expect(live.status == 200, "relay /health/live: \(live)\n\(relay.tail())")
            #expect(live.body.contains(#""status":"live""#) && live.body.contains(#""name":"relay-kafka""#), "\(live.body)")
            let ready = await Self.poll(port: relayPort, path: "/health/ready", upTo: 10) { status, _ in status == 200 }
            #expect(ready.status == 200, "relay /health/ready: \(ready)")
            #expect(ready.body.contains(#""postgres":{"status":"up","schemaVersion":"#), "\(ready.body)")
            let consumerLive = await Self.poll(port: consumerPort, path: "/health/live", upTo: 20) { status, body in status == 200 && body.contains(#""name":"consumer""#) }
            #expect(consumerLive.status == 200, "consume /health/live: \(consumerLive)\n\(consumer.tail())")

            // Orders flow; once all are fulfilled and committed, every shown lag is 0 (from the committed offset).
            let stream = OrderStream()
            stream.start(store: run.store, total: 30, every: .milliseconds(20))
            await stream.finish()
            let total = stream.ids.count
            let done = try await run.wait(upTo: 60) { try await run.fulfilled() == total }
            #expect(done, "not all \(total) orders fulfilled:\n\(consumer.tail())")
            let metrics = await Self.poll(port: consumerPort, path: "/metrics", upTo: 20) { _, body in
                let lags = body.split(separator: "\n").filter { $0.hasPrefix("orderpipeline_consumer_lag{") }
                return !lags.isEmpty && lags.allSatisfy { $0.hasSuffix(" 0") || $0.hasSuffix(" 0.0") }
            }
            let lags = metrics.body.split(separator: "\n").filter { $0.hasPrefix("orderpipeline_consumer_lag{") }
            #expect(!lags.isEmpty && lags.allSatisfy { $0.hasSuffix(" 0") || $0.hasSuffix(" 0.0") }, "consumer lag lines: \(lags)")
            let relayMetrics = await Self.get(port: relayPort, path: "/metrics")
            #expect(relayMetrics.body.contains(#"orderpipeline_outbox_pending{outbox="kafka"} 0"#), "\(relayMetrics.body.prefix(1500))")

            // The database goes away: the outbox cannot be read, its gauges disappear; readiness says PostgreSQL is down.
            await run.database.drop()
            let gone = await Self.poll(port: relayPort, path: "/metrics", upTo: 20) { _, body in !body.contains("orderpipeline_outbox_pending") }
            #expect(!gone.body.contains("orderpipeline_outbox_pending"), "stale outbox gauges: \(gone.body.prefix(1500))")
            let notReady = await Self.poll(port: relayPort, path: "/health/ready", upTo: 20) { status, _ in status == 503 }
            #expect(notReady.status == 503 && notReady.body.contains(#""postgres":{"status":"down"}"#), "\(notReady)")
            await relay.stop()
            await consumer.stop()
        }
    }
}
