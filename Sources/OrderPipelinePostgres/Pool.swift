import Foundation
import Logging

/// A unit of work for a connection's thread. It is called exactly once: with the connection, or with the reason
/// there is none (the database is unreachable, or the pool is closed).
typealias ConnectionJob = @Sendable (Result<PostgresConnection, PostgresError>) -> Void

/// A blocking FIFO of jobs shared by the threads of a pool.
final class JobQueue: @unchecked Sendable {
    private let condition = NSCondition()
    private var jobs: [ConnectionJob] = []
    private var head = 0
    private var closed = false

    /// Queues a job; false when the queue is closed (the caller then fails the job itself).
    func push(_ job: @escaping ConnectionJob) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        guard !closed else { return false }
        jobs.append(job)
        condition.signal()
        return true
    }

    /// The next job; blocks while empty; nil once closed and drained.
    func pop() -> ConnectionJob? {
        condition.lock()
        defer { condition.unlock() }
        while head == jobs.count && !closed { condition.wait() }
        guard head < jobs.count else { return nil }
        let job = jobs[head]
        head += 1
        if head > 1024 && head * 2 > jobs.count {
            jobs.removeFirst(head)
            head = 0
        }
        return job
    }

    func close() {
        condition.lock()
        closed = true
        condition.broadcast()
        condition.unlock()
    }

    var depth: Int {
        condition.lock()
        defer { condition.unlock() }
        return jobs.count - head
    }
}

/// One dedicated thread that owns one connection and runs jobs from a queue. Blocking libpq calls happen only here,
/// never on Swift's cooperative pool. A broken connection is re-established before the next job, with backoff
/// between failed attempts (jobs that arrive while backing off fail fast with `.connectionLost`).
final class ConnectionWorker: @unchecked Sendable {
    private let settings: PostgresConnection.Settings
    private let queue: JobQueue
    private let logger: Logger
    private let name: String
    private let finished = DispatchSemaphore(value: 0)

    init(name: String, settings: PostgresConnection.Settings, queue: JobQueue, logger: Logger) {
        self.name = name
        self.settings = settings
        self.queue = queue
        self.logger = logger
    }

    func start() {
        let thread = Thread { [self] in self.run() }
        thread.name = name
        thread.stackSize = 1 << 20
        thread.start()
    }

    /// Waits until the thread has drained the queue and freed its connection.
    func join() { finished.wait() }

    private func run() {
        let connection = PostgresConnection(settings: settings)
        var failures = 0
        var retryAt = ContinuousClock.now
        var lastError = PostgresError(code: .connectionLost, message: "not connected yet")

        func ensureConnected() -> Bool {
            if connection.isConnected { return true }
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
                logger.warning("PostgreSQL connection failed", metadata: [
                    "db.worker": "\(name)", "db.error": "\(error.message)", "db.retry_in_ms": "\(delay.milliseconds)",
                ])
                return false
            }
        }

        _ = ensureConnected()
        while let job = queue.pop() {
            if ensureConnected() {
                job(.success(connection))
            } else {
                job(.failure(lastError))
            }
        }
        connection.close()
        finished.signal()
    }
}

/// A fixed set of connections, each on its own thread, sharing one queue of work.
public final class PostgresPool: Sendable {
    public struct Configuration: Sendable, Hashable {
        public var connection: PostgresConnection.Settings
        public var size = 8

        public init(url: String) { self.connection = .init(url: url) }
    }

    public let configuration: Configuration
    private let queue = JobQueue()
    private let workers: [ConnectionWorker]

    public init(configuration: Configuration, logger: Logger) {
        self.configuration = configuration
        let queue = self.queue
        self.workers = (0..<max(1, configuration.size)).map {
            ConnectionWorker(name: "pg-\($0)", settings: configuration.connection, queue: queue, logger: logger)
        }
        for worker in workers { worker.start() }
    }

    /// Runs `body` on one of the pool's threads with its connection and returns its value to the caller.
    public func withConnection<T: Sendable>(_ body: @escaping @Sendable (Result<PostgresConnection, PostgresError>) -> T) async -> T {
        await withCheckedContinuation { (continuation: CheckedContinuation<T, Never>) in
            let job: ConnectionJob = { connection in continuation.resume(returning: body(connection)) }
            if !queue.push(job) {
                job(.failure(PostgresError(code: .connectionLost, message: "the connection pool is closed")))
            }
        }
    }

    /// Jobs waiting for a connection.
    public var queueDepth: Int { queue.depth }

    /// Stops taking work, lets queued work finish, closes every connection. Blocks until done.
    public func close() {
        queue.close()
        for worker in workers { worker.join() }
    }
}

/// One connection on its own thread, for work that must stay on one session (tests, LISTEN, migrations).
public final class PostgresSession: Sendable {
    private let queue = JobQueue()
    private let worker: ConnectionWorker

    public init(settings: PostgresConnection.Settings, logger: Logger, name: String = "pg-session") {
        worker = ConnectionWorker(name: name, settings: settings, queue: queue, logger: logger)
        worker.start()
    }

    public func withConnection<T: Sendable>(_ body: @escaping @Sendable (Result<PostgresConnection, PostgresError>) -> T) async -> T {
        await withCheckedContinuation { (continuation: CheckedContinuation<T, Never>) in
            let job: ConnectionJob = { connection in continuation.resume(returning: body(connection)) }
            if !queue.push(job) {
                job(.failure(PostgresError(code: .connectionLost, message: "the session is closed")))
            }
        }
    }

    public func close() {
        queue.close()
        worker.join()
    }
}
