import Logging

/// One versioned schema change. Versions only grow; an applied migration is never edited (add a new one).
public struct Migration: Sendable, Hashable {
    public var version: Int
    public var name: String
    public var sql: String
}

/// The schema, as an ordered list of migrations, and the code that applies them.
///
/// `apply` is idempotent: each migration runs in its own transaction together with its row in
/// `schema_migrations`, under an advisory lock (per schema) so that two `migrate` runs at once do not race.
public enum Migrations {
    /// Every migration, by version.
    public static let all: [Migration] = [
        Migration(
            version: 1, name: "orders, outboxes, inbox, idempotency keys, dead letters",
            sql: """
                CREATE TABLE orders (
                    id              uuid PRIMARY KEY,
                    customer_name   text NOT NULL,
                    customer_email  text NOT NULL,
                    status          text NOT NULL CHECK (status IN ('Pending', 'Processing', 'Fulfilled', 'Failed')),
                    -- 100 items x 10,000 x 1,000,000.00 (the API's limits) needs 13 integer digits.
                    total_amount    numeric(15,2) NOT NULL CHECK (total_amount >= 0),
                    created_at      timestamptz NOT NULL,
                    processed_at    timestamptz,
                    failure_reason  text
                );
                -- Newest first, keyset-paginated (GET /api/orders).
                CREATE INDEX orders_created_at_id ON orders (created_at DESC, id DESC);

                CREATE TABLE order_items (
                    order_id        uuid NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
                    position        int NOT NULL,
                    product_name    text NOT NULL,
                    quantity        int NOT NULL CHECK (quantity > 0),
                    unit_price      numeric(12,2) NOT NULL CHECK (unit_price >= 0),
                    PRIMARY KEY (order_id, position)
                );

                -- Every status change, creation (NULL -> Pending) included. "Exactly one Fulfilled transition per order"
                -- is checked against this table.
                CREATE TABLE order_status_transitions (
                    id              bigserial PRIMARY KEY,
                    order_id        uuid NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
                    from_status     text,
                    to_status       text NOT NULL,
                    at              timestamptz NOT NULL,
                    reason          text
                );
                CREATE INDEX order_status_transitions_order ON order_status_transitions (order_id, id);

                CREATE TABLE idempotency_keys (
                    key             text PRIMARY KEY,
                    fingerprint     text NOT NULL,
                    order_id        uuid NOT NULL,
                    created_at      timestamptz NOT NULL
                );

                \(outboxTable("kafka_outbox"))
                \(outboxTable("service_bus_outbox"))
                -- Pessimistic inbox of the fulfilment consumer: an event id is inserted before its work, in one transaction.
                CREATE TABLE consumer_inbox (
                    event_id        uuid PRIMARY KEY,
                    event_type      text NOT NULL,
                    order_id        uuid NOT NULL,
                    received_at     timestamptz NOT NULL
                );

                -- Poison records and permanently refused outbox rows, with why; `source` makes recording idempotent.
                CREATE TABLE dead_letters (
                    id              bigserial PRIMARY KEY,
                    source          text NOT NULL UNIQUE,
                    reason          text NOT NULL,
                    payload         bytea NOT NULL,
                    at              timestamptz NOT NULL,
                    replayed_at     timestamptz,
                    created_at      timestamptz NOT NULL DEFAULT now()
                );

                -- NOTIFY in every transaction that inserts outbox rows (the relays LISTEN on channel orderpipeline_outbox,
                -- payload = the outbox: 'kafka' or 'service-bus'). A statement trigger with a transition table fires once
                -- per inserting statement and only when rows were inserted; PostgreSQL folds repeats within a transaction.
                CREATE FUNCTION orderpipeline_notify_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF EXISTS (SELECT 1 FROM inserted) THEN
                        PERFORM pg_notify('orderpipeline_outbox', TG_ARGV[0]);
                    END IF;
                    RETURN NULL;
                END
                $$;
                CREATE TRIGGER kafka_outbox_notify AFTER INSERT ON kafka_outbox
                    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION orderpipeline_notify_outbox('kafka');
                CREATE TRIGGER service_bus_outbox_notify AFTER INSERT ON service_bus_outbox
                    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION orderpipeline_notify_outbox('service-bus');
                """),
        // Nullable columns: no table rewrite; rows written before carry no trace.
        Migration(
            version: 2, name: "W3C traceparent of each outbox row",
            sql: """
                ALTER TABLE kafka_outbox ADD COLUMN traceparent text;
                ALTER TABLE service_bus_outbox ADD COLUMN traceparent text;
                """),
        relay,
        plans,
        pendingOrders,
        claimedRowsApart,
    ]

    /// Both outboxes have the same shape.
    static func outboxTable(_ name: String) -> String {
        """
        CREATE TABLE \(name) (
            sequence        bigserial PRIMARY KEY,
            event_id        uuid NOT NULL UNIQUE,
            order_id        uuid NOT NULL,
            event_type      text NOT NULL,
            occurred_at     timestamptz NOT NULL,
            payload         bytea NOT NULL,
            attempts        int NOT NULL DEFAULT 0,
            next_attempt_at timestamptz NOT NULL,
            claimed_by      text,
            claimed_until   timestamptz,
            last_error      text,
            published_at    timestamptz,
            dead_lettered_at timestamptz,
            created_at      timestamptz NOT NULL DEFAULT now()
        );
        -- The relay's claim scans only unsettled rows, oldest first; the head-of-line probe looks up one order's
        -- unsettled rows. Both stay small however large the table grows.
        CREATE INDEX \(name)_unsettled ON \(name) (sequence)
            WHERE published_at IS NULL AND dead_lettered_at IS NULL;
        CREATE INDEX \(name)_unsettled_order ON \(name) (order_id, sequence)
            WHERE published_at IS NULL AND dead_lettered_at IS NULL;
        CREATE INDEX \(name)_claimed_by ON \(name) (claimed_by) WHERE claimed_by IS NOT NULL;
        """
    }

    /// The version this build's schema has once every migration is applied.
    public static var latest: Int { all.map(\.version).max() ?? 0 }

    /// The channel the outbox triggers notify.
    public static let notifyChannel = "orderpipeline_outbox"

    /// Applies every migration not yet recorded; returns the versions applied now (empty when up to date).
    public static func apply(on connection: PostgresConnection, logger: Logger) throws(PostgresError) -> [Int] {
        // Even `CREATE TABLE IF NOT EXISTS` fails when two sessions run it at once: create it under the lock too.
        try locked(connection) { () throws(PostgresError) in
            try connection.execute(
                constant: """
                    CREATE TABLE IF NOT EXISTS schema_migrations (
                        version    int PRIMARY KEY,
                        name       text NOT NULL,
                        applied_at timestamptz NOT NULL DEFAULT now()
                    )
                    """)
        }
        var applied: [Int] = []
        for migration in all.sorted(by: { $0.version < $1.version }) {
            let done = try locked(connection) { () throws(PostgresError) -> Bool in
                let done = try connection.query("SELECT 1 FROM schema_migrations WHERE version = $1::int", [.int(migration.version)])
                guard done.count == 0 else { return true }
                try connection.execute(script: migration.sql)
                try connection.query(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1::int, $2::text)",
                    [.int(migration.version), .text(migration.name)])
                return false
            }
            if !done {
                applied.append(migration.version)
                logger.info("Applied migration", metadata: ["db.migration.version": "\(migration.version)", "db.migration.name": "\(migration.name)"])
            }
        }
        return applied
    }

    /// One transaction holding the migration lock of the current schema: concurrent `migrate` runs take turns.
    private static func locked<T>(_ connection: PostgresConnection, _ body: () throws(PostgresError) -> T) throws(PostgresError) -> T {
        try connection.execute(constant: "BEGIN")
        do {
            // Released at the end of the transaction.
            try connection.query("SELECT pg_advisory_xact_lock($1::int, hashtext(current_schema()))", [.int(0x6F72_6465)])
            let value = try body()
            try connection.execute(constant: "COMMIT")
            return value
        } catch {
            _ = try? connection.execute(constant: "ROLLBACK")
            throw error
        }
    }

    /// The highest applied version, or nil when the database has never been migrated.
    public static func currentVersion(on connection: PostgresConnection) throws(PostgresError) -> Int? {
        let exists = try connection.query("SELECT to_regclass('schema_migrations') IS NOT NULL")
        guard exists.string(0, 0) == "t" else { return nil }
        return try connection.query("SELECT max(version) FROM schema_migrations").int(0, 0).map(Int.init)
    }
}
