import Foundation

public enum EventType: String, Sendable, CaseIterable {
    case orderCreated = "OrderCreated"
    case orderFulfilled = "OrderFulfilled"
    case orderFailed = "OrderFailed"

    /// The event a move into `status` announces, if any (Processing is internal and announces nothing).
    public init?(announcing status: OrderStatus) {
        switch status {
        case .fulfilled: self = .orderFulfilled
        case .failed: self = .orderFailed
        case .pending, .processing: return nil
        }
    }
}

/// One domain event as it travels through both outboxes, Kafka and Service Bus.
///
/// The wire form is JSON with a fixed key order:
/// `{"eventId","eventType","orderId","occurredAt","status","order"?}`. The id is derived from (order, type), so
/// every copy of the same event, however often re-sent, carries the same id.
public struct PipelineEvent: Hashable, Sendable {
    public var id: EventID
    public var type: EventType
    public var orderID: OrderID
    public var occurredAt: Instant
    public var payload: [UInt8]
    /// The trace this event belongs to (W3C `traceparent`), carried beside the payload, never inside it.
    public var traceParent: TraceParent? = nil

    public init(type: EventType, order: Order, at occurredAt: Instant, includeOrder: Bool) {
        let id = EventID.derived(order: order.id, type: type)
        self.id = id
        self.type = type
        self.orderID = order.id
        self.occurredAt = occurredAt
        var json = JSONWriter(capacity: includeOrder ? 512 + 128 * order.items.count : 256)
        json.object { json in
            json.field("eventId", id)
            json.field("eventType", type.rawValue)
            json.field("orderId", order.id)
            json.field("occurredAt", occurredAt)
            json.field("status", order.status.rawValue)
            json.key("totalAmount"); json.money(order.totalAmount)
            if let reason = order.failureReason { json.field("failureReason", reason) }
            if includeOrder {
                json.key("order")
                order.write(to: &json)
            }
        }
        self.payload = json.bytes
    }

    /// Builds an event for an order known only by id (the consumer's fulfilment event is written inside the
    /// transaction that loads the order, so it carries what the consumer knows).
    public init(type: EventType, orderID: OrderID, at occurredAt: Instant, status: OrderStatus) {
        let id = EventID.derived(order: orderID, type: type)
        self.id = id
        self.type = type
        self.orderID = orderID
        self.occurredAt = occurredAt
        var json = JSONWriter()
        json.object { json in
            json.field("eventId", id)
            json.field("eventType", type.rawValue)
            json.field("orderId", orderID)
            json.field("occurredAt", occurredAt)
            json.field("status", status.rawValue)
        }
        self.payload = json.bytes
    }
}

/// What a consumer needs from a record, decoded and checked; anything else is poison.
public struct EventEnvelope: Hashable, Sendable {
    public var id: EventID
    public var type: EventType
    public var orderID: OrderID

    public init(id: EventID, type: EventType, orderID: OrderID) {
        self.id = id
        self.type = type
        self.orderID = orderID
    }

    public enum DecodeError: Error, Hashable, Sendable, CustomStringConvertible {
        case notJSON
        case missingField(String)
        case badField(String)
        case idNotDerived(EventID)

        public var description: String {
            switch self {
            case .notJSON: "payload is not a JSON object"
            case .missingField(let name): "payload has no \(name)"
            case .badField(let name): "payload has a malformed \(name)"
            case .idNotDerived(let id): "eventId \(id) is not the id derived from orderId and eventType"
            }
        }
    }

    /// The fields the envelope is made of, as the payload has them (missing or `null`: nil).
    struct Fields: Decodable, Equatable {
        var eventId: String?
        var eventType: String?
        var orderId: String?

        static let keys = ["eventId", "eventType", "orderId"]
    }

    /// Decodes the envelope and checks that the event id is the derived one (a foreign or corrupted record is poison).
    /// The consumer decodes every record: payloads in the plain JSON the pipeline writes are read without Foundation
    /// (`PlainJSONReader`), anything else by `JSONDecoder`, with the same results.
    public static func decode(_ payload: [UInt8]) -> Result<EventEnvelope, DecodeError> {
        check(PlainJSONReader.readEnvelope(payload) ?? decoderFields(payload))
    }

    /// `decode` through `JSONDecoder` alone (what the plain reader must agree with; tests compare the two).
    static func decodeWithDecoder(_ payload: [UInt8]) -> Result<EventEnvelope, DecodeError> {
        check(decoderFields(payload))
    }

    static func decoderFields(_ payload: [UInt8]) -> Fields? {
        try? JSONDecoder().decode(Fields.self, from: Data(payload))
    }

    private static func check(_ fields: Fields?) -> Result<EventEnvelope, DecodeError> {
        guard let fields else { return .failure(.notJSON) }
        guard let idText = fields.eventId else { return .failure(.missingField("eventId")) }
        guard let typeText = fields.eventType else { return .failure(.missingField("eventType")) }
        guard let orderText = fields.orderId else { return .failure(.missingField("orderId")) }
        guard let id = EventID(idText) else { return .failure(.badField("eventId")) }
        guard let type = EventType(rawValue: typeText) else { return .failure(.badField("eventType")) }
        guard let orderID = OrderID(orderText) else { return .failure(.badField("orderId")) }
        guard id == EventID.derived(order: orderID, type: type) else { return .failure(.idNotDerived(id)) }
        return .success(EventEnvelope(id: id, type: type, orderID: orderID))
    }
}

extension PipelineEvent {
    /// The headers of this event's Kafka record: `event-id`, `event-type` and, when it has a trace, `traceparent`
    /// (the producer writes them, the simulator's broker stores them, the consumer reads the trace back).
    public var kafkaHeaders: [ConsumedRecord.Header] {
        var headers: [ConsumedRecord.Header] = [
            .init(name: "event-id", value: id.uuid.textBytes), .init(name: "event-type", value: Array(type.rawValue.utf8)),
        ]
        if let traceParent { headers.append(.init(name: "traceparent", value: traceParent.textBytes)) }
        return headers
    }

    /// An event as an outbox row stores it: id and payload are taken as they are, nothing is derived again (the
    /// relay's claim reads a hundred of these per batch).
    public init(stored id: EventID, type: EventType, orderID: OrderID, at occurredAt: Instant, payload: [UInt8], traceParent: TraceParent?) {
        self.id = id
        self.type = type
        self.orderID = orderID
        self.occurredAt = occurredAt
        self.payload = payload
        self.traceParent = traceParent
    }
}
