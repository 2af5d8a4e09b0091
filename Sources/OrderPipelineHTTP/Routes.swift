import HTTPTypes

/// A route of the API: a method, Hummingbird's path pattern (`:name` matches one segment), what it does, and every
/// status it may answer.
public struct APIRoute: Hashable, Sendable {
    /// What a route does: the OpenAPI document's `operationId`.
    public enum Operation: String, CaseIterable, Sendable {
        case createOrder, listOrders, getOrder, changeOrderStatus, live, ready, metrics, openapi
    }

    public var method: HTTPRequest.Method
    public var path: String
    public var operation: Operation
    public var statuses: [Int]

    init(_ method: HTTPRequest.Method, _ path: String, _ operation: Operation, _ statuses: [Int]) {
        self.method = method
        self.path = path
        self.operation = operation
        self.statuses = statuses
    }

    /// Whether `path` (no query) is one this route's pattern matches.
    func matches(_ path: String) -> Bool {
        let pattern = self.path.split(separator: "/")
        let parts = path.split(separator: "/")
        return pattern.count == parts.count && zip(pattern, parts).allSatisfy { $0.hasPrefix(":") || $0 == $1 }
    }
}

extension OrderAPI {
    /// The one route table: `makeRouter` registers these routes and nothing else, the 405 answers take their `Allow`
    /// header from it, and OrderAPITests fails when openapi.json lists other paths, methods or statuses.
    public static let routes: [APIRoute] = [
        APIRoute(.post, "/api/orders", .createOrder, [201, 400, 413, 415, 422, 503]),
        APIRoute(.get, "/api/orders", .listOrders, [200, 422, 503]),
        APIRoute(.get, "/api/orders/:id", .getOrder, [200, 400, 404, 503]),
        APIRoute(.patch, "/api/orders/:id/status", .changeOrderStatus, [200, 400, 404, 409, 413, 415, 422, 503]),
        APIRoute(.get, "/health/live", .live, [200]),
        APIRoute(.get, "/health/ready", .ready, [200, 503]),
        APIRoute(.get, "/metrics", .metrics, [200]),
        APIRoute(.get, "/openapi.json", .openapi, [200]),
    ]

    /// The methods the API serves on `path`, by name; nil for a path no route matches.
    public static func allowedMethods(_ path: String) -> [HTTPRequest.Method]? {
        let methods = routes.filter { $0.matches(path) }.map(\.method).sorted { $0.rawValue < $1.rawValue }
        return methods.isEmpty ? nil : methods
    }
}
