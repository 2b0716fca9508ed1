"""Picks the compiled hot loop ``mqttd.bench._loadgen`` or its pure twin, once, at import.

Same rule as mqttd/_speedups.py: ``MQTTD_NO_EXTENSIONS=1`` forces the twin; a compiled module that
fails to import is named in one warning line. The pure twin is correct but far slower: a
benchmark run with it measures the generator, not the broker, and the report says so.
"""

from __future__ import annotations

import logging
import os
from types import ModuleType

log = logging.getLogger("mqttd.bench")

FORCED_PURE = os.environ.get("MQTTD_NO_EXTENSIONS", "") == "1"


def _load() -> tuple[ModuleType, bool]:
    if not FORCED_PURE:
        try:
            from mqttd.bench import _loadgen  # type: ignore[attr-defined]

            return _loadgen, True
        except ImportError as exc:
            log.warning(
                "mqttd.bench: compiled module mqttd.bench._loadgen did not load (%s); "
                "using the pure-Python twin (slow: the generator may be the bottleneck)",
                exc,
            )
    from mqttd.bench import _loadgen_py

    return _loadgen_py, False


loadgen, COMPILED = _load()
FrameCounter = loadgen.FrameCounter
fill_publishes = loadgen.fill_publishes
HEAD_SIZE: int = loadgen.HEAD_SIZE
STAMP_OFF: int = loadgen.STAMP_OFF


def describe() -> str:
    if COMPILED:
        return "compiled (Cython)"
    return "pure Python" + (" (MQTTD_NO_EXTENSIONS=1)" if FORCED_PURE else "")
