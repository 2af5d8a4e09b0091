import Foundation
import HTTPTypes
import Hummingbird
import Logging
import OrderPipelineCore
import OrderPipelinePostgres
import OrderPipelineRuntime

/// What the API reads directly (queries are not decisions, so they bypass the intake machine).
public protocol OrderReading: Sendable {
    func order(_ id: OrderID) async throws -> Order?
    func orders(limit: Int, after cursor: OrderCursor?) async throws -> [Order]
    func pendingOutbox(_ kind: OutboxKind) async throws -> (count: Int, oldestAgeSeconds: Double)
    /// The applied schema version, nil if never migrated; throws when the database is unreachable.
    func schemaVersion() async throws -> Int?
}

extension PostgresStore: OrderReading {
    public func pendingOutbox(_ kind: OutboxKind) async throws -> (count: Int, oldestAgeSeconds: Double) {
        try await pending(kind)
    }
}

/// The HTTP API: routes, content negotiation and the mapping of the intake machine's answers to HTTP.
public struct OrderAPI: Sendable {
    public struct Limits: Sendable {
        public var maxBodyBytes = 64 * 1024
        public var defaultPageSize = 20
        public var maxPageSize = 100
        public init() {}
    }

    public let shell: IntakeShell
    public let reads: any OrderReading
    public let metrics: PipelineMetrics
    public let limits: Limits
    public let requiredSchemaVersion: Int

    public init(
        shell: IntakeShell, reads: any OrderReading, metrics: PipelineMetrics, limits: Limits = .init(),
        requiredSchemaVersion: Int = Migrations.latest
    ) {
        self.shell = shell
        self.reads = reads
        self.metrics = metrics
        self.limits = limits
        self.requiredSchemaVersion = requiredSchemaVersion
    }

    public func makeRouter() -> Router<BasicRequestContext> {
        let router = Router(context: BasicRequestContext.self)
        router.add(middleware: RequestMetricsMiddleware())
        router.add(middleware: ProblemMiddleware())
        for route in Self.routes {
            router.on(RouterPath(route.path), method: route.method) { request, context in
                try await self.respond(route.operation, request, context)
            }
        }
        return router
    }

    /// The handler of each operation in the route table.
    func respond(_ operation: APIRoute.Operation, _ request: Request, _ context: BasicRequestContext) async throws -> Response {
        switch operation {
        case .createOrder: try await create(request, context)
        case .listOrders: try await list(request, context)
        case .getOrder: try await show(context)
        case .changeOrderStatus: try await changeStatus(request, context)
        case .live: Self.json(.ok, Array(#"{"status":"live"}"#.utf8))
        case .ready: await ready()
        case .metrics: await renderMetrics()
        case .openapi: Self.openAPI()
        }
    }

    // MARK: handlers

    func create(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        if let problem = Self.checkJSONContentType(request) { return problem.response() }
        let body: [UInt8]
        switch await collect(request) {
        case .success(let bytes): body = bytes
        case .failure(let problem): return problem.response()
        }
        let key = request.headers[.idempotencyKey]
        let answer = await shell.createOrder(body: body, idempotencyKey: key, traceParent: Self.traceParent(request))
        switch answer {
        case .created(let order), .replayed(let order):
            var headers = HTTPFields()
            headers[.location] = "/api/orders/\(order.id)"
            headers[.contentType] = "application/json"
            return Response(status: .created, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(bytes: order.json)))
        case let other:
            return Self.answer(other, context)
        }
    }

    func show(_ context: BasicRequestContext) async throws -> Response {
        guard let id = context.parameters.get("id").flatMap({ OrderID($0) }) else {
            return Problem.malformed("the order id must be a UUID like 3fa85f64-5717-4562-b3fc-2c963f66afa6").response()
        }
        do {
            guard let order = try await reads.order(id) else { return Problem.notFound("no order with id \(id)").response() }
            return Self.json(.ok, order.json)
        } catch {
            return Self.databaseUnavailable("\(error)", context)
        }
    }

    func list(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        let query = request.uri.queryParameters
        var limit = limits.defaultPageSize
        if let text = query["limit"] {
            guard let value = Int(String(text)), (1...limits.maxPageSize).contains(value) else {
                return Problem.validation([FieldError(field: "limit", message: "must be an integer from 1 to \(limits.maxPageSize)")]).response()
            }
            limit = value
        }
        var cursor: OrderCursor?
        if let text = query["cursor"] {
            guard let decoded = Self.decodeCursor(String(text)) else {
                return Problem.validation([FieldError(field: "cursor", message: "is not a cursor this API returned")]).response()
            }
            cursor = decoded
        }
        do {
            let orders = try await reads.orders(limit: limit, after: cursor)
            var json = JSONWriter()
            json.object { json in
                json.key("items")
                json.array { json in for order in orders { order.write(to: &json) } }
                let next = orders.count == limit ? orders.last.map { Self.encodeCursor(OrderCursor(createdAt: $0.createdAt, id: $0.id)) } : nil
                json.field("nextCursor", next)
            }
            return Self.json(.ok, json.bytes)
        } catch {
            return Self.databaseUnavailable("\(error)", context)
        }
    }

    func changeStatus(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        guard let id = context.parameters.get("id").flatMap({ OrderID($0) }) else {
            return Problem.malformed("the order id must be a UUID like 3fa85f64-5717-4562-b3fc-2c963f66afa6").response()
        }
        if let problem = Self.checkJSONContentType(request) { return problem.response() }
        let body: [UInt8]
        switch await collect(request) {
        case .success(let bytes): body = bytes
        case .failure(let problem): return problem.response()
        }
        switch await shell.changeStatus(id, body: body, traceParent: Self.traceParent(request)) {
        case .statusChanged(let order):
            return Self.json(.ok, order.json)
        case let other:
            return Self.answer(other, context)
        }
    }

    func ready() async -> Response {
        do {
            let version = try await reads.schemaVersion()
            guard let version, version >= requiredSchemaVersion else {
                return Problem.unavailable(
                    "the database schema is at version \(version.map(String.init) ?? "none"), this build needs \(requiredSchemaVersion): run `orderpipeline migrate`"
                ).response()
            }
            return Self.json(.ok, Array(#"{"status":"ready","schemaVersion":\#(version)}"#.utf8))
        } catch {
            return Problem.unavailable("the database is unreachable").response(headers: [.retryAfter: "1"])
        }
    }

    func renderMetrics() async -> Response {
        for kind in OutboxKind.allCases {
            if let pending = try? await reads.pendingOutbox(kind) {
                metrics.setOutbox(kind, pending: pending.count, oldestAgeSeconds: pending.oldestAgeSeconds)
            } else {
                metrics.forgetOutbox(kind)  // absent, not stale
            }
        }
        return Response(
            status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: metrics.render())))
    }

    static func openAPI() -> Response {
        json(.ok, Array(OpenAPIDocument.json.utf8))
    }

    /// The OpenAPI 3.1 document this build serves (Sources/OrderPipelineHTTP/openapi.json).
    public static var openAPIDocument: String { OpenAPIDocument.json }

    // MARK: helpers

    /// The caller's W3C `traceparent`, if valid: the intake continues it (`TraceParent.forRequest`) in the events
    /// the request writes, and from there to Kafka and Service Bus.
    static func traceParent(_ request: Request) -> TraceParent? {
        request.headers[.traceparent].flatMap { TraceParent($0) }
    }

    func collect(_ request: Request) async -> Result<[UInt8], Problem> {
        if let length = request.headers[.contentLength].flatMap({ Int($0) }), length > limits.maxBodyBytes {
            return .failure(.tooLarge(limit: limits.maxBodyBytes))
        }
        do {
            let buffer = try await request.body.collect(upTo: limits.maxBodyBytes)
            return .success(Array(buffer.readableBytesView))
        } catch let error as HTTPError where error.status == .contentTooLarge {
            return .failure(.tooLarge(limit: limits.maxBodyBytes))
        } catch {
            return .failure(.malformed("the body could not be read"))
        }
    }

    /// `application/json` or any `+json` type, parameters (charset) allowed.
    static func checkJSONContentType(_ request: Request) -> Problem? {
        guard let value = request.headers[.contentType] else { return .unsupportedMediaType(nil) }
        return isJSONMediaType(value) ? nil : .unsupportedMediaType(value)
    }

    /// Whether a `Content-Type` value names JSON: its type before any `;`, without surrounding blanks, in ASCII lower
    /// case. Read as bytes: every POST asks (Foundation's trimming and lowercasing cost 2% of a request).
    static func isJSONMediaType(_ value: String) -> Bool {
        var type: [UInt8] = []
        type.reserveCapacity(32)
        for byte in value.utf8 {
            if byte == UInt8(ascii: ";") { break }
            let blank = byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t")
            if blank && type.isEmpty { continue }
            type.append((UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte) ? byte | 0x20 : byte)
        }
        while let last = type.last, last == UInt8(ascii: " ") || last == UInt8(ascii: "\t") { type.removeLast() }
        if type.elementsEqual("application/json".utf8) { return true }
        return type.starts(with: "application/".utf8) && type.count >= 17 && type.suffix(5).elementsEqual("+json".utf8)
    }

    static func problem(for response: IntakeResponse) -> Problem {
        switch response {
        case .rejected(.malformed(let detail)): .malformed(detail)
        case .rejected(.invalid(let errors)): .validation(errors)
        case .idempotencyKeyReused: .idempotencyKeyReused
        case .notFound(let id): .notFound("no order with id \(id)")
        case .illegalTransition(let id, let from, let to): .illegalTransition(id, from: from, to: to)
        case .unavailable: .unavailable("database unavailable")
        case .created, .replayed, .statusChanged: Problem(.internalServerError, detail: "unexpected success")
        }
    }

    /// A problem for an answer of the intake machine; "unavailable" is logged with its reason and sent without it.
    static func answer(_ response: IntakeResponse, _ context: BasicRequestContext) -> Response {
        if case .unavailable(let reason) = response { return databaseUnavailable(reason, context) }
        return problem(for: response).response()
    }

    /// 503 with `Retry-After`, a request id and nothing else; the reason goes to the log under that id.
    static func databaseUnavailable(_ reason: String, _ context: BasicRequestContext) -> Response {
        context.logger.warning("Database unavailable; answered 503", metadata: ["db.error": "\(reason)"])
        return Problem.databaseUnavailable(requestID: context.id).response(headers: [.retryAfter: Problem.retryAfterSeconds])
    }

    static func json(_ status: HTTPResponse.Status, _ bytes: [UInt8]) -> Response {
        Response(status: status, headers: [.contentType: "application/json"], body: ResponseBody(byteBuffer: ByteBuffer(bytes: bytes)))
    }

    /// Opaque to clients: base64url of `<createdAt µs>.<id>`.
    static func encodeCursor(_ cursor: OrderCursor) -> String {
        Data("\(cursor.createdAt.microseconds).\(cursor.id)".utf8).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
    }

    /// Creation times a cursor may carry: 0001-01-01 to 9999-12-31 (µs since 1970). Outside, PostgreSQL's
    /// timestamp arithmetic would fail: a made-up cursor is a bad request, not a database failure.
    static let cursorTimes: ClosedRange<Int64> = -62_135_596_800_000_000...253_402_300_799_999_999

    static func decodeCursor(_ text: String) -> OrderCursor? {
        guard text.count <= 128 else { return nil }
        var base64 = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while base64.count % 4 != 0 { base64 += "=" }
        guard let data = Data(base64Encoded: base64), let plain = String(data: data, encoding: .utf8) else { return nil }
        let parts = plain.split(separator: ".", maxSplits: 1)
        guard parts.count == 2, let micros = Int64(parts[0]), cursorTimes.contains(micros), let id = OrderID(parts[1]) else { return nil }
        return OrderCursor(createdAt: Instant(microseconds: micros), id: id)
    }
}

extension HTTPField.Name {
    static let idempotencyKey = Self("Idempotency-Key")!
    static let traceparent = Self("traceparent")!
}
