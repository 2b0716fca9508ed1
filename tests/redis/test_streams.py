"""QoS 1/2 between nodes through a Redis stream (issue 17): what a publisher was told is safe
arrives, through a stalled Redis and a Redis killed and restarted with its data.

The fault run: node A takes QoS 1 messages at a steady rate from one publisher (every one
acknowledged by A), node B has the subscriber; meanwhile Redis is SIGSTOPped, resumed, then
killed and restarted (with its append-only file). Every message must reach the subscriber, in
order of first arrival, duplicates (written again after the outage) at most 1 %. Short form here
(``MQTTD_FAULT_SCALE`` multiplies its durations: 2 gives the issue's 10 s stall).
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from tests.redis.multinode import unique, wait_for

SCALE = float(os.environ.get("MQTTD_FAULT_SCALE", "1"))
RATE = 1000  # messages per second


def _metric(node, name: str) -> float:
    return node.metric(name) or 0.0


class Publisher(threading.Thread):
    """QoS 1 messages 0..n-1 at RATE per second; counts the acknowledged ones."""

    def __init__(self, client, topic: str, n: int) -> None:
        super().__init__(daemon=True)
        self.client, self.topic, self.n = client, topic, n
        self.infos: list = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            start = time.monotonic()
            for i in range(self.n):
                delay = start + i / RATE - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                self.infos.append(self.client.publish_nowait(self.topic, b"%d" % i, qos=1))
            for info in self.infos:
                info.wait_for_publish(10)
        except BaseException as exc:  # noqa: BLE001 (reported by the test)
            self.error = exc

    def acknowledged(self) -> int:
        return sum(1 for info in self.infos if info.is_published())


@pytest.mark.parametrize("fault", ["stall", "stall_then_kill"])
def test_fault_run_loses_nothing_acknowledged(durable_redis, start_nodes, clients, fault: str):
    a, b = start_nodes(durable_redis, 2, "--metrics-port", "0")
    root = unique("stream")
    sub = clients(b, f"{root}-sub", max_inflight=1000)
    sub.subscribe(f"{root}/#", qos=1)
    pub = clients(a, f"{root}-pub", max_inflight=1000)
    # The route is there: a message through the stream reaches B before the run starts
    pub.publish(f"{root}/probe", b"probe", qos=1)
    assert sub.get(10).payload == b"probe"

    # (a stall longer than the bridge's health timeout, 3 s: the nodes give up the connection)
    before, stall, after = 1.0 * SCALE, 5.0 * SCALE, 1.0 * SCALE
    n = int(RATE * (before + stall + after + (2.0 * SCALE if fault != "stall" else 0)))
    p = Publisher(pub, f"{root}/data", n)
    p.start()
    time.sleep(before)
    durable_redis.pause()
    time.sleep(stall)
    durable_redis.resume()
    if fault == "stall_then_kill":
        time.sleep(after)
        durable_redis.kill()  # SIGKILL: what it confirmed is in its append-only file
        time.sleep(1.0 * SCALE)
        durable_redis.start()  # same port, same directory: its data back
    p.join(60)
    assert p.error is None and not p.is_alive(), p.error
    assert p.acknowledged() == n, "node A acknowledges every QoS 1 PUBLISH itself"
    # Everything published before the marker, in order per publisher, arrives before it
    pub.publish(f"{root}/data", b"end", qos=1)
    got: list[bytes] = []
    deadline = time.monotonic() + 30 * SCALE
    while not got or got[-1] != b"end":
        got.append(sub.get(max(0.1, deadline - time.monotonic())).payload)
    values = [int(x) for x in got[:-1]]
    missing = sorted(set(range(n)) - set(values))
    duplicates = len(values) - len(set(values))
    first_seen = list(dict.fromkeys(values))
    print(
        f"{fault}: {n} acknowledged, {len(set(values))} delivered, {len(missing)} lost, "
        f"{duplicates} duplicates; node A: stream resent "
        f"{_metric(a, 'mqttd_redis_stream_resent_total'):.0f}, "
        f"dropped {_metric(a, 'mqttd_redis_stream_dropped_total'):.0f}; node B: duplicates "
        f"removed {_metric(b, 'mqttd_redis_stream_duplicates_total'):.0f}"
    )
    assert not missing, f"{len(missing)} acknowledged messages lost, first {missing[:10]}"
    assert duplicates <= 0.01 * n, f"{duplicates} duplicates of {n}"
    assert first_seen == sorted(first_seen), "reordered"
    assert _metric(a, "mqttd_redis_stream_dropped_total") == 0
    wait_for(lambda: _metric(a, "mqttd_redis_stream_confirmed_total") >= n, 10, "confirmed")


def test_qos0_stays_on_pubsub_and_qos1_is_in_the_stream(redis_server, start_nodes, clients):
    """QoS 0 is still a PUBLISH on the topic's channel (what redis-cli users see); QoS 1 is an
    entry of the stream, and both reach the other node."""
    a, b = start_nodes(redis_server, 2)
    root = unique("paths")
    sub = clients(b, f"{root}-sub")
    sub.subscribe(f"{root}/#", qos=1)
    pub = clients(a, f"{root}-pub")
    rc = redis_server.client()
    key = b"{mqttd}$mqttd/stream"
    length = rc.xlen(key) if rc.exists(key) else 0
    pub.publish(f"{root}/q0", b"zero", qos=0)
    pub.publish(f"{root}/q1", b"one", qos=1)
    got = {m.payload for m in sub.collect(2)}
    assert got == {b"zero", b"one"}
    entries = rc.xrange(key, count=1000)
    mine = [f for _, f in entries[length:] if f[b"t"].startswith(root.encode())]
    assert [f[b"t"] for f in mine] == [f"{root}/q1".encode()]


def _restart_run(
    redis_server, start_nodes, clients, name: str | None, *extra: str, down: float = 1.0
):
    """The receiving node B is killed (-9) while node A takes QoS 1 messages for B's offline
    persistent session, and started again ``down`` s later (under ``name``, if given); the
    session's client then connects to it. Returns (n, session present, payloads received up to
    the end marker, node A, new node B, whether a QoS 0 message after the marker came too)."""
    from tests.conformance import mqtt_raw as R

    # (a queue long enough for the whole run: the session is offline throughout)
    common = ("--metrics-port", "0", "--persistence-interval", "0.2")
    common += ("--max-queued-messages", "10000", *extra)
    named = ("--redis-node-name", name) if name else ()
    (a,) = start_nodes(redis_server, 1, *common)
    (b,) = start_nodes(redis_server, 1, *common, *named)
    root = unique("restart")
    expiry = R.props(R.prop(0x11, 3600))
    s = R.connected((b.host, b.port), f"{root}-sub", 5, clean=False, properties=expiry)
    s.subscribe([(f"{root}/#", 1)])
    pub = clients(a, f"{root}-pub", max_inflight=1000)
    # The route is there: a probe through the stream reaches B's subscriber
    pub.publish(f"{root}/probe", b"probe", qos=1)
    assert s.recv_publish(timeout=10).payload == b"probe"
    s.disconnect()  # offline: B queues for it
    n = int(RATE * (2.0 + down))
    p = Publisher(pub, f"{root}/data", n)
    p.start()
    time.sleep(1.0)
    written = _metric(b, "mqttd_redis_sessions_written_total")
    wait_for(lambda: _metric(b, "mqttd_redis_sessions_written_total") > written, 5, "a write")
    b.proc.kill()  # SIGKILL: what B read after its last write goes with it
    b.proc.wait(5)
    time.sleep(down)
    (b2,) = start_nodes(redis_server, 1, *common, *named)
    p.join(30)
    assert p.error is None and not p.is_alive(), p.error
    assert p.acknowledged() == n
    pub.publish(f"{root}/data", b"end", qos=1)
    s2 = R.Client((b2.host, b2.port), 5)
    # (a CONNACK may wait for the session's handoff from the node before: HANDOFF_WAIT, 2 s)
    s2.send(R.connect(f"{root}-sub", level=5, clean=False, properties=expiry))
    present, rc, _ = R.parse_connack(s2.expect(R.CONNACK, 10), 5)
    assert rc == 0
    got: list[bytes] = []
    try:
        while not got or got[-1] != b"end":
            got.append(s2.recv_publish(timeout=10).payload)
        # and QoS 0 (pub/sub: the channels the session's subscriptions need) reaches it too
        pub.publish(f"{root}/data", b"zero", qos=0)
        q0 = s2.recv_publish(timeout=10).payload == b"zero"
    except TimeoutError:
        q0 = False  # (recv_publish: nothing within the timeout) judged by the caller
    finally:
        s2.close()
    return n, present, got, a, b2, q0


@pytest.mark.parametrize("down", [1.0, 7.0], ids=["quick", "found_dead"])
def test_a_named_node_restarted_reads_on_where_it_stopped(
    redis_server, start_nodes, clients, down: float
):
    """Issue 17: a receiving node's restart. B, under a name, is killed while its offline
    persistent session has QoS 1 messages coming; started again under that name, it takes the
    session back and reads the stream on from where it stopped: every acknowledged message
    reaches the session's client. Down 1 s (before A notices), or 7 s (A found it dead: alive
    key's 5 s and an interval, and reaped it)."""
    n, present, got, a, b2, q0 = _restart_run(
        redis_server, start_nodes, clients, unique("node"), down=down
    )
    assert present, "session not taken back"
    assert q0, "a QoS 0 message after the restart did not reach the session"
    assert got and got[-1] == b"end", f"the end marker did not come ({len(got)} messages)"
    values = [int(x) for x in got[:-1]]
    missing = sorted(set(range(n)) - set(values))
    duplicates = len(values) - len(set(values))
    print(
        f"restart: {n} acknowledged, {len(missing)} lost, {duplicates} duplicates; B took back "
        f"{_metric(b2, 'mqttd_redis_sessions_taken_back_total'):.0f} session(s), removed "
        f"{_metric(b2, 'mqttd_redis_stream_duplicates_total'):.0f} duplicates"
    )
    assert not missing, f"{len(missing)} acknowledged messages lost, first {missing[:10]}"
    assert duplicates <= 0.01 * n, f"{duplicates} duplicates of {n}"
    assert _metric(b2, "mqttd_redis_sessions_taken_back_total") == 1
    assert _metric(b2, "mqttd_redis_stream_lost_total") == 0
    assert _metric(a, "mqttd_redis_dead_nodes_total") == (1 if down > 6 else 0)


def test_an_unnamed_node_restarted_is_a_new_node(redis_server, start_nodes, clients):
    """The same run without a name: the restarted B is a new node, reading from the stream's
    end, so what was published while it was down does not reach the session (what the named
    test above guards against; this one keeps it from passing for another reason)."""
    n, present, got, a, b2, _ = _restart_run(redis_server, start_nodes, clients, None)
    values = {int(x) for x in got if x != b"end"}
    assert len(values) < n


def test_entries_trimmed_before_a_node_read_them_are_counted(redis_server, start_nodes, clients):
    """A node further behind than MAXLEN: what was trimmed is lost to it, and counted
    (``stream_lost``): delivered + lost = published."""
    n, present, got, a, b2, _ = _restart_run(
        redis_server,
        start_nodes,
        clients,
        unique("node"),
        "--redis-stream-maxlen",
        "100",
    )
    values = {int(x) for x in got if x != b"end"}
    lost = _metric(b2, "mqttd_redis_stream_lost_total")
    print(f"trimmed: {n} published, {len(values)} delivered, {lost:.0f} counted lost")
    assert lost > 0
    assert len(values) + lost == n
