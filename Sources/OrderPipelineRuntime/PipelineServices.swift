import Logging
import Metrics
import OrderPipelineCore
import OrderPipelineKafka
import OrderPipelinePostgres
import ServiceLifecycle
import Tracing

/// Runs `OutboxRelay` for one outbox: PostgreSQL for the store, Kafka or Service Bus for the publishes, woken by
/// the outbox trigger's NOTIFY (with the machine's fallback poll).
public struct RelayService: Service {
    let outbox: OutboxKind
    let owner: String
    let store: any StorePerforming
    let publisher: any OutboxPublishing
    let listener: PostgresListener?
    let logger: Logger
    let metrics: PipelineMetrics
    let onStop: @Sendable () async -> Void
    /// Rows per claim and batches in the air (`RELAY_BATCH_SIZE`, `RELAY_PIPELINE_DEPTH`); nil: the machine's defaults.
    public var batchSize: Int?
    public var pipelineDepth: Int?
    /// A claim's wait under load (`RELAY_GATHER_MS`); nil: the machine's default.
    public var gatherDelay: Duration?
    /// Records a producer span per published row (`TracedPublisher`).
    public var tracer: any Tracer = InstrumentationSystem.tracer

    public init(
        outbox: OutboxKind, owner: String, store: any StorePerforming, publisher: any OutboxPublishing, listener: PostgresListener?,
        logger: Logger, metrics: PipelineMetrics = PipelineMetrics(), onStop: @escaping @Sendable () async -> Void = {}
    ) {
        self.outbox = outbox
        self.owner = owner
        self.store = store
        self.publisher = publisher
        self.listener = listener
        self.logger = logger
        self.metrics = metrics
        self.onStop = onStop
    }

    public func run() async throws {
        let loop = MachineLoop(name: "relay-\(outbox.rawValue)")
        var configuration = OutboxRelay.Configuration(outbox: outbox, owner: "\(owner)-\(outbox.rawValue)")
        if let batchSize { configuration.batchSize = batchSize }
        if let pipelineDepth { configuration.pipelineDepth = pipelineDepth }
        if let gatherDelay { configuration.gatherDelay = gatherDelay }
        let relay = OutboxRelay(configuration: configuration, seed: UInt64.random(in: 0...UInt64.max))
        var logger = logger
        logger[metadataKey: "outbox"] = "\(outbox.rawValue)"
        logger.info(
            "Outbox relay started",
            metadata: [
                "relay.owner": "\(relay.configuration.owner)", "relay.batch_size": "\(configuration.batchSize)",
                "relay.pipeline_depth": "\(configuration.pipelineDepth)", "relay.gather_ms": "\(configuration.gatherDelay.milliseconds)",
            ])
        await withDiscardingTaskGroup { group in
            if let listener {
                group.addTask { for await _ in listener.wakes(for: outbox) { loop.deliver(.wake) } }
            }
            await loop.run(
                relay, performers: Performers(store: store, publisher: TracedPublisher(publisher, outbox: outbox, tracer: tracer)),
                observer: NoteObserver(logger: logger, metrics: metrics))
            group.cancelAll()
        }
        await onStop()
        logger.info("Outbox relay stopped")
    }
}

/// Runs `Reconciler`: every interval, re-announce orders published but still Pending long after (broker data loss).
public struct ReconcilerService: Service {
    let configuration: Reconciler.Configuration
    let store: any StorePerforming
    let logger: Logger
    let metrics: PipelineMetrics

    public init(configuration: Reconciler.Configuration, store: any StorePerforming, logger: Logger, metrics: PipelineMetrics = PipelineMetrics()) {
        self.configuration = configuration
        self.store = store
        self.logger = logger
        self.metrics = metrics
    }

    public func run() async throws {
        logger.info(
            "Reconciler started",
            metadata: [
                "reconciler.overdue_after_seconds": "\(configuration.overdueAfter.microseconds / 1_000_000)",
                "reconciler.interval_seconds": "\(configuration.interval.microseconds / 1_000_000)",
            ])
        await MachineLoop().run(Reconciler(configuration: configuration), performers: Performers(store: store), observer: NoteObserver(logger: logger, metrics: metrics))
        logger.info("Reconciler stopped")
    }
}

/// Runs `FulfilmentConsumer`: Kafka group consumer for fetch/commit/assignments, PostgreSQL for the fulfilment
/// transaction, the Kafka producer for the dead-letter topic.
public struct ConsumerService: Service {
    let configuration: KafkaConfiguration
    let store: any StorePerforming
    let deadLetters: KafkaProducer
    let logger: Logger
    let metrics: PipelineMetrics
    /// Records a consumer span per record of the fulfilment transaction (`TracedFulfilmentStore`).
    public var tracer: any Tracer = InstrumentationSystem.tracer

    public init(configuration: KafkaConfiguration, store: any StorePerforming, deadLetters: KafkaProducer, logger: Logger, metrics: PipelineMetrics = PipelineMetrics()) {
        self.configuration = configuration
        self.store = store
        self.deadLetters = deadLetters
        self.logger = logger
        self.metrics = metrics
    }

    public func run() async throws {
        let loop = MachineLoop(name: "consumer")
        loop.progress.awaitAssignment()  // `/health/live`: a member the group never assigns is not live
        let consumer = try KafkaConsumer(configuration: configuration, logger: logger, sink: { loop.deliver($0) })
        var machineConfiguration = FulfilmentConsumer.Configuration()
        machineConfiguration.topic = configuration.topic
        let machine = FulfilmentConsumer(configuration: machineConfiguration, seed: UInt64.random(in: 0...UInt64.max))
        let performers = Performers(store: TracedFulfilmentStore(store, tracer: tracer), deadLetters: deadLetters, group: consumer)
        await withDiscardingTaskGroup { group in
            group.addTask { await reportLag(of: consumer) }
            await loop.run(machine, performers: performers, observer: NoteObserver(logger: logger, metrics: metrics))
            group.cancelAll()
        }
        await consumer.shutdown()
        await deadLetters.shutdown()
        logger.info("Fulfilment consumer stopped")
    }

    /// Records behind the high watermark per partition, counted from the committed offset, every 2 s. A partition
    /// that is no longer assigned (or whose committed offset is not known) loses its gauge: no stale value.
    private func reportLag(of consumer: KafkaConsumer) async {
        var shown: Set<Int32> = []
        func gauge(_ partition: Int32) -> Gauge {
            Gauge(label: "orderpipeline_consumer_lag", dimensions: [("partition", String(partition))], factory: metrics.factory)
        }
        while !Task.isCancelled {
            let lag = consumer.lag
            for partition in shown.subtracting(lag.keys) { gauge(partition).destroy() }
            for (partition, records) in lag { gauge(partition).record(records) }
            shown = Set(lag.keys)
            try? await Task.sleep(for: .seconds(2))
        }
    }
}

/// A store whose committed writes of outbox rows wake the relays — this process's through its listener (`all`),
/// other processes' through a coalesced NOTIFY (`PostgresNotifier`) — for sessions that do not NOTIFY inside their
/// transactions (`PostgresConnection.Settings.notifiesOutbox`). A spurious wake costs one claim; a missed one, the
/// relay's fallback poll.
public struct OutboxWakingStore: StorePerforming {
    let store: any StorePerforming
    let wake: @Sendable (OutboxKind) -> Void

    public init(store: any StorePerforming, wake: @escaping @Sendable (OutboxKind) -> Void) {
        self.store = store
        self.wake = wake
    }

    public func perform(_ command: StoreCommand) async -> StoreResult {
        let result = await store.perform(command)
        wakeAfter(command, result)
        return result
    }

    public func perform(_ command: StoreCommand, then completion: @escaping @Sendable (StoreResult) -> Void) {
        store.perform(command) { result in
            wakeAfter(command, result)
            completion(result)
        }
    }

    private func wakeAfter(_ command: StoreCommand, _ result: StoreResult) {
        guard case .committed(let reply) = result else { return }
        for kind in Self.outboxesWritten(by: command, reply) { wake(kind) }
    }

    /// The outboxes a committed command may have written rows to (the recipes in `Effects/Store.swift`).
    static func outboxesWritten(by command: StoreCommand, _ reply: StoreReply) -> [OutboxKind] {
        switch (command, reply) {
        case (.createOrders, .ordersCreated(let outcomes)) where outcomes.contains(where: \.isCreated): [.kafka]
        case (.transition(let t), .transitioned): t.to == .fulfilled ? [.kafka, .serviceBus] : [.kafka]
        case (.fulfil, .fulfilments(let outcomes)) where outcomes.contains(.fulfilled): [.serviceBus]
        case (.reannounceOverdue, .reannounced(let orders)) where !orders.isEmpty: [.kafka]
        default: []
        }
    }
}
