"""Where the specifications let the server choose, mqttd's choice, pinned so that it stays
deliberate (docs/conformance.md, "Choices where the specification allows more than one answer").

The spec-level tests elsewhere accept every allowed answer; these accept only mqttd's.
"""

from __future__ import annotations

import pytest
from mqtt_raw import (
    CONNACK,
    PUBACK,
    PUBREC,
    Client,
    connect,
    connected,
    parse_ack,
    parse_connack,
    publish,
)


@pytest.mark.parametrize(
    "qos, ack",
    [
        pytest.param(
            1,
            PUBACK,
            marks=pytest.mark.mosquitto_deviation("Mosquitto's PUBACK says 0x10 here"),
        ),
        (2, PUBREC),
    ],
)
def test_ack_without_subscribers_is_success(srv, uid, qos, ack):
    """MQTT 5 §3.4.2.1 / §3.5.2.1 allow 0x00 or 0x10 (No matching subscribers) for a message no
    one subscribes to; mqttd says 0x00: with other nodes (Redis) it cannot know when it acks."""
    with connected(srv, f"n-{uid}", 5) as c:
        c.send(publish(f"nobody/{uid}", b"x", qos=qos, pid=5, level=5))
        assert parse_ack(c.expect(ack), ack, 5) == (5, 0x00)


@pytest.mark.parametrize(
    "level, packet, code",
    [
        (4, connect("", level=4, clean=False), 0x02),  # [MQTT-3.1.3-8]
        pytest.param(
            3,
            connect("x" * 24, level=3),
            0x02,  # 3.1: ids of 1 to 23 characters
            marks=pytest.mark.mosquitto_deviation("Mosquitto accepts longer 3.1 ids"),
        ),
        (5, connect("", level=5, properties=b"\x05\x15\x00\x02zz"), 0x8C),  # unknown method
    ],
    ids=["v311-empty-id-persistent", "v31-long-id", "v5-unknown-auth-method"],
)
def test_refused_connect_gets_connack_before_close(srv, packet, level, code):
    """A refused CONNECT may simply be closed, or answered with a CONNACK carrying a reason code
    first [MQTT-3.2.2-6] (MQTT 5 [MQTT-3.1.4-6]); mqttd always sends the CONNACK, so the client
    can say why."""
    c = Client(srv, level)
    try:
        c.send(packet)
        got = c.wait_closed()
        assert [p.type for p in got] == [CONNACK], got
        assert parse_connack(got[0], level)[1] == code
    finally:
        c.close()


@pytest.mark.mosquitto_deviation("Mosquitto's 200-level filter with + does not match the topic")
@pytest.mark.parametrize("level", [4, 5])
def test_topics_up_to_max_topic_levels(srv, uid, level):
    """Neither spec limits the number of levels; mqttd takes 200 by default (max_topic_levels,
    Mosquitto's figure; docs/security.md). A 200-level topic reaches a 200-level filter with a
    `+` in every other level and a `#` filter."""
    deep = f"deep/{uid}/" + "/".join(f"l{i}" for i in range(198))
    assert deep.count("/") == 199  # 200 levels
    filt = "/".join("+" if i % 2 else part for i, part in enumerate(deep.split("/")))
    with connected(srv, f"s-{uid}", level) as sub, connected(srv, f"p-{uid}", level) as pub:
        sub.subscribe([(filt, 1), (f"deep/{uid}/#", 0)])
        pub.publish(deep, b"far", qos=1)
        m = sub.recv_publish()
        assert (m.topic, m.payload, m.qos) == (deep, b"far", 1)  # one copy, the higher QoS


@pytest.mark.mosquitto_deviation("Mosquitto grants a filter deeper than 200 levels (never matches)")
@pytest.mark.parametrize("level", [4, 5])
def test_deeper_than_max_topic_levels_is_refused(srv, uid, level):
    """One level more: the filter gets SUBACK 0x8F Topic Filter invalid (3.1.1: 0x80), and a
    PUBLISH is a Topic Name invalid: MQTT 5 DISCONNECT 0x90, 3.1.1 closed [MQTT-4.8.0-1]."""
    deep = f"deep/{uid}/" + "/".join(f"l{i}" for i in range(199))
    with connected(srv, f"s-{uid}", level) as c:
        assert c.subscribe([(deep, 0), (f"deep/{uid}/#", 0)]) == [
            0x8F if level == 5 else 0x80,
            0,
        ]
        c.send(publish(deep, b"x", qos=0, level=level))
        got = c.wait_closed()
        if level == 5:
            assert [p.type for p in got] == [14] and got[0].body[:1] == b"\x90", got


def test_max_topic_levels_can_be_raised():
    """--max-topic-levels 6000: a 5,000-level topic reaches a 5,000-level filter."""
    from tests.conftest import start_broker, stop_broker

    b = start_broker("--max-topic-levels", "6000")
    try:
        deep = "deep/" + "/".join(f"l{i}" for i in range(5000))
        filt = "/".join("+" if i % 2 else part for i, part in enumerate(deep.split("/")))
        with connected((b.host, b.port), "s-deep", 5) as sub:
            with connected((b.host, b.port), "p-deep", 5) as pub:
                sub.subscribe([(filt, 1)])
                pub.publish(deep, b"far", qos=1)
                m = sub.recv_publish()
                assert (m.topic, m.payload) == (deep, b"far")
    finally:
        stop_broker(b)
