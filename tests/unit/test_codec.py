"""Codec unit tests: hand-written byte vectors (MQTT 3.1, 3.1.1, 5.0) and every framing error.

Runs against both twins, the pure-Python reference and the compiled module (``codec_twin``,
tests/unit/conftest.py: the compiled run fails when the extension should be there and is not).
"""

from __future__ import annotations

from types import ModuleType

import pytest

from mqttd import constants as C
from mqttd.errors import PacketError


@pytest.fixture(scope="session")
def codec(codec_twin: ModuleType) -> ModuleType:
    """This file's short name for ``codec_twin`` (tests/unit/conftest.py)."""
    return codec_twin


def h(s: str) -> bytes:
    return bytes.fromhex(s)


# (level, wire bytes, builder of the expected packet, canonical: encode(packet, level) == wire)
VECTORS: list[tuple[int, str, str, bool]] = [
    # --- CONNECT ----------------------------------------------------------------------------------
    (4, "100e 0004 4d515454 04 02 003c 0002 6331", "connect4", True),
    (3, "1010 0006 4d5149736470 03 02 003c 0002 6331", "connect3", True),
    (
        5,
        "1027 0004 4d515454 05 ee 000a 05 110000000a 0001 63 05 1800000005 0001 77 0003 627965"
        " 0001 75 0001 70",
        "connect5_full",
        True,
    ),
    (
        4,
        "101b 0004 4d515454 04 ce 0000 0001 63 0001 77 0003 627965 0001 75 0001 70",
        "connect4_w",
        True,
    ),
    # Mosquitto bridges (try_private) set bit 7 of the level: 0x84 (3.1.1), 0x83 (3.1)
    (4, "100e 0004 4d515454 84 00 003c 0002 6331", "connect4_bridge", True),
    (3, "1010 0006 4d5149736470 83 00 003c 0002 6331", "connect3_bridge", True),
    # --- CONNACK ----------------------------------------------------------------------------------
    (4, "2002 01 00", "connack4", True),
    (3, "2002 00 05", "connack3_rc5", True),
    (5, "2003 00 00 00", "connack5", True),
    (5, "2007 00 00 04 2401 2500", "connack5_props", True),
    # --- PUBLISH ----------------------------------------------------------------------------------
    (4, "300a 0003 612f62 68656c6c6f", "pub4_q0", True),
    (3, "300a 0003 612f62 68656c6c6f", "pub4_q0", True),
    (4, "3b0c 0003 612f62 0007 68656c6c6f", "pub4_q1_dup_retain", True),
    (4, "3005 0003 612f62", "pub4_empty_payload", True),
    (5, "3008 0003 612f62 00 6869", "pub5_q0", True),
    (5, "340f 0003 612f62 0009 05 0101 230005 6869", "pub5_q2_props", True),
    # --- PUBACK / PUBREC / PUBREL / PUBCOMP -----------------------------------------------------------
    (4, "4002 0007", "puback", True),
    (4, "5002 0007", "pubrec", True),
    (4, "6202 0007", "pubrel", True),
    (4, "7002 0007", "pubcomp", True),
    (5, "4002 0007", "puback", True),
    (5, "4003 0007 10", "puback5_rc", True),
    (5, "4004 0007 10 00", "puback5_rc", False),
    (5, "4008 0007 10 04 1f000178", "puback5_reason_string", True),
    (5, "6203 0007 92", "pubrel5_rc", True),
    # --- SUBSCRIBE / SUBACK --------------------------------------------------------------------------
    (4, "820c 000a 0003 612f23 01 0001 62 00", "sub4", True),
    (3, "820c 000a 0003 612f23 01 0001 62 00", "sub4", True),
    (5, "820b 000a 02 0b05 0003 612f23 2d", "sub5", True),
    (4, "9004 000a 01 80", "suback4", True),
    (5, "9005 000a 00 01 80", "suback4", True),
    # --- UNSUBSCRIBE / UNSUBACK ----------------------------------------------------------------------
    (4, "a208 000b 0001 61 0001 62", "unsub", True),
    (5, "a209 000b 00 0001 61 0001 62", "unsub", True),
    (4, "b002 000b", "unsuback4", True),
    (5, "b005 000b 00 00 11", "unsuback5", True),
    # --- PINGREQ / PINGRESP / DISCONNECT / AUTH -----------------------------------------------------
    (4, "c000", "pingreq", True),
    (4, "d000", "pingresp", True),
    (4, "e000", "disconnect", True),
    (5, "e000", "disconnect", True),
    (5, "e001 04", "disconnect5_rc", True),
    (5, "e007 04 05 1100000000", "disconnect5_props", True),
    (5, "f000", "auth", True),
    (5, "f008 18 06 1500036162 63", "auth5_props", True),
]


def expected(codec: ModuleType, name: str):  # noqa: C901 - a flat table of packets
    c = codec
    return {
        "connect4": c.Connect(
            protocol_name="MQTT", protocol_level=4, clean_start=True, keepalive=60, client_id="c1"
        ),
        "connect3": c.Connect(
            protocol_name="MQIsdp", protocol_level=3, clean_start=True, keepalive=60, client_id="c1"
        ),
        "connect5_full": c.Connect(
            protocol_name="MQTT",
            protocol_level=5,
            clean_start=True,
            keepalive=10,
            client_id="c",
            username="u",
            password=b"p",
            will=c.Will(
                topic="w", payload=b"bye", qos=1, retain=True, properties={C.WILL_DELAY_INTERVAL: 5}
            ),
            properties={C.SESSION_EXPIRY_INTERVAL: 10},
        ),
        "connect4_w": c.Connect(
            protocol_name="MQTT",
            protocol_level=4,
            clean_start=True,
            keepalive=0,
            client_id="c",
            username="u",
            password=b"p",
            will=c.Will(topic="w", payload=b"bye", qos=1, retain=False),
        ),
        "connect4_bridge": c.Connect(
            protocol_name="MQTT",
            protocol_level=4,
            clean_start=False,
            keepalive=60,
            client_id="c1",
            bridge=True,
        ),
        "connect3_bridge": c.Connect(
            protocol_name="MQIsdp",
            protocol_level=3,
            clean_start=False,
            keepalive=60,
            client_id="c1",
            bridge=True,
        ),
        "connack4": c.ConnAck(session_present=True, reason_code=0),
        "connack3_rc5": c.ConnAck(session_present=False, reason_code=5),
        "connack5": c.ConnAck(session_present=False, reason_code=0),
        "connack5_props": c.ConnAck(
            session_present=False,
            reason_code=0,
            properties={C.MAXIMUM_QOS: 1, C.RETAIN_AVAILABLE: 0},
        ),
        "pub4_q0": c.Publish(topic="a/b", payload=b"hello"),
        "pub4_q1_dup_retain": c.Publish(
            topic="a/b", payload=b"hello", qos=1, retain=True, dup=True, packet_id=7
        ),
        "pub4_empty_payload": c.Publish(topic="a/b", payload=b""),
        "pub5_q0": c.Publish(topic="a/b", payload=b"hi"),
        "pub5_q2_props": c.Publish(
            topic="a/b",
            payload=b"hi",
            qos=2,
            packet_id=9,
            properties={C.PAYLOAD_FORMAT_INDICATOR: 1, C.TOPIC_ALIAS: 5},
        ),
        "puback": c.Ack(packet_type=C.PUBACK, packet_id=7),
        "pubrec": c.Ack(packet_type=C.PUBREC, packet_id=7),
        "pubrel": c.Ack(packet_type=C.PUBREL, packet_id=7),
        "pubcomp": c.Ack(packet_type=C.PUBCOMP, packet_id=7),
        "puback5_rc": c.Ack(packet_type=C.PUBACK, packet_id=7, reason_code=0x10),
        "puback5_reason_string": c.Ack(
            packet_type=C.PUBACK, packet_id=7, reason_code=0x10, properties={C.REASON_STRING: "x"}
        ),
        "pubrel5_rc": c.Ack(packet_type=C.PUBREL, packet_id=7, reason_code=0x92),
        "sub4": c.Subscribe(packet_id=10, subscriptions=[("a/#", 1), ("b", 0)]),
        "sub5": c.Subscribe(
            packet_id=10,
            subscriptions=[("a/#", 0x2D)],
            properties={C.SUBSCRIPTION_IDENTIFIER: [5]},
        ),
        "suback4": c.SubAck(packet_id=10, reason_codes=[1, 0x80]),
        "unsub": c.Unsubscribe(packet_id=11, filters=["a", "b"]),
        "unsuback4": c.UnsubAck(packet_id=11),
        "unsuback5": c.UnsubAck(packet_id=11, reason_codes=[0, 0x11]),
        "pingreq": c.PingReq(),
        "pingresp": c.PingResp(),
        "disconnect": c.Disconnect(),
        "disconnect5_rc": c.Disconnect(reason_code=4),
        "disconnect5_props": c.Disconnect(reason_code=4, properties={C.SESSION_EXPIRY_INTERVAL: 0}),
        "auth": c.Auth(),
        "auth5_props": c.Auth(reason_code=0x18, properties={C.AUTHENTICATION_METHOD: "abc"}),
    }[name]


IDS = [f"L{lvl}-{name}-{i}" for i, (lvl, _, name, _) in enumerate(VECTORS)]


# ------------------------------------------------------------------------------------------------
# Decoding and encoding the vectors
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("level,wire,name,canonical", VECTORS, ids=IDS)
def test_decode_vector(codec: ModuleType, level: int, wire: str, name: str, canonical: bool):
    r = codec.Reader(protocol_level=level)
    assert r.feed(h(wire)) == [expected(codec, name)]
    assert r.buffered == 0


@pytest.mark.parametrize("level,wire,name,canonical", VECTORS, ids=IDS)
def test_encode_vector(codec: ModuleType, level: int, wire: str, name: str, canonical: bool):
    if not canonical:
        pytest.skip("non-canonical (but valid) encoding")
    assert codec.encode(expected(codec, name), level) == h(wire)


@pytest.mark.parametrize("level", [3, 4, 5])
def test_all_vectors_byte_by_byte(codec: ModuleType, level: int):
    vecs = [(w, n) for lvl, w, n, _ in VECTORS if lvl == level and not n.startswith("connect")]
    stream = b"".join(h(w) for w, _ in vecs)
    want = [expected(codec, n) for _, n in vecs]
    r = codec.Reader(protocol_level=level)
    got = []
    for i in range(len(stream)):
        got.extend(r.feed(stream[i : i + 1]))
    assert got == want
    assert r.buffered == 0


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_feed_accepts_bytes_like(codec: ModuleType, kind):
    data = h("300a 0003 612f62 68656c6c6f") * 2
    r = codec.Reader()
    # split in the middle of the second packet's topic
    assert r.feed(kind(data[:15])) == [codec.Publish(topic="a/b", payload=b"hello")]
    assert r.buffered == 3
    out = r.feed(kind(data[15:]))
    assert out == [codec.Publish(topic="a/b", payload=b"hello")]
    assert type(out[0].payload) is bytes and type(out[0].topic) is str


def test_partial_header_then_rest(codec: ModuleType):
    big = codec.encode_publish("t", b"x" * 300)  # two-byte remaining length
    r = codec.Reader()
    assert r.feed(big[:2]) == []
    assert r.buffered == 2
    assert r.feed(big[2:100]) == []
    assert r.buffered == 100
    assert r.feed(big[100:] + b"\xc0") == [codec.Publish(topic="t", payload=b"x" * 300)]
    assert r.buffered == 1
    assert r.feed(b"\x00") == [codec.PingReq()]


def test_connect_sets_level_for_following_packets(codec: ModuleType):
    connect = h("100f 0004 4d515454 05 02 003c 00 0002 6331")
    # A level-5 PUBLISH with an empty property block: at level 4 the 00 would be payload.
    publish = h("3008 0003 612f62 00 6869")
    r = codec.Reader()
    assert r.protocol_level == 0
    pkts = r.feed(connect + publish)
    assert r.protocol_level == 5
    assert pkts[1] == codec.Publish(topic="a/b", payload=b"hi")
    r4 = codec.Reader()
    assert r4.feed(publish) == [codec.Publish(topic="a/b", payload=b"\x00hi")]  # level 0 = 4
    assert r4.protocol_level == 0


def test_reader_attributes_writable(codec: ModuleType):
    r = codec.Reader(max_packet_size=10, protocol_level=4)
    assert (r.max_packet_size, r.protocol_level, r.buffered) == (10, 4, 0)
    r.max_packet_size = 268435460
    r.protocol_level = 5
    assert (r.max_packet_size, r.protocol_level) == (268435460, 5)


def test_packet_objects_mutable_eq_repr(codec: ModuleType):
    p = codec.Publish(topic="a", payload=b"x")
    assert p.packet_type == C.PUBLISH and p.properties == {} and p.packet_id == 0
    q = codec.Publish(topic="a", payload=b"x")
    assert p == q and not (p != q)
    q.qos = 1
    q.packet_id = 3
    q.properties[C.TOPIC_ALIAS] = 2
    assert p != q
    assert repr(p) == (
        "Publish(topic='a', payload=b'x', qos=0, retain=False, dup=False, packet_id=0, "
        "properties={})"
    )
    assert repr(codec.PingReq()) == "PingReq()"
    assert codec.PingReq() == codec.PingReq()
    assert codec.Ack(packet_type=C.PUBREC, packet_id=1) != codec.Ack(
        packet_type=C.PUBACK, packet_id=1
    )
    assert repr(codec.Ack(packet_type=5, packet_id=1)) == (
        "Ack(packet_type=5, packet_id=1, reason_code=0, properties={})"
    )
    assert codec.Connect().properties == {} and codec.Connect().will is None
    # fresh property dicts per object
    a, b = codec.Disconnect(), codec.Disconnect()
    a.properties[C.REASON_STRING] = "x"
    assert b.properties == {}
    assert codec.Publish(topic="a") != codec.Subscribe()


def test_packet_classes_sharing_a_base_stay_apart(codec: ModuleType):
    # SUBACK/UNSUBACK and DISCONNECT/AUTH share their fields (and a base class): never equal
    assert codec.SubAck(1, [0]) != codec.UnsubAck(1, [0])
    assert codec.Disconnect(C.NOT_AUTHORIZED) != codec.Auth(C.NOT_AUTHORIZED)
    assert (codec.UnsubAck.packet_type, codec.Auth.packet_type) == (C.UNSUBACK, C.AUTH)
    assert (
        repr(codec.UnsubAck(2, [17])) == "UnsubAck(packet_id=2, reason_codes=[17], properties={})"
    )
    assert repr(codec.Auth(24)) == "Auth(reason_code=24, properties={})"
    for packet in (codec.SubAck(), codec.Auth(), codec.PingReq(), codec.Publish(), codec.Ack()):
        with pytest.raises(TypeError):
            hash(packet)  # mutable
    assert not hasattr(codec.PingReq(), "properties")  # as in MQTT: it has none


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------

CONN5 = "0004 4d515454 05"  # protocol name + level 5


def conn(flags: str, rest: str, proto: str = "0004 4d515454 04") -> bytes:
    body = h(proto + flags + "003c" + rest)
    return bytes((0x10, len(body))) + body


# (level, wire, reason code, what)
ERRORS: list[tuple[int, bytes, int, str]] = [
    (4, h("30 ff ff ff ff 7f"), 0x81, "remaining length of 5 bytes [MQTT-1.5.5-1]"),
    (4, h("0000"), 0x81, "packet type 0"),
    (4, h("f000"), 0x81, "AUTH at level 4"),
    (0, h("f000"), 0x81, "AUTH at level 0"),
    (3, h("f000"), 0x81, "AUTH at level 3"),
    (4, h("6002 0001"), 0x81, "PUBREL flags 0000 [MQTT-2.2.2-1]"),
    (4, h("8006 0001 0001 61 00"), 0x81, "SUBSCRIBE flags 0000"),
    (4, h("a005 0001 0001 61"), 0x81, "UNSUBSCRIBE flags 0000"),
    (4, h("4102 0001"), 0x81, "PUBACK flags 0001"),
    (4, h("c100"), 0x81, "PINGREQ flags 0001"),
    (4, h("1300"), 0x81, "CONNECT flags 0011"),
    (5, h("e800"), 0x81, "DISCONNECT flags 1000"),
    (4, h("3605 0003 612f62"), 0x81, "PUBLISH QoS 3 [MQTT-3.3.1-4]"),
    (4, h("3805 0003 612f62"), 0x81, "PUBLISH QoS 0 DUP [MQTT-3.3.1-2]"),
    (4, h("3207 0003 612f62 0000"), 0x82, "PUBLISH QoS 1 packet id 0 [MQTT-2.2.1-3]"),
    (4, h("8206 0000 0001 61 00"), 0x82, "SUBSCRIBE packet id 0"),
    (4, h("a205 0000 0001 61"), 0x82, "UNSUBSCRIBE packet id 0"),
    (4, h("3002 0005"), 0x81, "topic past the end"),
    (4, h("3001 00"), 0x81, "topic length past the end"),
    (4, h("3203 0001 61"), 0x81, "packet id past the end"),
    (4, h("4003 0001 00"), 0x81, "PUBACK with extra byte at level 4"),
    (4, h("4001 00"), 0x81, "PUBACK packet id past the end"),
    (4, h("c001 00"), 0x81, "PINGREQ with a body"),
    (4, h("d001 00"), 0x81, "PINGRESP with a body"),
    (4, h("e001 00"), 0x81, "DISCONNECT with a body at level 4"),
    (4, h("b003 0001 00"), 0x81, "UNSUBACK with codes at level 4"),
    (4, h("2003 00 00 00"), 0x81, "CONNACK with extra byte at level 4"),
    (4, h("2002 02 00"), 0x81, "CONNACK reserved ack flags [MQTT-3.2.2-1]"),
    (5, h("2002 00 00"), 0x81, "CONNACK 5 without property length"),
    (4, h("8205 0001 0001 61"), 0x81, "SUBSCRIBE options past the end"),
    (4, h("3004 0002 ff61"), 0x81, "ill-formed UTF-8 [MQTT-1.5.4-1]"),
    (4, h("3005 0003 eda080"), 0x81, "UTF-16 surrogate in UTF-8 [MQTT-1.5.4-1]"),
    (4, h("3004 0002 c080"), 0x81, "overlong UTF-8"),
    (4, h("3005 0003 610062"), 0x81, "U+0000 in topic [MQTT-1.5.4-2]"),
    (4, h("3003 0001 00"), 0x81, "a topic of U+0000 alone, as the first PUBLISH"),
    (4, h("8208 0001 0003 61 00 62 00"), 0x81, "U+0000 in filter"),
    (4, h("a207 0001 0003 61ff62"), 0x81, "bad UTF-8 in unsubscribe filter"),
    # CONNECT
    (0, conn("02", "0001 63", "0004 4d515458 04"), 0x84, "protocol name MQTX"),
    (0, conn("02", "0001 63", "0004 4d515454 03"), 0x84, "MQTT level 3"),
    (0, conn("02", "0001 63", "0006 4d5149736470 04"), 0x84, "MQIsdp level 4"),
    (0, conn("02", "0001 63", "0004 4d515454 06"), 0x84, "MQTT level 6"),
    # The bridge bit is known on the levels that have it, with their own names only
    (0, conn("02", "0001 63", "0004 4d515454 85"), 0x84, "MQTT level 0x85"),
    (0, conn("02", "0001 63", "0004 4d515454 83"), 0x84, "MQTT level 0x83"),
    (0, conn("02", "0001 63", "0006 4d5149736470 84"), 0x84, "MQIsdp level 0x84"),
    (0, conn("02", "0001 63", "0004 4d515454 80"), 0x84, "MQTT level 0x80"),
    (0, conn("02", "0001 63", "0004 4d515454 c4"), 0x84, "MQTT level 0xc4"),
    (0, conn("03", "0001 63"), 0x81, "CONNECT reserved flag [MQTT-3.1.2-3]"),
    (0, conn("0a", "0001 63"), 0x81, "will QoS 1 without will flag [MQTT-3.1.2-11]"),
    (0, conn("22", "0001 63"), 0x81, "will retain without will flag [MQTT-3.1.2-15]"),
    (0, conn("1e", "0001 63 0001 77 0000"), 0x81, "will QoS 3 [MQTT-3.1.2-14]"),
    (0, conn("42", "0001 63 0001 70"), 0x81, "password without user name at 4 [MQTT-3.1.2-22]"),
    (0, conn("42", "0001 63 0001 70", "0006 4d5149736470 03"), 0x81, "same at level 3"),
    (0, conn("02", "0001 63 00"), 0x81, "CONNECT trailing byte"),
    (0, conn("82", "0001 63"), 0x81, "user name flag without user name"),
    (0, conn("06", "0001 63 0001 77"), 0x81, "will payload missing"),
    (0, conn("02", "0001 00"), 0x81, "U+0000 in client id"),
    (0, h("1003 0004 4d"), 0x81, "protocol name past end"),
    (0, conn("02", "05 2601 0001 63", CONN5), 0x81, "user property past its block"),
    # SUBSCRIBE
    (4, h("8202 0001"), 0x82, "SUBSCRIBE without filter [MQTT-3.8.3-3]"),
    (5, h("8203 0001 00"), 0x82, "SUBSCRIBE 5 without filter"),
    (5, h("8207 0001 00 0001 61 40"), 0x81, "options bit 6 [MQTT-3.8.3-5]"),
    (5, h("8207 0001 00 0001 61 80"), 0x81, "options bit 7 [MQTT-3.8.3-5]"),
    (4, h("8206 0001 0001 61 04"), 0x81, "options No Local at level 4 [MQTT-3-8.3-4]"),
    (3, h("8206 0001 0001 61 10"), 0x81, "options Retain Handling at level 3"),
    (4, h("8206 0001 0001 61 03"), 0x81, "SUBSCRIBE QoS 3 at level 4"),
    (5, h("8207 0001 00 0001 61 03"), 0x81, "SUBSCRIBE QoS 3 at level 5"),
    (5, h("8207 0001 00 0001 61 30"), 0x82, "Retain Handling 3"),
    # UNSUBSCRIBE
    (4, h("a202 0001"), 0x82, "UNSUBSCRIBE without filter [MQTT-3.10.3-2]"),
    (5, h("a203 0001 00"), 0x82, "UNSUBSCRIBE 5 without filter"),
    # properties
    (5, h("300c 0003 612f62 06 230001 230002"), 0x82, "topic alias twice"),
    (5, h("300d 0003 612f62 07 0101 03 0002 6100"), 0x81, "U+0000 in content type"),
    (5, h("300b 0003 612f62 05 1100000001"), 0x81, "session expiry in PUBLISH"),
    (5, h("3008 0003 612f62 02 7f00"), 0x81, "unknown property 0x7f"),
    (5, h("3008 0003 612f62 02 0000"), 0x81, "property id 0"),
    (5, h("3009 0003 612f62 02 0301 ff"), 0x81, "content type past the property block"),
    (5, h("300a 0003 612f62 04 030001ff"), 0x81, "content type bad UTF-8"),
    (5, h("3008 0003 612f62 05 0101"), 0x81, "property block past the packet"),
    (5, h("3009 0003 612f62 02 0b 80 80"), 0x81, "subscription id varint past block"),
    (5, h("300c 0003 612f62 06 0b ffffffff7f"), 0x81, "subscription id varint of 5 bytes"),
    (5, h("820b 0001 04 0b01 0b02 0001 61 00"), 0x82, "two subscription ids in SUBSCRIBE"),
    (5, h("820a 0001 03 0b01 01 0001 61 00"), 0x81, "payload format in SUBSCRIBE"),
    (5, h("4006 0001 00 02 2301"), 0x81, "topic alias in PUBACK"),
    (5, h("4009 0001 00 05 1f0001 61 1f"), 0x81, "reason string twice (truncated)"),
    (5, h("400c 0001 00 08 1f0001 61 1f0001 62"), 0x82, "reason string twice"),
    (5, h("e007 00 06 1100000001"), 0x81, "disconnect property block too long"),
    (5, h("e008 00 06 110000000111"), 0x81, "session expiry truncated"),
    (5, h("e00c 00 0a 1100000001 1100000002"), 0x82, "session expiry twice"),
    (5, h("f003 18 01 17"), 0x81, "request problem info in AUTH"),
    (5, h("2006 00 00 02 2401 01"), 0x81, "CONNACK trailing byte after properties"),
]


@pytest.mark.parametrize("level,wire,code,what", ERRORS, ids=[e[3] for e in ERRORS])
def test_errors(codec: ModuleType, level: int, wire: bytes, code: int, what: str):
    r = codec.Reader(protocol_level=level)
    with pytest.raises(PacketError) as ei:
        r.feed(wire)
    assert ei.value.reason_code == code, what
    assert ei.value.packets == []
    # The reader is unusable afterwards, even for a valid packet.
    with pytest.raises(PacketError):
        r.feed(b"\xc0\x00")


@pytest.mark.parametrize("level,wire,code,what", ERRORS, ids=[e[3] for e in ERRORS])
def test_errors_byte_by_byte(codec: ModuleType, level: int, wire: bytes, code: int, what: str):
    r = codec.Reader(protocol_level=level)
    good = h("c000 d000")
    with pytest.raises(PacketError) as ei:
        for b in good + wire:
            r.feed(bytes((b,)))
    assert ei.value.reason_code == code, what


def test_error_carries_preceding_packets(codec: ModuleType):
    r = codec.Reader()
    with pytest.raises(PacketError) as ei:
        r.feed(h("c000 300a 0003 612f62 68656c6c6f 3807 0003 612f62 0001 c000"))
    assert ei.value.reason_code == 0x81
    assert ei.value.packets == [codec.PingReq(), codec.Publish(topic="a/b", payload=b"hello")]


def test_bridge_connect(codec: ModuleType):
    """A bridge's CONNECT (level 0x84 / 0x83) gives the real level and ``bridge``; the Reader
    goes on at the real level, and an ordinary CONNECT is no bridge."""
    r = codec.Reader()
    (p,) = r.feed(h("100e 0004 4d515454 84 02 003c 0002 6331"))
    assert (p.protocol_level, p.bridge, r.protocol_level) == (4, True, 4)
    r = codec.Reader()
    (p,) = r.feed(h("1010 0006 4d5149736470 83 02 003c 0002 6331"))
    assert (p.protocol_level, p.bridge, r.protocol_level) == (3, True, 3)
    (p,) = codec.Reader().feed(h("100e 0004 4d515454 04 02 003c 0002 6331"))
    assert p.bridge is False
    assert codec.Connect().bridge is False
    assert codec.encode_connect("c1", 4, bridge=True) == h(
        "100e 0004 4d515454 84 02 003c 0002 6331"
    )
    assert "bridge=True" in repr(codec.Connect(bridge=True))
    assert codec.Connect(bridge=True) != codec.Connect()


@pytest.mark.parametrize("level,first", [(3, "00"), (4, "01"), (5, "01")])
def test_connack_session_present_by_level(codec: ModuleType, level: int, first: str):
    """Session Present is 3.1.1's and 5's [MQTT-3.2.2-2]; MQTT 3.1's first CONNACK byte is
    reserved (3.1 §3.2): 0 at level 3 even for a resumed session."""
    wire = codec.encode_connack(True, 0, level)
    assert wire[:4] == h("2002" if level < 5 else "2003") + h(first) + b"\x00"
    assert codec.encode_connack(False, 0, level)[2] == 0


def test_password_without_username_allowed_at_level_5(codec: ModuleType):
    wire = conn("42", "00 0001 63 0001 70", CONN5)
    (p,) = codec.Reader().feed(wire)
    assert p.username is None and p.password == b"p" and p.protocol_level == 5


def test_subscription_identifier_repeats_in_publish(codec: ModuleType):
    wire = h("300c 0003 612f62 05 0b01 0b8101 78")
    (p,) = codec.Reader(protocol_level=5).feed(wire)
    assert p.properties == {C.SUBSCRIPTION_IDENTIFIER: [1, 129]} and p.payload == b"x"


def test_repeated_and_changing_topics(codec: ModuleType):
    # The compiled Reader reuses the previous topic str when the bytes repeat: check that it
    # never hands back a stale topic, across feeds and for non-ASCII topics.
    topics = ["a/b", "a/b", "a/c", "a/c/", "é", "é", "", "", "a/b", "b/a", "a/b"]
    wire = [codec.encode_publish(t, t.encode()) for t in topics]
    r = codec.Reader()
    got = r.feed(b"".join(wire[:5])) + r.feed(b"".join(wire[5:]))
    assert [(p.topic, p.payload) for p in got] == [(t, t.encode()) for t in topics]
    with pytest.raises(PacketError) as ei:
        r.feed(h("3005 0003 610062"))  # "a\x00b": same length as "a/b", still refused
    assert ei.value.reason_code == 0x81


def test_user_properties_keep_wire_order(codec: ModuleType):
    props = {C.USER_PROPERTY: [("k", "2"), ("a", "1"), ("k", "1")], C.CONTENT_TYPE: "t"}
    wire = codec.encode_publish("t", b"", protocol_level=5, properties=props)
    (p,) = codec.Reader(protocol_level=5).feed(wire)
    assert p.properties == props
    assert list(p.properties[C.USER_PROPERTY]) == [("k", "2"), ("a", "1"), ("k", "1")]


# ------------------------------------------------------------------------------------------------
# Maximum packet size: refused from the fixed header, before the body is buffered
# ------------------------------------------------------------------------------------------------


def test_max_packet_size_from_header_only(codec: ModuleType):
    r = codec.Reader(max_packet_size=100)
    # 1 + 1 + 98 = 100 bytes: allowed (only header fed, so it waits)
    assert r.feed(h("3062")) == []
    r = codec.Reader(max_packet_size=100)
    with pytest.raises(PacketError) as ei:
        r.feed(h("3063"))  # 1 + 1 + 99 = 101
    assert ei.value.reason_code == 0x95


def test_max_packet_size_counts_varint_bytes(codec: ModuleType):
    r = codec.Reader(max_packet_size=130)
    with pytest.raises(PacketError) as ei:
        r.feed(h("30 80 01"))  # 1 + 2 + 128 = 131
    assert ei.value.reason_code == 0x95
    r = codec.Reader(max_packet_size=131)
    assert r.feed(h("30 80 01")) == []


def test_huge_announcement_never_buffered(codec: ModuleType):
    r = codec.Reader()  # default 1 MiB
    assert r.max_packet_size == 1048576
    assert r.feed(h("30 ff ff")) == []  # varint still incomplete
    assert r.buffered == 3
    with pytest.raises(PacketError) as ei:
        r.feed(h("ff 7f") + b"x" * 1000)
    assert ei.value.reason_code == 0x95
    assert r.buffered < 1000


def test_max_packet_size_header_byte_by_byte(codec: ModuleType):
    r = codec.Reader(max_packet_size=1000)
    r.feed(b"\xc0\x00")
    r.feed(b"\x30")
    r.feed(b"\xe9")  # continuation: no verdict yet
    with pytest.raises(PacketError) as ei:
        r.feed(b"\x07")  # 1 + 2 + 1001
    assert ei.value.reason_code == 0x95


def test_varint_too_long_detected_at_fourth_byte(codec: ModuleType):
    r = codec.Reader()
    with pytest.raises(PacketError) as ei:
        r.feed(h("30 ff ff ff ff"))
    assert ei.value.reason_code == 0x81


def test_large_packet_in_small_chunks(codec: ModuleType):
    payload = bytes(range(256)) * 400  # 102400 bytes, 3-byte remaining length
    wire = codec.encode_publish("big/one", payload, qos=1, packet_id=2)
    r = codec.Reader()
    got = []
    for i in range(0, len(wire), 997):
        got += r.feed(wire[i : i + 997])
    assert got == [codec.Publish(topic="big/one", payload=payload, qos=1, packet_id=2)]


# ------------------------------------------------------------------------------------------------
# Encoders
# ------------------------------------------------------------------------------------------------

VARINTS = [
    (0, "00"),
    (127, "7f"),
    (128, "8001"),
    (16383, "ff7f"),
    (16384, "808001"),
    (2097151, "ffff7f"),
    (2097152, "80808001"),
    (268435455, "ffffff7f"),
]


@pytest.mark.parametrize("n,wire", VARINTS)
def test_varint(codec: ModuleType, n: int, wire: str):
    assert codec.encode_varint(n) == h(wire)
    assert codec.decode_varint(h(wire)) == (n, len(h(wire)))
    assert codec.decode_varint(b"\xaa" + h(wire) + b"\x01", 1) == (n, 1 + len(h(wire)))


def test_varint_errors(codec: ModuleType):
    for bad in (-1, 268435456):
        with pytest.raises(ValueError):
            codec.encode_varint(bad)
    for wire in ("ffffffff7f", "ffffffff", "ff", ""):
        with pytest.raises(PacketError) as ei:
            codec.decode_varint(h(wire))
        assert ei.value.reason_code == 0x81


def test_encode_functions(codec: ModuleType):
    c = codec
    assert c.encode_pingreq() == h("c000")
    assert c.encode_pingresp() == h("d000")
    assert c.encode_disconnect() == h("e000")
    assert c.encode_disconnect(0x8E, protocol_level=4) == h("e000")
    assert c.encode_disconnect(0x8E, protocol_level=5) == h("e001 8e")
    assert c.encode_auth() == h("f000")
    assert c.encode_connack(True, 0) == h("2002 0100")
    assert c.encode_connack(False, 0x87, 5) == h("2003 0087 00")
    assert c.encode_ack(C.PUBREL, 258) == h("6202 0102")
    assert c.encode_ack(C.PUBACK, 1, 5) == h("4002 0001")
    assert c.encode_ack(C.PUBACK, 1, 5, 0x10) == h("4003 0001 10")
    assert c.encode_ack(C.PUBCOMP, 1, 5, 0, {C.REASON_STRING: "x"}) == h("7008 0001 00 04 1f000178")
    assert c.encode_ack(C.PUBACK, 1, 4, 0x10) == h("4002 0001")
    assert c.encode_subscribe(10, [("a/#", 1), ("b", 0)]) == h(
        "820c 000a 0003 612f23 01 0001 62 00"
    )
    assert c.encode_suback(10, [1, 0x80]) == h("9004 000a 0180")
    assert c.encode_unsubscribe(11, ["a", "b"], 5) == h("a209 000b 00 0001 61 0001 62")
    assert c.encode_unsuback(11) == h("b002 000b")
    assert c.encode_unsuback(11, [0, 0x11], 4) == h("b002 000b")
    assert c.encode_unsuback(11, [0, 0x11], 5) == h("b005 000b 00 0011")
    assert c.encode_publish("a/b", b"hello") == h("300a 0003 612f62 68656c6c6f")
    assert c.encode_publish("a/b", memoryview(b"hello"), 1, True, True, 7) == h(
        "3b0c 0003 612f62 0007 68656c6c6f"
    )
    assert c.encode_publish("a/b", bytearray(b"hi"), protocol_level=5) == h(
        "3008 0003 612f62 00 6869"
    )
    assert c.encode_connect("c1") == h("100e 0004 4d515454 04 02 003c 0002 6331")
    assert c.encode_connect("c1", 3) == h("1010 0006 4d5149736470 03 02 003c 0002 6331")
    assert c.encode_properties({}) == b"\x00"
    assert c.encode_properties(None) == b"\x00"
    assert c.encode_properties({C.SUBSCRIPTION_IDENTIFIER: 5}) == h("02 0b05")
    assert c.encode_properties(
        {C.USER_PROPERTY: [("a", "b"), ("a", "c")], C.MESSAGE_EXPIRY_INTERVAL: 1}
    ) == h("13 2600016100016 2 2600016100016 3 0200000001".replace(" ", ""))


def test_encoder_value_errors(codec: ModuleType):
    c = codec
    with pytest.raises(ValueError):
        c.encode_publish("x" * 65536, b"")
    with pytest.raises(ValueError):
        c.encode_subscribe(1, [("é" * 32768, 0)])
    with pytest.raises(ValueError):
        c.encode_properties({C.CORRELATION_DATA: b"x" * 65536})
    with pytest.raises(ValueError):
        c.encode_properties({0x7F: 1})
    with pytest.raises(ValueError):
        c.encode_properties({C.SUBSCRIPTION_IDENTIFIER: [268435456]})
    with pytest.raises(ValueError):
        c.encode_ack(C.PUBLISH, 1)
    # 65535 bytes is still fine
    assert len(c.encode_publish("x" * 65535, b"")) == 65535 + 2 + 1 + 3


def test_max_size_publish_roundtrip_boundary(codec: ModuleType):
    wire = codec.encode_publish("t", b"p" * 1000)
    r = codec.Reader(max_packet_size=len(wire))
    assert len(r.feed(wire)) == 1
    r = codec.Reader(max_packet_size=len(wire) - 1)
    with pytest.raises(PacketError) as ei:
        r.feed(wire[:3])
    assert ei.value.reason_code == 0x95
