import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import OrderPipelineCore
import OrderPipelineHTTP
import OrderPipelinePostgres
import OrderPipelineRuntime
import OrderPipelineTestSupport
import Synchronization
import Testing

/// Keeps every log record (message and metadata, flattened) so a test can find what the server logged.
struct CollectingLogHandler: LogHandler {
    let records: Records
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .info

    final class Records: Sendable {
        private let lines = Mutex<[String]>([])
        func append(_ line: String) { lines.withLock { $0.append(line) } }
        var all: [String] { lines.withLock { $0 } }
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(level: Logger.Level, message: Logger.Message, metadata extra: Logger.Metadata?, source: String, file: String, function: String, line: UInt) {
        let all = metadata.merging(extra ?? [:]) { $1 }
        records.append("\(message) " + all.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))
    }
}

/// What a 503 may say: nothing of libpq's text (host names, addresses, ports, user names).
func expectNothingInternal(_ response: TestResponse, sourceLocation: SourceLocation = #_sourceLocation) {
    for leak in ["127.0.0.1", "port", "connection", "server", "postgres", "refused", "libpq", "timeout", "deadline", "queue"] {
        #expect(!response.text.lowercased().contains(leak), "503 body leaks \(leak): \(response.text)", sourceLocation: sourceLocation)
    }
}

@Suite("HTTP API under database failure: 503, a request id, nothing internal", .timeLimit(.minutes(5)))
struct DatabaseFailureTests {
    @Test("database unreachable: every route answers 503 database unavailable + request id; the details are logged under that id")
    func unreachable() async throws {
        // Port 1 on loopback refuses connections at once.
        var configuration = PostgresPool.Configuration(url: "postgres://orders_user@127.0.0.1:1/none")
        configuration.size = 1
        let store = PostgresStore(configuration: configuration, logger: HTTPTestDatabase.logger)
        let metrics = PipelineMetrics()
        let records = CollectingLogHandler.Records()
        let logger = Logger(label: "test.http.failure") { _ in CollectingLogHandler(records: records) }
        let api = OrderAPI(shell: IntakeShell(store: store, logger: HTTPTestDatabase.logger, metrics: metrics), reads: store, metrics: metrics)
        let app = Application(router: api.makeRouter(), logger: logger)
        try await app.test(.router) { client in
            let responses = [
                try await client.execute(uri: "/api/orders", method: .post, headers: .json(idempotencyKey: "k-1"), body: ByteBuffer(string: johnSmith)),
                try await client.execute(uri: "/api/orders/00000000-0000-4000-8000-000000000000", method: .get),
                try await client.execute(uri: "/api/orders", method: .get),
                try await client.execute(
                    uri: "/api/orders/00000000-0000-4000-8000-000000000000/status", method: .patch, headers: .json,
                    body: ByteBuffer(string: #"{"status":"Processing"}"#)),
            ]
            for response in responses {
                response.expectProblem(.serviceUnavailable)
                #expect(response.headers[.retryAfter] == "1")
                #expect(response.jsonObject?["detail"] as? String == "database unavailable")
                expectNothingInternal(response)
                let id = try #require(response.jsonObject?["requestId"] as? String)
                // The reason is in the log, under the same request id.
                #expect(records.all.contains { $0.contains("hb.request.id=\(id)") && $0.contains("Connection refused") }, "\(records.all)")
            }
            let ids = Set(responses.compactMap { $0.jsonObject?["requestId"] as? String })
            #expect(ids.count == responses.count)
        }
        store.close()
    }

    @Test("a tampered cursor with an out-of-range timestamp is 422 like any made-up cursor", .enabled(if: HTTPTestDatabase.isConfigured))
    func tamperedCursor() async throws {
        @Sendable func cursor(_ plain: String) -> String {
            Data(plain.utf8).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
                .replacingOccurrences(of: "=", with: "")
        }
        try await withAPI { fixture in
            try await fixture.test { client in
                for plain in [
                    "-1000000000000000000.3fa85f64-5717-4562-b3fc-2c963f66afa6",
                    "9223372036854775807.3fa85f64-5717-4562-b3fc-2c963f66afa6",
                    "253402300800000000.3fa85f64-5717-4562-b3fc-2c963f66afa6",
                ] {
                    let response = try await client.execute(uri: "/api/orders?cursor=\(cursor(plain))", method: .get)
                    response.expectProblem(.unprocessableContent)
                    #expect(response.text.contains("cursor"))
                }
                // The edges of the accepted range still work (an empty page).
                for plain in ["253402300799999999.3fa85f64-5717-4562-b3fc-2c963f66afa6", "-62135596800000000.3fa85f64-5717-4562-b3fc-2c963f66afa6"] {
                    #expect(try await client.execute(uri: "/api/orders?cursor=\(cursor(plain))", method: .get).status == .ok)
                }
            }
        }
    }
}

@Suite(
    "HTTP API with PostgreSQL frozen (a private server)",
    .enabled(if: HTTPTestDatabase.isConfigured && PrivatePostgres.isAvailable, "needs the services and PostgreSQL's server binaries"), .timeLimit(.minutes(5)))
struct FrozenDatabaseTests {
    @Test("frozen: every request is answered 503 within the deadline and the queue stays bounded; thawed, retries with the same keys create each order once")
    func frozen() async throws {
        PoolStallWatch.start()
        let server = try await PrivatePostgres.start()
        try await withCleanup {
            var configuration = PostgresPool.Configuration(url: server.url)
            configuration.size = 2
            configuration.queueLimit = 4
            configuration.requestTimeout = .seconds(1)
            let migrator = PostgresSession(settings: configuration.connection, logger: HTTPTestDatabase.logger)
            let migrated: Result<[Int], PostgresError> = await migrator.withConnection { c in
                Result { () throws(PostgresError) in try Migrations.apply(on: try c.get(), logger: HTTPTestDatabase.logger) }
            }
            migrator.close()
            _ = try migrated.get()
            let store = PostgresStore(configuration: configuration, logger: HTTPTestDatabase.logger)
            defer { store.close() }
            let metrics = PipelineMetrics()
            // Creates share at most two transactions (group commit) and at most four wait for them: the rest are shed.
            var intake = OrderIntake.Configuration()
            intake.createsInFlight = 2
            intake.maxWaitingCreates = 4
            let shell = IntakeShell(store: store, configuration: intake, logger: HTTPTestDatabase.logger, metrics: metrics)
            let api = OrderAPI(shell: shell, reads: store, metrics: metrics)
            let app = Application(router: api.makeRouter(), logger: HTTPTestDatabase.logger)
            let count = 16
            try await app.test(.router) { client in
                #expect(try await client.execute(uri: "/api/orders", method: .post, headers: .json(idempotencyKey: "warm"), body: ByteBuffer(string: johnSmith)).status == .created)
                try await server.freeze()
                let deepest = Peak()
                let sampler = Task {
                    while !Task.isCancelled {
                        deepest.record(store.pool.queueDepth)
                        try? await Task.sleep(for: .milliseconds(2))
                    }
                }
                let answers = try await withThrowingTaskGroup(of: (HTTPResponse.Status, Duration, String).self) { group in
                    for n in 0..<count {
                        group.addTask {
                            let start = ContinuousClock.now
                            let response = try await client.execute(
                                uri: "/api/orders", method: .post, headers: .json(idempotencyKey: "frozen-\(n)"),
                                body: ByteBuffer(string: johnSmith))
                            return (response.status, ContinuousClock.now - start, response.text)
                        }
                    }
                    group.addTask {
                        let start = ContinuousClock.now
                        let response = try await client.execute(uri: "/health/ready", method: .get)
                        return (response.status, ContinuousClock.now - start, "ready")
                    }
                    return try await group.reduce(into: []) { $0.append($1) }
                }
                sampler.cancel()
                for (status, elapsed, text) in answers {
                    #expect(status == .serviceUnavailable, "\(text)")
                    // One deadline (1 s) and scheduling slack on a loaded machine; never a hang.
                    #expect(elapsed < .milliseconds(2_500), "answered after \(elapsed): \(text)")
                    #expect(!text.contains("127.0.0.1"))
                }
                #expect(deepest.value <= 4)
                let slowest = answers.map(\.1).max() ?? .zero
                let shed = String(decoding: metrics.render(), as: UTF8.self).split(separator: "\n").first { $0.hasPrefix("orderpipeline_requests_shed_total ") }
                let stats = store.pool.statistics
                print(
                    "frozen PostgreSQL: \(answers.count) requests, all 503 within \(slowest); deepest queue \(deepest.value); \(shed ?? ""); rejected: queue_full=\(stats.rejectedQueueFull) deadline=\(stats.rejectedDeadline) stalled=\(stats.rejectedStalled); abandoned statements=\(stats.noAnswer)"
                )
                #expect(shed.flatMap { Double($0.split(separator: " ").last ?? "") } ?? 0 > 0, "\(shed ?? "no shed counter")")
                try await server.thaw()
                // Thawed: the clients retry with their keys; each order exists once (a statement abandoned while frozen
                // may have committed after the thaw: its retry replays it).
                var created = 0
                for n in 0..<count {
                    var status = HTTPResponse.Status.serviceUnavailable
                    for _ in 0..<50 where status == .serviceUnavailable {
                        status = try await client.execute(
                            uri: "/api/orders", method: .post, headers: .json(idempotencyKey: "frozen-\(n)"),
                            body: ByteBuffer(string: johnSmith)
                        ).status
                        if status == .serviceUnavailable { try await Task.sleep(for: .milliseconds(100)) }
                    }
                    if status == .created { created += 1 }
                }
                #expect(created == count)
                let rows: Result<Int64?, PostgresError> = await store.pool.withConnection { c in
                    Result { () throws(PostgresError) in try c.get().query("SELECT count(*) FROM orders").int(0, 0) }
                }
                #expect(try rows.get() == Int64(count + 1))
            }
        } cleanup: {
            await server.stop()
        }
    }
}

/// The largest value recorded.
final class Peak: Sendable {
    private let peak = Mutex(0)
    func record(_ value: Int) { peak.withLock { $0 = Swift.max($0, value) } }
    var value: Int { peak.withLock { $0 } }
}
