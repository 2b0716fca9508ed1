"""Shared helpers for the MQTT 5.0 conformance files (test_10 .. test_14).

Everything here reads and builds raw bytes through mqtt_raw; nothing comes from mqttd. The rules
checked are those of the OASIS MQTT Version 5.0 standard (07 March 2019), cited by their
normative ids ``[MQTT-x.y.z-n]`` or, for statements without an id, by section number.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from mqtt_raw import (
    AUTH,
    CONNACK,
    DISCONNECT,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    SUBACK,
    UNSUBACK,
    Client,
    Packet,
    Pub,
    decode_props,
    parse_connack,
    parse_disconnect,
    parse_publish,
    parse_suback,
    prop,
    props,
    subscribe,
)

from tests.conftest import BrokerProc, broker_kind, start_broker, stop_broker

# Property identifiers [MQTT 5 §2.2.2.2, Table 2-4]
PAYLOAD_FORMAT = 0x01
MESSAGE_EXPIRY = 0x02
CONTENT_TYPE = 0x03
RESPONSE_TOPIC = 0x08
CORRELATION_DATA = 0x09
SUBSCRIPTION_ID = 0x0B
SESSION_EXPIRY = 0x11
ASSIGNED_CLIENT_ID = 0x12
SERVER_KEEP_ALIVE = 0x13
AUTH_METHOD = 0x15
AUTH_DATA = 0x16
REQUEST_PROBLEM_INFO = 0x17
WILL_DELAY = 0x18
REQUEST_RESPONSE_INFO = 0x19
RESPONSE_INFO = 0x1A
SERVER_REFERENCE = 0x1C
REASON_STRING = 0x1F
RECEIVE_MAXIMUM = 0x21
TOPIC_ALIAS_MAXIMUM = 0x22
TOPIC_ALIAS = 0x23
MAXIMUM_QOS = 0x24
RETAIN_AVAILABLE = 0x25
USER_PROPERTY = 0x26
MAXIMUM_PACKET_SIZE = 0x27
WILDCARD_SUB_AVAILABLE = 0x28
SUB_ID_AVAILABLE = 0x29
SHARED_SUB_AVAILABLE = 0x2A

# Reason codes [MQTT 5 §2.4, Table 2-6]
MALFORMED = 0x81
PROTOCOL_ERROR = 0x82
BAD_AUTH_METHOD = 0x8C
NOT_AUTHORIZED = 0x87
TOPIC_FILTER_INVALID = 0x8F
TOPIC_NAME_INVALID = 0x90
RECEIVE_MAXIMUM_EXCEEDED = 0x93
TOPIC_ALIAS_INVALID = 0x94
PACKET_TOO_LARGE = 0x95
QUOTA_EXCEEDED = 0x97
RETAIN_NOT_SUPPORTED = 0x9A
QOS_NOT_SUPPORTED = 0x9B
SHARED_NOT_SUPPORTED = 0x9E
SUB_IDS_NOT_SUPPORTED = 0xA1
WILDCARDS_NOT_SUPPORTED = 0xA2

# Which properties each server-to-client packet may carry [MQTT 5 §2.2.2.2, Table 2-4]. A packet
# carrying another one is malformed; every property except User Property (and Subscription
# Identifier in PUBLISH) may appear at most once (each property's section: "It is a Protocol Error
# to include ... more than once").
ALLOWED_FROM_SERVER: dict[int, set[int]] = {
    CONNACK: {
        SESSION_EXPIRY,
        RECEIVE_MAXIMUM,
        MAXIMUM_QOS,
        RETAIN_AVAILABLE,
        MAXIMUM_PACKET_SIZE,
        ASSIGNED_CLIENT_ID,
        TOPIC_ALIAS_MAXIMUM,
        REASON_STRING,
        USER_PROPERTY,
        WILDCARD_SUB_AVAILABLE,
        SUB_ID_AVAILABLE,
        SHARED_SUB_AVAILABLE,
        SERVER_KEEP_ALIVE,
        RESPONSE_INFO,
        SERVER_REFERENCE,
        AUTH_METHOD,
        AUTH_DATA,
    },
    PUBLISH: {
        PAYLOAD_FORMAT,
        MESSAGE_EXPIRY,
        TOPIC_ALIAS,
        RESPONSE_TOPIC,
        CORRELATION_DATA,
        USER_PROPERTY,
        SUBSCRIPTION_ID,
        CONTENT_TYPE,
    },
    PUBACK: {REASON_STRING, USER_PROPERTY},
    PUBREC: {REASON_STRING, USER_PROPERTY},
    PUBREL: {REASON_STRING, USER_PROPERTY},
    PUBCOMP: {REASON_STRING, USER_PROPERTY},
    SUBACK: {REASON_STRING, USER_PROPERTY},
    UNSUBACK: {REASON_STRING, USER_PROPERTY},
    # Session Expiry Interval MUST NOT be sent on a DISCONNECT by the Server [MQTT-3.14.2-2].
    DISCONNECT: {REASON_STRING, USER_PROPERTY, SERVER_REFERENCE},
    AUTH: {AUTH_METHOD, AUTH_DATA, REASON_STRING, USER_PROPERTY},
}
REPEATABLE = {USER_PROPERTY, SUBSCRIPTION_ID}

RECV = 2.0  # waiting for something that must come (what must not come: Client.until)


# --- packet inspection -----------------------------------------------------------------------


def packet_size(p: Packet) -> int:
    """Total bytes of a packet on the wire: fixed header + remaining length + body."""
    n, length = 1, len(p.body)
    while True:
        n += 1
        length //= 128
        if not length:
            return n + len(p.body)


def server_packet_props(p: Packet) -> dict[int, list[object]]:
    """The property block of a server-to-client MQTT 5 packet ({} where there is none)."""
    t, body = p.type, p.body
    if t == CONNACK:
        return parse_connack(p, 5)[2]
    if t == PUBLISH:
        return parse_publish(p, 5).properties
    if t in (PUBACK, PUBREC, PUBREL, PUBCOMP):
        # Reason Code and Property Length may be omitted [MQTT 5 §3.4.2.1 and siblings].
        return decode_props(body, 3)[0] if len(body) > 3 else {}
    if t in (SUBACK, UNSUBACK):
        return decode_props(body, 2)[0]
    if t in (DISCONNECT, AUTH):
        return decode_props(body, 1)[0] if len(body) > 1 else {}
    return {}


def check_server_packet(p: Packet) -> dict[int, list[object]]:
    """Assert that a packet from the server only carries properties allowed in it, each at most
    once (except the repeatable ones) [MQTT 5 §2.2.2.2]; returns them."""
    found = server_packet_props(p)
    allowed = ALLOWED_FROM_SERVER.get(p.type, set())
    for pid, values in found.items():
        assert pid in allowed, f"property {pid:#04x} is not allowed in {p.name} [§2.2.2.2]: {p!r}"
        if pid not in REPEATABLE:
            assert len(values) == 1, f"property {pid:#04x} repeated in {p.name}: {p!r}"
    return found


def ack_reason(p: Packet) -> int:
    """Reason code of a PUBACK/PUBREC/PUBREL/PUBCOMP (0 when omitted, §3.4.2.1)."""
    return p.body[2] if len(p.body) > 2 else 0


# --- a raw MQTT 5 client with a few more helpers --------------------------------------------


class C5(Client):
    """A raw MQTT 5 connection (see mqtt_raw.Client) with property-aware helpers."""

    def __init__(self, addr: tuple[str, int], timeout: float = RECV):
        super().__init__(addr, 5, timeout)

    def open(self, client_id: str, *properties: bytes, **kw: object) -> dict[int, list[object]]:
        """CONNECT with the given encoded properties; asserts CONNACK 0; returns its
        properties (checked against §2.2.2.2)."""
        self.send(_connect5(client_id, props(*properties), **kw))
        p = self.expect(CONNACK)
        sp, rc, cprops = parse_connack(p, 5)
        assert rc == 0, f"CONNACK {rc:#x}, expected 0"
        check_server_packet(p)
        self.session_present = sp
        return cprops

    def sub(
        self,
        filters: list[tuple[str, int]] | str,
        *properties: bytes,
        qos: int = 0,
        pid: int = 1,
    ) -> list[int]:
        """SUBSCRIBE (with optional properties) and return the SUBACK reason codes."""
        if isinstance(filters, str):
            filters = [(filters, qos)]
        flt: list = filters
        self.send(subscribe(pid, flt, level=5, properties=props(*properties)))
        p = self.expect(SUBACK)
        check_server_packet(p)
        got_pid, codes = parse_suback(p, 5)
        assert got_pid == pid, f"SUBACK packet id {got_pid}, expected {pid} [MQTT-3.8.4-2]"
        assert len(codes) == len(filters), "one reason code per filter [MQTT-3.8.4-6]"
        return codes

    def pub5(
        self,
        topic: str | bytes,
        payload: bytes = b"",
        *properties: bytes,
        qos: int = 0,
        pid: int = 1,
        retain: bool = False,
    ) -> None:
        """PUBLISH with properties, completing the publisher side of QoS 1/2."""
        self.publish(topic, payload, qos=qos, pid=pid, retain=retain, properties=props(*properties))

    def recv5(self, timeout: float = RECV, ack: bool = True) -> Pub:
        """The next PUBLISH (properties checked against §2.2.2.2), acknowledged by default."""
        p = self.expect(PUBLISH, timeout)
        check_server_packet(p)
        self.stash.insert(0, p)
        return self.recv_publish(timeout, ack=ack)


def _connect5(client_id: str, properties: bytes, **kw: object) -> bytes:
    from mqtt_raw import connect

    return connect(client_id, level=5, properties=properties, **kw)  # type: ignore[arg-type]


def v5(addr: tuple[str, int], client_id: str, *properties: bytes, **kw: object) -> C5:
    """A connected MQTT 5 client (CONNACK 0 checked)."""
    c = C5(addr)
    try:
        c.open(client_id, *properties, **kw)
    except BaseException:
        c.close()
        raise
    return c


def expect_disconnect(c: Client, codes: tuple[int, ...], timeout: float = 2.0) -> int:
    """The server sends a DISCONNECT whose reason code is one of ``codes`` and closes the
    connection. [MQTT-4.13.1-1]: on a Malformed Packet or Protocol Error in a packet other than
    CONNECT the server "SHOULD send a DISCONNECT packet containing the reason code before
    closing"; these tests hold the broker to that SHOULD. The DISCONNECT is the last packet
    [MQTT-3.14.4-1] and carries no Session Expiry Interval [MQTT-3.14.2-2]."""
    got = c.wait_closed(timeout)
    c.close()
    assert got, f"connection closed without a DISCONNECT (expected {[hex(x) for x in codes]})"
    last = got[-1]
    assert last.type == DISCONNECT, f"expected DISCONNECT before close, got {got!r}"
    check_server_packet(last)
    rc = parse_disconnect(last)
    assert rc in codes, f"DISCONNECT {rc:#x}, expected one of {[hex(x) for x in codes]}"
    return rc


def expect_connect_refused(c: Client, codes: tuple[int, ...], timeout: float = 2.0) -> int | None:
    """After a CONNECT the server must refuse: it closes the connection, after a CONNACK whose
    reason code is one of ``codes`` if it sends one (MQTT 5 §4.13.1: "In the case of an error in
    a CONNECT packet it MAY send a CONNACK packet containing the Reason Code"); such a CONNACK
    has Session Present 0 [MQTT-3.2.2-6]. Returns the CONNACK code or None."""
    got = c.wait_closed(timeout)
    c.close()
    if not got:
        return None
    assert len(got) == 1 and got[0].type == CONNACK, f"expected only a CONNACK, got {got!r}"
    sp, rc, _ = parse_connack(got[0], 5)
    check_server_packet(got[0])
    assert rc in codes, f"CONNACK {rc:#x}, expected one of {[hex(x) for x in codes]}"
    assert sp is False, "a CONNACK with an error code has Session Present 0 [MQTT-3.2.2-6]"
    return rc


def pub_props(*encoded: bytes) -> bytes:
    return props(*encoded)


def sub_id(n: int) -> bytes:
    return prop(SUBSCRIPTION_ID, n)


def user_props(pairs: list[tuple[str, str]]) -> list[bytes]:
    return [prop(USER_PROPERTY, kv) for kv in pairs]


# --- brokers with special settings ------------------------------------------------------------


@contextmanager
def custom_broker(
    mqttd_args: list[str] | None,
    mosquitto_conf: list[str] | None,
    why_not: str = "",
) -> Iterator[tuple[str, int]]:
    """A broker with special settings: mqttd with ``mqttd_args``, or in validation mode
    (MQTTD_TEST_BROKER=mosquitto) Mosquitto with the extra ``mosquitto_conf`` lines for its
    listener. ``None`` means that broker cannot be configured so (``why_not`` says why): the
    test is skipped."""
    if broker_kind() == "mosquitto":
        if mosquitto_conf is None:
            pytest.skip(why_not or "Mosquitto has no setting for this")
        b = _start_mosquitto_with(mosquitto_conf)
    else:
        if mqttd_args is None:
            pytest.skip(why_not or "mqttd has no option for this setting")
        b = start_broker(*mqttd_args)
    try:
        yield (b.host, b.port)
    finally:
        stop_broker(b)


def _start_mosquitto_with(extra: list[str], timeout: float = 10.0) -> BrokerProc:
    import socket

    mosquitto = "/usr/sbin/mosquitto"
    if not os.path.exists(mosquitto):
        pytest.skip(f"{mosquitto} is not installed")
    for _attempt in range(3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with tempfile.TemporaryDirectory(prefix="mqttd-mosq5-") as tmp:
            conf = os.path.join(tmp, "mosquitto.conf")
            with open(conf, "w") as f:
                f.write(f"listener {port} 127.0.0.1\n")
                for line in extra:
                    f.write(line + "\n")
                f.write(
                    "allow_anonymous true\npersistence false\nlog_dest stdout\n"
                    "log_type error\nlog_type warning\n"
                )
            proc = subprocess.Popen(
                [mosquitto, "-c", conf], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            output: list[str] = []
            threading.Thread(
                target=lambda p=proc, out=output: [out.append(line) for line in p.stdout],
                daemon=True,
            ).start()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        break
                except OSError:
                    time.sleep(0.05)
            time.sleep(0.05)
        if proc.poll() is None:
            return BrokerProc("127.0.0.1", port, proc, [mosquitto, "-c", conf])
        proc.wait(5)
        time.sleep(0.05)
        if any("Error" in line for line in output):
            break
    raise RuntimeError("mosquitto with a custom configuration did not start:\n" + "".join(output))


class AliasResolver:
    """The client side of server-to-client Topic Aliases [MQTT 5 §3.3.2.3.4]: checks each
    incoming PUBLISH against the Topic Alias Maximum the client sent and resolves its topic."""

    def __init__(self, maximum: int):
        self.maximum = maximum
        self.table: dict[int, str] = {}
        self.aliased = 0

    def resolve(self, m: Pub) -> str:
        aliases = m.properties.get(TOPIC_ALIAS, [])
        if not aliases:
            assert m.topic, "zero-length Topic Name without a Topic Alias [MQTT 5 §3.3.2.1]"
            return m.topic
        alias = int(aliases[0])  # type: ignore[arg-type]
        assert len(aliases) == 1, "Topic Alias repeated"
        assert self.maximum > 0, (
            "the server sent a Topic Alias though the client's Topic Alias Maximum is "
            "0/absent [MQTT-3.1.2-27]"
        )
        assert alias != 0, "the server sent Topic Alias 0 [MQTT-3.3.2-8]"
        assert alias <= self.maximum, (
            f"Topic Alias {alias} above the client's maximum {self.maximum} "
            "[MQTT-3.1.2-26, MQTT-3.3.2-11]"
        )
        self.aliased += 1
        if m.topic:
            self.table[alias] = m.topic
            return m.topic
        assert alias in self.table, (
            f"empty topic with Topic Alias {alias} never mapped on this connection "
            "[MQTT 5 §3.3.2.3.4, MQTT-3.3.2-7]"
        )
        return self.table[alias]
