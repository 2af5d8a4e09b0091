import Foundation

/// A validated `PATCH /api/orders/{id}/status` body: `{"status": "Failed", "reason": "…"}`. Parsed by the intake
/// machine from the raw bytes, as `OrderRequest` is for POST, so the simulator sends bytes and the same rules hold.
public struct StatusChangeRequest: Hashable, Sendable {
    public var status: OrderStatus
    public var reason: String?

    private struct Wire: Decodable {
        var status: String?
        var reason: String?
    }

    private static let keys = ["status", "reason"]

    /// Decodes and validates a body; every problem is reported, not only the first. A plain body is read without
    /// Foundation (`PlainJSONReader`), anything else by `JSONDecoder`, with the same results.
    public static func parse(_ body: [UInt8], maxReasonLength: Int = 500) -> Result<StatusChangeRequest, RequestError> {
        if let values = PlainJSONReader.readStrings(body, keys: keys) {
            return validate(Wire(status: values[0], reason: values[1]), maxReasonLength: maxReasonLength)
        }
        return parseWithDecoder(body, maxReasonLength: maxReasonLength)
    }

    /// `parse` through `JSONDecoder` alone (what the plain reader must agree with; tests compare the two).
    static func parseWithDecoder(_ body: [UInt8], maxReasonLength: Int = 500) -> Result<StatusChangeRequest, RequestError> {
        let wire: Wire
        do {
            wire = try JSONDecoder().decode(Wire.self, from: Data(body))
        } catch DecodingError.typeMismatch(_, let context) where !context.codingPath.isEmpty {
            return .failure(.invalid([FieldError(field: context.codingPath[0].stringValue, message: "must be a string")]))
        } catch DecodingError.typeMismatch {
            return .failure(.malformed("the body must be a JSON object"))
        } catch {
            return .failure(.malformed("the body is not valid JSON"))
        }
        return validate(wire, maxReasonLength: maxReasonLength)
    }

    private static func validate(_ wire: Wire, maxReasonLength: Int) -> Result<StatusChangeRequest, RequestError> {
        var errors: [FieldError] = []
        var status: OrderStatus?
        if let text = wire.status {
            status = OrderStatus(rawValue: text)
            if status == nil {
                errors.append(FieldError(field: "status", message: "must be one of \(OrderStatus.allCases.map(\.rawValue).joined(separator: ", "))"))
            }
        } else {
            errors.append(FieldError(field: "status", message: "is required"))
        }
        if let reason = wire.reason {
            if reason.count > maxReasonLength { errors.append(FieldError(field: "reason", message: "must be at most \(maxReasonLength) characters")) }
            if reason.unicodeScalars.contains(where: { $0.value < 0x20 && $0 != "\n" && $0 != "\t" }) {
                errors.append(FieldError(field: "reason", message: "must not contain control characters"))
            }
        }
        guard errors.isEmpty, let status else { return .failure(.invalid(errors)) }
        return .success(StatusChangeRequest(status: status, reason: wire.reason))
    }
}
