import CLibPQ
import Foundation

/// An error from PostgreSQL or libpq, with the SQLSTATE when the server sent one.
public struct PostgresError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What kind of failure: it decides whether a write may have happened and whether a retry is safe.
    /// Opaque, as swift-service-lifecycle's and postgres-nio's error codes: a kind can be added without breaking a
    /// caller's `switch` (compare with `==` or match `case .unavailable:` with a `default`).
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Kind: String, Hashable, Sendable { case connectionLost, unavailable, server, protocolViolation }
        private let kind: Kind
        private init(_ kind: Kind) { self.kind = kind }

        /// The connection broke, or the server did not answer in time, after a statement was sent: a write may or
        /// may not have happened.
        public static let connectionLost = Code(.connectionLost)
        /// Nothing was sent: no connection (the server is down or unreachable), a connection found broken before
        /// use, a full queue, or a request that waited past its deadline. Always safe to retry.
        public static let unavailable = Code(.unavailable)
        /// The server answered with an error (see `sqlState`).
        public static let server = Code(.server)
        /// A reply that does not have the expected shape (a bug, or a schema that is not migrated).
        public static let protocolViolation = Code(.protocolViolation)

        public var description: String { kind.rawValue }
    }

    public var code: Code
    /// Five-character SQLSTATE, e.g. `57014` (statement timeout), `40001` (serialization failure).
    public var sqlState: String?
    /// What happened, for logs and operators (never a secret).
    public var message: String

    /// - Parameters:
    ///   - code: What kind of failure.
    ///   - sqlState: The server's SQLSTATE, when it sent one.
    ///   - message: What happened, for logs and operators (never a secret).
    public init(code: Code, sqlState: String? = nil, message: String) {
        self.code = code
        self.sqlState = sqlState
        self.message = message
    }

    public var description: String {
        "\(code)\(sqlState.map { " [\($0)]" } ?? ""): \(message)"
    }

    /// The statement was cancelled by `statement_timeout` (57014) or `lock_timeout` (55P03).
    public var isTimeout: Bool { sqlState == "57014" || sqlState == "55P03" }
    /// A serialization failure (40001) or a deadlock (40P01): the transaction may succeed when run again.
    public var isConflict: Bool { sqlState == "40001" || sqlState == "40P01" }
}

/// A parameter of a parameterised statement. Values always travel separately from the SQL text.
public enum PostgresValue: Sendable, Hashable {
    case null
    case text(String)
    /// Sent in binary format (for `bytea`).
    case bytes([UInt8])

    /// An integer parameter, sent as its decimal text.
    public static func int(_ value: Int64) -> PostgresValue { .text(String(value)) }
    /// An integer parameter, sent as its decimal text.
    public static func int(_ value: Int) -> PostgresValue { .text(String(value)) }
    /// A text parameter, or SQL NULL when `text` is nil.
    public static func optional(_ text: String?) -> PostgresValue { text.map { .text($0) } ?? .null }
}

/// One libpq connection. Not thread-safe: it is owned by one thread (a `PostgresPool` worker or a listener) and
/// every call on it blocks that thread. The `PGconn` is freed in `deinit`.
public final class PostgresConnection {
    /// Where to connect and the session settings every connection gets.
    public struct Settings: Sendable, Hashable {
        /// A libpq connection string or `postgres://` URL.
        public var url: String
        /// `statement_timeout` of every session: the server cancels a statement that runs longer.
        public var statementTimeout: Duration = .seconds(5)
        /// A connection attempt that takes longer fails (`.unavailable`).
        public var connectTimeoutSeconds = 5
        /// `application_name`, as `pg_stat_activity` shows the session.
        public var applicationName = "orderpipeline"
        /// A schema to use instead of `public` (tests isolate themselves in a schema each). Must be an identifier.
        public var schema: String?
        /// TCP keepalives of an idle connection: the first probe after this long, then one every
        /// `keepalivesIntervalSeconds`; `keepalivesCount` unanswered probes break the connection (about 25 s).
        public var keepalivesIdleSeconds = 10
        public var keepalivesIntervalSeconds = 5
        public var keepalivesCount = 3
        /// Sent data unacknowledged for this long breaks the connection (`tcp_user_timeout`).
        public var tcpUserTimeout: Duration = .seconds(10)
        /// Whether this session's inserts into the outboxes NOTIFY the relays (the outbox triggers, migration 3).
        /// `all` turns it off for its API and consumer and wakes its relays in-process instead: every notifying
        /// commit takes one database-wide lock and holds it through its WAL flush, which serialises them.
        public var notifiesOutbox = true

        /// - Parameter url: A libpq connection string or `postgres://` URL; every other setting has its default.
        public init(url: String) { self.url = url }
    }

    private var handle: OpaquePointer?
    private var prepared: Set<String> = []
    public let settings: Settings
    /// When set, no call waits for the server beyond it: a call that would is abandoned, the connection closed
    /// and `.connectionLost` thrown (a frozen or black-holed server never answers, and TCP alone cannot tell).
    var deadline: ContinuousClock.Instant?
    /// Whether the last call was abandoned at the deadline (the pool then stops feeding work to the server).
    private(set) var missedDeadline = false
    /// Called as a call is abandoned at its deadline, before its caller sees the error: the pool's stall guard is set
    /// then, so work the caller issues in reaction (a re-issue after the unknown outcome) is refused, not sent.
    var deadlineMissed: (() -> Void)?

    /// A connection that is not connected yet: `connect()` opens it.
    public init(settings: Settings) {
        self.settings = settings
    }

    deinit {
        if let handle { PQfinish(handle) }
    }

    /// Whether libpq holds an open connection (the server may have closed it since; nothing was read to find out).
    public var isConnected: Bool {
        guard let handle else { return false }
        return PQstatus(handle) == CONNECTION_OK
    }

    /// The server process id of this session (for `pg_terminate_backend` in tests and diagnostics).
    public var backendPID: Int32 { handle.map { PQbackendPID($0) } ?? 0 }

    /// Connects (or reconnects) within `connectTimeoutSeconds` and the deadline, whichever comes first.
    /// Prepared statements are re-prepared lazily.
    public func connect() throws(PostgresError) {
        close()
        missedDeadline = false
        let parameters = try ConnectionParameters(settings)
        let timeout = Duration.seconds(max(1, settings.connectTimeoutSeconds))
        let start = ContinuousClock.now
        let limit = min(start + timeout, deadline ?? start + timeout)
        let connection = withCStrings(parameters.keys) { keyPointers in
            withCStrings(parameters.values) { valuePointers in
                // expand_dbname = 1: the `dbname` value may be a URL or a connection string.
                PQconnectStartParams(keyPointers, valuePointers, 1)
            }
        }
        guard let connection else { throw PostgresError(code: .unavailable, message: "out of memory") }
        var polling = PGRES_POLLING_WRITING
        while PQstatus(connection) != CONNECTION_BAD, polling != PGRES_POLLING_OK, polling != PGRES_POLLING_FAILED {
            guard Self.wait(PQsocket(connection), polling == PGRES_POLLING_READING ? POLLIN : POLLOUT, until: limit) else {
                PQfinish(connection)
                throw PostgresError(code: .unavailable, message: "no connection to PostgreSQL within \((limit - start).milliseconds) ms")
            }
            polling = PQconnectPoll(connection)
        }
        guard polling == PGRES_POLLING_OK, PQstatus(connection) == CONNECTION_OK else {
            let message = Self.trimmed(PQerrorMessage(connection))
            PQfinish(connection)
            throw PostgresError(code: .unavailable, message: message)
        }
        // Nonblocking: a send never blocks past the deadline either.
        PQsetnonblocking(connection, 1)
        // Notices (a terminated session's FATAL message read while idle among them) are not printed to stderr;
        // the pool logs what matters.
        PQsetNoticeProcessor(connection, { _, _ in }, nil)
        handle = connection
    }

    /// Closes the connection (if open); prepared statements are forgotten. `connect()` may open it again.
    public func close() {
        if let handle { PQfinish(handle) }
        handle = nil
        prepared = []
    }

    /// Before handing an idle connection to new work: whatever arrived while it sat idle (a server shutdown's
    /// FATAL message, end of file after `pg_terminate_backend` or a restart) is read now, so a dead connection
    /// is found before anything is sent on it. False when it is broken (it is closed then).
    func isUsable() -> Bool {
        guard let handle, PQstatus(handle) == CONNECTION_OK else { return false }
        // A terminated session sends its FATAL message, then end of file: read until nothing is left, so the end of
        // file is seen too (libpq takes an unsolicited error while idle for a notice and stays "OK").
        for _ in 0..<8 {
            var descriptor = pollfd(fd: PQsocket(handle), events: Int16(POLLIN), revents: 0)
            guard poll(&descriptor, 1, 0) > 0 else { break }
            if PQconsumeInput(handle) == 0 || PQstatus(handle) != CONNECTION_OK {
                close()
                return false
            }
            while let notify = PQnotifies(handle) { PQfreemem(notify) }
        }
        return true
    }

    /// Simple-protocol execution of constant SQL (migrations, BEGIN/COMMIT). Never pass user data here.
    @discardableResult
    public func execute(constant sql: StaticString) throws(PostgresError) -> PostgresRows {
        try execute(script: sql.description)
    }

    /// Runs a constant SQL script (several statements allowed); used by migrations only.
    @discardableResult
    public func execute(script sql: String) throws(PostgresError) -> PostgresRows {
        try run { handle in PQsendQuery(handle, sql) }
    }

    /// A parameterised statement (extended protocol, unnamed).
    @discardableResult
    public func query(_ sql: String, _ parameters: [PostgresValue] = []) throws(PostgresError) -> PostgresRows {
        try run { handle in
            withParameters(parameters) { count, values, lengths, formats in
                PQsendQueryParams(handle, sql, count, nil, values, lengths, formats, 0)
            }
        }
    }

    /// A named prepared statement: prepared on this connection on first use, then executed by name.
    @discardableResult
    public func execute(_ statement: PreparedStatement, _ parameters: [PostgresValue] = []) throws(PostgresError) -> PostgresRows {
        if !prepared.contains(statement.name) {
            do {
                _ = try run { handle in PQsendPrepare(handle, statement.name, statement.sql, 0, nil) }
            } catch  where error.code == .connectionLost {
                // Lost while preparing: the statement itself was never sent.
                throw PostgresError(code: .unavailable, sqlState: error.sqlState, message: error.message)
            }
            prepared.insert(statement.name)
        }
        return try run { handle in
            withParameters(parameters) { count, values, lengths, formats in
                PQsendQueryPrepared(handle, statement.name, count, values, lengths, formats, 0)
            }
        }
    }

    // MARK: LISTEN support

    /// The socket, to wait on with `poll` before `consumeInput`.
    var socket: Int32 { handle.map { PQsocket($0) } ?? -1 }

    /// Reads what arrived on the socket and returns the channels of the notifications received.
    func consumeNotifications() throws(PostgresError) -> [(channel: String, payload: String, sender: Int32)] {
        guard let handle else { throw PostgresError(code: .connectionLost, message: "not connected") }
        guard PQconsumeInput(handle) == 1 else {
            throw PostgresError(code: .connectionLost, message: Self.trimmed(PQerrorMessage(handle)))
        }
        var out: [(String, String, Int32)] = []
        while let notify = PQnotifies(handle) {
            out.append((String(cString: notify.pointee.relname), String(cString: notify.pointee.extra), notify.pointee.be_pid))
            PQfreemem(notify)
        }
        return out
    }

    // MARK: helpers

    /// Sends one query with `send`, then waits (up to the deadline) for all of its results: the first error
    /// result if there is one, else the last result.
    private func run(_ send: (OpaquePointer) -> Int32) throws(PostgresError) -> PostgresRows {
        missedDeadline = false
        guard let handle else { throw PostgresError(code: .unavailable, message: "not connected") }
        guard send(handle) == 1 else {
            // libpq did not queue it (the connection is already broken): nothing reached the server.
            let message = Self.trimmed(PQerrorMessage(handle))
            close()
            throw PostgresError(code: .unavailable, message: message)
        }
        while true {
            let flushed = PQflush(handle)
            if flushed == 0 { break }
            guard flushed > 0 else { throw lost(handle) }
            guard Self.wait(PQsocket(handle), POLLIN | POLLOUT, until: deadline) else { throw abandon() }
            guard PQconsumeInput(handle) == 1 else { throw lost(handle) }
        }
        var kept: OpaquePointer?
        while true {
            while PQisBusy(handle) == 1 {
                guard Self.wait(PQsocket(handle), POLLIN, until: deadline) else {
                    if let kept { PQclear(kept) }
                    throw abandon()
                }
                // On failure the connection is marked broken and PQgetResult reports it.
                if PQconsumeInput(handle) == 0 { break }
            }
            guard let result = PQgetResult(handle) else { break }
            if let previous = kept, Self.isError(previous) {
                PQclear(result)
            } else {
                if let kept { PQclear(kept) }
                kept = result
            }
            if PQstatus(handle) != CONNECTION_OK { break }
        }
        return try check(kept)
    }

    private static func isError(_ result: OpaquePointer) -> Bool {
        let status = PQresultStatus(result)
        return status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK && status != PGRES_EMPTY_QUERY
    }

    private func lost(_ handle: OpaquePointer) -> PostgresError {
        let message = Self.trimmed(PQerrorMessage(handle))
        close()
        return PostgresError(code: .connectionLost, message: message)
    }

    /// The server did not answer before the deadline: the session's state is unknown, so it is closed (the
    /// server rolls back an open transaction when it notices).
    private func abandon() -> PostgresError {
        missedDeadline = true
        deadlineMissed?()
        close()
        return PostgresError(code: .connectionLost, message: "PostgreSQL did not answer before the request deadline")
    }

    /// Waits until the socket is ready for `events`; false when the deadline passes first.
    private static func wait(_ socket: Int32, _ events: Int32, until deadline: ContinuousClock.Instant?) -> Bool {
        while true {
            var timeout: Int32 = -1
            if let deadline {
                let remaining = deadline - .now
                guard remaining > .zero else { return false }
                timeout = Int32(clamping: remaining.milliseconds + 1)
            }
            var descriptor = pollfd(fd: socket, events: Int16(events), revents: 0)
            let ready = poll(&descriptor, 1, timeout)
            // Ready, or a socket error that libpq will report.
            if ready > 0 || (ready < 0 && errno != EINTR) { return true }
        }
    }

    private func check(_ result: OpaquePointer?) throws(PostgresError) -> PostgresRows {
        guard let handle else { throw PostgresError(code: .connectionLost, message: "not connected") }
        guard let result else {
            throw PostgresError(
                code: PQstatus(handle) == CONNECTION_OK ? .server : .connectionLost,
                message: Self.trimmed(PQerrorMessage(handle)))
        }
        let rows = PostgresRows(result)
        switch PQresultStatus(result) {
        case PGRES_COMMAND_OK, PGRES_TUPLES_OK, PGRES_EMPTY_QUERY:
            return rows
        default:
            let state = PQresultErrorField(result, Int32(UInt8(ascii: "C"))).map { String(cString: $0) }
            let message = Self.trimmed(PQresultErrorMessage(result))
            if PQstatus(handle) != CONNECTION_OK || state == nil || state?.hasPrefix("08") == true || state == "57P01" {
                throw PostgresError(code: .connectionLost, sqlState: state, message: message)
            }
            throw PostgresError(code: .server, sqlState: state, message: message)
        }
    }

    private static func trimmed(_ text: UnsafePointer<CChar>?) -> String {
        guard let text else { return "" }
        return String(cString: text).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    private func withParameters<R>(
        _ parameters: [PostgresValue],
        _ body: (Int32, UnsafePointer<UnsafePointer<CChar>?>?, UnsafePointer<Int32>?, UnsafePointer<Int32>?) -> R
    ) -> R {
        // Each value is copied into its own allocation that lives until the call returns.
        var buffers: [UnsafeMutablePointer<CChar>?] = []
        var lengths: [Int32] = []
        var formats: [Int32] = []
        buffers.reserveCapacity(parameters.count)
        for parameter in parameters {
            switch parameter {
            case .null:
                buffers.append(nil); lengths.append(0); formats.append(0)
            case .text(let text):
                buffers.append(strdup(text)); lengths.append(0); formats.append(0)
            case .bytes(let bytes):
                let buffer = UnsafeMutablePointer<CChar>.allocate(capacity: max(bytes.count, 1))
                bytes.withUnsafeBufferPointer { source in
                    source.withMemoryRebound(to: CChar.self) { chars in
                        if let base = chars.baseAddress { buffer.update(from: base, count: bytes.count) }
                    }
                }
                buffers.append(buffer); lengths.append(Int32(bytes.count)); formats.append(1)
            }
        }
        defer {
            for (buffer, parameter) in zip(buffers, parameters) {
                switch parameter {
                case .text: free(buffer)
                case .bytes: buffer?.deallocate()
                case .null: break
                }
            }
        }
        let values = buffers.map { UnsafePointer($0) }
        return values.withUnsafeBufferPointer { valuePointers in
            lengths.withUnsafeBufferPointer { lengthPointers in
                formats.withUnsafeBufferPointer { formatPointers in
                    body(Int32(parameters.count), valuePointers.baseAddress, lengthPointers.baseAddress, formatPointers.baseAddress)
                }
            }
        }
    }
}

/// A statement with a stable name, prepared once per connection.
public struct PreparedStatement: Sendable, Hashable {
    public var name: String
    public var sql: String
    /// - Parameters:
    ///   - name: The statement's name on the server, unique among the statements a connection prepares.
    ///   - sql: The statement, with `$1`, `$2`, … for its parameters.
    public init(_ name: String, _ sql: String) {
        self.name = name
        self.sql = sql
    }
}

private func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafePointer<CChar>?>) -> R) -> R {
    let pointers: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) } + [nil]
    defer { for pointer in pointers { free(pointer) } }
    return pointers.map { UnsafePointer($0) }.withUnsafeBufferPointer { body($0.baseAddress!) }
}
