import Hummingbird
import NIOCore
import NIOPosix

/// Keeps a request's task on the event loop that read it, so that when a PostgreSQL connection thread resumes it,
/// it is woken there (and writes its response there) rather than on whichever loop comes next: one thread switch
/// instead of two for half the requests (with the loops as Swift's global executor, `Main.swift`).
struct EventLoopAffinity<Inner: HTTPResponder>: HTTPResponder where Inner.Context: Sendable {
    let inner: Inner
    /// One executor per loop of the singleton group, made once.
    let executors: [EventLoopTaskExecutor]

    init(_ inner: Inner) {
        self.inner = inner
        self.executors = MultiThreadedEventLoopGroup.singleton.makeIterator().map(EventLoopTaskExecutor.init)
    }

    func respond(to request: Request, context: Inner.Context) async throws -> Response {
        guard let loop = MultiThreadedEventLoopGroup.currentEventLoop, let executor = executors.first(where: { $0.loop === loop }) else {
            return try await inner.respond(to: request, context: context)  // not on a loop (the takeover is unsupported)
        }
        return try await withTaskExecutorPreference(executor) { try await inner.respond(to: request, context: context) }
    }
}

/// Runs a task's jobs on one event loop.
final class EventLoopTaskExecutor: TaskExecutor {
    let loop: any EventLoop

    init(_ loop: any EventLoop) { self.loop = loop }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        loop.execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}
