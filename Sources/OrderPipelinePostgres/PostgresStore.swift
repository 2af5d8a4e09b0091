import Logging
import OrderPipelineCore

/// The production store: performs `StoreCommand`s on a `PostgresPool` (one dedicated thread per connection) and
/// answers the API's reads. No libpq type crosses this type's public surface.
public final class PostgresStore: Sendable {
    public let pool: PostgresPool

    /// A store on an existing pool (which it closes in `close()`).
    public init(pool: PostgresPool) {
        self.pool = pool
    }

    /// A store on a pool of its own.
    /// - Parameters:
    ///   - configuration: The pool's connections, queue limit and request timeout.
    ///   - logger: Where the pool reports connections lost and re-established.
    public convenience init(configuration: PostgresPool.Configuration, logger: Logger) {
        self.init(pool: PostgresPool(configuration: configuration, logger: logger))
    }

    /// Performs one store command as one transaction.
    public func perform(_ command: StoreCommand) async -> StoreResult {
        await pool.withConnection { Self.perform(command, on: $0) }
    }

    /// Performs one store command as one transaction and hands its result to `completion` on the connection's
    /// thread, without a task in between.
    public func perform(_ command: StoreCommand, then completion: @escaping @Sendable (StoreResult) -> Void) {
        pool.submit { completion(Self.perform(command, on: $0)) }
    }

    private static func perform(_ command: StoreCommand, on connection: Result<PostgresConnection, PostgresError>) -> StoreResult {
        switch connection {
        case .success(let connection): StoreRecipes.perform(command, on: connection)
        case .failure(let error): .failed(StoreRecipes.failure(error))
        }
    }

    /// The order with `id`, nil when there is none.
    /// - Throws: `PostgresError` when the database fails or does not answer in time.
    public func order(_ id: OrderID) async throws(PostgresError) -> Order? {
        try await run { c throws(PostgresError) in try StoreRecipes.loadOrder(id, c, forUpdate: false) }
    }

    /// Newest first, at most `limit`, strictly after `cursor` (the last order of the previous page).
    public func orders(limit: Int, after cursor: OrderCursor?) async throws(PostgresError) -> [Order] {
        try await run { c throws(PostgresError) in
            try StoreRecipes.listOrders(limit: limit, after: cursor.map { ($0.createdAt, $0.id) }, c)
        }
    }

    /// On the control connection (metrics scrapes never wait behind the work).
    public func pending(_ kind: OutboxKind) async throws(PostgresError) -> (count: Int, oldestAgeSeconds: Double) {
        try await run(control: true) { c throws(PostgresError) in try StoreRecipes.pending(kind, c) }
    }

    /// The applied schema version (nil: never migrated). Also proves the database answers. On the control
    /// connection: readiness is answered within the deadline even when the queue is full.
    public func schemaVersion() async throws(PostgresError) -> Int? {
        try await run(control: true) { c throws(PostgresError) in try Migrations.currentVersion(on: c) }
    }

    /// Closes the pool: queued work finishes, then every connection closes. Blocks until done.
    public func close() { pool.close() }

    private func run<T: Sendable>(control: Bool = false, _ body: @escaping @Sendable (PostgresConnection) throws(PostgresError) -> T) async throws(PostgresError) -> T {
        let job: @Sendable (Result<PostgresConnection, PostgresError>) -> Result<T, PostgresError> = { connection in
            switch connection {
            case .success(let c):
                do throws(PostgresError) { return .success(try body(c)) } catch { return .failure(error) }
            case .failure(let error):
                return .failure(error)
            }
        }
        let result = control ? await pool.withControlConnection(job) : await pool.withConnection(job)
        return try result.get()
    }
}

/// Where a page of the newest-first order list ends: the last order's creation time and id.
public struct OrderCursor: Hashable, Sendable {
    public var createdAt: Instant
    public var id: OrderID
    /// The position after the order created at `createdAt` with `id`.
    public init(createdAt: Instant, id: OrderID) {
        self.createdAt = createdAt
        self.id = id
    }
}
