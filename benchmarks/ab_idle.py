"""A/B of the idle row between two mqttd trees (before/after a change), Mosquitto beside them.

    python benchmarks/ab_idle.py OTHER_TREE [--rounds 3] [--connections 10000]

Each round starts a fresh broker of each kind (A = OTHER_TREE's mqttd, B = this tree's, M =
Mosquitto when installed), has ``mqttd-bench idle`` open the connections and prints connections
set up per second, RSS at start, RSS per connection and the broker's CPU time per connection
(over the connects and the hold); then the medians.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import brokers  # noqa: E402
from suite import start_mosquitto  # noqa: E402

from mqttd.bench.idle import Idle  # noqa: E402
from mqttd.bench.report import run_any  # noqa: E402
from mqttd.bench.runner import Options, raise_nofile  # noqa: E402


def one(kind: str, other: Path, n: int, tmp: str, mosquitto: str | None):
    if kind == "M":
        assert mosquitto
        proc, port = start_mosquitto(mosquitto, tmp)
    else:
        proc, port = brokers.start_mqttd([], timeout=20, cwd=other if kind == "A" else ROOT)
        assert proc.stdout is not None
        brokers.drain(proc.stdout)
    try:
        opt = Options(host="127.0.0.1", port=port, warmup=1.0, duration=1.0, broker_pid=proc.pid)
        return run_any(Idle(n), opt)
    finally:
        brokers.stop(proc, signal.SIGTERM)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("other", type=Path)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=10000)
    args = ap.parse_args()
    raise_nofile()
    mosquitto = brokers.find_mosquitto()
    kinds = ["A", "B"] + (["M"] if mosquitto else [])
    got: dict[str, list] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds):
            for k in kinds:
                r = one(k, args.other, args.connections, tmp, mosquitto)
                got[k].append(r)
                print(
                    f"round {rnd + 1} {k}: {r.connects_per_s or 0:,.0f} connects/s, start "
                    f"{(r.rss_before_kb or 0) / 1024:.1f} MiB, {r.kb_per_conn or 0:.2f} KiB/conn, "
                    f"broker CPU {r.broker_cpu_us_per_msg or 0:.0f} µs/conn"
                    f"{'' if r.integrity_ok else '  ' + r.integrity}",
                    flush=True,
                )
    names = {"A": f"A {args.other}", "B": f"B {ROOT}", "M": "Mosquitto"}
    for k in kinds:
        rs = got[k]

        def med(attr: str, rs=rs) -> float:
            return statistics.median(getattr(r, attr) or 0 for r in rs)

        print(
            f"{names[k]}: median {med('connects_per_s'):,.0f} connects/s, "
            f"start {med('rss_before_kb') / 1024:.1f} MiB, {med('kb_per_conn'):.2f} KiB/conn, "
            f"broker CPU {med('broker_cpu_us_per_msg'):.0f} µs/conn"
        )


if __name__ == "__main__":
    main()
