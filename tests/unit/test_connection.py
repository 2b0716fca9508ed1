"""The connection core (mqttd.connection) driven without sockets and without waiting: bytes in
from the independent encoder of the conformance tests, bytes out read from a fake link, time from
a fake clock that the test moves. Keepalive, the CONNECT deadline, session expiry and the will
delay are checked to the tenth of a second in no time.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable
from typing import Any

import pytest

from mqttd.broker import Broker, BrokerConfig
from mqttd.connection import Connection
from tests.conformance.mqtt_raw import (
    CONNACK,
    DISCONNECT,
    PUBACK,
    PUBLISH,
    SESSION_EXPIRY_INTERVAL,
    SUBACK,
    WILL_DELAY_INTERVAL,
    Packet,
    connect,
    decode_varint,
    disconnect,
    parse_connack,
    parse_disconnect,
    parse_publish,
    prop,
    props,
    puback,
    publish,
    subscribe,
)

KEEP_ALIVE_TIMEOUT = 0x8D


class Handle:
    """What call_later / call_soon return."""

    def __init__(self, when: float, callback: Callable[..., Any], args: tuple) -> None:
        self.when, self.callback, self.args = when, callback, args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeTask:
    """A task over a coroutine that never waits for I/O (the in-memory store answers at once)."""

    def __init__(self, loop: FakeLoop, coro: Any) -> None:
        self.loop, self.coro = loop, coro
        self.done = False
        self.error: BaseException | None = None
        self.callbacks: list[Callable[[FakeTask], Any]] = []
        loop.call_soon(self._step)

    def _step(self) -> None:
        try:
            waited = self.coro.send(None)
        except StopIteration:
            pass
        except BaseException as exc:
            self.error = exc
        else:
            if waited is None:  # a bare turn (asyncio.sleep(0)): go on at the next one
                self.loop.call_soon(self._step)
                return
            raise AssertionError(f"the core awaited {waited!r}, which a fake loop cannot run")
        self.done = True
        for cb in self.callbacks:
            self.loop.call_soon(cb, self)

    def add_done_callback(self, cb: Callable[[FakeTask], Any]) -> None:
        if self.done:
            self.loop.call_soon(cb, self)
        else:
            self.callbacks.append(cb)

    def cancelled(self) -> bool:
        return False

    def exception(self) -> BaseException | None:
        return self.error


class FakeLoop:
    """The clock, timers, turns and tasks of an event loop; time moves only in advance()."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.timers: list[tuple[float, int, Handle]] = []
        self.ready: deque[Handle] = deque()
        self._seq = itertools.count()

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Handle:
        h = Handle(self.now + delay, callback, args)
        heapq.heappush(self.timers, (h.when, next(self._seq), h))
        return h

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> Handle:
        h = Handle(self.now, callback, args)
        self.ready.append(h)
        return h

    def create_task(self, coro: Any) -> FakeTask:
        return FakeTask(self, coro)

    def run_ready(self) -> None:
        while self.ready:
            h = self.ready.popleft()
            if not h.cancelled:
                h.callback(*h.args)

    def advance(self, seconds: float) -> None:
        """Move the clock, running each timer at its time, and every turn it makes ready."""
        until = self.now + seconds
        self.run_ready()
        while self.timers and self.timers[0][0] <= until:
            when, _, h = heapq.heappop(self.timers)
            self.now = when
            if not h.cancelled:
                h.callback(*h.args)
            self.run_ready()
        self.now = until


class FakeLink:
    """The transport side: what the core wrote, and whether it closed. Closing ends the
    connection on the next turn, as asyncio does."""

    def __init__(self, loop: FakeLoop) -> None:
        self.loop = loop
        self.out = bytearray()
        self.closed = False
        self.reading = True
        self.core: Connection | None = None

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.out += data

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            assert self.core is not None
            self.loop.call_soon(self.core.connection_lost, None)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 50000) if name == "peername" else default

    def packets(self) -> list[Packet]:
        """What was written since the last call, as packets."""
        data, self.out = bytes(self.out), bytearray()
        out, pos = [], 0
        while pos < len(data):
            first = data[pos]
            size, start = decode_varint(data, pos + 1)
            out.append(Packet(first >> 4, first & 0x0F, data[start : start + size]))
            pos = start + size
        return out


class Net:
    """A broker on a fake loop, and connections to it."""

    def __init__(self, **config: Any) -> None:
        self.loop = FakeLoop()
        self.broker = Broker(BrokerConfig(sys_interval=0, **config))
        self.broker.attach(self.loop)  # type: ignore[arg-type]

    def open(self, *data: bytes) -> FakeLink:
        link = FakeLink(self.loop)
        core = link.core = Connection(self.broker)
        core.connection_made(link)
        for chunk in data:
            core.data_received(chunk)
        self.loop.run_ready()
        return link

    def client(self, cid: str, level: int = 5, **kw: Any) -> FakeLink:
        """A connection that sent CONNECT and got CONNACK 0."""
        link = self.open(connect(cid, level=level, **kw))
        (ack,) = link.packets()
        assert ack.type == CONNACK and parse_connack(ack, level)[1] == 0
        return link

    def send(self, link: FakeLink, data: bytes) -> None:
        assert link.core is not None
        link.core.data_received(data)
        self.loop.run_ready()


def test_connack_goes_out_through_the_link() -> None:
    net = Net()
    link = net.open(connect("c1", level=5))
    (ack,) = link.packets()
    assert ack.type == CONNACK
    assert parse_connack(ack, 5)[:2] == (False, 0)
    assert not link.closed


def test_refusal_goes_out_through_the_same_writer() -> None:
    """Before a session exists the core still has one way out: a refused CONNECT (an
    Authentication Method nobody registered) gets CONNACK 0x8C, then the link closes."""
    net = Net()
    link = net.open(connect("c2", level=5, properties=props(prop(0x15, "nope"))))
    (ack,) = link.packets()
    assert parse_connack(ack, 5)[1] == 0x8C
    assert link.closed


def test_connect_deadline() -> None:
    """A socket that never sends CONNECT is closed after CONNECT_TIMEOUT (10 s)."""
    net = Net()
    link = net.open()
    net.loop.advance(9.9)
    assert not link.closed
    net.loop.advance(0.1)
    assert link.closed and link.packets() == []


@pytest.mark.parametrize("level", [4, 5])
def test_keepalive_closes_after_one_and_a_half_times(level: int) -> None:
    """Nothing received for 1.5 x keepalive: closed as if the network failed ([MQTT-3.1.2-24],
    5.0 [MQTT-3.1.2-22]); MQTT 5 is told 0x8D first. Traffic restarts the count."""
    net = Net()
    link = net.client("ka", level, keepalive=10)
    net.loop.advance(14.75)  # (quarters: exact in binary, so the edges are exact)
    assert not link.closed
    net.send(link, b"\xc0\x00")  # PINGREQ at 14.75 s
    assert [p.type for p in link.packets()] == [13]
    net.loop.advance(14.75)
    assert not link.closed
    net.loop.advance(0.25)
    assert link.closed
    got = link.packets()
    if level == 5:
        assert [p.type for p in got] == [DISCONNECT]
        assert parse_disconnect(got[0]) == KEEP_ALIVE_TIMEOUT
    else:
        assert got == []


@pytest.mark.parametrize("keepalive", [0, 2, 60])
def test_the_connect_deadline_becomes_the_first_keepalive_check(keepalive: int) -> None:
    """The CONNECT deadline (10 s) stays after CONNECT as the first keep-alive check when that is
    not due sooner: a silent client is closed at exactly 1.5 x keepalive either way, and one
    with keepalive 0 never (3.1.1 §3.1.2.10: 0 turns the mechanism off)."""
    net = Net()
    link = net.client("ka", 4, keepalive=keepalive)
    if keepalive == 0:
        net.loop.advance(24 * 3600)
        assert not link.closed
        return
    net.loop.advance(keepalive * 1.5 - 0.25)
    assert not link.closed
    net.loop.advance(0.25)
    assert link.closed


def test_session_expiry_interval() -> None:
    """A session with Session Expiry 30 outlives its connection by exactly 30 s (MQTT 5
    §3.1.2.11.2), then it ends."""
    net = Net()
    keep = props(prop(SESSION_EXPIRY_INTERVAL, 30))
    link = net.client("exp", 5, clean=False, properties=keep)
    link.close()
    net.loop.advance(29.9)
    assert "exp" in net.broker.sessions
    net.loop.advance(0.1)
    assert "exp" not in net.broker.sessions


def _will_client(net: Net, cid: str, delay: int) -> FakeLink:
    return net.client(
        cid,
        5,
        clean=False,
        properties=props(prop(SESSION_EXPIRY_INTERVAL, 60)),
        will_topic="w/gone",
        will_payload=b"offline",
        will_props=props(prop(WILL_DELAY_INTERVAL, delay)),
    )


def _watcher(net: Net) -> FakeLink:
    watcher = net.client("watch", 5)
    net.send(watcher, subscribe(1, [("w/#", 1)], level=5))
    assert [p.type for p in watcher.packets()] == [SUBACK]
    return watcher


def test_will_waits_for_its_delay() -> None:
    """A will is published when its Will Delay Interval has passed [MQTT-3.1.3-9], not before."""
    net = Net()
    watcher = _watcher(net)
    gone = _will_client(net, "wd", 5)
    gone.close()
    net.loop.advance(4.9)
    assert watcher.packets() == []
    net.loop.advance(0.1)
    (pub,) = watcher.packets()
    assert pub.type == PUBLISH
    m = parse_publish(pub, 5)
    assert (m.topic, m.payload) == ("w/gone", b"offline")


def test_reconnect_within_the_delay_cancels_the_will() -> None:
    """A new connection to the session before the delay passes: no will [MQTT-3.1.3-9]."""
    net = Net()
    watcher = _watcher(net)
    gone = _will_client(net, "wc", 5)
    gone.close()
    net.loop.advance(3)
    back = net.client("wc", 5, clean=False, properties=props(prop(SESSION_EXPIRY_INTERVAL, 60)))
    net.loop.advance(10)
    assert watcher.packets() == []
    net.send(back, disconnect(level=5))
    assert back.closed


def test_session_end_publishes_a_delayed_will_early() -> None:
    """The will goes when its delay passes "or the Session ends, whichever happens first"
    (MQTT 5 §3.1.3.2.2): a 30 s delay, a 5 s session."""
    net = Net()
    watcher = _watcher(net)
    link = net.client(
        "se",
        5,
        clean=False,
        properties=props(prop(SESSION_EXPIRY_INTERVAL, 5)),
        will_topic="w/early",
        will_payload=b"x",
        will_props=props(prop(WILL_DELAY_INTERVAL, 30)),
    )
    link.close()
    net.loop.advance(4.9)
    assert watcher.packets() == []
    net.loop.advance(0.1)
    assert [parse_publish(p, 5).topic for p in watcher.packets()] == ["w/early"]


def test_session_expiry_runs_after_a_lost_connection_too() -> None:
    """The interval runs from the connection's end, with or without DISCONNECT
    (§3.1.2.11.2): a 1 s session whose socket died is gone 1 s later."""
    net = Net()
    link = net.client("lost", 5, clean=False, properties=props(prop(SESSION_EXPIRY_INTERVAL, 1)))
    assert link.core is not None
    link.core.connection_lost(ConnectionResetError())
    net.loop.advance(0.75)
    assert "lost" in net.broker.sessions
    net.loop.advance(0.25)
    assert "lost" not in net.broker.sessions


def test_session_expiry_max_never_expires() -> None:
    """0xFFFFFFFF means "the Session does not expire" (§3.1.2.11.2), not -1 or 0: still there a
    year later."""
    net = Net()
    link = net.client(
        "max", 5, clean=False, properties=props(prop(SESSION_EXPIRY_INTERVAL, 2**32 - 1))
    )
    link.close()
    net.loop.advance(365 * 24 * 3600)
    assert "max" in net.broker.sessions


def test_disconnect_can_lengthen_a_nonzero_session_expiry() -> None:
    """CONNECT with 1 s, DISCONNECT with 60 s: the DISCONNECT's interval replaces the CONNECT's
    (§3.14.2.2.2; only 0 to non-zero is a Protocol Error)."""
    net = Net()
    link = net.client("len", 5, clean=False, properties=props(prop(SESSION_EXPIRY_INTERVAL, 1)))
    net.send(link, disconnect(0, level=5, properties=props(prop(SESSION_EXPIRY_INTERVAL, 60))))
    assert link.closed
    net.loop.advance(59.75)
    assert "len" in net.broker.sessions
    net.loop.advance(0.25)
    assert "len" not in net.broker.sessions


def test_keepalive_zero_is_never_closed() -> None:
    """Keep Alive 0 turns the mechanism off [MQTT-3.1.2-10 (5.0)]: a silent client stays."""
    net = Net()
    link = net.client("quiet", 4, keepalive=0)
    net.loop.advance(24 * 3600)
    assert not link.closed


# -- flow control (docs/flow-control.md) -------------------------------------------------------------
def subscriber(net: Net, cid: str, qos: int = 1, *, clean: bool = True) -> FakeLink:
    link = net.client(cid, level=4, clean=clean)
    net.send(link, subscribe(1, [("t", qos)]))
    (ack,) = link.packets()
    assert ack.type == SUBACK
    return link


def payloads(link: FakeLink) -> list[int]:
    """Sequence numbers of the PUBLISH the link got since the last call (PUBACK each)."""
    got = []
    for p in link.packets():
        if p.type == PUBLISH:
            got.append(int(parse_publish(p).payload))
    return got


def pubs(first: int, n: int) -> bytes:
    return b"".join(
        publish("t", str(i).encode(), qos=1, pid=i % 60000 + 1) for i in range(first, first + n)
    )


def held(link: FakeLink) -> bool:
    """The connection waits for full queues: its PUBLISH are not handled (acks still are)."""
    assert link.core is not None
    return link.core.held > 0


def acks_of(link: FakeLink) -> int:
    return sum(1 for p in link.packets() if p.type == PUBACK)


def test_full_queue_holds_the_publisher_then_lets_it_go() -> None:
    """A subscriber that reads but is behind: the publisher is not read while the queue is
    full, and every message arrives, none dropped."""
    net = Net(max_inflight=1, max_queued_messages=4)
    sub = subscriber(net, "sub")
    pub = net.client("pub", level=4)
    net.send(pub, pubs(0, 10))
    # 1 in flight + 4 queued, the 6th taken beyond the limit: its publisher is held there
    assert held(pub) and acks_of(pub) == 6
    assert net.broker.flusher.drops["queue_full"] == 0
    got = []
    for _ in range(40):
        for p in sub.packets():
            if p.type == PUBLISH:
                pub_p = parse_publish(p)
                got.append(int(pub_p.payload))
                net.send(sub, puback(pub_p.pid))
        if len(got) == 10:
            break
    assert got == list(range(10)) and not held(pub) and acks_of(pub) == 4
    assert net.broker.flusher.messages_dropped == 0


@pytest.mark.parametrize("clean", [True, False])
def test_a_subscriber_that_stops_reading_is_disconnected_after_the_timeout(clean: bool) -> None:
    """A subscriber that acknowledges nothing holds its publishers one timeout at most, then
    its client is disconnected (MQTT 5: 0x97): a clean session ends (what it held counted as
    slow_client), a persistent one keeps its queue, bounded, dropping the oldest."""
    net = Net(max_inflight=2, max_queued_messages=10, slow_subscriber_timeout=1.0)
    stalled = net.client(
        "stalled",
        level=5,
        clean=clean,
        properties=props(prop(SESSION_EXPIRY_INTERVAL, 0 if clean else 3600)),
    )
    net.send(stalled, subscribe(1, [("t", 1)], level=5))
    stalled.packets()
    fast = subscriber(net, "fast", qos=0)
    pub = net.client("pub", level=4)
    net.send(pub, pubs(0, 20))
    assert held(pub)
    net.loop.advance(0.9)
    assert held(pub) and not stalled.closed
    net.loop.advance(0.5)  # no PUBACK for 1 s with its queue full: cut
    assert not held(pub) and acks_of(pub) == 20
    assert stalled.closed
    (p,) = [p for p in stalled.packets() if p.type == DISCONNECT]
    assert parse_disconnect(p) == 0x97  # Quota exceeded
    flow = net.broker.flow.figures()
    assert flow["slow_clients_disconnected"] == 1
    net.send(pub, pubs(20, 100))
    assert not held(pub) and acks_of(pub) == 100
    assert payloads(fast) == list(range(120))
    drops = net.broker.flusher.drops
    if clean:
        # Cut, its session ended at once with its 2 in flight and 11 queued (10, and the one
        # taken beyond that held the publisher); the last 7 of the 20 matched nobody
        assert "stalled" not in net.broker.sessions
        assert drops["slow_client"] == 13 and drops["queue_full"] == 0
    else:
        outlet = net.broker.sessions["stalled"].outlet
        # Offline now: the newest 10 stay queued, the 2 in flight wait to be resent
        assert len(outlet.queue) == 10 and outlet.queue[-1][0].payload == b"119"
        assert len(outlet.inflight) == 2
        assert drops["queue_full"] == 120 - 2 - 10 and drops["slow_client"] == 0


def test_one_expensive_read_gives_the_loop_back_after_its_budget() -> None:
    """Packets of one read that take more than TURN_BUDGET wait for the next loop turn, in
    order, so other clients are served meanwhile (the clock is read after the first packet and
    every 8th)."""
    from mqttd.connection import TURN_BUDGET

    net = Net()
    events: list[Any] = []

    def slow(conn: Any, msg: Any, pid: Any) -> None:
        events.append(int(msg.payload))
        net.loop.now += TURN_BUDGET * 0.4  # each PUBLISH takes 40 % of a turn's budget

    net.broker.publish_observers.append(slow)
    net.broker.connect_observers.append(lambda conn: events.append(conn.client_id))
    sub = subscriber(net, "sub", qos=0)
    pub = net.client("pub", level=4)
    assert pub.core is not None
    events.clear()
    pub.core.data_received(b"".join(publish("t", str(i).encode()) for i in range(20)))
    assert events == list(range(9)) and not pub.reading  # out of budget at the 9th packet
    other = net.open(connect("other"))  # served in a turn between the rest of that read
    assert other.packets()[0].type == CONNACK
    assert "other" in events and events.index("other") < events.index(19)
    assert [e for e in events if e != "other"] == list(range(20))
    assert pub.reading and payloads(sub) == list(range(20))


def test_memory_limit_stops_reading_publishers_and_trims_the_largest_queues() -> None:
    net = Net(memory_limit=20_000, max_queued_messages=1000, slow_subscriber_timeout=1.0)
    sub = subscriber(net, "parked", clean=False)
    net.send(sub, disconnect())
    net.loop.advance(0.1)
    pub = net.client("pub", level=4)
    big = b"x" * 1000
    net.send(pub, b"".join(publish("t", big, qos=1, pid=i + 1) for i in range(30)))
    assert not held(pub)  # the limit is seen at the next tick
    net.loop.advance(0.3)
    assert net.broker.flusher.over
    net.send(pub, publish("t", big, qos=1, pid=100))
    assert held(pub)
    net.loop.advance(1.3)  # over for longer than the timeout: the largest queue is trimmed
    assert net.broker.flusher.drops["memory"] > 0
    assert net.broker.flow.census() < 20_000 * 0.9 + 1001
    net.loop.advance(0.3)
    assert not net.broker.flusher.over and not held(pub)


def test_drops_are_logged_once_a_minute_per_session(caplog: pytest.LogCaptureFixture) -> None:
    net = Net(max_queued_messages=2)
    sub = subscriber(net, "parked", clean=False)
    net.send(sub, disconnect())
    pub = net.client("pub", level=4)
    caplog.set_level("WARNING", logger="mqttd")
    for second in range(150):
        net.send(pub, publish("t", b"x", qos=1, pid=second + 1))
        net.loop.advance(1.0)
    lines = [r.getMessage() for r in caplog.records if "not delivered" in r.getMessage()]
    assert len(lines) == 3, lines  # at 0 s, 60 s and 120 s
    assert "'parked'" in lines[0] and "queue_full" in lines[0]


def test_drops_and_held_publishers_are_in_sys() -> None:
    from mqttd.systopics import SysPublisher

    net = Net(max_inflight=1, max_queued_messages=2)
    subscriber(net, "stalled")
    parked = subscriber(net, "parked", qos=1, clean=False)
    net.send(parked, disconnect())
    pub = net.client("pub", level=4)
    net.send(pub, pubs(0, 6))
    values = SysPublisher(net.broker, 10).snapshot()
    # "stalled" took "3" beyond its queue of 2 and holds the publisher there ("4", "5" wait);
    # "parked" is offline: its queue of 2 dropped the 2 oldest
    assert values["publish/messages/dropped/queue_full"] == "2"
    assert values["publish/messages/dropped"] == "2"
    assert values["flow/publishers/held"] == "1" and values["flow/publishers/holds"] == "1"
    assert values["flow/sessions/slow"] == "0"
    # in flight 1 + queued 3 (stalled) + queued 2 (parked), each payload "0".."3" + topic "t"
    assert int(values["flow/bytes/held"]) == (1 + 3 + 2) * 2
    net.loop.advance(1.5)  # "stalled" acknowledged nothing for 1 s: disconnected
    values = SysPublisher(net.broker, 10).snapshot()
    assert values["flow/publishers/held"] == "0" and values["flow/sessions/disconnected"] == "1"


def test_clients_that_publish_to_each_other_do_not_hold_each_other_for_good() -> None:
    """A and B each subscribe to what the other publishes, with small queues: each is held by
    the other's full queue, and each is still read for its PUBACKs, so both queues drain and
    nothing is dropped (else both would wait for the slow-subscriber timeout, then drop)."""
    net = Net(max_inflight=2, max_queued_messages=4)
    a = net.client("a", level=4)
    b = net.client("b", level=4)
    net.send(a, subscribe(1, [("to-a", 1)]))
    net.send(b, subscribe(1, [("to-b", 1)]))
    a.packets(), b.packets()
    got: dict[str, list[int]] = {"a": [], "b": []}
    for i in range(0, 30, 10):
        net.send(
            a, b"".join(publish("to-b", b"%d" % j, qos=1, pid=j + 1) for j in range(i, i + 10))
        )
        net.send(
            b, b"".join(publish("to-a", b"%d" % j, qos=1, pid=j + 1) for j in range(i, i + 10))
        )
    assert held(a) and held(b)
    for _ in range(100):
        for name, link in (("a", a), ("b", b)):
            acks = b""
            for p in link.packets():
                if p.type == PUBLISH:
                    m = parse_publish(p)
                    got[name].append(int(m.payload))
                    acks += puback(m.pid)
            if acks:
                net.send(link, acks)
        if len(got["a"]) == len(got["b"]) == 30:
            break
    assert got == {"a": list(range(30)), "b": list(range(30))}
    assert net.broker.flusher.messages_dropped == 0 and not held(a) and not held(b)


def test_a_held_client_is_not_read_past_its_limit() -> None:
    from mqttd.connection import HELD_READ_LIMIT

    net = Net(max_inflight=1, max_queued_messages=1)
    subscriber(net, "stalled")
    pub = net.client("pub", level=4)
    net.send(pub, pubs(0, 3))
    assert held(pub) and pub.reading
    big = b"x" * 1000
    n = HELD_READ_LIMIT // 1000 + 1
    net.send(pub, b"".join(publish("t", big, qos=1, pid=i + 10) for i in range(n)))
    assert not pub.reading  # what waits is bounded: the socket is left to TCP
    net.loop.advance(1.5)  # the stalled subscriber is slow now: it holds nobody
    assert pub.reading and not held(pub) and acks_of(pub) == 3 + n


@pytest.mark.parametrize("drains", [False, True])
def test_a_qos0_subscriber_whose_socket_does_not_drain_is_disconnected(drains: bool) -> None:
    net = Net(max_buffer=100, slow_subscriber_timeout=1.0)
    sub = subscriber(net, "sub", qos=0)
    assert sub.core is not None
    sub.core.pause_writing()  # its socket stopped taking writes
    pub = net.client("pub", level=4)
    for _ in range(4):
        net.send(pub, b"".join(publish("t", b"x" * 40) for _ in range(10)))
        net.loop.advance(0.5)
        if drains:
            sub.core.resume_writing()  # it drains (slowly), then stops again
            net.loop.run_ready()
            sub.core.pause_writing()
    assert net.broker.flusher.drops["buffer_full"] > 0
    assert sub.closed is not drains
    assert net.broker.flow.figures()["slow_clients_disconnected"] == (0 if drains else 1)


# -- CONNECT without a task (issue 16, item 2) --------------------------------------------------------
class CountingLink(FakeLink):
    def __init__(self, loop: FakeLoop) -> None:
        super().__init__(loop)
        self.pauses = 0

    def pause_reading(self) -> None:
        self.pauses += 1
        super().pause_reading()


def test_connect_that_waits_for_nothing_runs_at_once_in_order() -> None:
    """A CONNECT whose session needs no wait (local storage, no hook that waits) is answered in
    the same call, with no task and no pause of the socket; the packets after it in the same
    read are handled after it, in order: CONNACK, SUBACK, then the PUBLISH."""
    net = Net()
    tasks: list[Any] = []
    create = net.loop.create_task
    net.loop.create_task = lambda coro: tasks.append(coro) or create(coro)  # type: ignore[method-assign]
    link = CountingLink(net.loop)
    core = link.core = Connection(net.broker)
    core.connection_made(link)
    core.data_received(
        connect("fast", level=4) + subscribe(1, [("t", 1)]) + publish("t", b"1", qos=1, pid=7)
    )
    assert tasks == [] and link.pauses == 0 and link.reading
    net.loop.run_ready()  # (the writes of one turn go out together)
    types = [p.type for p in link.packets()]
    assert types[:2] == [CONNACK, SUBACK] and sorted(types[2:]) == sorted([PUBACK, PUBLISH])


def test_connect_that_waits_goes_on_as_a_task_and_holds_what_follows() -> None:
    """An authentication hook (a user's code: it may need a task) that awaits: the socket is
    paused, the packets after CONNECT wait, and once the hook answers they are handled in
    order."""
    net = Net()
    gate: list[Any] = []

    class Gate:
        def __await__(self) -> Any:
            gate.append(True)
            yield None  # a bare turn, as asyncio.sleep(0)
            return None

    async def hook(conn: Any, user: Any, password: Any) -> int:
        await Gate()
        return 0

    net.broker.authenticate = hook
    link = CountingLink(net.loop)
    core = link.core = Connection(net.broker)
    core.connection_made(link)
    core.data_received(connect("slow", level=4) + subscribe(1, [("t", 0)]))
    assert link.pauses == 1 and not link.reading  # a user's hook runs in a task
    assert link.packets() == []  # nothing before the hook answers
    net.loop.run_ready()
    assert gate == [True]
    assert [p.type for p in link.packets()] == [CONNACK, SUBACK]
    assert link.reading
