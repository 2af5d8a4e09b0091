import Foundation
import OrderPipelineTestSupport
import Testing

/// The live page in a real browser: `orderpipeline all` (its own database, topic, consumer group, queue and relay
/// id, so it neither sees nor disturbs other tests) and headless Chromium driven by
/// `scripts/lib/ui_browser_check.py`, which pushes orders through the pipeline while the page is open and asserts
/// from the DOM that an order it created is shown Fulfilled with its five hops, and found by `?order=ID`.
/// `UI_SCREENSHOTS_DIR=docs/images` also writes the README's screenshots.
@Suite(
    "Live page in headless Chromium against the real pipeline",
    .enabled(if: EndToEnd.isConfigured, "DATABASE_URL, KAFKA_BROKERS or SERVICEBUS_CONNECTION_STRING is not set"),
    .serialized,
    .timeLimit(.minutes(10))
)
struct LivePageBrowserTests {
    static let script = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("scripts/lib/ui_browser_check.py")

    @Test("orders pushed through `all` show up Fulfilled with every hop on /ui")
    func ordersShownFulfilled() async throws {
        try await ScratchPipeline.run("ui-") { pipeline in
            var arguments = ["--base", "http://127.0.0.1:\(pipeline.port)", "--orders", "20"]
            if let directory = Restart.environment["UI_SCREENSHOTS_DIR"], !directory.isEmpty { arguments += ["--screenshots", directory] }
            let check = try await Self.runScript(arguments)
            print("ui_browser_check: \(check.output)")
            let findings = try? JSONSerialization.jsonObject(with: Data(check.output.utf8)) as? [String: Any]
            #expect(check.status == 0 && findings?["ok"] as? Bool == true, "\(check.output)\n--- all:\n\(pipeline.all.tail())")
            #expect((findings?["events"] as? Int ?? 0) >= 1, "the page got its data by Server-Sent Events")
            // Seen on the page Fulfilled with every hop within a few seconds of its creation (the stream pushes a
            // snapshot every second; the bound leaves room for a loaded CI machine).
            #expect((findings?["fulfilledShownAfterMs"] as? Int ?? .max) < 10_000, "\(check.output)")
        }
    }

    /// The services' Python (a venv with confluent-kafka, exported by `scripts/services env`), else python3.
    static var servicesPython: String { Restart.environment["SERVICES_PYTHON"].flatMap { $0.isEmpty ? nil : $0 } ?? "python3" }

    /// Runs a script of scripts/lib to completion (its waits are bounded; this bounds it too) and returns its stdout.
    static func runScript(_ arguments: [String], script: URL = script, python: String = "python3") async throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [python, script.path] + arguments
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let status = await process.finish(within: .seconds(180)).status
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        return (status, text.trimmingCharacters(in: .whitespacesAndNewlines))
    }
}

/// `orderpipeline all` on a database, topic, consumer group, queue and relay id of its own (so it neither sees nor
/// disturbs other tests), migrated by the binary and ready; stopped and dropped at the end.
struct ScratchPipeline {
    let name: String
    let port: Int
    let environment: [String: String]
    let all: PipelineProcess

    static func run(_ prefix: String, _ body: (ScratchPipeline) async throws -> Void) async throws {
        await ConnectionGate.wait()
        let database = try await TestDatabase(adminURL: Restart.environment["DATABASE_URL"]!)
        let name = Restart.randomName(prefix)
        let port = try FreePort.pick()
        var environment = Restart.environment
        environment["DATABASE_URL"] = database.url
        environment["KAFKA_TOPIC"] = name
        environment["KAFKA_DEAD_LETTER_TOPIC"] = name + ".dead-letter"
        environment["KAFKA_GROUP_ID"] = name
        environment["SERVICEBUS_QUEUE"] = name
        environment["RELAY_ID"] = name
        environment["HTTP_PORT"] = "\(port)"
        environment["DB_POOL_SIZE"] = "3"
        let pipeline = ScratchPipeline(name: name, port: port, environment: environment, all: PipelineProcess(role: "all", environment: environment, name: name))
        do {
            try await pipeline.start()
            try await body(pipeline)
        } catch {
            await pipeline.all.stop()
            await database.drop()
            await ScratchTopic.delete(name, name + ".dead-letter")
            throw error
        }
        await pipeline.all.stop()
        await database.drop()
        await ScratchTopic.delete(name, name + ".dead-letter")
    }

    private func start() async throws {
        let migrate = PipelineProcess(role: "migrate", environment: environment, name: name)
        let status = try await migrate.runToCompletion(timeout: .seconds(60))
        try #require(status == 0, "migrate exited with \(status):\n\(migrate.tail())")
        // A consumer that subscribes to a topic that does not exist yet sees it only at its next metadata refresh.
        let topic = try await LivePageBrowserTests.runScript(["--create-topic", name, "--brokers", environment["KAFKA_BROKERS"]!], python: LivePageBrowserTests.servicesPython)
        try #require(topic.status == 0, "could not create topic \(name): \(topic.output)")
        try all.start()
        let ready = await httpGet(port: port, path: "/health/ready", upTo: 30)
        try #require(ready != nil, "`all` did not get ready:\n\(all.tail())")
    }
}
