import NIOCore
import NIOPosix

/// The process's entry point: Swift concurrency runs on the HTTP server's event loops before anything else starts.
///
/// Why: otherwise every request crosses threads twice more (the event loop hands the request to a task on Swift's
/// own thread pool, which hands the response back), and on two cores those switches cost more CPU than the
/// request's own work (docs/POSTGRES.md, "Threads and connections"). With the event loops as the global executor, a request's task runs
/// on the loop that read it, and a task resumed by a PostgreSQL connection thread wakes one event loop.
/// Blocking calls stay where they were: on the connection threads, never in a task.
@main
enum Main {
    static func main() async {
        // Must run first, on the main thread, before any task is enqueued (false: unsupported here; the default
        // executor is kept).
        _ = NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()
        await OrderPipelineCommand.main()
    }
}
