#!/usr/bin/env python3
"""PostgreSQL frozen under wrk load (run by scripts/frozen-postgres; see docs/RELIABILITY.md).

Starts a PRIVATE PostgreSQL and Tansu (own directories, ports from ORDERPIPELINE_FROZEN_PORT_BASE, default 19440:
the shared database is never frozen) and `orderpipeline all` against them (Service Bus: the shared RabbitMQ, a queue
of this run's own, deleted at the end). wrk POSTs orders on 64 connections, each with a fresh Idempotency-Key; a few
seconds in, every PostgreSQL process gets SIGSTOP for FREEZE seconds, then SIGCONT; wrk goes on after the thaw. Checked:
- every answer is 201 or 503, every 503 carries Retry-After, and answers go on arriving during the freeze;
- no request waits longer than the request deadline (DB_REQUEST_TIMEOUT_MS) plus a margin, none times out;
- the process's peak RSS (VmHWM, and VmRSS sampled every 50 ms) stays under the stated bound;
- after the thaw every acknowledged (201) order is Fulfilled with exactly one Fulfilled transition, every order in
  the database too, and the queue holds one distinct MessageId per order.
Prints the figures and a summary line; exits 1 on any failed check.

Environment: ORDERPIPELINE_BIN, TANSU_BIN, SERVICEBUS_CONNECTION_STRING (the shared broker),
ORDERPIPELINE_FROZEN_SECONDS (freeze, default 8), ORDERPIPELINE_FROZEN_RSS_MB (bound, default 128),
ORDERPIPELINE_FROZEN_CONNECTIONS (default 64), ORDERPIPELINE_FROZEN_KEEP=1 (keep the logs).
"""
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid

os.environ["ORDERPIPELINE_CHAOS_PORT_BASE"] = os.environ.get("ORDERPIPELINE_FROZEN_PORT_BASE", "19440")
os.environ["ORDERPIPELINE_RUN_NAME"] = "frozen-postgres"
from chaos_servers import ENV, HTTP_PORT, KAFKA_PORT, PG_PORT, Postgres, Tansu, log, port_open, wait_for  # noqa: E402
from services_check import declare_queue  # noqa: E402

FREEZE = float(ENV.get("ORDERPIPELINE_FROZEN_SECONDS", "8"))
RSS_BOUND_MB = float(ENV.get("ORDERPIPELINE_FROZEN_RSS_MB", "128"))
CONNECTIONS = int(ENV.get("ORDERPIPELINE_FROZEN_CONNECTIONS", "64"))
DEADLINE_MS = 2000  # DB_REQUEST_TIMEOUT_MS of the process under test
MARGIN_MS = 1500  # scheduling slack on a loaded 2-core machine (debug build)
WARM, AFTER = 5.0, 7.0  # seconds of load before the freeze and after the thaw
HERE = os.path.dirname(os.path.abspath(__file__))


class Memory(threading.Thread):
    """Samples VmRSS of one process every 50 ms; VmHWM (the kernel's own peak) is read at the end."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak_kb, self.stop = pid, 0, threading.Event()

    def field(self, name):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
        return 0

    def run(self):
        while not self.stop.is_set():
            try:
                self.peak_kb = max(self.peak_kb, self.field("VmRSS"))
            except OSError:
                return
            time.sleep(0.05)


def post_warm_order():
    body = json.dumps({"customerName": "Warm Up", "customerEmail": "warm@example.com",
                       "items": [{"productName": "Widget", "quantity": 1, "unitPrice": 1.0}]}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{HTTP_PORT}/api/orders", data=body, method="POST",
                                     headers={"Content-Type": "application/json", "Idempotency-Key": "warm-up"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["id"].lower()


def drain(url, queue, expected):
    """Message ids on the queue (accepted), until `expected` arrived and 2 s pass without another."""
    from proton.utils import BlockingConnection
    conn = BlockingConnection(url, timeout=30, allowed_mechs="PLAIN", allow_insecure_mechs=True)
    receiver = conn.create_receiver(queue, credit=500)
    ids, deadline = [], time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            message = receiver.receive(timeout=2 if len(ids) >= expected else 10)
        except Exception:  # proton's Timeout: nothing more within the wait
            if len(ids) >= expected:
                break
            continue
        receiver.accept()
        ids.append(str(message.id).lower())
    conn.close()
    return ids


def delete_queue(queue):
    """Best effort: the run's queue off the shared RabbitMQ (`scripts/services delete-queue`, of the services whose
    TANSU_PID_FILE we were given); a failure is only a warning."""
    env = dict(ENV)
    if ENV.get("TANSU_PID_FILE"):
        env["ORDERPIPELINE_SERVICES_DIR"] = os.path.dirname(os.path.dirname(ENV["TANSU_PID_FILE"]))
    try:
        done = subprocess.run([os.path.join(HERE, "..", "services"), "delete-queue", queue], env=env, capture_output=True,
                              text=True, timeout=60)
        if done.returncode != 0:
            log(f"warning: queue {queue} not deleted: {done.stderr.strip()}")
    except (OSError, subprocess.TimeoutExpired) as error:
        log(f"warning: queue {queue} not deleted: {error}")


def main():
    binary, amqp = ENV.get("ORDERPIPELINE_BIN", ""), ENV.get("SERVICEBUS_CONNECTION_STRING", "")
    if not os.access(binary, os.X_OK):
        log("ERROR: ORDERPIPELINE_BIN is not an executable")
        raise SystemExit(1)
    if not amqp.startswith("amqp://") or not shutil.which("wrk"):
        log("ERROR: needs wrk and SERVICEBUS_CONNECTION_STRING (the shared RabbitMQ; eval \"$(scripts/services env)\")")
        raise SystemExit(1)
    state = tempfile.mkdtemp(prefix="orderpipeline-frozen-", dir="/var/tmp")
    os.chmod(state, 0o755)
    nonce = uuid.uuid4().hex[:12]
    queue = f"frozen-postgres-{nonce}"
    failures, servers, process, ok, declared = [], [], None, False, False

    def check(condition, text):
        log(("ok: " if condition else "FAILED: ") + text)
        if not condition:
            failures.append(text)

    try:
        pg = Postgres(state)
        servers.append(pg)
        pg.create_database()
        servers.append(Tansu(state))
        declare_queue(amqp, queue)
        declared = True
        env = dict(ENV, DATABASE_URL=f"postgres://postgres@127.0.0.1:{PG_PORT}/chaos", KAFKA_BROKERS=f"127.0.0.1:{KAFKA_PORT}",
                   KAFKA_TOPIC="orders", KAFKA_DEAD_LETTER_TOPIC="orders.dead-letter", KAFKA_GROUP_ID=f"frozen-{nonce}",
                   SERVICEBUS_QUEUE=queue, HTTP_PORT=str(HTTP_PORT), LOG_LEVEL="warning", RELAY_ID=f"frozen-{nonce}",
                   DB_REQUEST_TIMEOUT_MS=str(DEADLINE_MS))
        env.pop("METRICS_PORT", None)
        subprocess.run([binary, "migrate"], env=env, check=True, capture_output=True, timeout=60)
        with open(os.path.join(state, "all.log"), "w") as out:
            process = subprocess.Popen([binary, "all"], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for("the API listening", 30, lambda: port_open(HTTP_PORT))
        warm = post_warm_order()
        wait_for("the warm-up order fulfilled (consumer assigned)", 90,
                 lambda: pg.sql(f"select status from orders where id = '{warm}'") == [["Fulfilled"]], 0.5)
        memory = Memory(process.pid)
        baseline_kb = memory.field("VmRSS")
        memory.start()

        total = WARM + FREEZE + AFTER
        wrk = subprocess.Popen(["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{total:.0f}s", "--timeout", "10s",
                                "-s", os.path.join(HERE, "frozen_postgres.lua"), f"http://127.0.0.1:{HTTP_PORT}",
                                "--", state, nonce], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        started = time.monotonic()
        time.sleep(WARM)
        frozen_at = time.monotonic()
        pg.signal(signal.SIGSTOP)
        log(f"postgres frozen (SIGSTOP of {len(pg.pids())} processes) for {FREEZE:.0f} s under wrk -c{CONNECTIONS}")
        time.sleep(FREEZE)
        pg.signal(signal.SIGCONT)
        thawed_at = time.monotonic()
        log("postgres thawed")
        output, _ = wrk.communicate(timeout=total + 60)
        memory.stop.set()
        memory.join()
        hwm_kb = memory.field("VmHWM")
        figures = json.loads(next(line[4:] for line in output.splitlines() if line.startswith("WRK ")))

        answers = []
        for path in sorted(glob.glob(os.path.join(state, "answers-*.txt"))):
            with open(path) as f:
                answers += [(float(t), int(s), order, retry == "1") for t, s, order, retry in (line.split() for line in f)]
        statuses = {}
        for _, status, _, _ in answers:
            statuses[status] = statuses.get(status, 0) + 1
        acknowledged = sorted({order.lower() for _, status, order, _ in answers if status == 201})
        during = [a for a in answers if frozen_at <= a[0] <= thawed_at]
        refused_during = sum(1 for a in during if a[1] == 503)
        created_after = sum(1 for a in answers if a[0] > thawed_at and a[1] == 201)
        max_ms = figures["max_latency_us"] / 1000
        log(f"wrk: {figures['requests']} requests in {figures['duration_us'] / 1e6:.1f} s, statuses {statuses}, "
            f"latency p50 {figures['p50_latency_us'] / 1000:.1f} ms p99 {figures['p99_latency_us'] / 1000:.0f} ms "
            f"max {max_ms:.0f} ms, timeouts {figures['timeouts']}")
        log(f"during the freeze ({thawed_at - frozen_at:.1f} s): {len(during)} answers, {refused_during} of them 503; "
            f"after the thaw: {created_after} created; RSS before load {baseline_kb / 1024:.0f} MB, "
            f"peak sampled {memory.peak_kb / 1024:.0f} MB, VmHWM {hwm_kb / 1024:.0f} MB")

        check(set(statuses) <= {201, 503}, f"every answer is 201 or 503 ({statuses})")
        check(all(retry for _, status, _, retry in answers if status == 503), "every 503 carries Retry-After")
        check(refused_during >= CONNECTIONS, f"503s answered while frozen: {refused_during} (at least one per connection)")
        check(figures["timeouts"] == 0 and figures["connect_errors"] + figures["read_errors"] + figures["write_errors"] == 0,
              f"no request timed out or lost its connection ({figures['timeouts']} timeouts)")
        check(max_ms <= DEADLINE_MS + MARGIN_MS, f"slowest answer {max_ms:.0f} ms <= deadline {DEADLINE_MS} + {MARGIN_MS} ms")
        check(created_after > 0, f"orders created again after the thaw ({created_after})")
        check(hwm_kb / 1024 <= RSS_BOUND_MB, f"peak RSS (VmHWM) {hwm_kb / 1024:.0f} MB <= {RSS_BOUND_MB:.0f} MB")

        log(f"{len(acknowledged)} orders acknowledged; waiting until every order is Fulfilled and both outboxes published")
        def settled():
            row = pg.sql("select (select count(*) from orders where status <> 'Fulfilled'),"
                         " (select count(*) from kafka_outbox where published_at is null),"
                         " (select count(*) from service_bus_outbox where published_at is null)")[0]
            return row == ["0", "0", "0"]
        wait_for("every order Fulfilled, both outboxes published", 180, settled, 1.0)
        fulfilled = {order: int(n) for order, n in pg.sql(
            "select o.id, (select count(*) from order_status_transitions t where t.order_id = o.id"
            " and t.to_status = 'Fulfilled') from orders o")}
        lost = [order for order in acknowledged if fulfilled.get(order, 0) == 0]
        doubled = [order for order, n in fulfilled.items() if n > 1]
        check(not lost and not doubled, f"every acknowledged order Fulfilled exactly once: {len(acknowledged)} acknowledged, "
              f"{len(fulfilled)} in the database, lost {len(lost)}, doubled {len(doubled)}")
        ids = drain(amqp, queue, len(fulfilled))
        check(len(set(ids)) == len(fulfilled), f"the queue holds one distinct MessageId per order ({len(set(ids))} distinct, "
              f"{len(ids)} messages, {len(fulfilled)} orders)")
        print(f"frozen-postgres: requests={figures['requests']} acknowledged={len(acknowledged)} "
              f"refused_while_frozen={refused_during} max_latency_ms={max_ms:.0f} deadline_ms={DEADLINE_MS} "
              f"rss_peak_mb={hwm_kb / 1024:.0f} rss_bound_mb={RSS_BOUND_MB:.0f} orders={len(fulfilled)} lost={len(lost)} "
              f"doubled={len(doubled)} freeze_s={FREEZE:.0f} wall_s={time.monotonic() - started:.0f}", flush=True)
        ok = not failures
    finally:
        if process and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for server in reversed(servers):
            try:
                server.stop()
            except Exception as error:  # go on: the other server must not outlive the run
                log(f"could not stop a server: {error}")
        if declared:
            delete_queue(queue)
        if ok and ENV.get("ORDERPIPELINE_FROZEN_KEEP") != "1":
            shutil.rmtree(state, ignore_errors=True)
        else:
            log(f"logs kept in {state}")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
