"""Human-readable and JSON output of runs and A/B comparisons, for every scenario.

Each scenario has one primary metric (``METRICS``): the figure ``--compare`` takes the median
of, per broker, and divides (B / A). Throughput scenarios: delivered msg/s (higher is better);
latency: p99 (lower is better); idle: broker RSS at the end of the hold (lower is better).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mqttd.bench.idle import Idle, run_idle
from mqttd.bench.runner import Options, RunResult, Scenario, run

MQTT_NAMES = {3: "MQTT 3.1", 4: "MQTT 3.1.1", 5: "MQTT 5.0"}


@dataclass(frozen=True)
class Metric:
    attr: str
    title: str
    higher_is_better: bool


THROUGHPUT = Metric("delivered_per_s", "delivered msg/s", True)
METRICS: dict[str, Metric] = {
    "fanin": THROUGHPUT,
    "fanout": THROUGHPUT,
    "p2p": THROUGHPUT,
    "latency": Metric("lat_p99_us", "p99 latency us", False),
    "idle": Metric("rss_after_kb", "broker RSS KiB (end of hold)", False),
}


def metric_for(scenario: str) -> Metric:
    return METRICS.get(scenario, THROUGHPUT)


def run_any(scn: Scenario | Idle, opt: Options) -> RunResult:
    """Run a message-flow scenario or the idle-connections scenario."""
    if isinstance(scn, Idle):
        return run_idle(scn, opt)
    return run(scn, opt)


def _n(x: float) -> str:
    return f"{x:,.0f}"


def _f1(x: float) -> str:
    return f"{x:,.1f}"


def _cpu(util: float | None, per_msg: float | None) -> str:
    if util is None:
        return "n/a"
    s = f"{util:.2f} cores"
    if per_msg is not None:
        s += f" = {per_msg:.2f} us/msg"
    return s


def _header(r: RunResult) -> str:
    return (
        f"{r.scenario}  {r.label}  {MQTT_NAMES.get(r.protocol_level, r.protocol_level)}  "
        + (f"QoS {r.qos}  {r.payload} B payload  " if r.scenario != "idle" else "")
        + (r.description or f"{r.publishers} pub -> {r.subscribers} sub")
    )


def format_run(r: RunResult, per_publisher: bool = True, max_streams: int = 16) -> str:
    if r.scenario == "idle":
        return _format_idle(r)
    lines = [
        _header(r),
        f"  window {r.window_s:.2f} s after {r.warmup:g} s warm-up"
        + (f", paced at {r.rate:,.0f} msg/s" if r.rate else ", as fast as the broker reads"),
        f"  delivered {_n(r.delivered_per_s)} msg/s   published {_n(r.published_per_s)} msg/s"
        f"   ({_n(r.delivered)} delivered / {_n(r.published)} published in the window)",
    ]
    expected = sum(s.published for s in r.streams)
    pct = 100.0 * r.lost_total / expected if expected else 0.0
    lines.append(
        f"  lost {_n(r.lost_total)} of {_n(expected)} expected deliveries ({pct:.3f} %)"
        f"   reordered {_n(r.reordered_total)}"
        + (f"   acknowledged {_n(r.acked_total)} of {_n(r.published_total)}" if r.qos else "")
        + (f"   foreign {_n(r.foreign)}" if r.foreign else "")
    )
    lines.append(f"  check: {r.integrity}")
    if r.lat_samples:
        lines.append(
            f"  latency us ({_n(r.lat_samples)} samples): p50 {_f1(r.lat_p50_us or 0)}"
            f"  p90 {_f1(r.lat_p90_us or 0)}  p99 {_f1(r.lat_p99_us or 0)}"
            f"  p99.9 {_f1(r.lat_p999_us or 0)}  max {_f1(r.lat_max_us or 0)}"
        )
    lines.append(
        f"  CPU generator {_cpu(r.gen_cpu_util, r.gen_cpu_us_per_msg)} ({r.procs} proc,"
        f" {r.generator_impl})   broker {_cpu(r.broker_cpu_util, r.broker_cpu_us_per_msg)}"
        + (f"   broker RSS {r.broker_rss_kb / 1024:,.1f} MiB" if r.broker_rss_kb else "")
    )
    if r.host_busy_cores is not None:
        lines.append(
            f"  host {r.host_busy_cores:.2f} of {r.host_cores} cores busy"
            f" (softirq {r.host_softirq_cores or 0:.2f}: loopback TCP work charged to no process)"
        )
    if per_publisher and r.streams:
        lines.append(
            "  subscriber             publisher   published    received        lost   reordered"
        )
        for s in r.streams[:max_streams]:
            lines.append(
                f"  {s.subscriber:<20} {s.publisher:>9} {s.published:>11,} {s.received:>11,}"
                f" {s.lost:>11,} {s.reordered:>11,}"
            )
        if len(r.streams) > max_streams:
            lines.append(f"  ... {len(r.streams) - max_streams} more streams (see --json)")
    for e in r.errors:
        lines.append(f"  ERROR: {e}")
    return "\n".join(lines)


def _mib(kb: float | None) -> str:
    return "n/a" if kb is None else f"{kb / 1024:,.1f} MiB"


def _format_idle(r: RunResult) -> str:
    lines = [
        _header(r),
        f"  connected {r.connected:,} of {r.connections:,} in {r.connect_s or 0:.2f} s;"
        f" {r.held:,} still open after {r.window_s:.1f} s",
        f"  broker RSS before {_mib(r.rss_before_kb)}  after {_mib(r.rss_after_kb)}"
        + (f"  = {r.kb_per_conn:.2f} KiB per connection" if r.kb_per_conn is not None else "")
        + (
            f"   broker CPU to accept: {r.broker_cpu_us_per_msg:.0f} us/connection"
            if r.broker_cpu_us_per_msg is not None
            else ""
        ),
        f"  check: {r.integrity}",
    ]
    for e in r.errors:
        lines.append(f"  ERROR: {e}")
    return "\n".join(lines)


def run_line(r: RunResult) -> str:
    """One line per run (for --compare progress)."""
    m = metric_for(r.scenario)
    v = getattr(r, m.attr)
    val = "n/a" if v is None else (_f1(v) if isinstance(v, float) and v < 1000 else _n(v))
    extra = ""
    if r.scenario == "idle":
        extra = f", {r.connected:,}/{r.connections:,} connected"
    else:
        extra = f", {_n(r.delivered_per_s)} msg/s delivered, lost {r.lost_total:,}"
    ok = "" if r.integrity_ok and not r.errors else "  [" + (r.integrity or "errors") + "]"
    return f"{r.scenario} {r.label}: {m.title} {val}{extra}{ok}"


@dataclass
class Comparison:
    label_a: str
    label_b: str
    a: list[RunResult] = field(default_factory=list)
    b: list[RunResult] = field(default_factory=list)

    @property
    def scenario(self) -> str:
        runs = self.a or self.b
        return runs[0].scenario if runs else ""

    @property
    def metric(self) -> Metric:
        return metric_for(self.scenario)

    @staticmethod
    def _median(runs: list[RunResult], attr: str) -> float | None:
        vals = [getattr(r, attr) for r in runs if getattr(r, attr) is not None]
        return statistics.median(vals) if vals else None

    def medians(self, attr: str | None = None) -> tuple[float | None, float | None]:
        attr = attr or self.metric.attr
        return self._median(self.a, attr), self._median(self.b, attr)

    def ratio(self, attr: str | None = None) -> float | None:
        """median(B) / median(A) of ``attr`` (default: the scenario's primary metric)."""
        a, b = self.medians(attr)
        return b / a if a and b is not None else None

    def to_dict(self) -> dict[str, Any]:
        attrs = (
            self.metric.attr,
            "delivered_per_s",
            "published_per_s",
            "lost_total",
            "reordered_total",
            "gen_cpu_us_per_msg",
            "broker_cpu_us_per_msg",
            "broker_cpu_util",
            "host_busy_cores",
            "lat_p50_us",
            "lat_p99_us",
            "lat_max_us",
            "connected",
            "rss_after_kb",
            "kb_per_conn",
        )
        attrs = tuple(dict.fromkeys(attrs))
        return {
            "scenario": self.scenario,
            "metric": self.metric.attr,
            "higher_is_better": self.metric.higher_is_better,
            "a": {"label": self.label_a, "runs": [r.to_dict() for r in self.a]},
            "b": {"label": self.label_b, "runs": [r.to_dict() for r in self.b]},
            "median_a": {k: self.medians(k)[0] for k in attrs},
            "median_b": {k: self.medians(k)[1] for k in attrs},
            "ratio_b_over_a": self.ratio(),
            f"ratio_b_over_a_{self.metric.attr}": self.ratio(),
            "integrity_ok_a": all(r.integrity_ok and not r.errors for r in self.a),
            "integrity_ok_b": all(r.integrity_ok and not r.errors for r in self.b),
        }


def compare(
    make: Callable[[], Scenario | Idle],
    opt_a: Options,
    opt_b: Options,
    rounds: int = 3,
    pause: float = 0.5,
    on_run: Callable[[str, int, RunResult], None] | None = None,
    on_start: Callable[[str, int], None] | None = None,
) -> Comparison:
    """Run the scenario against A then B, ``rounds`` times (A B A B ...): alternating spreads
    slow drifts of the machine (thermal, other load) over both brokers alike. ``on_start`` and
    ``on_run`` are called before and after each run with "A" or "B" and the round (from 1)."""
    cmp = Comparison(
        opt_a.label or f"{opt_a.host}:{opt_a.port}", opt_b.label or f"{opt_b.host}:{opt_b.port}"
    )
    for i in range(rounds):
        for which, opt, dest in (("A", opt_a, cmp.a), ("B", opt_b, cmp.b)):
            if on_start:
                on_start(which, i + 1)
            r = run_any(make(), opt)
            dest.append(r)
            if on_run:
                on_run(which, i + 1, r)
            time.sleep(pause)  # let the broker settle (closed sessions, freed buffers)
    return cmp


def _rows(scenario: str) -> list[tuple[str, str, Callable[[Any], str]]]:
    f2: Callable[[Any], str] = lambda x: f"{x:.2f}"  # noqa: E731
    if scenario == "idle":
        return [
            ("connected", "connected", _n),
            ("held to the end", "held", _n),
            ("connect time s", "connect_s", f2),
            ("connections set up per s", "connects_per_s", _n),
            ("broker RSS before, MiB", "rss_before_kb", lambda x: f"{x / 1024:,.1f}"),
            ("broker RSS after, MiB", "rss_after_kb", lambda x: f"{x / 1024:,.1f}"),
            ("KiB per connection", "kb_per_conn", f2),
        ]
    rows = []
    if scenario == "latency":
        rows += [
            ("latency p50 us", "lat_p50_us", _f1),
            ("latency p90 us", "lat_p90_us", _f1),
            ("latency p99 us", "lat_p99_us", _f1),
            ("latency p99.9 us", "lat_p999_us", _f1),
            ("latency max us", "lat_max_us", _f1),
        ]
    rows += [
        ("delivered msg/s", "delivered_per_s", _n),
        ("published msg/s", "published_per_s", _n),
        ("lost (whole run)", "lost_total", _n),
        ("reordered (whole run)", "reordered_total", _n),
        ("generator CPU us/msg", "gen_cpu_us_per_msg", f2),
        ("broker CPU us/msg", "broker_cpu_us_per_msg", f2),
        ("broker CPU cores", "broker_cpu_util", f2),
        ("host busy cores (all processes)", "host_busy_cores", f2),
    ]
    return rows


def format_comparison(cmp: Comparison) -> str:
    la, lb = f"A: {cmp.label_a}", f"B: {cmp.label_b}"
    w = max(len(la), len(lb), 24)
    rounds = max(len(cmp.a), len(cmp.b))
    out = []
    for title, attr, fmt in _rows(cmp.scenario):
        out.append(f"{title}")
        for lab, runs in ((la, cmp.a), (lb, cmp.b)):
            vals = [getattr(r, attr) for r in runs]
            cells = [fmt(v) if v is not None else "n/a" for v in vals]
            med = Comparison._median(runs, attr)
            cells += [""] * (rounds - len(cells))
            out.append(
                f"  {lab:<{w}} "
                + " ".join(f"{c:>12}" for c in cells)
                + f"   median {fmt(med) if med is not None else 'n/a':>12}"
            )
    for lab, runs in ((la, cmp.a), (lb, cmp.b)):
        bad = [r.integrity for r in runs if not r.integrity_ok]
        errs = [e for r in runs for e in r.errors]
        out.append(
            f"check {lab}: "
            + ("ok in every run" if not bad and not errs else "; ".join(bad + errs)[:300])
        )
    m = cmp.metric
    ratio = cmp.ratio()
    better = "higher" if m.higher_is_better else "lower"
    out.append(
        f"ratio B/A of median {m.title} ({cmp.label_b} / {cmp.label_a}): "
        + (f"{ratio:.3f}" if ratio is not None else "n/a")
        + f" ({better} is better for B)"
    )
    # and the other way round, for the usual reading "A (--port) is N x B (--compare)"
    out.append(
        f"ratio A/B of median {m.title} ({cmp.label_a} / {cmp.label_b}): "
        + (f"{1 / ratio:.3f}" if ratio else "n/a")
        + f" ({better} is better for A)"
    )
    return "\n".join(out)
