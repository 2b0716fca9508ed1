# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, annotation_typing=False
"""MQTT packet codec, compiled twin of ``mqttd._pure._codec`` (spec: notes/codec_api.md).

Same public names and behaviour as the pure-Python reference, which the tests run every case
against. What differs is how: the Reader walks the incoming buffer with a ``const unsigned char*``
and C integers, strings are checked for U+0000 with ``memchr`` and decoded with
``PyUnicode_DecodeUTF8`` (strict: it rejects ill-formed UTF-8 and surrogates [MQTT-1.5.4-1]),
packets are ``cdef class`` objects (attributes readable and writable from Python) and an empty
property block costs no dict until ``.properties`` is read. When nothing is buffered the Reader
parses straight out of the caller's bytes and copies only an incomplete tail. The classes'
fields, and the C functions ``mqttd._route`` uses, are declared in ``_codec.pxd``.
"""

cimport cython
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_FromStringAndSize, PyByteArray_GET_SIZE
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.ref cimport PyObject, Py_DECREF
from libc.string cimport memchr, memcmp, memcpy

from mqttd import constants as _C
from mqttd.errors import PacketError

cdef extern from "Python.h":
    # Raw variants: NULL on error, so the hot path needs no try/except around them.
    PyObject* _decode_utf8 "PyUnicode_DecodeUTF8"(const char* s, Py_ssize_t n, const char* errors)
    const char* _as_utf8 "PyUnicode_AsUTF8AndSize"(object s, Py_ssize_t* n) except NULL
    void PyErr_Clear()
    bint PyUnicode_IS_COMPACT_ASCII(object s)
    Py_ssize_t PyUnicode_GET_LENGTH(object s)
    void* PyUnicode_DATA(object s)

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

# The wire facts as C ints, all taken from mqttd.constants (the one table the twins and the broker
# share) when the module loads. Globals rather than compile-time constants, so that no value is
# written down twice: their cost was measured (callgrind, instructions per PUBLISH decoded: 823
# -> 821 without properties, 3311 -> 3321 with two).
cdef int MALFORMED_PACKET = _C.MALFORMED_PACKET
cdef int PROTOCOL_ERROR = _C.PROTOCOL_ERROR
cdef int UNSUPPORTED_PROTOCOL_VERSION = _C.UNSUPPORTED_PROTOCOL_VERSION
cdef int PACKET_TOO_LARGE = _C.PACKET_TOO_LARGE
cdef int BRIDGE_LEVEL_BIT = _C.BRIDGE_LEVEL_BIT

cdef int T_CONNECT = _C.CONNECT
cdef int T_CONNACK = _C.CONNACK
cdef int T_PUBLISH = _C.PUBLISH
cdef int T_PUBACK = _C.PUBACK
cdef int T_PUBREC = _C.PUBREC
cdef int T_PUBREL = _C.PUBREL
cdef int T_PUBCOMP = _C.PUBCOMP
cdef int T_SUBSCRIBE = _C.SUBSCRIBE
cdef int T_SUBACK = _C.SUBACK
cdef int T_UNSUBSCRIBE = _C.UNSUBSCRIBE
cdef int T_UNSUBACK = _C.UNSUBACK
cdef int T_PINGREQ = _C.PINGREQ
cdef int T_PINGRESP = _C.PINGRESP
cdef int T_DISCONNECT = _C.DISCONNECT
cdef int T_AUTH = _C.AUTH
cdef int T_WILL = _C.WILL_PROPERTIES

cdef int PT_BYTE = _C.PT_BYTE
cdef int PT_TWO_BYTE_INT = _C.PT_TWO_BYTE_INT
cdef int PT_FOUR_BYTE_INT = _C.PT_FOUR_BYTE_INT
cdef int PT_VARINT = _C.PT_VARINT
cdef int PT_UTF8 = _C.PT_UTF8
cdef int PT_BINARY = _C.PT_BINARY

cdef unsigned int P_SUBSCRIPTION_IDENTIFIER = _C.SUBSCRIPTION_IDENTIFIER
cdef unsigned int P_USER_PROPERTY = _C.USER_PROPERTY

cdef Py_ssize_t MAX_VARINT = _C.MAX_VARINT
cdef Py_ssize_t MAX_STRING = _C.MAX_STRING

# property id (< 128) -> data type (0: unknown) and bit mask of the packet types it may appear in;
# filled from mqttd.constants, the one table both twins and the broker share [MQTT 5 §2.2.2.2].
cdef unsigned char _PTYPE[128]
cdef unsigned int _PVALID[128]


def _init_tables():
    cdef int pid
    for pid in range(128):
        _PTYPE[pid] = 0
        _PVALID[pid] = 0
    for pid, t in _C.PROPERTY_TYPES.items():
        _PTYPE[pid] = t
        for ptype in _C.PROPERTY_PACKETS[pid]:
            _PVALID[pid] |= 1u << <int>ptype


_init_tables()

_PACKET_NAMES = dict(_C.PACKET_NAMES)


# ------------------------------------------------------------------------------------------------
# Packet classes (fields declared in _codec.pxd)
# ------------------------------------------------------------------------------------------------


cdef object _eq(object self, object other, tuple fields):
    if type(other) is not type(self):
        return NotImplemented
    for f in fields:
        if not (getattr(self, f) == getattr(other, f)):
            return False
    return True


cdef str _repr(object self, tuple fields):
    args = ", ".join([f"{f}={getattr(self, f)!r}" for f in fields])
    return f"{type(self).__name__}({args})"


cdef class _Packet:
    """Common ``__eq__``/``__repr__`` over the fields named in ``_fields`` (as the pure twin's)."""

    _fields = ()

    def __eq__(self, other):
        return _eq(self, other, self._fields)

    def __repr__(self):
        return _repr(self, self._fields)

    __hash__ = None  # mutable


cdef class _WithProperties(_Packet):
    """A packet (or Will) with MQTT 5 properties: no dict is made until ``properties`` is read."""

    @property
    def properties(self):
        if self._properties is None:
            self._properties = {}
        return self._properties

    @properties.setter
    def properties(self, value):
        self._properties = value


cdef class Will(_WithProperties):
    """The Will Message carried in a CONNECT (not a packet by itself)."""

    _fields = ("topic", "payload", "qos", "retain", "properties")

    def __init__(self, topic="", payload=b"", int qos=0, retain=False, properties=None):
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self._properties = properties


cdef class Connect(_WithProperties):
    packet_type = T_CONNECT
    _fields = (
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

    def __init__(
        self,
        protocol_name="MQTT",
        int protocol_level=4,
        clean_start=True,
        int keepalive=60,
        client_id="",
        username=None,
        password=None,
        will=None,
        properties=None,
        bridge=False,
    ):
        self.protocol_name = protocol_name
        self.protocol_level = protocol_level
        self.clean_start = clean_start
        self.keepalive = keepalive
        self.client_id = client_id
        self.username = username
        self.password = password
        self.will = will
        self._properties = properties
        # Sent with protocol level 0x83/0x84: a bridge (protocol_level is then 3/4)
        self.bridge = bridge


cdef class ConnAck(_WithProperties):
    packet_type = T_CONNACK
    _fields = ("session_present", "reason_code", "properties")

    def __init__(self, session_present=False, int reason_code=0, properties=None):
        self.session_present = session_present
        self.reason_code = reason_code
        self._properties = properties


# Publish and Ack, the packets a busy broker decodes by the thousand, do not derive from _Packet:
# Cython keeps a freelist only for a class without a base ("freelists cannot be used on
# subtypes"), and without theirs decoding small PUBLISH packets took 10% more instructions
# (817 -> 896 per packet, callgrind, 4 packets per feed). So they repeat its few lines.


@cython.freelist(256)
@cython.no_gc
cdef class Publish:
    """A PUBLISH packet.

    Not tracked by the cyclic garbage collector (``no_gc``): a Reader creates these by the
    thousand and tracking them triggered gen-0 collections that cost as much as decoding. Its
    fields hold a str, bytes and a property dict of plain values, so it cannot be part of a cycle
    unless something that refers back to the packet is stored in one of them: don't.
    """

    packet_type = T_PUBLISH
    _fields = ("topic", "payload", "qos", "retain", "dup", "packet_id", "properties")

    def __init__(
        self,
        topic="",
        payload=b"",
        int qos=0,
        retain=False,
        dup=False,
        int packet_id=0,
        properties=None,
    ):
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.dup = dup
        self.packet_id = packet_id
        self._properties = properties

    @property
    def properties(self):
        if self._properties is None:
            self._properties = {}
        return self._properties

    @properties.setter
    def properties(self, value):
        self._properties = value

    def __eq__(self, other):
        return _eq(self, other, self._fields)

    def __repr__(self):
        return _repr(self, self._fields)

    __hash__ = None


@cython.freelist(64)
@cython.no_gc
cdef class Ack:
    """PUBACK, PUBREC, PUBREL and PUBCOMP (``packet_type`` says which).

    Not tracked by the cyclic garbage collector, like Publish (ints and a property dict only).
    """

    _fields = ("packet_type", "packet_id", "reason_code", "properties")

    def __init__(self, int packet_type=T_PUBACK, int packet_id=0, int reason_code=0, properties=None):
        self.packet_type = packet_type
        self.packet_id = packet_id
        self.reason_code = reason_code
        self._properties = properties

    @property
    def properties(self):
        if self._properties is None:
            self._properties = {}
        return self._properties

    @properties.setter
    def properties(self, value):
        self._properties = value

    def __eq__(self, other):
        return _eq(self, other, self._fields)

    def __repr__(self):
        return _repr(self, self._fields)

    __hash__ = None


cdef class Subscribe(_WithProperties):
    packet_type = T_SUBSCRIBE
    _fields = ("packet_id", "subscriptions", "properties")

    def __init__(self, int packet_id=0, subscriptions=None, properties=None):
        self.packet_id = packet_id
        self.subscriptions = [] if subscriptions is None else subscriptions
        self._properties = properties


cdef class _FilterAck(_WithProperties):
    """SUBACK and UNSUBACK: a packet id and a reason code per topic filter."""

    _fields = ("packet_id", "reason_codes", "properties")

    def __init__(self, int packet_id=0, reason_codes=None, properties=None):
        self.packet_id = packet_id
        self.reason_codes = [] if reason_codes is None else reason_codes
        self._properties = properties


cdef class SubAck(_FilterAck):
    packet_type = T_SUBACK


cdef class Unsubscribe(_WithProperties):
    packet_type = T_UNSUBSCRIBE
    _fields = ("packet_id", "filters", "properties")

    def __init__(self, int packet_id=0, filters=None, properties=None):
        self.packet_id = packet_id
        self.filters = [] if filters is None else filters
        self._properties = properties


cdef class UnsubAck(_FilterAck):
    packet_type = T_UNSUBACK


cdef class PingReq(_Packet):
    packet_type = T_PINGREQ


cdef class PingResp(_Packet):
    packet_type = T_PINGRESP


cdef class _ReasonOnly(_WithProperties):
    """DISCONNECT and AUTH: a reason code and properties, both of which may be omitted."""

    _fields = ("reason_code", "properties")

    def __init__(self, int reason_code=0, properties=None):
        self.reason_code = reason_code
        self._properties = properties


cdef class Disconnect(_ReasonOnly):
    packet_type = T_DISCONNECT


cdef class Auth(_ReasonOnly):
    packet_type = T_AUTH


# ------------------------------------------------------------------------------------------------
# Decoding helpers: ``p`` points at the packet bytes, ``pos`` into them, ``end`` is the end of the
# packet (or of the property block); running past ``end`` is Malformed.
# ------------------------------------------------------------------------------------------------


cdef int _fail(int code, str message) except -1:
    raise PacketError(code, message)


cdef int _past_end(str what) except -1:
    raise PacketError(MALFORMED_PACKET, what + " runs past the end of the packet")


cdef inline Py_ssize_t _read_varint(
    const unsigned char* p, Py_ssize_t pos, Py_ssize_t end, unsigned int* out
) except -1:
    cdef unsigned int value = 0
    cdef unsigned int shift = 0
    cdef unsigned char b
    while True:
        if pos >= end:
            _past_end("variable byte integer")
        b = p[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not (b & 0x80):
            out[0] = value
            return pos
        shift += 7
        if shift == 28:
            # [MQTT-1.5.5-1] at most four bytes
            _fail(MALFORMED_PACKET, "variable byte integer longer than 4 bytes")


cdef inline object _str_at(const unsigned char* s, Py_ssize_t n, str what):
    cdef PyObject* r
    if n and memchr(s, 0, <size_t>n) != NULL:
        # [MQTT-1.5.4-2] a UTF-8 string must not contain U+0000
        _fail(MALFORMED_PACKET, what + " contains U+0000")
    r = _decode_utf8(<const char*>s, n, NULL)
    if r == NULL:
        # [MQTT-1.5.4-1] ill-formed UTF-8 (the strict decoder also rejects surrogates)
        PyErr_Clear()
        _fail(MALFORMED_PACKET, what + " is not well-formed UTF-8")
    o = <object>r
    Py_DECREF(o)
    return o


cdef inline object _read_str(
    const unsigned char* p, Py_ssize_t* ppos, Py_ssize_t end, str what
):
    cdef Py_ssize_t pos = ppos[0]
    cdef Py_ssize_t n
    if pos + 2 > end:
        _past_end(what)
    n = (<Py_ssize_t>p[pos] << 8) | p[pos + 1]
    pos += 2
    if pos + n > end:
        _past_end(what)
    s = _str_at(p + pos, n, what)
    ppos[0] = pos + n
    return s


cdef inline bytes _read_bin(
    const unsigned char* p, Py_ssize_t* ppos, Py_ssize_t end, str what
):
    cdef Py_ssize_t pos = ppos[0]
    cdef Py_ssize_t n
    if pos + 2 > end:
        _past_end(what)
    n = (<Py_ssize_t>p[pos] << 8) | p[pos + 1]
    pos += 2
    if pos + n > end:
        _past_end(what)
    ppos[0] = pos + n
    return PyBytes_FromStringAndSize(<const char*>p + pos, n)


cdef inline int _read_u16(
    const unsigned char* p, Py_ssize_t* ppos, Py_ssize_t end, str what
) except -1:
    cdef Py_ssize_t pos = ppos[0]
    if pos + 2 > end:
        _past_end(what)
    ppos[0] = pos + 2
    return (p[pos] << 8) | p[pos + 1]


cdef object _read_props(const unsigned char* p, Py_ssize_t* ppos, Py_ssize_t end, int ptype):
    """Decode a property block (varint length + properties); None when it is empty."""
    cdef unsigned int length, pid, value
    cdef Py_ssize_t pos = ppos[0]
    cdef Py_ssize_t stop
    cdef unsigned char t
    cdef dict props
    pos = _read_varint(p, pos, end, &length)
    stop = pos + length
    if stop > end:
        _past_end("property block")
    ppos[0] = stop
    if pos == stop:
        return None
    props = {}
    while pos < stop:
        pos = _read_varint(p, pos, stop, &pid)
        if pid >= 128 or _PTYPE[pid] == 0 or not (_PVALID[pid] & (1u << ptype)):
            # [MQTT 5 §2.2.2.2] unknown identifier or not valid for this packet
            _fail(MALFORMED_PACKET, f"property 0x{pid:02x} not valid here")
        t = _PTYPE[pid]
        if t == PT_BYTE:
            if pos >= stop:
                _past_end("property")
            val = p[pos]
            pos += 1
        elif t == PT_TWO_BYTE_INT:
            val = _read_u16(p, &pos, stop, "property")
        elif t == PT_FOUR_BYTE_INT:
            if pos + 4 > stop:
                _past_end("property")
            value = (
                (<unsigned int>p[pos] << 24)
                | (<unsigned int>p[pos + 1] << 16)
                | (<unsigned int>p[pos + 2] << 8)
                | p[pos + 3]
            )
            val = value
            pos += 4
        elif t == PT_VARINT:
            pos = _read_varint(p, pos, stop, &value)
            val = value
        elif t == PT_UTF8:
            val = _read_str(p, &pos, stop, "property string")
        elif t == PT_BINARY:
            val = _read_bin(p, &pos, stop, "property binary data")
        else:  # PT_UTF8_PAIR
            key = _read_str(p, &pos, stop, "user property name")
            val = (key, _read_str(p, &pos, stop, "user property value"))
        if pid == P_USER_PROPERTY:
            lst = props.get(pid)
            if lst is None:
                props[pid] = [val]
            else:
                lst.append(val)
        elif pid == P_SUBSCRIPTION_IDENTIFIER:
            lst = props.get(pid)
            if lst is None:
                props[pid] = [val]
            elif ptype == T_PUBLISH:
                # a server->client PUBLISH carries one per matching subscription [MQTT 5 §3.3.2.3.8]
                lst.append(val)
            else:
                _fail(PROTOCOL_ERROR, "subscription identifier included twice")
        elif pid in props:
            # [MQTT 5 §2.2.2.2] "It is a Protocol Error to include ... more than once"
            _fail(PROTOCOL_ERROR, f"property 0x{pid:02x} included more than once")
        else:
            props[pid] = val
    return props


cdef inline int _check_end(Py_ssize_t pos, Py_ssize_t end, str what) except -1:
    if pos != end:
        _fail(MALFORMED_PACKET, f"{end - pos} unexpected bytes at the end of {what}")
    return 0


# ------------------------------------------------------------------------------------------------
# Packet body decoders
# ------------------------------------------------------------------------------------------------


cdef inline Publish _d_publish(
    Reader reader, const unsigned char* p, Py_ssize_t pos, Py_ssize_t end, int flags, int level
):
    cdef Py_ssize_t n
    cdef int qos = (flags >> 1) & 3
    cdef int packet_id = 0
    cdef Publish pub
    if pos + 2 > end:
        _past_end("topic name")
    n = (<Py_ssize_t>p[pos] << 8) | p[pos + 1]
    pos += 2
    if pos + n > end:
        _past_end("topic name")
    # A connection tends to publish to the same topic again and again: when the bytes equal the
    # last (ASCII) topic this Reader decoded, reuse that str (immutable) instead of decoding.
    topic = reader._last_topic
    if not (
        PyUnicode_GET_LENGTH(topic) == n
        and memcmp(PyUnicode_DATA(topic), p + pos, <size_t>n) == 0
    ):
        topic = _str_at(p + pos, n, "topic name")
        if PyUnicode_IS_COMPACT_ASCII(topic):
            reader._last_topic = topic
    pos += n
    if qos:
        if pos + 2 > end:
            _past_end("packet identifier")
        packet_id = (p[pos] << 8) | p[pos + 1]
        pos += 2
        if packet_id == 0:
            _fail(PROTOCOL_ERROR, "PUBLISH QoS>0 with packet identifier 0 [MQTT-2.2.1-3]")
    pub = Publish.__new__(Publish)
    if level == 5:
        pub._properties = _read_props(p, &pos, end, T_PUBLISH)
    pub.topic = topic
    pub.payload = PyBytes_FromStringAndSize(<const char*>p + pos, end - pos)
    pub.qos = qos
    pub.retain = flags & 1
    pub.dup = (flags >> 3) & 1
    pub.packet_id = packet_id
    return pub


cdef Connect _d_connect(const unsigned char* p, Py_ssize_t pos, Py_ssize_t end):
    cdef int lvl, cf, keepalive, will_flag, will_qos, will_retain
    cdef bint bridge
    cdef Connect c
    cdef Will w
    name = _read_str(p, &pos, end, "protocol name")
    if pos >= end:
        _past_end("protocol level")
    lvl = p[pos]
    pos += 1
    # Mosquitto bridges (try_private) set bit 7 of a 3.1 / 3.1.1 level: 0x83, 0x84. MQTT 5
    # has subscription options for what the bit asks, and 0x85 stays unsupported.
    bridge = lvl == (BRIDGE_LEVEL_BIT | 3) or lvl == (BRIDGE_LEVEL_BIT | 4)
    if bridge:
        lvl &= 0x7F
    if (name, lvl) not in _C.SUPPORTED_PROTOCOLS:
        # [MQTT-3.1.2-1/2] the broker answers CONNACK 0x01 (3.1.1) / 0x84 (5) and closes
        _fail(UNSUPPORTED_PROTOCOL_VERSION, f"unsupported protocol {name!r} level {p[pos - 1]}")
    if pos + 3 > end:
        _past_end("connect flags / keep alive")
    cf = p[pos]
    keepalive = (p[pos + 1] << 8) | p[pos + 2]
    pos += 3
    if cf & 0x01:
        _fail(MALFORMED_PACKET, "CONNECT reserved flag set [MQTT-3.1.2-3]")
    will_flag = cf & 0x04
    will_qos = (cf >> 3) & 3
    will_retain = cf & 0x20
    if not will_flag and (will_qos or will_retain):
        _fail(MALFORMED_PACKET, "will QoS/retain without will flag [MQTT-3.1.2-11/13/15]")
    if will_qos == 3:
        _fail(MALFORMED_PACKET, "will QoS 3 [MQTT-3.1.2-14]")
    if lvl < 5 and (cf & 0x40) and not (cf & 0x80):
        _fail(MALFORMED_PACKET, "password flag without user name flag [MQTT-3.1.2-22]")
    c = Connect.__new__(Connect)
    c.protocol_name = name
    c.protocol_level = lvl
    c.bridge = bridge
    c.clean_start = (cf & 0x02) != 0
    c.keepalive = keepalive
    if lvl == 5:
        c._properties = _read_props(p, &pos, end, T_CONNECT)
    c.client_id = _read_str(p, &pos, end, "client identifier")
    if will_flag:
        w = Will.__new__(Will)
        if lvl == 5:
            w._properties = _read_props(p, &pos, end, T_WILL)
        w.topic = _read_str(p, &pos, end, "will topic")
        w.payload = _read_bin(p, &pos, end, "will payload")
        w.qos = will_qos
        w.retain = will_retain != 0
        c.will = w
    if cf & 0x80:
        c.username = _read_str(p, &pos, end, "user name")
    if cf & 0x40:
        c.password = _read_bin(p, &pos, end, "password")
    _check_end(pos, end, "CONNECT")
    return c


cdef ConnAck _d_connack(const unsigned char* p, Py_ssize_t pos, Py_ssize_t end, int level):
    cdef ConnAck a
    if pos + 2 > end:
        _past_end("CONNACK")
    if p[pos] & 0xFE:
        _fail(MALFORMED_PACKET, "CONNACK reserved flags set [MQTT-3.2.2-1]")
    a = ConnAck.__new__(ConnAck)
    a.session_present = p[pos] & 1
    a.reason_code = p[pos + 1]
    pos += 2
    if level == 5:
        a._properties = _read_props(p, &pos, end, T_CONNACK)
    _check_end(pos, end, "CONNACK")
    return a


cdef inline Ack _d_ack(
    const unsigned char* p, Py_ssize_t pos, Py_ssize_t end, int level, int ptype
):
    cdef Ack a = Ack.__new__(Ack)
    a.packet_type = ptype
    a.packet_id = _read_u16(p, &pos, end, "packet identifier")
    if level == 5 and pos < end:
        # [MQTT 5 §3.4.2.1] reason code and properties may be omitted
        a.reason_code = p[pos]
        pos += 1
        if pos < end:
            a._properties = _read_props(p, &pos, end, ptype)
    _check_end(pos, end, "acknowledgement")
    return a


cdef Subscribe _d_subscribe(const unsigned char* p, Py_ssize_t pos, Py_ssize_t end, int level):
    cdef Subscribe s = Subscribe.__new__(Subscribe)
    cdef int opts
    cdef list subs = []
    s.packet_id = _read_u16(p, &pos, end, "packet identifier")
    if s.packet_id == 0:
        _fail(PROTOCOL_ERROR, "SUBSCRIBE with packet identifier 0 [MQTT-2.2.1-3]")
    if level == 5:
        s._properties = _read_props(p, &pos, end, T_SUBSCRIBE)
    while pos < end:
        topic_filter = _read_str(p, &pos, end, "topic filter")
        if pos >= end:
            _past_end("subscription options")
        opts = p[pos]
        pos += 1
        if level != 5:
            if opts & 0xFC:
                _fail(MALFORMED_PACKET, "SUBSCRIBE reserved option bits set [MQTT-3-8.3-4]")
        elif opts & 0xC0:
            _fail(MALFORMED_PACKET, "SUBSCRIBE reserved option bits 6-7 set [MQTT-3.8.3-5]")
        if opts & 3 == 3:
            _fail(MALFORMED_PACKET, "SUBSCRIBE with QoS 3")
        if opts & 0x30 == 0x30:
            _fail(PROTOCOL_ERROR, "SUBSCRIBE with Retain Handling 3")
        subs.append((topic_filter, opts))
    if not subs:
        _fail(PROTOCOL_ERROR, "SUBSCRIBE without topic filter [MQTT-3.8.3-3]")
    s.subscriptions = subs
    return s


cdef list _byte_list(const unsigned char* p, Py_ssize_t pos, Py_ssize_t end):
    cdef list out = []
    while pos < end:
        out.append(p[pos])
        pos += 1
    return out


cdef SubAck _d_suback(const unsigned char* p, Py_ssize_t pos, Py_ssize_t end, int level):
    cdef SubAck s = SubAck.__new__(SubAck)
    s.packet_id = _read_u16(p, &pos, end, "packet identifier")
    if level == 5:
        s._properties = _read_props(p, &pos, end, T_SUBACK)
    s.reason_codes = _byte_list(p, pos, end)
    return s


cdef Unsubscribe _d_unsubscribe(
    const unsigned char* p, Py_ssize_t pos, Py_ssize_t end, int level
):
    cdef Unsubscribe u = Unsubscribe.__new__(Unsubscribe)
    cdef list filters = []
    u.packet_id = _read_u16(p, &pos, end, "packet identifier")
    if u.packet_id == 0:
        _fail(PROTOCOL_ERROR, "UNSUBSCRIBE with packet identifier 0 [MQTT-2.2.1-3]")
    if level == 5:
        u._properties = _read_props(p, &pos, end, T_UNSUBSCRIBE)
    while pos < end:
        filters.append(_read_str(p, &pos, end, "topic filter"))
    if not filters:
        _fail(PROTOCOL_ERROR, "UNSUBSCRIBE without topic filter [MQTT-3.10.3-2]")
    u.filters = filters
    return u


cdef UnsubAck _d_unsuback(const unsigned char* p, Py_ssize_t pos, Py_ssize_t end, int level):
    cdef UnsubAck u = UnsubAck.__new__(UnsubAck)
    u.packet_id = _read_u16(p, &pos, end, "packet identifier")
    if level != 5:
        _check_end(pos, end, "UNSUBACK")
        u.reason_codes = []
        return u
    u._properties = _read_props(p, &pos, end, T_UNSUBACK)
    u.reason_codes = _byte_list(p, pos, end)
    return u


cdef object _d_rc_props(
    const unsigned char* p, Py_ssize_t pos, Py_ssize_t end, int level, int ptype
):
    # DISCONNECT / AUTH: reason code and properties may be omitted [MQTT 5 §3.14.2.1, §3.15.2.1]
    cdef int rc = 0
    props = None
    if level == 5 and pos < end:
        rc = p[pos]
        pos += 1
        if pos < end:
            props = _read_props(p, &pos, end, ptype)
    _check_end(pos, end, _PACKET_NAMES[ptype])
    if ptype == T_DISCONNECT:
        d = Disconnect.__new__(Disconnect)
        (<Disconnect>d).reason_code = rc
        (<Disconnect>d)._properties = props
        return d
    a = Auth.__new__(Auth)
    (<Auth>a).reason_code = rc
    (<Auth>a)._properties = props
    return a


cdef object _decode_other(
    const unsigned char* p, Py_ssize_t pos, Py_ssize_t end, int ptype, int level
):
    if T_PUBACK <= ptype <= T_PUBCOMP:
        return _d_ack(p, pos, end, level, ptype)
    if ptype == T_CONNECT:
        return _d_connect(p, pos, end)
    if ptype == T_CONNACK:
        return _d_connack(p, pos, end, level)
    if ptype == T_SUBSCRIBE:
        return _d_subscribe(p, pos, end, level)
    if ptype == T_SUBACK:
        return _d_suback(p, pos, end, level)
    if ptype == T_UNSUBSCRIBE:
        return _d_unsubscribe(p, pos, end, level)
    if ptype == T_UNSUBACK:
        return _d_unsuback(p, pos, end, level)
    if ptype == T_PINGREQ:
        _check_end(pos, end, "PINGREQ")
        return PingReq.__new__(PingReq)
    if ptype == T_PINGRESP:
        _check_end(pos, end, "PINGRESP")
        return PingResp.__new__(PingResp)
    return _d_rc_props(p, pos, end, level, ptype)  # DISCONNECT, AUTH


cdef inline int _check_first_byte(unsigned char b0, int level) except -1:
    """Validate packet type and fixed-header flags as soon as the first byte is seen."""
    cdef int ptype = b0 >> 4
    cdef int flags = b0 & 0x0F
    cdef int qos
    if ptype == T_PUBLISH:
        qos = (flags >> 1) & 3
        if qos == 3:
            _fail(MALFORMED_PACKET, "PUBLISH with QoS 3 [MQTT-3.3.1-4]")
        if qos == 0 and (flags & 0x08):
            _fail(MALFORMED_PACKET, "PUBLISH QoS 0 with DUP set [MQTT-3.3.1-2]")
        return 0
    if ptype == 0:
        _fail(MALFORMED_PACKET, "reserved packet type 0")
    if ptype == T_AUTH and level < 5:
        _fail(MALFORMED_PACKET, "AUTH before MQTT 5")
    # [MQTT-2.2.2-1/2] reserved flags: 0b0010 for PUBREL/SUBSCRIBE/UNSUBSCRIBE, else 0
    if ptype == T_PUBREL or ptype == T_SUBSCRIBE or ptype == T_UNSUBSCRIBE:
        if flags != 2:
            _fail(MALFORMED_PACKET, f"packet type {ptype} with invalid fixed-header flags")
    elif flags != 0:
        _fail(MALFORMED_PACKET, f"packet type {ptype} with invalid fixed-header flags")
    return 0


# ------------------------------------------------------------------------------------------------
# Reader
# ------------------------------------------------------------------------------------------------


cdef class Reader:
    """Incremental MQTT framing and decoding for one connection (fields in _codec.pxd)."""

    def __cinit__(self):
        # C-level state is set here so that no way of creating a Reader can skip it
        self._buf = bytearray()
        self._need = 0
        self._error = 0
        # The empty topic: bytes that match it decode to it (no bytes, nothing to check).
        # "\x00" was here, and a topic of that one byte matched it and went unchecked for
        # U+0000 [MQTT-1.5.4-2] (found by tests/unit/test_codec_hypothesis.py).
        self._last_topic = ""
        self.max_packet_size = 1048576

    def __init__(self, Py_ssize_t max_packet_size=1048576, int protocol_level=0):
        self.max_packet_size = max_packet_size
        self.protocol_level = protocol_level

    @property
    def buffered(self):
        """Bytes held waiting for the rest of a packet."""
        return PyByteArray_GET_SIZE(self._buf)

    cdef Py_ssize_t _parse(self, const unsigned char* p, Py_ssize_t n, list out) except -1:
        """Decode the complete packets in p[0:n] into ``out``; return the bytes consumed."""
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t i, total, end
        cdef Py_ssize_t need = 0
        cdef unsigned int rl, shift
        cdef unsigned char b0, b
        cdef int ptype, level
        cdef bint complete
        while pos < n:
            b0 = p[pos]
            ptype = b0 >> 4
            _check_first_byte(b0, self.protocol_level)
            # Remaining Length [MQTT 5 §2.1.4]
            i = pos + 1
            if i >= n:
                break
            b = p[i]
            i += 1
            rl = b & 0x7F
            if b & 0x80:
                shift = 7
                complete = False
                while i < n:
                    b = p[i]
                    i += 1
                    rl |= (b & 0x7F) << shift
                    if not (b & 0x80):
                        complete = True
                        break
                    shift += 7
                    if shift == 28:
                        # [MQTT-1.5.5-1 / 2.1.4] at most four bytes
                        _fail(MALFORMED_PACKET, "remaining length longer than 4 bytes")
                if not complete:
                    break
            total = (i - pos) + <Py_ssize_t>rl
            if total > self.max_packet_size:
                # refused from the fixed header, before buffering the body
                _fail(
                    PACKET_TOO_LARGE,
                    f"packet of {total} bytes exceeds maximum packet size {self.max_packet_size}",
                )
            end = pos + total
            if end > n:
                need = total
                break
            level = self.protocol_level
            if level == 0:
                level = 4
            if ptype == T_PUBLISH:
                out.append(_d_publish(self, p, i, end, b0 & 0x0F, level))
            else:
                pkt = _decode_other(p, i, end, ptype, level)
                if ptype == T_CONNECT:
                    self.protocol_level = (<Connect>pkt).protocol_level
                out.append(pkt)
            pos = end
        self._need = need
        return pos

    def feed(self, data):
        """Add ``data`` (bytes-like); return the packets it completes, in order."""
        cdef Py_buffer view
        cdef const unsigned char* p
        cdef Py_ssize_t n, consumed, nbuf
        cdef list out = []
        if self._error:
            raise PacketError(self._error, "the connection already sent a bad packet")
        nbuf = PyByteArray_GET_SIZE(self._buf)
        try:
            if nbuf == 0:
                if type(data) is bytes:
                    # parse straight out of the caller's bytes; copy only an incomplete tail
                    p = <const unsigned char*>PyBytes_AS_STRING(data)
                    n = PyBytes_GET_SIZE(data)
                    consumed = self._parse(p, n, out)
                    if consumed < n:
                        self._buf = PyByteArray_FromStringAndSize(
                            <const char*>p + consumed, n - consumed
                        )
                else:
                    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
                    try:
                        p = <const unsigned char*>view.buf
                        n = view.len
                        consumed = self._parse(p, n, out)
                        if consumed < n:
                            self._buf = PyByteArray_FromStringAndSize(
                                <const char*>p + consumed, n - consumed
                            )
                    finally:
                        PyBuffer_Release(&view)
            else:
                if self._need and nbuf + len(data) < self._need:
                    self._buf += data  # still short of the packet: avoid re-parsing
                    return out
                self._buf += data
                p = <const unsigned char*>PyByteArray_AS_STRING(self._buf)
                n = PyByteArray_GET_SIZE(self._buf)
                consumed = self._parse(p, n, out)
                if consumed == n:
                    self._buf = bytearray()
                elif consumed:
                    del self._buf[:consumed]
        except PacketError as exc:
            exc.packets = out
            self._error = exc.reason_code
            self._buf = bytearray()
            self._need = 0
            raise
        return out


def decode_varint(buf, Py_ssize_t pos=0):
    """Decode a Variable Byte Integer at ``pos``; return (value, position after it)."""
    cdef Py_buffer view
    cdef unsigned int value
    cdef Py_ssize_t newpos
    PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
    try:
        if pos < 0:
            raise ValueError("negative position")
        newpos = _read_varint(<const unsigned char*>view.buf, pos, view.len, &value)
    finally:
        PyBuffer_Release(&view)
    return value, newpos


cdef Py_ssize_t varint_end(bytes data, Py_ssize_t pos) except -1:
    """Where the Variable Byte Integer at ``pos`` of ``data`` ends (C API, _codec.pxd)."""
    cdef unsigned int value
    return _read_varint(<const unsigned char*>PyBytes_AS_STRING(data), pos,
                        PyBytes_GET_SIZE(data), &value)


# ------------------------------------------------------------------------------------------------
# Encoders
# ------------------------------------------------------------------------------------------------


cdef inline int _varint_len(Py_ssize_t n) noexcept:
    if n < 128:
        return 1
    if n < 16384:
        return 2
    if n < 2097152:
        return 3
    return 4


cdef inline char* _put_varint(char* out, Py_ssize_t n) noexcept:
    cdef unsigned char b
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out[0] = <char>(b | 0x80)
            out += 1
        else:
            out[0] = <char>b
            return out + 1


cdef bytes varint_bytes(Py_ssize_t n):
    """encode_varint for C callers (C API, _codec.pxd)."""
    cdef char tmp[4]
    if n < 0 or n > MAX_VARINT:
        raise ValueError(f"variable byte integer out of range: {n}")
    return PyBytes_FromStringAndSize(tmp, _put_varint(tmp, n) - tmp)


def encode_varint(n):
    """Encode a Variable Byte Integer [MQTT 5 §1.5.5]."""
    cdef Py_ssize_t value
    try:
        value = n
    except OverflowError:  # out of range as well, as in the pure twin
        raise ValueError(f"variable byte integer out of range: {n}") from None
    return varint_bytes(value)


cdef inline bytes _u16(object n):
    cdef unsigned char tmp[2]
    cdef long v
    if n < 0 or n > 0xFFFF:
        raise ValueError(f"two byte integer out of range: {n}")
    v = n
    tmp[0] = <unsigned char>(v >> 8)
    tmp[1] = <unsigned char>(v & 0xFF)
    return PyBytes_FromStringAndSize(<char*>tmp, 2)


cdef inline bytes _u32(object n):
    cdef unsigned char tmp[4]
    cdef unsigned long v
    if n < 0 or n > 0xFFFFFFFF:
        raise ValueError(f"four byte integer out of range: {n}")
    v = n
    tmp[0] = <unsigned char>(v >> 24)
    tmp[1] = <unsigned char>((v >> 16) & 0xFF)
    tmp[2] = <unsigned char>((v >> 8) & 0xFF)
    tmp[3] = <unsigned char>(v & 0xFF)
    return PyBytes_FromStringAndSize(<char*>tmp, 4)


cdef inline bytes _byte(object n):
    cdef char c
    if n < 0 or n > 0xFF:
        raise ValueError(f"byte out of range: {n}")
    c = <char><unsigned char><int>n
    return PyBytes_FromStringAndSize(&c, 1)


cdef bytes _str(object s):
    cdef Py_ssize_t n
    cdef const char* u = _as_utf8(s, &n)
    cdef bytes out
    cdef char* o
    if n > MAX_STRING:
        raise ValueError(f"UTF-8 string of {n} bytes is longer than 65535")
    out = PyBytes_FromStringAndSize(NULL, n + 2)
    o = PyBytes_AS_STRING(out)
    o[0] = <char>(n >> 8)
    o[1] = <char>(n & 0xFF)
    memcpy(o + 2, u, n)
    return out


cdef bytes _bin(object b):
    raw = b.encode("utf-8") if isinstance(b, str) else bytes(b)
    cdef Py_ssize_t n = len(raw)
    if n > MAX_STRING:
        raise ValueError(f"binary data of {n} bytes is longer than 65535")
    cdef char head[2]
    head[0] = <char>(n >> 8)
    head[1] = <char>(n & 0xFF)
    return PyBytes_FromStringAndSize(head, 2) + raw


def encode_properties(properties):
    """The property block, including its Variable Byte Integer length [MQTT 5 §2.2.2]."""
    cdef int t
    cdef unsigned int ipid
    cdef char head
    if not properties:
        return b"\x00"
    parts = []
    for pid, value in properties.items():
        if not isinstance(pid, int) or pid < 0 or pid >= 128 or _PTYPE[<int>pid] == 0:
            raise ValueError(f"unknown property identifier {pid!r}")
        ipid = <int>pid
        t = _PTYPE[ipid]
        head = <char>ipid
        h = PyBytes_FromStringAndSize(&head, 1)
        if ipid == P_USER_PROPERTY:
            for key, val in value:
                parts.append(h + _str(key) + _str(val))
        elif ipid == P_SUBSCRIPTION_IDENTIFIER:
            for sid in ([value] if isinstance(value, int) else value):
                parts.append(h + encode_varint(sid))
        elif t == PT_BYTE:
            parts.append(h + _byte(value))
        elif t == PT_TWO_BYTE_INT:
            parts.append(h + _u16(value))
        elif t == PT_FOUR_BYTE_INT:
            parts.append(h + _u32(value))
        elif t == PT_VARINT:
            parts.append(h + encode_varint(value))
        elif t == PT_UTF8:
            parts.append(h + _str(value))
        elif t == PT_BINARY:
            parts.append(h + _bin(value))
        else:
            raise ValueError(f"cannot encode property {pid!r}")
    body = b"".join(parts)
    return encode_varint(len(body)) + body


# the packets without a body: a fixed header and a Remaining Length of 0
cdef bytes _PINGREQ = bytes((T_PINGREQ << 4, 0))
cdef bytes _PINGRESP = bytes((T_PINGRESP << 4, 0))


cdef bytes _packet(int b0, bytes body):
    cdef Py_ssize_t n = PyBytes_GET_SIZE(body)
    cdef bytes out
    cdef char* o
    if n > MAX_VARINT:
        raise ValueError(f"variable byte integer out of range: {n}")
    out = PyBytes_FromStringAndSize(NULL, 1 + _varint_len(n) + n)
    o = PyBytes_AS_STRING(out)
    o[0] = <char>b0
    o = _put_varint(o + 1, n)
    memcpy(o, PyBytes_AS_STRING(body), n)
    return out


def encode_connect(
    client_id,
    protocol_level=4,
    clean_start=True,
    keepalive=60,
    username=None,
    password=None,
    will=None,
    properties=None,
    bridge=False,
):
    cdef int flags = 0x02 if clean_start else 0
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
    if password is not None:
        flags |= 0x40
    if username is not None:
        flags |= 0x80
    parts = [
        _str(_C.protocol_name(protocol_level)),
        _byte((protocol_level | BRIDGE_LEVEL_BIT) if bridge else protocol_level),
        _byte(flags),
        _u16(keepalive),
    ]
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
    return _packet(T_CONNECT << 4, b"".join(parts))


def encode_connack(session_present, reason_code, protocol_level=4, properties=None):
    # MQTT 3.1 has no Session Present: the first byte of CONNACK's variable header is reserved
    # (3.1 §3.2, "Reserved values. Not used"), so it is 0 at level 3 whatever the session.
    present = session_present and protocol_level != 3
    body = (b"\x01" if present else b"\x00") + _byte(reason_code)
    if protocol_level == 5:
        body += encode_properties(properties)
    return _packet(T_CONNACK << 4, body)


def encode_publish(
    topic,
    payload,
    int qos=0,
    retain=False,
    dup=False,
    packet_id=0,
    int protocol_level=4,
    properties=None,
):
    cdef Py_ssize_t tlen, plen, rl, propslen = 0
    cdef const char* t = _as_utf8(topic, &tlen)
    cdef const char* pl
    cdef Py_buffer view
    cdef bint have_view = False
    cdef bytes out
    cdef char* o
    cdef long pid = 0
    cdef int b0
    cdef bytes props = None
    if tlen > MAX_STRING:
        raise ValueError(f"topic of {tlen} bytes is longer than 65535")
    if qos:
        if packet_id < 0 or packet_id > 0xFFFF:
            raise ValueError(f"two byte integer out of range: {packet_id}")
        pid = packet_id
    if protocol_level == 5:
        props = encode_properties(properties)
        propslen = PyBytes_GET_SIZE(props)
    if type(payload) is bytes:
        pl = PyBytes_AS_STRING(payload)
        plen = PyBytes_GET_SIZE(payload)
    else:
        PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
        have_view = True
        pl = <const char*>view.buf
        plen = view.len
    try:
        rl = 2 + tlen + (2 if qos else 0) + propslen + plen
        if rl > MAX_VARINT:
            raise ValueError(f"variable byte integer out of range: {rl}")
        b0 = (T_PUBLISH << 4) | (qos << 1) | (1 if retain else 0) | (8 if dup else 0)
        out = PyBytes_FromStringAndSize(NULL, 1 + _varint_len(rl) + rl)
        o = PyBytes_AS_STRING(out)
        o[0] = <char>b0
        o = _put_varint(o + 1, rl)
        o[0] = <char>(tlen >> 8)
        o[1] = <char>(tlen & 0xFF)
        memcpy(o + 2, t, tlen)
        o += 2 + tlen
        if qos:
            o[0] = <char>(pid >> 8)
            o[1] = <char>(pid & 0xFF)
            o += 2
        if propslen:
            memcpy(o, PyBytes_AS_STRING(props), propslen)
            o += propslen
        memcpy(o, pl, plen)
    finally:
        if have_view:
            PyBuffer_Release(&view)
    return out


def encode_ack(int packet_type, packet_id, int protocol_level=4, reason_code=0, properties=None):
    cdef char tmp[5]
    cdef long pid
    if packet_type < T_PUBACK or packet_type > T_PUBCOMP:
        raise ValueError(f"not an acknowledgement packet type: {packet_type}")
    if packet_id < 0 or packet_id > 0xFFFF:
        raise ValueError(f"two byte integer out of range: {packet_id}")
    pid = packet_id
    # [MQTT-3.6.1-1] PUBREL fixed-header flags are 0b0010
    tmp[0] = <char>((packet_type << 4) | (2 if packet_type == T_PUBREL else 0))
    tmp[1] = 2
    tmp[2] = <char>(pid >> 8)
    tmp[3] = <char>(pid & 0xFF)
    if protocol_level == 5:
        if properties:
            return _packet(
                <unsigned char>tmp[0],
                PyBytes_FromStringAndSize(tmp + 2, 2)
                + _byte(reason_code)
                + encode_properties(properties),
            )
        if reason_code:
            if reason_code < 0 or reason_code > 0xFF:
                raise ValueError(f"byte out of range: {reason_code}")
            tmp[1] = 3
            tmp[4] = <char><int>reason_code
            return PyBytes_FromStringAndSize(tmp, 5)
    return PyBytes_FromStringAndSize(tmp, 4)


def encode_subscribe(packet_id, subscriptions, protocol_level=4, properties=None):
    parts = [_u16(packet_id)]
    if protocol_level == 5:
        parts.append(encode_properties(properties))
    for topic_filter, options in subscriptions:
        parts.append(_str(topic_filter))
        parts.append(_byte(options))
    return _packet((T_SUBSCRIBE << 4) | 0x02, b"".join(parts))  # flags 0b0010 [MQTT-3.8.1-1]


def encode_suback(packet_id, reason_codes, protocol_level=4, properties=None):
    body = _u16(packet_id)
    if protocol_level == 5:
        body += encode_properties(properties)
    return _packet(T_SUBACK << 4, body + bytes(reason_codes))


def encode_unsubscribe(packet_id, filters, protocol_level=4, properties=None):
    parts = [_u16(packet_id)]
    if protocol_level == 5:
        parts.append(encode_properties(properties))
    for topic_filter in filters:
        parts.append(_str(topic_filter))
    return _packet((T_UNSUBSCRIBE << 4) | 0x02, b"".join(parts))  # flags 0b0010 [MQTT-3.10.1-1]


def encode_unsuback(packet_id, reason_codes=(), protocol_level=4, properties=None):
    body = _u16(packet_id)
    if protocol_level == 5:
        # MQTT 3.1.1 UNSUBACK has no payload [MQTT-3.11.3]; MQTT 5 has a reason code per filter
        body += encode_properties(properties) + bytes(reason_codes)
    return _packet(T_UNSUBACK << 4, body)


def encode_pingreq():
    return _PINGREQ


def encode_pingresp():
    return _PINGRESP


cdef bytes _rc_props(int b0, object reason_code, object properties):
    # Reason code and properties may be omitted when 0x00 / none [MQTT 5 §3.14.2.1, §3.15.2.1]
    cdef char tmp[2]
    if properties:
        return _packet(b0, _byte(reason_code) + encode_properties(properties))
    tmp[0] = <char>b0
    if reason_code:
        tmp[1] = 1
        return PyBytes_FromStringAndSize(tmp, 2) + _byte(reason_code)
    tmp[1] = 0
    return PyBytes_FromStringAndSize(tmp, 2)


def encode_disconnect(reason_code=0, protocol_level=4, properties=None):
    if protocol_level != 5:
        return _rc_props(T_DISCONNECT << 4, 0, None)  # no reason code before MQTT 5
    return _rc_props(T_DISCONNECT << 4, reason_code, properties)


def encode_auth(reason_code=0, properties=None):
    return _rc_props(T_AUTH << 4, reason_code, properties)


def encode(packet, protocol_level):
    """Encode any packet object (dispatch on ``packet.packet_type``)."""
    t = packet.packet_type
    if t == T_PUBLISH:
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
    if t == T_PUBACK or t == T_PUBREC or t == T_PUBREL or t == T_PUBCOMP:
        return encode_ack(
            t, packet.packet_id, protocol_level, packet.reason_code, packet.properties
        )
    if t == T_CONNECT:
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
    if t == T_CONNACK:
        return encode_connack(
            packet.session_present, packet.reason_code, protocol_level, packet.properties
        )
    if t == T_SUBSCRIBE:
        return encode_subscribe(
            packet.packet_id, packet.subscriptions, protocol_level, packet.properties
        )
    if t == T_SUBACK:
        return encode_suback(
            packet.packet_id, packet.reason_codes, protocol_level, packet.properties
        )
    if t == T_UNSUBSCRIBE:
        return encode_unsubscribe(
            packet.packet_id, packet.filters, protocol_level, packet.properties
        )
    if t == T_UNSUBACK:
        return encode_unsuback(
            packet.packet_id, packet.reason_codes, protocol_level, packet.properties
        )
    if t == T_PINGREQ:
        return encode_pingreq()
    if t == T_PINGRESP:
        return encode_pingresp()
    if t == T_DISCONNECT:
        return encode_disconnect(packet.reason_code, protocol_level, packet.properties)
    if t == T_AUTH:
        return encode_auth(packet.reason_code, packet.properties)
    raise ValueError(f"cannot encode packet type {t!r}")
