"""Fixtures of the hostile suite: the raw-byte helpers of tests/conformance, enough file
descriptors for the many-socket cases, and no case in Mosquitto validation mode (the cases use
mqttd's own options and read the broker's memory from /proc)."""

from __future__ import annotations

import os
import resource
import sys

import pytest

# mqtt_raw (the independent byte builder and reader) lives with the conformance tests.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "conformance"))


def _raise_nofile() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit, before any broker starts: the broker inherits
    it, and the many-socket cases need a few thousand descriptors on both sides."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


_raise_nofile()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("MQTTD_TEST_BROKER", "mqttd").strip().lower() not in ("", "mqttd"):
        skip = pytest.mark.skip(reason="hostile suite: mqttd options and /proc RSS only")
        here = os.path.dirname(__file__)
        for item in items:
            if str(item.path).startswith(here):
                item.add_marker(skip)
