"""Packets that are legal but huge in what they carry: 50,000 User Properties, one SUBSCRIBE of
10,000 filters, 65,535 QoS 2 packet ids never released.

Proves: the broker takes each in a few seconds and keeps what the rules say to keep -- all the
User Properties forwarded in order, one SUBACK code per filter in order, one PUBREC per id and no
second delivery of an id awaiting its PUBREL -- within a stated memory bound, and refuses only
what is past a limit it announced (a subscriber's Maximum Packet Size, the Receive Maximum).
"""

from __future__ import annotations

import pytest
from mqtt_raw import (
    PUBACK,
    PUBREC,
    SUBACK,
    UNSUBACK,
    Client,
    assert_closed,
    parse_ack,
    parse_suback,
    prop,
    props,
    publish,
    subscribe,
    unsubscribe,
)

from .support import (
    BASELINE_RSS_MIB,
    SLACK_MIB,
    assert_healthy,
    connected_client,
    hostile_broker,
    read_packets,
    send_in_background,
    unique,
)

USER_PROPERTY = 0x26
MAXIMUM_PACKET_SIZE = 0x27
RECEIVE_MAXIMUM_EXCEEDED = 0x93
MARKER = b"marker"
#: 50,000 User Properties make a ~650 KB packet, decoded into 50,000 tuples of two strings
#: (about 10 MiB of Python objects while the message lives): 16 MiB for it.
PROPERTIES_RSS_BOUND_MIB = BASELINE_RSS_MIB + SLACK_MIB + 16
#: 10,000 subscriptions: a tree node and a subscription entry each (~1 KiB): 10 MiB.
FILTERS_RSS_BOUND_MIB = BASELINE_RSS_MIB + SLACK_MIB + 10
#: 65,535 ids awaiting PUBREL: a set of small ints (~4 MiB), plus the read buffers: 8 MiB.
QOS2_RSS_BOUND_MIB = BASELINE_RSS_MIB + SLACK_MIB + 8


@pytest.fixture(scope="module")
def broker():
    with hostile_broker() as b:
        yield b


def user_properties(n: int) -> list[tuple[str, str]]:
    return [(f"k{i}", f"v{i % 10}") for i in range(n)]


def test_publish_with_50000_user_properties(broker):
    """Attack: an MQTT 5 PUBLISH QoS 1 carrying 50,000 User Properties (about 650 KB, under the
    1 MiB maximum packet size). Expected: PUBACK within 5 s; an MQTT 5 subscriber receives all
    50,000 in their order [MQTT-3.3.2-17/18]; a 3.1.1 subscriber receives the payload; a
    subscriber whose Maximum Packet Size is 64 KiB is not sent it [MQTT-3.1.2-24] but gets the
    next message."""
    topic = f"hostile/{unique('up')}"
    pairs = user_properties(50_000)
    block = props(*(prop(USER_PROPERTY, p) for p in pairs))
    assert 500_000 < len(block) < 1_000_000
    with (
        connected_client(broker.addr, 5) as v5,
        connected_client(broker.addr, 4) as v4,
        Client(broker.addr, 5) as small,
        connected_client(broker.addr, 5) as pub,
    ):
        small.connect(unique("small"), properties=props(prop(MAXIMUM_PACKET_SIZE, 65536)))
        for sub in (v5, v4, small):
            sub.subscribe(topic, qos=1)
        pub.send(publish(topic, b"payload", qos=1, pid=7, level=5, properties=block))
        assert parse_ack(pub.expect(PUBACK, timeout=5.0), PUBACK, 5)[0] == 7
        got = v5.recv_publish(timeout=5.0)
        assert got.payload == b"payload"
        assert got.properties.get(USER_PROPERTY) == pairs, "user properties changed in transit"
        assert v4.recv_publish(timeout=5.0).payload == b"payload"
        pub.publish(topic, MARKER)
        assert small.until() == [], "a message over the subscriber's Maximum Packet Size came"
    assert_healthy(broker, PROPERTIES_RSS_BOUND_MIB)


@pytest.mark.parametrize("packet", ["connect", "subscribe"])
def test_connect_and_subscribe_with_50000_user_properties(broker, packet):
    """Attack: 50,000 User Properties in a CONNECT, or in a SUBSCRIBE (both allow any number,
    §3.1.2.11.8, §3.8.2.1.3). Expected: accepted -- CONNACK 0, or a SUBACK granting the filter
    -- within 5 s, and the connection answers PINGREQ."""
    block = props(*(prop(USER_PROPERTY, p) for p in user_properties(50_000)))
    if packet == "connect":
        with Client(broker.addr, 5, timeout=5.0) as c:
            c.connect(unique("cup"), properties=block)
            c.ping()
    else:
        with connected_client(broker.addr, 5) as c:
            c.send(subscribe(3, [(f"hostile/{unique('sup')}", 1)], level=5, properties=block))
            assert parse_suback(c.expect(SUBACK, timeout=5.0), 5) == (3, [1])
            c.ping()
    assert_healthy(broker, PROPERTIES_RSS_BOUND_MIB)


@pytest.mark.parametrize("level", [4, 5])
def test_one_subscribe_of_10000_filters(broker, level):
    """Attack: one SUBSCRIBE of 10,000 distinct filters (about 230 KB). Expected: one SUBACK
    within 5 s with 10,000 codes, all granted, in the filters' order [MQTT-3.8.4-6] (3.1.1
    [MQTT-3.9.3-1]); a message to the first, middle and last filter each comes once; one
    UNSUBSCRIBE of all 10,000 gets its UNSUBACK (MQTT 5: 10,000 codes 0x00 Success)."""
    prefix = f"hostile/{unique('10k')}"
    filters = [f"{prefix}/{i}" for i in range(10_000)]
    with connected_client(broker.addr, level) as c, connected_client(broker.addr, 4) as pub:
        c.send(subscribe(9, [(f, 1) for f in filters], level=level))
        assert parse_suback(c.expect(SUBACK, timeout=5.0), level) == (9, [1] * 10_000)
        for i in (0, 5_000, 9_999):
            pub.publish(filters[i], str(i).encode())
        pub.publish(filters[1], MARKER)
        assert [m.payload for m in c.until(timeout=5.0)] == [b"0", b"5000", b"9999"]
        c.send(unsubscribe(10, filters, level=level))
        p = c.expect(UNSUBACK, timeout=5.0)
        if level == 5:
            assert parse_suback(p, 5, UNSUBACK) == (10, [0] * 10_000)
        else:
            assert parse_ack(p, UNSUBACK, 4) == (10, 0)
    assert_healthy(broker, FILTERS_RSS_BOUND_MIB)


def test_one_subscribe_of_10000_identical_filters(broker):
    """Attack: one SUBSCRIBE repeating the same filter 10,000 times. Expected: 10,000 SUBACK
    codes, all granted; each repeat replaces the subscription [MQTT-3.8.4-3], so a message comes
    once, not 10,000 times; one UNSUBSCRIBE removes it (no message after)."""
    topic = f"hostile/{unique('same')}"
    marker_topic = f"{topic}-marker"
    with connected_client(broker.addr, 5) as c, connected_client(broker.addr, 4) as pub:
        c.subscribe(marker_topic)
        c.send(subscribe(4, [(topic, 1)] * 10_000, level=5))
        assert parse_suback(c.expect(SUBACK, timeout=5.0), 5) == (4, [1] * 10_000)
        pub.publish(topic, b"once")
        pub.publish(marker_topic, MARKER)
        got = c.until(timeout=5.0)
        assert [m.payload for m in got] == [b"once"], f"{len(got)} copies"
        assert c.unsubscribe([topic]) == [0]
        pub.publish(topic, b"after")
        pub.publish(marker_topic, MARKER)
        assert c.until() == [], "delivered after the one UNSUBSCRIBE"
    assert_healthy(broker, FILTERS_RSS_BOUND_MIB)


@pytest.mark.parametrize("level", [4, 5])
def test_65535_qos2_ids_never_released(broker, level):
    """Attack: one client publishes QoS 2 with every packet id 1..65,535 and never sends
    PUBREL. Expected: one PUBREC per id, in order, within 10 s (65,535 is within the default
    Receive Maximum); the connection still answers PINGREQ; a resend of id 1 with DUP (still
    awaiting PUBREL) gets PUBREC again and is not delivered again [MQTT-4.3.3-9/10, 3.1.1
    MQTT-4.3.3-2 method B]; RSS stays bounded while the 65,535 ids are held."""
    topic = f"hostile/{unique('q2')}"
    n = 65_535
    with connected_client(broker.addr, level) as c, connected_client(broker.addr, 4) as sub:
        sub.subscribe(topic)
        batch = b"".join(publish(topic, b"q", qos=2, pid=i, level=level) for i in range(1, n + 1))
        sender = send_in_background(c, batch)
        acks = read_packets(c, n, timeout=10.0)
        sender.join(5)
        ids = [parse_ack(p, PUBREC, level)[0] for p in acks]
        assert ids == list(range(1, n + 1)), "not one PUBREC per id in order"
        assert all(parse_ack(p, PUBREC, level)[1] < 0x80 for p in acks)
        c.ping()
        got = read_packets(sub, n, timeout=10.0)
        assert len(got) == n  # each delivered once at PUBLISH time (QoS 0 subscription)
        c.send(publish(topic, b"again", qos=2, pid=1, dup=True, level=level))
        assert parse_ack(c.expect(PUBREC), PUBREC, level)[0] == 1
        c.send(publish(topic, MARKER, level=level))  # same publisher, same topic: ordered
        assert [m.payload for m in sub.until()] == [], "a resent id awaiting PUBREL came again"
        assert_healthy(broker, QOS2_RSS_BOUND_MIB)
    assert_healthy(broker, QOS2_RSS_BOUND_MIB)


def test_qos2_ids_past_receive_maximum():
    """Attack: an MQTT 5 client keeps 101 QoS 2 ids unreleased against --receive-maximum 100
    (announced in CONNACK). Expected: 100 PUBRECs, then DISCONNECT 0x93 Receive Maximum
    exceeded and the close [MQTT-3.3.4-9]."""
    with hostile_broker("--receive-maximum", "100") as b:
        c = connected_client(b.addr, 5)
        try:
            topic = f"hostile/{unique('rm')}"
            c.send(b"".join(publish(topic, b"q", qos=2, pid=i, level=5) for i in range(1, 102)))
            acks = read_packets(c, 100, timeout=5.0)
            assert [parse_ack(p, PUBREC, 5)[0] for p in acks] == list(range(1, 101))
            assert_closed(c, (RECEIVE_MAXIMUM_EXCEEDED,))
        finally:
            c.close()
        assert_healthy(b, BASELINE_RSS_MIB + SLACK_MIB)
