"""The twin fixtures: one test body, run on the compiled module and on its pure-Python twin.

Every hot path exists twice (mqttd/_speedups.py, mqttd/bench/hotloop.py): a compiled module and a
pure twin with the same behaviour. A test that takes ``codec_twin``, ``match_twin``,
``route_twin`` or ``loadgen_twin`` runs once per implementation, with the ids ``compiled`` and
``pure``; a test that compares the two takes ``<name>_compiled`` and imports the pure twin.

- ``MQTTD_NO_EXTENSIONS=1`` asks for the pure twins: the compiled runs are skipped.
- Otherwise the compiled module is expected, and the compiled runs FAIL (they are not skipped)
  when it did not load, is not an extension module, or is not the one mqttd itself runs: a build
  that silently fell back to pure Python must not pass as tested (as in aiohttp and multidict).

The fixtures are session-scoped: Hypothesis refuses function-scoped fixtures in ``@given`` tests.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
from types import ModuleType
from typing import NamedTuple

import pytest

FORCED_PURE = os.environ.get("MQTTD_NO_EXTENSIONS", "") == "1"
IMPLS = ["compiled", "pure"]


class Twin(NamedTuple):
    compiled: str  #: the compiled module
    pure: str  #: its pure-Python twin
    picker: str  #: the module that picks one of them when mqttd is imported ...
    attr: str  #: ... and the name it gives the pick


TWINS: dict[str, Twin] = {
    "codec": Twin("mqttd._codec", "mqttd._pure._codec", "mqttd._speedups", "codec"),
    "match": Twin("mqttd._match", "mqttd._pure._match", "mqttd._speedups", "match"),
    "route": Twin("mqttd._route", "mqttd._pure._route", "mqttd._speedups", "route"),
    "loadgen": Twin(
        "mqttd.bench._loadgen", "mqttd.bench._loadgen_py", "mqttd.bench.hotloop", "loadgen"
    ),
}


def load_compiled(name: str) -> ModuleType:
    """The compiled module of twin ``name``: skips under ``MQTTD_NO_EXTENSIONS=1``, fails when
    it should be there and is not (or is not what mqttd runs)."""
    twin = TWINS[name]
    if FORCED_PURE:
        pytest.skip(f"MQTTD_NO_EXTENSIONS=1: only the pure twin of {twin.compiled} is tested")
    build = "build it: pip install -e . (or set MQTTD_NO_EXTENSIONS=1 to test the pure twins only)"
    try:
        mod = importlib.import_module(twin.compiled)
    except ImportError as exc:
        pytest.fail(f"{twin.compiled} (compiled) did not load: {exc}; {build}", pytrace=False)
    origin = mod.__file__ or ""
    if not origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
        pytest.fail(
            f"{twin.compiled} is not an extension module: {origin!r}; {build}", pytrace=False
        )
    package = importlib.import_module(twin.compiled.rpartition(".")[0])
    here = os.path.dirname(os.path.realpath(package.__file__ or ""))
    if os.path.dirname(os.path.realpath(origin)) != here:
        pytest.fail(
            f"{twin.compiled} loaded from {origin}, not from this tree ({here})", pytrace=False
        )
    # What mqttd runs must be this module, not a silent fallback to the twin.
    chosen = getattr(importlib.import_module(twin.picker), twin.attr)
    if chosen is not mod:
        pytest.fail(
            f"{twin.picker}.{twin.attr} is {chosen.__name__}, not {twin.compiled}", pytrace=False
        )
    return mod


def load_twin(name: str, impl: str) -> ModuleType:
    """Twin ``name`` as ``impl`` ("compiled" or "pure")."""
    if impl == "compiled":
        return load_compiled(name)
    assert impl == "pure", impl
    return importlib.import_module(TWINS[name].pure)


@pytest.fixture(scope="session", params=IMPLS)
def codec_twin(request: pytest.FixtureRequest) -> ModuleType:
    """``mqttd._codec`` / ``mqttd._pure._codec``."""
    return load_twin("codec", request.param)


@pytest.fixture(scope="session", params=IMPLS)
def match_twin(request: pytest.FixtureRequest) -> ModuleType:
    """``mqttd._match`` / ``mqttd._pure._match``."""
    return load_twin("match", request.param)


@pytest.fixture(scope="session", params=IMPLS)
def route_twin(request: pytest.FixtureRequest) -> ModuleType:
    """``mqttd._route`` / ``mqttd._pure._route``."""
    return load_twin("route", request.param)


@pytest.fixture(scope="session", params=IMPLS)
def loadgen_twin(request: pytest.FixtureRequest) -> ModuleType:
    """``mqttd.bench._loadgen`` / ``mqttd.bench._loadgen_py``."""
    return load_twin("loadgen", request.param)


@pytest.fixture(scope="session")
def codec_compiled() -> ModuleType:
    return load_compiled("codec")


@pytest.fixture(scope="session")
def match_compiled() -> ModuleType:
    return load_compiled("match")


@pytest.fixture(scope="session")
def route_compiled() -> ModuleType:
    return load_compiled("route")


@pytest.fixture(scope="session")
def loadgen_compiled() -> ModuleType:
    return load_compiled("loadgen")
