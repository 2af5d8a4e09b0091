import Logging
import OrderPipelineCore
import OrderPipelineKafka
import OrderPipelinePostgres
import OrderPipelineServiceBus
import Prometheus
import ServiceLifecycle
import Synchronization

/// Sends a relay's batch to its broker; one outcome per message.
public protocol OutboxPublishing: Sendable {
    func publish(_ messages: [OutboxMessage]) async -> [PublishOutcome]
}

extension KafkaProducer: OutboxPublishing {}
extension ServiceBusSender: OutboxPublishing {}

/// Counters of the relays and the consumer, in the pipeline's Prometheus registry.
public final class BrokerMetrics: Sendable {
    let published: [OutboxKind: Prometheus.Counter]
    let retried: [OutboxKind: Prometheus.Counter]
    let deadLettered: [OutboxKind: Prometheus.Counter]
    let consumed: Prometheus.Counter
    let fulfilled: Prometheus.Counter
    let duplicates: Prometheus.Counter
    let poison: Prometheus.Counter
    let registry: PrometheusCollectorRegistry

    func setLag(partition: Int32, _ lag: Int64) {
        registry.makeGauge(name: "orderpipeline_consumer_lag", labels: [("partition", String(partition))], help: "Records behind the high watermark").set(Double(lag))
    }

    public init(registry: PrometheusCollectorRegistry) {
        self.registry = registry
        var published: [OutboxKind: Prometheus.Counter] = [:]
        var retried: [OutboxKind: Prometheus.Counter] = [:]
        var deadLettered: [OutboxKind: Prometheus.Counter] = [:]
        for kind in OutboxKind.allCases {
            published[kind] = registry.makeCounter(name: "orderpipeline_outbox_published_total", labels: [("outbox", kind.rawValue)], help: "Outbox rows acknowledged by the broker")
            retried[kind] = registry.makeCounter(name: "orderpipeline_outbox_publish_failures_total", labels: [("outbox", kind.rawValue)], help: "Publishes that failed or had an unknown outcome (retried)")
            deadLettered[kind] = registry.makeCounter(name: "orderpipeline_outbox_dead_lettered_total", labels: [("outbox", kind.rawValue)], help: "Outbox rows the broker refused for good")
        }
        self.published = published
        self.retried = retried
        self.deadLettered = deadLettered
        consumed = registry.makeCounter(name: "orderpipeline_consumer_records_total", help: "Kafka records handled by the fulfilment consumer")
        fulfilled = registry.makeCounter(name: "orderpipeline_orders_fulfilled_total", help: "Orders moved to Fulfilled")
        duplicates = registry.makeCounter(name: "orderpipeline_consumer_duplicates_total", help: "Redelivered events found in the inbox")
        poison = registry.makeCounter(name: "orderpipeline_consumer_poison_total", help: "Undecodable records sent to the dead letters")
    }
}

/// The production shell of a machine: one loop feeds it inputs (results of its effects, timers, wakes, the
/// consumer group's assignments) one at a time and performs the effects it returns. It makes no decision.
final class MachineLoop: Sendable {
    let inputs: AsyncStream<Input>
    let continuation: AsyncStream<Input>.Continuation
    private let timers = Mutex<[TimerID: Task<Void, Never>]>([:])

    init() {
        (inputs, continuation) = AsyncStream.makeStream(of: Input.self)
    }

    func yield(_ input: Input) { continuation.yield(input) }

    func setTimer(_ id: TimerID, at instant: Instant) {
        let delay = instant - WallClock.now()
        let task = Task { [continuation] in
            if delay > .zero { try? await Task.sleep(for: delay) }
            guard !Task.isCancelled else { return }
            continuation.yield(.timer(id))
        }
        let previous = timers.withLock { timers in
            defer { timers[id] = task }
            return timers[id]
        }
        previous?.cancel()
    }

    func cancelTimer(_ id: TimerID) {
        timers.withLock { $0.removeValue(forKey: id) }?.cancel()
    }

    func finish() {
        continuation.finish()
        let all = timers.withLock { timers in
            defer { timers = [:] }
            return Array(timers.values)
        }
        for task in all { task.cancel() }
    }

    /// Runs `machine` until graceful shutdown; `perform` handles every effect but timers.
    func run<M: PipelineMachine>(_ machine: inout M, perform: (Effect) -> Void) async {
        yield(.start)
        await withGracefulShutdownHandler {
            for await input in inputs {
                for effect in machine.handle(input, now: WallClock.now()) {
                    switch effect {
                    case let .setTimer(id, at): setTimer(id, at: at)
                    case let .cancelTimer(id): cancelTimer(id)
                    default: perform(effect)
                    }
                }
            }
        } onGracefulShutdown: {
            self.finish()
        }
        finish()
    }
}

/// Runs `OutboxRelay` for one outbox: PostgreSQL for the store, Kafka or Service Bus for the publishes, woken by
/// the outbox trigger's NOTIFY (with the machine's fallback poll).
public struct RelayService: Service {
    let outbox: OutboxKind
    let owner: String
    let store: any StorePerforming
    let publisher: any OutboxPublishing
    let listener: PostgresListener?
    let logger: Logger
    let metrics: BrokerMetrics?
    let onStop: @Sendable () async -> Void

    public init(
        outbox: OutboxKind, owner: String, store: any StorePerforming, publisher: any OutboxPublishing, listener: PostgresListener?,
        logger: Logger, metrics: BrokerMetrics? = nil, onStop: @escaping @Sendable () async -> Void = {}
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
        let loop = MachineLoop()
        var relay = OutboxRelay(configuration: .init(outbox: outbox, owner: "\(owner)-\(outbox.rawValue)"), seed: UInt64.random(in: 0...UInt64.max))
        let wakes = listener.map { listener in
            Task { for await _ in listener.wakes(for: outbox) { loop.yield(.wake) } }
        }
        logger.info("Outbox relay started", metadata: ["outbox": "\(outbox.rawValue)", "relay.owner": "\(relay.configuration.owner)"])
        await loop.run(&relay) { effect in
            switch effect {
            case let .store(ticket, command):
                Task { loop.yield(.stored(ticket, await store.perform(command))) }
            case let .publish(ticket, _, rows):
                Task { loop.yield(.published(ticket, await publisher.publish(rows))) }
            case .note(let note):
                observe(note)
            default:
                logger.debug("relay effect ignored", metadata: ["effect": "\(effect)"])
            }
        }
        wakes?.cancel()
        await onStop()
        logger.info("Outbox relay stopped", metadata: ["outbox": "\(outbox.rawValue)"])
    }

    private func observe(_ note: Note) {
        switch note {
        case .published(_, let row):
            metrics?.published[outbox]?.increment()
            logger.debug("Outbox row published", metadata: ["outbox": "\(outbox.rawValue)", "outbox.sequence": "\(row.sequence)", "order.id": "\(row.event.orderID)"])
        case let .publishRetry(_, sequence, reason):
            metrics?.retried[outbox]?.increment()
            logger.warning("Publish will be retried", metadata: ["outbox": "\(outbox.rawValue)", "outbox.sequence": "\(sequence)", "error": "\(reason)"])
        case let .deadLettered(_, sequence, reason):
            metrics?.deadLettered[outbox]?.increment()
            logger.error("Outbox row dead-lettered", metadata: ["outbox": "\(outbox.rawValue)", "outbox.sequence": "\(sequence)", "error": "\(reason)"])
        case let .leaseLost(_, rows):
            logger.warning("Lease lost: another relay took over rows", metadata: ["outbox": "\(outbox.rawValue)", "rows": "\(rows)"])
        case .storeRetry(let what), .unknownOutcome(let what):
            logger.warning("Store call will be retried", metadata: ["outbox": "\(outbox.rawValue)", "store.step": "\(what)"])
        default:
            logger.debug("note", metadata: ["note": "\(note)"])
        }
    }
}

/// Runs `FulfilmentConsumer`: Kafka group consumer for fetch/commit/assignments, PostgreSQL for the fulfilment
/// transaction, the Kafka producer for the dead-letter topic.
public struct ConsumerService: Service {
    let configuration: KafkaConfiguration
    let store: any StorePerforming
    let deadLetters: KafkaProducer
    let logger: Logger
    let metrics: BrokerMetrics?

    public init(configuration: KafkaConfiguration, store: any StorePerforming, deadLetters: KafkaProducer, logger: Logger, metrics: BrokerMetrics? = nil) {
        self.configuration = configuration
        self.store = store
        self.deadLetters = deadLetters
        self.logger = logger
        self.metrics = metrics
    }

    public func run() async throws {
        let loop = MachineLoop()
        let consumer = try KafkaConsumer(configuration: configuration, logger: logger, sink: { loop.yield($0) })
        var machineConfiguration = FulfilmentConsumer.Configuration()
        machineConfiguration.topic = configuration.topic
        var machine = FulfilmentConsumer(configuration: machineConfiguration, seed: UInt64.random(in: 0...UInt64.max))
        let lagReporter = metrics.map { metrics in
            Task {
                while !Task.isCancelled {
                    for (partition, lag) in consumer.lag { metrics.setLag(partition: partition, lag) }
                    try? await Task.sleep(for: .seconds(2))
                }
            }
        }
        defer { lagReporter?.cancel() }
        await loop.run(&machine) { effect in
            switch effect {
            case let .store(ticket, command):
                Task { loop.yield(.stored(ticket, await store.perform(command))) }
            case let .fetch(ticket, max):
                consumer.fetch(ticket, max: max)
            case let .commitOffsets(ticket, offsets, generation):
                consumer.commit(ticket, offsets, generation: generation)
            case let .forwardDeadLetter(ticket, record, reason):
                Task { loop.yield(.published(ticket, [await deadLetters.forward(record, reason: reason)])) }
            case .note(let note):
                observe(note)
            default:
                logger.debug("consumer effect ignored", metadata: ["effect": "\(effect)"])
            }
        }
        await consumer.shutdown()
        await deadLetters.shutdown()
        logger.info("Fulfilment consumer stopped")
    }

    private func observe(_ note: Note) {
        switch note {
        case .consumed:
            metrics?.consumed.increment()
        case .fulfilled(let order):
            metrics?.fulfilled.increment()
            logger.info("Order \(order) fulfilled", metadata: ["order.id": "\(order)"])
        case .redeliveryDeduplicated(let event):
            metrics?.duplicates.increment()
            logger.info("Redelivered event already handled", metadata: ["event.id": "\(event)"])
        case let .skipped(order, status):
            logger.info("Order not fulfilled: not pending", metadata: ["order.id": "\(order)", "order.status": "\(status.rawValue)"])
        case let .poison(record, reason):
            metrics?.poison.increment()
            logger.error("Poison record sent to the dead letters", metadata: [
                "kafka.partition": "\(record.partition)", "kafka.offset": "\(record.offset)", "error": "\(reason)",
            ])
        case .offsetsFenced:
            logger.info("Offset commit fenced by a rebalance; the new owner redoes the work")
        case .storeRetry(let what), .unknownOutcome(let what):
            logger.warning("Will retry", metadata: ["step": "\(what)"])
        default:
            logger.debug("note", metadata: ["note": "\(note)"])
        }
    }
}
