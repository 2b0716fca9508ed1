"""Redis failures: unreachable at start, killed and restarted, stalled (SIGSTOP).

A node must refuse to start without Redis, and once started it must outlive Redis: its MQTT
clients stay connected, local delivery goes on, and cross-node traffic comes back by itself
soon after Redis does.
"""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import time
from collections import Counter

import pytest
from multinode import TIMEOUT, Client, unique

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECOVERY_BUDGET = 3.0  # seconds from Redis answering again to cross-node traffic flowing


def _unused_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_redis_at_start_is_one_error_line(mqttd_command):
    port = _unused_port()  # bound and closed: nobody listens there
    started = time.monotonic()
    r = subprocess.run(
        [*mqttd_command, "--port", "0", "--redis-url", f"redis://127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=15,
        cwd=REPO,
    )
    elapsed = time.monotonic() - started
    assert r.returncode != 0
    assert elapsed < 5.0, f"took {elapsed:.1f} s to give up"
    assert r.stderr.splitlines() == [
        f"mqttd: error: Failed to connect to Redis at 127.0.0.1:{port}: Connection refused"
    ], r.stderr
    assert "listening" not in r.stdout


def time_to_flow(pub: Client, sub: Client, topic: str, since: float, budget: float) -> float:
    """Publish probes on ``topic`` from ``pub`` (QoS 0, every 50 ms) until ``sub`` receives one;
    the seconds from ``since``. Messages that are no probe of this call are skipped."""
    tag = unique("probe").encode()
    deadline = since + budget + 5.0  # measure a slow recovery too, for the failure message
    i = 0
    while time.monotonic() < deadline:
        pub.publish(topic, b"%s-%d" % (tag, i), qos=0)
        i += 1
        until = time.monotonic() + 0.05
        while (left := until - time.monotonic()) > 0:
            try:
                m = sub.messages.get(timeout=left)
            except queue.Empty:
                break
            if m.payload.startswith(tag + b"-"):
                return time.monotonic() - since
    raise TimeoutError(f"{topic}: nothing from {pub.cid} at {sub.cid} for {budget + 5:.0f} s")


def drain(c: Client) -> None:
    while not c.messages.empty():
        c.messages.get()


def subscription_counts(rc) -> tuple[int, int, list[tuple[int, int]]]:
    """(NUMSUB of f/exact, NUMPAT, sorted (sub, psub) of every subscribed connection)."""
    numsub = dict(rc.pubsub_numsub("f/exact")).get(b"f/exact", 0)
    conns = sorted(
        (int(c["sub"]), int(c["psub"])) for c in rc.client_list() if int(c["sub"]) or int(c["psub"])
    )
    return numsub, rc.pubsub_numpat(), conns


def _two_nodes_with_clients(redis_server, start_nodes, clients):
    a, b = start_nodes(redis_server, 2)
    sub_a, sub_b = clients(a), clients(b)
    for s in (sub_a, sub_b):
        s.subscribe("f/#")
    sub_b.subscribe("f/exact")
    pub_a, pub_b = clients(a), clients(b)
    # healthy to begin with
    assert time_to_flow(pub_a, sub_b, "f/exact", time.monotonic(), 2) < 2
    assert time_to_flow(pub_b, sub_a, "f/x", time.monotonic(), 2) < 2
    return a, b, sub_a, sub_b, pub_a, pub_b


def _local_delivery_works(pub: Client, sub: Client, n: int = 200) -> None:
    """QoS 1 PUBACKs and local delivery on one node do not wait for Redis."""
    drain(sub)
    tag = unique("local").encode()
    for i in range(n):
        pub.publish_nowait("f/local", b"%s-%d" % (tag, i), qos=1)
    pub.publish("f/local", tag + b"-end", qos=1)
    got = [m.payload for m in sub.collect(n + 1)]
    assert got == [b"%s-%d" % (tag, i) for i in range(n)] + [tag + b"-end"]


def _exactly_once_again(pub: Client, sub: Client) -> None:
    """After recovery, one copy per message (no doubled subscription after the reconnect)."""
    tag = unique("once").encode()
    drain(sub)
    for i in range(20):
        pub.publish("f/exact", b"%s-%d" % (tag, i), qos=1)
    pub.publish("f/exact", tag + b"-end", qos=2)
    got = []
    while not got or got[-1] != tag + b"-end":
        got.append(sub.get().payload)
    got = [p for p in got if p.startswith(tag)]
    want = [b"%s-%d" % (tag, i) for i in range(20)] + [tag + b"-end"]
    copies = Counter(got)
    assert got == want, (
        f"{len(got)} deliveries of {len(want)} messages; copies per message: "
        f"{sorted(Counter(copies.values()).items())} (copies, how many messages)"
    )


def test_redis_killed_and_restarted(redis_server, start_nodes, clients):
    a, b, sub_a, sub_b, pub_a, pub_b = _two_nodes_with_clients(redis_server, start_nodes, clients)
    rc = redis_server.client()
    before = subscription_counts(rc)
    assert before[0] == 1, "f/exact: one Redis subscription (node B)"

    redis_server.kill()
    # Down: nodes up, clients connected, each node serves its own clients
    _local_delivery_works(pub_a, sub_a)
    _local_delivery_works(pub_b, sub_b)
    time.sleep(1.0)  # a real outage: the nodes' reconnect attempts fail and back off
    assert a.alive() and b.alive()
    for c in (sub_a, sub_b, pub_a, pub_b):
        assert c.is_connected(), f"{c.cid} lost its connection while Redis was down"

    redis_server.start()  # same port; returns once it answers PING
    back = time.monotonic()
    a_to_b = time_to_flow(pub_a, sub_b, "f/exact", back, RECOVERY_BUDGET)
    b_to_a = time_to_flow(pub_b, sub_a, "f/x", back, RECOVERY_BUDGET)
    print(f"cross-node traffic again after {a_to_b:.2f} s (A->B), {b_to_a:.2f} s (B->A)")
    assert a_to_b < RECOVERY_BUDGET and b_to_a < RECOVERY_BUDGET, (a_to_b, b_to_a)
    # The new Redis has every subscription again, each once
    assert subscription_counts(rc) == before, "(NUMSUB f/exact, NUMPAT, (sub, psub) per conn)"
    _exactly_once_again(pub_a, sub_b)
    for c in (sub_a, sub_b, pub_a, pub_b):
        assert c.is_connected()


def test_redis_stalled_then_resumed(redis_server, start_nodes, clients):
    a, b, sub_a, sub_b, pub_a, pub_b = _two_nodes_with_clients(redis_server, start_nodes, clients)
    rc = redis_server.client()
    before = subscription_counts(rc)

    redis_server.pause()
    stalled = time.monotonic()
    try:
        _local_delivery_works(pub_a, sub_a)
        _local_delivery_works(pub_b, sub_b)
        time.sleep(max(0.0, 4.0 - (time.monotonic() - stalled)))
        assert a.alive() and b.alive()
        for c in (sub_a, sub_b, pub_a, pub_b):
            assert c.is_connected(), f"{c.cid} lost its connection while Redis was stalled"
    finally:
        redis_server.resume()
    back = time.monotonic()
    # A node may be half-way through giving up on the stalled connection: allow for its
    # health timeout on top of the recovery budget.
    budget = RECOVERY_BUDGET + 3.0
    a_to_b = time_to_flow(pub_a, sub_b, "f/exact", back, budget)
    b_to_a = time_to_flow(pub_b, sub_a, "f/x", back, budget)
    print(f"cross-node traffic again {a_to_b:.2f} s (A->B), {b_to_a:.2f} s (B->A) after SIGCONT")
    assert a_to_b < budget and b_to_a < budget, (a_to_b, b_to_a)
    _exactly_once_again(pub_a, sub_b)
    # Old connections are gone, the new ones hold every subscription once
    deadline = time.monotonic() + TIMEOUT
    while subscription_counts(rc) != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert subscription_counts(rc) == before, "(NUMSUB f/exact, NUMPAT, (sub, psub) per conn)"
    assert a.alive() and b.alive()


def test_subscriptions_changed_while_redis_down(redis_server, start_nodes, clients):
    """What clients subscribe and unsubscribe during an outage is what the node asks of Redis
    once it is back: the new filter crosses nodes, the dropped one is not subscribed again."""
    a, b, sub_a, sub_b, pub_a, pub_b = _two_nodes_with_clients(redis_server, start_nodes, clients)
    rc = redis_server.client()
    redis_server.kill()
    sub_b.subscribe("g/new")
    sub_b.unsubscribe("f/exact")
    late = clients(b)
    late.subscribe("h/+")  # a client that arrived during the outage
    time.sleep(1.0)  # (an outage of a few ms is test_quick_restarts' subject)
    redis_server.start()
    back = time.monotonic()
    assert time_to_flow(pub_a, sub_b, "g/new", back, RECOVERY_BUDGET) < RECOVERY_BUDGET
    assert time_to_flow(pub_a, late, "h/1", back, RECOVERY_BUDGET) < RECOVERY_BUDGET

    def numsub(channel: str) -> int:
        return dict(rc.pubsub_numsub(channel)).get(channel.encode(), 0)

    assert (numsub("g/new"), numsub("f/exact")) == (1, 0)
    # f/exact still reaches sub_b once, through its f/# subscription
    _exactly_once_again(pub_a, sub_b)


def test_quick_restarts_recover_within_budget(redis_server, start_nodes, clients):
    """Redis killed and back within milliseconds, several times: each time cross-node traffic
    flows again within the budget. A node that reconnects while the killed server's listening
    socket is still closing gets a connection that is reset at once; that attempt must fail
    then, not when its connect timeout runs out."""
    a, b, sub_a, sub_b, pub_a, pub_b = _two_nodes_with_clients(redis_server, start_nodes, clients)
    times = []
    for _ in range(6):
        redis_server.kill()
        redis_server.start()
        back = time.monotonic()
        times.append(
            max(
                time_to_flow(pub_a, sub_b, "f/exact", back, RECOVERY_BUDGET),
                time_to_flow(pub_b, sub_a, "f/x", back, RECOVERY_BUDGET),
            )
        )
    print("recovery after each restart:", " ".join(f"{t:.2f}" for t in times))
    assert max(times) < RECOVERY_BUDGET, [round(t, 2) for t in times]
    assert a.alive() and b.alive()


def test_suback_waits_for_redis_to_confirm_a_new_subscription(redis_server, start_nodes, clients):
    """The SUBACK of a filter new to its node follows Redis's confirmation of the SUBSCRIBE, so
    what another node publishes once the client has its SUBACK reaches the client. Redis is
    stopped while the client subscribes: no SUBACK until it runs again."""
    a, b = start_nodes(redis_server, 2)
    sub = clients(b)
    pub = clients(a)
    topic = unique("confirm")
    redis_server.pause()
    try:
        _, mid = sub.c.subscribe(topic, 1)
        with pytest.raises(queue.Empty):
            sub._acks.get(timeout=0.5)  # held: Redis has not confirmed
    finally:
        redis_server.resume()
    got_mid, rcs = sub._acks.get(timeout=TIMEOUT)
    assert got_mid == mid and rcs[0].value == 1
    pub.publish(topic, b"right after the SUBACK", qos=1)  # once, no probing
    assert sub.get().payload == b"right after the SUBACK"
