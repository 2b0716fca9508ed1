"""Interop with the Mosquitto command-line clients (mosquitto_pub / mosquitto_sub): QoS 0/1/2 at
MQTT 3.1.1 and 5, retained messages and wills.

Readiness is never a fixed sleep: a publisher re-publishes until the subscriber has printed what
it waits for (a subscriber's SUBACK is not visible from outside its process).
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable

import pytest
from helpers import Lines as _Lines

VERSIONS = ["mqttv311", "mqttv5"]
DEADLINE = 10.0  # upper bound for one interop exchange; normally well under a second


class Lines(_Lines):
    """helpers.Lines with this module's longer deadline."""

    def wait_for(
        self,
        pred: Callable[[str], bool],
        timeout: float = DEADLINE,
        poke: Callable[[], None] | None = None,
    ) -> str:
        return super().wait_for(pred, timeout, poke)


def pub(
    broker, version: str, topic: str, message: str, qos: int = 0, *extra: str, cid: str = ""
) -> None:
    cmd = [
        "mosquitto_pub",
        "-h", broker.host, "-p", str(broker.port), "-V", version,
        "-t", topic, "-m", message, "-q", str(qos), *extra,
    ]  # fmt: skip
    if cid:
        cmd += ["-i", cid]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=DEADLINE)
    assert r.returncode == 0, f"mosquitto_pub failed: {r.stderr}"


def sub_cmd(broker, version: str, *args: str) -> list[str]:
    return ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-V", version, *args]


@pytest.fixture(autouse=True)
def _need_clients(require_program) -> None:
    require_program("mosquitto_pub")
    require_program("mosquitto_sub")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_pub_sub_roundtrip(broker, version, qos):
    """`mosquitto_sub -t 'sensors/+' -q Q -C 1` receives what `mosquitto_pub -t
    sensors/temperature -m 25.5C -q Q` sends, at QoS Q."""
    sub = Lines(sub_cmd(broker, version, "-t", "sensors/+", "-q", str(qos), "-C", "1",
                        "-F", "%q %r %t %p"))  # fmt: skip
    try:
        line = sub.wait_for(
            lambda s: True,
            poke=lambda: pub(broker, version, "sensors/temperature", "25.5C", qos),
        )
        assert line == f"{qos} 0 sensors/temperature 25.5C"
        assert sub.proc.wait(DEADLINE) == 0  # -C 1: exits cleanly after one message
    finally:
        sub.stop()


@pytest.mark.parametrize("version", VERSIONS)
def test_retained_reaches_later_subscriber(broker, version):
    """A retained message published before the subscriber exists is delivered to it with the
    retain flag set."""
    pub(broker, version, "sensors/humidity", "40%", 1, "-r")
    r = subprocess.run(
        sub_cmd(broker, version, "-t", "sensors/+", "-C", "1", "-F", "%r %t %p", "-W", "5"),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "1 sensors/humidity 40%"
    # Clearing it: a later subscriber gets nothing retained (-W ends the wait).
    pub(broker, version, "sensors/humidity", "", 1, "-r")
    r = subprocess.run(
        sub_cmd(broker, version, "-t", "sensors/+", "-C", "1", "-W", "1"),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert r.stdout.strip() == ""


@pytest.mark.parametrize("version", VERSIONS)
def test_will_on_killed_client(broker, version):
    """A mosquitto_sub with a will, killed with SIGKILL (no DISCONNECT), makes the broker
    publish its will to a listening subscriber."""
    listener = Lines(sub_cmd(broker, version, "-t", "clients/#", "-q", "1", "-v"))
    doomed = None
    try:
        listener.wait_for(
            lambda s: s == "clients/sync ok",
            poke=lambda: pub(broker, version, "clients/sync", "ok"),
        )
        doomed = Lines(sub_cmd(broker, version, "-t", "doomed/ready", "-q", "1",
                               "--will-topic", "clients/dead", "--will-payload", "bye",
                               "--will-qos", "1"))  # fmt: skip
        doomed.wait_for(
            lambda s: s == "yes", poke=lambda: pub(broker, version, "doomed/ready", "yes")
        )
        doomed.proc.send_signal(signal.SIGKILL)
        doomed.proc.wait(5)
        listener.wait_for(lambda s: s == "clients/dead bye")
    finally:
        listener.stop()
        if doomed is not None:
            doomed.stop()


@pytest.mark.parametrize("version", VERSIONS)
def test_no_will_on_clean_exit(broker, version):
    """mosquitto_sub -C 1 with a will exits with DISCONNECT: no will is published."""
    listener = Lines(sub_cmd(broker, version, "-t", "clients/#", "-q", "1", "-v"))
    try:
        listener.wait_for(
            lambda s: s == "clients/sync ok",
            poke=lambda: pub(broker, version, "clients/sync", "ok"),
        )
        polite = Lines(sub_cmd(broker, version, "-t", "polite/go", "-C", "1",
                               "--will-topic", "clients/dead", "--will-payload", "bye"))  # fmt: skip
        polite.wait_for(lambda s: s == "go", poke=lambda: pub(broker, version, "polite/go", "go"))
        assert polite.proc.wait(5) == 0
        # A marker after the exit: the listener sees it, and no will before it.
        line = listener.wait_for(
            lambda s: s in ("clients/after done", "clients/dead bye"),
            poke=lambda: pub(broker, version, "clients/after", "done"),
        )
        assert line == "clients/after done"
        assert "clients/dead bye" not in listener.seen
    finally:
        listener.stop()
