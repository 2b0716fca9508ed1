"""What an operator reads (issue 15, item 4): one INFO line per connection and per
disconnection with its reason, refusals with address and user name (never the password),
--log-format json, and --log-file reopened on SIGHUP after logrotate moved it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from mqtt_raw import Client

from tests.hostile.support import hostile_broker


def wait_line(lines: object, needle: str, timeout: float = 10.0) -> str:
    """The first line holding ``needle`` (``lines``: a deque the broker's output goes to)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in list(lines):  # type: ignore[call-overload]
            if needle in line:
                return str(line)
        time.sleep(0.05)
    raise AssertionError(f"no line with {needle!r} in:\n" + "".join(list(lines)[-20:]))  # type: ignore[call-overload]


def test_a_line_per_connection_and_per_disconnection(tmp_path: Path) -> None:
    with hostile_broker() as b:
        with Client(b.addr, level=5) as c:
            c.connect("ops-1", username="ann", password=b"secret-pw", keepalive=30)
        line = wait_line(b.tail, "connected client 'ops-1'")
        assert "user 'ann'" in line and "from 127.0.0.1:" in line
        assert "MQTT 5.0, keepalive 30, clean start yes" in line
        line = wait_line(b.tail, "disconnected client 'ops-1'")
        assert line.rstrip().endswith("connection lost")  # closed without DISCONNECT
        with Client(b.addr, level=4) as c:
            c.connect("ops-2")
            c.send(b"\xe0\x00")
            c.wait_closed()
        assert wait_line(b.tail, "disconnected client 'ops-2'").rstrip().endswith(": DISCONNECT")
        with Client(b.addr, level=4) as c:
            c.connect("ops-3")
            c.send(b"\x30\x05\x00\x01+xx")  # a PUBLISH to "+": protocol violation
            c.wait_closed()
        assert "invalid topic name" in wait_line(b.tail, "disconnected client 'ops-3'")
        assert not any("secret-pw" in line for line in b.tail)  # never the password


def test_refusals_name_address_and_user(tmp_path: Path) -> None:
    from mqttd.cli import main as cli_main

    pw = tmp_path / "pw"
    cli_main(["passwd", "-c", "-b", str(pw), "ann", "right"])
    with hostile_broker("--password-file", str(pw)) as b:
        with Client(b.addr, level=4) as c:
            c.connect("intruder", username="ann", password=b"wrong-secret", expect_rc=4)
        line = wait_line(b.tail, "refusing client 'intruder'")
        assert "user 'ann' from 127.0.0.1" in line and "bad user name or password" in line
        assert " INFO: " in line and "wrong-secret" not in "".join(b.tail)


def test_json_log_lines() -> None:
    with hostile_broker("--log-format", "json") as b:
        with Client(b.addr, level=4) as c:
            c.connect("json-1")
        raw = wait_line(b.tail, "connected client 'json-1'")
        record = json.loads(raw)
        assert record["level"] == "INFO" and record["logger"] == "mqttd"
        assert record["pid"] == b.proc.pid and record["message"].startswith("connected client")


def test_log_file_is_reopened_on_sighup(tmp_path: Path) -> None:
    """logrotate moves the file and sends SIGHUP: new lines go to a new file at the old path,
    and the broker goes on."""
    log = tmp_path / "mqttd.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mqttd", "--port", "0", "--log-file", str(log)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        line = wait_line(_FileLines(log), "listening on")
        port = int(line.split("listening on ")[1].split(" ")[0].rsplit(":", 1)[1])
        assert f"(pid {proc.pid})" in line
        rotated = tmp_path / "mqttd.log.1"
        log.rename(rotated)
        proc.send_signal(signal.SIGHUP)
        wait_line(_FileLines(log), "SIGHUP: reloading")
        with Client(("127.0.0.1", port), level=4) as c:
            c.connect("after-rotate")
        wait_line(_FileLines(log), "connected client 'after-rotate'")
        assert "after-rotate" not in rotated.read_text()
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)


class _FileLines:
    """A file's lines, read again at each iteration (for wait_line)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __iter__(self):  # type: ignore[no-untyped-def]
        try:
            return iter(self.path.read_text().splitlines(True))
        except FileNotFoundError:
            return iter(())


def test_running_out_of_file_descriptors_is_logged_and_counted() -> None:
    """At its descriptor limit a node cannot accept (uvloop is silent about it): the log says so
    once, and mqttd_fd_exhausted_total counts it."""
    import re as _re
    import resource
    import socket as _socket
    import subprocess as _subprocess
    import sys as _sys
    import threading as _threading
    import time as _time
    import urllib.request

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    proc = _subprocess.Popen(
        [_sys.executable, "-m", "mqttd", "--port", "0", "--metrics-port", "0"],
        stdout=_subprocess.PIPE,
        stderr=_subprocess.STDOUT,
        text=True,
        preexec_fn=low_limit,
    )
    socks: list[_socket.socket] = []
    try:
        assert proc.stdout is not None
        m = None
        while m is None:
            line = proc.stdout.readline()
            assert line, "the broker did not start"
            m = _re.search(r"listening on (\S+):(\d+) \(pid (\d+)\).*?(http://\S+/metrics)", line)
        assert int(m.group(3)) == proc.pid, line
        lines: list[str] = []
        seen = _threading.Event()

        def read() -> None:
            for out in proc.stdout:  # type: ignore[union-attr]
                lines.append(out)
                if "out of file descriptors" in out:
                    seen.set()

        _threading.Thread(target=read, daemon=True).start()
        for _ in range(80):  # more than the 64 the node may open: the kernel queues the rest
            socks.append(_socket.create_connection((m.group(1), int(m.group(2))), timeout=5))
        assert seen.wait(10), "no log line about file descriptors:\n" + "".join(lines)
        warned = [x for x in lines if "out of file descriptors" in x]
        assert "limit 64" in warned[0] and "raise the limit" in warned[0]
        for s in socks[:40]:
            s.close()  # room again for the scrape
        del socks[:40]
        deadline = _time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(m.group(4), timeout=3) as r:
                    text = r.read().decode()
                break
            except OSError:
                assert _time.monotonic() < deadline, "metrics unreachable after room was made"
                _time.sleep(0.2)
        value = _re.search(r"^mqttd_fd_exhausted_total (\S+)$", text, _re.M)
        assert value and float(value.group(1)) >= 1
        assert len(warned) == 1  # at most once a minute
    finally:
        for s in socks:
            s.close()
        proc.terminate()
        proc.wait(10)
