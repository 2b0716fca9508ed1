"""Routing between mqttd nodes joined through Redis: what crosses, what does not, how many times.

Two nodes, A and B, share one Redis for the module; each test uses its own topics and clients.
"Nothing else arrived" is checked with markers (see multinode.py), not with sleeps.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest
from multinode import (
    V5,
    V311,
    Client,
    RedisWatcher,
    publish_props,
    redis_publish,
    split_envelope,
    topic_matches,
    unique,
    wait_for,
)

MARK = b"--marker--"
OWN = b"--own-marker--"  # a marker a client gets on a topic of its own


def test_publish_on_a_reaches_subscriber_on_b(pair, clients):
    a, b = pair
    sub = clients(b)
    sub.subscribe("sensors/+")
    pub = clients(a)
    pub.publish("sensors/temperature", b"21.5", qos=1)
    # "sensors/+" is the glob "sensors/*" on Redis, which also matches deeper topics
    pub.publish("sensors/temperature/raw", b"deeper", qos=1)
    pub.publish("sensors/marker", MARK, qos=2)
    got = sub.until(MARK)
    assert [(m.topic, m.payload, m.qos) for m in got] == [("sensors/temperature", b"21.5", 1)]


def test_plain_redis_subscriber_sees_mqtt_publish_with_envelope(
    pair, shared_redis, redis_cli, clients
):
    """``redis-cli SUBSCRIBE sensors/temperature`` sees what an MQTT client publishes at QoS 0:
    one Redis message per MQTT message (even with subscribers on both nodes), the 22-byte
    envelope, then the MQTT payload untouched. QoS 1/2 go through the stream instead, where
    ``XRANGE`` shows them (docs/redis.md, sections 3 and 6)."""
    a, b = pair
    watcher = RedisWatcher(shared_redis, "sensors/temperature", redis_cli)
    try:
        subs = [clients(a), clients(b)]
        for s in subs:
            s.subscribe("sensors/temperature")
        pub = clients(a, protocol=V311)
        pub.publish("sensors/temperature", b"22.0", qos=0)
        pub.publish("sensors/temperature", b"22.5", qos=0)
        for s in subs:
            assert [m.payload for m in s.collect(2)] == [b"22.0", b"22.5"]
        key = b"{mqttd}$mqttd/stream"
        rc = shared_redis.client()
        before = rc.xlen(key) if rc.exists(key) else 0
        pub.publish("sensors/temperature", b"23.0", qos=1)
        for s in subs:
            assert [m.payload for m in s.collect(1)] == [b"23.0"]
        (_, fields), *_ = rc.xrange(key, count=before + 1)[before:]
        assert fields[b"t"] == b"sensors/temperature" and fields[b"m"].endswith(b"23.0")
        assert split_envelope(fields[b"m"])[0] & 0x03 == 1
        # Redis wrote every copy before the nodes could pass it on: a duplicate of the first
        # message would come before the second.
        (ch1, d1), (ch2, d2) = watcher.get(), watcher.get()
    finally:
        watcher.close()
    assert ch1 == ch2 == b"sensors/temperature"
    assert d1.endswith(b"22.0") and d2.endswith(b"22.5")
    flags1, origin1, seq1, rest1 = split_envelope(d1)
    flags2, origin2, seq2, rest2 = split_envelope(d2)
    assert (flags1 & 0x03, rest1) == (0, b"22.0")  # QoS 0, no properties (3.1.1 publisher)
    assert (flags2 & 0x03, rest2) == (0, b"22.5")
    assert origin1 == origin2 and seq2 == seq1 + 1
    assert watcher.messages.empty()


def test_raw_redis_publish_reaches_every_node_as_qos0(pair, shared_redis, redis_cli, clients):
    """``redis-cli PUBLISH sensors/pressure 1013``: a payload without the envelope is a QoS 0
    message for the subscribers of every node."""
    a, b = pair
    subs = [clients(a), clients(b), clients(b, protocol=V311)]
    for s in subs:
        s.subscribe("sensors/+", qos=2)
    receivers = redis_publish(shared_redis, redis_cli, "sensors/pressure", "1013")
    # One Redis subscription per node for the filter, however many clients hold it
    assert receivers == 2
    for s in subs:
        m = s.get()
        assert (m.topic, m.payload, m.qos, m.retain) == ("sensors/pressure", b"1013", 0, False)
    redis_publish(shared_redis, redis_cli, "sensors/marker", MARK.decode())
    for s in subs:
        assert s.until(MARK) == []


def test_raw_redis_publish_on_invalid_topic_names_is_ignored(pair, shared_redis, clients):
    """Channels that are no MQTT topic name (wildcards, U+0000, not UTF-8) are dropped."""
    a, b = pair
    root = unique("inv")
    subs = [clients(a), clients(b)]
    for s in subs:
        s.subscribe(f"{root}/#")
    r = shared_redis.client()
    for channel in (f"{root}/+", f"{root}/#", f"{root}/a\x00b", f"{root}/\xff".encode("latin-1")):
        r.publish(channel, b"bad")
    r.publish(f"{root}/ok", MARK)
    for s in subs:
        assert s.until(MARK) == []
    assert a.alive() and b.alive()


# Topics published by A; filters held on A and B. The oracle topic_matches() decides who gets what.
WILDCARD_FILTERS = [
    "{r}/+",
    "{r}/+/x",
    "{r}/a/#",
    "{r}/#",
    "{r}/a/+/c",
    "{r}/a/+",
    "+/+/x",  # a filter starting with a wildcard: never a "$" topic [MQTT-4.7.2-1]
    "#",
    "${r}/#",
    "{r}/k*/+",  # glob specials are literal MQTT characters
    "{r}/[ab]/#",
    "{r}/q?/+",
    "{r}/back\\slash/+",
]
WILDCARD_TOPICS = [
    "{r}",
    "{r}/a",
    "{r}/ab",  # the glob of "{r}/a/#" is "{r}/a*": matches, but not an MQTT match
    "{r}/abc/d",
    "{r}/a/b",
    "{r}/a/b/c",
    "{r}/a/b/d/c",
    "{r}/a/",
    "{r}/a/x",
    "{r}/a/b/x",  # the glob "{r}/*/x" matches, "+" is one level only
    "{r}/x",
    "{r}//x",
    "{r}/a/x/y",
    "${r}/x",
    "${r}/a/x",
    "{r}/k*/1",
    "{r}/kk/1",
    "{r}/[ab]/z",
    "{r}/a/z",
    "{r}/b/z",
    "{r}/q?/1",
    "{r}/qq/1",
    "{r}/back\\slash/1",
    "{r}/backxslash/1",
]


def test_wildcard_semantics_are_exact_across_nodes(pair, clients):
    a, b = pair
    root = unique("w")
    filters = [f.format(r=root) for f in WILDCARD_FILTERS]
    topics = [t.format(r=root) for t in WILDCARD_TOPICS]
    subs: list[tuple[str, Client]] = []
    for node in (b, a):
        for filt in filters:
            c = clients(node)
            c.subscribe(filt)
            subs.append((filt, c))
    pub = clients(a)
    for t in topics:
        pub.publish(t, t.encode(), qos=1)
    for t in topics:  # every client matches at least one topic: its first END is its marker
        pub.publish(t, MARK, qos=2)
    for filt, c in subs:
        expected = [t for t in topics if topic_matches(filt, t)]
        assert expected, filt
        got = c.until(MARK)
        assert [m.topic for m in got] == expected, f"{filt} on {'B' if c.node is b else 'A'}"
        assert all(m.payload == m.topic.encode() for m in got)


def test_glob_metacharacters_in_filters_are_literal(shared_redis, start_nodes, pair, clients):
    """``*``, ``?``, ``[`` and ``\\`` are plain characters in MQTT: on a node where no wider
    pattern hides it, a filter containing them must still get its messages (its Redis glob
    escapes them) and only its messages."""
    (c,) = start_nodes(shared_redis, 1)
    a = pair[0]
    r = unique("g")
    filters = [f"{r}/[ab]/#", f"{r}/k*/+", f"{r}/q?/+", f"{r}/back\\slash/+"]
    topics = [f"{r}/[ab]/z", f"{r}/a/z", f"{r}/k*/1", f"{r}/kk/1", f"{r}/q?/1", f"{r}/qq/1",
              f"{r}/back\\slash/1", f"{r}/backslash/1", f"{r}/backxslash/1"]  # fmt: skip
    subs = []
    for filt in filters:
        s = clients(c)
        s.subscribe(filt)
        subs.append((filt, s))
    pub = clients(a)
    for t in topics:
        pub.publish(t, t.encode(), qos=1)
    for t in topics:
        pub.publish(t, MARK, qos=1)
    for filt, s in subs:
        got = [m.topic for m in s.until(MARK)]
        assert got == [t for t in topics if topic_matches(filt, t)], filt


def test_overlapping_filters_one_copy_at_max_qos(pair, clients):
    """A node holding an exact channel and patterns that all match keeps one copy: each client
    gets each message once, at the highest QoS of its matching subscriptions [MQTT-3.3.4-2]."""
    a, b = pair
    r = unique("o")
    overlapping = {f"{r}/a/b": 0, f"{r}/a/+": 1, f"{r}/a/#": 2}
    exact_and_hash = {f"{r}/a/b": 2, f"{r}/#": 0}
    subs = []
    for node, filters in ((b, overlapping), (a, overlapping), (b, exact_and_hash)):
        c = clients(node)
        for filt, qos in filters.items():
            c.subscribe(filt, qos=qos)
        subs.append((c, filters))
    pub = clients(a)
    sent = [(f"{r}/a/b", b"1", 2), (f"{r}/a/b", b"2", 1), (f"{r}/a/c", b"3", 2),
            (f"{r}/a", b"4", 2), (f"{r}/x", b"5", 1), (f"{r}/a/b", b"6", 0)]  # fmt: skip
    for topic, payload, qos in sent:
        pub.publish(topic, payload, qos=qos)
    pub.publish(f"{r}/a/b", MARK, qos=2)
    for c, filters in subs:
        expected = Counter()
        for topic, payload, qos in sent:
            granted = [q for f, q in filters.items() if topic_matches(f, topic)]
            if granted:
                expected[(topic, payload, min(qos, max(granted)))] += 1
        got = Counter((m.topic, m.payload, m.qos) for m in c.until(MARK))
        assert got == expected, f"{sorted(filters)} on {'B' if c.node is b else 'A'}"


def test_no_echo_each_subscriber_gets_one_copy(pair, clients):
    """The publishing node delivers to its own subscribers once and ignores its own message
    coming back from Redis; the other node delivers once."""
    a, b = pair
    r = unique("e")
    local, remote = clients(a), clients(b)
    local.subscribe(f"{r}/#")
    local.subscribe(f"{r}/t")  # exact channel and pattern on the publishing node
    remote.subscribe(f"{r}/#")
    pub = clients(a)
    pub.subscribe(f"{r}/+")  # the publisher hears itself once (no No Local option)
    for i in range(5):
        pub.publish(f"{r}/t", b"m%d" % i, qos=1)
    pub.publish(f"{r}/t", MARK, qos=2)
    want = [b"m%d" % i for i in range(5)]
    for c in (local, remote, pub):
        assert [m.payload for m in c.until(MARK)] == want


def test_binary_payloads_are_intact(pair, clients):
    a, b = pair
    r = unique("bin")
    payloads = [
        bytes(range(256)),
        bytes(range(255, -1, -1)) * 4,
        b"",
        b"\x00MQD\x01",  # looks like the start of an envelope
        b"\x00MQD\x01" + bytes(40),  # ... and is long enough to be one
        b"\r\n$3\r\nfoo\r\n",  # RESP framing inside the payload
        os.urandom(300_000),
    ]
    subs = [clients(b), clients(a), clients(b, protocol=V311)]
    for s in subs:
        s.subscribe(f"{r}/#", qos=1)
    pub = clients(a)
    for p in payloads:
        pub.publish(f"{r}/p", p, qos=1)
    pub.publish(f"{r}/p", MARK, qos=1)
    for s in subs:
        got = [m.payload for m in s.until(MARK)]
        assert len(got) == len(payloads)
        for i, (g, want) in enumerate(zip(got, payloads, strict=True)):
            assert g == want, f"payload {i}: {len(g)} bytes, expected {len(want)}"


def test_mqtt5_properties_cross_nodes(pair, clients):
    a, b = pair
    r = unique("prop")
    sub5, sub3 = clients(b), clients(b, protocol=V311)
    sub5.subscribe(f"{r}/#")
    sub3.subscribe(f"{r}/#")
    pub = clients(a, protocol=V5)
    props = publish_props(
        UserProperty=[("k", "1"), ("k", "2"), ("ünï", "cödé ✓")],
        ContentType="application/x-test; charset=utf-8",
        CorrelationData=bytes(range(256)),
        ResponseTopic=f"{r}/reply",
        PayloadFormatIndicator=1,
        MessageExpiryInterval=60,
        TopicAlias=3,  # per connection: must not travel to B [MQTT 5 §3.3.2.3.4]
    )
    pub.publish(f"{r}/req", "hello ✓".encode(), qos=1, properties=props)
    m = sub5.get()
    assert (m.topic, m.payload, m.qos) == (f"{r}/req", "hello ✓".encode(), 1)
    # The order of user properties is kept [MQTT-3.3.2-18]
    assert m.prop("UserProperty") == [("k", "1"), ("k", "2"), ("ünï", "cödé ✓")]
    assert m.prop("ContentType") == "application/x-test; charset=utf-8"
    assert m.prop("CorrelationData") == bytes(range(256))
    assert m.prop("ResponseTopic") == f"{r}/reply"
    assert m.prop("PayloadFormatIndicator") == 1
    assert 0 < m.prop("MessageExpiryInterval") <= 60
    assert m.prop("TopicAlias") is None
    m3 = sub3.get()
    assert (m3.topic, m3.payload) == (f"{r}/req", "hello ✓".encode())
    # and a message without properties carries none
    pub.publish(f"{r}/plain", b"x", qos=1)
    m = sub5.get()
    assert m.payload == b"x" and m.prop("UserProperty") is None and m.prop("ContentType") is None


def test_qos_carried_across_nodes(pair, clients):
    """Delivered QoS = min(published QoS, granted QoS) [MQTT-3.8.4-8], across nodes as locally."""
    a, b = pair
    r = unique("q")
    subs = {}
    for sub_qos in (0, 1, 2):
        c = clients(b)
        c.subscribe(f"{r}/x", qos=sub_qos)
        subs[sub_qos] = c
    pub = clients(a)
    for pub_qos in (0, 1, 2):
        pub.publish(f"{r}/x", b"q%d" % pub_qos, qos=pub_qos)
    pub.publish(f"{r}/x", MARK, qos=2)
    for sub_qos, c in subs.items():
        got = sorted((m.payload, m.qos) for m in c.until(MARK))
        assert got == [(b"q%d" % q, min(q, sub_qos)) for q in (0, 1, 2)], f"sub QoS {sub_qos}"


def test_prefix_separates_deployments(shared_redis, start_nodes, clients, redis_cli):
    x1, x2 = start_nodes(shared_redis, 2, prefix="dep-x:")
    y1, y2 = start_nodes(shared_redis, 2, prefix="dep-y:")
    watch_x = RedisWatcher(shared_redis, "dep-x:p/1", redis_cli)
    try:
        sx, sy = clients(x2), clients(y2)
        sx.subscribe("p/#")
        sy.subscribe("p/#")
        clients(x1).publish("p/1", b"from-x", qos=0)  # (QoS 0: on the channel, not the stream)
        assert [m.payload for m in sx.collect(1)] == [b"from-x"]
        channel, data = watch_x.get()  # on Redis, the prefix is part of the channel
        assert channel == b"dep-x:p/1" and data.endswith(b"from-x")
        # Redis has handed out from-x to every subscriber before this next message: a Y node
        # listening to X's channels would have queued it ahead of the marker.
        clients(y1).publish("p/2", MARK, qos=1)
        assert sy.until(MARK) == []
        clients(y1).publish("p/3", b"from-y", qos=1)
        assert [m.payload for m in sy.collect(1)] == [b"from-y"]
        # A raw publish reaches only the deployment whose prefix its channel carries
        assert redis_publish(shared_redis, redis_cli, "dep-y:p/raw", "raw-y") == 1
        assert sy.get().payload == b"raw-y"
        assert redis_publish(shared_redis, redis_cli, "p/raw", "unprefixed") == 0
        clients(x1).publish("p/4", MARK, qos=1)
        assert sx.until(MARK) == []
    finally:
        watch_x.close()


def test_one_redis_subscription_per_node_per_filter(pair, shared_redis):
    """20 clients of one node subscribing the same filter cost Redis one subscription; the last
    one leaving (UNSUBSCRIBE or disconnect) unsubscribes the node."""
    a, b = pair
    r = unique("cost")
    rc = shared_redis.client()
    exact, wild = f"{r}/exact", f"{r}/+/w"

    def numsub() -> int:
        return dict(rc.pubsub_numsub(exact)).get(exact.encode(), 0)

    base_numpat = rc.pubsub_numpat()
    first = [Client(a) for _ in range(20)]
    try:
        for c in first:
            c.subscribe(exact, wild)
        wait_for(lambda: numsub() == 1 and rc.pubsub_numpat() == base_numpat + 1, 3, "subs")
        assert numsub() == 1 and rc.pubsub_numpat() == base_numpat + 1
        # The other node: one more subscriber of the channel; its pattern is the same glob
        second = [Client(b) for _ in range(20)]
        try:
            for c in second:
                c.subscribe(exact)
            wait_for(lambda: numsub() == 2, 3, "NUMSUB 2 with both nodes subscribed")
            assert rc.publish(exact, b"raw") == 2  # one receiver per node
            for c in second:
                assert c.get().payload == b"raw"
        finally:
            for c in second:
                c.close()
        wait_for(lambda: numsub() == 1, 3, "B unsubscribed once its clients left")
        for c in first[:10]:
            c.unsubscribe(exact, wild)
        for c in first[10:19]:
            c.close()
        assert numsub() == 1 and rc.pubsub_numpat() == base_numpat + 1
        first[19].unsubscribe(exact)
        wait_for(lambda: numsub() == 0, 3, "NUMSUB 0 after the last UNSUBSCRIBE")
        assert rc.pubsub_numpat() == base_numpat + 1
        first[19].close()  # its last filter goes with the session
        wait_for(lambda: rc.pubsub_numpat() == base_numpat, 3, "NUMPAT back after the close")
    finally:
        for c in first:
            c.close()


@pytest.mark.parametrize("placement", ["AB", "B", "BB", "AAB"])
def test_shared_subscription_group_spans_nodes(pair, shared_redis, clients, placement):
    """A shared subscription group is one group however its members are spread over the nodes:
    each message goes to exactly one member [MQTT 5 §4.8.2], published by an MQTT client of A
    or by a plain Redis client."""
    a, b = pair
    r = unique("sh")
    members = [clients(a if where == "A" else b) for where in placement]
    for m in members:
        m.subscribe(f"$share/g/{r}/jobs/#")
    watcher = clients(b)
    watcher.subscribe(f"{r}/jobs/#")
    pub = clients(a)
    raw = shared_redis.client()
    sent = []
    for i in range(20):
        pub.publish(f"{r}/jobs/{i}", b"%d" % i, qos=1)
        sent.append(b"%d" % i)
    for i in range(5):
        raw.publish(f"{r}/jobs/raw", b"raw%d" % i)
        sent.append(b"raw%d" % i)
    pub.publish(f"{r}/jobs/end", MARK, qos=1)
    assert len(watcher.until(MARK)) == len(sent)
    # Each member reads up to a marker of its own, published by A after everything else: a
    # copy (or a second copy) for that member travels the same ordered path (Redis to its
    # node on one connection, then one MQTT connection) and arrives before it.
    received: list[bytes] = []
    for i, m in enumerate(members):
        own = f"{r}/own/{i}"
        m.subscribe(own)
        pub.publish(own, OWN, qos=1)
        received += [x.payload for x in m.until(OWN)]
    counts = Counter(p for p in received if p != MARK)
    assert counts == Counter(sent), f"deliveries per message: {dict(counts)}"
    assert received.count(MARK) == 1
