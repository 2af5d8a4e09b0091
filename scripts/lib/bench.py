"""scripts/bench's driver (run by scripts/bench with the services' Python): runs the benchmarks, each next to its
ceiling measured in the same run, prints one line per figure, and writes BENCHMARKS.md and benchmarks.json."""
import argparse
import datetime
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_common import REPO, Figures, Settings, log, number, quiet_disk, ratio_text  # noqa: E402
from bench_drain import consumer, relay  # noqa: E402
from bench_pipeline import api, e2e, latency  # noqa: E402


def sim(settings, figures):
    """order-sim: seeds/min and simulated/wall time for both fault modes, on one core and on two."""
    seeds, orders, cores = settings.size(1000, 5), settings.size(100, 30), os.cpu_count() or 1
    for faults in ("all", "swarm"):
        one_core = None
        for jobs in (1, 2):
            cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
            result = subprocess.run([settings.order_sim, "--seeds", str(seeds), "--orders", str(orders), "--faults", faults,
                                     "--jobs", str(jobs), "--failures-dir", settings.work], capture_output=True, text=True)
            summary = re.search(r"seeds=(\d+) orders=(\d+) failures=(\d+) sim_seconds=([0-9.]+) wall_seconds=([0-9.]+)", result.stdout)
            if result.returncode != 0 or not summary:
                raise RuntimeError(f"order-sim --faults {faults} --jobs {jobs} exited {result.returncode}:\n{result.stdout[-2000:]}")
            cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = cpu_after.ru_utime + cpu_after.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime
            simulated, wall = float(summary.group(4)), float(summary.group(5))
            per_minute = seeds / wall * 60
            # CPU time does not grow with the machine's load as wall time does: seeds per CPU-minute compare runs.
            cpu_note = f"{seeds / max(cpu, 0.001) * 60:,.0f} seeds per CPU-minute ({cpu:.2f} s CPU)"
            if jobs == 1:
                one_core = per_minute
                figures.add("sim", f"--faults {faults} --jobs 1 ({seeds} seeds × {orders} orders), seeds/min", per_minute, "/min",
                            note=cpu_note)
            else:
                figures.add("sim", f"--faults {faults} --jobs 2, seeds/min", per_minute, "/min", min(jobs, cores) * one_core,
                            f"{min(jobs, cores)} × --jobs 1", note=cpu_note)
            figures.add("sim", f"--faults {faults} --jobs {jobs}, simulated time / wall time", simulated / wall, "×",
                        note=f"{simulated / max(cpu, 0.001):,.0f}× per CPU-second" + ("; goal ≥ 1,000× on one core" if jobs == 1 else ""))


BENCHMARKS = {"sim": sim, "api": api, "e2e": e2e, "latency": latency, "relay": relay, "consumer": consumer}


def git_commit():
    result = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def load():
    return [round(x, 2) for x in os.getloadavg()]


def write_report(out_dir, results):
    """benchmarks.json keeps the latest run of each benchmark (a run of one NAME replaces only its own entry);
    BENCHMARKS.md is written from it."""
    path = os.path.join(out_dir, "benchmarks.json")
    data = {"benchmarks": {}}
    if os.path.exists(path):
        with open(path) as f:
            data = json.load(f)
    data["benchmarks"].update(results)
    data["benchmarks"] = {name: data["benchmarks"][name] for name in BENCHMARKS if name in data["benchmarks"]}
    with open(path, "w") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")
    lines = [
        "# Benchmarks",
        "",
        "Written by [`scripts/bench`](../scripts/bench) (which says what each benchmark does): release builds, services on",
        "loopback, every benchmark on its own scratch database, topic and queue. Each figure is set beside a **ceiling**",
        "measured in the same run on the same machine (pgbench running the project's own SQL, a bare librdkafka client,",
        "both cores), so the ratio holds even when the machine is busy; the absolute numbers do not. The load average",
        "(1/5/15 min) is recorded before and after each benchmark: other work on the machine lowers every figure.",
        "",
        "Ratio = this project ÷ ceiling: a percentage for throughput (higher is better), a factor (×) for latency (lower",
        "is better). The separate-process run of `e2e` is serve + a Kafka relay + consume + a Service Bus relay",
        "(`relay` with RELAY_OUTBOXES=kafka and =service-bus). pgbench's sessions run as the",
        "pipeline's writers do, without a NOTIFY in their transactions (`orderpipeline.notify=off`; a notifier wakes",
        "the relays outside them): a NOTIFY-ing commit is far slower, and it made earlier ceilings too low.",
        "`relay` drains with one and with two relays in turn in every round; its \"2 relays vs 1\" line compares them",
        "round by round, since the machine's slow stretches last minutes. Every benchmark starts after a checkpoint and",
        "a `sync`, and every `latency` round after a `sync`: a checkpoint and the kernel's writeback of what an earlier",
        "benchmark left stalled commits for 100-300 ms in the rounds after it. `latency` measures its round-trip ceiling",
        "in pieces, one right before each round, and times an 8 KB write + fdatasync every 20 ms during each piece and",
        "round: the disk's median and slowest flush are printed beside each p99, since a commit waits for the same",
        "flush (this machine kind's disk has stalled a flush for 100-460 ms while idle).",
        "",
    ]
    for name, run in data["benchmarks"].items():
        lines += [
            f"## {name}",
            "",
            f"{run['date']} · commit {run['commit']} · {run['cores']} cores · load average {run['load_before']} before, "
            f"{run['load_after']} after · {run['seconds']:.0f} s" + (" · **smoke sizes**" if run.get("smoke") else "")
            + (" · **FAILED**: " + run["error"] if run.get("error") else ""),
            "",
        ] + ([run["note"], ""] if run.get("note") else []) + [
            "| metric | this project | ceiling | ratio | notes |",
            "|---|---:|---:|---:|---|",
        ]
        for row in run["figures"]:
            ceiling = f"{number(row['ceiling'], row['unit'])} ({row['ceiling_label']})" if row["ceiling"] is not None else "—"
            lines.append(f"| {row['metric'].strip()} | {number(row['value'], row['unit'])} | {ceiling} | {ratio_text(row)} | {row['note']} |")
        lines.append("")
    with open(os.path.join(out_dir, "BENCHMARKS.md"), "w") as f:
        f.write("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(prog="scripts/bench")
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default all): {', '.join(BENCHMARKS)}")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes; only checks that every benchmark runs")
    parser.add_argument("--bin-dir", required=True)
    parser.add_argument("--out-dir", help="where BENCHMARKS.md and benchmarks.json go (default docs/; --smoke: a temporary folder)")
    args = parser.parse_args()
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; there are: {', '.join(BENCHMARKS)}")
    names = args.names or list(BENCHMARKS)
    work = tempfile.mkdtemp(prefix="orderpipeline-bench.")
    settings = Settings(args.smoke, args.bin_dir, work)
    out_dir = args.out_dir or (work if args.smoke else os.path.join(REPO, "docs"))
    log(f"{'smoke run' if args.smoke else 'run'} of {', '.join(names)}; {os.cpu_count()} cores, load {load()}; logs in {work}")
    results, failed = {}, []
    for name in names:
        figures, before, start = Figures(), load(), time.monotonic()
        error = None
        try:
            quiet_disk(settings.database_url)  # what the benchmark before left to write back is not this one's
            BENCHMARKS[name](settings, figures)
        except Exception as exc:  # one broken benchmark does not hide the others' figures
            error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            traceback.print_exc()
            print(f"{name:<9} FAILED: {error}", flush=True)
        if error or not figures.rows:
            failed.append(name)
        results[name] = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": git_commit(),
                         "cores": os.cpu_count(), "load_before": before, "load_after": load(), "seconds": time.monotonic() - start,
                         "smoke": args.smoke, "error": error, "note": os.environ.get("BENCH_NOTE", ""), "figures": figures.rows}
    write_report(out_dir, results)
    log(f"wrote {out_dir}/BENCHMARKS.md and benchmarks.json")
    if failed:
        log(f"FAILED: {', '.join(failed)} (logs in {work})")
        sys.exit(1)
    if out_dir != work and not os.environ.get("BENCH_KEEP_LOGS"):
        shutil.rmtree(work, ignore_errors=True)  # the processes' logs: large after a full run


if __name__ == "__main__":
    main()
