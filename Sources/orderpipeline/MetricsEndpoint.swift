import ArgumentParser
import Foundation
import Hummingbird
import Logging
import OrderPipelineCore
import OrderPipelinePostgres
import OrderPipelineRuntime
import ServiceLifecycle

/// `/metrics` (Prometheus text), `/health/live` (progress of the machine loops) and `/health/ready` for the standalone `relay` and `consume` roles, which have no
/// API server: on `METRICS_HOST:METRICS_PORT` (host default 127.0.0.1) when `METRICS_PORT` is set. Each scrape
/// refreshes the outbox gauges (pending rows, oldest unpublished age) from PostgreSQL first, as `serve` does.
enum MetricsEndpoint {
    static let help = """
        Metrics (relay, consume):
          METRICS_PORT   serve GET /metrics, /health/live and /health/ready on this port
                         (unset: no endpoint; serve/all use /metrics of the API)
          METRICS_HOST   address it binds (default 127.0.0.1)
          LIVENESS_STALL_SECONDS  /health/live answers 503 when a machine loop awaits an answer
                         and has heard nothing back for this long (default 30)
          LIVENESS_UNASSIGNED_SECONDS  also 503 when the consumer has held no Kafka partition for
                         this long (default 60: ten session timeouts; 0: off, for standby members)
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
                } else {
                    metrics.forgetOutbox(kind)
                }
            }
            return Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: metrics.render())))
        }
        let stallSeconds = try stallBound(environment)
        let unassignedSeconds = try unassignedBound(environment)
        router.get("/health/live") { _, _ -> Response in
            let (live, json) = Liveness.shared.report(stallSeconds: stallSeconds, unassignedSeconds: unassignedSeconds)
            return Self.json(live ? .ok : .serviceUnavailable, json)
        }
        // Each dependency in its own field; ready when PostgreSQL answers (migrated) and every loop is live.
        router.get("/health/ready") { _, _ -> Response in
            let postgres: String
            var migrated = false
            do {
                let version = try await store.schemaVersion()
                migrated = version != nil
                postgres = version.map { #"{"status":"up","schemaVersion":\#($0)}"# } ?? #"{"status":"not migrated"}"#
            } catch {
                postgres = #"{"status":"down"}"#  // details stay in the store's log, not in the body
            }
            let (live, loops) = Liveness.shared.report(stallSeconds: stallSeconds, unassignedSeconds: unassignedSeconds)
            let ready = migrated && live
            return Self.json(ready ? .ok : .serviceUnavailable, #"{"status":"\#(ready ? "ready" : "not ready")","postgres":\#(postgres),"loops":\#(loops)}"#)
        }
        logger.info("Serving metrics", metadata: ["metrics.address": "\(host):\(port)"])
        let app = Application(router: router, configuration: .init(address: .hostname(host, port: port), serverName: "orderpipeline-metrics"), logger: logger)
        return .init(service: app)
    }

    static func stallBound(_ environment: [String: String]) throws -> Double {
        guard let text = environment["LIVENESS_STALL_SECONDS"], !text.isEmpty else { return Liveness.defaultStallSeconds }
        guard let seconds = Double(text), seconds >= 1, seconds <= 3600 else {
            throw ValidationError("LIVENESS_STALL_SECONDS must be a number of seconds in 1...3600, not \(text)")
        }
        return seconds
    }

    /// `LIVENESS_UNASSIGNED_SECONDS`: a consumer holding no partition that long is not live (0: never).
    static func unassignedBound(_ environment: [String: String]) throws -> Double {
        guard let text = environment["LIVENESS_UNASSIGNED_SECONDS"], !text.isEmpty else { return Liveness.defaultUnassignedSeconds }
        guard let seconds = Double(text), seconds == 0 || (1...86_400).contains(seconds) else {
            throw ValidationError("LIVENESS_UNASSIGNED_SECONDS must be 0 (off) or a number of seconds in 1...86400, not \(text)")
        }
        return seconds
    }

    static func json(_ status: HTTPResponse.Status, _ body: String) -> Response {
        Response(status: status, headers: [.contentType: "application/json"], body: ResponseBody(byteBuffer: ByteBuffer(string: body)))
    }
}
