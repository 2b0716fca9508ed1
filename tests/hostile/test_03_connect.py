"""Hostile connection set-up: a CONNECT at one byte per second, a second CONNECT, packets only a
server sends, and wills with bad properties or flags.

Proves: the CONNECT deadline runs from the accept, not from the last byte, so a trickle cannot
keep a connection forever, while a client that connected in time is not touched by it; a second
CONNECT is a protocol violation that closes the connection and cannot take over another client's
session nor replace the will; CONNACK, SUBACK, UNSUBACK and PINGRESP from a client close it; and
a CONNECT whose will is bad is refused, its will never published.
"""

from __future__ import annotations

import socket
import time

import pytest
from mqtt_raw import (
    CONNACK,
    Client,
    assert_closed,
    connect,
    decode_varint,
    frame,
    mstr,
    parse_connack,
    prop,
    props,
    u16,
    varint,
)

from .support import (
    BASELINE_RSS_MIB,
    SLACK_MIB,
    assert_healthy,
    connected_client,
    dribble,
    hostile_broker,
    unique,
)

MALFORMED_PACKET = 0x81
PROTOCOL_ERROR = 0x82
#: Nothing in these cases outlives its connection: a fresh broker's RSS and the slack.
RSS_BOUND_MIB = BASELINE_RSS_MIB + SLACK_MIB
MARKER = b"marker"


@pytest.fixture(scope="module")
def broker():
    with hostile_broker() as b:
        yield b


def test_one_byte_per_second_connect():
    """Attack: a valid CONNECT sent one byte per second, against --connect-timeout 2.
    Expected: the broker closes the connection about 2 s after accepting it, before the CONNECT
    is complete, without a CONNACK; a client that connected in time at the same moment is still
    served after the deadline has passed (the deadline ends at CONNECT)."""
    timeout = 2.0
    with hostile_broker("--connect-timeout", str(timeout)) as b:
        packet = connect(unique("slow"), level=4)
        with connected_client(b.addr, 4) as prompt:
            slow = Client(b.addr, 4)
            opened = time.monotonic()
            try:
                sent = dribble(slow, packet, 1.0, until=opened + timeout + 5.0)
                got = slow.wait_closed(2.0)
                closed = time.monotonic()
            finally:
                slow.close()
            assert got == [], f"answered a partial CONNECT with {got!r}"
            assert sent < len(packet), "the whole CONNECT went out before the broker closed"
            assert timeout * 0.9 <= closed - opened <= timeout + 2.0, (
                f"closed {closed - opened:.2f} s after opening, timeout {timeout} s"
            )
            prompt.ping()  # connected before the deadline, served after it
        assert_healthy(b, RSS_BOUND_MIB)


@pytest.mark.parametrize("level", [4, 5])
def test_second_connect_closes(broker, level):
    """Attack: a second CONNECT on a connected connection. Expected: a protocol violation
    [MQTT-3.1.0-2]: the connection is closed; MQTT 5 may first get DISCONNECT 0x82 Protocol
    Error (§4.13.1), 3.1.1 nothing [MQTT-4.8.0-1]."""
    c = connected_client(broker.addr, level)
    try:
        c.send(connect(unique("again"), level=level))
        assert_closed(c, (PROTOCOL_ERROR,))
    finally:
        c.close()
    assert_healthy(broker, RSS_BOUND_MIB)


@pytest.mark.parametrize("level", [4, 5])
def test_second_connect_cannot_hijack_a_session(broker, level):
    """Attack: a client with will W1 sends a second CONNECT naming a victim's client id, with
    Clean Start 0 and will W2. Expected: only the attacker's connection is closed (MQTT 5:
    DISCONNECT 0x82 first) [MQTT-3.1.0-2]; the victim keeps its connection and subscription (no
    takeover [MQTT-3.1.4-3] happens); W1 is published, the connection having been closed for a
    protocol error [MQTT-3.1.2-8], and W2, from a packet that was refused, never is."""
    tag = unique("hijack")
    will_topic = f"hostile/{tag}/will"
    with (
        connected_client(broker.addr, 4) as observer,
        connected_client(broker.addr, 4, client_id=f"{tag}-victim") as victim,
    ):
        observer.subscribe(will_topic)
        victim.subscribe(f"hostile/{tag}/to-victim")
        attacker = Client(broker.addr, level)
        try:
            attacker.connect(f"{tag}-attacker", will_topic=will_topic, will_payload=b"W1")
            attacker.send(
                connect(
                    f"{tag}-victim",
                    level=level,
                    clean=False,
                    will_topic=will_topic,
                    will_payload=b"W2",
                )
            )
            assert_closed(attacker, (PROTOCOL_ERROR,))
        finally:
            attacker.close()
        will = observer.recv_publish()
        assert (will.topic, will.payload) == (will_topic, b"W1")
        with connected_client(broker.addr, 4) as publisher:
            publisher.publish(f"hostile/{tag}/to-victim", b"still yours")
            publisher.publish(will_topic, MARKER)
        assert observer.until() == [], "something on the will topic after W1 (W2?)"
        assert victim.recv_publish().payload == b"still yours"
        victim.ping()  # not taken over: no DISCONNECT 0x8E, not closed
    assert_healthy(broker, RSS_BOUND_MIB)


def test_takeover_while_the_old_connection_closes_resumed_session():
    """Attack: up to 100 times, a client resumes its session (MQTT 5, Clean Start 0, Session
    Expiry 60 s) from a new connection A at the moment its old connection X breaks the protocol
    (a PINGRESP from a client) and is being closed. Expected: A's first packet is its CONNACK
    [MQTT-3.2.0-1] -- never the DISCONNECT 0x8E Session taken over that was meant for X. (A
    fresh broker: a failure here leaves sessions in a state the other cases should not meet.)"""
    expiry = props(prop(0x11, 60))
    bad: list[str] = []
    trials = 0
    with hostile_broker() as b:
        while trials < 100 and len(bad) < 3:  # 3 are enough to show it
            trials += 1
            cid = unique("resume")
            with Client(b.addr, 5) as x, Client(b.addr, 5) as a:
                x.connect(cid, clean=False, properties=expiry)
                a.send(connect(cid, level=5, clean=False, properties=expiry))
                x.send(b"\xd0\x00")
                first = a.recv()
                if first.type != CONNACK:
                    bad.append(f"trial {trials}: {first!r}")
        assert not bad, (
            f"{len(bad)} of {trials} resumed connections got another packet first: {bad}"
        )
        assert_healthy(b, RSS_BOUND_MIB)


def test_takeover_while_the_old_connection_closes_new_session():
    """Attack: up to 40 times, an MQTT 5 connection X sends CONNECT and DISCONNECT in one write
    and at once an MQTT 3.1.1 connection Y sends CONNECT with X's client id (a takeover
    [MQTT-3.1.4-3] of a connection that is closing). Expected: Y gets its CONNACK within 2 s
    every time; a bystander subscriber still gets every message published meanwhile (one
    client's takeover must not stall the broker's writes to others); nothing is logged as an
    error. (A fresh broker, as above.)"""
    topic = f"hostile/{unique('bystander')}"
    stuck = trials = 0
    with hostile_broker() as b:
        with connected_client(b.addr, 4) as bystander, connected_client(b.addr, 4) as pub:
            bystander.subscribe(topic)
            while trials < 40 and stuck < 3:  # each stuck trial waited 2 s; 3 show it
                trials += 1
                cid = unique("takeover")
                with socket.create_connection(b.addr) as x, Client(b.addr, 4) as y:
                    x.sendall(connect(cid, level=5) + b"\xe0\x00")
                    y.send(connect(cid, level=4))
                    try:
                        y.expect(CONNACK, 2.0)
                    except TimeoutError:
                        stuck += 1
                    pub.publish(topic, b"still flowing")
            pub.publish(topic, MARKER)
            try:
                got = len(bystander.until())
            except TimeoutError:
                got = -1
            assert stuck == 0, f"{stuck} of {trials} connections got no CONNACK within 2 s"
            assert got == trials, f"the bystander got {got} of {trials} messages before the marker"
        assert_healthy(b, RSS_BOUND_MIB)


SERVER_ONLY_PACKETS = [
    pytest.param(b"\x20\x02\x00\x00", b"\x20\x03\x00\x00\x00", id="connack"),
    pytest.param(b"\x90\x03\x00\x01\x00", b"\x90\x04\x00\x01\x00\x00", id="suback"),
    pytest.param(b"\xb0\x02\x00\x01", b"\xb0\x04\x00\x01\x00\x00", id="unsuback"),
    pytest.param(b"\xd0\x00", b"\xd0\x00", id="pingresp"),
]


@pytest.mark.parametrize("level", [4, 5])
@pytest.mark.parametrize("v4,v5", SERVER_ONLY_PACKETS)
def test_client_sends_server_only_packet(broker, level, v4, v5):
    """Attack: a connected client sends a packet that only a server sends (CONNACK, SUBACK,
    UNSUBACK, PINGRESP; MQTT 5 §2.1.2 gives their direction as Server to Client). Expected: a
    protocol violation, the connection is closed [MQTT-4.8.0-1]; MQTT 5 may first get
    DISCONNECT 0x82 Protocol Error, or 0x81 Malformed Packet (§4.13.1)."""
    c = connected_client(broker.addr, level)
    try:
        c.send(v5 if level == 5 else v4)
        assert_closed(c, (PROTOCOL_ERROR, MALFORMED_PACKET))
    finally:
        c.close()
    assert_healthy(broker, RSS_BOUND_MIB)


@pytest.mark.parametrize("data", [p.values[0] for p in SERVER_ONLY_PACKETS])
def test_server_only_packet_instead_of_connect(broker, data):
    """Attack: a server-only packet as the first packet. Expected: closed, no CONNACK 0: the
    first packet must be CONNECT [MQTT-3.1.0-1]."""
    c = Client(broker.addr, 4)
    try:
        c.send(data)
        got = c.wait_closed()
    finally:
        c.close()
    assert all(p.type == CONNACK and p.body[1] != 0 for p in got), f"answered {got!r}"
    assert_healthy(broker, RSS_BOUND_MIB)


def _pair(key: bytes, value: bytes) -> bytes:
    return b"\x26" + mstr(key) + mstr(value)


BAD_WILL_PROPERTIES = [
    # Not will properties at all [MQTT 5 §3.1.3.2: the will property list]; §2.2.2.2: an
    # identifier not valid for the packet is malformed
    pytest.param(props(prop(0x0B, 1)), id="subscription-identifier"),
    pytest.param(props(prop(0x23, 1)), id="topic-alias"),
    pytest.param(props(prop(0x11, 60)), id="session-expiry"),
    pytest.param(props(b"\x7f\x00"), id="unknown-id-0x7f"),
    # "It is a Protocol Error to include the Will Delay Interval more than once" (§3.1.3.2.2)
    pytest.param(props(prop(0x18, 1), prop(0x18, 2)), id="will-delay-twice"),
    pytest.param(props(prop(0x01, 1), prop(0x01, 1)), id="payload-format-twice"),
    # Payload Format Indicator is 0 or 1 (§3.1.3.2.3)
    pytest.param(props(prop(0x01, 2)), id="payload-format-2"),
    # The Response Topic is a Topic Name: no wildcards [MQTT-3.3.2-14 via §3.1.3.2.5]
    pytest.param(props(prop(0x08, "a/#")), id="response-topic-wildcard"),
    # UTF-8 rules [MQTT-1.5.4-1/2]: ill-formed, U+0000
    pytest.param(props(prop(0x03, b"\xff\xfe")), id="content-type-bad-utf8"),
    pytest.param(props(_pair(b"k\x00", b"v")), id="user-property-nul"),
    pytest.param(props(_pair(b"k", b"\xed\xa0\x80")), id="user-property-surrogate"),
    # Lengths that lie: the block, a string in it, a truncated integer, a 5-byte varint
    pytest.param(varint(500) + prop(0x18, 1), id="block-longer-than-packet"),
    pytest.param(props(b"\x03" + u16(400) + b"text/plain"), id="string-past-block"),
    pytest.param(varint(3) + b"\x02" + u16(1), id="four-byte-int-truncated"),
    pytest.param(b"\xff\xff\xff\xff\x01", id="block-length-5-byte-varint"),
    pytest.param(props(b"\x09" + u16(0xFFFF)), id="correlation-data-past-block"),
]


def _assert_refused_will_unpublished(
    broker, packet: bytes, level: int, will_prefix: str, observer: Client
) -> None:
    c = Client(broker.addr, level)
    try:
        c.send(packet)
        got = c.wait_closed()
    finally:
        c.close()
    for p in got:
        assert p.type == CONNACK, f"unexpected {p!r} before close"
        _, rc, _ = parse_connack(p, 5 if len(p.body) > 2 else 4)
        if level < 5:
            # 3.1.1: close without a CONNACK when the CONNECT does not conform [MQTT-3.1.4-1]
            raise AssertionError(f"3.1.1 got CONNACK {rc:#x} for a malformed CONNECT")
        assert rc >= 0x80, f"CONNACK {rc:#x} for a CONNECT with a bad will [MQTT-3.1.4-2]"
    with connected_client(broker.addr, 4) as publisher:
        publisher.publish(f"{will_prefix}/marker", MARKER)
    assert observer.until() == [], "a refused CONNECT's will was published"


@pytest.mark.parametrize("will_props", BAD_WILL_PROPERTIES)
def test_bad_will_properties(broker, will_props):
    """Attack: an MQTT 5 CONNECT whose will properties are invalid (wrong identifier,
    duplicated, out of range, bad UTF-8, lengths that lie). Expected: no session: a CONNACK
    with a reason code of 0x80 or more (0x81 Malformed / 0x82 Protocol Error) or none, then
    the close [MQTT-3.1.4-1/2]; the will is never published; the broker stays healthy."""
    prefix = f"hostile/{unique('badwill')}"
    with connected_client(broker.addr, 4) as observer:
        observer.subscribe(f"{prefix}/#")
        packet = connect(
            unique("bw"),
            level=5,
            will_topic=f"{prefix}/will",
            will_payload=b"W",
            will_props=will_props,
        )
        _assert_refused_will_unpublished(broker, packet, 5, prefix, observer)
    assert_healthy(broker, RSS_BOUND_MIB)


BAD_WILL_FLAGS = [
    # Will QoS 3 [MQTT-3.1.2-14]
    pytest.param({"flags": 0x1E}, True, id="will-qos-3"),
    # Will QoS / Will Retain without the Will Flag [MQTT-3.1.2-13][MQTT-3.1.2-15]
    pytest.param({"flags": 0x0A}, False, id="will-qos-without-flag"),
    pytest.param({"flags": 0x22}, False, id="will-retain-without-flag"),
    # Will Topic: wildcards are not allowed in a Topic Name [MQTT-3.3.2-2] (the will topic is
    # one [MQTT-3.1.3-11 / 3.1.2-9]), nor ill-formed UTF-8 [MQTT-1.5.4-1]
    pytest.param({"topic": "{prefix}/+"}, True, id="will-topic-plus"),
    pytest.param({"topic": "{prefix}/#"}, True, id="will-topic-hash"),
    pytest.param({"topic": b"\xff"}, True, id="will-topic-bad-utf8"),
    # The payload length runs past the packet
    pytest.param({"payload_past_end": True}, True, id="will-payload-past-end"),
]


@pytest.mark.parametrize("level", [4, 5])
@pytest.mark.parametrize("case,with_will", BAD_WILL_FLAGS)
def test_bad_will_flags_or_topic(broker, level, case, with_will):
    """Attack: a CONNECT whose will flags or will topic break the rules. Expected: no session;
    3.1.1 is closed without a CONNACK [MQTT-3.1.4-1], MQTT 5 with a CONNACK of 0x80 or more or
    none; the will is never published."""
    prefix = f"hostile/{unique('badflags')}"
    topic = case.get("topic", "{prefix}/will")
    topic = topic.format(prefix=prefix) if isinstance(topic, str) else topic
    with connected_client(broker.addr, 4) as observer:
        observer.subscribe(f"{prefix}/#")
        kw: dict = {"level": level, "flags": case.get("flags")}
        if with_will:
            kw.update(will_topic=topic, will_payload=b"W")
        packet = connect(unique("bf"), **kw)
        if case.get("payload_past_end"):
            # The will payload's length says 60,000 bytes; the packet ends after 1
            _, body_at = decode_varint(packet, 1)
            body = packet[body_at:]
            assert body.endswith(mstr(b"W"))
            packet = frame(packet[0], body[: -len(mstr(b"W"))] + u16(60000) + b"W")
        _assert_refused_will_unpublished(broker, packet, level, prefix, observer)
    assert_healthy(broker, RSS_BOUND_MIB)


def test_will_with_50000_user_properties_is_kept_whole(broker):
    """Not an attack on the rules, on the size: an MQTT 5 will with 50,000 User Properties
    (about 600 KB, under the 1 MiB maximum) and then a dropped connection. Expected: CONNACK 0,
    and the will is published with its 50,000 User Properties in order [MQTT-3.3.2-18] once the
    connection is dropped without DISCONNECT [MQTT-3.1.2-8]."""
    prefix = f"hostile/{unique('bigwill')}"
    pairs = [(f"k{i}", "v") for i in range(50_000)]
    will_props = props(*(prop(0x26, p) for p in pairs))
    with connected_client(broker.addr, 5) as observer:
        observer.subscribe(f"{prefix}/#")
        c = Client(broker.addr, 5)
        try:
            c.connect(
                unique("bw"), will_topic=f"{prefix}/will", will_payload=b"W", will_props=will_props
            )
        finally:
            c.kill()
        will = observer.recv_publish(timeout=5.0)
        assert will.payload == b"W"
        assert will.properties.get(0x26) == pairs, "will user properties not forwarded whole"
    assert_healthy(broker, RSS_BOUND_MIB)
