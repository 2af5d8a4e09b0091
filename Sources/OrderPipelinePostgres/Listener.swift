import Foundation
import Logging
import OrderPipelineCore
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A dedicated `LISTEN` connection on its own thread. Relays subscribe and are woken by the outbox triggers'
/// `NOTIFY` (payload: which outbox). After a reconnect every subscriber gets a wake for every outbox, since
/// notifications sent while disconnected are lost; relays keep their fallback poll regardless.
public final class PostgresListener: Sendable {
    private struct State {
        /// Each subscriber's outbox (nil: every outbox) and stream.
        var subscribers: [UInt64: (kind: OutboxKind?, continuation: AsyncStream<OutboxKind>.Continuation)] = [:]
        var nextID: UInt64 = 0
        var stopped = false
    }

    private let state = Mutex(State())
    private let done = DispatchSemaphore(value: 0)
    private let settings: PostgresConnection.Settings
    private let logger: Logger
    private let isOwnSender: @Sendable (Int32) -> Bool

    /// Starts the listening thread; it connects, and reconnects after a lost connection, until `close()`.
    /// - Parameters:
    ///   - settings: Where to connect (a session of its own, outside any pool).
    ///   - logger: Where lost and re-established connections are reported.
    ///   - isOwnSender: Whether a notification's sending backend is this process's own notifier, whose wakes went to
    ///     the subscribers directly (`wake(_:)`): those are skipped, so one commit wakes a relay once, not twice.
    public init(settings: PostgresConnection.Settings, logger: Logger, isOwnSender: @escaping @Sendable (Int32) -> Bool = { _ in false }) {
        self.settings = settings
        self.logger = logger
        self.isOwnSender = isOwnSender
        DedicatedThread.start("pg-listen") { [self] in self.run() }
    }

    /// Wakes for one outbox (or all when `kind` is nil), until `close()`. Wakes not yet taken fold into one; a
    /// subscriber's stream carries only its outbox's, so the other outbox's wakes never push one out (a relay that
    /// missed its wake waited for the next, or the poll).
    public func wakes(for kind: OutboxKind? = nil) -> AsyncStream<OutboxKind> {
        let (stream, continuation) = AsyncStream.makeStream(
            of: OutboxKind.self, bufferingPolicy: .bufferingNewest(kind == nil ? OutboxKind.allCases.count : 1))
        let id = state.withLock { state -> UInt64? in
            guard !state.stopped else { return nil }
            state.nextID += 1
            state.subscribers[state.nextID] = (kind, continuation)
            return state.nextID
        }
        guard let id else {
            continuation.finish()
            return stream
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.state.withLock { $0.subscribers.removeValue(forKey: id) }
        }
        return stream
    }

    /// Ends every subscriber's stream and stops the thread; returns once its connection is closed.
    public func close() {
        let subscribers = state.withLock { state in
            state.stopped = true
            let all = Array(state.subscribers.values)
            state.subscribers = [:]
            return all
        }
        for subscriber in subscribers { subscriber.continuation.finish() }
        done.wait()
    }

    /// A wake from this process (`all`: a committed write of outbox rows whose session does not NOTIFY).
    public func wake(_ kind: OutboxKind) { deliver([kind]) }

    private var isStopped: Bool { state.withLock { $0.stopped } }

    private func deliver(_ kinds: [OutboxKind]) {
        let subscribers = state.withLock { Array($0.subscribers.values) }
        for subscriber in subscribers {
            for kind in kinds where subscriber.kind == nil || subscriber.kind == kind { subscriber.continuation.yield(kind) }
        }
    }

    private func run() {
        let connection = PostgresConnection(settings: settings)
        var failures = 0
        while !isStopped {
            if !connection.isConnected {
                do {
                    try connection.connect()
                    try connection.execute(constant: "LISTEN orderpipeline_outbox")
                    if failures > 0 { logger.info("LISTEN connection re-established") }
                    failures = 0
                    deliver(OutboxKind.allCases)
                } catch {
                    failures += 1
                    logger.warning("LISTEN connection failed", metadata: ["db.error": "\(error.message)"])
                    connection.close()
                    // Back off (50 ms … 5 s), checking for close every 100 ms.
                    let delay = min(50 << min(failures - 1, 10), 5_000)
                    var waited = 0
                    while waited < delay && !isStopped { usleep(100_000); waited += 100 }
                    continue
                }
            }
            var descriptor = pollfd(fd: connection.socket, events: Int16(POLLIN), revents: 0)
            let ready = poll(&descriptor, 1, 200)
            guard ready > 0 else { continue }
            do {
                let notifications = try connection.consumeNotifications()
                let kinds = notifications.filter { !isOwnSender($0.sender) }.compactMap { OutboxKind(rawValue: $0.payload) }
                if !kinds.isEmpty { deliver(kinds) }
            } catch {
                logger.warning("LISTEN connection lost", metadata: ["db.error": "\(error.message)"])
                connection.close()
            }
        }
        connection.close()
        done.signal()
    }
}
