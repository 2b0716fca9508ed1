"""Fixtures for the real-client interop tests (the brokers come from tests/conftest.py)."""

from __future__ import annotations

import itertools
import os

import pytest

_counter = itertools.count()


@pytest.fixture
def uid() -> str:
    """A short string unique to this test run, for client ids and topics on a shared broker."""
    return f"i{os.getpid() % 10000}-{next(_counter)}"


def root_conftest(config: pytest.Config):  # -> the tests/conftest.py module
    """tests/conftest.py as loaded by pytest (it cannot be imported as `conftest` from here: that
    name is this file). Gives access to its helpers, e.g. require_program()."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conftest.py")
    mod = config.pluginmanager.get_plugin(path)
    assert mod is not None, f"{path} is not loaded"
    return mod


@pytest.fixture
def require_program(request: pytest.FixtureRequest):
    """tests/conftest.py's require_program(name): the program's path, or skip with a reason."""
    return root_conftest(request.config).require_program
