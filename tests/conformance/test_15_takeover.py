"""Session takeover: what a second connection with a client id that is still connected inherits
from the first (its session, its will), and what it must not.

Each test connects the first client, takes it over with a second connection, and checks the
CONNACK of the second, what the first receives before it is closed [MQTT-3.1.4-3] and, with a
marker message published after the event under test, that nothing else arrives.
"""

from __future__ import annotations

import pytest
from mqtt_raw import (
    DISCONNECT,
    MARKER,
    SESSION_EXPIRY_INTERVAL,
    WILL_DELAY_INTERVAL,
    Client,
    connected,
    parse_disconnect,
    prop,
    props,
)

SESSION_TAKEN_OVER = 0x8E


def _taken_over(old: Client) -> None:
    """The first connection is closed [MQTT-3.1.4-3]; at MQTT 5 it may be told why first
    (DISCONNECT 0x8E, which mqttd sends and Mosquitto 2.0.11 does not)."""
    got = old.wait_closed()
    if old.level == 5 and got:
        assert [p.type for p in got] == [DISCONNECT], got
        assert parse_disconnect(got[0]) == SESSION_TAKEN_OVER
    else:
        assert got == [], f"no server DISCONNECT below MQTT 5: {got!r}"


def _keep(level: int) -> dict[str, object]:
    """CONNECT arguments for a session that outlives its connection."""
    if level == 5:
        return {"clean": False, "properties": props(prop(SESSION_EXPIRY_INTERVAL, 60))}
    return {"clean": False}


@pytest.mark.parametrize("level", [3, 4, 5])
def test_clean_session_is_not_resumed_by_a_takeover(srv, uid, level):
    """A CleanSession 1 session (MQTT 5: Session Expiry 0) lasts as long as its connection and
    its state "MUST NOT be reused in any subsequent Session" [MQTT-3.1.2-6]: a second connection
    with CleanSession 0 that takes it over gets Session Present 0 [MQTT-3.2.2-3 (3.1.1: 0 when
    there is no stored session)] and none of the old subscriptions."""
    cid = f"c{uid}"[:23]
    topic, marker = f"tk/{uid}/data", f"tk/{uid}/marker"
    old = connected(srv, cid, level, clean=True)
    new = Client(srv, level)
    try:
        old.subscribe(topic, 1)
        session_present, _, _ = new.connect(cid, clean=False)
        assert session_present is False, "a clean session was resumed [MQTT-3.1.2-6]"
        _taken_over(old)
        new.subscribe(marker, 1)
        with connected(srv, f"p{uid}", 4) as pub:
            pub.publish(topic, b"not for you", qos=1)
            pub.publish(marker, MARKER, qos=1)
        m = new.recv_publish()
        assert (m.topic, m.payload) == (marker, MARKER), "the old subscription came along"
        new.disconnect()
        # The new CleanSession 0 session outlives its connection (3.1 reserves the flag)
        if level == 4:
            with Client(srv, level) as again:
                assert again.connect(cid, clean=False)[0] is True
                again.disconnect()
    finally:
        old.close()
        new.close()


@pytest.mark.parametrize("level", [4, 5])
def test_persistent_session_is_resumed_by_a_takeover(srv, uid, level):
    """The counterpart: a session that outlives its connection is carried on by a takeover with
    Clean Start 0 (Session Present 1 [MQTT-3.2.2-2]), subscriptions included."""
    cid = f"k{uid}"
    topic = f"tk/{uid}/kept"
    old = connected(srv, cid, level, **_keep(level))
    new = Client(srv, level)
    try:
        old.subscribe(topic, 1)
        assert new.connect(cid, **_keep(level))[0] is True
        _taken_over(old)
        with connected(srv, f"p{uid}", 4) as pub:
            pub.publish(topic, b"kept", qos=1)
        assert new.recv_publish().payload == b"kept"
        new.disconnect()
    finally:
        old.close()
        new.close()


def _takeover_with_will(
    srv, uid: str, level: int, old: dict[str, object], new: dict[str, object]
) -> tuple[bool, list[tuple[str, bytes]], str]:
    """A client with a will ("offline") is taken over by a second connection with its id; returns
    the second's Session Present, what a watcher of the will topic got before a marker
    published after the takeover, and the will topic."""
    will_topic, marker = f"tw/{uid}/will", f"tw/{uid}/marker"
    watcher = connected(srv, f"w{uid}", 4)
    cid = f"v{uid}"[:23]
    first = second = None
    try:
        watcher.subscribe(f"tw/{uid}/#", 1)
        first = connected(srv, cid, level, will_topic=will_topic, will_payload=b"offline", **old)
        second = Client(srv, level)
        present = second.connect(cid, **new)[0]
        _taken_over(first)
        with connected(srv, f"m{uid}", 4) as pub:
            pub.publish(marker, MARKER, qos=1)
        got = [(m.topic, m.payload) for m in watcher.until()]
        second.disconnect()
    finally:
        for c in (watcher, first, second):
            if c is not None:
                c.close()
    return present, got, will_topic


def _v5_keep(delay: int) -> dict[str, object]:
    """An MQTT 5 session of 60 s, with a will of ``delay`` seconds."""
    return {
        "clean": False,
        "properties": props(prop(SESSION_EXPIRY_INTERVAL, 60)),
        "will_props": props(prop(WILL_DELAY_INTERVAL, delay)),
    }


@pytest.mark.parametrize("delay", [0, 30])
def test_v5_resumed_session_cancels_the_will(srv, uid, delay):
    """MQTT 5, Clean Start 0 on both connections: the new connection carries the session on,
    so the old connection's will is not published, with a Will Delay Interval of 0 too. The
    will is published "unless ... a new Network Connection for the ClientID is opened before the
    Will Delay Interval has elapsed" [MQTT-3.1.2-8][MQTT-3.1.3-9]; Mosquitto does not publish it
    either (docs/conformance.md)."""
    keep = {"clean": False, "properties": props(prop(SESSION_EXPIRY_INTERVAL, 60))}
    present, got, _ = _takeover_with_will(srv, uid, 5, _v5_keep(delay), keep)
    assert present is True
    assert got == [], "the will came before the marker"


@pytest.mark.parametrize(
    "delay",
    [
        0,
        pytest.param(
            30,
            marks=pytest.mark.mosquitto_deviation(
                "Mosquitto 2.0.11 drops a delayed will when a Clean Start takeover ends the session"
            ),
        ),
    ],
)
def test_v5_ended_session_publishes_the_will(srv, uid, delay):
    """MQTT 5, the new connection has Clean Start 1: the old session ends with the takeover, so
    the old connection's will is published now, even with a delay ("until the Will Delay
    Interval has passed or the Session ends, whichever happens first", §3.1.3.2.2)."""
    present, got, will_topic = _takeover_with_will(srv, uid, 5, _v5_keep(delay), {"clean": True})
    assert present is False
    assert got == [(will_topic, b"offline")]


@pytest.mark.mosquitto_deviation(
    "Mosquitto 2.0 drops the will of a 3.1.1 client whose persistent session is taken over"
)
@pytest.mark.parametrize("level", [3, 4])
def test_v311_resumed_session_still_publishes_the_will(srv, uid, level):
    """MQTT 3.1.1 (and 3.1) has no Will Delay and no exception for a takeover: the server
    closes the old connection without a DISCONNECT from it, so its will is published
    [MQTT-3.1.2-8], also when the new connection resumes the session."""
    _, got, will_topic = _takeover_with_will(srv, uid, level, {"clean": False}, {"clean": False})
    assert got == [(will_topic, b"offline")]
