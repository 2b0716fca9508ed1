"""MQTTApp: the decorators, the hooks and programmatic publishing, with real clients.

Handlers run in the app's thread; they report through thread-safe queues that the test waits on
with a deadline (a wait that runs out raises TimeoutError). "Nothing else came" is shown by a
marker that comes after it, never by a quiet period.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import shutil
import subprocess
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes

from mqttd import MQTTApp, MQTTClient, MQTTMessage
from tests.interop.helpers import V5, V311, Paho, props
from tests.library.conftest import local_app

TIMEOUT = 5.0


def get(q: queue.Queue, timeout: float = TIMEOUT) -> Any:
    try:
        return q.get(timeout=timeout)
    except queue.Empty:
        raise TimeoutError(f"nothing within {timeout}s") from None


def connect_when_room(r: Any, cid: str, version: Any) -> Paho:
    """Connect ``cid`` once the app has room again. A client that left frees its slot when the
    app has handled its closed connection, which the client does not see: retry while the
    CONNECT is refused for want of room (3.1.1: Server unavailable, 5: 0x97 Quota exceeded)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        c = Paho(r, cid, version, expect_failure=True)
        reason = c.connack.reason
        if not reason.is_failure:
            return c
        c.stop()
        assert reason.value in (0x88, 0x97), f"{cid}: CONNACK {reason}, not a full server"
        if time.monotonic() > deadline:
            raise TimeoutError(f"{cid}: still refused ({reason}) after {TIMEOUT}s")
        time.sleep(0.05)


# -- @app.subscribe -------------------------------------------------------------------------------
def test_subscribe_handler_sees_topic_and_client_and_its_reply_is_sent(serve) -> None:
    app = local_app()
    seen: queue.Queue = queue.Queue()

    @app.subscribe("sensors/temperature")
    async def on_sub(topic: str, client: MQTTClient) -> str:
        seen.put((topic, client.client_id, client.protocol_version))
        return f"welcome {client.client_id}"

    r = serve(app)
    for version, level in ((V311, 4), (V5, 5)):
        c = Paho(r, f"sub-{level}", version)
        assert c.subscribe("sensors/temperature", qos=1) == 1
        assert get(seen) == ("sensors/temperature", f"sub-{level}", level)
        m = c.message()
        # The reply goes to that subscriber, on the topic it subscribed, at the granted QoS
        assert (m.topic, m.payload, m.qos, m.retain) == (
            "sensors/temperature",
            f"welcome sub-{level}".encode(),
            1,
            False,
        )
        c.stop()


def test_subscribe_handler_pattern_matches_plain_filters_only(serve) -> None:
    app = local_app()
    seen: queue.Queue = queue.Queue()

    @app.subscribe("devices/+/cmd")
    def on_sub(topic: str, client: MQTTClient) -> bytes:
        seen.put(topic)
        return b"ready"

    r = serve(app)
    c = Paho(r, "pattern", V311)
    c.subscribe("devices/7/cmd", qos=0)  # a topic the pattern matches: handler and reply
    assert get(seen) == "devices/7/cmd"
    m = c.message()
    assert (m.topic, m.payload) == ("devices/7/cmd", b"ready")
    c.subscribe("devices/+/cmd", qos=0)  # equal to the pattern: handler, but no reply (wildcard)
    assert get(seen) == "devices/+/cmd"
    c.subscribe("devices/#", qos=0)  # neither equal nor plain: no handler
    c.subscribe("other/topic", qos=0)
    # A marker: a filter the pattern matches. Its handler call and its reply come after any
    # for the filters before it, so neither got a handler call nor a reply.
    c.subscribe("devices/8/cmd", qos=0)
    assert get(seen) == "devices/8/cmd"
    m = c.message()
    assert (m.topic, m.payload) == ("devices/8/cmd", b"ready")
    c.stop()


def test_subscribe_reply_to_curl(serve) -> None:
    """0.5.x users' request/reply check with curl: subscribe, and get the handler's answer."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed (apt-get install curl)")
    app = local_app()

    @app.subscribe("hello/world")
    async def on_sub(topic: str, client: MQTTClient) -> str:
        return "hi curl"

    r = serve(app)
    out = subprocess.run(
        [curl, "-s", "--max-time", "3", f"mqtt://127.0.0.1:{r.port}/hello/world"],
        capture_output=True,
        timeout=15,
    )
    # curl prints each PUBLISH as a two-byte topic length, the topic, then the payload
    assert out.stdout == b"\x00\x0bhello/worldhi curl", out


# -- @app.publish_handler -------------------------------------------------------------------------
def test_publish_handler_gets_the_message_after_routing(serve) -> None:
    app = local_app()
    seen: queue.Queue = queue.Queue()

    @app.publish_handler("sensors/#")
    async def on_pub(message: MQTTMessage, client: MQTTClient) -> None:
        seen.put((message, client.client_id))

    r = serve(app)
    sub = Paho(r, "listener", V5)
    sub.subscribe("sensors/#", qos=1)
    pub = Paho(r, "publisher", V5)
    p = props(
        PacketTypes.PUBLISH,
        ResponseTopic="replies/1",
        CorrelationData=b"c1",
        UserProperty=[("k", "v")],
    )
    pub.publish("sensors/kitchen/temp", b'{"c": 21.5}', qos=1, retain=True, properties=p)
    m = sub.message()
    assert m.payload == b'{"c": 21.5}'
    message, cid = get(seen)
    assert cid == "publisher"
    assert (message.topic, message.payload, message.qos, message.retain) == (
        "sensors/kitchen/temp",
        b'{"c": 21.5}',
        1,
        True,
    )
    assert message.payload_str == '{"c": 21.5}' and message.payload_json == {"c": 21.5}
    assert message.properties["response_topic"] == "replies/1"
    assert message.properties["correlation_data"] == b"c1"
    assert message.properties["user_property"] == [("k", "v")]
    assert message.packet_id is not None and message.packet_id > 0  # QoS 1: the publisher's id
    # '#' also matches the parent level [MQTT-4.7.1-2]; other topics are not seen
    pub.publish("sensors", b"parent", qos=0)
    parent = get(seen)[0]
    assert (parent.topic, parent.packet_id) == ("sensors", None)
    pub.publish("actuators/x", b"no", qos=1)
    pub.publish("sensors/marker", b"end", qos=1)  # the handler sees it next, not actuators/x
    assert get(seen)[0].topic == "sensors/marker"
    pub.stop()
    sub.stop()


def test_publish_handler_without_pattern_sees_all(serve) -> None:
    app = local_app()
    seen: queue.Queue = queue.Queue()

    @app.publish_handler()
    def everything(message: MQTTMessage, client: MQTTClient) -> None:
        seen.put(message.topic)

    r = serve(app)
    c = Paho(r, "all", V311)
    for t in ("a", "b/c", "d/e/f"):
        c.publish(t, b"x", qos=1)
        assert get(seen) == t
    c.stop()


def test_slow_and_failing_handlers_stall_nothing(serve, caplog: pytest.LogCaptureFixture) -> None:
    """A handler that sleeps does not hold back delivery, the publisher's next messages nor
    other handlers; one that raises is logged with the topic and the client id."""
    app = local_app()
    release = threading.Event()
    calls: queue.Queue = queue.Queue()

    @app.publish_handler("work/+")
    async def slow(message: MQTTMessage, client: MQTTClient) -> None:
        calls.put(("slow", message.payload))
        while not release.is_set():
            await asyncio.sleep(0.01)

    @app.publish_handler("work/+")
    def failing(message: MQTTMessage, client: MQTTClient) -> None:
        calls.put(("failing", message.payload))
        raise RuntimeError("handler bug")

    r = serve(app)
    sub = Paho(r, "worker-sub", V311)
    sub.subscribe("work/+", qos=1)
    pub = Paho(r, "worker-pub", V311)
    with caplog.at_level(logging.ERROR, logger="mqttd"):
        for i in range(5):
            pub.publish("work/item", str(i).encode(), qos=1)  # each waits for its PUBACK
        got = [sub.message().payload for _ in range(5)]
    assert got == [b"0", b"1", b"2", b"3", b"4"]
    seen = sorted(get(calls) for _ in range(10))
    assert seen == sorted(
        [("slow", str(i).encode()) for i in range(5)]
        + [("failing", str(i).encode()) for i in range(5)]
    )
    release.set()
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and "handler bug" not in caplog.text:
        time.sleep(0.05)
    assert "handler bug" in caplog.text
    assert "topic 'work/item'" in caplog.text and "client 'worker-pub'" in caplog.text
    pub.stop()
    sub.stop()


# -- programmatic publish -------------------------------------------------------------------------
def test_blocking_plain_handler_runs_off_the_event_loop(serve) -> None:
    """A plain (def) handler runs in a worker thread: while it blocks, messages still flow."""
    app = local_app()
    release = threading.Event()
    started: queue.Queue = queue.Queue()

    @app.publish_handler("block/+")
    def blocking(message: MQTTMessage, client: MQTTClient) -> None:
        started.put(message.payload)
        release.wait(30)

    r = serve(app)
    sub = Paho(r, "block-sub", V311)
    sub.subscribe("block/+", qos=1)
    pub = Paho(r, "block-pub", V311)
    try:
        for i in range(3):
            pub.publish("block/x", str(i).encode(), qos=1)
            assert sub.message().payload == str(i).encode()  # the loop is not frozen
        assert sorted(get(started) for _ in range(3)) == [b"0", b"1", b"2"]
    finally:
        release.set()
    pub.stop()
    sub.stop()


def test_hooks_that_return_nothing_refuse(serve) -> None:
    """A hook that forgot its return statement must not let everybody in."""
    app = local_app()

    @app.authenticate
    def forgetful(client: MQTTClient, username: str | None, password: str | None) -> None:
        pass

    r = serve(app)
    assert _connect_paho(r, "forgot", V5, "u", "p") == 0x80


def test_app_publish_reaches_subscribers_and_is_retained(serve) -> None:
    app = local_app()
    r = serve(app)
    sub = Paho(r, "app-sub", V5)
    sub.subscribe("alerts/#", qos=2)
    assert r.call(app.publish("alerts/fire", b"evacuate", qos=2, retain=True)) is True
    m = sub.message()
    assert (m.topic, m.payload, m.qos) == ("alerts/fire", b"evacuate", 2)
    r.call(app.publish("alerts/info", "text", qos=1, properties={"content_type": "text/plain"}))
    m = sub.message()
    assert (m.payload, m.properties.ContentType) == (b"text", "text/plain")
    late = Paho(r, "app-late", V311)
    late.subscribe("alerts/fire", qos=1)
    m = late.message()
    assert (m.payload, m.retain) == (b"evacuate", True)
    with pytest.raises(ValueError, match="topic"):
        r.call(app.publish("bad/+", b"x"))
    late.stop()
    sub.stop()


def test_publish_to_client_sends_to_that_client_only(serve) -> None:
    app = local_app()
    clients: queue.Queue = queue.Queue()

    @app.on_connect
    def remember(client: MQTTClient) -> None:
        clients.put(client)

    r = serve(app)
    a = Paho(r, "target", V311)
    b = Paho(r, "bystander", V311)
    target = get(clients)
    assert target.client_id == "target"
    bystander = get(clients)
    assert r.call(app.publish_to_client(target, "direct/msg", b"just you", qos=1)) is True
    m = a.message()
    assert (m.topic, m.payload, m.qos) == ("direct/msg", b"just you", 1)
    # A marker sent to the bystander after it: the first message it gets
    assert r.call(app.publish_to_client(bystander, "direct/marker", b"end", qos=1)) is True
    assert b.message().payload == b"end"
    assert r.call(app.publish_to_client("nobody", "direct/msg", b"x")) is False
    a.stop()
    b.stop()


# -- connect / disconnect / authentication --------------------------------------------------------
def test_on_connect_and_on_disconnect(serve) -> None:
    app = local_app()
    events: queue.Queue = queue.Queue()

    @app.on_connect
    async def hello(client: MQTTClient) -> None:
        events.put(("connect", client.client_id, client.username, client.keepalive))

    @app.on_disconnect
    def bye(client: MQTTClient) -> None:
        events.put(("disconnect", client.client_id, client.clean_session, client.address[0]))

    r = serve(app)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="visitor")
    c.username_pw_set("alice", "pw")
    c.connect(r.host, r.port, keepalive=17)
    c.loop_start()
    assert get(events) == ("connect", "visitor", "alice", 17)
    c.disconnect()
    assert get(events) == ("disconnect", "visitor", True, "127.0.0.1")
    c.loop_stop()


@pytest.mark.parametrize("asynchronous", [False, True])
def test_authenticate_hook(serve, asynchronous: bool) -> None:
    app = local_app()

    def check(client: MQTTClient, username: str | None, password: str | None) -> bool:
        return username == "alice" and password == "s3cret"

    if asynchronous:

        async def acheck(client: MQTTClient, username: str | None, password: str | None) -> bool:
            await asyncio.sleep(0.05)
            return check(client, username, password)

        app.authenticate(acheck)
    else:
        app.authenticate(check)
    r = serve(app)
    for version, bad_code in ((V311, 4), (V5, 0x86)):
        ok = _connect_paho(r, "good", version, "alice", "s3cret")
        assert ok == 0
        assert _connect_paho(r, "bad", version, "alice", "wrong") == bad_code
        assert _connect_paho(r, "anon", version, None, None) == bad_code


def _connect_paho(r: Any, cid: str, version: Any, user: str | None, pw: str | None) -> int:
    result: queue.Queue = queue.Queue()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=version)
    if user is not None:
        c.username_pw_set(user, pw)
    c.on_connect = lambda cl, u, f, rc, p: result.put(rc)
    c.connect(r.host, r.port)
    c.loop_start()
    try:
        rc = get(result)
    finally:
        c.disconnect()
        c.loop_stop()
    if version == V311:
        # paho 2.x reports a 3.1.1 refusal as the matching MQTT 5 reason; map it back
        return {0: 0, 0x84: 1, 0x85: 2, 0x88: 3, 0x86: 4, 0x87: 5}[rc.value]
    return rc.value


def test_failing_authenticate_hook_refuses(serve) -> None:
    app = local_app()

    @app.authenticate
    async def broken(client: MQTTClient, username: str | None, password: str | None) -> bool:
        raise RuntimeError("directory down")

    r = serve(app)
    assert _connect_paho(r, "x", V5, "u", "p") == 0x80


# -- authorization ---------------------------------------------------------------------------------
def test_authorize_publish_denies_and_rewrites(serve) -> None:
    app = local_app()

    @app.authorize_publish
    async def policy(message: MQTTMessage, client: MQTTClient) -> bool | MQTTMessage:
        if message.topic.startswith("secret/"):
            return False
        if message.topic == "greeting":
            return MQTTMessage("greeting", message.payload.upper(), message.qos)
        return True

    r = serve(app)
    sub = Paho(r, "watcher", V5)
    sub.subscribe("#", qos=1)
    pub = Paho(r, "writer", V5)
    info = pub.c.publish("secret/plan", b"x", qos=1)
    info.wait_for_publish(TIMEOUT)
    pub.publish("greeting", b"hello", qos=1)
    m = sub.message()
    assert (m.topic, m.payload) == ("greeting", b"HELLO")  # the denied one never arrived
    pub.stop()
    sub.stop()


def test_authorize_publish_reason_code_reaches_mqtt5_publisher(serve) -> None:
    from tests.conformance import mqtt_raw as raw

    app = local_app()

    @app.authorize_publish
    def deny(message: MQTTMessage, client: MQTTClient) -> bool:
        return False

    r = serve(app)
    c = raw.Client((r.host, r.port), level=5)
    c.send(raw.connect("raw5", level=5))
    c.expect(raw.CONNACK)
    c.send(raw.publish("t", b"x", qos=1, pid=9, level=5))
    pid, rc = raw.parse_ack(c.expect(raw.PUBACK), raw.PUBACK, level=5)
    assert (pid, rc) == (9, 0x87)
    c.close()


def test_authorize_subscribe_refuses_and_downgrades(serve) -> None:
    app = local_app()

    @app.authorize_subscribe
    def policy(topic: str, qos: int, client: MQTTClient) -> bool | int:
        if topic.startswith("admin/"):
            return False
        return 1  # at most QoS 1

    r = serve(app)
    for version, refused in ((V311, 0x80), (V5, 0x87)):
        c = Paho(r, f"s{refused}", version)
        _, mid = c.c.subscribe([("admin/#", 1), ("data/#", 2)])
        got_mid, rcs = get(c.subacks)
        assert got_mid == mid
        assert [rc.value for rc in rcs] == [refused, 1]
        c.stop()


# -- limits ---------------------------------------------------------------------------------------
def test_connection_limits_refuse_the_connect(serve) -> None:
    app = local_app(max_connections=2)
    r = serve(app)
    a = Paho(r, "one", V311)
    b = Paho(r, "two", V5)
    assert _connect_paho(r, "three", V311, None, None) == 3  # Server unavailable
    assert _connect_paho(r, "three", V5, None, None) == 0x97  # Quota exceeded
    a.stop()
    c = connect_when_room(r, "three", V311)  # room again
    c.stop()
    b.stop()


def test_connection_limit_per_ip(serve) -> None:
    app = local_app(max_connections_per_ip=1)
    r = serve(app)
    a = Paho(r, "only", V5)
    assert _connect_paho(r, "second", V5, None, None) == 0x97
    a.stop()


def test_subscription_rate_limit(serve) -> None:
    app = local_app(max_subscriptions_per_minute=2)
    r = serve(app)
    for version, refused in ((V311, 0x80), (V5, 0x97)):
        c = Paho(r, f"subs{refused}", version)
        _, mid = c.c.subscribe([("a/1", 0), ("a/2", 1), ("a/3", 0)])
        _, rcs = get(c.subacks)
        assert [rc.value for rc in rcs] == [0, 1, refused]
        c.stop()


def test_message_rate_limit_slows_the_client_and_drops_nothing(serve) -> None:
    rate = 40
    app = local_app(max_messages_per_second=rate)
    r = serve(app)
    sub = Paho(r, "rl-sub", V311)
    sub.subscribe("rl/t", qos=0)
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="rl-pub")
    pub.connect(r.host, r.port)
    pub.loop_start()
    n = 3 * rate
    start = time.monotonic()
    for i in range(n):
        pub.publish("rl/t", str(i).encode(), qos=0)
    got = [sub.message().payload for _ in range(n)]
    elapsed = time.monotonic() - start
    assert got == [str(i).encode() for i in range(n)]  # all of them, in order
    # The first second's worth passes at once, the rest at the rate: at least (n - rate) / rate
    assert elapsed >= (n - rate) / rate * 0.9, elapsed
    pub.disconnect()
    pub.loop_stop()
    sub.stop()


# -- figures and options ---------------------------------------------------------------------------
def test_metrics_and_health_are_real_figures(serve) -> None:
    app = local_app()
    r = serve(app)
    before = app.get_metrics()
    c = Paho(r, "metrics", V311)
    c.subscribe("m/#", qos=0)
    for _ in range(3):
        c.publish("m/x", b"1", qos=1)
        c.message()
    after = app.get_metrics()
    assert after["current_connections"] == before["current_connections"] + 1
    assert after["total_messages_received"] - before["total_messages_received"] == 3
    assert after["total_messages_sent"] - before["total_messages_sent"] == 3
    assert after["total_subscriptions"] - before["total_subscriptions"] == 1
    assert after["connections_per_ip"] == {"127.0.0.1": 1}
    health = app.health_check()
    assert health["status"] == "healthy" and health["running"] is True
    assert health["connections"] == 1 and health["redis_connected"] is False
    c.stop()


def test_quic_options_are_refused_clearly() -> None:
    with pytest.raises(ValueError, match="does not support MQTT over QUIC"):
        MQTTApp(enable_quic=True, quic_port=1884)
    with pytest.raises(ValueError, match="QUIC"):
        MQTTApp(enable_tcp=False)


def test_bad_options_are_one_clear_error(tmp_path) -> None:
    with pytest.raises(ValueError, match="port must be"):
        MQTTApp(port=70000)
    with pytest.raises(ValueError, match="unknown option 'max_conections'"):
        MQTTApp(max_conections=3)
    with pytest.raises(ValueError, match="not found"):
        MQTTApp(config_file=str(tmp_path / "missing.toml"))
    with pytest.raises(ValueError, match="invalid topic filter|not a valid MQTT topic filter"):
        MQTTApp().subscribe("a/#/b")


def test_config_file_and_environment(serve, tmp_path, monkeypatch) -> None:
    conf = tmp_path / "mqttd.toml"
    conf.write_text('host = "127.0.0.1"\nport = 0\nmax_connections = 1\nsys_interval = 0\n')
    app = MQTTApp(config_file=str(conf))
    assert app.config.max_connections == 1 and app.config.host == "127.0.0.1"
    # an argument given wins over the file, even one equal to its default ...
    assert MQTTApp(config_file=str(conf), max_connections=5).config.max_connections == 5
    assert MQTTApp(config_file=str(conf), port=1883).config.port == 1883
    assert MQTTApp(config_file=str(conf)).config.port == 0
    # ... and MQTTD_* variables win over both
    monkeypatch.setenv("MQTTD_MAX_CONNECTIONS", "7")
    assert MQTTApp(config_file=str(conf), max_connections=5).config.max_connections == 7
    monkeypatch.delenv("MQTTD_MAX_CONNECTIONS")
    r = serve(app)
    Paho(r, "first", V311).stop()
    a = connect_when_room(r, "first", V311)
    assert _connect_paho(r, "second", V311, None, None) == 3
    a.stop()
    bad = tmp_path / "bad.toml"
    bad.write_text("max_connections = 'many'\n")
    with pytest.raises(ValueError, match="bad.toml: max_connections must be a whole number"):
        MQTTApp(config_file=str(bad))
