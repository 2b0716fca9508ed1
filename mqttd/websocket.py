"""MQTT over WebSocket (MQTT 5 §6, 3.1.1 §6): a WebSocket connection adapted to the core.

The WebSocket protocol itself is the ``websockets`` library's sans-I/O :class:`ServerProtocol`
(the HTTP upgrade, frame parsing and masking, ping/pong, the closing handshake); this module
only moves bytes between it, the asyncio transport and a :class:`mqttd.connection.Connection`:

- the HTTP request must ask for the listener's ``path`` (404 otherwise) and, with an ``origins``
  allow-list, come from one of them (403); the subprotocol ``mqtt`` is selected, or
  ``mqttv3.1`` for older clients [MQTT-6.0.0-3] (a client offering none is served without one,
  as Mosquitto and EMQX do);
- binary frames are a byte stream: an MQTT packet may span frames and a frame may hold several
  packets [MQTT-6.0.0-2], so their payloads go to the core as they come; a text frame closes
  the connection [MQTT-6.0.0-1] (close code 1003);
- what the core writes becomes one binary frame per write: the fan-out's coalesced flush is one
  frame, not one per message.

Bounded: a WebSocket message (the frames of one fragmented message) is at most the MQTT
maximum packet size plus 64 KiB (close code 1009 beyond), the HTTP request at most what
``websockets`` allows (8 KiB lines, 128 headers), and an upgrade not done within
``connect_timeout`` is dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from websockets.exceptions import InvalidOrigin
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Origin, Subprotocol

from mqttd.connection import Connection

if TYPE_CHECKING:
    from mqttd.broker import Broker
    from mqttd.listener import ListenerState

log = logging.getLogger("mqttd")

#: subprotocols we speak, preferred first [MQTT-6.0.0-3]; "mqttv3.1" is what MQTT 3.1 clients offer
SUBPROTOCOLS = (Subprotocol("mqtt"), Subprotocol("mqttv3.1"))
#: room beyond the maximum packet size for a frame that holds the end of one packet and the
#: start of the next
FRAME_SLACK = 64 * 1024


def _select(protocol: ServerProtocol, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    for name in SUBPROTOCOLS:
        if name in offered:
            return name
    return None


class WebSocketProtocol(asyncio.Protocol):
    """One accepted WebSocket connection (``ws://`` or ``wss://``); it is the core's link."""

    def __init__(
        self,
        broker: Broker,
        path: str,
        origins: Sequence[str] | None = None,
        listener: ListenerState | None = None,
    ) -> None:
        self.broker = broker
        self.listener = listener
        self.path = path
        allowed: list[Origin | None] | None = None
        if origins:
            # Browsers send Origin; other clients (paho, MQTT.js on Node) do not, and are let in
            allowed = [Origin(o) for o in origins] + [None]
        self.ws = ServerProtocol(
            origins=allowed,
            subprotocols=list(SUBPROTOCOLS),
            select_subprotocol=_select,
            max_size=broker.config.max_packet_size + FRAME_SLACK,
            logger=log,
        )
        self.transport: Any = None
        self.core: Connection | None = None
        self.timer: asyncio.TimerHandle | None = None

    # -- the transport's events ------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.broker.config.connect_timeout, self._too_slow)

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        ws.receive_data(data)
        chunks: list[bytes | bytearray | memoryview] = []
        for event in ws.events_received():
            if isinstance(event, Request):
                self._handshake(event)
            elif not isinstance(event, Frame):
                continue  # (a server receives no Response)
            elif event.opcode is Opcode.BINARY or event.opcode is Opcode.CONT:
                chunks.append(event.data)
            elif event.opcode is Opcode.TEXT:
                # Text is not MQTT: close the connection [MQTT-6.0.0-1]
                ws.send_close(CloseCode.UNSUPPORTED_DATA, "MQTT is sent in binary frames")
            # PING is answered and CLOSE echoed by ws itself; PONG needs nothing
        self._send_pending()
        core = self.core
        if chunks and core is not None and not core.closing:
            core.data_received(bytes(chunks[0]) if len(chunks) == 1 else b"".join(chunks))
        if ws.state is State.CLOSED or ws.close_expected():
            self.transport.close()

    def pause_writing(self) -> None:
        if self.core is not None:
            self.core.pause_writing()

    def resume_writing(self) -> None:
        if self.core is not None:
            self.core.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.ws.receive_eof()
        if self.core is not None:
            self.core.connection_lost(exc)

    # -- the upgrade -----------------------------------------------------------------------------
    def _handshake(self, request: Request) -> None:
        ws = self.ws
        if request.path.split("?", 1)[0] != self.path:
            response = ws.reject(404, f"MQTT is served on {self.path}\n")
        else:
            response = ws.accept(request)
        if isinstance(ws.handshake_exc, InvalidOrigin):
            log.info("refusing a WebSocket from %s: %s", self._peer(), ws.handshake_exc)
        ws.send_response(response)
        if ws.state is not State.OPEN:
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.core = core = Connection(self.broker)
        core.listener = self.listener
        core.connection_made(self)

    def _too_slow(self) -> None:
        self.timer = None
        if self.core is None:
            log.info("closing a WebSocket from %s: no upgrade in time", self._peer())
            self.transport.close()

    def _peer(self) -> Any:
        return self.transport.get_extra_info("peername") if self.transport is not None else None

    def _send_pending(self) -> None:
        data = self.ws.data_to_send()
        if data:
            self.transport.writelines(data)

    # -- what the core needs of a link (mqttd.connection.Link) -----------------------------------
    def write(self, data: bytes | bytearray) -> None:
        ws = self.ws
        if ws.state is not State.OPEN:
            return  # closing: what the core still writes has no reader
        ws.send_binary(data)
        self.transport.writelines(ws.data_to_send())

    def close(self) -> None:
        ws = self.ws
        if ws.state is State.OPEN:
            ws.send_close(CloseCode.NORMAL_CLOSURE)
            self._send_pending()
        self.transport.close()

    def abort(self) -> None:
        self.transport.abort()

    def pause_reading(self) -> None:
        self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.transport.resume_reading()

    def is_closing(self) -> bool:
        return bool(self.transport.is_closing())

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default)


__all__ = ["SUBPROTOCOLS", "WebSocketProtocol"]
