"""mqttd: a fast MQTT 3.1.1 / 5.0 broker for Python, with Cython hot paths.

As a library: ``from mqttd import MQTTApp, MQTTMessage, MQTTClient`` (and ``ListenerConfig``) (see :mod:`mqttd.app`).
"""

from __future__ import annotations

from mqttd.app import MQTTApp, MQTTClient, MQTTMessage, QoS
from mqttd.broker import ListenerConfig
from mqttd.version import __version__

__all__ = ["ListenerConfig", "MQTTApp", "MQTTClient", "MQTTMessage", "QoS", "__version__"]
