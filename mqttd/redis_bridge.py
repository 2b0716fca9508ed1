"""Moved to :mod:`mqttd.redis` (mqttd 0.7). mqttd 0.6.0 documented
``mqttd.redis_bridge.RedisUnavailable`` for ``await app.start()``; this module keeps such
programs running, with a DeprecationWarning when it is imported."""

from __future__ import annotations

import warnings

from mqttd.redis import RedisUnavailable

warnings.warn(
    "mqttd.redis_bridge has moved: import RedisUnavailable from mqttd.redis",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["RedisUnavailable"]
