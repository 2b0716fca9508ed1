"""Will messages: published when the connection dies without DISCONNECT, not published after a
normal DISCONNECT, published after an MQTT 5 DISCONNECT 0x04, on protocol errors, with will QoS
and retain, and MQTT 5 Will Delay Interval."""

from __future__ import annotations

import time

import pytest
from mqtt_raw import (
    MARKER,
    WILL_DELAY_INTERVAL,
    Client,
    connected,
    prop,
    props,
)

LEVELS = [3, 4, 5]


def will_client(srv, cid: str, topic: str, level: int = 4, **kw: object) -> Client:
    kw.setdefault("will_payload", b"gone")
    return connected(srv, cid, level, will_topic=topic, **kw)


@pytest.mark.parametrize("level", LEVELS)
def test_will_on_socket_death(srv, uid, level):
    """A connection closed without DISCONNECT makes the server publish the will
    [MQTT-3.1.2-8]; live delivery has RETAIN=0."""
    topic = f"will/{uid}"
    with connected(srv, f"s-{uid}", level) as sub:
        sub.subscribe(topic, 1)
        w = will_client(srv, f"w{uid}", topic, level, will_qos=1)
        w.ping()
        w.kill()
        m = sub.recv_publish()
        assert (m.topic, m.payload, m.qos, m.retain) == (topic, b"gone", 1, False)


@pytest.mark.parametrize("level", LEVELS)
def test_no_will_after_disconnect(srv, uid, level):
    """DISCONNECT (MQTT 5: reason 0x00) deletes the will without publishing it
    [MQTT-3.1.2-10, MQTT-3.14.4-3]."""
    topic = f"nowill/{uid}"
    with connected(srv, f"s-{uid}", level) as sub:
        sub.subscribe(topic, 1)
        w = will_client(srv, f"w{uid}", topic, level)
        w.disconnect()
        # A will would go out when the broker handles the closed connection: before the marker
        # of a client that connects after it.
        with connected(srv, f"m-{uid}", level) as marker:
            marker.publish(topic, MARKER, qos=1)
        assert sub.until() == []


def test_v5_disconnect_with_will_message(srv, uid):
    """MQTT 5 DISCONNECT reason 0x04 "Disconnect with Will Message": the will is published
    [MQTT 5 §3.14.2.1]."""
    topic = f"will04/{uid}"
    with connected(srv, f"s-{uid}", 5) as sub:
        sub.subscribe(topic, 1)
        w = will_client(srv, f"w{uid}", topic, 5)
        w.disconnect(0x04)
        m = sub.recv_publish()
        assert (m.topic, m.payload) == (topic, b"gone")


@pytest.mark.parametrize("level", [4, 5])
def test_will_on_protocol_error(srv, uid, level):
    """The server closing the connection because of a protocol error also publishes the will
    [MQTT-3.1.2-8; 3.1.1 §3.1.2.5]."""
    topic = f"willerr/{uid}"
    with connected(srv, f"s-{uid}", level) as sub:
        sub.subscribe(topic, 1)
        w = will_client(srv, f"w{uid}", topic, level)
        w.send(b"\x36\x05\x00\x01x\x00\x01")  # PUBLISH with QoS 3 [MQTT-3.3.1-4]
        w.wait_closed()
        w.close()
        assert sub.recv_publish().payload == b"gone"


@pytest.mark.parametrize("will_qos", [0, 1, 2])
def test_will_qos(srv, uid, will_qos):
    """The will is published with its will QoS (then min with the subscription's QoS)."""
    topic = f"willqos/{uid}"
    with connected(srv, f"s-{uid}", 4) as sub:
        sub.subscribe(topic, 2)
        will_client(srv, f"w{uid}", topic, 4, will_qos=will_qos).kill()
        assert sub.recv_publish().qos == will_qos


def test_will_retain(srv, uid):
    """A will with Will Retain=1 is published as a retained message [MQTT-3.1.2-17]."""
    topic = f"willret/{uid}"
    will_client(srv, f"w{uid}", topic, 4, will_qos=1, will_retain=True).kill()
    # Wait for the will to be published and stored: a live subscriber on a sibling filter.
    with connected(srv, f"s-{uid}", 4) as sub:
        deadline = time.monotonic() + 2.0
        while True:
            assert sub.subscribe(topic, 1, pid=1) == [1]
            got = sub.until_pingresp()  # a retained message comes before the PINGRESP
            if got:
                break
            if time.monotonic() > deadline:
                raise TimeoutError("the retained will did not appear within 2 s")
            time.sleep(0.05)
        m = got[0]
        assert (m.payload, m.retain) == (b"gone", True)
        sub.publish(topic, b"", qos=1, retain=True)


def test_v311_will_on_session_takeover(srv, uid):
    """3.1.1: a client taken over by a new connection with its client id is disconnected by the
    server without DISCONNECT, so its will is published [MQTT-3.1.4-2, MQTT-3.1.2-8]."""
    topic = f"willtake/{uid}"
    cid = f"w{uid}"
    with connected(srv, f"s-{uid}", 4) as sub:
        sub.subscribe(topic, 1)
        old = will_client(srv, cid, topic, 4)
        new = connected(srv, cid, 4)
        try:
            old.wait_closed()
            assert sub.recv_publish().payload == b"gone"
            new.disconnect()
        finally:
            old.close()
            new.close()


def test_v5_will_delay_interval(srv, uid):
    """MQTT 5 Will Delay Interval: the will is published only after the delay [MQTT-3.1.3-9]."""
    from mqtt_raw import SESSION_EXPIRY_INTERVAL

    topic = f"willdelay/{uid}"
    # The session must outlive the delay: with Session Expiry 0 it ends with the connection and
    # the will goes at once ("whichever happens first", MQTT 5 §3.1.3.2.2).
    keep = props(prop(SESSION_EXPIRY_INTERVAL, 30))
    with connected(srv, f"s-{uid}", 5) as sub:
        sub.subscribe(topic, 1)
        w = will_client(
            srv,
            f"w{uid}",
            topic,
            5,
            properties=keep,
            will_props=props(prop(WILL_DELAY_INTERVAL, 1)),
        )
        t0 = time.monotonic()
        w.kill()
        m = sub.recv_publish(timeout=4.0)
        elapsed = time.monotonic() - t0
        assert m.payload == b"gone"
        assert elapsed >= 0.9, f"will published after {elapsed:.2f}s, before its 1 s delay"


def test_v5_will_delay_cancelled_by_reconnect(srv, uid):
    """MQTT 5: if the client reconnects (resuming its session) before the Will Delay Interval
    ends, the will is not published [MQTT-3.1.3-9]."""
    from mqtt_raw import SESSION_EXPIRY_INTERVAL

    topic = f"willcancel/{uid}"
    cid = f"w{uid}"
    keep = props(prop(SESSION_EXPIRY_INTERVAL, 30))
    with connected(srv, f"s-{uid}", 5) as sub:
        sub.subscribe(topic, 1)
        w = will_client(
            srv, cid, topic, 5, properties=keep, will_props=props(prop(WILL_DELAY_INTERVAL, 1))
        )
        w.kill()
        with Client(srv, 5) as again:
            again.connect(cid, clean=False, properties=keep)
            # The rule is about time: wait past the 1 s Will Delay; the marker then shows that
            # no will came before it.
            time.sleep(1.5)
            again.publish(topic, MARKER, qos=1)
            assert sub.until() == []
            again.disconnect()
