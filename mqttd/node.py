"""One broker process, assembled: the MQTT core, its listener, the other nodes, ``$SYS``.

:class:`Node` is the front door. It builds a :class:`~mqttd.broker.Broker` (sessions, routing,
retained messages, wills: MQTT without sockets), joins the other nodes through Redis when the
configuration names one (:mod:`mqttd.redis`; otherwise the broker's peers are
:data:`mqttd.peers.LOCAL`), opens the listener whose connections are
:class:`mqttd.connection.Connection` (:func:`mqttd.listener.stream_protocol`), and publishes
``$SYS``. The ``mqttd`` command (:mod:`mqttd.cli`) and :class:`mqttd.MQTTApp` both run a node
through :func:`serve`, so start-up errors, the start line and signal handling are written once.

Layers, top to bottom (docs/architecture.md): cli / app -> node -> broker, listener, redis ->
connection -> the compiled hot paths (codec, match, route). Nothing below imports what is above.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import resource
import signal
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from mqttd import redis as redis_wing
from mqttd import systopics
from mqttd.broker import Broker, BrokerConfig, ListenerConfig, tls_context
from mqttd.listener import ListenerState, open_poller, serve_streams, stream_protocol
from mqttd.logs import reopen_log_files
from mqttd.redis import RedisUnavailable, open_bridge
from mqttd.security import Security, client_tls_settings
from mqttd.storage import MemoryStorage, Storage
from mqttd.version import version_line

log = logging.getLogger("mqttd")

#: seconds a stopping node waits for its clients to read what was queued for them
CLOSE_GRACE = 5.0

#: seconds between the checks of the file descriptors left
FD_CHECK = 1.0

#: the signals that stop a node
SIGNALS = (signal.SIGINT, signal.SIGTERM)

#: what a node's start raises for a reason the user can fix: one line says which (start_error)
START_ERRORS = (OSError, RedisUnavailable, ValueError)


class Node:
    """One mqttd node: ``await node.start()``, then ``await node.shutdown()``."""

    def __init__(
        self,
        config: BrokerConfig | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
        storage: Storage | None = None,
    ) -> None:
        self.config = config or BrokerConfig()
        #: the MQTT core; hooks and observers are set on it before start
        self.broker = Broker(self.config, storage)
        #: TLS for the listener: given, or made from config.certfile / config.keyfile at start
        self.ssl_context = ssl_context
        self.server: asyncio.base_events.Server | None = None  # the first listener's
        #: every listener opened: (its configuration, its server, its TLS context or None)
        self.servers: list[tuple[ListenerConfig, Any, ssl.SSLContext | None]] = []
        #: the epoll set of its plain TCP connections (mqttd._stream), made with the first
        #: listener; False where the loop cannot watch a descriptor
        self._poller: Any = None
        self.listener_states: list[ListenerState] = []
        #: the listener being opened while start() runs (start_error names it)
        self._opening: ListenerConfig | None = None
        self._metrics_starting = False
        self.sys_publisher: systopics.SysPublisher | None = None
        self._bridge: Any = None
        #: seconds the event loop's last timer fired late (mqttd.metrics.LagMeter)
        self.loop_lag = 0.0
        self.metrics: Any = None  # mqttd.metrics.MetricsServer with --metrics-port
        #: mqttd.persistence.Persistence with --persistence-file
        self.persistence: Any = None
        self._lag: Any = None
        #: checks every second whether the process runs out of file descriptors
        self._fd_watch: asyncio.TimerHandle | None = None
        self._fd_warned = 0.0
        #: times the node was found at its descriptor limit (mqttd_fd_exhausted_total)
        self.fd_exhausted = 0
        self._signals = False  # SIGINT/SIGTERM handlers installed by serve_forever

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Join Redis (if configured), listen, start ``$SYS``; returns once clients can connect.

        Raises one of :data:`START_ERRORS` (the port is taken, Redis is away, the TLS files are
        wrong: :meth:`start_error` says it in one line) after closing whatever it opened.
        """
        try:
            await self._start()
        except BaseException:
            await self.shutdown()
            raise

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        broker, cfg = self.broker, self.config
        broker.attach(loop)
        if cfg.redis_url:
            bridge = open_bridge(broker, cfg.redis_url, cfg.redis_prefix)
            if type(broker.storage) is MemoryStorage:
                # (an attribute of the package, loaded with redis-py on first use: a node
                # without Redis never imports it; set before the start, which may bring back
                # sessions: mqttd.redis.sessions, a named node)
                broker.storage = redis_wing.RedisStorage(bridge)
            # (the peers before the start too: sessions it brings back subscribe through it,
            # and the wills it publishes reach the other nodes)
            alone, broker.peers = broker.peers, bridge
            try:
                await bridge.start()  # RedisUnavailable, having closed what it opened
            except BaseException:
                broker.peers = alone
                raise
            self._bridge = bridge
            count = await bridge.load_retained()
            log.info("loaded %d retained messages from Redis", count)
        if cfg.persistence_file:
            from mqttd.persistence import Persistence

            self.persistence = Persistence(broker, cfg.persistence_file, cfg.persistence_interval)
            retained, sessions = await self.persistence.start()  # OSError: names the file
            log.info(
                "restored %d retained messages and %d sessions from %s",
                retained,
                sessions,
                cfg.persistence_file,
            )
        if (
            cfg.password_file
            or cfg.acl_file
            or cfg.allow_anonymous is not None
            or cfg.use_identity_as_username
            or cfg.use_subject_as_username
        ):
            # PasswordFileError / AclFileError: one line naming the file and line
            broker.security = Security(cfg, has_hook=broker.authenticate is not None)
        for i, listener in enumerate(cfg.all_listeners()):
            self._opening = listener  # for start_error, if it cannot listen
            await self._listen(loop, listener, first=i == 0)
        self._opening = None
        self.server = self.servers[0][1]
        if self.ssl_context is None:
            self.ssl_context = self.servers[0][2]
        broker.started_at = time.time()
        if cfg.metrics_port is not None:
            from mqttd.metrics import LagMeter, MetricsServer  # (prometheus-client: when used)

            self.metrics = MetricsServer(self, cfg.metrics_host, cfg.metrics_port)
            self._metrics_starting = True  # for start_error, if its port is taken
            self.metrics.start(loop)  # OSError: the port is taken
            self._metrics_starting = False
            self._lag = LagMeter(self, loop)
            self._lag.start()
            log.info(
                "metrics on http://%s:%d/metrics (and /health, /ready)",
                cfg.metrics_host,
                self.metrics.port,
            )
        self._warn_if_open()
        self.sys_publisher = systopics.start_publisher(broker)  # None when sys_interval is 0
        self._fd_watch = loop.call_later(FD_CHECK, self._check_fds)

    def _check_fds(self) -> None:
        """Out of file descriptors, a listener cannot accept (uvloop says nothing; the clients
        wait in the listen backlog): said in the log at most once a minute, and counted. The
        test is one open() of /dev/null a second, which fails exactly when accept() would."""
        loop = asyncio.get_running_loop()
        self._fd_watch = loop.call_later(FD_CHECK, self._check_fds)
        try:
            os.close(os.open(os.devnull, os.O_RDONLY))
            return
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                return
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        used = len(self.broker.connections)
        self.fd_exhausted += 1
        now = time.monotonic()
        if now - self._fd_warned >= 60:
            self._fd_warned = now
            log.warning(
                "out of file descriptors (limit %d, %d connections): new connections wait "
                "unaccepted; raise the limit (ulimit -n, systemd LimitNOFILE)",
                soft,
                used,
            )

    async def _listen(
        self, loop: asyncio.AbstractEventLoop, listener: ListenerConfig, first: bool
    ) -> None:
        """Open one listener (mqttd.listener for MQTT, mqttd.websocket for WebSocket)."""
        broker, cfg = self.broker, self.config
        ctx: ssl.SSLContext | None = None
        if first and self.ssl_context is not None:
            ctx = self.ssl_context  # a program's own context (MQTTApp(ssl_context=...))
        elif listener.certfile:
            ctx = tls_context(listener.certfile, listener.keyfile)
        if ctx is not None:
            client_tls_settings(ctx, listener.cafile or cfg.cafile, listener.require_certificate)
        state = ListenerState(listener)
        if listener.own_security:
            own = dataclasses.replace(
                cfg,
                password_file=listener.password_file or cfg.password_file,
                acl_file=listener.acl_file or cfg.acl_file,
                allow_anonymous=(
                    listener.allow_anonymous
                    if listener.allow_anonymous is not None
                    else cfg.allow_anonymous
                ),
            )
            state.security = Security(own, has_hook=broker.authenticate is not None)
        factory: Callable[[], asyncio.BaseProtocol]
        if listener.protocol == "websockets":
            from mqttd.websocket import WebSocketProtocol  # (websockets: imported when used)

            def factory() -> asyncio.BaseProtocol:
                return WebSocketProtocol(broker, listener.path, listener.origins, state)

        else:

            def factory() -> asyncio.BaseProtocol:
                return stream_protocol(broker, state)

        server: Any  # an asyncio Server, or a listener.StreamServer
        if listener.socket:
            server = await loop.create_unix_server(factory, listener.socket, ssl=ctx, backlog=1024)
            os.chmod(listener.socket, listener.socket_mode)
        else:
            host = listener.host if listener.host is not None else cfg.host
            plain = ctx is None and listener.protocol != "websockets"
            if plain and self._poller is None:
                self._poller = open_poller(loop) or False  # (False: this loop cannot)
            if plain and self._poller:
                # plain TCP: through the node's own epoll set (mqttd._stream says why)
                server = serve_streams(self._poller, factory, host, listener.port, 1024)
            else:
                server = await loop.create_server(
                    factory, host, listener.port, reuse_address=True, backlog=1024, ssl=ctx
                )
        self.servers.append((listener, server, ctx))
        self.listener_states.append(state)

    def _securities(self) -> list[Security]:
        """The node's Security and the listeners' own."""
        out = [self.broker.security] if self.broker.security is not None else []
        return out + [s.security for s in self.listener_states if s.security is not None]

    def _warn_if_open(self) -> None:
        """A listener beyond this machine with nobody authenticated: say so, once, at start."""
        broker = self.broker
        if broker.authenticate is not None or broker.authenticators:
            return  # the program authenticates
        for state, url in zip(self.listener_states, self.urls(), strict=True):
            listener = state.config
            host = listener.host if listener.host is not None else self.config.host
            if listener.socket or host in ("127.0.0.1", "localhost", "::1"):
                continue
            security = state.security if state.security is not None else broker.security
            if security is not None and security.authenticates:
                continue
            log.warning(
                "listening on %s with no authentication: any client that reaches this port can "
                "connect%s (set password_file, client certificates or allow_anonymous = false; "
                "docs/security.md)",
                url,
                ""
                if security is not None and security.acl is not None
                else " and read every topic",
            )

    def reload(self) -> None:
        """SIGHUP: the password file, the ACL file and the TLS certificates again, without
        dropping anyone; a file that no longer loads is reported and the old one stays."""
        reopen_log_files()
        log.info("SIGHUP: reloading")
        broker, cfg = self.broker, self.config
        # (a file that does not load keeps its old rules; the others apply at once)
        if any([s.reload() for s in self._securities()]):
            broker.refresh_rights()
        for listener, _, ctx in self.servers:
            if ctx is None or not listener.certfile:
                continue  # no TLS, or a program's own context
            try:
                # checked first on a context of its own: a bad file changes nothing
                tls_context(listener.certfile, listener.keyfile)
                ctx.load_cert_chain(listener.certfile, listener.keyfile)
                client_tls_settings(
                    ctx, listener.cafile or cfg.cafile, listener.require_certificate
                )
            except (ValueError, OSError, ssl.SSLError) as exc:
                log.error("reload: %s; the previous certificates stay", exc)

    def start_error(self, exc: BaseException) -> str:
        """One line for a start that raised one of :data:`START_ERRORS`."""
        cfg = self.config
        if isinstance(exc, OSError):
            failed = self._opening
            if self._metrics_starting or failed is None:
                # (failed is None: an OSError before any listener; said as it is below)
                if not self._metrics_starting:
                    return f"cannot start: {exc.strerror or exc}"
                return (
                    f"cannot serve metrics on {cfg.metrics_host}:{cfg.metrics_port}: "
                    f"{exc.strerror or exc}"
                )
            if failed.socket:
                return f"cannot listen on the Unix socket {failed.socket}: {exc.strerror or exc}"
            host = failed.host if failed.host is not None else cfg.host
            if exc.errno == errno.EADDRINUSE:
                return f"port {failed.port} on {host} is already in use (another broker?)"
            return f"cannot listen on {host}:{failed.port}: {exc.strerror or exc}"
        return str(exc)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """(host, port) of each socket of the first listener (the real port when the config
        said 0)."""
        if self.server is None:
            return []
        return [s.getsockname()[:2] for s in self.server.sockets]

    def urls(self) -> list[str]:
        """Where each listener is reached (``mqtt://127.0.0.1:1883``, ``ws://...``, ``unix:``)."""
        out = []
        for listener, server, _ in self.servers:
            if listener.socket:
                out.append(listener.url("", 0))
                continue
            host, port = server.sockets[0].getsockname()[:2]
            out.append(listener.url(host, port))
        return out

    def figures(self) -> dict[str, Any]:
        """The node's figures now, for /metrics (mqttd.metrics) and MQTTApp.get_metrics(); read
        on the event loop's thread."""
        broker = self.broker
        stats = broker.stats
        flusher = broker.flusher
        sessions = list(broker.sessions.values())
        inflight = {1: 0, 2: 0}
        queued = 0
        for session in sessions:
            outlet = session.outlet
            for entry in outlet.inflight.values():
                inflight[2 if entry.qos == 2 else 1] += 1
            queued += len(outlet.queue)
        security = broker.security
        return {
            "connections": broker.clients,
            "sockets_total": stats["connections_total"],
            "sessions": len(sessions),
            "messages_received": stats["messages_received"],
            "messages_sent": flusher.messages_sent if flusher is not None else 0,
            "bytes_received": stats["bytes_received"],
            "bytes_sent": flusher.bytes_sent if flusher is not None else 0,
            "subscriptions": len(broker.tree),
            "retained": broker.storage.retained_count(),
            "inflight": inflight,
            "queued": queued,
            "auth_failures": security.failures if security is not None else 0,
            "closed_incoming_limit": stats["refused_incoming"],
            # flow control (docs/flow-control.md): drops by reason, publishers held back
            "flow": broker.flow.figures(),
            "loop_lag": self.loop_lag,
            "redis": broker.peers.health() if broker.peers.remote else None,
            "persistence": self.persistence.figures() if self.persistence is not None else None,
            "fd_exhausted": self.fd_exhausted,
            "received_by_qos": dict(enumerate(broker.received_qos)),
            "received_payload_bytes_by_qos": dict(enumerate(broker.received_payload_bytes)),
            "sent_by_qos": _sent_by_qos(flusher),
            "refused": dict(broker.refused),
        }

    def start_line(self, host_hint: str = "") -> str:
        """The line a started node logs; tests and scripts read the address and pid from it.
        ``host_hint``: how to say "listen on 0.0.0.0" to whoever runs it (the command's flag),
        added when the node listens on loopback only."""
        host, port = self.addresses[0]
        hint = ""
        if host_hint and self.config.host in ("127.0.0.1", "localhost", "::1"):
            hint = f"; local clients only, use {host_hint} 0.0.0.0 to accept remote clients"
        tls = " with TLS" if self.servers and self.servers[0][2] is not None else ""
        others = self.urls()[1:]
        if self.metrics is not None:
            others.append(f"http://{self.metrics.host}:{self.metrics.port}/metrics")
        also = f"; also {', '.join(others)}" if others else ""
        return f"{version_line()} listening on {host}:{port} (pid {os.getpid()}){tls}{also}{hint}"

    async def serve_forever(self, until: asyncio.Event | None = None) -> None:
        """Wait until SIGINT or SIGTERM arrives (or ``until`` is set). The signals stay this
        node's until :meth:`release_signals`, so that a second Ctrl-C or SIGTERM during the
        shutdown that follows does not cut it short (serve() releases them after it)."""
        stop = until if until is not None else asyncio.Event()
        if not self._signals:
            self.catch_signals(stop)
        await stop.wait()

    def catch_signals(self, stop: asyncio.Event) -> None:
        """SIGINT and SIGTERM set ``stop``; SIGHUP reloads (:meth:`reload`). serve() does it
        before the start line, so that a signal sent as soon as the line is read (by a script,
        a test, systemd) finds the handlers there, not the default action that kills."""
        loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        self._signals = True

    def release_signals(self) -> None:
        """Give SIGINT and SIGTERM back to the loop's default."""
        if self._signals:
            self._signals = False
            loop = asyncio.get_running_loop()
            for sig in SIGNALS:
                loop.remove_signal_handler(sig)
            loop.remove_signal_handler(signal.SIGHUP)

    async def shutdown(self, timeout: float | None = None) -> None:
        """Stop listening, tell MQTT 5 clients (DISCONNECT 0x8B), close every connection, stop the
        session timers, leave Redis; within ``timeout`` seconds if given (then what is left is
        abandoned, with a warning). Safe to call on a node that did not (fully) start."""
        if timeout is None:
            return await self._shutdown()
        try:
            await asyncio.wait_for(self._shutdown(), timeout)
        except TimeoutError:
            log.warning("shutdown: the node did not stop within %.1f s", timeout)

    async def _shutdown(self) -> None:
        broker = self.broker
        if self.sys_publisher is not None:
            self.sys_publisher.stop()
            self.sys_publisher = None
        if self._fd_watch is not None:
            self._fd_watch.cancel()
            self._fd_watch = None
        if self._lag is not None:
            self._lag.stop()
            self._lag = None
        if self.metrics is not None:
            metrics, self.metrics = self.metrics, None
            await asyncio.get_running_loop().run_in_executor(None, metrics.stop)
        servers, self.servers = self.servers, []
        self.server = None
        for _, server, _ in servers:
            server.close()
        broker.close_connections()
        # Each connection is closed after what was queued for it is written; a client that does
        # not read it within CLOSE_GRACE seconds is cut, so that a stop is bounded
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CLOSE_GRACE
        while broker.connections and loop.time() < deadline:
            await asyncio.sleep(0.02)
        if broker.connections:
            log.warning(
                "shutdown: %d clients did not read what was left for them within %.0f s: cut",
                len(broker.connections),
                CLOSE_GRACE,
            )
            for conn in list(broker.connections):
                transport = conn.transport
                if transport is not None:
                    (getattr(transport, "abort", None) or transport.close)()
        for listener, server, _ in servers:
            await server.wait_closed()  # (from Python 3.12: until every connection_lost ran)
            if listener.socket:
                with contextlib.suppress(OSError):
                    os.unlink(listener.socket)
        if self._poller:
            # (its set is closed once the connection_lost of those just aborted has run)
            self._poller.close()
        self._poller = None
        if self.persistence is not None:
            # Every connection has ended: the sessions are as they will be at the next start
            persistence, self.persistence = self.persistence, None
            await persistence.close()
        broker.stop_timers()
        bridge, self._bridge = self._bridge, None
        if bridge is not None:
            await bridge.stop()


def _sent_by_qos(flusher: Any) -> dict[int, int]:
    if flusher is None:
        return {0: 0, 1: 0, 2: 0}
    q0, q2 = flusher.messages_sent_qos0, flusher.messages_sent_qos2
    return {0: q0, 1: flusher.messages_sent - q0 - q2, 2: q2}


async def serve(
    node: Node,
    *,
    stopping: Callable[[], Awaitable[None]] | None = None,
    until: asyncio.Event | None = None,
    host_hint: str = "",
    started: Callable[[], Awaitable[None]] | None = None,
) -> int:
    """Start ``node`` and run it until SIGINT or SIGTERM (or ``until`` is set); the exit status.

    A start-up error is one line on stderr and status 1. ``stopping`` replaces
    ``node.shutdown()`` (the library also waits for its handlers).
    """
    try:
        await node.start()
    except START_ERRORS as exc:
        print(f"mqttd: error: {node.start_error(exc)}", file=sys.stderr)
        return 1
    stop = until if until is not None else asyncio.Event()
    node.catch_signals(stop)
    log.info("%s", node.start_line(host_hint))
    for handler in logging.getLogger().handlers + log.handlers:
        handler.flush()
    try:
        if started is not None:
            await started()  # the library's on_startup hooks (they shut down if they fail)
        await node.serve_forever(stop)
        log.info("stopping")
        await (stopping() if stopping is not None else node.shutdown())
    finally:
        node.release_signals()
    return 0


def run(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run ``main()`` on uvloop when it is installed (else asyncio); Ctrl-C is status 0."""
    try:
        import uvloop
    except ImportError:
        runner: Callable[[Coroutine[Any, Any, int]], int] = asyncio.run
    else:
        runner = uvloop.run
    try:
        return runner(main())
    except KeyboardInterrupt:
        return 0
