"""Shared parts of scripts/bench: figures, scratch databases/topics/queues, processes, pgbench, wrk.

Everything a benchmark creates is named bench-<name>-<pid> (databases bench_<name>_<pid>) and removed at the end,
so benchmarks never touch the databases, topics or queues the tests use.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from contextlib import contextmanager

import psycopg
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = os.environ


def log(message):
    print(f"bench: {message}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Settings:
    """What the driver was asked for: sizes shrink with --smoke."""

    def __init__(self, smoke, bin_dir, work):
        self.smoke = smoke
        self.bin_dir = bin_dir
        self.work = work
        self.orderpipeline = os.path.join(bin_dir, "orderpipeline")
        self.order_sim = os.path.join(bin_dir, "order-sim")
        self.database_url = ENV["DATABASE_URL"]
        self.kafka = ENV["KAFKA_BROKERS"]
        self.amqp = ENV.get("SERVICEBUS_CONNECTION_STRING", "")
        self.pgbench = ENV.get("PGBENCH", "pgbench")
        # A free port unless told: a second bench on the machine must not answer this one's requests.
        self.http_port = int(ENV.get("BENCH_HTTP_PORT") or free_port())
        self.log_level = ENV.get("BENCH_LOG_LEVEL", "info")

    def size(self, full, smoke):
        return smoke if self.smoke else full


def median(values):
    """The middle value (the upper one of an even count), Nones left out."""
    values = sorted(v for v in values if v is not None)
    return values[len(values) // 2] if values else None


class Figures:
    """One line per figure on stdout as it is measured; all of them for the report and the JSON file."""

    def __init__(self):
        self.rows = []

    def add(self, bench, metric, value, unit, ceiling=None, ceiling_label="", higher_is_better=True, note=""):
        ratio = None
        if ceiling not in (None, 0) and value is not None:
            ratio = value / ceiling
        row = dict(bench=bench, metric=metric, value=value, unit=unit, ceiling=ceiling, ceiling_label=ceiling_label,
                   ratio=ratio, higher_is_better=higher_is_better, note=note)
        self.rows.append(row)
        print(format_line(row), flush=True)
        return row


def number(value, unit=""):
    if value is None:
        return "n/a"
    if unit in ("ms",):
        return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip()


def ratio_text(row):
    if row["ratio"] is None:
        return "—"
    return f"{row['ratio'] * 100:.0f}%" if row["higher_is_better"] else f"{row['ratio']:.2f}×"


def format_line(row):
    ceiling = ""
    if row["ceiling"] is not None:
        ceiling = f"  ceiling {number(row['ceiling'], row['unit'])} ({row['ceiling_label']})  ratio {ratio_text(row)}"
    note = f"  [{row['note']}]" if row["note"] else ""
    return f"{row['bench']:<9} {row['metric']:<62} {number(row['value'], row['unit']):>14}{ceiling}{note}"


# ---------------------------------------------------------------------------------------------------------------
# scratch resources

def scratch_name(name):
    return f"bench-{name}-{os.getpid()}"


def database_url(base, database):
    parts = urllib.parse.urlsplit(base)
    return urllib.parse.urlunsplit(parts._replace(path="/" + database))


@contextmanager
def scratch_database(settings, name):
    """A new database with the schema (orderpipeline migrate), dropped afterwards."""
    database = f"bench_{name}_{os.getpid()}"
    with psycopg.connect(settings.database_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{database}"')
    url = database_url(settings.database_url, database)
    try:
        subprocess.run([settings.orderpipeline, "migrate"], env={**ENV, "DATABASE_URL": url, "LOG_LEVEL": "warning"},
                       check=True, stdout=subprocess.DEVNULL, timeout=60)
        yield url
    finally:
        with psycopg.connect(settings.database_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@contextmanager
def scratch_topic(settings, name, partitions=3):
    """A topic and its dead-letter topic, deleted afterwards (Tansu keeps topics in memory)."""
    topic = scratch_name(name)
    admin = AdminClient({"bootstrap.servers": settings.kafka, "log_level": 3})
    topics = [NewTopic(topic, partitions, 1), NewTopic(topic + ".dead-letter", 1, 1)]
    for future in admin.create_topics(topics, request_timeout=15).values():
        future.result()
    try:
        yield topic
    finally:
        for future in admin.delete_topics([t.topic for t in topics], request_timeout=15).values():
            try:
                future.result()
            except Exception as error:  # a broker without DeleteTopics keeps them until it restarts
                log(f"could not delete topic: {error}")


def declare_queue(settings, name):
    """A queue on the AMQP broker (attaching to /queue/NAME declares it; it is non-durable and goes with the
    broker's restart: AMQP 1.0 has no way to delete it)."""
    queue = scratch_name(name)
    if settings.amqp:
        subprocess.run([sys.executable, os.path.join(REPO, "scripts/lib/services_check.py"), "declare-queue", settings.amqp, queue],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return queue


# ---------------------------------------------------------------------------------------------------------------
# processes

class Pipeline:
    """orderpipeline processes on one scratch database, topic and queue; stopped with SIGTERM at the end."""

    def __init__(self, settings, url, topic, queue, label):
        self.settings = settings
        self.env = {**ENV, "DATABASE_URL": url, "KAFKA_TOPIC": topic, "KAFKA_DEAD_LETTER_TOPIC": topic + ".dead-letter",
                    "KAFKA_GROUP_ID": f"{topic}-group", "SERVICEBUS_QUEUE": queue, "HTTP_PORT": str(settings.http_port),
                    "LOG_LEVEL": settings.log_level}
        self.env.pop("METRICS_PORT", None)
        self.label = label
        self.processes = []

    def start(self, role, **extra):
        env = {**self.env, **{k: v for k, v in extra.items() if v is not None}}
        for name in [k for k, v in extra.items() if v is None]:
            env.pop(name, None)
        log_path = os.path.join(self.settings.work, f"{self.label}-{role}-{len(self.processes)}.log")
        process = subprocess.Popen([self.settings.orderpipeline, role], env=env, stdout=open(log_path, "w"),
                                   stderr=subprocess.STDOUT)
        process.log_path = log_path
        self.processes.append(process)
        return process

    def url(self, path):
        return f"http://127.0.0.1:{self.settings.http_port}{path}"

    def wait_ready(self, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.check_alive()
            try:
                with urllib.request.urlopen(self.url("/health/ready"), timeout=2) as response:
                    if response.status == 200:
                        return
            except Exception:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.label}: the API did not become ready in {timeout} s")

    def check_alive(self):
        for process in self.processes:
            if process.poll() is not None:
                tail = open(process.log_path).read()[-2000:]
                raise RuntimeError(f"{self.label}: {' '.join(process.args)} exited with {process.returncode}:\n{tail}")

    def post_order(self, key=None):
        request = urllib.request.Request(self.url("/api/orders"), data=ORDER_BODY, method="POST",
                                         headers={"Content-Type": "application/json", **({"Idempotency-Key": key} if key else {})})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())["id"]

    def stop(self):
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


ORDER_BODY = b'{"customerName":"John Smith","customerEmail":"john@example.com","items":[{"productName":"Laptop","quantity":1,"unitPrice":999.99}]}'


def wait_until(predicate, timeout, what, poll=0.05, alive=None, required=True):
    """Polls until `predicate()`; on timeout raises, or returns False when not `required`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if alive:
            alive()
        if predicate():
            return True
        time.sleep(poll)
    if required:
        raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
    log(f"stopped waiting for {what} after {timeout} s")
    return False


def wait_until_none(url, rows_sql, timeout, what, poll=0.2, alive=None, required=True):
    """Polls until the query `rows_sql` (SELECT 1 FROM … WHERE …) finds no row, on one connection and with EXISTS. A
    connection per poll cost PostgreSQL a backend start and exit each time, and count(*) read every remaining row:
    together about 12% of the machine while a relay drained, polled every 0.2 s, taken from what was measured."""
    with psycopg.connect(url, autocommit=True) as db:
        return wait_until(lambda: not db.execute(f"SELECT EXISTS ({rows_sql})").fetchone()[0], timeout, what, poll=poll,
                          alive=alive, required=required)


def drain_limit(settings):
    """How long a drain may take before it is measured as far as it got (a busy disk can make 100k commits slow)."""
    return settings.size(int(ENV.get("BENCH_DRAIN_LIMIT", "300")), 90)


def scalar(url, sql, params=()):
    with psycopg.connect(url, autocommit=True) as connection:
        return connection.execute(sql, params).fetchone()[0]


def quiet_disk(url):
    """A checkpoint, then the kernel's dirty pages written out: what the benchmarks before left to write no longer
    lands in this one's measurements, and the next checkpoint is 540 MB of WAL away (a `latency` run writes about
    250). Measured: after the e2e benchmark, two of three 100/s rounds had a p99 near 300 ms (commits stalled while
    a checkpoint started and the kernel wrote back e2e's pages); a round started while the kernel wrote back 900 MB
    of another database's pages had a 150 ms stall (p99 93 ms against 9 ms in the rounds beside it)."""
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("CHECKPOINT")
    os.sync()


class DiskProbe(threading.Thread):
    """Times one 8 KB write + fdatasync every 20 ms on the disk under the bench's work folder (the same disk as
    PostgreSQL's WAL here) until `stop()`, which returns the median and the slowest in ms. A commit waits for such a flush, so a
    latency round's tail can be told apart from the disk's: on this machine kind an idle disk's flush, normally
    0.3 ms, has been seen to take 317 ms, and every commit waits as long."""

    def __init__(self, directory):
        super().__init__(daemon=True)
        self.path, self.flushes, self.stopped = os.path.join(directory, "disk-probe"), [], threading.Event()
        self.start()

    def run(self):
        descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            block = b"\0" * 8192
            while not self.stopped.wait(0.02):
                start = time.perf_counter()
                os.pwrite(descriptor, block, 0)
                os.fdatasync(descriptor)
                self.flushes.append((time.perf_counter() - start) * 1000)
        finally:
            os.close(descriptor)

    def stop(self):
        self.stopped.set()
        self.join()
        return (median(self.flushes), max(self.flushes)) if self.flushes else (0.0, 0.0)


def wait_fulfilled(url, order_id, timeout, alive=None):
    wait_until(lambda: scalar(url, "SELECT status FROM orders WHERE id = %s", (order_id,)) == "Fulfilled",
               timeout, f"order {order_id} to be fulfilled", alive=alive)


def process_counters(pid):
    """CPU seconds (user + system) and context switches (voluntary + involuntary) of a process, all its threads
    summed: read before and after a run, their difference per request shows what each request costs the process."""
    ticks = os.sysconf("SC_CLK_TCK")
    cpu, switches = 0.0, 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
            with open(f"/proc/{pid}/task/{task}/status") as status:
                switches += sum(int(line.split()[1]) for line in status if "ctxt_switches:" in line)
        except (OSError, IndexError):
            continue  # the thread ended meanwhile
    return cpu, switches


def _stat_fields(pid):
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()


def tansu_pid():
    with open(ENV["TANSU_PID_FILE"]) as f:
        return int(f.read().split()[0])


class EachSecond(threading.Thread):
    """Reads `read()` once a second on a thread of its own until `stop()`, which returns the change over each
    second: how a cost moves within a run (Tansu's CPU grows as its partitions do, docs/BROKERS.md)."""

    def __init__(self, read):
        super().__init__(daemon=True)
        self.read, self.readings, self.stopped = read, [], threading.Event()
        self.start()

    def run(self):
        while True:
            self.readings.append(self.read())
            if self.stopped.wait(1.0):
                return

    def stop(self):
        self.stopped.set()
        self.join()
        return [after - before for before, after in zip(self.readings, self.readings[1:])]


class CpuMeter:
    """CPU seconds of the machine's parts over a span, for notes that say where a benchmark's CPU went: PostgreSQL
    (its live processes, plus the postmaster's reaped children, so a backend that ended within the span, such as
    pgbench's, still counts), this script's children (pgbench, wrk), Tansu, and given processes."""

    def __init__(self, url, pids=()):
        with psycopg.connect(url) as db:  # its backend's parent, read while the backend lives
            self.postmaster = int(_stat_fields(db.execute("SELECT pg_backend_pid()").fetchone()[0])[1])
        self.tansu = tansu_pid()
        self.pids = list(pids)
        self.start = self.read()

    def read(self):
        ticks = os.sysconf("SC_CLK_TCK")
        postgres = 0.0
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                fields = _stat_fields(pid)
                if int(pid) == self.postmaster:
                    postgres += sum(int(f) for f in fields[11:15]) / ticks  # its own time and its reaped children's
                elif int(fields[1]) == self.postmaster:
                    postgres += (int(fields[11]) + int(fields[12])) / ticks
            except (OSError, IndexError, ValueError):
                continue
        children = os.times()
        return {"postgres": postgres, "clients": children.children_user + children.children_system,
                "tansu": process_counters(self.tansu)[0], **{f"pid{pid}": process_counters(pid)[0] for pid in self.pids}}

    def per_unit(self, units, names):
        """Text: µs of CPU per unit for each part, `names` mapping keys (postgres, clients, tansu, pidN) to labels."""
        end = self.read()
        return ", ".join(f"{label} {(end[key] - self.start[key]) / units * 1e6:.1f}" for key, label in names.items())


def per_unit(spans, units):
    """Text for a note: CPU µs and context switches per unit over `spans`, (before, after) pairs of
    `process_counters` readings."""
    if not units:
        return "n/a"
    cpu = sum(after[0] - before[0] for before, after in spans)
    switches = sum(after[1] - before[1] for before, after in spans)
    return f"{cpu / units * 1e6:.0f} µs CPU and {switches / units:.1f} context switches"


# ---------------------------------------------------------------------------------------------------------------
# pgbench and wrk

def pgbench(settings, url, script_text, clients, seconds=None, transactions=None):
    """Runs a pgbench script; returns (transactions per second, mean latency ms, elapsed seconds)."""
    with tempfile.NamedTemporaryFile("w", suffix=".sql", dir=settings.work, delete=False) as script:
        script.write(script_text)
    args = [settings.pgbench, "-n", "-M", "prepared", "-c", str(clients), "-j", str(min(clients, 2)), "-f", script.name]
    args += ["-T", str(seconds)] if seconds else ["-t", str(transactions)]
    # Sessions as the pipeline's writers run them: the API's and the consumer's do not NOTIFY from their
    # transactions (a notifier wakes the relays outside them), and a NOTIFY-ing commit is much slower.
    env = {**ENV, "PGOPTIONS": (ENV.get("PGOPTIONS", "") + " -c orderpipeline.notify=off").strip()}
    start = time.monotonic()
    result = subprocess.run(args + [url], capture_output=True, text=True, env=env)
    elapsed = time.monotonic() - start
    if result.returncode != 0 or "tps = " not in result.stdout:
        raise RuntimeError(f"pgbench failed: {result.stdout[-1500:]}{result.stderr[-1500:]}")
    tps = float(re.search(r"tps = ([0-9.]+)", result.stdout).group(1))
    latency = re.search(r"latency average = ([0-9.]+) ms", result.stdout)
    return tps, float(latency.group(1)) if latency else None, elapsed


WRK_POST = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '%s'
""" % ORDER_BODY.decode()


def wrk(settings, url, connections, seconds):
    """POSTs the order body for `seconds`; returns (requests/s, p50 ms, p99 ms, non-2xx)."""
    script = os.path.join(settings.work, "post.lua")
    with open(script, "w") as f:
        f.write(WRK_POST)
    result = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script, url],
                            capture_output=True, text=True, check=True)
    out = result.stdout

    def ms(label):
        match = re.search(rf"^\s+{label}\s+([0-9.]+)(us|ms|s)\s*$", out, re.M)
        if not match:
            return None
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, ms("50%"), ms("99%"), int(non2xx.group(1)) if non2xx else 0


def kafka_producer(settings, **extra):
    """A producer configured as the relay's (idempotent, acks=all)."""
    return Producer({"bootstrap.servers": settings.kafka, "enable.idempotence": True, "acks": "all", **extra})


def event_id(order_id, event_type):
    """EventID.derived: a name-based (v5) UUID in the project's namespace."""
    return uuid.uuid5(uuid.UUID("2b1f6f1e-8a3c-4c56-9d0e-5a7b3c9e4f10"), f"{order_id}/{event_type}")
