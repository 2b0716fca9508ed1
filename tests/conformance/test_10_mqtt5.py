"""MQTT 5.0: CONNACK properties tell the truth (§3.2.2.3), Session Expiry Interval and Session
Present, Request Response / Request Problem Information, enhanced authentication without a
configured method, and the PUBLISH properties the server forwards unchanged (§3.3.2.3).

Rules are those of the OASIS MQTT Version 5.0 standard, cited by normative id or section.
"""

from __future__ import annotations

import time

import pytest
from mqtt5_util import (
    ASSIGNED_CLIENT_ID,
    AUTH_DATA,
    AUTH_METHOD,
    BAD_AUTH_METHOD,
    C5,
    CONTENT_TYPE,
    CORRELATION_DATA,
    MALFORMED,
    MAXIMUM_PACKET_SIZE,
    MAXIMUM_QOS,
    MESSAGE_EXPIRY,
    NOT_AUTHORIZED,
    PACKET_TOO_LARGE,
    PAYLOAD_FORMAT,
    PROTOCOL_ERROR,
    REASON_STRING,
    RECEIVE_MAXIMUM,
    REQUEST_PROBLEM_INFO,
    REQUEST_RESPONSE_INFO,
    RESPONSE_INFO,
    RESPONSE_TOPIC,
    RETAIN_AVAILABLE,
    SERVER_KEEP_ALIVE,
    SESSION_EXPIRY,
    SHARED_SUB_AVAILABLE,
    SUB_ID_AVAILABLE,
    TOPIC_ALIAS_MAXIMUM,
    USER_PROPERTY,
    WILDCARD_SUB_AVAILABLE,
    check_server_packet,
    custom_broker,
    expect_connect_refused,
    expect_disconnect,
    packet_size,
    user_props,
    v5,
)
from mqtt_raw import (
    CONNACK,
    MARKER,
    PUBACK,
    PUBCOMP,
    PUBREC,
    SUBACK,
    UNSUBACK,
    connect,
    disconnect,
    frame,
    mstr,
    prop,
    props,
    publish,
    pubrel,
    subscribe,
    unsubscribe,
    varint,
)

# --- CONNACK properties (§3.2.2.3) ------------------------------------------------------------


def test_connack_properties_are_well_formed(srv, uid):
    """Every CONNACK property is one allowed in CONNACK and appears at most once (§2.2.2.2 and
    each property's "It is a Protocol Error to include ... more than once"); the value ranges of
    §3.2.2.3: Receive Maximum 1..65535 (0 is a Protocol Error, §3.2.2.3.3), Maximum QoS 0 or 1
    (§3.2.2.3.4), Retain / Wildcard / Subscription Identifier / Shared Subscription Available
    0 or 1 (§3.2.2.3.5, .11-.13), Maximum Packet Size > 0 (§3.2.2.3.6). Without an
    Authentication Method in CONNECT there is no Authentication Method in CONNACK
    [MQTT-4.12.0-7]; without Request Response Information no Response Information
    [MQTT-3.1.2-28]."""
    with C5(srv) as c:
        cp = c.open(f"cp-{uid}")
    if RECEIVE_MAXIMUM in cp:
        assert 1 <= cp[RECEIVE_MAXIMUM][0] <= 65535
    if MAXIMUM_QOS in cp:
        assert cp[MAXIMUM_QOS][0] in (0, 1), "Maximum QoS is 0 or 1 when present [§3.2.2.3.4]"
    for flag in (RETAIN_AVAILABLE, WILDCARD_SUB_AVAILABLE, SUB_ID_AVAILABLE, SHARED_SUB_AVAILABLE):
        if flag in cp:
            assert cp[flag][0] in (0, 1), f"property {flag:#x} must be 0 or 1"
    if MAXIMUM_PACKET_SIZE in cp:
        assert cp[MAXIMUM_PACKET_SIZE][0] > 0, "Maximum Packet Size 0 [§3.2.2.3.6]"
    assert AUTH_METHOD not in cp and AUTH_DATA not in cp, "[MQTT-4.12.0-7]"
    assert RESPONSE_INFO not in cp, "Response Information not requested [MQTT-3.1.2-28]"
    assert ASSIGNED_CLIENT_ID not in cp or cp[ASSIGNED_CLIENT_ID][0], "empty assigned id"


def test_connack_maximum_qos_absent_means_qos2_works(srv, uid):
    """Maximum QoS absent means the server supports QoS 2 (§3.2.2.3.4 "If the Maximum QoS is
    absent, the Client uses a Maximum QoS of 2"): a QoS 2 subscription is granted QoS 2 and a
    QoS 2 PUBLISH goes through PUBREC/PUBREL/PUBCOMP and arrives at QoS 2. mqttd supports QoS 2,
    so it must not announce a lower maximum."""
    topic = f"mq/{uid}"
    with v5(srv, f"s-{uid}") as sub, C5(srv) as pub:
        cp = pub.open(f"p-{uid}")
        assert MAXIMUM_QOS not in cp, f"server announces Maximum QoS {cp[MAXIMUM_QOS]}"
        assert sub.sub(topic, qos=2) == [2]
        pub.pub5(topic, b"two", qos=2)
        m = sub.recv5()
        assert (m.payload, m.qos) == (b"two", 2)


def test_connack_retain_available_tells_the_truth(srv, uid):
    """Retain Available absent or 1 means retained messages are supported (§3.2.2.3.5): a
    retained PUBLISH is accepted and a later subscriber gets it with RETAIN=1 [MQTT-3.3.1-5]."""
    topic = f"ra/{uid}"
    with C5(srv) as pub:
        cp = pub.open(f"p-{uid}")
        assert cp.get(RETAIN_AVAILABLE, [1])[0] == 1, "server says retain is not available"
        pub.pub5(topic, b"kept", qos=1, retain=True)
        with v5(srv, f"s-{uid}") as sub:
            sub.sub(topic, qos=1)
            m = sub.recv5()
            assert (m.payload, m.retain) == (b"kept", True)
        pub.pub5(topic, b"", qos=1, retain=True)


def test_connack_wildcard_available_tells_the_truth(srv, uid):
    """Wildcard Subscription Available absent or 1: wildcard subscriptions work (§3.2.2.3.11);
    if 0, a wildcard SUBSCRIBE is refused with 0xA2."""
    with C5(srv) as c:
        cp = c.open(f"w-{uid}")
        codes = c.sub([(f"wa/{uid}/+", 1), (f"wa/{uid}/x/#", 1)])
        if cp.get(WILDCARD_SUB_AVAILABLE, [1])[0] == 1:
            assert codes == [1, 1]
            c.pub5(f"wa/{uid}/a", b"plus", qos=1, pid=5)
            assert c.recv5().payload == b"plus"
        else:
            assert codes == [0xA2, 0xA2]


def test_connack_subscription_identifier_available(srv, uid):
    """mqttd supports Subscription Identifiers, so it must say so: Subscription Identifier
    Available absent or 1 (§3.2.2.3.12; absent means supported). The identifiers themselves are
    tested in test_11."""
    with C5(srv) as c:
        cp = c.open(f"sia-{uid}")
    assert cp.get(SUB_ID_AVAILABLE, [1])[0] == 1, "server announces no Subscription Identifiers"


def test_connack_shared_subscription_available(srv, uid):
    """Shared Subscription Available absent or 1 (§3.2.2.3.13; absent means supported); shared
    subscriptions are tested in test_12."""
    with C5(srv) as c:
        cp = c.open(f"ssa-{uid}")
    assert cp.get(SHARED_SUB_AVAILABLE, [1])[0] == 1


def test_connack_topic_alias_maximum_announced(srv, uid):
    """mqttd accepts Topic Aliases from clients, so its CONNACK carries Topic Alias Maximum > 0
    (§3.2.2.3.8: absent means 0, "the Server does not accept any Topic Aliases"); the default is
    10. Its truth is tested in test_11."""
    with C5(srv) as c:
        cp = c.open(f"tam-{uid}")
    assert cp.get(TOPIC_ALIAS_MAXIMUM, [0])[0] >= 1, "no Topic Alias Maximum announced"


@pytest.fixture(scope="module")
def small_packets():
    """A broker accepting packets of at most 2000 bytes."""
    with custom_broker(["--max-packet-size", "2000"], ["max_packet_size 2000"]) as addr:
        yield addr


def _publish_of_size(topic: str, total: int) -> bytes:
    """A QoS 1 MQTT 5 PUBLISH (packet id 1, no properties) of exactly ``total`` bytes."""
    head = mstr(topic) + b"\x00\x01" + b"\x00"
    for width in (1, 2, 3, 4):  # remaining-length width that makes the total come out right
        body_len = total - 1 - width
        if len(varint(body_len)) == width:
            data = frame(0x32, head + b"x" * (body_len - len(head)))
            assert len(data) == total
            return data
    raise AssertionError(f"no PUBLISH of {total} bytes")


@pytest.mark.mosquitto_deviation(
    "Mosquitto 2.0.11 compares remaining length + 1 with max_packet_size, leaving out the "
    "remaining-length bytes: with 2000 it accepts packets of 2001 and 2002 bytes"
)
def test_maximum_packet_size_tells_the_truth(small_packets, uid):
    """The CONNACK announces Maximum Packet Size 2000 (§3.2.2.3.6) and it is exact: a PUBLISH
    of exactly 2000 bytes is accepted, one of 2001 bytes is a Protocol Error answered with
    DISCONNECT 0x95 Packet too large [MQTT-3.2.2-15]."""
    with C5(small_packets) as c:
        cp = c.open(f"mps-{uid}")
        assert cp.get(MAXIMUM_PACKET_SIZE) == [2000]
        c.send(_publish_of_size(f"mps/{uid}", 2000))
        assert c.expect(PUBACK).body[:2] == b"\x00\x01"
        c.send(_publish_of_size(f"mps/{uid}", 2001))
        expect_disconnect(c, (PACKET_TOO_LARGE,))


@pytest.fixture(scope="module")
def keepalive_10():
    with custom_broker(["--max-keepalive", "10"], ["max_keepalive 10"]) as addr:
        yield addr


def test_server_keep_alive_when_client_asks_more(keepalive_10, uid):
    """A server that allows at most 10 s answers a client asking 60 s with Server Keep Alive
    ≤ 10 (§3.2.2.3.14: the server uses it "to inform the Client that it will disconnect the
    Client for inactivity sooner than the Keep Alive specified by the Client"; without it the
    server MUST use the client's 60 s [MQTT-3.2.2-22]). A client asking 5 s gets no Server Keep
    Alive above 5 (absent: 5 s applies [MQTT-3.2.2-22])."""
    with C5(keepalive_10) as c:
        cp = c.open(f"ka60-{uid}", keepalive=60)
        assert SERVER_KEEP_ALIVE in cp, "no Server Keep Alive for a keepalive above the maximum"
        assert 1 <= cp[SERVER_KEEP_ALIVE][0] <= 10
    with C5(keepalive_10) as c:
        cp = c.open(f"ka5-{uid}", keepalive=5)
        assert cp.get(SERVER_KEEP_ALIVE, [5])[0] <= 5


@pytest.fixture(scope="module")
def keepalive_2():
    with custom_broker(
        ["--max-keepalive", "2"], None, "Mosquitto 2.0.11 refuses max_keepalive below 10"
    ) as addr:
        yield addr


def test_server_keep_alive_is_enforced(keepalive_2, uid):
    """The keepalive the server announced is the one it applies [MQTT-3.2.2-21/22]: with at
    most 2 s allowed, a client asking 60 s, one asking 1 s and one asking 0 s (none) each get
    closed after 1.5 x their effective keepalive -- not before it -- [MQTT-3.1.2-22], or, for
    an effective 0, stay open. Effective = Server Keep Alive if sent, else the client's
    value."""
    slack = 1.0
    clients: list[tuple[C5, float]] = []
    try:
        for asked in (60, 1, 0):
            c = C5(keepalive_2)
            cp = c.open(f"kae{asked}-{uid}", keepalive=asked)
            eff = cp.get(SERVER_KEEP_ALIVE, [asked])[0]
            if asked == 60:
                assert SERVER_KEEP_ALIVE in cp and eff <= 2, f"Server Keep Alive {eff}"
            clients.append((c, float(eff)))  # type: ignore[arg-type]
        t0 = time.monotonic()
        longest = max(1.5 * e for _, e in clients) + slack
        closed_at: dict[int, float] = {}
        while time.monotonic() - t0 < longest:
            for i, (c, _) in enumerate(clients):
                if i in closed_at:
                    continue
                try:
                    c.recv(0.05)
                except TimeoutError:
                    pass
                except Exception:
                    closed_at[i] = time.monotonic() - t0
        for i, (_, eff) in enumerate(clients):
            if eff == 0:
                assert i not in closed_at, "keepalive 0 connection was closed"
            else:
                assert i in closed_at, f"effective keepalive {eff}: never closed"
                assert eff * 1.0 - 0.2 <= closed_at[i] <= 1.5 * eff + slack, (
                    f"effective keepalive {eff}: closed after {closed_at[i]:.2f}s"
                )
    finally:
        for c, _ in clients:
            c.close()


def test_assigned_client_identifier_is_unique_and_usable(srv, uid):
    """A zero-length ClientID gets an Assigned Client Identifier "not used by any other
    Session" [MQTT-3.2.2-16]; the server processes the CONNECT "as if the Client had provided
    that unique ClientID" [MQTT-3.1.3-7], so a session stored under it is resumed when the
    client reconnects with the assigned id: Session Present 1 [MQTT-3.2.2-3]."""
    keep = prop(SESSION_EXPIRY, 30)
    with C5(srv) as a, C5(srv) as b:
        ida = a.open("", keep)[ASSIGNED_CLIENT_ID][0]
        idb = b.open("")[ASSIGNED_CLIENT_ID][0]
        assert isinstance(ida, str) and ida and ida != idb
        a.sub(f"aci/{uid}", qos=1)
        a.disconnect()
    with C5(srv) as again:
        again.open(ida, keep, clean=False)  # type: ignore[arg-type]
        assert again.session_present is True
        again.disconnect()
    with C5(srv) as cleanup:
        cleanup.open(ida)  # type: ignore[arg-type]
        cleanup.disconnect()


def test_response_information_only_when_requested(srv, uid):
    """Request Response Information 0 (or absent): the server MUST NOT return Response
    Information [MQTT-3.1.2-28]. With 1 it MAY; if it does, it is a UTF-8 Encoded String
    (§3.2.2.3.15, decoded strictly here)."""
    with C5(srv) as c:
        cp = c.open(f"ri0-{uid}", prop(REQUEST_RESPONSE_INFO, 0))
        assert RESPONSE_INFO not in cp
    with C5(srv) as c:
        cp = c.open(f"ri1-{uid}", prop(REQUEST_RESPONSE_INFO, 1))
        if RESPONSE_INFO in cp:
            assert isinstance(cp[RESPONSE_INFO][0], str)


# --- Session Expiry Interval (§3.1.2.11.2, §3.14.2.2.2, §4.1) --------------------------------


def _session_present(addr, cid: str, *properties: bytes) -> bool:
    with C5(addr) as c:
        c.open(cid, *properties, clean=False)
        sp = c.session_present
        c.disconnect()
    return sp


def _make_session(addr, cid: str, topic: str, expiry: int | None) -> None:
    extra = [prop(SESSION_EXPIRY, expiry)] if expiry is not None else []
    with v5(addr, cid, *extra) as c:
        c.sub(topic, qos=1)
        c.disconnect()


def test_session_expiry_zero_ends_session_at_disconnect(srv, uid):
    """Session Expiry Interval 0 (absent): "the Session ends when the Network Connection is
    closed" (§3.1.2.11.2): reconnecting with Clean Start 0 finds no session, Session Present 0
    [MQTT-3.2.2-3], and messages published meanwhile are not queued."""
    cid, topic = f"se0-{uid}", f"se0/{uid}"
    _make_session(srv, cid, topic, None)
    with v5(srv, f"p-{uid}") as pub:
        pub.pub5(topic, b"lost", qos=1)
    with C5(srv) as c:
        c.open(cid, clean=False)
        assert c.session_present is False
        assert c.until_pingresp() == []  # a resumed session's queue comes right after CONNACK


def test_session_expiry_interval_honoured(srv, uid):
    """Session Expiry Interval 2: the session survives the connection [MQTT-3.1.2-23] --
    resumed after 0.5 s with Session Present 1 [MQTT-3.2.2-3] and its queued message -- and
    is discarded once the interval has passed after the next disconnect [MQTT-4.1.0-2]."""
    cid, topic = f"se2-{uid}", f"se2/{uid}"
    keep = prop(SESSION_EXPIRY, 2)
    _make_session(srv, cid, topic, 2)
    time.sleep(0.5)  # the rule is about time: resumed within the interval
    with v5(srv, f"p-{uid}") as pub:
        pub.pub5(topic, b"queued", qos=1)
    with C5(srv) as c:
        c.open(cid, keep, clean=False)
        assert c.session_present is True
        assert c.recv5().payload == b"queued"
        c.disconnect()
    time.sleep(3.0)  # the rule is about time: past the 2 s interval
    assert _session_present(srv, cid) is False, "session outlived its 2 s expiry"


def test_disconnect_can_shorten_session_expiry(srv, uid):
    """The Session Expiry Interval in DISCONNECT replaces the one from CONNECT (§3.14.2.2.2):
    CONNECT 60 then DISCONNECT 0 ends the session at once."""
    cid = f"sed0-{uid}"
    with v5(srv, cid, prop(SESSION_EXPIRY, 60)) as c:
        c.sub(f"sed0/{uid}", qos=1)
        c.send(disconnect(0, level=5, properties=props(prop(SESSION_EXPIRY, 0))))
        c.wait_closed()
    assert _session_present(srv, cid) is False


def test_disconnect_zero_to_nonzero_session_expiry_is_protocol_error(srv, uid):
    """CONNECT with Session Expiry 0 then DISCONNECT with a non-zero one: "it is a Protocol
    Error ... If such a non-zero Session Expiry Interval is received by the Server, it does not
    treat it as a valid DISCONNECT packet. The Server uses DISCONNECT with Reason Code 0x82"
    (§3.14.2.2.2). The session still ends with the connection (its interval stays 0)."""
    cid = f"sebad-{uid}"
    with v5(srv, cid) as c:
        c.sub(f"sebad/{uid}", qos=1)
        c.send(disconnect(0, level=5, properties=props(prop(SESSION_EXPIRY, 60))))
        expect_disconnect(c, (PROTOCOL_ERROR,))
    assert _session_present(srv, cid) is False


def test_invalid_disconnect_publishes_the_will(srv, uid):
    """Since that DISCONNECT is "not a valid DISCONNECT packet" (§3.14.2.2.2), the will is not
    deleted by it [MQTT-3.1.2-10 needs a DISCONNECT 0x00]: the server closes the connection for
    a protocol error and publishes the will [MQTT-3.1.2-8]."""
    topic = f"sebadwill/{uid}"
    with v5(srv, f"s-{uid}") as sub:
        sub.sub(topic, qos=1)
        w = v5(srv, f"w-{uid}", will_topic=topic, will_payload=b"will")
        w.send(disconnect(0, level=5, properties=props(prop(SESSION_EXPIRY, 60))))
        expect_disconnect(w, (PROTOCOL_ERROR,))
        assert sub.recv5().payload == b"will"


def test_clean_start_discards_existing_session(srv, uid):
    """Clean Start 1 discards an existing session [MQTT-3.1.2-4] with Session Present 0
    [MQTT-3.2.2-2], even with a new non-zero expiry: its subscriptions and queued messages are
    gone."""
    cid, topic, marker = f"cs-{uid}", f"cs/{uid}", f"cs-marker/{uid}"
    _make_session(srv, cid, topic, 60)
    with v5(srv, f"p-{uid}") as pub:
        pub.pub5(topic, b"old", qos=1)
    with C5(srv) as c:
        c.open(cid, prop(SESSION_EXPIRY, 60), clean=True)
        assert c.session_present is False
        assert c.until_pingresp() == []  # the queued message went with the session
        c.sub(marker, qos=1)
        with v5(srv, f"p2-{uid}") as pub:
            pub.pub5(topic, b"new", qos=1)
            pub.pub5(marker, MARKER, qos=1)
        assert c.until() == []  # and so did the subscription
        c.disconnect()
    with v5(srv, cid) as c:
        c.disconnect()


# --- Request Problem Information (§3.1.2.11.7) ------------------------------------------------


def test_request_problem_information_zero(srv, uid):
    """Request Problem Information 0: the server "MUST NOT send a Reason String or User
    Properties on any packet other than PUBLISH, CONNACK, or DISCONNECT" [MQTT-3.1.2-29]. The
    client provokes non-success acks (UNSUBACK 0x11, PUBACK/PUBREC 0x10 no subscribers, PUBCOMP
    0x92 unknown packet id) and successes; PUBLISH to it still carries the message's User
    Properties [MQTT-3.3.2-17]."""
    topic = f"rpi/{uid}"
    with v5(srv, f"q-{uid}", prop(REQUEST_PROBLEM_INFO, 0)) as c:
        got = []
        c.send(subscribe(1, [(topic, 1)], level=5))
        got.append(c.expect(SUBACK))
        c.send(unsubscribe(2, [f"none/{uid}"], level=5))
        got.append(c.expect(UNSUBACK))
        c.send(publish(f"nobody/{uid}", b"x", qos=1, pid=3, level=5))
        got.append(c.expect(PUBACK))
        c.send(publish(f"nobody/{uid}", b"x", qos=2, pid=4, level=5))
        got.append(c.expect(PUBREC))
        c.send(pubrel(4) + pubrel(999))
        got += [c.expect(PUBCOMP), c.expect(PUBCOMP)]
        for p in got:
            found = check_server_packet(p)
            assert REASON_STRING not in found and USER_PROPERTY not in found, (
                f"{p.name} carries a Reason String/User Property [MQTT-3.1.2-29]: {found}"
            )
        c.pub5(topic, b"up", *user_props([("k", "v")]), qos=1, pid=5)
        m = c.recv5()
        assert m.properties.get(USER_PROPERTY) == [("k", "v")]


# --- Enhanced authentication (§4.12) -----------------------------------------------------------


def test_unknown_authentication_method_refused(srv, uid):
    """A CONNECT naming an Authentication Method the server does not support: the server MAY
    send CONNACK 0x8C Bad authentication method or 0x87 Not authorized and MUST close the
    connection [MQTT-4.12.0-1]; mqttd sends the CONNACK (checked here), with Session Present 0
    [MQTT-3.2.2-6] and no Authentication Method of its own."""
    c = C5(srv)
    c.send(connect(f"auth-{uid}", level=5, properties=props(prop(AUTH_METHOD, "SCRAM-SHA-1"))))
    rc = expect_connect_refused(c, (BAD_AUTH_METHOD, NOT_AUTHORIZED))
    assert rc is not None, "closed without a CONNACK"


def test_data_after_refused_connect_not_processed(srv, uid):
    """If the server rejects the CONNECT it "MUST NOT process any data sent by the Client after
    the CONNECT packet except AUTH packets" [MQTT-3.1.4-6]: a retained PUBLISH pipelined after a
    refused CONNECT (unknown Authentication Method) is not stored."""
    topic = f"afterrefuse/{uid}"
    c = C5(srv)
    c.send(
        connect(f"ref-{uid}", level=5, properties=props(prop(AUTH_METHOD, "NOPE")))
        + publish(topic, b"smuggled", qos=0, retain=True, level=5)
    )
    expect_connect_refused(c, (BAD_AUTH_METHOD, NOT_AUTHORIZED))
    with v5(srv, f"s-{uid}") as sub:
        sub.sub(topic, qos=1)
        assert sub.until_pingresp() == []  # no retained message: it was not stored


@pytest.mark.mosquitto_deviation(
    "Mosquitto 2.0.11 accepts a CONNECT with Authentication Data and no Authentication Method"
)
def test_authentication_data_without_method(srv, uid):
    """Spec: "It is a Protocol Error to include Authentication Data if there is no Authentication
    Method" (§3.1.2.11.10): the CONNECT is refused (CONNACK 0x82 if any) and closed."""
    c = C5(srv)
    c.send(connect(f"ad-{uid}", level=5, properties=props(prop(AUTH_DATA, b"\x01\x02"))))
    expect_connect_refused(c, (PROTOCOL_ERROR, MALFORMED))


@pytest.mark.mosquitto_deviation(
    "Mosquitto 2.0.11 closes the connection without the DISCONNECT 0x82 that [MQTT-4.13.1-1] "
    "says it SHOULD send"
)
def test_auth_packet_without_method_is_protocol_error(srv, uid):
    """An AUTH packet on a connection whose CONNECT had no Authentication Method: the exchange
    of AUTH packets only exists for an Authentication Method (§4.12, [MQTT-4.12.0-6]); receiving
    one is a Protocol Error, DISCONNECT 0x82 (test_07 checks only that the connection closes)."""
    with v5(srv, f"au-{uid}") as c:
        c.send(frame(0xF0, b"\x19\x00"))  # AUTH 0x19 Re-authenticate, no properties
        expect_disconnect(c, (PROTOCOL_ERROR,))


# --- PUBLISH properties forwarded unchanged (§3.3.2.3) ----------------------------------------


MESSAGE_PROPS = [
    prop(PAYLOAD_FORMAT, 1),
    prop(CONTENT_TYPE, "application/json; charset=utf-8"),
    prop(RESPONSE_TOPIC, "reply/to/\u00e9"),
    prop(CORRELATION_DATA, b"\x00\xffcorr\x00"),
    *user_props([("a", "1"), ("b", "2"), ("a", "3"), ("\u00fc", ""), ("", "empty-key")]),
]


def _assert_forwarded(m, expiry_max: int | None = None) -> None:
    p = m.properties
    assert p.get(PAYLOAD_FORMAT) == [1], "Payload Format Indicator [MQTT-3.3.2-4]"
    assert p.get(CONTENT_TYPE) == ["application/json; charset=utf-8"], "[MQTT-3.3.2-20]"
    assert p.get(RESPONSE_TOPIC) == ["reply/to/\u00e9"], "Response Topic [MQTT-3.3.2-15]"
    assert p.get(CORRELATION_DATA) == [b"\x00\xffcorr\x00"], "Correlation Data [MQTT-3.3.2-16]"
    assert p.get(USER_PROPERTY) == [
        ("a", "1"),
        ("b", "2"),
        ("a", "3"),
        ("\u00fc", ""),
        ("", "empty-key"),
    ], "User Properties all, unaltered, in order [MQTT-3.3.2-17, MQTT-3.3.2-18]"
    if expiry_max is not None:
        left = p.get(MESSAGE_EXPIRY)
        assert left and expiry_max - 3 <= left[0] <= expiry_max, f"expiry forwarded as {left}"


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_message_properties_forwarded_live(srv, uid, qos):
    """Payload Format Indicator [MQTT-3.3.2-4], Content Type [MQTT-3.3.2-20], Response Topic
    [MQTT-3.3.2-15], Correlation Data [MQTT-3.3.2-16] and User Properties (repeated keys, empty
    strings, order kept) [MQTT-3.3.2-17/18] reach the subscriber unaltered; Message Expiry
    Interval is forwarded minus the time waited [MQTT-3.3.2-6]."""
    topic = f"mp/{uid}"
    with v5(srv, f"s-{uid}") as sub, v5(srv, f"p-{uid}") as pub:
        sub.sub(topic, qos=2)
        pub.pub5(topic, b'{"x": 1}', *MESSAGE_PROPS, prop(MESSAGE_EXPIRY, 100), qos=qos)
        m = sub.recv5()
        assert m.payload == b'{"x": 1}'
        _assert_forwarded(m, expiry_max=100)


def test_message_properties_kept_with_retained_and_queued(srv, uid):
    """The same properties come with a retained message delivered on subscribe and with a
    message queued for an offline session: they belong to the Application Message."""
    topic = f"mpq/{uid}"
    cid = f"s-{uid}"
    keep = prop(SESSION_EXPIRY, 30)
    _make_session(srv, cid, topic, 30)
    with v5(srv, f"p-{uid}") as pub:
        pub.pub5(topic, b"q", *MESSAGE_PROPS, prop(MESSAGE_EXPIRY, 100), qos=1)
        pub.pub5(f"{topic}/r", b"r", *MESSAGE_PROPS, qos=1, pid=2, retain=True)
    with C5(srv) as c:
        c.open(cid, keep, clean=False)
        m = c.recv5()
        assert m.payload == b"q"
        _assert_forwarded(m, expiry_max=100)
        c.sub(f"{topic}/r", qos=1, pid=7)
        r = c.recv5()
        assert (r.payload, r.retain) == (b"r", True)
        _assert_forwarded(r)
        assert MESSAGE_EXPIRY not in r.properties, "no expiry was set on the retained message"
        c.pub5(f"{topic}/r", b"", qos=1, pid=8, retain=True)
        c.disconnect()
    with v5(srv, cid) as c:
        c.disconnect()


def test_payload_format_zero_forwarded(srv, uid):
    """Payload Format Indicator 0 is forwarded unaltered [MQTT-3.3.2-4] (0 is "equivalent to
    not sending a Payload Format Indicator", so absent is the same value); binary payload
    untouched."""
    topic = f"pf0/{uid}"
    with v5(srv, f"s-{uid}") as sub, v5(srv, f"p-{uid}") as pub:
        sub.sub(topic, qos=1)
        pub.pub5(topic, b"\xff\x00\xfe", prop(PAYLOAD_FORMAT, 0), qos=1)
        m = sub.recv5()
        assert m.payload == b"\xff\x00\xfe"
        assert m.properties.get(PAYLOAD_FORMAT, [0]) == [0]


def test_will_properties_forwarded(srv, uid):
    """Will Properties become the properties of the published Will Message: Content Type,
    Response Topic, Correlation Data, Payload Format Indicator (§3.1.3.2) and User Properties in
    their order [MQTT-3.1.3-10]."""
    topic = f"wp/{uid}"
    with v5(srv, f"s-{uid}") as sub:
        sub.sub(topic, qos=1)
        w = v5(
            srv, f"w-{uid}", will_topic=topic, will_payload=b"{}", will_props=props(*MESSAGE_PROPS)
        )
        w.kill()
        m = sub.recv5()
        assert m.payload == b"{}"
        _assert_forwarded(m)


def test_no_packet_exceeds_client_maximum_packet_size(srv, uid):
    """Spec: "The Server MUST NOT send packets exceeding Maximum Packet Size to the Client"
    [MQTT-3.1.2-24]; Reason Strings and User Properties are dropped rather than making an ack
    too big [MQTT-3.2.2-19/20, MQTT-3.4.2-2/3, MQTT-3.9.2-1/2, MQTT-3.11.2-1/2]. A client with
    Maximum Packet Size 48 provokes CONNACK, SUBACK, UNSUBACK 0x11, PUBACK 0x10, PUBCOMP 0x92."""
    limit = 48
    with C5(srv) as c:
        c.send(connect(f"mps48-{uid}", level=5, properties=props(prop(MAXIMUM_PACKET_SIZE, limit))))
        got = [c.expect(CONNACK)]
        c.send(subscribe(1, [(f"m/{uid}", 1)], level=5))
        got.append(c.expect(SUBACK))
        c.send(unsubscribe(2, [f"none/{uid}"], level=5))
        got.append(c.expect(UNSUBACK))
        c.send(publish(f"nobody/{uid}", b"x", qos=1, pid=3, level=5))
        got.append(c.expect(PUBACK))
        c.send(pubrel(77))
        got.append(c.expect(PUBCOMP))
        for p in got:
            check_server_packet(p)
            assert packet_size(p) <= limit, f"{p.name} of {packet_size(p)} bytes > {limit}"
