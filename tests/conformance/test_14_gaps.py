"""Rules of MQTT 3.1.1 (and their MQTT 5.0 twins) that test_01..test_08 do not cover.

Ids are given for both versions where they differ: "3.1.1 [MQTT-x]" / "5.0 [MQTT-y]".
"""

from __future__ import annotations

import pytest
from mqtt_raw import (
    CONNACK,
    MARKER,
    PUBACK,
    PUBCOMP,
    PUBREC,
    SUBACK,
    Client,
    connect,
    connected,
    parse_ack,
    parse_suback,
    publish,
    pubrel,
    subscribe,
)

LEVELS = [4, 5]


@pytest.mark.parametrize("level", LEVELS)
def test_client_id_of_23_alphanumerics_allowed(srv, uid, level):
    """The server MUST allow ClientIds of 1 to 23 bytes from [0-9a-zA-Z] [MQTT-3.1.3-5] (both
    versions): the longest such id, using every character class, is accepted."""
    cid = ("Zz9" + uid.replace("-", "") + "ABCDEFGHIJKLMNOPQRSTUVWXYZ")[:23]
    assert len(cid) == 23 and cid.isalnum()
    with Client(srv, level) as c:
        c.connect(cid)
        c.ping()
        c.disconnect()


@pytest.mark.parametrize("level", LEVELS)
def test_incoming_dup_flag_not_propagated(srv, uid, level):
    """Spec: "The DUP flag in the outgoing PUBLISH packet is set independently to the incoming
    PUBLISH packet, its value MUST be determined solely by whether the outgoing PUBLISH packet
    is a retransmission" [MQTT-3.3.1-3] (both versions): a first delivery has DUP 0 even when
    the publisher's copy had DUP 1."""
    topic = f"dupprop/{uid}"
    with connected(srv, f"s-{uid}", level) as sub, connected(srv, f"p-{uid}", level) as pub:
        sub.subscribe(topic, 2)
        for qos in (1, 2):
            pub.send(publish(topic, b"%d" % qos, qos=qos, pid=qos, dup=True, level=level))
            if qos == 1:
                parse_ack(pub.expect(PUBACK), PUBACK, level)
            else:
                pub.expect(PUBREC)
                pub.send(pubrel(qos))
                pub.expect(PUBCOMP)
            m = sub.recv_publish()
            assert (m.payload, m.dup) == (b"%d" % qos, False)


@pytest.mark.parametrize("level", LEVELS)
def test_non_retained_publish_keeps_retained_message(srv, uid, level):
    """A PUBLISH with RETAIN 0 "MUST NOT remove or replace any existing retained message"
    (3.1.1 [MQTT-3.3.1-12] / 5.0 [MQTT-3.3.1-8]) -- not even with an empty payload."""
    topic = f"keepret/{uid}"
    with connected(srv, f"p-{uid}", level) as pub:
        pub.publish(topic, b"retained", qos=1, retain=True)
        pub.publish(topic, b"live", qos=1, pid=2)
        pub.publish(topic, b"", qos=1, pid=3)
        with connected(srv, f"s-{uid}", level) as sub:
            sub.subscribe(topic, 1)
            m = sub.recv_publish()
            assert (m.payload, m.retain) == (b"retained", True)
            assert sub.until_pingresp() == []  # retained messages come before the PINGRESP
        pub.publish(topic, b"", qos=1, retain=True, pid=4)


@pytest.mark.parametrize("level", LEVELS)
def test_bom_in_topic_is_not_stripped(srv, uid, level):
    """Spec: "A UTF-8 encoded sequence 0xEF 0xBB 0xBF is always interpreted as U+FEFF ... and MUST
    NOT be skipped over or stripped off by a packet receiver" (3.1.1 [MQTT-1.5.3-3] / 5.0
    [MQTT-1.5.4-3]): `a/<BOM>b` and `a/b` are different topics, and the BOM arrives intact."""
    bom = "\ufeff"
    with connected(srv, f"s-{uid}", level) as sub, connected(srv, f"p-{uid}", level) as pub:
        sub.subscribe(f"bom/{uid}/{bom}b", 1)
        pub.publish(f"bom/{uid}/b", b"plain", qos=1)
        pub.publish(f"bom/{uid}/{bom}b", b"bom", qos=1, pid=2)
        m = sub.recv_publish()
        assert (m.topic, m.payload) == (f"bom/{uid}/{bom}b", b"bom")
        pub.publish(f"bom/{uid}/{bom}b", MARKER, qos=1, pid=3)
        assert sub.until() == []


@pytest.mark.parametrize(
    "data",
    [
        # Unacceptable protocol level: CONNACK 0x01 (3.1.1 §3.2.2.3).
        bytes(connect("x", level=4)[:8]) + b"\x06" + connect("x", level=4)[9:],
        # Zero-byte ClientId with CleanSession 0: CONNACK 0x02 [MQTT-3.1.3-8].
        connect("", level=4, clean=False),
    ],
    ids=["v4-bad-level", "v4-empty-id-persistent"],
)
def test_data_after_refused_connect_not_processed(srv, uid, data):
    """Spec:
    "If the Server rejects the CONNECT, it MUST NOT process any data sent by the Client after
    the CONNECT Packet" (3.1.1 [MQTT-3.1.4-5]; 5.0 [MQTT-3.1.4-6] is tested in test_10): a
    retained PUBLISH pipelined after a refused CONNECT is not stored."""
    topic = f"refused/{uid}"
    c = Client(srv, 4)
    c.send(data + publish(topic, b"smuggled", retain=True))
    try:
        got = c.wait_closed()
    finally:
        c.close()
    assert got and got[0].type == CONNACK and got[0].body[1] != 0
    with connected(srv, f"s-{uid}", 4) as sub:
        sub.subscribe(topic, 1)
        assert sub.until_pingresp() == []  # no retained message: it was not stored


@pytest.mark.parametrize("level", LEVELS)
def test_unsubscribe_several_filters_one_unsuback(srv, uid, level):
    """An UNSUBSCRIBE with several filters is processed as a sequence of UNSUBSCRIBEs answered
    by one UNSUBACK (3.1.1 [MQTT-3.10.4-6] / 5.0 [MQTT-3.10.4-6]); at MQTT 5 its reason codes
    follow the filter order [MQTT-3.11.3-1]: removed 0x00, unknown 0x11."""
    base = f"unsubmany/{uid}"
    with connected(srv, f"s-{uid}", level) as c, connected(srv, f"p-{uid}", level) as pub:
        c.subscribe([(f"{base}/a", 1), (f"{base}/b", 1), (f"{base}/c", 1)])
        codes = c.unsubscribe([f"{base}/a", f"{base}/none", f"{base}/c"])
        if level >= 5:
            assert codes == [0x00, 0x11, 0x00]
        for t in ("a", "b", "c"):
            pub.publish(f"{base}/{t}", t.encode(), qos=1)
        m = c.recv_publish()
        assert m.topic == f"{base}/b"
        pub.publish(f"{base}/b", MARKER, qos=1)
        assert c.until() == []


@pytest.mark.parametrize("level", LEVELS)
def test_same_filter_twice_in_one_subscribe(srv, uid, level):
    """A SUBSCRIBE with several filters is handled "as if it had received a sequence of
    multiple SUBSCRIBE packets" (3.1.1 [MQTT-3.8.4-4] / 5.0 [MQTT-3.8.4-5]), so the same filter
    twice means the second replaces the first [MQTT-3.8.4-3]: one subscription at QoS 2, one
    copy per message."""
    topic = f"twice/{uid}"
    with connected(srv, f"s-{uid}", level) as c, connected(srv, f"p-{uid}", level) as pub:
        c.send(subscribe(3, [(topic, 0), (topic, 2)], level=level))
        assert parse_suback(c.expect(SUBACK), level) == (3, [0, 2])
        pub.publish(topic, b"x", qos=2)
        m = c.recv_publish()
        assert m.qos == 2
        pub.publish(topic, MARKER, qos=2)  # same topic and QoS: ordered [MQTT-4.6.0-6]
        assert c.until() == []  # one copy


@pytest.mark.parametrize("level", LEVELS)
def test_longest_topic_name(srv, uid, level):
    """Topic Names are UTF-8 strings of up to 65,535 bytes (3.1.1 [MQTT-4.7.3-3] / 5.0
    [MQTT-4.7.3-3]): a topic of exactly 65,535 bytes is delivered intact."""
    prefix = f"long/{uid}/"
    topic = prefix + "x" * (65535 - len(prefix))
    with connected(srv, f"s-{uid}", level) as sub, connected(srv, f"p-{uid}", level) as pub:
        sub.subscribe(f"long/{uid}/+", 1)
        pub.publish(topic, b"far", qos=1)
        m = sub.recv_publish()
        assert len(m.topic.encode()) == 65535 and m.topic == topic and m.payload == b"far"


@pytest.mark.parametrize("level", LEVELS)
def test_inbound_qos2_state_survives_reconnect(srv, uid, level):
    """The server's state for a QoS 2 message received but not completely acknowledged is part
    of the session (3.1.1 §4.1 / 5.0 §4.1). The publisher gets PUBREC, loses the connection,
    resumes the session and re-sends the PUBLISH with DUP 1 and the same packet id
    [MQTT-4.4.0-1], then PUBREL: the server answers PUBREC and PUBCOMP and the subscriber gets
    the message exactly once (3.1.1 [MQTT-4.3.3-2] / 5.0 [MQTT-4.3.3-10])."""
    from mqtt_raw import SESSION_EXPIRY_INTERVAL, prop, props

    topic = f"in2/{uid}"
    cid = f"p-{uid}"
    keep = {"properties": props(prop(SESSION_EXPIRY_INTERVAL, 30))} if level >= 5 else {}
    with connected(srv, f"s-{uid}", level) as sub:
        sub.subscribe(topic, 2)
        pub = connected(srv, cid, level, clean=False, **keep)
        pub.send(publish(topic, b"once", qos=2, pid=21, level=level))
        assert parse_ack(pub.expect(PUBREC), PUBREC, level)[0] == 21
        pub.kill()
        with Client(srv, level) as again:
            sp, _, _ = again.connect(cid, clean=False, **keep)
            assert sp is True
            again.send(publish(topic, b"once", qos=2, pid=21, dup=True, level=level))
            assert parse_ack(again.expect(PUBREC), PUBREC, level)[0] == 21
            again.send(pubrel(21))
            assert parse_ack(again.expect(PUBCOMP), PUBCOMP, level)[0] == 21
            again.disconnect()
        assert sub.recv_publish().payload == b"once"
        with connected(srv, f"m-{uid}", level) as marker:
            marker.publish(topic, MARKER, qos=2)
        assert sub.until() == []  # exactly once
    with Client(srv, level) as cleanup:
        cleanup.connect(cid, clean=True)
        cleanup.disconnect()
