"""mqttd: a fast MQTT 3.1.1 / 5.0 broker for Python, with Cython hot paths."""

from __future__ import annotations

__version__ = "0.6.0"

__all__ = ["__version__"]
