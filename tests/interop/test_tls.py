"""TLS listeners, with real clients: MQTTApp(ssl_context=...) and mqttd --certfile/--keyfile.

A throw-away CA (trustme) issues the server's certificate for 127.0.0.1; clients trust that CA.
"""

from __future__ import annotations

import queue
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from tests.conftest import require_program, start_broker, stop_broker
from tests.interop.helpers import Lines

trustme = pytest.importorskip("trustme")


@pytest.fixture(scope="module")
def ca() -> object:
    return trustme.CA()


@pytest.fixture(scope="module")
def pem_files(ca: object, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(server cert+key PEM, CA PEM)."""
    d = tmp_path_factory.mktemp("tls")
    cert = ca.issue_cert("127.0.0.1", "localhost")  # type: ignore[attr-defined]
    server = d / "server.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(server))
    cafile = d / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))  # type: ignore[attr-defined]
    return server, cafile


def _tls_paho(port: int, cafile: Path, cid: str) -> tuple[mqtt.Client, queue.Queue]:
    got: queue.Queue = queue.Queue()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid)
    c.tls_set(ca_certs=str(cafile))
    c.on_connect = lambda cl, u, f, rc, p: got.put(("connack", rc.value))
    c.on_subscribe = lambda cl, u, mid, rcs, p: got.put(("suback", [r.value for r in rcs]))
    c.on_message = lambda cl, u, m: got.put(("msg", m.topic, m.payload))
    c.connect("127.0.0.1", port)
    c.loop_start()
    assert got.get(timeout=5) == ("connack", 0)
    return c, got


def test_app_with_ssl_context(pem_files: tuple[Path, Path]) -> None:
    from tests.library.conftest import AppRunner, local_app

    server, cafile = pem_files
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(server))
    runner = AppRunner(local_app(ssl_context=ctx))
    try:
        c, got = _tls_paho(runner.port, cafile, "tls-app")
        c.subscribe("secure/#", 1)
        assert got.get(timeout=5) == ("suback", [1])
        c.publish("secure/x", b"over tls", qos=1)
        assert got.get(timeout=5) == ("msg", "secure/x", b"over tls")
        c.disconnect()
        c.loop_stop()
        # A plain-TCP CONNECT on the TLS port gets no CONNACK
        with socket.create_connection(("127.0.0.1", runner.port), timeout=3) as s:
            body = b"\x00\x04MQTT\x04\x02\x00\x0a\x00\x05plain"
            s.sendall(bytes([0x10, len(body)]) + body)
            try:
                data = s.recv(4)
            except (ConnectionResetError, TimeoutError):
                data = b""
            assert not data.startswith(b"\x20\x02")
    finally:
        runner.stop()


@pytest.fixture
def tls_broker(pem_files: tuple[Path, Path]) -> Iterator[object]:
    server, _ = pem_files
    b = start_broker("--certfile", str(server))
    try:
        yield b
    finally:
        stop_broker(b)


def test_cli_certfile_with_mosquitto_clients(tls_broker: object, pem_files) -> None:
    sub_bin = require_program("mosquitto_sub")
    pub_bin = require_program("mosquitto_pub")
    _, cafile = pem_files
    port = str(tls_broker.port)  # type: ignore[attr-defined]
    sub = Lines(
        [sub_bin, "-h", "127.0.0.1", "-p", port, "--cafile", str(cafile), "-t", "t/tls",
         "-C", "1", "-v"]
    )  # fmt: skip
    try:

        def publish() -> None:
            out = subprocess.run(
                [pub_bin, "-h", "127.0.0.1", "-p", port, "--cafile", str(cafile), "-t", "t/tls",
                 "-m", "hello tls", "-q", "1"],
                capture_output=True, text=True, timeout=15,
            )  # fmt: skip
            assert out.returncode == 0, out.stderr

        # Published until the subscriber (whose SUBSCRIBE may still be on its way) has it
        sub.wait_for(lambda line: line == "t/tls hello tls", timeout=10, poke=publish)
    finally:
        sub.stop()


def test_cli_bad_certificate_is_one_line(tmp_path: Path) -> None:
    import sys

    bogus = tmp_path / "bogus.pem"
    bogus.write_text("not a certificate\n")
    out = subprocess.run(
        [sys.executable, "-m", "mqttd", "--port", "0", "--certfile", str(bogus)],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot load the TLS certificate" in lines[0], out.stderr
