"""Private servers and process helpers of the chaos test (scripts/lib/chaos.py): a PostgreSQL cluster, a Tansu
broker and a RabbitMQ node of the run's own, on ports from ORDERPIPELINE_CHAOS_PORT_BASE (default 19400), so that
freezing them never touches the shared services other test suites use at the same time."""
import glob
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

ENV = os.environ
PORT_BASE = int(ENV.get("ORDERPIPELINE_CHAOS_PORT_BASE", "19400"))
PG_PORT, KAFKA_PORT, AMQP_PORT, DIST_PORT, EPMD_PORT, HTTP_PORT, METRICS_PORT = (PORT_BASE + i for i in (0, 1, 2, 3, 14, 15, 16))
QUEUE = "order-fulfilment"
IS_ROOT = os.geteuid() == 0
T0 = time.monotonic()


NAME = ENV.get("ORDERPIPELINE_RUN_NAME", "chaos")  # the prefix of every log line (scripts/frozen-postgres: its own)


def log(msg):
    print(f"{NAME}: [{time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def die(msg):
    log(f"ERROR: {msg}")
    raise SystemExit(1)


def wait_for(what, seconds, condition, poll=0.2):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(poll)
    if not condition():
        die(f"{what} not within {seconds:.0f} s")


def port_open(port):
    import socket
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def run(cmd, env=None, user=None, timeout=120, check=True):
    if user and IS_ROOT:
        cmd = ["runuser", "-u", user, "--"] + cmd
    done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    if check and done.returncode != 0:
        die(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-3000:]}")
    return done.stdout


def stop_group(pid, sig):
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


# --- private servers ----------------------------------------------------------------------------------------

class Postgres:
    def __init__(self, state):
        self.base = os.path.join(state, "pg")
        self.data = os.path.join(self.base, "data")
        self.bindir = run(["pg_config", "--bindir"]).strip()
        os.makedirs(self.base)
        if IS_ROOT:
            shutil.chown(self.base, "postgres", "postgres")
        run([f"{self.bindir}/initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "-E", "UTF8",
             "--locale=C.UTF-8"], user="postgres")
        self.start()

    def create_database(self):
        run(["psql", "-X", "-q", "-h", "127.0.0.1", "-p", str(PG_PORT), "-U", "postgres", "-d", "postgres", "-c", "create database chaos"])

    def start(self):
        run([f"{self.bindir}/pg_ctl", "-D", self.data, "-l", os.path.join(self.base, "postgres.log"), "-w", "-t", "60",
             "-o", f"-p {PG_PORT} -k {self.base} -c listen_addresses=127.0.0.1 -c max_connections=100", "start"],
            user="postgres")

    def crash_restart(self):
        run([f"{self.bindir}/pg_ctl", "-D", self.data, "-m", "immediate", "stop"], user="postgres")
        self.start()

    def pids(self):
        """The postmaster and its children (the processes a SIGSTOP must reach)."""
        with open(os.path.join(self.data, "postmaster.pid")) as f:
            master = int(f.readline())
        pids = [master]
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        if int(f.read().rsplit(")", 1)[1].split()[1]) == master:
                            pids.append(int(entry))
                except (OSError, IndexError, ValueError):
                    pass
        return pids

    def signal(self, sig):
        for pid in self.pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def stop(self):
        self.signal(signal.SIGCONT)
        run([f"{self.bindir}/pg_ctl", "-D", self.data, "-m", "immediate", "stop"], user="postgres", check=False)

    def sql(self, query):
        out = run(["psql", "-X", "-q", "-At", "-F", "|", "-h", "127.0.0.1", "-p", str(PG_PORT), "-U", "postgres", "-d",
                   "chaos", "-v", "ON_ERROR_STOP=1", "-c", query], timeout=60)
        return [line.split("|") for line in out.splitlines() if line]


class Tansu:
    def __init__(self, state):
        self.binary = ENV.get("TANSU_BIN") or os.path.join(os.getcwd(), ".services/bin/tansu")
        url = f"tcp://127.0.0.1:{KAFKA_PORT}"
        self.proc = subprocess.Popen([self.binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
                                     stdout=open(os.path.join(state, "tansu.log"), "w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_for("tansu listening", 20, lambda: port_open(KAFKA_PORT), 0.1)
        for topic, partitions in (("orders", 3), ("orders.dead-letter", 1)):
            run([self.binary, "topic", "create", topic, "--partitions", str(partitions), "--broker", url])

    def signal(self, sig):
        stop_group(self.proc.pid, sig)

    def stop(self):
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGKILL)
        self.proc.wait()


class RabbitMQ:
    """A second RabbitMQ node: own node name, directories, cookie, AMQP/dist/epmd ports."""

    def __init__(self, state):
        d = os.path.join(state, "rabbitmq")
        for sub in ("home", "mnesia", "log"):
            os.makedirs(os.path.join(d, sub))
        with open(os.path.join(d, "home/.erlang.cookie"), "w") as f:
            f.write(uuid.uuid4().hex.upper())
        os.chmod(os.path.join(d, "home/.erlang.cookie"), 0o400)
        open(os.path.join(d, "rabbitmq-env.conf"), "w").close()
        with open(os.path.join(d, "rabbitmq.conf"), "w") as f:
            f.write("loopback_users.guest = true\nlog.console = false\n")
        self.pid_file = os.path.join(d, "rabbitmq.pid")
        self.env = dict(ENV, HOME=f"{d}/home", RABBITMQ_NODENAME="chaos@localhost", RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
                        RABBITMQ_NODE_PORT=str(AMQP_PORT), RABBITMQ_DIST_PORT=str(DIST_PORT),
                        RABBITMQ_CTL_DIST_PORT_MIN=str(DIST_PORT + 1), RABBITMQ_CTL_DIST_PORT_MAX=str(DIST_PORT + 10),
                        ERL_EPMD_PORT=str(EPMD_PORT), ERL_EPMD_ADDRESS="127.0.0.1",
                        RABBITMQ_CONF_ENV_FILE=f"{d}/rabbitmq-env.conf", RABBITMQ_CONFIG_FILE=f"{d}/rabbitmq.conf",
                        RABBITMQ_ENABLED_PLUGINS_FILE=f"{d}/enabled_plugins", RABBITMQ_MNESIA_BASE=f"{d}/mnesia",
                        RABBITMQ_LOG_BASE=f"{d}/log", RABBITMQ_PID_FILE=self.pid_file,
                        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
                        ERL_CRASH_DUMP=f"{d}/erl_crash.dump")
        sbin = "/usr/lib/rabbitmq/bin"
        run([f"{sbin}/rabbitmq-plugins", "enable", "--offline", "rabbitmq_amqp1_0"], env=self.env)
        self.proc = subprocess.Popen([f"{sbin}/rabbitmq-server"], env=self.env, cwd=d, start_new_session=True,
                                     stdout=open(os.path.join(d, "log/startup.log"), "w"), stderr=subprocess.STDOUT)
        wait_for("rabbitmq listening", 90, lambda: self.proc.poll() is None and port_open(AMQP_PORT), 0.25)
        if self.proc.poll() is not None:
            die(f"rabbitmq-server exited; see {d}/log")
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from services_check import declare_queue
        declare_queue(f"amqp://guest:guest@127.0.0.1:{AMQP_PORT}", QUEUE)

    def signal(self, sig):
        stop_group(self.proc.pid, sig)

    def stop(self):
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGKILL)
        self.proc.wait()
        epmd = shutil.which("epmd") or next(iter(sorted(glob.glob("/usr/lib/erlang/erts-*/bin/epmd"))), None)
        if epmd:  # epmd refuses -kill while the dead node is still registered: wait (bounded) until it is not
            env = dict(ENV, ERL_EPMD_PORT=str(EPMD_PORT))
            names = lambda: subprocess.run([epmd, "-names"], env=env, capture_output=True, text=True).stdout
            wait_for_quietly = time.monotonic() + 10
            while "name " in names() and time.monotonic() < wait_for_quietly:
                time.sleep(0.2)
            subprocess.run([epmd, "-kill"], env=env, capture_output=True)
