import ArgumentParser
import Foundation
import Hummingbird
import Logging
import OrderPipelineCore
import OrderPipelineHTTP
import OrderPipelineKafka
import OrderPipelinePostgres
import OrderPipelineRuntime
import OrderPipelineServiceBus
import ServiceLifecycle

/// The broker roles: `relay` (both outbox relays), `consume` (the fulfilment consumer), `all` (API + both relays +
/// consumer in one process, for development).
enum BrokerBootstrap {
    static func brokers(needsServiceBus: Bool, role: String) throws -> BrokerConfiguration {
        do {
            return try BrokerConfiguration.fromEnvironment(ProcessInfo.processInfo.environment, needsServiceBus: needsServiceBus, role: role)
        } catch {
            throw ValidationError(error.description)
        }
    }

    static let help =
        RuntimeConfiguration.environmentHelp + "\n\n" + BrokerConfiguration.environmentHelp + "\n\n" + MetricsEndpoint.help
        + "\n\n" + LivePage.Configuration.environmentHelp
        + "\n\nlibrdkafka 2.16 must be the one loaded (LD_LIBRARY_PATH=$RDKAFKA_LIB_DIR, set by scripts/services env) to talk to Tansu."

    /// The relays of `brokers.relayOutboxes`: Kafka outbox → Kafka, Service Bus outbox → Service Bus, woken by NOTIFY.
    /// First takes the lock of `RELAY_ID` (refused: another live process uses it), which a service then watches.
    static func relayServices(
        configuration: RuntimeConfiguration, brokers: BrokerConfiguration, store: PostgresStore, logger: Logger, metrics: PipelineMetrics,
        listener given: PostgresListener? = nil
    ) async throws -> (services: [ServiceGroupConfiguration.ServiceConfiguration], listener: PostgresListener) {
        let lock: OwnerLock
        do {
            lock = try await OwnerLock.acquire(owner: brokers.relayID, settings: configuration.pool.connection, logger: logger)
        } catch let refusal as OwnerLock.Refusal {
            throw ValidationError(refusal.description)
        } catch {
            throw ValidationError("could not take the lock of RELAY_ID \(brokers.relayID): \(error)")
        }
        logger.info("Relay owner", metadata: ["relay.id": "\(brokers.relayID)"])
        let relaysServiceBus = brokers.relayOutboxes.contains(.serviceBus)
        if relaysServiceBus, let serviceBus = brokers.serviceBus, case .sharedAccessKey = serviceBus.authentication {
            logger.warning(
                "Exactly-once delivery to Service Bus relies on duplicate detection: make sure it is enabled on the queue",
                metadata: [
                    "servicebus.queue": "\(serviceBus.queue)"
                ])
        }
        let listener = given ?? PostgresListener(settings: configuration.pool.connection, logger: logger)
        func relay(_ outbox: OutboxKind, _ publisher: any OutboxPublishing, onStop: @escaping @Sendable () async -> Void) -> ServiceGroupConfiguration.ServiceConfiguration {
            var relay = RelayService(
                outbox: outbox, owner: brokers.relayID, store: store, publisher: publisher, listener: listener, logger: logger, metrics: metrics, onStop: onStop)
            relay.batchSize = configuration.relayBatchSize
            relay.pipelineDepth = configuration.relayPipelineDepth
            relay.gatherDelay = configuration.relayGatherDelay
            return .init(service: relay)
        }
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [.init(service: OwnerLockService(lock: lock, logger: logger))]
        if brokers.relayOutboxes.contains(.kafka) {
            let producer = try KafkaProducer(configuration: brokers.kafka, logger: logger)
            services.append(relay(.kafka, producer) { await producer.shutdown() })
        }
        if relaysServiceBus, let serviceBus = brokers.serviceBus {
            let sender = try ServiceBusSender(configuration: serviceBus, logger: logger)
            services.append(relay(.serviceBus, sender) { await sender.shutdown() })
        }
        if let reconciler = configuration.reconciler {
            services.append(.init(service: ReconcilerService(configuration: reconciler, store: store, logger: logger, metrics: metrics)))
        }
        return (services, listener)
    }

    static func consumerService(brokers: BrokerConfiguration, store: any StorePerforming, logger: Logger, metrics: PipelineMetrics) throws -> ConsumerService {
        // Poison records are copied one at a time: no producer for batches.
        let deadLetters = try KafkaProducer(configuration: brokers.kafka, forBatches: false, logger: logger)
        return ConsumerService(configuration: brokers.kafka, store: store, deadLetters: deadLetters, logger: logger, metrics: metrics)
    }
}

/// Holds the `RELAY_ID` lock while the relays run: checks it every few seconds (taking it again after a database
/// restart) and stops the process if another process has taken it meanwhile; releases it at shutdown.
struct OwnerLockService: Service {
    let lock: OwnerLock
    let logger: Logger

    func run() async throws {
        defer { lock.release() }
        while !Task.isShuttingDownGracefully {
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: .seconds(5)) }
            guard !Task.isShuttingDownGracefully else { break }
            do {
                if try await !lock.verify() {
                    logger.critical("Another process took the lock of RELAY_ID \(lock.owner) while this one's database session was down; stopping")
                    throw OwnerLock.Refusal(owner: lock.owner)
                }
            } catch let error as PostgresError {
                // The database is down: nobody else can take the lock meanwhile without us noticing afterwards.
                logger.debug("RELAY_ID lock not checked", metadata: ["db.error": "\(error.message)"])
            }
        }
    }
}

/// Closes a connection-owning helper (the LISTEN connection, the notifier) at graceful shutdown, after the services
/// that use it; on a thread of its own, since closing waits for the helper's thread.
struct CloseOnShutdown: Service {
    let close: @Sendable () -> Void
    func run() async throws {
        try? await gracefulShutdown()
        await DedicatedThread.run("pg-close", close)
    }
}

struct Relay: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the outbox relays: Kafka outbox → Kafka topic, Service Bus outbox → Service Bus queue.",
        discussion: BrokerBootstrap.help + "\n\nStops gracefully on SIGTERM or SIGINT."
    )

    func run() async throws {
        let configuration = try Bootstrap.configuration()
        let brokers = try BrokerBootstrap.brokers(needsServiceBus: false, role: "relay")
        let logger = Bootstrap.logger("orderpipeline.relay", level: configuration.logLevel)
        let metrics = PipelineMetrics()
        metrics.bootstrapMetricsSystem()
        let store = PostgresStore(configuration: configuration.pool(for: .relay), logger: logger)
        let (relays, listener) = try await BrokerBootstrap.relayServices(configuration: configuration, brokers: brokers, store: store, logger: logger, metrics: metrics)
        if brokers.serviceBus == nil { logger.warning("SERVICEBUS_CONNECTION_STRING is not set: only the Kafka outbox is relayed") }
        logger.info("Relaying", metadata: ["relay.outboxes": "\(brokers.relayOutboxes.map(\.rawValue).joined(separator: ","))"])
        let endpoint = try MetricsEndpoint.service(environment: ProcessInfo.processInfo.environment, metrics: metrics, store: store, logger: logger)
        // The metrics endpoint stops first, the pool last.
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: DatabaseService(store: store, logger: logger)), .init(service: CloseOnShutdown(close: listener.close))] + relays
                    + (endpoint.map { [$0] } ?? []),
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            ))
        try await group.run()
    }
}

struct Consume: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the fulfilment consumer: Kafka topic → fulfilment transaction (inbox, status, Service Bus outbox).",
        discussion: BrokerBootstrap.help + "\n\nStops gracefully on SIGTERM or SIGINT."
    )

    func run() async throws {
        let configuration = try Bootstrap.configuration()
        let brokers = try BrokerBootstrap.brokers(needsServiceBus: false, role: "consume")
        let logger = Bootstrap.logger("orderpipeline.consume", level: configuration.logLevel)
        let metrics = PipelineMetrics()
        metrics.bootstrapMetricsSystem()
        // Fulfilments do not NOTIFY inside their transactions (see `PostgresNotifier`): the notifier wakes the relays.
        var pool = configuration.pool(for: .consumer)
        pool.connection.notifiesOutbox = false
        let store = PostgresStore(configuration: pool, logger: logger)
        let notifier = PostgresNotifier(settings: configuration.pool.connection, logger: logger)
        let consumer = try BrokerBootstrap.consumerService(
            brokers: brokers, store: OutboxWakingStore(store: store, wake: notifier.notify), logger: logger, metrics: metrics)
        let endpoint = try MetricsEndpoint.service(environment: ProcessInfo.processInfo.environment, metrics: metrics, store: store, logger: logger)
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: DatabaseService(store: store, logger: logger)), .init(service: CloseOnShutdown(close: notifier.close)), .init(service: consumer)]
                    + (endpoint.map { [$0] } ?? []),
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            ))
        try await group.run()
    }
}

struct All: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the whole pipeline in one process (development): API, both relays and the consumer.",
        discussion: BrokerBootstrap.help + "\n\nStops gracefully on SIGTERM or SIGINT."
    )

    func run() async throws {
        let configuration = try Bootstrap.configuration()
        let brokers = try BrokerBootstrap.brokers(needsServiceBus: true, role: "all")
        let logger = Bootstrap.logger("orderpipeline", level: configuration.logLevel)
        let metrics = PipelineMetrics()
        metrics.bootstrapMetricsSystem()
        // One pool per role: the relays' claims and the consumer's fulfilments never queue behind the POSTs. The API's
        // and the consumer's sessions do not NOTIFY (each notifying commit holds one database-wide lock through its
        // WAL flush): their committed outbox writes wake the relays of this process directly, and those of other
        // processes through the coalescing notifier.
        var apiPool = configuration.pool(for: .api), consumerPool = configuration.pool(for: .consumer)
        apiPool.connection.notifiesOutbox = false
        consumerPool.connection.notifiesOutbox = false
        let store = PostgresStore(configuration: apiPool, logger: logger)
        let relayStore = PostgresStore(configuration: configuration.pool(for: .relay), logger: logger)
        let consumerStore = PostgresStore(configuration: consumerPool, logger: logger)
        // This process's relays are woken directly; the NOTIFYs serve only relays of other processes, so they are
        // spaced further apart (measured at 1,000 orders/s: 0.3–0.4 notify transactions per order at 1 ms).
        let notifier = PostgresNotifier(settings: configuration.pool.connection, logger: logger, minimumInterval: .milliseconds(20))
        let wakes = PostgresListener(settings: configuration.pool.connection, logger: logger) { $0 == notifier.sessionPID }
        let wake: @Sendable (OutboxKind) -> Void = { kind in
            wakes.wake(kind)
            notifier.notify(kind)
        }
        let shell = IntakeShell(store: OutboxWakingStore(store: store, wake: wake), configuration: configuration.intake, logger: logger, metrics: metrics)
        let api = OrderAPI(shell: shell, reads: store, metrics: metrics)
        let router = api.makeRouter()
        // The consumer of this process keeps its per-partition lag in the metrics registry.
        try Bootstrap.livePage(store: store, consumerLag: { LivePage.consumerLag(prometheus: metrics.render()) }).register(on: router)
        let app = Application(
            responder: EventLoopAffinity(router.buildResponder()),
            configuration: .init(address: .hostname(configuration.httpHost, port: configuration.httpPort), serverName: "orderpipeline"),
            logger: logger
        )
        let (relays, listener) = try await BrokerBootstrap.relayServices(
            configuration: configuration, brokers: brokers, store: relayStore, logger: logger, metrics: metrics, listener: wakes)
        let consumer = try BrokerBootstrap.consumerService(
            brokers: brokers, store: OutboxWakingStore(store: consumerStore, wake: wake), logger: logger, metrics: metrics)
        logger.info(
            "Starting the pipeline",
            metadata: [
                "http.address": "\(configuration.httpHost):\(configuration.httpPort)", "db.url": "\(configuration.redactedDatabaseURL)",
                "kafka.brokers": "\(brokers.kafka.brokers)", "kafka.topic": "\(brokers.kafka.topic)",
                "servicebus.endpoint": "\(brokers.serviceBus?.redactedDescription ?? "-")",
            ])
        // Services stop in reverse order: API first, then consumer and relays, then LISTEN and the pools.
        let group = ServiceGroup(
            configuration: .init(
                services: [store, relayStore, consumerStore].map { ServiceGroupConfiguration.ServiceConfiguration(service: DatabaseService(store: $0, logger: logger)) }
                    + [.init(service: CloseOnShutdown(close: listener.close)), .init(service: CloseOnShutdown(close: notifier.close))] + relays + [
                        .init(service: consumer), .init(service: app),
                    ],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            ))
        try await group.run()
        logger.info("Stopped")
    }
}
