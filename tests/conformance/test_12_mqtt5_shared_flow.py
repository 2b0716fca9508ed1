"""MQTT 5.0 Shared Subscriptions (§4.8.2), the subscription options not covered by test_03 /
test_04 (§3.8.3.1), and flow control: Receive Maximum in both directions (§3.3.4, §4.9) and the
QoS 1/2 receiver rules at MQTT 5 (§4.3, §4.4)."""

from __future__ import annotations

import itertools

import pytest
from mqtt5_util import (
    C5,
    MALFORMED,
    PROTOCOL_ERROR,
    RECEIVE_MAXIMUM,
    RECEIVE_MAXIMUM_EXCEEDED,
    SESSION_EXPIRY,
    SHARED_NOT_SUPPORTED,
    TOPIC_FILTER_INVALID,
    ack_reason,
    custom_broker,
    expect_disconnect,
    v5,
)
from mqtt_raw import (
    DISCONNECT,
    MARKER,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    SUBACK,
    Client,
    Closed,
    connected,
    parse_disconnect,
    parse_publish,
    parse_suback,
    prop,
    puback,
    pubcomp,
    publish,
    pubrec,
    pubrel,
    subscribe,
)

# --- Shared Subscriptions (§4.8.2) ------------------------------------------------------------


def _members(srv, uid: str, level: int, group: str, filt: str, n: int = 2) -> list[Client]:
    out = []
    for i in range(n):
        c = connected(srv, f"m{i}-{uid}", level)
        assert c.subscribe(f"$share/{group}/{filt}", 1, pid=1 + i) == [1]
        out.append(c)
    return out


_marks = itertools.count()


def _collect(srv, uid: str, clients: list[Client]) -> list[list[bytes]]:
    """The payloads each client got, up to a marker of its own: a shared subscription hands
    one message to one member, so each client subscribes to a topic of its own, and a client
    connecting after the messages were published sends the marker there. A copy routed to the
    client before the marker arrives before it, however late."""
    got: list[list[bytes]] = []
    with connected(srv, f"mk-{uid}", 4) as marker:
        for c in clients:
            topic = f"mk/{uid}/{next(_marks)}"
            assert c.subscribe(topic, 1, pid=99) == [1]
            marker.publish(topic, MARKER, qos=1)
            got.append([m.payload for m in c.until()])
    return got


@pytest.mark.parametrize("level", [4, 5])
def test_shared_subscription_one_delivery_per_group(srv, uid, level):
    """Each message published to a shared subscription's topic goes to exactly one session of
    the group (§4.8.2: "each message ... is sent to only one of the Sessions"); with 2 members
    and 20 messages both get some (the load balancing shared subscriptions exist for). A
    non-shared subscriber on the same filter gets all 20, independently (§4.8.2: "a Shared
    Subscription ... can coexist with Non-shared Subscriptions"). MQTT 3.1.1 clients can use
    `$share/` filters too."""
    filt = f"sh/{uid}/t"
    members = _members(srv, uid, level, f"g{uid}", filt)
    plain = connected(srv, f"plain-{uid}", level)
    plain.subscribe(filt, 1)
    try:
        with connected(srv, f"p-{uid}", level) as pub:
            for i in range(20):
                pub.publish(filt, b"%d" % i, qos=1, pid=i + 1)
        per_member = _collect(srv, uid, members)
        everything = sorted(p for got in per_member for p in got)
        assert everything == sorted(b"%d" % i for i in range(20)), "lost or duplicated"
        assert all(per_member), f"one member got nothing: {[len(g) for g in per_member]}"
        assert sorted(_collect(srv, uid, [plain])[0]) == sorted(b"%d" % i for i in range(20))
    finally:
        for c in [*members, plain]:
            c.close()


def test_two_groups_each_get_every_message(srv, uid):
    """Two share groups on the same filter are independent subscriptions: each group receives
    each message once (§4.8.2)."""
    filt = f"sh2/{uid}"
    g1 = _members(srv, f"a{uid}", 5, f"ga{uid}", filt)
    g2 = _members(srv, f"b{uid}", 5, f"gb{uid}", filt)
    try:
        with connected(srv, f"p-{uid}", 5) as pub:
            for i in range(6):
                pub.publish(filt, b"%d" % i, qos=1, pid=i + 1)
        for group in (g1, g2):
            got = sorted(p for ps in _collect(srv, uid, group) for p in ps)
            assert got == sorted(b"%d" % i for i in range(6))
    finally:
        for c in g1 + g2:
            c.close()


def test_shared_member_leaving_leaves_the_rest(srv, uid):
    """When a member unsubscribes, later messages all go to the remaining member: the
    subscription of the group lives on (§4.8.2)."""
    filt = f"sh3/{uid}"
    a, b = _members(srv, uid, 5, f"g{uid}", filt)
    try:
        a.unsubscribe([f"$share/g{uid}/{filt}"])
        with connected(srv, f"p-{uid}", 5) as pub:
            for i in range(5):
                pub.publish(filt, b"%d" % i, qos=1, pid=i + 1)
        got_a, got_b = _collect(srv, uid, [a, b])
        assert got_a == [] and sorted(got_b) == sorted(b"%d" % i for i in range(5))
    finally:
        a.close()
        b.close()


@pytest.mark.mosquitto_deviation(
    "Mosquitto 2.0.11 sends retained messages to a new shared subscription"
)
def test_no_retained_messages_for_shared_subscription(srv, uid):
    """Retained messages are sent when "a new Non-shared Subscription is made" (§3.3.1.3); a
    Shared Subscription gets none, whatever its Retain Handling."""
    topic = f"shr/{uid}"
    with connected(srv, f"p-{uid}", 5) as pub:
        pub.publish(topic, b"retained", qos=1, retain=True)
        with C5(srv) as c:
            c.open(f"s-{uid}")
            assert c.sub(f"$share/g{uid}/{topic}", qos=1) == [1]
            assert c.until_pingresp() == []  # sent with the SUBACK, if at all
        pub.publish(topic, b"", qos=1, retain=True, pid=2)


@pytest.mark.mosquitto_deviation(
    "Mosquitto 2.0.11 grants No Local on a shared subscription [MQTT-3.8.3-4]"
)
def test_no_local_on_shared_subscription_is_protocol_error(srv, uid):
    """Spec: "It is a Protocol Error to set the No Local bit to 1 on a Shared Subscription"
    [MQTT-3.8.3-4]: DISCONNECT 0x82."""
    with v5(srv, f"nl-{uid}") as c:
        c.send(subscribe(1, [(f"$share/g{uid}/nl/{uid}", 0x04 | 1)], level=5))
        expect_disconnect(c, (PROTOCOL_ERROR,))


def _grants(why: str) -> pytest.MarkDecorator:
    return pytest.mark.mosquitto_deviation(f"Mosquitto 2.0.11 grants {why} (SUBACK 0x01)")


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param("$share/g", marks=_grants("`$share/g`, which has no `/` + filter")),
        pytest.param("$share//a", marks=_grants("`$share//a`, an empty ShareName")),
        "$share/g+/a",
        "$share/g#/a",
        pytest.param("$share/+/a", marks=_grants("`$share/+/a`, ShareName `+`")),
        pytest.param("$share/g/", marks=_grants("`$share/g/`, an empty Topic Filter")),
    ],
)
def test_invalid_shared_subscription_filter(srv, uid, bad):
    """Spec:
    "A Shared Subscription's Topic Filter MUST start with $share/ and MUST contain a ShareName
    that is at least one character long. The ShareName MUST NOT contain the characters "/", "+"
    or "#", but MUST be followed by a "/" character. This "/" character MUST be followed by a
    Topic Filter" [MQTT-4.8.2-1, MQTT-4.8.2-2] (and a Topic Filter is at least one character,
    [MQTT-4.7.3-1]). The filter is refused: SUBACK 0x8F Topic Filter invalid (or 0x9E Shared
    Subscriptions not supported) while a valid filter of the same SUBSCRIBE is granted, or
    DISCONNECT 0x8F/0x82 (or 0x81, as test_07 allows for invalid filters) and close. Never
    granted."""
    with v5(srv, f"bad-{uid}") as c:
        c.send(subscribe(1, [(f"ok/{uid}", 1), (bad, 1)], level=5))
        try:
            p = c.recv()
        except Closed:
            raise AssertionError("closed without a SUBACK or DISCONNECT") from None
        if p.type == SUBACK:
            pid, codes = parse_suback(p, 5)
            assert pid == 1 and codes[0] == 1
            assert codes[1] in (TOPIC_FILTER_INVALID, SHARED_NOT_SUPPORTED), hex(codes[1])
            c.ping()
        else:
            assert p.type == DISCONNECT, f"expected SUBACK or DISCONNECT, got {p!r}"
            rc = parse_disconnect(p)
            assert rc in (TOPIC_FILTER_INVALID, PROTOCOL_ERROR, MALFORMED), f"DISCONNECT {rc:#x}"
            assert c.wait_closed() == []


def test_shared_message_refused_by_member_not_sent_to_another(srv, uid):
    """Spec:
    "If a Client responds with a PUBACK or PUBREC containing a Reason Code of 0x80 or greater
    to a PUBLISH packet from the Server, the Server MUST discard the Application Message and not
    attempt to send it to any other Subscriber" [MQTT-4.8.2-6]: both members refuse everything
    with PUBACK 0x80, so the one message arrives exactly once in the group."""
    filt = f"shx/{uid}"
    members = []
    try:
        for i in range(2):
            c = v5(srv, f"m{i}-{uid}")
            assert c.sub(f"$share/g{uid}/{filt}", qos=1, pid=1) == [1]
            members.append(c)
        with connected(srv, f"p-{uid}", 5) as pub:
            pub.publish(filt, b"once", qos=1)
        # Each member reads up to a marker of its own (QoS 0: nothing to acknowledge), refusing
        # what came before it; in two rounds, so that a copy sent on to another member after a
        # refusal is seen wherever it went.
        deliveries = 0
        with connected(srv, f"mk-{uid}", 5) as marker:
            for i, c in enumerate(members):
                assert c.sub(f"shx-mk/{uid}/{i}", qos=0, pid=2) == [0]
            for _ in range(2):
                for i, c in enumerate(members):
                    marker.publish(f"shx-mk/{uid}/{i}", MARKER)
                    for m in c.until(ack=False):
                        deliveries += 1
                        c.send(puback(m.pid, level=5, rc=0x80))
        assert deliveries == 1, f"refused message delivered {deliveries} times in the group"
    finally:
        for c in members:
            c.close()


# --- Subscription options (§3.8.3.1) not covered by test_03/test_04 ---------------------------


def test_no_local_is_per_subscription(srv, uid):
    """No Local belongs to one subscription [MQTT-3.8.3-3]: a client with `x/+` (No Local) and
    `x/#` (without) still receives its own message through `x/#`, and nothing through `x/+`
    (at most one copy, since the No Local one must not forward)."""
    base = f"nlp/{uid}"
    with v5(srv, f"nlp-{uid}") as c:
        assert c.sub([(f"{base}/+", 0x04 | 1), (f"{base}/#", 1)]) == [1, 1]
        c.pub5(f"{base}/x", b"mine", qos=1, pid=5)
        c.pub5(f"{base}/x", MARKER, qos=1, pid=6)  # every copy of "mine" comes before it
        got = c.until()
        assert [m.payload for m in got] == [b"mine"]


def test_retain_handling_1_resends_after_unsubscribe(srv, uid):
    """Retain Handling 1 sends retained messages "if the subscription did not already exist"
    [MQTT-3.3.1-10]: after an UNSUBSCRIBE it no longer exists, so subscribing again sends them
    again (test_04 covers the "already exists" half)."""
    topic = f"rh1/{uid}"
    with v5(srv, f"p-{uid}") as pub:
        pub.pub5(topic, b"r", qos=1, retain=True)
        with v5(srv, f"s-{uid}") as c:
            assert c.sub([(topic, 0x10 | 1)]) == [1]
            assert c.recv5().payload == b"r"
            c.unsubscribe([topic])
            assert c.sub([(topic, 0x10 | 1)], pid=3) == [1]
            m = c.recv5()
            assert (m.payload, m.retain) == (b"r", True)
        pub.pub5(topic, b"", qos=1, retain=True, pid=2)


def test_retained_on_subscribe_always_has_retain_flag(srv, uid):
    """Retained messages sent because of a new subscription "are sent with the RETAIN flag set
    to 1" (§3.3.1.3) whatever Retain As Published says; live messages follow it
    [MQTT-3.3.1-12/13]."""
    topic = f"rap/{uid}"
    with v5(srv, f"p-{uid}") as pub:
        pub.pub5(topic, b"r", qos=1, retain=True)
        with v5(srv, f"s0-{uid}") as rap0, v5(srv, f"s1-{uid}") as rap1:
            rap0.sub([(topic, 1)])
            rap1.sub([(topic, 0x08 | 1)])
            assert rap0.recv5().retain is True and rap1.recv5().retain is True
            pub.pub5(topic, b"live", qos=1, retain=True, pid=2)
            assert (rap0.recv5().retain, rap1.recv5().retain) == (False, True)
        pub.pub5(topic, b"", qos=1, retain=True, pid=3)


# --- Flow control: the server's Receive Maximum (§3.2.2.3.3, [MQTT-3.3.4-7]) -------------------


@pytest.fixture(scope="module")
def recv_max_2():
    """A broker announcing Receive Maximum 2 (Mosquitto: max_inflight_messages)."""
    with custom_broker(["--receive-maximum", "2"], ["max_inflight_messages 2"]) as addr:
        yield addr


def test_server_receive_maximum_announced(recv_max_2, uid):
    """The configured Receive Maximum is announced in CONNACK (§3.2.2.3.3)."""
    with C5(recv_max_2) as c:
        assert c.open(f"rm-{uid}").get(RECEIVE_MAXIMUM) == [2]


@pytest.mark.mosquitto_deviation(
    "Mosquitto 2.0.11 answers the PUBLISH over its Receive Maximum with PUBREC 0x97 Quota "
    "exceeded and keeps the connection, instead of DISCONNECT 0x93"
)
def test_server_receive_maximum_exceeded(recv_max_2, uid):
    """Two QoS 2 PUBLISHes awaiting PUBREL use up Receive Maximum 2 (the server has sent no
    PUBCOMP for them); a third QoS 2 PUBLISH exceeds it: "If it receives more than Receive
    Maximum QoS 1 and QoS 2 PUBLISH packets where it has not sent a PUBACK or PUBCOMP in
    response, the Server uses a DISCONNECT packet with Reason Code 0x93 (Receive Maximum
    exceeded)" [MQTT-3.3.4-7, §3.2.2.3.3]."""
    with v5(recv_max_2, f"rmx-{uid}") as c:
        for pid in (1, 2):
            c.send(publish(f"rmx/{uid}", b"x", qos=2, pid=pid, level=5))
            assert c.expect(PUBREC).body[:2] == pid.to_bytes(2, "big")
        c.send(publish(f"rmx/{uid}", b"x", qos=2, pid=3, level=5))
        expect_disconnect(c, (RECEIVE_MAXIMUM_EXCEEDED,))


def test_server_receive_maximum_quota_returns(recv_max_2, uid):
    """The quota comes back with each PUBCOMP the server sends (§4.9): after releasing one of
    two pending QoS 2 messages a new QoS 2 PUBLISH is fine; QoS 0 is not counted at all; the
    subscriber gets every message once."""
    topic = f"rmq/{uid}"
    with v5(recv_max_2, f"s-{uid}") as sub, v5(recv_max_2, f"p-{uid}") as c:
        sub.sub(topic, qos=2)
        for pid in (1, 2):
            c.send(publish(topic, b"q2-%d" % pid, qos=2, pid=pid, level=5))
            c.expect(PUBREC)
        c.send(publish(topic, b"q0", level=5))
        c.send(pubrel(1))
        assert c.expect(PUBCOMP).body[:2] == b"\x00\x01"
        c.send(publish(topic, b"q2-3", qos=2, pid=3, level=5))
        c.expect(PUBREC)
        c.send(pubrel(2) + pubrel(3))
        c.expect(PUBCOMP)
        c.expect(PUBCOMP)
        c.ping()
        c.pub5(topic, MARKER, qos=1, pid=4)
        got = sorted(m.payload for m in sub.until())
        assert got == [b"q0", b"q2-1", b"q2-2", b"q2-3"]


# --- Flow control: the client's Receive Maximum ([MQTT-3.3.4-9], §4.9) ------------------------


def test_client_receive_maximum_counts_qos2_until_pubcomp(srv, uid):
    """A QoS 2 message to the client stays unacknowledged until the client's PUBCOMP (or a
    PUBREC >= 0x80): with Receive Maximum 1 the server sends no second QoS 2 PUBLISH while the
    first is between PUBREC and PUBCOMP [MQTT-3.3.4-9, MQTT-4.9.0-2]; PUBREL and other
    non-PUBLISH packets are not held back [MQTT-3.3.4-10]."""
    topic = f"crm/{uid}"
    with v5(srv, f"s-{uid}", prop(RECEIVE_MAXIMUM, 1)) as sub:
        sub.sub(topic, qos=2)
        with v5(srv, f"p-{uid}") as pub:
            for i in range(3):
                pub.pub5(topic, b"%d" % i, qos=2, pid=i + 1)
        first = parse_publish(sub.expect(PUBLISH), 5)
        assert first.payload == b"0"
        # All three were routed before their PUBCOMPs: a second PUBLISH sent in breach of
        # Receive Maximum 1 would come before the PINGRESP, which the exhausted quota does not
        # delay [MQTT-3.3.4-10].
        assert sub.until_pingresp() == []
        sub.send(pubrec(first.pid))
        assert sub.expect(PUBREL).body[:2] == first.pid.to_bytes(2, "big")
        # PUBREC < 0x80 does not end the flow: still in flight
        assert sub.until_pingresp() == []
        sub.send(pubcomp(first.pid))
        second = parse_publish(sub.expect(PUBLISH), 5)
        assert second.payload == b"1"
        sub.send(pubrec(second.pid, level=5, rc=0x80))  # refused: counts as acknowledged
        third = parse_publish(sub.expect(PUBLISH), 5)
        assert third.payload == b"2"
        sub.send(pubrec(third.pid))
        sub.expect(PUBREL)
        sub.send(pubcomp(third.pid))
        assert sub.until_pingresp() == []


def test_refused_message_not_redelivered(srv, uid):
    """Spec: "If PUBACK or PUBREC is received containing a Reason Code of 0x80 or greater the
    corresponding PUBLISH packet is treated as acknowledged, and MUST NOT be retransmitted"
    [MQTT-4.4.0-2]: not on session resume either."""
    topic = f"refuse/{uid}"
    cid = f"s-{uid}"
    keep = prop(SESSION_EXPIRY, 30)
    with v5(srv, cid, keep) as sub:
        sub.sub(topic, qos=1)
        with v5(srv, f"p-{uid}") as pub:
            pub.pub5(topic, b"no thanks", qos=1)
        m = sub.recv5(ack=False)
        sub.send(puback(m.pid, level=5, rc=0x80))
        assert sub.until_pingresp() == []
        sub.kill()
    with C5(srv) as again:
        again.open(cid, keep, clean=False)
        assert again.session_present is True
        assert again.until_pingresp() == []  # a resumed session's queue comes right after CONNACK
        again.disconnect()
    with v5(srv, cid) as cleanup:
        cleanup.disconnect()


# --- QoS receiver rules at MQTT 5 (§4.3) ------------------------------------------------------


def test_qos2_duplicate_before_pubrel_not_redelivered(srv, uid):
    """Until it receives PUBREL, the server acknowledges every PUBLISH with the same packet id
    with PUBREC and "MUST NOT cause duplicate messages to be delivered to any onward recipients"
    [MQTT-4.3.3-10] -- even if the re-sent copy's payload differs; after PUBCOMP the same packet
    id starts a new message [MQTT-4.3.3-12]."""
    topic = f"q2dup/{uid}"
    with v5(srv, f"s-{uid}") as sub, v5(srv, f"p-{uid}") as pub:
        sub.sub(topic, qos=2)
        for copy in (b"first", b"first", b"changed"):
            pub.send(publish(topic, copy, qos=2, pid=9, dup=copy != b"first", level=5))
            p = pub.expect(PUBREC)
            assert p.body[:2] == b"\x00\x09" and ack_reason(p) < 0x80
        pub.send(pubrel(9))
        pub.expect(PUBCOMP)
        pub.send(publish(topic, b"second", qos=2, pid=9, level=5))
        pub.expect(PUBREC)
        pub.send(pubrel(9))
        pub.expect(PUBCOMP)
        pub.pub5(topic, MARKER, qos=2, pid=10)
        got = [m.payload for m in sub.until()]
        # Which copy's payload counts is not specified (a client re-sends the same packet).
        assert len(got) == 2 and got[0] in (b"first", b"changed") and got[1] == b"second", got


def test_qos1_same_packet_id_after_puback_is_new(srv, uid):
    """Spec: "After it has sent a PUBACK packet the receiver MUST treat any incoming PUBLISH packet
    that contains the same Packet Identifier as being a new Application Message, irrespective of
    the setting of its DUP flag" [MQTT-4.3.2-5]."""
    topic = f"q1new/{uid}"
    with v5(srv, f"s-{uid}") as sub, v5(srv, f"p-{uid}") as pub:
        sub.sub(topic, qos=1)
        pub.pub5(topic, b"a", qos=1, pid=3)
        pub.send(publish(topic, b"b", qos=1, pid=3, dup=True, level=5))
        pub.expect(PUBACK)
        pub.pub5(topic, MARKER, qos=1, pid=4)
        assert [m.payload for m in sub.until()] == [b"a", b"b"]
