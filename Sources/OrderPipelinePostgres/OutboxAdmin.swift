import OrderPipelineCore

/// Operator views and actions on the outboxes and the dead letters (`orderpipeline outbox …`). Parameterised SQL
/// only; payloads are never returned, only their size.
public enum OutboxAdmin {
    /// One outbox: unsettled rows, the oldest one's age, and who holds claims.
    public struct OutboxStatus: Sendable, Hashable {
        public var outbox: OutboxKind
        /// Unpublished and not dead-lettered.
        public var pending: Int
        /// Pending rows that failed at least once (`last_error` set).
        public var retrying: Int
        /// Age of the oldest pending row, in seconds (0 when none).
        public var oldestPendingAgeSeconds: Double
        /// Dead-lettered rows not yet replayed.
        public var deadLettered: Int
        public var claims: [Claim]
    }

    /// The pending rows one relay owner holds.
    public struct Claim: Sendable, Hashable {
        public var owner: String
        public var rows: Int
        /// Rows whose lease has run out (claimable by any relay again).
        public var expired: Int
        /// The latest lease end among them (`timestamptz` text as PostgreSQL prints it).
        public var leaseUntil: String
    }

    /// One row of `dead_letters`: where it came from, why, when (`timestamptz` text), its payload's size, and
    /// when it was replayed (nil: waiting).
    public struct DeadLetterEntry: Sendable, Hashable {
        public var id: Int64
        public var source: String
        public var reason: String
        public var at: String
        public var payloadBytes: Int
        public var replayedAt: String?
    }

    /// What replaying a dead letter did.
    public enum ReplayResult: Sendable, Hashable, CustomStringConvertible {
        /// A dead-lettered outbox row is unsettled again, due now, with its attempts reset.
        case requeued(OutboxKind, sequence: Int64)
        /// A poison record that decodes now: its event was inserted into the Kafka outbox.
        case reinserted(sequence: Int64, event: EventID)
        /// A poison record whose event is already in the Kafka outbox: nothing inserted (marked replayed).
        case alreadyInOutbox(sequence: Int64, event: EventID)
        /// Replayed before: nothing changed.
        case alreadyReplayed(at: String)
        case notFound
        /// The dead letter names an outbox row that is missing, published, or no longer dead-lettered.
        case outboxRowNotDeadLettered(OutboxKind, sequence: Int64)
        /// A poison record that still does not decode: nothing changed.
        case stillUndecodable(String)

        /// Whether the replay changed anything in the database.
        public var changed: Bool {
            switch self {
            case .requeued, .reinserted, .alreadyInOutbox: true
            default: false
            }
        }

        public var description: String {
            switch self {
            case let .requeued(kind, sequence): "re-queued \(kind.rawValue) outbox row \(sequence) (due now, attempts reset)"
            case let .reinserted(sequence, event): "inserted event \(event) into the Kafka outbox as row \(sequence)"
            case let .alreadyInOutbox(sequence, event): "event \(event) is already in the Kafka outbox (row \(sequence)); nothing inserted, marked replayed"
            case .alreadyReplayed(let at): "already replayed at \(at); nothing changed"
            case .notFound: "no such dead letter"
            case let .outboxRowNotDeadLettered(kind, sequence): "\(kind.rawValue) outbox row \(sequence) is missing, published or not dead-lettered; nothing changed"
            case .stillUndecodable(let reason): "the record still does not decode (\(reason)); nothing changed"
            }
        }
    }

    static func table(_ kind: OutboxKind) -> String { kind == .kafka ? "kafka_outbox" : "service_bus_outbox" }

    /// Both outboxes. Reads only the unsettled rows (partial indexes) and the dead-letter table.
    public static func status(_ c: PostgresConnection) throws(PostgresError) -> [OutboxStatus] {
        var result: [OutboxStatus] = []
        for kind in OutboxKind.allCases {
            let t = table(kind)
            let summary = try c.query(
                """
                SELECT count(*), count(*) FILTER (WHERE last_error IS NOT NULL),
                       coalesce(extract(epoch from now() - min(created_at)), 0)::float8
                FROM \(t) WHERE published_at IS NULL AND dead_lettered_at IS NULL
                """)
            let dead = try c.query(
                """
                SELECT count(*) FROM dead_letters WHERE source LIKE $1::text AND replayed_at IS NULL
                """, [.text("\(kind.rawValue)-outbox/%")])
            let claims = try c.query(
                """
                SELECT claimed_by, count(*), count(*) FILTER (WHERE claimed_until <= now()), max(claimed_until)::text
                FROM \(t) WHERE claimed_by IS NOT NULL AND published_at IS NULL AND dead_lettered_at IS NULL
                GROUP BY claimed_by ORDER BY claimed_by
                """)
            result.append(
                OutboxStatus(
                    outbox: kind, pending: Int(summary.int(0, 0) ?? 0), retrying: Int(summary.int(0, 1) ?? 0),
                    oldestPendingAgeSeconds: summary.string(0, 2).flatMap(Double.init) ?? 0, deadLettered: Int(dead.int(0, 0) ?? 0),
                    claims: (0..<claims.count).map { row in
                        Claim(
                            owner: claims.string(row, 0) ?? "", rows: Int(claims.int(row, 1) ?? 0), expired: Int(claims.int(row, 2) ?? 0),
                            leaseUntil: claims.string(row, 3) ?? "")
                    }))
        }
        return result
    }

    /// Dead letters, oldest first; replayed ones only when asked.
    public static func deadLetters(includeReplayed: Bool, limit: Int, _ c: PostgresConnection) throws(PostgresError) -> [DeadLetterEntry] {
        let rows = try c.query(
            """
            SELECT id, source, reason, at::text, octet_length(payload), replayed_at::text FROM dead_letters
            WHERE $1::bool OR replayed_at IS NULL ORDER BY id LIMIT $2::int
            """, [.text(includeReplayed ? "true" : "false"), .int(limit)])
        return (0..<rows.count).map { row in
            DeadLetterEntry(
                id: rows.int(row, 0) ?? 0, source: rows.string(row, 1) ?? "", reason: rows.string(row, 2) ?? "",
                at: rows.string(row, 3) ?? "", payloadBytes: Int(rows.int(row, 4) ?? 0), replayedAt: rows.string(row, 5))
        }
    }

    /// What a dead letter's `source` names: an outbox row (`kafka-outbox/42`) or a consumed record (`orders/2@117`).
    enum Source: Equatable {
        case outbox(OutboxKind, Int64)
        case record

        init(_ text: String) {
            for kind in OutboxKind.allCases {
                let prefix = "\(kind.rawValue)-outbox/"
                if text.hasPrefix(prefix), let sequence = Int64(text.dropFirst(prefix.count)) {
                    self = .outbox(kind, sequence)
                    return
                }
            }
            self = .record
        }
    }

    /// Replays one dead letter, in one transaction, idempotently (a second replay changes nothing):
    /// - an outbox row (`kafka-outbox/N`, `service-bus-outbox/N`) becomes unsettled again: `dead_lettered_at`
    ///   and its claim cleared, `attempts` 0, due now; it is again the head of its order (later unsettled rows of
    ///   the order wait behind it). The relays are notified.
    /// - a poison record is decoded again (the consumer may have been fixed since); if it decodes, its event is
    ///   inserted into the Kafka outbox with the record's exact bytes (`ON CONFLICT (event_id) DO NOTHING`), else
    ///   nothing changes.
    /// The dead letter gets `replayed_at`. If the row is dead-lettered again later, the settle recipe records it
    /// again (same source, `replayed_at` cleared).
    public static func replay(id: Int64, _ c: PostgresConnection) throws(PostgresError) -> ReplayResult {
        try c.execute(constant: "BEGIN")
        do {
            let result = try replayInTransaction(id: id, c)
            try c.execute(constant: result.changed ? "COMMIT" : "ROLLBACK")
            return result
        } catch {
            if error.code != .connectionLost { _ = try? c.execute(constant: "ROLLBACK") }
            throw error
        }
    }

    static func replayInTransaction(id: Int64, _ c: PostgresConnection) throws(PostgresError) -> ReplayResult {
        let letter = try c.query("SELECT source, payload, replayed_at::text FROM dead_letters WHERE id = $1::int8 FOR UPDATE", [.int(id)])
        guard letter.count == 1, let sourceText = letter.string(0, 0), let payload = letter.bytes(0, 1) else { return .notFound }
        if let at = letter.string(0, 2) { return .alreadyReplayed(at: at) }
        let result: ReplayResult
        switch Source(sourceText) {
        case let .outbox(kind, sequence):
            let updated = try c.query(
                """
                UPDATE \(table(kind)) SET dead_lettered_at = NULL, claimed_by = NULL, claimed_until = NULL,
                       attempts = 0, next_attempt_at = now()
                WHERE sequence = $1::int8 AND dead_lettered_at IS NOT NULL AND published_at IS NULL
                """, [.int(sequence)])
            guard updated.affected == 1 else { return .outboxRowNotDeadLettered(kind, sequence: sequence) }
            try c.query("SELECT pg_notify($1::text, $2::text)", [.text(Migrations.notifyChannel), .text(kind.rawValue)])
            result = .requeued(kind, sequence: sequence)
        case .record:
            let envelope: EventEnvelope
            switch EventEnvelope.decode(payload) {
            case .success(let decoded): envelope = decoded
            case .failure(let error): return .stillUndecodable(error.description)
            }
            // The trigger on kafka_outbox notifies the relays.
            let inserted = try c.query(
                """
                INSERT INTO kafka_outbox (event_id, order_id, event_type, occurred_at, payload, next_attempt_at)
                VALUES ($1::uuid, $2::uuid, $3::text, now(), $4::bytea, now())
                ON CONFLICT (event_id) DO NOTHING RETURNING sequence
                """, [.text(envelope.id.description), .text(envelope.orderID.description), .text(envelope.type.rawValue), .bytes(payload)])
            if let sequence = inserted.int(0, 0) {
                result = .reinserted(sequence: sequence, event: envelope.id)
            } else {
                let existing = try c.query("SELECT sequence FROM kafka_outbox WHERE event_id = $1::uuid", [.text(envelope.id.description)])
                result = .alreadyInOutbox(sequence: existing.int(0, 0) ?? 0, event: envelope.id)
            }
        }
        try c.query("UPDATE dead_letters SET replayed_at = now() WHERE id = $1::int8", [.int(id)])
        return result
    }
}
