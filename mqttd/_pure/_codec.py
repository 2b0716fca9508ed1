"""MQTT packet codec, pure-Python twin of ``mqttd._codec`` (spec: notes/codec_api.md).

``Reader`` frames and decodes an incoming byte stream incrementally; the ``encode_*`` functions
build packets. Both behave exactly like the compiled module: the compiled module is tested against
this one. Every malformed or forbidden packet raises ``PacketError`` with the MQTT 5 reason code
that fits (0x81 Malformed Packet, 0x82 Protocol Error, 0x84 Unsupported Protocol Version, 0x95
Packet Too Large).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mqttd.constants import (
    AUTH,
    BRIDGE_LEVEL_BIT,
    CONNACK,
    CONNECT,
    DISCONNECT,
    MALFORMED_PACKET,
    MAX_STRING,
    MAX_VARINT,
    PACKET_NAMES,
    PACKET_TOO_LARGE,
    PINGREQ,
    PINGRESP,
    PROPERTY_PACKETS,
    PROPERTY_TYPES,
    PROTOCOL_ERROR,
    PT_BINARY,
    PT_BYTE,
    PT_FOUR_BYTE_INT,
    PT_TWO_BYTE_INT,
    PT_UTF8,
    PT_VARINT,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    SUBACK,
    SUBSCRIBE,
    SUBSCRIPTION_IDENTIFIER,
    SUPPORTED_PROTOCOLS,
    UNSUBACK,
    UNSUBSCRIBE,
    UNSUPPORTED_PROTOCOL_VERSION,
    USER_PROPERTY,
    WILL_PROPERTIES,
    protocol_name,
)
from mqttd.errors import PacketError

__all__ = [
    "Ack",
    "Auth",
    "ConnAck",
    "Connect",
    "Disconnect",
    "PingReq",
    "PingResp",
    "Publish",
    "Reader",
    "SubAck",
    "Subscribe",
    "UnsubAck",
    "Unsubscribe",
    "Will",
    "decode_varint",
    "encode",
    "encode_ack",
    "encode_auth",
    "encode_connack",
    "encode_connect",
    "encode_disconnect",
    "encode_pingreq",
    "encode_pingresp",
    "encode_properties",
    "encode_publish",
    "encode_suback",
    "encode_subscribe",
    "encode_unsuback",
    "encode_unsubscribe",
    "encode_varint",
]


# ------------------------------------------------------------------------------------------------
# Packet classes
# ------------------------------------------------------------------------------------------------


class _Packet:
    """Common ``__eq__``/``__repr__`` over the fields named in ``_fields``."""

    __slots__ = ()
    _fields: tuple[str, ...] = ()
    packet_type: int

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self._fields)

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        args = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
        return f"{type(self).__name__}({args})"


class Will(_Packet):
    """The Will Message carried in a CONNECT (not a packet by itself)."""

    __slots__ = ("topic", "payload", "qos", "retain", "properties")
    _fields = __slots__

    def __init__(
        self,
        topic: str = "",
        payload: bytes = b"",
        qos: int = 0,
        retain: bool = False,
        properties: dict | None = None,
    ) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = bool(retain)
        self.properties = {} if properties is None else properties


class Connect(_Packet):
    __slots__ = (
        "protocol_name",
        "protocol_level",
        "clean_start",
        "keepalive",
        "client_id",
        "username",
        "password",
        "will",
        "properties",
        "bridge",
    )
    _fields = __slots__
    packet_type = CONNECT

    def __init__(
        self,
        protocol_name: str = "MQTT",
        protocol_level: int = 4,
        clean_start: bool = True,
        keepalive: int = 60,
        client_id: str = "",
        username: str | None = None,
        password: bytes | None = None,
        will: Will | None = None,
        properties: dict | None = None,
        bridge: bool = False,
    ) -> None:
        self.protocol_name = protocol_name
        self.protocol_level = protocol_level
        self.clean_start = bool(clean_start)
        self.keepalive = keepalive
        self.client_id = client_id
        self.username = username
        self.password = password
        self.will = will
        self.properties = {} if properties is None else properties
        # Sent with protocol level 0x83/0x84: a bridge (``protocol_level`` is then 3/4)
        self.bridge = bool(bridge)


class ConnAck(_Packet):
    __slots__ = ("session_present", "reason_code", "properties")
    _fields = __slots__
    packet_type = CONNACK

    def __init__(
        self, session_present: bool = False, reason_code: int = 0, properties: dict | None = None
    ) -> None:
        self.session_present = bool(session_present)
        self.reason_code = reason_code
        self.properties = {} if properties is None else properties


class Publish(_Packet):
    __slots__ = ("topic", "payload", "qos", "retain", "dup", "packet_id", "properties")
    _fields = __slots__
    packet_type = PUBLISH

    def __init__(
        self,
        topic: str = "",
        payload: bytes = b"",
        qos: int = 0,
        retain: bool = False,
        dup: bool = False,
        packet_id: int = 0,
        properties: dict | None = None,
    ) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = bool(retain)
        self.dup = bool(dup)
        self.packet_id = packet_id
        self.properties = {} if properties is None else properties


class Ack(_Packet):
    """PUBACK, PUBREC, PUBREL and PUBCOMP (``packet_type`` says which)."""

    __slots__ = ("packet_type", "packet_id", "reason_code", "properties")
    _fields = __slots__

    def __init__(
        self,
        packet_type: int = PUBACK,
        packet_id: int = 0,
        reason_code: int = 0,
        properties: dict | None = None,
    ) -> None:
        self.packet_type = packet_type
        self.packet_id = packet_id
        self.reason_code = reason_code
        self.properties = {} if properties is None else properties


class Subscribe(_Packet):
    __slots__ = ("packet_id", "subscriptions", "properties")
    _fields = __slots__
    packet_type = SUBSCRIBE

    def __init__(
        self,
        packet_id: int = 0,
        subscriptions: list[tuple[str, int]] | None = None,
        properties: dict | None = None,
    ) -> None:
        self.packet_id = packet_id
        self.subscriptions = [] if subscriptions is None else subscriptions
        self.properties = {} if properties is None else properties


class _FilterAck(_Packet):
    """SUBACK and UNSUBACK: a packet id and a reason code per topic filter."""

    __slots__ = ("packet_id", "reason_codes", "properties")
    _fields = __slots__

    def __init__(
        self,
        packet_id: int = 0,
        reason_codes: list[int] | None = None,
        properties: dict | None = None,
    ) -> None:
        self.packet_id = packet_id
        self.reason_codes = [] if reason_codes is None else reason_codes
        self.properties = {} if properties is None else properties


class SubAck(_FilterAck):
    __slots__ = ()
    packet_type = SUBACK


class Unsubscribe(_Packet):
    __slots__ = ("packet_id", "filters", "properties")
    _fields = __slots__
    packet_type = UNSUBSCRIBE

    def __init__(
        self,
        packet_id: int = 0,
        filters: list[str] | None = None,
        properties: dict | None = None,
    ) -> None:
        self.packet_id = packet_id
        self.filters = [] if filters is None else filters
        self.properties = {} if properties is None else properties


class UnsubAck(_FilterAck):
    __slots__ = ()
    packet_type = UNSUBACK


class PingReq(_Packet):
    __slots__ = ()
    packet_type = PINGREQ


class PingResp(_Packet):
    __slots__ = ()
    packet_type = PINGRESP


class _ReasonOnly(_Packet):
    """DISCONNECT and AUTH: a reason code and properties, both of which may be omitted."""

    __slots__ = ("reason_code", "properties")
    _fields = __slots__

    def __init__(self, reason_code: int = 0, properties: dict | None = None) -> None:
        self.reason_code = reason_code
        self.properties = {} if properties is None else properties


class Disconnect(_ReasonOnly):
    __slots__ = ()
    packet_type = DISCONNECT


class Auth(_ReasonOnly):
    __slots__ = ()
    packet_type = AUTH


# ------------------------------------------------------------------------------------------------
# Decoding helpers. Each takes the packet bytes, a position and the end of the packet (or of the
# property block) and returns (value, new position); running past ``end`` is Malformed.
# ------------------------------------------------------------------------------------------------


def _past_end(what: str) -> PacketError:
    return PacketError(MALFORMED_PACKET, f"{what} runs past the end of the packet")


def decode_varint(buf: bytes | bytearray | memoryview, pos: int = 0) -> tuple[int, int]:
    """Decode a Variable Byte Integer at ``pos``; return (value, position after it)."""
    if pos < 0:
        raise ValueError("negative position")
    return _read_varint(buf, pos, len(buf))


def _read_varint(buf: Any, pos: int, end: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        if pos >= end:
            raise _past_end("variable byte integer")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift == 28:
            # [MQTT-1.5.5-1] at most four bytes
            raise PacketError(MALFORMED_PACKET, "variable byte integer longer than 4 bytes")


def _read_u16(buf: bytes, pos: int, end: int, what: str) -> tuple[int, int]:
    if pos + 2 > end:
        raise _past_end(what)
    return (buf[pos] << 8) | buf[pos + 1], pos + 2


def _read_str(buf: bytes, pos: int, end: int, what: str = "UTF-8 string") -> tuple[str, int]:
    n, pos = _read_u16(buf, pos, end, what)
    stop = pos + n
    if stop > end:
        raise _past_end(what)
    raw = buf[pos:stop]
    if b"\x00" in raw:
        # [MQTT-1.5.4-2] a UTF-8 string must not contain U+0000
        raise PacketError(MALFORMED_PACKET, f"{what} contains U+0000")
    try:
        s = raw.decode("utf-8")
    except UnicodeDecodeError:
        # [MQTT-1.5.4-1] ill-formed UTF-8 (Python's strict decoder also rejects surrogates)
        raise PacketError(MALFORMED_PACKET, f"{what} is not well-formed UTF-8") from None
    return s, stop


def _read_bin(buf: bytes, pos: int, end: int, what: str = "binary data") -> tuple[bytes, int]:
    n, pos = _read_u16(buf, pos, end, what)
    stop = pos + n
    if stop > end:
        raise _past_end(what)
    return buf[pos:stop], stop


def _read_props(buf: bytes, pos: int, end: int, ptype: int) -> tuple[dict, int]:
    """Decode a property block (varint length + properties) for packet type ``ptype``."""
    length, pos = _read_varint(buf, pos, end)
    stop = pos + length
    if stop > end:
        raise _past_end("property block")
    props: dict = {}
    while pos < stop:
        pid, pos = _read_varint(buf, pos, stop)
        ptype_of = PROPERTY_TYPES.get(pid)
        if ptype_of is None or ptype not in PROPERTY_PACKETS[pid]:
            # [MQTT 5 §2.2.2.2] unknown identifier or not valid for this packet
            raise PacketError(MALFORMED_PACKET, f"property 0x{pid:02x} not valid here")
        value: Any
        if ptype_of == PT_BYTE:
            if pos >= stop:
                raise _past_end("property")
            value = buf[pos]
            pos += 1
        elif ptype_of == PT_TWO_BYTE_INT:
            value, pos = _read_u16(buf, pos, stop, "property")
        elif ptype_of == PT_FOUR_BYTE_INT:
            if pos + 4 > stop:
                raise _past_end("property")
            value = int.from_bytes(buf[pos : pos + 4], "big")
            pos += 4
        elif ptype_of == PT_VARINT:
            value, pos = _read_varint(buf, pos, stop)
        elif ptype_of == PT_UTF8:
            value, pos = _read_str(buf, pos, stop, "property string")
        elif ptype_of == PT_BINARY:
            value, pos = _read_bin(buf, pos, stop, "property binary data")
        else:  # PT_UTF8_PAIR
            key, pos = _read_str(buf, pos, stop, "user property name")
            val, pos = _read_str(buf, pos, stop, "user property value")
            value = (key, val)
        if pid == USER_PROPERTY:
            props.setdefault(pid, []).append(value)
        elif pid == SUBSCRIPTION_IDENTIFIER:
            ids = props.get(pid)
            if ids is None:
                props[pid] = [value]
            elif ptype == PUBLISH:
                # a server->client PUBLISH carries one per matching subscription [MQTT 5 §3.3.2.3.8]
                ids.append(value)
            else:
                raise PacketError(PROTOCOL_ERROR, "subscription identifier included twice")
        elif pid in props:
            # [MQTT 5 §2.2.2.2] "It is a Protocol Error to include ... more than once"
            raise PacketError(PROTOCOL_ERROR, f"property 0x{pid:02x} included more than once")
        else:
            props[pid] = value
    return props, stop


def _check_end(pos: int, end: int, what: str) -> None:
    if pos != end:
        raise PacketError(MALFORMED_PACKET, f"{end - pos} unexpected bytes at the end of {what}")


# ------------------------------------------------------------------------------------------------
# Packet body decoders: (buf, pos, end, flags, level) -> packet
# ------------------------------------------------------------------------------------------------


def _d_connect(buf: bytes, pos: int, end: int, flags: int, level: int) -> Connect:
    name, pos = _read_str(buf, pos, end, "protocol name")
    if pos >= end:
        raise _past_end("protocol level")
    lvl = buf[pos]
    pos += 1
    # Mosquitto bridges (try_private) set bit 7 of a 3.1 / 3.1.1 level: 0x83, 0x84. MQTT 5
    # has subscription options for what the bit asks, and 0x85 stays unsupported.
    bridge = lvl == (BRIDGE_LEVEL_BIT | 3) or lvl == (BRIDGE_LEVEL_BIT | 4)
    if bridge:
        lvl &= 0x7F
    if (name, lvl) not in SUPPORTED_PROTOCOLS:
        # [MQTT-3.1.2-1/2] the broker answers CONNACK 0x01 (3.1.1) / 0x84 (5) and closes
        raise PacketError(
            UNSUPPORTED_PROTOCOL_VERSION, f"unsupported protocol {name!r} level {buf[pos - 1]}"
        )
    if pos + 3 > end:
        raise _past_end("connect flags / keep alive")
    cf = buf[pos]
    keepalive = (buf[pos + 1] << 8) | buf[pos + 2]
    pos += 3
    if cf & 0x01:
        raise PacketError(MALFORMED_PACKET, "CONNECT reserved flag set [MQTT-3.1.2-3]")
    will_flag = cf & 0x04
    will_qos = (cf >> 3) & 3
    will_retain = cf & 0x20
    if not will_flag and (will_qos or will_retain):
        raise PacketError(
            MALFORMED_PACKET, "will QoS/retain without will flag [MQTT-3.1.2-11/13/15]"
        )
    if will_qos == 3:
        raise PacketError(MALFORMED_PACKET, "will QoS 3 [MQTT-3.1.2-14]")
    if lvl < 5 and cf & 0x40 and not cf & 0x80:
        raise PacketError(MALFORMED_PACKET, "password flag without user name flag [MQTT-3.1.2-22]")
    props: dict = {}
    if lvl == 5:
        props, pos = _read_props(buf, pos, end, CONNECT)
    client_id, pos = _read_str(buf, pos, end, "client identifier")
    will = None
    if will_flag:
        wprops: dict = {}
        if lvl == 5:
            wprops, pos = _read_props(buf, pos, end, WILL_PROPERTIES)
        wtopic, pos = _read_str(buf, pos, end, "will topic")
        wpayload, pos = _read_bin(buf, pos, end, "will payload")
        will = Will(wtopic, wpayload, will_qos, bool(will_retain), wprops)
    username = None
    if cf & 0x80:
        username, pos = _read_str(buf, pos, end, "user name")
    password = None
    if cf & 0x40:
        password, pos = _read_bin(buf, pos, end, "password")
    _check_end(pos, end, "CONNECT")
    return Connect(
        name, lvl, bool(cf & 0x02), keepalive, client_id, username, password, will, props, bridge
    )


def _d_connack(buf: bytes, pos: int, end: int, flags: int, level: int) -> ConnAck:
    if pos + 2 > end:
        raise _past_end("CONNACK")
    af = buf[pos]
    rc = buf[pos + 1]
    pos += 2
    if af & 0xFE:
        raise PacketError(MALFORMED_PACKET, "CONNACK reserved flags set [MQTT-3.2.2-1]")
    props: dict = {}
    if level == 5:
        props, pos = _read_props(buf, pos, end, CONNACK)
    _check_end(pos, end, "CONNACK")
    return ConnAck(bool(af), rc, props)


def _d_publish(buf: bytes, pos: int, end: int, flags: int, level: int) -> Publish:
    topic, pos = _read_str(buf, pos, end, "topic name")
    qos = (flags >> 1) & 3
    packet_id = 0
    if qos:
        packet_id, pos = _read_u16(buf, pos, end, "packet identifier")
        if packet_id == 0:
            raise PacketError(
                PROTOCOL_ERROR, "PUBLISH QoS>0 with packet identifier 0 [MQTT-2.2.1-3]"
            )
    props: dict = {}
    if level == 5:
        props, pos = _read_props(buf, pos, end, PUBLISH)
    return Publish(topic, buf[pos:end], qos, bool(flags & 1), bool(flags & 8), packet_id, props)


def _d_ack(buf: bytes, pos: int, end: int, flags: int, level: int, ptype: int) -> Ack:
    packet_id, pos = _read_u16(buf, pos, end, "packet identifier")
    rc = 0
    props: dict = {}
    if level == 5 and pos < end:
        # [MQTT 5 §3.4.2.1] reason code and properties may be omitted
        rc = buf[pos]
        pos += 1
        if pos < end:
            props, pos = _read_props(buf, pos, end, ptype)
    _check_end(pos, end, "acknowledgement")
    return Ack(ptype, packet_id, rc, props)


def _d_subscribe(buf: bytes, pos: int, end: int, flags: int, level: int) -> Subscribe:
    packet_id, pos = _read_u16(buf, pos, end, "packet identifier")
    if packet_id == 0:
        raise PacketError(PROTOCOL_ERROR, "SUBSCRIBE with packet identifier 0 [MQTT-2.2.1-3]")
    props: dict = {}
    if level == 5:
        props, pos = _read_props(buf, pos, end, SUBSCRIBE)
    subs: list[tuple[str, int]] = []
    while pos < end:
        topic_filter, pos = _read_str(buf, pos, end, "topic filter")
        if pos >= end:
            raise _past_end("subscription options")
        opts = buf[pos]
        pos += 1
        if level != 5:
            if opts & 0xFC:
                raise PacketError(
                    MALFORMED_PACKET, "SUBSCRIBE reserved option bits set [MQTT-3-8.3-4]"
                )
        elif opts & 0xC0:
            raise PacketError(
                MALFORMED_PACKET, "SUBSCRIBE reserved option bits 6-7 set [MQTT-3.8.3-5]"
            )
        if opts & 3 == 3:
            raise PacketError(MALFORMED_PACKET, "SUBSCRIBE with QoS 3")
        if opts & 0x30 == 0x30:
            raise PacketError(PROTOCOL_ERROR, "SUBSCRIBE with Retain Handling 3")
        subs.append((topic_filter, opts))
    if not subs:
        raise PacketError(PROTOCOL_ERROR, "SUBSCRIBE without topic filter [MQTT-3.8.3-3]")
    return Subscribe(packet_id, subs, props)


def _d_suback(buf: bytes, pos: int, end: int, flags: int, level: int) -> SubAck:
    packet_id, pos = _read_u16(buf, pos, end, "packet identifier")
    props: dict = {}
    if level == 5:
        props, pos = _read_props(buf, pos, end, SUBACK)
    return SubAck(packet_id, list(buf[pos:end]), props)


def _d_unsubscribe(buf: bytes, pos: int, end: int, flags: int, level: int) -> Unsubscribe:
    packet_id, pos = _read_u16(buf, pos, end, "packet identifier")
    if packet_id == 0:
        raise PacketError(PROTOCOL_ERROR, "UNSUBSCRIBE with packet identifier 0 [MQTT-2.2.1-3]")
    props: dict = {}
    if level == 5:
        props, pos = _read_props(buf, pos, end, UNSUBSCRIBE)
    filters: list[str] = []
    while pos < end:
        topic_filter, pos = _read_str(buf, pos, end, "topic filter")
        filters.append(topic_filter)
    if not filters:
        raise PacketError(PROTOCOL_ERROR, "UNSUBSCRIBE without topic filter [MQTT-3.10.3-2]")
    return Unsubscribe(packet_id, filters, props)


def _d_unsuback(buf: bytes, pos: int, end: int, flags: int, level: int) -> UnsubAck:
    packet_id, pos = _read_u16(buf, pos, end, "packet identifier")
    if level != 5:
        _check_end(pos, end, "UNSUBACK")
        return UnsubAck(packet_id, [], {})
    props, pos = _read_props(buf, pos, end, UNSUBACK)
    return UnsubAck(packet_id, list(buf[pos:end]), props)


def _d_pingreq(buf: bytes, pos: int, end: int, flags: int, level: int) -> PingReq:
    _check_end(pos, end, "PINGREQ")
    return PingReq()


def _d_pingresp(buf: bytes, pos: int, end: int, flags: int, level: int) -> PingResp:
    _check_end(pos, end, "PINGRESP")
    return PingResp()


def _d_rc_props(buf: bytes, pos: int, end: int, level: int, ptype: int) -> tuple[int, dict]:
    # DISCONNECT / AUTH: reason code and properties may be omitted [MQTT 5 §3.14.2.1, §3.15.2.1]
    rc = 0
    props: dict = {}
    if level == 5 and pos < end:
        rc = buf[pos]
        pos += 1
        if pos < end:
            props, pos = _read_props(buf, pos, end, ptype)
    _check_end(pos, end, PACKET_NAMES[ptype])
    return rc, props


def _d_disconnect(buf: bytes, pos: int, end: int, flags: int, level: int) -> Disconnect:
    rc, props = _d_rc_props(buf, pos, end, level, DISCONNECT)
    return Disconnect(rc, props)


def _d_auth(buf: bytes, pos: int, end: int, flags: int, level: int) -> Auth:
    rc, props = _d_rc_props(buf, pos, end, level, AUTH)
    return Auth(rc, props)


_DECODERS: dict[int, Any] = {
    CONNECT: _d_connect,
    CONNACK: _d_connack,
    PUBLISH: _d_publish,
    PUBACK: lambda b, p, e, f, lv: _d_ack(b, p, e, f, lv, PUBACK),
    PUBREC: lambda b, p, e, f, lv: _d_ack(b, p, e, f, lv, PUBREC),
    PUBREL: lambda b, p, e, f, lv: _d_ack(b, p, e, f, lv, PUBREL),
    PUBCOMP: lambda b, p, e, f, lv: _d_ack(b, p, e, f, lv, PUBCOMP),
    SUBSCRIBE: _d_subscribe,
    SUBACK: _d_suback,
    UNSUBSCRIBE: _d_unsubscribe,
    UNSUBACK: _d_unsuback,
    PINGREQ: _d_pingreq,
    PINGRESP: _d_pingresp,
    DISCONNECT: _d_disconnect,
    AUTH: _d_auth,
}


def _check_first_byte(b0: int, level: int) -> None:
    """Validate packet type and fixed-header flags as soon as the first byte is seen."""
    ptype = b0 >> 4
    flags = b0 & 0x0F
    if ptype == 0:
        raise PacketError(MALFORMED_PACKET, "reserved packet type 0")
    if ptype == PUBLISH:
        qos = (flags >> 1) & 3
        if qos == 3:
            raise PacketError(MALFORMED_PACKET, "PUBLISH with QoS 3 [MQTT-3.3.1-4]")
        if qos == 0 and flags & 0x08:
            raise PacketError(MALFORMED_PACKET, "PUBLISH QoS 0 with DUP set [MQTT-3.3.1-2]")
        return
    if ptype == AUTH and level < 5:
        raise PacketError(MALFORMED_PACKET, "AUTH before MQTT 5")
    # [MQTT-2.2.2-1/2] reserved flags: 0b0010 for PUBREL/SUBSCRIBE/UNSUBSCRIBE, else 0
    expected = 2 if ptype in (PUBREL, SUBSCRIBE, UNSUBSCRIBE) else 0
    if flags != expected:
        raise PacketError(MALFORMED_PACKET, f"packet type {ptype} with invalid fixed-header flags")


# ------------------------------------------------------------------------------------------------
# Reader
# ------------------------------------------------------------------------------------------------


class Reader:
    """Incremental MQTT framing and decoding for one connection."""

    __slots__ = ("max_packet_size", "protocol_level", "_buf", "_need", "_error")

    def __init__(self, max_packet_size: int = 1048576, protocol_level: int = 0) -> None:
        self.max_packet_size = max_packet_size
        self.protocol_level = protocol_level
        self._buf = bytearray()
        self._need = 0  # size of the buffered packet once its fixed header is complete
        self._error: int | None = None

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a packet."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list:
        """Add ``data``; return the packets it completes, in order."""
        if self._error is not None:
            raise PacketError(self._error, "the connection already sent a bad packet")
        if self._buf:
            if self._need and len(self._buf) + len(data) < self._need:
                self._buf += data  # still short of the packet: avoid re-parsing
                return []
            self._buf += data
            buf = bytes(self._buf)
        else:
            buf = data if type(data) is bytes else bytes(data)
        out: list = []
        pos = 0
        n = len(buf)
        need = 0
        try:
            while pos < n:
                b0 = buf[pos]
                _check_first_byte(b0, self.protocol_level)
                # Remaining Length [MQTT 5 §2.1.4]
                i = pos + 1
                rl = 0
                shift = 0
                complete = False
                while i < n:
                    b = buf[i]
                    i += 1
                    rl |= (b & 0x7F) << shift
                    if not b & 0x80:
                        complete = True
                        break
                    shift += 7
                    if shift == 28:
                        # [MQTT-1.5.5-1 / 2.1.4] at most four bytes
                        raise PacketError(MALFORMED_PACKET, "remaining length longer than 4 bytes")
                if not complete:
                    break
                total = i - pos + rl
                if total > self.max_packet_size:
                    # refused from the fixed header, before buffering the body
                    raise PacketError(
                        PACKET_TOO_LARGE,
                        f"packet of {total} bytes exceeds maximum packet size "
                        f"{self.max_packet_size}",
                    )
                end = pos + total
                if end > n:
                    need = total
                    break
                ptype = b0 >> 4
                pkt = _DECODERS[ptype](buf, i, end, b0 & 0x0F, self.protocol_level or 4)
                if ptype == CONNECT:
                    self.protocol_level = pkt.protocol_level
                out.append(pkt)
                pos = end
        except PacketError as exc:
            exc.packets = out
            self._error = exc.reason_code
            self._buf = bytearray()
            raise
        self._need = need
        self._buf = bytearray(buf[pos:]) if pos < n else bytearray()
        return out


# ------------------------------------------------------------------------------------------------
# Encoders
# ------------------------------------------------------------------------------------------------


def encode_varint(n: int) -> bytes:
    """Encode a Variable Byte Integer [MQTT 5 §1.5.5]."""
    if n < 0 or n > MAX_VARINT:
        raise ValueError(f"variable byte integer out of range: {n}")
    if n < 128:
        return bytes((n,))
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _u16(n: int) -> bytes:
    if n < 0 or n > 0xFFFF:
        raise ValueError(f"two byte integer out of range: {n}")
    return n.to_bytes(2, "big")


def _u32(n: int) -> bytes:
    if n < 0 or n > 0xFFFFFFFF:
        raise ValueError(f"four byte integer out of range: {n}")
    return n.to_bytes(4, "big")


def _byte(n: int) -> bytes:
    if n < 0 or n > 0xFF:
        raise ValueError(f"byte out of range: {n}")
    return bytes((n,))


def _str(s: str) -> bytes:
    raw = s.encode("utf-8")
    if len(raw) > MAX_STRING:
        raise ValueError(f"UTF-8 string of {len(raw)} bytes is longer than 65535")
    return len(raw).to_bytes(2, "big") + raw


def _bin(b: bytes | bytearray | memoryview | str) -> bytes:
    raw = b.encode("utf-8") if isinstance(b, str) else bytes(b)
    if len(raw) > MAX_STRING:
        raise ValueError(f"binary data of {len(raw)} bytes is longer than 65535")
    return len(raw).to_bytes(2, "big") + raw


def encode_properties(properties: dict | None) -> bytes:
    """The property block, including its Variable Byte Integer length [MQTT 5 §2.2.2]."""
    if not properties:
        return b"\x00"
    parts: list[bytes] = []
    for pid, value in properties.items():
        ptype = PROPERTY_TYPES.get(pid)
        if ptype is None:
            raise ValueError(f"unknown property identifier {pid!r}")
        head = bytes((pid,))
        if pid == USER_PROPERTY:
            for key, val in value:
                parts.append(head + _str(key) + _str(val))
        elif pid == SUBSCRIPTION_IDENTIFIER:
            for sid in [value] if isinstance(value, int) else value:
                parts.append(head + encode_varint(sid))
        elif ptype == PT_BYTE:
            parts.append(head + _byte(value))
        elif ptype == PT_TWO_BYTE_INT:
            parts.append(head + _u16(value))
        elif ptype == PT_FOUR_BYTE_INT:
            parts.append(head + _u32(value))
        elif ptype == PT_VARINT:  # pragma: no cover - only SUBSCRIPTION_IDENTIFIER has this type
            parts.append(head + encode_varint(value))
        elif ptype == PT_UTF8:
            parts.append(head + _str(value))
        elif ptype == PT_BINARY:
            parts.append(head + _bin(value))
        else:  # pragma: no cover - PT_UTF8_PAIR is only USER_PROPERTY
            raise ValueError(f"cannot encode property {pid!r}")
    body = b"".join(parts)
    return encode_varint(len(body)) + body


#: the packets without a body: a fixed header and a Remaining Length of 0
_PINGREQ = bytes((PINGREQ << 4, 0))
_PINGRESP = bytes((PINGRESP << 4, 0))


def _packet(b0: int, body: bytes) -> bytes:
    return bytes((b0,)) + encode_varint(len(body)) + body


def encode_connect(
    client_id: str,
    protocol_level: int = 4,
    clean_start: bool = True,
    keepalive: int = 60,
    username: str | None = None,
    password: bytes | None = None,
    will: Will | None = None,
    properties: dict | None = None,
    bridge: bool = False,
) -> bytes:
    flags = 0x02 if clean_start else 0
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
    if password is not None:
        flags |= 0x40
    if username is not None:
        flags |= 0x80
    level = (protocol_level | BRIDGE_LEVEL_BIT) if bridge else protocol_level
    parts = [_str(protocol_name(protocol_level)), _byte(level), bytes((flags,))]
    parts.append(_u16(keepalive))
    if protocol_level == 5:
        parts.append(encode_properties(properties))
    parts.append(_str(client_id))
    if will is not None:
        if protocol_level == 5:
            parts.append(encode_properties(will.properties))
        parts.append(_str(will.topic))
        parts.append(_bin(will.payload))
    if username is not None:
        parts.append(_str(username))
    if password is not None:
        parts.append(_bin(password))
    return _packet(CONNECT << 4, b"".join(parts))


def encode_connack(
    session_present: bool, reason_code: int, protocol_level: int = 4, properties: dict | None = None
) -> bytes:
    # MQTT 3.1 has no Session Present: the first byte of CONNACK's variable header is reserved
    # (3.1 §3.2, "Reserved values. Not used"), so it is 0 at level 3 whatever the session.
    present = session_present and protocol_level != 3
    body = bytes((1 if present else 0,)) + _byte(reason_code)
    if protocol_level == 5:
        body += encode_properties(properties)
    return _packet(CONNACK << 4, body)


def encode_publish(
    topic: str,
    payload: bytes | bytearray | memoryview,
    qos: int = 0,
    retain: bool = False,
    dup: bool = False,
    packet_id: int = 0,
    protocol_level: int = 4,
    properties: dict | None = None,
) -> bytes:
    raw = topic.encode("utf-8")
    if len(raw) > MAX_STRING:
        raise ValueError(f"topic of {len(raw)} bytes is longer than 65535")
    b0 = (PUBLISH << 4) | (qos << 1) | (1 if retain else 0) | (8 if dup else 0)
    head = len(raw).to_bytes(2, "big") + raw
    if qos:
        head += _u16(packet_id)
    if protocol_level == 5:
        head += encode_properties(properties)
    if type(payload) is not bytes:
        payload = bytes(payload)
    return bytes((b0,)) + encode_varint(len(head) + len(payload)) + head + payload


def encode_ack(
    packet_type: int,
    packet_id: int,
    protocol_level: int = 4,
    reason_code: int = 0,
    properties: dict | None = None,
) -> bytes:
    if packet_type not in (PUBACK, PUBREC, PUBREL, PUBCOMP):
        raise ValueError(f"not an acknowledgement packet type: {packet_type}")
    # [MQTT-3.6.1-1] PUBREL fixed-header flags are 0b0010
    b0 = (packet_type << 4) | (2 if packet_type == PUBREL else 0)
    body = _u16(packet_id)
    if protocol_level == 5:
        if properties:
            body += _byte(reason_code) + encode_properties(properties)
        elif reason_code:
            body += _byte(reason_code)
    return _packet(b0, body)


def encode_subscribe(
    packet_id: int,
    subscriptions: Iterable[tuple[str, int]],
    protocol_level: int = 4,
    properties: dict | None = None,
) -> bytes:
    parts = [_u16(packet_id)]
    if protocol_level == 5:
        parts.append(encode_properties(properties))
    for topic_filter, options in subscriptions:
        parts.append(_str(topic_filter))
        parts.append(_byte(options))
    return _packet((SUBSCRIBE << 4) | 0x02, b"".join(parts))  # flags 0b0010 [MQTT-3.8.1-1]


def encode_suback(
    packet_id: int,
    reason_codes: Iterable[int],
    protocol_level: int = 4,
    properties: dict | None = None,
) -> bytes:
    body = _u16(packet_id)
    if protocol_level == 5:
        body += encode_properties(properties)
    return _packet(SUBACK << 4, body + bytes(reason_codes))


def encode_unsubscribe(
    packet_id: int,
    filters: Iterable[str],
    protocol_level: int = 4,
    properties: dict | None = None,
) -> bytes:
    parts = [_u16(packet_id)]
    if protocol_level == 5:
        parts.append(encode_properties(properties))
    for topic_filter in filters:
        parts.append(_str(topic_filter))
    return _packet((UNSUBSCRIBE << 4) | 0x02, b"".join(parts))  # flags 0b0010 [MQTT-3.10.1-1]


def encode_unsuback(
    packet_id: int,
    reason_codes: Iterable[int] = (),
    protocol_level: int = 4,
    properties: dict | None = None,
) -> bytes:
    body = _u16(packet_id)
    if protocol_level == 5:
        # MQTT 3.1.1 UNSUBACK has no payload [MQTT-3.11.3]; MQTT 5 has a reason code per filter
        body += encode_properties(properties) + bytes(reason_codes)
    return _packet(UNSUBACK << 4, body)


def encode_pingreq() -> bytes:
    return _PINGREQ


def encode_pingresp() -> bytes:
    return _PINGRESP


def _rc_props(b0: int, reason_code: int, properties: dict | None) -> bytes:
    # Reason code and properties may be omitted when 0x00 / none [MQTT 5 §3.14.2.1, §3.15.2.1]
    if properties:
        return _packet(b0, _byte(reason_code) + encode_properties(properties))
    if reason_code:
        return bytes((b0, 1)) + _byte(reason_code)
    return bytes((b0, 0))


def encode_disconnect(
    reason_code: int = 0, protocol_level: int = 4, properties: dict | None = None
) -> bytes:
    if protocol_level != 5:
        return _rc_props(DISCONNECT << 4, 0, None)  # no reason code before MQTT 5
    return _rc_props(DISCONNECT << 4, reason_code, properties)


def encode_auth(reason_code: int = 0, properties: dict | None = None) -> bytes:
    return _rc_props(AUTH << 4, reason_code, properties)


def encode(packet: Any, protocol_level: int) -> bytes:
    """Encode any packet object (dispatch on ``packet.packet_type``)."""
    t = packet.packet_type
    if t == PUBLISH:
        return encode_publish(
            packet.topic,
            packet.payload,
            packet.qos,
            packet.retain,
            packet.dup,
            packet.packet_id,
            protocol_level,
            packet.properties,
        )
    if t in (PUBACK, PUBREC, PUBREL, PUBCOMP):
        return encode_ack(
            t, packet.packet_id, protocol_level, packet.reason_code, packet.properties
        )
    if t == CONNECT:
        return encode_connect(
            packet.client_id,
            protocol_level,
            packet.clean_start,
            packet.keepalive,
            packet.username,
            packet.password,
            packet.will,
            packet.properties,
            packet.bridge,
        )
    if t == CONNACK:
        return encode_connack(
            packet.session_present, packet.reason_code, protocol_level, packet.properties
        )
    if t == SUBSCRIBE:
        return encode_subscribe(
            packet.packet_id, packet.subscriptions, protocol_level, packet.properties
        )
    if t == SUBACK:
        return encode_suback(
            packet.packet_id, packet.reason_codes, protocol_level, packet.properties
        )
    if t == UNSUBSCRIBE:
        return encode_unsubscribe(
            packet.packet_id, packet.filters, protocol_level, packet.properties
        )
    if t == UNSUBACK:
        return encode_unsuback(
            packet.packet_id, packet.reason_codes, protocol_level, packet.properties
        )
    if t == PINGREQ:
        return encode_pingreq()
    if t == PINGRESP:
        return encode_pingresp()
    if t == DISCONNECT:
        return encode_disconnect(packet.reason_code, protocol_level, packet.properties)
    if t == AUTH:
        return encode_auth(packet.reason_code, packet.properties)
    raise ValueError(f"cannot encode packet type {t!r}")
