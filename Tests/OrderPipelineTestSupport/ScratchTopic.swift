import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Kafka topics of a test's own on the shared broker of `scripts/services`. A consumer in a new group reads its
/// topic from the beginning (`auto.offset.reset=earliest`): on the shared `orders` topic it first works through
/// every record the other tests produced, so it slows down as the run fills the topic. Made and removed with
/// Tansu's CLI (`TANSU_BIN`, or `bin/tansu` in the services directory next to `TANSU_PID_FILE`).
public enum ScratchTopic {
    /// Creates `name` with `partitions` partitions on KAFKA_BROKERS.
    public static func create(_ name: String, partitions: Int = 3) async throws {
        let status = try await tansu(["topic", "create", name, "--partitions", String(partitions)], quiet: false)
        guard status == 0 else { throw TestFailure("tansu topic create \(name) exited with \(status)") }
    }

    /// Deletes the topics that exist; best effort (a leftover costs the broker memory, not a test its verdict).
    public static func delete(_ names: String...) async {
        for name in names { _ = try? await tansu(["topic", "delete", name], quiet: true) }
    }

    private static func tansu(_ arguments: [String], quiet: Bool) async throws -> Int32 {
        guard let brokers = TestEnvironment.value("KAFKA_BROKERS") else { throw TestFailure("KAFKA_BROKERS is not set") }
        let binary: URL
        if let path = TestEnvironment.value("TANSU_BIN") {
            binary = URL(fileURLWithPath: path)
        } else if let pidFile = TestEnvironment.value("TANSU_PID_FILE") {
            binary = URL(fileURLWithPath: pidFile).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("bin/tansu")
        } else {
            throw TestFailure("neither TANSU_BIN nor TANSU_PID_FILE is set (scripts/services env)")
        }
        let process = Process()
        process.executableURL = binary
        let broker = brokers.split(separator: ",").first.map(String.init) ?? brokers
        process.arguments = arguments + ["--broker", "tcp://\(broker)"]
        process.standardOutput = FileHandle.nullDevice
        if quiet { process.standardError = FileHandle.nullDevice }
        try process.run()
        return await process.finish(within: .seconds(30)).status
    }
}
