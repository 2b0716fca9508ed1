"""Fixtures for the library tests: an MQTTApp served from a thread of the test process.

The app runs in its own event loop in a background thread, on a free port of 127.0.0.1; the
tests drive it with real clients (paho-mqtt, curl, raw sockets) from the test thread, and can
run coroutines in the app's loop (``app_runner.call(app.publish(...))``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

from mqttd import MQTTApp


class AppRunner:
    def __init__(self, app: MQTTApp) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        try:
            self.call(app.start())
        except BaseException:
            self._end_loop()
            raise
        self.host = "127.0.0.1"
        self.port = app.port
        assert self.port != 0

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 10.0) -> Any:
        """Run ``coro`` in the app's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        try:
            self.call(self.app.shutdown(5.0))
        finally:
            self._end_loop()

    def _end_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def serve() -> Iterator[Callable[[MQTTApp], AppRunner]]:
    """``serve(app)`` starts the app (give it ``host="127.0.0.1", port=0``); stopped after."""
    import os

    if os.environ.get("MQTTD_TEST_BROKER", "mqttd").strip().lower() == "mosquitto":
        pytest.skip("library tests run mqttd's MQTTApp, not another broker")
    started: list[AppRunner] = []

    def start(app: MQTTApp) -> AppRunner:
        runner = AppRunner(app)
        started.append(runner)
        return runner

    try:
        yield start
    finally:
        for runner in started:
            runner.stop()


def local_app(**kwargs: Any) -> MQTTApp:
    """An MQTTApp on a free port of 127.0.0.1 with $SYS off."""
    kwargs.setdefault("host", "127.0.0.1")
    kwargs.setdefault("port", 0)
    kwargs.setdefault("sys_interval", 0)
    return MQTTApp(**kwargs)


from tests.library.programs import programs  # noqa: E402,F401  (the fixture, for tests/library)
