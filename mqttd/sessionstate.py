"""A session as data: what a node writes to its persistence file or to Redis, and reads back.

One format serves the three places a session leaves a node's memory: handed to another node
(mqttd.redis.bridge), written to the persistence file (mqttd.persistence), and kept in Redis for a
node that dies (mqttd.persistence.RedisSink). It is JSON; each message is the Redis envelope of
``docs/redis.md`` (topic, QoS, retain flag, MQTT 5 properties, payload) in base64, with the wall
clock time its Message Expiry Interval runs out, so that a message keeps its deadline across a
restart [MQTT-3.3.2-5].

QoS 0 messages are never written: a session keeps them only while its client is connected and
slow, and MQTT allows them to be lost (at most once).
"""

from __future__ import annotations

import base64
import json
import time
from typing import TYPE_CHECKING, Any

from mqttd._speedups import route
from mqttd.errors import PacketError
from mqttd.redis.envelope import decode_envelope, decode_properties, encode_envelope

if TYPE_CHECKING:
    from mqttd.broker import Broker, Session

#: bumped when a field changes meaning; a state of another version is not read
VERSION = 1


def pack_message(msg: Any) -> list[Any]:
    """``[base64 of topic NUL envelope, wall-clock expiry or 0]``."""
    raw = msg.topic.encode() + b"\x00" + encode_envelope(b"\x00" * 8, 0, msg)
    expires = 0.0
    if msg.expires_at:
        expires = time.time() + (msg.expires_at - time.monotonic())
    return [base64.b64encode(raw).decode(), expires]


def unpack_message(packed: list[Any]) -> Any:
    """The message of :func:`pack_message` (ValueError if it is not one)."""
    text, expires = packed
    raw = base64.b64decode(text)
    topic, _, data = raw.partition(b"\x00")
    env = decode_envelope(data)
    if env is None:
        raise ValueError("not a message envelope")
    _, _, qos, retain, block, payload = env
    try:
        props = decode_properties(block) if block != b"\x00" else None
    except PacketError as exc:
        raise ValueError(f"properties: {exc}") from exc
    msg = route.Message(topic.decode(), payload, qos, retain, props, block)
    if expires:
        msg.expires_at = time.monotonic() + (expires - time.time())
    return msg


def encode_message(msg: Any) -> bytes:
    """A message on its own (a retained one in the persistence file)."""
    return json.dumps(pack_message(msg), separators=(",", ":")).encode()


def decode_message(data: bytes) -> Any:
    try:
        return unpack_message(json.loads(data))
    except (TypeError, KeyError) as exc:
        raise ValueError(str(exc)) from exc


def dump(session: Session) -> dict[str, Any]:
    """What ``session`` holds that outlives its connection."""
    outlet = session.outlet
    will_due = 0.0
    if session.will is not None and session.will_handle is not None:
        will_due = time.time() + (session.will_handle.when() - time.monotonic())
    return {
        "v": VERSION,
        "client_id": session.client_id,
        "expiry": session.expiry_interval,
        "owner": session.owner,
        "subscriptions": session.subscriptions,
        "awaiting_rel": sorted(session.awaiting_rel),
        # QoS 0 is at most once: never written
        "queue": [[pack_message(m), q, r] for m, q, r in outlet.queue if q],
        "inflight": [
            [pid, pack_message(e.msg) if e.msg is not None else None, e.qos, e.retain, e.state]
            for pid, e in outlet.inflight_items()
        ],
        "next_pid": outlet.next_pid,
        "will": pack_message(session.will) if session.will is not None else None,
        "will_due": will_due,
        # when its client left (now, for a connected one: a crash ends its connection too)
        "offline_since": session.offline_since or time.time(),
    }


def encode(state: dict[str, Any]) -> bytes:
    return json.dumps(state, separators=(",", ":")).encode()


def decode(data: bytes) -> dict[str, Any]:
    """A state from :func:`encode` (ValueError if it is not one this version reads)."""
    state = json.loads(data)
    if not isinstance(state, dict) or state.get("v") != VERSION:
        raise ValueError(f"not a session state of version {VERSION}")
    return state


def restore(broker: Broker, session: Session, state: dict[str, Any]) -> None:
    """Put back into the fresh ``session`` what :func:`dump` wrote: subscriptions, queue,
    messages in flight (resent with DUP when its client is back [MQTT-4.4.0-1]), QoS 2 receive
    state [MQTT-4.3.3-10]."""
    session.expiry_interval = state["expiry"]
    if state.get("owner") is not None:
        session.owner = state["owner"]
    for filt, opts in state["subscriptions"].items():
        broker.subscribe(session, filt, opts)
    session.awaiting_rel = set(state["awaiting_rel"])
    outlet = session.outlet
    for packed, qos, retain in state["queue"]:
        outlet.queue.append((unpack_message(packed), qos, retain))
    for pid, packed, qos, retain, st in state["inflight"]:
        msg = unpack_message(packed) if packed else None
        outlet.restore_inflight(pid, msg, qos, retain, st)
    outlet.next_pid = state["next_pid"]


def fingerprint(session: Session) -> tuple[Any, ...]:
    """Figures that change whenever :func:`dump` would write something else (a message queued,
    sent, acknowledged or dropped; a subscription; the will; the expiry), so that only sessions
    that changed are written again. Cheap: no message is looked at."""
    outlet = session.outlet
    return (
        outlet.next_pid,
        len(outlet.queue),
        outlet.queued_bytes,
        len(outlet.inflight),
        outlet.inflight_bytes,
        outlet.sent,
        outlet.dropped,
        len(session.awaiting_rel),
        sum(session.awaiting_rel),
        hash(frozenset(session.subscriptions.items())),
        session.expiry_interval,
        session.will is not None,
        session.connection is None,
        session.owner,
    )


__all__ = [
    "decode",
    "decode_message",
    "dump",
    "encode",
    "encode_message",
    "fingerprint",
    "pack_message",
    "restore",
    "unpack_message",
]
