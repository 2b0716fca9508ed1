"""MQTT over WebSocket: what the transport costs mqttd, and mqttd beside Aedes (issue 14).

    python benchmarks/websocket.py [--rounds 3] [--duration 3] [--json out.json]

Starts one mqttd serving TCP and WebSocket (``--ws-port``) and, when Node.js and npm are there,
Aedes (npm ``aedes`` + ``ws``, as its docs/Examples.md serves WebSocket; installed into
``~/.cache/mqttd-bench/aedes`` on first use) on TCP and WebSocket; Debian's Mosquitto 2.0.11 is
built without WebSocket. Then, for fan-in (8 -> 1) and fan-out (1 -> 50) at QoS 0 with 64-byte
payloads, rounds of mqttd over TCP, mqttd over WebSocket, Aedes over WebSocket and Aedes over
TCP, interleaved (A B C D, A B C D, ...) so that the machine's drift weighs on all alike, each
measured by ``mqttd-bench --transport tcp|ws`` (the WebSocket client: mqttd/bench/ws.py), and
prints the medians and the ratios: mqttd WS / mqttd TCP (the cost of the transport) and mqttd
WS / Aedes WS.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from brokers import aedes_missing, drain, free_port, start_aedes, start_mqttd, stop  # noqa: E402

SCENARIOS = ("fanin", "fanout")


def bench(scenario: str, port: int, transport: str, duration: float) -> float:
    """One mqttd-bench run: delivered msg/s (0 when the run failed its checks)."""
    out = subprocess.run(
        [sys.executable, "-m", "mqttd.bench", scenario, "--port", str(port), "--transport",
         transport, "--duration", str(duration), "--json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if out.returncode != 0 and not out.stdout.strip():
        print(f"    {scenario} {transport}:{port} failed: {out.stderr.strip()[-300:]}")
        return 0.0
    result: dict[str, Any] = json.loads(out.stdout)
    if not result.get("integrity_ok"):
        print(f"    {scenario} {transport}:{port}: {result.get('integrity')}")
    return float(result["delivered_per_s"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()

    ws_port = free_port()
    mqttd, tcp_port = start_mqttd(["--sys-interval", "0", "--ws-port", str(ws_port)], timeout=30)
    assert mqttd.stdout is not None
    threading.Thread(target=drain, args=(mqttd.stdout,), daemon=True).start()
    why = aedes_missing()
    if why:
        print(f"Aedes: skipped ({why})")
    aedes = None if why else start_aedes()
    targets: list[tuple[str, int, str]] = [
        ("mqttd TCP", tcp_port, "tcp"),
        ("mqttd WS", ws_port, "ws"),
    ]
    if aedes is not None:
        targets += [("Aedes WS", aedes[2], "ws"), ("Aedes TCP", aedes[1], "tcp")]
    figures: dict[str, dict[str, list[float]]] = {s: {t[0]: [] for t in targets} for s in SCENARIOS}
    started = time.monotonic()
    try:
        for scenario in SCENARIOS:
            print(f"== {scenario}, delivered msg/s")
            for r in range(args.rounds):
                for name, port, transport in targets:
                    rate = bench(scenario, port, transport, args.duration)
                    figures[scenario][name].append(rate)
                    print(f"    round {r + 1} {name}: {rate:,.0f}")
    finally:
        stop(mqttd)
        if aedes is not None:
            aedes[0].terminate()
            aedes[0].wait(10)
    print(
        f"\nmedians of {args.rounds} interleaved rounds, {args.duration:g} s windows, QoS 0, 64 B"
    )
    print(
        f"| scenario | {' | '.join(t[0] for t in targets)} | mqttd WS / TCP | mqttd WS / Aedes WS |"
    )
    print("| --- |" + " ---: |" * (len(targets) + 2))
    summary: dict[str, Any] = {}
    for scenario in SCENARIOS:
        med = {name: statistics.median(v) for name, v in figures[scenario].items()}
        cost = med["mqttd WS"] / med["mqttd TCP"] if med["mqttd TCP"] else 0.0
        vs = med["mqttd WS"] / med["Aedes WS"] if med.get("Aedes WS") else float("nan")
        cells = " | ".join(f"{med[t[0]]:,.0f}" for t in targets)
        print(f"| {scenario} | {cells} | {cost:.2f} x | {vs:.1f} x |")
        summary[scenario] = {"runs": figures[scenario], "medians": med, "ws_over_tcp": cost,
                             "ws_over_aedes_ws": vs}  # fmt: skip
    print(f"websocket.py took {time.monotonic() - started:.0f} s on {os.cpu_count()} CPUs")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
