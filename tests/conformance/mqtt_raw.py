"""A tiny, independent MQTT 3.1/3.1.1/5.0 byte builder and reader for conformance tests.

Deliberately separate from mqttd's codec (like Mosquitto's test/broker helpers): packets are built
by hand from the spec's byte layouts, so a codec bug cannot hide itself by being symmetric. The
builders accept "wrong" values on purpose (any flags, any protocol name, packet id 0, ...), because
the tests need to send malformed packets.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field

# Packet types (fixed header, high nibble) [MQTT 5 §2.1.2]
CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
PUBREC = 5
PUBREL = 6
PUBCOMP = 7
SUBSCRIBE = 8
SUBACK = 9
UNSUBSCRIBE = 10
UNSUBACK = 11
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14
AUTH = 15

NAMES = {
    1: "CONNECT",
    2: "CONNACK",
    3: "PUBLISH",
    4: "PUBACK",
    5: "PUBREC",
    6: "PUBREL",
    7: "PUBCOMP",
    8: "SUBSCRIBE",
    9: "SUBACK",
    10: "UNSUBSCRIBE",
    11: "UNSUBACK",
    12: "PINGREQ",
    13: "PINGRESP",
    14: "DISCONNECT",
    15: "AUTH",
}

# Timeouts: short, because the whole conformance folder must run in well under a minute. A wait
# that runs out raises TimeoutError (a hang), never AssertionError (a wrong value).
RECV_TIMEOUT = 2.0  # waiting for a packet that must come
QUIET_TIMEOUT = 0.3  # waiting to be sure that a packet does NOT come (only where time is the rule)
CLOSE_TIMEOUT = 2.0  # waiting for the broker to close a connection
MARKER = b"marker"  # the payload of the message a test publishes last (see Client.until)

# MQTT 5 property ids and their data types [MQTT 5 §2.2.2.2]
BYTE, TWO, FOUR, VARINT, UTF8, BINARY, PAIR = "byte", "two", "four", "varint", "utf8", "bin", "pair"
PROPERTY_TYPES: dict[int, str] = {
    0x01: BYTE,  # Payload Format Indicator
    0x02: FOUR,  # Message Expiry Interval
    0x03: UTF8,  # Content Type
    0x08: UTF8,  # Response Topic
    0x09: BINARY,  # Correlation Data
    0x0B: VARINT,  # Subscription Identifier
    0x11: FOUR,  # Session Expiry Interval
    0x12: UTF8,  # Assigned Client Identifier
    0x13: TWO,  # Server Keep Alive
    0x15: UTF8,  # Authentication Method
    0x16: BINARY,  # Authentication Data
    0x17: BYTE,  # Request Problem Information
    0x18: FOUR,  # Will Delay Interval
    0x19: BYTE,  # Request Response Information
    0x1A: UTF8,  # Response Information
    0x1C: UTF8,  # Server Reference
    0x1F: UTF8,  # Reason String
    0x21: TWO,  # Receive Maximum
    0x22: TWO,  # Topic Alias Maximum
    0x23: TWO,  # Topic Alias
    0x24: BYTE,  # Maximum QoS
    0x25: BYTE,  # Retain Available
    0x26: PAIR,  # User Property
    0x27: FOUR,  # Maximum Packet Size
    0x28: BYTE,  # Wildcard Subscription Available
    0x29: BYTE,  # Subscription Identifier Available
    0x2A: BYTE,  # Shared Subscription Available
}
ASSIGNED_CLIENT_IDENTIFIER = 0x12
SERVER_KEEP_ALIVE = 0x13
MAXIMUM_PACKET_SIZE = 0x27
SESSION_EXPIRY_INTERVAL = 0x11
WILL_DELAY_INTERVAL = 0x18


# --- primitive encoders ------------------------------------------------------------------------


def varint(n: int) -> bytes:
    """Variable Byte Integer [MQTT 5 §1.5.5]."""
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def u16(n: int) -> bytes:
    return n.to_bytes(2, "big")


def u32(n: int) -> bytes:
    return n.to_bytes(4, "big")


def mstr(s: str | bytes) -> bytes:
    """UTF-8 string / binary data: 2-byte length then the bytes. Bytes are sent as given, so a
    test can send ill-formed UTF-8."""
    b = s.encode("utf-8") if isinstance(s, str) else s
    return u16(len(b)) + b


def frame(first_byte: int, body: bytes) -> bytes:
    """Fixed header (type/flags byte + remaining length) followed by the body."""
    return bytes([first_byte]) + varint(len(body)) + body


def prop(pid: int, value: int | str | bytes | tuple[str, str]) -> bytes:
    """One MQTT 5 property, encoded by its type from PROPERTY_TYPES."""
    kind = PROPERTY_TYPES[pid]
    head = bytes([pid])
    if kind == BYTE:
        return head + bytes([int(value)])  # type: ignore[arg-type]
    if kind == TWO:
        return head + u16(int(value))  # type: ignore[arg-type]
    if kind == FOUR:
        return head + u32(int(value))  # type: ignore[arg-type]
    if kind == VARINT:
        return head + varint(int(value))  # type: ignore[arg-type]
    if kind == PAIR:
        k, v = value  # type: ignore[misc]
        return head + mstr(k) + mstr(v)
    return head + mstr(value)  # type: ignore[arg-type]


def props(*encoded: bytes) -> bytes:
    """A property block: length varint followed by the encoded properties."""
    body = b"".join(encoded)
    return varint(len(body)) + body


# --- packet builders ---------------------------------------------------------------------------


def connect(
    client_id: str | bytes,
    *,
    level: int = 4,
    clean: bool = True,
    keepalive: int = 60,
    will_topic: str | bytes | None = None,
    will_payload: bytes = b"",
    will_qos: int = 0,
    will_retain: bool = False,
    will_props: bytes = b"\x00",
    username: str | None = None,
    password: bytes | None = None,
    properties: bytes = b"\x00",
    protocol_name: bytes | None = None,
    flags: int | None = None,
    first_byte: int = 0x10,
) -> bytes:
    """CONNECT [MQTT 5 §3.1]. ``level`` 3 uses the name "MQIsdp", 4/5 "MQTT" (unless
    ``protocol_name`` overrides); ``flags`` overrides the computed Connect Flags byte."""
    if protocol_name is None:
        protocol_name = b"MQIsdp" if level == 3 else b"MQTT"
    f = 0x02 if clean else 0
    if will_topic is not None:
        f |= 0x04 | (will_qos << 3) | (0x20 if will_retain else 0)
    if password is not None:
        f |= 0x40
    if username is not None:
        f |= 0x80
    if flags is not None:
        f = flags
    body = mstr(protocol_name) + bytes([level, f]) + u16(keepalive)
    if level >= 5:
        body += properties
    body += mstr(client_id)
    if will_topic is not None:
        if level >= 5:
            body += will_props
        body += mstr(will_topic) + mstr(will_payload)
    if username is not None:
        body += mstr(username)
    if password is not None:
        body += mstr(password)
    return frame(first_byte, body)


def publish(
    topic: str | bytes,
    payload: bytes = b"",
    *,
    qos: int = 0,
    retain: bool = False,
    dup: bool = False,
    pid: int | None = None,
    level: int = 4,
    properties: bytes = b"\x00",
) -> bytes:
    """PUBLISH [MQTT 5 §3.3]. ``pid`` defaults to 1 for QoS > 0; it is written whenever it is
    given (even at QoS 0 or as 0) so malformed packets can be built."""
    first = 0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    body = mstr(topic)
    if pid is None and qos > 0:
        pid = 1
    if pid is not None:
        body += u16(pid)
    if level >= 5:
        body += properties
    return frame(first, body + payload)


def ack(ptype: int, pid: int, *, level: int = 4, rc: int | None = None) -> bytes:
    """PUBACK/PUBREC/PUBREL/PUBCOMP [MQTT 5 §3.4-3.7]; PUBREL carries flags 0b0010."""
    first = (ptype << 4) | (0x02 if ptype == PUBREL else 0)
    body = u16(pid)
    if level >= 5 and rc is not None:
        body += bytes([rc])
    return frame(first, body)


def puback(pid: int, **kw: int) -> bytes:
    return ack(PUBACK, pid, **kw)


def pubrec(pid: int, **kw: int) -> bytes:
    return ack(PUBREC, pid, **kw)


def pubrel(pid: int, **kw: int) -> bytes:
    return ack(PUBREL, pid, **kw)


def pubcomp(pid: int, **kw: int) -> bytes:
    return ack(PUBCOMP, pid, **kw)


def subscribe(
    pid: int,
    filters: list[tuple[str | bytes, int]],
    *,
    level: int = 4,
    properties: bytes = b"\x00",
    first_byte: int = 0x82,
) -> bytes:
    """SUBSCRIBE [MQTT 5 §3.8]; each filter comes with its options byte (QoS in bits 0-1)."""
    body = u16(pid)
    if level >= 5:
        body += properties
    for topic_filter, options in filters:
        body += mstr(topic_filter) + bytes([options])
    return frame(first_byte, body)


def unsubscribe(
    pid: int, filters: list[str | bytes], *, level: int = 4, first_byte: int = 0xA2
) -> bytes:
    """UNSUBSCRIBE [MQTT 5 §3.10]."""
    body = u16(pid)
    if level >= 5:
        body += b"\x00"
    for topic_filter in filters:
        body += mstr(topic_filter)
    return frame(first_byte, body)


PINGREQ_BYTES = b"\xc0\x00"
DISCONNECT_BYTES = b"\xe0\x00"


def disconnect(rc: int = 0, *, level: int = 4, properties: bytes = b"") -> bytes:
    """DISCONNECT [MQTT 5 §3.14]; at level 5 with a reason code (and optional properties)."""
    if level < 5 or (rc == 0 and not properties):
        return DISCONNECT_BYTES
    return frame(0xE0, bytes([rc]) + properties)


# --- decoding ----------------------------------------------------------------------------------


class Closed(Exception):
    """The broker closed (or reset) the connection."""


@dataclass
class Packet:
    type: int
    flags: int
    body: bytes

    @property
    def name(self) -> str:
        return NAMES.get(self.type, f"type{self.type}")

    def __repr__(self) -> str:
        return f"<{self.name} flags={self.flags:#x} body={self.body[:40]!r}>"


@dataclass
class Pub:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    pid: int
    properties: dict[int, list[object]] = field(default_factory=dict)


def decode_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value, mult = 0, 1
    for i in range(4):
        b = buf[pos + i]
        value += (b & 0x7F) * mult
        if not b & 0x80:
            return value, pos + i + 1
        mult *= 128
    raise ValueError("variable byte integer longer than 4 bytes")


def decode_str(buf: bytes, pos: int) -> tuple[bytes, int]:
    n = int.from_bytes(buf[pos : pos + 2], "big")
    end = pos + 2 + n
    if end > len(buf):
        raise ValueError("string runs past the packet end")
    return buf[pos + 2 : end], end


def decode_props(buf: bytes, pos: int) -> tuple[dict[int, list[object]], int]:
    """A property block -> {id: [values in wire order]}."""
    length, pos = decode_varint(buf, pos)
    end = pos + length
    out: dict[int, list[object]] = {}
    while pos < end:
        pid = buf[pos]
        pos += 1
        kind = PROPERTY_TYPES[pid]
        value: object
        if kind == BYTE:
            value, pos = buf[pos], pos + 1
        elif kind == TWO:
            value, pos = int.from_bytes(buf[pos : pos + 2], "big"), pos + 2
        elif kind == FOUR:
            value, pos = int.from_bytes(buf[pos : pos + 4], "big"), pos + 4
        elif kind == VARINT:
            value, pos = decode_varint(buf, pos)
        elif kind == PAIR:
            k, pos = decode_str(buf, pos)
            v, pos = decode_str(buf, pos)
            value = (k.decode(), v.decode())
        elif kind == UTF8:
            s, pos = decode_str(buf, pos)
            value = s.decode("utf-8")
        else:
            value, pos = decode_str(buf, pos)
        out.setdefault(pid, []).append(value)
    if pos != end:
        raise ValueError("property block overruns its length")
    return out, end


def parse_connack(p: Packet, level: int = 4) -> tuple[bool, int, dict[int, list[object]]]:
    """-> (session_present, return/reason code, properties)."""
    assert p.type == CONNACK, f"expected CONNACK, got {p!r}"
    assert p.flags == 0, f"CONNACK reserved flags must be 0 [MQTT-2.2.2-1]: {p!r}"
    assert p.body[0] & 0xFE == 0, f"CONNACK acknowledge flags bits 7-1 reserved: {p!r}"
    properties: dict[int, list[object]] = {}
    if level >= 5 and len(p.body) > 2:
        properties, end = decode_props(p.body, 2)
        assert end == len(p.body), f"trailing bytes in CONNACK: {p!r}"
    elif level < 5:
        assert len(p.body) == 2, f"3.1.1 CONNACK has remaining length 2: {p!r}"
    return bool(p.body[0] & 1), p.body[1], properties


def parse_publish(p: Packet, level: int = 4) -> Pub:
    assert p.type == PUBLISH, f"expected PUBLISH, got {p!r}"
    qos = (p.flags >> 1) & 3
    assert qos != 3, "server sent QoS 3 [MQTT-3.3.1-4]"
    topic, pos = decode_str(p.body, 0)
    pid = 0
    if qos:
        pid, pos = int.from_bytes(p.body[pos : pos + 2], "big"), pos + 2
        assert pid != 0, "server sent PUBLISH QoS>0 with packet id 0 [MQTT-2.2.1-3]"
    properties: dict[int, list[object]] = {}
    if level >= 5:
        properties, pos = decode_props(p.body, pos)
    return Pub(
        topic.decode("utf-8"),
        p.body[pos:],
        qos,
        bool(p.flags & 1),
        bool(p.flags & 8),
        pid,
        properties,
    )


def parse_ack(p: Packet, ptype: int, level: int = 4) -> tuple[int, int]:
    """PUBACK/PUBREC/PUBREL/PUBCOMP/UNSUBACK(3.1.1) -> (packet id, reason code or 0)."""
    assert p.type == ptype, f"expected {NAMES[ptype]}, got {p!r}"
    expected_flags = 0x02 if ptype == PUBREL else 0
    assert p.flags == expected_flags, f"{p.name} reserved flags wrong [MQTT-2.2.2-1]: {p!r}"
    pid = int.from_bytes(p.body[:2], "big")
    rc = p.body[2] if level >= 5 and len(p.body) > 2 else 0
    if level < 5:
        assert len(p.body) == 2, f"{p.name} at level {level} has remaining length 2: {p!r}"
    return pid, rc


def parse_suback(p: Packet, level: int = 4, ptype: int = SUBACK) -> tuple[int, list[int]]:
    """SUBACK (or MQTT 5 UNSUBACK) -> (packet id, reason codes)."""
    assert p.type == ptype, f"expected {NAMES[ptype]}, got {p!r}"
    assert p.flags == 0, f"{p.name} reserved flags must be 0: {p!r}"
    pid = int.from_bytes(p.body[:2], "big")
    pos = 2
    if level >= 5:
        _, pos = decode_props(p.body, pos)
    return pid, list(p.body[pos:])


def parse_disconnect(p: Packet) -> int:
    assert p.type == DISCONNECT, f"expected DISCONNECT, got {p!r}"
    return p.body[0] if p.body else 0


# --- a raw client ------------------------------------------------------------------------------


class Client:
    """One TCP connection speaking raw bytes. Every read has a timeout; no background threads."""

    def __init__(self, addr: tuple[str, int], level: int = 4, timeout: float = RECV_TIMEOUT):
        self.addr = addr
        self.level = level
        self.sock = socket.create_connection(addr, timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.closed = False
        self.stash: list[Packet] = []

    # transport -------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            raise TimeoutError from None
        except (ConnectionResetError, BrokenPipeError) as e:
            self.closed = True
            raise Closed(str(e)) from None
        if not chunk:
            self.closed = True
            raise Closed("EOF")
        self.buf += chunk

    def recv(self, timeout: float = RECV_TIMEOUT) -> Packet:
        """The next whole packet. Raises TimeoutError if none comes in time, Closed on EOF."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 2:
                try:
                    length, pos = decode_varint(self.buf, 1)
                except IndexError:
                    length, pos = -1, 0
                if length >= 0 and len(self.buf) >= pos + length:
                    first = self.buf[0]
                    p = Packet(first >> 4, first & 0x0F, self.buf[pos : pos + length])
                    self.buf = self.buf[pos + length :]
                    return p
            self._fill(deadline)

    def expect(self, ptype: int, timeout: float = RECV_TIMEOUT) -> Packet:
        """The next packet, which must be of type ``ptype``. While waiting for an ack, PUBLISH
        packets (which the broker may interleave freely) are set aside, in order, for the next
        ``expect(PUBLISH)``; any other packet type is a failure."""
        if ptype == PUBLISH and self.stash:
            return self.stash.pop(0)
        deadline = time.monotonic() + timeout
        while True:
            try:
                p = self.recv(max(deadline - time.monotonic(), 0.001))
            except TimeoutError:
                raise TimeoutError(f"no {NAMES[ptype]} within {timeout}s") from None
            except Closed as e:
                raise AssertionError(
                    f"connection closed ({e}) while waiting for {NAMES[ptype]}"
                ) from None
            if p.type == PUBLISH and ptype != PUBLISH:
                self.stash.append(p)
                continue
            assert p.type == ptype, f"expected {NAMES[ptype]}, got {p!r}"
            return p

    def expect_quiet(self, timeout: float = QUIET_TIMEOUT) -> None:
        """Assert that nothing arrives (and the connection stays open) for ``timeout``.

        Only for rules about time (a will before its delay, a message past the Receive
        Maximum): a late packet passes it. To show that nothing else came, use ``until`` (a
        marker message) or ``until_pingresp``."""
        assert not self.stash, f"unexpected PUBLISH {self.stash[0]!r}"
        try:
            p = self.recv(timeout)
        except TimeoutError:
            return
        except Closed as e:
            raise AssertionError(f"connection closed unexpectedly ({e})") from None
        raise AssertionError(f"unexpected packet {p!r}")

    def wait_closed(self, timeout: float = CLOSE_TIMEOUT) -> list[Packet]:
        """Read until the broker closes the connection; returns the packets that came before
        the close. Fails if the connection is still open after ``timeout``."""
        deadline = time.monotonic() + timeout
        got: list[Packet] = []
        while True:
            try:
                got.append(self.recv(max(deadline - time.monotonic(), 0.001)))
            except Closed:
                return got
            except TimeoutError:
                raise TimeoutError(
                    f"broker did not close the connection within {timeout}s (got {got!r})"
                ) from None

    def until(
        self, marker: bytes = MARKER, timeout: float = RECV_TIMEOUT, ack: bool = True
    ) -> list[Pub]:
        """Every PUBLISH before the first one whose payload is ``marker`` (consumed), each
        acknowledged as ``recv_publish`` does unless ``ack`` is false (then the caller answers
        them; send the marker at QoS 0); any other packet before the marker fails.

        The test publishes the marker after the message under test, from the same publisher,
        on the same topic at the same QoS where it can (an Ordered Topic [MQTT-4.6.0-6]): a
        duplicate or a stray copy travels the same ordered path and arrives before the marker,
        however late, where a quiet period would let it pass."""
        deadline = time.monotonic() + timeout
        got: list[Pub] = []
        while True:
            left = max(deadline - time.monotonic(), 0.001)
            if not self.stash:
                try:
                    p = self.recv(left)
                except TimeoutError:
                    raise TimeoutError(
                        f"marker {marker!r} not received within {timeout}s; before it: {got!r}"
                    ) from None
                except Closed as e:
                    raise AssertionError(
                        f"connection closed ({e}) while waiting for marker {marker!r}; "
                        f"before it: {got!r}"
                    ) from None
                assert p.type == PUBLISH, f"unexpected packet {p!r} before marker {marker!r}"
                self.stash.append(p)
            m = self.recv_publish(left, ack=ack)
            if m.payload == marker:
                return got
            got.append(m)

    def until_pingresp(self, timeout: float = RECV_TIMEOUT) -> list[Pub]:
        """Send PINGREQ; every PUBLISH not yet read when the PINGRESP comes (then acknowledged as
        ``recv_publish`` does); any other packet before the PINGRESP fails.

        The broker handles one connection's packets in order, so whatever it owed this client
        for the packets sent before the PINGREQ (an ack, a retained message, a DISCONNECT) comes
        first: a marker for what the broker answers on this connection. For messages routed
        from other clients use ``until``."""
        self.send(PINGREQ_BYTES)
        self.expect(PINGRESP, timeout)  # sets the PUBLISH packets before it aside, fails on others
        return [self.recv_publish() for _ in range(len(self.stash))]

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def kill(self) -> None:
        """Drop the connection without DISCONNECT (an RST, like a crashed client)."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # protocol helpers ------------------------------------------------------------------------

    def connect(
        self, client_id: str | bytes, *, expect_rc: int | None = 0, **kw: object
    ) -> tuple[bool, int, dict[int, list[object]]]:
        """Send CONNECT at self.level and read the CONNACK (asserting its code when
        ``expect_rc`` is not None)."""
        self.send(connect(client_id, level=self.level, **kw))  # type: ignore[arg-type]
        sp, rc, properties = parse_connack(self.expect(CONNACK), self.level)
        if expect_rc is not None:
            assert rc == expect_rc, f"CONNACK code {rc:#x}, expected {expect_rc:#x}"
        return sp, rc, properties

    def subscribe(
        self, filters: list[tuple[str | bytes, int]] | str, qos: int = 0, pid: int = 1
    ) -> list[int]:
        """SUBSCRIBE and wait for the SUBACK with the same packet id [MQTT-3.8.4-2]."""
        if isinstance(filters, str):
            filters = [(filters, qos)]
        self.send(subscribe(pid, filters, level=self.level))
        got_pid, codes = parse_suback(self.expect(SUBACK), self.level)
        assert got_pid == pid, f"SUBACK packet id {got_pid}, expected {pid} [MQTT-3.8.4-2]"
        assert len(codes) == len(filters), "one SUBACK code per filter [MQTT-3.8.4-6]"
        return codes

    def unsubscribe(self, filters: list[str | bytes], pid: int = 2) -> list[int]:
        self.send(unsubscribe(pid, filters, level=self.level))
        p = self.expect(UNSUBACK)
        if self.level >= 5:
            got_pid, codes = parse_suback(p, self.level, UNSUBACK)
        else:
            got_pid, _ = parse_ack(p, UNSUBACK, self.level)
            codes = []
        assert got_pid == pid, f"UNSUBACK packet id {got_pid}, expected {pid} [MQTT-3.10.4-4]"
        return codes

    def publish(
        self, topic: str | bytes, payload: bytes = b"", qos: int = 0, pid: int = 1, **kw: object
    ) -> None:
        """PUBLISH and, for QoS 1/2, complete the publisher side of the flow."""
        self.send(
            publish(topic, payload, qos=qos, pid=pid if qos else None, level=self.level, **kw)
        )  # type: ignore[arg-type]
        if qos == 1:
            got, _ = parse_ack(self.expect(PUBACK), PUBACK, self.level)
            assert got == pid, f"PUBACK packet id {got}, expected {pid} [MQTT-2.3.1-6]"
        elif qos == 2:
            got, _ = parse_ack(self.expect(PUBREC), PUBREC, self.level)
            assert got == pid, f"PUBREC packet id {got}, expected {pid}"
            self.send(pubrel(pid))
            got, _ = parse_ack(self.expect(PUBCOMP), PUBCOMP, self.level)
            assert got == pid, f"PUBCOMP packet id {got}, expected {pid}"

    def recv_publish(self, timeout: float = RECV_TIMEOUT, ack: bool = True) -> Pub:
        """Wait for a PUBLISH; with ``ack`` complete the receiver side of its QoS flow."""
        m = parse_publish(self.expect(PUBLISH, timeout), self.level)
        if ack and m.qos == 1:
            self.send(puback(m.pid))
        elif ack and m.qos == 2:
            self.send(pubrec(m.pid))
            got, _ = parse_ack(self.expect(PUBREL), PUBREL, self.level)
            assert got == m.pid, f"PUBREL packet id {got}, expected {m.pid}"
            self.send(pubcomp(m.pid))
        return m

    def ping(self) -> None:
        self.send(PINGREQ_BYTES)
        p = self.expect(PINGRESP)
        assert p.flags == 0 and p.body == b"", f"PINGRESP must be c0 00: {p!r}"

    def disconnect(self, rc: int = 0) -> None:
        self.send(disconnect(rc, level=self.level))
        self.close()


def connected(addr: tuple[str, int], client_id: str, level: int = 4, **kw: object) -> Client:
    """A Client that has sent CONNECT and got CONNACK 0."""
    c = Client(addr, level)
    try:
        c.connect(client_id, **kw)
    except BaseException:
        c.close()
        raise
    return c


def assert_serves(addr: tuple[str, int], level: int = 4) -> None:
    """The broker still accepts a new client: CONNECT gets CONNACK 0, PINGREQ gets PINGRESP."""
    with Client(addr, level) as c:
        c.connect(f"still-serving-{time.monotonic_ns()}")
        c.ping()
        c.disconnect()


def assert_closed(
    c: Client, allowed_disconnect: tuple[int, ...] = (), timeout: float = CLOSE_TIMEOUT
) -> None:
    """The broker closes ``c``. At MQTT 5 it may first send one DISCONNECT, whose reason code
    must then be one of ``allowed_disconnect`` (any code >= 0x80 if that is empty)
    [MQTT-4.13.1-1]. No other packet may come first."""
    got = c.wait_closed(timeout)
    for p in got:
        assert p.type == DISCONNECT and c.level >= 5, f"unexpected {p!r} before close"
        rc = parse_disconnect(p)
        if allowed_disconnect:
            assert rc in allowed_disconnect, (
                f"DISCONNECT reason {rc:#x} not in {[hex(x) for x in allowed_disconnect]}"
            )
        else:
            assert rc >= 0x80, f"DISCONNECT reason {rc:#x} is not an error code"
