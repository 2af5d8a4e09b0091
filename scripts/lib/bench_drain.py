"""Backlog drains: the Kafka outbox relay (vs pgbench of its claim+settle statements and a raw librdkafka
producer) and the fulfilment consumer (vs pgbench of its batched fulfil statement)."""
import math
import time
import uuid

import psycopg

from bench_common import (CpuMeter, Pipeline, drain_limit, kafka_producer, log, median, pgbench, scalar, scratch_database,
                          scratch_topic, wait_until_none)

NAMESPACE = "2b1f6f1e-8a3c-4c56-9d0e-5a7b3c9e4f10"  # EventID.namespace
BATCH = 500  # OutboxRelay.Configuration.batchSize of the Kafka relay

# N Pending orders, each with its OrderCreated row in the Kafka outbox, shaped as the API writes them (the payload
# carries the order; the event id is the derived v5 UUID, so the consumer takes the records as genuine).
BACKLOG = f"""
WITH g AS (
    SELECT n, gen_random_uuid() AS id, now() - interval '1 hour' + n * interval '1 microsecond' AS at
    FROM generate_series(1, %(n)s) AS n
), o AS (
    INSERT INTO orders (id, customer_name, customer_email, status, total_amount, created_at)
    SELECT id, 'John Smith', 'john@example.com', 'Pending', 999.99, at FROM g
), t AS (SELECT g.*, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS stamp FROM g)
INSERT INTO kafka_outbox (event_id, order_id, event_type, occurred_at, payload, next_attempt_at)
SELECT uuid_generate_v5('{NAMESPACE}'::uuid, t.id::text || '/OrderCreated'), t.id, 'OrderCreated', t.at,
    convert_to(json_build_object(
        'eventId', uuid_generate_v5('{NAMESPACE}'::uuid, t.id::text || '/OrderCreated'), 'eventType', 'OrderCreated',
        'orderId', t.id, 'occurredAt', t.stamp, 'status', 'Pending', 'totalAmount', 999.99,
        'order', json_build_object('id', t.id, 'customerName', 'John Smith', 'customerEmail', 'john@example.com',
            'status', 'Pending', 'totalAmount', 999.99, 'createdAt', t.stamp, 'processedAt', NULL, 'failureReason', NULL,
            'items', json_build_array(json_build_object('productName', 'Laptop', 'quantity', 1, 'unitPrice', 999.99)))
    )::text, 'UTF8'), t.at
FROM t ORDER BY t.n
"""

# SQL.claim(.kafka) (without the take-over of expired leases, which a relay adds about once a second) then
# SQL.settle(.kafka) with every row published (with a partition and offset each), as one relay
# round (owner per client).
CLAIM_SETTLE = """
WITH c AS (
    WITH candidates AS (
        SELECT o.sequence FROM kafka_outbox o
        WHERE o.published_at IS NULL AND o.dead_lettered_at IS NULL
          AND o.next_attempt_at <= now()
          AND o.claimed_by IS NULL
          AND NOT EXISTS (
              SELECT 1 FROM kafka_outbox p
              WHERE p.order_id = o.order_id AND p.sequence < o.sequence
                AND p.published_at IS NULL AND p.dead_lettered_at IS NULL
              OFFSET 0)
        ORDER BY o.sequence
        LIMIT BATCH
        FOR UPDATE OF o SKIP LOCKED
    )
    UPDATE kafka_outbox o SET claimed_by = 'pgbench-' || :client_id::text, claimed_until = now() + interval '30 seconds', attempts = o.attempts + 1
    FROM candidates c WHERE o.sequence = c.sequence
    RETURNING o.sequence, o.event_id, o.event_type, o.order_id, (extract(epoch from o.occurred_at) * 1000000)::int8, o.payload, o.attempts
)
SELECT coalesce(array_agg(sequence), '{}') AS seqs, sum(octet_length(payload)) AS bytes FROM c \\gset
WITH pub AS (
    UPDATE kafka_outbox o SET published_at = now(), claimed_by = NULL, claimed_until = NULL,
        published_partition = p.part, published_offset = p.off
    FROM unnest(:seqs::int8[], array_fill(0, ARRAY[cardinality(:seqs::int8[])]), :seqs::int8[]) AS p(seq, part, off)
    WHERE o.sequence = p.seq AND o.claimed_by = 'pgbench-' || :client_id::text AND o.published_at IS NULL AND o.dead_lettered_at IS NULL
    RETURNING 1
), ret AS (
    UPDATE kafka_outbox o SET next_attempt_at = r.not_before, last_error = r.error, claimed_by = NULL, claimed_until = NULL
    FROM unnest('{}'::int8[], '{}'::timestamptz[], '{}'::text[]) AS r(seq, not_before, error)
    WHERE o.sequence = r.seq AND o.claimed_by = 'pgbench-' || :client_id::text AND o.published_at IS NULL AND o.dead_lettered_at IS NULL
    RETURNING 1
)
SELECT (SELECT count(*) FROM pub) + (SELECT count(*) FROM ret);
"""

# SQL.fulfil's work for a batch of FULFIL_BATCH records per transaction (the consumer's batchMax): the inbox rows,
# the orders locked in id order, two transitions each and a Service Bus outbox row each, in one statement, one round
# trip, one commit, as the consumer's. The records' ids come from bench_ids, the backlog's orders in turn (ROWS is the
# backlog's size), each once.
FULFIL_BATCH = 100
FULFIL = """
WITH b AS (
    SELECT order_id, event_id, n FROM bench_ids
    WHERE n > (SELECT ((nextval('bench_seq') - 1) * BATCH) % ROWS) ORDER BY n LIMIT BATCH
), ins AS (
    INSERT INTO consumer_inbox (event_id, event_type, order_id, received_at)
    SELECT event_id, 'OrderCreated', order_id, now() FROM b ORDER BY n ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id, order_id
), target AS (
    SELECT o.id, o.status FROM orders o JOIN ins ON ins.order_id = o.id ORDER BY o.id FOR UPDATE OF o
), upd AS (
    UPDATE orders o SET status = 'Fulfilled', processed_at = now()
    FROM target t WHERE o.id = t.id AND t.status = 'Pending'
    RETURNING o.id
), tr AS (
    INSERT INTO order_status_transitions (order_id, from_status, to_status, at)
    SELECT upd.id, v.from_status, v.to_status, now()
    FROM upd, (VALUES (1, 'Pending', 'Processing'), (2, 'Processing', 'Fulfilled')) AS v(n, from_status, to_status)
    ORDER BY upd.id, v.n
), sb AS (
    INSERT INTO service_bus_outbox (event_id, order_id, event_type, occurred_at, payload, next_attempt_at)
    SELECT gen_random_uuid(), upd.id, 'OrderFulfilled', now(),
        convert_to('{"eventId":"00000000-0000-5000-8000-000000000000","eventType":"OrderFulfilled","orderId":"00000000-0000-4000-8000-000000000000","occurredAt":"2026-01-01T00:00:00.000000Z","status":"Fulfilled"}', 'UTF8'),
        now() FROM upd
)
SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM upd);
""".replace("BATCH", str(FULFIL_BATCH))


def make_backlog(url, rows):
    with psycopg.connect(url, autocommit=True) as db:
        db.execute('CREATE EXTENSION IF NOT EXISTS "uuid-ossp"')
        db.execute(BACKLOG, {"n": rows})
        db.execute("VACUUM ANALYZE")


def execute(url, *statements):
    with psycopg.connect(url, autocommit=True) as db:
        for statement in statements:
            db.execute(statement)


def reset_outbox(url):
    execute(url, "UPDATE kafka_outbox SET published_at = NULL, claimed_by = NULL, claimed_until = NULL, attempts = 0",
            "VACUUM ANALYZE kafka_outbox")


def settle_rate(url, table, column):
    """Rows per second from the first settle instant to the last (the startup before the first batch is left out)."""
    with psycopg.connect(url, autocommit=True) as db:
        after, seconds = db.execute(
            f"SELECT count(*) FILTER (WHERE {column} > (SELECT min({column}) FROM {table})), "
            f"extract(epoch from max({column}) - min({column}))::float8 FROM {table} WHERE {column} IS NOT NULL").fetchone()
    return after / seconds if seconds else None


def relay(settings, figures):
    """Drains of a backlog by 1 and 2 relays, each against pgbench running the claim and settle statements with as
    many clients. Each round runs all four in turn (pgbench and 1 relay, pgbench and 2 relays) and each figure is the
    median of its rounds, so a change in the machine's load hits ceiling and drain, and one relay and two, alike; the
    comparison of two relays with one is also made round by round (paired), which the machine's slow stretches of
    several minutes cannot tilt."""
    rows, rounds = settings.size(100_000, 500), settings.size(3, 1)
    # Smoke: batches of 50, so that a 500-row drain has settles to time (one claim took it all).
    batch = settings.size(BATCH, 50)
    runs = {1: [], 2: []}
    with scratch_database(settings, "relay") as url, scratch_topic(settings, "relay") as topic:
        log(f"relay: backlog of {rows:,} outbox rows")
        make_backlog(url, rows)
        producer_rate = raw_producer(settings, url, topic, rows)
        for _ in range(rounds):
            for relays in (1, 2):
                runs[relays].append(relay_round(settings, url, topic, rows, batch, relays))
    for relays, label in ((1, "1 relay"), (2, "2 relays")):
        rounds_of = runs[relays]
        unfinished = [run[3] for run in rounds_of if not run[2]]
        rates = ", ".join("–" if r[0] is None else f"{r[0]:,.0f}" for r in rounds_of)
        note = (f"median of {rounds} interleaved rounds (relay {rates}; pgbench {', '.join(f'{r[1]:,.0f}' for r in rounds_of)}); "
                f"CPU µs per event in the last round: drain: {rounds_of[-1][5]}; pgbench: {rounds_of[-1][4]}")
        if unfinished:
            note += f"; {len(unfinished)} stopped after {drain_limit(settings)} s ({min(unfinished):,} of {rows:,} published)"
        figures.add("relay", f"drain {rows / 1000:g}k-row backlog, {label} (events/s)", median(r[0] for r in rounds_of), "/s",
                    median(r[1] for r in rounds_of), f"pgbench claim+settle, {relays} client{'s' if relays > 1 else ''}",
                    note=note)
    pairs = [(two[0], one[0]) for one, two in zip(runs[1], runs[2]) if one[0] and two[0]]
    figures.add("relay", f"drain {rows / 1000:g}k-row backlog, 2 relays vs 1, paired rounds (events/s)",
                median(two for two, _ in pairs), "/s", median(one for _, one in pairs), "1 relay, same rounds",
                note="2 relays / 1 relay per round: " + ", ".join(f"{two / one * 100:.0f}%" for two, one in pairs)
                + f"; median of the per-round ratios {median(two / one for two, one in pairs) * 100:.0f}%" if pairs else "")
    figures.add("relay", "raw librdkafka producer, same messages (msgs/s)", producer_rate, "/s",
                note="the broker side of the relay's ceiling")


def relay_round(settings, url, topic, rows, batch, relays):
    """pgbench's claim+settle drain of the backlog, then the relays' drain of it (each from a reset outbox).
    Answers (relay events/s, pgbench events/s, whether the relays finished, rows they published, CPU per event of
    pgbench's drain, of the relays')."""
    meter = CpuMeter(url)
    _, _, elapsed = pgbench(settings, url, CLAIM_SETTLE.replace("BATCH", str(batch)), relays,
                            transactions=math.ceil(rows / batch / relays) + 2)
    ceiling_cpu = meter.per_unit(rows, {"postgres": "PostgreSQL", "clients": "pgbench"})
    published = scalar(url, "SELECT count(*) FROM kafka_outbox WHERE published_at IS NOT NULL")
    if published != rows:
        raise RuntimeError(f"pgbench claim+settle published {published} of {rows} rows")
    ceiling = rows / elapsed
    reset_outbox(url)
    with Pipeline(settings, url, topic, "unused", f"relay{relays}") as pipeline:
        for n in range(relays):
            pipeline.start("relay", SERVICEBUS_CONNECTION_STRING=None, RELAY_ID=f"bench-relay-{n}", RELAY_BATCH_SIZE=str(batch))
        meter = CpuMeter(url, [process.pid for process in pipeline.processes])
        done = wait_until_none(url, "SELECT 1 FROM kafka_outbox WHERE published_at IS NULL", drain_limit(settings),
                               "the relay to drain the backlog", alive=pipeline.check_alive, required=False)
        drain_cpu = meter.per_unit(rows, {"postgres": "PostgreSQL", **{f"pid{process.pid}": f"relay {n + 1}"
                                          for n, process in enumerate(pipeline.processes)}, "tansu": "Tansu"})
    rate = settle_rate(url, "kafka_outbox", "published_at")
    published = scalar(url, "SELECT count(*) FROM kafka_outbox WHERE published_at IS NOT NULL")
    reset_outbox(url)
    return rate, ceiling, done, published, ceiling_cpu, drain_cpu


def raw_producer(settings, url, topic, rows):
    """The relay's messages (key, headers, payload) straight from a librdkafka producer with the relay's settings."""
    with psycopg.connect(url) as db:
        messages = db.execute("SELECT order_id::text, event_id::text, event_type, payload FROM kafka_outbox ORDER BY sequence").fetchall()
    producer = kafka_producer(settings, **{"linger.ms": 2, "queue.buffering.max.messages": max(rows, 100_000)})
    producer.produce(topic + ".dead-letter", key="warm-up", value=b"{}")  # connection, producer id: before the clock
    producer.flush(30)
    delivered = [0]

    def on_delivery(error, _):
        if error is None:
            delivered[0] += 1
    start = time.monotonic()
    for order_id, event_id, event_type, payload in messages:
        producer.produce(topic, key=order_id, value=bytes(payload), headers=[("event-id", event_id), ("event-type", event_type)],
                         on_delivery=on_delivery)
        producer.poll(0)
    producer.flush(60)
    elapsed = time.monotonic() - start
    if delivered[0] != rows:
        raise RuntimeError(f"raw producer: {delivered[0]} of {rows} delivered")
    return rows / elapsed


def raw_consumer(settings, topic, rows):
    """Reads the topic's `rows` records from the start with a bare librdkafka consumer (no work, no commits): the
    broker side of the consumer's ceiling. Answers records per second."""
    from confluent_kafka import Consumer
    consumer = Consumer({"bootstrap.servers": settings.kafka, "group.id": f"bench-raw-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    received, start = 0, None
    deadline = time.monotonic() + drain_limit(settings)
    while received < rows and time.monotonic() < deadline:
        for message in consumer.consume(num_messages=1_000, timeout=1.0):
            if message.error() is None:
                start = start or time.monotonic()  # from the first record: the group join is not the broker's speed
                received += 1
    elapsed = time.monotonic() - (start or time.monotonic())
    consumer.close()
    if received < rows:
        raise RuntimeError(f"raw consumer: {received} of {rows} records")
    return rows / max(elapsed, 1e-6)


def consumer(settings, figures):
    rows = settings.size(100_000, 500)
    with scratch_database(settings, "consumer") as url, scratch_topic(settings, "consumer") as topic:
        log(f"consumer: {rows:,} Pending orders and their OrderCreated records")
        make_backlog(url, rows)
        execute(url, "CREATE TABLE bench_ids AS SELECT row_number() OVER (ORDER BY sequence) AS n, order_id, event_id FROM kafka_outbox",
                "CREATE UNIQUE INDEX ON bench_ids (n)", "CREATE SEQUENCE bench_seq", "VACUUM ANALYZE")
        raw_producer(settings, url, topic, rows)
        ceilings = {}
        for clients in (1, 4):
            # Each client takes its share of the backlog once: no record comes round again to hit the inbox.
            batches_per_second, _, _ = pgbench(settings, url, FULFIL.replace("ROWS", str(rows)), clients,
                                               transactions=max(1, rows // FULFIL_BATCH // clients))
            ceilings[clients] = batches_per_second * FULFIL_BATCH
            execute(url, "UPDATE orders SET status = 'Pending', processed_at = NULL",
                    "TRUNCATE consumer_inbox, order_status_transitions, service_bus_outbox", "ALTER SEQUENCE bench_seq RESTART",
                    "VACUUM ANALYZE")
        raw = raw_consumer(settings, topic, rows)
        with Pipeline(settings, url, topic, "unused", "consumer") as pipeline:
            pipeline.start("consume")
            done = wait_until_none(url, "SELECT 1 FROM orders WHERE status <> 'Fulfilled'", drain_limit(settings),
                                   "the consumer to fulfil every order", poll=0.5, alive=pipeline.check_alive, required=False)
        rate = settle_rate(url, "orders", "processed_at")
        fulfilled = scalar(url, "SELECT count(*) FROM orders WHERE status = 'Fulfilled'")
        figures.add("consumer", f"drain {rows / 1000:g}k records (orders fulfilled/s)", rate, "/s", ceilings[1],
                    f"pgbench fulfil statement, batches of {FULFIL_BATCH}, 1 client",
                    note="over 100% when the consumer's partitions commit side by side (group commit)" if done else f"stopped after {drain_limit(settings)} s: {fulfilled:,} of {rows:,} fulfilled")
        figures.add("consumer", f"same, against 4 pgbench clients", rate, "/s", ceilings[4], f"pgbench fulfil statement, batches of {FULFIL_BATCH}, 4 clients")
        figures.add("consumer", "raw librdkafka consumer, same records (records/s)", raw, "/s", note="the broker side of the consumer's ceiling")
