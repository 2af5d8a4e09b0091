import ArgumentParser
import Foundation
import Hummingbird
import Logging
import OrderPipelineCore
import OrderPipelinePostgres
import OrderPipelineRuntime
import ServiceLifecycle

/// `/metrics` (Prometheus text) and `/health/live` for the standalone `relay` and `consume` roles, which have no
/// API server: on `METRICS_HOST:METRICS_PORT` (host default 127.0.0.1) when `METRICS_PORT` is set. Each scrape
/// refreshes the outbox gauges (pending rows, oldest unpublished age) from PostgreSQL first, as `serve` does.
enum MetricsEndpoint {
    static let help = """
        Metrics (relay, consume):
          METRICS_PORT   serve GET /metrics and /health/live on this port
                         (unset: no endpoint; serve/all use /metrics of the API)
          METRICS_HOST   address it binds (default 127.0.0.1)
        """

    static func service(
        environment: [String: String], metrics: PipelineMetrics, store: PostgresStore, logger: Logger
    ) throws -> ServiceGroupConfiguration.ServiceConfiguration? {
        guard let text = environment["METRICS_PORT"], !text.isEmpty else { return nil }
        guard let port = Int(text), (1...65_535).contains(port) else { throw ValidationError("METRICS_PORT must be a port number, not \(text)") }
        let host = environment["METRICS_HOST"].flatMap { $0.isEmpty ? nil : $0 } ?? "127.0.0.1"
        let router = Router(context: BasicRequestContext.self)
        router.get("/metrics") { _, _ -> Response in
            for kind in OutboxKind.allCases {
                if let pending = try? await store.pending(kind) {
                    metrics.setOutbox(kind, pending: pending.count, oldestAgeSeconds: pending.oldestAgeSeconds)
                }
            }
            return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                            body: ResponseBody(byteBuffer: ByteBuffer(bytes: metrics.render())))
        }
        router.get("/health/live") { _, _ -> Response in
            Response(status: .ok, headers: [.contentType: "application/json"], body: ResponseBody(byteBuffer: ByteBuffer(string: #"{"status":"live"}"#)))
        }
        logger.info("Serving metrics", metadata: ["metrics.address": "\(host):\(port)"])
        let app = Application(router: router, configuration: .init(address: .hostname(host, port: port), serverName: "orderpipeline-metrics"), logger: logger)
        return .init(service: app)
    }
}
