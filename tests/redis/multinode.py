"""Helpers for the multi-node (Redis) tests: a paho-mqtt 2.x client driven from the test thread,
MQTT topic matching as the oracle, and readers for what Redis itself carries.

Every wait is on a queue with a deadline, and one that runs out raises TimeoutError (a hang),
not AssertionError (a wrong value). "Nothing else arrived" is checked with a marker: the
test publishes a last message the client does match and collects what came before it; a stray or
duplicate copy would travel the same ordered path (one Redis connection per node, one MQTT
connection per client) and so arrive before the marker.
"""

from __future__ import annotations

import itertools
import os
import queue
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

V311 = MQTTProtocolVersion.MQTTv311
V5 = MQTTProtocolVersion.MQTTv5
TIMEOUT = 5.0

#: the envelope mqttd puts before the payload on Redis (mqttd/redis/envelope.py)
MAGIC = b"\x00MQD\x01"
HEADER_SIZE = 22

_ids = itertools.count()


def unique(stem: str = "t") -> str:
    """A short string unique to this test run, for client ids and topic roots."""
    return f"{stem}{os.getpid() % 10000}x{next(_ids)}"


def topic_matches(filt: str, topic: str) -> bool:
    """MQTT topic filter matching, written from the spec as the oracle for the tests.

    ``+`` is one whole level, ``#`` (last) the rest including the parent level [MQTT-4.7.1-2];
    a filter starting with a wildcard does not match a topic starting with ``$`` [MQTT-4.7.2-1].
    """
    if topic.startswith("$") and filt[:1] in ("+", "#"):
        return False
    f = filt.split("/")
    t = topic.split("/")
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t):
            return False
        if level != "+" and level != t[i]:
            return False
    return len(f) == len(t)


@dataclass
class Msg:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Properties | None

    def prop(self, name: str, default: Any = None) -> Any:
        if self.properties is None:
            return default
        return getattr(self.properties, name, default)


def publish_props(**values: Any) -> Properties:
    """PUBLISH properties, e.g. ``publish_props(ContentType="text/plain")``."""
    p = Properties(PacketTypes.PUBLISH)
    for name, value in values.items():
        setattr(p, name, value)
    return p


class Client:
    """A paho client with its network loop in a thread; messages go to a queue."""

    def __init__(
        self,
        node: Any,
        cid: str | None = None,
        protocol: MQTTProtocolVersion = V5,
        *,
        max_inflight: int = 20,
        on_message: Callable[[Msg], None] | None = None,
    ) -> None:
        self.cid = cid or unique("c")
        self.node = node
        kwargs: dict[str, Any] = {}
        if protocol != V5:
            kwargs["clean_session"] = True
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.cid,
            protocol=protocol,
            reconnect_on_failure=False,  # a lost connection must show, not heal silently
            **kwargs,
        )
        self.c.max_inflight_messages_set(max_inflight)
        self.messages: queue.Queue[Msg] = queue.Queue()
        self._hook = on_message
        self._acks: queue.Queue = queue.Queue()
        self._connacks: queue.Queue = queue.Queue()
        self.disconnected = threading.Event()
        self.c.on_connect = lambda c, u, f, rc, p: self._connacks.put(rc)
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self._acks.put((mid, rcs))
        self.c.on_unsubscribe = lambda c, u, mid, rcs, p: self._acks.put((mid, rcs))
        self.c.on_disconnect = lambda c, u, f, rc, p: self.disconnected.set()
        self.c.on_message = self._on_message
        self.c.connect(node.host, node.port, keepalive=30)
        self.c.loop_start()
        try:
            rc = self._connacks.get(timeout=TIMEOUT)
        except queue.Empty:
            self.close()
            raise TimeoutError(f"{self.cid}: no CONNACK within {TIMEOUT}s") from None
        assert not rc.is_failure, f"{self.cid}: CONNACK {rc}"

    def _on_message(self, c: Any, u: Any, m: mqtt.MQTTMessage) -> None:
        msg = Msg(m.topic, m.payload, m.qos, bool(m.retain), m.properties)
        if self._hook is not None:
            self._hook(msg)
        else:
            self.messages.put(msg)

    # -- actions ----------------------------------------------------------------------------------
    def _ack(self, mid: int | None, what: str) -> list[Any]:
        try:
            got_mid, rcs = self._acks.get(timeout=TIMEOUT)
        except queue.Empty:
            raise TimeoutError(f"{self.cid}: no {what} within {TIMEOUT}s") from None
        assert got_mid == mid, f"{self.cid}: {what} for mid {got_mid}, expected {mid}"
        return rcs

    def subscribe(self, *filters: str, qos: int = 1) -> None:
        """SUBSCRIBE to each filter (one packet each) and wait for every SUBACK."""
        for filt in filters:
            _, mid = self.c.subscribe(filt, qos)
            rcs = self._ack(mid, f"SUBACK for {filt}")
            assert len(rcs) == 1 and not rcs[0].is_failure, f"SUBACK {filt}: {rcs}"
            assert rcs[0].value == qos, f"SUBACK {filt}: granted {rcs[0].value}, asked {qos}"

    def unsubscribe(self, *filters: str) -> None:
        for filt in filters:
            _, mid = self.c.unsubscribe(filt)
            self._ack(mid, f"UNSUBACK for {filt}")

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        qos: int = 1,
        properties: Properties | None = None,
        retain: bool = False,
    ) -> None:
        """PUBLISH and, for QoS 1/2, wait for the PUBACK / PUBCOMP."""
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"{self.cid}: publish rc {info.rc}"
        if qos:
            info.wait_for_publish(TIMEOUT)
            assert info.is_published(), f"{self.cid}: {topic!r} not acknowledged"

    def publish_nowait(self, topic: str, payload: bytes | str, qos: int = 1) -> Any:
        info = self.c.publish(topic, payload, qos=qos)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"{self.cid}: publish rc {info.rc}"
        return info

    # -- what arrived -----------------------------------------------------------------------------
    def get(self, timeout: float = TIMEOUT) -> Msg:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"{self.cid}: no message within {timeout}s") from None

    def collect(self, n: int, timeout: float = TIMEOUT) -> list[Msg]:
        """Exactly the next ``n`` messages (fails if fewer arrive in time)."""
        deadline = time.monotonic() + timeout
        out: list[Msg] = []
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.cid}: {len(out)} of {n} messages in {timeout}s")
            try:
                out.append(self.messages.get(timeout=left))
            except queue.Empty:
                continue
        return out

    def until(self, marker: bytes, timeout: float = TIMEOUT) -> list[Msg]:
        """Every message before the first one whose payload is ``marker`` (which is consumed)."""
        deadline = time.monotonic() + timeout
        out: list[Msg] = []
        while True:
            left = deadline - time.monotonic()
            try:
                m = self.messages.get(timeout=max(left, 0.001))
            except queue.Empty:
                if left <= 0:
                    got = [(x.topic, x.payload[:40]) for x in out]
                    raise TimeoutError(
                        f"{self.cid}: marker {marker!r} not received in {timeout}s; got {got}"
                    ) from None
                continue
            if m.payload == marker:
                return out
            out.append(m)

    def is_connected(self) -> bool:
        return self.c.is_connected() and not self.disconnected.is_set()

    def close(self) -> None:
        if self.c.is_connected():
            self.c.disconnect()
            self.disconnected.wait(2.0)
        self.c.loop_stop()


# -- Redis side -------------------------------------------------------------------------------------
def split_envelope(data: bytes) -> tuple[int, bytes, int, bytes]:
    """(flags, origin node id, sequence number, rest) of an mqttd message as it is on Redis."""
    assert data[:5] == MAGIC, f"no mqttd envelope: {data[:30]!r}"
    assert len(data) >= HEADER_SIZE
    return data[5], data[6:14], int.from_bytes(data[14:22], "big"), data[HEADER_SIZE:]


_CSV_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"a": b"\a", b"b": b"\b"}
_CSV_FIELD = re.compile(rb'"((?:[^"\\]|\\.)*)"|([^,]*)')


def _csv_unescape(text: bytes) -> bytes:
    """Undo redis-cli's quoting (sdscatrepr): ``\\xHH``, ``\\n`` ... ``\\"``, ``\\\\``."""
    out = bytearray()
    i = 0
    while i < len(text):
        c = text[i : i + 1]
        if c != b"\\":
            out += c
            i += 1
            continue
        nxt = text[i + 1 : i + 2]
        if nxt == b"x":
            out.append(int(text[i + 2 : i + 4], 16))
            i += 4
        else:
            out += _CSV_ESCAPES.get(nxt, nxt)
            i += 2
    return bytes(out)


def parse_csv_line(line: bytes) -> list[bytes]:
    fields = []
    pos = 0
    while pos <= len(line):
        m = _CSV_FIELD.match(line, pos)
        assert m is not None
        quoted, bare = m.group(1), m.group(2)
        fields.append(_csv_unescape(quoted) if quoted is not None else bare)
        pos = m.end() + 1  # skip the comma
    return fields


class RedisWatcher:
    """What a plain Redis client subscribed to ``channel`` sees: the real ``redis-cli`` when it is
    installed (``--csv`` mode, one line per push), else a redis-py pubsub. ``messages`` holds
    (channel, data) pairs."""

    def __init__(self, server: Any, channel: str, cli: str | None) -> None:
        self.messages: queue.Queue[tuple[bytes, bytes]] = queue.Queue()
        self.proc: subprocess.Popen | None = None
        self.pubsub: Any = None
        subscribed = threading.Event()
        if cli is not None:
            cmd = [cli, "-h", "127.0.0.1", "-p", str(server.port), "--csv", "SUBSCRIBE", channel]
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

            def read() -> None:
                assert self.proc is not None and self.proc.stdout is not None
                for raw in self.proc.stdout:
                    fields = parse_csv_line(raw.rstrip(b"\n"))
                    if fields[0] == b"subscribe":
                        subscribed.set()
                    elif fields[0] == b"message":
                        self.messages.put((fields[1], fields[2]))

            threading.Thread(target=read, daemon=True).start()
        else:
            self.pubsub = server.client().pubsub()
            self.pubsub.subscribe(channel)

            def read_py() -> None:
                while self.pubsub is not None:
                    try:
                        m = self.pubsub.get_message(timeout=0.2)
                    except Exception:  # closed at the end of the test
                        return
                    if m is None:
                        continue
                    if m["type"] == "subscribe":
                        subscribed.set()
                    elif m["type"] == "message":
                        self.messages.put((m["channel"], m["data"]))

            threading.Thread(target=read_py, daemon=True).start()
        if not subscribed.wait(TIMEOUT):
            raise TimeoutError(f"Redis SUBSCRIBE {channel} not confirmed within {TIMEOUT}s")

    def get(self, timeout: float = TIMEOUT) -> tuple[bytes, bytes]:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"nothing seen on Redis within {timeout}s") from None

    def close(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None
        if self.pubsub is not None:
            ps, self.pubsub = self.pubsub, None
            ps.close()


def redis_publish(server: Any, cli: str | None, channel: str, payload: str) -> int:
    """PUBLISH from outside mqttd (``redis-cli`` if installed, else redis-py); the receiver
    count Redis answers."""
    if cli is not None:
        cmd = [cli, "-h", "127.0.0.1", "-p", str(server.port), "PUBLISH", channel, payload]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
        assert r.returncode == 0, f"redis-cli PUBLISH failed: {r.stderr}"
        return int(r.stdout.strip())
    return int(server.client().publish(channel, payload))


def wait_for(pred: Callable[[], Any], timeout: float, what: str, step: float = 0.02) -> Any:
    """Poll ``pred`` until it returns a true value; that value, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = pred()
        if last:
            return last
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout}s (last: {last!r})")
        time.sleep(step)


# -- ports and mqttd nodes (here, not in conftest.py: test modules import them by name, and
# "conftest" names several modules in one run) -------------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _root_conftest(config: pytest.Config) -> Any:
    """tests/conftest.py as loaded by pytest (its start_broker / stop_broker)."""
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(os.path.dirname(here), "conftest.py")
    mod = config.pluginmanager.get_plugin(path)
    assert mod is not None, f"{path} is not loaded"
    return mod


class Nodes:
    """Starts mqttd nodes (in parallel) and stops every one of them at the end."""

    def __init__(self, config: pytest.Config) -> None:
        self.root = _root_conftest(config)
        self.started: list[Any] = []

    def start(self, server: Any, n: int, *extra: str, prefix: str | None = None) -> list:
        args = ["--redis-url", server.url, *extra]
        if prefix is not None:
            args += ["--redis-prefix", prefix]
        with ThreadPoolExecutor(n) as pool:
            futures = [pool.submit(self.root.start_broker, *args) for _ in range(n)]
        nodes = [f.result() for f in futures if f.exception() is None]
        errors = [f.exception() for f in futures if f.exception() is not None]
        self.started.extend(nodes)  # stopped at the end even when a sibling failed
        if errors:
            raise errors[0]  # type: ignore[misc]
        return nodes

    def stop_all(self) -> None:
        for node in self.started:
            self.root.stop_broker(node)
        for node in self.started:
            assert node.proc.poll() is not None, f"node pid {node.proc.pid} still running"
        self.started.clear()
