"""One mqttd process serving TCP, TLS, WebSocket, secure WebSocket and a Unix socket at once
(issue 14): a paho client on each publishes, and every other client receives it. The listeners
come from [[listener]] tables in a TOML file, as an operator writes them."""

from __future__ import annotations

import queue
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from tests.conftest import BrokerProc, start_broker, stop_broker

trustme = pytest.importorskip("trustme")
pytest.importorskip("websockets")


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    server = d / "server.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(server))
    cafile = d / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    return server, cafile


@pytest.fixture(scope="module")
def five(
    tls_files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[BrokerProc, dict[str, str]]]:
    server, _ = tls_files
    d = tmp_path_factory.mktemp("five")
    sock = d / "mqttd.sock"
    conf = d / "mqttd.toml"
    conf.write_text(
        f"""\
[[listener]]
port = 0

[[listener]]
port = 0
certfile = "{server}"

[[listener]]
port = 0
protocol = "websockets"

[[listener]]
port = 0
protocol = "websockets"
path = "/ws"
certfile = "{server}"

[[listener]]
socket = "{sock}"
socket_mode = 0o600
"""
    )
    b = start_broker("--config", str(conf))
    try:
        yield b, b.urls
    finally:
        stop_broker(b)
    assert not sock.exists(), "the Unix socket file is removed at shutdown"


def _client(kind: str, url: str, cafile: Path, cid: str, got: queue.Queue[tuple[str, str, bytes]]):
    transport = {"ws": "websockets", "wss": "websockets", "unix": "unix"}.get(kind, "tcp")
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, transport=transport)
    connected: queue.Queue[int] = queue.Queue()
    c.on_connect = lambda cl, u, f, rc, p: connected.put(rc.value)
    c.on_message = lambda cl, u, m: got.put((cid, m.topic, m.payload))
    if kind in ("mqtts", "wss"):
        c.tls_set(ca_certs=str(cafile))
    if kind == "unix":
        c.connect(url.removeprefix("unix:"))
    else:
        m = re.match(r"(\w+)://([\d.]+):(\d+)(/\S*)?", url)
        assert m, url
        if m.group(4):
            c.ws_set_options(path=m.group(4))
        c.connect(m.group(2), int(m.group(3)))
    c.loop_start()
    assert connected.get(timeout=10) == 0, f"{kind}: CONNACK"
    return c


def test_a_client_on_each_listener_reaches_all_the_others(
    five: tuple[BrokerProc, dict[str, str]], tls_files: tuple[Path, Path]
) -> None:
    b, urls = five
    assert set(urls) == {"mqtt", "mqtts", "ws", "wss", "unix"}, urls
    got: queue.Queue[tuple[str, str, bytes]] = queue.Queue()
    clients = {k: _client(k, u, tls_files[1], f"c-{k}", got) for k, u in urls.items()}
    try:
        subscribed: queue.Queue[str] = queue.Queue()
        for k, c in clients.items():
            c.on_subscribe = lambda cl, u, mid, rcs, p, k=k: subscribed.put(k)
            c.subscribe("five/#", qos=1)
        assert {subscribed.get(timeout=10) for _ in clients} == set(clients)
        for k, c in clients.items():
            c.publish(f"five/{k}", f"from {k}".encode(), qos=1).wait_for_publish(10)
        seen: set[tuple[str, str]] = set()
        while len(seen) < 25:
            cid, topic, payload = got.get(timeout=10)
            assert payload == f"from {topic.split('/')[1]}".encode()
            seen.add((cid, topic))
        assert seen == {(f"c-{a}", f"five/{b}") for a in clients for b in clients}
    finally:
        for c in clients.values():
            c.loop_stop()
            c.disconnect()


def test_the_unix_socket_has_its_mode(five: tuple[BrokerProc, dict[str, str]]) -> None:
    import os
    import stat

    path = five[1]["unix"].removeprefix("unix:")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_ISSOCK(os.stat(path).st_mode)


def test_the_library_takes_listeners(tmp_path: Path) -> None:
    """MQTTApp(listeners=[...]): TCP and WebSocket from one program, a message across them."""
    from mqttd import ListenerConfig
    from tests.library.conftest import AppRunner, local_app

    app = local_app(
        listeners=[ListenerConfig(port=0), {"port": 0, "protocol": "websockets", "path": "/m"}]
    )
    runner = AppRunner(app)
    try:
        node = app._node
        assert node is not None
        urls = node.urls()
        assert urls[0].startswith("mqtt://") and urls[1].startswith("ws://"), urls
        got: queue.Queue[tuple[str, str, bytes]] = queue.Queue()
        ws = _client("ws", urls[1], Path(), "lib-ws", got)
        tcp = _client("mqtt", urls[0], Path(), "lib-tcp", got)
        done: queue.Queue[int] = queue.Queue()
        ws.on_subscribe = lambda cl, u, mid, rcs, p: done.put(mid)
        ws.subscribe("lib/#", qos=1)
        done.get(timeout=10)
        tcp.publish("lib/x", b"across", qos=1).wait_for_publish(10)
        assert got.get(timeout=10) == ("lib-ws", "lib/x", b"across")
        for c in (ws, tcp):
            c.loop_stop()
            c.disconnect()
    finally:
        runner.stop()


@pytest.mark.parametrize(
    "table, says",
    [
        ('[[listener]]\nport = 0\nprotocl = "mqtt"\n', "listener 1: unknown key 'protocl' (did you mean protocol?)"),
        ('[[listener]]\nport = 0\nprotocol = "quic"\n', 'listener 1: protocol must be "mqtt" or "websockets"'),
        ('[[listener]]\nport = "1883"\n', "listener 1: port must be a whole number"),
        ('[[listener]]\nport = 0\nkeyfile = "k.pem"\n', "listener 1: a TLS key file needs"),
        ('[[listener]]\nport = 0\n[[listener]]\nport = 0\npath = "mqtt"\n', "listener 2: path must start with /"),
    ],
)  # fmt: skip
def test_a_bad_listener_table_is_one_line(tmp_path: Path, table: str, says: str) -> None:
    import subprocess

    conf = tmp_path / "bad.toml"
    conf.write_text(table)
    r = subprocess.run(
        [sys.executable, "-m", "mqttd", "--config", str(conf)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and says in lines[0], r.stderr
    assert str(conf) in lines[0]


def test_a_listener_with_its_own_users_and_rules(tmp_path: Path) -> None:
    """A [[listener]] with password_file / acl_file authenticates on its own: anonymous local
    clients on the first listener, users with a password (and the ACL) on the second; SIGHUP
    reloads the listener's files too."""
    import signal
    import time

    from mqtt_raw import Client

    from mqttd.cli import main as cli_main

    pw = tmp_path / "passwd"
    assert cli_main(["passwd", "-c", "-b", str(pw), "alice", "alice-pw"]) == 0
    acl = tmp_path / "acl"
    acl.write_text("user alice\ntopic readwrite alice/#\n")
    conf = tmp_path / "mqttd.toml"
    conf.write_text(
        f'[[listener]]\nport = 0\n\n[[listener]]\nport = 0\npassword_file = "{pw}"\n'
        f'acl_file = "{acl}"\n'
    )
    b = start_broker("--config", str(conf))
    try:
        urls = b.line.split("; also ")[1].split(";")[0]
        port2 = int(urls.rsplit(":", 1)[1])
        open_side, closed_side = (b.host, b.port), (b.host, port2)
        with Client(open_side, level=5) as anon:
            anon.connect("anon-open")  # the node's settings: anonymous welcome
            assert anon.subscribe([("bob/#", 0)]) == [0]  # and no ACL there
        with Client(closed_side, level=5) as anon:
            anon.connect("anon-closed", expect_rc=0x87)
        with Client(closed_side, level=5) as alice:
            alice.connect("alice", username="alice", password=b"alice-pw")
            assert alice.subscribe([("bob/#", 0), ("alice/#", 0)]) == [0x87, 0]
            acl.write_text("user alice\ntopic readwrite alice/#\ntopic read bob/#\n")
            b.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while alice.subscribe([("bob/#", 0)], pid=7) != [0]:
                assert time.monotonic() < deadline, "SIGHUP did not reload the listener's ACL"
                time.sleep(0.05)
    finally:
        stop_broker(b)
