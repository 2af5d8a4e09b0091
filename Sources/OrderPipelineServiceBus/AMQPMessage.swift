import CQpidProton
import Foundation

/// A message as the adapter sends and receives it, and its AMQP 1.0 codec (`encoded()`, `decode(_:)`): no proton
/// type leaves this module.
public struct AMQPMessage: Hashable, Sendable {
    public var messageID: String?
    public var subject: String?
    public var contentType: String?
    public var applicationProperties: [String: String]
    public var body: [UInt8]
    /// An AMQP value section holding a string instead of a data section (CBS requests carry the token so).
    public var bodyText: String?
    public var correlationID: String?
    public var replyTo: String?
    public var to: String?

    public init(messageID: String?, subject: String?, contentType: String?, applicationProperties: [String: String] = [:], body: [UInt8]) {
        self.messageID = messageID
        self.subject = subject
        self.contentType = contentType
        self.applicationProperties = applicationProperties
        self.body = body
    }

    /// The AMQP 1.0 encoding (properties, application-properties, a data section).
    func encoded() -> [UInt8] {
        let message = pn_message()
        defer { pn_message_free(message) }
        if let messageID {
            messageID.withCString { pointer in _ = pn_data_put_string(pn_message_id(message), pn_bytes(strlen(pointer), pointer)) }
        }
        if let subject { pn_message_set_subject(message, subject) }
        if let contentType { pn_message_set_content_type(message, contentType) }
        if let replyTo { pn_message_set_reply_to(message, replyTo) }
        if let to { pn_message_set_address(message, to) }
        if let correlationID {
            correlationID.withCString { pointer in _ = pn_data_put_string(pn_message_correlation_id(message), pn_bytes(strlen(pointer), pointer)) }
        }
        if !applicationProperties.isEmpty {
            let properties = pn_message_properties(message)
            pn_data_put_map(properties)
            pn_data_enter(properties)
            for (key, value) in applicationProperties.sorted(by: { $0.key < $1.key }) {
                key.withCString { pointer in _ = pn_data_put_string(properties, pn_bytes(strlen(pointer), pointer)) }
                value.withCString { pointer in _ = pn_data_put_string(properties, pn_bytes(strlen(pointer), pointer)) }
            }
            pn_data_exit(properties)
        }
        if let bodyText {
            bodyText.withCString { pointer in _ = pn_data_put_string(pn_message_body(message), pn_bytes(strlen(pointer), pointer)) }
        } else {
            body.withUnsafeBytes { bytes in
                _ = pn_data_put_binary(pn_message_body(message), pn_bytes(bytes.count, bytes.baseAddress?.assumingMemoryBound(to: CChar.self)))
            }
        }
        var capacity = 512 + body.count * 2
        while true {
            var buffer = [UInt8](repeating: 0, count: capacity)
            var size = capacity
            let code = buffer.withUnsafeMutableBytes { raw in
                pn_message_encode(message, raw.baseAddress!.assumingMemoryBound(to: CChar.self), &size)
            }
            if code == PN_OVERFLOW {
                capacity *= 2
                continue
            }
            return Array(buffer.prefix(size))
        }
    }

    static func decode(_ bytes: [UInt8]) -> AMQPMessage? {
        let message = pn_message()
        defer { pn_message_free(message) }
        let code = bytes.withUnsafeBytes { raw in pn_message_decode(message, raw.baseAddress?.assumingMemoryBound(to: CChar.self), raw.count) }
        guard code == 0 else { return nil }
        var result = AMQPMessage(messageID: nil, subject: nil, contentType: nil, body: [])
        let id = pn_message_get_id(message)
        if id.type == PN_STRING || id.type == PN_SYMBOL { result.messageID = string(id.u.as_bytes) }
        let correlation = pn_message_get_correlation_id(message)
        if correlation.type == PN_STRING || correlation.type == PN_SYMBOL { result.correlationID = string(correlation.u.as_bytes) }
        result.replyTo = pn_message_get_reply_to(message).map { String(cString: $0) }
        result.to = pn_message_get_address(message).map { String(cString: $0) }
        result.subject = pn_message_get_subject(message).map { String(cString: $0) }
        result.contentType = pn_message_get_content_type(message).map { String(cString: $0) }
        if let properties = pn_message_properties(message) {
            pn_data_rewind(properties)
            if pn_data_next(properties), pn_data_type(properties) == PN_MAP {
                pn_data_enter(properties)
                while pn_data_next(properties) {
                    let key = pn_data_type(properties) == PN_STRING ? string(pn_data_get_string(properties)) : nil
                    guard pn_data_next(properties) else { break }
                    guard let key else { continue }
                    switch pn_data_type(properties) {
                    case PN_STRING: result.applicationProperties[key] = string(pn_data_get_string(properties))
                    case PN_INT: result.applicationProperties[key] = String(pn_data_get_int(properties))
                    case PN_LONG: result.applicationProperties[key] = String(pn_data_get_long(properties))
                    case PN_UINT: result.applicationProperties[key] = String(pn_data_get_uint(properties))
                    default: break
                    }
                }
                pn_data_exit(properties)
            }
        }
        if let body = pn_message_body(message) {
            pn_data_rewind(body)
            if pn_data_next(body) {
                switch pn_data_type(body) {
                case PN_BINARY: result.body = bytesOf(pn_data_get_binary(body))
                case PN_STRING:
                    result.body = bytesOf(pn_data_get_string(body))
                    result.bodyText = string(pn_data_get_string(body))
                default: break
                }
            }
        }
        return result
    }

    private static func bytesOf(_ bytes: pn_bytes_t) -> [UInt8] {
        guard let start = bytes.start, bytes.size > 0 else { return [] }
        return Array(UnsafeRawBufferPointer(start: start, count: bytes.size))
    }

    private static func string(_ bytes: pn_bytes_t) -> String { String(decoding: bytesOf(bytes), as: UTF8.self) }
}
