"""The asyncio side of a connection: a stream (TCP, TLS or Unix socket) and the socket-less core.

:func:`stream_protocol` makes the protocol a node's listener gives each accepted socket: the
:class:`mqttd.connection.Connection` itself, whose event methods have asyncio's protocol names
(``connection_made`` takes the transport as its link, so writes go straight to it;
``data_received``, ``pause_writing``, ``resume_writing``, ``eof_received``,
``connection_lost``). An adapter object in front of it, forwarding each event, cost 89 bytes
per idle connection and a Python frame per connect (benchmarks/ab_idle.py, issue 16). A
WebSocket listener (:mod:`mqttd.websocket`) adapts the same core with a link that frames what
it writes.
"""

from __future__ import annotations

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


def stream_protocol(broker: Broker, listener: ListenerState | None = None) -> Connection:
    """The protocol of one accepted TCP, TLS or Unix-socket connection (see above)."""
    core = Connection(broker)
    core.listener = listener
    return core
