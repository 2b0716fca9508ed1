"""Deep topics: a topic name of 65,535 levels, a topic filter of 10,000.

Proves: the broker refuses a topic name deeper than --max-topic-levels (default 200) as an
invalid topic name, in a PUBLISH and in a will, and a deeper filter in a SUBSCRIBE with a
failure code for that filter alone; the limit is exact (200 levels pass); and with the limit
raised to its maximum, a 65,535-level topic is matched against a 65,535-level filter and a
10,000-level wildcard filter without the matcher falling over.
"""

from __future__ import annotations

import pytest
from mqtt_raw import CONNACK, Client, assert_closed, connect, parse_connack, publish

from .support import (
    BASELINE_RSS_MIB,
    SLACK_MIB,
    assert_healthy,
    connected_client,
    hostile_broker,
    unique,
)

TOPIC_FILTER_INVALID = 0x8F
TOPIC_NAME_INVALID = 0x90
SUBACK_FAILURE = 0x80  # MQTT 3.1.1 SUBACK return code [MQTT 3.1.1 §3.9.3]
DEFAULT_MAX_LEVELS = 200
#: 65,535 empty levels: the deepest topic a 2-byte string length allows [MQTT 5 §1.5.4]
DEEPEST = "/" * 65_534
#: a wildcard filter of 10,000 levels (19,999 bytes)
FILTER_10K = "+/" * 9_999 + "#"
MARKER = b"marker"
#: A refused deep topic costs nothing after its packet; a raised limit keeps a 65,535-node path
#: in the subscription tree while subscribed (a few MiB in Python objects): 8 MiB for it.
RSS_BOUND_MIB = BASELINE_RSS_MIB + SLACK_MIB
DEEP_TREE_RSS_BOUND_MIB = BASELINE_RSS_MIB + SLACK_MIB + 8


def levels(n: int, word: str = "a") -> str:
    return "/".join([word] * n)


@pytest.fixture(scope="module")
def broker():
    """mqttd with its defaults: --max-topic-levels 200."""
    with hostile_broker() as b:
        yield b


@pytest.mark.parametrize("level", [4, 5])
@pytest.mark.parametrize("topic", [DEEPEST, levels(DEFAULT_MAX_LEVELS + 1)], ids=["65535", "201"])
def test_publish_topic_too_deep(broker, level, topic):
    """Attack: a PUBLISH whose topic has 65,535 levels (or 201, one past the default limit of
    200). Expected: refused as an invalid topic name: MQTT 5 gets DISCONNECT 0x90 Topic Name
    invalid ("correctly formed but not accepted by this Server", §3.14.2.1), 3.1.1 is closed
    (it has no way to refuse a PUBLISH [MQTT-4.8.0-1]); a subscriber to # gets nothing of it."""
    with connected_client(broker.addr, 4) as observer:
        observer.subscribe("#")
        c = connected_client(broker.addr, level)
        try:
            c.send(publish(topic, b"deep", qos=1, level=level))
            assert_closed(c, (TOPIC_NAME_INVALID,))
        finally:
            c.close()
        with connected_client(broker.addr, 4) as publisher:
            publisher.publish(f"hostile/{unique('m')}", MARKER)
        assert observer.until() == [], "the too-deep PUBLISH was delivered"
    assert_healthy(broker, RSS_BOUND_MIB)


@pytest.mark.parametrize("level", [4, 5])
def test_publish_topic_at_the_limit_delivered(broker, level):
    """Control: a topic of exactly 200 levels is a valid topic name under the default limit:
    PUBACK 0, and a subscriber to that 200-level filter receives it."""
    topic = levels(DEFAULT_MAX_LEVELS, unique("l"))
    with connected_client(broker.addr, level) as sub, connected_client(broker.addr, level) as pub:
        assert sub.subscribe(topic, qos=1) == [1]
        pub.publish(topic, b"at the limit", qos=1)
        got = sub.recv_publish()
        assert (got.topic, got.payload) == (topic, b"at the limit")
    assert_healthy(broker, RSS_BOUND_MIB)


@pytest.mark.parametrize("level", [4, 5])
def test_subscribe_filter_of_10000_levels(broker, level):
    """Attack: one SUBSCRIBE with a 10,000-level filter (+/+/.../#) and a normal filter.
    Expected: the SUBACK refuses that filter alone -- MQTT 5: 0x8F Topic Filter invalid
    ("correctly formed but not allowed", §3.9.3), 3.1.1: 0x80 Failure -- and grants the other;
    the connection stays open (PINGREQ answered) and a message to the normal filter comes."""
    ok = f"hostile/{unique('ok')}"
    refused = TOPIC_FILTER_INVALID if level == 5 else SUBACK_FAILURE
    with connected_client(broker.addr, level) as c:
        assert c.subscribe([(FILTER_10K, 1), (ok, 1)]) == [refused, 1]
        c.ping()
        with connected_client(broker.addr, 4) as pub:
            pub.publish(ok, b"normal")
        assert c.recv_publish().payload == b"normal"
    assert_healthy(broker, RSS_BOUND_MIB)


@pytest.mark.parametrize("level", [4, 5])
def test_will_topic_too_deep(broker, level):
    """Attack: a CONNECT whose will topic has 65,535 levels. Expected: refused as an invalid
    topic name -- MQTT 5: CONNACK 0x90 or just the close, 3.1.1: closed without a CONNACK
    [MQTT-3.1.4-1] -- and the will is never published."""
    with connected_client(broker.addr, 4) as observer:
        observer.subscribe("#")
        c = Client(broker.addr, level)
        try:
            c.send(connect(unique("dw"), level=level, will_topic=DEEPEST, will_payload=b"W"))
            got = c.wait_closed()
        finally:
            c.close()
        for p in got:
            assert p.type == CONNACK and level == 5, f"unexpected {p!r}"
            assert parse_connack(p, 5)[1] == TOPIC_NAME_INVALID, f"{p!r}"
        with connected_client(broker.addr, 4) as publisher:
            publisher.publish(f"hostile/{unique('m')}", MARKER)
        assert observer.until() == [], "a refused will was published"
    assert_healthy(broker, RSS_BOUND_MIB)


def test_deepest_topic_matched_when_the_limit_allows_it():
    """Attack on the matcher: with --max-topic-levels 65535 (its largest), one client subscribes
    to the 65,535-level filter "////...", another to the 10,000-level "+/+/.../#", and a
    65,535-level PUBLISH QoS 1 follows. Expected: PUBACK; each subscriber receives it exactly
    once (then the marker) [MQTT-4.7.1-1/2 wildcard semantics]; both filters can be
    unsubscribed (UNSUBACK); the broker stays healthy with the deep path freed."""
    with hostile_broker("--max-topic-levels", "65535") as b:
        with (
            connected_client(b.addr, 5) as exact,
            connected_client(b.addr, 5) as wild,
            connected_client(b.addr, 5) as pub,
        ):
            assert exact.subscribe(DEEPEST, qos=1) == [1]
            assert wild.subscribe(FILTER_10K, qos=1) == [1]
            pub.publish(DEEPEST, b"deep", qos=1)
            pub.publish(DEEPEST, MARKER)
            for sub in (exact, wild):
                got = sub.recv_publish()
                assert (got.topic, got.payload) == (DEEPEST, b"deep")
                assert sub.until() == [], "the deep message came twice"
            assert exact.unsubscribe([DEEPEST]) == [0]
            assert wild.unsubscribe([FILTER_10K]) == [0]
        assert_healthy(b, DEEP_TREE_RSS_BOUND_MIB)
