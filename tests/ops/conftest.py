"""Fixtures for the listener tests: raw MQTT packets (tests/conformance/mqtt_raw.py)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "conformance"))
