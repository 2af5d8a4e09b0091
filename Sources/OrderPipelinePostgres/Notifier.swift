import Foundation
import Logging
import OrderPipelineCore
import Synchronization

/// Sends the outbox wake-up (`NOTIFY orderpipeline_outbox, '<outbox>'`) on a connection of its own, outside the
/// transactions that wrote the rows, coalescing bursts.
///
/// Why: PostgreSQL serialises every commit that sends a NOTIFY on one database-wide lock held through its WAL
/// flush, so a trigger's NOTIFY inside each order's transaction makes the API's commits run one at a time (measured:
/// most waiting createOrders waited on that lock). Sessions that do not NOTIFY
/// (`PostgresConnection.Settings.notifiesOutbox = false`) hand their committed outbox writes to this notifier
/// instead: while one NOTIFY is on its way, every further request for the same outbox folds into the next one, so a
/// thousand commits a second cost a few hundred small notify-only transactions, none of them holding a writer.
/// NOTIFYs are also spaced `minimumInterval` apart: under load a wake waits at most that long, and the API's
/// PostgreSQL does not run a notify transaction for most of its orders (measured: 0.6 per order without the spacing).
/// A lost wake costs nothing but latency: relays keep their fallback poll.
public final class PostgresNotifier: Sendable {
    private struct State {
        var pending: [OutboxKind] = []
        var stopped = false
    }

    private let state = Mutex(State())
    private let session = Atomic<Int32>(0)
    private let signal = DispatchSemaphore(value: 0)
    private let done = DispatchSemaphore(value: 0)
    /// The least time between two NOTIFYs; requests made meanwhile fold into the next one.
    public let minimumInterval: Duration

    /// Starts the notifying thread, whose session connects on the first wake and again after a lost connection;
    /// failed notifications go to `logger` at debug (the relays' poll covers them).
    public init(settings: PostgresConnection.Settings, logger: Logger, minimumInterval: Duration = .milliseconds(5)) {
        self.minimumInterval = minimumInterval
        DedicatedThread.start("pg-notify") { [self] in self.run(on: PostgresConnection(settings: settings), logger: logger) }
    }

    /// Asks for one NOTIFY for `kind` soon; requests made before it is sent are folded into it. Never blocks.
    public func notify(_ kind: OutboxKind) {
        let queued = state.withLock { state -> Bool in
            guard !state.stopped, !state.pending.contains(kind) else { return false }
            state.pending.append(kind)
            return true
        }
        if queued { signal.signal() }
    }

    /// The backend process id of the notifying session (0 before it connects): a listener in the same process skips
    /// these NOTIFYs, whose relays were woken directly.
    public var sessionPID: Int32 { session.load(ordering: .relaxed) }

    /// Stops the thread (pending wakes are dropped) and returns once its connection is closed.
    public func close() {
        state.withLock { $0.stopped = true }
        signal.signal()
        done.wait()
    }

    private func run(on connection: PostgresConnection, logger: Logger) {
        var next = ContinuousClock.now
        while true {
            signal.wait()
            // A dedicated thread: sleeping here delays only the wakes, and lets more of them fold into one.
            let wait = next - ContinuousClock.now
            if wait > .zero { Thread.sleep(forTimeInterval: Double(wait.components.seconds) + Double(wait.components.attoseconds) / 1e18) }
            let (kinds, stopped) = state.withLock { state in
                defer { state.pending = [] }
                return (state.pending, state.stopped)
            }
            if stopped { break }
            next = ContinuousClock.now + minimumInterval
            for kind in kinds {
                do {
                    if !connection.isConnected {
                        try connection.connect()
                        // A NOTIFY's transaction gets an xid and a commit record: without this it waits for a WAL
                        // flush, holding the notify lock, and the next order's commit waits for that flush too. A wake
                        // needs no durability (it is delivered at commit either way).
                        try connection.execute(constant: "SET synchronous_commit = off")
                        session.store(connection.backendPID, ordering: .relaxed)
                    }
                    _ = try connection.query("SELECT pg_notify('orderpipeline_outbox', $1)", [.text(kind.rawValue)])
                } catch {
                    logger.debug("NOTIFY failed; the relays' poll finds the rows", metadata: ["db.error": "\(error.message)"])
                    connection.close()
                }
            }
        }
        connection.close()
        done.signal()
    }
}
