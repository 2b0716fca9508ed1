"""The broker's view of the other nodes (mqttd.peers): a node alone, and the rules every Redis
transport shares, checked on bridges that are not connected (nothing is sent anywhere)."""

from __future__ import annotations

import asyncio
import warnings

import pytest

from mqttd.broker import Broker, BrokerConfig
from mqttd.peers import LOCAL
from mqttd.redis import RedisClusterBridge, open_bridge
from mqttd.redis.bridge import RedisBridge


def test_a_node_alone_has_local_peers() -> None:
    broker = Broker(BrokerConfig(sys_interval=0))
    assert broker.peers is LOCAL and not LOCAL.remote
    assert broker.bridge is None  # what 0.6.0 programs read
    assert LOCAL.route_ready("a/b") is None
    assert LOCAL.is_mine("g", "a/#", object()) is True


@pytest.mark.parametrize(
    "url, kind",
    [("redis://127.0.0.1:1", RedisBridge), ("redis+cluster://127.0.0.1:1", RedisClusterBridge)],
)
def test_sys_stays_on_its_node_whatever_the_transport(url: str, kind: type) -> None:
    """$SYS is per node, as in Mosquitto: never stamped, never forwarded, not even counted as
    'not forwarded' while Redis is away. A bridge that is down counts every other message."""

    async def main() -> tuple[int, int]:
        broker = Broker(BrokerConfig(sys_interval=0))
        broker.attach(asyncio.get_running_loop())
        bridge = open_bridge(broker, url)
        assert type(bridge) is kind
        broker.peers = bridge  # never started: down
        assert broker.bridge is bridge
        sys_msg = broker.make_message("$SYS/broker/uptime", b"5 seconds", 0, True, None)
        broker.publish(sys_msg)
        after_sys = bridge.stats["not_forwarded"]
        broker.publish(broker.make_message("a/b", b"x", 0, False, None))
        return after_sys, bridge.stats["not_forwarded"]

    assert asyncio.run(main()) == (0, 1)


def test_old_module_name_still_imports() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import importlib

        import mqttd.redis_bridge as old

        importlib.reload(old)
    from mqttd.redis import RedisUnavailable

    assert old.RedisUnavailable is RedisUnavailable
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)
