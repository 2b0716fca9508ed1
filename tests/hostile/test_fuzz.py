"""A bounded fuzz run against one live broker: Hypothesis mutates valid packet sequences of every
packet type, at MQTT 3.1.1 and 5.0, and sends each on a fresh connection.

Proves, for MQTTD_FUZZ_SECONDS seconds (default 60; longer by hand, e.g. MQTTD_FUZZ_SECONDS=1800):
the broker process never dies, never logs an unhandled error, answers every connection with
well-framed server-to-client packets only (a CONNACK first [MQTT-3.2.0-1]), keeps answering a
new client's PINGREQ throughout, and ends within a stated RSS bound.

Each Hypothesis example is a batch of up to 24 connections run at once (a connection whose
mutated bytes leave a packet incomplete can only end by a quiet period, so they are waited for
together). Each connection sends: a CONNECT, up to four more packets, mutations (bit flips,
truncation, inserted / deleted / overwritten bytes, a changed Remaining Length, a duplicated
packet, a replaced first byte) applied to some of them, then a PINGREQ as the marker: the
connection ends with a PINGRESP, with the broker's close, or after the quiet period.
"""

from __future__ import annotations

import os
import selectors
import socket
import time
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from mqtt_raw import (
    PINGREQ_BYTES,
    Packet,
    ack,
    connect,
    decode_varint,
    disconnect,
    frame,
    prop,
    props,
    publish,
    subscribe,
    u16,
    unsubscribe,
    varint,
)

from .support import (
    BASELINE_RSS_MIB,
    SLACK_MIB,
    HostileBroker,
    assert_healthy,
    hostile_broker,
    rss_mib,
)

FUZZ_SECONDS = float(os.environ.get("MQTTD_FUZZ_SECONDS", "60"))
#: a connection that has not ended this long after its last byte is left waiting for more
QUIET = 0.25
#: seconds between health checks during the run
HEALTH_EVERY = 5.0
#: The fuzzed clients leave state behind on purpose: retained messages on random topics (a few
#: thousand of at most a few hundred bytes), persistent sessions of a small set of client ids
#: with their queues (at most 1,000 small messages each), subscriptions. 48 MiB for all of it.
RSS_BOUND_MIB = BASELINE_RSS_MIB + SLACK_MIB + 48
#: the packet types a server sends (MQTT 5 §2.1.2: CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL,
#: PUBCOMP, SUBACK, UNSUBACK, PINGRESP, DISCONNECT, AUTH)
SERVER_TO_CLIENT = frozenset((2, 3, 4, 5, 6, 7, 9, 11, 13, 14, 15))
CONNACK, PINGRESP = 2, 13

# --- valid packets ------------------------------------------------------------------------------

CLIENT_IDS = st.sampled_from(["fz-a", "fz-b", "fz-c", "fz-d", ""])
TOPICS = st.sampled_from(["fz/a", "fz/b/c", "fz", "fz/x/y/z", "$SYS/fz", "fz/é"])
FILTERS = st.sampled_from(["fz/#", "fz/+", "fz/a", "#", "+/+", "$share/g/fz/#", "fz/+/c"])
PAYLOADS = st.binary(max_size=64)
PIDS = st.integers(1, 65535)
SMALL_TEXT = st.sampled_from(["", "a", "text/plain", "k", "ü"])


@st.composite
def v5_props(draw: st.DrawFn, kinds: list[int]) -> bytes:
    """A valid-looking property block drawn from ``kinds`` (at most one of each, any number of
    User Properties)."""
    chosen = draw(st.lists(st.sampled_from(kinds), max_size=4, unique=True))
    out = []
    for pid in chosen:
        if pid == 0x26:
            for _ in range(draw(st.integers(1, 3))):
                out.append(prop(0x26, (draw(SMALL_TEXT), draw(SMALL_TEXT))))
        elif pid in (0x01, 0x17, 0x19):
            out.append(prop(pid, draw(st.integers(0, 1))))
        elif pid in (0x02, 0x11, 0x18, 0x27):
            out.append(prop(pid, draw(st.sampled_from([0, 1, 60, 0xFFFFFFFF]))))
        elif pid in (0x21, 0x22, 0x23):
            out.append(prop(pid, draw(st.integers(0, 12))))
        elif pid == 0x0B:
            out.append(prop(pid, draw(st.integers(1, 300))))
        elif pid in (0x03, 0x08, 0x1F, 0x15):
            out.append(prop(pid, draw(st.sampled_from(["fz/r", "a", "x-auth"]))))
        elif pid in (0x09, 0x16):
            out.append(prop(pid, draw(st.binary(max_size=8))))
    return props(*out)


@st.composite
def connect_packet(draw: st.DrawFn, level: int) -> bytes:
    kw: dict = {
        "level": level,
        "clean": draw(st.booleans()),
        "keepalive": draw(st.sampled_from([0, 1, 60, 65535])),
    }
    if draw(st.booleans()):
        kw.update(
            will_topic=draw(TOPICS),
            will_payload=draw(PAYLOADS),
            will_qos=draw(st.integers(0, 2)),
            will_retain=draw(st.booleans()),
        )
        if level == 5:
            kw["will_props"] = draw(v5_props([0x01, 0x02, 0x03, 0x08, 0x09, 0x18, 0x26]))
    if draw(st.booleans()):
        kw["username"] = draw(SMALL_TEXT)
        if draw(st.booleans()):
            kw["password"] = draw(st.binary(max_size=8))
    if level == 5:
        kw["properties"] = draw(v5_props([0x11, 0x21, 0x22, 0x27, 0x17, 0x19, 0x26, 0x15, 0x16]))
    return connect(draw(CLIENT_IDS), **kw)


@st.composite
def after_connect_packet(draw: st.DrawFn, level: int) -> bytes:
    """One valid packet of any type a client may send after CONNECT -- or, as the hostile
    ones, one that only a server sends."""
    kind = draw(
        st.sampled_from(
            ["publish", "ack", "subscribe", "unsubscribe", "ping", "disconnect", "auth", "server"]
        )
    )
    if kind == "publish":
        qos = draw(st.integers(0, 2))
        properties = b"\x00"
        if level == 5:
            properties = draw(v5_props([0x01, 0x02, 0x03, 0x08, 0x09, 0x23, 0x26]))
        return publish(
            draw(TOPICS),
            draw(PAYLOADS),
            qos=qos,
            retain=draw(st.booleans()),
            dup=qos > 0 and draw(st.booleans()),
            pid=draw(PIDS) if qos else None,
            level=level,
            properties=properties,
        )
    if kind == "ack":
        ptype = draw(st.sampled_from([4, 5, 6, 7]))
        rc = draw(st.sampled_from([None, 0, 0x10, 0x80, 0x92])) if level == 5 else None
        return ack(ptype, draw(PIDS), level=level, rc=rc)
    if kind == "subscribe":
        options = st.integers(0, 2)  # QoS; MQTT 5 adds No Local, Retain As Published, Retain
        if level == 5:  # Handling 0-2 (§3.8.3.1)
            options = st.tuples(options, st.booleans(), st.booleans(), st.integers(0, 2)).map(
                lambda o: o[0] | o[1] << 2 | o[2] << 3 | o[3] << 4
            )
        filters = draw(st.lists(st.tuples(FILTERS, options), min_size=1, max_size=5))
        properties = draw(v5_props([0x0B, 0x26])) if level == 5 else b"\x00"
        return subscribe(draw(PIDS), filters, level=level, properties=properties)
    if kind == "unsubscribe":
        return unsubscribe(draw(PIDS), draw(st.lists(FILTERS, min_size=1, max_size=5)), level=level)
    if kind == "ping":
        return PINGREQ_BYTES
    if kind == "disconnect":
        if level == 5:
            rc = draw(st.sampled_from([0, 4, 0x80]))
            return disconnect(rc, level=5, properties=draw(v5_props([0x11, 0x1F, 0x26])))
        return disconnect()
    if kind == "auth":
        return frame(0xF0, bytes([draw(st.sampled_from([0, 0x18, 0x19]))]) + props(prop(0x15, "x")))
    # Server-to-client packets sent by a client
    return draw(
        st.sampled_from(
            [b"\x20\x02\x00\x00", b"\x90\x03\x00\x01\x00", b"\xb0\x02\x00\x01", b"\xd0\x00"]
        )
    )


# --- mutations ----------------------------------------------------------------------------------

POSITIONS = st.integers(0, 1 << 20)  # taken modulo the packet's length
LENGTH_EDITS = st.one_of(
    st.integers(-8, 8).map(lambda d: ("delta", d)),
    st.sampled_from([0, 1, 2, 127, 128, 16383, 16384, 2097151, 268435455]).map(
        lambda v: ("value", v)
    ),
    st.just(("overlong", 0)),  # the same value with a needless continuation byte
    st.just(("five-bytes", 0)),  # a Remaining Length of five bytes [MQTT-1.5.5]
)
MUTATION = st.one_of(
    st.tuples(st.just("flip"), POSITIONS, st.integers(0, 7)),
    st.tuples(st.just("truncate"), POSITIONS),
    st.tuples(st.just("insert"), POSITIONS, st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), POSITIONS, st.integers(1, 16)),
    st.tuples(st.just("overwrite"), POSITIONS, st.binary(min_size=1, max_size=4)),
    st.tuples(st.just("string-length"), POSITIONS, st.integers(0, 65535)),
    st.tuples(st.just("length"), LENGTH_EDITS),
    st.tuples(st.just("duplicate"), st.integers(1, 3)),
    st.tuples(st.just("first-byte"), st.integers(0, 255)),
)


def _with_length(packet: bytes, edit: tuple[str, int]) -> bytes:
    """``packet`` with its Remaining Length field rewritten (the body left as it is)."""
    try:
        rl, body_at = decode_varint(packet, 1)
    except (IndexError, ValueError):
        return packet
    how, n = edit
    if how == "delta":
        field_ = varint(max(rl + n, 0))
    elif how == "value":
        field_ = varint(n)
    elif how == "overlong":
        enc = bytearray(varint(rl))
        enc[-1] |= 0x80
        field_ = bytes(enc) + b"\x00"
    else:
        field_ = b"\xff\xff\xff\xff\x01"
    return packet[:1] + field_ + packet[body_at:]


def mutate(packet: bytes, m: tuple) -> bytes:
    if not packet:
        return packet
    n = len(packet)
    op = m[0]
    if op == "flip":
        i = m[1] % n
        return packet[:i] + bytes([packet[i] ^ (1 << m[2])]) + packet[i + 1 :]
    if op == "truncate":
        return packet[: m[1] % n]
    if op == "insert":
        i = m[1] % (n + 1)
        return packet[:i] + m[2] + packet[i:]
    if op == "delete":
        i = m[1] % n
        return packet[:i] + packet[i + m[2] :]
    if op == "overwrite":
        i = m[1] % n
        return packet[:i] + m[2] + packet[i + len(m[2]) :]
    if op == "string-length":
        i = m[1] % n
        return packet[:i] + u16(m[2]) + packet[i + 2 :]
    if op == "length":
        return _with_length(packet, m[1])
    if op == "duplicate":
        return packet * (m[1] + 1)
    return bytes([m[1]]) + packet[1:]  # first-byte


@st.composite
def connection_input(draw: st.DrawFn) -> bytes:
    """What one fuzzed connection sends (before the PINGREQ marker)."""
    level = draw(st.sampled_from([4, 5]))
    packets = [draw(connect_packet(level))]
    packets += draw(st.lists(after_connect_packet(level), max_size=4))
    for m in draw(st.lists(MUTATION, max_size=3)):
        i = draw(st.integers(0, len(packets) - 1))
        packets[i] = mutate(packets[i], m)
    return b"".join(packets)


# --- running a batch ----------------------------------------------------------------------------


@dataclass
class Stats:
    inputs: int = 0
    batches: int = 0
    pingresp: int = 0
    closed: int = 0
    waiting: int = 0
    recent: list[bytes] = field(default_factory=list)  # the last inputs, for a failure report
    failure: str | None = None  # the first problem seen; it ends the run

    def remember(self, data: bytes) -> None:
        self.recent.append(data)
        del self.recent[:-48]


@dataclass
class Conn:
    sock: socket.socket
    data: bytes
    got: bytes = b""
    end: str = ""  # "pingresp", "closed" or "waiting"


def _frames(got: bytes) -> tuple[list[Packet], bytes]:
    """The whole packets at the start of ``got`` and what is left after them."""
    out: list[Packet] = []
    pos = 0
    while len(got) - pos >= 2:
        try:
            length, body = decode_varint(got, pos + 1)
        except IndexError:
            break
        if body + length > len(got):
            break
        out.append(Packet(got[pos] >> 4, got[pos] & 0x0F, got[body : body + length]))
        pos = body + length
    return out, got[pos:]


def run_batch(addr: tuple[str, int], inputs: list[bytes]) -> list[Conn]:
    """Send each input (then PINGREQ) on its own new connection, all at once; wait until each
    ends with a PINGRESP or the broker's close, or has been quiet for QUIET s."""
    conns: list[Conn] = []
    sel = selectors.DefaultSelector()
    try:
        for data in inputs:
            s = socket.create_connection(addr, timeout=2.0)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conns.append(Conn(s, data))
            try:
                s.sendall(data + PINGREQ_BYTES)
            except OSError:
                pass  # closed by the broker mid-send: read what came
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, conns[-1])
        open_ = len(conns)
        quiet_until = time.monotonic() + QUIET
        while open_:
            left = quiet_until - time.monotonic()
            if left <= 0:
                break
            for key, _ in sel.select(left):
                c: Conn = key.data
                try:
                    chunk = c.sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if chunk:
                    c.got += chunk
                    packets, _ = _frames(c.got)
                    if packets and packets[-1].type == PINGRESP:
                        c.end = "pingresp"
                if not chunk or c.end:
                    c.end = c.end or "closed"
                    sel.unregister(c.sock)
                    open_ -= 1
        for c in conns:
            c.end = c.end or "waiting"
    finally:
        sel.close()
        for c in conns:
            c.sock.close()
    return conns


def check_answer(c: Conn) -> None:
    """What the broker sent on one fuzzed connection is well framed, server-to-client only,
    CONNACK first [MQTT-3.2.0-1]; a partial packet at the end only if the connection was cut
    short by us (still waiting) -- a closed connection ends on a packet boundary."""
    packets, rest = _frames(c.got)
    where = f"input {c.data.hex()} -> answer {c.got.hex()}"
    if c.end == "closed":
        assert not rest, f"the broker closed in the middle of a packet: {where}"
    for p in packets:
        assert p.type in SERVER_TO_CLIENT, f"the broker sent a {p!r}: {where}"
    if packets:
        assert packets[0].type == CONNACK, f"first packet not CONNACK [MQTT-3.2.0-1]: {where}"


def broker_problem(b: HostileBroker, stats: Stats) -> str | None:
    """Why the broker is not well (dead, or it logged an error), with the inputs before it."""
    if b.alive() and not b.errors:
        return None
    recent = "\n".join(d.hex() for d in stats.recent)
    state = "alive" if b.alive() else f"exited with {b.proc.returncode}"
    return (
        f"broker {state} after {stats.inputs} fuzzed connections; errors:\n"
        + "\n".join(b.errors[:60])
        + "\nlast broker lines:\n"
        + "".join(list(b.tail)[-30:])
        + f"\nthe last {len(stats.recent)} inputs (hex), most recent last:\n{recent}"
    )


@pytest.mark.timeout(FUZZ_SECONDS + 120)
def test_fuzz_mutated_packets(capsys: pytest.CaptureFixture[str]) -> None:
    """Attack: for MQTTD_FUZZ_SECONDS, thousands of connections each sending mutated valid
    packets (3.1.1 and 5.0, every packet type). Expected: the broker never dies nor logs an
    unhandled error, answers only well-framed server-to-client packets with CONNACK first,
    serves a new client's PINGREQ every few seconds and at the end, and stays within its RSS
    bound.

    The first problem stops the run and is reported with the inputs that led to it (hex; replay
    them with ``run_batch(addr, [bytes.fromhex(h), ...])``). Hypothesis does not replay nor
    shrink it: the broker's state is shared by all examples, so a failure depends on what came
    before and a replay alone proves nothing."""
    with hostile_broker("--connect-timeout", "2") as b:
        stats = Stats()
        started = time.monotonic()
        deadline = started + FUZZ_SECONDS
        next_health = started + HEALTH_EVERY

        @settings(
            max_examples=50,
            deadline=None,
            database=None,
            phases=(Phase.generate,),
            suppress_health_check=list(HealthCheck),
        )
        @given(st.lists(connection_input(), min_size=1, max_size=24))
        def batch(inputs: list[bytes]) -> None:
            if stats.failure is not None or time.monotonic() >= deadline:
                return
            for data in inputs:
                stats.remember(data)
            conns = run_batch(b.addr, inputs)
            stats.inputs += len(conns)
            stats.batches += 1
            for c in conns:
                setattr(stats, c.end, getattr(stats, c.end) + 1)
                try:
                    check_answer(c)
                except AssertionError as e:
                    stats.failure = str(e)
                    return
            stats.failure = broker_problem(b, stats)

        while time.monotonic() < deadline and stats.failure is None:
            batch()
            if time.monotonic() >= next_health and stats.failure is None:
                assert_healthy(b, RSS_BOUND_MIB)
                next_health = time.monotonic() + HEALTH_EVERY
        with capsys.disabled():
            print(
                f"\nfuzz: {stats.inputs} connections in {stats.batches} batches, "
                f"{time.monotonic() - started:.0f} s: {stats.pingresp} answered the PINGREQ "
                f"marker, {stats.closed} closed by the broker, {stats.waiting} left waiting "
                f"for more bytes; broker RSS {rss_mib(b):.1f} MiB (bound {RSS_BOUND_MIB})"
                + ("; FAILED" if stats.failure else "")
            )
        assert stats.failure is None, stats.failure
        assert stats.inputs > 0
        assert_healthy(b, RSS_BOUND_MIB)  # waits for the log to catch up (sync_log)
        assert broker_problem(b, stats) is None, broker_problem(b, stats)
