import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import OrderPipelineHTTP
import Testing

/// `OrderAPI.routes` is the one route table; these tests fail when the OpenAPI document or the router disagrees.
@Suite("Route table")
struct RouteTableTests {
    /// "METHOD /path/:param operationId" → the statuses openapi.json lists for it.
    static func documented() throws -> [String: Set<Int>] {
        let document = try #require(try JSONSerialization.jsonObject(with: Data(OrderAPI.openAPIDocument.utf8)) as? [String: Any])
        let paths = try #require(document["paths"] as? [String: [String: Any]])
        var routes: [String: Set<Int>] = [:]
        for (path, operations) in paths {
            let pattern = path.replacing(/\{(\w+)\}/) { ":" + $0.1 }
            for (method, value) in operations where method != "parameters" {
                let operation = try #require(value as? [String: Any])
                let responses = try #require(operation["responses"] as? [String: Any])
                routes["\(method.uppercased()) \(pattern) \(operation["operationId"] as? String ?? "-")"] = Set(responses.keys.compactMap { Int($0) })
            }
        }
        return routes
    }

    @Test("openapi.json lists exactly the table's paths, methods, operations and statuses")
    func documentMatchesTable() throws {
        let table = Dictionary(
            uniqueKeysWithValues: OrderAPI.routes.map {
                ("\($0.method.rawValue) \($0.path) \($0.operation.rawValue)", Set($0.statuses))
            })
        #expect(try Self.documented() == table)
    }

    @Test("the router answers every route of the table with one of its statuses, and any other method 405 with the table's Allow")
    func routerMatchesTable() async throws {
        // Every route answers without a database.
        try await withUnreachableDatabase { client in
            for path in Set(OrderAPI.routes.map(\.path)).sorted() {
                let served = OrderAPI.routes.filter { $0.path == path }
                let uri = path.replacingOccurrences(of: ":id", with: "00000000-0000-4000-8000-000000000000")
                for method in [HTTPRequest.Method.get, .post, .put, .patch, .delete] {
                    let response = try await client.execute(uri: uri, method: method, headers: .json, body: ByteBuffer(string: "{}"))
                    if let route = served.first(where: { $0.method == method }) {
                        #expect(route.statuses.contains(Int(response.status.code)), "\(method) \(uri) answered \(response.status)")
                    } else {
                        #expect(response.status == .methodNotAllowed, "\(method) \(uri)")
                        #expect(response.headers[.allow] == served.map(\.method.rawValue).sorted().joined(separator: ", "), "\(method) \(uri)")
                    }
                }
            }
        }
    }
}
