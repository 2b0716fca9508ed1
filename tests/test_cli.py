"""The ``mqttd`` command: version line, clear one-line errors, clean stop on Ctrl-C."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from tests.conftest import start_broker, stop_broker

MQTTD = [sys.executable, "-m", "mqttd"]


def run(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([*MQTTD, *args], capture_output=True, text=True, timeout=timeout)


def test_version_names_the_implementation() -> None:
    out = run("--version")
    assert out.returncode == 0
    assert out.stdout.startswith("mqttd 0.")
    if os.environ.get("MQTTD_NO_EXTENSIONS") == "1":
        assert "pure Python" in out.stdout
    else:
        assert "compiled extensions" in out.stdout, out.stdout + out.stderr


def test_forced_pure_says_so() -> None:
    env = dict(os.environ, MQTTD_NO_EXTENSIONS="1")
    out = subprocess.run([*MQTTD, "--version"], capture_output=True, text=True, env=env, timeout=20)
    assert "pure Python (MQTTD_NO_EXTENSIONS=1)" in out.stdout


def test_console_script_installed() -> None:
    exe = shutil.which("mqttd")
    if exe is None:
        pytest.skip("the mqttd console script is not on PATH (not installed with pip)")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0 and out.stdout.startswith("mqttd ")


def test_port_in_use_is_one_clear_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = run("--port", str(port))
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert f"port {port} on 127.0.0.1 is already in use" in lines[0]


@pytest.mark.parametrize(
    "args, text",
    [
        (["--max-packet-size", "300000000"], "max packet size"),
        (["--max-packet-size", "2"], "max packet size"),
        (["--port", "70000"], "port must be"),
    ],
)
def test_bad_configuration_is_one_clear_line(args: list[str], text: str) -> None:
    out = run(*args)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], out.stderr


def test_ctrl_c_stops_cleanly() -> None:
    b = start_broker()
    c = b.connect()
    c.sendall(bytes.fromhex("100c00044d5154540402003c0000"))  # CONNECT 3.1.1, empty client id
    assert c.recv(4) == b"\x20\x02\x00\x00"
    b.proc.send_signal(signal.SIGINT)
    assert b.proc.wait(10) == 0
    c.settimeout(5)
    assert c.recv(10) == b""  # the client's connection was closed, not left hanging
    c.close()


def test_start_up_line_says_how_to_accept_remote_clients() -> None:
    proc = subprocess.Popen(
        [*MQTTD, "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            if "listening on" in line:
                break
        assert "listening on 127.0.0.1:" in line and "--host 0.0.0.0" in line
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)


def test_shutdown_tells_mqtt5_clients() -> None:
    """On Ctrl-C an MQTT 5 client gets DISCONNECT 0x8B Server shutting down, then the close."""
    b = start_broker()
    c = b.connect()
    # CONNECT at MQTT 5, empty client id, no properties
    c.sendall(bytes.fromhex("100d00044d5154540502003c000000"))
    ack = c.recv(64)
    assert ack[0] == 0x20 and ack[3] == 0
    b.proc.send_signal(signal.SIGINT)
    assert b.proc.wait(10) == 0
    c.settimeout(5)
    data = b""
    while chunk := c.recv(64):
        data += chunk
    assert data[:3] == b"\xe0\x01\x8b" or data[:4] == b"\xe0\x02\x8b\x00", data
    c.close()


def test_config_file_sets_options_and_flags_win(tmp_path) -> None:
    """mqttd --config takes the TOML file of the options table; a flag beats the file."""
    conf = tmp_path / "mqttd.toml"
    conf.write_text("max-connections = 1\nsys_interval = 0\nport = 1\n")
    b = start_broker("--config", str(conf))  # --port 0 (given by start_broker) beats port = 1
    try:
        first = b.connect()
        first.sendall(b"\x10\x0f\x00\x04MQTT\x04\x02\x00\x0a\x00\x03one")
        assert first.recv(4) == b"\x20\x02\x00\x00"
        second = b.connect()
        second.sendall(b"\x10\x0f\x00\x04MQTT\x04\x02\x00\x0a\x00\x03two")
        assert second.recv(4) == b"\x20\x02\x00\x03"  # 3.1.1: Server unavailable
        first.close()
        second.close()
    finally:
        stop_broker(b)


@pytest.mark.parametrize(
    "text, error",
    [
        ("max_connections = 'many'\n", "max_connections must be a whole number"),
        ("no_such_option = 1\n", "unknown option 'no_such_option'"),
        ("port = \n", "is not valid TOML"),
    ],
)
def test_bad_config_file_is_one_clear_line(tmp_path, text: str, error: str) -> None:
    conf = tmp_path / "bad.toml"
    conf.write_text(text)
    out = run("--config", str(conf))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and error in lines[0], out.stderr
