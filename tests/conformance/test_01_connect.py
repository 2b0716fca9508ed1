"""CONNECT / CONNACK at protocol levels 3 (MQIsdp), 4 and 5, sessions, client id takeover,
and the CONNECT-specific protocol violations. Raw bytes over TCP (see mqtt_raw.py)."""

from __future__ import annotations

import time

import pytest
from mqtt_raw import (
    ASSIGNED_CLIENT_IDENTIFIER,
    CONNACK,
    PUBACK,
    PUBLISH,
    SESSION_EXPIRY_INTERVAL,
    SUBACK,
    Client,
    assert_closed,
    assert_serves,
    connect,
    connected,
    parse_ack,
    parse_connack,
    parse_publish,
    parse_suback,
    prop,
    props,
    publish,
    subscribe,
)

LEVELS = [3, 4, 5]


@pytest.mark.parametrize("level", LEVELS)
def test_connect_connack_accepted(srv, uid, level):
    """A valid CONNECT gets CONNACK 0 as the first packet [MQTT-3.2.0-1]; with a clean session
    Session Present is 0 [MQTT-3.2.2-1]/[MQTT-3.2.2-2 (v5)]."""
    with Client(srv, level) as c:
        c.send(connect(f"c{level}-{uid}", level=level))
        p = c.expect(CONNACK)
        sp, rc, _ = parse_connack(p, level)
        assert rc == 0
        assert sp is False
        if level < 5:
            assert p.body == b"\x00\x00"
        c.ping()
        c.disconnect()


@pytest.mark.parametrize("level", LEVELS)
def test_connect_with_username_password(srv, uid, level):
    """Username and password fields are parsed (anonymous/any credentials accepted here)."""
    with Client(srv, level) as c:
        c.connect(f"up{level}-{uid}", username="user", password=b"secret\x00\xff")
        c.ping()


def test_v5_connack_properties_parse(srv, uid):
    """The MQTT 5 CONNACK carries a well-formed property block [MQTT 5 §3.2.2.3]."""
    with Client(srv, 5) as c:
        _, rc, properties = c.connect(f"props-{uid}")
        assert rc == 0
        for values in properties.values():
            assert values  # decode_props already checked types and lengths


def test_v311_empty_client_id_clean_session_accepted(srv):
    """A zero-byte client id with CleanSession=1 is accepted [MQTT-3.1.3-6/7]."""
    with Client(srv, 4) as c:
        c.connect("")
        c.ping()


def test_v311_empty_client_id_without_clean_session_rejected(srv):
    """A zero-byte client id with CleanSession=0 gets CONNACK 0x02 and the connection is closed
    [MQTT-3.1.3-8]."""
    with Client(srv, 4) as c:
        c.send(connect("", level=4, clean=False))
        _, rc, _ = parse_connack(c.expect(CONNACK), 4)
        assert rc == 0x02
        assert_closed(c)
    assert_serves(srv)


def test_v5_empty_client_id_gets_assigned_identifier(srv):
    """MQTT 5: a zero-length client id gets an Assigned Client Identifier [MQTT-3.2.2-16]."""
    with Client(srv, 5) as c:
        _, rc, properties = c.connect("")
        assert rc == 0
        assigned = properties.get(ASSIGNED_CLIENT_IDENTIFIER)
        assert assigned and isinstance(assigned[0], str) and assigned[0]


@pytest.mark.parametrize("level", [4, 5])
def test_client_id_takeover_closes_old_connection(srv, uid, level):
    """A second CONNECT with the same client id makes the server close the existing connection
    [MQTT-3.1.4-2] (MQTT 5 may send DISCONNECT 0x8E Session taken over first)."""
    cid = f"takeover{level}-{uid}"
    first = connected(srv, cid, level)
    second = connected(srv, cid, level)
    try:
        assert_closed(first, (0x8E,))
        second.ping()  # the new connection is the one that lives
    finally:
        first.close()
        second.close()


def test_v311_session_present(srv, uid):
    """CleanSession=0 resumes a stored session: Session Present 1 [MQTT-3.2.2-2]; CleanSession=1
    discards it: Session Present 0 [MQTT-3.2.2-1]."""
    cid = f"persist-{uid}"
    with connected(srv, cid, 4, clean=False) as c:
        c.subscribe(f"persist/{uid}", 1)
        c.disconnect()
    with Client(srv, 4) as c:
        sp, _, _ = c.connect(cid, clean=False)
        assert sp is True
        c.disconnect()
    with Client(srv, 4) as c:
        sp, _, _ = c.connect(cid, clean=True)
        assert sp is False
        c.disconnect()
    with Client(srv, 4) as c:
        sp, _, _ = c.connect(cid, clean=False)
        assert sp is False  # the clean session above ended the stored one [MQTT-3.1.2-6]
        c.disconnect()


def test_v31_connack_first_byte_reserved(srv, uid):
    """MQTT 3.1 has no Session Present: the first byte of CONNACK's variable header is reserved
    ("Reserved values. Not used", 3.1 §3.2), so it stays 0 when a clean-session-0 client comes
    back to its stored session. The session is still resumed: what was queued for it arrives."""
    cid = f"v31sp-{uid}"
    topic = f"v31sp/{uid}"
    with Client(srv, 3) as c:
        c.send(connect(cid, level=3, clean=False))
        assert c.expect(CONNACK).body == b"\x00\x00"
        c.subscribe(topic, 1)
        c.disconnect()
    with connected(srv, f"v31sp-pub-{uid}", 4) as pub:
        pub.publish(topic, b"queued", qos=1)
    with Client(srv, 3) as c:
        c.send(connect(cid, level=3, clean=False))
        assert c.expect(CONNACK).body == b"\x00\x00"
        m = c.recv_publish()
        assert (m.topic, m.payload) == (topic, b"queued")
        c.disconnect()


def test_v5_session_expiry_and_session_present(srv, uid):
    """MQTT 5: a session with Session Expiry Interval > 0 survives the connection; Clean Start
    0 then gives Session Present 1 [MQTT-3.2.2-3]. With interval 0 (absent) the session ends
    with the connection (MQTT 5 §3.1.2.11.2), so Session Present is 0."""
    cid = f"expiry-{uid}"
    keep = props(prop(SESSION_EXPIRY_INTERVAL, 60))
    with connected(srv, cid, 5, clean=True, properties=keep) as c:
        c.subscribe(f"expiry/{uid}", 1)
        c.disconnect()
    with Client(srv, 5) as c:
        sp, _, _ = c.connect(cid, clean=False, properties=keep)
        assert sp is True
        c.disconnect()
    # Now end it: interval 0 (default) on this connection means it ends at disconnect.
    with Client(srv, 5) as c:
        sp, _, _ = c.connect(cid, clean=True)
        assert sp is False
        c.disconnect()
    with Client(srv, 5) as c:
        sp, _, _ = c.connect(cid, clean=False)
        assert sp is False
        c.disconnect()


@pytest.mark.parametrize("level", [4, 5])
def test_packets_pipelined_after_connect(srv, uid, level):
    """A client may send packets right after CONNECT without waiting for CONNACK; CONNECT,
    SUBSCRIBE and PUBLISH in one TCP write are all processed in order (3.1.1 and MQTT 5 §3.1.4:
    "Clients are allowed to send further Control Packets immediately after sending a CONNECT")."""
    topic = f"pipe{level}/{uid}"
    with Client(srv, level) as c:
        c.send(
            connect(f"pipe{level}-{uid}", level=level)
            + subscribe(7, [(topic, 0)], level=level)
            + publish(topic, b"hello", level=level)
        )
        assert parse_connack(c.expect(CONNACK), level)[1] == 0
        pid, codes = parse_suback(c.expect(SUBACK), level)
        assert (pid, codes) == (7, [0])
        m = parse_publish(c.expect(PUBLISH), level)
        assert (m.topic, m.payload) == (topic, b"hello")


def test_connect_split_into_single_bytes(srv, uid):
    """The broker reassembles a CONNECT that arrives one byte per TCP segment."""
    data = connect(f"split-{uid}", level=4)
    with Client(srv, 4) as c:
        for i in range(len(data)):
            c.send(data[i : i + 1])
            time.sleep(0.002)
        assert parse_connack(c.expect(CONNACK), 4)[1] == 0


# --- CONNECT-specific protocol violations (each: connection closed, broker still serves) -------


@pytest.mark.parametrize("level", [4, 5])
def test_connect_reserved_flag_set(srv, uid, level):
    """The reserved Connect Flags bit 0 must be 0; otherwise the server closes [MQTT-3.1.2-3]."""
    with Client(srv, level) as c:
        c.send(connect(f"rsv-{uid}", level=level, flags=0x03))
        _assert_connect_rejected(c, level)
    assert_serves(srv, level)


@pytest.mark.parametrize(
    "flags,rule",
    [
        (0x02 | 0x08, "will QoS 1 without will flag [MQTT-3.1.2-13]"),
        (0x02 | 0x20, "will retain without will flag [MQTT-3.1.2-15]"),
        (0x02 | 0x04 | 0x18, "will QoS 3 [MQTT-3.1.2-14]"),
    ],
)
@pytest.mark.parametrize("level", [4, 5])
def test_connect_bad_will_flags(srv, uid, level, flags, rule):
    """Inconsistent will flags are a protocol violation: the connection is closed."""
    will = flags & 0x04
    data = connect(
        f"wf-{uid}",
        level=level,
        flags=flags,
        will_topic=f"will/{uid}" if will else None,
        will_payload=b"x",
    )
    with Client(srv, level) as c:
        c.send(data)
        _assert_connect_rejected(c, level)
    assert_serves(srv, level)


def test_v311_password_without_username(srv, uid):
    """3.1.1: password flag set with username flag 0 is a protocol violation [MQTT-3.1.2-22]."""
    with Client(srv, 4) as c:
        c.send(connect(f"pw-{uid}", level=4, password=b"pw"))
        _assert_connect_rejected(c, 4)
    assert_serves(srv)


def _assert_connect_rejected(c: Client, level: int) -> None:
    """After a bad CONNECT the server closes; it MAY send a CONNACK with an error code first
    (MQTT 5 §4.13.1 / 3.1.1 §4.8) but never a CONNACK 0."""
    got = c.wait_closed()
    for p in got:
        assert p.type == CONNACK, f"unexpected {p!r} before close"
        _, rc, _ = parse_connack(p, level)
        assert rc != 0, "a rejected CONNECT must not get CONNACK 0"


# --- Mosquitto bridges: bit 7 of the protocol level (try_private) ------------------------------


def bridge_connect(client_id: str, level: int, **kw: object) -> bytes:
    """A CONNECT at ``level`` (3 or 4) with bit 7 of the level set, as a Mosquitto bridge sends it
    (0x83 / 0x84)."""
    data = bytearray(connect(client_id, level=level, **kw))  # type: ignore[arg-type]
    assert data[1] < 0x80, "a one-byte Remaining Length keeps the offsets below"
    at = 2 + 2 + (6 if level == 3 else 4)  # fixed header, protocol name
    assert data[at] == level
    data[at] |= 0x80
    return bytes(data)


def _accepted(c: Client) -> bool:
    """The CONNACK that came is CONNACK 0 of MQTT 3.1 / 3.1.1 form."""
    return c.expect(CONNACK).body == b"\x00\x00"


@pytest.mark.parametrize("level", [3, 4])
def test_bridge_level_accepted(srv, uid, level):
    """Level 0x83 / 0x84 is a bridge at 3.1 / 3.1.1: CONNACK 0 of that level."""
    with Client(srv, level) as c:
        c.send(bridge_connect(f"br{level}-{uid}", level))
        assert _accepted(c)
        c.ping()
        c.disconnect()


@pytest.mark.parametrize("level", [3, 4])
def test_bridge_subscriptions_no_local_retain_as_published(srv, uid, level):
    """A bridge's subscriptions are No Local and Retain As Published (what the bit asks; Mosquitto
    does so): what it publishes is not sent back to it, and a retained message reaches it with
    RETAIN=1. An ordinary client subscribed alike gets its own message back with RETAIN=0."""
    topic = f"brsub{level}/{uid}"
    with Client(srv, level) as br, connected(srv, f"brsub-o-{level}-{uid}", 4) as other:
        br.send(bridge_connect(f"brsub{level}-{uid}", level))
        assert _accepted(br)
        br.subscribe(f"{topic}/#", 1)
        other.subscribe(f"{topic}/#", 1)
        br.publish(f"{topic}/own", b"from-bridge", qos=1)
        m = other.recv_publish()
        assert (m.topic, m.retain) == (f"{topic}/own", False)
        other.publish(f"{topic}/kept", b"retained", qos=1, retain=True)
        # The first PUBLISH the bridge gets is the other client's: its own did not come back
        m = br.recv_publish()
        assert (m.topic, m.payload, m.retain) == (f"{topic}/kept", b"retained", True)
        m = other.recv_publish()
        assert (m.topic, m.retain) == (f"{topic}/kept", False)  # [MQTT-3.3.1-9]
        other.publish(f"{topic}/kept", b"", qos=1, retain=True)  # clear it
        br.disconnect()


@pytest.mark.parametrize("level", [3, 4])
def test_bridge_connection_state_in_sys(srv, uid, level):
    """A bridge publishes its state to ``$SYS/broker/connection/<id>/state`` (retained "1") and
    leaves a will there (retained "0"); both are kept, so a later subscriber sees the state."""
    cid = f"brsys{level}-{uid}"
    state = f"$SYS/broker/connection/{cid}/state"
    br = Client(srv, level)
    try:
        br.send(
            bridge_connect(
                cid,
                level,
                clean=False,
                will_topic=state,
                will_payload=b"0",
                will_qos=1,
                will_retain=True,
            )
        )
        assert _accepted(br)
        br.send(publish(state, b"1", qos=1, pid=1, retain=True, level=level))
        assert parse_ack(br.expect(PUBACK), PUBACK, level)[0] == 1
        with connected(srv, f"brsys-w-{level}-{uid}", 4) as watch:
            watch.subscribe(f"$SYS/broker/connection/{cid}/#", 0)
            m = watch.recv_publish()
            assert (m.topic, m.payload, m.retain) == (state, b"1", True)
            br.kill()  # no DISCONNECT: the will goes out [MQTT-3.1.2-8]
            m = watch.recv_publish()
            assert (m.topic, m.payload) == (state, b"0")
        with connected(srv, f"brsys-l-{level}-{uid}", 4) as late:
            late.subscribe(state, 0)
            m = late.recv_publish()
            assert (m.payload, m.retain) == (b"0", True)
            assert late.until_pingresp() == []  # retained messages come before the PINGRESP
    finally:
        br.close()


@pytest.mark.mosquitto_deviation(
    "without ACLs Mosquitto lets any client publish into $SYS; MQTT 5 §4.7.2: the Server SHOULD "
    "prevent Clients from using such Topic Names to exchange messages with other Clients"
)
def test_sys_connection_state_only_from_a_bridge(srv, uid):
    """Only a bridge may publish into ``$SYS``, and only ``$SYS/broker/connection/+/state``: an
    ordinary client's state message and a bridge's other ``$SYS`` topics are dropped."""
    cid = f"brsysx-{uid}"
    with connected(srv, f"brsysx-c-{uid}", 4) as c:
        c.publish(f"$SYS/broker/connection/{cid}/state", b"evil", qos=1, retain=True)
    with Client(srv, 4) as br:
        br.send(bridge_connect(cid, 4))
        assert _accepted(br)
        br.publish(f"$SYS/broker/connection/{cid}/other", b"evil", qos=1, retain=True)
        br.publish(f"$SYS/broker/connection/{cid}/state/x", b"evil", qos=1, retain=True)
        br.publish(f"$SYS/broker/{cid}/state", b"evil", qos=1, retain=True)
        br.disconnect()
    with connected(srv, f"brsysx-l-{uid}", 4) as late:
        late.subscribe([(f"$SYS/broker/connection/{cid}/#", 0), (f"$SYS/broker/{cid}/#", 0)])
        assert late.until_pingresp() == []  # retained messages come before the PINGRESP
