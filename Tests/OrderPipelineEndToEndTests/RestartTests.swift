import Foundation
import Logging
import OrderPipelineCore
import OrderPipelinePostgres
import OrderPipelineRuntime
import OrderPipelineServiceBus
import OrderPipelineTestSupport
import ServiceLifecycle
import Synchronization
import Testing

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// Crash/restart tests with real processes: the built `orderpipeline` binary runs as `relay` and `consume`, one of
/// them is killed with SIGKILL while orders are flowing and started again, and every order must still be
/// fulfilled exactly once. Each test has its own database (`CREATE DATABASE`, so the binary needs no schema
/// setting), its own Kafka topic (see `ScratchTopic`), consumer group and AMQP queue (a group frozen during a join
/// can wedge on Tansu).
///
/// The binary is `$ORDERPIPELINE_BIN`, or `orderpipeline` next to the test bundle (the build directory); `swift
/// test` does not build executables, so `swift build` must run first.
enum Restart {
    static let environment = TestEnvironment.variables
    static let logger = TestEnvironment.logger("test.restart")

    /// The `orderpipeline` executable of this build.
    static var binary: URL? {
        if let path = environment["ORDERPIPELINE_BIN"], !path.isEmpty { return URL(fileURLWithPath: path) }
        let me = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        var directory = URL(fileURLWithPath: me).deletingLastPathComponent()
        // macOS: …/OrderPipelinePackageTests.xctest/Contents/MacOS/<exe>
        while directory.path.contains(".xctest") { directory.deleteLastPathComponent() }
        let candidate = directory.appendingPathComponent("orderpipeline")
        return FileManager.default.isExecutableFile(atPath: candidate.path) ? candidate : nil
    }

    static func randomName(_ prefix: String) -> String {
        prefix + String(UInt64.random(in: 0...UInt64.max) & 0xFFFF_FFFF_FFFF, radix: 16)
    }

    /// `postgres://…/orderpipeline?x` → `postgres://…/<database>?x`.
    static func url(_ url: String, database: String) -> String {
        let (base, query) = url.firstIndex(of: "?").map { (String(url[..<$0]), String(url[$0...])) } ?? (url, "")
        guard let scheme = base.range(of: "://") else { return "\(url) dbname=\(database)" }
        let rest = base[scheme.upperBound...]
        let host = rest.firstIndex(of: "/").map { String(base[..<$0]) } ?? base
        return host + "/" + database + query
    }
}

/// A throwaway database, dropped at the end.
final class TestDatabase: Sendable {
    let name: String
    let url: String
    let admin: PostgresSession
    let session: PostgresSession

    init(adminURL: String) async throws {
        name = Restart.randomName("restart_")
        admin = PostgresSession(settings: .init(url: adminURL), logger: Restart.logger, name: "pg-admin")
        let name = self.name
        let created: Result<Void, PostgresError> = await admin.withConnection { connection in
            Result { () throws(PostgresError) in _ = try connection.get().execute(script: "CREATE DATABASE \(name)") }
        }
        _ = try created.get()
        url = Restart.url(adminURL, database: name)
        session = PostgresSession(settings: .init(url: url), logger: Restart.logger, name: "pg-check")
    }

    /// Rows of a parameterised query, as text.
    func rows(_ sql: String, _ parameters: [PostgresValue] = []) async throws -> [[String?]] {
        let result: Result<[[String?]], PostgresError> = await session.withConnection { connection in
            Result { () throws(PostgresError) in
                let rows = try connection.get().query(sql, parameters)
                return (0..<rows.count).map { row in (0..<rows.columns).map { rows.string(row, $0) } }
            }
        }
        return try result.get()
    }

    func int(_ sql: String, _ parameters: [PostgresValue] = []) async throws -> Int {
        guard let first = try await rows(sql, parameters).first, let value = first.first ?? nil else { return -1 }
        return Int(value) ?? -1
    }

    func drop() async {
        session.close()
        let name = self.name
        let _: Void = await admin.withConnection { connection in
            _ = try? connection.get().execute(script: "DROP DATABASE IF EXISTS \(name) WITH (FORCE)")
        }
        admin.close()
    }
}

/// One `orderpipeline <role>` child process; output goes to a log file (printed when a test fails).
final class PipelineProcess: @unchecked Sendable {
    let role: String
    let environment: [String: String]
    let log: URL
    private var process: Process?
    private(set) var starts = 0
    /// Started through `/bin/sh` (for LD_PRELOAD shims such as libfaketime, under which a Swift binary exec'd
    /// directly loses its arguments).
    var viaShell = false

    init(role: String, environment: [String: String], name: String) {
        self.role = role
        self.environment = environment
        log = FileManager.default.temporaryDirectory.appendingPathComponent("\(name)-\(role).log")
        FileManager.default.createFile(atPath: log.path, contents: nil)
    }

    func start() throws {
        guard let binary = Restart.binary else { throw TestFailure("the orderpipeline binary was not found (run `swift build` first)") }
        let process = Process()
        process.executableURL = viaShell ? URL(fileURLWithPath: "/bin/sh") : binary
        process.arguments = viaShell ? ["-c", #"exec "$0" "$@""#, binary.path, role] : [role]
        process.environment = environment
        let output = try FileHandle(forWritingTo: log)
        output.seekToEndOfFile()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        self.process = process
        starts += 1
    }

    var isRunning: Bool { process?.isRunning ?? false }

    /// SIGKILL, then wait (bounded) until the kernel has reaped it.
    func kill9() throws {
        guard let process, process.isRunning else { throw TestFailure("\(role) is not running") }
        #if canImport(Glibc)
            _ = Glibc.kill(process.processIdentifier, SIGKILL)
        #endif
        let deadline = Date().addingTimeInterval(10)
        while process.isRunning, Date() < deadline { usleep(10_000) }
        guard !process.isRunning else { throw TestFailure("\(role) survived SIGKILL") }
    }

    /// SIGTERM (graceful shutdown), SIGKILL after 10 s.
    func stop() {
        guard let process, process.isRunning else { return }
        process.terminate()
        let deadline = Date().addingTimeInterval(10)
        while process.isRunning, Date() < deadline { usleep(10_000) }
        if process.isRunning {
            #if canImport(Glibc)
                _ = Glibc.kill(process.processIdentifier, SIGKILL)
            #endif
            process.waitUntilExit()
        }
    }

    /// Runs the role to completion (for `migrate`), bounded.
    func runToCompletion(timeout: TimeInterval) throws -> Int32 {
        try start()
        let deadline = Date().addingTimeInterval(timeout)
        while isRunning, Date() < deadline { usleep(10_000) }
        guard let process, !process.isRunning else {
            stop()
            throw TestFailure("\(role) did not finish within \(timeout) s")
        }
        return process.terminationStatus
    }

    var output: String { (try? String(contentsOf: log, encoding: .utf8)) ?? "" }
    func tail(_ lines: Int = 40) -> String { output.split(separator: "\n").suffix(lines).joined(separator: "\n") }
}

/// GET http://127.0.0.1:<port><path>, polled until it answers 200 or the deadline passes.
func httpGet(port: Int, path: String, upTo seconds: TimeInterval = 10) async -> String? {
    let url = URL(string: "http://127.0.0.1:\(port)\(path)")!
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if let (data, response) = try? await URLSession.shared.data(from: url), (response as? HTTPURLResponse)?.statusCode == 200 {
            return String(decoding: data, as: UTF8.self)
        }
        try? await Task.sleep(for: .milliseconds(100))
    }
    return nil
}

/// Creates orders through the intake shell at a steady pace in the background (the "stream"), until `total` or
/// `finish()`.
final class OrderStream: Sendable {
    private let created = Mutex<[OrderID]>([])
    private let done = Mutex<Task<Void, Never>?>(nil)
    private let stopped = Atomic<Bool>(false)

    init() {}

    func start(store: PostgresStore, total: Int, every interval: Duration) {
        let intake = IntakeShell(store: store, logger: Restart.logger)
        let body = Array(#"{"customerName":"Ada","customerEmail":"ada@example.com","items":[{"productId":"p-1","productName":"Widget","quantity":2,"unitPrice":9.99}]}"#.utf8)
        let task = Task { [self] in
            for _ in 0..<total where !stopped.load(ordering: .relaxed) {
                if case .created(let order) = await intake.createOrder(body: body, idempotencyKey: nil) {
                    created.withLock { $0.append(order.id) }
                }
                try? await Task.sleep(for: interval)
            }
        }
        done.withLock { $0 = task }
    }

    /// Creates `count` orders at once (concurrently), so the process about to be killed has a batch in flight.
    func burst(store: PostgresStore, count: Int) {
        let intake = IntakeShell(store: store, logger: Restart.logger)
        let body = Array(#"{"customerName":"Bo","customerEmail":"bo@example.com","items":[{"productId":"p-2","productName":"Gadget","quantity":1,"unitPrice":5.00}]}"#.utf8)
        for _ in 0..<count {
            Task { [self] in
                if case .created(let order) = await intake.createOrder(body: body, idempotencyKey: nil) {
                    created.withLock { $0.append(order.id) }
                }
            }
        }
    }

    /// Stops creating orders and waits for the one in flight.
    func finish() async {
        stopped.store(true, ordering: .relaxed)
        let task = done.withLock { $0 }
        await task?.value
    }

    var ids: [OrderID] { created.withLock { $0 } }
}

@Suite(
    "Restart: kill -9 the consumer or the relay mid-stream, every order is still fulfilled exactly once",
    .enabled(if: EndToEnd.isConfigured, "DATABASE_URL, KAFKA_BROKERS or SERVICEBUS_CONNECTION_STRING is not set"),
    .serialized,
    .timeLimit(.minutes(10))
)
struct RestartTests {
    /// Cap of one stream; it is stopped 1.5 s after the restart, so a run has orders created before, while and
    /// after the process is down.
    static let orders = 400

    /// The parts every run shares: a database migrated by the binary, a topic, a group, a queue, the child environment.
    struct Run {
        let database: TestDatabase
        let topic: String
        let store: PostgresStore
        let environment: [String: String]
        let queue: String
        let serviceBus: ServiceBusConfiguration
        let name: String

        static func make() async throws -> Run {
            let base = Restart.environment
            await ConnectionGate.wait()
            let name = Restart.randomName("restart-")
            try ScratchTopic.create(name)
            let database = try await TestDatabase(adminURL: base["DATABASE_URL"]!)
            var environment = base
            environment["DATABASE_URL"] = database.url
            environment["KAFKA_TOPIC"] = name
            environment["KAFKA_GROUP_ID"] = name
            environment["SERVICEBUS_QUEUE"] = name
            environment["RELAY_ID"] = name
            environment["LOG_LEVEL"] = "info"
            // Few connections: the whole test run shares PostgreSQL's 100 (this run holds about 9).
            environment["DB_POOL_SIZE"] = "2"
            let migrate = PipelineProcess(role: "migrate", environment: environment, name: name)
            let status = try migrate.runToCompletion(timeout: 60)
            guard status == 0 else { throw TestFailure("migrate exited with \(status):\n\(migrate.tail())") }
            var pool = PostgresPool.Configuration(url: database.url)
            pool.size = 1
            var serviceBus = try BrokerConfiguration.fromEnvironment(base, needsServiceBus: true).serviceBus!
            serviceBus.queue = name
            return Run(
                database: database, topic: name, store: PostgresStore(configuration: pool, logger: Restart.logger), environment: environment,
                queue: name, serviceBus: serviceBus, name: name)
        }

        /// Polls until `condition` holds or the deadline passes; answers whether it held.
        func wait(upTo seconds: TimeInterval, poll: Duration = .milliseconds(100), _ condition: () async throws -> Bool) async throws -> Bool {
            let deadline = Date().addingTimeInterval(seconds)
            while Date() < deadline {
                if try await condition() { return true }
                try await Task.sleep(for: poll)
            }
            return try await condition()
        }

        func fulfilled() async throws -> Int { try await database.int("SELECT count(*) FROM orders WHERE status = 'Fulfilled'") }
        func publishedToKafka() async throws -> Int { try await database.int("SELECT count(*) FROM kafka_outbox WHERE published_at IS NOT NULL") }

        /// Everything created is Fulfilled, exactly one Fulfilled transition per order, the Service Bus outbox
        /// drained, and the queue holds exactly one message per order with its derived MessageId.
        func verify(orders ids: [OrderID], processes: [PipelineProcess]) async throws {
            let total = ids.count
            let done = try await wait(upTo: 120) {
                guard try await fulfilled() == total else { return false }
                return try await database.int("SELECT count(*) FROM service_bus_outbox WHERE published_at IS NULL") == 0
            }
            let fulfilledCount = try await fulfilled()
            if !done {
                for process in processes { print("--- \(process.role) (\(process.log.path)):\n\(process.tail())") }
            }
            #expect(done, "not all \(total) orders fulfilled and published in time: \(fulfilledCount) fulfilled")
            #expect(try await database.int("SELECT count(*) FROM orders") == total)
            #expect(try await database.int("SELECT count(*) FROM order_status_transitions WHERE to_status = 'Fulfilled'") == total)
            let twice = try await database.rows(
                "SELECT order_id, count(*) FROM order_status_transitions WHERE to_status = $1::text GROUP BY order_id HAVING count(*) <> 1",
                [.text("Fulfilled")])
            #expect(twice.isEmpty, "orders with more than one Fulfilled transition: \(twice)")
            #expect(try await database.int("SELECT count(*) FROM dead_letters") == 0)

            // The queue: read until every order's message is there, then 2 s more for any duplicate.
            let received = Mutex<[AMQPMessage]>([])
            let receiver = try ServiceBusReceiver(configuration: serviceBus, logger: Restart.logger) { message in received.withLock { $0.append(message) } }
            _ = try await wait(upTo: 30) { received.withLock { $0.count } >= total }
            try await Task.sleep(for: .seconds(2))
            await receiver.shutdown()
            let messages = received.withLock { $0 }
            #expect(messages.count == total, "\(messages.count) messages on the queue for \(total) orders")
            let byID = Dictionary(grouping: messages, by: { $0.messageID ?? "" })
            for id in ids {
                let expected = EventID.derived(order: id, type: .orderFulfilled).description
                #expect(byID[expected]?.count == 1, "order \(id): \(byID[expected]?.count ?? 0) messages with MessageId \(expected)")
            }
        }

        func close() async {
            store.close()
            await database.drop()
            ScratchTopic.delete(topic)
        }
    }

    @Test("kill -9 the consumer mid-stream and restart it")
    func consumerKilled() async throws {
        let run = try await Run.make()
        // Both serve /metrics (METRICS_PORT), checked at the end.
        let relayPort = Int.random(in: 21_000..<25_000)
        let consumerPort = relayPort + 4_000
        var relayEnvironment = run.environment
        relayEnvironment["METRICS_PORT"] = "\(relayPort)"
        var consumerEnvironment = run.environment
        consumerEnvironment["METRICS_PORT"] = "\(consumerPort)"
        let relay = PipelineProcess(role: "relay", environment: relayEnvironment, name: run.name)
        let consumer = PipelineProcess(role: "consume", environment: consumerEnvironment, name: run.name)
        defer { relay.stop(); consumer.stop() }
        try relay.start()
        try consumer.start()

        let stream = OrderStream()
        stream.start(store: run.store, total: Self.orders, every: .milliseconds(40))
        // Kill once the consumer has fulfilled some orders, while orders keep coming.
        let some = try await run.wait(upTo: 60) { try await run.fulfilled() >= 10 }
        #expect(some, "the consumer fulfilled nothing within 60 s:\n\(consumer.tail())")
        // A burst, and the kill as soon as the consumer is working through it.
        let base = try await run.fulfilled()
        stream.burst(store: run.store, count: 40)
        _ = try await run.wait(upTo: 10, poll: .milliseconds(2)) { try await run.fulfilled() > base + 3 }
        let before = stream.ids.count
        try consumer.kill9()
        let fulfilledAtKill = try await run.fulfilled()
        try await Task.sleep(for: .milliseconds(500))
        try consumer.start()
        try await Task.sleep(for: .milliseconds(1500))
        await stream.finish()
        let ids = stream.ids
        #expect(before < ids.count, "the kill came after the last order was created")
        #expect(fulfilledAtKill < ids.count, "everything was fulfilled before the kill")

        try await run.verify(orders: ids, processes: [relay, consumer])
        #expect(consumer.starts == 2)

        // The standalone roles' /metrics: the relay counted its publishes (both outboxes, pending 0 now), the
        // restarted consumer its fulfilments since the restart.
        let relayMetrics = await httpGet(port: relayPort, path: "/metrics") ?? ""
        #expect(relayMetrics.contains(#"orderpipeline_outbox_published_total{outbox="kafka"}"#), "relay /metrics:\n\(relayMetrics.prefix(2000))")
        #expect(relayMetrics.contains(#"orderpipeline_outbox_pending{outbox="service-bus"} 0"#), "relay /metrics:\n\(relayMetrics.prefix(2000))")
        let consumerMetrics = await httpGet(port: consumerPort, path: "/metrics") ?? ""
        #expect(consumerMetrics.contains("orderpipeline_orders_fulfilled_total"), "consumer /metrics:\n\(consumerMetrics.prefix(2000))")
        #expect(await httpGet(port: consumerPort, path: "/health/live") != nil)
        let inbox = try await run.database.int("SELECT count(*) FROM consumer_inbox")
        print("consumer killed after \(fulfilledAtKill) of \(ids.count) orders were fulfilled (\(before) created); inbox rows: \(inbox)")
        relay.stop()
        consumer.stop()
        await run.close()
    }

    @Test("kill -9 the Kafka relay mid-stream and restart it (same RELAY_ID)")
    func relayKilled() async throws {
        let run = try await Run.make()
        // The killed process relays the Kafka outbox only (no SERVICEBUS_CONNECTION_STRING): Kafka duplicates
        // are removed by the consumer's inbox. A Service Bus relay killed between send and settle sends that
        // row again with the same MessageId (Service Bus duplicate detection removes it, RabbitMQ keeps it), so
        // it runs here in the test process, where it is not killed.
        var kafkaOnly = run.environment
        kafkaOnly["SERVICEBUS_CONNECTION_STRING"] = nil
        let relay = PipelineProcess(role: "relay", environment: kafkaOnly, name: run.name)
        let consumer = PipelineProcess(role: "consume", environment: run.environment, name: run.name)
        defer { relay.stop(); consumer.stop() }

        var settings = PostgresConnection.Settings(url: run.database.url)
        settings.applicationName = "restart-test-sb-relay"
        let listener = PostgresListener(settings: settings, logger: Restart.logger)
        let sender = try ServiceBusSender(configuration: run.serviceBus, logger: Restart.logger)
        let group = ServiceGroup(
            services: [
                RelayService(
                    outbox: .serviceBus, owner: run.name + "-test", store: run.store, publisher: sender, listener: listener,
                    logger: Restart.logger, onStop: { await sender.shutdown() })
            ],
            logger: Restart.logger
        )
        let serviceBusRelay = Task { try await group.run() }

        try consumer.start()
        try relay.start()
        let stream = OrderStream()
        stream.start(store: run.store, total: Self.orders, every: .milliseconds(40))
        let some = try await run.wait(upTo: 60) { try await run.publishedToKafka() >= 10 }
        #expect(some, "the relay published nothing within 60 s:\n\(relay.tail())")
        // A burst, and the kill while the relay holds claimed rows (a batch between claim and settle).
        stream.burst(store: run.store, count: 40)
        let inFlight = try await run.wait(upTo: 10, poll: .milliseconds(1)) {
            try await run.database.int("SELECT count(*) FROM kafka_outbox WHERE claimed_by IS NOT NULL") > 0
        }
        let before = stream.ids.count
        try relay.kill9()
        let publishedAtKill = try await run.publishedToKafka()
        let claimedAtKill = try await run.database.int("SELECT count(*) FROM kafka_outbox WHERE claimed_by IS NOT NULL")
        try await Task.sleep(for: .milliseconds(500))
        try relay.start()
        try await Task.sleep(for: .milliseconds(1500))
        await stream.finish()
        let ids = stream.ids
        #expect(before < ids.count, "the kill came after the last order was created")

        try await run.verify(orders: ids, processes: [relay, consumer])
        #expect(try await run.database.int("SELECT count(*) FROM kafka_outbox WHERE published_at IS NULL") == 0)
        #expect(relay.starts == 2)
        print("relay killed after \(publishedAtKill) Kafka rows published (\(claimedAtKill) claimed, caught in flight: \(inFlight), \(before) orders created) of \(ids.count)")

        await group.triggerGracefulShutdown()
        try await serviceBusRelay.value
        listener.close()
        relay.stop()
        consumer.stop()
        await run.close()
    }
}
