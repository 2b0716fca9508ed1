"""The load generator (mqttd/bench): its frame counter and batch fill, compiled vs pure, on the
same byte streams (``loadgen_twin``, tests/unit/conftest.py), and a short functional run against a
real broker (correctness, not speed)."""

from __future__ import annotations

import json
import random
import struct
from types import ModuleType

import pytest

from mqttd.bench import _loadgen_py, mqtt
from mqttd.bench.cli import build_parser
from mqttd.bench.cli import main as bench_main
from mqttd.bench.idle import Idle, run_idle
from mqttd.bench.runner import Options, percentile, run
from mqttd.bench.scenarios import fanin, fanout, latency, p2p


@pytest.fixture(scope="session")
def impl(loadgen_twin: ModuleType) -> ModuleType:
    """This file's short name for ``loadgen_twin`` (tests/unit/conftest.py)."""
    return loadgen_twin


COUNTERS = ("messages", "foreign", "puback", "pubrec", "pubrel", "pubcomp", "pingresp", "other")


def packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + mqtt.varint(len(body)) + body


def publish(
    topic: str, payload: bytes, qos: int = 0, pid: int = 0, level: int = 4, props: bytes = b""
) -> bytes:
    vh = struct.pack(">H", len(topic)) + topic.encode()
    if qos:
        vh += struct.pack(">H", pid)
    if level >= 5:
        vh += mqtt.varint(len(props)) + props
    return packet(0x30 | qos << 1, vh + payload)


def head(idx: int, seq: int, size: int = 64) -> bytes:
    return struct.pack(">IQ", idx, seq) + b"x" * (size - 12)


def state(c) -> dict:
    d = {k: getattr(c, k) for k in COUNTERS}
    d.update(
        disconnect_reason=c.disconnect_reason,
        nbytes=c.nbytes,
        received=c.received_list(),
        gaps=c.gaps_list(),
        reordered=c.reordered_list(),
        next_seq=c.next_seq_list(),
    )
    return d


def feed_in_chunks(impl, stream: bytes, chunks: list[int], npubs: int, level: int, bufsize: int):
    """Feed ``stream`` split at the given chunk sizes, the way the engine does: append each read
    after the leftover bytes, grow the buffer when a packet head does not fit."""
    c = impl.FrameCounter(npubs, level, True)
    buf = bytearray(bufsize)
    have = 0
    out = b""
    pos = 0
    for size in chunks:
        data = stream[pos : pos + size]
        pos += size
        while data:
            room = len(buf) - have
            take = data[:room]
            data = data[room:]
            buf[have : have + len(take)] = take
            have = c.feed(buf, have + len(take))
            if have == len(buf):
                buf.extend(bytes(len(buf)))
        out += c.take_out()
    assert pos >= len(stream)
    return c, out


def random_chunks(n: int, rng: random.Random, max_chunk: int) -> list[int]:
    sizes = []
    while n > 0:
        k = min(n, rng.randint(1, max_chunk))
        sizes.append(k)
        n -= k
    return sizes


def mixed_stream(level: int) -> tuple[bytes, dict]:
    """A stream with in-order, lost, late and foreign messages plus every control packet the
    counter answers or counts; returns it with the expected state built from its construction."""
    parts: list[bytes] = []
    props = b"\x01\x01\x23\x00\x07" if level >= 5 else b""  # payload format + topic alias
    # publisher 0: 0..9 in order; publisher 1: 0,1,3,4 (2 lost) then 2 late; publisher 2: QoS 1/2
    for s in range(10):
        parts.append(publish("bench/a/0", head(0, s), level=level, props=props))
    for s in (0, 1, 3, 4, 2):
        parts.append(publish("bench/a/1", head(1, s, 40), level=level))
    parts.append(publish("bench/a/2", head(2, 0), qos=1, pid=0x0102, level=level))
    parts.append(publish("bench/a/2", head(2, 1), qos=2, pid=0x0304, level=level))
    parts.append(publish("x", b"short", level=level))  # payload shorter than the head
    parts.append(publish("x", head(99, 0), level=level))  # index outside the run
    parts.append(packet(0x40, b"\x00\x05"))  # PUBACK
    parts.append(packet(0x50, b"\x00\x06"))  # PUBREC -> PUBREL
    parts.append(packet(0x62, b"\x00\x07"))  # PUBREL -> PUBCOMP
    parts.append(packet(0x70, b"\x00\x08"))  # PUBCOMP
    parts.append(packet(0xD0, b""))  # PINGRESP
    parts.append(packet(0x90, b"\x00\x01\x00"))  # SUBACK: "other"
    parts.append(packet(0xE0, b"\x8e\x00" if level >= 5 else b""))  # DISCONNECT
    stream = b"".join(parts)
    expected = {
        "messages": 17,
        "foreign": 2,
        "puback": 1,
        "pubrec": 1,
        "pubrel": 1,
        "pubcomp": 1,
        "pingresp": 1,
        "other": 1,
        "disconnect_reason": 0x8E if level >= 5 else 0,
        "nbytes": len(stream),
        "received": [10, 5, 2],
        "gaps": [0, 1, 0],
        "reordered": [0, 1, 0],
        "next_seq": [10, 5, 2],
    }
    acks = (
        b"\x40\x02\x01\x02"  # PUBACK for the QoS 1 PUBLISH [MQTT-4.3.2-2]
        + b"\x50\x02\x03\x04"  # PUBREC for the QoS 2 PUBLISH [MQTT-4.3.3-8]
        + b"\x62\x02\x00\x06"  # PUBREL answering PUBREC [MQTT-4.3.3-3]
        + b"\x70\x02\x00\x07"  # PUBCOMP answering PUBREL [MQTT-4.3.3-11]
    )
    return stream, {"state": expected, "acks": acks}


@pytest.mark.parametrize("level", [4, 5])
def test_counter_whole_stream(impl, level: int) -> None:
    stream, exp = mixed_stream(level)
    c, out = feed_in_chunks(impl, stream, [len(stream)], 3, level, 1 << 16)
    assert state(c) == exp["state"]
    assert out == exp["acks"]


@pytest.mark.parametrize("level", [4, 5])
def test_counter_any_split(impl, level: int) -> None:
    """Byte-at-a-time and random splits give the same counts as one read."""
    stream, exp = mixed_stream(level)
    c, out = feed_in_chunks(impl, stream, [1] * len(stream), 3, level, 1 << 16)
    assert state(c) == exp["state"] and out == exp["acks"]
    rng = random.Random(level)
    for _ in range(50):
        chunks = random_chunks(len(stream), rng, 97)
        c, out = feed_in_chunks(impl, stream, chunks, 3, level, 1 << 16)
        assert state(c) == exp["state"] and out == exp["acks"]


@pytest.mark.parametrize("level", [4, 5])
def test_compiled_matches_pure_on_random_streams(loadgen_compiled: ModuleType, level: int) -> None:
    rng = random.Random(1234 + level)
    for _ in range(30):
        parts = []
        for _ in range(rng.randint(1, 300)):
            r = rng.random()
            if r < 0.8:
                idx = rng.randrange(6)  # 5 publishers: index 5 is foreign
                size = rng.choice((12, 13, 64, 300))
                qos = rng.choice((0, 0, 1, 2))
                parts.append(
                    publish(
                        f"t/{idx}" * rng.randint(1, 4),
                        head(idx, rng.randrange(50), size),
                        qos=qos,
                        pid=rng.randint(1, 65535),
                        level=level,
                        props=b"\x02\x00\x00\x00\x10" if rng.random() < 0.3 else b"",
                    )
                )
            else:
                t = rng.choice((0x40, 0x50, 0x62, 0x70))
                parts.append(packet(t, struct.pack(">H", rng.randint(1, 65535))))
        stream = b"".join(parts)
        chunks = random_chunks(len(stream), rng, 700)
        bufsize = rng.choice((512, 4096, 1 << 16))
        cp, op = feed_in_chunks(_loadgen_py, stream, chunks, 5, level, bufsize)
        cc, oc = feed_in_chunks(loadgen_compiled, stream, chunks, 5, level, bufsize)
        assert state(cc) == state(cp)
        assert oc == op
        assert cc.nbytes == len(stream)


def test_counter_skips_big_payload_without_buffering_it(impl) -> None:
    """A 200 kB PUBLISH is counted from its head; the rest is skipped, not buffered."""
    big = publish("big", head(0, 7, 200_000))
    small = publish("s", head(0, 8))
    stream = big + small
    c = impl.FrameCounter(1, 4, True)
    buf = bytearray(4096)
    have = 0
    for i in range(0, len(stream), 1000):
        chunk = stream[i : i + 1000]
        buf[have : have + len(chunk)] = chunk
        have = c.feed(buf, have + len(chunk))
        assert len(buf) == 4096 and have < 4096
    assert c.received_list() == [2] and c.next_seq_list() == [9] and c.gaps_list() == [7]
    assert c.nbytes == len(stream)


def test_counter_rejects_five_byte_remaining_length(impl) -> None:
    c = impl.FrameCounter(1, 4, True)
    buf = bytearray(b"\x30\xff\xff\xff\xff\x01" + bytes(10))
    with pytest.raises(ValueError):  # at most 4 bytes [MQTT-1.5.5-1]
        c.feed(buf, len(buf))


@pytest.mark.parametrize("qos,level", [(0, 4), (1, 4), (2, 5)])
def test_fill_publishes_patches_seq_and_packet_id(impl, qos: int, level: int) -> None:
    t = mqtt.publish_template("bench/x/3", 3, 64, qos, level)
    out = bytearray(10 + t.size * 5)
    end = impl.fill_publishes(out, 10, t.data, t.seq_off, t.pid_off, 65533, 5)
    assert end == 10 + t.size * 5
    for k in range(5):
        seq = 65533 + k
        pid = seq % 65535 + 1  # 65534, 65535, 1, 2, 3: never 0 [MQTT-2.2.1-3]
        exp = publish("bench/x/3", head(3, seq), qos, pid, level)
        assert bytes(out[10 + k * t.size : 10 + (k + 1) * t.size]) == exp
    with pytest.raises(ValueError):
        impl.fill_publishes(bytearray(t.size), 0, t.data, t.seq_off, t.pid_off, 0, 2)


def test_compiled_fill_matches_pure(loadgen_compiled: ModuleType) -> None:
    t = mqtt.publish_template("a/b", 1, 100, 1, 5)
    a, b = bytearray(t.size * 100), bytearray(t.size * 100)
    _loadgen_py.fill_publishes(a, 0, t.data, t.seq_off, t.pid_off, 2**40, 100)
    loadgen_compiled.fill_publishes(b, 0, t.data, t.seq_off, t.pid_off, 2**40, 100)
    assert a == b


def test_publish_template_rejects_payload_smaller_than_head() -> None:
    with pytest.raises(ValueError):
        mqtt.publish_template("t", 0, 11)
    with pytest.raises(ValueError):  # no room for the send time
        mqtt.publish_template("t", 0, 19, stamp=True)


@pytest.mark.parametrize("level", [4, 5])
def test_latency_samples_from_stamped_payloads(impl, level: int) -> None:
    """fill_publishes writes the send time; FrameCounter records now - send time, only while
    ``latency`` is on, and counts the same whatever the split."""
    t = mqtt.publish_template("lat/0", 0, 64, 0, level, stamp=True)
    out = bytearray(t.size * 6)
    import time

    ts = time.monotonic_ns() - 5_000_000  # sent 5 ms ago
    impl.fill_publishes(out, 0, t.data, t.seq_off, t.pid_off, 0, 6, t.ts_off, ts)
    c = impl.FrameCounter(1, level, True, True)
    buf = bytearray(4096)
    half = t.size * 3 + 7  # split inside the fourth packet's head
    buf[:half] = out[:half]
    have = c.feed(buf, half)
    c.latency = False
    buf[have : have + len(out) - half] = out[half:]
    c.feed(buf, have + len(out) - half)
    assert c.received_list() == [6] and c.gaps_list() == [0]
    lat = c.latency_samples()
    assert len(lat) == 3  # recording was off for the last three
    assert all(5_000_000 <= v < 5_000_000_000 for v in lat)


def test_percentile_nearest_rank() -> None:
    vals = list(range(1, 101))
    assert percentile(vals, 0.5) == 50 and percentile(vals, 0.99) == 99
    assert percentile(vals, 1.0) == 100 and percentile([7], 0.999) == 7


def test_help_documents_every_scenario(capsys) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    for name in ("fanin", "fanout", "p2p", "latency", "idle"):
        assert f"  {name} " in out
        with pytest.raises(SystemExit):
            build_parser().parse_args([name, "--help"])
        sub = capsys.readouterr().out
        assert "--compare" in sub and "--json" in sub and "--mqtt-version" in sub


# -- against a real broker ------------------------------------------------------------------


def check_consistent(r, publishers: int) -> None:
    assert not r.errors, r.errors
    assert len(r.streams) == publishers
    assert r.delivered > 0 and r.delivered_per_s > 0
    assert r.published_total == sum(s.published for s in r.streams)
    assert r.received_total == sum(s.received for s in r.streams)
    for s in r.streams:
        assert s.published > 0
        # A modest rate on loopback: every message arrives once, in order.
        assert s.received == s.published, s
        assert s.lost == 0 and s.reordered == 0 and s.gaps == 0
    assert r.lost_total == 0 and r.reordered_total == 0 and r.foreign == 0


@pytest.mark.parametrize("qos,level", [(0, 4), (1, 5)])
def test_fanin_against_broker(broker, qos: int, level: int) -> None:
    scn = fanin(publishers=4, payload=64, qos=qos, rate=2000)
    opt = Options(
        host=broker.host,
        port=broker.port,
        protocol_level=level,
        warmup=0.2,
        duration=0.8,
        broker_pid=broker.proc.pid,
    )
    r = run(scn, opt)
    check_consistent(r, 4)
    # 2,000 msg/s for ~1 s, paced: totals are close to the rate, not a flood.
    assert 1000 < r.published_total <= 2000 * (0.2 + 0.8 + 0.2)
    assert r.broker_cpu_s is not None and r.gen_cpu_s is not None


def test_cli_json_and_compare(broker, capsys) -> None:
    common = ["--host", broker.host, "--port", str(broker.port), "--publishers", "2"]
    common += ["--rate", "1000", "--warmup", "0.1", "--duration", "0.4", "--json"]
    assert bench_main(["fanin", *common]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["scenario"] == "fanin" and r["lost_total"] == 0 and r["delivered"] > 0
    hp = f"{broker.host}:{broker.port}"
    assert bench_main(["fanin", *common, "--compare", hp, "--rounds", "1", "--procs", "2"]) == 0
    c = json.loads(capsys.readouterr().out)
    assert len(c["a"]["runs"]) == 1 and len(c["b"]["runs"]) == 1
    assert c["ratio_b_over_a_delivered_per_s"] > 0


def quick(broker, **kw) -> Options:
    return Options(
        host=broker.host,
        port=broker.port,
        warmup=0.1,
        duration=0.4,
        broker_pid=broker.proc.pid,
        **kw,
    )


@pytest.mark.parametrize(
    "make,qos,level,procs",
    [
        (lambda q: fanout(subscribers=5, qos=q, rate=1000), 0, 4, 1),
        (lambda q: fanout(subscribers=5, qos=q, rate=1000), 1, 5, 2),
        (lambda q: p2p(pairs=3, qos=q, rate=1500), 0, 5, 1),
        (lambda q: p2p(pairs=3, qos=q, rate=1500), 1, 4, 3),
    ],
    ids=["fanout-qos0", "fanout-qos1-v5-2procs", "p2p-qos0-v5", "p2p-qos1-3procs"],
)
def test_scenarios_against_broker(shared_broker, make, qos: int, level: int, procs: int) -> None:
    scn = make(qos)
    r = run(scn, quick(shared_broker, protocol_level=level, procs=procs))
    assert not r.errors, r.errors
    assert r.delivered > 0 and r.integrity_ok, r.integrity
    assert len(r.streams) == len(scn.subs)  # one stream per (subscriber, publisher) pair
    for s in r.streams:
        assert s.published > 0 and s.received == s.published and s.reordered == 0
    if qos:
        assert r.acked_total == r.published_total  # every PUBLISH got its PUBACK


def test_fanout_counts_every_copy(shared_broker) -> None:
    r = run(fanout(subscribers=4, rate=1000), quick(shared_broker))
    assert r.received_total == 4 * r.published_total


def test_qos1_loss_is_reported(shared_broker) -> None:
    """The check fails when a stream misses messages (simulated: one more published than
    received), and names what failed."""
    from mqttd.bench.runner import _check_integrity

    r = run(fanin(publishers=2, qos=1, rate=500), quick(shared_broker))
    assert r.integrity_ok and r.integrity.startswith("ok")
    r.lost_total, r.acked_total = 1, r.published_total - 1
    _check_integrity(r)
    assert not r.integrity_ok and "1 lost" in r.integrity and "never acknowledged" in r.integrity


def test_latency_against_broker(shared_broker) -> None:
    r = run(latency(rate=2000), quick(shared_broker))
    assert not r.errors and r.integrity_ok
    assert r.lat_samples > 0 and r.lat_samples <= r.delivered
    assert 0 < r.lat_p50_us <= r.lat_p90_us <= r.lat_p99_us <= r.lat_p999_us <= r.lat_max_us


def test_idle_against_broker(shared_broker) -> None:
    r = run_idle(Idle(connections=60, parallel=20), quick(shared_broker))
    assert not r.errors and r.integrity_ok, r.integrity
    assert r.connected == r.held == 60
    assert r.rss_before_kb and r.rss_after_kb and r.kb_per_conn is not None


@pytest.mark.parametrize(
    "scenario,extra,metric",
    [
        ("p2p", ["--pairs", "2", "--rate", "1000", "--qos", "1"], "delivered_per_s"),
        ("latency", ["--rate", "1000"], "lat_p99_us"),
        ("idle", ["--connections", "30"], "rss_after_kb"),
    ],
)
def test_cli_compare_every_kind(shared_broker, capsys, scenario, extra, metric) -> None:
    b = shared_broker
    hp = f"{b.host}:{b.port}"
    args = [scenario, *extra, "--host", b.host, "--port", str(b.port), "--json"]
    args += ["--warmup", "0.1", "--duration", "0.3", "--broker-pid", str(b.proc.pid)]
    assert (
        bench_main([*args, "--compare", hp, "--compare-pid", str(b.proc.pid), "--rounds", "1"]) == 0
    )
    c = json.loads(capsys.readouterr().out)
    assert c["scenario"] == scenario and c["metric"] == metric
    assert c["ratio_b_over_a"] > 0 and c["integrity_ok_a"] and c["integrity_ok_b"]


def test_cli_text_output_and_progress(shared_broker, capsys) -> None:
    b = shared_broker
    args = ["fanout", "--subscribers", "3", "--rate", "500", "--port", str(b.port)]
    assert bench_main([*args, "--warmup", "0.1", "--duration", "1.2"]) == 0
    out, err = capsys.readouterr()
    assert "delivered" in out and "check: ok" in out
    assert "msg/s" in err  # one progress line per second on stderr
    assert bench_main([*args, "--warmup", "0.1", "--duration", "1.2", "--quiet"]) == 0
    # --quiet: no progress lines (a forced-pure run still warns that its hot loop is Python)
    assert "msg/s" not in capsys.readouterr().err
