"""Run a Python program that serves with MQTTApp.run(), as its user would, on a free port.

The program is not edited: ``MQTTD_PORT=0`` and ``MQTTD_HOST=127.0.0.1`` in its environment move
it to a free port of the loopback interface (the MQTTD_* variables have the last word over the
program's own arguments), and its start-up line ``listening on HOST:PORT (pid N)`` says where;
the pid in that line must be the one of the process started here.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

LISTEN_RE = re.compile(r"listening on (\S+):(\d+) \(pid (\d+)\)")
ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


class Program:
    def __init__(self, path: Path | str, env: dict[str, str] | None = None, timeout: float = 20):
        full = dict(os.environ)
        full.update({"MQTTD_PORT": "0", "MQTTD_HOST": "127.0.0.1", "PYTHONUNBUFFERED": "1"})
        full.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=full,
            cwd=str(ROOT),
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.host = "127.0.0.1"
        self.port = 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            m = LISTEN_RE.search(line)
            if m:
                if int(m.group(3)) != self.proc.pid:
                    self.stop()
                    raise RuntimeError(f"line names pid {m.group(3)}, started {self.proc.pid}")
                self.port = int(m.group(2))
                return
        self.stop()
        raise RuntimeError(f"{path} did not start:\n" + "".join(self.output))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            self.lines.put(line)

    def expect(self, text: str, timeout: float = 5.0) -> str:
        """The next output line containing ``text`` (earlier lines are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no line with {text!r}; output:\n" + "".join(self.output))
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if text in line:
                return line

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


@pytest.fixture
def programs() -> Iterator[Callable[..., Program]]:
    """``programs(path, **env)`` runs a program (a bare name is one of examples/); all are
    stopped, and checked gone, after the test."""
    started: list[Program] = []

    def start(path: Path | str, **env: str) -> Program:
        p = Program(path if isinstance(path, Path) else EXAMPLES / path, env)
        started.append(p)
        return p

    try:
        yield start
    finally:
        for p in started:
            p.stop()
            assert p.proc.poll() is not None
