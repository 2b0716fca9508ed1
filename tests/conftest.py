"""Shared fixtures: every test starts its own broker process on a free port.

The broker is started with ``--port 0``; it binds a free port and prints one line
``mqttd <version> (<impl>) listening on HOST:PORT (pid N)``. The fixture reads that line and checks
that the pid is the one of the process it started, so a test never talks to a stranger.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

LISTEN_RE = re.compile(r"listening on (\S+):(\d+) \(pid (\d+)\)")


@dataclass
class BrokerProc:
    host: str
    port: int
    proc: subprocess.Popen
    args: list[str] = field(default_factory=list)

    def connect(self, timeout: float = 5.0) -> socket.socket:
        """A raw TCP socket to the broker."""
        s = socket.create_connection((self.host, self.port), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def alive(self) -> bool:
        return self.proc.poll() is None


def start_broker(*extra: str, env: dict[str, str] | None = None, timeout: float = 15.0) -> BrokerProc:
    """Start ``python -m mqttd --port 0`` and wait for its listening line."""
    cmd = [sys.executable, "-m", "mqttd", "--port", "0", *extra]
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full_env
    )
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = LISTEN_RE.search(line)
        if m:
            if int(m.group(3)) != proc.pid:
                proc.kill()
                raise RuntimeError(f"broker line names pid {m.group(3)}, started {proc.pid}")
            # Keep draining output so the broker never blocks on a full pipe.
            import threading

            def drain() -> None:
                for _ in proc.stdout:  # type: ignore[union-attr]
                    pass

            threading.Thread(target=drain, daemon=True).start()
            return BrokerProc(m.group(1), int(m.group(2)), proc, cmd)
    proc.kill()
    raise RuntimeError("broker did not start:\n" + "".join(lines))


def stop_broker(b: BrokerProc) -> None:
    if b.proc.poll() is None:
        b.proc.send_signal(signal.SIGINT)
        try:
            b.proc.wait(5)
        except subprocess.TimeoutExpired:
            b.proc.kill()
            b.proc.wait(5)


@pytest.fixture
def broker() -> Iterator[BrokerProc]:
    """A fresh mqttd on a free port, stopped after the test."""
    b = start_broker()
    try:
        yield b
    finally:
        stop_broker(b)


@pytest.fixture(scope="module")
def shared_broker() -> Iterator[BrokerProc]:
    """One mqttd for a whole test module (tests must use distinct topics/client ids)."""
    b = start_broker()
    try:
        yield b
    finally:
        stop_broker(b)


def require_program(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian: apt-get install mosquitto-clients / curl)")
    return path
