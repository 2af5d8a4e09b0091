import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// The adapters' dedicated threads (PostgreSQL connections, librdkafka polls, the AMQP engine), started under a
/// name the operating system shows: `top -H`, `/proc/PID/task/*/comm`, `perf`. Foundation's `Thread.name` does not
/// reach the kernel on Linux, so every such thread showed the name of the event loop that started it, and CPU per
/// thread kind could not be told apart. Linux keeps the first 15 bytes of the name.
public enum DedicatedThread {
    /// Starts `body` on a new thread named `name`.
    public static func start(_ name: String, stackSize: Int? = nil, _ body: @escaping @Sendable () -> Void) {
        let thread = Thread {
            nameCurrentThread(name)
            body()
        }
        thread.name = name
        if let stackSize { thread.stackSize = stackSize }
        thread.start()
    }

    /// Runs blocking work (joining threads, waiting for a child process) on a new thread named `name` and returns its
    /// value: blocking a thread of Swift's cooperative pool instead (one per core, two here) stalls every other task
    /// of the process meanwhile.
    public static func run<T: Sendable>(_ name: String, _ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { continuation in start(name) { continuation.resume(returning: body()) } }
    }

    /// `pthread_setname_np` is not visible to Swift in Glibc, and `prctl` is variadic: the kernel also takes the
    /// name written to the thread's own `comm` file. Best effort: a name is for people, nothing depends on it.
    private static func nameCurrentThread(_ name: String) {
        #if canImport(Glibc)
            let fd = open("/proc/thread-self/comm", O_WRONLY)
            guard fd >= 0 else { return }
            defer { close(fd) }
            let bytes = Array(name.utf8.prefix(15))
            _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        #endif
    }
}
