"""RESP framing: the commands mqttd writes to Redis, and the asyncio protocols that read replies.

mqttd speaks RESP directly rather than through redis-py on its two long-lived connections: the
publishing one writes PUBLISH commands pipelined (many per write, no awaited round trip per
message), the subscription one reads the push stream. Replies are parsed by hiredis, except the
common messages on the subscription stream, which ``route.PushReader`` frames and delivers itself.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import hiredis


def _command(*args: bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class _Resp(asyncio.Protocol):
    """A RESP connection whose replies go to a callback (hiredis parses them).

    Given the ``broker``, it is a subscription stream: messages from other nodes can fill a local
    subscriber's queue as a local publisher does, and the connection is then not read until that
    queue drains or its session is slow (docs/flow-control.md), as a held publisher is not;
    Redis keeps what it sends meanwhile. A read is fed in slices of :data:`PUSH_SLICE` bytes,
    so that a read that fills a queue stops there (the rest waits with the connection) rather
    than pouring up to 256 KiB of messages into it."""

    def __init__(self, on_reply: Any, on_lost: Any, broker: Any = None) -> None:
        self.reader = hiredis.Reader()
        self.on_reply = on_reply
        self.on_lost = on_lost
        self.transport: Any = None
        self.lost = False
        self.last_rx = time.monotonic()  # Redis is alive while it sends anything
        self.broker = broker
        self.held = 0
        self.waiting: list[bytes] = []  # read while held, fed once it is let go

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.last_rx = time.monotonic()
        if self.held or self.waiting:
            self.waiting.append(data)  # read before the pause took effect: after the rest
            return
        self._feed(data)

    def _feed_slice(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        on_reply = self.on_reply
        while True:
            reply = reader.gets()
            if reply is False:
                return
            on_reply(reply)

    def _feed(self, data: bytes) -> None:
        broker = self.broker
        if broker is None:
            self._feed_slice(data)
            return
        flusher = broker.flusher
        if len(data) <= PUSH_SLICE:
            self._feed_slice(data)
            if flusher.pressure:
                self._hold(b"")
            return
        for start in range(0, len(data), PUSH_SLICE):
            self._feed_slice(data[start : start + PUSH_SLICE])
            if flusher.pressure and self._hold(data[start + PUSH_SLICE :]):
                return

    def _hold(self, rest: bytes) -> bool:
        """Wait for the queues the last slice filled; ``rest`` waits too. False: none to wait
        for (they were not full any more, or slow)."""
        broker = self.broker
        flusher = broker.flusher
        pressure, flusher.pressure = flusher.pressure, []
        n = broker.flow.hold(self, pressure)
        if not n:
            return False
        self.held += n
        if rest:
            self.waiting.append(rest)
        if self.transport is not None:
            self.transport.pause_reading()
        return True

    def unhold(self) -> None:
        if not self.held:
            return
        self.held -= 1
        if self.held or self.lost:
            return
        self.last_rx = time.monotonic()  # not read by our choice: not Redis's silence
        # On the next turn, as a held client (Connection.unhold): not within another's ack
        asyncio.get_running_loop().call_soon(self._go)

    def _go(self) -> None:
        if self.held or self.lost:
            return
        waiting, self.waiting = self.waiting, []
        if self.transport is not None:
            self.transport.resume_reading()
        if waiting:
            self._feed(b"".join(waiting))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.on_lost(self, exc)


class _PushResp(_Resp):
    """The subscription connection of a single Redis: its stream goes to a
    ``route.PushReader``, which delivers the common messages itself (compiled) and hands the
    rest to the bridge's ``_on_push``; held as :class:`_Resp` says."""

    def __init__(self, push: Any, on_lost: Any, broker: Any = None) -> None:
        super().__init__(None, on_lost, broker)
        self.push = push

    def _feed_slice(self, data: bytes) -> None:
        self.push.feed(data)


#: bytes of a subscription stream fed at a time (see _Resp)
PUSH_SLICE = 16 * 1024
