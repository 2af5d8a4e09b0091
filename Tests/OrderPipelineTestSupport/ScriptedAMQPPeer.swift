import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// `Peers/cbs_peer.py`, a scripted AMQP 1.0 peer that speaks Azure's claims-based security (see the script), run with
/// the interpreter in `SERVICES_PYTHON` on a random port until `stop()`.
public final class ScriptedAMQPPeer: @unchecked Sendable {
    /// The interpreter with qpid-proton that `scripts/services` installs; nil when unset (the suites are skipped).
    public static var python: String? { TestEnvironment.value("SERVICES_PYTHON") }

    /// The shared access key the peer checks SAS tokens against.
    public let key: String
    public private(set) var port = 0
    private var process = Process()
    /// One JSON line per event the peer saw.
    let output: URL

    /// Starts the peer: put-token requests are answered with `status`; the first `rejects` messages are rejected with
    /// `condition`, every other one accepted. A random port that turns out taken (the peer exits before it is ready)
    /// is replaced by another, up to five times.
    public init(key: String = "s3cret+key=", status: Int = 202, rejects: Int = 0, condition: String = "amqp:internal-error") async throws {
        self.key = key
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("amqp-peer-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        output = directory.appendingPathComponent("out.jsonl")
        let ready = directory.appendingPathComponent("ready")
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Peers/cbs_peer.py")
        guard let python = Self.python else { throw TestFailure("SERVICES_PYTHON is not set") }
        for _ in 0..<5 {
            port = Int.random(in: 41_000...48_000)
            process = Process()
            process.executableURL = URL(fileURLWithPath: python)
            process.arguments = ["-B", script.path, String(port), key, output.path, ready.path, String(status), String(rejects), condition]
            try process.run()
            let deadline = Date().addingTimeInterval(10)
            while !FileManager.default.fileExists(atPath: ready.path), Date() < deadline, process.isRunning {
                try await Task.sleep(for: .milliseconds(20))
            }
            if FileManager.default.fileExists(atPath: ready.path), process.isRunning { return }
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        }
        throw TestFailure("the scripted AMQP peer did not start")
    }

    /// What the peer recorded so far, one object per event (`"event": "put-token"`, `"message"`, …).
    public func records() -> [[String: Any]] {
        guard let text = try? String(contentsOf: output, encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
    }

    public func stop() {
        // The proton reactor does not stop on SIGTERM.
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }
}
