import OrderPipelineCore
import OrderPipelinePostgres
import OrderPipelineSimulation

/// Everything a store holds that a recipe decides, in a form both implementations can be read into and compared.
///
/// Normalised (and only this): rows are sorted on the Swift side (never by a database collation); and a claim is
/// compared only while it is held (a released claim's old `claimed_until` is NULL in PostgreSQL and kept in the
/// model, and no recipe reads it without `claimed_by`). Due times, leases and the times settlements stamp are all
/// the database's clock, which is the same on both sides (`DatabaseClock`), so they are compared exactly.
struct StoreSnapshot: Hashable, Sendable {
    struct Transition: Hashable, Sendable, CustomStringConvertible {
        var order: OrderID
        var from: OrderStatus?
        var to: OrderStatus
        var at: Instant
        var description: String { "\(order) \(from?.rawValue ?? "∅")→\(to.rawValue) at \(at)" }
    }

    struct Key: Hashable, Sendable {
        var key: String
        var fingerprint: String
        var order: OrderID
    }

    struct OutboxRow: Hashable, Sendable, CustomStringConvertible {
        var sequence: Int64
        var event: PipelineEvent
        var attempts: Int
        var due: Instant
        var claim: String?
        var lastError: String?
        var publishedAt: Instant?
        var deadLetteredAt: Instant?
        var position: RecordPosition?

        init(
            sequence: Int64, event: PipelineEvent, attempts: Int, nextAttemptAt: Instant, claimedBy: String?, claimedUntil: Instant?,
            lastError: String?, publishedAt: Instant?, deadLetteredAt: Instant?, position: RecordPosition?
        ) {
            self.sequence = sequence
            self.event = event
            self.attempts = attempts
            self.due = nextAttemptAt
            self.claim = claimedBy.map { "\($0) until \(claimedUntil.map(\.description) ?? "nil")" }
            self.lastError = lastError
            self.publishedAt = publishedAt
            self.deadLetteredAt = deadLetteredAt
            self.position = position
        }

        var description: String {
            "#\(sequence) \(event.type.rawValue) of \(event.orderID) at \(event.occurredAt) id \(event.id) payload \(printable(event.payload)); "
                + "attempts \(attempts), due \(due), claim \(claim ?? "none"), last error \(lastError.map { String(reflecting: $0) } ?? "nil"), "
                + "published \(publishedAt.map(\.description) ?? "nil") at \(position.map(\.description) ?? "no position"), "
                + "dead-lettered \(deadLetteredAt.map(\.description) ?? "nil")"
        }
    }

    struct Letter: Hashable, Sendable, CustomStringConvertible {
        var source: String
        var reason: String
        var payload: [UInt8]
        var at: Instant
        var description: String { "\(source): \(String(reflecting: reason)) at \(at), payload \(printable(payload))" }
    }

    var orders: [Order] = []
    /// Commit order.
    var transitions: [Transition] = []
    var keys: [Key] = []
    var kafka: [OutboxRow] = []
    var serviceBus: [OutboxRow] = []
    var inbox: [EventID] = []
    var deadLetters: [Letter] = []

    /// Sorts what has no order of its own.
    mutating func normalise() {
        orders.sort { $0.id.description < $1.id.description }
        keys.sort { $0.key < $1.key }
        kafka.sort { $0.sequence < $1.sequence }
        serviceBus.sort { $0.sequence < $1.sequence }
        inbox.sort { $0.description < $1.description }
        deadLetters.sort { $0.source < $1.source }
    }

    /// One line per difference, `self` being the model and `other` PostgreSQL.
    func differences(from other: StoreSnapshot) -> [String] {
        var lines: [String] = []
        func compare<T: Equatable>(_ name: String, _ a: [T], _ b: [T]) {
            guard a != b else { return }
            lines.append("\(name): model has \(a.count), PostgreSQL \(b.count)")
            for index in 0..<max(a.count, b.count) where index >= a.count || index >= b.count || a[index] != b[index] {
                lines.append("  [\(index)] model:      \(index < a.count ? "\(a[index])" : "—")")
                lines.append("  [\(index)] PostgreSQL: \(index < b.count ? "\(b[index])" : "—")")
                if lines.count > 40 { return }
            }
        }
        compare("orders", orders, other.orders)
        compare("transitions", transitions, other.transitions)
        compare("idempotency keys", keys, other.keys)
        compare("kafka outbox", kafka, other.kafka)
        compare("service-bus outbox", serviceBus, other.serviceBus)
        compare("inbox", inbox, other.inbox)
        compare("dead letters", deadLetters, other.deadLetters)
        return lines
    }
}

/// Short payloads as text (or hex), long ones by length and digest: enough to see whether two differ.
func printable(_ bytes: [UInt8]) -> String {
    if bytes.count > 24 { return "\(bytes.count) bytes, SHA-1 \(SHA1.hash(bytes).hexString.prefix(12))" }
    if let text = String(validating: bytes, as: UTF8.self) { return String(reflecting: text) }
    return "0x" + bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
}

extension StoreSnapshot {
    init(_ model: PostgresModel) {
        orders = model.orderIDs.compactMap { model.orders[$0] }
        transitions = model.transitions.map { Transition(order: $0.orderID, from: $0.from, to: $0.to, at: $0.at) }
        keys = model.idempotencyKeys.map { Key(key: $0.key, fingerprint: $0.value.fingerprint, order: $0.value.orderID) }
        func rows(_ table: PostgresModel.OutboxTable) -> [OutboxRow] {
            table.rows.map {
                OutboxRow(
                    sequence: $0.sequence, event: $0.event, attempts: $0.attempts, nextAttemptAt: $0.nextAttemptAt,
                    claimedBy: $0.claimedBy, claimedUntil: $0.claimedUntil, lastError: $0.lastError,
                    publishedAt: $0.publishedAt, deadLetteredAt: $0.deadLetteredAt, position: $0.publishedPosition)
            }
        }
        kafka = rows(model.kafkaOutbox)
        serviceBus = rows(model.serviceBusOutbox)
        inbox = Array(model.inbox)
        deadLetters = model.deadLetters.map { Letter(source: $0.source, reason: $0.reason, payload: $0.payload, at: $0.at) }
        normalise()
    }

    /// Reads every table of the connection's schema (outside any transaction of the sequence).
    init(_ c: PostgresConnection) throws(PostgresError) {
        func instant(_ rows: PostgresRows, _ row: Int, _ column: Int) -> Instant? { rows.int(row, column).map { Instant(microseconds: $0) } }
        func malformed(_ what: String) -> PostgresError { PostgresError(code: .protocolViolation, message: "malformed \(what) row") }
        let ids = try c.query("SELECT id FROM orders")
        for row in 0..<ids.count {
            guard let id = ids.string(row, 0).flatMap({ OrderID($0) }), let order = try StoreRecipes.loadOrder(id, c, forUpdate: false)
            else { throw malformed("order") }
            orders.append(order)
        }
        let moves = try c.query("SELECT order_id, from_status, to_status, \(Self.micros("at")) FROM order_status_transitions ORDER BY id")
        for row in 0..<moves.count {
            guard let id = moves.string(row, 0).flatMap({ OrderID($0) }), let to = moves.string(row, 2).flatMap({ OrderStatus(rawValue: $0) }),
                let at = instant(moves, row, 3)
            else { throw malformed("transition") }
            transitions.append(Transition(order: id, from: moves.string(row, 1).flatMap { OrderStatus(rawValue: $0) }, to: to, at: at))
        }
        let keyRows = try c.query("SELECT key, fingerprint, order_id FROM idempotency_keys")
        for row in 0..<keyRows.count {
            guard let key = keyRows.string(row, 0), let fingerprint = keyRows.string(row, 1), let id = keyRows.string(row, 2).flatMap({ OrderID($0) })
            else { throw malformed("idempotency key") }
            keys.append(Key(key: key, fingerprint: fingerprint, order: id))
        }
        func outbox(_ table: String) throws(PostgresError) -> [OutboxRow] {
            let position = table == "kafka_outbox" ? "published_partition, published_offset" : "NULL::int, NULL::int8"
            let rows = try c.query(
                """
                SELECT sequence, event_id, event_type, order_id, \(Self.micros("occurred_at")), payload, attempts, \(Self.micros("next_attempt_at")),
                       claimed_by, \(Self.micros("claimed_until")), last_error, \(Self.micros("published_at")), \(Self.micros("dead_lettered_at")),
                       \(position)
                FROM \(table)
                """)
            var out: [OutboxRow] = []
            for row in 0..<rows.count {
                guard let sequence = rows.int(row, 0), let id = rows.string(row, 1).flatMap({ EventID($0) }),
                    let type = rows.string(row, 2).flatMap({ EventType(rawValue: $0) }), let order = rows.string(row, 3).flatMap({ OrderID($0) }),
                    let occurred = instant(rows, row, 4), let payload = rows.bytes(row, 5), let attempts = rows.int(row, 6),
                    let next = instant(rows, row, 7)
                else { throw malformed(table) }
                var event = PipelineEvent(type: type, orderID: order, at: occurred, status: .pending)
                event.id = id
                event.payload = payload
                out.append(
                    OutboxRow(
                        sequence: sequence, event: event, attempts: Int(attempts), nextAttemptAt: next,
                        claimedBy: rows.string(row, 8), claimedUntil: instant(rows, row, 9), lastError: rows.string(row, 10),
                        publishedAt: instant(rows, row, 11), deadLetteredAt: instant(rows, row, 12),
                        position: rows.int(row, 13).flatMap { p in rows.int(row, 14).map { RecordPosition(partition: Int32(p), offset: $0) } }))
            }
            return out
        }
        kafka = try outbox("kafka_outbox")
        serviceBus = try outbox("service_bus_outbox")
        let inboxRows = try c.query("SELECT event_id FROM consumer_inbox")
        inbox = (0..<inboxRows.count).compactMap { inboxRows.string($0, 0).flatMap { EventID($0) } }
        let letters = try c.query("SELECT source, reason, payload, \(Self.micros("at")) FROM dead_letters")
        for row in 0..<letters.count {
            guard let source = letters.string(row, 0), let reason = letters.string(row, 1), let payload = letters.bytes(row, 2),
                let at = instant(letters, row, 3)
            else { throw malformed("dead letter") }
            deadLetters.append(Letter(source: source, reason: reason, payload: payload, at: at))
        }
        normalise()
    }

    /// Empties every table of the schema and restarts its sequences, so the next sequence starts where a fresh
    /// database does (outbox sequence numbers are part of every claim's reply). Cheaper than TRUNCATE here.
    static func reset(_ c: PostgresConnection) throws(PostgresError) {
        try c.execute(
            script: """
                DELETE FROM order_items; DELETE FROM order_status_transitions; DELETE FROM orders; DELETE FROM idempotency_keys;
                DELETE FROM kafka_outbox; DELETE FROM service_bus_outbox; DELETE FROM consumer_inbox; DELETE FROM dead_letters;
                SELECT setval(pg_get_serial_sequence('kafka_outbox', 'sequence'), 1, false),
                       setval(pg_get_serial_sequence('service_bus_outbox', 'sequence'), 1, false),
                       setval(pg_get_serial_sequence('order_status_transitions', 'id'), 1, false),
                       setval(pg_get_serial_sequence('dead_letters', 'id'), 1, false);
                """)
    }

    /// Microseconds since the epoch, exactly (`extract` answers numeric).
    private static func micros(_ column: String) -> String { "(extract(epoch from \(column)) * 1000000)::int8" }
}
