import Foundation
import OrderPipelineTestSupport

/// A PostgreSQL server of this test's own (initdb into a temporary folder, another port), for tests that must
/// freeze or stop the database: the shared server of the other tests is never touched.
final class PrivatePostgres: Sendable {
    let directory: String
    let port: Int
    private let bindir: String

    var url: String { "postgres://postgres@127.0.0.1:\(port)/postgres" }

    /// The server binaries (Debian keeps them off PATH), or nil when PostgreSQL is not installed.
    static var serverBinaries: String? {
        guard let dir = try? shell("pg_config --bindir").trimmingCharacters(in: .whitespacesAndNewlines),
            FileManager.default.isExecutableFile(atPath: dir + "/initdb")
        else { return nil }
        return dir
    }

    static var isAvailable: Bool { serverBinaries != nil }

    /// initdb and start: seconds of waiting for child processes, on a thread of their own (see `offPool`).
    static func start() async throws -> PrivatePostgres {
        try await offPool { try PrivatePostgres() }
    }

    private init() throws {
        guard let bindir = Self.serverBinaries else { throw ShellError(message: "PostgreSQL server binaries not found") }
        self.bindir = bindir
        directory = try shell("mktemp -d /tmp/orderpipeline-private-pg.XXXXXX").trimmingCharacters(in: .whitespacesAndNewlines)
        port =
            Int(
                try shell(#"python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'"#)
                    .trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
        // The server refuses to run as root: as root, run it as the postgres user.
        let asPostgres = getuid() == 0 ? "runuser -u postgres -- " : ""
        if getuid() == 0 { _ = try shell("chown postgres '\(directory)'") }
        _ = try shell("\(asPostgres)'\(bindir)/initdb' -D '\(directory)/data' -A trust -U postgres --no-sync > '\(directory)/initdb.log' 2>&1")
        _ = try shell(
            """
            \(asPostgres)'\(bindir)/pg_ctl' -D '\(directory)/data' -l '\(directory)/log' -w -t 30 \
              -o "-p \(port) -k \(directory) -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=40" start > /dev/null
            """)
    }

    private var postmaster: String {
        get throws { try shell("head -n1 '\(directory)/data/postmaster.pid'").trimmingCharacters(in: .whitespacesAndNewlines) }
    }

    /// SIGSTOP of the postmaster and every server process: the sockets stay open, nothing answers.
    func freeze() async throws {
        try await offPool {
            let pid = try self.postmaster
            _ = try shell("kill -STOP \(pid) $(pgrep -P \(pid))")
        }
    }

    func thaw() async throws {
        try await offPool {
            let pid = try self.postmaster
            _ = try shell("kill -CONT $(pgrep -P \(pid)) \(pid)")
        }
    }

    func stop() async {
        _ = try? await offPool { self.stopNow() }
    }

    private func stopNow() {
        let asPostgres = getuid() == 0 ? "runuser -u postgres -- " : ""
        if let pid = try? postmaster { _ = try? shell("kill -CONT $(pgrep -P \(pid)) \(pid)") }
        _ = try? shell("\(asPostgres)'\(bindir)/pg_ctl' -D '\(directory)/data' -m immediate -w stop > /dev/null 2>&1")
        _ = try? shell("rm -rf '\(directory)'")
    }
}

struct ShellError: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}

/// Runs a command with bash and returns its standard output (through a file), or throws with its status.
/// posix_spawn + waitpid rather than Foundation's Process: its pipe and child reaping hung here once a command
/// left a daemon behind (pg_ctl start).
@discardableResult
func shell(_ command: String) throws -> String {
    let output = "/tmp/orderpipeline-shell-\(getpid())-\(UInt64.random(in: 0...UInt64.max)).out"
    defer { unlink(output) }
    // Descriptors above 2 are closed for the command, so a daemon it starts holds none of the test runner's.
    let script = "for fd in $(ls /proc/$$/fd); do [ $fd -gt 2 ] && eval \"exec $fd>&-\"; done 2>/dev/null; (\(command)) > '\(output)'"
    let arguments = ["/bin/bash", "-c", script]
    var pointers = arguments.map { strdup($0) } + [nil]
    defer { for pointer in pointers { free(pointer) } }
    var pid: pid_t = 0
    let spawned = posix_spawn(&pid, "/bin/bash", nil, nil, &pointers, environ)
    guard spawned == 0 else { throw ShellError(message: "posix_spawn failed: \(spawned)") }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
    let text = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
    let exited = status & 0x7F == 0
    let code = (status >> 8) & 0xFF
    guard exited && code == 0 else { throw ShellError(message: "`\(command)` failed (status \(status))") }
    return text
}
