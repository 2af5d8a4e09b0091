import Foundation
import OrderPipelineCore

#if canImport(Glibc)
    import Glibc
#endif

/// Waiting for a child process without holding a thread of Swift's cooperative pool. Every test of a `swift test`
/// run shares that pool (one thread per core, two here): a test that blocked in `usleep` or `waitUntilExit` while a
/// process stopped stalled the tasks of every other test, and a 503 answered in 1 s measured 4.1 s at its client.
extension Process {
    /// Polls (with `Task.sleep`) until the process has exited or `timeout` has passed; true when it has exited.
    @discardableResult
    public func exit(within timeout: Duration) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while isRunning, ContinuousClock.now < deadline {
            guard (try? await Task.sleep(for: .milliseconds(10))) != nil else { break }
        }
        return !isRunning
    }

    /// Waits up to `timeout` for the process to exit, then ends it (SIGTERM, and SIGKILL 5 s later); returns its
    /// termination status and whether it exited by itself in time.
    @discardableResult
    public func finish(within timeout: Duration) async -> (status: Int32, inTime: Bool) {
        let inTime = await exit(within: timeout)
        if !inTime {
            terminate()
            if !(await exit(within: .seconds(5))) {
                kill(processIdentifier, SIGKILL)
                await exit(within: .seconds(5))
            }
        }
        return (isRunning ? -1 : terminationStatus, inTime)
    }

    /// SIGKILL (after SIGCONT, for a stopped process), then waits until it is reaped.
    public func kill9() async {
        guard isRunning else { return }
        kill(processIdentifier, SIGCONT)
        kill(processIdentifier, SIGKILL)
        await exit(within: .seconds(10))
    }
}

/// Runs `body`, then `cleanup` whether or not `body` threw: a `defer` for clean-ups that must await (stopping a
/// process, deleting a topic), which a `defer` cannot.
public func withCleanup<T>(_ body: () async throws -> T, cleanup: () async -> Void) async throws -> T {
    do {
        let value = try await body()
        await cleanup()
        return value
    } catch {
        await cleanup()
        throw error
    }
}
