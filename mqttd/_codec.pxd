# cython: language_level=3
"""C-level declarations of ``mqttd._codec``: its packet classes with their fields, the Reader,
and the C functions another compiled module may ``cimport`` (``mqttd._route`` takes the varint
codec from here rather than writing its own)."""


cdef class _Packet:
    pass


cdef class _WithProperties(_Packet):
    cdef object _properties  # None stands for {} until .properties is read


cdef class Will(_WithProperties):
    cdef public object topic
    cdef public object payload
    cdef public int qos
    cdef public bint retain


cdef class Connect(_WithProperties):
    cdef public object protocol_name
    cdef public int protocol_level
    cdef public bint clean_start
    cdef public int keepalive
    cdef public object client_id
    cdef public object username
    cdef public object password
    cdef public object will
    cdef public bint bridge


cdef class ConnAck(_WithProperties):
    cdef public bint session_present
    cdef public int reason_code


# Publish and Ack derive from nothing: they keep their freelists (see _codec.pyx)
cdef class Publish:
    cdef public object topic
    cdef public object payload
    cdef public int qos
    cdef public bint retain
    cdef public bint dup
    cdef public int packet_id
    cdef object _properties


cdef class Ack:
    cdef public int packet_type
    cdef public int packet_id
    cdef public int reason_code
    cdef object _properties


cdef class Subscribe(_WithProperties):
    cdef public int packet_id
    cdef public object subscriptions


cdef class _FilterAck(_WithProperties):
    cdef public int packet_id
    cdef public object reason_codes


cdef class SubAck(_FilterAck):
    pass


cdef class Unsubscribe(_WithProperties):
    cdef public int packet_id
    cdef public object filters


cdef class UnsubAck(_FilterAck):
    pass


cdef class PingReq(_Packet):
    pass


cdef class PingResp(_Packet):
    pass


cdef class _ReasonOnly(_WithProperties):
    cdef public int reason_code


cdef class Disconnect(_ReasonOnly):
    pass


cdef class Auth(_ReasonOnly):
    pass


cdef class Reader:
    cdef public Py_ssize_t max_packet_size
    cdef public int protocol_level
    cdef bytearray _buf
    cdef Py_ssize_t _need  # size of the buffered packet once its fixed header is complete
    cdef int _error  # reason code of the error that made the reader unusable; 0 when none
    cdef str _last_topic  # last ASCII PUBLISH topic decoded (see _d_publish)

    cdef Py_ssize_t _parse(self, const unsigned char* p, Py_ssize_t n, list out) except -1


# The varint codec in C, for mqttd._route (Python callers have decode_varint / encode_varint,
# which stay def functions: cpdef made each of their Python calls 1-3% slower)
cdef bytes varint_bytes(Py_ssize_t n)  # ValueError out of range
cdef Py_ssize_t varint_end(bytes data, Py_ssize_t pos) except -1  # PacketError if malformed
