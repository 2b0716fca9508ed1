"""The PUBLISH fan-out path (pure-Python twin of ``mqttd/_route.pyx``).

A PUBLISH goes from the reader to every subscriber's output buffer through three objects:

- :class:`Message` is created once per published message. It encodes its PUBLISH bytes lazily,
  once per wire variant (protocol 3.1.1 or 5, QoS 0 or >0, retain flag), and every subscriber whose
  copy is identical shares those bytes. For QoS 1/2 only the packet id differs between
  subscribers, so the packet is written as ``first byte + head + packet id + tail`` into the
  subscriber's buffer, with ``head`` and ``tail`` shared.
- :class:`Outlet` is a session's delivery end: its output buffer, its packet ids and the QoS 1/2
  messages in flight (an :class:`Inflight` each), whose acknowledgements it applies
  (``puback``, ``pubrec``, ``pubcomp``). It outlives a network connection (a persistent session
  keeps its outlet).
- :class:`Flusher` coalesces writes: an outlet that gets data is marked once, and one callback per
  event-loop iteration hands each marked outlet's whole buffer to its transport in one write.

:func:`deliver` merges the subscriber dicts a topic matched (``SubscriptionTree.collect``) and
sends one copy per outlet at the highest granted QoS [MQTT-3.3.5-1].
"""

from __future__ import annotations

from collections import deque
from typing import Any

from mqttd._pure._codec import decode_varint, encode_ack
from mqttd._pure._codec import encode_varint as _varint
from mqttd.constants import (
    FAILURE_THRESHOLD,
    PACKET_IDENTIFIER_NOT_FOUND,
    PUBLISH,
    PUBREL,
    SUBSCRIPTION_IDENTIFIER,
    SUCCESS,
    TOPIC_ALIAS,
)

# Re-exported ("X as X", which mypy --strict takes as an export): the broker reads route.OPT_*
from mqttd.constants import OPT_NO_LOCAL as OPT_NO_LOCAL
from mqttd.constants import OPT_QOS as OPT_QOS
from mqttd.constants import OPT_RETAIN_AS_PUBLISHED as OPT_RETAIN_AS_PUBLISHED

# Inflight.state: where an outgoing QoS 1/2 flow stands
AWAIT_PUBACK = 1  # QoS 1, PUBLISH sent
AWAIT_PUBREC = 2  # QoS 2, PUBLISH sent
AWAIT_PUBCOMP = 3  # QoS 2, PUBREL sent

#: what :meth:`Outlet.pubrec` returns when no PUBREL is to be sent
NO_PUBREL = -1
#: a session whose queue stays full this many slow-subscriber timeouts is slow even though it
#: reads: it cannot keep up, and its publishers have waited for it long enough
SLOW_READER_FACTOR = 10

# the identifier byte that opens each property these add to a message's block
_SID_HEAD = bytes((SUBSCRIPTION_IDENTIFIER,))
_ALIAS_HEAD = bytes((TOPIC_ALIAS,))


class Message:
    """One published application message, shared by every subscriber it goes to."""

    __slots__ = (
        "topic",
        "payload",
        "qos",
        "retain",
        "properties",
        "props_block",
        "_topic_b",
        "_q0",
        "_head",
        "_tail",
        "_children",
        "origin",
        "expires_at",
    )

    def __init__(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        properties: dict | None = None,
        props_block: bytes = b"\x00",
        origin: Any = None,
    ) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        #: MQTT 5 properties as published (dict), and the encoded block forwarded to v5 clients
        self.properties = properties if properties is not None else {}
        self.props_block = props_block
        self.origin = origin
        self.expires_at = 0.0
        self._topic_b = topic.encode("utf-8")
        self._q0: dict[tuple[int, int], bytes] = {}
        self._head: list[bytes | None] = [None, None]
        self._tail: list[bytes | None] = [None, None]
        self._children: dict | None = None

    def _parts(self, v5: int) -> tuple[bytes, bytes]:
        head = self._head[v5]
        if head is None:
            tail = (self.props_block if v5 else b"") + self.payload
            remaining = 2 + len(self._topic_b) + 2 + len(tail)
            head = _varint(remaining) + len(self._topic_b).to_bytes(2, "big") + self._topic_b
            self._head[v5] = head
            self._tail[v5] = tail
        return head, self._tail[v5]  # type: ignore[return-value]

    def _child(self, key: tuple, topic: str, extra: dict, extra_block: bytes) -> Message:
        """A variant of this message with more MQTT 5 properties, cached by ``key``."""
        children = self._children
        if children is None:
            children = self._children = {}
        child = children.get(key)
        if child is None:
            _, pos = decode_varint(self.props_block, 0)
            inner = self.props_block[pos:] + extra_block
            props = dict(self.properties)
            props.update(extra)
            child = Message(
                topic,
                self.payload,
                self.qos,
                self.retain,
                props,
                _varint(len(inner)) + inner,
                self.origin,
            )
            child.expires_at = self.expires_at
            children[key] = child
        return child

    def with_ids(self, ids: tuple) -> Message:
        """This message carrying Subscription Identifiers, shared by every subscriber with the
        same identifiers [MQTT-3.3.4-3]."""
        block = b"".join(_SID_HEAD + _varint(i) for i in ids)
        return self._child(ids, self.topic, {SUBSCRIPTION_IDENTIFIER: list(ids)}, block)

    def aliased(self, alias: int, with_topic: bool) -> Message:
        """This message with a Topic Alias: the topic sent once with it, then empty."""
        return self._child(
            ("alias", alias, with_topic),
            self.topic if with_topic else "",
            {TOPIC_ALIAS: alias},
            _ALIAS_HEAD + alias.to_bytes(2, "big"),
        )

    def size(self, version: int, qos: int) -> int:
        """Bytes of this PUBLISH on the wire for a protocol level and QoS."""
        if qos == 0:
            return len(self.encode_qos0(version, False))
        head, tail = self._parts(1 if version == 5 else 0)
        return 1 + len(head) + 2 + len(tail)

    def encode_qos0(self, version: int, retain: bool) -> bytes:
        """The whole QoS 0 PUBLISH for a protocol level, cached."""
        key = (1 if version == 5 else 0, 1 if retain else 0)
        data = self._q0.get(key)
        if data is None:
            tail = (self.props_block if key[0] else b"") + self.payload
            remaining = 2 + len(self._topic_b) + len(tail)
            data = (
                bytes(((PUBLISH << 4) | key[1],))
                + _varint(remaining)
                + len(self._topic_b).to_bytes(2, "big")
                + self._topic_b
                + tail
            )
            self._q0[key] = data
        return data

    def write_qos(
        self, buf: bytearray, version: int, qos: int, retain: bool, dup: bool, packet_id: int
    ) -> None:
        """Append a QoS 1/2 PUBLISH with this packet id to ``buf``."""
        head, tail = self._parts(1 if version == 5 else 0)
        buf.append((PUBLISH << 4) | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0))
        buf += head
        buf.append(packet_id >> 8)
        buf.append(packet_id & 0xFF)
        buf += tail


class Inflight:
    """A QoS 1/2 message sent to a session and not yet acknowledged: an entry of
    :attr:`Outlet.inflight`, by packet id.

    ``state`` says which acknowledgement the flow waits for: ``AWAIT_PUBACK`` (QoS 1),
    ``AWAIT_PUBREC`` then ``AWAIT_PUBCOMP`` (QoS 2). ``msg`` is None exactly at
    ``AWAIT_PUBCOMP``: once the PUBREC came the message is delivered and only its packet id is
    kept, for the PUBREL [MQTT-4.3.3-4].
    """

    __slots__ = ("msg", "qos", "retain", "state")

    def __init__(self, msg: Message | None, qos: int, retain: bool, state: int) -> None:
        self.msg = msg
        self.qos = qos
        self.retain = retain
        self.state = state

    def __repr__(self) -> str:
        return (
            f"Inflight(msg={self.msg!r}, qos={self.qos}, retain={self.retain}, state={self.state})"
        )


#: why a message was not delivered: the keys of :attr:`Flusher.drops` and of ``$SYS/broker/
#: publish/messages/dropped/<reason>`` (docs/flow-control.md)
#: the queue of an outlet with nothing queued: an empty deque is 760 bytes (its first block),
#: which every idle connection would hold (benchmarks/memory.py); a deque is made for the first
#: message queued and goes with the last one drained
_NO_QUEUE: Any = ()
#: the in-flight table of every outlet with nothing in flight yet: an empty dict is 64 bytes per
#: idle connection (issue 16); an outlet gets its own with its first QoS 1/2 message. Nothing
#: is ever written into this one
_NO_INFLIGHT: dict[int, Inflight] = {}

DROP_REASONS = (
    "queue_full",
    "buffer_full",
    "expired",
    "too_big",
    "offline",
    "memory",
    "slow_client",
)
#: Outlet.overdue(): why a full queue's session is slow
STALLED = 1  # no progress for the slow-subscriber timeout: it is disconnected (mqttd.flow)
CANNOT_KEEP_UP = 2  # it reads, but its queue stayed full SLOW_READER_FACTOR timeouts


class Flusher:
    """Coalesces each outlet's writes into one ``transport.write`` per event-loop iteration, and
    keeps the node-wide flow-control state the outlets share (docs/flow-control.md)."""

    __slots__ = (
        "loop",
        "dirty",
        "scheduled",
        "bytes_sent",
        "messages_sent",
        "messages_sent_qos0",
        "messages_sent_qos2",
        "messages_dropped",
        "drops",
        "dropping",
        "stalled",
        "pressure",
        "held",
        "now",
        "slow_timeout",
        "over",
    )

    def __init__(self, loop: Any) -> None:
        self.loop = loop
        self.dirty: list[Outlet] = []
        self.scheduled = False
        # Broker-wide totals ($SYS): bytes written, PUBLISH packets sent, messages dropped
        self.bytes_sent = 0
        self.messages_sent = 0
        #: of messages_sent: those at QoS 0, and at QoS 2 (the rest went at QoS 1)
        self.messages_sent_qos0 = 0
        self.messages_sent_qos2 = 0
        self.messages_dropped = 0
        #: messages dropped, by reason (DROP_REASONS)
        self.drops: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        #: outlets that dropped messages since their last log line (mqttd.flow logs them)
        self.dropping: set[Outlet] = set()
        #: slow outlets that made no progress: mqttd.flow disconnects their clients
        self.stalled: list[Outlet] = []
        #: outlets that took a QoS 1/2 message beyond their queue's limits in this turn: the
        #: publisher that sent it is held (not read) until they drain (Connection._hold)
        self.pressure: list[Outlet] = []
        #: bytes of the messages queued or in flight, over every session of the node
        self.held = 0
        #: the flow-control clock: the loop's time at the last tick of mqttd.flow (coarse)
        self.now = 0.0
        #: seconds a full queue may hold publishers back before its session counts as slow
        self.slow_timeout = 1.0
        #: the node is above its memory_limit: publishers are not read (mqttd.flow)
        self.over = False

    def mark(self, outlet: Outlet) -> None:
        self.dirty.append(outlet)
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.run)

    def run(self) -> None:
        self.scheduled = False
        dirty = self.dirty
        self.dirty = []
        for outlet in dirty:
            try:
                outlet.flush()
            except MemoryError:
                outlet.cut()  # that subscriber's problem: the others are still written to
            except Exception:
                # A transport closed under it (uvloop raises on a write after close): those
                # bytes have no reader, and the outlets after it in this turn are still written
                outlet.buf = bytearray()


def _cost(msg: Message) -> int:
    """What a message counts for against the byte limits: its payload and topic."""
    return len(msg.payload) + len(msg.topic)


class Outlet:
    """A session's delivery end: output buffer, packet ids and outgoing QoS 1/2 in flight.

    What it holds is bounded (docs/flow-control.md): at most ``inflight_max`` messages in
    flight; a queue of at most ``max_queued`` messages and ``max_queued_bytes`` bytes (payload
    and topic of each, counted per session even when sessions share a message); QoS 0 bytes
    buffered for a transport that paused writing up to ``max_buffer``. A QoS 1/2 message that
    finds the queue of an online session full is taken anyway (up to twice the limits) and its
    publisher is held (``Flusher.pressure``) until the queue has drained to half its limits. A
    session whose queue is full and that made no progress (no acknowledgement, no write
    drained) for ``Flusher.slow_timeout`` seconds, or whose queue stays full
    ``SLOW_READER_FACTOR`` times that long, is *slow* (:meth:`overdue`): it holds nobody back
    and its queue drops its oldest messages instead, counted, until it has drained to half.
    """

    def __init__(
        self,
        flusher: Flusher,
        version: int = 4,
        inflight_max: int = 65535,
        max_queued: int = 1000,
        max_buffer: int = 8 * 1024 * 1024,
        max_queued_bytes: int = 0,
        max_inflight_bytes: int = 0,
    ) -> None:
        self.flusher = flusher
        self.transport: Any = None  # None while the session is offline
        self.version = version
        self.buf = bytearray()
        self.pending = False
        self.paused = False  # the transport asked us to stop writing (pause_writing)
        #: packet id -> Inflight, for the QoS 1/2 messages sent and not yet acknowledged, oldest
        #: first. Changed only by the methods below (send, the acknowledgements, restore).
        self.inflight: dict[int, Inflight] = _NO_INFLIGHT
        self.inflight_max = inflight_max
        #: bytes (payload and topic) in flight, and how many the window may hold (0: no limit;
        #: one message goes whatever its size), as Mosquitto's max_inflight_bytes
        self.inflight_bytes = 0
        self.max_inflight_bytes = max_inflight_bytes if max_inflight_bytes > 0 else 1 << 60
        #: QoS 1/2 messages waiting for room in the inflight window, or for the client to return
        self.queue: deque | tuple = _NO_QUEUE
        self.max_queued = max_queued
        #: 0: as many bytes as max_queued messages of the largest packet size allow
        self.max_queued_bytes = max_queued_bytes if max_queued_bytes > 0 else 1 << 60
        self.queued_bytes = 0
        self.max_buffer = max_buffer
        #: since when (Flusher.now) the queue is full; -1.0: it is not
        self.full_since = -1.0
        #: Flusher.now of the last acknowledgement, or of the transport taking writes again
        self.progress_at = 0.0
        #: overdue() said so: the queue drops its oldest, holds nobody
        self.slow = False
        #: the publishers held until this queue drains (objects with ``unhold()``), or None
        self.waiters: list | None = None
        #: the client's MQTT 5 Maximum Packet Size (0: no limit of its own)
        self.max_packet = 0
        #: the client's MQTT 5 Topic Alias Maximum, and the aliases given on this connection
        #: (None while alias_max is 0: an empty dict per connection is 64 bytes)
        self.alias_max = 0
        self.aliases: dict[str, int] | None = None
        self.next_pid = 1
        self.dropped = 0  # messages dropped, whatever the reason
        #: messages dropped by reason since the last log line about this session (mqttd.flow)
        self.drops: dict[str, int] | None = None
        self.logged_at = -1e9  # Flusher.now of that line
        self.sent = 0  # PUBLISH packets written
        self.session: Any = None  # the broker's Session that owns this outlet
        #: the broker's check of Message Expiry for queued messages: returns the message to
        #: send (with the interval left) or None when it expired
        self.refresh: Any = None
        #: ``readable(topic) -> bool`` when an ACL limits what this client reads (mqttd.acl)
        self.readable: Any = None

    # -- writing ---------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Queue bytes for the next coalesced write (acks, control packets)."""
        if self.transport is None:
            return
        self.buf += data
        if not self.pending:
            self.pending = True
            self.flusher.mark(self)

    def flush(self) -> None:
        """Hand the whole buffer to the transport in one write."""
        self.pending = False
        if self.buf and self.transport is not None and not self.paused:
            data = self.buf
            # A fresh buffer: the transport may keep a reference to the one it was given.
            self.buf = bytearray()
            self.flusher.bytes_sent += len(data)
            self.transport.write(data)

    def cut(self) -> None:
        """Out of memory writing to this client: its buffer is given up (counted once) and its
        connection closed; a persistent session keeps its queue and resends what was in flight
        when the client returns."""
        self.buf = bytearray()
        self.pending = False
        self.drop("memory")
        transport = self.transport
        if transport is not None:
            transport.close()

    def resume(self) -> None:
        """The transport takes writes again: the buffer goes, and the QoS 1/2 messages queued
        while it was paused."""
        self.paused = False
        self.progress_at = self.flusher.now
        self.drain_queue()
        if self.buf and not self.pending:
            self.pending = True
            self.flusher.mark(self)

    def _mark(self) -> None:
        if not self.pending:
            self.pending = True
            self.flusher.mark(self)

    # -- publishing ------------------------------------------------------------------------------
    def drop(self, reason: str) -> None:
        """Count one message not delivered to this session, by reason (DROP_REASONS)."""
        self.dropped += 1
        flusher = self.flusher
        flusher.messages_dropped += 1
        flusher.drops[reason] += 1
        drops = self.drops
        if drops is None:
            drops = self.drops = {}
            flusher.dropping.add(self)
        drops[reason] = drops.get(reason, 0) + 1

    def take_drops(self) -> dict[str, int]:
        """The drops by reason since the last call, reset (mqttd.flow logs them)."""
        drops = self.drops or {}
        self.drops = None
        self.flusher.dropping.discard(self)
        return drops

    def _wire(self, msg: Message) -> Message:
        """The message as written on this connection: with a Topic Alias when the client
        accepts them, never above its Topic Alias Maximum [MQTT-3.3.2-10]."""
        if self.aliases is None:
            self.aliases = {}  # (made by the first message sent with aliases allowed)
        alias = self.aliases.get(msg.topic)
        if alias is not None:
            return msg.aliased(alias, False)
        if len(self.aliases) < self.alias_max:
            alias = len(self.aliases) + 1
            self.aliases[msg.topic] = alias
            return msg.aliased(alias, True)
        return msg

    def send(self, msg: Message, qos: int, retain: bool) -> None:
        """Deliver one message to this session at the given (already downgraded) QoS."""
        # An alias adds at most 4 bytes: counted so the limit holds either way.
        if (
            self.max_packet
            and msg.size(self.version, qos) + (4 if self.alias_max else 0) > self.max_packet
        ):
            # Too big for this client: discarded as if sent [MQTT-3.1.2-25]
            self.drop("too_big")
            return
        if qos == 0:
            if self.transport is None:
                self.drop("offline")  # QoS 0 is not queued for an offline session
                return
            if self.paused and len(self.buf) >= self.max_buffer:
                self.drop("buffer_full")
                self._stalling()
                return
            if self.alias_max:
                msg = self._wire(msg)
            self.buf += msg.encode_qos0(self.version, retain)
            self.sent += 1
            self.flusher.messages_sent += 1
            self.flusher.messages_sent_qos0 += 1
            self._mark()
            return
        # QoS 1/2 is encoded only when it can go: a paused transport or a full window keeps it
        # queued, as a message, not as bytes
        if (
            self.transport is None
            or self.paused
            or len(self.inflight) >= self.inflight_max
            or self.inflight_bytes >= self.max_inflight_bytes
        ):
            self._enqueue(msg, qos, retain)
            return
        self._send_inflight(msg, qos, retain)

    def _enqueue(self, msg: Message, qos: int, retain: bool) -> None:
        size = _cost(msg)
        queue = self.queue
        if len(queue) >= self.max_queued or self.queued_bytes + size > self.max_queued_bytes:
            flusher = self.flusher
            if self.full_since < 0.0:
                self.full_since = flusher.now
            elif not self.slow and self.transport is not None:
                why = self.overdue(flusher.now)
                if why:
                    self.become_slow()
                    if why == STALLED:
                        flusher.stalled.append(self)  # mqttd.flow disconnects it
            if (
                not self.slow
                and self.transport is not None
                and flusher.slow_timeout > 0.0
                and len(queue) < 2 * self.max_queued
                and self.queued_bytes + size <= 2 * self.max_queued_bytes
            ):
                # Backpressure: taken, and its publisher is held until this queue drains
                flusher.pressure.append(self)
            else:
                # Slow or offline: the oldest messages make room, each counted
                while queue and (
                    len(queue) >= self.max_queued
                    or self.queued_bytes + size > self.max_queued_bytes
                ):
                    old = queue.popleft()[0]
                    old_size = _cost(old)
                    self.queued_bytes -= old_size
                    flusher.held -= old_size
                    self.drop("queue_full")
                if len(queue) >= self.max_queued or size > self.max_queued_bytes:
                    self.drop("queue_full")  # no queue at all, or bigger than all of it
                    return
        if queue is _NO_QUEUE:
            self.queue = queue = deque()
        queue.append((msg, qos, retain))
        self.queued_bytes += size
        self.flusher.held += size

    def overdue(self, now: float) -> int:
        """Whether this full queue has held publishers back long enough, and why: STALLED (no
        acknowledgement nor drained write for the slow-subscriber timeout since it began to
        owe one), CANNOT_KEEP_UP (full for SLOW_READER_FACTOR times that), or 0."""
        timeout = self.flusher.slow_timeout
        if now - self.progress_at >= timeout:
            return STALLED
        if now - self.full_since >= timeout * SLOW_READER_FACTOR:
            return CANNOT_KEEP_UP
        return 0

    def _stalling(self) -> None:
        """QoS 0 to a transport that stopped taking writes, with the buffer full: a client
        whose socket does not drain (no resume) for the slow-subscriber timeout since then is
        stalled, to be disconnected as a QoS 1 one is (mqttd.flow)."""
        flusher = self.flusher
        if self.slow or flusher.slow_timeout <= 0.0:
            return
        if self.full_since < 0.0:
            self.full_since = flusher.now
        elif flusher.now - max(self.full_since, self.progress_at) >= flusher.slow_timeout:
            self.slow = True
            flusher.stalled.append(self)

    def become_slow(self) -> None:
        """The queue stayed full too long: from now on it drops instead of holding publishers
        back, until it has drained to half its limits."""
        self.slow = True
        self.wake()

    def wake(self) -> None:
        """Let the publishers held by this queue be read again."""
        waiters = self.waiters
        if waiters is not None:
            self.waiters = None
            for waiter in waiters:
                waiter.unhold()

    def _send_inflight(self, msg: Message, qos: int, retain: bool) -> None:
        if not self.inflight:
            self.progress_at = self.flusher.now  # it owes acknowledgements from now on
            if self.inflight is _NO_INFLIGHT:
                self.inflight = {}
        pid = self.alloc_packet_id()
        buf = self.buf
        mark = len(buf)
        try:
            (self._wire(msg) if self.alias_max else msg).write_qos(
                buf, self.version, qos, retain, False, pid
            )
        except MemoryError:
            # Out of memory here is this session's problem (mqttd.route.deliver): no half
            # packet left in its buffer, and no packet id in flight that was never sent
            del buf[mark:]
            raise
        self.inflight[pid] = Inflight(msg, qos, retain, AWAIT_PUBACK if qos == 1 else AWAIT_PUBREC)
        self._in_flight(msg, 1)
        self.sent += 1
        self.flusher.messages_sent += 1
        if qos == 2:
            self.flusher.messages_sent_qos2 += 1
        self._mark()

    def alloc_packet_id(self) -> int:
        """A packet id not in use by a message in flight [MQTT-2.2.1-4]."""
        pid = self.next_pid
        inflight = self.inflight
        for _ in range(65536):
            if pid not in inflight:
                break
            pid = pid + 1 if pid < 65535 else 1
        else:
            raise RuntimeError("no free packet identifier")
        self.next_pid = pid + 1 if pid < 65535 else 1
        return pid

    def drain_queue(self) -> None:
        """Send queued QoS 1/2 messages while the inflight window has room and the transport
        takes writes; a queue back at half its limits holds nobody and is not slow any more."""
        queue = self.queue
        flusher = self.flusher
        while (
            queue
            and self.transport is not None
            and not self.paused
            and len(self.inflight) < self.inflight_max
            and self.inflight_bytes < self.max_inflight_bytes
        ):
            msg, qos, retain = queue.popleft()
            size = _cost(msg)
            self.queued_bytes -= size
            flusher.held -= size
            if msg.expires_at and self.refresh is not None:
                # Expired while queued: not delivered [MQTT-3.3.2-5]; else the interval that
                # is left goes out [MQTT-3.3.2-6]
                fresh = self.refresh(msg)
                if fresh is None:
                    self.drop("expired")
                    continue
                msg = fresh
            self._send_inflight(msg, qos, retain)
        if not queue and queue is self.queue:
            self.queue = _NO_QUEUE  # its memory goes with its last message
        if (
            self.full_since >= 0.0
            and len(queue) <= self.max_queued // 2
            and self.queued_bytes <= self.max_queued_bytes // 2
        ):
            self.full_since = -1.0
            self.slow = False
            self.wake()

    def clear(self) -> None:
        """Forget every queued and in-flight message (the session ended)."""
        held = self.queued_bytes
        for entry in self.inflight.values():
            if entry.msg is not None:
                held += _cost(entry.msg)
        self.flusher.held -= held
        self.queue = _NO_QUEUE
        self.queued_bytes = 0
        self.inflight.clear()
        self.inflight_bytes = 0
        self.full_since = -1.0
        self.slow = False
        self.wake()

    # -- acknowledgements of outgoing QoS 1/2 [MQTT 5 §4.3.2, §4.3.3] ------------------------------
    def puback(self, packet_id: int) -> bool:
        """The client's PUBACK. True when it completes a QoS 1 flow: the message leaves the
        window and the next queued one goes out. An id not awaiting PUBACK (unknown, or a QoS 2
        flow) changes nothing: False."""
        return self._end(packet_id, AWAIT_PUBACK)

    def pubrec(self, packet_id: int, reason_code: int) -> int:
        """The client's PUBREC; returns the reason code of the PUBREL to answer it with, or
        ``NO_PUBREL`` when none is sent.

        - A success code (< 0x80) for an id awaiting PUBREC, or PUBCOMP (the PUBREC came again):
          the message counts as delivered, only its id is kept [MQTT-4.3.3-4], and the flow
          waits for PUBCOMP: ``SUCCESS``.
        - A failure code (>= 0x80, MQTT 5) ends the flow there (§4.3.3): the message leaves the
          window, the next queued one goes out: ``NO_PUBREL``.
        - An id not in flight, or awaiting PUBACK: ``PACKET_IDENTIFIER_NOT_FOUND`` (0x92) at
          MQTT 5; ``NO_PUBREL`` at 3.1/3.1.1, which have no reason code to say it with.
        """
        entry = self.inflight.get(packet_id)
        if entry is None or entry.state == AWAIT_PUBACK:
            return PACKET_IDENTIFIER_NOT_FOUND if self.version == 5 else NO_PUBREL
        self.progress_at = self.flusher.now
        if entry.msg is not None:
            self._in_flight(entry.msg, -1)
        if reason_code >= FAILURE_THRESHOLD:
            del self.inflight[packet_id]
            self.drain_queue()
            return NO_PUBREL
        entry.state = AWAIT_PUBCOMP
        entry.msg = None
        return SUCCESS

    def pubcomp(self, packet_id: int) -> bool:
        """The client's PUBCOMP. True when it completes a QoS 2 flow: the id leaves the window
        and the next queued message goes out. An id not awaiting PUBCOMP changes nothing."""
        return self._end(packet_id, AWAIT_PUBCOMP)

    def _in_flight(self, msg: Message, sign: int) -> None:
        """A message enters (``sign`` 1) or leaves (-1) the window: its bytes count against
        max_inflight_bytes and the node's held total."""
        size = sign * _cost(msg)
        self.inflight_bytes += size
        self.flusher.held += size

    def _end(self, packet_id: int, awaiting: int) -> bool:
        entry = self.inflight.get(packet_id)
        if entry is None or entry.state != awaiting:
            return False
        self.progress_at = self.flusher.now
        if entry.msg is not None:
            self._in_flight(entry.msg, -1)
        del self.inflight[packet_id]
        self.drain_queue()
        return True

    def inflight_items(self) -> list[tuple[int, Inflight]]:
        """``(packet id, Inflight)`` for each message in flight, oldest first: a copy, for
        handing the session over to another node."""
        return list(self.inflight.items())

    def restore_queued(self, msg: Message, qos: int, retain: bool) -> None:
        """Put back a queued message of a restored session (counted, not limited)."""
        size = _cost(msg)
        if self.queue is _NO_QUEUE:
            self.queue = deque()
        self.queue.append((msg, qos, retain))
        self.queued_bytes += size
        self.flusher.held += size

    def restore_inflight(
        self, packet_id: int, msg: Message | None, qos: int, retain: bool, state: int
    ) -> None:
        """Put back a message in flight that another node handed over. ``msg`` is dropped at
        AWAIT_PUBCOMP (only the id is kept) and needed before; ValueError otherwise, and for a
        ``state`` that is not an AWAIT_* value."""
        if state == AWAIT_PUBCOMP:
            msg = None
        elif not AWAIT_PUBACK <= state < AWAIT_PUBCOMP:
            raise ValueError(f"not an in-flight state: {state!r}")
        elif msg is None:
            raise ValueError(f"no message for packet id {packet_id} awaiting PUBACK/PUBREC")
        old = self.inflight.get(packet_id)
        if old is not None and old.msg is not None:
            self._in_flight(old.msg, -1)
        if msg is not None:
            self._in_flight(msg, 1)
        if self.inflight is _NO_INFLIGHT:
            self.inflight = {}
        self.inflight[packet_id] = Inflight(msg, qos, retain, state)

    def resend_inflight(self) -> None:
        """After a reconnect: resend unacknowledged PUBLISH with DUP, and PUBREL, in order."""
        for pid, entry in self.inflight.items():
            msg = entry.msg
            if msg is None:  # AWAIT_PUBCOMP: the PUBREL again
                self.buf += encode_ack(PUBREL, pid, self.version)
            else:
                (self._wire(msg) if self.alias_max else msg).write_qos(
                    self.buf, self.version, entry.qos, entry.retain, True, pid
                )
        if self.buf:
            self._mark()


def deliver(nodes: list[dict], msg: Message, origin: Outlet | None) -> int:
    """Send ``msg`` to the subscribers in ``nodes`` (from ``SubscriptionTree.collect``).

    Keys of the dicts are outlets (or shared-subscription groups, which pick one member); values
    are ``options | subscription_identifier << 8``. A client with several matching subscriptions
    gets one copy at the highest QoS granted among them [MQTT-3.3.5-1], carrying the identifiers
    of all of them [MQTT-3.3.4-3]. Returns the number of copies sent.
    """
    if not nodes:
        return 0
    ids: dict | None = None
    if len(nodes) == 1:
        targets: dict = nodes[0]
    else:
        targets = {}
        for node in nodes:
            for key, value in node.items():
                opts = value & 0xFF
                prev = targets.get(key)
                if prev is None:
                    targets[key] = opts
                else:
                    # Highest QoS wins; Retain As Published if any matching subscription asked.
                    q = max(prev & OPT_QOS, opts & OPT_QOS)
                    targets[key] = (
                        q | ((prev | opts) & OPT_RETAIN_AS_PUBLISHED) | (prev & opts & OPT_NO_LOCAL)
                    )
                if value >> 8:
                    if ids is None:
                        ids = {}
                    ids.setdefault(key, []).append(value >> 8)
    pub_qos = msg.qos
    count = 0
    for key, value in targets.items():
        sids = ids.get(key) if ids is not None else None
        if type(key) is not Outlet:
            picked = key.pick(msg, origin)
            if picked is None:
                continue
            key, value = picked
            sids = None
        elif value & OPT_NO_LOCAL and key is origin:
            # No Local: not to the connection that published it [MQTT-3.8.3-3]
            continue
        if key.readable is not None and not key.readable(msg.topic):
            # The ACL: this client may not read this topic, whatever it subscribed to
            # (mqttd.acl; a shared subscription's pick is not made again)
            continue
        if sids is None and value >> 8:
            sids = (value >> 8,)
        qos = value & OPT_QOS
        if pub_qos < qos:
            qos = pub_qos
        # Live messages go out with RETAIN=0 unless Retain As Published [MQTT-3.3.1-12/13]
        retain = msg.retain and bool(value & OPT_RETAIN_AS_PUBLISHED)
        try:
            if sids is not None and key.version == 5:
                key.send(msg.with_ids(tuple(sids)), qos, retain)
            else:
                key.send(msg, qos, retain)
        except MemoryError:
            # Out of memory on a subscriber's path: that subscriber loses the message, counted;
            # the publisher and the other subscribers go on
            key.drop("memory")
            continue
        count += 1
    return count


# -- messages from Redis ----------------------------------------------------------------------------
#: the envelope mqttd puts before a payload it PUBLISHes to Redis (see mqttd/redis/envelope.py)
ENVELOPE_MAGIC = b"\x00MQD\x01"
ENVELOPE_SIZE = 22  # magic 5, flags 1, origin node 8, sequence 8
#: a batch of messages of one topic: the same header (first sequence number), then a count of 2
#: bytes, then per message its QoS (1 byte), its payload's length (4) and the payload
BATCH_MAGIC = b"\x00MQD\x02"
BATCH_HEADER_SIZE = 24
#: topics whose sequence numbers a node keeps before it forgets the oldest (per origin)
MAX_TRACKED_TOPICS = 100_000
_MISSING = object()


def track_seq(
    last_seq: dict, stats: dict, origin: bytes, topic: str, first: int, last_now: int
) -> None:
    """Sequence numbers ``first``..``last_now`` of ``origin`` on ``topic`` arrived: a gap
    since the last one seen counts as lost (pub/sub is at-most-once). ``last_seq`` keeps at
    most MAX_TRACKED_TOPICS (origin, topic) pairs, forgetting the oldest."""
    key = (origin, topic)
    last = last_seq.get(key)
    if last is not None and first > last + 1:
        stats["lost"] += first - last - 1
    elif last is None and len(last_seq) >= MAX_TRACKED_TOPICS:
        last_seq.pop(next(iter(last_seq)))
    last_seq[key] = last_now


def resp_end(buf: bytes, pos: int) -> int:
    """End of the RESP2 element that starts at ``pos``, or -1 while it is incomplete.
    ValueError for what RESP2 does not have (the caller falls back to a generic parser)."""
    n = len(buf)
    if pos >= n:
        return -1
    nl = buf.find(b"\r\n", pos)
    if nl < 0:
        return -1
    t = buf[pos]
    if t in (43, 45, 58):  # + simple string, - error, : integer
        return nl + 2
    if t == 36:  # $ bulk string
        length = int(buf[pos + 1 : nl])
        if length < 0:
            return nl + 2
        end = nl + 2 + length + 2
        return end if end <= n else -1
    if t == 42:  # * array
        count = int(buf[pos + 1 : nl])
        p = nl + 2
        for _ in range(max(count, 0)):
            p = resp_end(buf, p)
            if p < 0:
                return -1
        return p
    raise ValueError(f"RESP type {chr(t)!r}")


def _bulk(buf: bytes, pos: int) -> tuple[bytes, int]:
    """The bulk string at ``pos`` (known complete) and the position after it."""
    nl = buf.find(b"\r\n", pos)
    length = int(buf[pos + 1 : nl])
    start = nl + 2
    return buf[start : start + length], start + length + 2


class PushReader:
    """The subscription connection's stream from Redis, with a fast path for messages.

    Nearly all a node receives are ``message`` / ``pmessage`` pushes that carry an mqttd
    envelope on a channel the node has seen before: those are parsed, filtered (the node's own
    messages, the extra copies Redis sends for overlapping patterns), checked for sequence gaps
    and delivered here, with no list built per push. Everything else (subscription
    confirmations, PONG, errors, raw payloads, messages with properties or the retain flag, the
    first message of a channel) goes, in order, to ``slow(reply)`` parsed by hiredis, where the
    bridge handles it and fills the caches the fast path reads (``topics``, ``canonical``).
    """

    def __init__(
        self,
        slow: Any,
        node: bytes,
        control: bytes,
        channels: dict,
        canonical: dict,
        topics: dict,
        last_seq: dict,
        stats: dict,
        tree: Any,
    ) -> None:
        import hiredis

        self.slow = slow
        self.node = node
        self.control = control
        self.channels = channels
        self.canonical = canonical
        self.topics = topics
        self.last_seq = last_seq
        self.stats = stats
        self.tree = tree
        self.generic = hiredis.Reader()
        self.buf = b""
        self.raw = False  # a stream the fast path cannot frame: hiredis reads all of it

    def feed(self, data: bytes) -> None:
        if self.raw:
            return self._generic(data)
        buf = self.buf + data if self.buf else data
        pos = 0
        received = 0
        try:
            while True:
                end = resp_end(buf, pos)
                if end < 0:
                    break
                took = self._fast(buf, pos)
                if took < 0:
                    self._generic(buf[pos:end])
                else:
                    received += took
                pos = end
        except ValueError:
            self.raw = True
            self.buf = b""
            self.stats["received"] += received
            return self._generic(buf[pos:])
        self.buf = buf[pos:]
        self.stats["received"] += received

    def _generic(self, data: bytes) -> None:
        reader = self.generic
        reader.feed(data)
        while True:
            reply = reader.gets()
            if reply is False:
                return
            self.slow(reply)

    def _fast(self, buf: bytes, pos: int) -> int:
        """Handle one complete push at ``pos``: 1 delivered, 0 dropped, -1 not for here."""
        if buf.startswith(b"*3\r\n$7\r\nmessage\r\n", pos):
            pattern = None
            channel, p = _bulk(buf, pos + 17)
            if channel == self.control:
                return -1
        elif buf.startswith(b"*4\r\n$8\r\npmessage\r\n", pos):
            pattern, p = _bulk(buf, pos + 18)
            channel, p = _bulk(buf, p)
            if channel in self.channels:
                return 0  # the exact channel's copy is the one kept
            canon = self.canonical.get(channel, _MISSING)
            if canon is _MISSING:
                return -1
            if canon != pattern:
                return 0  # another pattern's copy is the one kept
        else:
            return -1
        topic = self.topics.get(channel)
        if topic is None:
            return -1
        data, _ = _bulk(buf, p)
        if data.startswith(BATCH_MAGIC):
            return self._batch(topic, data)
        if len(data) < ENVELOPE_SIZE or not data.startswith(ENVELOPE_MAGIC):
            return -1
        flags = data[5]
        if flags & 0xFC or flags == 3:
            return -1  # retain, properties, or not an envelope of ours
        origin = data[6:14]
        if origin == self.node:
            return 0  # our own: local subscribers already have it
        seq = int.from_bytes(data[14:22], "big")
        track_seq(self.last_seq, self.stats, origin, topic, seq, seq)
        msg = Message(topic, data[ENVELOPE_SIZE:], flags, False, None, b"\x00", (origin, seq))
        nodes = self.tree.collect(topic)
        if nodes:
            deliver(nodes, msg, None)
        return 1

    def _batch(self, topic: str, data: bytes) -> int:
        """A batch: every message checked before any is delivered (else -1, the general path
        counts it); the node's own: 0."""
        n = len(data)
        if n < BATCH_HEADER_SIZE or data[5] != 0:
            return -1
        count = int.from_bytes(data[22:24], "big")
        items = []
        pos = BATCH_HEADER_SIZE
        for _ in range(count):
            if pos + 5 > n:
                return -1
            qos = data[pos]
            length = int.from_bytes(data[pos + 1 : pos + 5], "big")
            pos += 5
            if qos > 2 or pos + length > n:
                return -1
            items.append((qos, pos, length))
            pos += length
        if pos != n or not items:
            return -1
        origin = data[6:14]
        if origin == self.node:
            return 0
        first = int.from_bytes(data[14:22], "big")
        track_seq(self.last_seq, self.stats, origin, topic, first, first + count - 1)
        nodes = self.tree.collect(topic)
        if nodes:
            for i, (qos, start, length) in enumerate(items):
                payload = data[start : start + length]
                msg = Message(topic, payload, qos, False, None, b"\x00", (origin, first + i))
                deliver(nodes, msg, None)
        return count


# -- messages to Redis (the compiled twin: mqttd/_route.pyx) ------------------------------------------
class _Run:
    """Messages of one topic with consecutive sequence numbers, for one PUBLISH."""

    __slots__ = ("topic", "first", "next", "msgs", "size")

    def __init__(self, topic: str, seq: int, msg: Message) -> None:
        self.topic = topic
        self.first = seq
        self.next = seq + 1
        self.msgs = [msg]
        self.size = len(msg.payload)


class Outbox:
    """What the publishing node sends Redis at its next pipelined write (mqttd.redis.bridge): each
    message numbered per topic (its identity across nodes) and framed as a PUBLISH of its
    envelope (docs/redis.md, section 5); consecutive messages of one topic with nothing in
    between go in one PUBLISH, a batch. Compiled with the receive side (PushReader): numbering
    and framing were a sixth of the publishing node's time in Python (issue 16, item 4)."""

    def __init__(
        self, node: bytes, prefix: bytes, max_batch: int = 65535, max_batch_bytes: int = 256 * 1024
    ) -> None:
        self.node = node
        self.prefix = prefix
        #: our last sequence number per topic
        self.topic_seq: dict[str, int] = {}
        #: messages in this outbox (batched or not), for the forwarded / not forwarded counts
        self.publishes = 0
        self.entries: list[bytes | _Run] = []
        self.run: _Run | None = None  # the last entry while it can grow
        self.max_batch = max_batch
        self.max_batch_bytes = max_batch_bytes

    def __len__(self) -> int:
        return len(self.entries)

    def stamp(self, msg: Message) -> int:
        """Give ``msg`` its identity across nodes: (this node, the next number of its topic).
        Numbers count per topic because a node receives only the topics it subscribes to: a
        gap in one topic's numbers is a message pub/sub lost."""
        seqs = self.topic_seq
        last = seqs.get(msg.topic)
        seq = 1 if last is None else last + 1
        if last is None and len(seqs) >= MAX_TRACKED_TOPICS:
            del seqs[next(iter(seqs))]  # forget the oldest topic; its numbers restart
        seqs[msg.topic] = seq
        msg.origin = (self.node, seq)
        return seq

    def add(self, msg: Message) -> bool:
        """Put ``msg`` (stamped here if it has no identity yet) in the outbox; True when the
        outbox was empty (the caller schedules the write)."""
        first = not self.entries
        seq = self.stamp(msg) if msg.origin is None else msg.origin[1]
        self.publishes += 1
        if not msg.retain and msg.props_block == b"\x00":
            run = self.run
            if (
                run is not None
                and run.next == seq
                and run.topic == msg.topic
                and run.size < self.max_batch_bytes
                and len(run.msgs) < self.max_batch
            ):
                run.msgs.append(msg)
                run.next = seq + 1
                run.size += len(msg.payload)
                return first
            self.run = _Run(msg.topic, seq, msg)
            self.entries.append(self.run)
        else:
            self.run = None
            self.entries.append(self._single(msg, seq))
        return first

    def add_command(self, command: bytes) -> bool:
        """A framed Redis command to send in order with the messages (retained updates)."""
        first = not self.entries
        self.run = None
        self.entries.append(command)
        return first

    def drop(self) -> int:
        """Messages in the outbox, and it is empty: nothing is framed (Redis is not reading)."""
        publishes, self.publishes = self.publishes, 0
        self.entries = []
        self.run = None
        return publishes

    def take(self) -> tuple[bytes, int, int]:
        """(bytes to write, commands in them, messages in them), and the outbox is empty."""
        entries, self.entries = self.entries, []
        publishes, self.publishes = self.publishes, 0
        self.run = None
        out = b"".join(e if e.__class__ is bytes else self._frame(e) for e in entries)  # type: ignore[arg-type]
        return out, len(entries), publishes

    def _single(self, msg: Message, seq: int) -> bytes:
        """PUBLISH channel envelope: header, the property block if any, the payload."""
        block = msg.props_block
        flags = msg.qos | (0x04 if msg.retain else 0)
        if block == b"\x00":
            block = b""
        else:
            flags |= 0x08
        channel = self.prefix + msg.topic.encode()
        payload = msg.payload
        return b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%b\r\n$%d\r\n%b%b%b%b%b\r\n" % (
            len(channel),
            channel,
            ENVELOPE_SIZE + len(block) + len(payload),
            ENVELOPE_MAGIC + bytes((flags,)),
            self.node,
            seq.to_bytes(8, "big"),
            block,
            payload,
        )

    def _frame(self, run: _Run) -> bytes:
        msgs = run.msgs
        if len(msgs) == 1:
            return self._single(msgs[0], run.first)
        channel = self.prefix + run.topic.encode()
        parts = [BATCH_MAGIC, b"\x00", self.node, run.first.to_bytes(8, "big")]
        parts.append(len(msgs).to_bytes(2, "big"))
        for m in msgs:
            parts += (bytes((m.qos,)), len(m.payload).to_bytes(4, "big"), m.payload)
        body = b"".join(parts)
        return b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (
            len(channel),
            channel,
            len(body),
            body,
        )
