"""Many sockets at once: 1,000 announcing 256 MB each, 200 sending most of a 1 MB packet, 2,000
that never send CONNECT.

Proves: a fixed header costs the broker nothing beyond the bytes that really came (1,000 x 256
MB announced is refused from the headers); the bytes held in partly received packets across all
connections are capped by ``--max-incoming-bytes``, by closing the connections that would pass
it; a connection that sends no CONNECT is closed after ``--connect-timeout`` and not before; and
through all of it a new client is served.
"""

from __future__ import annotations

import time

from mqtt_raw import CONNACK, DISCONNECT, connect, publish, varint

from .support import (
    BASELINE_RSS_MIB,
    MIB,
    SLACK_MIB,
    assert_healthy,
    close_all,
    hostile_broker,
    open_sockets,
    send_all_nonblocking,
    split_packets,
    unique,
    wait_closed_all,
)

HUGE_HEADER = b"\x30" + varint(268_435_455)  # PUBLISH announcing the largest Remaining Length
PACKET_TOO_LARGE = 0x95
MAX_PACKET_SIZE_LIMIT = 268_435_460

#: Every connection alive at once costs the broker a transport, a Connection, a Reader (and
#: once connected a session): measured 3 KiB for a socket before CONNECT and 6 KiB for a connected
#: MQTT 5 client; 16 KiB each is a generous allowance.
PER_CONNECTION_KIB = 16
#: Bytes of partly received packets may exist twice in the broker while they are taken in (the
#: bytes read from the socket and the Reader's growing copy of them), so the cap
#: --max-incoming-bytes may cost up to twice itself in RSS.
INCOMING_COPIES = 2


def connections_bound_mib(n: int, incoming_limit: int = 0) -> float:
    """The RSS bound of a broker with ``n`` connections and a cap ``incoming_limit`` on partial
    packets: a fresh broker, the slack, the connections, the cap's copies."""
    per_connection = n * PER_CONNECTION_KIB / 1024
    return BASELINE_RSS_MIB + SLACK_MIB + per_connection + INCOMING_COPIES * incoming_limit / MIB


def test_1000_sockets_announcing_256_mb():
    """Attack: 1,000 sockets each announce a 268,435,455-byte PUBLISH: 500 as their first
    packet, 500 (MQTT 5) right after a CONNECT, in the same write. Expected: every one is closed
    from its fixed header (default Maximum Packet Size 1 MiB); the header-only 500 get no
    CONNACK 0 [MQTT-3.1.0-1]; the MQTT 5 ones get their CONNACK, then the DISCONNECT 0x95 Packet
    too large that the spec allows before the close (MQTT 5 §4.13.2) and mqttd sends; the
    broker's peak RSS is what 1,000 short-lived connections cost, not one byte of the 256 GB
    announced."""
    n = 1000
    with hostile_broker() as b:
        socks = open_sockets(b.addr, n)
        try:
            for i, s in enumerate(socks):
                first = HUGE_HEADER if i % 2 else connect(unique("big"), level=5) + HUGE_HEADER
                s.sendall(first)
            watch = wait_closed_all(socks, 20.0)
            assert watch.closed == n, f"{n - watch.closed} of {n} sockets still open"
            for i in range(n):
                got = split_packets(watch.received.get(i, b""))
                if i % 2:
                    assert all(p.type == CONNACK and p.body[1] != 0 for p in got), got
                else:
                    assert [p.type for p in got] == [CONNACK, DISCONNECT], got
                    assert got[0].body[1] == 0, f"CONNACK {got[0]!r}"
                    assert got[1].body[:1] == bytes([PACKET_TOO_LARGE]), f"{got[1]!r}"
        finally:
            close_all(socks)
        bound = connections_bound_mib(n)
        assert_healthy(b, bound, peak_bound_mib=bound)


def test_1000_sockets_announcing_256_mb_allowed_hit_the_incoming_limit():
    """Attack: the largest --max-packet-size (so 256 MB packets are legal) and 1,000 sockets,
    each announcing 268,435,455 bytes after a CONNECT and sending 256 KiB of the body at once,
    250 MiB in all, against --max-incoming-bytes 16 MiB. Expected: the broker holds at most 16
    MiB of partial packets, so at least 1,000 - 16 MiB / 256 KiB = 936 connections are closed
    (before or after their CONNACK; MQTT 5 may get a DISCONNECT with an error code first), the
    rest stay open, a new client is served meanwhile, and the peak RSS is bounded by the cap,
    not by what the 1,000 sockets sent."""
    n, piece, limit = 1000, 256 * 1024, 16 * MIB
    flags = ("--max-packet-size", str(MAX_PACKET_SIZE_LIMIT), "--max-incoming-bytes", str(limit))
    with hostile_broker(*flags) as b:
        socks = open_sockets(b.addr, n)
        try:
            data = [
                connect(unique("big"), level=5) + HUGE_HEADER + b"\x00\x01t" + b"p" * piece
                for _ in range(n)
            ]
            send_all_nonblocking(socks, data, 20.0)
            must_close = n - limit // piece
            watch = wait_closed_all(socks, 20.0, at_least=must_close)
            assert watch.closed >= must_close, f"only {watch.closed} closed, {must_close} must"
            for i in watch.closed_at:
                # Closed before its CONNECT was handled (nothing, or a refusing CONNACK), or
                # after it (CONNACK 0, then maybe a DISCONNECT with an error code)
                got = split_packets(watch.received.get(i, b""))
                assert all(p.type in (CONNACK, DISCONNECT) for p in got), got
                assert all(p.body[0] >= 0x80 for p in got if p.type == DISCONNECT), got
            bound = connections_bound_mib(n, limit)
            assert_healthy(b, bound, peak_bound_mib=bound)
        finally:
            close_all(socks)


def test_200_sockets_sending_600_kb_of_a_1_mb_publish():
    """Attack: 200 connected MQTT 3.1.1 clients each send 600 KB of a 1 MB PUBLISH (120 MB in
    all) against --max-incoming-bytes 32 MiB. Expected: at least 200 - 32 MiB / 600 KB = 145
    are closed, the broker's peak RSS stays within 32 MiB of partial packets (plus what 200
    connections cost), and a new client is served while the others wait for their bodies."""
    n, size, sent, limit = 200, 1_000_000, 600_000, 32 * MIB
    with hostile_broker("--max-incoming-bytes", str(limit)) as b:
        socks = open_sockets(b.addr, n)
        try:
            head = publish("big/600k", b"p" * (size - 11))
            assert len(head) > size - 5
            data = [connect(unique("p600"), level=4) + head[:sent] for _ in range(n)]
            send_all_nonblocking(socks, data, 20.0)
            must_close = n - limit // sent
            watch = wait_closed_all(socks, 20.0, at_least=must_close)
            assert watch.closed >= must_close, f"only {watch.closed} closed, {must_close} must"
            for i in watch.closed_at:
                got = split_packets(watch.received.get(i, b""))
                # 3.1.1: the CONNACK, then nothing before the close [MQTT-4.8.0-1]
                assert [p.type for p in got] in ([], [CONNACK]), got
            bound = connections_bound_mib(n, limit)
            assert_healthy(b, bound, peak_bound_mib=bound)
        finally:
            close_all(socks)


def test_2000_sockets_that_never_connect():
    """Attack: 2,000 sockets connect and send nothing, against --connect-timeout 3. Expected:
    a new client is served while they are all open; each is closed by the broker no earlier
    than 3 s after it opened (connection-timeout rule, not a resource limit: MQTT 3.1.1 §3.1.4
    lets a server close a connection that sends no CONNECT "within a reasonable amount of
    time") and all within the timeout plus a few seconds; RSS is what 2,000 connections cost."""
    n, timeout = 2000, 3.0
    with hostile_broker("--connect-timeout", str(timeout)) as b:
        opened: list[float] = []
        socks = []
        try:
            t0 = time.monotonic()
            socks = open_sockets(b.addr, n, opened_at=opened)
            assert time.monotonic() - t0 < timeout, "opening 2,000 sockets took the timeout"
            bound = connections_bound_mib(n)
            assert_healthy(b, bound)
            watch = wait_closed_all(socks, timeout + 10.0)
            assert watch.closed == n, f"{n - watch.closed} of {n} idle sockets still open"
            early = [i for i, t in watch.closed_at.items() if t - opened[i] < timeout * 0.9]
            assert not early, f"{len(early)} closed before the {timeout} s connect timeout"
            assert not any(watch.received.values()), "the broker sent something to an idle socket"
        finally:
            close_all(socks)
        assert_healthy(b, bound, peak_bound_mib=bound)
