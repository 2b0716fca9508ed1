"""A tiny MQTT client-side encoder and blocking handshake, just enough for the load generator.

It does not use mqttd's own codec on purpose: the generator must measure any broker (mqttd,
Mosquitto, ...) and must not share a bug with the system under test. Everything here runs once
per connection or once per publisher (the PUBLISH template), never per message.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

from mqttd.bench.hotloop import HEAD_SIZE, STAMP_OFF

PROTOCOL_LEVELS = (4, 5)


class BenchError(RuntimeError):
    """The broker refused or broke a benchmark connection."""


def varint(n: int) -> bytes:
    """Variable Byte Integer [MQTT 5 §1.5.5 / 3.1.1 §2.2.3]."""
    if not 0 <= n <= 268_435_455:
        raise ValueError(f"varint out of range: {n}")
    out = bytearray()
    while True:
        d = n & 0x7F
        n >>= 7
        out.append(d | 0x80 if n else d)
        if not n:
            return bytes(out)


def _str(s: str) -> bytes:
    b = s.encode()
    if len(b) > 65535:
        raise ValueError("string longer than 65535 bytes")
    return struct.pack(">H", len(b)) + b


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + varint(len(body)) + body


def encode_connect(
    client_id: str, protocol_level: int = 4, keepalive: int = 60, clean: bool = True
) -> bytes:
    """CONNECT with no will, username or password."""
    flags = 0x02 if clean else 0x00
    vh = _str("MQTT") + bytes((protocol_level, flags)) + struct.pack(">H", keepalive)
    if protocol_level >= 5:
        # Receive Maximum 65535 so that a QoS 1/2 subscriber is never throttled by the
        # broker on our account [MQTT 5 §3.1.2.11.3]; property block = length + properties.
        props = b"\x21\xff\xff"
        vh += varint(len(props)) + props
    return _packet(0x10, vh + _str(client_id))


def encode_subscribe(
    packet_id: int, filters: list[str], qos: int, protocol_level: int = 4
) -> bytes:
    body = struct.pack(">H", packet_id)
    if protocol_level >= 5:
        body += b"\x00"  # no properties
    for f in filters:
        body += _str(f) + bytes((qos,))
    # SUBSCRIBE fixed-header flags must be 0b0010 [MQTT-3.8.1-1]
    return _packet(0x82, body)


def encode_disconnect(protocol_level: int = 4) -> bytes:
    # MQTT 5 allows a 0 remaining length meaning reason code 0x00 [MQTT 5 §3.14.2.1].
    return b"\xe0\x00"


PINGREQ = b"\xc0\x00"


@dataclass(frozen=True)
class PublishTemplate:
    """One publisher's PUBLISH packet with sequence number 0 and where to patch it.

    All packets of a publisher have the same size (fixed topic, fixed payload size, fixed-width
    sequence number), so the bytes accepted by the kernel tell how many packets went out.
    """

    data: bytes
    seq_off: int
    pid_off: int  # -1 for QoS 0 (no packet identifier [MQTT-2.2.1-2])
    ts_off: int = -1  # where the send timestamp goes (latency runs), -1 for none

    @property
    def size(self) -> int:
        return len(self.data)


def publish_template(
    topic: str,
    index: int,
    payload_size: int,
    qos: int = 0,
    protocol_level: int = 4,
    stamp: bool = False,
) -> PublishTemplate:
    """PUBLISH whose payload is u32 ``index`` + u64 sequence [+ u64 send time when ``stamp``] +
    padding to ``payload_size``."""
    if payload_size < HEAD_SIZE:
        raise ValueError(f"payload must be at least {HEAD_SIZE} bytes (publisher index + seq)")
    if stamp and payload_size < STAMP_OFF + 8:
        raise ValueError(f"a stamped payload must be at least {STAMP_OFF + 8} bytes")
    if qos not in (0, 1, 2):
        raise ValueError("qos must be 0, 1 or 2")
    vh = _str(topic)
    pid_off = -1
    if qos:
        pid_off = len(vh)
        vh += b"\x00\x01"
    if protocol_level >= 5:
        vh += b"\x00"  # no properties
    payload = struct.pack(">IQ", index, 0) + b"x" * (payload_size - HEAD_SIZE)
    body = vh + payload
    head = bytes((0x30 | (qos << 1),)) + varint(len(body))
    return PublishTemplate(
        data=head + body,
        seq_off=len(head) + len(vh) + 4,
        pid_off=-1 if pid_off < 0 else len(head) + pid_off,
        ts_off=len(head) + len(vh) + STAMP_OFF if stamp else -1,
    )


def _recv_packet(sock: socket.socket, deadline: float) -> tuple[int, bytes]:
    """One whole packet (first byte, body) read with blocking calls; for handshakes only."""

    def read(n: int) -> bytes:
        data = b""
        while len(data) < n:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                chunk = sock.recv(n - len(data))
            except TimeoutError:
                raise BenchError("timed out waiting for the broker") from None
            if not chunk:
                raise BenchError("broker closed the connection during the handshake")
            data += chunk
        return data

    first = read(1)[0]
    rl = 0
    mult = 0
    while True:
        c = read(1)[0]
        rl |= (c & 0x7F) << mult
        if not c & 0x80:
            break
        mult += 7
        if mult > 21:
            raise BenchError("malformed remaining length from broker")
    return first, read(rl) if rl else b""


# CONNACK property id -> kind, to walk the property block [MQTT 5 §3.2.2.3].
_PROP_KIND = {
    0x11: 4, 0x21: 2, 0x24: 1, 0x25: 1, 0x27: 4, 0x12: "s", 0x22: 2, 0x1F: "s", 0x26: "p",
    0x28: 1, 0x29: 1, 0x2A: 1, 0x13: 2, 0x1A: "s", 0x1C: "s", 0x15: "s", 0x16: "s",
}  # fmt: skip


def _varint_at(buf: bytes, pos: int) -> tuple[int, int]:
    n = mult = 0
    while True:
        c = buf[pos]
        pos += 1
        n |= (c & 0x7F) << mult
        if not c & 0x80:
            return n, pos
        mult += 7
        if mult > 21:
            raise BenchError("malformed variable byte integer from broker")


def parse_connack_properties(body: bytes) -> dict[int, int]:
    """The integer properties of an MQTT 5 CONNACK body (strings and pairs are skipped)."""
    plen, pos = _varint_at(body, 2)
    end = pos + plen
    props: dict[int, int] = {}
    while pos < end:
        pid = body[pos]
        pos += 1
        kind = _PROP_KIND.get(pid)
        if kind is None:
            raise BenchError(f"unknown CONNACK property {pid:#x}")
        if isinstance(kind, int):
            props[pid] = int.from_bytes(body[pos : pos + kind], "big")
            pos += kind
        else:
            for _ in range(2 if kind == "p" else 1):
                pos += 2 + int.from_bytes(body[pos : pos + 2], "big")
    return props


RECEIVE_MAXIMUM = 0x21
MAXIMUM_QOS = 0x24
MAXIMUM_PACKET_SIZE = 0x27


def connect(
    host: str,
    port: int,
    client_id: str,
    protocol_level: int = 4,
    keepalive: int = 60,
    sndbuf: int = 0,
    rcvbuf: int = 0,
    timeout: float = 10.0,
    ws_path: str = "",
) -> tuple[Any, dict[int, int]]:
    """Open a TCP connection (with ``ws_path``, a WebSocket on that path: mqttd.bench.ws) and
    complete CONNECT/CONNACK; returns the blocking socket and the CONNACK's integer properties
    (always empty before MQTT 5)."""
    if protocol_level not in PROTOCOL_LEVELS:
        raise ValueError("protocol level must be 4 (MQTT 3.1.1) or 5 (MQTT 5.0)")
    if ws_path:
        from mqttd.bench.ws import ws_connect

        sock: Any = ws_connect(host, port, ws_path, timeout)
    else:
        sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if sndbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.sendall(encode_connect(client_id, protocol_level, keepalive))
        first, body = _recv_packet(sock, time.monotonic() + timeout)
        if first >> 4 != 2 or len(body) < 2:
            raise BenchError(f"expected CONNACK, got packet type {first >> 4}")
        if body[1] != 0:
            raise BenchError(f"broker refused CONNECT of {client_id!r}: return code {body[1]:#x}")
        props = parse_connack_properties(body) if protocol_level >= 5 else {}
    except BaseException:
        sock.close()
        raise
    return sock, props


def subscribe(
    sock: socket.socket,
    filters: list[str],
    qos: int,
    protocol_level: int = 4,
    packet_id: int = 1,
    timeout: float = 10.0,
) -> list[int]:
    """SUBSCRIBE and wait for the matching SUBACK; returns the granted codes."""
    sock.sendall(encode_subscribe(packet_id, filters, qos, protocol_level))
    deadline = time.monotonic() + timeout
    while True:
        first, body = _recv_packet(sock, deadline)
        if first >> 4 == 9 and body[:2] == struct.pack(">H", packet_id):
            break
    pos = 2
    if protocol_level >= 5:
        plen = 0
        mult = 0
        while True:
            c = body[pos]
            pos += 1
            plen |= (c & 0x7F) << mult
            if not c & 0x80:
                break
            mult += 7
        pos += plen
    codes = list(body[pos:])
    if any(c >= 0x80 for c in codes):
        raise BenchError(f"broker refused subscription {filters}: codes {codes}")
    return codes
