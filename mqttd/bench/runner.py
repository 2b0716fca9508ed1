"""Runs a scenario: places clients into worker processes, starts them together, samples CPU of
the workers and the broker over the measured window, and turns what they report into a result.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from mqttd.bench import hotloop
from mqttd.bench.engine import PubResult, PubSpec, SubResult, SubSpec, WorkerPlan, run_worker
from mqttd.bench.mqtt import BenchError

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass
class Scenario:
    """Who publishes what and who subscribes to what. Scenario builders live in scenarios.py."""

    name: str
    pubs: list[PubSpec]
    subs: list[SubSpec]
    description: str = ""


@dataclass
class Options:
    """How to run a scenario (not what it is)."""

    host: str = "127.0.0.1"
    port: int = 1883
    sub_port: int = 0  # subscribers connect here instead (another node through Redis)
    protocol_level: int = 4
    warmup: float = 1.0
    duration: float = 5.0
    procs: int = 1  # 1: every client in one process; N >= 2: subscribers + N-1 publisher procs
    batch_bytes: int = 65536
    sndbuf: int = 131072
    inflight: int = 1000
    rcvlowat: int = 32768
    broker_pid: int | None = None
    label: str = ""
    ready_timeout: float = 30.0


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
    published: int = 0  # in the window
    delivered: int = 0  # in the window, summed over subscribers
    published_per_s: float = 0.0
    delivered_per_s: float = 0.0
    published_total: int = 0  # whole run, warm-up and tail included
    received_total: int = 0
    lost_total: int = 0
    reordered_total: int = 0
    foreign: int = 0
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
        )

    if opt.procs <= 1:
        return [plan(scn.pubs, scn.subs)]
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

    time.sleep(max(0.0, t_w - time.monotonic()))
    s_w = sample()
    time.sleep(max(0.0, t_e - time.monotonic()))
    s_e = sample()

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
        ready = wait(
            [conns[i] for i in pending], timeout=max(0.0, hard_deadline - time.monotonic())
        )
        if not ready:
            raise BenchError("workers did not finish in time")
        for c in ready:
            i = conns.index(c)  # type: ignore[arg-type]
            m = _recv(c)
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
    return _assemble(scn, opt, pub_results, sub_results, errors, s_w, s_e)


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
