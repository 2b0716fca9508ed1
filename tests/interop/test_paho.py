"""Interop with paho-mqtt 2.x (CallbackAPIVersion.VERSION2) at MQTT 3.1.1 and 5: connect,
subscribe, publish QoS 0/1/2, receive, retained messages, will, clean disconnect."""

from __future__ import annotations

import queue
import socket

import pytest

mqtt = pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is not installed")
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

PROTOCOLS = [
    pytest.param(MQTTProtocolVersion.MQTTv311, id="v311"),
    pytest.param(MQTTProtocolVersion.MQTTv5, id="v5"),
]
TIMEOUT = 5.0


class Paho:
    """A paho client with its network loop in a thread and the callbacks fed into queues."""

    def __init__(self, broker, cid: str, protocol: MQTTProtocolVersion, **will: object):
        self.protocol = protocol
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cid,
            protocol=protocol,
            reconnect_on_failure=False,  # a lost connection must stay lost in these tests
        )
        self.connack: queue.Queue = queue.Queue()
        self.subacks: queue.Queue = queue.Queue()
        self.messages: queue.Queue = queue.Queue()
        self.disconnects: queue.Queue = queue.Queue()
        self.c.on_connect = lambda c, u, flags, rc, props: self.connack.put((flags, rc, props))
        self.c.on_subscribe = lambda c, u, mid, rcs, props: self.subacks.put((mid, rcs))
        self.c.on_message = lambda c, u, msg: self.messages.put(msg)
        self.c.on_disconnect = lambda c, u, flags, rc, props: self.disconnects.put(rc)
        if will:
            self.c.will_set(**will)  # type: ignore[arg-type]
        self.c.connect(broker.host, broker.port, keepalive=30)
        self.c.loop_start()
        _flags, rc, _props = self.connack.get(timeout=TIMEOUT)
        assert not rc.is_failure, f"CONNACK {rc}"

    def subscribe(self, topic: str, qos: int) -> int:
        _, mid = self.c.subscribe(topic, qos)
        got_mid, rcs = self.subacks.get(timeout=TIMEOUT)
        assert got_mid == mid
        assert len(rcs) == 1 and not rcs[0].is_failure, f"SUBACK {rcs}"
        return rcs[0].value

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> None:
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        info.wait_for_publish(TIMEOUT)  # QoS 1: PUBACK, QoS 2: PUBCOMP received
        assert info.is_published()

    def message(self, timeout: float = TIMEOUT):
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no message within {timeout}s") from None

    def messages_until(self, topic: str) -> list:
        """All messages up to and including the first one on ``topic``."""
        got = []
        while True:
            m = self.message()
            got.append(m)
            if m.topic == topic:
                return got

    def stop(self) -> None:
        if self.c.is_connected():
            self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def clients():
    made: list[Paho] = []

    def make(*args: object, **kw: object) -> Paho:
        p = Paho(*args, **kw)  # type: ignore[arg-type]
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop()


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_subscribe(shared_broker, clients, uid, protocol, qos):
    """Subscribe (granted QoS), publish at QoS 0/1/2 (acknowledged), receive topic, payload and
    QoS intact."""
    sub = clients(shared_broker, f"sub-{uid}", protocol)
    pub = clients(shared_broker, f"pub-{uid}", protocol)
    assert sub.subscribe(f"paho/{uid}/+", 2) == 2
    pub.publish(f"paho/{uid}/temperature", b"25.5C", qos=qos)
    m = sub.message()
    assert (m.topic, m.payload, m.qos, m.retain) == (
        f"paho/{uid}/temperature",
        b"25.5C",
        qos,
        False,
    )


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_retained(shared_broker, clients, uid, protocol):
    """A retained message reaches a later subscriber with retain set; an empty retained message
    clears it."""
    topic = f"paho/{uid}/retained"
    pub = clients(shared_broker, f"pub-{uid}", protocol)
    pub.publish(topic, b"kept", qos=1, retain=True)
    late = clients(shared_broker, f"late-{uid}", protocol)
    late.subscribe(topic, 1)
    m = late.message()
    assert (m.payload, m.retain, m.qos) == (b"kept", True, 1)
    pub.publish(topic, b"", qos=1, retain=True)
    assert late.message().payload == b""  # forwarded live
    later = clients(shared_broker, f"later-{uid}", protocol)
    later.subscribe(f"paho/{uid}/#", 1)
    pub.publish(f"paho/{uid}/marker", b"m", qos=1)
    assert [m.topic for m in later.messages_until(f"paho/{uid}/marker")] == [f"paho/{uid}/marker"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_will_on_connection_loss(shared_broker, clients, uid, protocol):
    """The will of a client whose connection dies (socket shut down, no DISCONNECT) reaches a
    subscriber."""
    will_topic = f"paho/{uid}/will"
    watcher = clients(shared_broker, f"watch-{uid}", protocol)
    watcher.subscribe(will_topic, 1)
    doomed = clients(
        shared_broker, f"doomed-{uid}", protocol, topic=will_topic, payload=b"lost", qos=1
    )
    sock = doomed.c.socket()
    assert sock is not None
    sock.shutdown(socket.SHUT_RDWR)  # FIN without DISCONNECT, like a crashed client
    m = watcher.message()
    assert (m.topic, m.payload, m.qos) == (will_topic, b"lost", 1)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_clean_disconnect_sends_no_will(shared_broker, clients, uid, protocol):
    """disconnect() sends DISCONNECT: on_disconnect reports success and no will is published."""
    will_topic = f"paho/{uid}/will"
    watcher = clients(shared_broker, f"watch-{uid}", protocol)
    watcher.subscribe(f"paho/{uid}/#", 1)
    polite = clients(
        shared_broker, f"polite-{uid}", protocol, topic=will_topic, payload=b"lost", qos=1
    )
    polite.c.disconnect()
    rc = polite.disconnects.get(timeout=TIMEOUT)
    assert not rc.is_failure, f"on_disconnect {rc}"
    watcher_pub = clients(shared_broker, f"marker-{uid}", protocol)
    watcher_pub.publish(f"paho/{uid}/marker", b"m", qos=1)
    assert [m.topic for m in watcher.messages_until(f"paho/{uid}/marker")] == [f"paho/{uid}/marker"]


def test_v5_properties_forwarded(shared_broker, clients, uid):
    """MQTT 5: user properties, content type, response topic and correlation data reach the
    subscriber unaltered [MQTT-3.3.2-17/18, MQTT-3.3.2-20]."""
    v5 = MQTTProtocolVersion.MQTTv5
    sub = clients(shared_broker, f"sub-{uid}", v5)
    pub = clients(shared_broker, f"pub-{uid}", v5)
    sub.subscribe(f"paho/{uid}/props", 1)
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("k1", "v1"), ("k1", "v2"), ("k2", "")]
    props.ContentType = "text/plain"
    props.ResponseTopic = f"paho/{uid}/reply"
    props.CorrelationData = b"\x00\x01corr"
    pub.publish(f"paho/{uid}/props", b"p", qos=1, properties=props)
    m = sub.message()
    got = m.properties
    assert got.UserProperty == [("k1", "v1"), ("k1", "v2"), ("k2", "")]
    assert got.ContentType == "text/plain"
    assert got.ResponseTopic == f"paho/{uid}/reply"
    assert got.CorrelationData == b"\x00\x01corr"


def test_many_messages_in_order(shared_broker, clients, uid):
    """200 QoS 1 messages through paho arrive complete and in order."""
    sub = clients(shared_broker, f"sub-{uid}", MQTTProtocolVersion.MQTTv311)
    pub = clients(shared_broker, f"pub-{uid}", MQTTProtocolVersion.MQTTv311)
    sub.subscribe(f"paho/{uid}/seq", 1)
    infos = [pub.c.publish(f"paho/{uid}/seq", str(i).encode(), qos=1) for i in range(200)]
    for info in infos:
        info.wait_for_publish(TIMEOUT)
    got = [sub.message().payload for _ in range(200)]
    assert got == [str(i).encode() for i in range(200)]
