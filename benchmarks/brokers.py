"""Broker processes for the benchmark scripts (suite.py, flow.py, soak.py, websocket.py): a free
port, a fresh mqttd (``python -m mqttd --port 0 ...``, ready at its listening line), a fresh
Mosquitto with the caller's configuration text (ready once the caller's probe gets through),
Aedes (Node.js), and stopping them.

Each script keeps its own Mosquitto configuration: suite.py runs it with unlimited queues,
flow.py and soak.py with Mosquitto's defaults.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, MutableSequence
from pathlib import Path
from typing import IO

LISTEN_RE = re.compile(r"listening on (\S+):(\d+) \(pid (\d+)\)")
MOSQUITTO_CANDIDATES = ("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_mosquitto() -> str | None:
    for c in MOSQUITTO_CANDIDATES:
        path = shutil.which(c) or (c if os.path.exists(c) else None)
        if path:
            return path
    return None


def start_mqttd(
    args: list[str] | tuple[str, ...],
    *,
    timeout: float,
    error: type[Exception] = RuntimeError,
    cwd: Path | str | None = None,
    seen: MutableSequence[str] | None = None,
) -> tuple[subprocess.Popen, int]:
    """``python -m mqttd --port 0 ARGS``; waits for its listening line (naming its own pid) and
    returns the process and its port. Its output (stdout and stderr, as text) is left open for
    the caller to drain (``drain``); the lines read until then are appended to ``seen``. Killed,
    and ``error`` raised with those lines, when it does not start within ``timeout`` s."""
    cmd = [sys.executable, "-m", "mqttd", "--port", "0", *args]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd
    )
    assert proc.stdout is not None
    out: MutableSequence[str] = [] if seen is None else seen
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        out.append(line)
        m = LISTEN_RE.search(line)
        if m and int(m.group(3)) == proc.pid:
            return proc, int(m.group(2))
    proc.kill()
    proc.wait(5)
    raise error(f"mqttd did not start ({' '.join(cmd)}):\n" + "".join(out))


def drain(stream: IO[str], on_line: Callable[[str], None] | None = None) -> None:
    """Read ``stream`` to its end in a daemon thread (so the broker never blocks on a full
    pipe), handing each line to ``on_line`` when given."""

    def run() -> None:
        for line in stream:
            if on_line is not None:
                on_line(line)

    threading.Thread(target=run, daemon=True).start()


def tcp_probe(host: str, port: int) -> None:
    """Ready once a TCP connection is accepted (raises OSError until then)."""
    socket.create_connection((host, port), timeout=0.5).close()


def start_mosquitto(
    binary: str,
    tmp: str,
    conf: str,
    *,
    probe: Callable[[str, int], None] = tcp_probe,
    timeout: float = 10.0,
    error: type[Exception] = RuntimeError,
) -> tuple[subprocess.Popen, int, Path]:
    """Mosquitto with the configuration ``conf`` (a template with ``{port}`` and ``{log}``) on a
    free port of 127.0.0.1, its files in ``tmp``; ready once ``probe(host, port)`` returns
    (it raises OSError or ``error`` until then). Returns the process, its port and its log file.
    Raises ``error`` when it exits or does not get ready within ``timeout`` s."""
    port = free_port()
    conf_path = Path(tmp) / f"mosquitto-{port}.conf"
    log = Path(tmp) / f"mosquitto-{port}.log"
    conf_path.write_text(conf.format(port=port, log=log))
    proc = subprocess.Popen(
        [binary, "-c", str(conf_path)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").splitlines(True)[-20:] if log.exists() else []
            raise error("mosquitto exited at start:\n" + "".join(tail))
        try:
            probe("127.0.0.1", port)
            return proc, port, log
        except (OSError, error):
            time.sleep(0.05)
    stop(proc, signal.SIGTERM)
    raise error("mosquitto did not start listening")


def stop(proc: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 10.0) -> bool:
    """Send ``sig`` and wait up to ``timeout`` s for it to end, then kill it; True when it had
    to be killed."""
    if proc.poll() is not None:
        return False
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        return True
    return False


#: where Aedes (npm ``aedes`` + ``ws``) is installed on first use
AEDES_DIR = Path.home() / ".cache" / "mqttd-bench" / "aedes"


def aedes_missing() -> str | None:
    """Why Aedes cannot run here (no Node.js or npm), or None."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "no node/npm on PATH"
    return None


def start_aedes() -> tuple[subprocess.Popen[str], int, int]:
    """Aedes, the common Node.js broker, on a free TCP port and a free WebSocket port
    (benchmarks/aedes_server.mjs); installed into AEDES_DIR from the npm registry on first use.
    Returns (process, TCP port, WebSocket port); check :func:`aedes_missing` first."""
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node is not None and npm is not None, "aedes_missing() first"
    if not (AEDES_DIR / "node_modules" / "aedes").exists():
        AEDES_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [npm, "install", "--silent", "--no-audit", "--no-fund", "aedes", "ws"],
            cwd=AEDES_DIR, check=True, timeout=600,
        )  # fmt: skip
    shutil.copy(Path(__file__).with_name("aedes_server.mjs"), AEDES_DIR / "aedes_server.mjs")
    proc = subprocess.Popen(
        [node, "aedes_server.mjs", "0", "0"], cwd=AEDES_DIR, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    ports = json.loads(proc.stdout.readline())
    return proc, int(ports["tcp"]), int(ports["ws"])
