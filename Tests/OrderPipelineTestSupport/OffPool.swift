import Foundation
import OrderPipelineCore
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

// Every test of a `swift test` run shares one cooperative pool: one thread per core, two here. A test that holds a
// pool thread (blocked in a wait, or computing for seconds) holds it from every other test's tasks, and tasks queued
// behind it wait. Simulated worlds did that for the first 37 s of a run: three seed loops on the two threads, every
// other test's continuations queued behind them, and a 503 answered in 1 s measured 3.5 s at its client.
// So blocking waits go to `offPool`, CPU-heavy work to `compute`, and `PoolStallWatch` shows who holds the pool.

/// Runs blocking work (a command waited for, threads joined) on a thread of its own.
public func offPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await DedicatedThread.run("test-blocking") { Result { try body() } }.get()
}

/// Runs CPU-heavy work (simulated worlds, generated command sequences) on a thread of its own at a lower priority
/// (nice 10), so the kernel runs the pool's threads first: a test timing its answers is not kept waiting by a test
/// that computes. Assertions stay with the caller: an `#expect` off the test's task is not the test's.
public func compute<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await DedicatedThread.run("test-compute") {
        #if canImport(Glibc)
            // Linux keeps the nice value per thread, and `who` 0 is the calling thread only.
            _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, 10)
        #endif
        return body()
    }
}

/// Diagnostics: with `ORDERPIPELINE_STALL_DUMPS=DIR`, a thread outside the pool watches a heartbeat task on it; when
/// the heartbeat is more than 200 ms late, it writes every thread's stack (gdb, root or ptrace rights) to
/// `DIR/stall-N-lagMS.txt`, at most one a second. docs/BROKERS.md ("Tests") says how to read them.
public enum PoolStallWatch {
    private static let started = Mutex(false)
    private static let beat = Atomic<Int64>(0)

    private static func milliseconds() -> Int64 {
        let now = ContinuousClock.now - ContinuousClock.Instant.zeroForStallWatch
        return now.components.seconds * 1_000 + now.components.attoseconds / 1_000_000_000_000_000
    }

    /// Starts the watch once per process, when the variable is set; cheap to call from any test.
    public static func start() {
        guard let directory = TestEnvironment.value("ORDERPIPELINE_STALL_DUMPS") else { return }
        let first = started.withLock { was in
            defer { was = true }
            return !was
        }
        guard first else { return }
        beat.store(milliseconds(), ordering: .relaxed)
        Task.detached {
            while true {
                beat.store(milliseconds(), ordering: .relaxed)
                try? await Task.sleep(for: .milliseconds(20))
            }
        }
        DedicatedThread.start("stall-watch") {
            var dumps = 0
            var lastDump: Int64 = 0
            while true {
                usleep(50_000)
                let now = milliseconds()
                let lag = now - beat.load(ordering: .relaxed)
                guard lag > 200, now - lastDump > 1_000 else { continue }
                lastDump = now
                dumps += 1
                let path = "\(directory)/stall-\(dumps)-lag\(lag).txt"
                guard FileManager.default.createFile(atPath: path, contents: nil), let file = FileHandle(forWritingAtPath: path) else { continue }
                // Under `timeout`, as scripts/test runs it: a gdb that hangs would keep this process stopped for ever.
                let gdb = Process()
                gdb.executableURL = URL(fileURLWithPath: "/usr/bin/timeout")
                gdb.arguments = ["-k", "10", "120", "/usr/bin/gdb", "-p", "\(getpid())", "-batch", "-ex", "thread apply all bt 40"]
                gdb.standardOutput = file
                gdb.standardError = FileHandle.nullDevice
                try? gdb.run()
                gdb.waitUntilExit()
                try? file.close()
            }
        }
    }
}

extension ContinuousClock.Instant {
    fileprivate static let zeroForStallWatch = ContinuousClock.now
}
