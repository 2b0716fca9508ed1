"""Helpers of the hostile suite: a broker whose log is kept, the health check run after every
case, the broker's memory from /proc, and many raw sockets watched at once.

The broker is started as tests/conftest.py's ``start_broker`` does (``python -m mqttd --port 0``,
the pid of the listening line checked), but its output is kept rather than thrown away: a hostile
packet that raises inside the broker ends in asyncio closing the connection, which from the
socket looks exactly like a deliberate close. ``assert_healthy`` therefore also fails on any
traceback or ERROR line the broker logged.
"""

from __future__ import annotations

import collections
import errno
import itertools
import os
import re
import select
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from mqtt_raw import PINGRESP, Client, Closed, Packet, decode_varint

from tests.conftest import LISTEN_RE, BrokerProc, stop_broker

MIB = 1024 * 1024

#: A fresh mqttd (Python 3.11, uvloop) measured 29-32 MiB VmRSS, compiled or pure Python; the
#: bounds of the cases are stated as this plus what each case may justify.
BASELINE_RSS_MIB = 33
#: Allocator slack on top of any bound: pymalloc arenas and the loop's buffers are not returned
#: to the system at once, so a few MiB of churn is noise, not a leak.
SLACK_MIB = 8

#: Log lines that mean the broker hit an error it did not handle on purpose.
ERROR_LINE = re.compile(r"Traceback|\bERROR\b|CRITICAL|Fatal error|Exception in callback")

#: The start of a log record (a continuation line, as in a traceback, does not match).
LOG_RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")

_ids = itertools.count()


def unique(prefix: str) -> str:
    """A client id / topic part unique in this test process."""
    return f"{prefix}-{os.getpid() % 10000}-{next(_ids)}"


# --- the broker ----------------------------------------------------------------------------------


@dataclass
class HostileBroker(BrokerProc):
    """A BrokerProc whose output is kept: the last lines, and every error line."""

    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=400))
    errors: list[str] = field(default_factory=list)
    #: how many of ``errors`` an ``assert_healthy`` has already reported (a module's broker
    #: reports each error once, in the case during which it was logged)
    reported: int = 0

    @property
    def addr(self) -> tuple[str, int]:
        return (self.host, self.port)


def start_hostile_broker(*extra: str, timeout: float = 15.0) -> HostileBroker:
    """``python -m mqttd --port 0 *extra``, as ``start_broker``, keeping its output."""
    cmd = [sys.executable, "-m", "mqttd", "--port", "0", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = LISTEN_RE.search(line)
        if m:
            if int(m.group(3)) != proc.pid:
                proc.kill()
                proc.wait(5)
                raise RuntimeError(f"broker line names pid {m.group(3)}, started {proc.pid}")
            b = HostileBroker(m.group(1), int(m.group(2)), proc, cmd)
            b.tail.extend(lines)

            def drain(b: HostileBroker = b) -> None:
                in_error = False  # inside an error record: its traceback lines belong to it
                for line in b.proc.stdout:  # type: ignore[union-attr]
                    b.tail.append(line)
                    if LOG_RECORD.match(line):
                        in_error = bool(ERROR_LINE.search(line))
                    elif ERROR_LINE.search(line):
                        in_error = True
                    if in_error and len(b.errors) < 400:
                        b.errors.append(line.rstrip())

            threading.Thread(target=drain, daemon=True).start()
            return b
    proc.kill()
    proc.wait(5)
    raise RuntimeError(f"broker {' '.join(extra)!r} did not start:\n" + "".join(lines))


@contextmanager
def hostile_broker(*extra: str) -> Iterator[HostileBroker]:
    """A broker for one case (or one module), always stopped afterwards."""
    b = start_hostile_broker(*extra)
    try:
        yield b
    finally:
        stop_broker(b)


def sync_log(b: HostileBroker, timeout: float = 1.0) -> None:
    """Wait until the log drain has read what the broker logged so far: a socket whose first
    packet is a PINGREQ is closed with an INFO line naming its port (mqttd logs the peer), and
    the broker writes its lines in order. Best effort: returns after ``timeout`` s anyway."""
    with socket.create_connection(b.addr, timeout=2.0) as s:
        port = f", {s.getsockname()[1]})"
        s.sendall(b"\xc0\x00")
        try:
            while s.recv(4096):
                pass
        except OSError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(port in line for line in list(b.tail)[-50:]):  # "('127.0.0.1', PORT)"
            return
        time.sleep(0.01)


# --- memory --------------------------------------------------------------------------------------


def _status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def rss_mib(b: BrokerProc) -> float:
    """The broker's resident set size now (VmRSS), in MiB."""
    return _status_kib(b.proc.pid, "VmRSS") / 1024


def peak_rss_mib(b: BrokerProc) -> float:
    """The most the broker has ever had resident (VmHWM), in MiB: a transient spike counts."""
    return _status_kib(b.proc.pid, "VmHWM") / 1024


# --- the check after every case ------------------------------------------------------------------


def assert_healthy(
    b: HostileBroker,
    rss_bound_mib: float,
    *,
    peak_bound_mib: float | None = None,
    timeout: float = 2.0,
) -> None:
    """The broker survived: its process runs, a new client at 3.1.1 and at 5.0 gets CONNACK 0
    and a PINGRESP to its PINGREQ within ``timeout`` s, its RSS (and, if given, its peak RSS) is
    within the bound, and it logged no unhandled error."""
    assert b.alive(), f"broker exited with {b.proc.returncode}:\n{''.join(b.tail)}"
    for level in (4, 5):
        with Client(b.addr, level, timeout=timeout) as c:
            c.connect(unique("healthy"))
            c.send(b"\xc0\x00")
            p = c.expect(PINGRESP, timeout)
            assert p.flags == 0 and p.body == b"", f"PINGRESP must be c0 00: {p!r}"
            c.disconnect()
    rss = rss_mib(b)
    peak = peak_rss_mib(b)
    # Shown with -s, and with the output of a failing test
    print(f"broker RSS {rss:.1f} MiB (bound {rss_bound_mib}), peak {peak:.1f} MiB")
    assert rss <= rss_bound_mib, f"broker RSS {rss:.1f} MiB > bound {rss_bound_mib} MiB"
    if peak_bound_mib is not None:
        assert peak <= peak_bound_mib, f"broker peak RSS {peak:.1f} MiB > {peak_bound_mib} MiB"
    sync_log(b)
    new, b.reported = b.errors[b.reported :], len(b.errors)
    assert not new, "broker logged errors:\n" + "\n".join(new[:60])


# --- many raw sockets ----------------------------------------------------------------------------


def open_sockets(
    addr: tuple[str, int], n: int, timeout: float = 5.0, opened_at: list[float] | None = None
) -> list[socket.socket]:
    """``n`` TCP connections to the broker (blocking connect, then non-blocking); the monotonic
    time before each connect is appended to ``opened_at`` if given."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            if opened_at is not None:
                opened_at.append(time.monotonic())
            s = socket.create_connection(addr, timeout=timeout)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
            socks.append(s)
    except BaseException:
        close_all(socks)
        raise
    return socks


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        try:
            s.close()
        except OSError:
            pass


@dataclass
class Watch:
    """What ``wait_closed_all`` saw: when each socket was closed by the broker (monotonic
    time), the bytes each received before, and which were reset."""

    closed_at: dict[int, float] = field(default_factory=dict)
    received: dict[int, bytes] = field(default_factory=dict)
    reset: set[int] = field(default_factory=set)  # closed by a reset rather than a FIN

    @property
    def closed(self) -> int:
        return len(self.closed_at)


def _read_nonblocking(s: socket.socket) -> tuple[bytes, str]:
    """The bytes waiting on ``s``, and "" while it is open, "eof" once the peer closed it,
    "reset" if it was reset (what came before the reset is kept)."""
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except BlockingIOError:
            return out, ""
        except (ConnectionResetError, BrokenPipeError):
            return out, "reset"
        if not chunk:
            return out, "eof"
        out += chunk


def wait_closed_all(
    socks: list[socket.socket], timeout: float, *, at_least: int | None = None
) -> Watch:
    """Watch every socket until the broker has closed ``at_least`` of them (all by default) or
    ``timeout`` s pass; returns what was seen (the caller asserts on it)."""
    want = len(socks) if at_least is None else at_least
    watch = Watch()
    sel = selectors.DefaultSelector()
    try:
        for i, s in enumerate(socks):
            sel.register(s, selectors.EVENT_READ, i)
        deadline = time.monotonic() + timeout
        while watch.closed < want:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for key, _ in sel.select(min(left, 0.5)):
                i = key.data
                data, end = _read_nonblocking(socks[i])
                if data:
                    watch.received[i] = watch.received.get(i, b"") + data
                if end:
                    watch.closed_at[i] = time.monotonic()
                    if end == "reset":
                        watch.reset.add(i)
                    sel.unregister(socks[i])
    finally:
        sel.close()
    return watch


def send_all_nonblocking(
    socks: list[socket.socket], data: list[bytes], timeout: float
) -> tuple[set[int], set[int]]:
    """Send ``data[i]`` on ``socks[i]``, all at once, without blocking on a socket the broker
    stopped reading. Returns (indexes fully sent, indexes the broker closed or reset)."""
    views = [memoryview(d) for d in data]
    sent = [0] * len(socks)
    done: set[int] = set()
    dead: set[int] = set()
    sel = selectors.DefaultSelector()
    try:
        for i, s in enumerate(socks):
            sel.register(s, selectors.EVENT_WRITE, i)
        deadline = time.monotonic() + timeout
        while len(done) + len(dead) < len(socks) and time.monotonic() < deadline:
            for key, _ in sel.select(0.2):
                i = key.data
                try:
                    n = socks[i].send(views[i][sent[i] : sent[i] + 65536])
                except BlockingIOError:
                    continue
                except OSError as e:
                    if e.errno not in (errno.EPIPE, errno.ECONNRESET):
                        raise
                    dead.add(i)
                    sel.unregister(socks[i])
                    continue
                sent[i] += n
                if sent[i] >= len(views[i]):
                    done.add(i)
                    sel.unregister(socks[i])
    finally:
        sel.close()
    return done, dead


def split_packets(data: bytes) -> list[Packet]:
    """The whole packets in ``data`` (a broker's answer read off a socket), in order; a partial
    packet at the end is an error (the broker closed in the middle of one)."""
    out: list[Packet] = []
    pos = 0
    while pos < len(data):
        length, body = decode_varint(data, pos + 1)
        assert body + length <= len(data), f"partial packet at the end of {data!r}"
        out.append(Packet(data[pos] >> 4, data[pos] & 0x0F, data[body : body + length]))
        pos = body + length
    return out


# --- one raw client ------------------------------------------------------------------------------


def connected_client(addr: tuple[str, int], level: int, client_id: str | None = None) -> Client:
    """A mqtt_raw Client that has CONNECTed (CONNACK 0)."""
    c = Client(addr, level)
    try:
        c.connect(client_id or unique("c"))
    except BaseException:
        c.close()
        raise
    return c


def read_packets(c: Client, n: int, timeout: float) -> list[Packet]:
    """The next ``n`` packets on ``c``, read in bulk: ``Client.recv`` re-slices its buffer for
    every packet, which is quadratic over tens of thousands of them."""
    deadline = time.monotonic() + timeout
    buf = bytearray(c.buf)
    c.buf = b""
    pos = 0
    out: list[Packet] = []
    while True:
        while len(out) < n and len(buf) - pos >= 2:
            try:
                length, body = decode_varint(buf, pos + 1)
            except IndexError:
                break
            if body + length > len(buf):
                break
            out.append(Packet(buf[pos] >> 4, buf[pos] & 0x0F, bytes(buf[body : body + length])))
            pos = body + length
        if len(out) >= n:
            c.buf = bytes(buf[pos:])
            return out
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{len(out)} of {n} packets within {timeout} s")
        c.sock.settimeout(left)
        try:
            chunk = c.sock.recv(1 << 20)
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError) as e:
            raise Closed(f"{e} after {len(out)} of {n} packets") from None
        if not chunk:
            raise Closed(f"EOF after {len(out)} of {n} packets")
        del buf[:pos]
        pos = 0
        buf += chunk


def send_in_background(c: Client, data: bytes) -> threading.Thread:
    """``sendall`` from a thread, so that the caller reads the broker's answers meanwhile (a
    broker whose answers are not read stops reading; both sides would wait)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            c.sock.sendall(data)
        except OSError as e:  # the broker closed: the reader sees it
            errors.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def dribble(
    c: Client, data: bytes, interval: float, *, chunk: int = 1, until: float | None = None
) -> int:
    """Send ``data`` ``chunk`` bytes at a time, one send per ``interval`` s, until it is all
    sent, the broker answers (a packet, a close or a reset: the wait between sends is a wait for
    the socket to become readable, so no byte goes into a connection the broker closed), or the
    monotonic time ``until`` passes. Returns how many bytes went out; what the broker sent is
    left for the caller to read."""
    sent = 0
    while sent < len(data):
        if until is not None and time.monotonic() >= until:
            break
        try:
            c.sock.sendall(data[sent : sent + chunk])
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += min(chunk, len(data) - sent)
        if sent < len(data):
            readable, _, _ = select.select([c.sock], [], [], interval)
            if readable:
                break
    return sent


__all__ = [
    "BASELINE_RSS_MIB",
    "MIB",
    "SLACK_MIB",
    "HostileBroker",
    "Watch",
    "assert_healthy",
    "close_all",
    "connected_client",
    "dribble",
    "hostile_broker",
    "open_sockets",
    "read_packets",
    "send_in_background",
    "peak_rss_mib",
    "rss_mib",
    "send_all_nonblocking",
    "split_packets",
    "start_hostile_broker",
    "sync_log",
    "unique",
    "wait_closed_all",
]
