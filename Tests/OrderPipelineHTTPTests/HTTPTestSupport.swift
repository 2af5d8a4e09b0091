import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import OrderPipelineCore
import OrderPipelineHTTP
import OrderPipelinePostgres
import OrderPipelineRuntime
import OrderPipelineTestSupport
import Testing

enum HTTPTestDatabase {
    static var url: String? { TestEnvironment.value("DATABASE_URL") }
    static var isConfigured: Bool { url != nil }
    static let logger = TestEnvironment.logger("test.http")
}

/// A migrated schema of its own, the real store on it, the API in front: one per test.
final class APIFixture: Sendable {
    let store: PostgresStore
    let api: OrderAPI
    let schema: String
    private let admin: PostgresSession

    init(migrate: Bool = true) async throws {
        let url = try #require(HTTPTestDatabase.url)
        var random = SystemRandomNumberGenerator()
        schema = "http_" + String(random.next() & 0xFFFF_FFFF_FFFF, radix: 16)
        admin = PostgresSession(settings: .init(url: url), logger: HTTPTestDatabase.logger)
        let schema = self.schema
        let created: Result<Int, PostgresError> = await admin.withConnection { c in
            Result { () throws(PostgresError) in try c.get().execute(script: "CREATE SCHEMA \(schema)").count }
        }
        _ = try created.get()
        var configuration = PostgresPool.Configuration(url: url)
        configuration.connection.schema = schema
        configuration.connection.applicationName = schema
        configuration.size = 4
        if migrate {
            let session = PostgresSession(settings: configuration.connection, logger: HTTPTestDatabase.logger)
            let migrated: Result<[Int], PostgresError> = await session.withConnection { c in
                Result { () throws(PostgresError) in try Migrations.apply(on: try c.get(), logger: HTTPTestDatabase.logger) }
            }
            session.close()
            _ = try migrated.get()
        }
        store = PostgresStore(configuration: configuration, logger: HTTPTestDatabase.logger)
        let metrics = PipelineMetrics()
        api = OrderAPI(shell: IntakeShell(store: store, logger: HTTPTestDatabase.logger, metrics: metrics), reads: store, metrics: metrics)
    }

    func test<Value>(_ body: @Sendable (any TestClientProtocol) async throws -> Value) async throws -> Value {
        let app = Application(router: api.makeRouter(), logger: HTTPTestDatabase.logger)
        return try await app.test(.router, body)
    }

    /// Rows in `orders` (every table of an order is written in the same transaction).
    func orderCount() async throws -> Int {
        let result: Result<Int, PostgresError> = await store.pool.withConnection { c in
            Result { () throws(PostgresError) in Int(try c.get().query("SELECT count(*) FROM orders").int(0, 0) ?? -1) }
        }
        return try result.get()
    }

    func outboxCount() async throws -> Int {
        let result: Result<Int, PostgresError> = await store.pool.withConnection { c in
            Result { () throws(PostgresError) in Int(try c.get().query("SELECT count(*) FROM kafka_outbox").int(0, 0) ?? -1) }
        }
        return try result.get()
    }

    func tearDown() async {
        store.close()
        let schema = self.schema
        let _: Void = await admin.withConnection { c in _ = try? c.get().execute(script: "DROP SCHEMA \(schema) CASCADE") }
        admin.close()
    }
}

let johnSmith = #"{"customerName":"John Smith","customerEmail":"john@example.com","items":[{"productName":"Laptop","quantity":1,"unitPrice":999.99}]}"#

extension HTTPFields {
    static let json: HTTPFields = [.contentType: "application/json"]
    static func json(idempotencyKey: String) -> HTTPFields {
        var fields: HTTPFields = [.contentType: "application/json"]
        fields[HTTPField.Name("Idempotency-Key")!] = idempotencyKey
        return fields
    }
}

extension TestResponse {
    var text: String { String(buffer: body) }
    var jsonObject: [String: Any]? { try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] }

    /// problem+json with the status repeated in the body.
    func expectProblem(_ status: HTTPResponse.Status, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(self.status == status, "\(text)", sourceLocation: sourceLocation)
        #expect(headers[.contentType] == "application/problem+json", sourceLocation: sourceLocation)
        #expect(jsonObject?["status"] as? Int == Int(status.code), sourceLocation: sourceLocation)
        #expect(jsonObject?["title"] is String, sourceLocation: sourceLocation)
    }
}

/// The API in front of a database that refuses every connection at once (port 1 on loopback), under test.
func withUnreachableDatabase(_ body: @Sendable (any TestClientProtocol) async throws -> Void) async throws {
    var configuration = PostgresPool.Configuration(url: "postgres://postgres@127.0.0.1:1/none")
    configuration.size = 1
    configuration.connection.connectTimeoutSeconds = 1
    let store = PostgresStore(configuration: configuration, logger: HTTPTestDatabase.logger)
    let metrics = PipelineMetrics()
    let api = OrderAPI(shell: IntakeShell(store: store, logger: HTTPTestDatabase.logger, metrics: metrics), reads: store, metrics: metrics)
    let app = Application(router: api.makeRouter(), logger: HTTPTestDatabase.logger)
    try await withTearDown(app, tearDown: { _ in store.close() }) { app in try await app.test(.router, body) }
}

func withAPI(migrate: Bool = true, _ body: (APIFixture) async throws -> Void) async throws {
    try await withTearDown(try await APIFixture(migrate: migrate), tearDown: { await $0.tearDown() }, body)
}
