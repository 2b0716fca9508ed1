"""MQTT 5.0 Topic Aliases in both directions (§3.3.2.3.4, §3.1.2.11.5, §3.2.2.3.8) and
Subscription Identifiers (§3.8.2.1.2, §3.3.4).

Client-to-server aliases are checked against the Topic Alias Maximum the server announced;
server-to-client ones against the maximum the test client sent, decoding what arrives the way a
client must (a topic may come as an empty Topic Name plus an alias once the alias is mapped).
"""

from __future__ import annotations

import pytest
from mqtt5_util import (
    C5,
    PROTOCOL_ERROR,
    SESSION_EXPIRY,
    SUB_ID_AVAILABLE,
    SUBSCRIPTION_ID,
    TOPIC_ALIAS,
    TOPIC_ALIAS_INVALID,
    TOPIC_ALIAS_MAXIMUM,
    AliasResolver,
    custom_broker,
    expect_disconnect,
    sub_id,
    v5,
)
from mqtt_raw import MARKER, PUBACK, prop, props, publish, subscribe

# --- client-to-server Topic Aliases ----------------------------------------------------------


def announced_alias_max(c: C5, cid: str, *extra: bytes) -> int:
    cp = c.open(cid, *extra)
    return int(cp.get(TOPIC_ALIAS_MAXIMUM, [0])[0])  # type: ignore[arg-type]


def alias(n: int) -> bytes:
    return prop(TOPIC_ALIAS, n)


def test_alias_sets_uses_and_remaps(srv, uid):
    """A PUBLISH with a Topic Name and a Topic Alias sets the mapping; an empty Topic Name with
    that alias then means that topic; the same alias with another Topic Name remaps it
    (§3.3.2.3.4). Aliases 1 and the announced maximum are accepted [MQTT-3.3.2-12]. The
    subscriber sees real topic names [MQTT-3.3.2-3], in order."""
    t1, t2 = f"ta/{uid}/one", f"ta/{uid}/two"
    with v5(srv, f"s-{uid}") as sub, C5(srv) as pub:
        top = announced_alias_max(pub, f"p-{uid}")
        assert top >= 1, "no Topic Alias Maximum announced (absent means 0) [§3.2.2.3.8]"
        sub.sub(f"ta/{uid}/#", qos=1)
        steps = [
            (t1, 1, b"a"),  # set 1 -> t1
            ("", 1, b"b"),  # use
            (t2, 1, b"c"),  # remap 1 -> t2
            ("", 1, b"d"),
            (t1, top, b"e"),  # the highest alias allowed
            ("", top, b"f"),
            ("", 1, b"g"),  # 1 still means t2 (unless top == 1)
        ]
        for i, (topic, n, payload) in enumerate(steps):
            pub.pub5(topic, payload, alias(n), qos=1, pid=i + 1)
        got = [(m.topic, m.payload) for m in (sub.recv5() for _ in steps)]
        want = [(t1, b"a"), (t1, b"b"), (t2, b"c"), (t2, b"d"), (t1, b"e"), (t1, b"f")]
        want.append((t1 if top == 1 else t2, b"g"))
        assert got == want
        pub.pub5(t1, MARKER, qos=1, pid=len(steps) + 1)
        assert sub.until() == []


def test_alias_works_at_qos0_and_for_retained(srv, uid):
    """An aliased QoS 0 PUBLISH is delivered like any other, and a retained message published
    with an empty Topic Name + alias is stored under the aliased topic: a later subscriber to
    that topic receives it with its real name (§3.3.2.3.4: the receiver "treats the incoming
    PUBLISH as if it had contained the Topic Name of the Topic Alias")."""
    topic = f"tar/{uid}"
    with v5(srv, f"s-{uid}") as sub, C5(srv) as pub:
        assert announced_alias_max(pub, f"p-{uid}") >= 1
        sub.sub(topic, qos=1)
        pub.pub5(topic, b"zero", alias(1))
        pub.pub5("", b"kept", alias(1), qos=1, retain=True)
        assert [sub.recv5().payload for _ in range(2)] == [b"zero", b"kept"]
        with v5(srv, f"late-{uid}") as late:
            late.sub(topic, qos=1)
            m = late.recv5()
            assert (m.topic, m.payload, m.retain) == (topic, b"kept", True)
        pub.pub5(topic, b"", qos=1, retain=True, pid=2)


@pytest.mark.mosquitto_deviation(
    "Mosquitto 2.0.11 answers Topic Alias 0 with DISCONNECT 0x81 Malformed Packet, but the packet "
    "parses fine: it is data 'not allowed by the protocol specification', a Protocol Error "
    "(§4.13.1 definitions)"
)
def test_alias_zero_refused(srv, uid):
    """Spec: "A Topic Alias of 0 is not permitted" [MQTT-3.3.2-8]: DISCONNECT 0x94 Topic Alias
    invalid (or 0x82 Protocol Error), then close."""
    with v5(srv, f"ta0-{uid}") as c:
        c.send(publish(f"ta0/{uid}", b"x", level=5, properties=props(alias(0))))
        expect_disconnect(c, (TOPIC_ALIAS_INVALID, PROTOCOL_ERROR))


def test_alias_above_maximum_refused(srv, uid):
    """A Topic Alias greater than the announced Topic Alias Maximum [MQTT-3.2.2-17,
    MQTT-3.3.2-9]: DISCONNECT 0x94 Topic Alias invalid ("received a PUBLISH packet containing a
    Topic Alias which is greater than the Maximum Topic Alias it sent in the ... CONNACK",
    Table 2-6)."""
    with C5(srv) as c:
        top = announced_alias_max(c, f"tamax-{uid}")
        c.send(publish(f"tamax/{uid}", b"x", level=5, properties=props(alias(top + 1))))
        expect_disconnect(c, (TOPIC_ALIAS_INVALID,))


def test_unmapped_alias_with_empty_topic_is_protocol_error(srv, uid):
    """An empty Topic Name with a Topic Alias that has no mapping on this connection cannot be
    resolved (§3.3.2.3.4: a sender may only use an empty name "if a Topic Alias mapping has
    been set at the receiver"): Protocol Error, DISCONNECT 0x82."""
    with C5(srv) as c:
        assert announced_alias_max(c, f"taun-{uid}") >= 2
        c.pub5(f"taun/{uid}", b"set", alias(1), qos=1)
        c.send(publish("", b"x", level=5, properties=props(alias(2))))
        expect_disconnect(c, (PROTOCOL_ERROR,))


def test_alias_mappings_are_per_connection(srv, uid):
    """Spec: "A receiver MUST NOT carry forward any Topic Alias mappings from one Network Connection
    to another" [MQTT-3.3.2-7]: a mapping set by a client is unknown to another client, and to
    the same client id on a new connection, even when its session is resumed."""
    cid = f"tapc-{uid}"
    keep = prop(SESSION_EXPIRY, 30)
    with C5(srv) as c:
        assert announced_alias_max(c, cid, keep) >= 1
        c.pub5(f"tapc/{uid}", b"set", alias(1), qos=1)
        with v5(srv, f"other-{uid}") as other:
            other.send(publish("", b"x", level=5, properties=props(alias(1))))
            expect_disconnect(other, (PROTOCOL_ERROR,))
        c.disconnect()
    with C5(srv) as again:
        again.open(cid, keep, clean=False)
        assert again.session_present is True
        again.send(publish("", b"x", level=5, properties=props(alias(1))))
        expect_disconnect(again, (PROTOCOL_ERROR,))
    with v5(srv, cid) as cleanup:
        cleanup.disconnect()


@pytest.fixture(scope="module")
def alias_max_3():
    with custom_broker(["--topic-alias-maximum", "3"], ["max_topic_alias 3"]) as addr:
        yield addr


def test_configured_alias_maximum_is_announced_and_exact(alias_max_3, uid):
    """With a maximum of 3 configured, CONNACK says Topic Alias Maximum 3 (§3.2.2.3.8), alias 3
    is accepted [MQTT-3.3.2-12] and alias 4 gets DISCONNECT 0x94 [MQTT-3.3.2-9]."""
    with C5(alias_max_3) as c:
        assert announced_alias_max(c, f"ta3-{uid}") == 3
        c.pub5(f"ta3/{uid}", b"ok", alias(3), qos=1)
        c.pub5("", b"ok", alias(3), qos=1, pid=2)
        c.send(publish(f"ta3/{uid}", b"x", level=5, properties=props(alias(4))))
        expect_disconnect(c, (TOPIC_ALIAS_INVALID,))


@pytest.fixture(scope="module")
def alias_max_0():
    with custom_broker(["--topic-alias-maximum", "0"], ["max_topic_alias 0"]) as addr:
        yield addr


def test_no_aliases_when_maximum_is_zero(alias_max_0, uid):
    """Topic Alias Maximum 0 configured: CONNACK has it absent or 0, and then "the Client MUST
    NOT send any Topic Aliases" [MQTT-3.2.2-18]: alias 1 is above the maximum 0, DISCONNECT
    0x94 [MQTT-3.3.2-9]."""
    with C5(alias_max_0) as c:
        assert announced_alias_max(c, f"tz-{uid}") == 0
        c.send(publish(f"tz/{uid}", b"x", level=5, properties=props(alias(1))))
        expect_disconnect(c, (TOPIC_ALIAS_INVALID,))


# --- server-to-client Topic Aliases -----------------------------------------------------------


def _fan(srv, uid: str, client_max: int | None, rounds: int = 4, ntopics: int = 4) -> AliasResolver:
    """Subscriber with the given Topic Alias Maximum (None: property absent); the publisher
    sends ``rounds`` x ``ntopics`` messages round-robin over the topics; every message must
    resolve to its own topic, in order."""
    extra = [prop(TOPIC_ALIAS_MAXIMUM, client_max)] if client_max is not None else []
    topics = [f"tac/{uid}/{'level/' * 3}{i}" for i in range(ntopics)]
    resolver = AliasResolver(client_max or 0)
    with v5(srv, f"s-{uid}", *extra) as sub, v5(srv, f"p-{uid}") as pub:
        sub.sub(f"tac/{uid}/#", qos=1)
        sent = []
        for r in range(rounds):
            for i, t in enumerate(topics):
                payload = f"{r}-{i}".encode()
                pub.pub5(t, payload, qos=r % 2, pid=r * ntopics + i + 1)
                sent.append((t, payload))
        got = []
        for _ in sent:
            m = sub.recv5()
            got.append((resolver.resolve(m), m.payload))
        assert got == sent
        pub.pub5(topics[0], MARKER, qos=1, pid=len(sent) + 1)
        assert sub.until() == []
    return resolver


@pytest.mark.parametrize("client_max", [1, 2, 10])
def test_server_aliases_within_client_maximum(srv, uid, client_max):
    """The server never sends a Topic Alias above the client's Topic Alias Maximum
    [MQTT-3.1.2-26, MQTT-3.3.2-11] nor 0 [MQTT-3.3.2-8]; an empty Topic Name only comes with an
    alias it has mapped on this connection, and every message resolves to its topic
    (§3.3.2.3.4). Using aliases is the server's choice."""
    _fan(srv, uid, client_max)


@pytest.mark.parametrize("client_max", [None, 0], ids=["absent", "zero"])
def test_no_server_aliases_when_client_maximum_absent_or_zero(srv, uid, client_max):
    """Topic Alias Maximum absent or 0 in CONNECT: "the Server MUST NOT send any Topic Aliases
    to the Client" [MQTT-3.1.2-27]."""
    resolver = _fan(srv, uid, client_max)
    assert resolver.aliased == 0


def test_server_aliases_not_carried_to_new_connection(srv, uid):
    """Topic Alias mappings last only for one Network Connection [MQTT-3.3.2-7]: after the
    subscriber reconnects (resuming its session), a queued message must come with its Topic
    Name or a newly set alias -- never as an empty name relying on the old connection's
    mapping."""
    topic = f"tanew/{uid}/x"
    cid = f"s-{uid}"
    client = [prop(TOPIC_ALIAS_MAXIMUM, 5), prop(SESSION_EXPIRY, 30)]
    with v5(srv, cid, *client) as sub, v5(srv, f"p-{uid}") as pub:
        sub.sub(topic, qos=1)
        first = AliasResolver(5)
        for i in range(3):
            pub.pub5(topic, b"%d" % i, qos=1, pid=i + 1)
            assert first.resolve(sub.recv5()) == topic
        sub.disconnect()
        pub.pub5(topic, b"queued", qos=1, pid=9)
    with C5(srv) as again:
        again.open(cid, *client, clean=False)
        m = again.recv5()
        assert AliasResolver(5).resolve(m) == topic
        assert m.payload == b"queued"
        again.disconnect()
    with v5(srv, cid) as cleanup:
        cleanup.disconnect()


# --- Subscription Identifiers -----------------------------------------------------------------


def _require_sub_ids(c: C5, cid: str, *extra: bytes) -> None:
    cp = c.open(cid, *extra)
    assert cp.get(SUB_ID_AVAILABLE, [1])[0] == 1, "server announces no Subscription Identifiers"


def ids_of(m) -> list[int]:
    values: list = m.properties.get(SUBSCRIPTION_ID, [])
    return sorted(int(x) for x in values)


def test_subscription_identifier_returned(srv, uid):
    """The Subscription Identifier of the matching subscription comes with the message
    [MQTT-3.3.4-3]; the largest value 268,435,455 (a four-byte Variable Byte Integer,
    §3.8.2.1.2) round-trips; a subscription without one gives a PUBLISH without one."""
    with C5(srv) as c:
        _require_sub_ids(c, f"si-{uid}")
        assert c.sub(f"si/{uid}/big", sub_id(268_435_455), qos=1) == [1]
        assert c.sub(f"si/{uid}/none", qos=1, pid=2) == [1]
        c.pub5(f"si/{uid}/big", b"b", qos=1, pid=3)
        assert ids_of(c.recv5()) == [268_435_455]
        c.pub5(f"si/{uid}/none", b"n", qos=1, pid=4)
        assert ids_of(c.recv5()) == []


def test_subscription_identifier_applies_to_every_filter_of_the_subscribe(srv, uid):
    """Spec: "The Subscription Identifier is associated with any subscription created or modified as
    the result of this SUBSCRIBE packet" (§3.8.2.1.2): both filters of one SUBSCRIBE carry it."""
    with C5(srv) as c:
        _require_sub_ids(c, f"sim-{uid}")
        assert c.sub([(f"sim/{uid}/a", 1), (f"sim/{uid}/b", 1)], sub_id(42)) == [1, 1]
        c.pub5(f"sim/{uid}/a", b"a", qos=1, pid=3)
        c.pub5(f"sim/{uid}/b", b"b", qos=1, pid=4)
        assert [ids_of(c.recv5()) for _ in range(2)] == [[42], [42]]


def test_overlapping_subscriptions_carry_all_identifiers(srv, uid):
    """Overlapping subscriptions of one client: "If the Server sends a single copy of the
    message it MUST include in the PUBLISH packet the Subscription Identifiers for all matching
    subscriptions which have a Subscription Identifiers, their order is not significant"
    [MQTT-3.3.4-4]; if it sends one copy per subscription, each carries the identifier of its
    own subscription [MQTT-3.3.4-5]. Either way the identifiers received are exactly {1, 2}
    (the third matching subscription has none) and no copy carries a stranger."""
    base = f"sio/{uid}"
    with C5(srv) as c:
        _require_sub_ids(c, f"sio-{uid}")
        c.sub(f"{base}/+", sub_id(1), qos=1)
        c.sub(f"{base}/#", sub_id(2), qos=1, pid=2)
        c.sub(f"{base}/x", qos=1, pid=3)
        c.pub5(f"{base}/x", b"o", qos=1, pid=4)
        c.pub5(f"{base}/x", MARKER, qos=1, pid=5)  # every copy of "o" comes before it
        copies = c.until()
        assert copies, "message not delivered"
        assert all(m.payload == b"o" for m in copies)
        seen = [i for m in copies for i in ids_of(m)]
        if len(copies) == 1:
            assert seen == [1, 2], f"single copy must carry both identifiers, got {seen}"
        else:
            assert len(copies) <= 3 and sorted(seen) == [1, 2], f"copies carry {seen}"
            assert all(len(ids_of(m)) <= 1 for m in copies)


def test_resubscribe_replaces_identifier(srv, uid):
    """Subscribing again to an identical filter replaces the subscription [MQTT-3.8.4-3], and
    with it the Subscription Identifier: 5 then 6 gives 6 only; a third SUBSCRIBE without one
    stores "the absence of a Subscription Identifier" (§3.8.2.1.2)."""
    topic = f"sir/{uid}"
    with C5(srv) as c:
        _require_sub_ids(c, f"sir-{uid}")
        c.sub(topic, sub_id(5), qos=1)
        c.sub(topic, sub_id(6), qos=1, pid=2)
        c.pub5(topic, b"1", qos=1, pid=3)
        assert ids_of(c.recv5()) == [6]
        c.pub5(topic, MARKER, qos=1, pid=30)
        assert c.until() == []  # one subscription, one copy
        c.sub(topic, qos=1, pid=4)
        c.pub5(topic, b"2", qos=1, pid=5)
        assert ids_of(c.recv5()) == []


def test_identifier_on_retained_and_queued_messages(srv, uid):
    """The identifier is stored with the subscription (§3.8.2.1.2): a retained message sent
    because of the SUBSCRIBE carries it [MQTT-3.3.4-3], and so does a message queued for the
    session while offline, delivered on resume."""
    topic = f"siq/{uid}"
    cid = f"s-{uid}"
    keep = prop(SESSION_EXPIRY, 30)
    with v5(srv, f"p-{uid}") as pub:
        pub.pub5(topic, b"ret", qos=1, retain=True)
        with C5(srv) as c:
            _require_sub_ids(c, cid, keep)
            c.sub(topic, sub_id(77), qos=1)
            m = c.recv5()
            assert (m.payload, m.retain, ids_of(m)) == (b"ret", True, [77])
            c.disconnect()
        pub.pub5(topic, b"queued", qos=1, pid=3)
    with C5(srv) as c:
        c.open(cid, keep, clean=False)
        assert c.session_present is True
        m = c.recv5()
        assert (m.payload, ids_of(m)) == (b"queued", [77])
        c.disconnect()
    with v5(srv, cid) as cleanup:
        cleanup.pub5(topic, b"", qos=1, retain=True)
        cleanup.disconnect()


def test_identifier_per_subscriber(srv, uid):
    """Each client gets the identifier of its own subscription only (§3.3.4: identifiers are
    those "received in SUBSCRIBE packet which caused it to flow" [MQTT-3.3.4-6])."""
    topic = f"sip/{uid}"
    with C5(srv) as a, C5(srv) as b, v5(srv, f"p-{uid}") as pub:
        _require_sub_ids(a, f"a-{uid}")
        _require_sub_ids(b, f"b-{uid}")
        a.sub(topic, sub_id(11), qos=1)
        b.sub(topic, sub_id(22), qos=1)
        pub.pub5(topic, b"x", qos=1)
        assert ids_of(a.recv5()) == [11]
        assert ids_of(b.recv5()) == [22]


@pytest.mark.parametrize(
    "properties,why",
    [
        pytest.param(
            props(sub_id(0)),
            "value 0",
            id="zero",
            marks=pytest.mark.mosquitto_deviation(
                "Mosquitto 2.0.11 sends DISCONNECT 0x81 Malformed Packet; §3.8.2.1.2 says "
                "Protocol Error (0x82)"
            ),
        ),
        pytest.param(
            props(sub_id(3), sub_id(4)),
            "included twice",
            id="twice",
            marks=pytest.mark.mosquitto_deviation(
                "Mosquitto 2.0.11 closes without the DISCONNECT 0x82 it SHOULD send [MQTT-4.13.1-1]"
            ),
        ),
    ],
)
def test_bad_subscription_identifier_is_protocol_error(srv, uid, properties, why):
    """Spec:
    "It is a Protocol Error if the Subscription Identifier has a value of 0. It is a Protocol
    Error to include the Subscription Identifier more than once" (§3.8.2.1.2): DISCONNECT
    0x82."""
    with C5(srv) as c:
        _require_sub_ids(c, f"sib-{uid}")
        c.send(subscribe(1, [(f"sib/{uid}", 1)], level=5, properties=properties))
        expect_disconnect(c, (PROTOCOL_ERROR,))


def test_publish_ack_unaffected_by_identifiers(srv, uid):
    """Sanity for the flows above: a subscriber with identifiers still acknowledges and gets
    no redelivery; the publisher's PUBACK carries its own packet id [MQTT-2.2.1-5]."""
    topic = f"sia/{uid}"
    with C5(srv) as c:
        _require_sub_ids(c, f"sia-{uid}")
        c.sub(topic, sub_id(9), qos=1)
        c.send(publish(topic, b"x", qos=1, pid=0x4242, level=5))
        assert c.expect(PUBACK).body[:2] == b"\x42\x42"
        assert ids_of(c.recv5()) == [9]
        c.pub5(topic, MARKER, qos=1, pid=0x4243)
        assert c.until() == []  # no redelivery
