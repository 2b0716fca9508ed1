"""Soak: a broker under steady mixed traffic with slow subscribers and connection churn, for
minutes; does its memory stay flat, and does every subscriber that kept up get every QoS 1/2
message?

    python benchmarks/soak.py [--duration 600] [--rate 1500] [--out bench-out/soak]
                              [--mqttd-args="--max-queued-messages 100"] [--broker mosquitto]
                              [--port P --broker-pid PID]    # a broker that is already running

Traffic (all MQTT 3.1.1, one epoll loop in this process):

- publishers in three groups, QoS 0, 1 and 2 (``--publishers`` each), on ``soak/qQ/I`` at a
  steady total ``--rate`` (msg/s) of ``--payload`` bytes; QoS 1/2 publishers keep at most 20
  unacknowledged and are slowed, never stopped, by a broker that holds them back;
- kept-up subscribers (``--kept-up`` per group): subscribe to ``soak/qQ/+`` at QoS Q before
  publishing starts, read everything, stay connected. Only they count for "lost";
- pausing subscribers of ``soak/#`` (QoS 1 and 2): read for 1-3 s, stop reading for 2-8 s, again;
- stalled subscribers of ``soak/#`` (QoS 0 and 1, 4 KiB receive buffer): never read again;
- persistent sessions (clean session 0) of ``soak/q1/+`` and ``soak/q2/+``: online 2-10 s, leave
  (DISCONNECT or a dropped socket), away 1-5 s, come back to the same session;
- fresh clients (``--fresh-per-second``): connect, subscribe, publish a few QoS 1 messages
  elsewhere, leave after 0.5-3 s, with or without DISCONNECT.

Every payload starts with the publisher's index and sequence number, so each subscriber counts
unique deliveries and duplicates exactly. Every second it records the broker's RSS
(/proc/PID/status), the counts, and the broker's dropped counters from ``$SYS`` (a subscriber of
``$SYS/broker/#``; mqttd is started with ``--sys-interval 1``, Mosquitto with ``sys_interval 1``).

At the end it writes ``soak.csv``, ``soak.png`` (matplotlib) and ``summary.json`` to ``--out``,
prints per QoS: published, delivered, duplicated, lost (messages the broker acknowledged to the
publisher - PUBACK, or PUBCOMP at QoS 2 - or sent at QoS 0, that a kept-up subscriber never
got), the dropped counters, and the
RSS growth after warm-up (median of the last 10 % of the samples minus the median of the 5
samples after warm-up; warm-up is the first 10 % of the run or 30 s, whichever is longer, but at
most a quarter of the run). Exit status 1 when a kept-up subscriber lost a QoS 1/2 message, was
disconnected, or the RSS grew more than ``--max-growth-mb``, or the broker died; 2 when it could
not start.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import selectors
import shlex
import socket
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from brokers import find_mosquitto  # noqa: E402
from flow import (  # noqa: E402
    DROP_REASONS,
    MQTTD_BASE_ARGS,
    SYS_PREFIX,
    Broker,
    FlowError,
    MiB,
    dropped_counters,
    encode_publish,
    log,
    proc_status,
    start_mosquitto,
    start_mqttd,
)

from mqttd.bench import mqtt  # noqa: E402

EV_R = selectors.EVENT_READ
EV_W = selectors.EVENT_WRITE
HEAD = struct.Struct(">IQ")
PID = struct.Struct(">H")
TICK = 0.02
HANDSHAKE_TIMEOUT = 10.0
PUB_WINDOW = 20
PING_EVERY = 20.0


def encode_subscribe(filters: list[tuple[str, int]], packet_id: int = 1) -> bytes:
    """SUBSCRIBE with a QoS per filter (flags 0b0010 [MQTT-3.8.1-1])."""
    body = PID.pack(packet_id)
    for f, q in filters:
        fb = f.encode()
        body += PID.pack(len(fb)) + fb + bytes((q,))
    return b"\x82" + mqtt.varint(len(body)) + body


def covered(filters: list[tuple[str, int]]) -> set[int]:
    """The publisher QoS groups (``soak/qQ/...``) that these filters receive."""
    qs: set[int] = set()
    for f, _ in filters:
        if f == "soak/#":
            qs |= {0, 1, 2}
        elif f.startswith("soak/q"):
            qs.add(int(f[6]))
    return qs


class Tracker:
    """What one subscriber received: a byte per (publisher, sequence number) seen."""

    __slots__ = ("seen", "count", "got", "dups", "start")

    def __init__(self) -> None:
        self.seen: dict[int, bytearray] = {}
        self.count: dict[int, int] = {}  # publisher -> unique sequence numbers seen
        self.got = [0, 0, 0]  # unique deliveries per publisher QoS
        self.dups = [0, 0, 0]
        self.start: dict[int, int] = {}  # publisher -> its sequence number when we subscribed


class Client:
    """A non-blocking MQTT 3.1.1 client of the soak loop (connect, subscribe, count, ack)."""

    kind = "client"

    def __init__(
        self,
        soak: Soak,
        cid: str,
        filters: list[tuple[str, int]],
        *,
        clean: bool = True,
        keepalive: int = 60,
        rcvbuf: int = 0,
        track: bool = True,
    ) -> None:
        self.soak = soak
        self.cid = cid
        self.filters = filters
        self.clean = clean
        self.keepalive = keepalive
        self.rcvbuf = rcvbuf
        self.tracker = Tracker() if track else None
        self.sock: socket.socket | None = None
        self.state = "down"  # down, connecting, connack, suback, up
        self.rbuf = bytearray()
        self.out = bytearray()
        self.reading = True
        self.mask = 0
        self.deadline = 0.0
        self.last_send = 0.0
        self.session_present = False
        self.subscribed_once = False
        self.leaving = False
        self.closed_by_broker = 0
        self.connects = 0
        self.failures = 0
        self.retry_at = 0.0  # when down: reconnect at this time (0: never)

    # -- connection ------------------------------------------------------------------------------
    def connect(self, now: float) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        if self.rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        err = s.connect_ex((self.soak.host, self.soak.port))
        if err not in (0, 115, 11):  # EINPROGRESS, EAGAIN
            s.close()
            self.failures += 1
            self.retry_at = now + 1.0
            return
        self.sock = s
        self.state = "connecting"
        self.rbuf.clear()
        self.out.clear()
        self.reading = True
        self.leaving = False
        self.deadline = now + HANDSHAKE_TIMEOUT
        self.connects += 1
        self.retry_at = 0.0
        self.soak.update(self)

    def writable(self, now: float) -> None:
        if self.state == "connecting":
            assert self.sock is not None
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.failures += 1
                self.drop(now, f"connect failed ({os.strerror(err)})")
                return
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.out += mqtt.encode_connect(self.cid, 4, self.keepalive, self.clean)
            self.state = "connack"
        self.flush(now)

    def flush(self, now: float) -> None:
        if not self.out or self.sock is None or self.state == "connecting":
            return
        try:
            n = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as e:
            self.drop(now, f"send: {e.strerror or e}")
            return
        if n:
            del self.out[:n]
            self.last_send = now

    def drop(self, now: float, reason: str) -> None:
        """The connection is gone (the broker closed it, or it failed)."""
        if self.sock is None:
            return
        if not self.leaving and self.state == "up":
            self.closed_by_broker += 1
            self.soak.events.append((now - self.soak.t0, self.cid, reason))
        self.close_socket()
        self.on_down(now, reason)

    def close_socket(self, rst: bool = False) -> None:
        s = self.sock
        if s is None:
            return
        self.soak.forget(self)
        if rst:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        s.close()
        self.sock = None
        self.state = "down"

    def leave(self, now: float, graceful: bool) -> None:
        """We go: DISCONNECT and close, or just a reset connection."""
        self.leaving = True
        if graceful and self.sock is not None:
            self.out += mqtt.encode_disconnect()
            self.flush(now)
        self.close_socket(rst=not graceful)

    def on_down(self, now: float, reason: str) -> None:
        """Role hook: the connection went away without us leaving."""

    def on_up(self, now: float) -> None:
        """Role hook: connected (and subscribed)."""

    # -- reading ---------------------------------------------------------------------------------
    def readable(self, now: float) -> None:
        if self.sock is None:
            return
        try:
            data = self.sock.recv(262144)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self.drop(now, f"recv: {e.strerror or e}")
            return
        if not data:
            self.drop(now, "closed by the broker")
            return
        buf = self.rbuf
        buf += data
        n = len(buf)
        pos = 0
        while n - pos >= 2:
            p = pos + 1
            rl = mult = 0
            while True:
                if p >= n:
                    rl = -1
                    break
                c = buf[p]
                p += 1
                rl |= (c & 0x7F) << mult
                if c < 0x80:
                    break
                mult += 7
            if rl < 0 or p + rl > n:
                break
            self.packet(now, buf[pos], buf, p, p + rl)
            if self.sock is None:
                return
            pos = p + rl
        del buf[:pos]
        if self.out:
            self.flush(now)

    def packet(self, now: float, first: int, b: bytearray, start: int, end: int) -> None:
        kind = first >> 4
        if kind == 3:
            qos = (first >> 1) & 3
            tlen = (b[start] << 8) | b[start + 1]
            pos = start + 2 + tlen
            if qos:
                hi, lo = b[pos], b[pos + 1]
                pos += 2
                self.out += bytes((0x40 if qos == 1 else 0x50, 2, hi, lo))  # PUBACK / PUBREC
            self.on_publish(b, start + 2, start + 2 + tlen, pos, end)
        elif kind == 6:  # PUBREL -> PUBCOMP
            self.out += bytes((0x70, 2, b[start], b[start + 1]))
        elif kind == 2:
            if end - start < 2 or b[start + 1] != 0:
                self.failures += 1
                self.drop(now, f"CONNACK refused ({b[start + 1] if end - start > 1 else '?'})")
                return
            self.session_present = bool(b[start] & 1)
            need_sub = self.filters and (self.clean or not self.session_present)
            if need_sub:
                if self.subscribed_once and not self.clean:
                    self.soak.sessions_lost += 1
                self.out += encode_subscribe(self.filters)
                self.state = "suback"
            else:
                self.state = "up"
                self.on_up(now)
        elif kind == 9:
            if any(c >= 0x80 for c in b[start + 2 : end]):
                self.failures += 1
                self.drop(now, "SUBACK refused")
                return
            self.state = "up"
            if not self.subscribed_once and self.tracker is not None:
                self.soak.mark_start(self)
            self.subscribed_once = True
            self.on_up(now)
        elif kind == 4:
            self.on_puback(now, (b[start] << 8) | b[start + 1])
        elif kind == 5:
            pid = (b[start] << 8) | b[start + 1]
            self.out += bytes((0x62, 2, b[start], b[start + 1]))  # PUBREL
            self.on_pubrec(now, pid)
        elif kind == 7:
            self.on_pubcomp(now, (b[start] << 8) | b[start + 1])

    def on_publish(self, b: bytearray, t0: int, t1: int, pos: int, end: int) -> None:
        tr = self.tracker
        if tr is None or end - pos < HEAD.size:
            return
        idx, seq = HEAD.unpack_from(b, pos)
        soak = self.soak
        if idx >= len(soak.pub_qos):
            return
        q = soak.pub_qos[idx]
        bm = tr.seen.get(idx)
        if bm is None:
            bm = tr.seen[idx] = bytearray()
        if seq >= len(bm):
            if seq > 1 << 28:
                return
            bm.extend(bytes(seq + 4096 - len(bm)))
        if bm[seq]:
            tr.dups[q] += 1
            soak.dups[q] += 1
        else:
            bm[seq] = 1
            tr.count[idx] = tr.count.get(idx, 0) + 1
            tr.got[q] += 1
            soak.delivered[q] += 1

    def on_puback(self, now: float, pid: int) -> None:
        pass

    def on_pubrec(self, now: float, pid: int) -> None:
        pass

    def on_pubcomp(self, now: float, pid: int) -> None:
        pass

    # -- time ------------------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        if self.sock is None:
            if self.retry_at and now >= self.retry_at:
                self.connect(now)
            return
        if self.state != "up":
            if now > self.deadline:
                self.failures += 1
                self.drop(now, f"no answer in {HANDSHAKE_TIMEOUT:g} s ({self.state})")
            return
        if self.keepalive and now - self.last_send > min(PING_EVERY, self.keepalive / 2):
            self.out += b"\xc0\x00"  # PINGREQ
            self.flush(now)
        self.role_tick(now)

    def role_tick(self, now: float) -> None:
        pass


class Publisher(Client):
    kind = "publisher"

    def __init__(self, soak: Soak, index: int, qos: int, rate: float, payload: int) -> None:
        super().__init__(soak, f"soak-pub{index}-q{qos}", [], track=False)
        self.index = index
        self.qos = qos
        self.rate = rate
        topic = f"soak/q{qos}/{index}".encode()
        self.topic = struct.pack(">H", len(topic)) + topic
        self.pad = b"p" * max(0, payload - HEAD.size)
        self.seq = 0
        self.acked = bytearray()  # per sequence number: 1 once the broker owns it
        self.acked_n = 0
        self.inflight: dict[int, int] = {}  # packet id -> sequence number (until PUBACK/PUBCOMP)
        self.next_pid = 1
        self.t_start = 0.0

    def _mark(self, seq: int) -> None:
        if seq >= len(self.acked):
            self.acked.extend(bytes(seq + 4096 - len(self.acked)))
        if not self.acked[seq]:
            self.acked[seq] = 1
            self.acked_n += 1
            self.soak.acked[self.qos] += 1

    def role_tick(self, now: float) -> None:
        if not self.soak.publishing:
            return
        due = int(self.rate * (now - self.soak.t_pub0)) + 1 - self.seq
        if due <= 0:
            return
        n = min(due, 500)
        q = self.qos
        first = bytes((0x30 | (q << 1),))
        for _ in range(n):
            if q and len(self.inflight) >= PUB_WINDOW:
                break
            body = self.topic
            if q:
                pid = self.next_pid
                while pid in self.inflight:
                    pid = pid % 65535 + 1
                self.next_pid = pid % 65535 + 1
                self.inflight[pid] = self.seq
                body += PID.pack(pid)
            body += HEAD.pack(self.index, self.seq) + self.pad
            self.out += first + mqtt.varint(len(body)) + body
            if not q:
                self._mark(self.seq)
            self.seq += 1
            self.soak.published[q] += 1
        self.flush(now)

    def on_puback(self, now: float, pid: int) -> None:
        seq = self.inflight.pop(pid, None)
        if seq is not None:
            self._mark(seq)

    def on_pubcomp(self, now: float, pid: int) -> None:
        # Counted at PUBCOMP, not PUBREC: a broker may deliver a QoS 2 message only on PUBREL
        # (MQTT 3.1.1 §4.3.3 method B), and a clean session that drops in between loses it.
        seq = self.inflight.pop(pid, None)
        if seq is not None:
            self._mark(seq)

    def on_down(self, now: float, reason: str) -> None:
        # Clean session: what was in flight is not ours to expect any more (not acked).
        self.inflight.clear()
        self.retry_at = now + 1.0


class KeptUp(Client):
    kind = "kept-up"

    def __init__(self, soak: Soak, i: int, qos: int) -> None:
        super().__init__(soak, f"soak-keptup{i}-q{qos}", [(f"soak/q{qos}/+", qos)])
        self.qos = qos

    def on_down(self, now: float, reason: str) -> None:
        self.soak.keptup_down.append(f"{self.cid}: {reason} at {now - self.soak.t0:.1f} s")


class Pausing(Client):
    kind = "pausing"

    def __init__(self, soak: Soak, i: int, qos: int) -> None:
        super().__init__(soak, f"soak-pausing{i}-q{qos}", [("soak/#", qos)])
        self.switch_at = 0.0

    def on_up(self, now: float) -> None:
        self.switch_at = now + self.soak.rng.uniform(1, 3)

    def role_tick(self, now: float) -> None:
        if now < self.switch_at:
            return
        rng = self.soak.rng
        self.reading = not self.reading
        self.switch_at = now + (rng.uniform(1, 3) if self.reading else rng.uniform(2, 8))
        self.soak.update(self)

    def on_down(self, now: float, reason: str) -> None:
        self.retry_at = now + 1.0


class Stalled(Client):
    kind = "stalled"

    def __init__(self, soak: Soak, i: int, qos: int) -> None:
        super().__init__(
            soak, f"soak-stalled{i}-q{qos}", [("soak/#", qos)], keepalive=0, rcvbuf=4096
        )

    def on_up(self, now: float) -> None:
        self.reading = False
        self.soak.update(self)


class Persistent(Client):
    kind = "persistent"

    def __init__(self, soak: Soak, i: int) -> None:
        super().__init__(
            soak,
            f"soak-persistent{i}",
            [("soak/q1/+", 1), ("soak/q2/+", 2)],
            clean=False,
            keepalive=30,
        )
        self.leave_at = 0.0
        self.away = 0

    def on_up(self, now: float) -> None:
        self.leave_at = now + self.soak.rng.uniform(2, 10)

    def role_tick(self, now: float) -> None:
        if self.leave_at and now >= self.leave_at and self.soak.publishing:
            self.leave_at = 0.0
            self.leave(now, graceful=self.soak.rng.random() < 0.5)
            self.away += 1
            self.retry_at = now + self.soak.rng.uniform(1, 5)

    def on_down(self, now: float, reason: str) -> None:
        self.retry_at = now + 1.0


class Fresh(Client):
    kind = "fresh"

    def __init__(self, soak: Soak, n: int) -> None:
        super().__init__(soak, f"soak-fresh{n}", [("soak/q0/+", 0), ("fresh/#", 1)], keepalive=10)
        self.n = n
        self.leave_at = 0.0

    def on_up(self, now: float) -> None:
        rng = self.soak.rng
        self.leave_at = now + rng.uniform(0.5, 3.0)
        for pid in (1, 2, 3):  # not under soak/: no subscriber counts these
            self.out += encode_publish(f"fresh/{self.n}", b"fresh", 1, pid)
        self.flush(now)

    def role_tick(self, now: float) -> None:
        if self.leave_at and now >= self.leave_at:
            self.leave_at = 0.0
            self.leave(now, graceful=self.soak.rng.random() < 0.5)
            self.soak.fresh_done += 1

    def on_down(self, now: float, reason: str) -> None:
        self.soak.fresh_done += 1


class SysWatcher(Client):
    """Keeps the latest value of every ``$SYS/broker/#`` topic."""

    kind = "sys"

    def __init__(self, soak: Soak) -> None:
        super().__init__(soak, "soak-sys", [(SYS_PREFIX + "#", 0)], track=False)
        self.values: dict[str, str] = {}

    def on_publish(self, b: bytearray, t0: int, t1: int, pos: int, end: int) -> None:
        topic = b[t0:t1].decode(errors="replace")
        if topic.startswith(SYS_PREFIX):
            self.values[topic[len(SYS_PREFIX) :]] = b[pos:end].decode(errors="replace")

    def on_down(self, now: float, reason: str) -> None:
        self.retry_at = now + 1.0


class Soak:
    """The run: the clients, the loop, the samples."""

    def __init__(self, args: argparse.Namespace, broker: Broker) -> None:
        self.args = args
        self.broker = broker
        self.host = broker.host
        self.port = broker.port
        self.rng = random.Random(args.seed)
        self.sel = selectors.EpollSelector()
        self.clients: list[Client] = []
        self.t0 = time.monotonic()
        self.t_pub0 = 0.0
        self.publishing = False
        self.published = [0, 0, 0]
        self.acked = [0, 0, 0]
        self.delivered = [0, 0, 0]
        self.dups = [0, 0, 0]
        self.sessions_lost = 0
        self.fresh_started = 0
        self.fresh_done = 0
        self.keptup_down: list[str] = []
        self.events: list[tuple[float, str, str]] = []
        self.samples: list[dict[str, Any]] = []
        self.pubs: list[Publisher] = []
        self.pub_qos: list[int] = []
        per = args.publishers
        rate_each = args.rate / (3 * per)
        for q in (0, 1, 2):
            for _ in range(per):
                idx = len(self.pubs)
                self.pubs.append(Publisher(self, idx, q, rate_each, args.payload))
                self.pub_qos.append(q)
        self.sys = SysWatcher(self)
        self.keptup = [KeptUp(self, i, q) for q in (0, 1, 2) for i in range(args.kept_up)]
        self.pausing = [Pausing(self, i, 1 + i % 2) for i in range(args.pausing)]
        self.stalled = [Stalled(self, i, 1 - i % 2) for i in range(args.stalled)]
        self.persistent = [Persistent(self, i) for i in range(args.persistent)]
        self.fresh_stats = {"clients": 0, "connects": 0, "closed_by_broker": 0}
        self.next_tick = 0.0

    # -- loop plumbing ---------------------------------------------------------------------------
    def update(self, c: Client) -> None:
        want = 0
        if c.sock is not None:
            if c.state == "connecting" or (c.out and c.state != "down"):
                want |= EV_W
            if c.reading and c.state != "connecting":
                want |= EV_R
        if want == c.mask:
            return
        assert c.sock is not None or want == 0
        if c.mask == 0:
            self.sel.register(c.sock, want, c)  # type: ignore[arg-type]
        elif want == 0:
            self.sel.unregister(c.sock)  # type: ignore[arg-type]
        else:
            self.sel.modify(c.sock, want, c)  # type: ignore[arg-type]
        c.mask = want

    def forget(self, c: Client) -> None:
        if c.mask and c.sock is not None:
            self.sel.unregister(c.sock)
        c.mask = 0

    def mark_start(self, c: Client) -> None:
        assert c.tracker is not None
        for p in self.pubs:
            c.tracker.start[p.index] = p.seq

    def step(self, timeout: float = TICK / 2) -> float:
        for key, ev in self.sel.select(timeout):
            c: Client = key.data
            now = time.monotonic()
            if ev & EV_W:
                c.writable(now)
            if ev & EV_R and c.sock is not None:
                c.readable(now)
            self.update(c)
        now = time.monotonic()
        if now >= self.next_tick:
            self.next_tick = now + TICK
            for c in self.clients:
                c.tick(now)
                if c.out and c.sock is not None and c.state not in ("connecting", "down"):
                    c.flush(now)
                self.update(c)
        return now

    def retire_fresh(self) -> None:
        """Fresh clients that are gone leave the loop; their counts are kept."""
        keep: list[Client] = []
        for c in self.clients:
            if c.kind == "fresh" and c.sock is None:
                st = self.fresh_stats
                st["clients"] += 1
                st["connects"] += c.connects
                st["closed_by_broker"] += c.closed_by_broker
            else:
                keep.append(c)
        self.clients = keep

    def start(self, c: Client) -> None:
        self.clients.append(c)
        c.connect(time.monotonic())

    def wait_up(self, clients: list[Client], timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.step()
            if all(c.state == "up" for c in clients):
                return True
        return False

    # -- the run ---------------------------------------------------------------------------------
    def sample(self, now: float) -> None:
        rss = proc_status(self.broker.pid, "VmRSS")
        drops = dropped_counters(self.sys.values)
        self.samples.append(
            {
                "t": round(now - self.t_pub0, 3),
                "rss_bytes": rss,
                **{f"published_q{q}": self.published[q] for q in (0, 1, 2)},
                **{f"delivered_q{q}": self.delivered[q] for q in (0, 1, 2)},
                **{f"duplicated_q{q}": self.dups[q] for q in (0, 1, 2)},
                "clients_connected": sum(1 for c in self.clients if c.state == "up"),
                "dropped_total": drops.get("total"),
                **{f"dropped_{r}": drops.get(r) for r in DROP_REASONS},
            }
        )

    def run(self) -> dict[str, Any]:
        args = self.args
        setup = [self.sys, *self.keptup, *self.stalled, *self.pausing, *self.persistent]
        for c in setup:
            self.start(c)
        if not self.wait_up(setup, 20.0):
            late = [f"{c.cid} ({c.state})" for c in setup if c.state != "up"]
            raise FlowError(f"subscribers not ready after 20 s: {', '.join(late[:5])}")
        for p in self.pubs:
            self.start(p)
        if not self.wait_up(list(self.pubs), 20.0):
            raise FlowError("publishers not connected after 20 s")
        self.t_pub0 = time.monotonic()
        self.publishing = True
        end = self.t_pub0 + args.duration
        next_sample = self.t_pub0
        next_fresh = self.t_pub0
        next_progress = self.t_pub0 + 5
        broker_died = False
        while True:
            now = self.step()
            if now >= next_sample:
                next_sample += 1.0
                self.sample(now)
                if self.samples[-1]["rss_bytes"] is None:
                    broker_died = True
                    break
            if now >= end:
                break
            if args.fresh_per_second > 0 and now >= next_fresh:
                next_fresh += 1.0 / args.fresh_per_second
                self.start(Fresh(self, self.fresh_started))
                self.fresh_started += 1
                self.retire_fresh()
            if now >= next_progress and not args.quiet:
                next_progress += 5
                s = self.samples[-1]
                log(
                    f"  {s['t']:5.0f} s  RSS {(s['rss_bytes'] or 0) / MiB:7.1f} MiB  published "
                    f"{sum(self.published):,}  delivered {sum(self.delivered):,}  dropped "
                    f"{s['dropped_total'] if s['dropped_total'] is not None else '-'}  clients "
                    f"{s['clients_connected']}"
                )
        self.publishing = False
        t_stop = time.monotonic()
        # Grace: every QoS 1/2 publisher acknowledged, every kept-up subscriber complete.
        grace_end = t_stop + args.grace
        last_progress = (t_stop, self._progress())
        while not broker_died and time.monotonic() < grace_end:
            now = self.step()
            if self._complete():
                break
            prog = self._progress()
            if prog != last_progress[1]:
                last_progress = (now, prog)
            elif now - last_progress[0] > 5.0:
                break
            if now >= next_sample:
                next_sample += 1.0
                self.sample(now)
        grace_s = time.monotonic() - t_stop
        # One more $SYS update, so that the counters include the end of the run.
        if not broker_died and self.sys.state == "up":
            t = time.monotonic()
            while time.monotonic() - t < 1.5:
                self.step()
        if self.broker.alive() and not broker_died:
            self.sample(time.monotonic())
        broker_died = broker_died or not self.broker.alive()
        for c in self.clients:
            if c.sock is not None:
                c.leave(time.monotonic(), graceful=True)
        self.sel.close()
        return self.summary(grace_s, broker_died)

    def _progress(self) -> tuple[int, ...]:
        return (*self.acked, *self.delivered)

    def _complete(self) -> bool:
        if any(p.inflight for p in self.pubs if p.sock is not None):
            return False
        for s in self.keptup:
            tr = s.tracker
            assert tr is not None
            for p in self.pubs:
                if p.qos == s.qos and tr.count.get(p.index, 0) < p.acked_n:
                    return False
        return True

    # -- results ---------------------------------------------------------------------------------
    @staticmethod
    def _missing(acked: bytearray, seen: bytearray | None, lo: int = 0) -> int:
        n = 0
        ls = len(seen) if seen is not None else 0
        for s in range(lo, len(acked)):
            if acked[s] and (s >= ls or not seen[s]):  # type: ignore[index]
                n += 1
        return n

    def summary(self, grace_s: float, broker_died: bool) -> dict[str, Any]:
        args = self.args
        lost = [0, 0, 0]
        lost_by_sub: dict[str, int] = {}
        for s in self.keptup:
            tr = s.tracker
            assert tr is not None
            n = sum(
                self._missing(p.acked, tr.seen.get(p.index)) for p in self.pubs if p.qos == s.qos
            )
            lost[s.qos] += n
            lost_by_sub[s.cid] = n
        keptup_dups = [0, 0, 0]
        for s in self.keptup:
            assert s.tracker is not None
            keptup_dups[s.qos] += s.tracker.dups[s.qos]

        def missed(clients: list[Any]) -> int:
            """Acknowledged messages published after their first SUBACK that they never got."""
            total = 0
            for c in clients:
                tr = c.tracker
                if tr is None or not tr.start:
                    continue
                groups = covered(c.filters)
                for p in self.pubs:
                    if p.qos in groups:
                        lo = tr.start.get(p.index, 0)
                        total += self._missing(p.acked, tr.seen.get(p.index), lo)
            return total

        rss = [(s["t"], s["rss_bytes"]) for s in self.samples if s["rss_bytes"] is not None]
        in_run = [v for t, v in rss if 0 <= t <= args.duration]
        warm = args.warmup
        if warm is None:
            warm = min(max(0.1 * args.duration, 30.0), 0.25 * args.duration)
        after = [v for t, v in rss if warm <= t <= args.duration]
        growth = None
        base = end = None
        if len(after) >= 2:
            base = statistics.median(after[:5])
            tail = after[-max(3, len(in_run) // 10) :]
            end = statistics.median(tail)
            growth = end - base
        drops = dropped_counters(self.sys.values)
        self.retire_fresh()
        per_kind: dict[str, dict[str, int]] = {}
        for c in self.clients:
            k = per_kind.setdefault(c.kind, {"clients": 0, "connects": 0, "closed_by_broker": 0})
            k["clients"] += 1
            k["connects"] += c.connects
            k["closed_by_broker"] += c.closed_by_broker
        fresh = per_kind.setdefault("fresh", {"clients": 0, "connects": 0, "closed_by_broker": 0})
        for key, v in self.fresh_stats.items():
            fresh[key] += v
        fails: list[str] = []
        if lost[1] or lost[2]:
            fails.append(f"kept-up subscribers lost QoS 1: {lost[1]:,}, QoS 2: {lost[2]:,}")
        if self.keptup_down:
            fails.append("kept-up subscribers disconnected: " + "; ".join(self.keptup_down[:3]))
        if growth is not None and growth > args.max_growth_mb * MiB:
            fails.append(
                f"RSS grew {growth / MiB:.1f} MiB after warm-up (max {args.max_growth_mb:g})"
            )
        if growth is None:
            fails.append("too few RSS samples after warm-up")
        if broker_died:
            fails.append("the broker died")
        return {
            "broker": self.broker.name,
            "duration_s": args.duration,
            "rate": args.rate,
            "payload": args.payload,
            "warmup_s": warm,
            "grace_s": grace_s,
            "qos": {
                str(q): {
                    "published": self.published[q],
                    "acked": self.acked[q],
                    "delivered": self.delivered[q],
                    "duplicated": self.dups[q],
                    "lost_kept_up": lost[q],
                    "duplicated_kept_up": keptup_dups[q],
                }
                for q in (0, 1, 2)
            },
            "lost_by_kept_up_subscriber": lost_by_sub,
            "missed_by_persistent_sessions": missed(self.persistent),
            "missed_by_pausing_subscribers": missed(self.pausing),
            "publishers_behind": sum(
                max(0, int(p.rate * args.duration) - p.seq) for p in self.pubs
            ),
            "publish_rate": sum(self.published) / args.duration,
            "rss": {
                "start": rss[0][1] if rss else None,
                "after_warmup": base,
                "end": end,
                "peak": max(v for _, v in rss) if rss else None,
                "vmhwm": proc_status(self.broker.pid, "VmHWM"),
                "growth": growth,
            },
            "dropped": drops,
            "sys_final": self.sys.values,
            "clients": per_kind,
            "sessions_lost": self.sessions_lost,
            "fresh_clients": self.fresh_started,
            "kept_up_disconnected": self.keptup_down,
            "unexpected_disconnects": [
                {"t": round(t, 2), "client": c, "reason": r} for t, c, r in self.events[:50]
            ],
            "failures": fails,
            "ok": not fails,
        }


# --- output ----------------------------------------------------------------------------------


def write_csv(path: Path, samples: list[dict[str, Any]]) -> None:
    if not samples:
        path.write_text("")
        return
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(samples[0]))
        w.writeheader()
        for s in samples:
            w.writerow({k: ("" if v is None else v) for k, v in s.items()})


def plot(path: Path, samples: list[dict[str, Any]], summary: dict[str, Any], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t"] for s in samples]
    fig, (ax1, ax2, ax3, ax4) = plt.subplots(4, 1, figsize=(10, 11), sharex=True)
    ax1.plot(t, [(s["rss_bytes"] or 0) / MiB for s in samples], color="tab:red")
    ax1.axvline(summary["warmup_s"], color="grey", linestyle="--", label="end of warm-up")
    ax1.axvline(summary["duration_s"], color="black", linestyle=":", label="publishing stops")
    ax1.set_ylabel("broker RSS (MiB)")
    ax1.legend(loc="lower right", fontsize="small")
    ax1.set_title(title)

    def rate(key: str) -> list[float]:
        out = [0.0]
        for a, b in zip(samples, samples[1:], strict=False):
            dt = b["t"] - a["t"]
            out.append((b[key] - a[key]) / dt if dt > 0 else 0.0)
        return out

    colors = ("tab:blue", "tab:orange", "tab:green")
    for q, color in zip((0, 1, 2), colors, strict=True):
        ax2.plot(t, rate(f"published_q{q}"), color=color, label=f"QoS {q}")
        ax3.plot(t, rate(f"delivered_q{q}"), color=color, label=f"QoS {q}")
    ax2.set_ylabel("published msg/s")
    ax2.legend(loc="upper right", fontsize="small", ncol=3)
    ax3.set_ylabel("delivered msg/s\n(all subscribers)")
    ax3.legend(loc="upper right", fontsize="small", ncol=3)
    for key in ["dropped_total", *[f"dropped_{r}" for r in DROP_REASONS]]:
        vals = [s.get(key) for s in samples]
        if any(v for v in vals):
            ax4.plot(t, [v or 0 for v in vals], label=key.replace("dropped_", ""))
    ax4.set_ylabel("dropped ($SYS, total)")
    ax4.set_xlabel("seconds since publishing started")
    if ax4.lines:
        ax4.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def report(summary: dict[str, Any]) -> str:
    def n(v: Any) -> str:
        return "n/a" if v is None else f"{v:,.0f}"

    r = summary["rss"]
    lines = [
        f"Soak against {summary['broker']}: {summary['duration_s']:g} s at {summary['rate']:g} "
        f"msg/s ({summary['publish_rate']:,.0f} achieved), {summary['payload']} B payloads",
        "",
        "| QoS | published | acknowledged | delivered (all subs) | duplicated "
        "| lost (kept-up subs) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for q, v in summary["qos"].items():
        dup = f"{v['duplicated']:,}"
        if v["duplicated_kept_up"]:
            dup += f" ({v['duplicated_kept_up']:,} at kept-up subs)"
        lines.append(
            f"| {q} | {v['published']:,} | {v['acked']:,} | {v['delivered']:,} | {dup} | "
            f"{v['lost_kept_up']:,} |"
        )
    d = summary["dropped"]
    dparts = ", ".join(f"{k} {v:,}" for k, v in sorted(d.items()) if k != "total")
    lines += [
        "",
        f"dropped ($SYS): {n(d.get('total'))}" + (f" ({dparts})" if dparts else ""),
        f"missed while away/paused (not failures): persistent sessions "
        f"{summary['missed_by_persistent_sessions']:,}, pausing subscribers "
        f"{summary['missed_by_pausing_subscribers']:,}",
        f"RSS: start {n((r['start'] or 0) / MiB)} MiB, after warm-up ({summary['warmup_s']:g} s) "
        f"{(r['after_warmup'] or 0) / MiB:.1f} MiB, end {(r['end'] or 0) / MiB:.1f} MiB, "
        f"peak {(r['peak'] or 0) / MiB:.1f} MiB, growth after warm-up "
        + ("n/a" if r["growth"] is None else f"{r['growth'] / MiB:+.2f} MiB"),
        "clients: "
        + ", ".join(
            f"{k} {v['clients']} ({v['connects']} connects, "
            f"{v['closed_by_broker']} closed by broker)"
            for k, v in summary["clients"].items()
        ),
        f"persistent sessions the broker lost: {summary['sessions_lost']}",
    ]
    if summary["failures"]:
        lines.append("FAILED: " + "; ".join(summary["failures"]))
    else:
        lines.append("ok: no QoS 1/2 message lost by a kept-up subscriber, RSS flat")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of publishing")
    ap.add_argument("--rate", type=float, default=1500.0, help="total messages/s published")
    ap.add_argument("--payload", type=int, default=128, help="payload bytes (>= 12)")
    ap.add_argument("--publishers", type=int, default=3, help="publishers per QoS")
    ap.add_argument("--kept-up", type=int, default=2, help="kept-up subscribers per QoS")
    ap.add_argument("--pausing", type=int, default=4, help="subscribers that pause reading")
    ap.add_argument("--stalled", type=int, default=2, help="subscribers that stop reading")
    ap.add_argument("--persistent", type=int, default=6, help="persistent sessions that churn")
    ap.add_argument("--fresh-per-second", type=float, default=2.0, help="new short-lived clients")
    ap.add_argument("--warmup", type=float, default=None, help="seconds (default: see above)")
    ap.add_argument("--grace", type=float, default=30.0, help="max s to wait for the tail")
    ap.add_argument("--max-growth-mb", type=float, default=5.0, help="MiB of RSS growth allowed")
    ap.add_argument("--out", default="bench-out/soak", help="directory for CSV, PNG, JSON")
    ap.add_argument("--broker", choices=("mqttd", "mosquitto"), default="mqttd")
    ap.add_argument(
        "--mqttd-args", default="", help='extra mqttd options: --mqttd-args="--max-buffer 65536"'
    )
    ap.add_argument("--host", default="127.0.0.1", help="with --port: a running broker")
    ap.add_argument("--port", type=int, default=0, help="use the broker already on this port")
    ap.add_argument("--broker-pid", type=int, default=0, help="its pid (with --port)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    args = ap.parse_args(argv)
    if args.payload < HEAD.size:
        ap.error(f"--payload must be at least {HEAD.size}")
    if args.port and not args.broker_pid:
        ap.error("--port needs --broker-pid (the RSS is read from /proc/PID)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mqttd-soak-") as tmp:
        try:
            if args.port:
                broker = Broker("external", args.host, args.port, args.broker_pid)
            elif args.broker == "mosquitto":
                binary = find_mosquitto()
                if not binary:
                    log("soak: Mosquitto not found (apt-get install mosquitto)")
                    return 2
                broker = start_mosquitto(binary, tmp)
            else:
                broker = start_mqttd([*MQTTD_BASE_ARGS, *shlex.split(args.mqttd_args)])
        except FlowError as e:
            log(f"soak: {e}")
            return 2
        name = broker.name if not args.port else f"broker on port {args.port}"
        log(f"soak: {name} (pid {broker.pid}), {args.duration:g} s, {args.rate:g} msg/s")
        soak = Soak(args, broker)
        try:
            summary = soak.run()
        except FlowError as e:
            log(f"soak: {e}")
            if broker.proc is not None:
                broker.stop()
            return 2
        if broker.proc is not None:
            rc = broker.stop()
            summary["broker_exit"] = rc
            summary["broker_tail"] = broker.tail(30)
        summary["broker"] = name
        summary["settings"] = {k: v for k, v in vars(args).items()}
    write_csv(out / "soak.csv", soak.samples)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    plot(out / "soak.png", soak.samples, summary, f"soak: {name}, {args.rate:g} msg/s")
    print(report(summary))
    print(f"\nwrote {out / 'soak.csv'}, {out / 'soak.png'}, {out / 'summary.json'}")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
