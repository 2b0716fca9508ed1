"""The store of a node joined through Redis: retained messages shared by every node."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from mqttd.storage import MemoryStorage

if TYPE_CHECKING:
    from mqttd.redis.bridge import RedisBridge

log = logging.getLogger("mqttd.redis")


class RedisStorage(MemoryStorage):
    """The store of a node joined through Redis: retained messages are kept in Redis for every
    node (and in this node's memory, which serves while Redis is away); sessions and client ids
    stay in memory, with the bridge moving them between nodes."""

    def __init__(self, bridge: RedisBridge) -> None:
        super().__init__()
        self.bridge = bridge

    def retain(self, msg: Any) -> None:
        super().retain(msg)
        origin = msg.origin
        if origin is None or origin[0] == self.bridge.node:
            # Entered here: written to Redis once, by this node (never $SYS, which is per node)
            if not msg.topic.startswith("$SYS"):
                self.bridge.store_retained(msg)

    def retained_now(self, filt: str) -> list[Any] | None:
        # While Redis is up it is the one that knows what every node retained; $SYS is this
        # node's own
        if self.bridge.up and not filt.startswith("$SYS"):
            return None
        return super().retained_now(filt)

    async def retained(self, filt: str) -> list[Any]:
        if self.bridge.up and not filt.startswith("$SYS"):
            try:
                return await self.bridge.fetch_retained(filt)
            except (OSError, RedisError, TimeoutError) as exc:
                log.warning("retained messages from this node only: Redis said %s", exc)
        return await super().retained(filt)
