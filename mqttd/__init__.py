"""mqttd: a fast MQTT 3.1.1 / 5.0 broker for Python, with Cython hot paths.

As a library: ``from mqttd import MQTTApp, MQTTMessage, MQTTClient`` (see :mod:`mqttd.app`).
"""

from __future__ import annotations

from mqttd.app import MQTTApp, MQTTClient, MQTTMessage, QoS
from mqttd.version import __version__

__all__ = ["MQTTApp", "MQTTClient", "MQTTMessage", "QoS", "__version__"]
