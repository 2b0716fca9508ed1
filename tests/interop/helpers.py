"""Helpers for the real-client interop tests: a paho-mqtt 2.x client driven from a test thread,
and a line reader for the Mosquitto command-line clients.

Every wait is on a queue with a deadline, never a fixed sleep. A wait that runs out raises
TimeoutError, so that a hang never reads as a wrong value (an AssertionError).
"""

from __future__ import annotations

import queue
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

V311 = MQTTProtocolVersion.MQTTv311
V5 = MQTTProtocolVersion.MQTTv5
TIMEOUT = 5.0


def props(packet_type: int, **values: Any) -> Properties:
    """``Properties(packet_type)`` with the given attributes, e.g.
    ``props(PacketTypes.PUBLISH, MessageExpiryInterval=60)``."""
    p = Properties(packet_type)
    for name, value in values.items():
        setattr(p, name, value)
    return p


def prop(properties: Properties | None, name: str, default: Any = None) -> Any:
    """A property of a received packet, or ``default`` when it is absent."""
    if properties is None:
        return default
    return getattr(properties, name, default)


@dataclass
class Received:
    """One PUBLISH as the application sees it. ``topic`` is resolved through the connection's
    topic aliases (paho 2.2 does not resolve server-sent Topic Aliases itself: it hands the
    application an empty topic); ``alias`` is the Topic Alias property as received, if any."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Properties | None
    alias: int | None = None
    wire_topic: str = ""


@dataclass
class Connack:
    session_present: bool
    reason: ReasonCode
    properties: Properties | None


class Paho:
    """A paho client with its network loop in a thread; callbacks feed queues.

    ``clean`` is Clean Session (3.1.1) or Clean Start (5). ``session_expiry`` (5 only) goes into
    CONNECT as Session Expiry Interval; ``connect_props`` adds other CONNECT properties.
    ``expect_failure`` skips the CONNACK success check (the Connack is in ``self.connack``).
    """

    def __init__(
        self,
        broker: Any,
        cid: str,
        protocol: MQTTProtocolVersion = V5,
        *,
        clean: bool = True,
        session_expiry: int | None = None,
        connect_props: dict[str, Any] | None = None,
        will: dict[str, Any] | None = None,
        will_props: dict[str, Any] | None = None,
        keepalive: int = 30,
        expect_failure: bool = False,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.protocol = protocol
        kwargs: dict[str, Any] = {}
        if protocol != V5:
            kwargs["clean_session"] = clean
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cid,
            protocol=protocol,
            reconnect_on_failure=False,  # a lost connection must stay lost in these tests
            **kwargs,
        )
        self.connacks: queue.Queue[Connack] = queue.Queue()
        self.subacks: queue.Queue = queue.Queue()
        self.unsubacks: queue.Queue = queue.Queue()
        self.messages: queue.Queue[Received] = queue.Queue()
        self.disconnects: queue.Queue[ReasonCode] = queue.Queue()
        self.aliases: dict[int, str] = {}
        self.alias_errors: list[str] = []
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.put((mid, rcs))
        self.c.on_unsubscribe = lambda c, u, mid, rcs, p: self.unsubacks.put((mid, rcs))
        self.c.on_message = self._on_message
        if username is not None:
            self.c.username_pw_set(username, password)
        self.c.on_disconnect = lambda c, u, flags, rc, p: self.disconnects.put(rc)
        if will is not None:
            wp = props(PacketTypes.WILLMESSAGE, **will_props) if will_props else None
            self.c.will_set(properties=wp, **will)
        cprops = dict(connect_props or {})
        if session_expiry is not None:
            cprops["SessionExpiryInterval"] = session_expiry
        connect_kwargs: dict[str, Any] = {"keepalive": keepalive}
        if protocol == V5:
            connect_kwargs["clean_start"] = clean
            if cprops:
                connect_kwargs["properties"] = props(PacketTypes.CONNECT, **cprops)
        self.c.connect(broker.host, broker.port, **connect_kwargs)
        self.c.loop_start()
        try:
            self.connack = self.connacks.get(timeout=TIMEOUT)
        except queue.Empty:
            self.stop()
            raise TimeoutError(f"{cid}: no CONNACK within {TIMEOUT}s") from None
        if not expect_failure:
            assert not self.connack.reason.is_failure, f"{cid}: CONNACK {self.connack.reason}"

    # --- callbacks (paho's network thread) ---

    def _on_connect(self, c: Any, u: Any, flags: Any, rc: ReasonCode, p: Any) -> None:
        self.connacks.put(Connack(bool(flags.session_present), rc, p))

    def _on_message(self, c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        wire_topic = msg.topic
        alias = prop(msg.properties, "TopicAlias")
        topic = wire_topic
        if alias is not None:
            # [MQTT-3.3.2-12]: a non-empty topic with an alias (re)maps it; an empty one uses it
            if wire_topic:
                self.aliases[alias] = wire_topic
            elif alias in self.aliases:
                topic = self.aliases[alias]
            else:
                self.alias_errors.append(f"alias {alias} used before it was set")
        self.messages.put(
            Received(
                topic, msg.payload, msg.qos, bool(msg.retain), msg.properties, alias, wire_topic
            )
        )

    # --- actions (test thread) ---

    def subscribe(
        self,
        topic: str,
        qos: int = 1,
        options: SubscribeOptions | None = None,
        properties: Properties | None = None,
    ) -> int:
        """SUBSCRIBE one filter and wait for SUBACK; the granted QoS (or reason code value)."""
        if options is not None:
            _, mid = self.c.subscribe(topic, options=options, properties=properties)
        else:
            _, mid = self.c.subscribe(topic, qos, properties=properties)
        try:
            got_mid, rcs = self.subacks.get(timeout=TIMEOUT)
        except queue.Empty:
            raise TimeoutError(f"no SUBACK for {topic} within {TIMEOUT}s") from None
        assert got_mid == mid
        assert len(rcs) == 1 and not rcs[0].is_failure, f"SUBACK {rcs}"
        return rcs[0].value

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> None:
        """PUBLISH and, for QoS 1/2, wait for PUBACK / PUBCOMP."""
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"publish: {info.rc}"
        info.wait_for_publish(TIMEOUT)
        assert info.is_published(), f"publish {topic!r} not acknowledged within {TIMEOUT}s"

    def message(self, timeout: float = TIMEOUT) -> Received:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no message within {timeout}s") from None

    def messages_until(self, topic: str, payload: bytes | None = None) -> list[Received]:
        """All messages up to and including the first one on ``topic`` (with ``payload``)."""
        got = []
        while True:
            m = self.message()
            got.append(m)
            if m.topic == topic and (payload is None or m.payload == payload):
                return got

    def messages_until_all(self, payloads: set[bytes]) -> list[Received]:
        """Messages until every payload in ``payloads`` has arrived (paho hands a QoS 2 message to
        the application on PUBREL, so QoS 1 and 2 arrivals interleave differently from the
        wire)."""
        got: list[Received] = []
        missing = set(payloads)
        while missing:
            m = self.message()
            got.append(m)
            missing.discard(m.payload)
        return got

    def disconnected(self, timeout: float = TIMEOUT) -> ReasonCode:
        """The reason code of the next on_disconnect."""
        try:
            return self.disconnects.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"not disconnected within {timeout}s") from None

    def disconnect(self, properties: Properties | None = None) -> None:
        """A clean DISCONNECT, waiting until paho reports the connection closed."""
        self.c.disconnect(properties=properties)
        self.disconnected()
        self.c.loop_stop()

    def kill(self) -> None:
        """End the connection without DISCONNECT, as a crashed client would (the will fires)."""
        sock = self.c.socket()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.disconnected()
        self.c.loop_stop()

    def stop(self) -> None:
        if self.c.is_connected():
            self.c.disconnect()
        self.c.loop_stop()


class Lines:
    """A running command whose stdout lines are collected by a thread."""

    def __init__(self, cmd: list[str], stdin: str | None = None) -> None:
        self.cmd = cmd
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            text=True,
        )
        if stdin is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(stdin)
            self.proc.stdin.close()
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(
        self,
        pred: Callable[[str], bool],
        timeout: float = TIMEOUT,
        poke: Callable[[], None] | None = None,
    ) -> str:
        """Wait for a line satisfying ``pred``; call ``poke`` (e.g. publish again) every 0.25 s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if poke is not None:
                poke()
            try:
                line = self.lines.get(timeout=0.25)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    err = self.proc.stderr.read() if self.proc.stderr else ""
                    raise AssertionError(
                        f"{self.cmd[0]} exited {self.proc.returncode}: {err}"
                    ) from None
                continue
            self.seen.append(line)
            if pred(line):
                return line
        raise TimeoutError(f"no matching line from {self.cmd} within {timeout}s: {self.seen}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def mosquitto_pub(
    broker: Any,
    version: str,
    topic: str,
    message: str | None,
    qos: int = 0,
    *extra: str,
    stdin: str | None = None,
) -> None:
    """Run mosquitto_pub once. ``message=None``: the caller passes -l/-n/... in ``extra``
    (``-l`` publishes each line of ``stdin`` as one message)."""
    cmd = ["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-V", version,
           "-t", topic, "-q", str(qos), *extra]  # fmt: skip
    if message is not None:
        cmd += ["-m", message]
    r = subprocess.run(cmd, capture_output=True, text=True, input=stdin, timeout=TIMEOUT * 2)
    assert r.returncode == 0, f"mosquitto_pub failed ({r.returncode}): {r.stderr}"


def mosquitto_sub_cmd(broker: Any, version: str, *args: str) -> list[str]:
    return ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-V", version, *args]
