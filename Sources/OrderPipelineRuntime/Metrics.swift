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

    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
        factory = PrometheusMetricsFactory(registry: registry)
    }

    public func setOutbox(_ kind: OutboxKind, pending count: Int, oldestAgeSeconds: Double) {
        pendingGauge(kind).set(Double(count))
        oldestGauge(kind).set(oldestAgeSeconds)
    }

    /// The outbox could not be read: its gauges disappear until the next successful read (a stale value would
    /// claim the outbox was fine).
    public func forgetOutbox(_ kind: OutboxKind) {
        registry.unregisterGauge(pendingGauge(kind))
        registry.unregisterGauge(oldestGauge(kind))
    }

    // The registry hands back the same gauge for the same name and labels.
    private func pendingGauge(_ kind: OutboxKind) -> Prometheus.Gauge {
        registry.makeGauge(name: "orderpipeline_outbox_pending", labels: [("outbox", kind.rawValue)], help: "Unpublished, not dead-lettered outbox rows")
    }

    private func oldestGauge(_ kind: OutboxKind) -> Prometheus.Gauge {
        registry.makeGauge(name: "orderpipeline_outbox_oldest_unpublished_age_seconds", labels: [("outbox", kind.rawValue)], help: "Age of the oldest unpublished outbox row")
    }

    /// Prometheus text exposition format.
    public func render() -> [UInt8] { registry.emitToBuffer() }

    /// Routes swift-metrics (used by Hummingbird and other libraries) into this registry. Once per process.
    public func bootstrapMetricsSystem() {
        MetricsSystem.bootstrap(factory)
    }
}
