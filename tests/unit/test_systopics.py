"""mqttd.systopics: reserved topic names, change-only publishing, Mosquitto's load averages."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

import pytest

import mqttd
from mqttd.broker import Broker, BrokerConfig
from mqttd.node import Node
from mqttd.systopics import SysPublisher, start_publisher
from mqttd.topics import is_reserved_topic


@pytest.mark.parametrize(
    ("topic", "reserved"),
    [
        ("$SYS", True),
        ("$SYS/", True),
        ("$SYS/broker/version", True),
        ("$SYS/anything/else", True),
        ("$SYSTEM/x", False),  # another tree; the broker publishes nothing there
        ("$sys/broker/version", False),  # topic names are case sensitive [MQTT-4.7.3-4]
        ("a/$SYS/b", False),
        ("SYS/broker", False),
        ("$share/g/t", False),
        ("x", False),
    ],
)
def test_is_reserved_topic(topic: str, reserved: bool) -> None:
    assert is_reserved_topic(topic) is reserved


def _with_broker(interval: float, body: Callable[[Node], Any]) -> Any:
    """Run ``body`` against a node started on a free port, stopped afterwards."""

    async def main() -> Any:
        node = Node(BrokerConfig(host="127.0.0.1", port=0, sys_interval=interval))
        await node.start()
        try:
            return body(node)
        finally:
            await node.shutdown()

    return asyncio.run(main())


def _published(broker: Broker) -> list[str]:
    """Record the topics ``broker.publish`` is called with from now on."""
    topics: list[str] = []
    publish = broker.publish

    def recording(msg: Any, origin: Any = None) -> int:
        topics.append(msg.topic)
        return publish(msg, origin)

    broker.publish = recording  # type: ignore[method-assign]
    return topics


def test_interval_zero_starts_nothing() -> None:
    def body(node: Node) -> None:
        broker = node.broker
        assert node.sys_publisher is None
        assert start_publisher(broker) is None

    _with_broker(0, body)


def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError):
        SysPublisher(Broker(BrokerConfig(port=0)), 0)


def test_start_publishes_version_and_snapshot() -> None:
    def body(node: Node) -> None:
        pub = node.sys_publisher
        assert isinstance(pub, SysPublisher)
        got = pub.published
        assert got["$SYS/broker/version"] == f"mqttd {mqttd.__version__}".encode()
        assert got["$SYS/broker/clients/connected"] == b"0"
        assert got["$SYS/broker/messages/received"] == b"0"
        assert got["$SYS/broker/load/bytes/sent/15min"] == b"0.00"
        assert got["$SYS/broker/uptime"].endswith(b" seconds")

    _with_broker(3600, body)


def test_only_changed_values_are_published() -> None:
    def body(node: Node) -> None:
        broker = node.broker
        pub = node.sys_publisher
        assert isinstance(pub, SysPublisher)
        now = pub.last_update
        pub.update(now)  # the retained $SYS values themselves are counted now
        topics = _published(broker)
        broker.stats["messages_received"] += 5  # PUBLISH packets
        broker.stats["packets_received"] += 7  # all packets, as Mosquitto's messages/received
        pub.update(now)
        changed = set(topics) - {"$SYS/broker/uptime"}  # a second may have passed
        assert changed == {
            "$SYS/broker/messages/received",
            "$SYS/broker/publish/messages/received",
        }
        assert pub.published["$SYS/broker/messages/received"] == b"7"
        assert pub.published["$SYS/broker/publish/messages/received"] == b"5"
        topics.clear()
        pub.update(now)
        assert set(topics) <= {"$SYS/broker/uptime"}
        # the version is published once, at start
        assert "$SYS/broker/version" not in topics

    _with_broker(3600, body)


def test_load_averages_follow_mosquitto() -> None:
    """A rate of 600 per minute for one minute, from 0: ``600 * (1 - exp(-60 / window))``."""

    def body(node: Node) -> None:
        broker = node.broker
        pub = node.sys_publisher
        assert isinstance(pub, SysPublisher)
        start = pub.last_update
        broker.stats["bytes_received"] += 600
        out = pub.load_averages(start + 60.0)
        for label, window in (("1min", 60), ("5min", 300), ("15min", 900)):
            expected = 600 * (1 - math.exp(-60 / window))
            assert out[f"load/bytes/received/{label}"] == f"{expected:.2f}"
        # No traffic in the next minute: the 1 minute average decays by exp(-1)
        out = pub.load_averages(start + 120.0)
        expected = 600 * (1 - math.exp(-1)) * math.exp(-1)
        assert out["load/bytes/received/1min"] == f"{expected:.2f}"

    _with_broker(3600, body)
