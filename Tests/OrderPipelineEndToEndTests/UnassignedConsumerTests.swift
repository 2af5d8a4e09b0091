import Foundation
import OrderPipelineTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// `consume` as a real process against a Kafka broker of this test's own, frozen before the consumer can join its
/// group: the join never completes, the consumer awaits nothing, and only the unassigned bound sees it.
@Suite(
    "A consume process that the group never assigns is not live",
    .enabled(if: EndToEnd.isConfigured, "DATABASE_URL, KAFKA_BROKERS or SERVICEBUS_CONNECTION_STRING is not set"),
    .serialized,
    .timeLimit(.minutes(5))
)
struct UnassignedConsumerTests {
    @Test("Kafka frozen before the join: /health/live 503 once unassigned past the bound; thawed, the consumer is assigned and live")
    func wedgedJoin() async throws {
        try await RestartTests.Run.with { run in
            let kafka = try await PrivateTansu()
            defer { kafka.stop() }
            try await kafka.createTopic("orders", partitions: 3)
            kafka.signal(SIGSTOP)
            let port = try FreePort.pick()
            let consumer = PipelineProcess(
                role: "consume",
                environment: run.environment.merging([
                    "METRICS_PORT": "\(port)", "KAFKA_BROKERS": kafka.address, "KAFKA_TOPIC": "orders", "LIVENESS_UNASSIGNED_SECONDS": "3",
                ]) { $1 }, name: run.name)
            defer { consumer.abandon() }
            try consumer.start()

            let stuck = await HealthTests.poll(port: port, path: "/health/live", upTo: 30) { status, _ in status == 503 }
            #expect(stuck.status == 503, "consume /health/live: \(stuck)\n\(consumer.tail())")
            #expect(stuck.body.contains(#""name":"consumer","live":false"#) && stuck.body.contains(#""secondsUnassigned":"#), "\(stuck.body)")
            #expect(stuck.body.contains(#""awaiting":0"#), "the stall rule has nothing to judge: \(stuck.body)")

            kafka.signal(SIGCONT)
            let live = await HealthTests.poll(port: port, path: "/health/live", upTo: 60) { status, _ in status == 200 }
            #expect(live.status == 200, "after the thaw: \(live)\n\(consumer.tail())")
            #expect(!live.body.contains("secondsUnassigned"), "\(live.body)")
            await consumer.stop()
        }
    }
}

/// A Tansu broker of this test's own on a free port (the shared one is never frozen); Tansu's binary is found next
/// to the shared broker's pid file (`scripts/services env`).
final class PrivateTansu {
    let port: Int
    private let process: Process
    var address: String { "127.0.0.1:\(port)" }
    private let binary: URL

    /// On a port below the ephemeral range (32768+, where an outgoing connection may hold it: seen once, 33164), and
    /// beside the private servers of scripts/chaos and scripts/frozen-postgres (19400+); another port if it is taken.
    init() async throws {
        let pidFile = try #require(Restart.environment["TANSU_PID_FILE"], "TANSU_PID_FILE is not set (scripts/services env)")
        binary = URL(fileURLWithPath: pidFile).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("bin/tansu")
        for _ in 0..<3 {
            let port = Int.random(in: 19_600..<20_000)
            guard !Self.listening(port) else { continue }
            let address = "127.0.0.1:\(port)"
            let process = Process()
            process.executableURL = binary
            process.arguments = ["broker", "--listener-url", "tcp://\(address)", "--advertised-listener-url", "tcp://\(address)"]
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            let deadline = Date().addingTimeInterval(20)
            while !Self.listening(port), process.isRunning, Date() < deadline { try await Task.sleep(for: .milliseconds(50)) }
            if Self.listening(port) {
                self.port = port
                self.process = process
                return
            }
            await process.kill9()
        }
        throw TestFailure("tansu did not listen on any of 3 ports")
    }

    func createTopic(_ name: String, partitions: Int) async throws {
        let create = Process()
        create.executableURL = binary
        create.arguments = ["topic", "create", name, "--partitions", "\(partitions)", "--broker", "tcp://\(address)"]
        create.standardOutput = FileHandle.nullDevice
        try create.run()
        guard await create.finish(within: .seconds(30)).status == 0 else { throw TestFailure("tansu topic create \(name) failed") }
    }

    func signal(_ signal: Int32) { _ = kill(process.processIdentifier, signal) }

    func stop() {
        guard process.isRunning else { return }
        signal(SIGCONT)
        signal(SIGKILL)
        process.waitUntilExit()
    }

    private static func listening(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        return withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } } == 0
    }
}
