import Foundation
import OrderPipelineCore
import OrderPipelineServiceBus
import OrderPipelineTestSupport
import Synchronization
import Testing

/// One relay host's wall clock 45 s ahead (libfaketime), as issue 8 found it: leases and due times are on the
/// database's clock now, so the fast relay must neither take over live leases nor push retries into the healthy
/// relay's future. librdkafka cannot deliver under libfaketime, so the fast relay is also one whose Kafka broker
/// is unreachable — it must not starve the healthy one.
@Suite(
    "Hostile world on the real services: clock skew",
    .enabled(if: EndToEnd.isConfigured && ClockSkew.library != nil, "the real services or libfaketime (Debian's faketime) are missing"),
    .serialized,
    .timeLimit(.minutes(10))
)
struct ClockSkewTests {
    @Test("2 relays, one 45 s ahead, under load: every order fulfilled within the bound, extra queue copies ≤ 1%")
    func oneRelayAhead() async throws {
        try await RestartTests.Run.with { run in
            let orders = 300
            var healthyEnvironment = run.environment
            healthyEnvironment["RELAY_ID"] = run.name + "-healthy"
            var fastEnvironment = run.environment
            fastEnvironment["RELAY_ID"] = run.name + "-fast"
            fastEnvironment["LD_PRELOAD"] = ClockSkew.library
            fastEnvironment["FAKETIME"] = "+45s"
            fastEnvironment["DONT_FAKE_MONOTONIC"] = "1"
            let healthy = PipelineProcess(role: "relay", environment: healthyEnvironment, name: run.name + "-healthy")
            let fast = PipelineProcess(role: "relay", environment: fastEnvironment, name: run.name + "-fast")
            fast.viaShell = true
            let consumer = PipelineProcess(role: "consume", environment: run.environment, name: run.name)
            let processes = [healthy, fast, consumer]
            defer { for process in processes { process.abandon() } }
            try fast.start()
            try healthy.start()
            try consumer.start()

            let stream = OrderStream()
            stream.start(store: run.store, total: orders, every: .milliseconds(5))
            let created = try await run.wait(upTo: 30) { stream.ids.count == orders }
            #expect(created, "only \(stream.ids.count) of \(orders) orders created in 30 s")
            let lastCreated = Date()
            let done = try await run.wait(upTo: 60) {
                guard try await run.fulfilled() == orders else { return false }
                return try await run.database.int("SELECT count(*) FROM service_bus_outbox WHERE published_at IS NULL") == 0
            }
            let settled = Date().timeIntervalSince(lastCreated)
            let fulfilled = try await run.fulfilled()
            if !done { for process in processes { print("--- \(process.log.lastPathComponent):\n\(process.tail())") } }
            #expect(done, "60 s after the last order: \(fulfilled) of \(orders) fulfilled and published")
            #expect(fast.isRunning, "the skewed relay exited:\n\(fast.tail())")

            // The queue: every order's message, then 2 s more for copies.
            let received = Mutex<[String]>([])
            let receiver = try ServiceBusReceiver(configuration: run.serviceBus, logger: Restart.logger) { message in
                received.withLock { $0.append(message.messageID ?? "") }
            }
            _ = try await run.wait(upTo: 30) { Set(received.withLock { $0 }).count >= orders }
            try await Task.sleep(for: .seconds(2))
            await receiver.shutdown()
            let messages = received.withLock { $0 }
            let distinct = Set(messages)
            let expected = Set(stream.ids.map { EventID.derived(order: $0, type: .orderFulfilled).description })
            #expect(expected.isSubset(of: distinct), "\(expected.subtracting(distinct).count) orders have no message on the queue")
            let extra = messages.count - distinct.count
            #expect(Double(extra) <= Double(orders) * 0.01, "\(extra) extra copies for \(orders) orders (more than 1%)")
            let leaseLost = processes.map { $0.output.components(separatedBy: "Lease lost").count - 1 }.reduce(0, +)
            // How long Kafka rows waited: a batch the fast relay claimed and could not deliver waits for its lease.
            let waits = try await run.database.rows(
                """
                SELECT count(*) FILTER (WHERE published_at - created_at > interval '5 seconds'),
                       round(extract(epoch FROM max(published_at - created_at))::numeric, 1)::text
                FROM kafka_outbox
                """)
            print(
                "clock skew +45 s: \(orders) orders fulfilled and published \(String(format: "%.1f", settled)) s after the last was created; "
                    + "\(messages.count) messages, \(distinct.count) distinct (\(extra) extra); \"Lease lost\" warnings: \(leaseLost); "
                    + "Kafka rows published > 5 s after their commit: \(waits.first?[0] ?? "?"), longest wait \(waits.first?[1] ?? "?") s")
            for process in processes { await process.stop() }
        }
    }
}

enum ClockSkew {
    /// Debian's libfaketime (package `faketime`, installed by scripts/services).
    static var library: String? {
        let path = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
        return FileManager.default.fileExists(atPath: path) ? path : nil
    }
}
