"""The fan-out path (mqttd._route), compiled and pure twins, checked against the codec's reader.

Outlets are given a recording transport: this level has no sockets (the conformance and interop
tests cover the network). Each test runs on both twins (``route_twin``, tests/unit/conftest.py:
the compiled run fails when the extension should be there and is not).
"""

from __future__ import annotations

from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqttd._pure import _codec as pure_codec
from mqttd.constants import PACKET_IDENTIFIER_NOT_FOUND, SUCCESS, UNSPECIFIED_ERROR


@pytest.fixture(scope="session")
def route(route_twin: ModuleType) -> ModuleType:
    """This file's short name for ``route_twin`` (tests/unit/conftest.py)."""
    return route_twin


def test_compiled_route_loaded(route_compiled: ModuleType) -> None:
    # route_compiled skips under MQTTD_NO_EXTENSIONS=1 and fails when the module did not load
    assert route_compiled.__file__ is not None and not route_compiled.__file__.endswith(".py")


class Loop:
    """Runs call_soon callbacks when asked: one 'iteration' of an event loop."""

    def __init__(self) -> None:
        self.ready: list = []

    def call_soon(self, cb, *args):
        self.ready.append((cb, args))

    def run_once(self) -> None:
        ready, self.ready = self.ready, []
        for cb, args in ready:
            cb(*args)


class Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data) -> None:
        self.writes.append(bytes(data))


def make(route, version: int = 4, **kw):
    loop = Loop()
    flusher = route.Flusher(loop)
    outlet = route.Outlet(flusher, version, **kw)
    outlet.transport = Transport()
    return loop, flusher, outlet


def decode(data: bytes, level: int) -> list:
    return pure_codec.Reader(protocol_level=level).feed(data)


@pytest.mark.parametrize("level", [3, 4, 5])
@settings(max_examples=60, deadline=None)
@given(
    topic=st.text(
        st.characters(blacklist_characters="\x00+#", blacklist_categories=("Cs",)),
        min_size=1,
        max_size=40,
    ),
    payload=st.binary(max_size=300),
    qos=st.integers(0, 2),
    retain=st.booleans(),
)
def test_encoded_publish_decodes(route, level, topic, payload, qos, retain) -> None:
    props = {0x03: "text/plain", 0x26: [("k", "v")]} if level == 5 else {}
    block = pure_codec.encode_properties(props) if level == 5 else b"\x00"
    msg = route.Message(topic, payload, qos, retain, props, block)
    buf = bytearray()
    if qos == 0:
        buf += msg.encode_qos0(level, retain)
    else:
        msg.write_qos(buf, level, qos, retain, True, 4242)
    (pkt,) = decode(bytes(buf), level)
    assert (pkt.topic, pkt.payload, pkt.qos, pkt.retain) == (topic, payload, qos, retain)
    assert pkt.dup == (qos > 0)
    assert pkt.packet_id == (4242 if qos else 0)
    assert pkt.properties == props


def test_one_write_per_outlet_per_iteration(route) -> None:
    loop, _, outlet = make(route)
    msg = route.Message("t", b"p")
    for _ in range(100):
        outlet.send(msg, 0, False)
    outlet.write(b"\xd0\x00")
    assert outlet.transport.writes == []
    loop.run_once()
    assert len(outlet.transport.writes) == 1
    pkts = decode(outlet.transport.writes[0], 4)
    assert len(pkts) == 101 and pkts[-1].packet_type == 13


def test_shared_encoding_for_identical_copies(route) -> None:
    msg = route.Message("a/b", b"x" * 64)
    assert msg.encode_qos0(4, False) is msg.encode_qos0(4, False)
    assert msg.encode_qos0(3, False) == msg.encode_qos0(4, False)
    assert msg.encode_qos0(5, False) != msg.encode_qos0(4, False)


def test_deliver_one_copy_at_highest_qos(route) -> None:
    """[MQTT-3.3.5-1]: overlapping subscriptions give one copy at the highest granted QoS."""
    loop, flusher, a = make(route)
    b = route.Outlet(flusher, 5)
    b.transport = Transport()
    nodes = [{a: 0, b: 1}, {a: 2}, {b: 0}]
    msg = route.Message("x/y", b"hi", 2)
    assert route.deliver(nodes, msg, None) == 2
    loop.run_once()
    (pa,) = decode(a.transport.writes[0], 4)
    (pb,) = decode(b.transport.writes[0], 5)
    assert (pa.qos, pb.qos) == (2, 1)
    assert a.inflight[pa.packet_id].qos == 2 and b.inflight[pb.packet_id].qos == 1


def test_qos_downgraded_to_published(route) -> None:
    loop, _, a = make(route)
    route.deliver([{a: 2}], route.Message("t", b"", 1), None)
    loop.run_once()
    (p,) = decode(a.transport.writes[0], 4)
    assert p.qos == 1


def test_no_local_and_retain_as_published(route) -> None:
    loop, flusher, a = make(route, 5)
    b = route.Outlet(flusher, 5)
    b.transport = Transport()
    msg = route.Message("t", b"v", 0, True)
    # a: No Local, and it is the origin; b: Retain As Published
    assert route.deliver([{a: 0x04, b: 0x08}], msg, a) == 1
    loop.run_once()
    assert a.transport.writes == []
    (p,) = decode(b.transport.writes[0], 5)
    assert p.retain is True
    # without RAP a live message goes out with RETAIN=0 [MQTT-3.3.1-12]
    route.deliver([{b: 0}], msg, None)
    loop.run_once()
    (p,) = decode(b.transport.writes[1], 5)
    assert p.retain is False


def test_inflight_window_queue_and_packet_ids(route) -> None:
    loop, flusher, a = make(route, inflight_max=2, max_queued=2)
    flusher.slow_timeout = 0.0  # publishers never held: a full queue drops its oldest
    msgs = [route.Message("t", bytes([i]), 1) for i in range(5)]
    for m in msgs:
        a.send(m, 1, False)
    loop.run_once()
    pkts = decode(a.transport.writes[0], 4)
    assert [p.payload for p in pkts] == [b"\x00", b"\x01"]
    assert len(a.queue) == 2 and a.dropped == 1 and flusher.drops["queue_full"] == 1
    assert [m.payload for m, _, _ in a.queue] == [b"\x03", b"\x04"]  # the oldest went
    ids = [p.packet_id for p in pkts]
    assert len(set(ids)) == 2 and 0 not in ids
    assert a.puback(ids[0]) is True  # room in the window: the next queued message goes out
    loop.run_once()
    (p,) = decode(a.transport.writes[1], 4)
    assert p.payload == b"\x03" and p.packet_id in a.inflight and p.packet_id != ids[1]


def test_idle_outlets_share_one_empty_inflight_table_that_nothing_writes_into(route) -> None:
    """The in-flight dict is made with the first QoS 1/2 message, sent or restored (64 bytes of
    each idle connection otherwise: issue 16); the shared empty one stays empty."""
    loop, flusher, a = make(route)
    b = route.Outlet(flusher, 4)
    c = route.Outlet(flusher, 4)
    assert a.inflight is b.inflight is c.inflight and not a.inflight
    a.send(route.Message("t", b"1", 1), 1, False)
    loop.run_once()
    b.restore_inflight(7, route.Message("t", b"2"), 1, False, route.AWAIT_PUBACK)
    assert list(a.inflight) and list(b.inflight) == [7]
    assert a.inflight is not c.inflight and b.inflight is not c.inflight
    assert c.inflight == {} and c.inflight_items() == []
    c.resend_inflight()
    assert c.inflight == {}


def test_packet_ids_skip_those_in_flight(route) -> None:
    _, _, a = make(route)
    msg = route.Message("t", b"", 1)
    a.restore_inflight(1, msg, 1, False, route.AWAIT_PUBACK)
    a.restore_inflight(2, msg, 1, False, route.AWAIT_PUBACK)
    assert a.alloc_packet_id() == 3
    a.next_pid = 65535
    assert a.alloc_packet_id() == 65535
    assert a.alloc_packet_id() == 3  # wraps past 0 and skips 1, 2


def test_offline_outlet_queues_qos1_drops_qos0(route) -> None:
    loop, flusher, a = make(route)
    a.transport = None
    a.send(route.Message("t", b"0"), 0, False)
    a.send(route.Message("t", b"1", 1), 1, False)
    assert a.dropped == 1 and len(a.queue) == 1 and flusher.drops["offline"] == 1
    a.transport = Transport()
    a.drain_queue()
    loop.run_once()
    (p,) = decode(a.transport.writes[0], 4)
    assert p.payload == b"1" and not p.dup


def test_resend_inflight_sets_dup_and_pubrel(route) -> None:
    loop, _, a = make(route)
    a.send(route.Message("t", b"1", 1), 1, False)
    a.send(route.Message("t", b"2", 2), 2, False)
    loop.run_once()
    first = decode(a.transport.writes[0], 4)
    # the QoS 2 one got its PUBREC: now awaiting PUBCOMP
    assert a.pubrec(first[1].packet_id, 0) == 0
    a.resend_inflight()
    loop.run_once()
    again = decode(a.transport.writes[1], 4)
    assert again[0].packet_type == 3 and again[0].dup and again[0].packet_id == first[0].packet_id
    assert again[1].packet_type == 6 and again[1].packet_id == first[1].packet_id


def test_acks_complete_flows_in_order_and_drain_the_queue(route) -> None:
    """PUBACK ends a QoS 1 flow, PUBREC then PUBCOMP a QoS 2 one [MQTT-4.3.2, 4.3.3]; an ack
    of the wrong kind or for an unknown id changes nothing; each end makes room in the window."""
    loop, _, a = make(route, 5, inflight_max=1)
    a.send(route.Message("t", b"1", 1), 1, False)
    a.send(route.Message("t", b"2", 2), 2, False)  # queued: the window holds one
    loop.run_once()
    (p1,) = decode(a.transport.writes[0], 5)
    assert a.pubrec(p1.packet_id, SUCCESS) == PACKET_IDENTIFIER_NOT_FOUND
    assert a.pubcomp(p1.packet_id) is False
    assert a.puback(p1.packet_id) is True and a.puback(p1.packet_id) is False
    loop.run_once()
    (p2,) = decode(a.transport.writes[1], 5)
    assert p2.payload == b"2" and len(a.queue) == 0
    assert a.puback(p2.packet_id) is False
    assert a.pubrec(p2.packet_id, SUCCESS) == SUCCESS
    entry = a.inflight[p2.packet_id]
    assert (entry.msg, entry.qos, entry.state) == (None, 2, route.AWAIT_PUBCOMP)
    assert a.pubrec(p2.packet_id, SUCCESS) == SUCCESS  # a PUBREC sent again: PUBREL again
    assert a.pubcomp(p2.packet_id) is True and a.inflight == {}


def test_pubrec_failure_or_unknown_id_sends_no_pubrel(route) -> None:
    loop, _, a = make(route, 5, inflight_max=1)
    a.send(route.Message("t", b"1", 2), 2, False)
    a.send(route.Message("t", b"2", 2), 2, False)
    loop.run_once()
    (p1,) = decode(a.transport.writes[0], 5)
    # MQTT 5: a PUBREC with a failure code ends the exchange (§4.3.3); the queued one goes out
    assert a.pubrec(p1.packet_id, UNSPECIFIED_ERROR) == route.NO_PUBREL
    assert p1.packet_id not in a.inflight and len(a.queue) == 0 and len(a.inflight) == 1
    # 3.1.1 has no reason code to say "not found" with
    _, _, b = make(route, 4)
    assert b.pubrec(7, SUCCESS) == route.NO_PUBREL


def test_inflight_hand_over_round_trip(route) -> None:
    """What inflight_items gives, restore_inflight takes back: the new outlet resends the
    PUBLISH (DUP) and the PUBREL."""
    loop, flusher, a = make(route)
    a.send(route.Message("t", b"1", 1), 1, True)
    a.send(route.Message("t", b"2", 2), 2, False)
    loop.run_once()
    first = decode(a.transport.writes[0], 4)
    a.pubrec(first[1].packet_id, SUCCESS)
    items = a.inflight_items()
    assert [(pid, e.qos, e.retain, e.state) for pid, e in items] == [
        (first[0].packet_id, 1, True, route.AWAIT_PUBACK),
        (first[1].packet_id, 2, False, route.AWAIT_PUBCOMP),
    ]
    b = route.Outlet(flusher, 4)
    b.transport = Transport()
    for pid, e in items:
        b.restore_inflight(pid, e.msg, e.qos, e.retain, e.state)
    b.resend_inflight()
    loop.run_once()
    again = decode(b.transport.writes[0], 4)
    assert [(p.packet_type, p.packet_id) for p in again] == [
        (3, first[0].packet_id),
        (6, first[1].packet_id),
    ]
    assert again[0].dup and again[0].retain and again[0].payload == b"1"
    with pytest.raises(ValueError):
        b.restore_inflight(9, None, 1, False, route.AWAIT_PUBACK)  # its message is needed
    with pytest.raises(ValueError):
        b.restore_inflight(9, route.Message("t", b""), 1, False, 4)


def test_paused_outlet_drops_qos0_past_its_buffer(route) -> None:
    loop, flusher, a = make(route, max_buffer=100)
    a.paused = True
    msg = route.Message("t", b"x" * 40)
    for _ in range(10):
        a.send(msg, 0, False)
    loop.run_once()
    assert a.transport.writes == []
    assert a.dropped == 7  # three 44-byte packets fit below 100 bytes, then drops
    assert flusher.drops["buffer_full"] == 7
    a.resume()
    loop.run_once()
    assert len(decode(a.transport.writes[0], 4)) == 3


class Group:
    def __init__(self, member, opts) -> None:
        self.member, self.opts = member, opts

    def pick(self, msg, origin):
        return self.member, self.opts


def test_shared_group_key_picks_member(route) -> None:
    loop, _, a = make(route)
    assert route.deliver([{Group(a, 1): 0}], route.Message("t", b"s", 1), None) == 1
    loop.run_once()
    (p,) = decode(a.transport.writes[0], 4)
    assert p.qos == 1


def test_subscription_identifiers_per_subscriber(route) -> None:
    """[MQTT-3.3.4-3]: every matching subscription's identifier; copies with the same ids share
    one encoding; 3.1.1 subscribers get none."""
    loop, flusher, a = make(route, 5)
    b = route.Outlet(flusher, 5)
    b.transport = Transport()
    c = route.Outlet(flusher, 4)
    c.transport = Transport()
    d = route.Outlet(flusher, 5)
    d.transport = Transport()
    msg = route.Message("s/t", b"v", 1)
    nodes = [{a: 1 | (7 << 8), b: 1 | (7 << 8), c: 1 | (9 << 8), d: 1}, {a: 0 | (3 << 8)}]
    assert route.deliver(nodes, msg, None) == 4
    loop.run_once()
    (pa,) = decode(a.transport.writes[0], 5)
    (pb,) = decode(b.transport.writes[0], 5)
    (pc,) = decode(c.transport.writes[0], 4)
    (pd,) = decode(d.transport.writes[0], 5)
    assert sorted(pa.properties[0x0B]) == [3, 7]
    assert pb.properties[0x0B] == [7]
    assert pc.properties == {} and 0x0B not in pd.properties
    assert msg.with_ids((7,)) is msg.with_ids((7,))
    # single matching node: the id comes straight from the stored value
    route.deliver([{b: 0 | (5 << 8)}], route.Message("s/t", b"w"), None)
    loop.run_once()
    (pb2,) = decode(b.transport.writes[1], 5)
    assert pb2.properties[0x0B] == [5]


def test_topic_aliases_to_client_within_its_maximum(route) -> None:
    """[MQTT-3.3.2-10]: aliases only up to the client's Topic Alias Maximum; the topic goes
    with the alias once, then the alias alone."""
    loop, _, a = make(route, 5)
    a.alias_max = 2
    for topic in ["x", "y", "x", "z", "y", "z"]:
        a.send(route.Message(topic, topic.encode(), 1), 1, False)
    loop.run_once()
    pkts = decode(a.transport.writes[0], 5)
    seen = {}
    resolved = []
    for p in pkts:
        alias = p.properties.get(0x23)
        if alias is not None:
            assert 1 <= alias <= 2
            if p.topic:
                seen[alias] = p.topic
            resolved.append(p.topic or seen[alias])
        else:
            resolved.append(p.topic)
    assert resolved == ["x", "y", "x", "z", "y", "z"]
    assert [p.topic for p in pkts] == ["x", "y", "", "z", "", "z"]
    # A new connection starts without aliases; the resent message carries its topic again.
    a.aliases = {}
    a.resend_inflight()
    loop.run_once()
    again = decode(a.transport.writes[1], 5)
    assert again[0].topic == "x" and again[0].dup


def test_expired_queued_message_is_refreshed_or_dropped(route) -> None:
    loop, _, a = make(route)
    a.transport = None
    keep = route.Message("t", b"keep", 1)
    keep.expires_at = 1.0
    gone = route.Message("t", b"gone", 1)
    gone.expires_at = 2.0
    a.send(gone, 1, False)
    a.send(keep, 1, False)
    a.refresh = lambda m: None if m is gone else m
    a.transport = Transport()
    a.drain_queue()
    loop.run_once()
    assert [p.payload for p in decode(a.transport.writes[0], 4)] == [b"keep"]


# -- flow control (docs/flow-control.md) -------------------------------------------------------------
class Waiter:
    """A held publisher: counts the times it is let go."""

    def __init__(self) -> None:
        self.woken = 0

    def unhold(self) -> None:
        self.woken += 1


def qos1(route, i: int, size: int = 4):
    """A QoS 1 message on topic "t" whose ``size``-byte payload starts with ``i``."""
    return route.Message("t", i.to_bytes(4, "big") + b"x" * (size - 4), 1)


def test_full_queue_of_a_reading_session_holds_its_publishers(route) -> None:
    loop, flusher, a = make(route, inflight_max=1, max_queued=4)
    for i in range(5):  # 1 in flight, 4 queued: full
        a.send(qos1(route, i), 1, False)
    assert flusher.pressure == [] and a.full_since < 0
    a.send(qos1(route, 5), 1, False)
    # Taken beyond the limit, nothing dropped: the publisher is to be held (Flusher.pressure)
    assert flusher.pressure == [a] and len(a.queue) == 5 and a.dropped == 0
    assert a.full_since == flusher.now
    waiter = Waiter()
    a.waiters = [waiter]
    # Drained to half its limit (2 of 4): the publishers go on
    for _ in range(2):
        a.puback(next(iter(a.inflight)))
    assert waiter.woken == 0 and len(a.queue) == 3
    a.puback(next(iter(a.inflight)))
    assert waiter.woken == 1 and a.waiters is None and a.full_since < 0 and not a.slow


def test_backpressure_stops_at_twice_the_limits(route) -> None:
    loop, flusher, a = make(route, inflight_max=1, max_queued=3)
    for i in range(1 + 3 + 3):  # window, queue, and as much again while publishers are held
        a.send(qos1(route, i), 1, False)
    assert a.dropped == 0 and len(a.queue) == 6
    a.send(qos1(route, 7), 1, False)  # twice the limit: the oldest make room
    assert len(a.queue) == 3 and a.dropped == 4 and flusher.drops["queue_full"] == 4
    assert [int.from_bytes(m.payload[:4], "big") for m, _, _ in a.queue] == [5, 6, 7]


def test_queue_full_longer_than_the_timeout_makes_the_session_slow(route) -> None:
    loop, flusher, a = make(route, inflight_max=1, max_queued=2)
    flusher.now = 100.0
    for i in range(4):
        a.send(qos1(route, i), 1, False)
    assert flusher.pressure == [a] and a.full_since == 100.0
    waiter = Waiter()
    a.waiters = [waiter]
    flusher.now = 100.0 + flusher.slow_timeout
    a.send(qos1(route, 4), 1, False)
    # Slow: it holds nobody now, and drops its oldest to stay within its limit; it made no
    # progress since it began to owe a PUBACK, so mqttd.flow is to disconnect it
    assert a.slow and waiter.woken == 1 and a.waiters is None
    assert flusher.stalled == [a]
    assert len(a.queue) == 2 and a.dropped == 2
    assert [int.from_bytes(m.payload[:4], "big") for m, _, _ in a.queue] == [3, 4]
    flusher.pressure.clear()
    a.send(qos1(route, 5), 1, False)
    assert flusher.pressure == [] and a.dropped == 3
    a.puback(next(iter(a.inflight)))  # drained to half: not slow any more
    assert not a.slow and a.full_since < 0 and len(a.queue) == 1


def test_offline_session_holds_at_most_its_queue_messages_and_bytes(route) -> None:
    loop, flusher, a = make(route, inflight_max=2, max_queued=100, max_queued_bytes=1000)
    a.transport = None
    for i in range(50):
        a.send(qos1(route, i, 100), 1, False)
    # 1000 bytes hold 9 messages of 100 + 1 (topic "t"): the oldest went, none held publishers
    assert len(a.queue) == 9 and a.queued_bytes == 909 and flusher.pressure == []
    assert a.dropped == 41 and flusher.drops["queue_full"] == 41
    assert flusher.held == 909
    a.send(route.Message("t", b"x" * 2000, 1), 1, False)  # bigger than the whole queue
    assert a.dropped == 51 and len(a.queue) == 0 and flusher.held == 0


def test_paused_transport_keeps_qos1_queued_not_encoded(route) -> None:
    loop, flusher, a = make(route, inflight_max=10)
    a.paused = True
    for i in range(3):
        a.send(qos1(route, i), 1, False)
    assert len(a.queue) == 3 and not a.inflight and len(a.buf) == 0
    a.resume()
    loop.run_once()
    pkts = decode(a.transport.writes[0], 4)
    assert [int.from_bytes(p.payload[:4], "big") for p in pkts] == [0, 1, 2]
    assert len(a.inflight) == 3 and not a.queue


def test_held_bytes_follow_queue_window_and_acks(route) -> None:
    loop, flusher, a = make(route, inflight_max=2, version=5)
    for i in range(3):
        a.send(qos1(route, i, 10), 1, False)
    a.send(route.Message("t", b"y" * 10, 2), 2, False)
    assert flusher.held == 4 * 11
    ids = list(a.inflight)
    a.puback(ids[0])  # one leaves, a queued one goes out: the same bytes held
    assert flusher.held == 3 * 11
    a.clear()
    assert flusher.held == 0 and not a.queue and not a.inflight
    b = make(route, inflight_max=5, version=5)[2]
    b.flusher = flusher
    b.send(route.Message("t", b"y" * 10, 2), 2, False)
    (pid,) = b.inflight
    assert flusher.held == 11
    assert b.pubrec(pid, SUCCESS) == SUCCESS  # delivered: only the id is kept
    assert flusher.held == 0
    assert b.pubcomp(pid) and flusher.held == 0


def test_expired_queued_message_is_counted(route) -> None:
    loop, flusher, a = make(route)
    a.transport = None
    msg = qos1(route, 1)
    msg.expires_at = 1.0
    a.refresh = lambda m: None  # the broker says it expired
    a.send(msg, 1, False)
    a.transport = Transport()
    a.drain_queue()
    assert flusher.drops["expired"] == 1 and a.dropped == 1 and not a.inflight


def test_too_big_for_the_client_is_counted(route) -> None:
    loop, flusher, a = make(route, version=5)
    a.max_packet = 20
    a.send(route.Message("t", b"x" * 50), 0, False)
    assert flusher.drops["too_big"] == 1 and a.drops == {"too_big": 1}
    assert flusher.dropping == {a}


def test_out_of_memory_is_the_subscribers_problem(route) -> None:
    class Boom(route.Message):
        def write_qos(self, buf, version, qos, retain, dup, packet_id):
            buf += b"half"
            raise MemoryError

    loop, flusher, a = make(route)
    b = route.Outlet(flusher, 4)
    b.transport = Transport()
    msg = Boom("t", b"1", 1)
    # a gets it at QoS 1 (and runs out of memory), b at QoS 0
    n = route.deliver([{a: 1, b: 0}], msg, None)
    assert n == 1 and a.dropped == 1 and flusher.drops["memory"] == 1
    assert not a.inflight and len(a.buf) == 0  # no id in flight that was never sent
    loop.run_once()
    assert decode(b.transport.writes[0], 4)[0].payload == b"1"


def test_out_of_memory_writing_cuts_that_subscriber_only(route) -> None:
    class Full(Transport):
        closed = False

        def write(self, data) -> None:
            raise MemoryError

        def close(self) -> None:
            self.closed = True

    loop, flusher, a = make(route)
    a.transport = Full()
    b = route.Outlet(flusher, 4)
    b.transport = Transport()
    route.deliver([{a: 0, b: 0}], route.Message("t", b"1"), None)
    loop.run_once()
    assert a.transport.closed and a.buf == bytearray() and flusher.drops["memory"] == 1
    assert decode(b.transport.writes[0], 4)[0].payload == b"1"


def test_a_full_queue_that_makes_progress_is_slow_only_after_ten_timeouts(route) -> None:
    loop, flusher, a = make(route, inflight_max=1, max_queued=2)
    flusher.now = 10.0
    for i in range(4):
        a.send(qos1(route, i), 1, False)
    assert a.full_since == 10.0 and a.overdue(10.9) == 0
    # The client acknowledges (progress) every half second, the publisher keeps it full
    for step in range(1, 20):
        flusher.now = 10.0 + step / 2
        a.puback(next(iter(a.inflight)))
        a.send(qos1(route, 10 + step), 1, False)
        assert not a.slow and a.full_since == 10.0, step
    assert a.overdue(19.9) == 0
    # full for ten timeouts though it reads: slow, and not to be disconnected
    assert a.overdue(20.0) == route.CANNOT_KEEP_UP
    flusher.now = 20.0
    a.send(qos1(route, 99), 1, False)
    assert a.slow and a.dropped > 0 and flusher.stalled == []
    assert a.overdue(20.5) == route.STALLED  # and one that stops: no progress for 1 s


def test_inflight_window_in_bytes(route) -> None:
    """As Mosquitto's max_inflight_bytes: messages go in flight while the bytes in flight are
    under the limit; one message goes whatever its size."""
    loop, flusher, a = make(route, inflight_max=100, max_inflight_bytes=250)
    for i in range(5):
        a.send(qos1(route, i, 100), 1, False)  # 101 bytes each with the topic
    assert len(a.inflight) == 3 and a.inflight_bytes == 303 and len(a.queue) == 2
    a.puback(next(iter(a.inflight)))  # 202 in flight: one more goes
    assert len(a.inflight) == 3 and len(a.queue) == 1
    b = make(route, inflight_max=100, max_inflight_bytes=10)[2]
    b.send(qos1(route, 0, 1000), 1, False)
    b.send(qos1(route, 1, 4), 1, False)
    assert len(b.inflight) == 1 and len(b.queue) == 1  # the big one went, alone
    a.clear()
    assert a.inflight_bytes == 0
