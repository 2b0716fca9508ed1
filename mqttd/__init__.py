"""mqttd: a fast MQTT 3.1.1 / 5.0 broker for Python, with Cython hot paths.

As a library: ``from mqttd import MQTTApp, MQTTMessage, MQTTClient`` (and ``ListenerConfig``) (see :mod:`mqttd.app`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mqttd.version import __version__

if TYPE_CHECKING:
    from mqttd.app import MQTTApp, MQTTClient, MQTTMessage, QoS
    from mqttd.broker import ListenerConfig

__all__ = ["ListenerConfig", "MQTTApp", "MQTTClient", "MQTTMessage", "QoS", "__version__"]


def __getattr__(name: str) -> Any:
    # The library's names are imported on first use: the `mqttd` command never loads the
    # library (mqttd.app) and starts smaller (issue 16: RSS at start)
    if name == "ListenerConfig":
        from mqttd.broker import ListenerConfig

        return ListenerConfig
    if name in ("MQTTApp", "MQTTClient", "MQTTMessage", "QoS"):
        from mqttd import app

        return getattr(app, name)
    raise AttributeError(f"module 'mqttd' has no attribute {name!r}")
