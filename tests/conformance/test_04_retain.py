"""Retained messages: storage, delivery to new subscribers with RETAIN=1, replacement, clearing
by an empty payload, the RETAIN flag on live forwarding, MQTT 5 Retain As Published and Retain
Handling.

The retained messages for a SUBSCRIBE are sent while the broker handles it, so "no other
retained message" is checked with ``until_pingresp``: they would all come before the PINGRESP."""

from __future__ import annotations

import pytest
from mqtt_raw import SUBACK, Client, connected, parse_suback, subscribe

LEVELS = [4, 5]


def late_subscriber(srv, cid: str, topic_filter: str, qos: int = 1, level: int = 4) -> Client:
    c = connected(srv, cid, level)
    assert c.subscribe(topic_filter, qos) == [qos]
    return c


@pytest.mark.parametrize("level", LEVELS)
def test_retained_delivered_to_new_subscriber(srv, uid, level):
    """A retained message is stored and sent to a later subscriber with RETAIN=1
    [MQTT-3.3.1-5, MQTT-3.3.1-8]."""
    topic = f"ret/{uid}"
    with connected(srv, f"p-{uid}", level) as pub:
        pub.publish(topic, b"kept", qos=1, retain=True)
    with late_subscriber(srv, f"s-{uid}", topic, 1, level) as sub:
        m = sub.recv_publish()
        assert (m.topic, m.payload, m.retain, m.qos) == (topic, b"kept", True, 1)
        assert sub.until_pingresp() == []


@pytest.mark.parametrize("level", LEVELS)
def test_live_forwarding_clears_retain_flag(srv, uid, level):
    """A retained PUBLISH forwarded to an existing subscription has RETAIN=0 [MQTT-3.3.1-9]
    (MQTT 5 without Retain As Published: [MQTT-3.3.1-12])."""
    topic = f"live/{uid}"
    with late_subscriber(srv, f"s-{uid}", topic, 1, level) as sub:
        with connected(srv, f"p-{uid}", level) as pub:
            pub.publish(topic, b"live", qos=1, retain=True)
        m = sub.recv_publish()
        assert (m.payload, m.retain) == (b"live", False)
    # ... and it was stored all the same.
    with late_subscriber(srv, f"s2-{uid}", topic, 1, level) as sub2:
        m = sub2.recv_publish()
        assert (m.payload, m.retain) == (b"live", True)


def test_newer_retained_replaces_older(srv, uid):
    """Only the latest retained message per topic is kept [MQTT-3.3.1-5]."""
    topic = f"replace/{uid}"
    with connected(srv, f"p-{uid}", 4) as pub:
        pub.publish(topic, b"old", qos=1, retain=True)
        pub.publish(topic, b"new", qos=1, retain=True)
    with late_subscriber(srv, f"s-{uid}", topic) as sub:
        assert sub.recv_publish().payload == b"new"
        assert sub.until_pingresp() == []


@pytest.mark.parametrize("level", LEVELS)
def test_empty_retained_payload_clears(srv, uid, level):
    """A retained PUBLISH with a zero-byte payload is forwarded normally to current subscribers
    and removes the retained message; it is not stored itself [MQTT-3.3.1-10, MQTT-3.3.1-11]."""
    topic = f"clear/{uid}"
    with connected(srv, f"p-{uid}", level) as pub:
        pub.publish(topic, b"soon gone", qos=1, retain=True)
        with late_subscriber(srv, f"s-{uid}", topic, 1, level) as sub:
            assert sub.recv_publish().retain is True
            pub.publish(topic, b"", qos=1, retain=True)
            m = sub.recv_publish()
            assert (m.payload, m.retain) == (b"", False)
    with late_subscriber(srv, f"s2-{uid}", topic, 1, level) as sub2:
        assert sub2.until_pingresp() == []


def test_qos0_retained_replaces_previous(srv, uid):
    """A QoS 0 retained message discards the previously retained one for the topic
    [MQTT-3.3.1-7]; it SHOULD be stored itself (MAY be discarded later)."""
    topic = f"q0ret/{uid}"
    with connected(srv, f"p-{uid}", 4) as pub:
        pub.publish(topic, b"q1", qos=1, retain=True)
        pub.publish(topic, b"q0", qos=0, retain=True)
        pub.ping()  # the QoS 0 publish has been processed once PINGRESP is back
    with late_subscriber(srv, f"s-{uid}", topic, 1) as sub:
        got = sub.until_pingresp()
        if not got:
            return  # discarded: allowed
        assert [(m.payload, m.qos, m.retain) for m in got] == [(b"q0", 0, True)]


def test_retained_qos_downgraded_to_subscription(srv, uid):
    """A retained message is delivered at min(its QoS, granted QoS)."""
    topic = f"retqos/{uid}"
    with connected(srv, f"p-{uid}", 4) as pub:
        pub.publish(topic, b"r2", qos=2, retain=True)
    with late_subscriber(srv, f"s0-{uid}", topic, 0) as s0:
        m = s0.recv_publish()
        assert (m.qos, m.retain) == (0, True)
    with late_subscriber(srv, f"s1-{uid}", topic, 1) as s1:
        m = s1.recv_publish()
        assert (m.qos, m.retain) == (1, True)


def test_wildcard_subscription_gets_all_matching_retained(srv, uid):
    """A wildcard subscription receives every matching retained message, each with RETAIN=1."""
    with connected(srv, f"p-{uid}", 4) as pub:
        for t in ("a", "b/c", "d/e/f"):
            pub.publish(f"many/{uid}/{t}", t.encode(), qos=1, retain=True)
        pub.publish(f"other/{uid}/a", b"no", qos=1, retain=True)
    with late_subscriber(srv, f"s-{uid}", f"many/{uid}/#") as sub:
        got = sorted((m.topic, m.retain) for m in (sub.recv_publish() for _ in range(3)))
        assert got == [(f"many/{uid}/{t}", True) for t in ("a", "b/c", "d/e/f")]
        assert sub.until_pingresp() == []


def test_v311_resubscribe_resends_retained(srv, uid):
    """Re-subscribing with an identical filter re-sends matching retained messages
    [MQTT-3.8.4-3]."""
    topic = f"resend/{uid}"
    with connected(srv, f"p-{uid}", 4) as pub:
        pub.publish(topic, b"again", qos=1, retain=True)
    with late_subscriber(srv, f"s-{uid}", topic) as sub:
        assert sub.recv_publish().payload == b"again"
        assert sub.subscribe(topic, 1, pid=2) == [1]
        m = sub.recv_publish()
        assert (m.payload, m.retain) == (b"again", True)


def test_v5_retain_as_published(srv, uid):
    """MQTT 5 Retain As Published (options bit 3): live forwarding keeps RETAIN=1
    [MQTT-3.3.1-13]."""
    topic = f"rap/{uid}"
    with Client(srv, 5) as sub, connected(srv, f"p-{uid}", 5) as pub:
        sub.connect(f"s-{uid}")
        sub.send(subscribe(1, [(topic, 0x08 | 1)], level=5))
        assert parse_suback(sub.expect(SUBACK), 5) == (1, [1])
        pub.publish(topic, b"flagged", qos=1, retain=True)
        pub.publish(topic, b"plain", qos=1, retain=False)
        m1, m2 = sub.recv_publish(), sub.recv_publish()
        assert (m1.payload, m1.retain) == (b"flagged", True)
        assert (m2.payload, m2.retain) == (b"plain", False)
    with connected(srv, f"c-{uid}", 5) as cleanup:
        cleanup.publish(topic, b"", qos=1, retain=True)


def test_v5_retain_handling(srv, uid):
    """MQTT 5 Retain Handling: 0 sends retained messages on every subscribe, 1 only when the
    subscription is new, 2 never [MQTT-3.3.1-9, -10, -11]."""
    topic = f"rh/{uid}"
    with connected(srv, f"p-{uid}", 5) as pub:
        pub.publish(topic, b"rh", qos=1, retain=True)

    def sub_with(c: Client, handling: int, pid: int) -> None:
        c.send(subscribe(pid, [(topic, (handling << 4) | 1)], level=5))
        assert parse_suback(c.expect(SUBACK), 5) == (pid, [1])

    with connected(srv, f"s2-{uid}", 5) as c:
        sub_with(c, 2, 1)
        assert c.until_pingresp() == []
    with connected(srv, f"s1-{uid}", 5) as c:
        sub_with(c, 1, 1)
        assert c.recv_publish().payload == b"rh"
        sub_with(c, 1, 2)  # exists already: nothing this time
        assert c.until_pingresp() == []
    with connected(srv, f"s0-{uid}", 5) as c:
        sub_with(c, 0, 1)
        assert c.recv_publish().payload == b"rh"
        sub_with(c, 0, 2)
        assert c.recv_publish().payload == b"rh"
