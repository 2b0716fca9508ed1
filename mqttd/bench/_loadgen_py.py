"""Pure-Python twin of mqttd/bench/_loadgen.pyx: same names, same behaviour, much slower.

Used when the compiled module is missing (no compiler at install time) or when
``MQTTD_NO_EXTENSIONS=1``; the unit tests feed both the same byte streams and compare counters.
Payload head layout (big-endian): u32 publisher index, u64 sequence number; in latency runs a
u64 send time (CLOCK_MONOTONIC, ns) follows at offset 12 (``STAMP_OFF``); padding follows.
"""

from __future__ import annotations

import struct
import time

HEAD_SIZE = 12
STAMP_OFF = 12
MAX_SAMPLES = 1 << 24
_STAMPED = 20

_HEAD = struct.Struct(">IQ")
_U64 = struct.Struct(">Q")
_U16 = struct.Struct(">H")


def fill_publishes(
    out: bytearray,
    offset: int,
    template: bytes,
    seq_off: int,
    pid_off: int,
    seq: int,
    count: int,
    ts_off: int = -1,
    ts: int = 0,
) -> int:
    """Write ``count`` copies of ``template`` into ``out`` from ``offset`` with sequence numbers
    ``seq``, ``seq + 1``, ... at ``seq_off`` and, when ``pid_off >= 0``, packet identifier
    ``seq % 65535 + 1`` at ``pid_off`` (never 0 [MQTT-2.2.1-3]); with ``ts_off >= 0`` also the
    send time ``ts`` (ns) at ``ts_off``. Returns the end offset."""
    size = len(template)
    if count < 0 or offset < 0 or offset + size * count > len(out):
        raise ValueError("send buffer too small for the batch")
    if size == 0 or seq_off < 0 or seq_off + 8 > size or pid_off + 2 > size:
        raise ValueError("bad template offsets")
    if ts_off + 8 > size:
        raise ValueError("bad timestamp offset")
    pos = offset
    pack64 = _U64.pack_into
    for s in range(seq, seq + count):
        out[pos : pos + size] = template
        pack64(out, pos + seq_off, s & 0xFFFFFFFFFFFFFFFF)
        if pid_off >= 0:
            _U16.pack_into(out, pos + pid_off, s % 65535 + 1)
        if ts_off >= 0:
            pack64(out, pos + ts_off, ts & 0xFFFFFFFFFFFFFFFF)
        pos += size
    return pos


class FrameCounter:
    """Counts what arrives on one MQTT client connection (see mqttd/bench/_loadgen.pyx)."""

    def __init__(
        self, npubs: int, protocol_level: int = 4, respond: bool = True, latency: bool = False
    ) -> None:
        if npubs < 0:
            raise ValueError("npubs must be >= 0")
        self.npubs = npubs
        self.latency = bool(latency)
        self._samples: list[int] = []
        self.protocol_level = protocol_level
        self.respond = bool(respond)
        self.messages = 0
        self.foreign = 0
        self.puback = 0
        self.pubrec = 0
        self.pubrel = 0
        self.pubcomp = 0
        self.pingresp = 0
        self.other = 0
        self.disconnect_reason = -1
        self.nbytes = 0
        self._skip = 0
        self._received = [0] * npubs
        self._next_seq = [0] * npubs
        self._gaps = [0] * npubs
        self._reordered = [0] * npubs
        self._out = bytearray()

    def _ack(self, first: int, hi: int, lo: int) -> None:
        # 2-byte body: valid at every level (MQTT 5: reason code 0, no properties) [§3.4.2.1].
        self._out += bytes((first, 2, hi, lo))

    def feed(self, buf: bytearray, n: int) -> int:
        """Parse ``buf[:n]``; move an incomplete packet's bytes to the front of ``buf`` and
        return their count (equal to ``len(buf)``: the buffer must grow)."""
        if n < 0 or n > len(buf):
            raise ValueError("n out of range")
        now = time.monotonic_ns() if self.latency else 0
        b = buf
        pos = 0
        if self._skip:
            take = min(self._skip, n)
            pos = take
            self._skip -= take
        while pos < n:
            rl = 0
            mult = 0
            p = pos + 1
            done = False
            while p < n:
                c = b[p]
                p += 1
                rl |= (c & 0x7F) << mult
                if not c & 0x80:
                    done = True
                    break
                mult += 7
                if mult > 21:
                    raise ValueError("malformed remaining length")  # [MQTT-1.5.5-1]
            if not done:
                break
            hdr = p - pos
            total = hdr + rl
            ptype = b[pos] >> 4
            avail = n - pos
            if ptype == 3:
                qos = (b[pos] >> 1) & 3
                if avail < hdr + 2:
                    break
                need = hdr + 2 + ((b[p] << 8) | b[p + 1])
                if qos:
                    need += 2
                if self.protocol_level >= 5:
                    plen = 0
                    mult = 0
                    while True:
                        if pos + need >= n:
                            plen = -1
                            break
                        c = b[pos + need]
                        need += 1
                        plen |= (c & 0x7F) << mult
                        if not c & 0x80:
                            break
                        mult += 7
                        if mult > 21:
                            raise ValueError("malformed property length")
                    if plen < 0:
                        break
                    need += plen
                if need > total:
                    raise ValueError("PUBLISH header runs past the packet end")
                plen = total - need
                if plen >= HEAD_SIZE:
                    stamped = self.latency and plen >= _STAMPED
                    if avail < need + (_STAMPED if stamped else HEAD_SIZE):
                        break
                    idx, seq = _HEAD.unpack_from(b, pos + need)
                    if idx < self.npubs:
                        self._received[idx] += 1
                        nxt = self._next_seq[idx]
                        if seq >= nxt:
                            self._gaps[idx] += seq - nxt
                            self._next_seq[idx] = seq + 1
                        else:
                            self._reordered[idx] += 1
                        self.messages += 1
                        if stamped and len(self._samples) < MAX_SAMPLES:
                            self._samples.append(now - _U64.unpack_from(b, pos + need + 12)[0])
                    else:
                        self.foreign += 1
                else:
                    if avail < need:
                        break
                    self.foreign += 1
                if qos and self.respond:
                    p = pos + hdr + 2 + ((b[pos + hdr] << 8) | b[pos + hdr + 1])
                    # QoS 1 -> PUBACK, QoS 2 -> PUBREC [MQTT-4.3.2-2, MQTT-4.3.3-8]
                    self._ack(0x40 if qos == 1 else 0x50, b[p], b[p + 1])
            else:
                need = hdr + min(rl, 2)
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
                self._skip = total - avail
                pos = n
        self.nbytes += pos
        if pos < n:
            b[: n - pos] = b[pos:n]
        return n - pos

    def take_out(self) -> bytes:
        r = bytes(self._out)
        self._out.clear()
        return r

    @property
    def out_pending(self) -> int:
        return len(self._out)

    def latency_samples(self) -> list[int]:
        return list(self._samples)

    def received_list(self) -> list[int]:
        return list(self._received)

    def next_seq_list(self) -> list[int]:
        return list(self._next_seq)

    def gaps_list(self) -> list[int]:
        return list(self._gaps)

    def reordered_list(self) -> list[int]:
        return list(self._reordered)
