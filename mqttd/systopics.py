"""Broker status under ``$SYS/broker/...``, named as Mosquitto names it (mosquitto(8), BROKER STATUS).

Every ``sys_interval`` seconds the :class:`SysPublisher` takes a snapshot of the broker's counters
and publishes each topic whose value changed since it was last published, as a retained QoS 0
message: a client that subscribes to ``$SYS/#`` gets the current values at once. The version is
published once, at start. Topics starting with '$' are not matched by filters starting with a
wildcard [MQTT-4.7.2-1] (the subscription tree enforces that), so ``#`` subscribers never see them.

Clients must not write into this tree: :func:`mqttd.topics.is_reserved_topic` tells the PUBLISH
path which topic names to drop (Mosquitto drops them too, acknowledging with 0x87 Not authorized
at MQTT 5).

The load averages are Mosquitto's: per-minute rates, smoothed exponentially over 1, 5 and 15
minutes (``rate + exp(-dt/window) * (previous - rate)``), printed with two decimals.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import TYPE_CHECKING, Any

from mqttd.version import __version__

if TYPE_CHECKING:
    from mqttd.broker import Broker

log = logging.getLogger("mqttd")

PREFIX = "$SYS/broker/"

#: (topic suffix, window in seconds) of the load averages
_WINDOWS = (("1min", 60.0), ("5min", 300.0), ("15min", 900.0))


class SysPublisher:
    """Publishes the ``$SYS/broker/...`` topics of one broker every ``interval`` seconds."""

    def __init__(self, broker: Broker, interval: float) -> None:
        if interval <= 0:
            raise ValueError("the $SYS interval must be more than 0 seconds")
        self.broker = broker
        self.interval = interval
        self.handle: asyncio.TimerHandle | None = None
        #: topic -> payload last published, so unchanged values are not published again
        self.published: dict[str, bytes] = {}
        #: most clients connected at once, as seen at an update
        self.max_connected = 0
        #: load name -> (counter value at the last update, {window: smoothed rate per minute})
        self.loads: dict[str, tuple[int, dict[str, float]]] = {}
        self.last_update = 0.0

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Publish the version (once) and the first snapshot, then update every interval."""
        loop = self.broker.loop
        assert loop is not None, "start the broker first"
        self.last_update = loop.time()
        self._publish("version", f"mqttd {__version__}")
        self.update(self.last_update)
        self.handle = loop.call_later(self.interval, self._tick)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def _tick(self) -> None:
        loop = self.broker.loop
        assert loop is not None
        # Schedule the next update first: an error in this one must not end them all.
        self.handle = loop.call_later(self.interval, self._tick)
        try:
            self.update(loop.time())
        except Exception:
            log.exception("$SYS update failed")

    # -- values ----------------------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        """The broker's running totals that the load averages are computed from."""
        b = self.broker
        stats = b.stats
        flusher = b.flusher
        publish_received = stats["messages_received"]
        publish_sent = flusher.messages_sent if flusher is not None else 0
        return {
            # Mosquitto counts packets of every type here; mqttd counts the ones it has counters
            # for (PUBLISH) unless the protocol layer keeps packet totals.
            "messages/received": stats.get("packets_received", publish_received),
            "messages/sent": stats.get("packets_sent", publish_sent),
            "publish/received": publish_received,
            "publish/sent": publish_sent,
            "publish/dropped": flusher.messages_dropped if flusher is not None else 0,
            "bytes/received": stats["bytes_received"],
            "bytes/sent": flusher.bytes_sent if flusher is not None else 0,
            "sockets": stats["connections_total"],
            "connections": stats.get("connects", stats["connections_total"]),
        }

    def snapshot(self) -> dict[str, str]:
        """Current value of every periodic topic (suffix after ``$SYS/broker/`` -> text)."""
        b = self.broker
        connected = 0
        for conn in b.connections:
            session = conn.session
            # A connection being taken over still points at the session it lost: not counted.
            if session is not None and session.connection is conn:
                connected += 1
        total = len(b.sessions)
        if connected > self.max_connected:
            self.max_connected = connected
        # Shared groups are one tree entry each; count their members instead.
        shared = sum(len(group.members) for group in b.shared.values())
        subscriptions = len(b.tree) - len(b.shared) + shared
        retained = b.storage.retained_count()
        stored = retained
        for session in b.sessions.values():
            outlet = session.outlet
            stored += len(outlet.queue) + len(outlet.inflight)
        c = self.counters()
        return {
            "uptime": f"{int(time.time() - b.started_at)} seconds",
            "clients/connected": str(connected),
            # persistent sessions whose client is away (clean sessions end with the connection)
            "clients/disconnected": str(total - connected),
            "clients/total": str(total),
            "clients/maximum": str(self.max_connected),
            "messages/received": str(c["messages/received"]),
            "messages/sent": str(c["messages/sent"]),
            "publish/messages/received": str(c["publish/received"]),
            "publish/messages/sent": str(c["publish/sent"]),
            "publish/messages/dropped": str(c["publish/dropped"]),
            "bytes/received": str(c["bytes/received"]),
            "bytes/sent": str(c["bytes/sent"]),
            "subscriptions/count": str(subscriptions),
            "shared_subscriptions/count": str(shared),
            "retained messages/count": str(retained),
            "store/messages/count": str(stored),
            "messages/stored": str(stored),  # Mosquitto's older name of store/messages/count
            **self.flow_values(),
            **self.redis_values(),
        }

    def flow_values(self) -> dict[str, str]:
        """Flow control (docs/flow-control.md): messages dropped by reason, publishers held."""
        f = self.broker.flow.figures()
        out = {f"publish/messages/dropped/{reason}": str(n) for reason, n in f["dropped"].items()}
        out["flow/publishers/held"] = str(f["publishers_held"])
        out["flow/publishers/holds"] = str(f["holds"])
        out["flow/sessions/slow"] = str(f["slow_sessions"])
        out["flow/sessions/disconnected"] = str(f["slow_clients_disconnected"])
        out["flow/bytes/held"] = str(f["bytes_held"])
        return out

    def redis_values(self) -> dict[str, str]:
        """``redis/...``: the Redis bridge's state and its counts of what pub/sub lost."""
        peers = self.broker.peers
        if not peers.remote:
            return {}
        st = peers.health()
        return {
            "redis/state": st["redis"],
            "redis/messages/forwarded": str(st["forwarded"]),
            "redis/messages/not forwarded": str(st["not_forwarded"]),
            "redis/messages/received": str(st["received"] + st["raw_received"]),
            "redis/messages/lost": str(st["lost"]),
            "redis/reconnects": str(st["reconnects"]),
        }

    def load_averages(self, now: float) -> dict[str, str]:
        """The ``load/<name>/<window>`` values, updated with the counters' rates since the last
        call (``now`` on the loop's clock)."""
        dt = now - self.last_update
        self.last_update = now
        out: dict[str, str] = {}
        for name, value in self.counters().items():
            entry = self.loads.get(name)
            if entry is None:
                # First update: nothing to compare with yet, every average starts at 0.
                averages = {label: 0.0 for label, _ in _WINDOWS}
            else:
                previous, averages = entry
                if dt > 0:
                    rate = (value - previous) * 60.0 / dt  # per minute, like Mosquitto
                    for label, window in _WINDOWS:
                        decay = math.exp(-dt / window)
                        averages[label] = rate + decay * (averages[label] - rate)
            self.loads[name] = (value, averages)
            for label, _ in _WINDOWS:
                out[f"load/{name}/{label}"] = f"{averages[label]:.2f}"
        return out

    # -- publishing ------------------------------------------------------------------------------
    def update(self, now: float) -> int:
        """Publish every topic whose value changed; returns how many were published."""
        values = self.snapshot()
        values.update(self.load_averages(now))
        count = 0
        for suffix, text in values.items():
            count += self._publish(suffix, text)
        return count

    def _publish(self, suffix: str, text: str) -> int:
        payload = text.encode("ascii")
        topic = PREFIX + suffix
        if self.published.get(topic) == payload:
            return 0
        self.published[topic] = payload
        b = self.broker
        # Retained, so a new $SYS subscriber gets the current value at once (as Mosquitto does)
        b.publish(b.make_message(topic, payload, 0, True, None))
        return 1


def start_publisher(broker: Any) -> SysPublisher | None:
    """Start publishing ``$SYS`` for ``broker`` if its ``sys_interval`` is above 0."""
    interval = broker.config.sys_interval
    if interval <= 0:
        return None
    publisher = SysPublisher(broker, interval)
    publisher.start()
    return publisher
