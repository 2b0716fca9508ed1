"""Fixtures for the security tests: raw MQTT clients (tests/conformance/mqtt_raw.py)."""

from __future__ import annotations

import os
import sys

# mqtt_raw lives with the conformance tests; make it importable whatever pytest's import mode is
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "conformance"))
