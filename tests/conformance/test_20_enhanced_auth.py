"""MQTT 5 enhanced authentication (§4.12) through the pluggable hook.

The broker runs in this process (its Python API, with an authenticator registered) on a free
port, in a thread with its own event loop; the client speaks raw bytes over real TCP.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from mqtt_raw import AUTH, CONNACK, Client, connect, decode_props, frame, parse_connack, prop, props

from mqttd.auth import CONTINUE, NOT_AUTHORIZED, SUCCESS
from mqttd.broker import BrokerConfig
from mqttd.node import Node

METHOD = "X-CHALLENGE"


class Challenge:
    """A toy method: the server sends a nonce, the client must answer nonce + b'!'."""

    method = METHOD

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes | None]] = []

    def start(self, conn, data):
        self.calls.append(("start", data))
        return CONTINUE, b"nonce-" + (data or b"")

    def step(self, conn, data):
        self.calls.append(("step", data))
        last = [d for k, d in self.calls if k == "start"][-1] or b""
        if data == b"nonce-" + last + b"!":
            return SUCCESS, b"welcome"
        return NOT_AUTHORIZED, None


@pytest.fixture(scope="module")
def auth_broker() -> Iterator[tuple[tuple[str, int], Challenge]]:
    challenge = Challenge()
    loop = asyncio.new_event_loop()
    node = Node(BrokerConfig(port=0, sys_interval=0))
    node.broker.authenticators[METHOD] = challenge
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(node.start())
        ready.set()
        loop.run_forever()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert ready.wait(10)
    try:
        yield node.addresses[0], challenge
    finally:
        asyncio.run_coroutine_threadsafe(node.shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)
        loop.close()


def auth_packet(rc: int, data: bytes | None, method: str = METHOD) -> bytes:
    p = [prop(0x15, method)]
    if data is not None:
        p.append(prop(0x16, data))
    return frame(0xF0, bytes([rc]) + props(*p))


def parse_auth(pkt) -> tuple[int, dict]:
    body = pkt.body
    pr, _ = decode_props(body, 1)
    return body[0], pr


def start_exchange(addr: tuple[str, int], cid: str, data: bytes) -> tuple[Client, bytes]:
    c = Client(addr, 5)
    c.send(connect(cid, level=5, properties=props(prop(0x15, METHOD), prop(0x16, data))))
    rc, pr = parse_auth(c.expect(AUTH))
    assert rc == CONTINUE, "the server continues the exchange with AUTH 0x18"
    assert pr[0x15] == [METHOD]
    return c, pr[0x16][0]


def test_exchange_succeeds_and_connack_names_the_method(auth_broker) -> None:
    addr, _ = auth_broker
    c, nonce = start_exchange(addr, "auth-ok", b"abc")
    assert nonce == b"nonce-abc"
    c.send(auth_packet(CONTINUE, nonce + b"!"))
    sp, rc, pr = parse_connack(c.expect(CONNACK), 5)
    assert rc == 0
    assert pr[0x15] == [METHOD] and pr[0x16] == [b"welcome"]
    c.ping()
    # Re-authentication on the live connection (AUTH 0x19) [MQTT-4.12.1-1]
    c.send(auth_packet(0x19, b"again"))
    rc, pr = parse_auth(c.expect(AUTH))
    assert rc == CONTINUE and pr[0x16] == [b"nonce-again"]
    c.send(auth_packet(CONTINUE, b"nonce-again!"))
    rc, pr = parse_auth(c.expect(AUTH))
    assert rc == SUCCESS
    c.ping()
    c.close()


def test_wrong_answer_is_refused(auth_broker) -> None:
    addr, _ = auth_broker
    c, nonce = start_exchange(addr, "auth-bad", b"x")
    c.send(auth_packet(CONTINUE, b"wrong"))
    _, rc, _ = parse_connack(c.expect(CONNACK), 5)
    assert rc == NOT_AUTHORIZED
    c.wait_closed()


def test_other_method_in_auth_is_a_protocol_error(auth_broker) -> None:
    addr, _ = auth_broker
    c, _ = start_exchange(addr, "auth-switch", b"y")
    c.send(auth_packet(CONTINUE, b"nonce-y!", method="OTHER"))
    _, rc, _ = parse_connack(c.expect(CONNACK), 5)
    assert rc == 0x82  # [MQTT-4.12.0-5]
    c.wait_closed()


def test_publish_before_authentication_ends_is_a_protocol_error(auth_broker) -> None:
    addr, _ = auth_broker
    c, _ = start_exchange(addr, "auth-early", b"z")
    c.send(frame(0x30, b"\x00\x01t\x00hi"))
    _, rc, _ = parse_connack(c.expect(CONNACK), 5)
    assert rc == 0x82
    c.wait_closed()


def test_unknown_method_gets_0x8c(auth_broker) -> None:
    addr, _ = auth_broker
    c = Client(addr, 5)
    c.send(connect("auth-unknown", level=5, properties=props(prop(0x15, "NOPE"))))
    _, rc, _ = parse_connack(c.expect(CONNACK), 5)
    assert rc == 0x8C
    c.wait_closed()
