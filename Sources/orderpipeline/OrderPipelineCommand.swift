import ArgumentParser
import Foundation
import Hummingbird
import Logging
import OrderPipelineHTTP
import OrderPipelinePostgres
import OrderPipelineRuntime
import ServiceLifecycle

/// `orderpipeline` — the deployable binary. Each role is a subcommand; configuration comes from the environment.
/// (The Kafka/Service Bus roles `relay`, `consume`, `all` and `outbox …` join `subcommands` the same way.)
/// The entry point is `Main` (Main.swift).
struct OrderPipelineCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "orderpipeline",
        abstract: "Event-driven order pipeline: HTTP API, outbox relays and fulfilment consumer.",
        discussion: RuntimeConfiguration.environmentHelp + "\n\n" + LivePage.Configuration.environmentHelp,
        subcommands: [Serve.self, Migrate.self, Relay.self, Consume.self, All.self, Outbox.self]
    )
}

/// Shared set-up of every subcommand: configuration from the environment and logging.
enum Bootstrap {
    static func configuration() throws -> RuntimeConfiguration {
        do {
            return try RuntimeConfiguration.fromEnvironment(ProcessInfo.processInfo.environment)
        } catch {
            throw ValidationError(error.description)
        }
    }

    /// The live page `/ui` (UI_ENABLED, UI_REPLAY_TOKEN, UI_MAX_STREAMS); `consumerLag` when the consumer runs here.
    static func livePage(store: PostgresStore, consumerLag: (@Sendable () -> [Int32: Int64])? = nil) throws -> LivePage {
        do {
            return LivePage(configuration: try LivePage.Configuration.fromEnvironment(ProcessInfo.processInfo.environment), store: store, consumerLag: consumerLag)
        } catch {
            throw ValidationError(error.description)
        }
    }

    static func logger(_ label: String, level: Logger.Level) -> Logger {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardOutput(label: label)
            handler.logLevel = level
            return handler
        }
        var logger = Logger(label: label)
        logger.logLevel = level
        return logger
    }
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve the HTTP API (POST/GET/PATCH /api/orders, /health/*, /metrics, /openapi.json) and the live page /ui.",
        discussion: RuntimeConfiguration.environmentHelp + "\n\n" + LivePage.Configuration.environmentHelp + "\n\nStops gracefully on SIGTERM or SIGINT."
    )

    func run() async throws {
        let configuration = try Bootstrap.configuration()
        let logger = Bootstrap.logger("orderpipeline.serve", level: configuration.logLevel)
        let metrics = PipelineMetrics()
        metrics.bootstrapMetricsSystem()
        // Orders do not NOTIFY inside their transactions (PostgreSQL would run those commits one at a time): the
        // coalescing notifier wakes the relays after them (`PostgresNotifier`).
        var pool = configuration.pool
        pool.connection.notifiesOutbox = false
        let store = PostgresStore(configuration: pool, logger: logger)
        let notifier = PostgresNotifier(settings: configuration.pool.connection, logger: logger)
        let shell = IntakeShell(store: OutboxWakingStore(store: store, wake: notifier.notify), configuration: configuration.intake, logger: logger, metrics: metrics)
        let api = OrderAPI(shell: shell, reads: store, metrics: metrics)
        let router = api.makeRouter()
        try Bootstrap.livePage(store: store).register(on: router)
        let app = Application(
            responder: EventLoopAffinity(router.buildResponder()),
            configuration: .init(address: .hostname(configuration.httpHost, port: configuration.httpPort), serverName: "orderpipeline"),
            logger: logger
        )
        logger.info(
            "Starting the API",
            metadata: [
                "http.address": "\(configuration.httpHost):\(configuration.httpPort)",
                "db.url": "\(configuration.redactedDatabaseURL)", "db.pool_size": "\(configuration.poolSize)",
            ])
        // Services stop in reverse order: the HTTP server drains first, then the pool closes.
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: DatabaseService(store: store, logger: logger)), .init(service: CloseOnShutdown(close: notifier.close)), .init(service: app)],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            ))
        try await group.run()
        logger.info("Stopped")
    }
}

struct Migrate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Apply the database migrations that are not applied yet (idempotent).",
        discussion: "Each migration runs in its own transaction and is recorded in schema_migrations.\n\n" + RuntimeConfiguration.environmentHelp
    )

    func run() async throws {
        let configuration = try Bootstrap.configuration()
        let logger = Bootstrap.logger("orderpipeline.migrate", level: configuration.logLevel)
        var settings = configuration.pool.connection
        settings.applicationName = "orderpipeline-migrate"
        // DDL on a large table, or waiting for another migrator, may take longer than a request may.
        settings.statementTimeout = .seconds(600)
        let session = PostgresSession(settings: settings, logger: logger, name: "pg-migrate")
        defer { session.close() }
        let result: Result<[Int], PostgresError> = await session.withConnection { connection in
            Result { () throws(PostgresError) in try Migrations.apply(on: try connection.get(), logger: logger) }
        }
        switch result {
        case .success(let applied):
            if applied.isEmpty {
                print("Database is up to date (schema version \(Migrations.latest)).")
            } else {
                print("Applied migration\(applied.count == 1 ? "" : "s") \(applied.map(String.init).joined(separator: ", ")); schema version \(Migrations.latest).")
            }
        case .failure(let error):
            logger.error("Migration failed", metadata: ["db.error": "\(error)", "db.url": "\(configuration.redactedDatabaseURL)"])
            throw ExitCode.failure
        }
    }
}
