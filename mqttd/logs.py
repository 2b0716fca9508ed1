"""The node's log: its line formats (text, JSON) and a handler that writes once per loop turn.

A connect storm logs two lines per client (connected, disconnected). Written by
``logging.StreamHandler``, each line is a ``write`` and a ``flush`` of its own, and each record
formats its time with ``strftime``: py-spy put the log at 34 % of the broker's time while 10,000
clients connected (``mqttd-bench idle``), of which writing and flushing 10 % and the time 4.6 %.
A storm's loop turns carry about one connection each, so writing once per turn saved nothing:
the lines logged on the event loop are written together :data:`FLUSH_AFTER` seconds after the
first of them (or at once past :data:`FLUSH_BYTES`), and the text of the current second is
formatted once. A line logged outside the loop (another thread, before the loop runs) is written
at once, with those waiting; ``logging.shutdown`` at exit writes what is left. What a SIGKILL
loses is at most the last :data:`FLUSH_AFTER` seconds of lines.

What was left of the log's share was the making of each line's ``LogRecord`` (about 20 % of the
broker's time in the same storm): :func:`info` writes a line straight into the node's own
handler while the log is as :func:`setup_logging` left it (that handler alone, no filter, the
default record factory), and goes through ``logging`` as soon as anybody changed that.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import threading
import time
from typing import IO, TYPE_CHECKING, Any

LOG_FORMAT = "%(asctime)s mqttd[%(process)s] %(levelname)s: %(message)s"
#: LOG_FORMAT for str.format (TextFormatter.line: half the time of a dict's %)
_LINE = LOG_FORMAT % {"asctime": "{0}", "process": "{1}", "levelname": "{2}", "message": "{3}"}
#: seconds a line logged on the event loop waits for others to be written with
FLUSH_AFTER = 0.05
#: characters of waiting lines that are written at once
FLUSH_BYTES = 64 * 1024


#: this process's id for :func:`info`'s lines, which make no record (a record asks ``getpid``,
#: a system call: 2 % of a connect storm), again in a forked child
_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def _msecs(created: float) -> float:
    """A line's milliseconds as a LogRecord's ``msecs`` (written %03d by the formats)."""
    return (created - int(created)) * 1000


class _SecondCache:
    """``Formatter.formatTime`` with the ``strftime`` of a second done once for that second."""

    converter: Any
    default_time_format: str
    default_msec_format: str | None

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return self._time(record.created, record.msecs, datefmt)

    #: the second and the datefmt of _text
    _second = -1
    _datefmt: str | None = None
    _text = ""

    def _time(self, created: float, msecs: float, datefmt: str | None = None) -> str:
        second = int(created)
        if second != self._second or datefmt != self._datefmt:
            self._second = second
            self._datefmt = datefmt
            self._text = time.strftime(datefmt or self.default_time_format, self.converter(created))
        if datefmt or not self.default_msec_format:
            return self._text
        return self.default_msec_format % (self._text, msecs)

    def line(self, created: float, levelname: str, name: str, message: str) -> str:
        """The line of a record of these (and no exception): :func:`info`'s."""
        raise NotImplementedError


class TextFormatter(_SecondCache, logging.Formatter):
    """``2026-12-07 18:59:26,640 mqttd[14563] INFO: message``."""

    def __init__(self) -> None:
        super().__init__(LOG_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        if record.process is None:  # (logging.logProcesses turned off by the program)
            record.process = _pid
        return super().format(record)

    def line(self, created: float, levelname: str, name: str, message: str) -> str:
        return _LINE.format(self._time(created, _msecs(created)), _pid, levelname, message)


class JsonFormatter(_SecondCache, logging.Formatter):
    """One JSON object per line (``--log-format json``): time, level, pid, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        out = self._object(record.created, record.msecs, record.levelname, record.name)
        out["message"] = record.getMessage()
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)

    def line(self, created: float, levelname: str, name: str, message: str) -> str:
        out = self._object(created, _msecs(created), levelname, name)
        out["message"] = message
        return json.dumps(out, ensure_ascii=False)

    def _object(self, created: float, msecs: float, levelname: str, name: str) -> dict[str, Any]:
        return {
            "time": self._time(created, msecs, "%Y-%m-%dT%H:%M:%S") + f".{int(msecs):03d}",
            "level": levelname,
            "pid": _pid,
            "logger": name,
        }


class _PerTurn(logging.Handler):
    """A stream handler's emit that keeps the line for the end of the loop turn (see above)."""

    stream: Any
    terminator: str
    _lines: list[str]
    _size: int
    #: the loop whose timer writes the lines (a loop that ended first never does: the next
    #: line, on another loop or none, writes them)
    _scheduled: asyncio.AbstractEventLoop | None

    if TYPE_CHECKING:  # (the subclass's)

        def _write(self, text: str) -> None: ...

    #: the thread of the loop in _scheduled
    _thread: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # (the stream handler's, next in the MRO)
        self._lines = []
        self._size = 0
        self._scheduled = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:  # noqa: BLE001 (logging's own rule: a bad record never raises)
            self.handleError(record)
            return
        self._keep(line)

    def _keep(self, line: str) -> None:
        """Keep ``line`` for the timer, or write it now off the loop (the lock held)."""
        self._lines.append(line)
        self._size += len(line)
        scheduled = self._scheduled
        if (
            scheduled is not None
            and threading.get_ident() == self._thread
            and scheduled.is_running()
        ):
            # On the loop whose timer will write it (asyncio.get_running_loop() makes a
            # getpid system call in 3.11: once per FLUSH_AFTER, not per line)
            if self._size > FLUSH_BYTES:
                self.flush()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()  # not on a loop: now
            return
        if self._size > FLUSH_BYTES:
            self.flush()
        elif self._scheduled is not loop:
            self._scheduled = loop
            self._thread = threading.get_ident()
            loop.call_later(FLUSH_AFTER, self.flush)

    def direct(self, levelname: str, name: str, message: str) -> None:
        """A line of ``levelname`` from logger ``name`` without a record (:func:`info`)."""
        formatter = self.formatter
        assert isinstance(formatter, _SecondCache)  # (info() checked)
        line = formatter.line(time.time(), levelname, name, message) + self.terminator
        self.acquire()
        try:
            self._keep(line)
        finally:
            self.release()

    def flush(self) -> None:
        self.acquire()
        try:
            self._scheduled = None
            if self._lines:
                lines, self._lines, self._size = self._lines, [], 0
                self._write("".join(lines))
        except (OSError, ValueError):
            pass  # the log's stream is gone (closed pipe, full disk): the broker goes on
        finally:
            self.release()


class StreamLog(_PerTurn, logging.StreamHandler):  # type: ignore[type-arg]
    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


_FileLog: type[_PerTurn] | None = None


def _file_log(path: str) -> _PerTurn:
    """The handler of a log file, reopened when logrotate moved it (and on SIGHUP:
    :func:`reopen_log_files`). Its class is made by the first call: ``logging.handlers`` (with
    ``pickle`` and ``queue``, 0.6 MB of RSS) is imported only by a node that writes a file."""
    global _FileLog
    if _FileLog is None:
        import logging.handlers

        class FileLog(_PerTurn, logging.handlers.WatchedFileHandler):
            def __init__(self, path: str) -> None:
                super().__init__(path, encoding="utf-8")

            def _write(self, text: str) -> None:
                self.reopenIfNeeded()
                if self.stream is None:
                    self.stream = self._open()
                self.stream.write(text)
                self.stream.flush()

        _FileLog = FileLog
    return _FileLog(path)


#: the handler setup_logging installed, while nobody else configured the log first
_node: _PerTurn | None = None


def setup_logging(
    level: str, stream: IO[str] | None = None, fmt: str = "text", file: str | None = None
) -> None:
    """Log at ``level`` ("info", ...) in the node's format (``fmt`` "text" or "json"), to
    ``file`` (reopened when logrotate moves it, and on SIGHUP) or else to ``stream`` (stderr if
    None). OSError if the file cannot be opened."""
    global _node
    handler = _file_log(file) if file else StreamLog(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    # A line per connection is written on the event loop: what the records would gather and
    # no format uses is not gathered (the Logging HOWTO's "Optimization": the caller's frame,
    # thread and process names)
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])
    _node = handler if logging.root.handlers == [handler] else None


def info(logger: logging.Logger, msg: str, *args: object) -> None:
    """``logger.info(msg, *args)``, for the lines of every connection (connected, disconnected).

    While the log is as :func:`setup_logging` left it (its handler alone on the root logger,
    no filter and no handler of ``logger``'s own, the default record factory), the line is
    formatted and kept by that handler without the ``LogRecord`` nobody would see: the same
    text, at a third of the cost (docs/operations.md, "Logs"). Anything else configured
    (pytest's caplog, an ``MQTTApp`` program's handlers) gets its records through ``logging``.
    """
    if not logger.isEnabledFor(logging.INFO):
        return
    handler = _node
    root = logging.root
    if (
        handler is not None
        and len(root.handlers) == 1
        and root.handlers[0] is handler
        and logger.parent is root
        and logger.propagate
        and not logger.handlers
        and not logger.filters
        and not root.filters
        and not handler.filters
        and handler.level <= logging.INFO
        and isinstance(handler.formatter, _SecondCache)
        and logging.getLogRecordFactory() is logging.LogRecord
    ):
        try:
            message = msg % args
        except Exception:  # noqa: BLE001 (logging reports a bad format; it never raises)
            logger.info(msg, *args)
            return
        handler.direct("INFO", logger.name, message)
    else:
        logger.info(msg, *args)


def reopen_log_files() -> None:
    """SIGHUP: the log files again (one that logrotate moved)."""
    handlers = sys.modules.get("logging.handlers")  # (not imported: no such handler)
    if handlers is None:
        return
    for handler in logging.getLogger().handlers:
        if isinstance(handler, handlers.WatchedFileHandler):
            handler.flush()
            handler.reopenIfNeeded()


__all__ = [
    "LOG_FORMAT",
    "JsonFormatter",
    "TextFormatter",
    "info",
    "reopen_log_files",
    "setup_logging",
]
