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
    private let dropped = Mutex(false)

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

    /// Idempotent: a test may drop its database on purpose before its run is closed.
    func drop() async {
        guard
            dropped.withLock({ done in
                defer { done = true }; return !done
            })
        else { return }
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
    func kill9() async throws {
        guard let process, process.isRunning else { throw TestFailure("\(role) is not running") }
        await process.kill9()
        guard !process.isRunning else { throw TestFailure("\(role) survived SIGKILL") }
    }

    /// SIGTERM (graceful shutdown), SIGKILL after 10 s.
    func stop() async {
        guard let process, process.isRunning else { return }
        process.terminate()
        if !(await process.exit(within: .seconds(10))) { await process.kill9() }
    }

    /// SIGKILL without waiting: for `defer` on a failure path (a `defer` cannot await); nothing when stopped.
    func abandon() {
        guard let process, process.isRunning else { return }
        #if canImport(Glibc)
            _ = Glibc.kill(process.processIdentifier, SIGKILL)
        #endif
    }

    /// Runs the role to completion (for `migrate`), bounded.
    func runToCompletion(timeout: Duration) async throws -> Int32 {
        try start()
        guard let process else { throw TestFailure("\(role) did not start") }
        let (status, inTime) = await process.finish(within: timeout)
        guard inTime else { throw TestFailure("\(role) did not finish within \(timeout)") }
        return status
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
