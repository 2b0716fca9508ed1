"""Picks the compiled hot paths or their pure-Python twins, once, at import.

Each compiled module (``mqttd._codec``, ``mqttd._match``, ``mqttd._route``) has a twin in
``mqttd._pure`` with the same behaviour; the twin is the reference the compiled module is tested
against, and the fallback where no compiler was available. ``MQTTD_NO_EXTENSIONS=1`` forces the
twins. A compiled module that fails to import is reported in one warning line naming it.
"""

from __future__ import annotations

import importlib
import logging
import os
from types import ModuleType

log = logging.getLogger("mqttd")

FORCED_PURE = os.environ.get("MQTTD_NO_EXTENSIONS", "") == "1"
NAMES = ("_codec", "_match", "_route")

#: module name -> True when the compiled module is in use
COMPILED: dict[str, bool] = {}


def _load(name: str) -> ModuleType:
    if not FORCED_PURE:
        try:
            mod = importlib.import_module(f"mqttd.{name}")
            COMPILED[name] = True
            return mod
        except ImportError as exc:
            log.warning(
                "mqttd: compiled module mqttd.%s did not load (%s); using the pure-Python twin",
                name,
                exc,
            )
    COMPILED[name] = False
    return importlib.import_module(f"mqttd._pure.{name}")


codec = _load("_codec")
match = _load("_match")
route = _load("_route")


def describe() -> str:
    """One line saying which implementation of each hot path is in use."""
    if all(COMPILED.values()):
        return "compiled extensions (Cython)"
    if FORCED_PURE:
        return "pure Python (MQTTD_NO_EXTENSIONS=1)"
    parts = [f"{n.lstrip('_')}={'compiled' if c else 'pure'}" for n, c in COMPILED.items()]
    return "mixed: " + ", ".join(parts)
