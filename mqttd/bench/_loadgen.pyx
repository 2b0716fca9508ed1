# cython: language_level=3
"""Compiled hot loops of the load generator (pure twin: mqttd/bench/_loadgen_py.py).

Two jobs, each done once per batch rather than once per message so that the generator's own CPU
stays far below the broker's:

* ``fill_publishes`` writes ``count`` PUBLISH packets into a send buffer by copying a pre-encoded
  template and patching the sequence number (and, for QoS > 0, the packet identifier).
* ``FrameCounter`` parses the byte stream a client receives. For a PUBLISH it skips the topic and
  properties and reads only the 12-byte payload head (publisher index, sequence number), keeping
  per-publisher counters in C arrays; it answers QoS 1/2 flows by writing the acknowledgement
  packets into an output buffer that the caller sends.

Payload head layout (big-endian): u32 publisher index, u64 sequence number; in latency runs a
u64 send time (CLOCK_MONOTONIC, ns) follows at offset 12 (``STAMP_OFF``); padding follows.
"""

from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, realloc
from libc.string cimport memcpy, memmove
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

HEAD_SIZE = 12
STAMP_OFF = 12  # payload offset of the optional send timestamp
MAX_SAMPLES = 1 << 24  # latency samples kept per counter (128 MiB); later ones are dropped

cdef enum:
    _HEAD = 12
    _STAMPED = 20


cdef inline int64_t _now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline uint64_t _get_u64(const uint8_t* p) noexcept nogil:
    return ((<uint64_t>p[0] << 56) | (<uint64_t>p[1] << 48) | (<uint64_t>p[2] << 40)
            | (<uint64_t>p[3] << 32) | (<uint64_t>p[4] << 24) | (<uint64_t>p[5] << 16)
            | (<uint64_t>p[6] << 8) | <uint64_t>p[7])


cdef inline uint32_t _get_u32(const uint8_t* p) noexcept nogil:
    return ((<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8)
            | <uint32_t>p[3])


def fill_publishes(bytearray out, Py_ssize_t offset, const uint8_t[::1] template,
                   Py_ssize_t seq_off, Py_ssize_t pid_off, uint64_t seq, Py_ssize_t count,
                   Py_ssize_t ts_off=-1, uint64_t ts=0):
    """Write ``count`` copies of ``template`` into ``out`` from ``offset``, with sequence numbers
    ``seq``, ``seq + 1``, ... patched at ``seq_off`` (8 bytes, big-endian) and, when
    ``pid_off >= 0``, packet identifier ``seq % 65535 + 1`` at ``pid_off`` (2 bytes), so the
    identifier is never 0 [MQTT-2.2.1-3]. When ``ts_off >= 0`` every packet also gets ``ts``
    (the send time in ns) at ``ts_off`` (8 bytes). Returns the offset after the last packet."""
    cdef Py_ssize_t size = template.shape[0]
    cdef Py_ssize_t i, k
    cdef uint8_t* dst
    cdef uint64_t s
    cdef uint32_t pid
    if count < 0 or offset < 0 or offset + size * count > len(out):
        raise ValueError("send buffer too small for the batch")
    if size == 0 or seq_off < 0 or seq_off + 8 > size or pid_off + 2 > size:
        raise ValueError("bad template offsets")
    if ts_off + 8 > size:
        raise ValueError("bad timestamp offset")
    dst = <uint8_t*>(<char*>out) + offset
    with nogil:
        for i in range(count):
            memcpy(dst, &template[0], size)
            s = seq + <uint64_t>i
            for k in range(8):
                dst[seq_off + k] = <uint8_t>(s >> (56 - 8 * k))
            if ts_off >= 0:
                for k in range(8):
                    dst[ts_off + k] = <uint8_t>(ts >> (56 - 8 * k))
            if pid_off >= 0:
                pid = <uint32_t>(s % 65535) + 1
                dst[pid_off] = <uint8_t>(pid >> 8)
                dst[pid_off + 1] = <uint8_t>pid
            dst += size
    return offset + size * count


cdef class FrameCounter:
    """Counts what arrives on one MQTT client connection (see the module docstring)."""

    cdef readonly int npubs
    cdef readonly int protocol_level
    cdef readonly bint respond
    # Totals over every packet parsed.
    cdef readonly int64_t messages      # PUBLISH packets whose head names one of our publishers
    cdef readonly int64_t foreign       # PUBLISH packets that do not (short payload, bad index)
    cdef readonly int64_t puback        # acknowledgements received (publisher side)
    cdef readonly int64_t pubrec
    cdef readonly int64_t pubrel
    cdef readonly int64_t pubcomp
    cdef readonly int64_t pingresp
    cdef readonly int64_t other         # any other packet type
    cdef readonly int disconnect_reason  # -1 until a DISCONNECT arrives (MQTT 5 servers send it)
    cdef readonly int64_t nbytes        # bytes consumed
    # While true, each PUBLISH with a stamped payload (>= 20 bytes) adds one latency sample:
    # the time of this ``feed`` call minus the send time in the payload, in ns.
    cdef public bint latency
    cdef int64_t* samples
    cdef Py_ssize_t nsamples
    cdef Py_ssize_t samples_cap
    cdef int64_t skip                   # bytes of the current packet still to discard
    cdef int64_t* received
    cdef int64_t* next_seq
    cdef int64_t* gaps
    cdef int64_t* reordered
    cdef uint8_t* out
    cdef Py_ssize_t out_len
    cdef Py_ssize_t out_cap

    def __cinit__(self, int npubs, int protocol_level=4, bint respond=True, bint latency=False):
        if npubs < 0:
            raise ValueError("npubs must be >= 0")
        self.npubs = npubs
        self.latency = latency
        self.protocol_level = protocol_level
        self.respond = respond
        self.disconnect_reason = -1
        n = npubs if npubs > 0 else 1
        self.received = <int64_t*>calloc(n, sizeof(int64_t))
        self.next_seq = <int64_t*>calloc(n, sizeof(int64_t))
        self.gaps = <int64_t*>calloc(n, sizeof(int64_t))
        self.reordered = <int64_t*>calloc(n, sizeof(int64_t))
        self.out_cap = 4096
        self.out = <uint8_t*>calloc(self.out_cap, 1)
        if not (self.received and self.next_seq and self.gaps and self.reordered and self.out):
            raise MemoryError()

    def __dealloc__(self):
        free(self.received)
        free(self.next_seq)
        free(self.gaps)
        free(self.reordered)
        free(self.out)
        free(self.samples)

    cdef int _sample(self, int64_t v) except -1:
        cdef int64_t* grown
        cdef Py_ssize_t cap
        if self.nsamples >= self.samples_cap:
            if self.samples_cap >= MAX_SAMPLES:
                return 0
            cap = self.samples_cap * 2 if self.samples_cap else 65536
            grown = <int64_t*>realloc(self.samples, cap * sizeof(int64_t))
            if grown == NULL:
                raise MemoryError()
            self.samples = grown
            self.samples_cap = cap
        self.samples[self.nsamples] = v
        self.nsamples += 1
        return 0

    cdef int _ack(self, uint8_t first, uint8_t hi, uint8_t lo) except -1:
        # A 2-byte body (packet id only) is valid at every level: in MQTT 5 a remaining length of
        # 2 means reason code 0x00 Success and no properties [MQTT 5 §3.4.2.1].
        cdef uint8_t* grown
        if self.out_len + 4 > self.out_cap:
            grown = <uint8_t*>realloc(self.out, self.out_cap * 2)
            if grown == NULL:
                raise MemoryError()
            self.out = grown
            self.out_cap *= 2
        self.out[self.out_len] = first
        self.out[self.out_len + 1] = 2
        self.out[self.out_len + 2] = hi
        self.out[self.out_len + 3] = lo
        self.out_len += 4
        return 0

    def feed(self, bytearray buf, Py_ssize_t n):
        """Parse ``buf[:n]``; move the bytes of an incomplete packet to the front of ``buf`` and
        return how many there are (the caller appends the next read after them). When the return
        value equals ``len(buf)`` the buffer is too small for one packet head: grow it."""
        cdef uint8_t* b = <uint8_t*>(<char*>buf)
        cdef Py_ssize_t pos = 0, p, hdr, need, avail, plen
        cdef int64_t rl, total, take
        cdef int mult, ptype, qos, i
        cdef uint8_t c
        cdef bint done
        cdef uint32_t idx
        cdef int64_t seq
        cdef int64_t now = _now_ns() if self.latency else 0
        if n < 0 or n > len(buf):
            raise ValueError("n out of range")
        if self.skip:
            take = self.skip if self.skip < n else n
            pos = take
            self.skip -= take
        while pos < n:
            # Fixed header: type/flags byte + Remaining Length varint of 1..4 bytes [MQTT 2.1.4].
            rl = 0
            mult = 0
            p = pos + 1
            done = False
            while p < n:
                c = b[p]
                p += 1
                rl |= <int64_t>(c & 0x7F) << mult
                if not (c & 0x80):
                    done = True
                    break
                mult += 7
                if mult > 21:
                    raise ValueError("malformed remaining length")  # [MQTT-1.5.5-1]
            if not done:
                break  # varint incomplete
            hdr = p - pos
            total = hdr + rl
            ptype = b[pos] >> 4
            avail = n - pos
            if ptype == 3:
                qos = (b[pos] >> 1) & 3
                # Bytes needed before the payload: topic length + topic [+ packet id] [+ props].
                if avail < hdr + 2:
                    break
                need = hdr + 2 + ((<Py_ssize_t>b[p] << 8) | b[p + 1])
                if qos:
                    need += 2
                if self.protocol_level >= 5:
                    # Property Length varint, then the properties [MQTT 5 §3.3.2.3].
                    plen = 0
                    mult = 0
                    while True:
                        if pos + need >= n:
                            plen = -1
                            break
                        c = b[pos + need]
                        need += 1
                        plen |= <Py_ssize_t>(c & 0x7F) << mult
                        if not (c & 0x80):
                            break
                        mult += 7
                        if mult > 21:
                            raise ValueError("malformed property length")
                    if plen < 0:
                        break
                    need += plen
                if need > total:
                    raise ValueError("PUBLISH header runs past the packet end")
                plen = total - need  # payload length
                if plen >= _HEAD:
                    if avail < need + (_STAMPED if self.latency and plen >= _STAMPED else _HEAD):
                        break
                    idx = _get_u32(b + pos + need)
                    if idx < <uint32_t>self.npubs:
                        seq = <int64_t>_get_u64(b + pos + need + 4)
                        i = <int>idx
                        self.received[i] += 1
                        if seq >= self.next_seq[i]:
                            self.gaps[i] += seq - self.next_seq[i]
                            self.next_seq[i] = seq + 1
                        else:
                            self.reordered[i] += 1
                        self.messages += 1
                        if self.latency and plen >= _STAMPED:
                            self._sample(now - <int64_t>_get_u64(b + pos + need + _HEAD))
                    else:
                        self.foreign += 1
                else:
                    if avail < need:
                        break
                    self.foreign += 1
                if qos and self.respond:
                    p = pos + hdr + 2 + ((<Py_ssize_t>b[pos + hdr] << 8) | b[pos + hdr + 1])
                    # QoS 1 -> PUBACK, QoS 2 -> PUBREC [MQTT-4.3.2-2, MQTT-4.3.3-8]
                    self._ack(0x40 if qos == 1 else 0x50, b[p], b[p + 1])
            else:
                # Control packets: only the first bytes of the body matter (id / reason code).
                need = hdr + (rl if rl < 2 else 2)
                if avail < need:
                    break
                if ptype == 4:
                    self.puback += 1
                elif ptype == 5:
                    self.pubrec += 1
                    if self.respond and rl >= 2:
                        self._ack(0x62, b[p], b[p + 1])  # PUBREL [MQTT-4.3.3-3]
                elif ptype == 6:
                    self.pubrel += 1
                    if self.respond and rl >= 2:
                        self._ack(0x70, b[p], b[p + 1])  # PUBCOMP [MQTT-4.3.3-11]
                elif ptype == 7:
                    self.pubcomp += 1
                elif ptype == 13:
                    self.pingresp += 1
                elif ptype == 14:
                    self.disconnect_reason = b[p] if rl >= 1 else 0
                else:
                    self.other += 1
            if total <= avail:
                pos += total
            else:
                self.skip = total - avail
                pos = n
        self.nbytes += pos
        if pos < n:
            memmove(b, b + pos, n - pos)
        return n - pos

    def take_out(self):
        """The acknowledgement bytes produced so far (then cleared)."""
        cdef bytes r = (<char*>self.out)[:self.out_len]
        self.out_len = 0
        return r

    @property
    def out_pending(self):
        return self.out_len

    def latency_samples(self):
        """The latency samples recorded so far, in ns (a list)."""
        return [self.samples[i] for i in range(self.nsamples)]

    def received_list(self):
        return [self.received[i] for i in range(self.npubs)]

    def next_seq_list(self):
        return [self.next_seq[i] for i in range(self.npubs)]

    def gaps_list(self):
        return [self.gaps[i] for i in range(self.npubs)]

    def reordered_list(self):
        return [self.reordered[i] for i in range(self.npubs)]
