"""The asyncio side of a connection: a stream (TCP or TLS) adapted to the socket-less core.

:class:`StreamProtocol` is the protocol a node's listener makes for each accepted socket. It
holds a :class:`mqttd.connection.Connection` and hands it every event: the transport as its link
(writes go straight to the transport, so the coalesced fan-out pays nothing for the adapter),
the bytes read, the transport's flow control and the end. A WebSocket listener will adapt the
same core with a link that frames what it writes.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from mqttd.connection import Connection

if TYPE_CHECKING:
    from mqttd.broker import Broker, ListenerConfig


class ListenerState:
    """One listener's configuration and the clients connected through it now."""

    __slots__ = ("config", "clients", "security")

    def __init__(self, config: ListenerConfig) -> None:
        self.config = config
        self.clients = 0
        #: its own mqttd.security.Security when it has its own users or rules (else the node's)
        self.security: Any = None


class StreamProtocol(asyncio.Protocol):
    """One accepted TCP, TLS or Unix-socket connection."""

    def __init__(self, broker: Broker, listener: ListenerState | None = None) -> None:
        self.core = core = Connection(broker)
        core.listener = listener
        # Every read goes straight to the core: the loop calls the core's bound method (a
        # forwarding method here would add a Python frame per read)
        self.data_received = core.data_received  # type: ignore[method-assign]

    def connection_made(self, transport: Any) -> None:
        self.core.connection_made(transport)

    def data_received(self, data: bytes) -> None:  # replaced in __init__
        self.core.data_received(data)

    def pause_writing(self) -> None:
        self.core.pause_writing()

    def resume_writing(self) -> None:
        self.core.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.core.connection_lost(exc)
