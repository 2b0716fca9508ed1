"""Micro-benchmark of a node's two ways in for a message: an MQTT PUBLISH from a client
(``Connection.data_received``) and a message from another node through Redis
(``route.PushReader.feed``), each delivered to one subscriber of ``bench/+``.

Batches of 1,000 messages (64 B payloads, 8 topics); the subscriber's transport discards what
it is written, so the figures are the broker's CPU per message without the socket. The Redis
path is the one the cross-node budget of ``benchmarks/suite.py`` depends on: before it was
compiled it cost 2.1x the PUBLISH path, after it 0.6-0.8x (same run).

Run: ``python -m pytest benchmarks/bench_receive.py --benchmark-only -q``
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from mqttd._speedups import codec
from mqttd.broker import Broker, BrokerConfig
from mqttd.connection import Connection
from mqttd.redis.bridge import RedisBridge
from mqttd.redis.envelope import HEAD, MAGIC
from mqttd.redis.keys import _glob_regex, redis_key
from mqttd.redis.resp import _PushResp

N = 1_000
PAYLOAD = b"x" * 64


class Sink:
    """A transport that takes everything and keeps nothing."""

    def __init__(self) -> None:
        self.written = 0

    def get_extra_info(self, key: str) -> Any:
        return ("127.0.0.1", 1) if key == "peername" else None

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False


def _connect(cid: bytes) -> bytes:
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid
    return bytes([0x10, len(body)]) + body


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[Broker, asyncio.AbstractEventLoop, Sink]]:
    loop = asyncio.new_event_loop()
    broker = Broker(BrokerConfig(port=0, sys_interval=0))
    broker.attach(loop)
    sub = Connection(broker)
    sink = Sink()
    sub.connection_made(sink)
    sub.data_received(_connect(b"sub"))
    loop.run_until_complete(asyncio.sleep(0.01))  # the session is attached
    sub.data_received(codec.encode_subscribe(1, [("bench/+", 0)], 4))
    yield broker, loop, sink
    loop.close()


def _iteration(loop: asyncio.AbstractEventLoop) -> None:
    loop.run_until_complete(asyncio.sleep(0))  # the flusher writes the batch out


def test_mqtt_publish_path(benchmark: Any, node: Any) -> None:
    broker, loop, sink = node
    pub = Connection(broker)
    pub.connection_made(Sink())
    pub.data_received(_connect(b"pub"))
    loop.run_until_complete(asyncio.sleep(0.01))
    batch = b"".join(
        codec.encode_publish(f"bench/{i % 8}", PAYLOAD, 0, False, False, 0, 4) for i in range(N)
    )
    before = sink.written
    benchmark.pedantic(pub.data_received, args=(batch,), setup=lambda: _iteration(loop), rounds=200)
    _iteration(loop)
    assert sink.written > before  # the subscriber got them
    benchmark.extra_info["per_message_ns"] = benchmark.stats.stats.median / N * 1e9


def test_redis_receive_path(benchmark: Any, node: Any) -> None:
    broker, loop, sink = node
    bridge = RedisBridge(broker, "redis://127.0.0.1:1")
    _, key = redis_key(b"", "bench/+")
    bridge.patterns[key] = {"bench/+"}
    bridge._regex[key] = _glob_regex(key)
    conn = _PushResp(bridge._push_reader(), lambda *a: None)
    seq = [0] * 8  # per topic, as a publishing node numbers them

    def batch() -> bytes:
        out = []
        for i in range(N):
            seq[i % 8] += 1
            data = HEAD.pack(MAGIC, 0, b"othernod", seq[i % 8]) + PAYLOAD
            ch = b"bench/%d" % (i % 8)
            out.append(
                b"*4\r\n$8\r\npmessage\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
                % (len(key), key, len(ch), ch, len(data), data)
            )
        return b"".join(out)

    conn.data_received(batch())  # first sight of each channel: the general path fills caches
    before = sink.written
    benchmark.pedantic(
        conn.data_received,
        setup=lambda: (_iteration(loop), ((batch(),), {}))[1],
        rounds=200,
    )
    _iteration(loop)
    assert sink.written > before
    assert bridge.stats["lost"] == 0
    benchmark.extra_info["per_message_ns"] = benchmark.stats.stats.median / N * 1e9
