import Foundation
import HTTPTypes
import Hummingbird
import OrderPipelineCore

/// An RFC 9457 problem detail, served as `application/problem+json`.
public struct Problem: Error, Sendable, Hashable {
    public var status: HTTPResponse.Status
    public var type: String
    public var title: String
    public var detail: String?
    public var errors: [FieldError]
    /// The id of the request in the server's log (an extension member, `requestId`), where the details are.
    public var requestID: String?

    public init(
        _ status: HTTPResponse.Status, type: String = "about:blank", title: String? = nil, detail: String? = nil, errors: [FieldError] = [],
        requestID: String? = nil
    ) {
        self.status = status
        self.type = type
        self.title = title ?? status.reasonPhrase
        self.detail = detail
        self.errors = errors
        self.requestID = requestID
    }

    public static let mediaType = "application/problem+json"

    public var json: [UInt8] {
        var json = JSONWriter()
        json.object { json in
            json.field("type", type)
            json.field("title", title)
            json.field("status", Int(status.code))
            if let detail { json.field("detail", detail) }
            if let requestID { json.field("requestId", requestID) }
            if !errors.isEmpty {
                json.key("errors")
                json.array { json in
                    for error in errors {
                        json.object { json in
                            json.field("field", error.field)
                            json.field("message", error.message)
                        }
                    }
                }
            }
        }
        return json.bytes
    }

    public func response(headers extra: HTTPFields = [:]) -> Response {
        var headers = extra
        headers[.contentType] = Self.mediaType
        return Response(status: status, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(bytes: json)))
    }

    // The problem types this API uses.
    public static func malformed(_ detail: String) -> Problem {
        Problem(.badRequest, type: "urn:orderpipeline:problem:malformed-request", title: "Malformed request", detail: detail)
    }

    public static func validation(_ errors: [FieldError]) -> Problem {
        Problem(
            .unprocessableContent, type: "urn:orderpipeline:problem:validation", title: "The request is not valid",
            detail: "\(errors.count) field\(errors.count == 1 ? "" : "s") failed validation", errors: errors)
    }

    public static let idempotencyKeyReused = Problem(
        .unprocessableContent, type: "urn:orderpipeline:problem:idempotency-key-reused", title: "Idempotency-Key reused",
        detail: "this Idempotency-Key was already used with a different request body")

    public static func notFound(_ detail: String) -> Problem {
        Problem(.notFound, type: "urn:orderpipeline:problem:not-found", title: "Not found", detail: detail)
    }

    public static func illegalTransition(_ id: OrderID, from: OrderStatus, to: OrderStatus) -> Problem {
        Problem(
            .conflict, type: "urn:orderpipeline:problem:illegal-transition", title: "Illegal status transition",
            detail: "order \(id) is \(from.rawValue) and cannot move to \(to.rawValue)")
    }

    public static func unsupportedMediaType(_ received: String?) -> Problem {
        Problem(
            .unsupportedMediaType, type: "urn:orderpipeline:problem:unsupported-media-type", title: "Unsupported media type",
            detail: "the body must be application/json\(received.map { ", not \($0)" } ?? "")")
    }

    public static func tooLarge(limit: Int) -> Problem {
        Problem(
            .contentTooLarge, type: "urn:orderpipeline:problem:body-too-large", title: "Request body too large",
            detail: "the body must be at most \(limit) bytes")
    }

    public static func unavailable(_ detail: String) -> Problem {
        Problem(.serviceUnavailable, type: "urn:orderpipeline:problem:unavailable", title: "Service unavailable", detail: detail)
    }

    /// The database failed, is overloaded or did not answer in time. What went wrong (libpq's text: host names,
    /// addresses, user names) is logged under the request id and never sent; the client learns only to retry.
    public static func databaseUnavailable(requestID: String) -> Problem {
        Problem(
            .serviceUnavailable, type: "urn:orderpipeline:problem:unavailable", title: "Service unavailable",
            detail: "database unavailable", requestID: requestID)
    }

    /// Seconds a client should wait before retrying a 503.
    public static let retryAfterSeconds = "1"
}

/// Turns every error that escapes a handler (unknown route, wrong method, a bug) into problem+json.
struct ProblemMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as HTTPError {
            if error.status == .notFound {
                if let allowed = OrderAPI.allowedMethods(request.uri.path), !allowed.contains(request.method) {
                    return Problem(.methodNotAllowed, detail: "\(request.uri.path) allows \(allowed.map(\.rawValue).joined(separator: ", "))")
                        .response(headers: [.allow: allowed.map(\.rawValue).joined(separator: ", ")])
                }
                return Problem.notFound("no resource at \(request.method) \(request.uri.path)").response()
            }
            return Problem(error.status, detail: error.body).response(headers: error.headers)
        } catch let error as any HTTPResponseError {
            return Problem(error.status).response()
        } catch {
            context.logger.error("Unhandled error", metadata: ["error": "\(error)"])
            return Problem(.internalServerError, detail: "an unexpected error occurred").response()
        }
    }
}
