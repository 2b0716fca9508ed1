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


class Packer:
    """:func:`pack_message` with memory, for one session: a message still queued at its next
    write is not encoded again (it holds the text of the messages of its last write, no more)."""

    def __init__(self) -> None:
        self._last: dict[Any, str] = {}
        self._now: dict[Any, str] = {}

    def __call__(self, msg: Any) -> str:
        text = self._last.get(msg)
        if text is None:
            text = self._now.get(msg)
            if text is None:
                b64, expires = pack_message(msg)
                text = f"{expires!r} {b64}"
        self._now[msg] = text
        return text

    def turn(self) -> None:
        """One write is done: keep what it packed, forget the rest."""
        self._last, self._now = self._now, {}


def _unpack_text(text: str) -> Any:
    expires, _, b64 = text.partition(" ")
    return unpack_message([b64, float(expires)])


def dump(session: Session, packer: Packer | None = None) -> dict[str, Any]:
    """What ``session`` holds that outlives its connection. Its messages are text (``packer``'s,
    for a writer that keeps its encodings): :func:`encode` writes them one per line."""
    pack = packer if packer is not None else Packer()
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
        "next_pid": outlet.next_pid,
        "will": pack_message(session.will) if session.will is not None else None,
        "will_due": will_due,
        # when its client left (now, for a connected one: a crash ends its connection too)
        "offline_since": session.offline_since or time.time(),
        # QoS 0 is at most once: never written
        "queue": [f"Q {q} {int(r)} {pack(m)}" for m, q, r in outlet.queue if q],
        "inflight": [
            f"I {pid} {e.qos} {int(e.retain)} {e.state} "
            + (pack(e.msg) if e.msg is not None else "-")
            for pid, e in outlet.inflight_items()
        ],
    }


def encode(state: dict[str, Any]) -> bytes:
    """The JSON of everything but the messages on the first line, then a line per message
    (JSON around thousands of base64 strings costs ten times a join)."""
    head = {k: v for k, v in state.items() if k not in ("queue", "inflight")}
    lines = [json.dumps(head, separators=(",", ":")), *state["inflight"], *state["queue"]]
    return "\n".join(lines).encode()


def decode(data: bytes) -> dict[str, Any]:
    """A state from :func:`encode` (ValueError if it is not one this version reads)."""
    first, *lines = data.decode().split("\n")
    state = json.loads(first)
    if not isinstance(state, dict) or state.get("v") != VERSION:
        raise ValueError(f"not a session state of version {VERSION}")
    state["queue"] = [line for line in lines if line[:2] == "Q "]
    state["inflight"] = [line for line in lines if line[:2] == "I "]
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
    for line in state["queue"]:
        _, qos, retain, text = line.split(" ", 3)
        outlet.restore_queued(_unpack_text(text), int(qos), retain == "1")
    for line in state["inflight"]:
        _, pid, qos, retain, st, text = line.split(" ", 5)
        msg = _unpack_text(text) if text != "-" else None
        outlet.restore_inflight(int(pid), msg, int(qos), retain == "1", int(st))
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


class ChangedSessions:
    """Which persistent sessions of a broker changed since they were last written, written out.

    The persistence file (mqttd.persistence) and the sessions kept in Redis for a node that dies
    (mqttd.redis.sessions) both ask it each interval: :meth:`collect` looks at every session
    (its :func:`fingerprint`, ~1 us) and encodes only the ones that moved."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        #: client id -> fingerprint of the session as last written
        self.saved: dict[str, tuple[Any, ...]] = {}
        #: client id -> the encodings of its messages as last written (so that a message still
        #: queued is not encoded again: the text of what persistent sessions hold, ~1.4 x their
        #: payloads, is the memory this costs)
        self.packers: dict[str, Packer] = {}

    def collect(self) -> dict[str, bytes | None]:
        """client id -> its encoded state, or None for a session that ended (or stopped being
        persistent) since the last call."""
        out: dict[str, bytes | None] = {}
        saved = self.saved
        live = set()
        for client_id, session in self.broker.sessions.items():
            if not session.expiry_interval:
                continue  # ends with its connection: nothing to keep
            live.add(client_id)
            fp = fingerprint(session)
            if saved.get(client_id) != fp:
                saved[client_id] = fp
                packer = self.packers.get(client_id)
                if packer is None:
                    packer = self.packers[client_id] = Packer()
                out[client_id] = encode(dump(session, packer))
                packer.turn()
        for client_id in [c for c in saved if c not in live]:
            del saved[client_id]
            self.packers.pop(client_id, None)
            out[client_id] = None
        return out

    def forget(self) -> None:
        """What was written is lost (a failed write, Redis restarted empty): all again next time."""
        self.saved.clear()
        self.packers.clear()


__all__ = [
    "ChangedSessions",
    "decode",
    "decode_message",
    "Packer",
    "dump",
    "encode",
    "encode_message",
    "fingerprint",
    "pack_message",
    "restore",
    "unpack_message",
]
