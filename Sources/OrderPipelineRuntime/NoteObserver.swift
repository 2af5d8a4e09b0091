import Logging
import Metrics
import OrderPipelineCore

/// The one mapping of the machines' notes to logs and metrics, for every role. (The simulator maps the same
/// notes to its recovery counts and history.)
///
/// Logs: constant messages with dotted metadata keys; per-record lines at debug. Metrics: the swift-metrics API,
/// through the factory of the pipeline's registry (the binary bootstraps the same factory globally).
public struct NoteObserver: Sendable {
    let logger: Logger
    let published: [OutboxKind: Counter]
    let retried: [OutboxKind: Counter]
    let deadLettered: [OutboxKind: Counter]
    let leasesLost: [OutboxKind: Counter]
    let ordersCreated: Counter
    let ordersReplayed: Counter
    let consumed: Counter
    let fulfilled: Counter
    let duplicates: Counter
    let poison: Counter
    let deadLetterCopiesSkipped: Counter
    let storeRetries: Counter
    let unknownOutcomes: Counter
    let requestsShed: Counter
    let unexpected: Counter
    let reannounced: Counter

    public init(logger: Logger, metrics: PipelineMetrics) {
        self.logger = logger
        let factory = metrics.factory
        func perOutbox(_ label: String) -> [OutboxKind: Counter] {
            var counters: [OutboxKind: Counter] = [:]
            for kind in OutboxKind.allCases { counters[kind] = Counter(label: label, dimensions: [("outbox", kind.rawValue)], factory: factory) }
            return counters
        }
        published = perOutbox("orderpipeline_outbox_published_total")
        retried = perOutbox("orderpipeline_outbox_publish_failures_total")
        deadLettered = perOutbox("orderpipeline_outbox_dead_lettered_total")
        leasesLost = perOutbox("orderpipeline_outbox_leases_lost_total")
        ordersCreated = Counter(label: "orderpipeline_orders_created_total", factory: factory)
        ordersReplayed = Counter(label: "orderpipeline_orders_replayed_total", factory: factory)
        consumed = Counter(label: "orderpipeline_consumer_records_total", factory: factory)
        fulfilled = Counter(label: "orderpipeline_orders_fulfilled_total", factory: factory)
        duplicates = Counter(label: "orderpipeline_consumer_duplicates_total", factory: factory)
        poison = Counter(label: "orderpipeline_consumer_poison_total", factory: factory)
        deadLetterCopiesSkipped = Counter(label: "orderpipeline_dead_letter_topic_copies_skipped_total", factory: factory)
        storeRetries = Counter(label: "orderpipeline_store_retries_total", factory: factory)
        unknownOutcomes = Counter(label: "orderpipeline_store_unknown_outcomes_total", factory: factory)
        requestsShed = Counter(label: "orderpipeline_requests_shed_total", factory: factory)
        unexpected = Counter(label: "orderpipeline_unexpected_total", factory: factory)
        reannounced = Counter(label: "orderpipeline_orders_reannounced_total", factory: factory)
    }

    public func observe(_ note: Note) {
        switch note {
        case let .orderAccepted(id, replayed):
            (replayed ? ordersReplayed : ordersCreated).increment()
            logger.info(replayed ? "Order replayed for a retried request" : "Order created and outbox message queued", metadata: ["order.id": "\(id)"])
        case let .published(channel, row):
            published[channel.outbox]?.increment()
            logger.debug(
                "Outbox row published",
                metadata: [
                    "outbox": "\(channel.outbox.rawValue)", "outbox.sequence": "\(row.sequence)", "order.id": "\(row.event.orderID)", "event.type": "\(row.event.type.rawValue)",
                ])
        case let .publishRetry(channel, sequence, reason):
            retried[channel.outbox]?.increment()
            logger.warning("Publish will be retried", metadata: ["outbox": "\(channel.outbox.rawValue)", "outbox.sequence": "\(sequence)", "error": "\(reason)"])
        case let .deadLettered(channel, sequence, reason):
            deadLettered[channel.outbox]?.increment()
            logger.error("Outbox row dead-lettered", metadata: ["outbox": "\(channel.outbox.rawValue)", "outbox.sequence": "\(sequence)", "error": "\(reason)"])
        case let .leaseLost(kind, rows):
            leasesLost[kind]?.increment(by: rows)
            logger.warning("Lease lost: another relay took over rows", metadata: ["outbox": "\(kind.rawValue)", "outbox.rows": "\(rows)"])
        case let .consumed(record):
            consumed.increment()
            logger.debug("Record consumed", metadata: ["kafka.partition": "\(record.partition)", "kafka.offset": "\(record.offset)"])
        case let .fulfilled(order):
            fulfilled.increment()
            logger.debug("Order fulfilled", metadata: ["order.id": "\(order)"])
        case let .redeliveryDeduplicated(event):
            duplicates.increment()
            logger.debug("Redelivered event already handled", metadata: ["event.id": "\(event)"])
        case let .skipped(order, status):
            logger.info("Order not fulfilled: not pending", metadata: ["order.id": "\(order)", "order.status": "\(status.rawValue)"])
        case let .poison(record, reason):
            poison.increment()
            logger.error(
                "Poison record sent to the dead letters",
                metadata: [
                    "kafka.partition": "\(record.partition)", "kafka.offset": "\(record.offset)", "error": "\(reason)",
                ])
        case let .deadLetterCopySkipped(record, reason):
            deadLetterCopiesSkipped.increment()
            logger.error(
                "Dead-letter topic refused a poison record; it is kept in the dead-letters table only",
                metadata: [
                    "kafka.partition": "\(record.partition)", "kafka.offset": "\(record.offset)", "error": "\(reason)",
                ])
        case let .storeRetry(step):
            storeRetries.increment()
            logger.warning("Step failed; retrying after a backoff", metadata: ["step": "\(step)"])
        case let .unknownOutcome(step):
            unknownOutcomes.increment()
            logger.warning("Outcome unknown; re-issuing the same idempotent step", metadata: ["step": "\(step)"])
        case let .requestShed(step):
            requestsShed.increment()  // the HTTP shell logs the 503 itself
            logger.debug("Request refused at once: too many waiting for the database", metadata: ["step": "\(step)"])
        case .offsetsFenced:
            logger.info("Offset commit fenced by a rebalance; the new owner redoes the work")
        case let .reannounced(orders):
            reannounced.increment(by: orders.count)
            logger.warning(
                "Overdue orders re-announced: published but not fulfilled in time (broker data loss?)",
                metadata: [
                    "orders.count": "\(orders.count)", "order.ids": "\(orders.prefix(10).map(\.description).joined(separator: ","))",
                ])
        case let .unexpected(what):
            unexpected.increment()
            logger.error("Unexpected machine input; recovered", metadata: ["detail": "\(what)"])
        }
    }
}

extension Channel {
    /// The outbox a channel is fed from (dead letters are counted with the Kafka outbox's broker).
    var outbox: OutboxKind { self == .fulfilment ? .serviceBus : .kafka }
}
