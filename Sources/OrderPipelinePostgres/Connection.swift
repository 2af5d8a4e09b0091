import CLibPQ
import Foundation

/// An error from PostgreSQL or libpq, with the SQLSTATE when the server sent one.
public struct PostgresError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Code: String, Hashable, Sendable {
        /// Could not connect, or the connection broke (the server is down, restarted or killed the session).
        case connectionLost
        /// The server answered with an error (see `sqlState`).
        case server
        /// A reply that does not have the expected shape (a bug, or a schema that is not migrated).
        case protocolViolation
    }

    public var code: Code
    /// Five-character SQLSTATE, e.g. `57014` (statement timeout), `40001` (serialization failure).
    public var sqlState: String?
    public var message: String

    public init(code: Code, sqlState: String? = nil, message: String) {
        self.code = code
        self.sqlState = sqlState
        self.message = message
    }

    public var description: String {
        "\(code.rawValue)\(sqlState.map { " [\($0)]" } ?? ""): \(message)"
    }

    public var isTimeout: Bool { sqlState == "57014" || sqlState == "55P03" }
    public var isConflict: Bool { sqlState == "40001" || sqlState == "40P01" }
}

/// A parameter of a parameterised statement. Values always travel separately from the SQL text.
public enum PostgresValue: Sendable, Hashable {
    case null
    case text(String)
    /// Sent in binary format (for `bytea`).
    case bytes([UInt8])

    public static func int(_ value: Int64) -> PostgresValue { .text(String(value)) }
    public static func int(_ value: Int) -> PostgresValue { .text(String(value)) }
    public static func optional(_ text: String?) -> PostgresValue { text.map { .text($0) } ?? .null }
}

/// A query result; owns the `PGresult` and clears it when released. Values are read in text format.
public final class PostgresRows {
    private let handle: OpaquePointer

    init(_ handle: OpaquePointer) { self.handle = handle }
    deinit { PQclear(handle) }

    public var count: Int { Int(PQntuples(handle)) }
    public var columns: Int { Int(PQnfields(handle)) }
    /// Rows changed by an INSERT/UPDATE/DELETE.
    public var affected: Int { Int(String(cString: PQcmdTuples(handle))) ?? 0 }

    public func isNull(_ row: Int, _ column: Int) -> Bool { PQgetisnull(handle, Int32(row), Int32(column)) == 1 }

    public func string(_ row: Int, _ column: Int) -> String? {
        guard row < count, column < columns, !isNull(row, column) else { return nil }
        return String(cString: PQgetvalue(handle, Int32(row), Int32(column)))
    }

    public func int(_ row: Int, _ column: Int) -> Int64? { string(row, column).flatMap { Int64($0) } }

    /// A `bytea` column read in text format (`\x` hex escape).
    public func bytes(_ row: Int, _ column: Int) -> [UInt8]? {
        guard let text = string(row, column) else { return nil }
        let utf8 = Array(text.utf8)
        guard utf8.count >= 2, utf8[0] == UInt8(ascii: "\\"), utf8[1] == UInt8(ascii: "x") else { return Array(text.utf8) }
        var out: [UInt8] = []
        out.reserveCapacity((utf8.count - 2) / 2)
        var index = 2
        func nibble(_ c: UInt8) -> UInt8 {
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
            default: 0
            }
        }
        while index + 1 < utf8.count {
            out.append(nibble(utf8[index]) << 4 | nibble(utf8[index + 1]))
            index += 2
        }
        return out
    }
}

/// One libpq connection. Not thread-safe: it is owned by one thread (a `PostgresPool` worker or a listener) and
/// every call on it blocks that thread. The `PGconn` is freed in `deinit`.
public final class PostgresConnection {
    public struct Settings: Sendable, Hashable {
        /// A libpq connection string or `postgres://` URL.
        public var url: String
        public var statementTimeout: Duration = .seconds(5)
        public var connectTimeoutSeconds = 5
        public var applicationName = "orderpipeline"
        /// A schema to use instead of `public` (tests isolate themselves in a schema each). Must be an identifier.
        public var schema: String?

        public init(url: String) { self.url = url }
    }

    private var handle: OpaquePointer?
    private var prepared: Set<String> = []
    public let settings: Settings

    public init(settings: Settings) {
        self.settings = settings
    }

    deinit {
        if let handle { PQfinish(handle) }
    }

    public var isConnected: Bool {
        guard let handle else { return false }
        return PQstatus(handle) == CONNECTION_OK
    }

    /// The server process id of this session (for `pg_terminate_backend` in tests and diagnostics).
    public var backendPID: Int32 { handle.map { PQbackendPID($0) } ?? 0 }

    /// Connects (or reconnects), then sets the session's timeouts. Prepared statements are re-prepared lazily.
    public func connect() throws(PostgresError) {
        close()
        let keys = ["dbname", "connect_timeout", "application_name", "options"]
        let timeoutMS = max(1, settings.statementTimeout.milliseconds)
        let values = [
            settings.url, String(settings.connectTimeoutSeconds), settings.applicationName,
            "-c statement_timeout=\(timeoutMS) -c idle_in_transaction_session_timeout=\(max(timeoutMS * 4, 10_000)) -c lock_timeout=\(timeoutMS) -c client_min_messages=warning"
                + (settings.schema.map { " -c search_path=\($0)" } ?? ""),
        ]
        let connection = withCStrings(keys) { keyPointers in
            withCStrings(values) { valuePointers in
                // expand_dbname = 1: the `dbname` value may be a URL or a connection string.
                PQconnectdbParams(keyPointers, valuePointers, 1)
            }
        }
        guard let connection else { throw PostgresError(code: .connectionLost, message: "out of memory") }
        guard PQstatus(connection) == CONNECTION_OK else {
            let message = Self.trimmed(PQerrorMessage(connection))
            PQfinish(connection)
            throw PostgresError(code: .connectionLost, message: message)
        }
        handle = connection
    }

    public func close() {
        if let handle { PQfinish(handle) }
        handle = nil
        prepared = []
    }

    /// Simple-protocol execution of constant SQL (migrations, BEGIN/COMMIT). Never pass user data here.
    @discardableResult
    public func execute(constant sql: StaticString) throws(PostgresError) -> PostgresRows {
        try execute(script: sql.description)
    }

    /// Runs a constant SQL script (several statements allowed); used by migrations only.
    @discardableResult
    public func execute(script sql: String) throws(PostgresError) -> PostgresRows {
        guard let handle else { throw PostgresError(code: .connectionLost, message: "not connected") }
        return try check(PQexec(handle, sql))
    }

    /// A parameterised statement (extended protocol, unnamed).
    @discardableResult
    public func query(_ sql: String, _ parameters: [PostgresValue] = []) throws(PostgresError) -> PostgresRows {
        guard let handle else { throw PostgresError(code: .connectionLost, message: "not connected") }
        let result = withParameters(parameters) { count, values, lengths, formats in
            PQexecParams(handle, sql, count, nil, values, lengths, formats, 0)
        }
        return try check(result)
    }

    /// A named prepared statement: prepared on this connection on first use, then executed by name.
    @discardableResult
    public func execute(_ statement: PreparedStatement, _ parameters: [PostgresValue] = []) throws(PostgresError) -> PostgresRows {
        guard let handle else { throw PostgresError(code: .connectionLost, message: "not connected") }
        if !prepared.contains(statement.name) {
            _ = try check(PQprepare(handle, statement.name, statement.sql, 0, nil))
            prepared.insert(statement.name)
        }
        let result = withParameters(parameters) { count, values, lengths, formats in
            PQexecPrepared(handle, statement.name, count, values, lengths, formats, 0)
        }
        return try check(result)
    }

    // MARK: LISTEN support

    /// The socket, to wait on with `poll` before `consumeInput`.
    var socket: Int32 { handle.map { PQsocket($0) } ?? -1 }

    /// Reads what arrived on the socket and returns the channels of the notifications received.
    func consumeNotifications() throws(PostgresError) -> [(channel: String, payload: String)] {
        guard let handle else { throw PostgresError(code: .connectionLost, message: "not connected") }
        guard PQconsumeInput(handle) == 1 else {
            throw PostgresError(code: .connectionLost, message: Self.trimmed(PQerrorMessage(handle)))
        }
        var out: [(String, String)] = []
        while let notify = PQnotifies(handle) {
            out.append((String(cString: notify.pointee.relname), String(cString: notify.pointee.extra)))
            PQfreemem(notify)
        }
        return out
    }

    // MARK: helpers

    private func check(_ result: OpaquePointer?) throws(PostgresError) -> PostgresRows {
        guard let handle else { throw PostgresError(code: .connectionLost, message: "not connected") }
        guard let result else {
            throw PostgresError(code: PQstatus(handle) == CONNECTION_OK ? .server : .connectionLost,
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

extension Duration {
    /// Whole milliseconds.
    var milliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000 + attoseconds / 1_000_000_000_000_000
    }
}
