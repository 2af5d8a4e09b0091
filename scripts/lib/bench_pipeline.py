"""The API, the whole pipeline at saturation (and its RSS), and create→Fulfilled latency under an open-loop load."""
import asyncio
import os
import threading
import time
import uuid

import psycopg
from confluent_kafka import Consumer, TopicPartition

from bench_common import (ORDER_BODY, DiskProbe, EachSecond, Pipeline, declare_queue, drain_limit, kafka_producer, log, median, per_unit,
                          pgbench, process_counters, scalar, scratch_database, scratch_topic, tansu_pid,
                          wait_fulfilled, wait_until_none, wrk)

PAYLOAD = "x" * 560  # an OrderCreated payload's size
# The transaction the API commits for one order (SQL.createOrders with a batch of one: idempotency key, order, item,
# creation transition, outbox row with its NOTIFY trigger), as one statement. Under load the API's group commit puts
# several orders in one such transaction; the ceiling stays one order per commit, as a client without batching gets.
SAME_TRANSACTION = f"""
WITH k AS (
    INSERT INTO idempotency_keys (key, fingerprint, order_id, created_at)
    VALUES ('order:' || gen_random_uuid(), '0c9a1ef5e8f1d0c4b3a2f1e0d9c8b7a6f5e4d3c2', gen_random_uuid(), now())
    ON CONFLICT (key) DO NOTHING RETURNING order_id
), o AS (
    INSERT INTO orders (id, customer_name, customer_email, status, total_amount, created_at)
    SELECT k.order_id, 'John Smith', 'john@example.com', 'Pending', 999.99, now() FROM k RETURNING id
), i AS (
    INSERT INTO order_items (order_id, position, product_name, quantity, unit_price)
    SELECT o.id, 1, 'Laptop', 1, 999.99 FROM o
), t AS (
    INSERT INTO order_status_transitions (order_id, from_status, to_status, at) SELECT o.id, NULL, 'Pending', now() FROM o
), x AS (
    INSERT INTO kafka_outbox (event_id, order_id, event_type, occurred_at, payload, next_attempt_at)
    SELECT gen_random_uuid(), o.id, 'OrderCreated', now(), convert_to('{PAYLOAD}', 'UTF8'), now() FROM o
)
SELECT count(*) FROM k;
"""
# The environment notes' reference: one order row and one outbox row, BEGIN … COMMIT.
TWO_ROWS = f"""
BEGIN;
INSERT INTO orders (id, customer_name, customer_email, status, total_amount, created_at)
    VALUES (gen_random_uuid(), 'John Smith', 'john@example.com', 'Pending', 999.99, now());
INSERT INTO kafka_outbox (event_id, order_id, event_type, occurred_at, payload, next_attempt_at)
    VALUES (gen_random_uuid(), gen_random_uuid(), 'OrderCreated', now(), convert_to('{PAYLOAD}', 'UTF8'), now());
COMMIT;
"""


def database_of(url):
    return url.rsplit("/", 1)[1].split("?")[0]


# Client counts each side runs at. The API's group commit turns concurrent creates into shared transactions, so it
# keeps gaining with connections; pgbench commits one order per transaction and peaks at about 16 clients on two
# cores (32 and 64 were slower). The figures compare the peaks, with the same-count figure at 8 beside them.
API_CONNECTIONS = (8, 64, 256)
PGBENCH_CLIENTS = (8, 16, 32)


def api(settings, figures):
    """POST /api/orders (wrk → serve) against pgbench running the same transaction, durable and with
    synchronous_commit off (which shows CPU cost rather than this disk's flush rate), each at several client counts.
    The runs are interleaved in rounds and each count's figure is the median of its rounds, so a change in the
    machine's load hits all of them."""
    seconds, rounds = settings.size(5, 1), 3
    connections, clients = settings.size(API_CONNECTIONS, (8,)), settings.size(PGBENCH_CLIENTS, (8,))
    with scratch_database(settings, "api") as url:
        for mode in ("durable", "async-commit"):
            setting = "SET synchronous_commit = off" if mode == "async-commit" else "RESET synchronous_commit"
            with psycopg.connect(url, autocommit=True) as db:
                db.execute(f'ALTER DATABASE "{database_of(url)}" {setting}')
            ours = {count: [] for count in connections}  # (POST/s, p50, p99, non-2xx, written, serve's counters)
            theirs = {count: [] for count in clients}  # (transactions/s, mean latency)
            two_rows = []
            with Pipeline(settings, url, "unused", "unused", f"api-{mode}") as pipeline:
                serve = pipeline.start("serve", DB_POOL_SIZE="8")
                pipeline.wait_ready()
                wrk(settings, pipeline.url("/api/orders"), 8, settings.size(2, 1))  # connections, prepared statements
                for _ in range(rounds):
                    for count in connections:
                        before, counters = scalar(url, "SELECT count(*) FROM orders"), process_counters(serve.pid)
                        rps, p50, p99, non2xx = wrk(settings, pipeline.url("/api/orders"), count, seconds)
                        written = scalar(url, "SELECT count(*) FROM orders") - before
                        ours[count].append((rps, p50, p99, non2xx, written, (counters, process_counters(serve.pid))))
                    for count in clients:
                        theirs[count].append(pgbench(settings, url, SAME_TRANSACTION, count, seconds=seconds)[:2])
                    two_rows.append(pgbench(settings, url, TWO_ROWS, 8, seconds=seconds)[0])
            # Group commit: how many orders each create transaction carried (the rows' xmin is their transaction).
            per_commit = scalar(url, "SELECT count(*)::float8 / greatest(count(DISTINCT xmin::text), 1) FROM orders")
            post = {count: median(run[0] for run in runs) for count, runs in ours.items()}
            same = {count: median(run[0] for run in runs) for count, runs in theirs.items()}
            peak, ceiling = max(post, key=post.get), max(same, key=same.get)

            def at(count):
                runs = ours[count]
                return (f"-c{count}: {post[count]:,.0f}/s (rounds {', '.join(f'{run[0]:.0f}' for run in runs)}; p50 "
                        f"{median(run[1] for run in runs):.1f}, p99 {median(run[2] for run in runs):.1f} ms; serve per order: "
                        f"{per_unit([run[5] for run in runs], sum(run[4] for run in runs))})")

            pgbench_text = "; ".join(
                f"-c{count}: {same[count]:,.0f}/s (rounds {', '.join(f'{run[0]:.0f}' for run in runs)}; "
                f"mean {median(run[1] for run in runs):.1f} ms)" for count, runs in theirs.items())
            totals = (f"non-2xx {sum(run[3] for runs in ours.values() for run in runs)}, "
                      f"{sum(run[4] for runs in ours.values() for run in runs):,} orders written, {per_commit:.1f} per create transaction")
            figures.add("api", f"POST /api/orders, {mode}, peaks (orders/s)", post[peak], "/s", same[ceiling],
                        f"pgbench same transaction, peak at {ceiling} clients",
                        note=f"wrk peak at -c{peak}; median of {rounds} interleaved rounds of {seconds} s. wrk "
                        + "; ".join(at(count) for count in connections) + f". pgbench {pgbench_text}. {totals}")
            if 8 in post and 8 in same:
                figures.add("api", f"POST /api/orders, {mode}, 8 clients each (orders/s)", post[8], "/s", same[8],
                            "pgbench same transaction, 8 clients", note="the same rounds, wrk -c8 against pgbench -c8")
            figures.add("api", f"pgbench order+outbox row, {mode}, 8 clients (commits/s)", median(two_rows), "/s")


def rss_sampler(pid, stop, samples):
    while not stop.is_set():
        try:
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        samples.append(int(line.split()[1]) / 1024)
        except OSError:
            return
        stop.wait(0.2)


def start_pipeline(pipeline, mode):
    """`all`, or one process per role: serve, a Kafka relay, the consumer and a Service Bus relay. (Two Kafka relays
    ran here before: Tansu then lets a fetch skip a batch one producer is still appending while another producer's
    later batch is visible, and the orders of the skipped records waited for the reconciler; docs/BROKERS.md.)"""
    if mode == "all":
        return pipeline.start("all")
    pipeline.start("serve")
    pipeline.start("relay", RELAY_OUTBOXES="kafka", RELAY_ID="bench-relay-kafka")
    pipeline.start("consume")
    pipeline.start("relay", RELAY_OUTBOXES="service-bus", RELAY_ID="bench-relay-sb")
    return None


# wrk's connections for the saturation run: with 16 the API was not saturated (the cores were 20% idle and each
# create transaction carried 1.1 orders); group commit needs concurrent creates. 64: 37% of the ceiling, 128: 44%,
# 256: 51% (`all`, one run each).
E2E_CONNECTIONS = 256


def two_row_peak(settings, url, seconds):
    """pgbench's order+outbox-row transaction at its best of 8 and 16 clients (transactions/s, clients)."""
    return max((pgbench(settings, url, TWO_ROWS, clients, seconds=seconds)[0], clients) for clients in settings.size((8, 16), (8,)))


def e2e(settings, figures):
    """Fulfilled orders/s when the API is saturated (wrk -c256), for `all` and for separate processes, against
    pgbench's order+outbox-row transaction at its peak (every order needs at least two such commits); RSS of `all`.
    Rounds alternate the two shapes, each round with its ceiling measured just before and after it, and every figure
    is the median of its rounds: one run's ratio moved between 47% and 56% as the machine's load and pgbench's peak
    did."""
    seconds, connections, rounds = settings.size(10, 1), settings.size(E2E_CONNECTIONS, 16), settings.size(3, 1)
    runs = {"all": [], "split": []}
    for number in range(rounds):
        for mode in runs:
            runs[mode].append(e2e_round(settings, mode, seconds, connections, number))
    for mode, results in runs.items():
        label = "`all`" if mode == "all" else "separate processes"
        each = "; ".join(f"{r['rate']:,.0f} against {r['ceiling']:,.0f}" for r in results)
        ceiling_label = "pgbench order+outbox row, mean of its peaks before and after each round"
        last = results[-1]
        figures.add("e2e", f"fulfilled orders/s at saturation, {label}", median(r["rate"] for r in results), "/s",
                    median(r["ceiling"] for r in results), ceiling_label,
                    note=f"median of {len(results)} rounds (fulfilled/s against the ceiling: {each}); wrk -c{connections} for {seconds} s, "
                    + f"first created to last fulfilled; last round: {last['note']}")
        figures.add("e2e", f"fulfilled orders/s while the POSTs run, {label}", median(r["during"] for r in results), "/s",
                    median(r["ceiling"] for r in results), ceiling_label)
        if mode == "all":
            samples = [sample for r in results for sample in r["rss"]]
            figures.add("rss", "RSS of `all` under that load, max (MB)", max(samples) if samples else None, "MB",
                        note=f"{len(samples)} samples every 0.2 s over {len(results)} rounds")


def e2e_round(settings, mode, seconds, connections, number):
    """One saturation run of `mode` on a database, topic and queue of its own, between two measurements of the
    ceiling on a database of its own."""
    # The ceiling runs on a database of its own: emptying the pipeline's tables after it (TRUNCATE) let
    # autovacuum analyze them as empty, and the sessions' cached foreign-key checks then scanned `orders`
    # for every insert until the next analyze (measured: 87 million rows read, 130 fulfilled orders/s).
    name = f"e2e_{mode}_{number}"
    with (scratch_database(settings, name) as url, scratch_database(settings, f"{name}_ceiling") as ceiling_url,
          scratch_topic(settings, name.replace("_", "-")) as topic):
        queue = declare_queue(settings, name.replace("_", "-"))
        samples, stop = [], threading.Event()
        before = two_row_peak(settings, ceiling_url, seconds)
        with Pipeline(settings, url, topic, queue, name) as pipeline:
            main = start_pipeline(pipeline, mode)
            pipeline.wait_ready()
            warm = pipeline.post_order()
            wait_fulfilled(url, warm, 90, alive=pipeline.check_alive)
            if main:
                threading.Thread(target=rss_sampler, args=(main.pid, stop, samples), daemon=True).start()
            counters = [process_counters(process.pid) for process in pipeline.processes]
            rps, _, _, non2xx = wrk(settings, pipeline.url("/api/orders"), connections, seconds)
            done = wait_until_none(url, "SELECT 1 FROM orders WHERE status <> 'Fulfilled'", drain_limit(settings),
                                   "every order to be fulfilled", poll=0.5, alive=pipeline.check_alive, required=False)
            spans = list(zip(counters, [process_counters(process.pid) for process in pipeline.processes]))
            stop.set()
        with psycopg.connect(url) as db:
            orders, span, during = db.execute("""
                WITH b AS (SELECT created_at, processed_at FROM orders WHERE id <> %s),
                     w AS (SELECT min(created_at) AS first, max(created_at) AS last FROM b)
                SELECT count(processed_at), extract(epoch from max(processed_at) - min(created_at))::float8,
                    (count(*) FILTER (WHERE processed_at <= (SELECT last FROM w)))
                        / nullif(extract(epoch from (SELECT last - first FROM w)), 0)::float8
                FROM b""", (warm,)).fetchone()
        # The ceiling before the pipeline starts and after it stops; their mean evens out a change of load.
        after = two_row_peak(settings, ceiling_url, seconds)
    log(f"e2e {mode}, round {number + 1}: {orders / span:,.0f} fulfilled/s against {(before[0] + after[0]) / 2:,.0f}")
    note = (f"{rps:.0f} POST/s, non-2xx {non2xx}"
            + (f", {orders:,} orders" if done else f"; stopped after {drain_limit(settings)} s with {orders:,} fulfilled")
            + f"; pgbench peaks at {before[1]} and {after[1]} clients; orderpipeline per order: {per_unit(spans, orders)}")
    return {"rate": orders / span, "during": during, "ceiling": (before[0] + after[0]) / 2, "rss": samples, "note": note}


# ---------------------------------------------------------------------------------------------------------------
# latency

ANSWER_TIMEOUT = 30  # seconds: a request the API accepted and never answers counts as a failure, not a hang


async def open_loop(port, rate, seconds):
    """POSTs at fixed times (i / rate), whatever the responses do: the load does not slow down when the server
    does. A request goes out on a free keep-alive connection, or on a new one when none is free. Callbacks on asyncio
    protocols, no task or stream per request: the client shares the two cores with what it measures, and a task and
    a stream reader per request cost it about 150 µs of CPU per order at 1,000/s. Returns (sent, failures, worst
    lateness ms)."""
    loop = asyncio.get_running_loop()
    total = max(1, int(rate * seconds))
    request = (f"POST /api/orders HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(ORDER_BODY)}\r\n\r\n").encode() + ORDER_BODY
    idle, counts, late = [], {"answered": 0, "failures": 0}, [0.0]
    finished = loop.create_future()

    def answered(ok):
        counts["answered"] += 1
        counts["failures"] += not ok
        if counts["answered"] == total and not finished.done():
            finished.set_result(None)

    class Connection(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport, self.buffer, self.deadline = transport, bytearray(), None

        def send(self):
            self.transport.write(request)
            # A request the API accepted and never answers counts as a failure, not a hang.
            self.deadline = loop.call_later(ANSWER_TIMEOUT, self.transport.abort)

        def data_received(self, data):
            self.buffer += data
            head = self.buffer.find(b"\r\n\r\n")
            if head < 0 or self.deadline is None:
                return
            length = next((int(line.split(b":")[1]) for line in bytes(self.buffer[:head]).split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            if len(self.buffer) < head + 4 + length:
                return
            ok = self.buffer.startswith(b"HTTP/1.1 201")
            del self.buffer[:head + 4 + length]
            self.deadline.cancel()
            self.deadline = None
            idle.append(self)
            answered(ok)

        def connection_lost(self, exc):
            if self in idle:
                idle.remove(self)
            if self.deadline is not None:
                self.deadline.cancel()
                self.deadline = None
                answered(False)

    async def connect_and_send():
        try:
            _, connection = await loop.create_connection(Connection, "127.0.0.1", port)
        except OSError:
            answered(False)
            return
        connection.send()

    start, next_index, connecting = loop.time() + 0.1, [0], set()

    def send_due():
        now = loop.time()
        while next_index[0] < total and start + next_index[0] / rate <= now:
            late[0] = max(late[0], (now - start - next_index[0] / rate) * 1000)
            next_index[0] += 1
            if idle:
                idle.pop().send()
            else:
                task = loop.create_task(connect_and_send())
                connecting.add(task)
                task.add_done_callback(connecting.discard)
        if next_index[0] < total:
            loop.call_at(start + next_index[0] / rate, send_due)

    loop.call_at(start, send_due)
    await finished
    for connection in idle:
        connection.transport.close()
    return total, counts["failures"], late[0]


PERCENTILES = "percentile_disc(ARRAY[0.5, 0.9, 0.99, 1.0]) WITHIN GROUP (ORDER BY {})"


def transactions(url):
    """Transactions the database has ended so far (committed or rolled back), from its statistics. A backend
    reports its counts at most once a second (after up to 10 s when idle): read until the count holds still."""
    def count():
        return scalar(url, "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()")
    previous, deadline = count(), time.monotonic() + 12
    while time.monotonic() < deadline:
        time.sleep(1.5)
        current = count()
        if current - previous <= 5:  # only the relays' idle polls and this read
            return current
        previous = current
    return previous


def latency_stats(url, since):
    """p50/p90/p99/max in ms from the database's timestamps: created → Fulfilled, and per hop (created → the
    Kafka outbox row settled, Fulfilled → the Service Bus outbox row settled)."""
    ms = "extract(epoch from {} - {}) * 1000"
    with psycopg.connect(url) as db:
        total = db.execute(f"SELECT {PERCENTILES.format(ms.format('processed_at', 'created_at'))} FROM orders WHERE created_at >= %s",
                           (since,)).fetchone()[0]
        kafka = db.execute(f"""SELECT {PERCENTILES.format(ms.format('k.published_at', 'o.created_at'))}
            FROM orders o JOIN kafka_outbox k ON k.order_id = o.id AND k.event_type = 'OrderCreated' WHERE o.created_at >= %s""",
                           (since,)).fetchone()[0]
        sb = db.execute(f"""SELECT {PERCENTILES.format(ms.format('s.published_at', 'o.processed_at'))}
            FROM orders o JOIN service_bus_outbox s ON s.order_id = o.id WHERE o.created_at >= %s""", (since,)).fetchone()[0]
    return [[float(v) if v is not None else None for v in row or [None] * 4] for row in (total, kafka, sb)]


def round_trip(settings, samples, rate=100):
    """The plain round trip an order needs: a two-row commit, a librdkafka produce (acks=all) → consume (the
    project's fetch.wait.max.ms), a second commit. Paced at `rate`; latencies in ms, in the order measured."""
    with scratch_database(settings, "roundtrip") as url, scratch_topic(settings, "roundtrip", partitions=1) as topic:
        api, consumer_db = psycopg.connect(url, autocommit=True), psycopg.connect(url, autocommit=True)
        producer = kafka_producer(settings, **{"linger.ms": 0})
        consumer = Consumer({"bootstrap.servers": settings.kafka, "group.id": topic, "enable.auto.commit": False,
                             "fetch.wait.max.ms": 10, "auto.offset.reset": "earliest"})
        consumer.assign([TopicPartition(topic, 0, 0)])
        latencies = []
        try:
            for i in range(samples + 10):  # the first ten warm up connections and prepared statements
                next_at = time.perf_counter() + 1 / rate
                start = time.perf_counter()
                order = uuid.uuid4()
                with api.transaction():
                    api.execute("""INSERT INTO orders (id, customer_name, customer_email, status, total_amount, created_at)
                        VALUES (%s, 'John Smith', 'john@example.com', 'Pending', 999.99, now())""", (order,))
                    api.execute("""INSERT INTO kafka_outbox (event_id, order_id, event_type, occurred_at, payload, next_attempt_at)
                        VALUES (gen_random_uuid(), %s, 'OrderCreated', now(), convert_to(%s, 'UTF8'), now())""", (order, PAYLOAD))
                producer.produce(topic, key=str(order), value=PAYLOAD.encode())
                producer.flush(10)
                message, deadline = None, time.monotonic() + 30
                while message is None or message.error():  # bounded: a record that never comes fails the run, not hangs it
                    if time.monotonic() > deadline:
                        raise SystemExit(f"round trip: order {order} was not consumed from {topic} within 30 s")
                    message = consumer.poll(1)
                consumer_db.execute("UPDATE orders SET status = 'Fulfilled', processed_at = now() WHERE id = %s", (order,))
                if i >= 10:
                    latencies.append((time.perf_counter() - start) * 1000)
                time.sleep(max(0.0, next_at - time.perf_counter()))
        finally:
            consumer.close()
            api.close()
            consumer_db.close()
    return latencies


def percentiles(values):
    """p50, p90, p99 and max, nearest rank."""
    ordered = sorted(values)

    def at(p):
        return ordered[min(len(ordered) - 1, max(0, int(round(p * len(ordered))) - 1))]
    return [at(0.5), at(0.9), at(0.99), ordered[-1]]


def latency(settings, figures):
    rates, seconds, count = settings.size((100, 1000), (20, 100)), settings.size(10, 1), settings.size(3, 1)
    # The ceiling is measured in pieces, one right before each round, so that it meets the same spells of the
    # machine as the rounds do (a flush of this disk has stalled for 300 ms on an idle machine): one 10 s
    # measurement before all rounds made a round's stalled tail look like the pipeline's.
    piece = settings.size(1000, 60) // (len(rates) * count)
    ceiling_samples, ceiling_pieces, measured = [], [], []
    with scratch_database(settings, "latency") as url:
        for rate in rates:
            # Rounds one after another, each drained before the next; every figure is the median of its rounds
            # (a tail percentile of one 10 s run moves by half between runs on this machine). Each round has a
            # topic, a queue and an `all` of its own on the same database: Tansu's in-memory topic slows down as it
            # grows (four 10 s rounds at 1,000/s on one topic: p50 14 → 20 → 37 → 57 ms; on a topic per round, same
            # database and queue: 12–16 ms), which would measure the broker, not the pipeline.
            rounds, spans, commits, sent, failures, late, tansu, disk, shed = [], [], 0, 0, 0, 0.0, [], [], []
            for number in range(count):
                probe = DiskProbe(settings.work)
                samples = round_trip(settings, piece)
                ceiling_samples += samples
                ceiling_pieces.append((max(samples), probe.stop()))
                with (scratch_topic(settings, f"latency-{rate}-{number}") as topic,
                      Pipeline(settings, url, topic, declare_queue(settings, f"latency-{rate}-{number}"), f"latency-{rate}-{number}") as pipeline):
                    main = pipeline.start("all")
                    pipeline.wait_ready()
                    for _ in range(5):
                        wait_fulfilled(url, pipeline.post_order(), 90, alive=pipeline.check_alive)
                    # The round before's dirty pages written out. Not a CHECKPOINT (the driver made one): the
                    # full-page writes after it stalled a 1,000/s round's first 100 ms by 60-160 ms in 3 of 4 rounds.
                    os.sync()
                    since, counters, before = scalar(url, "SELECT now()"), process_counters(main.pid), transactions(url)
                    broker, probe = EachSecond(lambda: process_counters(tansu_pid())[0]), DiskProbe(settings.work)
                    round_sent, round_failures, round_late = asyncio.run(open_loop(settings.http_port, rate, seconds))
                    tansu.append(broker.stop())
                    wait_until_none(url, """SELECT 1 FROM orders WHERE status <> 'Fulfilled'
                                            UNION ALL SELECT 1 FROM service_bus_outbox WHERE published_at IS NULL""",
                                    settings.size(300, 60), "every order to be fulfilled and announced", alive=pipeline.check_alive)
                    disk.append(probe.stop())
                    shed.append(round_failures)
                    spans.append((counters, process_counters(main.pid)))
                    commits += transactions(url) - before
                    sent, failures, late = sent + round_sent, failures + round_failures, max(late, round_late)
                    rounds.append(latency_stats(url, since))
            log(f"latency at {rate}/s: {len(rounds)} rounds, {sent} orders, {failures} failed, client at most {late:.1f} ms late")
            measured.append((rate, rounds, spans, commits, sent, failures, late, tansu, disk, shed))
    ceiling = percentiles(ceiling_samples)
    each = ", ".join(f"{slowest:.0f} ({typical:.2f}/{flush:.0f})" for slowest, (typical, flush) in ceiling_pieces)
    for name, value in zip(("p50", "p99"), (ceiling[0], ceiling[2])):
        figures.add("latency", f"round trip ceiling {name}: 2 commits + produce→consume (ms)", value, "ms", higher_is_better=False,
                    note=(f"{len(ceiling_samples)} round trips at 100/s in {len(ceiling_pieces)} pieces, one before each round; "
                          f"slowest of each piece in ms (the disk's median/slowest flush meanwhile): {each}") if name == "p99" else "")
    for rate, rounds, spans, commits, sent, failures, late, tansu, disk, shed in measured:
        total, kafka, sb = ([median(r[leg][index] for r in rounds) for index in range(4)] for leg in range(3))
        cost = f"{per_unit(spans, sent)}, {commits / sent:.2f} PostgreSQL transactions"
        each = "; ".join(f"{r[0][2]:.1f} ({typical:.2f}/{flush:.0f}, {failed})" for r, (typical, flush), failed in zip(rounds, disk, shed))
        for index, name in enumerate(("p50", "p90", "p99", "max")):
            note = ""
            if index == 0:
                note = f"median of {len(rounds)} rounds of {seconds} s, {sent} orders, {failures} failed, client ≤{late:.0f} ms late; `all` per order: {cost}"
            elif index == 1:
                note = ("Tansu's CPU in the first → last second of each round: "
                        + ", ".join(f"{round(r[0] * 1000)} → {round(r[-1] * 1000)}" for r in tansu if r) + " ms/s")
            elif index == 2:
                note = f"p99 of each round in ms (the disk's median/slowest flush meanwhile in ms, requests not answered 201): {each}"
            figures.add("latency", f"create→Fulfilled at {rate} orders/s, {name} (ms)", total[index], "ms", ceiling[index],
                        f"round trip {name}", higher_is_better=False, note=note)
        figures.add("latency", f"hop created→Kafka row settled at {rate}/s, p50 (ms)", kafka[0], "ms",
                    higher_is_better=False, note=f"p99 {kafka[2]:.1f} ms")
        figures.add("latency", f"hop Fulfilled→SB row settled at {rate}/s, p50 (ms)", sb[0], "ms",
                    higher_is_better=False, note=f"p99 {sb[2]:.1f} ms")
