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
    #: the start line ("... listening on H:P (pid N)[ with TLS][; also URL, URL]")
    line: str = ""

    @property
    def urls(self) -> dict[str, str]:
        """Each listener's URL by scheme (mqtt, mqtts, ws, wss, unix), from the start line."""
        first = ("mqtts" if " with TLS" in self.line else "mqtt") + f"://{self.host}:{self.port}"
        out = {first.split(":", 1)[0]: first}
        also = re.search(r"; also ([^;]+)", self.line)
        for url in also.group(1).split(", ") if also else []:
            out[url.split(":", 1)[0]] = url.strip()
        return out

    def connect(self, timeout: float = 5.0) -> socket.socket:
        """A raw TCP socket to the broker."""
        s = socket.create_connection((self.host, self.port), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def alive(self) -> bool:
        return self.proc.poll() is None

    def metric(self, name: str) -> float | None:
        """The value of sample ``name`` (no labels) on the broker's /metrics (started with
        ``--metrics-port``), or None when it does not serve it."""
        import urllib.request

        with urllib.request.urlopen(self.urls["http"], timeout=10) as r:
            text = r.read().decode()
        m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        return float(m.group(1)) if m else None


def start_broker(
    *extra: str, env: dict[str, str] | None = None, timeout: float = 15.0
) -> BrokerProc:
    """Start ``python -m mqttd --port 0`` and wait for its listening line."""
    if broker_kind() == "mosquitto":
        if extra or env:
            pytest.skip("mqttd-specific broker options; not available in Mosquitto validation mode")
        return _start_mosquitto(timeout)
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
            return BrokerProc(m.group(1), int(m.group(2)), proc, cmd, line.strip())
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


# --- Validation mode -------------------------------------------------------------------------
# MQTTD_TEST_BROKER=mosquitto runs the same conformance/interop tests against Mosquitto 2.0, which
# follows the spec closely: a test that passes there and encodes a spec rule is a trustworthy test.
# Tests that check a rule Mosquitto deviates from carry ``@pytest.mark.mosquitto_deviation("why")``
# and are skipped only in that mode.

MOSQUITTO = "/usr/sbin/mosquitto"


def broker_kind() -> str:
    """``"mqttd"`` (default) or ``"mosquitto"`` (env ``MQTTD_TEST_BROKER=mosquitto``)."""
    kind = os.environ.get("MQTTD_TEST_BROKER", "mqttd").strip().lower() or "mqttd"
    if kind not in ("mqttd", "mosquitto"):
        raise RuntimeError(f"MQTTD_TEST_BROKER must be 'mqttd' or 'mosquitto', not {kind!r}")
    return kind


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers_connect(host: str, port: int, any_code: bool = False) -> bool:
    """True once the port accepts a TCP connection and answers an MQTT 3.1.1 CONNECT with
    CONNACK 0 (so the broker is really serving, not just listening); with ``any_code`` a
    refusal counts too (a broker that authenticates)."""
    cid = b"conftest-probe"
    body = b"\x00\x04MQTT\x04\x02\x00\x0a" + len(cid).to_bytes(2, "big") + cid
    try:
        with socket.create_connection((host, port), timeout=1.0) as s:
            s.sendall(bytes([0x10, len(body)]) + body)
            reply = b""
            while len(reply) < 4:
                chunk = s.recv(4 - len(reply))
                if not chunk:
                    return False
                reply += chunk
            s.sendall(b"\xe0\x00")  # DISCONNECT
            return reply == b"\x20\x02\x00\x00" or (any_code and reply[:2] == b"\x20\x02")
    except OSError:
        return False


def _start_mosquitto(timeout: float, conf_lines: str = "") -> BrokerProc:
    """Mosquitto on a free port with the tests' settings; ``conf_lines`` replace
    ``allow_anonymous true`` (e.g. a password_file and allow_anonymous false)."""
    import tempfile
    import threading

    if not os.path.exists(MOSQUITTO):
        pytest.skip(f"{MOSQUITTO} is not installed (Debian: apt-get install mosquitto)")
    last_output = ""
    for _attempt in range(3):  # the free port can be taken between probe and bind: retry
        port = _free_port()
        with tempfile.TemporaryDirectory(prefix="mqttd-mosq-") as tmp:
            conf = os.path.join(tmp, "mosquitto.conf")
            with open(conf, "w") as f:
                f.write(
                    f"listener {port} 127.0.0.1\n"
                    + (conf_lines or "allow_anonymous true\n")
                    + "persistence false\n"
                    # Without a limit Mosquitto allocates whatever a fixed header announces and
                    # waits for the body; the oversize test needs a limit (mqttd has one too).
                    "max_packet_size 1048576\n"
                    "log_dest stdout\n"
                    "log_type error\n"
                    "log_type warning\n"
                )
            cmd = [MOSQUITTO, "-c", conf]
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            output: list[str] = []

            def drain(p: subprocess.Popen = proc, out: list[str] = output) -> None:
                for line in p.stdout:  # type: ignore[union-attr]
                    if len(out) < 200:
                        out.append(line)

            threading.Thread(target=drain, daemon=True).start()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and proc.poll() is None:
                if _answers_connect("127.0.0.1", port, bool(conf_lines)):
                    break
                time.sleep(0.05)
            # The config is read once at start-up; the temp dir can go now.
        if proc.poll() is None and _answers_connect("127.0.0.1", port, bool(conf_lines)):
            return BrokerProc("127.0.0.1", port, proc, cmd)
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        last_output = "".join(output)
    raise RuntimeError("mosquitto did not start:\n" + last_output)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "mosquitto_deviation(reason): the test encodes a spec rule Mosquitto 2.0 does not follow; "
        "skipped when MQTTD_TEST_BROKER=mosquitto",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = item.get_closest_marker("mosquitto_deviation")
    # MQTTD_TEST_CHECK_DEVIATIONS=1 runs them anyway, to confirm Mosquitto really deviates.
    check = os.environ.get("MQTTD_TEST_CHECK_DEVIATIONS") == "1"
    if marker is not None and broker_kind() == "mosquitto" and not check:
        reason = marker.args[0] if marker.args else marker.kwargs.get("reason", "")
        pytest.skip(f"Mosquitto deviates from the spec here: {reason}")
