import Logging
import OrderPipelineCore
import OrderPipelinePostgres
import ServiceLifecycle

/// Owns the store's connection pool for the lifetime of the process: runs until graceful shutdown, then closes
/// the pool (after the services that use it, which come later in the `ServiceGroup`, have stopped).
public struct DatabaseService: Service {
    public let store: PostgresStore
    let logger: Logger

    public init(store: PostgresStore, logger: Logger) {
        self.store = store
        self.logger = logger
    }

    public func run() async throws {
        try? await gracefulShutdown()
        logger.info("Closing the database pool")
        // Off the cooperative pool: closing waits for every connection's thread to finish its statement.
        await DedicatedThread.run("pg-close") { store.close() }
    }
}
