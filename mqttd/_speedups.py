"""Picks the compiled hot paths or their pure-Python twins, once, at import.

Each compiled module (``mqttd._codec``, ``mqttd._match``, ``mqttd._route``) has a twin in
``mqttd._pure`` with the same behaviour; the twin is the reference the compiled module is tested
against, and the fallback where no compiler was available. ``MQTTD_NO_EXTENSIONS=1`` forces the
twins. Compiled modules that do not load are reported in one warning line naming them; in a source
checkout without built extensions that line says how to build them in place.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import sys
from types import ModuleType
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

log = logging.getLogger("mqttd")

FORCED_PURE = os.environ.get("MQTTD_NO_EXTENSIONS", "") == "1"
#: this package's directory: a compiled module is used only from here
HERE = os.path.dirname(os.path.realpath(__file__))

#: module name -> True when the compiled module is in use
COMPILED: dict[str, bool] = {}
#: module name -> why its compiled version is not in use (empty when forced pure)
FAILED: dict[str, str] = {}
#: another mqttd package directory that offered compiled modules this one lacks (a shadowed
#: editable install); None when there is none
FOREIGN: str | None = None


def _compiled(name: str) -> ModuleType | None:
    """The compiled module ``mqttd.<name>`` of this package, or None (why: in FAILED)."""
    global FOREIGN
    full = f"mqttd.{name}"
    if not FORCED_PURE:
        try:
            spec = importlib.util.find_spec(full)
            origin = spec.origin if spec is not None else None
            where = os.path.dirname(os.path.realpath(origin)) if origin else None
            if where is None:
                FAILED[name] = "not built"
            elif where != HERE:
                # An editable install's import hook serves its own tree's .so files to any
                # package named mqttd: compiled code of another tree (maybe another version)
                # must not run under this one's Python code.
                FOREIGN = where
                FAILED[name] = "not built"
            else:
                mod = importlib.import_module(full)
                COMPILED[name] = True
                return mod
        except ImportError as exc:
            FAILED[name] = str(exc)
    COMPILED[name] = False
    return None


def _load(name: str) -> ModuleType:
    mod = _compiled(name)
    return mod if mod is not None else importlib.import_module(f"mqttd._pure.{name}")


def checkout_root() -> str | None:
    """The source checkout this package runs from (setup.py and the .pyx sources beside it),
    or None for an installed package."""
    root = os.path.dirname(HERE)
    if os.path.exists(os.path.join(root, "setup.py")) and os.path.exists(
        os.path.join(HERE, "_codec.pyx")
    ):
        return root
    return None


def _installed_elsewhere() -> str | None:
    """Where an installed mqttd lives when it is not this package (None if nowhere else)."""
    if FOREIGN is not None:
        return FOREIGN
    import importlib.metadata

    for dist in importlib.metadata.distributions(name="mqttd"):
        location = None
        direct = dist.read_text("direct_url.json")
        if direct:  # an editable install points at its tree
            info = json.loads(direct)
            if info.get("dir_info", {}).get("editable"):
                location = os.path.join(unquote(urlsplit(info["url"]).path), "mqttd")
        if location is None:
            location = str(dist.locate_file("mqttd"))
        if os.path.isdir(location) and os.path.realpath(location) != HERE:
            return os.path.realpath(location)
    return None


def _warning() -> str | None:
    """The one warning line about compiled modules not in use, or None when all are."""
    if not FAILED:
        return None
    names = ", ".join(f"mqttd.{n}" for n in FAILED)
    root = checkout_root()
    if root is not None and all(reason == "not built" for reason in FAILED.values()):
        what = "no compiled extensions" if len(FAILED) == len(COMPILED) else f"no compiled {names}"
        other = _installed_elsewhere()
        shadows = f" and shadows the installed mqttd at {other}" if other else ""
        return (
            f"mqttd: the source checkout at {root} has {what}{shadows}; using the pure-Python "
            "twins (slower); build them in place with `python setup.py build_ext --inplace` "
            "or `pip install -e .`"
        )
    reasons = "; ".join(f"mqttd.{n}: {reason}" for n, reason in FAILED.items())
    return f"mqttd: compiled {names} did not load ({reasons}); using the pure-Python twins"


if TYPE_CHECKING:
    # mypy reads the pure twins, the reference the compiled modules are held to (tests/unit): one
    # source of the types, and no stubs to keep in step with them
    from mqttd._pure import _codec as codec
    from mqttd._pure import _match as match
    from mqttd._pure import _route as route
else:
    codec = _load("_codec")
    match = _load("_match")
    route = _load("_route")
#: mqttd._stream: plain TCP connections through the node's own epoll set (mqttd.listener). Linux
#: only; its twin is the event loop's own transport, used where it is None
stream: ModuleType | None = _compiled("_stream") if sys.platform == "linux" else None
if (_line := _warning()) is not None:
    log.warning("%s", _line)


def describe() -> str:
    """One line saying which implementation of each hot path is in use."""
    if all(COMPILED.values()):
        return "compiled extensions (Cython)"
    if FORCED_PURE:
        return "pure Python (MQTTD_NO_EXTENSIONS=1)"
    if not any(COMPILED.values()):
        if checkout_root() is not None:
            return "pure Python (extensions not built in this checkout)"
        return "pure Python (the compiled extensions did not load)"
    parts = [f"{n.lstrip('_')}={'compiled' if c else 'pure'}" for n, c in COMPILED.items()]
    return "mixed: " + ", ".join(parts)
