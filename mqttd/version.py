"""The version of mqttd, and the one line that says what runs (``mqttd --version``, start log)."""

from __future__ import annotations

import sys

from mqttd._speedups import describe

__version__ = "0.6.0"


def version_line() -> str:
    return f"mqttd {__version__} ({describe()}), Python {sys.version.split()[0]}"
