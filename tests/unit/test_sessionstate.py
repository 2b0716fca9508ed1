"""mqttd.sessionstate: a session written out and read back is the same session (subscriptions,
queue, messages in flight in each state, QoS 2 receive state, will with delay, expiry), QoS 0 is
left out, and only a session that changed is written again."""

from __future__ import annotations

import asyncio
import time

import pytest

from mqttd import sessionstate
from mqttd._speedups import route
from mqttd.broker import Broker, BrokerConfig


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def offline_session(broker: Broker):
    s = broker.new_session("dev-1", 5)
    s.expiry_interval = 3600
    s.owner = "alice"
    broker.subscribe(s, "a/#", 1)
    broker.subscribe(s, "b/+", 2)
    s.awaiting_rel = {7, 9}
    return s


def test_round_trip(loop) -> None:
    broker = Broker(BrokerConfig())
    broker.attach(loop)
    s = offline_session(broker)
    # in flight: a QoS 1 awaiting PUBACK, a QoS 2 awaiting PUBREC, a QoS 2 awaiting PUBCOMP
    m1 = broker.make_message("a/1", b"one", 1, False, None)
    m2 = broker.make_message("b/2", b"two", 2, True, {0x02: 60, 0x26: [("k", "v")]})
    s.outlet.restore_inflight(1, m1, 1, False, route.AWAIT_PUBACK)
    s.outlet.restore_inflight(2, m2, 2, True, route.AWAIT_PUBREC)
    s.outlet.restore_inflight(3, None, 2, False, route.AWAIT_PUBCOMP)
    s.outlet.next_pid = 4
    s.outlet.restore_queued(broker.make_message("a/q", b"queued", 1, False, None), 1, False)
    s.outlet.restore_queued(broker.make_message("a/z", b"qos0", 0, False, None), 0, False)
    s.will = broker.make_message("w/dev-1", b"gone", 1, False, None)
    s.will_handle = loop.call_later(30, lambda: None)
    s.offline_since = time.time() - 10

    data = sessionstate.encode(sessionstate.dump(s))
    other = Broker(BrokerConfig())
    other.attach(loop)
    back = other.revive(sessionstate.decode(data))
    assert back is not None
    assert back.subscriptions == {"a/#": 1, "b/+": 2} and back.owner == "alice"
    assert back.awaiting_rel == {7, 9} and back.outlet.next_pid == 4
    inflight = dict(back.outlet.inflight_items())
    assert [(pid, e.qos, e.state) for pid, e in inflight.items()] == [
        (1, 1, route.AWAIT_PUBACK),
        (2, 2, route.AWAIT_PUBREC),
        (3, 2, route.AWAIT_PUBCOMP),
    ]
    assert inflight[1].msg.payload == b"one" and inflight[3].msg is None
    two = inflight[2].msg
    assert (two.topic, two.payload, two.retain) == ("b/2", b"two", True)
    assert two.properties[0x26] == [("k", "v")]
    assert 55 < two.expires_at - time.monotonic() <= 60  # its deadline kept [MQTT-3.3.2-5]
    # QoS 0 is never written
    assert [(m.payload, q) for m, q, _ in back.outlet.queue] == [(b"queued", 1)]
    assert back.will.payload == b"gone" and back.will_handle is not None
    assert 25 < back.will_handle.when() - loop.time() <= 30
    # its expiry counts from when its client left, not from the restart
    assert 3585 < back.expiry_handle.when() - loop.time() <= 3590


def test_expired_while_down_ends_with_its_will(loop) -> None:
    broker = Broker(BrokerConfig())
    broker.attach(loop)
    s = offline_session(broker)
    s.expiry_interval = 60
    s.offline_since = time.time() - 120
    state = sessionstate.dump(s)
    state["will"] = sessionstate.pack_message(broker.make_message("w/x", b"bye", 0, False, None))
    other = Broker(BrokerConfig())
    other.attach(loop)
    published = []
    other.publish = lambda msg, origin=None: published.append(msg) or 0  # type: ignore[method-assign]
    assert other.revive(sessionstate.decode(sessionstate.encode(state))) is None
    assert [m.payload for m in published] == [b"bye"] and "dev-1" not in other.sessions


def test_only_changed_sessions_are_written_again(loop) -> None:
    broker = Broker(BrokerConfig())
    broker.attach(loop)
    s = offline_session(broker)
    broker.new_session("clean", 5)  # expiry 0: never written
    changed = sessionstate.ChangedSessions(broker)
    assert list(changed.collect()) == ["dev-1"]
    assert changed.collect() == {}
    broker.publish(broker.make_message("a/1", b"x", 1, False, None))  # queued for it
    assert list(changed.collect()) == ["dev-1"]
    broker.unsubscribe(s, "b/+")
    assert list(changed.collect()) == ["dev-1"]
    broker.end_session(s)
    assert changed.collect() == {"dev-1": None}


@pytest.mark.parametrize(
    "data", [b"", b"{}", b'{"v": 99}', b"\xff\xfe", b'{"v":1}\nQ 1 0 0.0 !!!notbase64']
)
def test_unreadable_is_value_error(data: bytes, loop) -> None:
    broker = Broker(BrokerConfig())
    broker.attach(loop)
    with pytest.raises((ValueError, KeyError)):
        broker.revive(sessionstate.decode(data))
