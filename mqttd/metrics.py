"""Prometheus metrics, liveness and readiness over HTTP (``--metrics-port``; docs/operations.md).

``prometheus-client`` does the exposition format and serves it (its WSGI app, on a
``wsgiref`` server in a thread of its own, as its ``start_http_server`` does); this module
decides what is shown:

- ``/metrics``: the figures of :meth:`mqttd.node.Node.figures`, which ``MQTTApp.get_metrics()``
  shows too (and ``$SYS`` in its own names);
- ``/health``: 200 while the event loop answers within :data:`LOOP_ANSWER` seconds (liveness);
- ``/ready``: 200 when the node serves; 503 while its Redis, if it has one, is unreachable.

The broker's state belongs to the event loop's thread: a scrape asks the loop for a snapshot
(``call_soon_threadsafe``) and waits for it, so nothing is read while the loop changes it, and a
loop that does not answer makes ``/health`` fail rather than hang. The loop's lag (how late a
timer due every :data:`LAG_INTERVAL` seconds fires) is measured on the loop and reported.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import ProcessCollector, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from mqttd import constants
from mqttd.version import __version__

if TYPE_CHECKING:
    from mqttd.node import Node

log = logging.getLogger("mqttd")

#: reason code -> a label ("not_authorized") for the refusals by reason
REASON_NAMES = {
    value: name.lower()
    for name, value in vars(constants).items()
    if name.isupper() and isinstance(value, int) and 0x80 <= value <= 0xA2 and "_" in name
}

#: seconds the event loop has to hand over a snapshot before /health says it is stuck
LOOP_ANSWER = 2.0
#: seconds between the timer ticks whose lateness is the loop's lag
LAG_INTERVAL = 0.5


class NodeCollector(Collector):
    """The node's figures as Prometheus metrics, asked of the loop at each scrape."""

    def __init__(self, node: Node, loop: asyncio.AbstractEventLoop) -> None:
        self.node = node
        self.loop = loop

    def ask(self) -> dict[str, Any] | None:
        """A snapshot from the loop's thread, or None if the loop does not answer in time."""
        future: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(self.node.figures())
            except BaseException as exc:  # reported to the scrape, not lost in the loop
                future.set_exception(exc)

        try:
            self.loop.call_soon_threadsafe(run)
            return future.result(LOOP_ANSWER)
        except (concurrent.futures.TimeoutError, RuntimeError):
            return None

    def collect(self) -> Iterator[Metric]:
        s = self.ask()
        up = GaugeMetricFamily("mqttd_up", "1 when the event loop answered this scrape")
        up.add_metric([], 0 if s is None else 1)
        yield up
        info = GaugeMetricFamily("mqttd_build_info", "mqttd's version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        if s is None:
            return
        yield from _figures(s)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc)
    g.add_metric([], value)
    return g


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    c = CounterMetricFamily(name, doc)
    c.add_metric([], value)
    return c


#: the Redis bridge's counters (mqttd_redis_<key>_total), from its health()
REDIS_COUNTERS = (
    "forwarded",
    "not_forwarded",
    "received",
    "lost",
    "reconnects",
    "errors",
    "data_lost",
    "sessions_written",
    "dead_nodes",
    "wills_published",
    "sessions_taken_back",
)

#: the persistence file's figures (mqttd.persistence): how, metric name, figure, what
_PERSISTENCE = (
    (_counter, "writes", "writes", "transactions written to the persistence file"),
    (_counter, "write_errors", "write_errors", "writes to the persistence file that failed"),
    (_counter, "written_bytes", "bytes_written", "bytes written to the persistence file"),
    (_gauge, "write_seconds", "last_write_seconds", "how long the last write took"),
    (_gauge, "sessions", "sessions", "persistent sessions in the file"),
    (_counter, "unreadable", "unreadable_entries", "entries unreadable at start (skipped)"),
    (_counter, "set_aside", "stores_set_aside", "unreadable files moved aside at start"),
)


def _figures(s: dict[str, Any]) -> Iterable[Metric]:
    yield _gauge("mqttd_connections", "clients connected now (past CONNECT)", s["connections"])
    yield _counter("mqttd_sockets", "network connections accepted", s["sockets_total"])
    yield _gauge("mqttd_sessions", "sessions held (connected or not)", s["sessions"])
    yield _counter("mqttd_messages_received", "PUBLISH packets received", s["messages_received"])
    yield _counter("mqttd_messages_sent", "PUBLISH packets sent", s["messages_sent"])
    yield _counter("mqttd_received_bytes", "bytes received from clients", s["bytes_received"])
    yield _counter("mqttd_sent_bytes", "bytes sent to clients", s["bytes_sent"])
    for name, doc, key in (
        ("mqttd_messages_received_by_qos", "PUBLISH packets received, by QoS", "received_by_qos"),
        (
            "mqttd_received_payload_bytes_by_qos",
            "payload bytes of the PUBLISH packets received, by QoS",
            "received_payload_bytes_by_qos",
        ),
        ("mqttd_messages_sent_by_qos", "PUBLISH packets sent, by QoS", "sent_by_qos"),
    ):
        family = CounterMetricFamily(name, doc, labels=["qos"])
        for qos, count in sorted(s[key].items()):
            family.add_metric([str(qos)], count)
        yield family
    refused = CounterMetricFamily(
        "mqttd_connections_refused",
        "CONNECTs refused, by MQTT 5 reason code (3.1.1 clients got the equivalent code)",
        labels=["reason"],
    )
    for code, count in sorted(s["refused"].items()):
        refused.add_metric([REASON_NAMES.get(code, f"0x{code:02X}")], count)
    yield refused
    dropped = CounterMetricFamily(
        "mqttd_messages_dropped",
        "messages dropped, by reason (docs/flow-control.md)",
        labels=["reason"],
    )
    for reason, count in sorted(s["flow"]["dropped"].items()):
        dropped.add_metric([reason], count)
    yield dropped
    yield _gauge("mqttd_subscriptions", "subscription filters in the tree", s["subscriptions"])
    yield _gauge("mqttd_retained_messages", "retained messages", s["retained"])
    inflight = GaugeMetricFamily(
        "mqttd_inflight_messages",
        "outgoing QoS 1/2 messages awaiting acknowledgement",
        labels=["qos"],
    )
    for qos, count in sorted(s["inflight"].items()):
        inflight.add_metric([str(qos)], count)
    yield inflight
    yield _gauge("mqttd_queued_messages", "QoS 1/2 messages queued for sessions", s["queued"])
    yield _counter("mqttd_auth_failures", "CONNECTs refused by authentication", s["auth_failures"])
    yield _counter(
        "mqttd_closed_incoming_limit",
        "connections closed for max_incoming_bytes",
        s["closed_incoming_limit"],
    )
    flow = s["flow"]
    yield _gauge(
        "mqttd_publishers_held", "publishers not read now (backpressure)", flow["publishers_held"]
    )
    yield _gauge("mqttd_held_bytes", "bytes held in queues and windows", flow["bytes_held"])
    yield _counter(
        "mqttd_slow_clients_disconnected",
        "stalled subscribers disconnected",
        flow["slow_clients_disconnected"],
    )
    yield _gauge(
        "mqttd_event_loop_lag_seconds", "how late the loop's last timer fired", s["loop_lag"]
    )
    yield _counter(
        "mqttd_fd_exhausted",
        "seconds the node was found at its file descriptor limit (new clients wait)",
        s["fd_exhausted"],
    )
    persistence = s["persistence"]
    if persistence is not None:
        for make, name, key, doc in _PERSISTENCE:
            yield make(f"mqttd_persistence_{name}", doc, persistence[key])
    redis = s["redis"]
    if redis is not None:
        yield _gauge(
            "mqttd_redis_up", "1 while the Redis link is up", 1 if redis.get("redis") == "up" else 0
        )
        yield _gauge(
            "mqttd_redis_rtt_seconds", "round trip of the last PING to Redis", redis.get("rtt", 0)
        )
        # (and the stream's counts, when it runs: mqttd.redis.streams.STREAM_COUNTERS)
        for key in (*REDIS_COUNTERS, *(k for k in redis if k.startswith("stream_"))):
            if isinstance(redis.get(key), (int, float)):
                yield _counter(
                    f"mqttd_redis_{key}", f"Redis bridge: {key.replace('_', ' ')}", redis[key]
                )


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        pass  # scrapes every few seconds do not belong in the broker's log


class MetricsServer:
    """The HTTP endpoint: ``/metrics``, ``/health``, ``/ready``."""

    def __init__(self, node: Node, host: str, port: int) -> None:
        self.node = node
        self.host = host
        self.port = port
        self.httpd: WSGIServer | None = None
        self.thread: threading.Thread | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Listen (OSError if the port is taken) and serve from a thread of its own."""
        registry = CollectorRegistry(auto_describe=False)
        collector = NodeCollector(self.node, loop)
        registry.register(collector)
        # process_open_fds, process_max_fds, process_resident_memory_bytes, CPU (Linux)
        ProcessCollector(registry=registry)
        metrics_app = make_wsgi_app(registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "/")
            if path == "/health":
                ok = collector.ask() is not None
                return _plain(start_response, ok, "ok\n" if ok else "event loop not answering\n")
            if path == "/ready":
                s = collector.ask()
                why = "event loop not answering" if s is None else _not_ready(s)
                return _plain(start_response, not why, "ready\n" if not why else why + "\n")
            return metrics_app(environ, start_response)  # type: ignore[no-any-return]

        self.httpd = make_server(self.host, self.port, app, handler_class=_Quiet)
        self.port = self.httpd.server_port
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, name="mqttd-metrics", daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None


def _not_ready(s: dict[str, Any]) -> str:
    redis = s["redis"]
    if redis is not None and redis.get("redis") != "up":
        return "Redis unreachable"
    return ""


def _plain(start_response: Callable[..., Any], ok: bool, text: str) -> list[bytes]:
    start_response(
        "200 OK" if ok else "503 Service Unavailable",
        [("Content-Type", "text/plain; charset=utf-8")],
    )
    return [text.encode()]


class LagMeter:
    """How late a timer due every LAG_INTERVAL seconds fires: the event loop's lag."""

    def __init__(self, node: Node, loop: asyncio.AbstractEventLoop) -> None:
        self.node = node
        self.loop = loop
        self.handle: asyncio.TimerHandle | None = None
        self.due = 0.0

    def start(self) -> None:
        self.due = self.loop.time() + LAG_INTERVAL
        self.handle = self.loop.call_at(self.due, self._tick)

    def _tick(self) -> None:
        now = self.loop.time()
        self.node.loop_lag = max(0.0, now - self.due)
        self.due = now + LAG_INTERVAL
        self.handle = self.loop.call_at(self.due, self._tick)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


__all__ = ["LagMeter", "MetricsServer", "NodeCollector"]
