"""The load generator's WebSocket client (``mqttd-bench --transport ws``): a socket look-alike.

:class:`WSSocket` wraps a TCP socket after the HTTP upgrade (subprotocol ``mqtt``) and offers
what the engine uses of a socket - ``send``, ``sendall``, ``recv_into``, ``recv``,
``setblocking``, ``settimeout``, ``setsockopt``, ``fileno``, ``close`` - so that the scenarios
run unchanged over WebSocket. What it sends is binary frames of at most :data:`FRAME_MAX` bytes
(a batch of PUBLISH packets per frame, as a browser client's writes would be); what it reads
has its frame headers taken out, and MQTT packets run across frames as the specification allows.

The generator must cost the same against every broker, and little: client frames are masked,
as RFC 6455 section 5.3 requires, with the all-zero key, which leaves the payload as it is, so
that the generator does no per-byte work of its own. A broker cannot tell this key from any
other; section 10.3's reason for random keys (proxies confused by chosen bytes) does not apply
to a benchmark on loopback.
"""

from __future__ import annotations

import base64
import os
import socket
import time
from typing import Any

from mqttd.bench.mqtt import BenchError

#: the most payload in one frame we send (brokers limit a message to about a packet's size)
FRAME_MAX = 64 * 1024
_MASK = b"\x00\x00\x00\x00"


def _header(n: int) -> bytes:
    """FIN + binary opcode, MASK bit, the length, the (zero) mask key."""
    if n < 126:
        return bytes((0x82, 0x80 | n)) + _MASK
    if n < 65536:
        return bytes((0x82, 0x80 | 126)) + n.to_bytes(2, "big") + _MASK
    return bytes((0x82, 0x80 | 127)) + n.to_bytes(8, "big") + _MASK


class WSSocket:
    """A connected WebSocket, used as the engine uses a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pending = b""  # the rest of a frame the kernel did not take
        self.raw = bytearray()  # what was read and not yet taken apart
        self.left = 0  # payload bytes of the current frame still to come
        self.control = False  # the current frame is a control frame (its payload is dropped)
        self.closed = False

    # -- passed through --------------------------------------------------------------------------
    def fileno(self) -> int:
        return self.sock.fileno()

    def setblocking(self, flag: bool) -> None:
        self.sock.setblocking(flag)

    def settimeout(self, value: float | None) -> None:
        self.sock.settimeout(value)

    def setsockopt(self, *args: Any) -> None:
        self.sock.setsockopt(*args)

    def close(self) -> None:
        self.sock.close()

    # -- writing ---------------------------------------------------------------------------------
    def send(self, data: Any) -> int:
        """Take up to FRAME_MAX bytes of ``data`` as one frame; BlockingIOError while the
        previous frame is still partly unsent (as a full socket says it)."""
        if self.pending:
            k = self.sock.send(self.pending)
            self.pending = self.pending[k:]
            if self.pending:
                raise BlockingIOError
        chunk = bytes(data[:FRAME_MAX])
        frame = _header(len(chunk)) + chunk
        k = self.sock.send(frame)
        if k < len(frame):
            self.pending = frame[k:]
        return len(chunk)

    def sendall(self, data: Any) -> None:
        view = memoryview(bytes(data))
        while view:
            try:
                k = self.send(view)
            except BlockingIOError:
                time.sleep(0.001)
                continue
            view = view[k:]
        while self.pending:
            k = self.sock.send(self.pending)
            self.pending = self.pending[k:]

    # -- reading ---------------------------------------------------------------------------------
    def recv_into(self, buf: Any, nbytes: int = 0) -> int:
        """Payload bytes only; 0 at the end (the socket's, or a close frame)."""
        out = memoryview(buf).cast("B")
        room = len(out) if not nbytes else min(nbytes, len(out))
        while True:
            got = self._take(out, room)
            if got or self.closed:
                return got
            data = self.sock.recv(max(room, 65536))
            if not data:
                return 0
            self.raw += data

    def recv(self, n: int) -> bytes:
        buf = bytearray(n)
        k = self.recv_into(buf)
        return bytes(buf[:k])

    def _take(self, out: memoryview, room: int) -> int:
        """Move payload from ``raw`` into ``out``; frame headers are read and dropped."""
        raw = self.raw
        pos = 0
        got = 0
        while got < room and pos < len(raw):
            if self.left:
                n = min(self.left, room - got, len(raw) - pos)
                if not self.control:
                    out[got : got + n] = raw[pos : pos + n]
                    got += n
                pos += n
                self.left -= n
                continue
            # a frame header: the server's frames are not masked (RFC 6455 section 5.1)
            if len(raw) - pos < 2:
                break
            opcode, length = raw[pos] & 0x0F, raw[pos + 1] & 0x7F
            size = 2 + (2 if length == 126 else 8 if length == 127 else 0)
            if len(raw) - pos < size:
                break
            if length == 126:
                length = int.from_bytes(raw[pos + 2 : pos + 4], "big")
            elif length == 127:
                length = int.from_bytes(raw[pos + 2 : pos + 10], "big")
            pos += size
            if opcode == 0x8:
                self.closed = True
                break
            self.control = opcode >= 0x8  # ping/pong payloads are not MQTT
            self.left = length
        del raw[:pos]
        return got


def ws_connect(host: str, port: int, path: str, timeout: float) -> WSSocket:
    """Open a TCP connection and upgrade it to a WebSocket speaking ``mqtt``."""
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Protocol: mqtt\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                raise BenchError(f"ws://{host}:{port}{path}: closed during the upgrade")
            head += chunk
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            raise BenchError(f"ws://{host}:{port}{path}: {status.decode(errors='replace')}")
        ws = WSSocket(sock)
        ws.raw += head.split(b"\r\n\r\n", 1)[1]  # a frame right behind the response
        return ws
    except BaseException:
        sock.close()
        raise


__all__ = ["FRAME_MAX", "WSSocket", "ws_connect"]
