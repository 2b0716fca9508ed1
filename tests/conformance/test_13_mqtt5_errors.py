"""MQTT 5.0 error table: the exact packet that triggers each error and the reason code the
server answers with.

After CONNECT the server "SHOULD send a DISCONNECT packet containing the reason code before
closing the Network Connection" [MQTT-4.13.1-1]; these tests hold it to that and check the
code. For an error in CONNECT it "MAY send a CONNACK packet containing the Reason Code" (§4.13.1):
closing without one is accepted, a CONNACK with another code is not.

Malformed Packet (0x81) vs Protocol Error (0x82) follows the definitions of §4.13.1 and the text
of each property: "A Control Packet which contains an Identifier which is not valid for its
packet type, or contains a value not of the specified data type, is a Malformed Packet"
(§2.2.2.2); "It is a Protocol Error to include the <property> more than once" (every property
except User Property, and Subscription Identifier in a server PUBLISH).

Codes whose trigger is tested elsewhere: 0x93 in test_12, 0x94 in test_11, 0x95 in test_10,
Authentication Data without Authentication Method in test_10.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from mqtt5_util import (
    C5,
    CONTENT_TYPE,
    CORRELATION_DATA,
    MALFORMED,
    MAXIMUM_PACKET_SIZE,
    MAXIMUM_QOS,
    MESSAGE_EXPIRY,
    PAYLOAD_FORMAT,
    PROTOCOL_ERROR,
    QOS_NOT_SUPPORTED,
    QUOTA_EXCEEDED,
    REASON_STRING,
    RECEIVE_MAXIMUM,
    REQUEST_PROBLEM_INFO,
    REQUEST_RESPONSE_INFO,
    RESPONSE_TOPIC,
    RETAIN_AVAILABLE,
    RETAIN_NOT_SUPPORTED,
    SERVER_KEEP_ALIVE,
    SESSION_EXPIRY,
    SUBSCRIPTION_ID,
    TOPIC_ALIAS,
    TOPIC_ALIAS_MAXIMUM,
    TOPIC_NAME_INVALID,
    USER_PROPERTY,
    WILL_DELAY,
    custom_broker,
    expect_connect_refused,
    expect_disconnect,
    v5,
)
from mqtt_raw import (
    PUBACK,
    SUBACK,
    UNSUBACK,
    connect,
    frame,
    mstr,
    prop,
    props,
    publish,
    subscribe,
    u16,
    unsubscribe,
)

M, P = MALFORMED, PROTOCOL_ERROR


def mosq(reason: str) -> pytest.MarkDecorator:
    return pytest.mark.mosquitto_deviation(reason)


NO_DISCONNECT = "Mosquitto 2.0.11 closes without the DISCONNECT it SHOULD send [MQTT-4.13.1-1]"
SAYS_MALFORMED = (
    "Mosquitto 2.0.11 sends DISCONNECT 0x81 Malformed Packet where the spec names a Protocol Error"
)
PAYLOAD_FORMAT_2 = "Mosquitto 2.0.11 accepts Payload Format Indicator 2 (only 0 and 1 are defined)"
RESPONSE_WILDCARD = "Mosquitto 2.0.11 accepts a Response Topic with wildcards [MQTT-3.3.2-14]"


# --- errors in CONNECT -------------------------------------------------------------------------


def _c(*p: bytes, **kw: object) -> Callable[[str], bytes]:
    return lambda cid: connect(cid, level=5, properties=props(*p), **kw)  # type: ignore[arg-type]


CONNECT_CASES = [
    # Duplicates: "It is a Protocol Error to include the X more than once" (§3.1.2.11.x).
    pytest.param(
        _c(prop(SESSION_EXPIRY, 1), prop(SESSION_EXPIRY, 1)), (P,), id="dup-session-expiry"
    ),
    pytest.param(
        _c(prop(RECEIVE_MAXIMUM, 5), prop(RECEIVE_MAXIMUM, 5)), (P,), id="dup-receive-max"
    ),
    pytest.param(
        _c(prop(MAXIMUM_PACKET_SIZE, 999), prop(MAXIMUM_PACKET_SIZE, 999)),
        (P,),
        id="dup-max-packet",
    ),
    pytest.param(
        _c(prop(TOPIC_ALIAS_MAXIMUM, 2), prop(TOPIC_ALIAS_MAXIMUM, 2)), (P,), id="dup-alias-max"
    ),
    pytest.param(
        _c(prop(REQUEST_PROBLEM_INFO, 1), prop(REQUEST_PROBLEM_INFO, 1)),
        (P,),
        id="dup-problem-info",
    ),
    # Values the spec forbids.
    pytest.param(_c(prop(RECEIVE_MAXIMUM, 0)), (P,), id="receive-maximum-0"),  # §3.1.2.11.3
    # §3.1.2.11.4
    pytest.param(_c(prop(MAXIMUM_PACKET_SIZE, 0)), (P,), id="maximum-packet-size-0"),
    pytest.param(_c(prop(REQUEST_RESPONSE_INFO, 2)), (P,), id="request-response-info-2"),  # .6
    pytest.param(_c(prop(REQUEST_PROBLEM_INFO, 2)), (P,), id="request-problem-info-2"),  # .7
    # Properties not valid in CONNECT: Malformed Packet (§2.2.2.2).
    pytest.param(_c(prop(TOPIC_ALIAS, 1)), (M,), id="topic-alias-in-connect"),
    pytest.param(_c(prop(SERVER_KEEP_ALIVE, 5)), (M,), id="server-keep-alive-in-connect"),
    pytest.param(_c(prop(SUBSCRIPTION_ID, 1)), (M,), id="subscription-id-in-connect"),
    pytest.param(_c(prop(REASON_STRING, "no")), (M,), id="reason-string-in-connect"),
    pytest.param(
        lambda cid: connect(cid, level=5, properties=b"\x02\x7f\x00"), (M,), id="unknown-id"
    ),
    # Will Properties [§3.1.3.2]: duplicates, and a property that is not a Will Property.
    pytest.param(
        _c(will_topic="w", will_props=props(prop(WILL_DELAY, 1), prop(WILL_DELAY, 1))),
        (P,),
        id="dup-will-delay",
    ),
    pytest.param(
        _c(will_topic="w", will_props=props(prop(SESSION_EXPIRY, 1))),
        (M,),
        id="session-expiry-in-will-props",
    ),
]


@pytest.mark.parametrize("builder,codes", CONNECT_CASES)
def test_connect_error(srv, uid, builder, codes):
    """A CONNECT breaking a property rule is refused and the connection closed
    [MQTT-3.1.4-1, MQTT-4.13.1-1]; a CONNACK, if sent, carries the code for that rule."""
    c = C5(srv)
    c.send(builder(f"ce-{uid}"))
    expect_connect_refused(c, codes)


def test_repeated_user_properties_are_not_an_error(srv, uid):
    """User Property is the one property that may appear more than once (§3.1.2.11.8): the same
    name twice is fine."""
    with C5(srv) as c:
        c.open(f"up-{uid}", prop(USER_PROPERTY, ("k", "1")), prop(USER_PROPERTY, ("k", "1")))
        c.ping()


# --- errors after CONNECT ----------------------------------------------------------------------


def _p(*p: bytes, topic: bytes = b"e/t", qos: int = 1, payload: bytes = b"x") -> bytes:
    return publish(topic, payload, qos=qos, pid=1 if qos else None, level=5, properties=props(*p))


AFTER_CASES = [
    # PUBLISH property duplicates (§3.3.2.3.x): Protocol Error.
    pytest.param(
        _p(prop(MESSAGE_EXPIRY, 9), prop(MESSAGE_EXPIRY, 9)),
        (P,),
        id="dup-expiry",
        marks=mosq(NO_DISCONNECT),
    ),
    pytest.param(
        _p(prop(CONTENT_TYPE, "a"), prop(CONTENT_TYPE, "a")),
        (P,),
        id="dup-content-type",
        marks=mosq(NO_DISCONNECT),
    ),
    pytest.param(
        _p(prop(RESPONSE_TOPIC, "r"), prop(RESPONSE_TOPIC, "r")),
        (P,),
        id="dup-response",
        marks=mosq(NO_DISCONNECT),
    ),
    pytest.param(
        _p(prop(CORRELATION_DATA, b"c"), prop(CORRELATION_DATA, b"c")),
        (P,),
        id="dup-correlation",
        marks=mosq(NO_DISCONNECT),
    ),
    pytest.param(
        _p(prop(TOPIC_ALIAS, 1), prop(TOPIC_ALIAS, 1)),
        (P,),
        id="dup-topic-alias",
        marks=mosq(NO_DISCONNECT),
    ),
    # Properties not valid in PUBLISH: Malformed Packet (§2.2.2.2).
    pytest.param(_p(prop(TOPIC_ALIAS_MAXIMUM, 5)), (M,), id="topic-alias-maximum-in-publish"),
    pytest.param(_p(prop(SESSION_EXPIRY, 5)), (M,), id="session-expiry-in-publish"),
    pytest.param(_p(prop(REASON_STRING, "r")), (M,), id="reason-string-in-publish"),
    pytest.param(_p(prop(MAXIMUM_QOS, 1)), (M,), id="maximum-qos-in-publish"),
    # Payload Format Indicator has the values 0 and 1 only (§3.3.2.3.2): another value is data
    # "not allowed by the protocol specification", a Protocol Error (§4.13.1), or not of the
    # property's type, a Malformed Packet (§2.2.2.2).
    pytest.param(
        _p(prop(PAYLOAD_FORMAT, 2)), (M, P), id="payload-format-2", marks=mosq(PAYLOAD_FORMAT_2)
    ),
    # UTF-8 rules for property strings [MQTT-1.5.4-1, MQTT-1.5.7-1, MQTT-3.3.2-19]: malformed.
    pytest.param(
        _p(prop(CONTENT_TYPE, b"\xff\xfe")),
        (M,),
        id="content-type-bad-utf8",
        marks=mosq(NO_DISCONNECT),
    ),
    pytest.param(
        _p(prop(RESPONSE_TOPIC, b"a\x00b")),
        (M,),
        id="response-topic-u0000",
        marks=mosq(NO_DISCONNECT),
    ),
    pytest.param(
        _p(prop(USER_PROPERTY, ("k", "v")), b"\x26\x00\x01\xff\x00\x00"),
        (M,),
        id="user-property-bad-utf8",
        marks=mosq(NO_DISCONNECT),
    ),
    # Response Topic MUST NOT contain wildcards [MQTT-3.3.2-14]: a Protocol Error (§4.13.1).
    pytest.param(
        _p(prop(RESPONSE_TOPIC, "reply/#")),
        (P, TOPIC_NAME_INVALID),
        id="response-topic-wildcard",
        marks=mosq(RESPONSE_WILDCARD),
    ),
    # A Subscription Identifier from the client [MQTT-3.3.4-6].
    pytest.param(
        _p(prop(SUBSCRIPTION_ID, 1)),
        (P,),
        id="subscription-id-in-publish",
        marks=mosq("Mosquitto 2.0.11 accepts it (see test_07)"),
    ),
    # PUBLISH QoS 3: "Use DISCONNECT with Reason Code 0x81 (Malformed Packet)" [MQTT-3.3.1-4].
    pytest.param(frame(0x36, mstr(b"e/t") + u16(1) + b"\x00x"), (M,), id="publish-qos3"),
    # SUBSCRIBE.
    pytest.param(
        subscribe(1, [("e/t", 1)], level=5, properties=props(prop(PAYLOAD_FORMAT, 1))),
        (M,),
        id="payload-format-in-subscribe",
    ),
    pytest.param(
        subscribe(1, [("e/t", 0xC1)], level=5), (M,), id="subscribe-reserved-bits"
    ),  # [MQTT-3.8.3-5] "MUST treat a SUBSCRIBE packet as malformed"
    pytest.param(
        subscribe(1, [("e/t", 0x31)], level=5),
        (P,),
        id="retain-handling-3",
        marks=mosq(SAYS_MALFORMED),
    ),  # §3.8.3.1 "It is a Protocol Error to send a Retain Handling value of 3"
    pytest.param(
        subscribe(1, [], level=5), (P,), id="subscribe-no-filter", marks=mosq(SAYS_MALFORMED)
    ),  # [MQTT-3.8.3-2] "A SUBSCRIBE packet with no Payload is a Protocol Error"
    pytest.param(
        subscribe(1, [("e/t", 1)], level=5, first_byte=0x80), (M,), id="subscribe-header-flags"
    ),  # [MQTT-3.8.1-1] "MUST treat any other value as malformed"
    # UNSUBSCRIBE.
    pytest.param(
        frame(0xA2, u16(1) + props(prop(SUBSCRIPTION_ID, 1)) + mstr(b"e/t")),
        (M,),
        id="subscription-id-in-unsubscribe",
    ),
    pytest.param(
        unsubscribe(1, [], level=5), (P,), id="unsubscribe-no-filter", marks=mosq(SAYS_MALFORMED)
    ),  # [MQTT-3.10.3-2] "An UNSUBSCRIBE packet with no Payload is a Protocol Error"
    # Fixed-header reserved bits [MQTT-2.1.3-1]: PUBREL [MQTT-3.6.1-1] and DISCONNECT
    # [MQTT-3.14.1-1] ("If they are not zero it sends a DISCONNECT packet with a Reason code of
    # 0x81").
    pytest.param(frame(0x60, u16(1)), (M,), id="pubrel-header-flags", marks=mosq(NO_DISCONNECT)),
    pytest.param(
        b"\xe1\x00",
        (M,),
        id="disconnect-header-flags",
        marks=mosq("Mosquitto 2.0.11 closes without the DISCONNECT 0x81 of [MQTT-3.14.1-1]"),
    ),
    # Packets only a server sends; a second CONNECT [MQTT-3.1.0-2].
    pytest.param(
        frame(0x20, b"\x00\x00\x00"), (M, P), id="client-sends-connack", marks=mosq(NO_DISCONNECT)
    ),
    pytest.param(
        connect("again", level=5), (P,), id="second-connect", marks=mosq(NO_DISCONNECT)
    ),  # "MUST process a second CONNECT packet ... as a Protocol Error"
]


@pytest.mark.parametrize("data,codes", AFTER_CASES)
def test_error_after_connect(srv, uid, data, codes):
    """Each packet is sent on an accepted MQTT 5 connection; the server answers DISCONNECT with
    the listed reason code and closes [MQTT-4.13.1-1]."""
    with v5(srv, f"ae-{uid}") as c:
        c.send(data)
        expect_disconnect(c, codes)


def test_allowed_properties_are_not_errors(srv, uid):
    """Control for the table above: the same packets with properties that are allowed are
    accepted -- SUBSCRIBE and UNSUBSCRIBE with User Properties (§3.8.2.1.3, §3.10.2.1.2), a
    PUBLISH with every PUBLISH property a client may send."""
    with v5(srv, f"ok-{uid}") as c:
        c.send(
            subscribe(1, [("ok/t", 1)], level=5, properties=props(prop(USER_PROPERTY, ("a", "b"))))
        )
        c.expect(SUBACK)
        c.send(frame(0xA2, u16(2) + props(prop(USER_PROPERTY, ("a", "b"))) + mstr(b"ok/t")))
        c.expect(UNSUBACK)
        c.send(
            _p(
                prop(PAYLOAD_FORMAT, 1),
                prop(MESSAGE_EXPIRY, 9),
                prop(TOPIC_ALIAS, 1),
                prop(RESPONSE_TOPIC, "r"),
                prop(CORRELATION_DATA, b"c"),
                prop(USER_PROPERTY, ("k", "v")),
                prop(USER_PROPERTY, ("k", "v")),
                prop(CONTENT_TYPE, "t"),
            )
        )
        assert c.expect(PUBACK).body[:2] == b"\x00\x01"
        c.ping()


# --- 0x9A Retain not supported, 0x9B QoS not supported (only a broker configured so) -------------


@pytest.fixture(scope="module")
def no_retain():
    with custom_broker(
        None, ["retain_available false"], "mqttd has no option to turn retained messages off"
    ) as addr:
        yield addr


def test_retain_not_available(no_retain, uid):
    """Retain Available 0 in CONNACK (§3.2.2.3.5); a PUBLISH with RETAIN 1 is then a Protocol
    Error answered with DISCONNECT 0x9A Retain not supported [MQTT-3.2.2-14]; a CONNECT whose
    will has Will Retain 1 is refused, CONNACK 0x9A if any [MQTT-3.2.2-13]."""
    with C5(no_retain) as c:
        assert c.open(f"nr-{uid}").get(RETAIN_AVAILABLE) == [0]
        c.send(publish("nr/t", b"x", qos=1, retain=True, level=5))
        expect_disconnect(c, (RETAIN_NOT_SUPPORTED,))
    c = C5(no_retain)
    c.send(connect(f"nrw-{uid}", level=5, will_topic="w", will_retain=True))
    expect_connect_refused(c, (RETAIN_NOT_SUPPORTED,))


@pytest.fixture(scope="module")
def max_qos_1():
    with custom_broker(None, ["max_qos 1"], "mqttd supports QoS 2 and cannot be limited") as addr:
        yield addr


def test_maximum_qos_1(max_qos_1, uid):
    """A server supporting at most QoS 1 says Maximum QoS 1 [MQTT-3.2.2-9], still accepts a
    SUBSCRIBE asking QoS 2 [MQTT-3.2.2-10] (granting at most 1), treats a QoS 2 PUBLISH as a
    Protocol Error [MQTT-3.2.2-11] -- DISCONNECT 0x9B QoS not supported -- and refuses a CONNECT
    with Will QoS 2 [MQTT-3.2.2-12] (CONNACK 0x9B if any)."""
    with C5(max_qos_1) as c:
        assert c.open(f"mq-{uid}").get(MAXIMUM_QOS) == [1]
        codes = c.sub("mq/t", qos=2)
        assert codes[0] in (0, 1), f"granted {codes[0]:#x} above Maximum QoS 1"
        c.send(publish("mq/t", b"x", qos=2, level=5))
        expect_disconnect(c, (QOS_NOT_SUPPORTED,))
    c = C5(max_qos_1)
    c.send(connect(f"mqw-{uid}", level=5, will_topic="w", will_qos=2))
    expect_connect_refused(c, (QOS_NOT_SUPPORTED,))


def test_quota_exceeded_connection_limit(uid):
    """0x97 Quota exceeded: "an implementation or administrative imposed limit has been
    exceeded" (Table 2-6). With a limit of one connection, a second CONNECT is refused with
    CONNACK 0x97, Session Present 0 [MQTT-3.2.2-6], and the connection closed. (Mosquitto
    2.0.11 with "max_connections 1" on the listener answered a second CONNECT with CONNACK 0.)"""
    why = "Mosquitto's max_connections did not refuse the second client here"
    with custom_broker(["--max-connections", "1"], None, why) as addr:
        with C5(addr) as first:
            first.open(f"q1-{uid}")
            c = C5(addr)
            c.send(connect(f"q2-{uid}", level=5))
            expect_connect_refused(c, (QUOTA_EXCEEDED,))
            first.ping()  # the client within the limit is untouched


def test_quota_exceeded_subscriptions(uid):
    """A subscription quota refuses the excess filter in the SUBACK with 0x97 (§3.9.3) and
    keeps the connection."""
    with custom_broker(["--max-subscriptions-per-minute", "2"], None, "Mosquitto has none") as a:
        with C5(a) as c:
            c.open(f"qs-{uid}")
            assert c.sub([("qs/1", 1), ("qs/2", 0), ("qs/3", 1)]) == [1, 0, QUOTA_EXCEEDED]
            c.ping()
