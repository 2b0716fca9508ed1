"""route.Outbox: the publishing node's side of the Redis wing (issue 16, item 4), on both twins.

What it writes must be, byte for byte, PUBLISH commands of the envelopes that mqttd.redis.envelope
(the one Python writer and reader of the format) makes, numbered per topic, with consecutive
messages of one topic batched and everything else in order; and what it writes must read back as
the same messages.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import hiredis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqttd.redis.envelope import decode_batch, decode_envelope, encode_batch, encode_envelope

NODE = b"node-A.."
PREFIX = b"pfx/"


@pytest.fixture(scope="session")
def route(route_twin: ModuleType) -> ModuleType:
    return route_twin


def commands(data: bytes) -> list[list[bytes]]:
    reader = hiredis.Reader()
    reader.feed(data)
    out = []
    while (cmd := reader.gets()) is not False:
        out.append(cmd)
    return out


def msg(
    route: ModuleType,
    topic: str,
    payload: bytes,
    qos: int = 0,
    retain: bool = False,
    props: Any = None,
) -> Any:
    block = b"\x00" if not props else b"\x03\x01\x01\x01"  # Payload Format Indicator 1
    return route.Message(topic, payload, qos, retain, props, block)


def test_numbers_per_topic_and_batches_runs(route: ModuleType) -> None:
    out = route.Outbox(NODE, PREFIX)
    seq = [out.stamp(msg(route, t, b"")) for t in ["a", "a", "b", "a"]]
    assert seq == [1, 2, 1, 3] and out.topic_seq == {"a": 3, "b": 1}
    out = route.Outbox(NODE, PREFIX)
    ms = [msg(route, "t", b"%d" % i, qos=i % 3) for i in range(3)]
    ms.append(msg(route, "u", b"x"))
    ms.append(msg(route, "t", b"r", retain=True))  # retained: alone
    ms.append(msg(route, "t", b"p", props={1: 1}))  # properties: alone
    ms.append(msg(route, "t", b"last"))
    firsts = [out.add(m) for m in ms]
    assert firsts == [True] + [False] * 6
    assert out.add_command(b"*1\r\n$4\r\nPING\r\n") is False
    data, count, publishes = out.take()
    assert (count, publishes) == (6, 7) and len(out) == 0
    cmds = commands(data)
    assert [c[0] for c in cmds] == [b"PUBLISH"] * 5 + [b"PING"]
    assert [c[1] for c in cmds[:5]] == [b"pfx/t", b"pfx/u", b"pfx/t", b"pfx/t", b"pfx/t"]
    # byte for byte what the reference writer makes
    assert cmds[0][2] == encode_batch(NODE, 1, ms[:3])
    assert decode_batch(cmds[0][2]) == (NODE, 1, [(0, b"0"), (1, b"1"), (2, b"2")])
    assert cmds[1][2] == encode_envelope(NODE, 1, ms[3])
    assert cmds[2][2] == encode_envelope(NODE, 4, ms[4])
    assert decode_envelope(cmds[2][2]) == (NODE, 4, 0, True, b"\x00", b"r")
    assert cmds[3][2] == encode_envelope(NODE, 5, ms[5])
    assert decode_envelope(cmds[3][2])[4] == b"\x03\x01\x01\x01"  # type: ignore[index]
    assert cmds[4][2] == encode_envelope(NODE, 6, ms[6])
    assert out.take() == (b"", 0, 0)


def test_drop_empties_without_framing(route: ModuleType) -> None:
    """Redis not reading: the outbox is emptied and its messages counted; numbering goes on."""
    out = route.Outbox(NODE, PREFIX)
    for i in range(3):
        out.add(msg(route, "t", b"%d" % i))
    out.add_command(b"*1\r\n$4\r\nPING\r\n")
    assert out.drop() == 3 and len(out) == 0 and out.take() == (b"", 0, 0)
    assert out.add(msg(route, "t", b"next")) is True  # empty again: the caller schedules
    assert out.topic_seq == {"t": 4}


def test_a_message_with_an_identity_keeps_it(route: ModuleType) -> None:
    """A message from another node (or stamped before a shared group chose) keeps its number."""
    out = route.Outbox(NODE, PREFIX)
    m = msg(route, "t", b"x")
    m.origin = (b"other...", 41)
    out.add(m)
    data, _, _ = out.take()
    assert decode_envelope(commands(data)[0][2])[1] == 41  # type: ignore[index]
    assert out.topic_seq == {}


def test_batches_close_at_their_limits(route: ModuleType) -> None:
    out = route.Outbox(NODE, PREFIX, 3, 1000)
    for i in range(7):
        out.add(msg(route, "t", b"%d" % i))
    data, count, publishes = out.take()
    assert (count, publishes) == (3, 7)
    assert [decode_batch(c[2])[1] if decode_batch(c[2]) else None for c in commands(data)] == [
        1,
        4,
        None,
    ]  # type: ignore[index]
    out = route.Outbox(NODE, PREFIX, 100, 10)
    for _ in range(3):
        out.add(msg(route, "t", b"x" * 8))  # the second one brings the run over 10 bytes
    assert out.take()[1] == 2


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b/c", "ü"]), st.binary(max_size=40), st.integers(0, 2)),
        max_size=30,
    )
)
def test_round_trip_through_the_reference_reader(route: ModuleType, items: list) -> None:
    """What the Outbox writes reads back (mqttd.redis.envelope) as the same messages, in order,
    numbered per topic from 1 (the receive side, PushReader, is held to the same reader by
    tests/unit/test_push_reader.py; tests/redis runs both across real nodes)."""
    out = route.Outbox(NODE, PREFIX)
    for topic, payload, qos in items:
        out.add(msg(route, topic, payload, qos))
    data, count, _ = out.take()
    got = []
    for cmd in commands(data):
        body = cmd[2]
        batch = decode_batch(body)
        topic = cmd[1][len(PREFIX) :].decode()
        if batch is not None:
            origin, first, its = batch
            got += [(topic, p, q, (origin, first + i)) for i, (q, p) in enumerate(its)]
        else:
            origin, seq, q, _, _, p = decode_envelope(body)  # type: ignore[misc]
            got.append((topic, p, q, (origin, seq)))
    want, seqs = [], {}
    for topic, payload, qos in items:
        seqs[topic] = seqs.get(topic, 0) + 1
        want.append((topic, payload, qos, (NODE, seqs[topic])))
    assert got == want
