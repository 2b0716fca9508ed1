"""End-to-end fan-in benchmark: mqttd vs Mosquitto on this machine (a script, not a test).

Starts ``python -m mqttd --port 0`` (reads its ``listening on HOST:PORT (pid N)`` line) and
``mosquitto -c <tmp conf>`` on a free loopback port, runs the fan-in scenario against both,
alternating Mosquitto, mqttd, Mosquitto, mqttd, ... for ``--rounds`` rounds, prints each run,
a table of medians and the ratio mqttd / Mosquitto of delivered messages/s, and stops both.

    python benchmarks/e2e_fanin.py [--rounds 3] [--duration 5] [--publishers 8] [--json]

Run it on an otherwise idle machine; with 2 cores the broker gets one and the generator (about
0.1 core at QoS 0) the other.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mqttd.bench.report import compare, format_comparison, format_run  # noqa: E402
from mqttd.bench.runner import Options, RunResult  # noqa: E402
from mqttd.bench.scenarios import fanin  # noqa: E402

LISTEN_RE = re.compile(r"listening on (\S+):(\d+) \(pid (\d+)\)")


def _drain(stream) -> None:
    for _ in stream:
        pass


def start_mqttd(timeout: float = 15.0) -> tuple[subprocess.Popen, str, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mqttd", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        m = LISTEN_RE.search(line)
        if m:
            if int(m.group(3)) != proc.pid:
                proc.kill()
                raise RuntimeError(f"mqttd line names pid {m.group(3)}, started {proc.pid}")
            # Keep reading its output so it never blocks on a full pipe.
            threading.Thread(target=_drain, args=(proc.stdout,), daemon=True).start()
            return proc, m.group(1), int(m.group(2))
    proc.kill()
    raise RuntimeError("mqttd did not start:\n" + "".join(seen))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mosquitto(binary: str, tmp: str, timeout: float = 10.0) -> tuple[subprocess.Popen, int]:
    port = free_port()
    conf = Path(tmp) / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"
        "persistence false\n"
    )
    log = open(Path(tmp) / "mosquitto.log", "w")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited: {(Path(tmp) / 'mosquitto.log').read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("mosquitto did not start listening")


def stop(proc: subprocess.Popen, sig: int = signal.SIGINT) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--publishers", type=int, default=8)
    ap.add_argument("--payload", type=int, default=64)
    ap.add_argument("--qos", type=int, choices=(0, 1, 2), default=0)
    ap.add_argument("--rate", type=float, default=0.0, help="total msg/s, 0 = max")
    ap.add_argument("--mqtt-version", type=int, choices=(4, 5), default=4)
    ap.add_argument("--procs", type=int, default=1)
    ap.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if not os.path.exists(args.mosquitto):
        print(f"mosquitto not found at {args.mosquitto}", file=sys.stderr)
        return 2

    with ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="e2e_fanin_"))
        mosq, mport = start_mosquitto(args.mosquitto, tmp)
        stack.callback(stop, mosq, signal.SIGTERM)
        mqttd, host, port = start_mqttd()
        stack.callback(stop, mqttd)

        def opts(h: str, p: int, pid: int, label: str) -> Options:
            return Options(
                host=h,
                port=p,
                protocol_level=args.mqtt_version,
                warmup=args.warmup,
                duration=args.duration,
                procs=args.procs,
                broker_pid=pid,
                label=label,
            )

        opt_a = opts("127.0.0.1", mport, mosq.pid, "mosquitto")
        opt_b = opts(host, port, mqttd.pid, "mqttd")

        def make():
            return fanin(args.publishers, args.payload, args.qos, args.rate)

        def progress(which: str, rnd: int, r: RunResult) -> None:
            if not args.json:
                print(f"-- round {rnd} {which}", flush=True)
                print(format_run(r, per_publisher=False), flush=True)

        cmp = compare(make, opt_a, opt_b, args.rounds, on_run=progress)
        for name, proc in (("mosquitto", mosq), ("mqttd", mqttd)):
            if proc.poll() is not None:
                print(f"warning: {name} exited during the benchmark", file=sys.stderr)
    if args.json:
        print(json.dumps(cmp.to_dict(), indent=2))
    else:
        print()
        print(
            f"fan-in: {args.publishers} publishers -> 1 subscriber, QoS {args.qos}, "
            f"{args.payload} B, MQTT {'5.0' if args.mqtt_version == 5 else '3.1.1'}, "
            f"{args.duration:g} s window after {args.warmup:g} s warm-up, "
            f"{args.rounds} rounds alternating A B"
        )
        print(format_comparison(cmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
