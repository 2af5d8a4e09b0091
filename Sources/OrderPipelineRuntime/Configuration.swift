import Logging
import OrderPipelineCore
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
    /// `DB_RELAY_POOL_SIZE` — connections of the outbox relays (`relay`, `all`): their own pool and queue, so that
    /// claims and settlements never wait behind the API's work. Each relay has up to one claim and two batches out.
    /// Default 4, at most `DB_POOL_SIZE` (a process told to use few connections uses few everywhere).
    public var relayPoolSize: Int?
    /// `DB_CONSUMER_POOL_SIZE` — connections of the fulfilment consumer (`consume`, `all`), a pool of its own too.
    /// Default 2, at most `DB_POOL_SIZE`.
    public var consumerPoolSize: Int?
    /// `RELAY_BATCH_SIZE` and `RELAY_PIPELINE_DEPTH` — rows per claim and batches in the air per relay (nil: the
    /// machine's defaults: 500 for Kafka, 100 for Service Bus, and 2).
    public var relayBatchSize: Int?
    public var relayPipelineDepth: Int?
    /// `RELAY_GATHER_MS` — how long a relay's claim waits under load to take more rows at once (nil: the machine's
    /// default, 10 ms; 0: never).
    public var relayGatherDelay: Duration?
    /// `DB_CREATE_TRANSACTIONS` — the API's create transactions in flight at once (default 2, at most
    /// `DB_POOL_SIZE`). Creates arriving while they are busy wait and share the next transaction (group commit).
    public var createTransactions = 2
    /// `CREATE_BATCH_SIZE` — orders in one create transaction at most (default 64).
    public var createBatchSize = 64
    /// `DB_STATEMENT_TIMEOUT_MS` — statement and lock timeout of every session.
    public var statementTimeout: Duration = .seconds(5)
    /// `DB_QUEUE_LIMIT` — requests that may wait for a connection (and creates that may wait for a create
    /// transaction); more are refused at once (HTTP 503).
    public var queueLimit = 256
    /// `DB_REQUEST_TIMEOUT_MS` — deadline of each database request, waiting for a connection included; a
    /// request past it is answered at once (HTTP 503) and a statement PostgreSQL does not answer by then is abandoned.
    public var requestTimeout: Duration = .seconds(3)
    /// `LOG_LEVEL` — trace, debug, info, notice, warning, error, critical.
    public var logLevel: Logger.Level = .info
    /// `RECONCILE_AFTER_SECONDS` (0: off) and `RECONCILE_INTERVAL_SECONDS`: the reconciler of `relay` and `all`.
    public var reconciler: Reconciler.Configuration? = Reconciler.Configuration()

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
          DB_POOL_SIZE   database connections of the API, one thread each
                         (default 8)
          DB_RELAY_POOL_SIZE
                         relay/all: the outbox relays' own connections
                         (default 4, at most DB_POOL_SIZE)
          DB_CONSUMER_POOL_SIZE
                         consume/all: the consumer's own connections
                         (default 2, at most DB_POOL_SIZE)
          RELAY_BATCH_SIZE
                         relay/all: outbox rows per claim (default 500
                         for Kafka, 100 for Service Bus)
          RELAY_PIPELINE_DEPTH
                         relay/all: batches a relay has in the air at once
                         (default 2; 1 = claim, publish, settle in turn)
          RELAY_GATHER_MS
                         relay/all: under load (the latest claim found 4
                         rows or more), a claim waits this long to take
                         more rows at once (default 10; 0 = never)
          DB_CREATE_TRANSACTIONS
                         the API's create transactions at once; creates
                         arriving meanwhile share the next one (default 2,
                         at most DB_POOL_SIZE)
          CREATE_BATCH_SIZE
                         orders in one create transaction (default 64)
          DB_STATEMENT_TIMEOUT_MS
                         statement and lock timeout in ms (default 5000)
          DB_QUEUE_LIMIT requests that may wait for a connection; more get
                         503 at once (default 256)
          DB_REQUEST_TIMEOUT_MS
                         deadline of a database request in ms, queueing
                         included; then 503 (default 3000)
          LOG_LEVEL      trace|debug|info|notice|warning|error|critical
                         (default info)
          RECONCILE_AFTER_SECONDS
                         relay/all: re-announce orders still Pending this
                         long after their event was published, e.g. lost
                         by the broker (default 300; 0 turns it off)
          RECONCILE_INTERVAL_SECONDS
                         how often the reconciler looks (default 30)
        """

    /// A setting that is missing or malformed (every configuration read from the environment throws this): says what
    /// to fix.
    public struct Problem: Error, CustomStringConvertible {
        public var description: String
        public init(description: String) { self.description = description }
    }

    /// The whole number `name` is set to, if it is set; anything else than a number in `range` is refused.
    public static func whole(_ environment: [String: String], _ name: String, in range: ClosedRange<Int>) throws(Problem) -> Int? {
        guard let text = environment[name] else { return nil }
        guard let value = Int(text), range.contains(value) else {
            throw Problem(description: "\(name) must be \(range.lowerBound)…\(range.upperBound), not \(text)")
        }
        return value
    }

    public static func fromEnvironment(_ environment: [String: String]) throws(Problem) -> RuntimeConfiguration {
        guard let url = environment["DATABASE_URL"], !url.isEmpty else {
            throw Problem(description: "DATABASE_URL is not set (e.g. postgres://postgres@127.0.0.1:55432/orderpipeline; `eval \"$(scripts/services up)\"` sets it)")
        }
        var configuration = RuntimeConfiguration(databaseURL: url)
        if let host = environment["HTTP_HOST"], !host.isEmpty { configuration.httpHost = host }
        if let value = try whole(environment, "HTTP_PORT", in: 0...65_535) { configuration.httpPort = value }
        if let value = try whole(environment, "DB_POOL_SIZE", in: 1...256) { configuration.poolSize = value }
        if let value = try whole(environment, "DB_RELAY_POOL_SIZE", in: 1...256) { configuration.relayPoolSize = value }
        if let value = try whole(environment, "DB_CONSUMER_POOL_SIZE", in: 1...256) { configuration.consumerPoolSize = value }
        if let value = try whole(environment, "RELAY_BATCH_SIZE", in: 1...10_000) { configuration.relayBatchSize = value }
        if let value = try whole(environment, "RELAY_PIPELINE_DEPTH", in: 1...16) { configuration.relayPipelineDepth = value }
        if let value = try whole(environment, "RELAY_GATHER_MS", in: 0...1_000) { configuration.relayGatherDelay = .milliseconds(value) }
        if let value = try whole(environment, "DB_CREATE_TRANSACTIONS", in: 1...256) { configuration.createTransactions = value }
        if let value = try whole(environment, "CREATE_BATCH_SIZE", in: 1...1_000) { configuration.createBatchSize = value }
        if let text = environment["DB_STATEMENT_TIMEOUT_MS"] {
            guard let ms = Int64(text), ms > 0 else { throw Problem(description: "DB_STATEMENT_TIMEOUT_MS must be a positive number") }
            configuration.statementTimeout = .milliseconds(ms)
        }
        if let value = try whole(environment, "DB_QUEUE_LIMIT", in: 1...100_000) { configuration.queueLimit = value }
        if let text = environment["DB_REQUEST_TIMEOUT_MS"] {
            guard let ms = Int64(text), (1...600_000).contains(ms) else { throw Problem(description: "DB_REQUEST_TIMEOUT_MS must be 1…600000") }
            configuration.requestTimeout = .milliseconds(ms)
        }
        if let text = environment["RECONCILE_AFTER_SECONDS"] {
            guard let seconds = Int64(text), seconds >= 0 else { throw Problem(description: "RECONCILE_AFTER_SECONDS must be 0 (off) or a number of seconds") }
            if seconds == 0 { configuration.reconciler = nil } else { configuration.reconciler?.overdueAfter = .seconds(seconds) }
        }
        if let text = environment["RECONCILE_INTERVAL_SECONDS"] {
            guard let seconds = Int64(text), seconds > 0 else { throw Problem(description: "RECONCILE_INTERVAL_SECONDS must be a positive number of seconds") }
            configuration.reconciler?.interval = .seconds(seconds)
        }
        if let text = environment["LOG_LEVEL"] {
            guard let level = Logger.Level(rawValue: text.lowercased()) else { throw Problem(description: "LOG_LEVEL \(text) is not a level") }
            configuration.logLevel = level
        }
        return configuration
    }

    /// The intake machine's settings: group commit within the API's pool, waiting bounded like the pool's queue.
    public var intake: OrderIntake.Configuration {
        var intake = OrderIntake.Configuration()
        intake.createsInFlight = min(createTransactions, poolSize)
        intake.maxCreateBatch = createBatchSize
        intake.maxWaitingCreates = queueLimit
        return intake
    }

    /// The API's pool (`main` in the metrics).
    public var pool: PostgresPool.Configuration { pool(for: .api) }

    /// Who uses a pool: each role has its own connections and queue (`pool` label of the metrics).
    public enum PoolRole: String, Sendable {
        case api = "main"
        case relay
        case consumer
    }

    public func pool(for role: PoolRole) -> PostgresPool.Configuration {
        var pool = PostgresPool.Configuration(url: databaseURL)
        switch role {
        case .api: pool.size = poolSize
        case .relay: pool.size = relayPoolSize ?? min(4, poolSize)
        case .consumer: pool.size = consumerPoolSize ?? min(2, poolSize)
        }
        pool.name = role.rawValue
        pool.connection.statementTimeout = statementTimeout
        pool.queueLimit = queueLimit
        pool.requestTimeout = requestTimeout
        return pool
    }

    /// The database URL with any password replaced, for logs.
    public var redactedDatabaseURL: String { Self.redact(databaseURL) }

    public static func redact(_ url: String) -> String { Redaction.redact(url) }
}

/// Removes secrets from connection strings before they are logged: the password of every `scheme://user:password@`
/// URL (postgres, amqp, amqps, …) and the value of every secret key=value field — libpq's `password=`, Azure's
/// `SharedAccessKey=`, `SharedAccessSignature=` and `AccountKey=`, librdkafka's `sasl.password=` and the like —
/// in libpq (space-separated, quoted values), URL query (`&`), Azure (`;`) and property list (`,`) forms.
public enum Redaction {
    static let secretKeys = [
        "password", "sasl.password", "ssl.key.password", "sasl.oauthbearer.client.secret", "sslpassword", "sig",
    ]
    /// Azure connection-string fields: their values (a SAS token has spaces and `&`) end only at `;`.
    static let azureSecretKeys = ["sharedaccesskey", "sharedaccesssignature", "accountkey"]
    static let separators: Set<Character> = [" ", "&", ";", ",", "?", "\t", "\n"]

    public static func redact(_ text: String) -> String {
        var out = redactUserInfo(text)
        for key in azureSecretKeys { out = redactField(key, in: out, endingAt: [";"]) }
        for key in secretKeys { out = redactField(key, in: out, endingAt: separators) }
        return out
    }

    /// `scheme://user:secret@host` → `scheme://user:***@host`, for every URL in the text.
    static func redactUserInfo(_ text: String) -> String {
        var text = text
        var searchFrom = text.startIndex
        while let scheme = text.range(of: "://", range: searchFrom..<text.endIndex) {
            let authorityEnd = text[scheme.upperBound...].firstIndex(where: { $0 == "/" || $0 == "?" || $0 == "#" || separators.contains($0) }) ?? text.endIndex
            searchFrom = scheme.upperBound
            guard let at = text[scheme.upperBound..<authorityEnd].lastIndex(of: "@"),
                let colon = text[scheme.upperBound..<at].firstIndex(of: ":")
            else { continue }
            let resume = text.distance(from: text.startIndex, to: colon) + 4
            text.replaceSubrange(text.index(after: colon)..<at, with: "***")
            searchFrom = text.index(text.startIndex, offsetBy: resume)
        }
        return text
    }

    /// `key=value` → `key=***` (case-insensitive key, at the start or after a separator; a quoted value up to its quote).
    static func redactField(_ key: String, in text: String, endingAt terminators: Set<Character>) -> String {
        var text = text
        var searchFrom = text.startIndex
        while let found = text.range(of: key + "=", options: .caseInsensitive, range: searchFrom..<text.endIndex) {
            searchFrom = found.upperBound
            if found.lowerBound != text.startIndex, !separators.contains(text[text.index(before: found.lowerBound)]) { continue }
            if text[found.upperBound...].hasPrefix("***") { continue }
            var end = text[found.upperBound...].firstIndex(where: { terminators.contains($0) }) ?? text.endIndex
            if text[found.upperBound...].first == "'" {
                // libpq quoting: up to the closing quote not escaped by a backslash.
                var index = text.index(after: found.upperBound)
                while index < text.endIndex, text[index] != "'" {
                    if text[index] == "\\" { index = text.index(after: index) }
                    if index < text.endIndex { index = text.index(after: index) }
                }
                end = index < text.endIndex ? text.index(after: index) : index
            }
            let resume = text.distance(from: text.startIndex, to: found.upperBound) + 3
            text.replaceSubrange(found.upperBound..<end, with: "***")
            searchFrom = text.index(text.startIndex, offsetBy: resume)
        }
        return text
    }
}
