import Logging
import Synchronization

/// Proof that this process is the only live one using a relay owner name (`RELAY_ID`): a session-level advisory
/// lock keyed on the schema and the owner, held on a connection of its own for the life of the process.
///
/// Two live relays with one owner would release each other's claims at start and settle each other's rows. The
/// second is refused at start instead. A lock lost with its connection (a PostgreSQL restart) is taken again by
/// `verify()`; if another process took it meanwhile, `verify()` says so and the caller must stop.
public final class OwnerLock: Sendable {
    /// Another live process holds the owner's lock: this one must not run as that relay.
    public struct Refusal: Error, Sendable, CustomStringConvertible {
        public var owner: String
        /// - Parameter owner: The relay owner name (`RELAY_ID`) whose lock another process holds.
        public init(owner: String) { self.owner = owner }
        public var description: String {
            "RELAY_ID \(owner) is in use by another live process (it holds the owner's lock in PostgreSQL); "
                + "give every relay process its own RELAY_ID, or stop the other one (the lock of a process that died "
                + "goes when PostgreSQL notices its connection is gone, within about 30 s)"
        }
    }

    public let owner: String
    private let session: PostgresSession
    /// The backend that holds the lock (0: none).
    private let holder = Atomic<Int32>(0)

    private init(owner: String, session: PostgresSession) {
        self.owner = owner
        self.session = session
    }

    /// Takes the lock, or throws `Refusal` when another session still holds it after `patience` (a process
    /// restarted right after a kill -9 may find its former session not yet ended), or a `PostgresError`.
    public static func acquire(
        owner: String, settings: PostgresConnection.Settings, logger: Logger,
        patience: Duration = .seconds(10)
    ) async throws -> OwnerLock {
        var settings = settings
        settings.applicationName = "orderpipeline-owner-lock"
        let lock = OwnerLock(owner: owner, session: PostgresSession(settings: settings, logger: logger, name: "pg-owner-lock"))
        let giveUp = ContinuousClock.now + patience
        do {
            while try await !lock.verify() {
                guard ContinuousClock.now < giveUp else { throw Refusal(owner: owner) }
                try await Task.sleep(for: .milliseconds(250))
            }
            return lock
        } catch {
            lock.release()
            throw error
        }
    }

    /// True while this process holds the lock (taken again if its connection was replaced); false when another
    /// process holds it now.
    public func verify() async throws(PostgresError) -> Bool {
        let owner = self.owner
        let result: Result<Bool, PostgresError> = await session.withConnection { [self] connection in
            Result { () throws(PostgresError) -> Bool in
                let c = try connection.get()
                // A frozen server must not hang the check (nor the shutdown that waits for it).
                c.deadline = .now + .seconds(5)
                defer { c.deadline = nil }
                if c.backendPID == holder.load(ordering: .relaxed) {
                    // Same session as when it was taken: the lock is still ours if the session still answers.
                    try c.query("SELECT 1")
                    return true
                }
                let rows = try c.query(
                    "SELECT pg_try_advisory_lock(hashtextextended('orderpipeline-relay-owner:' || current_schema() || ':' || $1::text, 0))",
                    [.text(owner)])
                guard rows.string(0, 0) == "t" else { return false }
                holder.store(c.backendPID, ordering: .relaxed)
                return true
            }
        }
        return try result.get()
    }

    /// The server process of the session holding the lock (diagnostics, tests).
    public var backendPID: Int32 { holder.load(ordering: .relaxed) }

    /// Ends the session, which releases the lock.
    public func release() { session.close() }
}
