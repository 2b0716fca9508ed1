"""A real Mosquitto bridge into mqttd, with Mosquitto's default bridge settings.

A Mosquitto 2.0 bridge (``try_private true``, the default) connects with bit 7 of the protocol
level set (0x84 at MQTT 3.1.1), clean session 0, and a retained QoS 1 will "0" on
``$SYS/broker/connection/<client id>/state``; once connected it publishes "1" there (retained)
and subscribes to the bridged topics. The bit asks the remote broker not to send back what the
bridge publishes (No Local) and to keep the retain flag (Retain As Published): without it every
message bridged into mqttd would come back to Mosquitto a second time.

The bridge's client id is Mosquitto's default, ``<hostname>.<connection name>``. No fixed
sleeps: each check that nothing more came publishes a marker after the message under test, on a
path the duplicate would take too, and reads up to the marker.
"""

from __future__ import annotations

import os
import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is not installed")
from helpers import V311, Lines, Paho  # noqa: E402

from tests.conftest import (  # noqa: E402
    MOSQUITTO,
    BrokerProc,
    _answers_connect,
    _free_port,
    start_broker,
    stop_broker,
)

CONNECTION = "test-bridge"
STATE_PREFIX = "$SYS/broker/connection/"
#: how long the bridge may take to be up: Mosquitto tries at once on start; a refused first try
#: (the old behaviour) is retried only after several seconds, which this deliberately fails
BRIDGE_UP = 3.0


@dataclass
class Bridged:
    """mqttd (``remote``) and the Mosquitto whose bridge connects to it (``local``)."""

    remote: BrokerProc
    local: Address
    state_topic: str
    proc: subprocess.Popen  # the Mosquitto


@dataclass
class Address:
    host: str
    port: int


def _state_topic(topic: str) -> bool:
    return topic.startswith(STATE_PREFIX) and topic.endswith(f".{CONNECTION}/state")


def _start_bridging_mosquitto(tmp_path, remote: BrokerProc) -> tuple[subprocess.Popen, int, list]:
    """``mosquitto -c conf`` with one bridge to ``remote``, all bridge settings left default."""
    output: list[str] = []
    for _attempt in range(3):  # the free port can be taken between probe and bind: retry
        port = _free_port()
        conf = tmp_path / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "log_dest stdout\n"
            f"connection {CONNECTION}\n"
            f"address 127.0.0.1:{remote.port}\n"
            "topic bridge/# both 1\n"
        )
        proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(conf)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

        def drain(p: subprocess.Popen = proc, out: list[str] = output) -> None:
            for line in p.stdout:  # type: ignore[union-attr]
                if len(out) < 500:
                    out.append(line)

        threading.Thread(target=drain, daemon=True).start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            if _answers_connect("127.0.0.1", port):
                return proc, port, output
            time.sleep(0.05)
        _stop(proc)
    raise RuntimeError("mosquitto did not start:\n" + "".join(output))


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def bridged(tmp_path) -> Iterator[Bridged]:
    if not os.path.exists(MOSQUITTO):
        pytest.skip(f"{MOSQUITTO} is not installed (Debian: apt-get install mosquitto)")
    remote = start_broker()
    proc = None
    try:
        # Watch mqttd for the bridge's state before it starts, so the first "1" is seen live
        watch = Paho(remote, "bridge-state-watch", V311)
        try:
            watch.subscribe(STATE_PREFIX + "#", 0)
            proc, port, output = _start_bridging_mosquitto(tmp_path, remote)
            deadline = time.monotonic() + BRIDGE_UP
            state = None
            while state is None and time.monotonic() < deadline:
                try:
                    m = watch.messages.get(timeout=deadline - time.monotonic())
                except queue.Empty:
                    break
                if _state_topic(m.topic) and m.payload == b"1":
                    state = m.topic
            if state is None:
                raise TimeoutError(
                    f"the bridge did not report '1' on {STATE_PREFIX}<id>/state on mqttd within "
                    f"{BRIDGE_UP}s; mosquitto said:\n" + "".join(output)
                )
        finally:
            watch.stop()
        yield Bridged(remote, Address("127.0.0.1", port), state, proc)
    finally:
        if proc is not None:
            _stop(proc)
        stop_broker(remote)


def test_bridge_state_retained_on_mqttd(bridged: Bridged, require_program) -> None:
    """The bridge's "1" is kept as a retained message: ``mosquitto_sub -t
    '$SYS/broker/connection/#'`` on mqttd gets it at once, flagged retained."""
    require_program("mosquitto_sub")
    b = bridged.remote
    sub = Lines(
        ["mosquitto_sub", "-h", b.host, "-p", str(b.port), "-V", "mqttv311",
         "-t", STATE_PREFIX + "#", "-v", "--retained-only", "-C", "1", "-W", "5"]
    )  # fmt: skip
    try:
        line = sub.wait_for(lambda s: True)
    finally:
        sub.stop()
    assert line == f"{bridged.state_topic} 1"


def test_bridge_forwards_each_message_once(bridged: Bridged, uid: str) -> None:
    """Mosquitto -> mqttd and mqttd -> Mosquitto, each message exactly once on either side: mqttd
    does not echo what the bridge brought in back to it (No Local)."""
    local = Paho(bridged.local, f"local-{uid}", V311)
    remote = Paho(bridged.remote, f"remote-{uid}", V311)
    try:
        local.subscribe(f"bridge/{uid}/#", 1)
        remote.subscribe(f"bridge/{uid}/#", 1)
        x, y = f"bridge/{uid}/x", f"bridge/{uid}/y"

        # Mosquitto side -> mqttd. An echo from mqttd would reach Mosquitto's subscriber over the
        # bridge before the marker that mqttd's subscriber publishes once it has the message.
        local.publish(x, b"from-mosquitto")
        got = remote.messages_until(x)
        remote.publish(f"bridge/{uid}/marker-1", b"m1")
        assert [m.topic for m in remote.messages_until(f"bridge/{uid}/marker-1")] == [
            f"bridge/{uid}/marker-1"
        ]
        assert [m.topic for m in got] == [x], "mqttd's subscriber got it once"
        seen = [m.topic for m in local.messages_until(f"bridge/{uid}/marker-1")]
        assert seen == [x, f"bridge/{uid}/marker-1"], "a second copy came back to Mosquitto"

        # mqttd -> Mosquitto side. An echo from Mosquitto would reach mqttd's subscriber before
        # the marker that Mosquitto's subscriber publishes once it has the message; a second copy
        # sent by mqttd would reach Mosquitto's subscriber before the marker mqttd's sends next.
        remote.publish(y, b"from-mqttd")
        assert [m.topic for m in local.messages_until(y)] == [y]
        local.publish(f"bridge/{uid}/marker-2", b"m2")
        seen = [m.topic for m in remote.messages_until(f"bridge/{uid}/marker-2")]
        assert seen == [y, f"bridge/{uid}/marker-2"], "mqttd's subscriber got a second copy"
        remote.publish(f"bridge/{uid}/marker-3", b"m3")
        seen = [m.topic for m in local.messages_until(f"bridge/{uid}/marker-3")]
        assert seen == [f"bridge/{uid}/marker-2", f"bridge/{uid}/marker-3"], (
            "Mosquitto's subscriber got a second copy"
        )
    finally:
        local.stop()
        remote.stop()


def test_bridge_keeps_retain_flag(bridged: Bridged, uid: str) -> None:
    """A retained message published on mqttd reaches the Mosquitto side still retained (Retain
    As Published on the bridge's subscription), so Mosquitto keeps it for its late subscribers."""
    remote = Paho(bridged.remote, f"remote-r-{uid}", V311)
    try:
        topic = f"bridge/{uid}/kept"
        remote.publish(topic, b"kept", retain=True)
        # Mosquitto has it once a marker sent after it over the same bridge arrived there
        watch = Paho(bridged.local, f"local-w-{uid}", V311)
        try:
            watch.subscribe(f"bridge/{uid}/marker", 1)
            remote.publish(f"bridge/{uid}/marker", b"m")
            watch.messages_until(f"bridge/{uid}/marker")
        finally:
            watch.stop()
        late = Paho(bridged.local, f"local-l-{uid}", V311)
        try:
            late.subscribe(topic, 1)
            m = late.message()
            assert (m.topic, m.payload, m.retain) == (topic, b"kept", True)
        finally:
            late.stop()
        remote.publish(topic, b"", retain=True)
    finally:
        remote.stop()


@pytest.mark.parametrize("how", ["kill", "terminate"])
def test_bridge_will_marks_it_down(bridged: Bridged, uid: str, how: str) -> None:
    """When the Mosquitto side goes away, killed or stopped (Mosquitto 2.0 closes a bridge
    without DISCONNECT on SIGTERM), mqttd publishes the bridge's will: its state becomes "0",
    retained."""
    watch = Paho(bridged.remote, f"down-{uid}", V311)
    try:
        watch.subscribe(bridged.state_topic, 0)
        m = watch.message()
        assert (m.payload, m.retain) == (b"1", True)
        getattr(bridged.proc, how)()
        bridged.proc.wait(5)
        m = watch.message()
        assert (m.topic, m.payload) == (bridged.state_topic, b"0")
    finally:
        watch.stop()
    late = Paho(bridged.remote, f"down-late-{uid}", V311)
    try:
        late.subscribe(bridged.state_topic, 0)
        m = late.message()
        assert (m.payload, m.retain) == (b"0", True)
    finally:
        late.stop()
