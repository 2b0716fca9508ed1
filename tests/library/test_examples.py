"""Each program in examples/ runs, unchanged, and does what its docstring says, with real
clients (paho-mqtt, mosquitto_pub/sub, curl). The Redis example is in tests/redis/."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest
from paho.mqtt.packettypes import PacketTypes

from tests.interop.helpers import V5, V311, Paho, props
from tests.library.programs import EXAMPLES, ROOT


def curl() -> str:
    path = shutil.which("curl")
    if path is None:
        pytest.skip("curl is not installed (apt-get install curl)")
    return path


def test_basic_server(programs) -> None:
    p = programs("basic_server.py")
    sub = Paho(p, "watcher", V311)
    p.expect("Connected: watcher from ('127.0.0.1'")
    sub.subscribe("sensors/temperature", qos=0)
    p.expect("Client watcher subscribed to sensors/temperature")
    # curl publishes with MQTT 3.1.1, QoS 0
    out = subprocess.run(
        [curl(), "-s", f"mqtt://127.0.0.1:{p.port}/sensors/temperature", "-d", "25.5C"],
        capture_output=True,
        timeout=15,
    )
    assert out.returncode == 0, out
    p.expect("Received: sensors/temperature = 25.5C")
    m = sub.message()
    assert (m.topic, m.payload) == ("sensors/temperature", b"25.5C")
    sub.stop()
    assert p.stop() == 0  # Ctrl-C ends it cleanly


def test_curl_subscriber_receives_another_clients_message(programs) -> None:
    p = programs("basic_server.py")
    c = subprocess.Popen(
        [curl(), "-s", "--max-time", "3", f"mqtt://127.0.0.1:{p.port}/topic"],
        stdout=subprocess.PIPE,
    )
    p.expect("Connected: curl")
    pub = Paho(p, "other", V5)
    # curl's SUBSCRIBE follows its CONNECT: publish until curl has had the message
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and c.poll() is None:
        pub.publish("topic", b"from paho", qos=1)
        time.sleep(0.3)
    out, _ = c.communicate(timeout=10)
    assert out.startswith(b"\x00\x05topicfrom paho"), out
    pub.stop()


def test_auth_server(programs) -> None:
    from tests.library.test_app import _connect_paho

    p = programs("auth_server.py")
    assert _connect_paho(p, "intruder", V311, "alice", "guess") == 4
    assert _connect_paho(p, "intruder5", V5, "mallory", "x") == 0x86
    alice = Paho(p, "alice-1", V311, username="alice", password="wonderland")
    p.expect("alice connected as alice-1")
    _, mid = alice.c.subscribe([("users/alice/#", 1), ("public/#", 1), ("users/bob/#", 1)])
    got_mid, rcs = alice.subacks.get(timeout=5)
    assert [rc.value for rc in rcs] == [1, 1, 0x80]  # 3.1.1 Failure for bob's topics
    admin = Paho(p, "admin-1", V311, username="admin", password="s3cret!")
    admin.publish("public/news", b"hello", qos=1)
    m = alice.message()
    assert (m.topic, m.payload) == ("public/news", b"hello")
    alice.publish("public/news", b"not allowed", qos=1)  # acknowledged, not delivered
    alice.publish("users/alice/notes", b"mine", qos=1)
    m = alice.message()
    assert (m.topic, m.payload) == ("users/alice/notes", b"mine")
    alice.stop()
    admin.stop()


def test_request_reply(programs) -> None:
    p = programs("request_reply.py")
    c = Paho(p, "requester", V5)
    c.subscribe("replies/requester", qos=1)
    req = props(PacketTypes.PUBLISH, ResponseTopic="replies/requester", CorrelationData=b"42")
    c.publish("service/time/request", b"UTC", qos=1, properties=req)
    m = c.message()
    assert m.topic == "replies/requester"
    assert m.properties.CorrelationData == b"42"
    assert m.payload.decode().endswith("Z") and len(m.payload) == 20
    c.stop()
    out = subprocess.run(
        [curl(), "-s", "--max-time", "2", f"mqtt://127.0.0.1:{p.port}/service/time"],
        capture_output=True,
        timeout=15,
    )
    assert out.stdout.startswith(b"\x00\x0cservice/time") and out.stdout.endswith(b"Z"), out


def test_examples_type_check() -> None:
    """py.typed ships, and the examples pass mypy --strict as a user's program would (the
    installed package's own modules are not the user's to fix: --follow-imports=silent)."""
    assert (ROOT / "mqttd" / "py.typed").exists()
    pytest.importorskip("mypy")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--follow-imports=silent",
            "--no-incremental",
            str(EXAMPLES),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(ROOT),
    )
    assert out.returncode == 0, out.stdout + out.stderr
