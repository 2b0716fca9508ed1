"""The idle-connections scenario: how many MQTT connections a broker holds, and at what memory.

It opens ``connections`` TCP connections (at most ``parallel`` handshakes in flight, all from
one non-blocking epoll loop), sends each a CONNECT with ``keepalive`` and counts the CONNACKs
with return code 0. Then nothing more is sent (PINGREQ every keepalive / 2 if the hold is that
long): after ``warmup`` s and again at the end of the ``duration`` s hold, the broker's VmRSS is
read from /proc/PID/status (``broker_pid``); the connections still open at the end are "held".

Every client is a file descriptor here and in the broker: the generator raises its own
RLIMIT_NOFILE soft limit to the hard limit (``runner.raise_nofile``); the broker needs the same
(``ulimit -n`` in the shell that starts it).
"""

from __future__ import annotations

import errno
import selectors
import socket
import sys
import time
from dataclasses import dataclass

from mqttd.bench import hotloop, mqtt
from mqttd.bench.runner import Options, RunResult, proc_cpu_seconds, proc_rss_kb, raise_nofile


@dataclass
class Idle:
    """What the idle scenario opens (the spec; ``Options`` says where and for how long)."""

    connections: int = 10000
    keepalive: int = 60
    parallel: int = 200  # CONNECTs awaiting their CONNACK at once (listen backlogs are ~100-4096)
    connect_timeout: float = 60.0
    tag: str = ""
    name: str = "idle"

    @property
    def description(self) -> str:
        return f"{self.connections:,} idle connections, keepalive {self.keepalive} s"


def _connack(buf: bytes) -> int | None:
    """Return code of a complete CONNACK at the start of ``buf``; None if incomplete; -1 if the
    first packet is not a CONNACK."""
    if not buf:
        return None
    if buf[0] >> 4 != 2:
        return -1
    if len(buf) < 4:
        return None
    return buf[3]  # body: flags, return/reason code [MQTT-3.2.2-*, MQTT 5 §3.2.2.2]


def run_idle(spec: Idle, opt: Options) -> RunResult:
    soft, _hard = raise_nofile()
    n = spec.connections
    res = RunResult(
        scenario=spec.name,
        label=opt.label or f"{opt.host}:{opt.port}",
        target=f"{opt.host}:{opt.port}",
        protocol_level=opt.protocol_level,
        qos=0,
        publishers=0,
        subscribers=0,
        payload=0,
        warmup=opt.warmup,
        window_s=0.0,
        procs=1,
        generator_impl=hotloop.describe(),
        description=spec.description,
        connections=n,
    )
    if soft and n + 64 > soft:
        res.errors.append(
            f"RLIMIT_NOFILE is {soft}: at most about {soft - 64} connections "
            "(raise the hard limit: ulimit -Hn / limits.conf)"
        )
    pid = opt.broker_pid
    res.rss_before_kb = proc_rss_kb(pid) if pid else None
    cpu0 = proc_cpu_seconds(pid) if pid else None
    addr = socket.getaddrinfo(opt.host, opt.port, type=socket.SOCK_STREAM)[0]
    family, sockaddr = addr[0], addr[4]
    tag = spec.tag or hex(int(time.time() * 1000) & 0xFFFFFF)[2:]
    sel = selectors.DefaultSelector()
    opened: list[socket.socket] = []
    failures: dict[str, int] = {}

    def fail(s: socket.socket | None, why: str) -> None:
        failures[why] = failures.get(why, 0) + 1
        if s is not None:
            try:
                sel.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()

    t_start = time.monotonic()
    deadline = t_start + spec.connect_timeout
    next_line = t_start + 1.0
    i_next = pending = 0
    out_of_fds = False
    while (i_next < n and not out_of_fds or pending) and time.monotonic() < deadline:
        while i_next < n and pending < spec.parallel and not out_of_fds:
            try:
                s = socket.socket(family, socket.SOCK_STREAM)
            except OSError as exc:
                out_of_fds = True
                res.errors.append(f"cannot open socket {i_next}: {exc}")
                break
            s.setblocking(False)
            err = s.connect_ex(sockaddr)
            i_next += 1
            if err not in (0, errno.EINPROGRESS):
                fail(s, errno.errorcode.get(err, str(err)))
                continue
            # [index, stage (0 connecting, 1 awaiting CONNACK), received bytes]
            sel.register(s, selectors.EVENT_WRITE, [i_next - 1, 0, b""])
            pending += 1
        for key, _ev in sel.select(0.05):
            s = key.fileobj  # type: ignore[assignment]
            st = key.data
            if st[1] == 0:
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    pending -= 1
                    fail(s, errno.errorcode.get(err, str(err)))
                    continue
                cid = f"id{tag}c{st[0]}"[:23]  # at most 23 characters [MQTT-3.1.3-5]
                try:
                    s.send(mqtt.encode_connect(cid, opt.protocol_level, spec.keepalive))
                except OSError as exc:
                    pending -= 1
                    fail(s, type(exc).__name__)
                    continue
                st[1] = 1
                sel.modify(s, selectors.EVENT_READ, st)
                continue
            try:
                data = s.recv(256)
            except BlockingIOError:
                continue
            except OSError as exc:
                pending -= 1
                fail(s, type(exc).__name__)
                continue
            if not data:
                pending -= 1
                fail(s, "closed before CONNACK")
                continue
            st[2] += data
            rc = _connack(st[2])
            if rc is None:
                continue
            pending -= 1
            if rc != 0:
                fail(s, f"CONNACK {rc:#x}" if rc >= 0 else "not a CONNACK")
                continue
            sel.unregister(s)
            opened.append(s)
        now = time.monotonic()
        if opt.progress and now >= next_line:
            next_line = now + 1.0
            print(
                f"  {opt.label or opt.port} idle: {now - t_start:4.1f} s, "
                f"{len(opened):,} of {n:,} connected",
                file=sys.stderr,
                flush=True,
            )
    res.connect_s = time.monotonic() - t_start
    res.connected = len(opened)
    res.connects_per_s = res.connected / res.connect_s if res.connect_s > 0 else None
    if pending:
        failures["no CONNACK in time"] = pending
        for key in list(sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
    sel.close()
    if pid and cpu0 is not None:
        cpu1 = proc_cpu_seconds(pid)
        if cpu1 is not None:
            res.broker_cpu_s = cpu1 - cpu0
            if res.connected:
                res.broker_cpu_us_per_msg = res.broker_cpu_s / res.connected * 1e6
    # Hold: the broker settles during the warm-up; its RSS at the end of the hold is the figure.
    ping_every = spec.keepalive / 2 if spec.keepalive else float("inf")
    t_hold = time.monotonic()
    next_ping = t_hold + ping_every
    end = t_hold + opt.warmup + opt.duration
    while (now := time.monotonic()) < end:
        if now >= next_ping:
            next_ping = now + ping_every
            for s in opened:
                try:
                    s.send(mqtt.PINGREQ)
                except OSError:
                    pass
        time.sleep(min(end - now, next_ping - now, 1.0))
        if opt.progress:
            print(
                f"  {opt.label or opt.port} idle: holding {len(opened):,} connections, "
                f"{time.monotonic() - t_hold:4.1f} s",
                file=sys.stderr,
                flush=True,
            )
    res.window_s = time.monotonic() - t_hold
    res.rss_after_kb = proc_rss_kb(pid) if pid else None
    res.broker_rss_kb = res.rss_after_kb
    held = 0
    for s in opened:
        try:
            data = s.recv(64, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            held += 1 if data else 0
        except BlockingIOError:
            held += 1
        except OSError:
            pass
    res.held = held
    for s in opened:
        try:
            s.send(mqtt.encode_disconnect(opt.protocol_level), socket.MSG_DONTWAIT)
        except OSError:
            pass
        s.close()
    time.sleep(min(1.0, 0.0001 * len(opened)))  # let the broker clean up before the next run
    if res.rss_before_kb is not None and res.rss_after_kb is not None and res.connected:
        res.kb_per_conn = (res.rss_after_kb - res.rss_before_kb) / res.connected
    problems = [f"{v:,} {k}" for k, v in sorted(failures.items())]
    if held < res.connected:
        problems.append(f"{res.connected - held:,} closed by the broker during the hold")
    res.integrity_ok = not problems and res.connected == n
    res.integrity = (
        f"ok: all {n:,} connected and held"
        if res.integrity_ok
        else f"{held:,} of {n:,} held: " + ", ".join(problems or ["not all opened"])
    )
    return res
