"""route.PushReader: the Redis subscription stream, with its compiled fast path for messages.

Both twins must do exactly what the bridge's general path does: deliver each mqttd envelope
once, drop the node's own messages and the extra copies Redis sends for overlapping patterns,
count sequence gaps, and hand everything else, in order, to the slow callback. The stream may
arrive split anywhere. Each test runs on both twins (``route_twin``, tests/unit/conftest.py).
"""

from __future__ import annotations

import struct
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqttd._pure import _route as pure_route


@pytest.fixture(scope="session")
def route(route_twin: ModuleType) -> ModuleType:
    """This file's short name for ``route_twin`` (tests/unit/conftest.py)."""
    return route_twin


ME = b"node-me!"
OTHER = b"node-b.."
CONTROL = b"$mqttd/control"


def bulk(b: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(b), b)


def push(*items: bytes) -> bytes:
    return b"*%d\r\n" % len(items) + b"".join(bulk(i) for i in items)


def envelope(origin: bytes, seq: int, payload: bytes, flags: int = 0) -> bytes:
    return struct.pack("!5sB8sQ", b"\x00MQD\x01", flags, origin, seq) + payload


class Tree:
    """Records what the fast path routes (collect), delivering to nobody."""

    def __init__(self) -> None:
        self.routed: list[str] = []

    def collect(self, topic: str) -> list:
        self.routed.append(topic)
        return []


class Harness:
    def __init__(self, route, tree: object = None) -> None:
        self.slow: list = []
        self.tree = tree if tree is not None else Tree()
        self.channels = {b"exact/t": {"exact/t"}, CONTROL: set()}
        # the bridge's caches, as its slow path would have filled them
        self.canonical = {b"wild/a": b"wild/*", b"exact/t": None}
        self.topics = {b"exact/t": "exact/t", b"wild/a": "wild/a"}
        self.last_seq: dict = {}
        self.stats = {"received": 0, "lost": 0}
        self.reader = route.PushReader(
            self.slow.append,
            ME,
            CONTROL,
            self.channels,
            self.canonical,
            self.topics,
            self.last_seq,
            self.stats,
            self.tree,
        )


def stream() -> tuple[bytes, list, list[str], dict]:
    """A stream of every case, with what the slow path gets, what is routed, and the stats."""
    parts = [
        b"*3\r\n$9\r\nsubscribe\r\n$7\r\nexact/t\r\n:1\r\n",
        b"*3\r\n$10\r\npsubscribe\r\n$6\r\nwild/*\r\n:2\r\n",
        push(b"message", b"exact/t", envelope(OTHER, 1, b"one")),  # fast
        push(b"message", b"exact/t", envelope(ME, 5, b"mine")),  # own: dropped
        push(b"pmessage", b"wild/*", b"exact/t", envelope(OTHER, 2, b"dup")),  # exact kept
        push(b"pmessage", b"wild/*", b"wild/a", envelope(OTHER, 1, b"two")),  # fast
        push(b"pmessage", b"w*", b"wild/a", envelope(OTHER, 1, b"dup")),  # not canonical
        push(b"message", b"exact/t", envelope(OTHER, 4, b"gap")),  # fast, 2 lost (2, 3)
        push(b"message", b"exact/t", b"raw payload"),  # not an envelope: slow
        push(b"message", b"exact/t", envelope(OTHER, 5, b"r", flags=0x04)),  # retain: slow
        push(b"message", b"new/topic", envelope(OTHER, 1, b"x")),  # unknown channel: slow
        push(b"message", CONTROL, b"hello"),  # control: slow
        b"+PONG\r\n",
        b"-ERR something\r\n",
        push(b"pmessage", b"wild/*", b"wild/b", envelope(OTHER, 1, b"?")),  # not cached: slow
    ]
    slow = [
        [b"subscribe", b"exact/t", 1],
        [b"psubscribe", b"wild/*", 2],
        [b"message", b"exact/t", b"raw payload"],
        [b"message", b"exact/t", envelope(OTHER, 5, b"r", flags=0x04)],
        [b"message", b"new/topic", envelope(OTHER, 1, b"x")],
        [b"message", CONTROL, b"hello"],
        b"PONG",
        "ERR something",
        [b"pmessage", b"wild/*", b"wild/b", envelope(OTHER, 1, b"?")],
    ]
    routed = ["exact/t", "wild/a", "exact/t"]
    return b"".join(parts), slow, routed, {"received": 3, "lost": 2}


def _plain(items: list) -> list:
    return [str(i) if isinstance(i, Exception) else i for i in items]


def test_fast_and_slow_paths_in_order(route) -> None:
    data, slow, routed, stats = stream()
    h = Harness(route)
    h.reader.feed(data)
    assert _plain(h.slow) == slow
    assert h.tree.routed == routed
    assert h.stats == stats
    assert h.last_seq == {(OTHER, "exact/t"): 4, (OTHER, "wild/a"): 1}


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=2000), max_size=12))
def test_any_split_gives_the_same_result(route, cuts: list[int]) -> None:
    data, slow, routed, stats = stream()
    h = Harness(route)
    points = sorted({c % len(data) for c in cuts} | {0, len(data)})
    for a, b in zip(points, points[1:], strict=False):
        h.reader.feed(data[a:b])
    assert _plain(h.slow) == slow
    assert h.tree.routed == routed
    assert h.stats == stats


def test_what_resp2_has_not_goes_to_hiredis(route) -> None:
    """A RESP3 push (">") cannot be framed by the fast path: from there on hiredis reads all."""
    h = Harness(route)
    h.reader.feed(push(b"message", b"exact/t", envelope(OTHER, 1, b"a")))
    h.reader.feed(b">3\r\n$7\r\nmessage\r\n$7\r\nexact/t\r\n$1\r\nb\r\n")
    h.reader.feed(push(b"message", b"exact/t", envelope(OTHER, 2, b"c")))
    assert h.tree.routed == ["exact/t"]
    assert len(h.slow) == 2 and h.slow[1][2] == envelope(OTHER, 2, b"c")


def test_twins_agree(route_compiled: ModuleType) -> None:
    data, _, _, _ = stream()
    results = []
    for route in (pure_route, route_compiled):
        h = Harness(route)
        h.reader.feed(data)
        results.append((_plain(h.slow), h.tree.routed, h.stats, h.last_seq))
    assert results[0] == results[1]


# -- batches: consecutive messages of one topic in one PUBLISH -------------------------------------
def batch(origin: bytes, first: int, items: list[tuple[int, bytes]], flags: int = 0) -> bytes:
    out = [struct.pack("!5sB8sQH", b"\x00MQD\x02", flags, origin, first, len(items))]
    for qos, payload in items:
        out.append(struct.pack("!BI", qos, len(payload)) + payload)
    return b"".join(out)


class DeliveringHarness(Harness):
    """A real subscription tree with one real outlet subscribed to ``#`` at QoS 2."""

    def __init__(self, route) -> None:
        from mqttd._speedups import match
        from tests.unit.test_route import make

        loop, _, outlet = make(route)
        tree = match.SubscriptionTree()
        tree.add("#", outlet, 2)
        super().__init__(route, tree)
        self.loop, self.outlet = loop, outlet

    def delivered(self) -> list[tuple[str, bytes, int]]:
        from tests.unit.test_route import decode

        self.loop.run_once()
        pkts = decode(b"".join(self.outlet.transport.writes), 4)
        return [(p.topic, p.payload, p.qos) for p in pkts]


def test_batches_deliver_each_message_in_order(route) -> None:
    h = DeliveringHarness(route)
    items = [(0, b"a"), (1, b""), (2, b"ccc" * 100), (0, b"d")]
    h.reader.feed(push(b"message", b"exact/t", batch(OTHER, 1, items)))
    h.reader.feed(push(b"message", b"exact/t", envelope(OTHER, 5, b"e")))  # continues: no gap
    h.reader.feed(push(b"message", b"exact/t", batch(ME, 1, [(0, b"own")] * 2)))  # dropped
    h.reader.feed(push(b"pmessage", b"wild/*", b"wild/a", batch(OTHER, 3, items[:2])))
    assert h.delivered() == [
        ("exact/t", b"a", 0),
        ("exact/t", b"", 1),
        ("exact/t", b"ccc" * 100, 2),
        ("exact/t", b"d", 0),
        ("exact/t", b"e", 0),
        ("wild/a", b"a", 0),
        ("wild/a", b"", 1),
    ]
    # 4 + 1 on exact/t, 2 on wild/a (its numbering starts here at 3: nothing seen before, so no
    # gap is counted); the node's own batch is neither received nor delivered
    assert h.stats == {"received": 7, "lost": 0}
    assert h.slow == []


@pytest.mark.parametrize(
    "bad",
    [
        batch(OTHER, 1, [(3, b"x"), (0, b"y")]),  # QoS 3
        batch(OTHER, 1, [(0, b"x")])[:-1],  # shorter than it says
        batch(OTHER, 1, [(0, b"x")]) + b"!",  # longer than it says
        batch(OTHER, 1, [(0, b"x")], flags=1),  # flags must be 0
        batch(OTHER, 1, []),  # empty
    ],
)
def test_unreadable_batches_go_to_the_general_path_whole(route, bad: bytes) -> None:
    h = DeliveringHarness(route)
    h.reader.feed(push(b"message", b"exact/t", bad))
    assert h.delivered() == []
    assert [r[2] for r in h.slow] == [bad]
