"""Human-readable and JSON output of runs and A/B comparisons."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mqttd.bench.runner import Options, RunResult, Scenario, run

MQTT_NAMES = {3: "MQTT 3.1", 4: "MQTT 3.1.1", 5: "MQTT 5.0"}


def _n(x: float) -> str:
    return f"{x:,.0f}"


def _cpu(util: float | None, per_msg: float | None) -> str:
    if util is None:
        return "n/a"
    s = f"{util:.2f} cores"
    if per_msg is not None:
        s += f" = {per_msg:.2f} us/msg"
    return s


def format_run(r: RunResult, per_publisher: bool = True) -> str:
    lines = [
        f"{r.scenario}  {r.label}  {MQTT_NAMES.get(r.protocol_level, r.protocol_level)}  "
        f"QoS {r.qos}  {r.publishers} pub -> {r.subscribers} sub  {r.payload} B payload  "
        f"window {r.window_s:.2f} s after {r.warmup:g} s warm-up",
        f"  delivered {_n(r.delivered_per_s)} msg/s   published {_n(r.published_per_s)} msg/s"
        f"   ({_n(r.delivered)} delivered / {_n(r.published)} published in the window)",
    ]
    pct = 100.0 * r.lost_total / r.published_total if r.published_total else 0.0
    lines.append(
        f"  lost {_n(r.lost_total)} of {_n(r.published_total)} published ({pct:.3f} %)"
        f"   reordered {_n(r.reordered_total)}"
        + (f"   foreign {_n(r.foreign)}" if r.foreign else "")
    )
    lines.append(
        f"  CPU generator {_cpu(r.gen_cpu_util, r.gen_cpu_us_per_msg)} ({r.procs} proc,"
        f" {r.generator_impl})   broker {_cpu(r.broker_cpu_util, r.broker_cpu_us_per_msg)}"
    )
    if r.host_busy_cores is not None:
        lines.append(
            f"  host {r.host_busy_cores:.2f} of {r.host_cores} cores busy"
            f" (softirq {r.host_softirq_cores or 0:.2f}: loopback TCP work charged to no process)"
        )
    if per_publisher and r.streams:
        lines.append("  publisher   published    received        lost   reordered")
        for s in r.streams:
            lines.append(
                f"  {s.publisher:>9} {s.published:>11,} {s.received:>11,} {s.lost:>11,}"
                f" {s.reordered:>11,}"
            )
    for e in r.errors:
        lines.append(f"  ERROR: {e}")
    return "\n".join(lines)


@dataclass
class Comparison:
    label_a: str
    label_b: str
    a: list[RunResult] = field(default_factory=list)
    b: list[RunResult] = field(default_factory=list)

    @staticmethod
    def _median(runs: list[RunResult], attr: str) -> float | None:
        vals = [getattr(r, attr) for r in runs if getattr(r, attr) is not None]
        return statistics.median(vals) if vals else None

    def medians(self, attr: str) -> tuple[float | None, float | None]:
        return self._median(self.a, attr), self._median(self.b, attr)

    def ratio(self, attr: str = "delivered_per_s") -> float | None:
        a, b = self.medians(attr)
        return b / a if a and b is not None else None

    def to_dict(self) -> dict[str, Any]:
        attrs = (
            "delivered_per_s",
            "published_per_s",
            "lost_total",
            "gen_cpu_us_per_msg",
            "broker_cpu_us_per_msg",
            "broker_cpu_util",
            "host_busy_cores",
        )
        return {
            "a": {"label": self.label_a, "runs": [r.to_dict() for r in self.a]},
            "b": {"label": self.label_b, "runs": [r.to_dict() for r in self.b]},
            "median_a": {k: self.medians(k)[0] for k in attrs},
            "median_b": {k: self.medians(k)[1] for k in attrs},
            "ratio_b_over_a_delivered_per_s": self.ratio(),
        }


def compare(
    make: Callable[[], Scenario],
    opt_a: Options,
    opt_b: Options,
    rounds: int = 3,
    pause: float = 0.5,
    on_run: Callable[[str, int, RunResult], None] | None = None,
) -> Comparison:
    """Run the scenario against A then B, ``rounds`` times (A B A B ...): alternating spreads
    slow drifts of the machine (thermal, other load) over both brokers alike."""
    cmp = Comparison(
        opt_a.label or f"{opt_a.host}:{opt_a.port}", opt_b.label or f"{opt_b.host}:{opt_b.port}"
    )
    for i in range(rounds):
        for which, opt, dest in (("A", opt_a, cmp.a), ("B", opt_b, cmp.b)):
            r = run(make(), opt)
            dest.append(r)
            if on_run:
                on_run(which, i + 1, r)
            time.sleep(pause)  # let the broker settle (closed sessions, freed buffers)
    return cmp


def format_comparison(cmp: Comparison) -> str:
    rows = [
        ("delivered msg/s", "delivered_per_s", _n),
        ("published msg/s", "published_per_s", _n),
        ("lost (whole run)", "lost_total", _n),
        ("generator CPU us/msg", "gen_cpu_us_per_msg", lambda x: f"{x:.2f}"),
        ("broker CPU us/msg", "broker_cpu_us_per_msg", lambda x: f"{x:.2f}"),
        ("broker CPU cores", "broker_cpu_util", lambda x: f"{x:.2f}"),
        ("host busy cores (all processes)", "host_busy_cores", lambda x: f"{x:.2f}"),
    ]
    la, lb = f"A: {cmp.label_a}", f"B: {cmp.label_b}"
    w = max(len(la), len(lb), 24)
    rounds = max(len(cmp.a), len(cmp.b))
    out = []
    for title, attr, fmt in rows:
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
    ratio = cmp.ratio()
    out.append(
        f"ratio B/A of median delivered msg/s ({cmp.label_b} / {cmp.label_a}): "
        + (f"{ratio:.3f}" if ratio is not None else "n/a")
    )
    return "\n".join(out)
