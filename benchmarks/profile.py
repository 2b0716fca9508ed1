"""Where a broker's time goes per message: py-spy (with native frames, so the compiled modules
show) on mqttd while mqttd-bench loads it, then self time by function.

    python benchmarks/profile.py single            # fan-in on one node
    python benchmarks/profile.py redis             # fan-in from node A to node B through Redis
    python benchmarks/profile.py single --seconds 8 --top 20

Needs ``py-spy`` (``pip install py-spy``; it reads another process's memory, so run as root or
with ptrace allowed) and, for ``redis``, ``redis-server``. Sampling with native frames slows the
broker (figures under profile are about half the unprofiled ones): read the shares, not the rates.
CPython internals (reference counts, dict lookups) are charged to the nearest mqttd frame.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LISTEN = re.compile(r"listening on (\S+):(\d+) \(pid (\d+)\)")
FRAME = re.compile(r"(.+?) \((.+?)(?::\d+)?\)$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mqttd(*args: str) -> tuple[subprocess.Popen, int, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mqttd", "--port", "0", "--sys-interval", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        m = LISTEN.search(line)
        if m:
            return proc, int(m.group(2)), int(m.group(3))
    raise RuntimeError("mqttd did not start")


def self_time(raw: Path, top: int) -> list[str]:
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        total += int(n)
        frames = stack.split(";")
        m = FRAME.match(frames[-1])
        name, where = (m.group(1), m.group(2)) if m else (frames[-1], "")
        if name.startswith(("Py", "_Py")) or where.endswith(".h") or "libpython" in where:
            for f in reversed(frames[:-1]):
                m2 = FRAME.match(f)
                if m2 and m2.group(2).endswith((".py", ".pyx")):
                    name, where = m2.group(1), m2.group(2)
                    break
            else:
                name, where = "CPython runtime", ""
        counts[f"{name} ({where.rsplit('/', 1)[-1]})"] += int(n)
    return [f"{100 * v / total:5.1f} %  {k}" for k, v in counts.most_common(top)] + [
        f"({total} samples)"
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("setup", choices=["single", "redis"])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--top", type=int, default=14)
    args = ap.parse_args()
    if shutil.which("py-spy") is None:
        print("py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return 2
    procs: list[subprocess.Popen] = []
    tmp = Path(tempfile.mkdtemp(prefix="mqttd-profile-"))
    try:
        if args.setup == "single":
            proc, port, pid = start_mqttd()
            procs.append(proc)
            targets = {"mqttd": pid}
            bench = ["--port", str(port)]
        else:
            rport = free_port()
            procs.append(
                subprocess.Popen(
                    ["redis-server", "--port", str(rport), "--save", "", "--appendonly", "no"],
                    stdout=subprocess.DEVNULL,
                )
            )
            time.sleep(0.5)
            url = f"redis://127.0.0.1:{rport}"
            a, pa, ia = start_mqttd("--redis-url", url)
            b, pb, ib = start_mqttd("--redis-url", url)
            procs += [a, b]
            targets = {"publishing node A": ia, "subscribing node B": ib}
            bench = ["--port", str(pa), "--sub-port", str(pb)]
        load = subprocess.Popen(
            [sys.executable, "-m", "mqttd.bench", "fanin", *bench, "--quiet"]
            + ["--duration", str(args.seconds + 4), "--warmup", "1"],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(3)
        spies = {
            name: subprocess.Popen(
                ["py-spy", "record", "--native", "--rate", "250", "--format", "raw"]
                + ["-o", str(tmp / f"{pid}.raw"), "-d", str(int(args.seconds)), "--pid", str(pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for name, pid in targets.items()
        }
        for spy in spies.values():
            spy.wait()
        out, _ = load.communicate()
        print("\n".join(line for line in out.splitlines() if "delivered" in line)[:400])
        for name, pid in targets.items():
            print(f"\n{name}: self time by function")
            print("\n".join(self_time(tmp / f"{pid}.raw", args.top)))
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
