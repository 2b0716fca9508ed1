"""MQTT over WebSocket as the MQTT specification's section 6 says it, checked with the
`websockets` library's client sending the frames by hand: the subprotocol, the path, the Origin
allow-list, packets across frames and frames with several packets, text frames refused, ping,
and the fan-out's coalesced writes arriving as one frame per flush, not one per message."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from mqtt_raw import connect, publish, subscribe

from tests.conftest import BrokerProc, start_broker, stop_broker

websockets = pytest.importorskip("websockets")
from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402
from websockets.sync.client import ClientConnection  # noqa: E402
from websockets.sync.client import connect as ws_connect  # noqa: E402


@pytest.fixture(scope="module")
def ws_broker() -> Iterator[BrokerProc]:
    b = start_broker("--ws-port", "0")
    try:
        yield b
    finally:
        stop_broker(b)


def ws_url(b: BrokerProc, path: str = "/mqtt") -> str:
    url = b.urls["ws"]
    assert url.endswith("/mqtt"), url
    return url.removesuffix("/mqtt") + path


def open_ws(b: BrokerProc, **kw: object) -> ClientConnection:
    kw.setdefault("subprotocols", ["mqtt"])
    return ws_connect(ws_url(b), open_timeout=5, **kw)  # type: ignore[arg-type]


def packets(ws: ClientConnection, count: int, timeout: float = 5.0) -> list[bytes]:
    """Read frames until ``count`` MQTT packets came (they may span or share frames)."""
    buf = b""
    out: list[bytes] = []
    while len(out) < count:
        frame = ws.recv(timeout=timeout)
        assert isinstance(frame, bytes), "MQTT comes in binary frames [MQTT-6.0.0-1]"
        buf += frame
        while len(buf) >= 2:
            length, shift, pos = 0, 0, 1
            while True:
                byte = buf[pos]
                length |= (byte & 0x7F) << shift
                shift += 7
                pos += 1
                if not byte & 0x80:
                    break
            if len(buf) < pos + length:
                break
            out.append(buf[: pos + length])
            buf = buf[pos + length :]
    return out


def test_the_mqtt_subprotocol_is_selected(ws_broker: BrokerProc) -> None:
    """[MQTT-6.0.0-3]: "mqtt"; MQTT 3.1 clients offer "mqttv3.1"."""
    for offered, chosen in (
        (["mqtt"], "mqtt"),
        (["mqttv3.1"], "mqttv3.1"),
        (["x", "mqtt"], "mqtt"),
    ):
        with open_ws(ws_broker, subprotocols=offered) as ws:
            assert ws.subprotocol == chosen
            ws.send(connect("sp", level=4))
            assert packets(ws, 1)[0] == b"\x20\x02\x00\x00"


def test_a_client_offering_no_subprotocol_is_served(ws_broker: BrokerProc) -> None:
    with open_ws(ws_broker, subprotocols=None) as ws:
        assert ws.subprotocol is None
        ws.send(connect("nosp", level=4))
        assert packets(ws, 1)[0] == b"\x20\x02\x00\x00"


def test_another_path_is_404(ws_broker: BrokerProc) -> None:
    with pytest.raises(InvalidStatus) as err:
        ws_connect(ws_url(ws_broker, "/other"), subprotocols=["mqtt"], open_timeout=5)
    assert err.value.response.status_code == 404


def test_packets_span_frames_and_frames_hold_several_packets(ws_broker: BrokerProc) -> None:
    """[MQTT-6.0.0-2]: the receiver assembles packets across frame boundaries."""
    with open_ws(ws_broker) as ws:
        conn = connect("spans", level=5)
        ws.send(conn[:3])
        ws.send(conn[3:])  # one CONNECT in two frames
        connack = packets(ws, 1)[0]
        assert connack[0] == 0x20 and connack[3] == 0, connack.hex()  # CONNACK, Success
        # SUBSCRIBE and a PUBLISH to it in one frame: SUBACK, then the message
        ws.send(subscribe(1, [("spans/t", 0)], level=5) + publish("spans/t", b"hi", level=5))
        suback, pub = packets(ws, 2)
        assert suback[0] == 0x90 and pub[0] >> 4 == 3 and pub.endswith(b"hi")


def test_a_text_frame_closes_the_connection(ws_broker: BrokerProc) -> None:
    """[MQTT-6.0.0-1]: data other than binary frames closes the network connection."""
    with open_ws(ws_broker) as ws:
        ws.send(connect("text", level=4))
        packets(ws, 1)
        ws.send("CONNECT as text")
        with pytest.raises(ConnectionClosed) as err:
            ws.recv(timeout=5)
        assert err.value.rcvd is not None and err.value.rcvd.code == 1003


def test_ping_is_answered(ws_broker: BrokerProc) -> None:
    with open_ws(ws_broker) as ws:
        ws.send(connect("ping", level=4))
        packets(ws, 1)
        assert ws.ping(b"are you there").wait(5)


def test_the_fan_out_writes_one_frame_per_flush(ws_broker: BrokerProc) -> None:
    """200 messages published in one TCP write reach a WebSocket subscriber in far fewer
    frames: the coalesced writes of the fan-out are not split into a frame per message."""
    with open_ws(ws_broker) as ws:
        ws.send(connect("frames", level=4) + subscribe(1, [("frames/t", 0)]))
        packets(ws, 2)
        with socket.create_connection((ws_broker.host, ws_broker.port), timeout=5) as tcp:
            tcp.sendall(connect("frames-pub", level=4))
            assert tcp.recv(4) == b"\x20\x02\x00\x00"
            tcp.sendall(b"".join(publish("frames/t", b"%03d" % i) for i in range(200)))
            buf, frames, count = b"", 0, 0
            while count < 200:
                frame = ws.recv(timeout=5)
                frames += 1
                buf += frame
                count = buf.count(b"frames/t")
        assert frames < 50, f"{frames} frames for 200 messages"


def test_origins_allow_list(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A browser from an origin not in the list is refused (403); one from the list, and a
    client that sends no Origin (not a browser), are served."""
    conf = tmp_path / "ws.toml"
    conf.write_text(
        '[[listener]]\nport = 0\n\n[[listener]]\nport = 0\nprotocol = "websockets"\n'
        'origins = ["https://dash.example.com"]\n'
    )
    b = start_broker("--config", str(conf))
    try:
        with pytest.raises(InvalidStatus) as err:
            open_ws(b, origin="https://evil.example.com")
        assert err.value.response.status_code == 403
        for origin in ("https://dash.example.com", None):
            with open_ws(b, origin=origin) as ws:
                ws.send(connect(f"o-{origin is None}", level=4))
                assert packets(ws, 1)[0] == b"\x20\x02\x00\x00"
    finally:
        stop_broker(b)


def test_a_websocket_message_over_the_packet_limit_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    b = start_broker("--ws-port", "0", "--max-packet-size", "65536")
    try:
        with open_ws(b) as ws:
            ws.send(connect("big", level=4))
            packets(ws, 1)
            ws.send(b"\x00" * (65536 + 64 * 1024 + 1))
            with pytest.raises(ConnectionClosed) as err:
                ws.recv(timeout=5)
            assert err.value.rcvd is not None and err.value.rcvd.code == 1009
    finally:
        stop_broker(b)


@pytest.mark.parametrize("scenario", ["fanin", "fanout"])
def test_the_load_generator_speaks_websocket(ws_broker: BrokerProc, scenario: str) -> None:
    """mqttd-bench --transport ws (mqttd/bench/ws.py): every message counted, none lost."""
    import json
    import subprocess
    import sys

    port = ws_url(ws_broker).rsplit(":", 1)[1].split("/")[0]
    out = subprocess.run(
        [sys.executable, "-m", "mqttd.bench", scenario, "--port", port, "--transport", "ws",
         "--duration", "0.5", "--warmup", "0.2", "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    result = json.loads(out.stdout)
    assert result["integrity_ok"] and result["lost_total"] == 0, result["integrity"]
    assert result["delivered"] > 0
