"""The generator's event loop: one worker process drives some publishers and/or subscribers.

A worker is a plain ``selectors`` (epoll) loop over non-blocking sockets: no asyncio, no
callbacks, no per-message Python. Per event it does one ``send`` of a whole batch of pre-encoded
PUBLISH packets (filled by the compiled ``fill_publishes``) or one ``recv_into`` of up to 1 MiB
that the compiled ``FrameCounter`` parses, so Python costs a few microseconds per ~1,000
messages.

Flow control: a publisher never holds more than one batch of unsent bytes in user space; the
rest of its backlog is the kernel's send buffer (``SO_SNDBUF``, bounded) and it only refills
when the socket becomes writable again, so at maximum rate it sends exactly as fast as the broker
reads. With ``rate`` set it paces itself to that many messages/s. For QoS 1/2 it also keeps at
most ``inflight`` unacknowledged packets, so packet identifiers are never reused while in use
[MQTT-2.2.1-3 / MQTT 5 §4.9 Receive Maximum].

Timeline (all processes share CLOCK_MONOTONIC, so one ``t0`` sent by the parent works for all):
``t0`` start publishing -> ``t0 + warmup`` snapshot -> ``+ duration`` snapshot, publishers flush,
wait for their acknowledgements, DISCONNECT, and report totals -> subscribers drain until they
have every published message or nothing arrived for ``drain_quiet`` seconds -> report.
"""

from __future__ import annotations

import os
import selectors
import socket
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from mqttd.bench import mqtt
from mqttd.bench.hotloop import FrameCounter, fill_publishes

EV_R = selectors.EVENT_READ
EV_W = selectors.EVENT_WRITE
RECV_SIZE = 1 << 20
PING_EVERY = 30.0  # half the 60 s keep alive we announce [MQTT-3.1.2-24]


@dataclass
class PubSpec:
    index: int  # goes into every payload head; unique across the whole run
    client_id: str
    topic: str
    qos: int = 0
    payload: int = 64
    rate: float = 0.0  # messages/s for this publisher; 0 = as fast as the broker reads
    stamp: bool = False  # put the send time (CLOCK_MONOTONIC ns) in every payload


@dataclass
class SubSpec:
    client_id: str
    filters: list[str]
    qos: int = 0
    expects: list[int] = field(default_factory=list)  # publisher indices it must receive
    latency: bool = False  # record receive - send time of stamped payloads in the window


@dataclass
class WorkerPlan:
    host: str
    port: int
    protocol_level: int
    npubs: int  # publishers in the whole run (size of the subscribers' counter arrays)
    pubs: list[PubSpec] = field(default_factory=list)
    subs: list[SubSpec] = field(default_factory=list)
    warmup: float = 1.0
    duration: float = 5.0
    batch_bytes: int = 65536
    sndbuf: int = 131072
    sub_port: int = 0  # subscribers' port when it differs (another node of a cluster)
    rcvbuf: int = 0
    # A subscriber socket is reported readable only once this many bytes wait (SO_RCVLOWAT), and
    # is read anyway every ``read_tick`` s: a broker that writes each message in its own TCP
    # segment would otherwise wake us once per message and make the generator the bottleneck.
    rcvlowat: int = 32768
    ws_path: str = ""  # not empty: MQTT over WebSocket on that path
    read_tick: float = 0.005
    # At QoS 1/2 the broker stops after its in-flight window (Mosquitto's default is 20
    # messages) until we acknowledge: a subscriber waits for at most ``qos_lowat_packets``
    # PUBLISH packets of ``packet_size`` bytes, and a publisher for a quarter of its window of
    # 4-byte acknowledgements, so that a broker writing one packet per send does not wake us
    # once per message.
    packet_size: int = 0
    qos_lowat_packets: int = 8
    inflight: int = 1000
    # A paced publisher sends about ``rate * pace_tick`` messages per wake-up (epoll sleeps in
    # whole milliseconds, so below 0.001 this only makes the bursts smaller, not more frequent).
    pace_tick: float = 0.002
    rbuf_size: int = RECV_SIZE  # per subscriber; smaller when one process holds many
    progress: bool = False  # send ("tick", t, delivered, published) to the parent every second
    drain_quiet: float = 1.0
    drain_max: float = 15.0
    stop_timeout: float = 10.0


@dataclass
class Window:
    """Counter values at the two snapshot instants of the measured window."""

    t_start: float = 0.0
    t_end: float = 0.0
    v_start: int = 0
    v_end: int = 0

    @property
    def rate(self) -> float:
        dt = self.t_end - self.t_start
        return (self.v_end - self.v_start) / dt if dt > 0 else 0.0


@dataclass
class PubResult:
    index: int
    published: int  # packets fully handed to the kernel, warm-up and tail included
    acked: int
    window: Window
    error: str = ""


@dataclass
class SubResult:
    client_id: str
    received: list[int]
    gaps: list[int]
    reordered: list[int]
    next_seq: list[int]
    messages: int
    foreign: int
    window: Window
    disconnect_reason: int = -1
    error: str = ""
    latency_ns: list[int] = field(default_factory=list)


class _Pub:
    __slots__ = (
        "spec", "sock", "tmpl", "size", "buf", "view", "start", "end", "seq", "batch_pkts",
        "batch_seq", "batch_ctrl", "batch_off", "counter", "rbuf", "ctrl", "window", "stopping",
        "done", "events", "rate", "inflight", "error", "next_ping", "have", "blocked", "tick",
        "lowat", "last_read",
    )  # fmt: skip

    def __init__(self, spec: PubSpec, sock: socket.socket, plan: WorkerPlan) -> None:
        self.spec = spec
        self.sock = sock
        self.tmpl = mqtt.publish_template(
            spec.topic, spec.index, spec.payload, spec.qos, plan.protocol_level, spec.stamp
        )
        self.size = self.tmpl.size
        self.batch_pkts = max(1, plan.batch_bytes // self.size)
        self.buf = bytearray(self.batch_pkts * self.size + 4096)
        self.view = memoryview(self.buf)
        self.start = self.end = 0  # unsent bytes are buf[start:end]
        self.seq = 0  # next sequence number to fill
        self.batch_seq = 0  # sequence number of the current batch's first packet
        self.batch_ctrl = 0  # control bytes (PUBREL, PINGREQ) at the head of the batch
        self.batch_off = 0
        self.counter = FrameCounter(0, plan.protocol_level, True)
        self.rbuf = bytearray(65536)
        self.have = 0
        self.blocked = False  # waiting for EVENT_WRITE: the kernel's send buffer is full
        self.ctrl = bytearray()
        self.window = Window()
        self.stopping = False
        self.done = False
        self.events = EV_R
        self.rate = spec.rate
        self.inflight = plan.inflight
        self.error = ""
        self.next_ping = 0.0
        self.tick = plan.pace_tick
        self.lowat = False
        self.last_read = 0.0

    def sent(self) -> int:
        """Packets whose every byte the kernel accepted."""
        body = self.start - self.batch_ctrl
        return self.batch_seq + (body // self.size if body > 0 else 0)

    def acked(self) -> int:
        c = self.counter
        q = self.spec.qos
        return self.seq if q == 0 else (c.puback if q == 1 else c.pubcomp)

    def allowance(self, now: float, t0: float) -> int:
        n = self.batch_pkts
        if self.stopping:
            return 0
        if self.spec.qos:
            n = min(n, self.inflight - (self.seq - self.acked()))
        if self.rate > 0:
            due = int(self.rate * (now - t0)) + 1 - self.seq
            # Whole bursts only: sending the one or two messages due whenever the loop wakes
            # for something else would turn the pacing into one send (and one broker wake-up,
            # one subscriber wake-up) per message.
            n = min(n, due) if due >= self.chunk() else 0
        return n

    def chunk(self) -> int:
        return max(1, min(self.batch_pkts, int(self.rate * self.tick)))

    def refill(self, now: float, t0: float) -> bool:
        """Start a new batch; False when there is nothing to send now."""
        n = self.allowance(now, t0)
        ctrl = self.ctrl
        if self.counter.out_pending:
            ctrl = ctrl + self.counter.take_out()
        if n <= 0 and not ctrl:
            return False
        k = len(ctrl)
        if k + max(n, 0) * self.size > len(self.buf):
            self.buf = bytearray(k + self.batch_pkts * self.size)
            self.view = memoryview(self.buf)
        self.buf[:k] = ctrl
        self.ctrl = bytearray()
        self.batch_ctrl = k
        self.batch_seq = self.seq
        end = k
        if n > 0:
            t = self.tmpl
            ts = time.monotonic_ns() if t.ts_off >= 0 else 0
            end = fill_publishes(
                self.buf, k, t.data, t.seq_off, t.pid_off, self.seq, n, t.ts_off, ts
            )
            self.seq += n
        self.start = 0
        self.end = end
        return True

    def pump(self, now: float, t0: float) -> bool:
        """Send what the kernel takes (at most two batches); True if we want EVENT_WRITE."""
        for _ in range(2):
            if self.start == self.end and not self.refill(now, t0):
                return False
            try:
                k = self.sock.send(self.view[self.start : self.end])
            except BlockingIOError:
                return True
            self.start += k
            if self.start < self.end:
                return True
        return True

    def next_wake(self, t0: float) -> float:
        """When a rate-limited publisher may send again (0 = not rate-limited)."""
        if self.rate <= 0 or self.stopping:
            return 0.0
        return t0 + (self.seq + self.chunk() - 1) / self.rate


class _Sub:
    __slots__ = (
        "spec", "sock", "counter", "rbuf", "have", "out", "window", "events", "error",
        "next_ping", "last_progress", "last_read", "lowat",
    )  # fmt: skip

    def __init__(self, spec: SubSpec, sock: socket.socket, plan: WorkerPlan) -> None:
        self.spec = spec
        self.sock = sock
        self.counter = FrameCounter(plan.npubs, plan.protocol_level, True)
        self.rbuf = bytearray(plan.rbuf_size)
        self.have = 0
        self.out = bytearray()
        self.window = Window()
        self.events = EV_R
        self.error = ""
        self.next_ping = 0.0
        self.last_progress = 0.0
        self.last_read = 0.0
        self.lowat = False


def _set_events(sel: selectors.BaseSelector, obj: Any, events: int) -> None:
    if obj.events != events:
        obj.events = events
        sel.modify(obj.sock, events, obj)


def run_worker(plan: WorkerPlan, conn: Connection) -> None:
    """Worker process entry point: handshake, report ready, run the timeline, report results."""
    try:
        _run(plan, conn)
    except Exception as exc:  # report instead of dying silently; the parent raises it
        try:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass
    finally:
        conn.close()


def _run(plan: WorkerPlan, conn: Connection) -> None:
    lvl = plan.protocol_level
    subs: list[_Sub] = []
    pubs: list[_Pub] = []
    for s in plan.subs:
        sock, _ = mqtt.connect(
            plan.host,
            plan.sub_port or plan.port,
            s.client_id,
            lvl,
            rcvbuf=plan.rcvbuf,
            ws_path=plan.ws_path,
        )
        mqtt.subscribe(sock, s.filters, s.qos, lvl)
        sub = _Sub(s, sock, plan)
        # QoS 1/2: a few packets only (see WorkerPlan.packet_size). Never when measuring
        # latency: a message must be read the moment it arrives.
        lowat = plan.rcvlowat
        if s.qos:
            lowat = min(lowat, plan.qos_lowat_packets * plan.packet_size)
        if lowat > 1 and not s.latency and hasattr(socket, "SO_RCVLOWAT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, lowat)
            sub.lowat = True
        subs.append(sub)
    for p in plan.pubs:
        sock, props = mqtt.connect(
            plan.host, plan.port, p.client_id, lvl, sndbuf=plan.sndbuf, ws_path=plan.ws_path
        )
        if p.qos > props.get(mqtt.MAXIMUM_QOS, 2):
            raise mqtt.BenchError(f"broker's Maximum QoS is {props[mqtt.MAXIMUM_QOS]}")
        pub = _Pub(p, sock, plan)
        # Never more unacknowledged QoS 1/2 PUBLISH packets than the server's Receive Maximum
        # [MQTT-3.3.4-7]; the rest of the window is our own --inflight.
        pub.inflight = min(plan.inflight, props.get(mqtt.RECEIVE_MAXIMUM, 65535))
        if pub.size > props.get(mqtt.MAXIMUM_PACKET_SIZE, 1 << 28):
            raise mqtt.BenchError("PUBLISH exceeds the broker's Maximum Packet Size")
        lowat = min(1024, pub.inflight)  # bytes: a quarter of the window of 4-byte acks
        if p.qos and plan.rcvlowat > 1 and lowat > 4 and hasattr(socket, "SO_RCVLOWAT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, lowat)
            pub.lowat = True
        pubs.append(pub)
    sel = selectors.DefaultSelector()
    for o in (*subs, *pubs):
        o.sock.setblocking(False)
        sel.register(o.sock, EV_R, o)
    sel.register(conn, EV_R, None)
    conn.send(("ready", os.getpid()))
    msg = conn.recv()
    if msg[0] != "go":
        return
    t0: float = msg[1]
    t_w = t0 + plan.warmup
    t_e = t_w + plan.duration
    for o in (*subs, *pubs):
        o.next_ping = t0 + PING_EVERY
    totals: dict[int, int] | None = None
    snap_w = snap_e = False
    pubs_reported = not pubs
    drain_deadline = 0.0
    live_pubs = list(pubs)
    paced = any(p.rate > 0 for p in pubs)
    lowat_subs = any(s.lowat for s in subs) or any(p.lowat for p in pubs)
    next_tick = t0 + 1.0 if plan.progress else float("inf")

    now = time.monotonic()
    if t0 > now:
        time.sleep(t0 - now)
    while True:
        now = time.monotonic()
        if not snap_w and now >= t_w:
            snap_w = True
            for p in pubs:
                p.window.t_start, p.window.v_start = now, p.sent()
            for s in subs:
                s.window.t_start, s.window.v_start = now, s.counter.messages
                s.counter.latency = s.spec.latency
        if snap_w and not snap_e and now >= t_e:
            snap_e = True
            for p in pubs:
                p.window.t_end, p.window.v_end = now, p.sent()
                p.stopping = True
            for s in subs:
                s.window.t_end, s.window.v_end = now, s.counter.messages
                s.counter.latency = False
                s.last_progress = now
            drain_deadline = now + plan.stop_timeout + plan.drain_max
        if now >= next_tick:
            next_tick = now + 1.0 if not snap_e else float("inf")
            conn.send(
                ("tick", now, sum(s.counter.messages for s in subs), sum(p.sent() for p in pubs))
            )
        # Publishers: send what the kernel takes; once stopping, flush and finish cleanly.
        for p in live_pubs:
            if p.done or p.blocked:
                continue
            if now >= p.next_ping:
                p.next_ping = now + PING_EVERY
                p.ctrl += mqtt.PINGREQ
            want = p.pump(now, t0)
            p.blocked = want
            _set_events(sel, p, EV_R | EV_W if want else EV_R)
            if p.stopping and not want and p.start == p.end and not p.ctrl:
                if p.acked() >= p.seq or now > t_e + plan.stop_timeout:
                    if p.acked() < p.seq and not p.error:
                        p.error = f"{p.seq - p.acked()} packets never acknowledged"
                    _finish_pub(sel, p, lvl)
        if live_pubs and all(p.done for p in live_pubs):
            live_pubs = []
        if subs and all(s.error for s in subs):
            break  # nobody left to count: report the error instead of publishing into the void
        if snap_e and not pubs_reported and not live_pubs:
            pubs_reported = True
            conn.send(("published", {p.spec.index: p.sent() for p in pubs}))
            if not subs:
                break
        if totals is not None and subs:
            if all(s.error or _sub_complete(s, totals) for s in subs):
                break
            if all(s.error or now - s.last_progress > plan.drain_quiet for s in subs):
                break
        if snap_e and now > drain_deadline:
            break
        for p in live_pubs:
            if p.lowat and not p.done and now - p.last_read >= plan.read_tick:
                _read_pub(sel, p)  # below SO_RCVLOWAT: still collect the acknowledgements
                if p.counter.out_pending:
                    p.blocked = False
        for s in subs:
            if s.lowat and not s.error and now - s.last_read >= plan.read_tick:
                _read_sub(s)  # below SO_RCVLOWAT: still collect what is there
                if s.counter.out_pending:
                    s.out += s.counter.take_out()
                if s.out and not s.error:
                    _flush_sub(sel, s)
                if s.error:
                    sel.unregister(s.sock)
            if now >= s.next_ping and not s.error:
                s.next_ping = now + PING_EVERY
                s.out += mqtt.PINGREQ
                _flush_sub(sel, s)
        # Sleep until the next socket event, boundary or pacing instant.
        nxt = t_w if not snap_w else (t_e if not snap_e else now + 0.05)
        if paced:
            for p in live_pubs:
                w = p.next_wake(t0)
                if w and w < nxt:
                    nxt = w
        if lowat_subs:
            nxt = min(nxt, now + plan.read_tick)
        nxt = min(nxt, next_tick)
        timeout = min(max(nxt - now, 0.0), 0.05)
        for key, ev in sel.select(timeout):
            o = key.data
            if o is None:
                m = conn.recv()
                if m[0] == "totals":
                    totals = m[1]
                    t = time.monotonic()
                    for s in subs:
                        s.last_progress = t
            elif isinstance(o, _Sub):
                if ev & EV_R:
                    _read_sub(o)
                    if o.counter.out_pending:
                        o.out += o.counter.take_out()
                if o.out and not o.error:
                    _flush_sub(sel, o)
                if o.error:
                    sel.unregister(o.sock)
            else:
                if ev & EV_W:
                    o.blocked = False
                if ev & EV_R and not o.done:
                    _read_pub(sel, o)
                    if o.counter.out_pending:
                        o.blocked = False  # PUBRELs to send: let pump() run
    # Report.
    for s in subs:
        if not s.error:
            try:
                s.sock.setblocking(True)
                s.sock.settimeout(1.0)
                s.sock.sendall(mqtt.encode_disconnect(lvl))
            except OSError:
                pass
        s.sock.close()
    for p in pubs:
        if not p.done:
            _finish_pub(sel, p, lvl)
    if not pubs_reported:
        conn.send(("published", {p.spec.index: p.sent() for p in pubs}))
    conn.send(("result", [_pub_result(p) for p in pubs], [_sub_result(s) for s in subs]))


def _sub_complete(s: _Sub, totals: dict[int, int]) -> bool:
    got = s.counter.received_list()
    return all(got[i] >= totals.get(i, 0) for i in s.spec.expects)


def _read_sub(s: _Sub) -> None:
    s.last_read = time.monotonic()
    for _ in range(4):
        try:
            k = s.sock.recv_into(memoryview(s.rbuf)[s.have :])
        except BlockingIOError:
            return
        except OSError as exc:
            s.error = f"subscriber socket error: {exc}"
            return
        if k == 0:
            s.error = "broker closed the subscriber connection"
            if s.counter.disconnect_reason >= 0:
                s.error += f" (DISCONNECT reason {s.counter.disconnect_reason:#x})"
            return
        s.have = s.counter.feed(s.rbuf, s.have + k)
        s.last_progress = s.last_read
        if s.have == len(s.rbuf):
            s.rbuf.extend(bytes(len(s.rbuf)))
        if k < len(s.rbuf) // 2:
            return  # socket is probably drained; go back to select


def _flush_sub(sel: selectors.BaseSelector, s: _Sub) -> None:
    try:
        k = s.sock.send(s.out)
        del s.out[:k]
    except BlockingIOError:
        pass
    except OSError as exc:
        s.error = f"subscriber socket error: {exc}"
        return
    _set_events(sel, s, EV_R | EV_W if s.out else EV_R)


def _read_pub(sel: selectors.BaseSelector, p: _Pub) -> None:
    p.last_read = time.monotonic()
    try:
        k = p.sock.recv_into(memoryview(p.rbuf)[p.have :])
    except BlockingIOError:
        return
    except OSError as exc:
        p.error = f"publisher socket error: {exc}"
        _finish_pub(sel, p, 0)
        return
    if k == 0:
        p.error = "broker closed the publisher connection"
        if p.counter.disconnect_reason >= 0:
            p.error += f" (DISCONNECT reason {p.counter.disconnect_reason:#x})"
        _finish_pub(sel, p, 0)
        return
    p.have = p.counter.feed(p.rbuf, p.have + k)
    if p.have == len(p.rbuf):
        p.rbuf.extend(bytes(len(p.rbuf)))


def _finish_pub(sel: selectors.BaseSelector, p: _Pub, lvl: int) -> None:
    """Stop a publisher: DISCONNECT (when the stream is at a packet boundary) and close."""
    if p.done:
        return
    p.done = True
    p.stopping = True
    try:
        sel.unregister(p.sock)
    except (KeyError, ValueError):
        pass
    if lvl and p.start == p.end:
        try:
            p.sock.setblocking(True)
            p.sock.settimeout(1.0)
            p.sock.sendall(mqtt.encode_disconnect(lvl))
        except OSError:
            pass
    p.sock.close()


def _pub_result(p: _Pub) -> PubResult:
    return PubResult(p.spec.index, p.sent(), p.acked(), p.window, p.error)


def _sub_result(s: _Sub) -> SubResult:
    c = s.counter
    return SubResult(
        s.spec.client_id,
        c.received_list(),
        c.gaps_list(),
        c.reordered_list(),
        c.next_seq_list(),
        c.messages,
        c.foreign,
        s.window,
        c.disconnect_reason,
        s.error,
        c.latency_samples() if s.spec.latency else [],
    )
