"""Codec micro-benchmarks, compiled vs pure twin.

Run: python -m pytest benchmarks/bench_codec.py --benchmark-only -q

- decode: one Reader.feed of a buffer holding 1,000 PUBLISH packets (QoS 1, 27-byte topic, 64-byte
  payload); the per-packet figure (median / 1000) is printed and stored in extra_info. The
  compiled target is <= 250 ns per packet (notes/codec_api.md).
- encode: encode_publish of the same packet (timed in loops of 100 calls, loop overhead included).
"""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

N_PACKETS = 1000
TOPIC = "sensors/room-17/temperature"
PAYLOAD = bytes(range(64))


def _impl(name: str) -> ModuleType:
    if name == "compiled":
        try:
            return importlib.import_module("mqttd._codec")
        except ImportError:
            pytest.skip("mqttd._codec is not built")
    return importlib.import_module("mqttd._pure._codec")


@pytest.fixture(params=["compiled", "pure"])
def codec(request: pytest.FixtureRequest) -> ModuleType:
    return _impl(request.param)


def _report(benchmark, capsys: pytest.CaptureFixture, label: str, per: int) -> None:
    stats = benchmark.stats.stats
    median_ns = stats.median / per * 1e9
    mean_ns = stats.mean / per * 1e9
    benchmark.extra_info["ns_per_packet_median"] = round(median_ns, 1)
    benchmark.extra_info["ns_per_packet_mean"] = round(mean_ns, 1)
    with capsys.disabled():
        print(f"\n{label}: median {median_ns:.1f} ns/packet (mean {mean_ns:.1f})")


@pytest.mark.parametrize("topics", ["one-topic", "1000-topics"])
def test_decode_1000_publish(
    benchmark, codec: ModuleType, topics: str, capsys: pytest.CaptureFixture
) -> None:
    # one-topic: every packet has the same topic (the compiled Reader reuses the decoded str);
    # 1000-topics: each packet has its own topic of the same length, so every topic is decoded.
    names = [
        TOPIC if topics == "one-topic" else f"sensors/room{i:03d}/temperature"
        for i in range(N_PACKETS)
    ]
    buf = b"".join(
        codec.encode_publish(names[i], PAYLOAD, qos=1, packet_id=i + 1) for i in range(N_PACKETS)
    )
    reader = codec.Reader(protocol_level=4)
    packets = benchmark(reader.feed, buf)
    # The Reader keeps nothing between rounds (each buffer holds whole packets only).
    assert len(packets) == N_PACKETS and reader.buffered == 0
    last = packets[-1]
    assert (last.topic, last.payload, last.qos, last.packet_id) == (
        names[-1],
        PAYLOAD,
        1,
        N_PACKETS,
    )
    name = "compiled" if not codec.__file__.endswith(".py") else "pure"
    size = len(buf) // N_PACKETS
    _report(benchmark, capsys, f"decode PUBLISH ({name}, {topics}, {size} B)", N_PACKETS)


def test_encode_publish(benchmark, codec: ModuleType, capsys: pytest.CaptureFixture) -> None:
    # 100 calls per round: one call is too short for the timer to resolve on its own.
    def encode_100() -> bytes:
        for _ in range(100):
            wire = encode(TOPIC, PAYLOAD, 1, False, False, 4242)
        return wire

    encode = codec.encode_publish
    wire = benchmark(encode_100)
    assert len(wire) == 1 + 1 + 2 + len(TOPIC) + 2 + len(PAYLOAD)
    name = "compiled" if not codec.__file__.endswith(".py") else "pure"
    _report(benchmark, capsys, f"encode PUBLISH ({name}, loop of 100 calls)", 100)
