"""The asyncio side of a connection: a stream (TCP, TLS or Unix socket) and the socket-less core.

:func:`stream_protocol` makes the protocol a node's listener gives each accepted socket: the
:class:`mqttd.connection.Connection` itself, whose event methods have asyncio's protocol names
(``connection_made`` takes the transport as its link, so writes go straight to it;
``data_received``, ``pause_writing``, ``resume_writing``, ``eof_received``,
``connection_lost``). An adapter object in front of it, forwarding each event, cost 89 bytes
per idle connection and a Python frame per connect (benchmarks/ab_idle.py, issue 16). A
WebSocket listener (:mod:`mqttd.websocket`) adapts the same core with a link that frames what
it writes.

Whose transport: a plain TCP listener accepts through the node's own epoll set
(:func:`serve_streams`, :mod:`mqttd._stream`: 1 KB less per idle connection than uvloop's
transport, and half the CPU of a connect) where that is compiled (Linux) and the loop can watch
a descriptor; TLS and Unix sockets, and everything elsewhere, through the loop's
``create_server``.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mqttd._speedups import stream as _stream
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


def open_poller(loop: Any) -> Any:
    """The epoll set of a node's plain TCP connections, polled by ``loop`` (an
    mqttd._stream.Poller; its ``close()`` when the node stops), or None where there is none: no
    compiled mqttd._stream, or a loop that cannot watch a descriptor (``add_reader`` raises
    NotImplementedError, as a proactor loop does). Its connections then use the loop's own."""
    if _stream is None:
        return None
    try:
        return _stream.Poller(loop)
    except NotImplementedError:
        return None


class StreamServer:
    """A plain TCP listener whose connections are :mod:`mqttd._stream` streams: what mqttd.node
    uses of an asyncio ``Server`` (``sockets``, ``close``, ``wait_closed``)."""

    def __init__(self, sockets: list[socket.socket], acceptors: list[Any]) -> None:
        self.sockets = sockets
        self._acceptors = acceptors

    def close(self) -> None:
        """Accept no more connections (those accepted stay, as asyncio's)."""
        for acceptor in self._acceptors:
            acceptor.stop()
        self._acceptors = []
        for sock in self.sockets:
            sock.close()

    async def wait_closed(self) -> None:
        return None

    def is_serving(self) -> bool:
        return bool(self._acceptors)


def serve_streams(
    poller: Any, factory: Callable[[], Any], host: str | None, port: int, backlog: int
) -> StreamServer:
    """Listen on ``host``:``port`` as asyncio's ``create_server(reuse_address=True)`` does (one
    socket per address the host resolves to, all of them for None or ""; IPv6 sockets only
    IPv6), and accept through ``poller`` (an mqttd._stream.Poller). OSError when one cannot be
    bound, with its errno (EADDRINUSE: the port is taken)."""
    infos = socket.getaddrinfo(
        host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                # (the IPv4 socket beside it takes IPv4, as in asyncio)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise OSError(
                    exc.errno,
                    f"error while attempting to bind on address {address!r}: {exc.strerror}",
                ) from None
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return StreamServer(sockets, [poller.serve(sock, factory) for sock in sockets])
