# cython: language_level=3
"""C-level declarations of ``mqttd._route``: the fan-out classes with their fields and methods."""


cdef class Message:
    cdef public str topic
    cdef public bytes payload
    cdef public int qos
    cdef public bint retain
    cdef public dict properties
    cdef public bytes props_block
    cdef public object origin
    cdef public double expires_at
    cdef bytes _topic_b
    # Cached encodings: whole QoS 0 packets per (v5, retain), and head/tail of QoS 1/2 ones.
    cdef bytes _q0_4, _q0_4r, _q0_5, _q0_5r
    cdef bytes _head4, _head5, _tail4, _tail5
    # Variants with more properties (subscription identifiers, topic alias), by key
    cdef dict _children

    cdef void _parts(self, int v5)
    cdef Message _child(self, object key, str topic, dict extra, bytes extra_block)
    cpdef Message with_ids(self, tuple ids)
    cpdef Message aliased(self, int alias, bint with_topic)
    cpdef Py_ssize_t size(self, int version, int qos) except -1
    cpdef bytes encode_qos0(self, int version, bint retain)
    cpdef write_qos(self, bytearray buf, int version, int qos, bint retain, bint dup,
                    int packet_id)


cdef class Inflight:
    cdef public Message msg
    cdef public int qos
    cdef public bint retain
    cdef public int state


cdef class Flusher:
    cdef public object loop
    cdef public list dirty
    cdef public bint scheduled
    # Broker-wide totals ($SYS): bytes written, PUBLISH packets sent, messages dropped
    cdef public long long bytes_sent
    cdef public long long messages_sent
    cdef public long long messages_sent_qos0  # of messages_sent: QoS 0, and QoS 2 (the rest: 1)
    cdef public long long messages_sent_qos2
    cdef public long long messages_dropped
    # Flow control (docs/flow-control.md; the twin says each field)
    cdef long long _drops[7]  # by reason (DROP_REASONS); read as the drops property
    cdef public set dropping
    cdef public list stalled
    cdef public list pressure
    cdef public long long held
    cdef public double now
    cdef public double slow_timeout
    cdef public bint over

    cpdef mark(self, Outlet outlet)


cdef class Outlet:
    cdef public Flusher flusher
    cdef public object transport
    cdef public int version
    cdef public bytearray buf
    cdef public bint pending
    cdef public bint paused
    cdef public dict inflight  # packet id -> Inflight
    cdef public int inflight_max
    cdef public long long inflight_bytes
    cdef public long long max_inflight_bytes
    cdef public object queue
    cdef public int max_queued
    cdef public long long max_queued_bytes
    cdef public long long queued_bytes
    cdef public Py_ssize_t max_buffer
    cdef public double full_since
    cdef public double progress_at
    cdef public bint slow
    cdef public object waiters
    cdef long long _unlogged[7]  # drops by reason since take_drops()
    cdef bint _dropping
    cdef public double logged_at
    cdef public Py_ssize_t max_packet
    cdef public int alias_max
    cdef public dict aliases
    cdef public int next_pid
    cdef public long long dropped
    cdef public long long sent
    cdef public object session
    cdef public object refresh
    cdef public object readable
    cdef object __weakref__

    cdef inline void _mark(self)
    cpdef write(self, bytes data)
    cpdef flush(self)
    cdef Message _wire(self, Message msg)
    cpdef drop(self, str reason)
    cdef inline void _drop(self, int reason)
    cpdef send(self, Message msg, int qos, bint retain)
    cdef _enqueue(self, Message msg, int qos, bint retain)
    cdef void _stalling(self)
    cpdef int overdue(self, double now)
    cpdef become_slow(self)
    cpdef wake(self)
    cdef _send_inflight(self, Message msg, int qos, bint retain)
    cpdef int alloc_packet_id(self) except -1
    cpdef drain_queue(self)
    cpdef bint puback(self, object packet_id) except -1
    cpdef int pubrec(self, object packet_id, int reason_code) except -2
    cpdef bint pubcomp(self, object packet_id) except -1
    cdef inline void _in_flight(self, Message msg, Py_ssize_t sign)
    cdef inline bint _end(self, object packet_id, int awaiting) except -1


cdef class PushReader:
    cdef object slow, generic, tree
    cdef bytes node, control, buf
    cdef dict channels, canonical, topics, last_seq, stats
    cdef bint raw

    cdef _generic(self, bytes data)
    cdef int _fast(self, bytes buf, const unsigned char* p, Py_ssize_t pos,
                   Py_ssize_t n) except -2
    cdef int _batch(self, str topic, bytes buf, const unsigned char* p, Py_ssize_t d,
                    Py_ssize_t n) except -2
