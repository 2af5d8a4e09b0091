import Foundation
import Logging
import OrderPipelineCore
import Synchronization

/// A unit of work for a connection's thread. It is called exactly once: with the connection, or with the reason
/// there is none (the database is unreachable, the queue is full, the deadline passed, or the pool is closed).
public typealias ConnectionJob = @Sendable (Result<PostgresConnection, PostgresError>) -> Void

/// A job waiting for a connection. Whoever takes it out of its queue (a worker, or the reaper when its deadline has
/// passed) is the one who calls it.
struct QueuedJob: Sendable {
    var body: ConnectionJob
    var enqueued: ContinuousClock.Instant
    var deadline: ContinuousClock.Instant?
}

/// The bounded FIFO of jobs shared by the threads of a pool (the adapters' one blocking queue).
typealias JobQueue = BlockingQueue<QueuedJob>

extension BlockingQueue where Element == QueuedJob {
    typealias Job = QueuedJob

    /// Takes out the jobs at the head whose deadline has passed (one timeout per queue: the head is the oldest).
    func overdue(at now: ContinuousClock.Instant) -> [QueuedJob] {
        popHead { job in job.deadline.map { $0 <= now } ?? false }
    }

    /// The deadline of the oldest waiting job.
    var nextDeadline: ContinuousClock.Instant? { peekHead(\.deadline) ?? nil }
}

/// Shared by a pool's workers: after PostgreSQL failed to answer before a deadline, work is refused at once
/// (nothing sent) for a while instead of being fed to a server that is frozen or unreachable; then it is tried again.
final class StallGuard: Sendable {
    private let until = Mutex<ContinuousClock.Instant?>(nil)
    let cooldown: Duration

    init(cooldown: Duration) { self.cooldown = cooldown }

    func stalled() { until.withLock { $0 = .now + cooldown } }

    var isStalled: Bool { until.withLock { $0.map { ContinuousClock.now < $0 } ?? false } }
}

/// One dedicated thread that owns one connection and runs jobs from a queue. Blocking libpq calls happen only here,
/// never on Swift's cooperative pool. A broken connection is re-established before the next job, with backoff
/// between failed attempts (jobs that arrive while backing off fail fast with `.unavailable`); an idle connection
/// is checked before each job, so one that died meanwhile (a restart) is replaced before anything is sent on it.
final class ConnectionWorker: @unchecked Sendable {
    private let settings: PostgresConnection.Settings
    private let queue: JobQueue
    private let logger: Logger
    private let name: String
    private let connectEagerly: Bool
    private let stall: StallGuard?
    private let metrics: PoolMetrics?
    private let finished = DispatchSemaphore(value: 0)

    init(
        name: String, settings: PostgresConnection.Settings, queue: JobQueue, logger: Logger, connectEagerly: Bool = true,
        stall: StallGuard? = nil, metrics: PoolMetrics? = nil
    ) {
        self.name = name
        self.settings = settings
        self.queue = queue
        self.logger = logger
        self.connectEagerly = connectEagerly
        self.stall = stall
        self.metrics = metrics
    }

    func start() {
        DedicatedThread.start(name, stackSize: 1 << 20) { [self] in self.run() }
    }

    /// Waits until the thread has drained the queue and freed its connection.
    func join() { finished.wait() }

    private func run() {
        let connection = PostgresConnection(settings: settings)
        // At the moment of abandoning, not after the job: the job's own callback may already issue the next work
        // (results are fed to the machines from this thread), which another worker would otherwise send to the
        // server that is not answering — each re-issue waiting out a deadline of its own (6 s for a 2 s deadline).
        connection.deadlineMissed = { [stall] in stall?.stalled() }
        var failures = 0
        var retryAt = ContinuousClock.now
        var lastError = PostgresError(code: .unavailable, message: "not connected yet")

        func ensureConnected() -> Bool {
            let wasConnected = connection.isConnected
            if connection.isUsable() { return true }
            if wasConnected { logger.info("PostgreSQL connection found closed before use; reconnecting", metadata: ["db.worker": "\(name)"]) }
            guard ContinuousClock.now >= retryAt else { return false }
            do {
                try connection.connect()
                if failures > 0 { logger.info("PostgreSQL connection re-established", metadata: ["db.worker": "\(name)"]) }
                failures = 0
                return true
            } catch {
                failures += 1
                lastError = error
                // 50 ms, 100 ms, … capped at 5 s.
                let delay = Duration.milliseconds(min(50 << min(failures - 1, 10), 5_000))
                retryAt = ContinuousClock.now + delay
                logger.warning(
                    "PostgreSQL connection failed",
                    metadata: [
                        "db.worker": "\(name)", "db.error": "\(error.message)", "db.retry_in_ms": "\(delay.milliseconds)",
                    ])
                return false
            }
        }

        if connectEagerly { _ = ensureConnected() }
        while let job = queue.pop() {
            let now = ContinuousClock.now
            metrics?.waited(now - job.enqueued, depth: queue.depth)
            if let deadline = job.deadline, now >= deadline {
                metrics?.rejected(.deadline)
                job.body(.failure(PostgresError(code: .unavailable, message: "the database did not take the request before its deadline")))
                continue
            }
            if let stall, stall.isStalled {
                metrics?.rejected(.stalled)
                job.body(.failure(PostgresError(code: .unavailable, message: "PostgreSQL is not answering (a recent request got no answer before its deadline)")))
                continue
            }
            connection.deadline = job.deadline
            if ensureConnected() {
                job.body(.success(connection))
            } else {
                job.body(.failure(lastError))
            }
            if connection.missedDeadline {
                metrics?.noAnswer()
                logger.warning("PostgreSQL did not answer before the request deadline; connection closed", metadata: ["db.worker": "\(name)"])
            }
            connection.deadline = nil
        }
        connection.close()
        finished.signal()
    }
}

/// Answers the jobs whose deadline passed while they waited (every worker may be stuck on a server that does not
/// answer), at their deadline.
final class DeadlineReaper: @unchecked Sendable {
    private let queues: [JobQueue]
    private let timeout: Duration
    private let metrics: PoolMetrics?
    private let wakeUp = DispatchSemaphore(value: 0)
    private let stopped = Atomic<Bool>(false)
    private let finished = DispatchSemaphore(value: 0)

    init(pool: String, queues: [JobQueue], timeout: Duration, metrics: PoolMetrics?) {
        self.queues = queues
        self.timeout = timeout
        self.metrics = metrics
        DedicatedThread.start("pg-\(pool)-dl") { [self] in self.run() }
    }

    private func run() {
        while !stopped.load(ordering: .acquiring) {
            let now = ContinuousClock.now
            for queue in queues {
                let overdue = queue.overdue(at: now)
                for job in overdue {
                    metrics?.rejected(.deadline)
                    job.body(.failure(PostgresError(code: .unavailable, message: "the database did not take the request before its deadline")))
                }
                // The first queue is the pool's main queue, whose depth the gauge shows.
                if !overdue.isEmpty, queue === queues.first { metrics?.depth(queue.depth) }
            }
            // A job queued later has a later deadline: sleep until the earliest one (or one timeout).
            let next = queues.compactMap(\.nextDeadline).min() ?? now + timeout
            let wait = max(next - .now, .milliseconds(1))
            _ = wakeUp.wait(timeout: .now() + .nanoseconds(Int(min(wait, .seconds(60)).milliseconds * 1_000_000)))
        }
        finished.signal()
    }

    func stop() {
        stopped.store(true, ordering: .releasing)
        wakeUp.signal()
        finished.wait()
    }
}

/// A fixed set of connections, each on its own thread, sharing one bounded queue of work; and one more connection
/// with a small queue of its own for health checks and metrics, so that they never wait behind the work.
///
/// Admission: a job is refused at once (`.unavailable`, nothing sent) when `queueLimit` jobs already wait, when it
/// waited past its deadline (`requestTimeout` after it was queued), or for a short while after PostgreSQL failed to
/// answer a job before its deadline. A job that runs gets what is left of its deadline for every call it makes.
public final class PostgresPool: Sendable {
    /// The pool's connections and admission (see the type); the binary reads them from `DB_*` variables.
    public struct Configuration: Sendable, Hashable {
        public var connection: PostgresConnection.Settings
        /// Work connections, each on its own thread (`DB_POOL_SIZE`); the control connection comes on top.
        public var size = 8
        /// Jobs that may wait for a connection (`DB_QUEUE_LIMIT`); further ones are refused at once.
        public var queueLimit = 256
        /// From queueing to the last answer from the server, for each job (`DB_REQUEST_TIMEOUT_MS`).
        public var requestTimeout: Duration = .seconds(3)
        /// The `pool` label of its metrics.
        public var name = "main"

        /// - Parameter url: A libpq connection string or `postgres://` URL; every other setting has its default.
        public init(url: String) { self.connection = .init(url: url) }
    }

    public let configuration: Configuration
    private let queue: JobQueue
    private let controlQueue = JobQueue(limit: 8)
    private let workers: [ConnectionWorker]
    private let reaper: DeadlineReaper
    private let metrics: PoolMetrics

    /// Starts one thread per connection; the work connections connect at once (the control one on first use), and
    /// again after a failure, with backoff.
    /// - Parameters:
    ///   - configuration: Connections, queue limit and request timeout.
    ///   - logger: Where connections lost and re-established are reported.
    public init(configuration: Configuration, logger: Logger) {
        self.configuration = configuration
        let queue = JobQueue(limit: max(1, configuration.queueLimit))
        let metrics = PoolMetrics(pool: configuration.name)
        let stall = StallGuard(cooldown: min(configuration.requestTimeout, .seconds(1)))
        self.queue = queue
        self.metrics = metrics
        var workers = (0..<max(1, configuration.size)).map {
            ConnectionWorker(name: "pg-\(configuration.name)-\($0)", settings: configuration.connection, queue: queue, logger: logger, stall: stall, metrics: metrics)
        }
        workers.append(
            ConnectionWorker(
                name: "pg-\(configuration.name)-ctl", settings: configuration.connection, queue: controlQueue, logger: logger,
                connectEagerly: false, stall: stall))
        self.workers = workers
        self.reaper = DeadlineReaper(pool: configuration.name, queues: [queue, controlQueue], timeout: configuration.requestTimeout, metrics: metrics)
        for worker in workers { worker.start() }
    }

    /// Runs `body` on one of the pool's threads with its connection and returns its value to the caller.
    public func withConnection<T: Sendable>(_ body: @escaping @Sendable (Result<PostgresConnection, PostgresError>) -> T) async -> T {
        await withCheckedContinuation { continuation in submit(to: queue) { continuation.resume(returning: body($0)) } }
    }

    /// Like `withConnection`, on the pool's separate control connection: for health checks and metrics, which must
    /// answer even while every other connection is busy or the queue is full.
    public func withControlConnection<T: Sendable>(_ body: @escaping @Sendable (Result<PostgresConnection, PostgresError>) -> T) async -> T {
        await withCheckedContinuation { continuation in submit(to: controlQueue) { continuation.resume(returning: body($0)) } }
    }

    /// Queues `body` without waiting for it: it runs on one of the pool's threads, with its connection or the reason
    /// there is none (at once, on the caller's thread, when the queue is full or closed). For callers that carry on
    /// from the connection's thread: a task that awaited `withConnection` would cost two more thread switches.
    public func submit(_ body: @escaping ConnectionJob) { submit(to: queue, body) }

    private func submit(to queue: JobQueue, _ body: @escaping ConnectionJob) {
        let now = ContinuousClock.now
        let job = JobQueue.Job(body: body, enqueued: now, deadline: now + configuration.requestTimeout)
        switch queue.push(job) {
        case .queued:
            // The gauge is the main queue's (the control queue holds a probe or two at most).
            if queue === self.queue { metrics.depth(queue.depth) }
        case .full:
            metrics.rejected(.queueFull)
            body(.failure(PostgresError(code: .unavailable, message: "the database queue is full (\(queue.limit ?? 0) requests waiting)")))
        case .closed:
            body(.failure(PostgresError(code: .unavailable, message: "the connection pool is closed")))
        }
    }

    /// Jobs waiting for a connection.
    public var queueDepth: Int { queue.depth }

    /// What admission refused so far (also exported as metrics).
    public var statistics: PoolMetrics.Statistics { metrics.statistics }

    /// Stops taking work, lets queued work finish, closes every connection. Blocks until done.
    public func close() {
        queue.close()
        controlQueue.close()
        for worker in workers { worker.join() }
        reaper.stop()
    }
}

/// One connection on its own thread, for work that must stay on one session (tests, LISTEN, migrations, locks).
/// No queue limit and no deadline: its callers wait for the server as long as the statement timeout allows.
public final class PostgresSession: Sendable {
    private let queue = JobQueue()
    private let worker: ConnectionWorker

    /// Starts the session's thread, which connects at once.
    /// - Parameters:
    ///   - settings: Where to connect.
    ///   - logger: Where connections lost and re-established are reported.
    ///   - name: The thread's name, as logs show it.
    public init(settings: PostgresConnection.Settings, logger: Logger, name: String = "pg-session") {
        worker = ConnectionWorker(name: name, settings: settings, queue: queue, logger: logger)
        worker.start()
    }

    /// Runs `body` on the session's thread with its connection (or the reason there is none) and returns its value.
    public func withConnection<T: Sendable>(_ body: @escaping @Sendable (Result<PostgresConnection, PostgresError>) -> T) async -> T {
        await withCheckedContinuation { (continuation: CheckedContinuation<T, Never>) in
            let job = JobQueue.Job(body: { connection in continuation.resume(returning: body(connection)) }, enqueued: .now, deadline: nil)
            if queue.push(job) != .queued {
                job.body(.failure(PostgresError(code: .unavailable, message: "the session is closed")))
            }
        }
    }

    /// Stops taking work, lets queued work finish, closes the connection. Blocks until done.
    public func close() {
        queue.close()
        worker.join()
    }
}
