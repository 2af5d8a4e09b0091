import NIOCore
import NIOPosix

/// The process's entry point: Swift concurrency runs on the HTTP server's event loops before anything else starts.
///
/// Why: otherwise every request crosses threads twice more (the event loop hands the request to a task on Swift's
/// own thread pool, which hands the response back); on two cores, scheduling was a quarter of `serve`'s CPU profile
/// (docs/POSTGRES.md, "Hops per request"). With the event loops as the global executor a request's task runs on the
/// loop that read it, and a task resumed by a PostgreSQL connection thread wakes one event loop. Every role gets it:
/// a task that blocked would hold up a loop here as it held up one of the pool's two threads before, so blocking
/// calls stay where they were, on dedicated threads (PostgreSQL connections, librdkafka, qpid-proton), never in a task.
@main
enum Main {
    static func main() async {
        // Must run first, on the main thread, before any task is enqueued (false: unsupported here; the default
        // executor is kept).
        _ = NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()
        await OrderPipelineCommand.main()
    }
}
