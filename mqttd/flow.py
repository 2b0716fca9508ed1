"""Flow control over time: the clock of the outlets' limits, the publishers held back, the node's
memory limit and the log of dropped messages (docs/flow-control.md).

The per-message work is the outlets' (:class:`mqttd.route.Outlet`: the window, the queue and its
limits, the buffer of a paused transport); it needs no clock but a coarse one,
``Flusher.now``, which this module's tick sets every :data:`TICK` seconds. The tick also

- ends the wait of publishers held by a queue that stayed full for ``slow_subscriber_timeout``
  seconds: that session is *slow* and drops its oldest messages instead (counted);
- adds up what the node holds for its clients (queued and in-flight messages, buffers of paused
  transports, partly received packets) and, above ``memory_limit``, stops reading from every
  publisher until the total is back under 90 % of it; held longer than the slow-subscriber
  timeout, the largest queues are cut (oldest messages first, counted as ``memory``);
- writes one log line per session at most every :data:`LOG_EVERY` seconds about the messages
  it dropped, by reason.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from mqttd._speedups import route
from mqttd.constants import QUOTA_EXCEEDED

if TYPE_CHECKING:
    from mqttd.broker import Broker
    from mqttd.connection import Connection

log = logging.getLogger("mqttd")

#: seconds between two ticks: the resolution of the slow-subscriber timeout
TICK = 0.25
#: seconds between two log lines about one session's dropped messages
LOG_EVERY = 60.0
#: the node reads from publishers again once what it holds is under this share of memory_limit
RESUME_SHARE = 0.9


class FlowControl:
    """The flow-control state of one broker that changes with time (see the module's text)."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        #: outlets whose full queue holds publishers back (they have waiters)
        self.congested: set[Any] = set()
        #: publishers held by the node's memory limit
        self.node_waiters: list[Connection] = []
        self.over_since = -1.0
        self.handle: Any = None
        self.running = False
        #: totals for $SYS: publishers held (by a queue or by the memory limit), and the bytes
        #: the node held at the last tick
        self.holds = 0
        self.memory = 0
        self.cuts = 0  # subscribers disconnected for making no progress

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        broker = self.broker
        loop = broker.loop
        assert loop is not None and broker.flusher is not None, "attach the broker first"
        flusher = broker.flusher
        flusher.now = loop.time()
        flusher.slow_timeout = broker.config.slow_subscriber_timeout
        self.running = True
        self.ensure()

    def ensure(self) -> None:
        """Tick while there is something to watch: connections, held publishers, drops not yet
        logged (a node without clients does not wake up four times a second)."""
        if self.handle is None and self.running:
            loop = self.broker.loop
            assert loop is not None
            self.broker.flusher.now = loop.time()
            self.handle = loop.call_later(TICK, self._tick)

    def stop(self) -> None:
        self.running = False
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        self.release_all()

    def release_all(self) -> None:
        """Every held publisher is read again (the broker stops)."""
        for outlet in self.congested:
            outlet.wake()
        self.congested.clear()
        self._wake_node()

    def figures(self) -> dict[str, Any]:
        """What $SYS and the metrics show: drops by reason, publishers held now and in all,
        slow sessions, bytes held in queues and windows."""
        broker = self.broker
        flusher = broker.flusher
        held_now = len(self.node_waiters) + sum(len(o.waiters or ()) for o in self.congested)
        slow = sum(1 for s in broker.sessions.values() if s.outlet.slow)
        return {
            "dropped": dict(flusher.drops) if flusher is not None else {},
            "publishers_held": held_now,
            "holds": self.holds,
            "slow_clients_disconnected": self.cuts,
            "slow_sessions": slow,
            "bytes_held": flusher.held if flusher is not None else 0,
            "over_memory_limit": bool(flusher is not None and flusher.over),
        }

    # -- holding publishers ----------------------------------------------------------------------
    def hold(self, conn: Connection, outlets: list[Any]) -> int:
        """``conn`` published into ``outlets`` beyond their queue's limits (Flusher.pressure):
        it waits for each that is still full and holds publishers back. Returns how many."""
        n = 0
        for outlet in outlets:
            if outlet.full_since < 0.0 or outlet.slow or outlet.transport is None:
                continue
            waiters = outlet.waiters
            if waiters is None:
                waiters = outlet.waiters = []
            elif conn in waiters:
                continue
            waiters.append(conn)
            self.congested.add(outlet)
            n += 1
        self.holds += n
        if n:
            self.ensure()
        return n

    def hold_node(self, conn: Connection) -> None:
        """``conn`` published while the node is above its memory limit: it waits for the node."""
        self.node_waiters.append(conn)
        self.holds += 1
        self.ensure()

    def _wake_node(self) -> None:
        waiters, self.node_waiters = self.node_waiters, []
        for conn in waiters:
            conn.unhold()

    # -- the tick --------------------------------------------------------------------------------
    def _tick(self) -> None:
        broker = self.broker
        loop = broker.loop
        assert loop is not None
        self.handle = None
        try:
            self.tick(loop.time())
        except Exception:
            log.exception("flow control tick failed")
        flusher = broker.flusher
        if broker.connections or self.congested or self.node_waiters or flusher.dropping:
            self.handle = loop.call_later(TICK, self._tick)

    def tick(self, now: float) -> None:
        flusher = self.broker.flusher
        assert flusher is not None
        flusher.now = now
        timeout = flusher.slow_timeout
        if self.congested:
            for outlet in list(self.congested):
                if outlet.waiters is None:
                    self.congested.discard(outlet)
                elif outlet.transport is None or outlet.slow or outlet.full_since < 0.0:
                    outlet.wake()
                    self.congested.discard(outlet)
                else:
                    why = outlet.overdue(now)
                    if why:
                        outlet.become_slow()
                        self.congested.discard(outlet)
                        if why == route.STALLED:
                            flusher.stalled.append(outlet)
                        else:
                            log.info(
                                "%s: queue full for %.1f s though it reads: slow, its oldest "
                                "messages are dropped",
                                _name(outlet),
                                now - outlet.full_since,
                            )
        if flusher.stalled:
            stalled, flusher.stalled = flusher.stalled, []
            for outlet in stalled:
                self._cut(outlet, now)
        limit = self.broker.config.memory_limit
        if limit:
            self._memory(now, limit, timeout)
        if flusher.dropping:
            self._log_drops(now)

    def _cut(self, outlet: Any, now: float) -> None:
        """A subscriber that made no progress for the timeout with its queue full: its client
        is disconnected (MQTT 5: DISCONNECT 0x97 Quota exceeded), so that it costs the fan-out
        nothing any more. A persistent session stays, with its queue; a clean one ends and its
        messages are counted as dropped (``slow_client``)."""
        session = outlet.session
        conn = session.connection if session is not None else None
        if conn is None or not outlet.slow or conn.closing:
            return
        self.cuts += 1
        conn.cut(QUOTA_EXCEEDED, "slow subscriber: no acknowledgement with its queue full")

    def census(self) -> int:
        """Bytes the node holds for its clients: messages queued and in flight, the buffers of
        paused transports, partly received packets."""
        broker = self.broker
        flusher = broker.flusher
        total = flusher.held if flusher is not None else 0
        for conn in broker.connections:
            total += conn.reader.buffered
            outlet = conn.outlet
            if outlet is not None and outlet.paused:
                total += len(outlet.buf)
                transport = conn.transport
                size = getattr(transport, "get_write_buffer_size", None)
                if size is not None:
                    total += size()
        return total

    def _memory(self, now: float, limit: int, timeout: float) -> None:
        flusher = self.broker.flusher
        assert flusher is not None
        self.memory = held = self.census()
        if held > limit:
            if not flusher.over:
                log.warning(
                    "holding %d bytes for clients, above memory_limit %d: publishers are not read",
                    held,
                    limit,
                )
                flusher.over = True
                self.over_since = now
            elif now - self.over_since >= timeout:
                self._trim(held - int(limit * RESUME_SHARE))
        elif flusher.over and held < limit * RESUME_SHARE:
            log.info("holding %d bytes for clients: publishers are read again", held)
            flusher.over = False
            self.over_since = -1.0
            self._wake_node()

    def _trim(self, excess: int) -> None:
        """Cut the largest queues, oldest messages first, until ``excess`` bytes are gone."""
        outlets = sorted(
            (s.outlet for s in self.broker.sessions.values() if s.outlet.queued_bytes),
            key=lambda o: o.queued_bytes,
            reverse=True,
        )
        flusher = self.broker.flusher
        assert flusher is not None
        for outlet in outlets:
            queue = outlet.queue
            while queue and excess > 0:
                msg = queue.popleft()[0]
                size = len(msg.payload) + len(msg.topic)
                outlet.queued_bytes -= size
                flusher.held -= size
                excess -= size
                outlet.drop("memory")
            if excess <= 0:
                break

    def _log_drops(self, now: float) -> None:
        flusher = self.broker.flusher
        assert flusher is not None
        for outlet in list(flusher.dropping):
            if now - outlet.logged_at < LOG_EVERY:
                continue
            drops = outlet.take_drops()
            outlet.logged_at = now
            log.warning(
                "%s: %d messages not delivered (%s)",
                _name(outlet),
                sum(drops.values()),
                ", ".join(f"{reason} {n}" for reason, n in sorted(drops.items())),
            )


def _name(outlet: Any) -> str:
    session = outlet.session
    return f"client {session.client_id!r}" if session is not None else "a client"
