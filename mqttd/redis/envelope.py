"""The envelope: what mqttd puts before a payload it sends to Redis (``docs/redis.md``, section 5).

A single message is the 22-byte header (magic + version, flags, origin node id, sequence number),
then the MQTT 5 property block if any, then the payload. A batch (version 2) carries consecutive
messages of one topic from one node: the same header with the first sequence number, a count,
then per message its QoS, its payload's length and the payload. Retained messages are kept in
Redis as an envelope too, and a session handed to another node or written to a persistence file
carries its messages as text made from one (``mqttd.sessionstate``).

This is the one Python reader and writer of the format. The compiled ``route.PushReader``
(``mqttd/_route.pyx``, twin ``mqttd/_pure/_route.py``) reads the common envelopes itself on the
receive path; the magic bytes and sizes here are taken from it, and the import fails if the struct
layouts below disagree with its sizes.
"""

from __future__ import annotations

import struct
import time
from typing import Any

from mqttd._speedups import codec, route
from mqttd.errors import PacketError

#: a single message: magic + version, flags, origin node id, sequence number
MAGIC = route.ENVELOPE_MAGIC  # b"\x00MQD\x01"
HEAD = struct.Struct("!5sB8sQ")
HEADER_SIZE = route.ENVELOPE_SIZE  # 22 bytes
F_QOS = 0x03
F_RETAIN = 0x04
F_PROPS = 0x08
#: a batch: the same header, then a count; each message is its QoS byte, its payload's length and
#: the payload
MAGIC_BATCH = route.BATCH_MAGIC  # b"\x00MQD\x02"
HEAD_BATCH = struct.Struct("!5sB8sQH")
ITEM = struct.Struct("!BI")
#: the most messages a batch can count (its count field is 2 bytes)
MAX_BATCH = 65535

# PushReader frames envelopes by its own sizes: a layout changed on one side only would make the
# nodes misread each other's messages, so it stops the import instead
if (HEAD.size, HEAD_BATCH.size) != (route.ENVELOPE_SIZE, route.BATCH_HEADER_SIZE):
    raise ImportError(
        f"envelope layout {HEAD.size}/{HEAD_BATCH.size} bytes disagrees with route.PushReader's "
        f"{route.ENVELOPE_SIZE}/{route.BATCH_HEADER_SIZE}"
    )


def encode_envelope(origin: bytes, seq: int, msg: Any) -> bytes:
    flags = msg.qos | (F_RETAIN if msg.retain else 0)
    block = msg.props_block
    if block != b"\x00":
        flags |= F_PROPS
        return HEAD.pack(MAGIC, flags, origin, seq) + block + msg.payload
    return HEAD.pack(MAGIC, flags, origin, seq) + msg.payload


def encode_batch(origin: bytes, first: int, msgs: list[Any]) -> bytes:
    """Messages of one topic numbered ``first``, ``first + 1``... (QoS and payload of each)."""
    item = ITEM.pack
    parts = [HEAD_BATCH.pack(MAGIC_BATCH, 0, origin, first, len(msgs))]
    for m in msgs:
        payload = m.payload
        parts.append(item(m.qos, len(payload)))
        parts.append(payload)
    return b"".join(parts)


def decode_batch(data: bytes) -> tuple[bytes, int, list[tuple[int, bytes]]] | None:
    """(origin, first sequence number, [(qos, payload), ...]) of a batch, or None."""
    if len(data) < HEAD_BATCH.size or data[:5] != MAGIC_BATCH:
        return None
    _, flags, origin, first, count = HEAD_BATCH.unpack_from(data)
    if flags:
        return None
    pos = HEAD_BATCH.size
    items = []
    for _ in range(count):
        if pos + ITEM.size > len(data):
            return None
        qos, length = ITEM.unpack_from(data, pos)
        pos += ITEM.size
        if qos > 2 or pos + length > len(data):
            return None
        items.append((qos, data[pos : pos + length]))
        pos += length
    if pos != len(data) or not items:
        return None
    return origin, first, items


def decode_envelope(data: bytes) -> tuple[bytes, int, int, bool, bytes, bytes] | None:
    """(origin, seq, qos, retain, properties block, payload), or None for a raw payload."""
    if len(data) < HEADER_SIZE or data[:5] != MAGIC:
        return None
    _, flags, origin, seq = HEAD.unpack_from(data)
    if flags & F_QOS == 3 or flags & 0xF0:
        return None  # not an envelope we wrote: taken as a raw payload
    pos = HEADER_SIZE
    block = b"\x00"
    if flags & F_PROPS:
        try:
            length, end = codec.decode_varint(data, pos)
        except PacketError:
            return None
        if end + length > len(data):
            return None
        block = data[pos : end + length]
        pos = end + length
    return origin, seq, flags & F_QOS, bool(flags & F_RETAIN), block, data[pos:]


def decode_properties(block: bytes) -> dict:
    """The MQTT 5 properties of an encoded property block (as carried in the envelope)."""
    if block == b"\x00":
        return {}
    body = b"\x00\x01t" + block
    packet = b"\x30" + codec.encode_varint(len(body)) + body
    (pub,) = codec.Reader(protocol_level=5, max_packet_size=1 << 28).feed(packet)
    return pub.properties


def envelope_message(
    topic: str, origin: bytes, seq: int, qos: int, retain: bool, block: bytes, payload: bytes
) -> Any:
    """The message a decoded envelope carries, as this node delivers it, or None when its
    property block is unreadable. A Message Expiry Interval starts again here: the time it
    already waited elsewhere is not kept."""
    try:
        props = decode_properties(block) if block != b"\x00" else None
    except (PacketError, ValueError):
        return None
    msg = route.Message(topic, payload, qos, retain, props, block, (origin, seq))
    if props and 0x02 in props:
        msg.expires_at = time.monotonic() + props[0x02]
    return msg


def _retained_message(topic_b: bytes, data: bytes) -> Any:
    """A retained message as kept in Redis (envelope + payload), or None if unreadable."""
    env = decode_envelope(data)
    if env is None:
        return None
    origin, _, qos, _, block, payload = env
    return envelope_message(topic_b.decode(errors="replace"), origin, 0, qos, True, block, payload)
