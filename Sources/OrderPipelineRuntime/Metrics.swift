import Metrics
import OrderPipelineCore
import Prometheus

/// The pipeline's own metrics, in one Prometheus registry that `/metrics` renders. The binary also bootstraps
/// swift-metrics with this registry, so library metrics (Hummingbird's request counters and latency
/// histograms) land in it too.
public final class PipelineMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    /// swift-metrics' view of the registry: the pipeline's own counters are made through it (`NoteObserver`).
    public let factory: PrometheusMetricsFactory
    private let pending: [OutboxKind: Prometheus.Gauge]
    private let oldest: [OutboxKind: Prometheus.Gauge]

    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
        factory = PrometheusMetricsFactory(registry: registry)
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
        MetricsSystem.bootstrap(factory)
    }
}
