"""Fixtures for the raw-byte conformance tests (the brokers come from tests/conftest.py)."""

from __future__ import annotations

import itertools
import os
import sys

import pytest

# mqtt_raw lives next to the tests; make it importable whatever pytest's import mode is.
sys.path.insert(0, os.path.dirname(__file__))

_counter = itertools.count()


@pytest.fixture
def uid(request: pytest.FixtureRequest) -> str:
    """A short string unique to this test run, for client ids and topics on a shared broker."""
    return f"t{os.getpid() % 10000}-{next(_counter)}"


@pytest.fixture(scope="module")
def srv(shared_broker) -> tuple[str, int]:
    """Address of a broker shared by the whole module (tests use distinct ids/topics)."""
    return (shared_broker.host, shared_broker.port)


@pytest.fixture
def fresh(broker) -> tuple[str, int]:
    """Address of a broker started for this test only."""
    return (broker.host, broker.port)


@pytest.fixture(scope="session")
def mosquitto_mode() -> bool:
    """True when validating the tests against Mosquitto (MQTTD_TEST_BROKER=mosquitto)."""
    return os.environ.get("MQTTD_TEST_BROKER", "").strip().lower() == "mosquitto"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "v4_only: malformed-packet case that applies to 3.1.1 only")
    config.addinivalue_line(
        "markers",
        "mosquitto_deviation_at(levels, reason): like mosquitto_deviation, only for the given "
        "values of the test's `level` parameter",
    )


@pytest.fixture(autouse=True)
def _skip_level_specific_deviation(request: pytest.FixtureRequest, mosquitto_mode: bool) -> None:
    marker = request.node.get_closest_marker("mosquitto_deviation_at")
    if marker is None or not mosquitto_mode:
        return
    if os.environ.get("MQTTD_TEST_CHECK_DEVIATIONS") == "1":
        return
    levels, reason = marker.args
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("level") in levels:
        pytest.skip(f"Mosquitto deviates from the spec here: {reason}")
