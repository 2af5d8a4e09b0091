import Logging
import OrderPipelinePostgres

/// Everything the deployable binary reads from its environment. Defaults suit a developer machine.
public struct RuntimeConfiguration: Sendable {
    /// `DATABASE_URL` — a `postgres://user:password@host:port/db` URL or a libpq connection string.
    public var databaseURL: String
    /// `HTTP_HOST` (default 127.0.0.1) and `HTTP_PORT` (default 5125, as in the seed).
    public var httpHost = "127.0.0.1"
    public var httpPort = 5125
    /// `DB_POOL_SIZE` — connections (each on its own thread) for the API's transactions and reads.
    public var poolSize = 8
    /// `DB_STATEMENT_TIMEOUT_MS` — statement and lock timeout of every session.
    public var statementTimeout: Duration = .seconds(5)
    /// `LOG_LEVEL` — trace, debug, info, notice, warning, error, critical.
    public var logLevel: Logger.Level = .info

    public init(databaseURL: String) {
        self.databaseURL = databaseURL
    }

    /// The variables, for `--help` and docs. Other subcommands (relay, consume) add theirs next to these.
    public static let environmentHelp = """
        Environment:
          DATABASE_URL   PostgreSQL URL (required),
                         e.g. postgres://postgres@127.0.0.1:55432/orderpipeline
          HTTP_HOST      address the API binds (default 127.0.0.1)
          HTTP_PORT      port the API listens on (default 5125)
          DB_POOL_SIZE   database connections, one thread each (default 8)
          DB_STATEMENT_TIMEOUT_MS
                         statement and lock timeout in ms (default 5000)
          LOG_LEVEL      trace|debug|info|notice|warning|error|critical
                         (default info)
        """

    public struct Problem: Error, CustomStringConvertible {
        public var description: String
    }

    public static func fromEnvironment(_ environment: [String: String]) throws(Problem) -> RuntimeConfiguration {
        guard let url = environment["DATABASE_URL"], !url.isEmpty else {
            throw Problem(description: "DATABASE_URL is not set (e.g. postgres://postgres@127.0.0.1:55432/orderpipeline; `eval \"$(scripts/services up)\"` sets it)")
        }
        var configuration = RuntimeConfiguration(databaseURL: url)
        if let host = environment["HTTP_HOST"], !host.isEmpty { configuration.httpHost = host }
        if let text = environment["HTTP_PORT"] {
            guard let port = Int(text), (0...65_535).contains(port) else { throw Problem(description: "HTTP_PORT must be a port number, not \(text)") }
            configuration.httpPort = port
        }
        if let text = environment["DB_POOL_SIZE"] {
            guard let size = Int(text), (1...256).contains(size) else { throw Problem(description: "DB_POOL_SIZE must be 1…256, not \(text)") }
            configuration.poolSize = size
        }
        if let text = environment["DB_STATEMENT_TIMEOUT_MS"] {
            guard let ms = Int64(text), ms > 0 else { throw Problem(description: "DB_STATEMENT_TIMEOUT_MS must be a positive number") }
            configuration.statementTimeout = .milliseconds(ms)
        }
        if let text = environment["LOG_LEVEL"] {
            guard let level = Logger.Level(rawValue: text.lowercased()) else { throw Problem(description: "LOG_LEVEL \(text) is not a level") }
            configuration.logLevel = level
        }
        return configuration
    }

    public var pool: PostgresPool.Configuration {
        var pool = PostgresPool.Configuration(url: databaseURL)
        pool.size = poolSize
        pool.connection.statementTimeout = statementTimeout
        return pool
    }

    /// The database URL with any password replaced, for logs.
    public var redactedDatabaseURL: String { Self.redact(databaseURL) }

    public static func redact(_ url: String) -> String {
        // postgres://user:secret@host/db → postgres://user:***@host/db; key=value strings: password=***.
        var text = url
        if let scheme = text.range(of: "://"), let at = text[scheme.upperBound...].firstIndex(of: "@") {
            let credentials = text[scheme.upperBound..<at]
            if let colon = credentials.firstIndex(of: ":") {
                text.replaceSubrange(text.index(after: colon)..<at, with: "***")
            }
        }
        if let range = text.range(of: "password=") {
            let end = text[range.upperBound...].firstIndex(where: { $0 == " " || $0 == "&" }) ?? text.endIndex
            text.replaceSubrange(range.upperBound..<end, with: "***")
        }
        return text
    }
}
