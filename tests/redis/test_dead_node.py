"""A node that dies (issue 15, item 2): ``kill -9`` one node of three; its client resumes its
persistent session on another node and finds its subscriptions and every acknowledged QoS 1/2
message queued for it; the wills of its connected clients are published by a survivor; and a
Redis restarted empty is noticed (log and metrics)."""

from __future__ import annotations

import signal
import time

from tests.conformance import mqtt_raw as R
from tests.redis.multinode import unique, wait_for

EXPIRY = R.props(R.prop(0x11, 3600))  # Session Expiry Interval: the session outlives the socket


def addr(node) -> tuple[str, int]:
    return (node.host, node.port)


def metric(node, name: str) -> float:
    return node.metric(name) or 0.0


def _with_a_will(node, root: str) -> R.Client:
    """Client ``root``-c on ``node``: a persistent MQTT 5 session, with a will to ``root``/will."""
    return R.connected(
        addr(node),
        f"{root}-c",
        5,
        clean=False,
        properties=EXPIRY,
        will_topic=f"{root}/will",
        will_payload=b"stale",
        will_qos=1,
    )


def _no_will_before_a_marker(node, watcher: R.Client, root: str) -> None:
    """A marker published to ``root``/will through ``node`` is the first thing ``watcher`` gets."""
    with R.connected(addr(node), f"{root}-marker", 5) as m:
        m.publish(f"{root}/will", b"marker", qos=1)
    assert watcher.recv_publish(timeout=10).payload == b"marker"  # no stale will first


def test_kill_9_a_node_and_resume_elsewhere(redis_server, start_nodes):
    a, b, c = start_nodes(redis_server, 3, "--metrics-port", "0", "--persistence-interval", "0.2")
    root = unique("dead")
    # A persistent MQTT 5 session on node a, subscribed at QoS 1 and 2, then offline
    s = R.connected(addr(a), f"{root}-sub", 5, clean=False, properties=EXPIRY)
    s.subscribe([(f"{root}/q1/#", 1), (f"{root}/q2/#", 2)])
    s.disconnect()
    # A connected client on node a with a will, and a watcher of wills on node c
    watcher = R.connected(addr(c), f"{root}-watch", 5)
    watcher.subscribe(f"{root}/will/#", 1)
    willing = R.connected(  # held until the kill: its will must come from a survivor
        addr(a), f"{root}-w", 5, will_topic=f"{root}/will/w", will_payload=b"gone", will_qos=1
    )
    # Publishers on b: every message acknowledged (PUBACK / PUBCOMP) before the kill
    with R.connected(addr(b), f"{root}-pub", 5) as p:
        for i in range(100):
            p.publish(f"{root}/q{1 + i % 2}/x", b"%03d" % i, qos=1 + i % 2, pid=i + 1)
    # The marker: node a wrote its sessions after it queued them (two more writes)
    start = metric(a, "mqttd_redis_sessions_written_total")
    wait_for(lambda: metric(a, "mqttd_redis_sessions_written_total") > start, 10, "a write")
    a.proc.kill()
    a.proc.wait(5)
    t_kill = time.monotonic()
    try:
        # The will of the client connected to a is published by a survivor (NODE_TTL + interval)
        will = watcher.recv_publish(timeout=15)
        detected = time.monotonic() - t_kill
        assert (will.topic, will.payload) == (f"{root}/will/w", b"gone")
        assert detected < 10, f"dead node noticed after {detected:.1f} s"
        # The client resumes on c: its session is there, with everything acknowledged
        s2 = R.Client(addr(c), 5)
        present, rc, _ = s2.connect(f"{root}-sub", clean=False, properties=EXPIRY)
        assert rc == 0 and present, "session not found on another node"
        got = sorted(int(s2.recv_publish(timeout=10).payload) for _ in range(100))
        assert got == list(range(100))
        # and its subscriptions: a new message reaches it
        with R.connected(addr(b), f"{root}-pub2", 5) as p:
            p.publish(f"{root}/q1/after", b"after", qos=1)
        assert s2.recv_publish(timeout=10).payload == b"after"
        s2.expect_quiet()  # nothing twice
        s2.close()
        assert (
            metric(b, "mqttd_redis_dead_nodes_total") + metric(c, "mqttd_redis_dead_nodes_total")
            == 1
        )
    finally:
        watcher.close()
        willing.close()


def test_a_will_of_a_session_resumed_away_from_a_frozen_node_is_not_published_when_it_dies(
    redis_server, start_nodes
):
    """The same as above, without the race: node a is frozen (SIGSTOP) when its client resumes
    the session on b, so a never removes the will itself; b removes it from a's wills as it
    takes the session over [MQTT-3.1.3-9], and when a dies no survivor publishes it."""
    a, b = start_nodes(redis_server, 2, "--metrics-port", "0", "--persistence-interval", "0.2")
    root = unique("frozen")
    r = redis_server.client()
    watcher = R.connected(addr(b), f"{root}-watch", 5)
    first = None
    try:
        watcher.subscribe(f"{root}/will", 1)
        first = _with_a_will(a, root)

        def will_kept() -> bool:
            return any(r.hexists(k, f"{root}-c") for k in r.scan_iter("$mqttd/wills/*"))

        wait_for(will_kept, 10, "a keeps the will in Redis")
        start = metric(a, "mqttd_redis_sessions_written_total")
        wait_for(lambda: metric(a, "mqttd_redis_sessions_written_total") > start, 10, "a write")
        a.proc.send_signal(signal.SIGSTOP)
        try:
            # b waits for a hand-over that does not come (HANDOFF_WAIT), then takes the
            # session as a last wrote it
            second = R.Client(addr(b), 5)
            second.send(R.connect(f"{root}-c", level=5, clean=False, properties=EXPIRY))
            present, rc, _ = R.parse_connack(second.expect(R.CONNACK, timeout=10), 5)
            assert rc == 0 and present
            assert not will_kept()
        finally:
            a.proc.kill()  # (works on a stopped process)
            a.proc.wait(5)
        wait_for(lambda: metric(b, "mqttd_redis_dead_nodes_total") == 1, 15, "a noticed dead")
        _no_will_before_a_marker(b, watcher, root)
        second.close()
    finally:
        watcher.close()
        if first is not None:
            first.close()


def test_redis_restarted_empty_is_noticed(redis_server, start_nodes):
    (node,) = start_nodes(redis_server, 1, "--metrics-port", "0")
    with R.connected(addr(node), unique("r"), 5) as p:
        p.publish("kept/1", b"v1", qos=1, retain=True)
    assert metric(node, "mqttd_redis_data_lost_total") == 0
    redis_server.restart()  # --save "": it comes back empty
    wait_for(lambda: metric(node, "mqttd_redis_data_lost_total") == 1, 15, "Redis noticed empty")
    # and the node wrote its retained message again
    wait_for(lambda: redis_server.client().hexists("$mqttd/retained", "kept/1"), 10, "rewrite")


def test_a_will_decided_at_takeover_is_not_published_again_when_the_node_dies(
    redis_server, start_nodes
):
    """MQTT 5: a client that resumes its session on another node cancels its will
    [MQTT-3.1.2-8]; the node it left must not leave that will for survivors to publish."""
    a, b = start_nodes(redis_server, 2, "--metrics-port", "0", "--persistence-interval", "0.2")
    root = unique("takeover")
    watcher = R.connected(addr(b), f"{root}-watch", 5)
    try:
        watcher.subscribe(f"{root}/will", 1)
        first = _with_a_will(a, root)
        second = R.Client(addr(b), 5)
        present, rc, _ = second.connect(f"{root}-c", clean=False, properties=EXPIRY)
        assert rc == 0 and present
        assert [p.type for p in first.wait_closed(5)] == [R.DISCONNECT]  # 0x8E on node a
        a.proc.kill()
        a.proc.wait(5)
        wait_for(lambda: metric(b, "mqttd_redis_dead_nodes_total") == 1, 15, "a noticed dead")
        _no_will_before_a_marker(b, watcher, root)
        second.close()
        first.close()
    finally:
        watcher.close()
