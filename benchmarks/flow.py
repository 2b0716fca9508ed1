"""Flow control side by side: mqttd and Mosquitto under slow subscribers, big messages, small
in-flight windows, offline sessions and a CPU-heavy burst (issue 12).

    python benchmarks/flow.py [--scale 0.1] [--only slow1_q1,burst] [--json out.json]
                              [--mqttd-args="--max-inflight 20"] [--no-mosquitto]
                              [--seconds 10] [--steady-after 2]

Each scenario runs against a fresh mqttd (``python -m mqttd --port 0 --sys-interval 1`` plus the
scenario's own options, then ``--mqttd-args``) and then a fresh Mosquitto in its default
configuration (only a listener on a free port, anonymous access, ``sys_interval 1`` and a log
file are set), one after the other, and reports per broker: the broker's RSS at its start and
its peak (``VmHWM``), its RSS sampled every 100 ms (growth from a third of the loaded phase to its
end says whether it stays flat), what was published and how long that took, what each subscriber
got (counted by the sequence number in each payload), what the broker holds with the subscribers
stalled and what it says it dropped (``$SYS``), the fast subscriber's rate (and, in a separate
run, its rate alone; for slow50_* also in timed runs, over the whole run and in steady state),
and the time a new client waits for an answer during a burst. mqttd's RSS goal is 2 x
Mosquitto's peak + the configured limits of the sessions that can fill up (``mqttd_limits``,
``limits_allowance``: the defaults of ``mqttd.broker.BrokerConfig()`` and the flags given). Every
phase has a deadline: a scenario never hangs, it reports ``timeout``. A broker whose RSS passes
``--rss-cap-mb`` is cut short (``rss cap``) to spare the machine. See benchmarks/README.md.

The clients are one epoll loop over non-blocking sockets in this process; per-message work is the
load generator's compiled frame counter (``mqttd.bench.hotloop``), so a 1 KB message costs the
client well under a microsecond. A "subscriber that stops reading" connects with a 4 KiB
``SO_RCVBUF`` (set before ``connect``, so the kernel's window stays small), subscribes, and never
reads its socket again until the drain phase after publishing, which counts what the broker had
kept for it. QoS 1 publishers keep up to 100 PUBLISH unacknowledged and read their PUBACKs all
along, so a broker that stops reading them only makes them slower. The end of a phase is a
marker, not a quiet period: a PUBLISH sent after the data on the publisher's own connection
(``Pub.mark``, ``await_marks``), a PINGRESP, or a ``$SYS`` round computed after the read started
(``read_sys_fresh``). tests/flow/test_bounds.py runs a short form of each scenario with these
functions and asserts the issue's bounds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import selectors
import shlex
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

import brokers  # noqa: E402
from brokers import find_mosquitto  # noqa: E402

from mqttd._speedups import route  # noqa: E402
from mqttd.bench import mqtt  # noqa: E402
from mqttd.bench.hotloop import FrameCounter, describe, fill_publishes  # noqa: E402
from mqttd.broker import BrokerConfig  # noqa: E402

# Mosquitto's defaults (max_inflight_messages 20, max_queued_messages 1000, no byte limits, no
# memory limit): only what it needs to listen on our port and what we read.
MOSQUITTO_CONF = """listener {port} 127.0.0.1
allow_anonymous true
persistence false
sys_interval 1
log_dest file {log}
"""
MQTTD_BASE_ARGS = ("--sys-interval", "1")
SYS_PREFIX = "$SYS/broker/"
DROP_PREFIX = "publish/messages/dropped"
DROP_REASONS = route.DROP_REASONS
#: payload of a marker PUBLISH: shorter than a sequence header, so FrameCounter counts it as
#: ``foreign``, never as a message
MARK_PAYLOAD = b"flow-mark"
#: the per-session limits of mqttd that bound what a stalled subscriber costs, with their flags
LIMIT_FLAGS = {
    "max_queued_bytes": "--max-queued-bytes",
    "max_queued_messages": "--max-queued-messages",
    "max_buffer": "--max-buffer",
    "max_inflight": "--max-inflight",
    "max_inflight_bytes": "--max-inflight-bytes",
}
MiB = 1024 * 1024
EV_R = selectors.EVENT_READ
EV_W = selectors.EVENT_WRITE


class FlowError(RuntimeError):
    """A client could not talk to the broker (refused, closed, timed out)."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- brokers ---------------------------------------------------------------------------------


@dataclass
class Broker:
    """One broker process we started (or were given) and how to reach it."""

    name: str
    host: str
    port: int
    pid: int
    proc: subprocess.Popen | None = None
    output: deque[str] = field(default_factory=lambda: deque(maxlen=200))
    log_path: Path | None = None
    #: mqttd: lines of its output with a traceback or an ERROR (the first 20), and their count
    errors: list[str] = field(default_factory=list)
    n_errors: int = 0

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return Path(f"/proc/{self.pid}").exists()

    def tail(self, n: int = 20) -> str:
        lines = list(self.output)
        if self.log_path is not None and self.log_path.exists():
            lines = self.log_path.read_text(errors="replace").splitlines(True)
        return "".join(lines[-n:])

    def stop(self) -> int | None:
        """Stop it (SIGINT for mqttd, SIGTERM for Mosquitto); returns its exit status."""
        p = self.proc
        if p is None:
            return None
        sig = signal.SIGINT if self.name == "mqttd" else signal.SIGTERM
        if brokers.stop(p, sig, 15):
            self.output.append("flow: broker did not stop within 15 s of the signal: killed\n")
        return p.returncode


def start_mqttd(args: list[str], timeout: float = 30.0) -> Broker:
    """``python -m mqttd --port 0 ARGS``; waits for its listening line (naming its own pid)."""
    out: deque[str] = deque(maxlen=200)
    proc, port = brokers.start_mqttd(args, timeout=timeout, error=FlowError, seen=out)
    b = Broker("mqttd", "127.0.0.1", port, proc.pid, proc, out)

    def keep(ln: str) -> None:
        out.append(ln)
        if "Traceback" in ln or " ERROR" in ln or " CRITICAL" in ln:
            b.n_errors += 1
            if len(b.errors) < 20:
                b.errors.append(ln)

    assert proc.stdout is not None
    brokers.drain(proc.stdout, keep)
    return b


def _mqtt_probe(host: str, port: int) -> None:
    s, _ = open_client(host, port, "flow-probe", timeout=1.0)
    s.close()


def start_mosquitto(binary: str, tmp: str, timeout: float = 10.0) -> Broker:
    """Mosquitto with MOSQUITTO_CONF on a free port; ready once it answers a CONNECT."""
    proc, port, logf = brokers.start_mosquitto(
        binary, tmp, MOSQUITTO_CONF, probe=_mqtt_probe, timeout=timeout, error=FlowError
    )
    return Broker("mosquitto", "127.0.0.1", port, proc.pid, proc, log_path=logf)


# --- /proc -----------------------------------------------------------------------------------


def proc_status(pid: int, key: str) -> int | None:
    """A ``kB`` line of /proc/PID/status (VmRSS, VmHWM) in bytes; None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(key.encode() + b":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class RssSampler:
    """VmRSS of a process every ``interval`` seconds in a thread; flags a passed ``cap``."""

    def __init__(self, pid: int, interval: float = 0.1, cap: int = 0) -> None:
        self.pid = pid
        self.interval = interval
        self.cap = cap
        self.t0 = time.monotonic()
        self.samples: list[tuple[float, int]] = []
        self.over_cap = False
        self.gone = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            rss = proc_status(self.pid, "VmRSS")
            if rss is None:
                self.gone = True
                return
            self.samples.append((time.monotonic() - self.t0, rss))
            if self.cap and rss > self.cap:
                self.over_cap = True
            if self._stop.wait(self.interval):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def at(self, t: float) -> int | None:
        """The sample nearest to ``t`` (seconds since the sampler started)."""
        if not self.samples:
            return None
        return min(self.samples, key=lambda s: abs(s[0] - t))[1]

    def growth(self, t_from: float, t_to: float) -> int | None:
        """RSS at the end of [t_from, t_to] minus RSS at a third of it ("flat" when small)."""
        a = self.at(t_from + (t_to - t_from) / 3)
        b = self.at(t_to)
        return None if a is None or b is None else b - a

    def max_between(self, t_from: float, t_to: float) -> int | None:
        vals = [v for t, v in self.samples if t_from <= t <= t_to]
        return max(vals) if vals else None


def cpu_seconds(pid: int | None = None) -> float | None:
    """CPU time (user + system, all threads) of process ``pid``, or of this process."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


# --- blocking MQTT 3.1.1 helpers (handshakes, $SYS, probes) ------------------------------------


def recv_packet(sock: socket.socket, deadline: float) -> tuple[int, bytes]:
    """One whole packet (first byte, body), read with blocking calls, exactly its bytes
    (``mqtt``'s reader, its errors and connection errors raised as FlowError)."""
    if deadline <= time.monotonic():
        raise FlowError("timed out waiting for the broker")
    try:
        return mqtt._recv_packet(sock, deadline)
    except mqtt.BenchError as e:
        raise FlowError(str(e)) from None
    except OSError as e:
        raise FlowError(f"connection error: {e}") from None


def encode_publish(topic: str, payload: bytes, qos: int = 0, packet_id: int = 0) -> bytes:
    t = topic.encode()
    body = struct.pack(">H", len(t)) + t
    if qos:
        body += struct.pack(">H", packet_id)
    body += payload
    return bytes((0x30 | (qos << 1),)) + mqtt.varint(len(body)) + body


def publish_fields(first: int, body: bytes) -> tuple[str, int, bytes]:
    """(topic, packet id or 0, payload) of a PUBLISH body (MQTT 3.1.1)."""
    tlen = (body[0] << 8) | body[1]
    topic = body[2 : 2 + tlen].decode(errors="replace")
    pos = 2 + tlen
    pid = 0
    if (first >> 1) & 3:
        pid = (body[pos] << 8) | body[pos + 1]
        pos += 2
    return topic, pid, body[pos:]


def open_client(
    host: str,
    port: int,
    client_id: str,
    *,
    clean: bool = True,
    keepalive: int = 0,
    rcvbuf: int = 0,
    timeout: float = 10.0,
) -> tuple[socket.socket, bool]:
    """TCP connect (``SO_RCVBUF`` set before ``connect`` when given) and CONNECT/CONNACK at
    MQTT 3.1.1; returns the blocking socket and the session-present flag."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        sock.connect((host, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(mqtt.encode_connect(client_id, 4, keepalive, clean))
        first, body = recv_packet(sock, time.monotonic() + timeout)
        if first >> 4 != 2 or len(body) < 2:
            raise FlowError(f"expected CONNACK, got packet type {first >> 4}")
        if body[1] != 0:
            raise FlowError(f"CONNECT of {client_id!r} refused: return code {body[1]:#x}")
    except BaseException:
        sock.close()
        raise
    return sock, bool(body[0] & 1)


def subscribe(
    sock: socket.socket, filters: list[str], qos: int, packet_id: int = 1, timeout: float = 10.0
) -> None:
    """SUBSCRIBE and wait for its SUBACK (other packets before it are skipped)."""
    sock.sendall(mqtt.encode_subscribe(packet_id, filters, qos))
    deadline = time.monotonic() + timeout
    while True:
        first, body = recv_packet(sock, deadline)
        if first >> 4 == 9 and body[:2] == struct.pack(">H", packet_id):
            if any(c >= 0x80 for c in body[2:]):
                raise FlowError(f"subscription to {filters[:3]} refused: {list(body[2:])}")
            return


def read_sys(host: str, port: int, timeout: float = 10.0) -> dict[str, str] | None:
    """Every retained ``$SYS/broker/#`` value of a broker, as {suffix: text}; None if the broker
    does not answer within ``timeout``.

    Subscribes to ``$SYS/broker/#`` and to a marker topic of its own, then publishes to the
    marker: the broker sends the retained values of the subscription before it handles that
    PUBLISH, so the marker's arrival means every value is in."""
    marker = f"flow-marker/{os.getpid()}-{random.randrange(1 << 30)}"
    out: dict[str, str] = {}
    try:
        sock, _ = open_client(host, port, marker.replace("/", "-"), timeout=timeout)
    except (OSError, FlowError):
        return None
    try:
        deadline = time.monotonic() + timeout
        sock.sendall(mqtt.encode_subscribe(1, [SYS_PREFIX + "#", marker], 0))
        subacked = False
        while True:
            first, body = recv_packet(sock, deadline)
            kind = first >> 4
            if kind == 9 and not subacked:
                subacked = True
                sock.sendall(encode_publish(marker, b"end"))
            elif kind == 3:
                topic, _pid, payload = publish_fields(first, body)
                if topic == marker:
                    return out
                if topic.startswith(SYS_PREFIX):
                    out[topic[len(SYS_PREFIX) :]] = payload.decode(errors="replace")
    except (OSError, FlowError):
        return None
    finally:
        try:
            sock.sendall(mqtt.encode_disconnect())
        except OSError:
            pass
        sock.close()


def dropped_counters(values: dict[str, str] | None) -> dict[str, int]:
    """``publish/messages/dropped`` and ``.../dropped/<reason>`` as {"total" | reason: n}."""
    out: dict[str, int] = {}
    for k, v in (values or {}).items():
        if k == DROP_PREFIX or k.startswith(DROP_PREFIX + "/"):
            name = k[len(DROP_PREFIX) + 1 :] or "total"
            try:
                out[name] = int(float(v))
            except ValueError:
                continue
    return out


def sys_int(values: dict[str, str] | None, key: str) -> int | None:
    try:
        return int(float((values or {})[key].split()[0]))
    except (KeyError, ValueError, IndexError):
        return None


# --- the non-blocking client loop -------------------------------------------------------------


class Conn:
    """A connected client in the epoll loop: reads and counts with the compiled FrameCounter
    (acknowledging QoS 1/2 PUBLISH unless ``hold_acks``), writes what it owes."""

    def __init__(self, name: str, sock: socket.socket, npubs: int, reading: bool) -> None:
        self.name = name
        self.sock = sock
        sock.setblocking(False)
        self.counter = FrameCounter(npubs, 4, True)
        self.buf = bytearray(1 << 17)
        self.view = memoryview(self.buf)
        self.have = 0
        self.out = bytearray()
        self.reading = reading
        self.hold_acks = False
        self.closed = ""
        self.nbytes = 0
        self.first_msg = 0.0
        self.last_msg = 0.0
        self.last_rx = 0.0
        self.mask = 0
        self.blocked = False

    def read(self, now: float) -> int:
        """Read what is there (a few recv calls at most); returns bytes read."""
        if self.closed:
            return 0
        got = 0
        before = self.counter.messages
        for _ in range(8):
            space = len(self.buf) - self.have
            try:
                n = self.sock.recv_into(self.view[self.have :])
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                self.closed = f"error: {e.strerror or e}"
                break
            if n == 0:
                self.closed = "closed by broker"
                break
            got += n
            left = self.counter.feed(self.buf, self.have + n)
            if left >= len(self.buf):  # one header bigger than the buffer: grow it
                self.buf.extend(bytes(len(self.buf)))
                self.view = memoryview(self.buf)
            self.have = left
            if n < space:
                break  # the socket is drained
        if got:
            self.nbytes += got
            self.last_rx = now
            if self.counter.messages != before:
                if not self.first_msg:
                    self.first_msg = now
                self.last_msg = now
            if not self.hold_acks and self.counter.out_pending:
                self.out += self.counter.take_out()
        if self.out:
            self.flush()
        return got

    def flush(self) -> None:
        if not self.out or self.closed:
            return
        try:
            n = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            self.blocked = True
            return
        except OSError as e:
            self.closed = f"error: {e.strerror or e}"
            return
        del self.out[:n]
        self.blocked = bool(self.out)

    def release_acks(self) -> None:
        self.hold_acks = False
        if self.counter.out_pending:
            self.out += self.counter.take_out()
        self.flush()

    def rate(self) -> float:
        dt = self.last_msg - self.first_msg
        return self.counter.messages / dt if dt > 0 else 0.0

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class Pub(Conn):
    """Publishes ``total`` messages (or until ``until``) in 64 KiB batches of pre-encoded PUBLISH;
    at QoS 1 keeps at most ``window`` unacknowledged."""

    def __init__(
        self,
        name: str,
        sock: socket.socket,
        index: int,
        topic: str,
        qos: int,
        payload: int,
        total: int = 0,
        until: float = 0.0,
        window: int = 100,
    ) -> None:
        super().__init__(name, sock, 0, True)
        self.tmpl = mqtt.publish_template(topic, index, payload, qos)
        self.topic = topic
        self.qos = qos
        self.marks = 0
        self.size = self.tmpl.size
        self.batch_pkts = max(1, 65536 // self.size)
        self.pbuf = bytearray(self.batch_pkts * self.size)
        self.pview = memoryview(self.pbuf)
        self.start = self.end = 0
        self.seq = 0
        self.total = total
        self.until = until
        self.window = window
        self.t_done = 0.0
        self.stopped = False
        # A publisher wakes for a quarter of its window of PUBACKs, not for each one.
        if qos:
            lowat = 4 * max(1, window // 4)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, lowat)

    def sent(self) -> int:
        """Messages whose every byte the kernel took."""
        unsent = self.end - self.start
        return self.seq - (unsent + self.size - 1) // self.size

    def acked(self) -> int:
        # min(): markers are sent once every message is acknowledged; their PUBACKs are not
        # messages
        return min(self.seq, self.counter.puback) if self.qos else self.sent()

    def mark(self) -> None:
        """One marker PUBLISH on this publisher's connection and topic, after its messages: a
        subscriber that receives it has received every message of this publisher that the
        broker kept for it (a session's messages go out in order). Only once ``done``."""
        if self.closed:
            return
        self.marks += 1
        pid = (self.seq + self.marks) % 65535 + 1  # the messages' ids are all acknowledged
        self.out += encode_publish(self.topic, MARK_PAYLOAD, self.qos, pid)
        self.flush()

    def want_more(self, now: float) -> bool:
        if self.stopped:
            return False
        if self.total:
            return self.seq < self.total
        return now < self.until

    def pump(self, now: float) -> None:
        if self.closed:
            return
        while True:
            if self.start < self.end:
                try:
                    n = self.sock.send(self.pview[self.start : self.end])
                except (BlockingIOError, InterruptedError):
                    self.blocked = True
                    return
                except OSError as e:
                    self.closed = f"error: {e.strerror or e}"
                    return
                self.start += n
                if self.start < self.end:
                    self.blocked = True
                    return
            self.blocked = False
            if not self.want_more(now):
                break
            n = self.batch_pkts
            if self.qos:
                n = min(n, self.window - (self.seq - self.acked()))
            if self.total:
                n = min(n, self.total - self.seq)
            if n <= 0:
                break
            t = self.tmpl
            fill_publishes(self.pbuf, 0, t.data, t.seq_off, t.pid_off, self.seq, n)
            self.start, self.end = 0, n * self.size
            self.seq += n
        if self.out:
            self.flush()
        if not self.t_done and self.done(now):
            self.t_done = now

    def done(self, now: float) -> bool:
        return not self.want_more(now) and self.start >= self.end and self.acked() >= self.seq


class Loop:
    """One epoll loop over the scenario's connections. Sockets with SO_RCVLOWAT are also read
    every ``tick`` so that the last few packets below the mark are not left waiting."""

    def __init__(self, tick: float = 0.005) -> None:
        self.sel = selectors.EpollSelector()
        self.conns: list[Conn] = []
        self.tick = tick
        self.next_tick = 0.0
        self.last_rx = 0.0

    def add(self, c: Conn) -> None:
        self.conns.append(c)
        self.update(c)

    def update(self, c: Conn) -> None:
        want = 0
        if not c.closed:
            if c.reading:
                want |= EV_R
            if c.blocked:
                want |= EV_W
        if want == c.mask:
            return
        if c.mask == 0:
            self.sel.register(c.sock, want, c)
        elif want == 0:
            self.sel.unregister(c.sock)
        else:
            self.sel.modify(c.sock, want, c)
        c.mask = want

    def step(self, timeout: float | None = None) -> float:
        now = time.monotonic()
        wait = self.tick if timeout is None else timeout
        for key, ev in self.sel.select(wait):
            c: Conn = key.data
            if ev & EV_R and c.read(now):
                self.last_rx = now
            if ev & EV_W:
                c.blocked = False
        now = time.monotonic()
        ticked = now >= self.next_tick
        if ticked:
            self.next_tick = now + self.tick
        for c in self.conns:
            if c.closed:
                self.update(c)
                continue
            if ticked and c.reading and c.read(now):
                self.last_rx = now
            if isinstance(c, Pub):
                c.pump(now)
            elif c.out and not c.blocked:
                c.flush()
            self.update(c)
        return now

    def close(self) -> None:
        for c in self.conns:
            c.close()
        self.sel.close()


# --- scenarios -------------------------------------------------------------------------------


@dataclass
class Ctx:
    """What a scenario needs to know about the broker and the run."""

    broker: Broker
    scale: float
    timeout: float
    rss_cap: int
    drain_max: float
    #: length of the timed runs of slow50_* (0: count-based runs only)
    seconds: float = 0.0
    #: the fast subscriber's steady-state rate is measured from this long after the start
    steady_after: float = 2.0
    #: timed runs of slow50_*: this many pairs (alone + with the stalled ones)
    pairs: int = 2

    @property
    def host(self) -> str:
        return self.broker.host

    @property
    def port(self) -> int:
        return self.broker.port


def n_scaled(n: int, scale: float, floor: int) -> int:
    return max(floor, int(round(n * scale)))


def stalled_sub(
    ctx: Ctx, cid: str, filters: list[str], qos: int, clean: bool = True
) -> socket.socket:
    """A subscriber that will never read again: small SO_RCVBUF before connect, subscribed."""
    sock, _ = open_client(ctx.host, ctx.port, cid, clean=clean, rcvbuf=4096)
    subscribe(sock, filters, qos)
    return sock


def reading_sub(ctx: Ctx, cid: str, filters: list[str], qos: int, npubs: int) -> Conn:
    sock, _ = open_client(ctx.host, ctx.port, cid)
    subscribe(sock, filters, qos)
    c = Conn(cid, sock, npubs, True)
    if not qos:
        # At QoS 0 wake for 32 KiB (a broker writing one packet per send would otherwise wake
        # us per message). Not at QoS 1: the broker's in-flight window may be smaller than any
        # mark we pick, and the subscriber must acknowledge as soon as packets arrive.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 32768)
    return c


def publisher(ctx: Ctx, cid: str, index: int, topic: str, qos: int, payload: int, **kw: Any) -> Pub:
    sock, _ = open_client(ctx.host, ctx.port, cid)
    return Pub(cid, sock, index, topic, qos, payload, **kw)


def status_of(ctx: Ctx, sampler: RssSampler, deadline: float, done: bool) -> str:
    if not ctx.broker.alive():
        return "broker exited"
    if sampler.over_cap:
        return "rss cap"
    if not done and time.monotonic() >= deadline:
        return "timeout"
    return "ok"


def await_marks(
    ctx: Ctx, loop: Loop, pub: Pub, conns: list[Conn], cap: float, every: float = 0.25
) -> tuple[float, bool]:
    """Send a marker from ``pub`` (once it is done) every ``every`` s until each of ``conns`` has
    received one or was closed, for at most ``cap`` s; returns (seconds, all marked).

    A marker is published after all of ``pub``'s messages, on its connection and topic, so its
    arrival means the subscriber has everything of ``pub`` the broker kept for it; it is sent
    again because a broker may drop it (a full buffer or queue). No quiet period is guessed.
    When ``pub`` is gone, falls back to waiting for 1 s without anything arriving."""
    t0 = time.monotonic()
    end = t0 + cap
    next_mark = t0
    while True:
        now = loop.step()
        left = [c for c in conns if not c.closed and not c.counter.foreign]
        if not left:
            return now - t0, True
        if now >= end or not ctx.broker.alive():
            return now - t0, False
        if pub.closed or not pub.done(now):
            # No marker can follow the messages (the publisher is gone, or stuck with
            # unacknowledged messages): a quiet second ends the wait instead.
            if now - max(loop.last_rx, t0) >= 1.0:
                return now - t0, False
        elif now >= next_mark:
            pub.mark()
            next_mark = now + every


def drain(ctx: Ctx, loop: Loop, conns: list[Conn], pub: Pub) -> tuple[float, bool]:
    """Let ``conns`` read (and acknowledge) until each has a marker from ``pub`` or was closed,
    or ``ctx.drain_max`` passed; returns (seconds, finished)."""
    for c in conns:
        c.reading = True
        if c in loop.conns:
            loop.update(c)
        else:
            loop.add(c)
    loop.last_rx = time.monotonic()
    return await_marks(ctx, loop, pub, conns, ctx.drain_max)


def read_sys_fresh(host: str, port: int, timeout: float = 10.0) -> dict[str, str] | None:
    """``$SYS/broker/#`` as the broker computed it after this call started: reads it (with its
    marker, read_sys), then again until ``bytes/received`` or ``uptime`` changed (the first read's
    own packets make the next round differ). No sleep-then-count: a new round is the marker."""
    deadline = time.monotonic() + timeout
    first = read_sys(host, port, timeout)
    if first is None:
        return None
    keys = ("bytes/received", "uptime")
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = read_sys(host, port, max(0.5, deadline - time.monotonic()))
        if now is None:
            return None
        if any(now.get(k) != first.get(k) for k in keys):
            return now
    return None


def sys_after(ctx: Ctx) -> dict[str, str] | None:
    """Fresh $SYS values (read_sys_fresh), or None once the broker is gone."""
    if not ctx.broker.alive():
        return None
    return read_sys_fresh(ctx.host, ctx.port)


def count_at(timeline: list[tuple[float, int]], t: float) -> float:
    """Messages received by time ``t`` (linear between the samples of ``timeline``)."""
    if not timeline:
        return 0.0
    if t <= timeline[0][0]:
        return float(timeline[0][1])
    for (ta, na), (tb, nb) in zip(timeline, timeline[1:], strict=False):
        if ta <= t <= tb:
            return na + (nb - na) * ((t - ta) / (tb - ta) if tb > ta else 1.0)
    return float(timeline[-1][1])


def timed_rates(
    timeline: list[tuple[float, int]], delivered: int, last: float, window: float, after: float
) -> dict[str, float | None]:
    """A fast subscriber's rates in a timed run: over the whole run (every message it got, from
    the publishers' start to its last message) and in steady state (from ``after`` s to the end
    of the publishing ``window``)."""
    whole = delivered / last if last > 0 else None
    end = min(window, timeline[-1][0]) if timeline else 0.0
    steady = None
    if end - after > 0.5:
        steady = (count_at(timeline, end) - count_at(timeline, after)) / (end - after)
    return {"whole": whole, "steady": steady, "steady_from": after, "steady_to": end}


def load_phase(
    ctx: Ctx, res: dict[str, Any], sampler: RssSampler, t_start: float, t_end: float
) -> None:
    """The broker's peak RSS so far and its RSS growth over the loaded phase [t_start, t_end]
    (seconds of ``sampler``), into ``res``."""
    res["rss_peak"] = proc_status(ctx.broker.pid, "VmHWM")
    res["rss_growth"] = sampler.growth(t_start, t_end)
    res["load_t"] = (t_start, t_end)
    res["load_s"] = t_end - t_start


def finish(ctx: Ctx, res: dict[str, Any], sampler: RssSampler) -> dict[str, Any]:
    """The end of a scenario run: stops ``sampler``, adds its RSS series, the broker's ``$SYS``
    values and its dropped counters to ``res`` and returns it."""
    sampler.stop()
    res["rss_series"] = sampler.samples
    res["sys"] = sys_after(ctx)
    res["dropped"] = dropped_counters(res["sys"])
    return res


def fanout(
    ctx: Ctx,
    tag: str,
    *,
    qos: int,
    n_slow: int,
    n_fast: int,
    n_pubs: int = 1,
    messages: int = 0,
    duration: float = 0.0,
    payload: int = 1024,
    window: int = 100,
) -> dict[str, Any]:
    """``n_pubs`` publishers on ``flow/TAG/i`` -> ``n_fast`` reading and ``n_slow`` stalled
    subscribers of ``flow/TAG/#`` at ``qos``; ``messages`` in all, or for ``duration`` s. Once the
    publishers are done, publisher 0 sends markers until the fast subscribers have one; then
    ``$SYS`` is read with the stalled subscribers still stalled; then they read until they have
    a marker (or were closed), and ``$SYS`` is read again. With several publishers the markers
    come from publisher 0 only: right at QoS 1 (every message is acknowledged, so in its queues,
    before the first marker), approximate at QoS 0."""
    res: dict[str, Any] = {"qos": qos, "slow_subs": n_slow, "fast_subs": n_fast, "pubs": n_pubs}
    res["payload"] = payload
    filt = [f"flow/{tag}/#"]
    slow = [stalled_sub(ctx, f"flow-{tag}-slow{i}", filt, qos) for i in range(n_slow)]
    loop = Loop()
    fast = [reading_sub(ctx, f"flow-{tag}-fast{i}", filt, qos, n_pubs) for i in range(n_fast)]
    slow_conns = [Conn(f"flow-{tag}-slow{i}", s, n_pubs, False) for i, s in enumerate(slow)]
    sampler = RssSampler(ctx.broker.pid, cap=ctx.rss_cap)
    try:
        per = messages // n_pubs if messages else 0
        pubs = [
            publisher(
                ctx,
                f"flow-{tag}-pub{i}",
                i,
                f"flow/{tag}/{i}",
                qos,
                payload,
                total=per,
                window=window,
            )
            for i in range(n_pubs)
        ]
        # The stalled ones join the loop when they read again: 50 idle connections in it would
        # slow this process's loop down, and with it the fast subscriber's measured rate.
        for c in [*fast, *pubs]:
            loop.add(c)
        cpu0 = cpu_seconds(ctx.broker.pid), cpu_seconds()
        t0 = time.monotonic()
        if duration:
            for p in pubs:
                p.until = t0 + duration
        t_start = t0 - sampler.t0
        deadline = t0 + ctx.timeout
        timeline: list[tuple[float, int]] = [(0.0, 0)]
        next_sample = t0 + 0.05
        finished = False
        while True:
            now = loop.step()
            if fast and now >= next_sample:
                timeline.append((now - t0, fast[0].counter.messages))
                next_sample = now + 0.05
            if all(p.done(now) or p.closed for p in pubs):
                finished = True
                break
            if now >= deadline or sampler.over_cap or not ctx.broker.alive():
                break
        for p in pubs:
            p.stopped = True
        res["publish_s"] = (
            (max(p.t_done for p in pubs) - t0) if all(p.t_done for p in pubs) else None
        )
        if finished and fast:
            # Until the fast subscribers have everything the broker kept for them.
            _s, finished = await_marks(ctx, loop, pubs[0], fast, max(1.0, deadline - now))
        if fast:
            timeline.append((time.monotonic() - t0, fast[0].counter.messages))
        cpu1 = cpu_seconds(ctx.broker.pid), cpu_seconds()
        wall = time.monotonic() - t0
        if cpu0[0] is not None and cpu1[0] is not None and wall > 0:
            # Share of one CPU each side used in the loaded phase: near 100 % on the client's
            # side, the client and not the broker may set the rates.
            res["cpu"] = {
                "broker": (cpu1[0] - cpu0[0]) / wall,
                "client": (cpu1[1] - cpu0[1]) / wall,
            }
        t_end = time.monotonic() - sampler.t0
        res["status"] = status_of(ctx, sampler, deadline, finished)
        load_phase(ctx, res, sampler, t_start, t_end)
        published = sum(p.sent() for p in pubs)
        res["published"] = published
        res["acked"] = sum(p.acked() for p in pubs)
        res["publish_bytes"] = published * payload
        res["pubs_closed"] = [p.closed for p in pubs if p.closed]
        if fast:
            f = fast[0]
            res["fast"] = {
                "delivered": f.counter.messages,
                "reordered_or_dup": sum(f.counter.reordered_list()),
                "gaps": sum(f.counter.gaps_list()),
                "next_seq": f.counter.next_seq_list(),
                "rate": f.rate(),
                "closed": f.closed,
            }
            if duration:
                res["fast"]["timed"] = timed_rates(
                    timeline,
                    f.counter.messages,
                    (f.last_msg - t0) if f.last_msg else 0.0,
                    duration,
                    ctx.steady_after,
                )
                res["fast"]["timeline"] = timeline
        if slow_conns and ctx.broker.alive() and res["status"] != "rss cap":
            # What the broker holds with the subscribers still stalled (or cut).
            res["sys_stalled"] = sys_after(ctx)
            drain_s, complete = drain(ctx, loop, slow_conns, pubs[0])
            got = [c.counter.messages for c in slow_conns]
            res["slow"] = {
                "delivered_total": sum(got),
                "delivered_min": min(got),
                "delivered_max": max(got),
                "drain_s": drain_s,
                "drain_complete": complete,
                "closed_by_broker": sum(1 for c in slow_conns if c.closed),
            }
        return finish(ctx, res, sampler)
    finally:
        sampler.stop()
        loop.close()
        for s in slow:
            s.close()


def sc_slow1_q1(ctx: Ctx) -> dict[str, Any]:
    n = n_scaled(100_000, ctx.scale, 2_000)
    return fanout(ctx, "s1", qos=1, n_slow=1, n_fast=0, messages=n)


def _slow50(ctx: Ctx, qos: int) -> dict[str, Any]:
    """Count-based: ``n`` messages with the fast subscriber alone, then with 50 stalled ones.
    Timed (``ctx.seconds``): the publisher goes as fast as the broker lets it for that long,
    alone and then with 50 stalled ones; the fast subscriber's rate over the whole run and from
    ``ctx.steady_after`` s to the end (a start-up effect, such as the slow-subscriber timeout,
    dominates a run of half a second)."""
    keep = ("status", "published", "acked", "publish_s", "fast", "rss_peak", "load_s", "cpu")
    n = n_scaled(100_000, ctx.scale, 2_000)
    alone = fanout(ctx, f"a{qos}", qos=qos, n_slow=0, n_fast=1, messages=n)
    res = fanout(ctx, f"s50q{qos}", qos=qos, n_slow=50, n_fast=1, messages=n)
    res["alone"] = {k: alone.get(k) for k in keep}
    if ctx.seconds and ctx.pairs and ctx.broker.alive():
        # Pairs in the order alone, with, with, alone, ...: a broker (or machine) whose speed
        # drifts from run to run (+-10 % here) weighs on both sides alike.
        order: list[bool] = []
        for i in range(ctx.pairs):
            order += [False, True] if i % 2 == 0 else [True, False]
        runs: list[dict[str, Any]] = []
        first_with: dict[str, Any] | None = None
        for i, stalled in enumerate(order):
            if not ctx.broker.alive():
                break
            tag = f"t{i}{'s50' if stalled else 'a'}q{qos}"
            r = fanout(
                ctx, tag, qos=qos, n_slow=50 if stalled else 0, n_fast=1, duration=ctx.seconds
            )
            runs.append({"stalled": stalled, **{k: r.get(k) for k in keep}})
            if stalled and first_with is None:
                first_with = r
            if r.get("status") != "ok" and res.get("status") == "ok":
                res["status"] = f"{r.get('status')} (timed run)"
        res["timed"] = {"seconds": ctx.seconds, "runs": runs}
        if first_with is not None:
            res["timed"]["with"] = {
                k: first_with.get(k) for k in (*keep, "slow", "sys_stalled", "dropped")
            }
            # The timed run is the long one: it says whether the RSS stays flat.
            res["rss_growth"] = first_with.get("rss_growth")
            res["load_s"] = first_with.get("load_s")
            res["rss_series_timed"] = first_with.get("rss_series")
    # The peak of the whole scenario (every run), as for Mosquitto.
    res["rss_peak"] = proc_status(ctx.broker.pid, "VmHWM") or res.get("rss_peak")
    return res


def sc_slow50_q0(ctx: Ctx) -> dict[str, Any]:
    return _slow50(ctx, 0)


def sc_slow50_q1(ctx: Ctx) -> dict[str, Any]:
    return _slow50(ctx, 1)


def sc_big64k(ctx: Ctx) -> dict[str, Any]:
    d = max(3.0, 60.0 * ctx.scale)
    return fanout(ctx, "big", qos=1, n_slow=4, n_fast=0, n_pubs=4, duration=d, payload=65536)


def sc_window20(ctx: Ctx) -> dict[str, Any]:
    n = n_scaled(100_000, ctx.scale, 2_000)
    return fanout(ctx, "w", qos=1, n_slow=0, n_fast=1, messages=n)


PINGREQ = b"\xc0\x00"


def wait_for(ctx: Ctx, loop: Loop, cond: Callable[[], bool], cap: float) -> bool:
    """Step the loop until ``cond()`` or ``cap`` s passed (or the broker is gone)."""
    end = time.monotonic() + cap
    while not cond():
        if loop.step() >= end or not ctx.broker.alive():
            return cond()
    return True


def offline_run(
    ctx: Ctx, n_online: int, n_offline: int, *, cid: str = "flow-offline-sub", payload: int = 1024
) -> dict[str, Any]:
    """A clean_session=0 QoS 1 subscriber of ``flow/off/#`` that stops reading while
    ``n_online`` messages are published, leaves (DISCONNECT, then a socket with unread data:
    reset), ``n_offline`` more are published, and it comes back without acknowledging anything
    until it has seen what the broker sends at once: two PINGREQ round trips on its connection,
    with a ``$SYS`` read by another client between them (the broker has been through many loop
    iterations). Then it acknowledges and reads until a marker of the publisher, sent after
    everything, arrives: what the broker kept for it. ``$SYS`` is read (fresh) while it is away,
    once the broker counts it as disconnected."""
    res: dict[str, Any] = {"published_online": n_online, "published_offline": n_offline}
    filt = ["flow/off/#"]
    # Start from an empty session, then make it persistent.
    s, _ = open_client(ctx.host, ctx.port, cid, clean=True)
    s.sendall(mqtt.encode_disconnect())
    s.close()
    stalled = stalled_sub(ctx, cid, filt, 1, clean=False)
    loop = Loop()
    sampler = RssSampler(ctx.broker.pid, cap=ctx.rss_cap)
    try:
        t_start = time.monotonic() - sampler.t0
        deadline = time.monotonic() + ctx.timeout
        pub = publisher(ctx, "flow-off-pub", 0, "flow/off/0", 1, payload, total=n_online)
        loop.add(pub)
        t0 = time.monotonic()
        done = wait_for(
            ctx, loop, lambda: pub.done(time.monotonic()) or bool(pub.closed), deadline - t0
        )
        # Leave without reading: DISCONNECT then close (unread data makes it a reset).
        try:
            stalled.send(mqtt.encode_disconnect())
        except OSError:
            pass
        stalled.close()
        # Until the broker counts the session as away (its $SYS says so: no guessed sleep).
        while ctx.broker.alive() and time.monotonic() < deadline:
            away = sys_int(read_sys_fresh(ctx.host, ctx.port), "clients/disconnected")
            if away:
                break
        pub.total, pub.t_done = n_online + n_offline, 0.0
        done = done and wait_for(
            ctx,
            loop,
            lambda: pub.done(time.monotonic()) or bool(pub.closed),
            deadline - time.monotonic(),
        )
        res["publish_s"] = time.monotonic() - t0
        res["published"] = pub.sent()
        res["acked"] = pub.acked()
        res["status"] = status_of(ctx, sampler, deadline, done and not pub.closed)
        values = sys_after(ctx)
        res["sys_offline"] = values
        res["stored_while_offline"] = sys_int(values, "store/messages/count")
        res["rss_offline"] = proc_status(ctx.broker.pid, "VmRSS")
        if res["status"] == "ok":
            sock, present = open_client(ctx.host, ctx.port, cid, clean=False)
            res["session_present"] = present
            back = Conn(cid, sock, 1, True)
            back.hold_acks = True
            loop.add(back)
            back.out += PINGREQ
            back.flush()
            ok = wait_for(ctx, loop, lambda: back.counter.pingresp >= 1, 10.0)
            read_sys(ctx.host, ctx.port)
            back.out += PINGREQ
            back.flush()
            ok = ok and wait_for(ctx, loop, lambda: back.counter.pingresp >= 2, 10.0)
            res["resend_marked"] = ok
            res["resend_burst_msgs"] = back.counter.messages
            res["resend_burst_bytes"] = back.nbytes
            back.release_acks()
            drain_s, complete = await_marks(ctx, loop, pub, [back], ctx.drain_max)
            res["held"] = back.counter.messages
            res["held_reordered_or_dup"] = sum(back.counter.reordered_list())
            res["held_drain_s"] = drain_s
            res["held_drain_complete"] = complete
            res["held_closed"] = back.closed
        load_phase(ctx, res, sampler, t_start, time.monotonic() - sampler.t0)
        return finish(ctx, res, sampler)
    finally:
        sampler.stop()
        loop.close()
        stalled.close()


def sc_offline(ctx: Ctx) -> dict[str, Any]:
    n = n_scaled(50_000, ctx.scale, 1_000)
    return offline_run(ctx, n, n)


def sc_burst(ctx: Ctx) -> dict[str, Any]:
    return burst_run(ctx, n_scaled(10_000, ctx.scale, 200))


def burst_run(ctx: Ctx, nf: int, npub: int = 200, levels: int = 100) -> dict[str, Any]:
    """``nf`` filters of ``levels`` levels (``a`` or ``+``) from one client, then ``npub``
    PUBLISH to ``a/a/.../a`` in one write; how long new clients wait for CONNACK + PINGRESP
    meanwhile (one after the other until the burst client has every copy)."""
    rng = random.Random(12)
    filters: set[str] = set()
    while len(filters) < nf:
        filters.add("/".join(rng.choice("a+") for _ in range(levels)))
    flist = sorted(filters)
    res: dict[str, Any] = {"filters": nf, "levels": levels, "publishes": npub}
    sampler = RssSampler(ctx.broker.pid, cap=ctx.rss_cap)
    sock, _ = open_client(ctx.host, ctx.port, "flow-burst", timeout=ctx.timeout)
    try:
        t0 = time.monotonic()
        deadline = t0 + ctx.timeout
        per = 50
        chunks = [flist[i : i + per] for i in range(0, nf, per)]
        for i, chunk in enumerate(chunks):
            sock.sendall(mqtt.encode_subscribe(i + 1, chunk, 0))
        acks = 0
        while acks < len(chunks):
            first, _body = recv_packet(sock, deadline)
            acks += first >> 4 == 9
        res["subscribe_s"] = time.monotonic() - t0
        topic = "/".join(["a"] * levels)
        burst = b"".join(
            encode_publish(topic, struct.pack(">IQ", 0, i) + b"x" * 4) for i in range(npub)
        )
        counter = FrameCounter(1, 4, True)
        got: dict[str, float] = {}

        def reader() -> None:
            buf = bytearray(1 << 20)
            have = 0
            sock.settimeout(0.5)
            quiet_since = time.monotonic()
            while time.monotonic() < deadline:
                try:
                    n = sock.recv_into(memoryview(buf)[have:])
                except TimeoutError:
                    if counter.messages >= npub and time.monotonic() - quiet_since > 1.0:
                        return
                    continue
                except OSError:
                    return
                if not n:
                    return
                quiet_since = time.monotonic()
                have = counter.feed(buf, have + n)
                if counter.messages and "first" not in got:
                    got["first"] = quiet_since
                if counter.messages >= npub and "all" not in got:
                    got["all"] = quiet_since
                got["last"] = quiet_since

        t_burst = time.monotonic()
        sock.sendall(burst)
        th = threading.Thread(target=reader, daemon=True)
        th.start()
        time.sleep(0.05)
        # New clients one after the other for as long as the burst is being delivered: the
        # first one's wait and the worst.
        probes: list[float] = []
        probe_ends: list[float] = []
        while not probes or (th.is_alive() and "all" not in got and time.monotonic() < deadline):
            t_probe = time.monotonic()
            try:
                probe, _ = open_client(
                    ctx.host, ctx.port, f"flow-burst-probe{len(probes)}", timeout=ctx.timeout
                )
                probe.sendall(b"\xc0\x00")  # PINGREQ
                while True:
                    first, _ = recv_packet(probe, t_probe + ctx.timeout)
                    if first >> 4 == 13:
                        break
                probes.append(time.monotonic() - t_probe)
                probe_ends.append(time.monotonic() - t_burst)
                probe.sendall(mqtt.encode_disconnect())
                probe.close()
            except (OSError, FlowError) as e:
                res["probe_error"] = str(e)
                break
            time.sleep(0.02)
        res["probe_s"] = probes[0] if probes else None
        res["probe_max_s"] = max(probes) if probes else None
        res["probes"] = len(probes)
        res["probe_ends_s"] = probe_ends
        th.join(max(0.0, deadline - time.monotonic()) + 1)
        res["delivered"] = counter.messages
        res["deliveries_s"] = got["all"] - t_burst if "all" in got else None
        res["last_delivery_s"] = got["last"] - t_burst if "last" in got else None
        res["status"] = "ok" if res["probe_s"] is not None else "timeout"
        if not ctx.broker.alive():
            res["status"] = "broker exited"
        res["rss_peak"] = proc_status(ctx.broker.pid, "VmHWM")
        return finish(ctx, res, sampler)
    finally:
        sampler.stop()
        sock.close()


@dataclass
class Scenario:
    key: str
    title: str
    run: Callable[[Ctx], dict[str, Any]]
    mqttd_args: tuple[str, ...] = ()
    #: (sessions that can fill up: stalled subscribers or an offline session, their QoS, the
    #: bytes of one message: payload + topic): what mqttd's configured limits let it hold
    fill: tuple[int, int, int] = (0, 1, 0)


def mqttd_limits(mqttd_args: list[str]) -> dict[str, int]:
    """mqttd's per-session limits: the defaults of ``BrokerConfig()``, then the flags in
    ``mqttd_args`` (the last one wins, as in mqttd's parser). A ``--config`` file or ``MQTTD_*``
    variables are not read."""
    cfg = BrokerConfig()
    return {
        name: flag_value(mqttd_args, flag, int(getattr(cfg, name)))
        for name, flag in LIMIT_FLAGS.items()
    }


def limits_allowance(fill: tuple[int, int, int], limits: dict[str, int]) -> int:
    """Bytes the configured limits let mqttd hold for ``fill``'s sessions, each as if nothing
    were shared: the queue (``max_queued_bytes``; ``max_queued_messages`` x the message when
    there is no byte limit), the in-flight window (``max_inflight`` x the message), and at QoS 0
    the buffer of a client that stopped reading (``max_buffer``). The window is also bounded in
    bytes (``max_inflight_bytes``, one message beyond it)."""
    sessions, qos, size = fill
    queue = limits["max_queued_bytes"] or limits["max_queued_messages"] * size
    window = limits["max_inflight"] * size
    if limits["max_inflight_bytes"]:
        window = min(window, limits["max_inflight_bytes"] + size)
    per = queue + window + (limits["max_buffer"] if qos == 0 else 0)
    return sessions * per


SCENARIOS = [
    Scenario(
        "slow1_q1",
        "1 subscriber at QoS 1 that stops reading, {n} x 1 KB",
        sc_slow1_q1,
        fill=(1, 1, 1024 + len("flow/s1/0")),
    ),
    Scenario(
        "slow50_q0",
        "50 subscribers that stop reading + 1 fast, QoS 0, {n} x 1 KB; and {s:g} s runs",
        sc_slow50_q0,
        fill=(50, 0, 1024 + len("flow/ts50q0/0")),
    ),
    Scenario(
        "slow50_q1",
        "50 subscribers that stop reading + 1 fast, QoS 1, {n} x 1 KB; and {s:g} s runs",
        sc_slow50_q1,
        fill=(50, 1, 1024 + len("flow/ts50q1/0")),
    ),
    Scenario(
        "big64k",
        "4 QoS 1 subscribers that stop reading, 4 publishers of 64 KB for {d:g} s",
        sc_big64k,
        fill=(4, 1, 65536 + len("flow/big/0")),
    ),
    Scenario(
        "window20",
        "1 fast QoS 1 subscriber, mqttd --max-inflight {w} (Mosquitto 20), {n} x 1 KB",
        sc_window20,
        ("--max-inflight", "20"),
    ),
    Scenario(
        "offline",
        "persistent QoS 1 session that stops reading, leaves, returns",
        sc_offline,
        fill=(1, 1, 1024 + len("flow/off/0")),
    ),
    Scenario("burst", "{f} filters of 100 levels, 200 PUBLISH in one write, new client", sc_burst),
]


def run_scenario(sc: Scenario, which: str, args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    """Fresh broker, the scenario, broker stopped; errors become the result's status."""
    if which == "mqttd":
        extra = [*MQTTD_BASE_ARGS, *sc.mqttd_args, *shlex.split(args.mqttd_args)]
        broker = start_mqttd(extra)
    else:
        extra = []
        broker = start_mosquitto(args.mosquitto, tmp)
    ctx = Ctx(
        broker,
        args.scale,
        args.timeout,
        int(args.rss_cap_mb * MiB),
        args.drain_max,
        seconds=args.seconds,
        steady_after=args.steady_after,
        pairs=args.pairs,
    )
    baseline = proc_status(broker.pid, "VmRSS")
    t0 = time.monotonic()
    try:
        res = sc.run(ctx)
    except (FlowError, OSError) as e:
        res = {"status": f"error: {e}"}
    res["rss_baseline"] = baseline
    if which == "mqttd":
        limits = mqttd_limits(extra)
        res["limits"] = limits
        res["limits_bytes"] = limits_allowance(sc.fill, limits)
    res["seconds"] = time.monotonic() - t0
    res["broker_args"] = extra
    alive = broker.alive()
    rc = broker.stop()
    if not alive:
        res["status"] = "broker exited"
        res["broker_exit"] = rc
        res["broker_tail"] = broker.tail()
    elif which == "mqttd" and rc not in (0, None):
        res["broker_exit"] = rc
        res["broker_tail"] = broker.tail()
    if which == "mqttd" and broker.n_errors:
        res["broker_errors"] = broker.errors
        res["broker_n_errors"] = broker.n_errors
        res["broker_tail"] = broker.tail(40)
    return res


# --- report ----------------------------------------------------------------------------------


def mb(v: int | float | None) -> str:
    if v is None:
        return "n/a"
    if abs(v) >= 1024 * MiB:
        return f"{v / (1024 * MiB):.2f} GiB"
    if 0 < abs(v) < MiB:
        return f"{v / 1024:.1f} KiB"
    return f"{v / MiB:.1f} MiB"


def num(v: int | float | None) -> str:
    return "n/a" if v is None else f"{v:,.0f}"


def secs(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f} s"


def drops(r: dict[str, Any]) -> str:
    d = r.get("dropped") or {}
    if not d:
        return "n/a" if r.get("sys") is None else "0"
    parts = ", ".join(f"{k} {v:,}" for k, v in sorted(d.items()) if v and k != "total")
    return num(d.get("total")) + (f" ({parts})" if parts else "")


def pub_line(r: dict[str, Any]) -> str:
    n, s, acked = r.get("published"), r.get("publish_s"), r.get("acked")
    if n is None:
        return "n/a"
    if acked is not None and acked < n:
        return f"{n:,} sent, {acked:,} acknowledged (publishers stuck)"
    if s:
        return f"{n:,} in {s:.2f} s ({n / s:,.0f}/s)"
    return f"{n:,}"


def flat(r: dict[str, Any]) -> tuple[str, bool | None]:
    """Growth from a third of the loaded phase to its end; "flat" within 5 MiB (or 5 % of the
    peak); not judged when the loaded phase was under 3 s (it is all warm-up then)."""
    g, peak = r.get("rss_growth"), r.get("rss_peak")
    if g is None:
        return "n/a", None
    text = ("+" if g >= 0 else "") + mb(g)
    if (r.get("load_s") or 0) < 3.0:
        return text + f" (load phase {r.get('load_s') or 0:.1f} s: not judged)", None
    ok = g <= max(5 * MiB, 0.05 * (peak or 0))
    return text + (" (flat)" if ok else " (grows)"), ok


def pct(a: float | None, b: float | None) -> str:
    return "n/a" if not a or not b else f"{a / b:.0%}"


def rate(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.0f}"


def timed_rates_of(r: dict[str, Any], stalled: bool, which: str) -> list[float]:
    """The fast subscriber's ``which`` ("steady" or "whole") rate in each timed run with (or
    without) the stalled subscribers."""
    out = []
    for run in (r.get("timed") or {}).get("runs") or []:
        v = (((run.get("fast") or {}).get("timed")) or {}).get(which)
        if run.get("stalled") == stalled and v is not None:
            out.append(v)
    return out


def timed_pair(r: dict[str, Any], which: str) -> tuple[float | None, float | None]:
    """(with 50 stalled, alone): the mean of the fast subscriber's ``which`` rate over the timed
    runs of each kind."""

    def mean(v: list[float]) -> float | None:
        return sum(v) / len(v) if v else None

    return mean(timed_rates_of(r, True, which)), mean(timed_rates_of(r, False, which))


def cpu_pair(r: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean CPU shares (broker, client) of the timed runs: (with 50 stalled, alone)."""
    out = []
    for stalled in (True, False):
        runs = [
            x["cpu"]
            for x in (r.get("timed") or {}).get("runs") or []
            if x.get("stalled") == stalled and x.get("cpu")
        ]
        out.append(
            {k: sum(c[k] for c in runs) / len(runs) for k in ("broker", "client")} if runs else {}
        )
    return out[0], out[1]


def sys_stalled_line(r: dict[str, Any]) -> str | None:
    v = r.get("sys_stalled")
    if v is None:
        return None
    parts = [f"store/messages/count {num(sys_int(v, 'store/messages/count'))}"]
    for key in ("flow/bytes/held", "flow/sessions/slow", "flow/sessions/disconnected"):
        n = sys_int(v, key)
        if n is not None:
            parts.append(f"{key} {mb(n) if 'bytes' in key else num(n)}")
    return ", ".join(parts)


def rows_for(key: str, r: dict[str, Any]) -> list[tuple[str, str]]:
    """(metric, value) lines of one scenario's result for one broker."""
    out: list[tuple[str, str]] = [("status", r.get("status", "n/a"))]
    out.append(("RSS peak (VmHWM)", mb(r.get("rss_peak"))))
    base = r.get("rss_baseline")
    out.append(("RSS at broker start (baseline)", mb(base)))
    if base and r.get("rss_peak"):
        out.append(("RSS peak - baseline", mb(r["rss_peak"] - base)))
    if key != "burst":
        out.append(("RSS growth, 1/3 of the load -> end", flat(r)[0]))
    if key in ("slow1_q1", "slow50_q0", "slow50_q1", "big64k", "window20"):
        out.append(("published", pub_line(r)))
        if key == "big64k":
            out.append(("published bytes", mb(r.get("publish_bytes"))))
    if "fast" in r:
        f = r["fast"]
        pub = r.get("published") or 0
        text = f"{f['delivered']:,} / {pub - f['delivered']:,}"
        if f.get("reordered_or_dup"):
            text += f" ({f['reordered_or_dup']:,} out of order or duplicated)"
        out.append(("fast subscriber: delivered / lost", text))
        out.append(("fast subscriber rate", f"{f['rate']:,.0f} msg/s"))
        alone = (r.get("alone") or {}).get("fast")
        if alone:
            out.append(
                (
                    "fast subscriber rate alone (separate run)",
                    f"{alone['rate']:,.0f} msg/s ({pct(f['rate'], alone['rate'])} kept)",
                )
            )
        if f.get("closed"):
            out.append(("fast subscriber closed", f["closed"]))
    t = r.get("timed")
    if t:
        d = t["seconds"]
        w = t.get("with") or {}
        steady = timed_pair(r, "steady")
        whole = timed_pair(r, "whole")
        ft = (t.get("with") or {}).get("fast") or {}
        after = (ft.get("timed") or {}).get("steady_from", 2.0)
        out.append(
            (
                f"{d:g} s runs: mean fast rate with 50 stalled / alone, steady ({after:g} s -> end)",
                f"{rate(steady[0])} / {rate(steady[1])} msg/s ({pct(*steady)})",
            )
        )
        out.append(
            (
                f"{d:g} s runs: mean fast rate with 50 stalled / alone, whole run",
                f"{rate(whole[0])} / {rate(whole[1])} msg/s ({pct(*whole)})",
            )
        )
        each = ", ".join(
            ("with " if run.get("stalled") else "alone ")
            + rate((((run.get("fast") or {}).get("timed")) or {}).get("steady"))
            for run in t.get("runs") or []
        )
        out.append((f"{d:g} s runs in order: steady rate", each))
        cw, ca = cpu_pair(r)
        if cw and ca:
            out.append(
                (
                    f"{d:g} s runs: mean CPU of broker / flow.py, with 50 stalled; alone",
                    f"{cw['broker']:.0%} / {cw['client']:.0%}; {ca['broker']:.0%} / "
                    f"{ca['client']:.0%}",
                )
            )
        lost = (w.get("published") or 0) - (ft.get("delivered") or 0)
        text = f"{num(w.get('published'))} published, fast subscriber lost {num(lost)}"
        if w.get("acked") is not None and w.get("published") and w["acked"] < w["published"]:
            text += f", {w['acked']:,} acknowledged (publisher stuck)"
        if w.get("status") != "ok":
            text += f" [{w.get('status')}]"
        out.append((f"first {d:g} s run with 50 stalled", text))
    stalled = sys_stalled_line(r)
    if stalled:
        out.append(("$SYS with the subscribers stalled", stalled))
    if "slow" in r:
        s = r["slow"]
        n = r.get("slow_subs", 1)
        pub = r.get("published") or 0
        what = "stalled subscriber" if n == 1 else f"{n} stalled subscribers, per sub min-max"
        val = (
            f"{s['delivered_min']:,}"
            if n == 1
            else f"{s['delivered_min']:,}-{s['delivered_max']:,}"
        )
        val += f" of {pub:,}"
        if not s["drain_complete"]:
            val += f" (still arriving after {s['drain_s']:.0f} s)"
        out.append((f"{what}: delivered once it read again", val))
        if s["closed_by_broker"]:
            out.append(("stalled subscribers closed by the broker", str(s["closed_by_broker"])))
    if key == "offline":
        out.append(("published online + offline", pub_line(r)))
        out.append(("$SYS store/messages/count while offline", num(r.get("stored_while_offline"))))
        held = num(r.get("held"))
        if r.get("held") is not None and not r.get("held_drain_complete"):
            held += " (no marker: " + (r.get("held_closed") or "timed out") + ")"
        out.append(("messages the session got back", held))
        if "resend_burst_msgs" in r:
            out.append(
                (
                    "sent at once on return (before any PUBACK)",
                    f"{r['resend_burst_msgs']:,} msgs, {mb(r['resend_burst_bytes'])}",
                ),
            )
    if key == "burst":
        out.append(("subscribe time", secs(r.get("subscribe_s"))))
        out.append(("new client: CONNECT + PINGREQ answered in", secs(r.get("probe_s"))))
        if r.get("probes"):
            out.append(
                (
                    "worst new client while the burst is delivered",
                    f"{secs(r.get('probe_max_s'))} ({r['probes']} clients)",
                )
            )
        out.append(("burst client: all 200 copies after", secs(r.get("deliveries_s"))))
        out.append(("burst client: messages received", num(r.get("delivered"))))
    out.append(("dropped ($SYS publish/messages/dropped)", drops(r)))
    if r.get("broker_exit") not in (None, 0):
        out.append(("broker exit status", str(r["broker_exit"])))
    if r.get("broker_n_errors"):
        first = (r.get("broker_errors") or [""])[0].strip().replace("|", "/")[:100]
        out.append(("broker errors in its log", f"{r['broker_n_errors']} lines, first: {first}"))
    return out


def goals(key: str, res: dict[str, dict[str, Any]], args: argparse.Namespace) -> dict[str, str]:
    """metric -> goal text with pass/MISS for mqttd, where the goal can be checked."""
    q = res.get("mqttd") or {}
    o = res.get("mosquitto") or {}
    out: dict[str, str] = {}

    def verdict(ok: bool) -> str:
        return "pass" if ok else "MISS"

    allow = (q.get("limits_bytes") or 0) + int(args.rss_allowance_mb * MiB)
    if q.get("rss_peak") and o.get("rss_peak"):
        limit = 2 * o["rss_peak"] + allow
        ok = q["rss_peak"] <= limit
        out["RSS peak (VmHWM)"] = (
            f"<= 2 x {mb(o['rss_peak'])} + {mb(allow)} limits = {mb(limit)}: {verdict(ok)}"
        )
    if q.get("limits_bytes") and q.get("rss_peak") and q.get("rss_baseline"):
        ok = q["rss_peak"] - q["rss_baseline"] <= allow
        out["RSS peak - baseline"] = f"<= {mb(allow)} limits: {verdict(ok)}"
    fl = flat(q)[1] if q else None
    if fl is not None and key != "burst":
        out["RSS growth, 1/3 of the load -> end"] = "flat: " + verdict(fl)
    t = q.get("timed")
    if key == "slow50_q1" and t:
        w, a = timed_pair(q, "steady")
        metric = next(m for m, _v in rows_for(key, q) if m.endswith("-> end)"))
        if w is not None and a:
            out[metric] = f">= 90 %: {verdict(w >= 0.9 * a)}"
        else:
            out[metric] = ">= 90 %: MISS (not measured)"
    f = q.get("fast")
    if key == "window20" and f:
        ok = f["delivered"] >= (q.get("published") or 0)
        out["fast subscriber: delivered / lost"] = f"0 lost: {verdict(ok)}"
    if key == "burst" and "probe_s" in q:
        ok = q["probe_s"] is not None and q["probe_s"] <= 0.6
        out["new client: CONNECT + PINGREQ answered in"] = f"<= 0.6 s: {verdict(ok)}"
        if q.get("probes"):
            ok = q["probe_max_s"] is not None and q["probe_max_s"] <= 0.6
            out["worst new client while the burst is delivered"] = f"<= 0.6 s: {verdict(ok)}"
    if key == "offline" and q.get("held") is not None:
        lim = q.get("limits") or mqttd_limits([])
        cap = lim["max_queued_messages"] + lim["max_inflight"]
        ok = q["held"] <= cap
        out["messages the session got back"] = (
            f"<= {lim['max_queued_messages']:,} queued + {lim['max_inflight']} in flight: "
            + verdict(ok)
        )
        if "resend_burst_msgs" in q:
            ok = q["resend_burst_msgs"] <= lim["max_inflight"]
            out["sent at once on return (before any PUBACK)"] = (
                f"<= {lim['max_inflight']} (the window): {verdict(ok)}"
            )
    return out


def title_of(sc: Scenario, args: argparse.Namespace) -> str:
    n = n_scaled(100_000, args.scale, 2_000)
    lim = mqttd_limits([*sc.mqttd_args, *shlex.split(args.mqttd_args)])
    return sc.title.format(
        n=f"{n:,}",
        d=max(3.0, 60.0 * args.scale),
        f=f"{n_scaled(10_000, args.scale, 200):,}",
        w=lim["max_inflight"],
        s=args.seconds,
    )


def table(results: dict[str, dict[str, dict[str, Any]]], args: argparse.Namespace) -> str:
    brokers = [b for b in ("mosquitto", "mqttd") if any(b in r for r in results.values())]
    head = [
        "scenario",
        "metric",
        *[("Mosquitto" if b == "mosquitto" else "mqttd") for b in brokers],
        "goal (mqttd)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for sc in SCENARIOS:
        if sc.key not in results:
            continue
        per = {
            b: dict(rows_for(sc.key, results[sc.key][b])) for b in brokers if b in results[sc.key]
        }
        metrics: list[str] = []
        for b in brokers:
            for m in per.get(b, {}):
                if m not in metrics:
                    metrics.append(m)
        g = goals(sc.key, results[sc.key], args)
        for i, m in enumerate(metrics):
            first = f"**{sc.key}**: {title_of(sc, args)}" if i == 0 else ""
            cells = [per.get(b, {}).get(m, "") for b in brokers]
            lines.append("| " + " | ".join([first, m, *cells, g.get(m, "")]) + " |")
    return "\n".join(lines)


def flag_value(mqttd_args: str | list[str], flag: str, default: int) -> int:
    """The last value of ``flag`` in mqttd's arguments (as its parser takes them), or
    ``default``."""
    parts = shlex.split(mqttd_args) if isinstance(mqttd_args, str) else list(mqttd_args)
    value = default
    for i, p in enumerate(parts):
        if p == flag and i + 1 < len(parts):
            value = int(parts[i + 1])
        elif p.startswith(flag + "="):
            value = int(p.split("=", 1)[1])
    return value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    keys = [s.key for s in SCENARIOS]
    ap.add_argument(
        "--only",
        type=lambda s: [x for x in s.split(",") if x],
        default=[],
        help="comma-separated scenarios: " + ",".join(keys),
    )
    ap.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply message counts, filter counts and durations (0.1: about 3 minutes)",
    )
    ap.add_argument("--json", metavar="PATH", help="write every figure, RSS series included")
    ap.add_argument(
        "--mqttd-args",
        default="",
        help='extra mqttd options, after the scenario\'s: --mqttd-args="--max-inflight 20"',
    )
    ap.add_argument("--no-mosquitto", action="store_true", help="run mqttd only")
    ap.add_argument(
        "--mosquitto", default=None, help="Mosquitto binary (default: found on PATH or /usr/sbin)"
    )
    ap.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="cap of each loaded phase, s (default 120 x scale, at least 30)",
    )
    ap.add_argument("--drain-max", type=float, default=30.0, help="cap of each drain phase, s")
    ap.add_argument(
        "--rss-cap-mb",
        type=float,
        default=10240.0,
        help="cut a scenario short when the broker's RSS passes this (MiB)",
    )
    ap.add_argument(
        "--rss-allowance-mb",
        type=float,
        default=0.0,
        help="added to the RSS goal, after 2 x Mosquitto's peak and mqttd's configured limits "
        "(computed per scenario from BrokerConfig() and --mqttd-args)",
    )
    ap.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="length of the timed runs of slow50_q0/slow50_q1, s (default 10 x scale, at least "
        "5; 0: count-based runs only)",
    )
    ap.add_argument(
        "--pairs",
        type=int,
        default=2,
        help="pairs of timed runs (alone, with the stalled ones; in the order A B B A ...) "
        "whose mean rates are compared (default 2)",
    )
    ap.add_argument(
        "--steady-after",
        type=float,
        default=2.0,
        help="the steady-state rate of a timed run counts from this long after its start, s",
    )
    args = ap.parse_args(argv)
    if args.timeout is None:
        args.timeout = max(30.0, 120.0 * args.scale)
    bad = [k for k in args.only if k not in keys]
    if bad:
        ap.error(f"unknown scenario(s) {bad}; known: {', '.join(keys)}")
    if args.seconds is None:
        args.seconds = max(5.0, 10.0 * args.scale)
    if args.seconds and args.seconds - args.steady_after < 1.0:
        ap.error("--seconds must be at least 1 s more than --steady-after")
    try:
        mqttd_limits(shlex.split(args.mqttd_args))
    except ValueError:
        ap.error(f"one of {', '.join(LIMIT_FLAGS.values())} in --mqttd-args is not a number")
    if not args.no_mosquitto:
        args.mosquitto = args.mosquitto or find_mosquitto()
        if not args.mosquitto:
            log("Mosquitto not found (apt-get install mosquitto): mqttd only")
    brokers = ["mqttd"] + ([] if args.no_mosquitto or not args.mosquitto else ["mosquitto"])
    results: dict[str, dict[str, dict[str, Any]]] = {}
    t_all = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mqttd-flow-") as tmp:
        for sc in SCENARIOS:
            if args.only and sc.key not in args.only:
                continue
            results[sc.key] = {}
            for which in brokers:
                log(f"== {sc.key} / {which}")
                try:
                    r = run_scenario(sc, which, args, tmp)
                except FlowError as e:
                    r = {"status": f"error: {e}"}
                results[sc.key][which] = r
                log(
                    f"   {r.get('status')} in {r.get('seconds', 0):.1f} s, "
                    f"RSS peak {mb(r.get('rss_peak'))}"
                )
                if r.get("broker_tail") and (r.get("broker_errors") or r.get("broker_exit")):
                    log("   broker output:\n" + r["broker_tail"])
    print(
        f"Flow control, scale {args.scale:g}, MQTT 3.1.1, client loop {describe()}; mqttd "
        f"{' '.join([*MQTTD_BASE_ARGS, args.mqttd_args]).strip()} (+ per-scenario options), "
        "Mosquitto defaults (sys_interval 1)\n"
    )
    print(table(results, args))
    print(f"\nflow.py took {time.monotonic() - t_all:.0f} s on {os.cpu_count()} CPUs")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "settings": {
                        "scale": args.scale,
                        "mqttd_args": args.mqttd_args,
                        "mqttd_base_args": list(MQTTD_BASE_ARGS),
                        "mosquitto_conf": MOSQUITTO_CONF,
                        "timeout": args.timeout,
                        "client_loop": describe(),
                    },
                    "results": results,
                },
                indent=1,
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
