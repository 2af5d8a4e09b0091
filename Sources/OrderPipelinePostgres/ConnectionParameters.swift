import CLibPQ
import Foundation

/// The libpq keywords a connection opens with: the URL (expanded by libpq), then what the adapter adds.
///
/// - `options` is merged, not replaced: the URL's own `options` (or `PGOPTIONS` when the URL has none) come first,
///   the adapter's `-c` settings after them, so the adapter's win where both set the same one. The adapter pins
///   the timeouts, `client_min_messages`, `bytea_output = hex` (payloads are read as text; a role or database
///   set to `escape` must not change them) and, for tests, `search_path`.
/// - TCP keepalives and `tcp_user_timeout` are added unless the URL sets them: a server that vanished without
///   closing the socket (black hole, dead host) then breaks the connection instead of hanging it.
struct ConnectionParameters {
    var keys: [String]
    var values: [String]

    init(_ settings: PostgresConnection.Settings, environment: [String: String] = ProcessInfo.processInfo.environment) throws(PostgresError) {
        let given = try Self.parse(settings.url)
        keys = ["dbname", "application_name"]
        values = [settings.url, settings.applicationName]
        let network: [(String, String)] = [
            ("keepalives", "1"),
            ("keepalives_idle", String(settings.keepalivesIdleSeconds)),
            ("keepalives_interval", String(settings.keepalivesIntervalSeconds)),
            ("keepalives_count", String(settings.keepalivesCount)),
            ("tcp_user_timeout", String(settings.tcpUserTimeout.milliseconds)),
        ]
        for (key, value) in network where given[key] == nil {
            keys.append(key)
            values.append(value)
        }
        keys.append("options")
        values.append(Self.options(settings, userOptions: given["options"] ?? environment["PGOPTIONS"]))
    }

    static func options(_ settings: PostgresConnection.Settings, userOptions: String?) -> String {
        let timeoutMS = max(1, settings.statementTimeout.milliseconds)
        var parts: [String] = []
        if let userOptions, !userOptions.trimmingCharacters(in: .whitespaces).isEmpty { parts.append(userOptions) }
        parts.append("-c statement_timeout=\(timeoutMS) -c idle_in_transaction_session_timeout=\(max(timeoutMS * 4, 10_000))")
        parts.append("-c lock_timeout=\(timeoutMS) -c client_min_messages=warning -c bytea_output=hex")
        // The server's side of the same: a session whose client vanished ends (its locks freed) in about 25 s.
        parts.append("-c tcp_keepalives_idle=\(settings.keepalivesIdleSeconds) -c tcp_keepalives_interval=\(settings.keepalivesIntervalSeconds)")
        parts.append("-c tcp_keepalives_count=\(settings.keepalivesCount)")
        if let schema = settings.schema { parts.append("-c search_path=\(schema)") }
        if !settings.notifiesOutbox { parts.append("-c orderpipeline.notify=off") }
        return parts.joined(separator: " ")
    }

    /// The keywords the URL or connection string itself sets (no defaults, no environment).
    static func parse(_ url: String) throws(PostgresError) -> [String: String] {
        var error: UnsafeMutablePointer<CChar>?
        guard let options = PQconninfoParse(url, &error) else {
            let message = error.map { String(cString: $0).trimmingCharacters(in: .whitespacesAndNewlines) } ?? "out of memory"
            if let error { PQfreemem(error) }
            // libpq quotes the offending fragment, which may be a password: never repeat it.
            let unquoted = message.split(separator: "\"", omittingEmptySubsequences: false).enumerated()
                .map { $0.offset % 2 == 1 ? "…" : String($0.element) }.joined(separator: "\"")
            throw PostgresError(code: .unavailable, message: "the database URL is not a valid connection string: \(unquoted)")
        }
        defer { PQconninfoFree(options) }
        var given: [String: String] = [:]
        var option = options
        while let keyword = option.pointee.keyword {
            if let value = option.pointee.val { given[String(cString: keyword)] = String(cString: value) }
            option += 1
        }
        return given
    }
}
