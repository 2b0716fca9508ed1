"""Programs written against the library, run unchanged on several nodes sharing one Redis.

``program_05x.py`` is the example of mqttd 0.5.x's documentation exactly as its users wrote it
(``MQTTApp(port=1883, redis_host="localhost")``). It is not edited: its environment moves it to
a free port and to this test's Redis (``MQTTD_PORT=0``, ``MQTTD_REDIS_URL=...``; the MQTTD_*
variables have the last word over a program's arguments). ``examples/redis_server.py`` takes
its Redis from ``REDIS_URL``.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.interop.helpers import V5, V311, Paho
from tests.library.programs import EXAMPLES

HERE = Path(__file__).resolve().parent


def settle(pub: Paho, sub: Paho, topic: str) -> None:
    """Publish probes until ``sub`` gets one: its node's Redis subscription is in place."""
    deadline = time.monotonic() + 10
    i = 0
    while True:
        assert time.monotonic() < deadline, "the subscription never reached the other node"
        i += 1
        pub.publish(topic, b"probe-%d" % i, qos=0)
        try:
            while True:
                m = sub.message(timeout=0.3)
                if m.payload == b"probe-%d" % i:
                    return
        except TimeoutError:
            continue


def test_05x_program_unchanged_on_two_nodes(programs, redis_server) -> None:
    env = {"MQTTD_REDIS_URL": redis_server.url}
    a = programs(HERE / "program_05x.py", **env)
    b = programs(HERE / "program_05x.py", **env)
    sub = Paho(a, "sub-on-a", V311)
    sub.subscribe("sensors/temperature", qos=1)
    a.expect("Client sub-on-a subscribed to sensors/temperature")
    probe = Paho(b, "probe-on-b", V311)
    settle(probe, sub, "sensors/temperature")
    probe.stop()

    # A publish on node B reaches the subscriber on node A; B's publish handler fires
    curl = shutil.which("curl")
    if curl is not None:
        out = subprocess.run(
            [curl, "-s", f"mqtt://127.0.0.1:{b.port}/sensors/temperature", "-d", "25.5C"],
            capture_output=True,
            timeout=15,
        )
        assert out.returncode == 0, out
    else:
        pub = Paho(b, "pub-on-b", V311)
        pub.publish("sensors/temperature", b"25.5C", qos=0)
        pub.stop()
    m = sub.message()
    assert (m.topic, m.payload) == ("sensors/temperature", b"25.5C")
    b.expect("Received: sensors/temperature = 25.5C")

    # QoS and retain survive the trip through Redis (0.5.x's Redis mode dropped both)
    pub5 = Paho(b, "pub5-on-b", V5)
    pub5.publish("sensors/temperature", b"26.0C", qos=1, retain=True)
    m = sub.message()
    assert (m.payload, m.qos) == (b"26.0C", 1)
    b.expect("Received: sensors/temperature = 26.0C")
    late = Paho(a, "late-on-a", V311)
    late.subscribe("sensors/temperature", qos=1)
    m = late.message()
    assert (m.payload, m.retain, m.qos) == (b"26.0C", True, 1)
    pub5.stop()
    late.stop()
    sub.stop()
    # The publish handler ran once, on the node the message entered: never on A
    assert not any("Received:" in line for line in a.output), a.output


def test_redis_server_example(programs, redis_server) -> None:
    a = programs(EXAMPLES / "redis_server.py", REDIS_URL=redis_server.url)
    b = programs(EXAMPLES / "redis_server.py", REDIS_URL=redis_server.url)
    sub = Paho(b, "sub-b", V5)
    sub.subscribe("sensors/#", qos=1)
    pub = Paho(a, "pub-a", V5)
    settle(pub, sub, "sensors/probe")
    pub.publish("sensors/humidity", b"40%", qos=1)
    a.expect("Received: sensors/humidity = 40%")
    m = sub.message()
    assert (m.topic, m.payload, m.qos) == ("sensors/humidity", b"40%", 1)
    pub.stop()
    sub.stop()


def test_app_publish_reaches_another_node(start_nodes, redis_server) -> None:
    """``await app.publish(...)`` in a program goes through Redis to another node's clients,
    with its QoS."""
    from tests.library.conftest import AppRunner, local_app

    (node,) = start_nodes(redis_server, 1)
    runner = AppRunner(local_app(redis_url=redis_server.url))
    try:
        sub = Paho(node, "far-sub", V5)
        sub.subscribe("app/news", qos=1)
        deadline = time.monotonic() + 10
        i = 0
        while True:  # until the other node's Redis subscription is in place
            assert time.monotonic() < deadline, "never reached the other node"
            i += 1
            runner.call(runner.app.publish("app/news", b"probe-%d" % i, qos=1))
            try:
                if sub.message(timeout=0.3).payload == b"probe-%d" % i:
                    break
            except TimeoutError:
                continue
        runner.call(runner.app.publish("app/news", b"from the program", qos=1))
        m = sub.message()
        while m.payload.startswith(b"probe-"):
            m = sub.message()
        assert (m.topic, m.payload, m.qos) == ("app/news", b"from the program", 1)
        assert runner.app.health_check()["redis_connected"] is True
        sub.stop()
    finally:
        runner.stop()


def test_redis_host_port_db_password(redis_server) -> None:
    """The 0.5.x way of naming Redis (host, port, db, password) reaches the same server; a
    wrong password fails the start with one clear error."""
    from mqttd.redis import RedisUnavailable
    from tests.library.conftest import AppRunner, local_app

    password = "p@ss/w:rd"  # needs quoting inside a URL
    redis_server.client().config_set("requirepass", password)
    app = local_app(
        redis_host="127.0.0.1", redis_port=redis_server.port, redis_db=3, redis_password=password
    )
    assert app.config.redis_url == (f"redis://:p%40ss%2Fw%3Ard@127.0.0.1:{redis_server.port}/3")
    runner = AppRunner(app)
    try:
        assert app.health_check()["redis_connected"] is True
    finally:
        runner.stop()
    wrong = local_app(redis_host="127.0.0.1", redis_port=redis_server.port, redis_password="x")
    with pytest.raises(RedisUnavailable, match="WRONGPASS"):
        AppRunner(wrong)
