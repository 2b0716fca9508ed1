"""The node's log handler (mqttd.logs): lines logged on the event loop are written together a
moment later, in order; nothing is kept past a line logged off the loop, a full buffer, the
handler's flush (logging.shutdown at exit) or the end of the loop that held them."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import threading

import pytest

from mqttd import logs


@pytest.fixture
def logged():
    """A StreamLog on a StringIO, on a logger of the test's own."""
    out = io.StringIO()
    handler = logs.StreamLog(out)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger(f"mqttd.test.{id(out)}")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    yield log, out, handler
    log.removeHandler(handler)


def test_lines_on_the_loop_are_written_together_in_order(logged) -> None:
    log, out, _ = logged

    async def main() -> tuple[str, str]:
        for i in range(3):
            log.info("line %d", i)
        before = out.getvalue()
        await asyncio.sleep(logs.FLUSH_AFTER * 2)
        return before, out.getvalue()

    before, after = asyncio.run(main())
    assert before == ""
    assert after == "line 0\nline 1\nline 2\n"


def test_a_line_off_the_loop_writes_the_waiting_ones_first(logged) -> None:
    log, out, _ = logged

    async def main() -> str:
        log.info("on the loop")
        t = threading.Thread(target=log.info, args=("from a thread",))
        t.start()
        t.join()
        return out.getvalue()

    assert asyncio.run(main()) == "on the loop\nfrom a thread\n"


def test_a_full_buffer_is_written_at_once(logged) -> None:
    log, out, _ = logged
    big = "x" * 1000

    async def main() -> int:
        for _ in range(logs.FLUSH_BYTES // 1000 + 2):
            log.info(big)
        return len(out.getvalue())

    assert asyncio.run(main()) > logs.FLUSH_BYTES


def test_lines_of_a_loop_that_ended_are_written_by_the_next_loop(logged) -> None:
    log, out, handler = logged

    async def one(text: str) -> None:
        log.info(text)  # the loop ends before its timer: the line waits

    asyncio.run(one("first"))
    assert out.getvalue() == ""

    async def two() -> None:
        log.info("second")
        await asyncio.sleep(logs.FLUSH_AFTER * 2)

    asyncio.run(two())
    assert out.getvalue() == "first\nsecond\n"
    asyncio.run(one("third"))
    handler.flush()  # as logging.shutdown does at exit
    assert out.getvalue().endswith("third\n")


def test_the_time_of_a_second_is_formatted_once_and_right() -> None:
    f = logs.TextFormatter()
    r1 = logging.LogRecord("mqttd", logging.INFO, "", 0, "a", None, None)
    r2 = logging.LogRecord("mqttd", logging.INFO, "", 0, "b", None, None)
    plain = logging.Formatter(logs.LOG_FORMAT)
    for r in (r1, r2, r1):
        assert f.formatTime(r) == plain.formatTime(r)
        assert f.formatTime(r, "%H:%M") == plain.formatTime(r, "%H:%M")


@pytest.fixture
def node_log(monkeypatch):
    """set_up(fmt): the root logger as setup_logging leaves it, pytest's handlers set aside for
    the rest of the test (they are added per phase: the test calls it); the output, and the
    messages that became LogRecords."""
    root = logging.getLogger()
    level = root.level
    for flag in ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing"):
        monkeypatch.setattr(logging, flag, getattr(logging, flag))
    monkeypatch.setattr(logs, "_node", None)
    out = io.StringIO()
    records = []
    make = logging.Logger.makeRecord

    def counted(self, *args, **kwargs):
        records.append(args[4])
        return make(self, *args, **kwargs)

    monkeypatch.setattr(logging.Logger, "makeRecord", counted)
    ours = []

    def set_up(fmt: str = "text") -> logging.Handler:
        root.handlers.clear()
        logs.setup_logging("info", out, fmt)
        ours.extend(root.handlers)
        return root.handlers[0]

    yield set_up, out, records
    for handler in ours:
        root.removeHandler(handler)
    root.setLevel(level)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_connection_line_is_the_line_its_record_would_give(node_log, fmt) -> None:
    set_up, out, records = node_log
    handler = set_up(fmt)
    log = logging.getLogger("mqttd")
    logs.info(log, "connected client %r from %s", "c1", "127.0.0.1:5")
    handler.flush()
    assert records == []  # no LogRecord made
    direct = out.getvalue()
    log.info("connected client %r from %s", "c1", "127.0.0.1:5")
    handler.flush()
    assert records == ["connected client %r from %s"]
    by_record = out.getvalue()[len(direct) :]
    # The same line but for the time (the milliseconds may differ)
    cut = 23 if fmt == "text" else 35
    assert direct[cut:] == by_record[cut:]
    assert direct[:19] == by_record[:19] or direct[:10] == by_record[:10]
    if fmt == "text":
        assert f"mqttd[{os.getpid()}] INFO: connected client 'c1' from 127.0.0.1:5\n" in direct
    else:
        line = json.loads(direct)
        assert line["pid"] == os.getpid() and line["logger"] == "mqttd"
        assert line["message"] == "connected client 'c1' from 127.0.0.1:5"


def test_a_connection_line_goes_through_logging_once_the_log_is_configured_otherwise(
    node_log,
) -> None:
    set_up, out, records = node_log
    set_up()
    log = logging.getLogger("mqttd")
    seen = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]
    for attach, detach in (
        (lambda: log.addHandler(handler), lambda: log.removeHandler(handler)),
        (
            lambda: logging.getLogger().addHandler(handler),
            lambda: logging.getLogger().removeHandler(handler),
        ),
        (lambda: logging.getLogger().handlers[0].addFilter(lambda record: True), lambda: None),
    ):
        attach()
        logs.info(log, "connected client %r", "c2")
        detach()
    assert len(records) == 3
    assert [r.getMessage() for r in seen] == ["connected client 'c2'"] * 2
    log.setLevel(logging.WARNING)
    try:
        logs.info(log, "not logged")
    finally:
        log.setLevel(logging.NOTSET)
    assert len(records) == 3
