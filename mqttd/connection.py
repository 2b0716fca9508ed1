"""One client connection's MQTT state machine, without sockets and without an event loop.

The core takes bytes in (:meth:`Connection.data_received`) and sends bytes out through one writer
(:meth:`Connection._send`): the ``link`` it was given in :meth:`Connection.connection_made` (an
asyncio transport, a WebSocket adapter, a test's fake: anything with ``write``, ``close``,
``pause_reading``, ``resume_reading`` and ``get_extra_info``) until a session is attached, then
that session's :class:`Outlet`, whose writes are coalesced once per loop turn. Time comes from the
broker's loop (``time``, ``call_later``, ``call_soon``, ``create_task``), which a test replaces
with a fake clock (tests/unit/test_connection.py). This module imports neither asyncio nor
socket; its event methods have asyncio's protocol names, so :mod:`mqttd.listener` gives it to
the loop as an asyncio stream's protocol (TCP, TLS, Unix socket) with no adapter between.

``data_received`` feeds the :class:`Reader` and dispatches each packet through one table from
packet type to handler per state (before CONNECT, connected, authenticating, waiting), as
Mosquitto's ``read_handle.c``. The broker's semantics (sessions, subscriptions, routing) live in
:mod:`mqttd.broker`.
"""

from __future__ import annotations

import inspect
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

from mqttd import auth, logs
from mqttd._speedups import codec, match, route
from mqttd.constants import (
    ASSIGNED_CLIENT_IDENTIFIER,
    AUTHENTICATION_DATA,
    AUTHENTICATION_METHOD,
    BAD_AUTHENTICATION_METHOD,
    BAD_USER_NAME_OR_PASSWORD,
    CLIENT_IDENTIFIER_NOT_VALID,
    CONNACK_BAD_USERNAME_OR_PASSWORD,
    CONNACK_IDENTIFIER_REJECTED,
    CONNACK_NOT_AUTHORIZED,
    CONNACK_SERVER_UNAVAILABLE,
    CONNACK_UNACCEPTABLE_PROTOCOL_VERSION,
    DISCONNECT_WITH_WILL_MESSAGE,
    KEEP_ALIVE_TIMEOUT,
    MALFORMED_PACKET,
    MAXIMUM_PACKET_SIZE,
    NO_SUBSCRIPTION_EXISTED,
    NORMAL_DISCONNECTION,
    NOT_AUTHORIZED,
    PAYLOAD_FORMAT_INDICATOR,
    PROTOCOL_ERROR,
    QUOTA_EXCEEDED,
    RE_AUTHENTICATE,
    REASON_STRING,
    RECEIVE_MAXIMUM,
    RECEIVE_MAXIMUM_EXCEEDED,
    REQUEST_PROBLEM_INFORMATION,
    REQUEST_RESPONSE_INFORMATION,
    RESPONSE_INFORMATION,
    RESPONSE_TOPIC,
    RETAIN_AVAILABLE,
    RETAIN_NOT_SUPPORTED,
    SERVER_BUSY,
    SERVER_KEEP_ALIVE,
    SERVER_SHUTTING_DOWN,
    SERVER_UNAVAILABLE,
    SESSION_EXPIRY_INTERVAL,
    SESSION_TAKEN_OVER,
    SUBACK_FAILURE,
    SUBSCRIPTION_IDENTIFIER,
    TOPIC_ALIAS,
    TOPIC_ALIAS_INVALID,
    TOPIC_ALIAS_MAXIMUM,
    TOPIC_FILTER_INVALID,
    TOPIC_NAME_INVALID,
    UNSUPPORTED_PROTOCOL_VERSION,
    WILL_DELAY_INTERVAL,
)
from mqttd.errors import PacketError
from mqttd.topics import is_reserved_topic

if TYPE_CHECKING:
    from mqttd.broker import Broker, Session

log = logging.getLogger("mqttd")

PUBACK, PUBREC, PUBREL, PUBCOMP = 4, 5, 6, 7
PINGRESP = codec.encode_pingresp()

# CONNACK return codes of MQTT 3.1 / 3.1.1 (§3.2.2.3) for the MQTT 5 reasons we refuse with.
_V3_CONNACK = {
    UNSUPPORTED_PROTOCOL_VERSION: CONNACK_UNACCEPTABLE_PROTOCOL_VERSION,
    CLIENT_IDENTIFIER_NOT_VALID: CONNACK_IDENTIFIER_REJECTED,
    SERVER_UNAVAILABLE: CONNACK_SERVER_UNAVAILABLE,
    SERVER_BUSY: CONNACK_SERVER_UNAVAILABLE,
    QUOTA_EXCEEDED: CONNACK_SERVER_UNAVAILABLE,
    BAD_USER_NAME_OR_PASSWORD: CONNACK_BAD_USERNAME_OR_PASSWORD,
    NOT_AUTHORIZED: CONNACK_NOT_AUTHORIZED,
    BAD_AUTHENTICATION_METHOD: CONNACK_NOT_AUTHORIZED,
}


class Loop(Protocol):
    """What a connection needs of the event loop: a clock, timers, turns, tasks. The broker's
    loop (mqttd.broker.Broker.attach): asyncio's, or a test's fake clock."""

    def time(self) -> float: ...
    def call_later(self, delay: float, callback: Any, *args: Any) -> Any: ...
    def call_soon(self, callback: Any, *args: Any) -> Any: ...
    def create_task(self, coro: Any) -> Any: ...


class Link(Protocol):
    """Where a connection's bytes go: what it needs of an asyncio transport."""

    def write(self, data: bytes) -> None: ...
    def close(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def get_extra_info(self, name: str, default: Any = None) -> Any: ...


#: seconds a new connection has to send its CONNECT
CONNECT_TIMEOUT = 10.0  # the default of BrokerConfig.connect_timeout
#: a read at least this big makes the connection wait one loop iteration before the next read
FAIR_READ = 16 * 1024
#: seconds of work one connection's packets may take in one loop iteration: the packets of a
#: read left after it wait for the next iteration, so one client's expensive burst cannot hold
#: the others (docs/flow-control.md)
TURN_BUDGET = 0.01
#: seconds a disconnected slow client's unsent bytes wait for it before the socket is aborted
CUT_GRACE = 1.0
#: bytes of PUBLISH a held connection may send before it is not read at all (see _defer_held)
HELD_READ_LIMIT = 64 * 1024


async def _go_on(coro: Any, waited: Any) -> Any:
    """Finish a coroutine that was started by hand and is waiting for ``waited`` (the future
    it yielded): what it yields goes to the task running this, what the task sends or throws
    back goes to it."""
    while True:
        try:
            value = await _Yield(waited)
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # noqa: BLE001 (thrown into it, as a task would)
            try:
                waited = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                waited = coro.send(value)
            except StopIteration as stop:
                return stop.value


class _Yield:
    """Awaiting it yields ``what`` once to the task (a future, or None for a bare turn)."""

    __slots__ = ("what",)

    def __init__(self, what: Any) -> None:
        self.what = what

    def __await__(self) -> Any:
        return (yield self.what)


class Connection:
    """The server side of one network connection, fed by an adapter (mqttd.listener)."""

    # Fixed fields, no per-instance __dict__: 1.6 KB less per connection (benchmarks/memory.py;
    # issue 16). Every attribute is set in __init__; one not listed here is an AttributeError.
    __slots__ = (
        "aliases",
        "app_client",
        "assigned_id",
        "auth_method",
        "authenticator",
        "backlog",
        "backlog_error",
        "broker",
        "certificate",
        "clean_start",
        "client_id",
        "closing",
        "connect_packet",
        "counted_ip",
        "deferred",
        "end_reason",
        "handlers",
        "held",
        "incoming",
        "is_bridge",
        "keepalive",
        "last_rx",
        "listener",
        "loop",
        "next_handlers",
        "outlet",
        "password",
        "_peer",
        "problem_info",
        "reader",
        "rights",
        "server_keepalive",
        "session",
        "sub_times",
        "throttled",
        "timer",
        "tokens",
        "tokens_at",
        "transport",
        "username",
        "version",
        "waiting",
        "was_cut",
        "will",
        "will_delay",
        "will_shared",
        "yielding",
        "__weakref__",  # the flow-control set holds connections weakly
    )

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        loop = broker.loop
        assert loop is not None, "the broker is started before it accepts connections"
        self.loop: Loop = loop
        self.reader = codec.Reader(broker.config.max_packet_size)
        self.transport: Link | Any = None  # the link, once connection_made
        self.session: Session | None = None
        self.outlet: Any = None
        self.version = 0
        self.client_id = ""
        self.username: str | None = None
        self._peer: Any = None  # (see peer)
        self.will: Any = None
        self.will_delay = 0
        #: its will is kept in Redis for the other nodes (mqttd.redis.sessions) until it ends
        self.will_shared = False
        self.keepalive = 0
        self.last_rx = 0.0
        #: the tick of its CONNECT deadline or keep-alive check in broker.deadlines, or None
        self.timer: int | None = None
        self.closing = False
        self.was_cut = False  # disconnected by cut() (a slow subscriber)
        self.handlers = _PRE_CONNECT
        self.connect_packet: Any = None  # the CONNECT while its authentication runs
        #: packets held while a step waits for the storage (see _block), and what follows it
        self.backlog: list | None = None
        self.backlog_error: PacketError | None = None
        self.next_handlers: tuple = _PRE_CONNECT
        self.assigned_id = False
        self.server_keepalive: int | None = None
        self.problem_info = True  # MQTT 5 Request Problem Information
        self.auth_method: str | None = None
        self.authenticator: Any = None
        #: topic aliases the client set [MQTT-3.3.2-7] (made on the first one)
        self.aliases: dict[int, str] | None = None
        self.password: bytes | None = None
        self.clean_start = True
        self.is_bridge = False  # a Mosquitto bridge: CONNECT at level 0x83/0x84 (on_connect)
        self.counted_ip: str | None = None  # counted against the connection limits
        #: max_messages_per_second: token bucket, and whether reading is paused by it
        self.tokens = 0.0
        self.tokens_at = 0.0
        self.throttled = False
        #: reasons this connection is not read: queues it published into that are full (and the
        #: node's memory limit), counted; and whether it gave up its turn (TURN_BUDGET)
        self.held = 0
        self.deferred = 0  # bytes of the packets held back while held (_defer_held)
        self.yielding = False
        self.waiting = False  # a step waits for the storage (_block)
        self.sub_times: deque[float] | None = None  # max_subscriptions_per_minute
        self.app_client: Any = None  # the library's MQTTClient view, made on first use
        #: bytes of a partly received packet, counted in broker.incoming (max_incoming_bytes)
        self.incoming = 0
        #: the client certificate (ssl's getpeercert() dict) on a TLS listener, else None
        self.certificate: dict[str, Any] | None = None
        #: what the ACL lets this client do (mqttd.acl.Rights); None: no ACL
        self.rights: Any = None
        #: the listener it came through (mqttd.listener.ListenerState), for its limits
        self.listener: Any = None
        #: why it ends, for the disconnection's log line (None: the network connection ended)
        self.end_reason: str | None = None

    @property
    def peer(self) -> Any:
        """The client's address: asked of a link that keeps it (mqttd._stream, where it is 28
        bytes, not a tuple of 146 here: issue 16); a loop's transport forgets it once closed,
        so from one it is copied at connection_made."""
        peer = self._peer
        if peer is None and self.transport is not None:
            return self.transport.get_extra_info("peername")
        return peer

    # -- events from the adapter -----------------------------------------------------------------
    def connection_made(self, link: Link) -> None:
        self.transport = link
        if not getattr(link, "keeps_peername", False):
            self._peer = link.get_extra_info("peername")
        self.certificate = link.get_extra_info("peercert")
        self.broker.connections.add(self)
        self.broker.flow.ensure()
        self.broker.stats["connections_total"] += 1
        self.last_rx = self.loop.time()
        # [MQTT-3.1.4-1]-adjacent: a peer that never sends CONNECT is not kept forever.
        self.timer = self.broker.deadlines.add(
            self, self.last_rx + self.broker.config.connect_timeout
        )

    def data_received(self, data: bytes) -> None:
        self.last_rx = self.loop.time()
        self.broker.stats["bytes_received"] += len(data)
        try:
            packets = self.reader.feed(data)
            error = None
        except PacketError as exc:
            packets = exc.packets
            error = exc
        self.broker.stats["packets_received"] += len(packets)
        partial = self.reader.buffered
        if partial != self.incoming and self._count_incoming(partial):
            return
        self._dispatch(packets, error)
        if error is not None or self.closing:
            return
        if len(data) >= FAIR_READ and self.backlog is None:
            # A big read means more is waiting. Yield to the loop before reading this client
            # again: uvloop would otherwise keep reading (up to 32 reads per wake-up) and starve
            # the writes to subscribers, which only happen between loop iterations.
            self.transport.pause_reading()
            self.loop.call_soon(self._resume_reading)

    def _count_incoming(self, partial: int) -> bool:
        """Count the bytes of this connection's partly received packet in the node's total;
        True (and the connection closed) when it would pass max_incoming_bytes: a thousand
        sockets each sending most of a large packet cannot make the node hold a gigabyte."""
        broker = self.broker
        grown = partial - self.incoming
        limit = broker.config.max_incoming_bytes
        if grown > 0 and limit and broker.incoming + grown > limit:
            broker.stats["refused_incoming"] += 1
            self._forget_incoming()
            # Its partial packet goes now, not when the closed connection is collected: a
            # thousand refused at once must not hold a thousand reads
            self.reader = codec.Reader(broker.config.max_packet_size)
            self.protocol_error(
                QUOTA_EXCEEDED,
                f"partly received packets of all clients over max_incoming_bytes ({limit})",
            )
            return True
        broker.incoming += grown
        self.incoming = partial
        return False

    def _forget_incoming(self) -> None:
        self.broker.incoming -= self.incoming
        self.incoming = 0

    def _resume_reading(self) -> None:
        if not self.closing and self.backlog is None and not self.throttled and not self.held:
            self.transport.resume_reading()

    # -- not reading: a rate limit, full queues downstream, the node's memory, the turn budget ----
    def _stop(self) -> None:
        """Stop reading and dispatching: what is already read waits in the backlog, in order,
        until :meth:`_go` (as while a step waits for the storage, :meth:`_block`)."""
        self.transport.pause_reading()
        if self.backlog is None:
            self.backlog = []
            self.deferred = 0
            self.next_handlers = self.handlers
        self.handlers = _BLOCKED

    def _go(self) -> None:
        """One reason to stop ended: go on if it was the last. Held only (by full queues or
        the memory limit), the connection is still read for acknowledgements and PINGREQ: see
        :meth:`_hold`."""
        if self.closing or self.throttled or self.yielding or self.waiting:
            return
        if self.held:
            self.handlers = _HELD
            backlog = self.backlog
            if backlog and any(p.packet_type in _READ_WHILE_HELD for p in backlog):
                # Acknowledgements that waited behind a full stop go now, the rest stays
                self.backlog = []
                self.deferred = 0
                for packet in backlog:
                    if self.closing:
                        return
                    self.handlers[packet.packet_type](self, packet)
            if self.deferred < HELD_READ_LIMIT and self.handlers is _HELD:
                self.transport.resume_reading()
            return
        if self.backlog is not None:
            self._release()
        else:
            self._resume_reading()

    def _give_turn(self) -> None:
        self.yielding = True
        self._stop()
        self.loop.call_soon(self._take_turn)

    def _take_turn(self) -> None:
        self.yielding = False
        self._go()

    def _hold(self) -> None:
        """After a PUBLISH: wait for the queues it filled beyond their limits
        (Flusher.pressure), or for the node when it is above its memory limit."""
        broker = self.broker
        flusher = broker.flusher
        pressure = flusher.pressure
        n = 0
        if pressure:
            flusher.pressure = []
            n = broker.flow.hold(self, pressure)
        if flusher.over:
            broker.flow.hold_node(self)
            n += 1
        if n:
            self.held += n
            if self.backlog is None:
                self.backlog = []
                self.deferred = 0
                self.next_handlers = self.handlers
            if self.handlers is not _BLOCKED:
                self.handlers = _HELD

    def _defer_held(self, p: Any) -> None:
        """Held: a packet that must wait (PUBLISH, SUBSCRIBE...), in order. The socket is read
        on for the acknowledgements a held client owes (else two clients that publish to each
        other would hold each other for good) until HELD_READ_LIMIT bytes wait."""
        self.backlog.append(p)  # type: ignore[union-attr]
        if p.packet_type == 3:
            self.deferred += len(p.payload) + len(p.topic) + 8
        else:
            self.deferred += 16
        if self.deferred >= HELD_READ_LIMIT:
            self.transport.pause_reading()

    def unhold(self) -> None:
        """A queue this connection waited for drained, or its session became slow or went
        offline; or the node is back under its memory limit."""
        if self.held:
            self.held -= 1
            if not self.held:
                # On the next turn: this runs inside another client's acknowledgement (or the
                # tick), which should not dispatch this client's backlog within it
                self.loop.call_soon(self._go)

    def _spend_token(self, rate: float) -> None:
        """max_messages_per_second: one PUBLISH spends a token; in debt, reading pauses until
        the rate pays it back. What was already read is still handled: nothing is dropped."""
        now = self.loop.time()
        burst = rate if rate > 1.0 else 1.0
        tokens = self.tokens + (now - self.tokens_at) * rate
        self.tokens = (burst if tokens > burst else tokens) - 1.0
        self.tokens_at = now
        if self.tokens < 0.0 and not self.throttled:
            self.throttled = True
            self._stop()  # the rest of this read waits too, in order
            self.loop.call_later(-self.tokens / rate, self._unthrottle)

    def _unthrottle(self) -> None:
        self.throttled = False
        self._go()

    # -- waiting for the storage -----------------------------------------------------------------
    def _block(self, coro: Any, now: bool = False) -> None:
        """Run ``coro`` (a step that may wait for the storage, like attaching the session) and
        hold every packet that arrives meanwhile, to dispatch in order once it is done.

        ``now``: the step is this node's own code with nothing remote (MemoryStorage, no
        Redis, no user hook), so it may start here rather than in a task; most such steps never
        wait and end here, with no task, no loop turn and no pause of the socket (a connect
        storm's CONNECT: issue 16, item 2); one that waits (a password check in a thread) goes
        on as a task. Anything else starts in a task: it may need one (asyncio.timeout, as
        redis-py uses, refuses to run outside a task)."""
        self.waiting = True
        if self.backlog is None:
            self.backlog = []
            self.next_handlers = self.handlers
        self.handlers = _BLOCKED
        if not now:
            self.transport.pause_reading()
            self.loop.create_task(coro).add_done_callback(self._unblock)
            return
        try:
            waited = coro.send(None)
        except StopIteration:
            self._unblocked(None, paused=False)
            return
        except BaseException as exc:  # noqa: BLE001 (the task's way: logged, closed)
            self._unblocked(exc, paused=False)
            return
        self.transport.pause_reading()
        task = self.loop.create_task(_go_on(coro, waited))
        task.add_done_callback(self._unblock)

    def _defer(self, p: Any) -> None:
        self.backlog.append(p)  # type: ignore[union-attr]

    def _unblock(self, task: Any) -> None:
        self._unblocked(None if task.cancelled() else task.exception(), task.cancelled())

    def _unblocked(
        self, exc: BaseException | None, cancelled: bool = False, paused: bool = True
    ) -> None:
        self.waiting = False
        if cancelled or self.closing:
            self.backlog = None
            self.handlers = self.next_handlers
            return
        if exc is not None:
            self.backlog = None
            self.handlers = self.next_handlers
            log.error("closing %s: %s", self.client_id or self.peer, exc, exc_info=exc)
            self.close()
            return
        if not paused and not (self.backlog or self.throttled or self.yielding or self.held):
            # The step ran at once (_block): nothing arrived meanwhile and the socket was not
            # paused, so on as before; the rest of this read goes to the next handlers
            self.backlog = None
            self.handlers = self.next_handlers
            return
        self._go()

    def _release(self) -> None:
        """Dispatch the packets held while stopped, in order (:meth:`_dispatch`)."""
        backlog, self.backlog = self.backlog, None
        error, self.backlog_error = self.backlog_error, None
        self.deferred = 0
        self.handlers = self.next_handlers
        self.transport.resume_reading()
        self._dispatch(backlog or [], error)

    def _dispatch(self, packets: list, error: PacketError | None) -> None:
        """Each packet to the handler of the current state, in order, then the reader's error if
        any. Once stopped or held (by a handler, or out of turn: TURN_BUDGET), the rest goes
        through the table of that state, which keeps it, in order."""
        loop = self.loop
        deadline = loop.time() + TURN_BUDGET
        last = len(packets) - 1
        for i, packet in enumerate(packets):
            if self.closing:
                return
            self.handlers[packet.packet_type](self, packet)
            # The clock is read after the first packet and every 8th (95 ns a read: 3 % of a
            # fan-in's time if read after each), so an expensive packet is seen at once
            if (
                i < last
                and not i & 7
                and self.backlog is None
                and loop.time() >= deadline
                and not self.closing
            ):
                # Out of turn: the rest waits for the next loop iteration
                self._give_turn()
        if error is not None and not self.closing:
            if self.backlog is not None:
                self.backlog_error = error  # after the packets waiting before it
            else:
                self.protocol_error(error.reason_code, str(error))

    def pause_writing(self) -> None:
        if self.outlet is not None:
            self.outlet.paused = True

    def resume_writing(self) -> None:
        if self.outlet is not None:
            self.outlet.resume()

    def eof_received(self) -> None:
        """The peer closed its side: None, so the transport closes ours (asyncio's default; MQTT
        has no half-open connection)."""
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self.incoming:
            self._forget_incoming()
        broker = self.broker
        if self.timer is not None:
            broker.deadlines.discard(self, self.timer)
            self.timer = None
        broker.connections.discard(self)
        if self.counted_ip is not None:
            broker.clients -= 1
            left = broker.clients_per_ip.get(self.counted_ip, 1) - 1
            if left > 0:
                broker.clients_per_ip[self.counted_ip] = left
            else:
                broker.clients_per_ip.pop(self.counted_ip, None)
            self.counted_ip = None
            if self.listener is not None:
                self.listener.clients -= 1
        # A will still here means the connection ended without a DISCONNECT that discards it
        # [MQTT-3.1.2-8]; the broker publishes it (after its delay, if any).
        will, self.will = self.will, None
        session = self.session
        if session is not None:
            if log.isEnabledFor(logging.INFO):
                logs.info(
                    log,
                    "disconnected client %r, user %r from %s: %s",
                    self.client_id,
                    self.username,
                    _address(self.peer),
                    self.end_reason
                    or ("connection lost" if exc is None else f"connection lost ({exc})"),
                )
            broker.detach(session, self, will, self.will_delay)
            self.session = None
            for observer in broker.disconnect_observers:
                observer(self)
        elif will is not None:
            broker.publish(will)

    # -- output ----------------------------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        """The one way out: the session's Outlet once attached (coalesced with what the router
        writes), the link itself before (CONNACK refusals, AUTH challenges)."""
        outlet = self.outlet
        if outlet is not None and outlet.transport is self.transport:
            outlet.write(data)
        else:
            self.transport.write(data)

    # -- closing ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Flush what is queued for this client, then close the network connection."""
        if self.closing:
            return
        self.closing = True
        if self.outlet is not None and self.outlet.transport is self.transport:
            self.outlet.paused = False
            self.outlet.flush()
        if self.transport is not None:
            self.transport.close()

    def protocol_error(self, reason_code: int, why: str) -> None:
        """Close the connection for a protocol violation, telling an MQTT 5 client why."""
        self.end_reason = f"{why} [reason 0x{reason_code:02X}]"
        log.info(
            "closing %s (%s): %s [reason 0x%02X]",
            self.client_id or self.peer,
            self.version,
            why,
            reason_code,
        )
        if self.session is None:
            if reason_code == UNSUPPORTED_PROTOCOL_VERSION:
                # Unsupported protocol level: CONNACK 0x01 in 3.1.1 form, then close [MQTT-3.1.2-2]
                self._send(codec.encode_connack(False, _V3_CONNACK[reason_code], 4))
            elif self.version == 5 and reason_code >= 0x80:
                self._send(codec.encode_connack(False, reason_code, 5))
        elif self.version == 5:
            self._send(codec.encode_disconnect(reason_code, 5))
        self.close()

    def cut(self, reason_code: int, why: str) -> None:
        """Disconnect a client that has stopped reading (mqttd.flow): MQTT 5 is told why, after
        what it has not read yet; what stays unsent is given up after CUT_GRACE seconds rather
        than waiting for a reader that is not there."""
        if self.closing:
            return
        log.info("closing %s: %s [reason 0x%02X]", self.client_id or self.peer, why, reason_code)
        self.end_reason = f"{why} [reason 0x{reason_code:02X}]"
        self.closing = True
        self.was_cut = True
        transport = self.transport
        outlet = self.outlet
        if outlet is not None and outlet.transport is transport:
            # Offline from now on: nothing more is written for it
            outlet.transport = None
            outlet.buf = bytearray()
        if self.version == 5 and self.session is not None:
            transport.write(codec.encode_disconnect(reason_code, 5))
        transport.close()
        abort = getattr(transport, "abort", None)
        if abort is not None:
            self.loop.call_later(CUT_GRACE, abort)
        # Gone for the broker now, not when the transport gives up its unsent bytes: a clean
        # session ends, a persistent one goes offline (the later connection_lost finds nothing
        # left to do)
        self.connection_lost(None)

    def refuse(self, reason_code: int) -> None:
        """Answer CONNECT with a refusal and close [MQTT-3.2.2-6]."""
        refused = self.broker.refused
        refused[reason_code] = refused.get(reason_code, 0) + 1
        if self.version == 5:
            data = codec.encode_connack(False, reason_code, 5)
        else:
            data = codec.encode_connack(
                False, _V3_CONNACK.get(reason_code, CONNACK_SERVER_UNAVAILABLE), self.version
            )
        self._send(data)
        self.will = None
        self.close()

    def shutdown(self) -> None:
        """The broker is stopping: tell an MQTT 5 client (0x8B Server shutting down), close."""
        self.end_reason = "server shutting down"
        if self.version == 5 and self.session is not None:
            self._send(codec.encode_disconnect(SERVER_SHUTTING_DOWN, 5))
        self.close()

    def taken_over(self, resumed: bool) -> None:
        """Another connection took this client id over [MQTT-3.1.4-3]; ``resumed``: it carries
        on this connection's session (Clean Start 0 on a session that outlives its connection).

        MQTT 5: a resumed session cancels the will, even with a Will Delay Interval of 0 (the
        will is published unless "a new Network Connection for the ClientID is opened before
        the Will Delay Interval has elapsed" [MQTT-3.1.2-8]; Mosquitto reads it so too, and a
        takeover is a reconnect, not the client going away: docs/conformance.md). A session that
        ends here publishes its will now, whatever its delay (§3.1.3.2.2: "or the Session ends,
        whichever happens first"). MQTT 3.1.1 has no such exception: the will is published
        [MQTT-3.1.2-8].
        """
        if self.version == 5 and self.will is not None:
            if resumed:
                self.will = None
            else:
                self.will_delay = 0
        if not self.closing:
            self.end_reason = "taken over by a new connection with its client id"
        if self.version == 5 and self.outlet is not None and not self.closing:
            # (a connection already closing is told nothing: its session's buffer may be the
            # new connection's before this one is gone)
            self._send(codec.encode_disconnect(SESSION_TAKEN_OVER, 5))
        self.close()

    def deadline(self) -> None:
        """Its tick in broker.deadlines came: no CONNECT in time, or the keep-alive check."""
        self.timer = None
        if self.session is None:
            if not self.version:  # (else its CONNECT came and waits for the authentication)
                self._connect_timeout()
        elif self.keepalive and not self.closing:
            self._keepalive_check()

    def _connect_timeout(self) -> None:
        if self.session is None and not self.closing:
            log.info(
                "closing %s: no CONNECT within %g s", self.peer, self.broker.config.connect_timeout
            )
            self.close()

    def _keepalive_check(self) -> None:
        limit = self.keepalive * 1.5
        now = self.loop.time()
        if self.backlog is not None:
            # Not read by our choice (a full queue, the memory limit, the storage): its
            # PINGREQ may be waiting in the socket, so the wait does not count as idle
            self.last_rx = now
        idle = now - self.last_rx
        if idle >= limit:
            # Nothing for 1.5 x keepalive: close as if the network failed (3.1.1 [MQTT-3.1.2-24],
            # 5.0 [MQTT-3.1.2-22])
            self.end_reason = f"keepalive {self.keepalive} s expired"
            if self.version == 5:
                self._send(codec.encode_disconnect(KEEP_ALIVE_TIMEOUT, 5))
            self.close()
        else:
            self.timer = self.broker.deadlines.add(self, self.last_rx + limit)

    # -- packet handlers -------------------------------------------------------------------------
    def on_connect(self, p: Any) -> None:
        broker = self.broker
        cfg = broker.config
        # The CONNECT deadline stays: once the session is attached it is the first keep-alive
        # check, unless that is due sooner (_accept). A connect storm's CONNECT then costs no
        # discard and no add (issue 16); the check it makes later finds the client read from.
        v = self.version = p.protocol_level
        # Bit 7 of the level (Mosquitto's try_private): its subscriptions become No Local and
        # Retain As Published (_bridge_options) and it may publish its connection state into $SYS
        self.is_bridge = p.bridge
        props = p.properties
        if v == 5:
            if props.get(RECEIVE_MAXIMUM) == 0 or props.get(MAXIMUM_PACKET_SIZE) == 0:
                # Receive Maximum / Maximum Packet Size of 0 is a Protocol Error (§3.1.2.11)
                return self.protocol_error(PROTOCOL_ERROR, "zero receive/packet maximum")
            if AUTHENTICATION_DATA in props and AUTHENTICATION_METHOD not in props:
                # Authentication Data without a Method is a Protocol Error (§3.1.2.11.10)
                return self.protocol_error(PROTOCOL_ERROR, "authentication data, no method")
            if props.get(REQUEST_PROBLEM_INFORMATION, 1) not in (0, 1) or props.get(
                REQUEST_RESPONSE_INFORMATION, 0
            ) not in (0, 1):
                return self.protocol_error(PROTOCOL_ERROR, "request flag not 0 or 1")
            # 0: no Reason String / User Property except in PUBLISH, CONNACK, DISCONNECT
            # [MQTT-3.1.2-29]
            self.problem_info = props.get(REQUEST_PROBLEM_INFORMATION, 1) == 1

        client_id = p.client_id
        if not client_id:
            if v == 3 or (v == 4 and not p.clean_start):
                # 3.1.1: empty id needs CleanSession=1 [MQTT-3.1.3-8]; 3.1: id of 1..23 chars
                return self.refuse(CLIENT_IDENTIFIER_NOT_VALID)
            client_id = broker.assign_client_id()
            self.assigned_id = True
        elif v == 3 and len(client_id) > 23:
            return self.refuse(CLIENT_IDENTIFIER_NOT_VALID)
        self.client_id = client_id
        self.username = p.username
        self.password = p.password
        self.clean_start = p.clean_start

        self.keepalive = p.keepalive
        if cfg.max_keepalive and (p.keepalive == 0 or p.keepalive > cfg.max_keepalive):
            if v == 5:
                # The server's keepalive replaces the client's [MQTT-3.2.2-21]
                self.keepalive = self.server_keepalive = cfg.max_keepalive
            elif p.keepalive > cfg.max_keepalive:
                # 3.1.1 cannot be told another keepalive: refused, as Mosquitto does
                return self.refuse(CLIENT_IDENTIFIER_NOT_VALID)

        will = p.will
        if will is not None:
            if not match.validate_topic(will.topic):
                return self.protocol_error(TOPIC_NAME_INVALID, "invalid will topic")
            if _deeper_than(will.topic, cfg.max_topic_levels):
                return self.protocol_error(TOPIC_NAME_INVALID, "will topic over max_topic_levels")
            why = _bad_publish_properties(will.properties)
            if why:
                return self.protocol_error(PROTOCOL_ERROR, "will: " + why)
            if is_reserved_topic(will.topic) and not (p.bridge and _is_bridge_state(will.topic)):
                will = None  # a will into $SYS is dropped silently, as Mosquitto does
        if will is not None:
            self.will = broker.make_message(
                will.topic, will.payload, will.qos, will.retain, will.properties
            )
            self.will_delay = will.properties.get(WILL_DELAY_INTERVAL, 0) if v == 5 else 0

        ip = self.peer[0] if isinstance(self.peer, tuple) else str(self.peer or "")
        listener = self.listener
        if (
            (cfg.max_connections and broker.clients >= cfg.max_connections)
            or (
                cfg.max_connections_per_ip
                and broker.clients_per_ip.get(ip, 0) >= cfg.max_connections_per_ip
            )
            or (
                listener is not None
                and listener.config.max_connections
                and listener.clients >= listener.config.max_connections
            )
        ):
            log.info("refusing %s from %s: connection limit", client_id, ip)
            return self.refuse(QUOTA_EXCEEDED)  # 3.1.1: 0x03 Server unavailable
        self.counted_ip = ip
        broker.clients += 1
        broker.clients_per_ip[ip] = broker.clients_per_ip.get(ip, 0) + 1
        if listener is not None:
            listener.clients += 1

        self.connect_packet = p
        if v == 5 and AUTHENTICATION_METHOD in props:
            method = props[AUTHENTICATION_METHOD]
            authenticator = broker.authenticators.get(method)
            if authenticator is None:
                # A method we do not know (MQTT 5 §4.12)
                return self.refuse(BAD_AUTHENTICATION_METHOD)
            self.auth_method = method
            self.authenticator = authenticator
            self.handlers = _AUTHENTICATING
            rc, data = authenticator.start(self, props.get(AUTHENTICATION_DATA))
            return self._auth_result(rc, data)
        self._block(self._accept(), broker.instant and broker.authenticate is None)

    def _authorized(self, security: Any) -> bool:
        """After authentication: the client's ACL rights, its will allowed by them, its client id
        not another user's session; False (and refused) otherwise."""
        rights = self.rights = security.rights(self.username, self.client_id)
        will = self.will
        if rights is not None and will is not None and not rights.may_write(will.topic):
            # Its will could never be published: refused at CONNECT, as Mosquitto does
            return self._refuse_logged(
                NOT_AUTHORIZED, f"may not publish its will to {will.topic!r}"
            )
        broker = self.broker
        if broker.config.session_owner_check and security.authenticates:
            found, owner = broker.session_owner(self.client_id)
            if found and owner != self.username:
                # Taking it over would hand this user another user's subscriptions and queued
                # messages (session_owner_check; Mosquitto lets any client)
                return self._refuse_logged(
                    NOT_AUTHORIZED, "its client id is another user's session"
                )
        return True

    def _refuse_logged(self, reason_code: int, why: str) -> bool:
        log.info(
            "refusing client %r, user %r from %s: %s",
            self.client_id,
            self.username,
            _address(self.peer),
            why,
        )
        self.refuse(reason_code)
        return False

    async def _accept(self, auth_data: bytes | None = None) -> None:
        """CONNECT accepted (and authenticated): attach the session, send CONNACK."""
        broker = self.broker
        cfg = broker.config
        p = self.connect_packet
        self.connect_packet = None
        v = self.version
        props = p.properties
        if v == 5:
            session_expiry = props.get(SESSION_EXPIRY_INTERVAL, 0)
        else:
            # 3.1.1 persistent session: lives until a clean start
            session_expiry = 0 if p.clean_start else 0xFFFFFFFF
        listener = self.listener
        # The listener's own users and rules, else the node's (password file, certificate
        # identity, allow_anonymous: mqttd.security)
        own = listener.security if listener is not None else None
        security = own if own is not None else broker.security
        if security is not None:
            rc = await security.authenticate(self, p.username, p.password)
            if self.closing:
                return
            if rc >= 0x80:
                return self.refuse(rc)  # logged by security, with the address
        if broker.authenticate is not None:
            rc = broker.authenticate(self, self.username, p.password)
            if inspect.isawaitable(rc):
                rc = await rc
            if self.closing:
                return
            if rc >= 0x80:
                # 3.1.1: 0x04 Bad user name or password / 0x05 Not authorized [MQTT-3.2.2-6]
                self._refuse_logged(rc, f"authentication hook (reason 0x{rc:02X})")
                return
        if security is not None and not self._authorized(security):
            return
        session, present = await broker.open_session(self, self.client_id, p.clean_start, v)
        if self.closing:
            # The client went away while the storage answered
            broker.detach(session, self)
            return
        session.expiry_interval = session_expiry
        if session_expiry:
            broker.peers.mark_session(self.client_id)  # other nodes find it here
        if self.will is not None:
            # published by another node if this one dies (mqttd.redis.sessions)
            broker.peers.will_armed(self.client_id, self.will, self.will_delay)
            self.will_shared = broker.peers.remote
        self.session = session
        session.owner = self.username
        session.security = own
        outlet = self.outlet = session.outlet
        outlet.readable = None if self.rights is None else self.rights.may_read
        if outlet.buf:
            # Written for the connection this one took over after it closed: CONNACK comes
            # first [MQTT-3.2.0-1] (what was in flight is resent below, with DUP)
            outlet.buf = bytearray()
        outlet.transport = self.transport
        outlet.paused = False
        # A queue filled while offline does not count as full since then (docs/flow-control.md)
        outlet.full_since = -1.0
        outlet.slow = False
        outlet.inflight_max = min(cfg.max_inflight, props.get(RECEIVE_MAXIMUM, 65535))
        outlet.max_packet = props.get(MAXIMUM_PACKET_SIZE, 0)
        # Aliases are per network connection [MQTT-3.3.2-7]
        outlet.alias_max = props.get(TOPIC_ALIAS_MAXIMUM, 0)
        outlet.aliases = None  # (made by its first aliased message)
        self.next_handlers = _CONNECTED

        ack_props: dict[int, Any] | None = None
        if v == 5:
            # Only what differs from the defaults (§3.2.2.3): Maximum QoS is absent (we do 2),
            # Wildcard, Subscription Identifier and Shared Subscription Available default to 1.
            ack_props = {MAXIMUM_PACKET_SIZE: cfg.max_packet_size}
            if cfg.receive_maximum < 65535:
                ack_props[RECEIVE_MAXIMUM] = cfg.receive_maximum
            if cfg.topic_alias_maximum:
                ack_props[TOPIC_ALIAS_MAXIMUM] = cfg.topic_alias_maximum
            if not cfg.retain_available:
                ack_props[RETAIN_AVAILABLE] = 0
            if self.assigned_id:
                ack_props[ASSIGNED_CLIENT_IDENTIFIER] = self.client_id
            if self.server_keepalive is not None:
                ack_props[SERVER_KEEP_ALIVE] = self.server_keepalive
            if props.get(REQUEST_RESPONSE_INFORMATION) == 1 and cfg.response_information:
                ack_props[RESPONSE_INFORMATION] = cfg.response_information
            if self.auth_method is not None:
                ack_props[AUTHENTICATION_METHOD] = self.auth_method
                if auth_data is not None:
                    ack_props[AUTHENTICATION_DATA] = auth_data
        outlet.write(codec.encode_connack(present, 0, v, ack_props))
        if log.isEnabledFor(logging.INFO):  # (the address is formatted only when logged)
            logs.info(
                log,
                "connected client %r, user %r from %s: MQTT %s, keepalive %d, clean start %s%s",
                self.client_id,
                self.username,
                _address(self.peer),
                {3: "3.1", 4: "3.1.1", 5: "5.0"}.get(v, v),
                self.keepalive,
                "yes" if p.clean_start else "no",
                ", session resumed" if present else "",
            )
        if self.keepalive:
            due = self.last_rx + self.keepalive * 1.5
            timer = self.timer  # the CONNECT deadline, if it has not come (see on_connect)
            if timer is None or timer > broker.deadlines.tick(due):
                if timer is not None:
                    broker.deadlines.discard(self, timer)
                self.timer = broker.deadlines.add(self, due)
        if present:
            # Resume: unacknowledged messages again, with DUP, in order, then the queue
            outlet.resend_inflight()
            outlet.drain_queue()
        for observer in broker.connect_observers:
            observer(self)
        log.debug(
            "connected %s (level %d, clean=%s, present=%s)",
            self.client_id,
            v,
            p.clean_start,
            present,
        )

    def _auth_result(self, rc: int, data: bytes | None) -> None:
        """Act on an authenticator's answer, while connecting or re-authenticating."""
        connecting = self.session is None
        if rc == auth.SUCCESS:
            if connecting:
                return self._block(self._accept(data))
            props: dict[int, Any] = {AUTHENTICATION_METHOD: self.auth_method}
            if data is not None:
                props[AUTHENTICATION_DATA] = data
            self._send(codec.encode_auth(auth.SUCCESS, props))
        elif rc == auth.CONTINUE:
            props = {AUTHENTICATION_METHOD: self.auth_method}  # type: ignore[no-redef]
            if data is not None:
                props[AUTHENTICATION_DATA] = data
            data_out = codec.encode_auth(auth.CONTINUE, props)
            self._send(data_out)
        elif connecting:
            self.refuse(rc if rc >= 0x80 else NOT_AUTHORIZED)
        else:
            # Re-authentication failed: DISCONNECT with the reason [MQTT-4.12.1-2]
            self.protocol_error(rc if rc >= 0x80 else NOT_AUTHORIZED, "re-authentication")

    def on_auth(self, p: Any) -> None:
        if self.authenticator is None:
            # AUTH without an Authentication Method in CONNECT is a Protocol Error
            # [MQTT-4.12.0-1]
            return self.protocol_error(PROTOCOL_ERROR, "AUTH without authentication method")
        if p.properties.get(AUTHENTICATION_METHOD) != self.auth_method:
            # The method must stay the one named in CONNECT [MQTT-4.12.0-5]
            return self.protocol_error(PROTOCOL_ERROR, "AUTH with another method")
        data = p.properties.get(AUTHENTICATION_DATA)
        if p.reason_code == auth.CONTINUE:
            rc, out = self.authenticator.step(self, data)
        elif p.reason_code == RE_AUTHENTICATE and self.session is not None:
            rc, out = self.authenticator.start(self, data)
        else:
            return self.protocol_error(PROTOCOL_ERROR, f"AUTH reason {p.reason_code:#x}")
        self._auth_result(rc, out)

    def on_second_connect(self, p: Any) -> None:
        # A second CONNECT is a Protocol Violation [MQTT-3.1.0-2]
        self.protocol_error(PROTOCOL_ERROR, "second CONNECT")

    def on_not_connected(self, p: Any) -> None:
        # The first packet from a client must be CONNECT [MQTT-3.1.0-1]
        log.info("closing %s: first packet is type %d, not CONNECT", self.peer, p.packet_type)
        self.close()

    def on_unexpected(self, p: Any) -> None:
        # A packet only a server sends (CONNACK, SUBACK, UNSUBACK, PINGRESP), or AUTH with no
        # authentication method in use (MQTT 5 §4.12): a Protocol Error.
        self.protocol_error(PROTOCOL_ERROR, f"unexpected packet type {p.packet_type}")

    def on_publish(self, p: Any) -> None:
        broker = self.broker
        topic = p.topic
        v = self.version
        props = p.properties
        if props:
            why = _bad_publish_properties(props)
            if why:
                return self.protocol_error(PROTOCOL_ERROR, why)
        if props and TOPIC_ALIAS in props:
            alias = props[TOPIC_ALIAS]
            if alias == 0 or alias > broker.config.topic_alias_maximum:
                # 0, or above the maximum we announced [MQTT-3.3.2-8][MQTT-3.3.2-9]
                return self.protocol_error(TOPIC_ALIAS_INVALID, f"topic alias {alias}")
            if topic:
                if match.validate_topic(topic):
                    if self.aliases is None:
                        self.aliases = {}
                    self.aliases[alias] = topic
            else:
                topic = self.aliases.get(alias) if self.aliases is not None else None
                if topic is None:
                    # An empty topic with an alias nobody set (§3.3.2.3.4)
                    return self.protocol_error(PROTOCOL_ERROR, f"unknown topic alias {alias}")
        elif not topic and v == 5:
            # A zero-length topic needs a Topic Alias (§3.3.2.1)
            return self.protocol_error(PROTOCOL_ERROR, "empty topic without alias")
        if not match.validate_topic(topic):
            # Topic names must not contain wildcards [MQTT-3.3.2-2] nor be empty [MQTT-4.7.3-1]
            return self.protocol_error(TOPIC_NAME_INVALID, f"invalid topic name {topic!r}")
        levels = broker.config.max_topic_levels
        if len(topic) >= levels and topic.count("/") >= levels:  # _deeper_than, inline: per PUBLISH
            # Valid MQTT, but deeper than this broker takes (max_topic_levels; as Mosquitto)
            return self.protocol_error(TOPIC_NAME_INVALID, "topic over max_topic_levels")
        qos = p.qos
        session = self.session
        if qos == 2:
            pid = p.packet_id
            if pid in session.awaiting_rel:  # type: ignore[union-attr]
                # A repeat before PUBREL is not delivered again [MQTT-4.3.3-10]
                self.outlet.write(codec.encode_ack(PUBREC, pid, v))
                return
            if len(session.awaiting_rel) >= broker.config.receive_maximum:  # type: ignore[union-attr]
                return self.protocol_error(RECEIVE_MAXIMUM_EXCEEDED, "receive maximum")
        if p.retain and not broker.config.retain_available:
            return self.protocol_error(RETAIN_NOT_SUPPORTED, "retain not supported")
        if props:
            msg = broker.make_message(topic, p.payload, qos, p.retain, props)
        else:
            msg = route.Message(topic, p.payload, qos, p.retain)
        broker.stats["messages_received"] += 1
        broker.received_qos[qos] += 1
        broker.received_payload_bytes[qos] += len(p.payload)
        if broker.config.max_messages_per_second:
            self._spend_token(broker.config.max_messages_per_second)
        rc: Any = 0
        if (
            topic[0] == "$"
            and is_reserved_topic(topic)
            and not (self.is_bridge and _is_bridge_state(topic))
        ):
            # $SYS belongs to the broker: not routed; MQTT 5 is told 0x87, as Mosquitto does.
            # A bridge's own connection state is the exception (_is_bridge_state).
            rc = NOT_AUTHORIZED
        elif self.rights is not None and not self.rights.may_write(topic):
            # The ACL (mqttd.acl): MQTT 5 is told 0x87 in PUBACK/PUBREC; 3.1.1 has no way to say
            # it, the message is acknowledged and dropped, as Mosquitto does
            log.debug("%s may not publish to %r (ACL)", self.client_id, topic)
            rc = NOT_AUTHORIZED
        elif broker.authorize_publish is not None:
            rc = broker.authorize_publish(self, msg, p.packet_id)
            if rc.__class__ is not int:
                if inspect.isawaitable(rc):
                    # Its packets wait, in order, for the decision
                    return self._block(self._publish_when(rc, msg, p))
                msg, rc = rc, 0  # a replacement message
        self._publish_decided(msg, p, rc)

    async def _publish_when(self, pending: Any, msg: Any, p: Any) -> None:
        rc = await pending
        if self.closing:
            return
        if rc.__class__ is not int:
            msg, rc = rc, 0
        self._publish_decided(msg, p, rc)

    def _publish_decided(self, msg: Any, p: Any, rc: int) -> None:
        broker = self.broker
        qos = p.qos
        v = self.version
        if rc < 0x80:
            broker.publish(msg, self.outlet)
            flusher = broker.flusher
            if flusher.pressure or flusher.over:
                # Subscribers cannot take more, or the node holds too much: this publisher is
                # not read until they drain (docs/flow-control.md); this message is taken
                self._hold()
            for observer in broker.publish_observers:
                observer(self, msg, p.packet_id)
        if qos == 1:
            self.outlet.write(codec.encode_ack(PUBACK, p.packet_id, v, rc if v == 5 else 0))
        elif qos == 2:
            if rc < 0x80:
                self.session.release_later(p.packet_id)  # type: ignore[union-attr]
            self.outlet.write(codec.encode_ack(PUBREC, p.packet_id, v, rc if v == 5 else 0))

    # The acknowledgement state of outgoing QoS 1/2 is the Outlet's (route.Inflight): it
    # applies each acknowledgement and says what, if anything, to answer.
    def on_puback(self, p: Any) -> None:
        self.outlet.puback(p.packet_id)

    def on_pubrec(self, p: Any) -> None:
        pid = p.packet_id
        rc = self.outlet.pubrec(pid, p.reason_code)
        if rc != route.NO_PUBREL:
            self._send(codec.encode_ack(PUBREL, pid, self.version, rc))

    def on_pubrel(self, p: Any) -> None:
        pid = p.packet_id
        session = self.session
        # PUBCOMP 0x00 even for an id with no state left: that is a PUBREL resent after a
        # reconnect for a message already released, which is no error (MQTT 5 §4.3.3; 0x92 is
        # allowed too, but paho reports it to on_publish as a failure). Mosquitto answers so.
        if pid in session.awaiting_rel:  # type: ignore[union-attr]
            session.awaiting_rel.remove(pid)  # type: ignore[union-attr]
        self.outlet.write(codec.encode_ack(PUBCOMP, pid, self.version))

    def on_pubcomp(self, p: Any) -> None:
        self.outlet.pubcomp(p.packet_id)

    def on_subscribe(self, p: Any) -> None:
        if self.is_bridge:
            _bridge_options(p)
        broker = self.broker
        v = self.version
        sid = 0
        if v == 5:
            ids = p.properties.get(SUBSCRIPTION_IDENTIFIER)
            if ids:
                sid = ids[0]
                if sid == 0:
                    # A Subscription Identifier of 0 is a Protocol Error (§3.8.2.1.2)
                    return self.protocol_error(PROTOCOL_ERROR, "subscription identifier 0")
        for filt, _ in p.subscriptions:
            if not match.validate_filter(filt):
                return self._bad_filter(filt)
        hook = broker.authorize_subscribe
        if hook is None:
            return self._subscribe(p, sid, None)
        decisions: list[Any] = []
        waits = False
        for filt, opts in p.subscriptions:
            d = hook(self, filt, opts & 0x03)
            waits = waits or d.__class__ is not int
            decisions.append(d)
        if waits:
            return self._block(self._subscribe_when(p, sid, decisions))
        self._subscribe(p, sid, decisions)

    async def _subscribe_when(self, p: Any, sid: int, decisions: list[Any]) -> None:
        for i, d in enumerate(decisions):
            if inspect.isawaitable(d):
                decisions[i] = await d
        if not self.closing:
            self._subscribe(p, sid, decisions)

    def _subscribe(self, p: Any, sid: int, decisions: list[int] | None) -> None:
        broker = self.broker
        session = self.session
        v = self.version
        limit = broker.config.max_subscriptions_per_minute
        codes = []
        retained: list[tuple[Any, int]] = []
        later: list[tuple[str, int]] = []
        accepted: list[tuple[str, int]] = []
        for i, (filt, opts) in enumerate(p.subscriptions):
            shared = match.parse_shared(filt)
            if shared is not None and opts & route.OPT_NO_LOCAL:
                # No Local on a Shared Subscription is a Protocol Error [MQTT-3.8.3-4]
                return self.protocol_error(PROTOCOL_ERROR, "No Local on a shared subscription")
            granted = opts & 0x03
            inner = filt if shared is None else shared[1]
            if _deeper_than(inner, broker.config.max_topic_levels):
                codes.append(TOPIC_FILTER_INVALID if v == 5 else SUBACK_FAILURE)
                continue
            if self.rights is not None and not self.rights.may_subscribe(inner):
                # The ACL lets nothing this filter matches be read (mqttd.acl)
                codes.append(NOT_AUTHORIZED if v == 5 else SUBACK_FAILURE)
                continue
            if decisions is not None:
                d = decisions[i]
                if d >= 0x80:
                    codes.append(d if v == 5 else SUBACK_FAILURE)  # 3.1.1 has only 0x80
                    continue
                if d < granted:
                    granted = d
                    opts = (opts & ~0x03) | granted
            if limit:
                if not self._subscription_allowed(limit):
                    codes.append(QUOTA_EXCEEDED if v == 5 else SUBACK_FAILURE)
                    continue
            # The identifier rides in the stored value, replaced with the subscription
            # [MQTT-3.8.4-3]
            new = broker.subscribe(session, filt, opts | (sid << 8))  # type: ignore[arg-type]
            codes.append(granted)
            accepted.append((filt, granted))
            retain_handling = (opts >> 4) & 0x03
            # Retained messages for a new subscription (Retain Handling 0, or 1 when new); none
            # for shared subscriptions (MQTT 5 §4.8.2)
            if shared is None and (retain_handling == 0 or (retain_handling == 1 and new)):
                found = broker.retained_matching(filt)
                if found is None:
                    # The store has to be asked: they follow when it answers
                    later.append((filt, granted))
                    continue
                readable = self.outlet.readable
                for msg in found:
                    if readable is None or readable(msg.topic):
                        retained.append((msg.with_ids((sid,)) if sid else msg, granted))
        ack_props = None
        if v == 5 and self.problem_info and any(c >= 0x80 for c in codes):
            ack_props = {REASON_STRING: _suback_reason(codes)}
        suback = codec.encode_suback(p.packet_id, codes, v, ack_props)
        if accepted:
            # A filter new to this node is subscribed on Redis now: the SUBACK waits for Redis
            # to confirm, so that what another node publishes after it reaches this client.
            routed = broker.routes_ready([f for f, _ in accepted])
            if routed is not None:
                tail = (suback, retained, later, sid, accepted)
                return self._block(self._subscribed_when_routed(routed, tail))
        self._subscribed(suback, retained, later, sid, accepted)

    async def _subscribed_when_routed(self, routed: Any, tail: tuple) -> None:
        await routed
        if not self.closing:
            self._subscribed(*tail)

    def _subscribed(
        self,
        suback: bytes,
        retained: list[tuple[Any, int]],
        later: list[tuple[str, int]],
        sid: int,
        accepted: list[tuple[str, int]],
    ) -> None:
        outlet = self.outlet
        outlet.write(suback)
        for msg, granted in retained:
            # Sent with RETAIN=1 to a new subscription [MQTT-3.3.1-8]
            outlet.send(msg, min(msg.qos, granted), True)
        if later:
            self.loop.create_task(self._send_retained(later, sid))
        for observer in self.broker.subscribe_observers:
            for filt, granted in accepted:
                observer(self, filt, granted)

    def _subscription_allowed(self, limit: int) -> bool:
        """max_subscriptions_per_minute, over a sliding minute."""
        times = self.sub_times
        if times is None:
            times = self.sub_times = deque()
        now = self.loop.time()
        while times and now - times[0] >= 60.0:
            times.popleft()
        if len(times) >= limit:
            return False
        times.append(now)
        return True

    async def _send_retained(self, filters: list[tuple[str, int]], sid: int) -> None:
        outlet = self.outlet
        for filt, granted in filters:
            for msg in await self.broker.fetch_retained(filt):
                if self.closing:
                    return
                if outlet.readable is not None and not outlet.readable(msg.topic):
                    continue  # the ACL (mqttd.acl)
                outlet.send(msg.with_ids((sid,)) if sid else msg, min(msg.qos, granted), True)

    def on_unsubscribe(self, p: Any) -> None:
        for filt in p.filters:
            if not match.validate_filter(filt):
                return self._bad_filter(filt)
        codes = []
        for filt in p.filters:
            existed = self.broker.unsubscribe(self.session, filt)  # type: ignore[arg-type]
            codes.append(NORMAL_DISCONNECTION if existed else NO_SUBSCRIPTION_EXISTED)
        # UNSUBACK, even when nothing was subscribed [MQTT-3.10.4-5]
        self.outlet.write(codec.encode_unsuback(p.packet_id, codes, self.version))

    def _bad_filter(self, filt: str) -> None:
        """A SUBSCRIBE or UNSUBSCRIBE with a filter that breaks the rules of §4.7 (``#`` not
        last or not alone in its level, ``+`` not alone [MQTT-4.7.1-1], empty [MQTT-4.7.3-1], a
        bad ``$share/`` form [MQTT-4.8.2-1/2]) is malformed: the connection is closed
        [MQTT-4.8.0-1] (MQTT 5: DISCONNECT 0x81 first [MQTT-4.13.1-1]), as Mosquitto does. The
        whole packet is refused, none of its other filters applied. 0x8F in a SUBACK stays for
        well-formed filters that are not allowed."""
        self.protocol_error(MALFORMED_PACKET, f"invalid topic filter {filt!r}")

    def on_pingreq(self, p: Any) -> None:
        self.outlet.write(PINGRESP)  # [MQTT-3.12.4-1]

    def on_disconnect(self, p: Any) -> None:
        if self.version == 5:
            expiry = p.properties.get(SESSION_EXPIRY_INTERVAL)
            session = self.session
            if expiry is not None and session is not None:
                if session.expiry_interval == 0 and expiry != 0:
                    # Non-zero expiry after connecting with zero is a Protocol Error (§3.14.2.2.2)
                    return self.protocol_error(PROTOCOL_ERROR, "session expiry raised")
                session.expiry_interval = expiry
            if p.reason_code == DISCONNECT_WITH_WILL_MESSAGE:
                self.end_reason = "DISCONNECT with will"
                self.close()  # the will stays and is published in connection_lost
                return
        # A normal DISCONNECT discards the will [MQTT-3.1.2-10][MQTT-3.14.4-3]
        self.will = None
        self.end_reason = "DISCONNECT"
        self.close()


def _deeper_than(text: str, levels: int) -> bool:
    """True when a topic name or filter has more than ``levels`` levels (max_topic_levels); one
    shorter than that cannot have, and is not counted."""
    return len(text) >= levels and text.count("/") >= levels


def _address(peer: Any) -> str:
    """A peer address for the log: host:port, or the Unix socket's."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return str(peer) if peer else "a Unix socket"


def _suback_reason(codes: list[int]) -> str:
    reasons = {
        TOPIC_FILTER_INVALID: "invalid topic filter",
        QUOTA_EXCEEDED: "subscription rate limit",
        NOT_AUTHORIZED: "not authorized",
    }
    return ", ".join(sorted({reasons.get(c, "refused") for c in codes if c >= 0x80}))


def _bad_publish_properties(props: dict) -> str:
    """Why the properties of a client's PUBLISH (or will) break the rules, or ''."""
    if SUBSCRIPTION_IDENTIFIER in props:
        # A client's PUBLISH must not carry a Subscription Identifier [MQTT-3.3.4-6]
        return "subscription identifier in PUBLISH"
    if props.get(PAYLOAD_FORMAT_INDICATOR, 0) not in (0, 1):
        # Only 0 (bytes) and 1 (UTF-8) are defined (§3.3.2.3.2)
        return "payload format indicator not 0 or 1"
    response_topic = props.get(RESPONSE_TOPIC)
    if response_topic is not None and not match.validate_topic(response_topic):
        # The Response Topic is a Topic Name: no wildcards [MQTT-3.3.2-14]
        return "response topic is not a valid topic name"
    return ""


def _is_bridge_state(topic: str) -> bool:
    """``$SYS/broker/connection/+/state``: where a Mosquitto bridge publishes its connection
    state, retained "1" once connected, and leaves its will, retained "0" (mosquitto.conf(5),
    ``notifications``). The one ``$SYS`` topic a bridge may publish to, so that subscribers
    here see whether it is up, as they would on Mosquitto."""
    parts = topic.split("/")
    return (
        len(parts) == 5
        and parts[0] == "$SYS"
        and parts[1] == "broker"
        and parts[2] == "connection"
        and parts[4] == "state"
    )


def _bridge_options(p: Any) -> None:
    """A bridge's subscriptions get No Local and Retain As Published, what its level bit asks
    (MQTT 3.1 / 3.1.1 have no subscription options to say it) and what Mosquitto grants a bridge
    (handle_subscribe.c, ``is_bridge``): what the bridge forwards here is not sent back to it
    (else every message bridged in would return to the other broker as a second copy), and
    retained messages keep their flag across. A shared subscription keeps its options: No Local
    there is a Protocol Error [MQTT-3.8.3-4] and has no meaning."""
    both = route.OPT_NO_LOCAL | route.OPT_RETAIN_AS_PUBLISHED
    p.subscriptions = [
        (filt, opts if filt.startswith("$share/") else opts | both)
        for filt, opts in p.subscriptions
    ]


def _table(connected: bool) -> tuple:
    c = Connection
    unexpected = c.on_unexpected
    if not connected:
        return (c.on_not_connected, c.on_connect) + (c.on_not_connected,) * 14
    return (
        unexpected,  # 0 reserved (the reader refuses it)
        c.on_second_connect,  # 1 CONNECT
        unexpected,  # 2 CONNACK
        c.on_publish,  # 3
        c.on_puback,  # 4
        c.on_pubrec,  # 5
        c.on_pubrel,  # 6
        c.on_pubcomp,  # 7
        c.on_subscribe,  # 8
        unexpected,  # 9 SUBACK
        c.on_unsubscribe,  # 10
        unexpected,  # 11 UNSUBACK
        c.on_pingreq,  # 12
        unexpected,  # 13 PINGRESP
        c.on_disconnect,  # 14
        c.on_auth,  # 15 AUTH (the reader refuses it below MQTT 5)
    )


_PRE_CONNECT = _table(False)
_CONNECTED = _table(True)
# While the CONNECT's authentication runs only AUTH (and DISCONNECT) may come (§4.12)
# While a step waits for the storage, packets are held in order (Connection._block)
_BLOCKED = (Connection._defer,) * 16
# While the queues a client published into are full (Connection._hold): what it owes for the
# messages sent to it, and PINGREQ, are handled; everything else waits, in order
_READ_WHILE_HELD = frozenset((4, 5, 7, 12))  # PUBACK, PUBREC, PUBCOMP, PINGREQ
_HELD = tuple(_CONNECTED[t] if t in _READ_WHILE_HELD else Connection._defer_held for t in range(16))
_AUTHENTICATING = tuple(
    Connection.on_auth
    if t == 15
    else Connection.on_disconnect
    if t == 14
    else Connection.on_unexpected
    for t in range(16)
)
