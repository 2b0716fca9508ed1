"""Runs a scenario: places clients into worker processes, starts them together, samples CPU of
the workers and the broker over the measured window, and turns what they report into a result.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from mqttd.bench import hotloop
from mqttd.bench.engine import (
    RECV_SIZE,
    PubResult,
    PubSpec,
    SubResult,
    SubSpec,
    WorkerPlan,
    run_worker,
)
from mqttd.bench.mqtt import BenchError

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass
class Scenario:
    """Who publishes what and who subscribes to what. Scenario builders live in scenarios.py."""

    name: str
    pubs: list[PubSpec]
    subs: list[SubSpec]
    description: str = ""
    rate: float = 0.0  # total messages/s asked of the publishers (0 = as fast as read)
    pace_tick: float = 0.002  # see WorkerPlan.pace_tick


@dataclass
class Options:
    """How to run a scenario (not what it is)."""

    host: str = "127.0.0.1"
    port: int = 1883
    sub_port: int = 0  # subscribers connect here instead (another node through Redis)
    protocol_level: int = 4
    warmup: float = 1.0
    duration: float = 5.0
    # 1: every client in one process; N >= 2: the side with more clients spread over N - 1
    # processes, the other side in one.
    procs: int = 1
    batch_bytes: int = 65536
    sndbuf: int = 131072
    inflight: int = 1000
    rcvlowat: int = 32768
    ws_path: str = ""  # not empty: MQTT over WebSocket on that path (mqttd.bench.ws)
    broker_pid: int | None = None
    label: str = ""
    ready_timeout: float = 30.0
    progress: bool = False  # one line per second on stderr while it runs


@dataclass
class Sample:
    t: float
    gen: float | None
    broker: float | None
    host: tuple[int, int, int] | None


@dataclass
class Stream:
    """One publisher as seen by one subscriber that should receive all of its messages."""

    subscriber: str
    publisher: int
    published: int
    received: int
    lost: int  # published - received (0 when every message arrived)
    reordered: int  # arrivals with a sequence number below one already seen
    gaps: int  # sum of forward jumps in sequence numbers seen so far


@dataclass
class RunResult:
    scenario: str
    label: str
    target: str
    protocol_level: int
    qos: int
    publishers: int
    subscribers: int
    payload: int
    warmup: float
    window_s: float
    procs: int
    generator_impl: str
    description: str = ""
    rate: float = 0.0  # asked total msg/s (0 = as fast as the broker reads)
    published: int = 0  # in the window
    delivered: int = 0  # in the window, summed over subscribers
    published_per_s: float = 0.0
    delivered_per_s: float = 0.0
    published_total: int = 0  # whole run, warm-up and tail included
    received_total: int = 0
    lost_total: int = 0
    reordered_total: int = 0
    foreign: int = 0
    # Acknowledgement flow (QoS 1: PUBACKs the publishers got for their PUBLISHes).
    acked_total: int = 0
    # "no message lost at QoS >= 1, none reordered per publisher" (QoS 0: only the order).
    integrity_ok: bool = True
    integrity: str = ""
    # Latency scenario: receive time - send time stamped in the payload, over the window.
    lat_samples: int = 0
    lat_p50_us: float | None = None
    lat_p90_us: float | None = None
    lat_p99_us: float | None = None
    lat_p999_us: float | None = None
    lat_max_us: float | None = None
    lat_mean_us: float | None = None
    # Idle scenario (and broker_rss_kb for every run with --broker-pid).
    connections: int = 0  # asked for
    connected: int = 0  # got CONNACK 0
    held: int = 0  # still open at the end of the hold
    connect_s: float | None = None  # time to open them all
    rss_before_kb: int | None = None
    rss_after_kb: int | None = None
    kb_per_conn: float | None = None
    connects_per_s: float | None = None  # connections set up (CONNACK 0) per second
    broker_rss_kb: int | None = None  # broker VmRSS at the end of the window
    gen_cpu_s: float | None = None
    broker_cpu_s: float | None = None
    gen_cpu_us_per_msg: float | None = None
    broker_cpu_us_per_msg: float | None = None
    gen_cpu_util: float | None = None  # cores busy (1.0 = one core)
    broker_cpu_util: float | None = None
    # Whole machine over the window, from /proc/stat (Linux): cores busy in any way, of which
    # softirq (loopback TCP delivery is largely done there and charged to no process).
    host_busy_cores: float | None = None
    host_softirq_cores: float | None = None
    host_cores: int = 0
    streams: list[Stream] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def proc_cpu_seconds(pid: int) -> float | None:
    """user + system CPU of a process from /proc/<pid>/stat (fields 14 and 15, clock ticks)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces or ')': split after its last ')'.
    fields = data[data.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_kb(pid: int) -> int | None:
    """Resident set size (VmRSS) of a process in KiB, from /proc/<pid>/status."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def raise_nofile() -> tuple[int, int]:
    """Raise this process's RLIMIT_NOFILE soft limit to the hard limit (each client is one file
    descriptor; the hard limit itself needs root: ``ulimit -Hn`` / limits.conf). Returns
    (soft, hard) after the change."""
    try:
        import resource
    except ImportError:  # not POSIX
        return (0, 0)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft, hard


def percentile(sorted_vals: list, q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..1)."""
    if not sorted_vals:
        return math.nan
    k = max(0, min(len(sorted_vals) - 1, math.ceil(q * len(sorted_vals)) - 1))
    return float(sorted_vals[k])


def host_cpu_ticks() -> tuple[int, int, int] | None:
    """(total, idle + iowait, softirq) clock ticks summed over all CPUs, from /proc/stat."""
    try:
        with open("/proc/stat", "rb") as f:
            first = f.readline().split()
    except OSError:
        return None
    v = [int(x) for x in first[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice; guest time is already
    # inside user, so it is left out of the total.
    return sum(v[:8]), v[3] + v[4], v[6]


def _place(scn: Scenario, opt: Options) -> list[WorkerPlan]:
    def plan(pubs: list[PubSpec], subs: list[SubSpec]) -> WorkerPlan:
        return WorkerPlan(
            pace_tick=scn.pace_tick,
            # 1 MiB each for a few subscribers, less for many (16 MiB per process at most).
            rbuf_size=max(1 << 16, min(RECV_SIZE, (16 << 20) // max(1, len(subs)))),
            progress=opt.progress,
            # bytes of one PUBLISH, about (fixed header <= 5, topic length 2, packet id 2)
            packet_size=max((len(p.topic.encode()) + p.payload + 9 for p in scn.pubs), default=0),
            host=opt.host,
            port=opt.port,
            protocol_level=opt.protocol_level,
            npubs=len(scn.pubs),
            pubs=pubs,
            subs=subs,
            warmup=opt.warmup,
            duration=opt.duration,
            batch_bytes=opt.batch_bytes,
            sndbuf=opt.sndbuf,
            sub_port=opt.sub_port,
            inflight=opt.inflight,
            rcvlowat=opt.rcvlowat,
            ws_path=opt.ws_path,
        )

    if opt.procs <= 1:
        return [plan(scn.pubs, scn.subs)]
    if len(scn.subs) > len(scn.pubs):
        # Fan-out: the receiving side has the work; spread the subscribers.
        nsub = min(opt.procs - 1, len(scn.subs))
        sgroups: list[list[SubSpec]] = [[] for _ in range(nsub)]
        for i, s in enumerate(scn.subs):
            sgroups[i % nsub].append(s)
        return [plan(scn.pubs, [])] + [plan([], g) for g in sgroups if g]
    npub_procs = min(opt.procs - 1, max(1, len(scn.pubs)))
    groups: list[list[PubSpec]] = [[] for _ in range(npub_procs)]
    for i, p in enumerate(scn.pubs):
        groups[i % npub_procs].append(p)
    return [plan([], scn.subs)] + [plan(g, []) for g in groups if g]


def _mp_context() -> mp.context.BaseContext:
    # fork starts a worker in milliseconds and needs no importable __main__; spawn elsewhere.
    if sys.platform.startswith("linux"):
        return mp.get_context("fork")
    return mp.get_context("spawn")


def run(scn: Scenario, opt: Options) -> RunResult:
    """Run ``scn`` once against the broker at ``opt.host:opt.port``."""
    raise_nofile()
    plans = _place(scn, opt)
    ctx = _mp_context()
    procs: list[Any] = []
    conns: list[Connection] = []
    try:
        for plan in plans:
            parent, child = ctx.Pipe()
            pr = ctx.Process(target=run_worker, args=(plan, child), daemon=True)
            pr.start()
            child.close()
            procs.append(pr)
            conns.append(parent)
        return _drive(scn, opt, plans, procs, conns)
    finally:
        for c in conns:
            c.close()
        for pr in procs:
            pr.join(5)
            if pr.is_alive():
                pr.kill()
                pr.join(5)


def _recv(c: Connection) -> tuple:
    try:
        return c.recv()
    except EOFError:
        return ("error", "worker process exited without reporting")


def _drive(
    scn: Scenario, opt: Options, plans: list[WorkerPlan], procs: list[Any], conns: list[Connection]
) -> RunResult:
    pids: list[int] = []
    deadline = time.monotonic() + opt.ready_timeout
    for c in conns:
        if not c.poll(max(0.0, deadline - time.monotonic())):
            raise BenchError("workers did not connect in time")
        m = _recv(c)
        if m[0] != "ready":
            raise BenchError(f"worker failed while connecting: {m[1]}")
        pids.append(m[1])
    t0 = time.monotonic() + 0.05
    for c in conns:
        c.send(("go", t0))
    t_w = t0 + opt.warmup
    t_e = t_w + opt.duration

    def sample() -> Sample:
        now = time.monotonic()
        gen = [proc_cpu_seconds(p) for p in pids]
        brk = proc_cpu_seconds(opt.broker_pid) if opt.broker_pid else None
        gsum = None if None in gen else sum(g for g in gen if g is not None)
        return Sample(now, gsum, brk, host_cpu_ticks())

    early: list[tuple[int, tuple]] = []  # non-tick messages that came during the window
    ticks: dict[int, tuple[float, int, int]] = {}
    shown = [t0, 0, 0]  # time, delivered, published at the last progress line

    def wait_until(t_end: float) -> None:
        if not opt.progress:
            time.sleep(max(0.0, t_end - time.monotonic()))
            return
        while (left := t_end - time.monotonic()) > 0:
            quiet = {i for i, _ in early}  # reported or died: nothing more until the end
            polled = [c for i, c in enumerate(conns) if i not in quiet]
            if not polled:
                time.sleep(left)
                break
            for c in wait(polled, timeout=left):
                i = conns.index(c)  # type: ignore[arg-type]
                m = _recv(c)
                if m[0] != "tick":
                    early.append((i, m))
                    continue
                ticks[i] = m[1:]
                if len(ticks) == len(conns):
                    now = max(t for t, _, _ in ticks.values())
                    if now - shown[0] >= 0.9:
                        d = sum(v[1] for v in ticks.values())
                        pb = sum(v[2] for v in ticks.values())
                        dt = now - shown[0]
                        phase = "warm-up" if now < t_w else "window"
                        print(
                            f"  {opt.label or opt.port} {scn.name}: {now - t0:4.1f} s ({phase}) "
                            f"delivered {(d - shown[1]) / dt:,.0f} msg/s, "
                            f"published {(pb - shown[2]) / dt:,.0f} msg/s",
                            file=sys.stderr,
                            flush=True,
                        )
                        shown[:] = [now, d, pb]

    wait_until(t_w)
    s_w = sample()
    wait_until(t_e)
    s_e = sample()
    rss = proc_rss_kb(opt.broker_pid) if opt.broker_pid else None

    pub_holders = {i for i, p in enumerate(plans) if p.pubs}
    sub_holders = [i for i, p in enumerate(plans) if p.subs]
    totals: dict[int, int] = {}
    reported: set[int] = set()
    pub_results: list[PubResult] = []
    sub_results: list[SubResult] = []
    errors: list[str] = []
    pending = set(range(len(conns)))
    hard_deadline = time.monotonic() + 60.0
    while pending:
        if early:
            got = [early.pop(0)]
        else:
            ready = wait(
                [conns[i] for i in pending], timeout=max(0.0, hard_deadline - time.monotonic())
            )
            if not ready:
                raise BenchError("workers did not finish in time")
            got = [(conns.index(c), _recv(c)) for c in ready]  # type: ignore[arg-type]
        for i, m in got:
            if m[0] == "tick":
                continue
            if m[0] == "published":
                totals.update(m[1])
                reported.add(i)
                if reported >= pub_holders:
                    for j in sub_holders:
                        try:
                            conns[j].send(("totals", totals))
                        except OSError:
                            pass
            elif m[0] == "result":
                pub_results.extend(m[1])
                sub_results.extend(m[2])
                pending.discard(i)
            else:
                errors.append(str(m[1]))
                pending.discard(i)
                if i in pub_holders and i not in reported:
                    reported.add(i)
                    if reported >= pub_holders:
                        for j in sub_holders:
                            if j in pending:
                                conns[j].send(("totals", totals))
    if errors and not sub_results:
        raise BenchError("; ".join(errors))
    res = _assemble(scn, opt, pub_results, sub_results, errors, s_w, s_e)
    res.broker_rss_kb = rss
    return res


def _assemble(
    scn: Scenario,
    opt: Options,
    pubs: list[PubResult],
    subs: list[SubResult],
    errors: list[str],
    s_w: Sample,
    s_e: Sample,
) -> RunResult:
    qos = scn.pubs[0].qos if scn.pubs else 0
    res = RunResult(
        scenario=scn.name,
        label=opt.label or f"{opt.host}:{opt.port}",
        target=f"{opt.host}:{opt.port}",
        protocol_level=opt.protocol_level,
        qos=qos,
        publishers=len(scn.pubs),
        subscribers=len(scn.subs),
        payload=scn.pubs[0].payload if scn.pubs else 0,
        warmup=opt.warmup,
        window_s=s_e.t - s_w.t,
        procs=len(_place(scn, opt)),
        generator_impl=hotloop.describe(),
        description=scn.description,
        rate=scn.rate,
    )
    published = {p.index: p.published for p in pubs}
    res.published_total = sum(published.values())
    res.published = sum(p.window.v_end - p.window.v_start for p in pubs)
    res.published_per_s = sum(p.window.rate for p in pubs)
    res.delivered = sum(s.window.v_end - s.window.v_start for s in subs)
    res.delivered_per_s = sum(s.window.rate for s in subs)
    specs = {s.client_id: s for s in scn.subs}
    for s in subs:
        res.foreign += s.foreign
        res.received_total += s.messages
        for i in specs[s.client_id].expects:
            st = Stream(
                subscriber=s.client_id,
                publisher=i,
                published=published.get(i, 0),
                received=s.received[i],
                lost=max(0, published.get(i, 0) - s.received[i]),
                reordered=s.reordered[i],
                gaps=s.gaps[i],
            )
            res.streams.append(st)
            res.lost_total += st.lost
            res.reordered_total += st.reordered
        if s.error:
            errors.append(f"{s.client_id}: {s.error}")
    errors.extend(f"publisher {p.index}: {p.error}" for p in pubs if p.error)
    res.errors = errors
    res.acked_total = sum(p.acked for p in pubs)
    _check_integrity(res)
    lat = sorted(v for s in subs for v in s.latency_ns)
    if lat:
        res.lat_samples = len(lat)
        for attr, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)):
            setattr(res, f"lat_{attr}_us", percentile(lat, q) / 1000)
        res.lat_max_us = lat[-1] / 1000
        res.lat_mean_us = sum(lat) / len(lat) / 1000
    window = res.window_s
    if s_w.gen is not None and s_e.gen is not None:
        res.gen_cpu_s = s_e.gen - s_w.gen
        res.gen_cpu_util = res.gen_cpu_s / window if window > 0 else None
        if res.delivered:
            res.gen_cpu_us_per_msg = res.gen_cpu_s / res.delivered * 1e6
    if s_w.broker is not None and s_e.broker is not None:
        res.broker_cpu_s = s_e.broker - s_w.broker
        res.broker_cpu_util = res.broker_cpu_s / window if window > 0 else None
        if res.delivered:
            res.broker_cpu_us_per_msg = res.broker_cpu_s / res.delivered * 1e6
    if s_w.host and s_e.host and window > 0:
        total = s_e.host[0] - s_w.host[0]
        res.host_cores = os.cpu_count() or 1
        if total > 0:
            # ticks -> cores: the total over all CPUs spans window * ncpu.
            per_core = total / res.host_cores
            res.host_busy_cores = (total - (s_e.host[1] - s_w.host[1])) / per_core
            res.host_softirq_cores = (s_e.host[2] - s_w.host[2]) / per_core
    return res


def _check_integrity(res: RunResult) -> None:
    """At QoS >= 1 every published message must arrive (each subscriber that should get it) and
    be acknowledged; at every QoS, a publisher's messages must arrive in order [MQTT-4.6.0]."""
    problems = []
    if res.reordered_total:
        problems.append(f"{res.reordered_total:,} reordered")
    if res.qos >= 1:
        if res.lost_total:
            problems.append(f"{res.lost_total:,} lost")
        if res.acked_total < res.published_total:
            problems.append(
                f"{res.published_total - res.acked_total:,} of {res.published_total:,} "
                f"never acknowledged ({'PUBACK' if res.qos == 1 else 'PUBCOMP'})"
            )
    if not res.streams and res.publishers:
        problems.append("no stream to check")
    res.integrity_ok = not problems
    what = "in order" if res.qos == 0 else "none lost, in order, all acknowledged"
    res.integrity = "ok: " + what if not problems else "FAILED: " + ", ".join(problems)
