import OrderPipelineCore

/// The SQL of every recipe. Values are always parameters ($n); table names come from `OutboxKind` only.
enum SQL {
    static func table(_ kind: OutboxKind) -> String {
        switch kind {
        case .kafka: "kafka_outbox"
        case .serviceBus: "service_bus_outbox"
        }
    }

    static func name(_ kind: OutboxKind) -> String {
        switch kind {
        case .kafka: "kafka"
        case .serviceBus: "sb"
        }
    }

    static func micros(_ column: String) -> String { "(extract(epoch from \(column)) * 1000000)::int8" }

    // MARK: createOrders — a batch of orders, one statement, one implicit transaction, one round trip.
    // One array per column, one element per order: $1 key, $2 fingerprint, $3 order id, $4 name, $5 email, $6 total,
    // $7 created_at, $8 items json, $9 event id, $10 event type, $11 payload (hex), $12 traceparent ('' for none).
    // Keys are inserted in key order, so two batches that share keys lock them in one order and cannot deadlock.
    static let createOrders = PreparedStatement(
        "op_create_orders",
        """
        WITH input AS (
            SELECT * FROM unnest(
                $1::text[], $2::text[], $3::uuid[], $4::text[], $5::text[], $6::numeric[], $7::timestamptz[], $8::json[],
                $9::uuid[], $10::text[], $11::text[], $12::text[]
            ) WITH ORDINALITY AS i(
                key, fingerprint, order_id, customer_name, customer_email, total, created_at, items,
                event_id, event_type, payload, traceparent, n)
        ), k AS (
            INSERT INTO idempotency_keys (key, fingerprint, order_id, created_at)
            SELECT key, fingerprint, order_id, created_at FROM input ORDER BY key
            ON CONFLICT (key) DO NOTHING
            RETURNING key
        ), fresh AS (
            SELECT input.* FROM input JOIN k ON k.key = input.key
        ), o AS (
            INSERT INTO orders (id, customer_name, customer_email, status, total_amount, created_at)
            SELECT order_id, customer_name, customer_email, 'Pending', total, created_at FROM fresh ORDER BY n
        ), i AS (
            INSERT INTO order_items (order_id, position, product_name, quantity, unit_price)
            SELECT f.order_id, e.ord, e.item->>'productName', (e.item->>'quantity')::int, (e.item->>'unitPrice')::numeric
            FROM fresh f, json_array_elements(f.items) WITH ORDINALITY AS e(item, ord)
        ), t AS (
            INSERT INTO order_status_transitions (order_id, from_status, to_status, at)
            SELECT order_id, NULL, 'Pending', created_at FROM fresh ORDER BY n
        ), x AS (
            INSERT INTO kafka_outbox (event_id, order_id, event_type, occurred_at, payload, next_attempt_at, traceparent)
            SELECT event_id, order_id, event_type, created_at, decode(payload, 'hex'), now(), NULLIF(traceparent, '')
            FROM fresh ORDER BY n
        )
        SELECT key FROM k
        """)

    /// The recorded fingerprint and order of keys a create batch found taken.
    static let idempotencyKeys = PreparedStatement(
        "op_idempotency_keys",
        "SELECT key, fingerprint, order_id FROM idempotency_keys WHERE key = ANY($1::text[])")

    static let orderColumns = """
        o.id, o.customer_name, o.customer_email, o.status, o.total_amount::text, \(micros("o.created_at")),
        \(micros("o.processed_at")), o.failure_reason
        """

    /// One row per item (an order always has at least one).
    static let loadOrder = PreparedStatement(
        "op_load_order",
        """
        SELECT \(orderColumns), i.product_name, i.quantity, i.unit_price::text
        FROM orders o LEFT JOIN order_items i ON i.order_id = o.id
        WHERE o.id = $1::uuid ORDER BY i.position
        """)

    static let loadOrderForUpdate = PreparedStatement(
        "op_load_order_for_update",
        """
        SELECT \(orderColumns), i.product_name, i.quantity, i.unit_price::text
        FROM orders o LEFT JOIN order_items i ON i.order_id = o.id
        WHERE o.id = $1::uuid ORDER BY i.position
        FOR UPDATE OF o
        """)

    static let listFirst = PreparedStatement(
        "op_list_first",
        """
        SELECT \(orderColumns) FROM orders o ORDER BY o.created_at DESC, o.id DESC LIMIT $1::int
        """)

    static let listAfter = PreparedStatement(
        "op_list_after",
        """
        SELECT \(orderColumns) FROM orders o
        WHERE (o.created_at, o.id) < (timestamptz 'epoch' + $2::int8 * interval '1 microsecond', $3::uuid)
        ORDER BY o.created_at DESC, o.id DESC LIMIT $1::int
        """)

    static let listItems = PreparedStatement(
        "op_list_items",
        """
        SELECT order_id, product_name, quantity, unit_price::text FROM order_items
        WHERE order_id = ANY($1::uuid[]) ORDER BY order_id, position
        """)

    // MARK: transition
    // $1 id, $2 status, $3 at, $4 reason
    static let updateStatus = PreparedStatement(
        "op_update_status",
        """
        UPDATE orders SET status = $2::text,
            processed_at = CASE WHEN $2::text IN ('Processing', 'Fulfilled') THEN coalesce(processed_at, $3::timestamptz) ELSE processed_at END,
            failure_reason = CASE WHEN $2::text = 'Failed' THEN $4::text ELSE failure_reason END
        WHERE id = $1::uuid
        """)

    // $1 id, $2 from, $3 to, $4 at, $5 reason
    static let recordTransition = PreparedStatement(
        "op_record_transition",
        """
        INSERT INTO order_status_transitions (order_id, from_status, to_status, at, reason)
        VALUES ($1::uuid, $2::text, $3::text, $4::timestamptz, $5::text)
        """)

    // $1 event id, $2 order id, $3 type, $4 occurred_at, $5 payload, $6 traceparent
    static func appendOutbox(_ kind: OutboxKind) -> PreparedStatement {
        PreparedStatement(
            "op_append_\(name(kind))",
            """
            INSERT INTO \(table(kind)) (event_id, order_id, event_type, occurred_at, payload, next_attempt_at, traceparent)
            VALUES ($1::uuid, $2::uuid, $3::text, $4::timestamptz, $5::bytea, now(), $6::text)
            """)
    }
    static let appendKafka = appendOutbox(.kafka)
    static let appendServiceBus = appendOutbox(.serviceBus)

    // MARK: claim — head of line per order, leases, SKIP LOCKED.
    // $1 owner, $2 lease (microseconds), $3 limit. Every time is the database's own clock. One row per claimed row,
    // or one row of NULLs when none was; each carries `held_back` (see `OutboxClaim`): when the claim was not full,
    // whether a later unsettled row of some order waits behind a row the owner holds (before or from this claim),
    // found through the owner's claimed rows (`_claimed_by`) and one probe each — a few rows, not the backlog.
    /// `OFFSET 0` keeps the head-of-line probe a correlated subplan, an index lookup on (order_id, sequence) per
    /// candidate, whatever the statistics: as an anti join, a plan cached while the table looked empty probed the
    /// whole partial index per candidate (no index condition), and a 27,000-row backlog drained at 250 rows/s
    /// until autovacuum's analyze replaced the plan (docs/POSTGRES.md). The candidates come from `_claimable`,
    /// which the probes cannot use (`Migrations.plans`): on a table never analyzed they took it, and walked it.
    /// The row `alias` of `table` is the head of its order: no older row of the same order is unsettled.
    static func headOfItsOrder(_ table: String, _ alias: String) -> String {
        """
        NOT EXISTS (
                      SELECT 1 FROM \(table) p
                      WHERE p.order_id = \(alias).order_id AND p.sequence < \(alias).sequence
                        AND p.published_at IS NULL AND p.dead_lettered_at IS NULL
                      OFFSET 0)
        """
    }

    /// What a claim returns per row (`StoreRecipes.messages` reads it).
    static let claimedColumns = """
        o.sequence, o.event_id, o.event_type, o.order_id, \(micros("o.occurred_at")) AS occurred, o.payload, o.attempts, o.traceparent
        """

    static func claim(_ kind: OutboxKind) -> PreparedStatement {
        let t = table(kind)
        return PreparedStatement(
            "op_claim_\(name(kind))",
            """
            WITH candidates AS (
                SELECT o.sequence FROM \(t) o
                WHERE o.published_at IS NULL AND o.dead_lettered_at IS NULL
                  AND o.next_attempt_at <= now()
                  AND o.claimed_by IS NULL
                  AND \(headOfItsOrder(t, "o"))
                ORDER BY o.sequence
                LIMIT $3::int
                FOR UPDATE OF o SKIP LOCKED
            )
            , taken AS (
                UPDATE \(t) o SET claimed_by = $1::text, claimed_until = now() + $2::int8 * interval '1 microsecond', attempts = o.attempts + 1
                FROM candidates c WHERE o.sequence = c.sequence
                RETURNING \(claimedColumns)
            ), held AS (
                SELECT CASE WHEN (SELECT count(*) FROM taken) >= $3::int THEN false ELSE EXISTS (
                    SELECT 1 FROM (
                        SELECT h.order_id, h.sequence FROM \(t) h
                        WHERE h.claimed_by = $1::text
                        UNION ALL SELECT order_id, sequence FROM taken
                    ) h
                    WHERE EXISTS (
                        SELECT 1 FROM \(t) s
                        WHERE s.order_id = h.order_id AND s.sequence > h.sequence AND s.published_at IS NULL AND s.dead_lettered_at IS NULL
                        OFFSET 0)
                ) END AS held_back
            )
            SELECT k.sequence, k.event_id, k.event_type, k.order_id, k.occurred, k.payload, k.attempts, k.traceparent, held.held_back
            FROM held LEFT JOIN taken k ON true
            """)
    }
    static let claimKafka = claim(.kafka)
    static let claimServiceBus = claim(.serviceBus)

    // MARK: take over expired leases — before a claim, in its transaction; $1 owner, $2 lease, $3 limit, as `claim`.
    /// The claimed rows whose lease has run out and that head their order are taken by `$1`, longest expired first,
    /// with the claim's columns. Found through `_lease` (the claimed rows by the end of their lease: the expired
    /// ones, and stale entries of rows settled since the last vacuum), which is why relays do this about once a
    /// second and not in every claim. Rows another session has locked (their owner settling them right now) are
    /// skipped: this never waits for a settle.
    static func takeOverExpired(_ kind: OutboxKind) -> PreparedStatement {
        let t = table(kind)
        return PreparedStatement(
            "op_take_over_\(name(kind))",
            """
            WITH expired AS (
                SELECT e.sequence FROM \(t) e
                WHERE e.claimed_by IS NOT NULL AND e.claimed_until <= now() AND e.next_attempt_at <= now()
                  AND \(headOfItsOrder(t, "e"))
                ORDER BY e.claimed_until, e.sequence
                LIMIT $3::int
                FOR UPDATE OF e SKIP LOCKED
            )
            UPDATE \(t) o SET claimed_by = $1::text, claimed_until = now() + $2::int8 * interval '1 microsecond', attempts = o.attempts + 1
            FROM expired x WHERE o.sequence = x.sequence
            RETURNING \(claimedColumns)
            """)
    }
    static let takeOverKafka = takeOverExpired(.kafka)
    static let takeOverServiceBus = takeOverExpired(.serviceBus)

    // MARK: settle — fenced by owner.
    // $1 owner, $2 published int8[], $3 retry seqs, $4 retry delays (microseconds), $5 retry errors, $6 rejected seqs,
    // $7 reasons, $8 and $9 (Kafka only) the partition and offset of each published row (NULL when not reported).
    // Every time is the database's own clock.
    static func settle(_ kind: OutboxKind) -> PreparedStatement {
        let t = table(kind)
        // Claims exist only on unsettled rows (CHECK, migration 4): the owner alone fences, and the rows are found
        // by primary key, never by scanning the unsettled indexes (`Migrations.plans`).
        let fence = "o.claimed_by = $1::text"
        let published =
            kind == .kafka
            ? """
            UPDATE \(t) o SET published_at = now(), claimed_by = NULL, claimed_until = NULL,
                published_partition = p.part, published_offset = p.off
            FROM unnest($2::int8[], $8::int4[], $9::int8[]) AS p(seq, part, off)
            WHERE o.sequence = p.seq AND \(fence)
            """
            : """
            UPDATE \(t) o SET published_at = now(), claimed_by = NULL, claimed_until = NULL
            WHERE o.sequence = ANY($2::int8[]) AND \(fence)
            """
        return PreparedStatement(
            "op_settle_\(name(kind))",
            """
            WITH pub AS (
                \(published)
                RETURNING 1
            ), ret AS (
                UPDATE \(t) o SET next_attempt_at = now() + r.delay * interval '1 microsecond', last_error = r.error,
                    claimed_by = NULL, claimed_until = NULL
                FROM unnest($3::int8[], $4::int8[], $5::text[]) AS r(seq, delay, error)
                WHERE o.sequence = r.seq AND \(fence)
                RETURNING 1
            ), rej AS (
                UPDATE \(t) o SET dead_lettered_at = now(), last_error = r.reason, claimed_by = NULL, claimed_until = NULL
                FROM unnest($6::int8[], $7::text[]) AS r(seq, reason)
                WHERE o.sequence = r.seq AND \(fence)
                RETURNING o.sequence, o.payload, r.reason
            ), dl AS (
                INSERT INTO dead_letters (source, reason, payload, at)
                SELECT '\(kind.rawValue)-outbox/' || rej.sequence, rej.reason, rej.payload, now() FROM rej
                -- A row dead-lettered again after `orderpipeline outbox replay` is listed again.
                ON CONFLICT (source) DO UPDATE SET reason = EXCLUDED.reason, payload = EXCLUDED.payload, at = EXCLUDED.at, replayed_at = NULL
                WHERE dead_letters.replayed_at IS NOT NULL
            )
            SELECT (SELECT count(*) FROM pub) + (SELECT count(*) FROM ret) + (SELECT count(*) FROM rej)
            """)
    }
    static let settleKafka = settle(.kafka)
    static let settleServiceBus = settle(.serviceBus)

    static func release(_ kind: OutboxKind) -> PreparedStatement {
        PreparedStatement(
            "op_release_\(name(kind))",
            """
            UPDATE \(table(kind)) SET claimed_by = NULL, claimed_until = NULL
            WHERE claimed_by = $1::text
            """)
    }
    static let releaseKafka = release(.kafka)
    static let releaseServiceBus = release(.serviceBus)

    // MARK: fulfil
    /// The whole consumer transaction over a batch of records as one statement (one round trip, one commit), set
    /// based: the inbox inserts first; everything else is conditional on a record's insert, so a redelivery writes
    /// nothing. Arrays, one element per record in order: $1 event ids, $2 event types, $3 order ids, $4 at, $5
    /// fulfilment event ids, $6 fulfilment payloads (hex), $7 traceparents ('' for none). Answers per record, in
    /// order: whether its inbox row is new (the first record of an event id the inbox lacked), its order's status
    /// (locked; only for a new OrderCreated), whether it fulfilled the order (only the first new OrderCreated of
    /// an order can), and, for the first duplicate OrderCreated of an event id, whether its order was fulfilled with
    /// this record's `at` (by an earlier attempt of this batch; read in the statement's snapshot, from before it). Rows, transitions and outbox rows are written in record order.
    /// `orders` is reached by key only, whatever the statistics: a generic plan cached while the table was small
    /// joined every record to a sequential scan of it, kept as the table grew (docs/POSTGRES.md). So `target`
    /// locks through a `LATERAL … OFFSET 0` lookup, in `creates`' order (by order id), and the duplicate check is
    /// a scalar subquery, never hashed, read only for a duplicate `OrderCreated`.
    static let fulfil = PreparedStatement(
        "op_fulfil_batch",
        """
        WITH input AS (
            SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::timestamptz[], $5::uuid[], $6::text[], $7::text[])
                WITH ORDINALITY AS i(event_id, event_type, order_id, at, fulfilment_id, payload, traceparent, n)
        ), ins AS (
            INSERT INTO consumer_inbox (event_id, event_type, order_id, received_at)
            SELECT event_id, event_type, order_id, at FROM input ORDER BY n
            ON CONFLICT (event_id) DO NOTHING
            RETURNING event_id
        ), fresh AS (
            SELECT DISTINCT ON (i.event_id) i.* FROM input i JOIN ins ON ins.event_id = i.event_id ORDER BY i.event_id, i.n
        ), creates AS (
            SELECT DISTINCT ON (order_id) * FROM fresh WHERE event_type = 'OrderCreated' ORDER BY order_id, n
        ), target AS (
            SELECT c.order_id AS id, o.status FROM creates c
            CROSS JOIN LATERAL (SELECT status FROM orders WHERE id = c.order_id OFFSET 0 FOR UPDATE) o
        ), upd AS (
            UPDATE orders o SET status = 'Fulfilled', processed_at = c.at
            FROM target t JOIN creates c ON c.order_id = t.id
            WHERE o.id = t.id AND t.status = 'Pending'
            RETURNING o.id, c.n, c.at, c.fulfilment_id, c.payload, c.traceparent
        ), tr AS (
            INSERT INTO order_status_transitions (order_id, from_status, to_status, at)
            SELECT upd.id, v.from_status, v.to_status, upd.at
            FROM upd, (VALUES (1, 'Pending', 'Processing'), (2, 'Processing', 'Fulfilled')) AS v(step, from_status, to_status)
            ORDER BY upd.n, v.step
        ), sb AS (
            INSERT INTO service_bus_outbox (event_id, order_id, event_type, occurred_at, payload, next_attempt_at, traceparent)
            SELECT fulfilment_id, id, 'OrderFulfilled', at, decode(payload, 'hex'), now(), NULLIF(traceparent, '')
            FROM upd ORDER BY n
        )
        SELECT f.n IS NOT NULL, t.status, u.n IS NOT NULL,
            f.n IS NULL AND i.event_type = 'OrderCreated'
                AND NOT EXISTS (SELECT 1 FROM input j WHERE j.event_id = i.event_id AND j.n < i.n)
                AND (SELECT e.status = 'Fulfilled' AND e.processed_at = i.at FROM orders e WHERE e.id = i.order_id)
        FROM input i
        LEFT JOIN fresh f ON f.n = i.n
        LEFT JOIN target t ON t.id = i.order_id
        LEFT JOIN upd u ON u.n = i.n
        ORDER BY i.n
        """)

    // MARK: reconciler — reopen the OrderCreated row of orders published but still Pending after $1 µs.
    // Two statements, so that a round reads the pending orders and their rows, never the history: the pending
    // orders by their partial index (migration 5), a page at a time, oldest first; then their OrderCreated rows by
    // event id (derived from the order id, `EventID.derived`) through the unique index. The single join it replaces
    // read every order and the whole Kafka outbox each round (157 ms at 500,000 orders, growing with the history).

    // $1 the last page's (created_at, id) ('-infinity' and the nil UUID for the first page), $2 page size.
    static let pendingOrdersPage = PreparedStatement(
        "op_pending_orders_page",
        """
        SELECT id, created_at::text FROM orders
        WHERE status = 'Pending' AND (created_at, id) > ($1::timestamptz, $2::uuid)
        ORDER BY created_at, id
        LIMIT $3::int
        """)

    // $1 overdue after (microseconds), $2 the OrderCreated event ids of a page, $3 limit. Oldest orders first; NOTIFY
    // wakes the relays.
    static let reopenOverdue = PreparedStatement(
        "op_reopen_overdue",
        """
        WITH overdue AS (
            SELECT k.sequence, k.order_id FROM kafka_outbox k
            JOIN orders o ON o.id = k.order_id
            WHERE k.event_id = ANY($2::uuid[]) AND k.event_type = 'OrderCreated' AND o.status = 'Pending'
              AND k.published_at IS NOT NULL AND k.published_at <= now() - $1::int8 * interval '1 microsecond'
              AND NOT EXISTS (
                  SELECT 1 FROM kafka_outbox u
                  WHERE u.order_id = o.id AND u.published_at IS NULL AND u.dead_lettered_at IS NULL
                  OFFSET 0)  -- a lookup by order, as the claim's probe: an anti join walked the unsettled index per order
            ORDER BY o.created_at, o.id
            LIMIT $3::int
            FOR UPDATE OF k SKIP LOCKED
        ), reopened AS (
            UPDATE kafka_outbox k SET published_at = NULL, next_attempt_at = now(),
                last_error = 're-announced: published but not fulfilled in time'
            FROM overdue WHERE k.sequence = overdue.sequence
            RETURNING k.order_id
        ), woken AS (
            SELECT pg_notify('orderpipeline_outbox', 'kafka') FROM (SELECT 1 FROM reopened LIMIT 1) AS any_row
        )
        SELECT r.order_id FROM reopened r, (SELECT count(*) FROM woken) AS w  -- referencing `woken` makes it run
        """)

    // MARK: dead letters
    static let deadLetter = PreparedStatement(
        "op_dead_letter",
        """
        INSERT INTO dead_letters (source, reason, payload, at) VALUES ($1::text, $2::text, $3::bytea, $4::timestamptz)
        ON CONFLICT (source) DO NOTHING
        """)

    // MARK: observability
    static func pending(_ kind: OutboxKind) -> PreparedStatement {
        PreparedStatement(
            "op_pending_\(name(kind))",
            """
            SELECT count(*), coalesce(extract(epoch from now() - min(created_at)), 0)::float8
            FROM \(table(kind)) WHERE published_at IS NULL AND dead_lettered_at IS NULL
            """)
    }
    static let pendingKafka = pending(.kafka)
    static let pendingServiceBus = pending(.serviceBus)

    /// `{"a","b"}`: a text[] literal, every element quoted and escaped (passed as a parameter, never spliced).
    /// Works on UTF-8 bytes (a consumer batch passes ~60 kB of them per statement).
    static func arrayLiteral(_ elements: [String]) -> String {
        let quote = UInt8(ascii: "\""), backslash = UInt8(ascii: "\\")
        var out: [UInt8] = [UInt8(ascii: "{")]
        out.reserveCapacity(elements.reduce(2) { $0 + $1.utf8.count + 3 })
        for (index, element) in elements.enumerated() {
            if index > 0 { out.append(UInt8(ascii: ",")) }
            out.append(quote)
            // Most elements (hex payloads, ids, reasons) need no escape: copied whole, not byte by byte.
            if element.utf8.contains(where: { $0 == quote || $0 == backslash || $0 == 0 }) {
                for byte in element.utf8 where byte != 0 {
                    if byte == quote || byte == backslash { out.append(backslash) }
                    out.append(byte)
                }
            } else {
                out.append(contentsOf: element.utf8)
            }
            out.append(quote)
        }
        out.append(UInt8(ascii: "}"))
        return String(decoding: out, as: UTF8.self)
    }
}
