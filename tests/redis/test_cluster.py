"""mqttd nodes joined through a Redis Cluster (``redis+cluster://``): sharded pub/sub.

The module starts a local cluster of three primaries (no replicas) on free ports, with the bus
port given explicitly (``--cluster-port``: the default port+10000 may be out of range), slots
assigned with CLUSTER ADDSLOTSRANGE and joined with CLUSTER MEET; it is killed at the end.
"Nothing else arrived" is checked with markers (see multinode.py), not with sleeps.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from multinode import Client, Nodes, _free_port, parse_csv_line, split_envelope, unique
from redis.cluster import RedisCluster, key_slot

MARK = b"--marker--"
OWN = b"--own-marker--"  # a marker a client gets on a topic of its own (see drain)
READY_TIMEOUT = 15.0


class Cluster:
    """Three redis-server (or valkey-server) primaries forming one cluster."""

    host = "127.0.0.1"

    def __init__(self, binary: str, workdir: str) -> None:
        self.binary = binary
        self.workdir = workdir
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen] = []
        self.ranges: list[tuple[int, int]] = []
        self.cmds: list[list[str]] = []

    @property
    def url(self) -> str:
        return f"redis+cluster://{self.host}:{self.ports[0]}"

    def client(self, i: int) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.ports[i], socket_timeout=5)

    def start(self) -> None:
        bus = []
        for _ in range(3):
            port, bus_port = _free_port(), _free_port()
            cmd = [self.binary, "--port", str(port), "--bind", self.host,
                   "--cluster-enabled", "yes", "--cluster-port", str(bus_port),
                   "--cluster-config-file", f"nodes-{port}.conf",
                   "--cluster-node-timeout", "1000", "--save", "", "--appendonly", "no",
                   "--dir", self.workdir, "--logfile", f"{port}.log"]  # fmt: skip
            self.cmds.append(cmd)
            self.procs.append(subprocess.Popen(cmd))
            self.ports.append(port)
            bus.append(bus_port)
        clients = [self.client(i) for i in range(3)]
        deadline = time.monotonic() + READY_TIMEOUT
        for proc, c in zip(self.procs, clients, strict=True):
            while True:
                assert proc.poll() is None, f"cluster node exited with {proc.returncode}"
                try:
                    c.ping()
                    break
                except redis.ConnectionError:
                    assert time.monotonic() < deadline, "cluster node does not answer"
                    time.sleep(0.02)
            assert c.info("server")["process_id"] == proc.pid, "a stranger answers on our port"
        per = 16384 // 3
        for i, c in enumerate(clients):
            lo, hi = i * per, 16383 if i == 2 else (i + 1) * per - 1
            c.execute_command("CLUSTER ADDSLOTSRANGE", lo, hi)
            c.execute_command("CLUSTER SET-CONFIG-EPOCH", i + 1)
            self.ranges.append((lo, hi))
        for port, bus_port in zip(self.ports[1:], bus[1:], strict=True):
            clients[0].execute_command("CLUSTER MEET", self.host, port, bus_port)
        while True:
            infos = [c.cluster("info") for c in clients]  # redis-py parses it into a dict
            if all(
                i["cluster_state"] == "ok" and int(i["cluster_known_nodes"]) == 3 for i in infos
            ):
                break
            assert time.monotonic() < deadline, f"cluster not ok: {infos}"
            time.sleep(0.05)
        for c in clients:
            c.close()

    def shard_of(self, channel: str) -> int:
        slot = key_slot(channel.encode())
        return next(i for i, (lo, hi) in enumerate(self.ranges) if lo <= slot <= hi)

    def kill(self, i: int) -> None:
        self.procs[i].kill()
        self.procs[i].wait(5)

    def restart(self, i: int) -> None:
        """The same node again (same port; its nodes.conf brings it back into the cluster)."""
        self.procs[i] = subprocess.Popen(self.cmds[i])
        self.wait_ok()

    def wait_ok(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                infos = [self.client(i).cluster("info") for i in range(3)]
                if all(x["cluster_state"] == "ok" for x in infos):
                    return
            except redis.ConnectionError:
                pass
            assert time.monotonic() < deadline, "cluster not ok again"
            time.sleep(0.05)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def cluster(redis_binary: str) -> Iterator[Cluster]:
    with tempfile.TemporaryDirectory(prefix="mqttd-cluster-") as workdir:
        c = Cluster(redis_binary, workdir)
        try:
            c.start()
            yield c
        finally:
            c.close()
            assert all(p.poll() is not None for p in c.procs)


@pytest.fixture
def own_cluster(redis_binary: str) -> Iterator[Cluster]:
    """A cluster of this test's own (it moves slots or kills a shard)."""
    with tempfile.TemporaryDirectory(prefix="mqttd-cluster-") as workdir:
        c = Cluster(redis_binary, workdir)
        try:
            c.start()
            yield c
        finally:
            c.close()


@pytest.fixture(scope="module")
def nodes(request: pytest.FixtureRequest, cluster: Cluster) -> Iterator[list]:
    """Three mqttd nodes on the cluster (seeded with its first primary)."""
    made = Nodes(request.config)
    try:
        yield made.start(cluster, 3)  # type: ignore[arg-type]
    finally:
        made.stop_all()


def settle(pub: Client, subs: list[Client], topic: str, qos: int = 1) -> None:
    """Publish probes on ``topic`` until every subscriber gets one: the wildcard filters have
    reached the publishing node (announced on the control channel). Probes are drained. (QoS
    1/2 go through the stream, QoS 0 through the topic's channel: docs/redis.md section 6.)"""
    deadline = time.monotonic() + 10.0
    i = 0
    pending = list(subs)
    while pending:
        assert time.monotonic() < deadline, "wildcard filters never reached the publisher"
        i += 1
        probe = b"probe-%d" % i
        pub.publish(topic, probe, qos=qos)
        still = []
        for s in pending:
            try:
                s.until(probe, timeout=0.3)
            except TimeoutError:
                still.append(s)
        pending = still
    pub.publish(topic, MARK, qos=qos)
    for s in subs:  # later probes of the ones that answered first
        rest = s.until(MARK)
        assert all(m.payload.startswith(b"probe-") for m in rest), rest


def drain(pub: Client, sub: Client, topics: list[str], mark: bytes = MARK) -> list:
    """Everything ``sub`` gets before a marker (payload ``mark``) published on each of
    ``topics``.

    Messages on different shards travel on different connections: there is no order between
    them, so one marker per topic (per shard) is needed, not one marker on one topic."""
    for t in topics:
        pub.publish(t, mark, qos=1)
    got = []
    marks = 0
    while marks < len(topics):
        m = sub.get()
        if m.payload == mark:
            marks += 1
        else:
            got.append(m)
    return got


def topics_on_each_shard(cluster: Cluster, stem: str) -> list[str]:
    """One topic per shard (the channel's slot decides)."""
    out: dict[int, str] = {}
    i = 0
    while len(out) < 3:
        t = f"{stem}/{i}"
        out.setdefault(cluster.shard_of(t), t)
        i += 1
    return [out[k] for k in range(3)]


# -- delivery -------------------------------------------------------------------------------------
def test_exact_filters_on_every_shard_cross_nodes(cluster, nodes, clients):
    a, b, c = nodes
    topics = topics_on_each_shard(cluster, unique("exact"))
    sub = clients(b)
    sub.subscribe(*topics)
    pub = clients(a)
    for t in topics:
        pub.publish(t, t.encode(), qos=1)
    got = drain(pub, sub, topics)
    assert sorted((m.topic, m.payload) for m in got) == sorted((t, t.encode()) for t in topics)


def test_wildcard_filters_cross_nodes_exactly(nodes, clients):
    a, b, c = nodes
    stem = unique("wild")
    sub_b, sub_c = clients(b), clients(c)
    sub_b.subscribe(f"{stem}/+/temp")
    sub_c.subscribe(f"{stem}/#")
    pub = clients(a)
    settle(pub, [sub_b, sub_c], f"{stem}/probe/temp")
    for t in (f"{stem}/k/temp", f"{stem}/k/temp/raw", f"{stem}", f"{stem}x/k/temp"):
        pub.publish(t, t.encode(), qos=1)
    pub.publish(f"{stem}/m/temp", MARK, qos=1)
    assert [m.topic for m in sub_b.until(MARK)] == [f"{stem}/k/temp"]
    # "x/#" matches "x" itself [MQTT-4.7.1-2], not "xy/..."
    assert [m.topic for m in sub_c.until(MARK)] == [
        f"{stem}/k/temp",
        f"{stem}/k/temp/raw",
        f"{stem}",
    ]


def test_no_duplicate_when_a_node_holds_exact_and_wildcard(nodes, clients):
    """Node B gets the topic both on its channel (exact filter) and in its inbox (wildcard
    filter): each of its clients gets one copy."""
    a, b, _ = nodes
    stem = unique("dup")
    exact, wild = clients(b), clients(b)
    exact.subscribe(f"{stem}/x")
    wild.subscribe(f"{stem}/+")
    pub = clients(a)
    settle(pub, [exact, wild], f"{stem}/x")
    for i in range(20):
        pub.publish(f"{stem}/x", b"m%d" % i, qos=1)
    pub.publish(f"{stem}/x", MARK, qos=1)
    want = [b"m%d" % i for i in range(20)]
    assert [m.payload for m in exact.until(MARK)] == want
    assert [m.payload for m in wild.until(MARK)] == want


def test_dollar_topics_and_prefix_lookalikes(nodes, clients):
    """``#`` and ``+/x`` do not match ``$``-topics [MQTT-4.7.2-1]; ``a/#`` does not match ``ab``
    (a glob would), and an exact ``ab`` subscriber gets ``ab`` once."""
    a, b, _ = nodes
    stem = unique("d")
    hash_all, plus = clients(b), clients(b)
    hash_all.subscribe("#")
    plus.subscribe("+/x")
    under, exact = clients(b), clients(b)
    under.subscribe(f"{stem}/#")
    exact.subscribe(f"{stem}b")
    pub = clients(a)
    settle(pub, [hash_all, under], f"{stem}/p")
    pub.publish(f"${stem}/x", b"dollar", qos=1)
    pub.publish(f"{stem}b", b"ab", qos=1)
    # "ab" reaches node B on its channel (B holds it exactly), stem/x through B's inbox: two
    # shards, no order between them, so a marker on each
    assert [m.payload for m in drain(pub, hash_all, [f"{stem}/x", f"{stem}b"])] == [b"ab"]
    plus.publish("p/x", MARK, qos=1)  # ends plus's stream with something it matches
    assert [m.payload for m in plus.until(MARK)] == []
    assert [m.payload for m in under.until(MARK)] == []  # its marker: the one on stem/x
    assert [m.payload for m in exact.until(MARK)] == [b"ab"]  # its marker: the one on stem+b


def test_idle_nodes_keep_their_connections(cluster, nodes):
    """Health checks get their answers on every shard (including one where a node subscribes
    nothing): no reconnection while idle, longer than the health timeout."""
    shards = [cluster.client(i) for i in range(3)]
    try:
        before = [r.info("stats")["total_connections_received"] for r in shards]
        time.sleep(4.5)  # HEALTH_TIMEOUT (3 s) + HEALTH_INTERVAL
        after = [r.info("stats")["total_connections_received"] for r in shards]
        # Our own INFO clients are the only new connections
        assert [x - y for x, y in zip(after, before, strict=True)] == [0, 0, 0]
    finally:
        for r in shards:
            r.close()


# -- what Redis sees --------------------------------------------------------------------------------
def test_traffic_goes_to_the_owning_shard_only(cluster, nodes, clients):
    """SSUBSCRIBE lands on the shard owning the channel (PUBSUB SHARDNUMSUB there, 0 elsewhere),
    and SPUBLISH of a topic is executed by that shard only."""
    a, b, _ = nodes
    topics = topics_on_each_shard(cluster, unique("spread"))
    sub = clients(b)
    sub.subscribe(*topics)
    shards = [cluster.client(i) for i in range(3)]
    try:
        for t in topics:
            owner = cluster.shard_of(t)
            counts = []
            for i, r in enumerate(shards):
                # A shard that does not own the slot says 0 (or refuses to answer)
                try:
                    counts.append(dict(r.pubsub_shardnumsub(t))[t.encode()])
                except redis.ResponseError:
                    assert i != owner
                    counts.append(0)
            assert counts == [1 if i == owner else 0 for i in range(3)], (t, counts)

        def spublish_calls() -> list[int]:
            out = []
            for r in shards:
                stats = r.info("commandstats")
                out.append(stats.get("cmdstat_spublish", {}).get("calls", 0))
            return out

        pub = clients(a)
        target = topics[1]
        before = spublish_calls()
        for i in range(200):
            pub.publish(target, b"x%d" % i, qos=0)
        pub.publish(target, MARK, qos=0)  # (QoS 1/2 go through the stream: section 6)
        got = sub.until(MARK)
        assert len(got) == 200
        after = spublish_calls()
        delta = [x - y for x, y in zip(after, before, strict=True)]
        owner = cluster.shard_of(target)
        assert delta[owner] >= 201, delta
        # The other shards only see the control channel's occasional announcements
        assert all(d < 20 for i, d in enumerate(delta) if i != owner), delta
    finally:
        for r in shards:
            r.close()


def test_redis_client_ssubscribe_sees_messages_and_can_publish(cluster, nodes, clients):
    """What a redis-cli / redis-py user sees: SSUBSCRIBE on the topic channel gives the
    envelope + payload of every MQTT message on that topic; SPUBLISH reaches MQTT subscribers
    of the exact topic as a raw QoS 0 message."""
    a, b, _ = nodes
    topic = unique("rc")
    rc = RedisCluster(host=cluster.host, port=cluster.ports[0])
    ps = rc.pubsub()
    got: list[Any] = []
    try:
        ps.ssubscribe(topic)
        done = threading.Event()

        def read() -> None:
            while not done.is_set():
                m = ps.get_sharded_message(ignore_subscribe_messages=True, timeout=0.1)
                if m:
                    got.append(m)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        sub = clients(b)
        sub.subscribe(topic)
        pub = clients(a)
        # (QoS 0: QoS 1/2 go through the stream, docs/redis.md section 6)
        pub.publish(topic, b"hello", qos=0)
        pub.publish(topic, MARK, qos=0)
        assert [m.payload for m in sub.until(MARK)] == [b"hello"]
        deadline = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        done.set()
        reader.join(2)
        assert [m["channel"] for m in got] == [topic.encode()] * 2
        qos, _, _, payload = split_envelope(got[0]["data"])
        assert (qos, payload) == (0, b"hello")
        # The other way: a plain SPUBLISH from Redis
        assert rc.spublish(topic, b"from redis") >= 1
        pub.publish(topic, MARK, qos=0)
        assert [(m.payload, m.qos) for m in sub.until(MARK)] == [(b"from redis", 0)]
    finally:
        ps.close()
        rc.close()


def test_redis_cli_cluster_mode_ssubscribe(cluster, nodes, clients, redis_cli):
    """``redis-cli -c SSUBSCRIBE <topic>`` asked on a shard that does not own the channel
    follows the MOVED redirection and sees one smessage per MQTT message."""
    if redis_cli is None:
        pytest.skip("redis-cli not installed (the redis-py test covers the same)")
    a, b, _ = nodes
    topic = unique("cli")
    other = (cluster.shard_of(topic) + 1) % 3
    cmd = [redis_cli, "-c", "-h", cluster.host, "-p", str(cluster.ports[other]), "--csv",
           "SSUBSCRIBE", topic]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    lines: list[list[bytes]] = []
    subscribed = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            fields = parse_csv_line(raw.rstrip(b"\n"))
            if fields[0] == b"ssubscribe":
                subscribed.set()
            elif fields[0] == b"smessage":
                lines.append(fields)

    threading.Thread(target=read, daemon=True).start()
    try:
        assert subscribed.wait(5), "redis-cli SSUBSCRIBE not confirmed"
        sub = clients(b)
        sub.subscribe(topic)
        pub = clients(a)
        pub.publish(topic, b"21.5", qos=0)  # (QoS 1/2: the stream, docs/redis.md section 6)
        pub.publish(topic, MARK, qos=0)
        assert [m.payload for m in sub.until(MARK)] == [b"21.5"]
        deadline = time.monotonic() + 5
        while len(lines) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [f[:2] for f in lines] == [[b"smessage", topic.encode()]] * 2
        assert split_envelope(lines[0][2])[3] == b"21.5"
    finally:
        proc.terminate()
        proc.wait(5)


# -- shared state through the cluster ----------------------------------------------------------------
def test_retained_takeover_and_session_across_nodes(nodes) -> None:
    """Retained messages (a hash and a sorted set, on their shards), client-id takeover and a
    persistent session handed over (control channel + keys on their shards)."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "conformance"))
    from mqtt_raw import SESSION_EXPIRY_INTERVAL, Client, connected, prop, props

    a, b, c = ((n.host, n.port) for n in nodes)
    t = unique("state")
    with connected(b, unique("w")) as watcher:
        watcher.subscribe(f"{t}-done", 1)
        with connected(a, unique("p")) as pub:
            pub.publish(f"{t}/x", b"kept", qos=1, retain=True)
            pub.publish(f"{t}/gone", b"soon", qos=1, retain=True)
            pub.publish(f"{t}/gone", b"", qos=1, retain=True)  # cleared [MQTT-3.3.1-6]
            pub.publish(f"{t}-done", b"", qos=1)
        # Node b has read them (the stream keeps one publisher's order): a subscription made
        # now gets them as retained only (one made while they were between the nodes could get
        # them live too: docs/redis.md, section 6)
        assert watcher.recv_publish().topic == f"{t}-done"
    with connected(b, unique("s")) as sub:
        sub.subscribe(f"{t}/#", 1)
        m = sub.recv_publish()
        assert (m.topic, m.payload, m.retain) == (f"{t}/x", b"kept", True)
        # The retained messages of one SUBSCRIBE are sent together once the store has answered:
        # any other would have come with this one, before the PINGRESP.
        assert sub.until_pingresp() == []
    cid = unique("same")
    first = connected(a, cid, 5)
    try:
        with connected(c, cid, 5):
            got = first.wait_closed(5)  # taken over [MQTT-3.1.4-3]
            assert [p.type for p in got] == [14] and got[0].body[0] == 0x8E
    finally:
        first.close()
    cid = unique("roam")
    keep = props(prop(SESSION_EXPIRY_INTERVAL, 60))
    with connected(a, cid, 5, clean=False, properties=keep) as cl:
        cl.subscribe(f"{t}/roam/#", 1)
        cl.disconnect()
    time.sleep(0.3)  # the wildcard filter is announced to the other nodes
    with connected(b, unique("p"), 5) as pub:
        for i in range(3):
            pub.publish(f"{t}/roam/{i}", str(i).encode(), qos=1, pid=i + 1)
    time.sleep(0.3)  # the messages reach node A, where the session waits
    with Client(c, 5) as cl:
        present, rc, _ = cl.connect(cid, clean=False, properties=keep)
        assert rc == 0 and present is True  # the session came over from node A
        assert [cl.recv_publish().payload for _ in range(3)] == [b"0", b"1", b"2"]
        # The session's queue came over with it and is sent after the CONNACK, all at once
        assert cl.until_pingresp() == []


def test_shared_group_spans_nodes(cluster, nodes, clients):
    """One delivery per message for a shared group with members on three nodes."""
    a, b, c = nodes
    r = unique("sh")
    members = [clients(n) for n in (a, b, c, c)]
    for m in members:
        m.subscribe(f"$share/g/{r}/jobs/#")
    watcher = clients(b)
    watcher.subscribe(f"{r}/jobs/#")
    pub = clients(a)
    settle(pub, [watcher], f"{r}/jobs/probe")
    # The groups are announced on the control channel too, with nothing to watch for that
    time.sleep(0.3)
    # Each member reads up to markers of its own, one per shard (see drain), published by A
    # after the group's copies: whatever copy it gets comes before them. The probes the group
    # got so far are dropped.
    owns = [topics_on_each_shard(cluster, f"{r}/own{i}") for i in range(len(members))]
    for m, own in zip(members, owns, strict=True):
        m.subscribe(*own)
        drain(pub, m, own, OWN)
    sent = [b"%d" % i for i in range(30)]
    for i, p in enumerate(sent):
        pub.publish(f"{r}/jobs/{i}", p, qos=1)
    pub.publish(f"{r}/jobs/end", MARK, qos=1)
    assert len(watcher.until(MARK)) == len(sent)
    received = []
    for m, own in zip(members, owns, strict=True):
        received += [x.payload for x in drain(pub, m, own, OWN)]
    assert Counter(p for p in received if p != MARK) == Counter(sent)
    assert received.count(MARK) == 1


# -- the cluster changes ----------------------------------------------------------------------------
def test_slot_moved_to_another_shard(own_cluster, start_nodes, clients):
    """A slot given to another shard: the subscribing node is unsubscribed by the old owner, the
    publishing node gets MOVED; both read the slot map again and traffic resumes on the new
    owner."""
    cluster = own_cluster
    a, b = start_nodes(cluster, 2)
    topic = unique("moving")
    sub = clients(b)
    sub.subscribe(topic)
    pub = clients(a)
    pub.publish(topic, b"before", qos=1)
    pub.publish(topic, MARK, qos=1)
    assert [m.payload for m in sub.until(MARK)] == [b"before"]
    slot = key_slot(topic.encode())
    old = cluster.shard_of(topic)
    new = (old + 1) % 3
    shards = [cluster.client(i) for i in range(3)]
    try:
        target = shards[new].execute_command("CLUSTER MYID")
        for i in (new, old, 3 - old - new):  # the new owner first: it bumps its epoch
            shards[i].execute_command("CLUSTER SETSLOT", slot, "NODE", target)
        settle(pub, [sub], topic, qos=0)  # the first messages after the move may be lost
        for i in range(10):  # (QoS 0: the topic's channel; QoS 1/2 take the stream)
            pub.publish(topic, b"after%d" % i, qos=0)
        pub.publish(topic, MARK, qos=0)
        assert [m.payload for m in sub.until(MARK)] == [b"after%d" % i for i in range(10)]
        assert dict(shards[new].pubsub_shardnumsub(topic))[topic.encode()] == 1
    finally:
        for r in shards:
            r.close()


def test_shard_killed_and_restarted(own_cluster, start_nodes, clients):
    """A primary dies: nodes keep serving their own clients; when it is back, cross-node
    delivery resumes (subscriptions made again on every shard)."""
    cluster = own_cluster
    a, b = start_nodes(cluster, 2)
    topics = topics_on_each_shard(cluster, unique("kill"))
    sub = clients(b)
    sub.subscribe(*topics)
    local = clients(a)
    local.subscribe(topics[0])
    pub = clients(a)
    cluster.kill(2)
    time.sleep(0.5)
    pub.publish(topics[0], b"local", qos=1)
    pub.publish(topics[0], MARK, qos=1)
    assert [m.payload for m in local.until(MARK)] == [b"local"]
    cluster.restart(2)
    for t in topics:
        settle(pub, [sub], t)
    for t in topics:
        pub.publish(t, t.encode(), qos=1)
    assert sorted(m.payload for m in drain(pub, sub, topics)) == sorted(t.encode() for t in topics)


def test_qos1_goes_through_the_stream_on_its_shard(cluster, nodes, clients):
    """Issue 17 in a Cluster: QoS 1/2 between nodes are entries of the one stream, which lives
    on the shard of its hash tag (``{mqttd}``); QoS 0 stays on the topic's sharded channel."""
    a, b, _ = nodes
    topic = unique("stream")
    sub = clients(b)
    sub.subscribe(topic)
    pub = clients(a)
    key = "{mqttd}$mqttd/stream"
    shard = cluster.client(cluster.shard_of(key))
    try:
        settle(pub, [sub], topic)
        before = shard.xlen(key)
        pub.publish(topic, b"one", qos=1)
        pub.publish(topic, b"two", qos=2)
        assert sorted(m.payload for m in sub.collect(2)) == [b"one", b"two"]
        mine = [f[b"t"] for _, f in shard.xrange(key, count=100_000)[before:]]
        assert mine.count(topic.encode()) == 2, mine[-10:]
    finally:
        shard.close()


def test_qos1_kept_while_the_stream_shard_is_down(own_cluster, start_nodes, clients):
    """Issue 17 in a Cluster: the primary that holds the stream is killed and started again;
    the QoS 1 messages node a acknowledged meanwhile (kept in its stream buffer, the bridge
    down: the cluster fails without that shard) reach node b's subscriber, in order, once it is
    back."""
    cluster = own_cluster
    a, b = start_nodes(cluster, 2)
    topic = unique("kept")
    sub = clients(b)
    sub.subscribe(topic)
    pub = clients(a)
    settle(pub, [sub], topic)
    shard = cluster.shard_of("{mqttd}$mqttd/stream")
    cluster.kill(shard)
    time.sleep(0.5)
    for i in range(20):
        pub.publish(topic, b"m%d" % i, qos=1)  # PUBACK from node a, Redis or not
    cluster.restart(shard)
    pub.publish(topic, MARK, qos=1)
    assert [m.payload for m in sub.until(MARK, timeout=30)] == [b"m%d" % i for i in range(20)]
