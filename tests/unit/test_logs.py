"""The node's log handler (mqttd.logs): lines logged on the event loop are written together a
moment later, in order; nothing is kept past a line logged off the loop, a full buffer, the
handler's flush (logging.shutdown at exit) or the end of the loop that held them."""

from __future__ import annotations

import asyncio
import io
import logging
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
