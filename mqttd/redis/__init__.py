"""Redis as the distributed engine: any number of mqttd nodes behave as one broker (docs/redis.md).

One idea per module:

- ``url``: the Redis URLs mqttd takes (``check_redis_url``) and which name a cluster;
- ``envelope``: what a message looks like on Redis (single, batched, retained, handed over);
- ``resp``: RESP framing, the asyncio protocols of the two long-lived connections;
- ``keys``: MQTT filters as Redis channels and glob patterns;
- ``bridge``: ``RedisBridge``, the node joined through one Redis server;
- ``cluster``: ``RedisClusterBridge``, the same through a Redis Cluster (sharded pub/sub);
- ``storage``: ``RedisStorage``, retained messages shared through Redis;
- ``streams``: ``Streams``, QoS 1/2 between nodes through a Redis stream (kept across outages).

``open_bridge(broker, url, prefix)`` is the way in: it picks the transport from the URL.

Importing the package loads only ``url``, which imports nothing of mqttd: ``mqttd.broker`` checks
a URL with it at module top without depending on the bridge, which sits above the broker. The other
names load on first use (they bring redis-py and hiredis, about 0.1 s to import).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mqttd.redis.url import RedisUnavailable, check_redis_url, is_cluster_url

if TYPE_CHECKING:
    from mqttd.broker import Broker
    from mqttd.redis.bridge import RedisBridge
    from mqttd.redis.cluster import RedisClusterBridge
    from mqttd.redis.storage import RedisStorage

__all__ = [
    "RedisBridge",
    "RedisClusterBridge",
    "RedisStorage",
    "RedisUnavailable",
    "check_redis_url",
    "is_cluster_url",
    "open_bridge",
]

#: the names loaded on first use (PEP 562), and the module of each
_LAZY = {
    "RedisBridge": "bridge",
    "RedisClusterBridge": "cluster",
    "RedisStorage": "storage",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def open_bridge(broker: Broker, url: str, prefix: str = "") -> RedisBridge:
    """The bridge joining ``broker`` to the other nodes through ``url`` (not connected yet:
    ``await bridge.start()``). A ``redis+cluster://`` / ``rediss+cluster://`` URL gets the sharded
    transport; everything above the transport is shared."""
    if is_cluster_url(url):
        from mqttd.redis.cluster import RedisClusterBridge

        return RedisClusterBridge(broker, url, prefix)
    from mqttd.redis.bridge import RedisBridge

    return RedisBridge(broker, url, prefix)
