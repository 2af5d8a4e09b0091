import Dispatch
import HTTPTypes
import Hummingbird
import Metrics
import Synchronization

/// The request metrics of Hummingbird's `MetricsMiddleware` (same names and dimensions: `hb.requests`,
/// `hb.request.errors`, `http.server.request.duration`, `http.server.active_requests`), without wrapping every
/// response body in a closure. Hummingbird writes a body it holds in one buffer together with the head, in one
/// write and one TCP segment; a closure body goes out after the head, flushed apart (measured: two `write(2)`s and
/// two async-writer round trips per POST). So a request with a body of known length is recorded when its response
/// is ready; only a streamed body (the live page's event streams) is recorded after it is written, as before.
struct RequestMetricsMiddleware<Context: RequestContext>: RouterMiddleware {
    private let cache = RequestMetricsCache()

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let start = DispatchTime.now().uptimeNanoseconds
        let active = cache.active(request.method)
        active.increment()
        do {
            var response = try await next(request, context)
            let record: @Sendable () -> Void = { [cache, method = request.method, status = response.status, route = context.endpointPath ?? "Unknown"] in
                let metrics = cache.endpoint(route, method, status)
                metrics.requests.increment()
                metrics.duration.recordNanoseconds(DispatchTime.now().uptimeNanoseconds - start)
                active.decrement()
            }
            guard response.body.contentLength == nil else {
                record()
                return response
            }
            let body = response.body
            response.body = ResponseBody { writer in
                defer { record() }
                try await body.write(writer)
            }
            return response
        } catch {
            let status = (error as? any HTTPResponseError)?.status ?? .internalServerError
            let metrics = cache.endpoint(context.endpointPath ?? "NotFound", request.method, status)
            metrics.requests.increment()
            metrics.errors.increment()
            active.decrement()
            throw error
        }
    }
}

/// The metric objects of each method and of each route, method and status, made once.
final class RequestMetricsCache: Sendable {
    struct Endpoint: Sendable {
        let requests: Counter
        let duration: Metrics.Timer
        let errors: Counter
    }

    private struct Key: Hashable {
        let route: String
        let method: HTTPRequest.Method
        let status: HTTPResponse.Status
    }

    private let methods = Mutex<[HTTPRequest.Method: Meter]>([:])
    private let endpoints = Mutex<[Key: Endpoint]>([:])

    func active(_ method: HTTPRequest.Method) -> Meter {
        methods.withLock { methods in
            if let meter = methods[method] { return meter }
            let meter = Meter(label: "http.server.active_requests", dimensions: [("http.request.method", method.description)])
            methods[method] = meter
            return meter
        }
    }

    func endpoint(_ route: String, _ method: HTTPRequest.Method, _ status: HTTPResponse.Status) -> Endpoint {
        endpoints.withLock { endpoints in
            let key = Key(route: route, method: method, status: status)
            if let endpoint = endpoints[key] { return endpoint }
            let dimensions = [("http.route", route), ("http.request.method", method.description), ("http.response.status_code", status.code.description)]
            let endpoint = Endpoint(
                requests: Counter(label: "hb.requests", dimensions: dimensions),
                duration: Metrics.Timer(label: "http.server.request.duration", dimensions: dimensions, preferredDisplayUnit: .seconds),
                errors: Counter(
                    label: "hb.request.errors",
                    dimensions: [("http.route", route), ("http.request.method", method.description), ("error.type", status.code.description)]))
            endpoints[key] = endpoint
            return endpoint
        }
    }
}
