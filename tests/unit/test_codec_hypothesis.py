"""Property tests for the codec twins.

- every valid packet at every level survives encode -> Reader.feed, in both twins;
- the compiled twin and the pure twin agree on arbitrary (mostly mangled) byte streams: the same
  packets, then the same PacketError reason code, whatever the chunking;
- both twins' encoders produce identical bytes;
- the compiled module must be importable (unless MQTTD_NO_EXTENSIONS=1): ``codec_twin`` and
  ``codec_compiled`` (tests/unit/conftest.py) fail when it is not.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mqttd import constants as C
from mqttd._pure import _codec as pure
from mqttd.errors import PacketError

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="session")
def mod(codec_twin: ModuleType) -> ModuleType:
    """This file's short name for ``codec_twin`` (tests/unit/conftest.py)."""
    return codec_twin


@pytest.fixture(scope="session")
def compiled(codec_compiled: ModuleType) -> ModuleType:
    """This file's short name for ``codec_compiled``: skipped under MQTTD_NO_EXTENSIONS=1, a
    failure when the compiled codec should be there and is not."""
    return codec_compiled


def test_compiled_module_is_built(compiled: ModuleType) -> None:
    assert compiled.__file__ is not None and not compiled.__file__.endswith(".py")


# ------------------------------------------------------------------------------------------------
# Strategies: a packet "spec" is (class name, kwargs); make(mod, spec) builds it with either twin.
# ------------------------------------------------------------------------------------------------

# Well-formed MQTT strings: no surrogates [MQTT-1.5.4-1], no U+0000 [MQTT-1.5.4-2].
mqtt_str = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=12,
)
small_bin = st.binary(max_size=16)
u16 = st.integers(0, 0xFFFF)
pid_nonzero = st.integers(1, 0xFFFF)
byte = st.integers(0, 0xFF)


def _value(pid: int, ptype: int) -> st.SearchStrategy:
    if pid == C.USER_PROPERTY:
        return st.lists(st.tuples(mqtt_str, mqtt_str), min_size=1, max_size=3)
    if pid == C.SUBSCRIPTION_IDENTIFIER:
        n = 3 if ptype == C.PUBLISH else 1  # repeats only in a server->client PUBLISH
        return st.lists(st.integers(1, C.MAX_VARINT), min_size=1, max_size=n)
    t = C.PROPERTY_TYPES[pid]
    return {
        C.PT_BYTE: byte,
        C.PT_TWO_BYTE_INT: u16,
        C.PT_FOUR_BYTE_INT: st.integers(0, 0xFFFFFFFF),
        C.PT_VARINT: st.integers(0, C.MAX_VARINT),
        C.PT_UTF8: mqtt_str,
        C.PT_BINARY: small_bin,
    }[t]


def props(ptype: int, level: int) -> st.SearchStrategy:
    if level != 5:
        return st.just({})
    ids = sorted(pid for pid, packets in C.PROPERTY_PACKETS.items() if ptype in packets)
    return st.lists(st.sampled_from(ids), unique=True, max_size=4).flatmap(
        lambda keys: st.fixed_dictionaries({k: _value(k, ptype) for k in keys})
    )


def _spec(name: str, **kw: st.SearchStrategy) -> st.SearchStrategy:
    return st.fixed_dictionaries(kw).map(lambda d: (name, d))


@st.composite
def connect_spec(draw: Any, level: int) -> tuple[str, dict]:
    will = None
    if draw(st.booleans()):
        will = (
            "Will",
            {
                "topic": draw(mqtt_str),
                "payload": draw(small_bin),
                "qos": draw(st.integers(0, 2)),
                "retain": draw(st.booleans()),
                "properties": draw(props(C.WILL_PROPERTIES, level)),
            },
        )
    username = draw(st.none() | mqtt_str)
    # [MQTT-3.1.2-22] before MQTT 5 a password needs a user name
    password = draw(st.none() | small_bin) if (username is not None or level == 5) else None
    return (
        "Connect",
        {
            "protocol_name": C.protocol_name(level),
            "protocol_level": level,
            "clean_start": draw(st.booleans()),
            "keepalive": draw(u16),
            "client_id": draw(mqtt_str),
            "username": username,
            "password": password,
            "will": will,
            "properties": draw(props(C.CONNECT, level)),
            # a Mosquitto bridge sets bit 7 of the level, at 3.1 / 3.1.1 only
            "bridge": draw(st.booleans()) if level < 5 else False,
        },
    )


@st.composite
def publish_spec(draw: Any, level: int) -> tuple[str, dict]:
    qos = draw(st.integers(0, 2))
    return (
        "Publish",
        {
            "topic": draw(mqtt_str),
            "payload": draw(st.binary(max_size=64)),
            "qos": qos,
            "retain": draw(st.booleans()),
            "dup": draw(st.booleans()) if qos else False,  # [MQTT-3.3.1-2]
            "packet_id": draw(pid_nonzero) if qos else 0,
            "properties": draw(props(C.PUBLISH, level)),
        },
    )


def sub_options(level: int) -> st.SearchStrategy:
    if level != 5:
        return st.integers(0, 2)
    return st.builds(
        lambda q, nl, rap, rh: q | nl << 2 | rap << 3 | rh << 4,
        st.integers(0, 2),
        st.integers(0, 1),
        st.integers(0, 1),
        st.integers(0, 2),
    )


def packet_spec(level: int) -> st.SearchStrategy:
    rc = byte if level == 5 else st.just(0)
    options = [
        connect_spec(level),
        _spec(
            "ConnAck",
            # MQTT 3.1 has no Session Present: that byte is reserved, always 0 (3.1 §3.2)
            session_present=st.booleans() if level > 3 else st.just(False),
            reason_code=byte,
            properties=props(2, level),
        ),
        publish_spec(level),
        st.sampled_from([C.PUBACK, C.PUBREC, C.PUBREL, C.PUBCOMP]).flatmap(
            lambda t: _spec(
                "Ack",
                packet_type=st.just(t),
                packet_id=u16,
                reason_code=rc,
                properties=props(t, level),
            )
        ),
        _spec(
            "Subscribe",
            packet_id=pid_nonzero,
            subscriptions=st.lists(st.tuples(mqtt_str, sub_options(level)), min_size=1, max_size=4),
            properties=props(C.SUBSCRIBE, level),
        ),
        _spec(
            "SubAck",
            packet_id=u16,
            reason_codes=st.lists(byte, max_size=4),
            properties=props(C.SUBACK, level),
        ),
        _spec(
            "Unsubscribe",
            packet_id=pid_nonzero,
            filters=st.lists(mqtt_str, min_size=1, max_size=4),
            properties=props(C.UNSUBSCRIBE, level),
        ),
        _spec(
            "UnsubAck",
            packet_id=u16,
            reason_codes=st.lists(byte, max_size=4) if level == 5 else st.just([]),
            properties=props(C.UNSUBACK, level),
        ),
        st.just(("PingReq", {})),
        st.just(("PingResp", {})),
        _spec("Disconnect", reason_code=rc, properties=props(C.DISCONNECT, level)),
    ]
    if level == 5:
        options.append(_spec("Auth", reason_code=byte, properties=props(C.AUTH, 5)))
    return st.one_of(options)


def make(mod: ModuleType, spec: tuple[str, dict]) -> Any:
    name, kw = spec
    kw = {k: (make(mod, v) if k == "will" and v is not None else v) for k, v in kw.items()}
    return getattr(mod, name)(**kw)


def _not_connect(spec: tuple[str, dict]) -> bool:
    return spec[0] != "Connect"


levels = st.sampled_from([3, 4, 5])
level_and_packet = levels.flatmap(lambda lv: st.tuples(st.just(lv), packet_spec(lv)))
level_and_packets = levels.flatmap(
    lambda lv: st.tuples(st.just(lv), st.lists(packet_spec(lv).filter(_not_connect), max_size=8))
)


# ------------------------------------------------------------------------------------------------
# Round trips
# ------------------------------------------------------------------------------------------------


@SETTINGS
@given(lp=level_and_packet)
def test_roundtrip(mod: ModuleType, lp: tuple[int, tuple[str, dict]]) -> None:
    level, spec = lp
    pkt = make(mod, spec)
    wire = mod.encode(pkt, level)
    r = mod.Reader(protocol_level=level, max_packet_size=len(wire))
    assert r.feed(wire) == [pkt]
    assert r.buffered == 0
    if spec[0] == "Connect":
        assert r.protocol_level == level


@SETTINGS
@given(lps=level_and_packets, data=st.data())
def test_roundtrip_stream_random_splits(
    mod: ModuleType, lps: tuple[int, list], data: st.DataObject
) -> None:
    level, specs = lps
    pkts = [make(mod, s) for s in specs]
    wire = b"".join(mod.encode(p, level) for p in pkts)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    r = mod.Reader(protocol_level=level)
    got = []
    prev = 0
    for cut in [*cuts, len(wire)]:
        got += r.feed(wire[prev:cut])
        prev = cut
    assert got == pkts
    assert r.buffered == 0


# ------------------------------------------------------------------------------------------------
# Compiled vs pure
# ------------------------------------------------------------------------------------------------


def outcome(mod: ModuleType, level: int, max_size: int, chunks: list[bytes]) -> tuple:
    """What a Reader makes of the chunks: packet reprs, error code (or None), final state."""
    r = mod.Reader(max_packet_size=max_size, protocol_level=level)
    seen: list[str] = []
    for chunk in chunks:
        try:
            seen += [repr(p) for p in r.feed(chunk)]
        except PacketError as exc:
            seen += [repr(p) for p in exc.packets]
            return seen, exc.reason_code, None, None
    return seen, None, r.buffered, r.protocol_level


# Packets each breaking one rule (see test_codec.py for what each is): mixed into the streams so
# that every reason code shows up, not only what random mutation finds.
BAD_PACKETS = [
    bytes.fromhex(h)
    for h in (
        "3207 0003 612f62 0000",  # PUBLISH QoS 1 packet id 0 -> 0x82
        "8202 0001",  # SUBSCRIBE without filter -> 0x82
        "a202 0001",  # UNSUBSCRIBE without filter -> 0x82
        "8207 0001 00 0001 61 30",  # Retain Handling 3 at level 5 -> 0x82 (0x81 below 5)
        "300c 0003 612f62 06 230001 230002",  # topic alias twice (level 5) -> 0x82
        "100e 0004 4d515458 04 02 003c 0002 6331",  # protocol name MQTX -> 0x84
        "100f 0004 4d515454 05 02 003c 00 0002 6331",  # MQTT 5 CONNECT (changes the level)
        "100e 0004 4d515454 04 03 003c 0002 6331",  # CONNECT reserved flag -> 0x81
        "3005 0003 eda080",  # surrogate in topic -> 0x81
        "3005 0003 610062",  # U+0000 in topic -> 0x81
        "30 ff ff ff ff 7f",  # remaining length of 5 bytes -> 0x81
        "f000",  # AUTH (0x81 below level 5)
        "6002 0001",  # PUBREL with flags 0 -> 0x81
    )
]


@st.composite
def noisy_stream(draw: Any) -> tuple[int, int, bytes]:
    level = draw(st.sampled_from([0, 3, 4, 5]))
    enc_level = level or 4
    pieces = draw(
        st.lists(
            st.one_of(
                packet_spec(enc_level).map(lambda s: pure.encode(make(pure, s), enc_level)),
                st.binary(max_size=10),
                st.sampled_from(BAD_PACKETS),
            ),
            max_size=6,
        )
    )
    buf = bytearray(b"".join(pieces))
    for _ in range(draw(st.integers(0, 3))):
        if buf:
            i = draw(st.integers(0, len(buf) - 1))
            if draw(st.booleans()):
                buf[i] = draw(byte)
            else:
                buf[i : i + 2] = b"\x00\x00"  # e.g. a packet id or length of 0
    if buf and draw(st.booleans()):
        del buf[draw(st.integers(0, len(buf) - 1)) :]
    max_size = draw(st.sampled_from([8, 40, 200, 1048576, 1048576, 1048576]))
    return level, max_size, bytes(buf)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    out = []
    prev = 0
    for cut in sorted(cuts):
        out.append(data[prev:cut])
        prev = cut
    out.append(data[prev:])
    return out


@SETTINGS
@given(stream=noisy_stream(), cuts=st.lists(st.integers(0, 400), max_size=6))
def test_twins_agree_on_noisy_streams(
    compiled: ModuleType, stream: tuple[int, int, bytes], cuts: list[int]
) -> None:
    level, max_size, data = stream
    whole = outcome(pure, level, max_size, [data])
    assert outcome(compiled, level, max_size, [data]) == whole
    pieces = chunked(data, [c for c in cuts if c <= len(data)])
    split_pure = outcome(pure, level, max_size, pieces)
    assert outcome(compiled, level, max_size, pieces) == split_pure
    # The chunking changes nothing but how much is left buffered at the end.
    assert split_pure[:2] == whole[:2]


@SETTINGS
@given(level=st.sampled_from([0, 3, 4, 5]), data=st.binary(max_size=64))
def test_twins_agree_on_random_bytes(compiled: ModuleType, level: int, data: bytes) -> None:
    assert outcome(compiled, level, 1048576, [data]) == outcome(pure, level, 1048576, [data])
    one_by_one = [data[i : i + 1] for i in range(len(data))]
    assert outcome(compiled, level, 1048576, one_by_one) == outcome(
        pure, level, 1048576, one_by_one
    )


@SETTINGS
@given(lps=level_and_packets, cuts=st.lists(st.integers(0, 2000), max_size=10))
def test_twins_agree_on_split_valid_streams(
    compiled: ModuleType, lps: tuple[int, list], cuts: list[int]
) -> None:
    level, specs = lps
    wire = b"".join(pure.encode(make(pure, s), level) for s in specs)
    pieces = chunked(wire, [c for c in cuts if c <= len(wire)])
    res = outcome(pure, level, 1048576, pieces)
    assert res[1] is None and len(res[0]) == len(specs)
    assert outcome(compiled, level, 1048576, pieces) == res


@SETTINGS
@given(lp=level_and_packet)
def test_encoders_identical(compiled: ModuleType, lp: tuple[int, tuple[str, dict]]) -> None:
    level, spec = lp
    a = pure.encode(make(pure, spec), level)
    b = compiled.encode(make(compiled, spec), level)
    assert a == b
    assert repr(make(pure, spec)) == repr(make(compiled, spec))
    _, kw = spec
    if "properties" in kw:
        assert pure.encode_properties(kw["properties"]) == compiled.encode_properties(
            kw["properties"]
        )


@SETTINGS
@given(n=st.integers(-5, C.MAX_VARINT + 5), data=st.binary(max_size=6), pos=st.integers(0, 6))
def test_varint_twins(compiled: ModuleType, n: int, data: bytes, pos: int) -> None:
    def run(fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except ValueError:
            return "ValueError"
        except PacketError as exc:
            return exc.reason_code

    assert run(pure.encode_varint, n) == run(compiled.encode_varint, n)
    if 0 <= n <= C.MAX_VARINT:
        assert compiled.decode_varint(compiled.encode_varint(n)) == (n, len(pure.encode_varint(n)))
    assert run(pure.decode_varint, data, pos) == run(compiled.decode_varint, data, pos)
