import Metrics
import OrderPipelineCore
import Prometheus

/// The pipeline's own metrics, in one Prometheus registry that `/metrics` renders. The binary also bootstraps
/// swift-metrics with this registry, so library metrics (Hummingbird's request counters and latency
/// histograms) land in it too.
public final class PipelineMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    public let ordersCreated: Prometheus.Counter
    public let ordersReplayed: Prometheus.Counter
    public let unknownOutcomes: Prometheus.Counter
    private let pending: [OutboxKind: Prometheus.Gauge]
    private let oldest: [OutboxKind: Prometheus.Gauge]

    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
        ordersCreated = registry.makeCounter(name: "orderpipeline_orders_created_total", help: "Orders accepted (201)")
        ordersReplayed = registry.makeCounter(name: "orderpipeline_orders_replayed_total", help: "Retried creates answered with the stored order")
        unknownOutcomes = registry.makeCounter(name: "orderpipeline_store_unknown_outcomes_total", help: "Transactions whose COMMIT outcome was unknown")
        var pending: [OutboxKind: Prometheus.Gauge] = [:]
        var oldest: [OutboxKind: Prometheus.Gauge] = [:]
        for kind in OutboxKind.allCases {
            pending[kind] = registry.makeGauge(name: "orderpipeline_outbox_pending", labels: [("outbox", kind.rawValue)], help: "Unpublished, not dead-lettered outbox rows")
            oldest[kind] = registry.makeGauge(name: "orderpipeline_outbox_oldest_unpublished_age_seconds", labels: [("outbox", kind.rawValue)], help: "Age of the oldest unpublished outbox row")
        }
        self.pending = pending
        self.oldest = oldest
    }

    public func setOutbox(_ kind: OutboxKind, pending count: Int, oldestAgeSeconds: Double) {
        pending[kind]?.set(Double(count))
        oldest[kind]?.set(oldestAgeSeconds)
    }

    /// Prometheus text exposition format.
    public func render() -> [UInt8] { registry.emitToBuffer() }

    /// Routes swift-metrics (used by Hummingbird and other libraries) into this registry. Once per process.
    public func bootstrapMetricsSystem() {
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
    }
}
