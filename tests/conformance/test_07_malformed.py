"""Malformed packets and protocol violations.

Every case asserts that (1) the broker closes the connection -- at MQTT 5 it may first send one
DISCONNECT whose reason code is then checked [MQTT-4.13.1-1]; at 3.1.1 nothing may come first
[MQTT-4.8.0-1] -- and (2) the broker still serves the next client (CONNECT gets CONNACK 0).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from mqtt_raw import (
    CONNACK,
    SUBACK,
    Client,
    Closed,
    assert_closed,
    assert_serves,
    connect,
    frame,
    mstr,
    parse_connack,
    parse_suback,
    prop,
    props,
    publish,
    subscribe,
    u16,
    unsubscribe,
)

MALFORMED = 0x81
PROTOCOL_ERROR = 0x82
TOPIC_FILTER_INVALID = 0x8F
TOPIC_NAME_INVALID = 0x90
TOPIC_ALIAS_INVALID = 0x94
PACKET_TOO_LARGE = 0x95
GENERIC = (MALFORMED, PROTOCOL_ERROR)


def check_closed_and_serving(srv: tuple[str, int], c: Client, codes: tuple[int, ...]) -> None:
    try:
        assert_closed(c, codes)
    finally:
        c.close()
    assert_serves(srv, 4)
    assert_serves(srv, 5)


# --- before / instead of CONNECT ---------------------------------------------------------------

FIRST_PACKET_CASES = [
    pytest.param(publish("a/b", b"x"), id="publish-first"),  # [MQTT-3.1.0-1]
    pytest.param(subscribe(1, [("a/b", 0)]), id="subscribe-first"),
    pytest.param(b"\xc0\x00", id="pingreq-first"),
    pytest.param(b"\xe0\x00", id="disconnect-first"),
    pytest.param(b"\x00\x00", id="type-0"),  # reserved packet type [MQTT 2.1.2]
    pytest.param(b"\xf0\x00", id="auth-first"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="http-request"),
    pytest.param(bytes(range(256)), id="garbage"),
    # CONNECT whose client id string runs past the remaining length.
    pytest.param(
        frame(0x10, mstr(b"MQTT") + b"\x04\x02\x00\x3c" + u16(10) + b"abc"), id="connect-truncated"
    ),
    # CONNECT with one byte left over after the last field [MQTT-3.1.3 payload rules].
    pytest.param(
        frame(0x10, mstr(b"MQTT") + b"\x04\x02\x00\x3c" + mstr(b"abc") + b"\x00"),
        id="connect-trailing-byte",
    ),
    # CONNECT with reserved fixed-header flags [MQTT-2.2.2-2].
    pytest.param(connect("flagged", first_byte=0x11), id="connect-header-flags"),
    # Client id with invalid UTF-8 [MQTT-1.5.4-1].
    pytest.param(connect(b"bad\xff\xfe"), id="connect-clientid-utf8"),
]


@pytest.mark.parametrize("data", FIRST_PACKET_CASES)
def test_first_packet_must_be_a_valid_connect(srv, data):
    """The first packet from the client must be a well-formed CONNECT [MQTT-3.1.0-1]; otherwise
    the server closes the connection. It may send a CONNACK with an error code (MQTT 5
    §4.13.1), never CONNACK 0 and no other packet."""
    c = Client(srv, 4)
    c.send(data)
    try:
        got = c.wait_closed()
    finally:
        c.close()
    for p in got:
        assert p.type == CONNACK, f"unexpected {p!r} before close"
        assert p.body[1] != 0, f"CONNACK 0 for an invalid first packet: {p!r}"
    assert_serves(srv, 4)


@pytest.mark.parametrize("level", [6, 0, 2, 255])
def test_unsupported_protocol_level(srv, level):
    """An unsupported protocol level gets CONNACK 0x01 (unacceptable protocol version) and then
    the connection is closed [MQTT-3.1.2-2]."""
    data = bytearray(connect("badlevel", level=4))
    assert data[4:9] == b"MQTT\x04"
    data[8] = level  # a 3.1.1 CONNECT body with another Protocol Level byte
    c = Client(srv, 4)
    c.send(bytes(data))
    try:
        p = c.expect(CONNACK)
        assert len(p.body) == 2, f"CONNACK for an unknown level is in 3.1.1 format: {p!r}"
        assert p.body == b"\x00\x01", f"expected CONNACK 0x01, got {p!r}"
        assert c.wait_closed() == []
    finally:
        c.close()
    assert_serves(srv, 4)


@pytest.mark.parametrize(
    "name,level",
    [(b"MQTX", 4), (b"mqtt", 4), (b"MQTT", 3), (b"MQIsdp", 4), (b"MQIsdp", 5), (b"", 4)],
)
def test_bad_protocol_name(srv, name, level):
    """A protocol name that does not match the level ("MQTT" for 4/5, "MQIsdp" for 3): the
    server MAY disconnect [MQTT-3.1.2-1] and must not accept the connection; a CONNACK, if any,
    carries an error code (0x01 for 3.1.1)."""
    c = Client(srv, 4)
    c.send(connect("badname", level=level, protocol_name=name))
    try:
        got = c.wait_closed()
    finally:
        c.close()
    for p in got:
        assert p.type == CONNACK, f"unexpected {p!r} before close"
        _, rc, _ = parse_connack(p, 5 if len(p.body) > 2 else 4)
        assert rc in (0x01, 0x84, 0x81, 0x82), f"CONNACK {rc:#x} for a bad protocol name"
    assert_serves(srv, 4)


# --- after a successful CONNECT ----------------------------------------------------------------


def _pub(topic: bytes, qos: int = 0, pid: int | None = None, dup: bool = False) -> Callable:
    return lambda lv: publish(topic, b"x", qos=qos, pid=pid, dup=dup, level=lv)


def _raw(data: bytes) -> Callable:
    return lambda lv: data


def _v(v4: bytes, v5: bytes) -> Callable:
    return lambda lv: v5 if lv >= 5 else v4


def deviation(reason: str) -> pytest.MarkDecorator:
    return pytest.mark.mosquitto_deviation(reason)


V4_ONLY = pytest.mark.v4_only  # read by test_malformed_after_connect


AFTER_CONNECT_CASES = [
    # id, builder(level) -> bytes, extra MQTT 5 DISCONNECT codes allowed besides 0x81/0x82
    pytest.param(lambda lv: connect("again", level=lv), (), id="second-connect"),  # [MQTT-3.1.0-2]
    # Reserved fixed-header flags [MQTT-2.2.2-1/2].
    pytest.param(
        _raw(b"\xc1\x00"),
        (),
        id="pingreq-flags",
        marks=deviation("Mosquitto 2.0.11 ignores the reserved flag bits of PINGREQ"),
    ),
    pytest.param(
        lambda lv: subscribe(1, [("a", 0)], level=lv, first_byte=0x80), (), id="subscribe-flags-0"
    ),  # [MQTT-3.8.1-1]
    pytest.param(
        lambda lv: unsubscribe(1, ["a"], level=lv, first_byte=0xA0), (), id="unsubscribe-flags-0"
    ),  # [MQTT-3.10.1-1]
    pytest.param(_raw(b"\x60\x02\x00\x01"), (), id="pubrel-flags-0"),  # [MQTT-3.6.1-1]
    pytest.param(
        _raw(b"\x42\x02\x00\x01"),
        (),
        id="puback-flags-2",
        marks=deviation("Mosquitto 2.0.11 ignores the reserved flag bits of PUBACK"),
    ),
    # PUBLISH flags and packet ids.
    pytest.param(
        _v(frame(0x36, mstr(b"a") + u16(1) + b"x"), frame(0x36, mstr(b"a") + u16(1) + b"\x00x")),
        (),
        id="publish-qos3",
    ),  # [MQTT-3.3.1-4]
    pytest.param(_pub(b"a", qos=1, pid=0), (), id="publish-qos1-pid0"),  # [MQTT-2.2.1-3]
    pytest.param(_pub(b"a", qos=2, pid=0), (), id="publish-qos2-pid0"),
    pytest.param(lambda lv: subscribe(0, [("a", 0)], level=lv), (), id="subscribe-pid0"),
    pytest.param(lambda lv: unsubscribe(0, ["a"], level=lv), (), id="unsubscribe-pid0"),
    pytest.param(
        _pub(b"a", qos=0, dup=True),
        (),
        id="publish-qos0-dup",
        marks=deviation("Mosquitto 2.0.11 accepts DUP=1 on a QoS 0 PUBLISH [MQTT-3.3.1-2]"),
    ),
    # Topic names: UTF-8 [MQTT-1.5.4-1/2], no wildcards [MQTT-3.3.2-2], not empty [MQTT-4.7.3-1].
    pytest.param(_pub(b"a/\xff"), (TOPIC_NAME_INVALID,), id="topic-invalid-byte"),
    pytest.param(_pub(b"a/\xc0\x80"), (TOPIC_NAME_INVALID,), id="topic-overlong-nul"),
    pytest.param(_pub(b"a/\xed\xa0\x80"), (TOPIC_NAME_INVALID,), id="topic-surrogate"),
    pytest.param(_pub(b"a/\xe2\x82"), (TOPIC_NAME_INVALID,), id="topic-truncated-utf8"),
    pytest.param(_pub(b"a\x00b"), (TOPIC_NAME_INVALID,), id="topic-u0000"),
    pytest.param(_pub(b"a/+"), (TOPIC_NAME_INVALID,), id="topic-plus"),
    pytest.param(_pub(b"a/#"), (TOPIC_NAME_INVALID,), id="topic-hash"),
    pytest.param(_pub(b"#"), (TOPIC_NAME_INVALID,), id="topic-hash-only"),
    pytest.param(_pub(b"sp+ort"), (TOPIC_NAME_INVALID,), id="topic-plus-inside-level"),
    pytest.param(_pub(b""), (TOPIC_NAME_INVALID,), id="topic-empty"),
    # Subscription filters: UTF-8 and U+0000.
    pytest.param(
        lambda lv: subscribe(1, [(b"a/\xff", 0)], level=lv),
        (TOPIC_FILTER_INVALID,),
        id="filter-invalid-utf8",
    ),
    pytest.param(
        lambda lv: subscribe(1, [(b"a\x00", 0)], level=lv),
        (TOPIC_FILTER_INVALID,),
        id="filter-u0000",
    ),
    pytest.param(
        lambda lv: unsubscribe(1, [b"a/\xff"], level=lv),
        (TOPIC_FILTER_INVALID,),
        id="unsub-filter-invalid-utf8",
    ),
    # SUBSCRIBE / UNSUBSCRIBE payload rules.
    pytest.param(
        lambda lv: subscribe(1, [], level=lv), (), id="subscribe-no-filter"
    ),  # [MQTT-3.8.3-3]
    pytest.param(
        lambda lv: unsubscribe(1, [], level=lv), (), id="unsubscribe-no-filter"
    ),  # [MQTT-3.10.3-2]
    pytest.param(
        lambda lv: subscribe(1, [("a", 3)], level=lv), (), id="subscribe-qos3"
    ),  # [MQTT-3-8.3-4]
    pytest.param(
        lambda lv: subscribe(1, [("a", 0xC0)], level=lv), (), id="subscribe-reserved-bits"
    ),  # [MQTT-3.8.3-5]
    pytest.param(
        _v(subscribe(1, [("a", 0x04)]), subscribe(1, [("a", 0x30)], level=5)),
        (),
        id="subscribe-options-v4bit2-v5rh3",
    ),
    # Remaining-length problems.
    pytest.param(
        _raw(b"\x30\xff\xff\xff\xff\x01"), (), id="remaining-length-5-bytes"
    ),  # [MQTT-1.5.5]
    # PINGREQ has neither variable header nor payload [MQTT 3.12]: a body is malformed.
    pytest.param(
        _raw(b"\xc0\x01\x00"),
        (),
        id="pingreq-with-body",
        marks=deviation("Mosquitto 2.0.11 answers a PINGREQ that has a body"),
    ),
    pytest.param(_raw(frame(0x30, u16(10) + b"abc")), (), id="publish-topic-past-end"),
    pytest.param(_raw(frame(0x32, mstr(b"abc") + b"\x00")), (), id="publish-qos1-no-room-for-pid"),
    pytest.param(_raw(frame(0x82, u16(1) + mstr(b"abc"))), (), id="subscribe-missing-options-v4"),
    pytest.param(
        _raw(frame(0x82, u16(1) + u16(10) + b"abc\x00")), (), id="subscribe-filter-past-end"
    ),
    pytest.param(_raw(b"\x40\x01\x00"), (), id="puback-too-short"),
    # 3.1.1 PUBACK has remaining length 2 (at MQTT 5 three bytes are valid: not tested there).
    pytest.param(
        _raw(b"\x40\x03\x00\x01\x00"),
        (),
        id="puback-3-bytes-v4",
        marks=[V4_ONLY, deviation("Mosquitto 2.0.11 accepts a 3-byte PUBACK from a 3.1.1 client")],
    ),
    # Server-to-client packets sent by a client (protocol violation).
    pytest.param(_raw(b"\x20\x02\x00\x00"), (), id="client-sends-connack"),
    pytest.param(
        _raw(b"\x90\x03\x00\x01\x00"),
        (),
        id="client-sends-suback",
        marks=pytest.mark.mosquitto_deviation_at(
            (4,), "Mosquitto 2.0.11 ignores a SUBACK sent by a 3.1.1 client"
        ),
    ),
    pytest.param(
        _raw(b"\xb0\x02\x00\x01"),
        (),
        id="client-sends-unsuback",
        marks=pytest.mark.mosquitto_deviation_at(
            (4,), "Mosquitto 2.0.11 ignores an UNSUBACK sent by a 3.1.1 client"
        ),
    ),
    pytest.param(
        _raw(b"\xd0\x00"),
        (),
        id="client-sends-pingresp",
        marks=deviation("Mosquitto 2.0.11 accepts a PINGRESP from a client"),
    ),
    pytest.param(_raw(b"\xf0\x00"), (), id="auth-v4", marks=V4_ONLY),  # no AUTH before MQTT 5
]


@pytest.mark.parametrize("builder,codes", AFTER_CONNECT_CASES)
@pytest.mark.parametrize("level", [4, 5])
def test_malformed_after_connect(srv, uid, level, builder, codes, request):
    """A malformed packet or protocol violation after CONNECT: the server closes the connection
    (MQTT 5: optionally after DISCONNECT 0x81/0x82 or the specific code)."""
    if level >= 5 and request.node.get_closest_marker("v4_only"):
        pytest.skip("valid or tested differently at MQTT 5")
    c = Client(srv, level)
    c.connect(f"mal-{uid}")
    c.send(builder(level))
    check_closed_and_serving(srv, c, GENERIC + codes)


def test_v5_auth_without_method(srv, uid):
    """MQTT 5: an AUTH packet when the CONNECT had no Authentication Method is a protocol error
    [MQTT-4.12.0-1 / 3.15]."""
    c = Client(srv, 5)
    c.connect(f"auth-{uid}")
    c.send(b"\xf0\x02\x18\x00")  # AUTH 0x18 Continue authentication, empty properties
    check_closed_and_serving(srv, c, GENERIC + (0x8C,))


@pytest.mark.parametrize("level", [4, 5])
def test_oversize_packet_rejected_from_fixed_header(srv, uid, level):
    """A PUBLISH announcing 268,435,455 bytes (more than the broker's maximum packet size) is
    rejected as soon as the fixed header is read: the connection closes without the broker
    waiting for the body (MQTT 5: DISCONNECT 0x95 Packet too large MQTT 5 §3.2.2.3.6, §4.13)."""
    c = Client(srv, level)
    c.connect(f"big-{uid}")
    c.send(b"\x30\xff\xff\xff\x7f" + mstr(b"big/topic"))
    check_closed_and_serving(srv, c, GENERIC + (PACKET_TOO_LARGE,))


# --- MQTT 5 properties -------------------------------------------------------------------------

V5_PROPERTY_CASES = [
    # Duplicate property that may appear only once -> Protocol Error [MQTT 5 §2.2.2.2].
    pytest.param(
        lambda uid: connect(f"dup-{uid}", level=5, properties=props(prop(0x11, 1), prop(0x11, 2))),
        True,
        id="connect-duplicate-session-expiry",
    ),
    # Unknown property identifier -> Malformed Packet.
    pytest.param(
        lambda uid: connect(f"unk-{uid}", level=5, properties=b"\x02\x7f\x00"),
        True,
        id="connect-unknown-property",
    ),
    # Property not valid for the packet (Topic Alias in CONNECT).
    pytest.param(
        lambda uid: connect(f"wrong-{uid}", level=5, properties=props(prop(0x23, 1))),
        True,
        id="connect-topic-alias-property",
    ),
    # Property block longer than the packet.
    pytest.param(
        lambda uid: connect(f"long-{uid}", level=5, properties=b"\x20\x11\x00"),
        True,
        id="connect-property-length-past-end",
    ),
    # Receive Maximum 0 is a protocol error [MQTT 5 §3.1.2.11.3].
    pytest.param(
        lambda uid: connect(f"rm0-{uid}", level=5, properties=props(prop(0x21, 0))),
        True,
        id="connect-receive-maximum-0",
    ),
    # PUBLISH from a client must not carry a Subscription Identifier [MQTT-3.3.4-6].
    pytest.param(
        lambda uid: publish("a", b"x", level=5, properties=props(prop(0x0B, 1))),
        False,
        id="publish-subscription-identifier",
        marks=deviation(
            "Mosquitto 2.0.11 accepts a Subscription Identifier in a client PUBLISH "
            "(eclipse-mosquitto/mosquitto#3319)"
        ),
    ),
    # Topic Alias 0 is not permitted [MQTT-3.3.2-8].
    pytest.param(
        lambda uid: publish("a", b"x", level=5, properties=props(prop(0x23, 0))),
        False,
        id="publish-topic-alias-0",
    ),
    # Empty topic with an alias never set -> Protocol Error [MQTT 5 §3.3.2.3.4].
    pytest.param(
        lambda uid: publish("", b"x", level=5, properties=props(prop(0x23, 1))),
        False,
        id="publish-unknown-topic-alias",
    ),
    # Duplicate Payload Format Indicator in PUBLISH.
    pytest.param(
        lambda uid: publish("a", b"x", level=5, properties=props(prop(0x01, 0), prop(0x01, 0))),
        False,
        id="publish-duplicate-property",
    ),
    # Subscription Identifier 0 in SUBSCRIBE is a protocol error [MQTT 5 §3.8.2.1.2].
    pytest.param(
        lambda uid: subscribe(1, [("a", 0)], level=5, properties=props(prop(0x0B, 0))),
        False,
        id="subscribe-subscription-identifier-0",
    ),
]


@pytest.mark.parametrize("builder,in_connect", V5_PROPERTY_CASES)
def test_v5_bad_properties(srv, uid, builder, in_connect):
    """Invalid MQTT 5 properties: the connection is closed (CONNECT errors may get a CONNACK
    with a code >= 0x80 first; others a DISCONNECT with 0x81/0x82/0x94/0x95)."""
    c = Client(srv, 5)
    try:
        if in_connect:
            c.send(builder(uid))
            got = c.wait_closed()
            for p in got:
                assert p.type == CONNACK, f"unexpected {p!r} before close"
                _, rc, _ = parse_connack(p, 5)
                assert rc >= 0x80, f"CONNACK {rc:#x} for a bad CONNECT"
        else:
            c.connect(f"props-{uid}")
            c.send(builder(uid))
            assert_closed(c, GENERIC + (TOPIC_ALIAS_INVALID, 0xA1))
    finally:
        c.close()
    assert_serves(srv, 5)


# --- invalid topic filters ---------------------------------------------------------------------


@pytest.mark.parametrize("bad_filter", ["a/#/b", "a/b#", "a+/b", "#/a", "a/+b", ""])
@pytest.mark.parametrize("level", [4, 5])
def test_invalid_topic_filter(srv, uid, level, bad_filter):
    """`#` must be last and alone in its level, `+` alone in its level [MQTT-4.7.1-1/2/3];
    filters are at least one character [MQTT-4.7.3-1]. Violating them is a protocol error,
    so the server closes the connection [MQTT-4.8.0-1 / MQTT-4.13.1-1] (MQTT 5: optionally
    DISCONNECT 0x81/0x82/0x8F). Tolerated alternative: a SUBACK refusing that filter (3.1.1:
    0x80; MQTT 5: 0x8F Topic Filter invalid or another code >= 0x80) while the others in the
    same SUBSCRIBE are granted -- either way the filter must never be granted."""
    good = f"ok/{uid}"
    c = Client(srv, level)
    c.connect(f"flt-{uid}")
    c.send(subscribe(3, [(good, 1), (bad_filter, 1)], level=level))
    try:
        try:
            p = c.recv()
        except (Closed, TimeoutError):  # closed (or reset) right away: the spec's answer
            p = None
        if p is None or p.type != SUBACK:
            got = [p] if p is not None else []
            if p is not None:
                got += c.wait_closed()
            else:
                c.wait_closed()
            for q in got:
                assert q.type == 14 and level >= 5, f"unexpected {q!r} before close"
                assert q.body[0] in GENERIC + (TOPIC_FILTER_INVALID,), f"DISCONNECT {q!r}"
        else:
            pid, codes = parse_suback(p, level)
            assert pid == 3
            assert codes[0] == 1, "the valid filter in the same SUBSCRIBE is still granted"
            if level < 5:
                assert codes[1] == 0x80, f"3.1.1 failure code is 0x80, got {codes[1]:#x}"
            else:
                assert codes[1] >= 0x80, f"invalid filter granted ({codes[1]:#x})"
            c.ping()  # the connection is still usable
    finally:
        c.close()
    assert_serves(srv, level)


@pytest.mark.parametrize("packet", ["subscribe", "unsubscribe"])
@pytest.mark.parametrize("bad_filter", ["#/x", "", "a/b#", "+a"])
@pytest.mark.parametrize("level", [4, 5])
def test_invalid_filter_closes_the_connection(srv, uid, level, bad_filter, packet):
    """mqttd's answer within the latitude the test above allows, and Mosquitto's: a filter that
    breaks [MQTT-4.7.1-1] or [MQTT-4.7.3-1] makes the SUBSCRIBE / UNSUBSCRIBE malformed, so the
    connection is closed [MQTT-4.8.0-1] (MQTT 5: DISCONNECT 0x81 first [MQTT-4.13.1-1]). No
    SUBACK refusing just that filter, and the valid filter beside it is not subscribed."""
    good = f"ok/{uid}"
    c = Client(srv, level)
    try:
        c.connect(f"bf-{uid}")
        filters = [(good, 1), (bad_filter, 1)]
        if packet == "subscribe":
            c.send(subscribe(3, filters, level=level))
        else:
            c.send(unsubscribe(3, [f for f, _ in filters], level=level))
        assert_closed(c, (MALFORMED,))
    finally:
        c.close()
    if packet == "subscribe":
        # Nothing of that SUBSCRIBE was applied: its client's session ended with it (clean
        # session), and a new subscriber to the valid filter is the only one served.
        with Client(srv, level) as sub, Client(srv, level) as pub:
            sub.connect(f"bf2-{uid}")
            sub.subscribe(good, 1)
            pub.connect(f"bf3-{uid}")
            pub.publish(good, b"x", qos=1)
            assert sub.recv_publish().payload == b"x"
    assert_serves(srv, level)


@pytest.mark.parametrize("level", [4, 5])
def test_unsubscribe_invalid_filter(srv, uid, level):
    """UNSUBSCRIBE with an invalid filter: close (MQTT 5 may answer UNSUBACK 0x8F instead)."""
    c = Client(srv, level)
    c.connect(f"uflt-{uid}")
    c.send(unsubscribe(4, ["a/#/b"], level=level))
    try:
        try:
            p = c.recv()
        except (Closed, TimeoutError):
            p = None
        if p is not None and p.type == 11 and level >= 5:
            pid, codes = parse_suback(p, level, 11)
            assert (pid, codes) == (4, [TOPIC_FILTER_INVALID])
            c.ping()
        else:
            got = ([p] if p is not None else []) + (c.wait_closed() if p is not None else [])
            if p is None:
                c.wait_closed()
            for q in got:
                assert q.type == 14 and level >= 5, f"unexpected {q!r} before close"
                assert q.body[0] in GENERIC + (TOPIC_FILTER_INVALID,), f"DISCONNECT {q!r}"
    finally:
        c.close()
    assert_serves(srv, level)
