"""Three nodes, a healthy Redis, 10,000 sequence-numbered QoS 1 messages from publishers on every
node: each matching client gets each matching message exactly once, in order per publisher, and
the others nothing.

Subscribers hold overlapping exact and wildcard filters spread over the nodes (some on the
publishing node itself). At the end each publisher sends ``END`` on ``{root}/end``, which every
subscriber also holds: a client that has all three has everything that came before them (one
ordered path per publisher), so the final comparison needs no quiet period.
"""

from __future__ import annotations

import threading
import time

from multinode import V311, Client, Msg, topic_matches, unique, wait_for

TOTAL = 10_000
KINDS = ["t0", "t1", "t2", "deep/t3"]

#: subscriber name -> (node index, filters); {r} is the test's topic root
SUBSCRIBERS = {
    "all": (0, ["{r}/#"]),
    "exact": (1, ["{r}/p0/t0", "{r}/p2/t1"]),
    "plus": (2, ["{r}/+/t1"]),
    "overlap": (1, ["{r}/p1/#", "{r}/p1/t2", "{r}/+/t2"]),
    "deep": (0, ["{r}/+/deep/+"]),
    "local": (2, ["{r}/p2/+", "{r}/p2/t0"]),  # the same node as publisher p2
    "none_level": (2, ["{r}/+"]),  # only {r}/end has two levels
    "none": (1, ["{r}/+/none", "{r}/p0/t0/x", "{r}x/#", "{r}/p0/t", "{r}/p0/deep"]),
}


class Recorder:
    """Messages in arrival order, recorded on paho's network thread."""

    def __init__(self) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.ends = 0
        self.lock = threading.Lock()

    def __call__(self, m: Msg) -> None:
        with self.lock:
            if m.payload.startswith(b"END"):
                self.ends += 1
            else:
                self.got.append((m.topic, m.payload))


def topic_of(root: str, pub: int, seq: int) -> str:
    return f"{root}/p{pub}/{KINDS[seq % len(KINDS)]}"


def test_three_nodes_10k_qos1_exactly_once_in_order(redis_server, start_nodes):
    nodes = start_nodes(redis_server, 3)
    root = unique("load")
    made: list[Client] = []
    try:
        recorders: dict[str, Recorder] = {}
        filters: dict[str, list[str]] = {}
        for name, (where, pattern) in SUBSCRIBERS.items():
            rec = Recorder()
            c = Client(nodes[where], f"{root}-{name}", V311, on_message=rec)
            made.append(c)
            filters[name] = [f.format(r=root) for f in pattern]
            c.subscribe(*filters[name], f"{root}/end", qos=1)
            recorders[name] = rec
        pubs = [Client(n, f"{root}-pub{i}", V311, max_inflight=200) for i, n in enumerate(nodes)]
        made.extend(pubs)
        counts = [TOTAL // 3 + (1 if i < TOTAL % 3 else 0) for i in range(3)]
        assert sum(counts) == TOTAL

        started = time.monotonic()
        infos = []
        for seq in range(max(counts)):
            for i, pub in enumerate(pubs):
                if seq < counts[i]:
                    infos.append(pub.publish_nowait(topic_of(root, i, seq), b"%d:%d" % (i, seq)))
        for info in infos:
            info.wait_for_publish(20)
            assert info.is_published(), "a publish was not acknowledged within 20 s"
        for i, pub in enumerate(pubs):
            pub.publish(f"{root}/end", b"END%d" % i, qos=1)
        for name, rec in recorders.items():
            wait_for(lambda rec=rec: rec.ends == 3, 20, f"{name}: the three END markers")
        elapsed = time.monotonic() - started

        for name, rec in recorders.items():
            by_pub: dict[int, list[int]] = {0: [], 1: [], 2: []}
            for topic, payload in rec.got:
                i, seq = map(int, payload.split(b":"))
                assert topic == topic_of(root, i, seq), f"{name}: {payload!r} on {topic}"
                by_pub[i].append(seq)
            for i in range(3):
                want = [
                    seq
                    for seq in range(counts[i])
                    if any(topic_matches(f, topic_of(root, i, seq)) for f in filters[name])
                ]
                got = by_pub[i]
                if got != want:
                    missing = sorted(set(want) - set(got))
                    dups = len(got) - len(set(got))
                    raise AssertionError(
                        f"{name} from p{i}: {len(got)} received, {len(want)} expected; "
                        f"missing {missing[:10]}{'...' if len(missing) > 10 else ''}, "
                        f"{dups} duplicates, in order: {got == sorted(got)}"
                    )
            if name.startswith("none"):
                assert rec.got == [], name
            else:
                assert rec.got, f"{name} matches something by construction"
        print(f"{TOTAL} messages, {sum(len(r.got) for r in recorders.values())} deliveries, "
              f"{elapsed:.1f} s")  # fmt: skip
        for n in nodes:
            assert n.alive()
    finally:
        for c in made:
            c.close()
