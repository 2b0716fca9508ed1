"""SUBSCRIBE/SUBACK, UNSUBSCRIBE/UNSUBACK, topic filter matching (+, #, $-topics) and
overlapping subscriptions."""

from __future__ import annotations

import pytest
from mqtt_raw import (
    MARKER,
    PUBLISH,
    SUBACK,
    Client,
    Pub,
    connected,
    parse_publish,
    parse_suback,
    prop,
    props,
    subscribe,
)

LEVELS = [4, 5]


def collect(sub: Client, pub: Client, topics: list[str], marker: str) -> list[Pub]:
    """Publish each topic (payload = topic) then a marker on ``marker`` (which ``sub`` is
    subscribed to), and return every PUBLISH ``sub`` got before the marker.

    The spec orders messages per topic [MQTT-4.6.0-6]; across topics this relies on the broker
    forwarding one publisher's messages in the order they came, as Mosquitto and mqttd do (one
    connection's packets are handled in order): a stray or extra copy arrives before the marker,
    however late it is, where a quiet window after the marker would let it pass."""
    for t in topics:
        pub.publish(t, t.encode())
    pub.publish(marker, MARKER)
    return sub.until(MARKER)


@pytest.mark.parametrize("level", LEVELS)
def test_suback_grants_requested_qos_in_order(srv, uid, level):
    """One SUBACK code per filter, in the order of the filters [MQTT-3.8.4-6 / 3.9.3-1], with the
    same packet id as the SUBSCRIBE [MQTT-3.8.4-2]; QoS 0/1/2 all granted."""
    with Client(srv, level) as c:
        c.connect(f"s-{uid}")
        c.send(
            subscribe(
                0x0102, [(f"g/{uid}/0", 0), (f"g/{uid}/1", 1), (f"g/{uid}/2", 2)], level=level
            )
        )
        pid, codes = parse_suback(c.expect(SUBACK), level)
        assert pid == 0x0102
        assert codes == [0, 1, 2]


@pytest.mark.parametrize("level", LEVELS)
def test_unsubscribe_stops_delivery(srv, uid, level):
    """UNSUBACK carries the UNSUBSCRIBE's packet id [MQTT-3.10.4-4]; afterwards the broker stops
    sending messages for that filter [MQTT-3.10.4-2]."""
    topic, marker = f"unsub/{uid}", f"unsub/{uid}-marker"
    with connected(srv, f"s-{uid}", level) as sub, connected(srv, f"p-{uid}", level) as pub:
        sub.subscribe([(topic, 1), (marker, 1)])
        pub.publish(topic, b"before", qos=1)
        assert sub.recv_publish().payload == b"before"
        codes = sub.unsubscribe([topic], pid=0x0A0B)
        if level >= 5:
            assert codes == [0x00]
        pub.publish(topic, b"after", qos=1)
        pub.publish(marker, MARKER, qos=1)
        assert sub.until() == []


@pytest.mark.parametrize("level", LEVELS)
def test_unsubscribe_unknown_filter_still_acked(srv, uid, level):
    """UNSUBACK is sent even if no filter matched [MQTT-3.10.4-5]; MQTT 5 says 0x11
    No subscription existed."""
    with connected(srv, f"s-{uid}", level) as c:
        codes = c.unsubscribe([f"never/{uid}"], pid=33)
        if level >= 5:
            assert codes == [0x11]
        c.ping()


def test_unsubscribe_removes_only_the_exact_filter(srv, uid):
    """UNSUBSCRIBE compares filters character by character [MQTT-3.10.4-1]: removing `x/+`
    keeps `x/b`."""
    with connected(srv, f"s-{uid}", 4) as sub, connected(srv, f"p-{uid}", 4) as pub:
        sub.subscribe([(f"{uid}/x/+", 0), (f"{uid}/x/b", 0)])
        sub.unsubscribe([f"{uid}/x/+"])
        pub.publish(f"{uid}/x/a", b"a")
        pub.publish(f"{uid}/x/b", b"b")
        m = sub.recv_publish()
        assert m.topic == f"{uid}/x/b"
        pub.publish(f"{uid}/x/b", MARKER)
        assert sub.until() == []


def test_resubscribe_replaces_subscription(srv, uid):
    """Subscribing again to an identical filter replaces the subscription (new QoS), it does not
    add a second one [MQTT-3.8.4-3]."""
    topic = f"resub/{uid}"
    with connected(srv, f"s-{uid}", 4) as sub, connected(srv, f"p-{uid}", 4) as pub:
        assert sub.subscribe(topic, 2) == [2]
        assert sub.subscribe(topic, 0, pid=2) == [0]
        pub.publish(topic, b"x", qos=2)
        m = sub.recv_publish()
        assert m.qos == 0
        pub.publish(topic, MARKER, qos=2)  # same topic and QoS: ordered [MQTT-4.6.0-6]
        assert sub.until() == []  # one copy, not two


MOSQ_OVERLAP = (
    "Mosquitto 2.0.11 sends one copy at the QoS of the first matching subscription it finds, "
    "not the maximum (eclipse-mosquitto/mosquitto#3319, item 4)"
)


@pytest.mark.mosquitto_deviation(MOSQ_OVERLAP)
def test_overlapping_subscriptions_max_qos(srv, uid):
    """A message matching several of a client's subscriptions is delivered respecting the
    maximum QoS of all matching subscriptions [MQTT-3.3.5-1]; further copies MAY be sent, one
    per extra subscription."""
    with connected(srv, f"s-{uid}", 4) as sub, connected(srv, f"p-{uid}", 4) as pub:
        sub.subscribe([(f"{uid}/ov/+/x", 0), (f"{uid}/ov/#", 2), (f"{uid}/ov/a/+", 1)])
        pub.publish(f"{uid}/ov/a/x", b"o", qos=2)
        got = collect(sub, pub, [], f"{uid}/ov/marker")
        got_qos = sorted(m.qos for m in got)
        assert got, "no copy delivered"
        assert max(got_qos) == 2, f"copies at QoS {got_qos}, none at the maximum 2"
        assert len(got) <= 3, "at most one copy per matching subscription"


@pytest.mark.mosquitto_deviation(MOSQ_OVERLAP)
def test_overlapping_subscriptions_single_copy(srv, uid):
    """mqttd sends exactly one copy, at the highest granted QoS [MQTT-3.3.5-1] (the spec allows
    extra copies, mqttd's design does not send them)."""
    with connected(srv, f"s-{uid}", 4) as sub, connected(srv, f"p-{uid}", 4) as pub:
        sub.subscribe([(f"{uid}/one/+/x", 0), (f"{uid}/one/#", 2), (f"{uid}/one/a/+", 1)])
        pub.publish(f"{uid}/one/a/x", b"o", qos=2)
        got = collect(sub, pub, [], f"{uid}/one/marker")
        assert [(m.topic, m.qos) for m in got] == [(f"{uid}/one/a/x", 2)]


MATCH_CASES = [
    # filter suffix, topics (suffixes) that match, topics that do not  [MQTT 4.7.1]
    ("a/+", ["a/b", "a/"], ["a", "a/b/c", "b/a"]),
    ("a/+/c", ["a/b/c", "a//c"], ["a/b", "a/b/c/d", "a/c"]),
    ("a/#", ["a", "a/b", "a/b/c", "a/"], ["b", "ab", "b/a"]),  # `a/#` matches `a` [4.7.1.2]
    ("+/+", ["a/b", "/b", "a/"], ["a", "a/b/c"]),
    ("+/b/#", ["a/b", "a/b/c/d", "/b"], ["a/c/b", "b"]),
    ("a/b", ["a/b"], ["A/b", "a/b/", "a/ b", "a/bb"]),  # case and space sensitive [4.7.3]
]


@pytest.mark.parametrize("filt,yes,no", MATCH_CASES, ids=[c[0] for c in MATCH_CASES])
def test_wildcard_matching(srv, uid, filt, yes, no):
    """`+` matches exactly one level (possibly empty), `#` any number of levels including the
    parent level; matching is case sensitive [MQTT-4.7.1-*, 4.7.3]. All topics are prefixed by
    a unique level so shared-broker tests don't see each other."""
    prefix = f"m{uid}"
    with connected(srv, f"s-{uid}", 4) as sub, connected(srv, f"p-{uid}", 4) as pub:
        sub.subscribe([(f"{prefix}/{filt}", 0), (f"{prefix}-marker", 0)])
        got = collect(sub, pub, [f"{prefix}/{t}" for t in yes + no], f"{prefix}-marker")
        assert sorted(m.topic for m in got) == sorted(f"{prefix}/{t}" for t in yes)


def test_hash_and_plus_at_top_level(fresh):
    """`#` matches every topic not starting with `$`; `+` one top level (own broker: these
    filters see everything)."""
    with connected(fresh, "s-all", 4) as sub, connected(fresh, "p-all", 4) as pub:
        sub.subscribe([("#", 0)])
        got = collect(sub, pub, ["x", "x/y", "/", "x/y/z/"], "marker")
        assert sorted(m.topic for m in got) == sorted(["x", "x/y", "/", "x/y/z/"])
    with connected(fresh, "s-plus", 4) as sub, connected(fresh, "p-plus", 4) as pub:
        sub.subscribe([("+", 0), ("mark/er", 0)])
        got = collect(sub, pub, ["x", "x/y", "/", "z"], "mark/er")
        assert sorted(m.topic for m in got) == ["x", "z"]


def test_dollar_topics_not_matched_by_leading_wildcards(fresh):
    """Topic filters starting with `#` or `+` do not match topic names starting with `$`
    [MQTT-4.7.2-1]; `$foo/#` does match them."""
    with (
        connected(fresh, "s-wild", 4) as wild,
        connected(fresh, "s-dollar", 4) as dollar,
        connected(fresh, "p-dollar", 4) as pub,
    ):
        wild.subscribe([("#", 0), ("+/x", 0), ("+/+", 0), ("+", 0)])
        dollar.subscribe([("$foo/#", 0)])
        pub.publish("$foo/x", b"dollar")
        pub.publish("$foo", b"dollar-root")
        m = dollar.recv_publish()
        assert m.topic == "$foo/x"
        assert dollar.recv_publish().topic == "$foo"
        # `wild` must get the marker (via `#`) and nothing before it.
        got = [m.topic for m in collect(wild, pub, [], "plain/x")]
        assert all(not t.startswith("$") for t in got), got


def test_v5_no_local(srv, uid):
    """MQTT 5 No Local (options bit 2): the server must not forward a client's own PUBLISH to
    it [MQTT-3.8.3-3]; other clients' messages still arrive."""
    topic = f"nolocal/{uid}"
    with connected(srv, f"a-{uid}", 5) as a, connected(srv, f"b-{uid}", 5) as b:
        assert a.subscribe([(topic, 0x04 | 1)]) == [1]
        a.publish(topic, b"mine", qos=1)
        b.publish(topic, b"theirs", qos=1)
        m = a.recv_publish()
        assert m.payload == b"theirs"
        b.publish(topic, MARKER, qos=1)
        assert a.until() == []  # its own message did not come late either


def test_v5_subscription_identifier(srv, uid):
    """MQTT 5: a Subscription Identifier given in SUBSCRIBE is returned in matching PUBLISH
    packets [MQTT-3.3.4-3], unless the server says it is not supported (CONNACK 0x29 = 0)."""
    topic = f"subid/{uid}"
    with Client(srv, 5) as sub, connected(srv, f"p-{uid}", 5) as pub:
        _, _, cprops = sub.connect(f"s-{uid}")
        if cprops.get(0x29, [1])[0] == 0:
            pytest.skip("server does not support subscription identifiers")
        sub.send(subscribe(5, [(topic, 1)], level=5, properties=props(prop(0x0B, 4711))))
        assert parse_suback(sub.expect(SUBACK), 5) == (5, [1])
        pub.publish(topic, b"id", qos=1)
        m = parse_publish(sub.expect(PUBLISH), 5)
        assert m.properties.get(0x0B) == [4711]
