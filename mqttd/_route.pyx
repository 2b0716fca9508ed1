# cython: language_level=3
"""The PUBLISH fan-out path, compiled (twin of ``mqttd/_pure/_route.py``; see its docstring).

Per message: one :class:`Message`; per subscriber: appends to its :class:`Outlet`'s bytearray,
with no Python object created for a QoS 0 copy. Writes are coalesced by the :class:`Flusher`.
Fields and C methods are declared in ``_route.pxd``.
"""

from collections import deque

cimport cython

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.string cimport memcmp, memcpy

# The codec's varint code, called in C (as the pure twin imports the pure codec's), and its ack
# encoder (only on a reconnect): the wire format is written down once.
from mqttd._codec cimport varint_bytes, varint_end

from mqttd._codec import encode_ack
from mqttd.constants import (
    FAILURE_THRESHOLD,
    OPT_NO_LOCAL,
    OPT_QOS,
    OPT_RETAIN_AS_PUBLISHED,
    PACKET_IDENTIFIER_NOT_FOUND,
    PUBLISH,
    PUBREL,
    SUCCESS,
    SUBSCRIPTION_IDENTIFIER,
    TOPIC_ALIAS,
)

# Inflight.state: where an outgoing QoS 1/2 flow stands (Python names below)
cdef enum:
    C_AWAIT_PUBACK = 1  # QoS 1, PUBLISH sent
    C_AWAIT_PUBREC = 2  # QoS 2, PUBLISH sent
    C_AWAIT_PUBCOMP = 3  # QoS 2, PUBREL sent

AWAIT_PUBACK = C_AWAIT_PUBACK
AWAIT_PUBREC = C_AWAIT_PUBREC
AWAIT_PUBCOMP = C_AWAIT_PUBCOMP

#: what Outlet.pubrec returns when no PUBREL is to be sent
NO_PUBREL = -1

# What the C code compares and returns, from mqttd.constants
cdef int C_PUBLISH_B0 = PUBLISH << 4  # a PUBLISH's first byte, before its flags
cdef long long C_OPT_QOS = OPT_QOS
cdef long long C_OPT_NO_LOCAL = OPT_NO_LOCAL
cdef long long C_OPT_RETAIN_AS_PUBLISHED = OPT_RETAIN_AS_PUBLISHED
cdef int C_SUCCESS = SUCCESS
cdef int C_PACKET_IDENTIFIER_NOT_FOUND = PACKET_IDENTIFIER_NOT_FOUND
cdef int C_FAILURE_THRESHOLD = FAILURE_THRESHOLD
cdef int C_NO_PUBREL = NO_PUBREL

# the identifier byte that opens each property these add to a message's block
cdef bytes _SID_HEAD = bytes((SUBSCRIPTION_IDENTIFIER,))
cdef bytes _ALIAS_HEAD = bytes((TOPIC_ALIAS,))


cdef inline int _append(bytearray buf, const char* data, Py_ssize_t n) except -1:
    cdef Py_ssize_t size = PyByteArray_GET_SIZE(buf)
    PyByteArray_Resize(buf, size + n)
    memcpy(PyByteArray_AS_STRING(buf) + size, data, n)
    return 0


cdef inline int _append_bytes(bytearray buf, bytes data) except -1:
    return _append(buf, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))


@cython.no_gc
cdef class Message:
    """One published application message, shared by every subscriber it goes to.

    Not tracked by the garbage collector: a Message refers only to strings, bytes, its property
    dict and its own variants, never back to itself, so it cannot be part of a cycle; tracking one
    per published message made collections cost about a third of the broker's time (fan-in
    benchmark, 209k msg/s with tracking, 302k with the collector off).
    """

    def __init__(self, str topic, payload, int qos=0, retain=False, properties=None,
                 bytes props_block=b"\x00", origin=None):
        self.topic = topic
        self.payload = bytes(payload)
        self.qos = qos
        self.retain = bool(retain)
        self.properties = properties if properties is not None else {}
        self.props_block = props_block
        self.origin = origin
        self.expires_at = 0.0
        self._topic_b = topic.encode("utf-8")

    cdef void _parts(self, int v5):
        cdef bytes tail = (self.props_block + self.payload) if v5 else self.payload
        remaining = 2 + len(self._topic_b) + 2 + len(tail)
        cdef bytes head = (varint_bytes(remaining) + len(self._topic_b).to_bytes(2, "big")
                           + self._topic_b)
        if v5:
            self._head5 = head
            self._tail5 = tail
        else:
            self._head4 = head
            self._tail4 = tail

    cdef Message _child(self, object key, str topic, dict extra, bytes extra_block):
        """A variant of this message with more MQTT 5 properties, cached by ``key``."""
        if self._children is None:
            self._children = {}
        cdef Message child = self._children.get(key)
        if child is None:
            inner = self.props_block[varint_end(self.props_block, 0):] + extra_block
            props = dict(self.properties)
            props.update(extra)
            child = Message(topic, self.payload, self.qos, self.retain, props,
                            varint_bytes(len(inner)) + inner, self.origin)
            child.expires_at = self.expires_at
            self._children[key] = child
        return child

    cpdef Message with_ids(self, tuple ids):
        """This message carrying Subscription Identifiers, shared by every subscriber with the
        same identifiers [MQTT-3.3.4-3]."""
        block = b"".join([_SID_HEAD + varint_bytes(i) for i in ids])
        return self._child(ids, self.topic, {SUBSCRIPTION_IDENTIFIER: list(ids)}, block)

    cpdef Message aliased(self, int alias, bint with_topic):
        """This message with a Topic Alias: the topic sent once with it, then empty."""
        return self._child(("alias", alias, with_topic), self.topic if with_topic else "",
                           {TOPIC_ALIAS: alias}, _ALIAS_HEAD + alias.to_bytes(2, "big"))

    cpdef Py_ssize_t size(self, int version, int qos) except -1:
        """Bytes of this PUBLISH on the wire for a protocol level and QoS."""
        if qos == 0:
            return len(self.encode_qos0(version, False))
        cdef int v5 = 1 if version == 5 else 0
        if (self._head5 if v5 else self._head4) is None:
            self._parts(v5)
        if v5:
            return 3 + len(self._head5) + len(self._tail5)
        return 3 + len(self._head4) + len(self._tail4)

    cpdef bytes encode_qos0(self, int version, bint retain):
        """The whole QoS 0 PUBLISH for a protocol level, cached."""
        cdef int v5 = 1 if version == 5 else 0
        cdef bytes data
        if v5:
            data = self._q0_5r if retain else self._q0_5
        else:
            data = self._q0_4r if retain else self._q0_4
        cdef bytes tail
        if data is None:
            tail = (self.props_block + self.payload) if v5 else self.payload
            remaining = 2 + len(self._topic_b) + len(tail)
            data = (bytes((C_PUBLISH_B0 | (1 if retain else 0),)) + varint_bytes(remaining)
                    + len(self._topic_b).to_bytes(2, "big") + self._topic_b + tail)
            if v5:
                if retain:
                    self._q0_5r = data
                else:
                    self._q0_5 = data
            elif retain:
                self._q0_4r = data
            else:
                self._q0_4 = data
        return data

    cpdef write_qos(self, bytearray buf, int version, int qos, bint retain, bint dup,
                    int packet_id):
        """Append a QoS 1/2 PUBLISH with this packet id to ``buf``."""
        cdef int v5 = 1 if version == 5 else 0
        if (self._head5 if v5 else self._head4) is None:
            self._parts(v5)
        cdef bytes head = self._head5 if v5 else self._head4
        cdef bytes tail = self._tail5 if v5 else self._tail4
        cdef unsigned char b[3]
        b[0] = C_PUBLISH_B0 | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0)
        _append(buf, <const char*>b, 1)
        _append_bytes(buf, head)
        b[1] = (packet_id >> 8) & 0xFF
        b[2] = packet_id & 0xFF
        _append(buf, <const char*>b + 1, 2)
        _append_bytes(buf, tail)


@cython.final
@cython.freelist(256)
@cython.no_gc
cdef class Inflight:
    """A QoS 1/2 message sent to a session and not yet acknowledged (see the twin's docstring).

    A freelist and no garbage-collector tracking: one is made and dropped per QoS 1/2 message,
    and it refers only to a Message (itself untracked) and numbers, so it cannot be in a cycle.
    """

    def __init__(self, Message msg, int qos, bint retain, int state):
        self.msg = msg
        self.qos = qos
        self.retain = retain
        self.state = state

    def __repr__(self):
        return (f"Inflight(msg={self.msg!r}, qos={self.qos}, retain={self.retain}, "
                f"state={self.state})")


cdef inline Inflight _inflight(Message msg, int qos, bint retain, int state):
    cdef Inflight entry = Inflight.__new__(Inflight)
    entry.msg = msg
    entry.qos = qos
    entry.retain = retain
    entry.state = state
    return entry


#: a queue full this many slow-subscriber timeouts makes its session slow (the twin says why)
SLOW_READER_FACTOR = 10
cdef double C_SLOW_READER_FACTOR = SLOW_READER_FACTOR

#: why a message was not delivered (the twin's DROP_REASONS); counted in C arrays by index
#: the queue of an outlet with nothing queued (the twin says why)
_NO_QUEUE = ()
#: the in-flight table of every outlet with nothing in flight yet: an empty dict is 64 bytes per
#: idle connection (issue 16); an outlet gets its own with its first QoS 1/2 message. Nothing
#: is ever written into this one
_NO_INFLIGHT = {}

DROP_REASONS = ("queue_full", "buffer_full", "expired", "too_big", "offline", "memory",
                "slow_client")
cdef dict _REASON_INDEX = {reason: i for i, reason in enumerate(DROP_REASONS)}
cdef enum:
    D_QUEUE_FULL = 0
    D_BUFFER_FULL = 1
    D_EXPIRED = 2
    D_TOO_BIG = 3
    D_OFFLINE = 4
    D_MEMORY = 5
    N_REASONS = 7
#: overdue(): why a full queue's session is slow
STALLED = 1
CANNOT_KEEP_UP = 2


cdef inline Py_ssize_t _cost(Message msg):
    """Bytes a queued or in-flight message counts for: its payload and topic."""
    return PyBytes_GET_SIZE(msg.payload) + len(msg.topic)


cdef class Flusher:
    """Coalesces each outlet's writes into one ``transport.write`` per event-loop iteration, and
    keeps the node-wide flow-control state (the twin's docstrings say each field)."""

    def __init__(self, loop):
        self.loop = loop
        self.dirty = []
        self.scheduled = False
        self.bytes_sent = 0
        self.messages_sent = 0
        self.messages_sent_qos0 = 0
        self.messages_sent_qos2 = 0
        self.messages_dropped = 0
        cdef int i
        for i in range(N_REASONS):
            self._drops[i] = 0
        self.dropping = set()
        self.stalled = []
        self.pressure = []
        self.held = 0
        self.now = 0.0
        self.slow_timeout = 1.0
        self.over = False

    @property
    def drops(self):
        """Messages dropped, by reason (a copy)."""
        return {reason: self._drops[i] for i, reason in enumerate(DROP_REASONS)}

    cpdef mark(self, Outlet outlet):
        self.dirty.append(outlet)
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.run)

    def run(self):
        self.scheduled = False
        cdef list dirty = self.dirty
        self.dirty = []
        cdef Outlet outlet
        for outlet in dirty:
            try:
                outlet.flush()
            except MemoryError:
                outlet.cut()  # that subscriber's problem: the others are still written to
            except Exception:
                # A transport closed under it (uvloop raises on a write after close): those
                # bytes have no reader, and the outlets after it in this turn are still written
                outlet.buf = bytearray()


cdef class Outlet:
    """A session's delivery end: output buffer, packet ids and outgoing QoS 1/2 in flight, each
    bounded (the twin's docstring says how, and docs/flow-control.md)."""

    def __init__(self, Flusher flusher, int version=4, int inflight_max=65535,
                 int max_queued=1000, Py_ssize_t max_buffer=8 * 1024 * 1024,
                 long long max_queued_bytes=0, long long max_inflight_bytes=0):
        self.flusher = flusher
        self.transport = None
        self.version = version
        self.buf = bytearray()
        self.pending = False
        self.paused = False
        self.inflight = _NO_INFLIGHT
        self.inflight_max = inflight_max
        self.inflight_bytes = 0
        self.max_inflight_bytes = max_inflight_bytes if max_inflight_bytes > 0 else (1LL << 60)
        self.queue = _NO_QUEUE
        self.max_queued = max_queued
        self.max_queued_bytes = max_queued_bytes if max_queued_bytes > 0 else (1LL << 60)
        self.queued_bytes = 0
        self.max_buffer = max_buffer
        self.full_since = -1.0
        self.progress_at = 0.0
        self.slow = False
        self.waiters = None
        self.max_packet = 0
        self.alias_max = 0
        self.aliases = None  # made when the client allows aliases (alias_max)
        self.next_pid = 1
        self.dropped = 0
        cdef int i
        for i in range(N_REASONS):
            self._unlogged[i] = 0
        self._dropping = False
        self.logged_at = -1e9
        self.sent = 0
        self.session = None
        self.refresh = None
        self.readable = None  # readable(topic) -> bool when an ACL limits it (mqttd.acl)

    cdef inline void _mark(self):
        if not self.pending:
            self.pending = True
            self.flusher.mark(self)

    cpdef write(self, bytes data):
        """Queue bytes for the next coalesced write (acks, control packets)."""
        if self.transport is None:
            return
        _append_bytes(self.buf, data)
        self._mark()

    cpdef flush(self):
        """Hand the whole buffer to the transport in one write."""
        self.pending = False
        cdef bytearray data
        if PyByteArray_GET_SIZE(self.buf) and self.transport is not None and not self.paused:
            data = self.buf
            # A fresh buffer: the transport may keep a reference to the one it was given.
            self.buf = bytearray()
            self.flusher.bytes_sent += PyByteArray_GET_SIZE(data)
            self.transport.write(data)

    def cut(self):
        """Out of memory writing to this client: its buffer is given up (counted once) and its
        connection closed (the twin says more)."""
        self.buf = bytearray()
        self.pending = False
        self._drop(D_MEMORY)
        transport = self.transport
        if transport is not None:
            transport.close()

    def resume(self):
        """The transport takes writes again: the buffer goes, and what was queued meanwhile."""
        self.paused = False
        self.progress_at = self.flusher.now
        self.drain_queue()
        if PyByteArray_GET_SIZE(self.buf):
            self._mark()

    cdef Message _wire(self, Message msg):
        """The message as written on this connection: with a Topic Alias when the client
        accepts them, never above its Topic Alias Maximum [MQTT-3.3.2-10]."""
        if self.aliases is None:
            self.aliases = {}
        alias = self.aliases.get(msg.topic)
        if alias is not None:
            return msg.aliased(alias, False)
        if len(self.aliases) < self.alias_max:
            n = len(self.aliases) + 1
            self.aliases[msg.topic] = n
            return msg.aliased(n, True)
        return msg

    cpdef drop(self, str reason):
        """Count one message not delivered to this session, by reason (DROP_REASONS)."""
        self._drop(_REASON_INDEX[reason])

    cdef inline void _drop(self, int reason):
        # C counters: a stalled subscriber drops every message sent to it, and 50 of them must
        # not cost the fast one its rate (a dict update here was 4 of them a drop)
        self.dropped += 1
        cdef Flusher flusher = self.flusher
        flusher.messages_dropped += 1
        flusher._drops[reason] += 1
        self._unlogged[reason] += 1
        if not self._dropping:
            self._dropping = True
            flusher.dropping.add(self)

    @property
    def drops(self):
        """Messages dropped by reason since take_drops(), or None when there are none."""
        if not self._dropping:
            return None
        return {r: self._unlogged[i] for i, r in enumerate(DROP_REASONS) if self._unlogged[i]}

    def take_drops(self):
        """The drops by reason since the last call, reset (mqttd.flow logs them)."""
        drops = self.drops or {}
        cdef int i
        for i in range(N_REASONS):
            self._unlogged[i] = 0
        self._dropping = False
        self.flusher.dropping.discard(self)
        return drops

    cpdef send(self, Message msg, int qos, bint retain):
        """Deliver one message to this session at the given (already downgraded) QoS."""
        # An alias adds at most 4 bytes: counted so the limit holds either way.
        if self.max_packet and (msg.size(self.version, qos) + (4 if self.alias_max else 0)
                                > self.max_packet):
            # Too big for this client: discarded as if sent [MQTT-3.1.2-25]
            self._drop(D_TOO_BIG)
            return
        if qos == 0:
            if self.transport is None:
                self._drop(D_OFFLINE)  # QoS 0 is not queued for an offline session
                return
            if self.paused and PyByteArray_GET_SIZE(self.buf) >= self.max_buffer:
                self._drop(D_BUFFER_FULL)
                if not self.slow:
                    self._stalling()
                return
            if self.alias_max:
                msg = self._wire(msg)
            _append_bytes(self.buf, msg.encode_qos0(self.version, retain))
            self.sent += 1
            self.flusher.messages_sent += 1
            self.flusher.messages_sent_qos0 += 1
            self._mark()
            return
        # QoS 1/2 is encoded only when it can go: a paused transport or a full window keeps it
        # queued, as a message, not as bytes
        if (self.transport is None or self.paused or len(self.inflight) >= self.inflight_max
                or self.inflight_bytes >= self.max_inflight_bytes):
            self._enqueue(msg, qos, retain)
            return
        self._send_inflight(msg, qos, retain)

    cdef _enqueue(self, Message msg, int qos, bint retain):
        cdef Py_ssize_t size = _cost(msg)
        cdef Flusher flusher = self.flusher
        cdef Message old
        cdef Py_ssize_t old_size
        queue = self.queue
        if len(queue) >= self.max_queued or self.queued_bytes + size > self.max_queued_bytes:
            if self.full_since < 0.0:
                self.full_since = flusher.now
            elif not self.slow and self.transport is not None:
                why = self.overdue(flusher.now)
                if why:
                    self.become_slow()
                    if why == STALLED:
                        flusher.stalled.append(self)  # mqttd.flow disconnects it
            if (not self.slow and self.transport is not None and flusher.slow_timeout > 0.0
                    and len(queue) < 2 * self.max_queued
                    and self.queued_bytes + size <= 2 * self.max_queued_bytes):
                # Backpressure: taken, and its publisher is held until this queue drains
                flusher.pressure.append(self)
            else:
                # Slow or offline: the oldest messages make room, each counted
                while queue and (len(queue) >= self.max_queued
                                 or self.queued_bytes + size > self.max_queued_bytes):
                    old = <Message>(queue.popleft()[0])
                    old_size = _cost(old)
                    self.queued_bytes -= old_size
                    flusher.held -= old_size
                    self._drop(D_QUEUE_FULL)
                if len(queue) >= self.max_queued or size > self.max_queued_bytes:
                    self._drop(D_QUEUE_FULL)  # no queue at all, or bigger than all of it
                    return
        if queue is _NO_QUEUE:
            self.queue = queue = deque()
        queue.append((msg, qos, retain))
        self.queued_bytes += size
        flusher.held += size

    cdef void _stalling(self):
        """QoS 0 to a paused transport with the buffer full (the twin says why)."""
        cdef Flusher flusher = self.flusher
        if flusher.slow_timeout <= 0.0:
            return
        if self.full_since < 0.0:
            self.full_since = flusher.now
        elif (flusher.now - (self.full_since if self.full_since > self.progress_at
                             else self.progress_at) >= flusher.slow_timeout):
            self.slow = True
            flusher.stalled.append(self)

    cpdef int overdue(self, double now):
        """Whether this full queue has held publishers back long enough, and why: STALLED,
        CANNOT_KEEP_UP, or 0 (the twin says how)."""
        cdef double timeout = self.flusher.slow_timeout
        if now - self.progress_at >= timeout:
            return STALLED
        if now - self.full_since >= timeout * C_SLOW_READER_FACTOR:
            return CANNOT_KEEP_UP
        return 0

    cpdef become_slow(self):
        """The queue stayed full too long: it drops instead of holding publishers back, until
        it has drained to half its limits."""
        self.slow = True
        self.wake()

    cpdef wake(self):
        """Let the publishers held by this queue be read again."""
        waiters = self.waiters
        if waiters is not None:
            self.waiters = None
            for waiter in waiters:
                waiter.unhold()

    cdef _send_inflight(self, Message msg, int qos, bint retain):
        if not self.inflight:
            self.progress_at = self.flusher.now  # it owes acknowledgements from now on
            if self.inflight is _NO_INFLIGHT:
                self.inflight = {}
        cdef int pid = self.alloc_packet_id()
        cdef bytearray buf = self.buf
        cdef Py_ssize_t mark = PyByteArray_GET_SIZE(buf)
        try:
            (self._wire(msg) if self.alias_max else msg).write_qos(
                buf, self.version, qos, retain, False, pid)
        except MemoryError:
            # This session's problem (deliver): no half packet left, no id in flight unsent
            PyByteArray_Resize(buf, mark)
            raise
        self.inflight[pid] = _inflight(msg, qos, retain,
                                       C_AWAIT_PUBACK if qos == 1 else C_AWAIT_PUBREC)
        self._in_flight(msg, 1)
        self.sent += 1
        self.flusher.messages_sent += 1
        if qos == 2:
            self.flusher.messages_sent_qos2 += 1
        self._mark()

    cpdef int alloc_packet_id(self) except -1:
        """A packet id not in use by a message in flight [MQTT-2.2.1-4]."""
        cdef int pid = self.next_pid
        cdef int i
        cdef dict inflight = self.inflight
        for i in range(65536):
            if pid not in inflight:
                break
            pid = pid + 1 if pid < 65535 else 1
        else:
            raise RuntimeError("no free packet identifier")
        self.next_pid = pid + 1 if pid < 65535 else 1
        return pid

    cpdef drain_queue(self):
        """Send queued QoS 1/2 messages while the window has room and the transport takes
        writes; a queue back at half its limits holds nobody and is not slow any more."""
        queue = self.queue
        cdef Flusher flusher = self.flusher
        cdef Message msg
        cdef Py_ssize_t size
        while (queue and self.transport is not None and not self.paused
               and len(self.inflight) < self.inflight_max
               and self.inflight_bytes < self.max_inflight_bytes):
            item = queue.popleft()
            msg = <Message>item[0]
            size = _cost(msg)
            self.queued_bytes -= size
            flusher.held -= size
            if msg.expires_at and self.refresh is not None:
                # Expired while queued: not delivered [MQTT-3.3.2-5]; else the interval that
                # is left goes out [MQTT-3.3.2-6]
                fresh = self.refresh(msg)
                if fresh is None:
                    self._drop(D_EXPIRED)
                    continue
                msg = <Message>fresh
            self._send_inflight(msg, item[1], item[2])
        if not queue and queue is self.queue:
            self.queue = _NO_QUEUE  # its memory goes with its last message
        if (self.full_since >= 0.0 and len(queue) <= self.max_queued // 2
                and self.queued_bytes <= self.max_queued_bytes // 2):
            self.full_since = -1.0
            self.slow = False
            self.wake()

    def clear(self):
        """Forget every queued and in-flight message (the session ended)."""
        cdef long long held = self.queued_bytes
        cdef Inflight entry
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

    # -- acknowledgements of outgoing QoS 1/2 (the twin's docstrings say the rules) ------------
    cpdef bint puback(self, object packet_id) except -1:
        """PUBACK: True when it completes a QoS 1 flow (the next queued message then goes
        out); an id not awaiting PUBACK changes nothing."""
        return self._end(packet_id, C_AWAIT_PUBACK)

    cpdef int pubrec(self, object packet_id, int reason_code) except -2:
        """PUBREC: the reason code of the PUBREL to answer with (SUCCESS, or
        PACKET_IDENTIFIER_NOT_FOUND at MQTT 5), or NO_PUBREL."""
        cdef Inflight entry = self.inflight.get(packet_id)
        if entry is None or entry.state == C_AWAIT_PUBACK:
            return C_PACKET_IDENTIFIER_NOT_FOUND if self.version == 5 else C_NO_PUBREL
        self.progress_at = self.flusher.now
        if entry.msg is not None:
            self._in_flight(entry.msg, -1)
        if reason_code >= C_FAILURE_THRESHOLD:
            del self.inflight[packet_id]
            self.drain_queue()
            return C_NO_PUBREL
        entry.state = C_AWAIT_PUBCOMP
        entry.msg = None
        return C_SUCCESS

    cpdef bint pubcomp(self, object packet_id) except -1:
        """PUBCOMP: True when it completes a QoS 2 flow (the next queued message then goes
        out); an id not awaiting PUBCOMP changes nothing."""
        return self._end(packet_id, C_AWAIT_PUBCOMP)

    cdef inline void _in_flight(self, Message msg, Py_ssize_t sign):
        """A message enters (``sign`` 1) or leaves (-1) the window: its bytes count against
        max_inflight_bytes and the node's held total."""
        cdef Py_ssize_t size = sign * _cost(msg)
        self.inflight_bytes += size
        self.flusher.held += size

    cdef inline bint _end(self, object packet_id, int awaiting) except -1:
        cdef Inflight entry = self.inflight.get(packet_id)
        if entry is None or entry.state != awaiting:
            return False
        self.progress_at = self.flusher.now
        if entry.msg is not None:
            self._in_flight(entry.msg, -1)
        del self.inflight[packet_id]
        self.drain_queue()
        return True

    def inflight_items(self):
        """``(packet id, Inflight)`` for each message in flight, oldest first (a copy)."""
        return list(self.inflight.items())

    def restore_queued(self, Message msg, int qos, bint retain):
        """Put back a queued message of a restored session (counted, not limited)."""
        cdef Py_ssize_t size = _cost(msg)
        if self.queue is _NO_QUEUE:
            self.queue = deque()
        self.queue.append((msg, qos, retain))
        self.queued_bytes += size
        self.flusher.held += size

    def restore_inflight(self, packet_id, Message msg, int qos, bint retain, int state):
        """Put back a message in flight that another node handed over."""
        cdef Inflight old
        if state == C_AWAIT_PUBCOMP:
            msg = None
        elif not C_AWAIT_PUBACK <= state < C_AWAIT_PUBCOMP:
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
        self.inflight[packet_id] = _inflight(msg, qos, retain, state)

    def resend_inflight(self):
        """After a reconnect: resend unacknowledged PUBLISH with DUP, and PUBREL, in order."""
        cdef Inflight entry
        cdef Message msg
        for pid, entry in self.inflight.items():
            msg = entry.msg
            if msg is None:  # AWAIT_PUBCOMP: the PUBREL again
                _append_bytes(self.buf, encode_ack(PUBREL, pid, self.version))
            else:
                (self._wire(msg) if self.alias_max else msg).write_qos(
                    self.buf, self.version, entry.qos, entry.retain, True, pid)
        if self.buf:
            self._mark()


def deliver(list nodes, Message msg, origin):
    """Send ``msg`` to the subscribers in ``nodes`` (from ``SubscriptionTree.collect``).

    Keys of the dicts are outlets (or shared-subscription groups, which pick one member); values
    are ``options | subscription_identifier << 8``. A client with several matching subscriptions
    gets one copy at the highest QoS granted among them [MQTT-3.3.5-1], carrying the identifiers
    of all of them [MQTT-3.3.4-3]. Returns the number of copies sent.
    """
    cdef dict targets
    cdef dict node
    cdef dict ids = None
    cdef long long value, prev_opts, opts
    cdef int q, qos
    cdef int pub_qos = msg.qos
    cdef int count = 0
    cdef bint retain
    cdef Outlet outlet
    if not nodes:
        return 0
    if len(nodes) == 1:
        targets = <dict>nodes[0]
    else:
        targets = {}
        for node in nodes:
            for key, pyvalue in node.items():
                value = pyvalue
                opts = value & 0xFF
                prev = targets.get(key)
                if prev is None:
                    targets[key] = opts
                else:
                    prev_opts = prev
                    # Highest QoS wins; Retain As Published if any matching subscription asked.
                    q = max(prev_opts & C_OPT_QOS, opts & C_OPT_QOS)
                    targets[key] = (q | ((prev_opts | opts) & C_OPT_RETAIN_AS_PUBLISHED)
                                    | (prev_opts & opts & C_OPT_NO_LOCAL))
                if value >> 8:
                    if ids is None:
                        ids = {}
                    ids.setdefault(key, []).append(value >> 8)
    for key, pyvalue in targets.items():
        sids = ids.get(key) if ids is not None else None
        if type(key) is not Outlet:
            picked = key.pick(msg, origin)
            if picked is None:
                continue
            key, pyvalue = picked
            outlet = <Outlet>key
            value = pyvalue
            sids = None
        else:
            outlet = <Outlet>key
            value = pyvalue
            if value & C_OPT_NO_LOCAL and outlet is origin:
                # No Local: not to the connection that published it [MQTT-3.8.3-3]
                continue
        if outlet.readable is not None and not outlet.readable(msg.topic):
            # The ACL: this client may not read this topic, whatever it subscribed to
            # (mqttd.acl; a shared subscription's pick is not made again)
            continue
        if sids is None and value >> 8:
            sids = (value >> 8,)
        qos = value & C_OPT_QOS
        if pub_qos < qos:
            qos = pub_qos
        # Live messages go out with RETAIN=0 unless Retain As Published [MQTT-3.3.1-12/13]
        retain = msg.retain and (value & C_OPT_RETAIN_AS_PUBLISHED) != 0
        try:
            if sids is not None and outlet.version == 5:
                outlet.send(msg.with_ids(tuple(sids)), qos, retain)
            else:
                outlet.send(msg, qos, retain)
        except MemoryError:
            # Out of memory on a subscriber's path: that subscriber loses the message, counted;
            # the publisher and the other subscribers go on
            outlet.drop("memory")
            continue
        count += 1
    return count


# -- messages from Redis (twin: mqttd/_pure/_route.py, same names) -----------------------------------
ENVELOPE_MAGIC = b"\x00MQD\x01"
ENVELOPE_SIZE = 22
BATCH_MAGIC = b"\x00MQD\x02"
BATCH_HEADER_SIZE = 24
MAX_TRACKED_TOPICS = 100_000
cdef object _MISSING = object()


cdef int _track_seq(dict last_seq, dict stats, bytes origin, str topic,
                    unsigned long long first, unsigned long long last_now) except -1:
    key = (origin, topic)
    last = last_seq.get(key)
    if last is not None and first > <unsigned long long>last + 1:
        stats["lost"] += first - <unsigned long long>last - 1
    elif last is None and len(last_seq) >= MAX_TRACKED_TOPICS:
        last_seq.pop(next(iter(last_seq)))
    last_seq[key] = last_now
    return 0


def track_seq(dict last_seq, dict stats, bytes origin, str topic, first, last_now):
    """Sequence numbers ``first``..``last_now`` of ``origin`` on ``topic`` arrived (see the
    twin's docstring)."""
    _track_seq(last_seq, stats, origin, topic, first, last_now)


cdef Py_ssize_t _line_end(const unsigned char* buf, Py_ssize_t pos, Py_ssize_t n):
    """Index of the CR of the next CRLF at or after ``pos``, or -1."""
    while pos + 1 < n:
        if buf[pos] == 13 and buf[pos + 1] == 10:
            return pos
        pos += 1
    return -1


cdef Py_ssize_t _number(const unsigned char* buf, Py_ssize_t pos, Py_ssize_t end) except? -2:
    cdef Py_ssize_t v = 0
    cdef bint neg = False
    if pos < end and buf[pos] == 45:
        neg = True
        pos += 1
    if pos >= end:
        raise ValueError("RESP: empty length")
    while pos < end:
        if not 48 <= buf[pos] <= 57:
            raise ValueError("RESP: bad length")
        v = v * 10 + (buf[pos] - 48)
        pos += 1
    return -v if neg else v


cdef Py_ssize_t _resp_end(const unsigned char* buf, Py_ssize_t pos, Py_ssize_t n) except -2:
    cdef Py_ssize_t nl, length, end, count, i
    cdef unsigned char t
    if pos >= n:
        return -1
    nl = _line_end(buf, pos, n)
    if nl < 0:
        return -1
    t = buf[pos]
    if t == 43 or t == 45 or t == 58:
        return nl + 2
    if t == 36:
        length = _number(buf, pos + 1, nl)
        if length < 0:
            return nl + 2
        end = nl + 2 + length + 2
        return end if end <= n else -1
    if t == 42:
        count = _number(buf, pos + 1, nl)
        pos = nl + 2
        for i in range(count):
            pos = _resp_end(buf, pos, n)
            if pos < 0:
                return -1
        return pos
    raise ValueError(f"RESP type {chr(t)!r}")


def resp_end(bytes buf, Py_ssize_t pos):
    """End of the RESP2 element that starts at ``pos``, or -1 while it is incomplete.
    ValueError for what RESP2 does not have (the caller falls back to a generic parser)."""
    return _resp_end(<const unsigned char*>PyBytes_AS_STRING(buf), pos, PyBytes_GET_SIZE(buf))


cdef Py_ssize_t _bulk(const unsigned char* buf, Py_ssize_t pos, Py_ssize_t n,
                      Py_ssize_t* start) except -2:
    """Start (in ``start``) and length of the complete bulk string at ``pos``."""
    cdef Py_ssize_t nl = _line_end(buf, pos, n)
    cdef Py_ssize_t length = _number(buf, pos + 1, nl)
    start[0] = nl + 2
    return length


@cython.final
cdef class PushReader:
    """The subscription connection's stream from Redis, with a fast path for messages (see the
    twin's docstring)."""

    def __init__(self, slow, bytes node, bytes control, dict channels, dict canonical,
                 dict topics, dict last_seq, dict stats, tree):
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
        self.raw = False

    def feed(self, bytes data):
        cdef bytes buf
        cdef Py_ssize_t pos = 0, end, n
        cdef int took
        cdef long received = 0
        cdef const unsigned char* p
        if self.raw:
            self._generic(data)
            return
        buf = self.buf + data if self.buf else data
        n = PyBytes_GET_SIZE(buf)
        p = <const unsigned char*>PyBytes_AS_STRING(buf)
        try:
            while True:
                end = _resp_end(p, pos, n)
                if end < 0:
                    break
                took = self._fast(buf, p, pos, n)
                if took < 0:
                    self._generic(buf[pos:end])
                else:
                    received += took
                pos = end
        except ValueError:
            self.raw = True
            self.buf = b""
            self.stats["received"] += received
            self._generic(buf[pos:])
            return
        self.buf = buf[pos:] if pos < n else b""
        if received:
            self.stats["received"] += received

    cdef _generic(self, bytes data):
        reader = self.generic
        reader.feed(data)
        while True:
            reply = reader.gets()
            if reply is False:
                return
            self.slow(reply)

    cdef int _fast(self, bytes buf, const unsigned char* p, Py_ssize_t pos,
                   Py_ssize_t n) except -2:
        cdef Py_ssize_t start, length, dstart, dlen
        cdef bytes channel, pattern = None, origin
        cdef unsigned long long seq = 0
        cdef int flags, i
        cdef object topic, canon, last
        if n - pos > 17 and memcmp(p + pos, b"*3\r\n$7\r\nmessage\r\n", 17) == 0:
            length = _bulk(p, pos + 17, n, &start)
            channel = buf[start:start + length]
            if channel == self.control:
                return -1
            pos = start + length + 2
        elif n - pos > 18 and memcmp(p + pos, b"*4\r\n$8\r\npmessage\r\n", 18) == 0:
            length = _bulk(p, pos + 18, n, &start)
            pattern = buf[start:start + length]
            length = _bulk(p, start + length + 2, n, &start)
            channel = buf[start:start + length]
            pos = start + length + 2
            if channel in self.channels:
                return 0
            canon = self.canonical.get(channel, _MISSING)
            if canon is _MISSING:
                return -1
            if canon != pattern:
                return 0
        else:
            return -1
        topic = self.topics.get(channel)
        if topic is None:
            return -1
        dlen = _bulk(p, pos, n, &dstart)
        if dlen >= 5 and memcmp(p + dstart, b"\x00MQD\x02", 5) == 0:
            return self._batch(<str>topic, buf, p, dstart, dlen)
        if dlen < ENVELOPE_SIZE or memcmp(p + dstart, b"\x00MQD\x01", 5) != 0:
            return -1
        flags = p[dstart + 5]
        if flags & 0xFC or flags == 3:
            return -1
        if memcmp(p + dstart + 6, PyBytes_AS_STRING(self.node), 8) == 0:
            return 0
        origin = buf[dstart + 6:dstart + 14]
        for i in range(8):
            seq = (seq << 8) | p[dstart + 14 + i]
        _track_seq(self.last_seq, self.stats, origin, topic, seq, seq)
        msg = Message(topic, buf[dstart + ENVELOPE_SIZE:dstart + dlen], flags, False, None,
                      b"\x00", (origin, seq))
        nodes = self.tree.collect(topic)
        if nodes:
            deliver(nodes, msg, None)
        return 1

    cdef int _batch(self, str topic, bytes buf, const unsigned char* p, Py_ssize_t d,
                    Py_ssize_t n) except -2:
        """A batch at ``p + d`` of ``n`` bytes: all checked before any is delivered."""
        cdef Py_ssize_t pos, length, i, count
        cdef unsigned long long first = 0
        cdef int qos
        cdef bytes origin
        cdef Message msg
        if n < BATCH_HEADER_SIZE or p[d + 5] != 0:
            return -1
        count = (p[d + 22] << 8) | p[d + 23]
        if count == 0:
            return -1
        pos = BATCH_HEADER_SIZE
        for i in range(count):
            if pos + 5 > n:
                return -1
            length = ((<Py_ssize_t>p[d + pos + 1] << 24) | (p[d + pos + 2] << 16)
                      | (p[d + pos + 3] << 8) | p[d + pos + 4])
            if p[d + pos] > 2 or pos + 5 + length > n:
                return -1
            pos += 5 + length
        if pos != n:
            return -1
        if memcmp(p + d + 6, PyBytes_AS_STRING(self.node), 8) == 0:
            return 0
        origin = buf[d + 6:d + 14]
        for i in range(8):
            first = (first << 8) | p[d + 14 + i]
        _track_seq(self.last_seq, self.stats, origin, topic, first, first + count - 1)
        nodes = self.tree.collect(topic)
        if not nodes:
            return count
        pos = d + BATCH_HEADER_SIZE
        for i in range(count):
            qos = p[pos]
            length = ((<Py_ssize_t>p[pos + 1] << 24) | (p[pos + 2] << 16)
                      | (p[pos + 3] << 8) | p[pos + 4])
            pos += 5
            msg = Message(topic, buf[pos:pos + length], qos, False, None, b"\x00",
                          (origin, first + i))
            deliver(nodes, msg, None)
            pos += length
        return count


# -- messages to Redis (twin: mqttd/_pure/_route.py, same names) -------------------------------------
cdef inline int _be(bytearray out, unsigned long long v, int n) except -1:
    """``v`` as ``n`` big-endian bytes at the end of ``out``."""
    cdef unsigned char b[8]
    cdef int i
    for i in range(n):
        b[n - 1 - i] = (v >> (8 * i)) & 0xFF
    return _append(out, <const char*>b, n)


cdef inline int _resp_bulk(bytearray out, const char* data, Py_ssize_t n) except -1:
    _append_bytes(out, b"$%d\r\n" % n)
    _append(out, data, n)
    return _append(out, b"\r\n", 2)


@cython.final
cdef class _Run:
    """Messages of one topic with consecutive sequence numbers, for one PUBLISH."""
    cdef str topic
    cdef unsigned long long first, next
    cdef list msgs
    cdef Py_ssize_t size


@cython.final
cdef class Outbox:
    """What the publishing node sends Redis at its next pipelined write (mqttd.redis.bridge): each
    message numbered per topic (its identity across nodes) and framed as a PUBLISH of its
    envelope (docs/redis.md, section 5); consecutive messages of one topic with nothing in
    between go in one PUBLISH, a batch. Compiled with the receive side (PushReader): numbering
    and framing were a sixth of the publishing node's time in Python (issue 16, item 4)."""

    cdef public bytes node
    cdef public bytes prefix
    #: our last sequence number per topic
    cdef public dict topic_seq
    #: messages in this outbox (batched or not), for the forwarded / not forwarded counts
    cdef public Py_ssize_t publishes
    cdef list entries  # bytes (a framed command) or _Run
    cdef _Run run  # the last entry while it can grow
    cdef Py_ssize_t max_batch, max_batch_bytes

    def __init__(self, bytes node, bytes prefix, Py_ssize_t max_batch=65535,
                 Py_ssize_t max_batch_bytes=256 * 1024):
        self.node = node
        self.prefix = prefix
        self.topic_seq = {}
        self.publishes = 0
        self.entries = []
        self.run = None
        self.max_batch = max_batch
        self.max_batch_bytes = max_batch_bytes

    def __len__(self):
        return len(self.entries)

    cpdef unsigned long long stamp(self, Message msg) except 0:
        """Give ``msg`` its identity across nodes: (this node, the next number of its topic).
        Numbers count per topic because a node receives only the topics it subscribes to: a
        gap in one topic's numbers is a message pub/sub lost."""
        cdef dict seqs = self.topic_seq
        topic = msg.topic
        last = seqs.get(topic)
        cdef unsigned long long seq = 1 if last is None else <unsigned long long>last + 1
        if last is None and len(seqs) >= MAX_TRACKED_TOPICS:
            del seqs[next(iter(seqs))]  # forget the oldest topic; its numbers restart
        seqs[topic] = seq
        msg.origin = (self.node, seq)
        return seq

    cpdef bint add(self, Message msg) except -1:
        """Put ``msg`` (stamped here if it has no identity yet) in the outbox; True when the
        outbox was empty (the caller schedules the write)."""
        cdef unsigned long long seq
        cdef _Run run
        cdef bint first = not self.entries
        if msg.origin is None:
            seq = self.stamp(msg)
        else:
            seq = msg.origin[1]
        self.publishes += 1
        if not msg.retain and msg.props_block == b"\x00":
            run = self.run
            if (run is not None and run.next == seq and run.topic == msg.topic
                    and run.size < self.max_batch_bytes and len(run.msgs) < self.max_batch):
                run.msgs.append(msg)
                run.next = seq + 1
                run.size += len(msg.payload)
                return first
            run = _Run.__new__(_Run)
            run.topic = msg.topic
            run.first = seq
            run.next = seq + 1
            run.msgs = [msg]
            run.size = len(msg.payload)
            self.run = run
            self.entries.append(run)
        else:
            self.run = None
            self.entries.append(self._single(msg, seq))
        return first

    cpdef bint add_command(self, bytes command) except -1:
        """A framed Redis command to send in order with the messages (retained updates)."""
        cdef bint first = not self.entries
        self.run = None
        self.entries.append(command)
        return first

    def drop(self):
        """Messages in the outbox, and it is empty: nothing is framed (Redis is not reading)."""
        publishes, self.publishes = self.publishes, 0
        self.entries = []
        self.run = None
        return publishes

    def take(self):
        """(bytes to write, commands in them, messages in them), and the outbox is empty."""
        entries, self.entries = self.entries, []
        publishes, self.publishes = self.publishes, 0
        self.run = None
        cdef bytearray out = bytearray()
        for entry in entries:
            if type(entry) is bytes:
                _append_bytes(out, <bytes>entry)
            else:
                self._frame(out, <_Run>entry)
        return bytes(out), len(entries), publishes

    cdef bytes _single(self, Message msg, unsigned long long seq):
        """PUBLISH channel envelope: header, the property block if any, the payload."""
        cdef bytes block = msg.props_block
        cdef int flags = msg.qos | (0x04 if msg.retain else 0)
        if block == b"\x00":
            block = b""
        else:
            flags |= 0x08
        cdef bytes channel = self.prefix + msg.topic.encode()
        cdef bytes payload = msg.payload
        cdef bytearray out = bytearray(b"*3\r\n$7\r\nPUBLISH\r\n")
        _resp_bulk(out, PyBytes_AS_STRING(channel), PyBytes_GET_SIZE(channel))
        _append_bytes(out, b"$%d\r\n" % (ENVELOPE_SIZE + len(block) + len(payload)))
        _append(out, b"\x00MQD\x01", 5)
        _be(out, flags, 1)
        _append_bytes(out, self.node)
        _be(out, seq, 8)
        _append_bytes(out, block)
        _append_bytes(out, payload)
        _append(out, b"\r\n", 2)
        return bytes(out)

    cdef int _frame(self, bytearray out, _Run run) except -1:
        cdef list msgs = run.msgs
        cdef Message m
        cdef Py_ssize_t body
        if len(msgs) == 1:
            _append_bytes(out, self._single(<Message>msgs[0], run.first))
            return 0
        cdef bytes channel = self.prefix + run.topic.encode()
        body = BATCH_HEADER_SIZE + 5 * len(msgs) + run.size
        _append(out, b"*3\r\n$7\r\nPUBLISH\r\n", 17)
        _resp_bulk(out, PyBytes_AS_STRING(channel), PyBytes_GET_SIZE(channel))
        _append_bytes(out, b"$%d\r\n" % body)
        _append(out, b"\x00MQD\x02\x00", 6)
        _append_bytes(out, self.node)
        _be(out, run.first, 8)
        _be(out, len(msgs), 2)
        for m in msgs:
            _be(out, m.qos, 1)
            _be(out, len(m.payload), 4)
            _append_bytes(out, m.payload)
        return _append(out, b"\r\n", 2)
