"""State shared through Redis: retained messages, client-id takeover, sessions moving between
nodes, and the $SYS figures of the Redis link."""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "conformance"))

from mqtt_raw import (  # noqa: E402
    MARKER,
    SESSION_EXPIRY_INTERVAL,
    Client,
    connected,
    prop,
    props,
)
from multinode import unique  # noqa: E402


def addr(node) -> tuple[str, int]:
    return (node.host, node.port)


def test_retained_on_one_running_node_reaches_a_subscriber_on_another(
    redis_server, start_nodes
) -> None:
    """Published after both nodes started, with a database number in the URL."""
    a, b = start_nodes(redis_server, 2, "--redis-url", redis_server.url + "/3")
    t = unique("ret")
    with connected(addr(b), unique("w")) as watcher:
        watcher.subscribe(f"{t}-done", 1)
        with connected(addr(a), unique("p")) as pub:
            pub.publish(f"{t}/x", b"kept", qos=1, retain=True)
            pub.publish(f"{t}/y/z", b"deep", qos=1, retain=True)
            pub.publish(f"{t}/gone", b"soon", qos=1, retain=True)
            pub.publish(f"{t}/gone", b"", qos=1, retain=True)  # cleared [MQTT-3.3.1-6]
            pub.publish(f"{t}-done", b"", qos=1)
        # Node B has read them (the Redis stream keeps one publisher's order): they are no
        # longer on their way, so a subscription made now gets them as retained only (one
        # made while they were between the nodes could get them live too: docs/redis.md, 6)
        assert watcher.recv_publish().topic == f"{t}-done"
    with connected(addr(b), unique("s")) as sub:
        sub.subscribe(f"{t}/#", 1)
        got = sorted(
            (m.topic, m.payload, m.retain) for m in (sub.recv_publish(), sub.recv_publish())
        )
        assert got == [(f"{t}/x", b"kept", True), (f"{t}/y/z", b"deep", True)]
        # The retained messages of one SUBSCRIBE are sent together once the store has answered:
        # any other would have come with these, before the PINGRESP.
        assert sub.until_pingresp() == []
        sub.subscribe(f"{t}/+", 1, pid=2)
        m = sub.recv_publish()
        assert (m.topic, m.payload, m.retain) == (f"{t}/x", b"kept", True)
        assert sub.until_pingresp() == []


def test_client_id_taken_over_across_nodes(redis_server, start_nodes) -> None:
    a, b = start_nodes(redis_server, 2)
    cid = unique("same")
    first = connected(addr(a), cid, 5)
    try:
        with connected(addr(b), cid, 5):
            # The node holding the old connection closes it with 0x8E [MQTT-3.1.4-3]
            got = first.wait_closed(5)
            assert [p.type for p in got] == [14] and got[0].body[0] == 0x8E
    finally:
        first.close()


def test_persistent_session_follows_its_client_to_another_node(redis_server, start_nodes) -> None:
    a, b = start_nodes(redis_server, 2)
    cid = unique("roam")
    t = unique("roam")
    keep = props(prop(SESSION_EXPIRY_INTERVAL, 60))
    with connected(addr(a), cid, 5, clean=False, properties=keep) as c:
        c.subscribe(f"{t}/#", 1)
        c.disconnect()
    with connected(addr(b), unique("p"), 5) as pub:
        for i in range(3):
            pub.publish(f"{t}/{i}", str(i).encode(), qos=1, pid=i + 1)
    time.sleep(0.3)  # the messages reach node A, where the session waits
    with Client(addr(b), 5) as c:
        present, rc, _ = c.connect(cid, clean=False, properties=keep)
        assert rc == 0 and present is True  # the session came over from node A
        got = [c.recv_publish() for _ in range(3)]
        assert [m.payload for m in got] == [b"0", b"1", b"2"]
        # and its subscription lives here now: a new message still arrives
        with connected(addr(a), unique("p"), 5) as pub:
            pub.publish(f"{t}/new", b"after", qos=1)
            pub.publish(f"{t}/new", MARKER, qos=1, pid=2)  # a second copy would come first
        assert c.recv_publish().payload == b"after"
        assert c.until() == []


def test_sys_topics_show_the_redis_link(redis_server, start_nodes) -> None:
    (a,) = start_nodes(redis_server, 1, "--sys-interval", "0.2")
    with connected(addr(a), unique("s")) as sub:
        sub.subscribe("$SYS/broker/redis/state", 0)
        m = sub.recv_publish(timeout=3)
        assert m.payload == b"up"
        redis_server.kill()
        deadline = time.monotonic() + 5
        while True:
            m = sub.recv_publish(timeout=3)
            if m.payload == b"down" or time.monotonic() > deadline:
                break
        assert m.payload == b"down"
