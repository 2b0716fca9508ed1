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
    """A RESP connection whose replies go to a callback (hiredis parses them)."""

    def __init__(self, on_reply: Any, on_lost: Any) -> None:
        self.reader = hiredis.Reader()
        self.on_reply = on_reply
        self.on_lost = on_lost
        self.transport: Any = None
        self.lost = False
        self.last_rx = time.monotonic()  # Redis is alive while it sends anything

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.last_rx = time.monotonic()
        reader = self.reader
        reader.feed(data)
        on_reply = self.on_reply
        while True:
            reply = reader.gets()
            if reply is False:
                return
            on_reply(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.on_lost(self, exc)


class _PushResp(_Resp):
    """The subscription connection: its stream goes to a ``route.PushReader``, which delivers
    the common messages itself (compiled) and hands the rest to the bridge's ``_on_push``."""

    def __init__(self, push: Any, on_lost: Any) -> None:
        super().__init__(None, on_lost)
        self.push = push

    def data_received(self, data: bytes) -> None:
        self.last_rx = time.monotonic()
        self.push.feed(data)
