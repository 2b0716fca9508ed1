"""``--persistence-file`` (issue 15, item 1): retained messages and persistent sessions survive a
restart; a ``kill -9`` at any moment leaves a consistent store; an unreadable file is set aside;
the file is 0600 and this node's alone; QoS 0 is never written.

Each test starts its own brokers (tests/conftest.py) on one file in its tmp_path.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import stat
import threading
import time
from pathlib import Path

import mqtt_raw as R
import pytest

from tests.conftest import BrokerProc, start_broker, stop_broker


def addr(b: BrokerProc) -> tuple[str, int]:
    return (b.host, b.port)


def sigterm(b: BrokerProc) -> None:
    b.proc.send_signal(signal.SIGTERM)
    assert b.proc.wait(15) == 0


def writes(b: BrokerProc) -> float:
    """The persistence writes counter of /metrics: the marker that a write has completed."""
    value = b.metric("mqttd_persistence_writes_total")
    assert value is not None, "no mqttd_persistence_writes_total in /metrics"
    return value


def wait_written(b: BrokerProc, turns: int = 2, timeout: float = 15.0) -> None:
    """Until ``turns`` more writes completed: what was acknowledged before is in the file."""
    start = writes(b)
    deadline = time.monotonic() + timeout
    while writes(b) < start + turns:
        assert time.monotonic() < deadline, "the persistence file was not written"
        time.sleep(0.05)


def drain_session(
    b: BrokerProc, client_id: str, level: int = 4, marker: str = "p/marker"
) -> list[bytes]:
    """Reconnect ``client_id`` (resuming), take every message until a marker arrives."""
    c = R.Client(addr(b), level)
    try:
        present, rc, _ = c.connect(client_id, clean=False, **_expiry(level))
        assert present, "the session was not restored"
        with R.connected(addr(b), f"marker-{client_id}", level) as m:
            m.publish(marker, b"END", qos=1)
        got = []
        while True:
            msg = c.recv_publish(timeout=10)
            if msg.payload == b"END":
                return got
            got.append(msg.payload)
    finally:
        c.close()


def _expiry(level: int) -> dict[str, object]:
    # MQTT 5: a session outlives its connection only with a Session Expiry Interval
    return {"properties": R.props(R.prop(0x11, 3600))} if level == 5 else {}


def test_restart_mid_traffic_keeps_retained_and_acknowledged(tmp_path: Path) -> None:
    store = str(tmp_path / "mqttd.db")
    b = start_broker("--persistence-file", store)
    # Two persistent sessions, QoS 1 (3.1.1) and QoS 2 (MQTT 5), offline while traffic flows
    for cid, level, qos in (("keep1", 4, 1), ("keep2", 5, 2)):
        c = R.connected(addr(b), cid, level, clean=False, **_expiry(level))
        c.subscribe("p/#", qos)
        c.disconnect()
    # One in flight: keep3 gets a message and does not acknowledge it before the restart
    c3 = R.connected(addr(b), "keep3", clean=False)
    c3.subscribe("p/#", 1)
    acked: list[bytes] = []
    stop = threading.Event()

    def publish() -> None:
        with R.connected(addr(b), "pub", 5) as p:
            i = 0
            try:
                while not stop.is_set():
                    payload = b"m%05d" % i
                    p.publish("p/x", payload, qos=1 + i % 2, pid=1 + i % 60000)
                    acked.append(payload)  # acknowledged: PUBACK, or PUBREC..PUBCOMP
                    i += 1
            except (R.Closed, OSError, AssertionError):
                pass  # the broker stopped mid-flow: that message was not acknowledged

    with R.connected(addr(b), "ret") as r:
        for i in range(50):
            r.publish(f"r/{i}", b"v%d" % i, qos=1, retain=True, pid=i + 1)
        r.publish("r/7", b"", retain=True)  # cleared [MQTT-3.3.1-6]
        r.publish("p/first", b"first", qos=1)
        acked.append(b"first")
    first = c3.recv_publish(ack=False)
    c3.kill()
    t = threading.Thread(target=publish)
    t.start()
    while len(acked) < 300:
        time.sleep(0.01)
    sigterm(b)  # mid-traffic: the publisher is cut off
    stop.set()
    t.join(10)

    b = start_broker("--persistence-file", store)
    try:
        for cid, level in (("keep1", 4), ("keep2", 5)):
            got = drain_session(b, cid, level)
            assert not set(acked) - set(got), f"{cid} lost acknowledged messages"
            order = [g for g in got if g in set(acked)]
            assert order == sorted(order), f"{cid}: out of order [MQTT-4.6.0-6]"
        # the unacknowledged one comes again with DUP [MQTT-4.4.0-1]
        c3 = R.Client(addr(b))
        present, _, _ = c3.connect("keep3", clean=False)
        assert present
        again = c3.recv_publish()
        assert again.payload == first.payload and again.dup
        c3.close()
        with R.connected(addr(b), "late") as late:
            late.subscribe("r/#", 0)
            seen = {late.recv_publish().payload for _ in range(49)}
            late.expect_quiet()
        assert seen == {b"v%d" % i for i in range(50) if i != 7}
    finally:
        stop_broker(b)


def _load(b: BrokerProc, sent: list[int], stop: threading.Event) -> None:
    """Retained r/0..r/N and QoS 1 messages to an offline session, in order, until killed."""
    try:
        with R.connected(addr(b), "loader") as p:
            i = 0
            while not stop.is_set():
                p.publish(f"r/{i % 500}", b"%d" % i, qos=1, retain=True, pid=1 + i % 60000)
                sent.append(i)
                i += 1
    except (R.Closed, OSError, AssertionError):
        pass


def test_kill_9_during_load_leaves_a_consistent_store(tmp_path: Path) -> None:
    store = str(tmp_path / "mqttd.db")
    b = start_broker(
        "--persistence-file",
        store,
        "--persistence-interval",
        "0.2",
        "--metrics-port",
        "0",
        "--max-queued-messages",
        "1000000",
        "--max-queued-bytes",
        "0",
    )
    c = R.connected(addr(b), "offline", clean=False)
    c.subscribe("r/#", 1)
    c.disconnect()
    sent: list[int] = []
    stop = threading.Event()
    t = threading.Thread(target=_load, args=(b, sent, stop))
    t.start()
    while len(sent) < 200:
        time.sleep(0.01)
    before = len(sent)
    wait_written(b)  # everything acknowledged up to `before` is in the file now
    while len(sent) < before + 300:
        time.sleep(0.01)
    b.proc.kill()  # SIGKILL, mid-write or not
    b.proc.wait(5)
    stop.set()
    t.join(10)

    b = start_broker("--persistence-file", store, "--log-level", "info")
    try:
        queued = [int(p) for p in drain_session(b, "offline", marker="r/marker")]
        # What the session kept is the stream as it was at one write: a prefix of what was sent,
        # and at least everything acknowledged before the marked write
        assert queued == list(range(len(queued))), "the session's queue is not a prefix"
        assert len(queued) >= before, f"lost acknowledged messages: {len(queued)} < {before}"
        with R.connected(addr(b), "late") as late:
            late.subscribe("r/#", 0)
            retained = {}
            for _ in range(min(500, len(queued))):  # (r/marker was not retained)
                m = late.recv_publish()
                retained[m.topic] = int(m.payload)
            late.expect_quiet()
        # the retained messages are those of the same moment: r/(i % 500) = the last i of it
        n = len(queued)
        want = {f"r/{k % 500}": k for k in range(max(0, n - 500), n)}
        assert retained == want
    finally:
        stop_broker(b)


def test_file_is_private_and_this_nodes_alone(tmp_path: Path) -> None:
    store = str(tmp_path / "mqttd.db")
    b = start_broker("--persistence-file", store)
    try:
        assert stat.S_IMODE(os.stat(store).st_mode) == 0o600
        second = start_broker_fails("--persistence-file", store)
        assert f"persistence file {store}" in second and "locked" in second
    finally:
        stop_broker(b)


def start_broker_fails(*args: str) -> str:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "mqttd", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    return proc.stderr.strip()


def test_missing_directory_is_one_line(tmp_path: Path) -> None:
    err = start_broker_fails("--persistence-file", str(tmp_path / "no" / "such.db"))
    assert err.count("\n") == 0 and "persistence file" in err and "No such file" in err


@pytest.mark.parametrize(
    "content",
    [b"this is not SQLite at all\n" * 100, b"SQLite format 3\x00" + b"\xff" * 4000],
    ids=["text", "damaged-header"],
)
def test_corrupt_file_is_set_aside(tmp_path: Path, content: bytes) -> None:
    store = tmp_path / "mqttd.db"
    store.write_bytes(content)
    b = start_broker("--persistence-file", str(store), "--metrics-port", "0")
    try:
        aside = [p for p in tmp_path.iterdir() if p.name.startswith("mqttd.db.corrupt-")]
        assert len(aside) == 1 and aside[0].read_bytes() == content
        assert b.metric("mqttd_persistence_set_aside_total") == 1
        with R.connected(addr(b), "works") as c:  # and it serves, with a fresh store
            c.publish("r/1", b"x", retain=True)
    finally:
        stop_broker(b)
    db = sqlite3.connect(store)
    assert db.execute("SELECT topic FROM retained").fetchall() == [("r/1",)]
    db.close()


def test_qos0_is_never_written(tmp_path: Path) -> None:
    store = tmp_path / "mqttd.db"
    b = start_broker("--persistence-file", str(store))
    c = R.connected(addr(b), "slow", clean=False)
    c.subscribe("q/#", 1)
    with R.connected(addr(b), "pub") as p:
        p.publish("q/0", b"QOS-ZERO-PAYLOAD", qos=0)
        p.publish("q/1", b"QOS-ONE-PAYLOAD", qos=1)
        # wait until both went through the broker: the subscriber has them
        assert {c.recv_publish(ack=False).payload for _ in range(2)} == {
            b"QOS-ZERO-PAYLOAD",
            b"QOS-ONE-PAYLOAD",
        }
    c.kill()  # the QoS 1 one stays in flight; the QoS 0 one is gone
    sigterm(b)
    raw = b"".join(p.read_bytes() for p in store.parent.iterdir())
    import base64

    db = sqlite3.connect(store)
    states = [r[0] for r in db.execute("SELECT state FROM sessions")]
    db.close()
    decoded = b"".join(
        base64.b64decode(m) for s in states for m in re.findall(rb"[A-Za-z0-9+/=]{20,}", s)
    )
    assert b"QOS-ONE-PAYLOAD" in decoded
    assert b"QOS-ZERO-PAYLOAD" not in decoded and b"QOS-ZERO-PAYLOAD" not in raw


def test_delayed_will_survives_a_restart(tmp_path: Path) -> None:
    """A will waiting for its Will Delay Interval is published after the restart, on time."""
    store = str(tmp_path / "mqttd.db")
    b = start_broker("--persistence-file", store)
    props = R.props(R.prop(0x11, 3600))
    c = R.Client(addr(b), 5)
    c.connect(
        "willing",
        clean=False,
        properties=props,
        will_topic="w/gone",
        will_payload=b"bye",
        will_props=R.props(R.prop(0x18, 5)),
    )
    c.kill()  # no DISCONNECT: the will waits 5 s
    sigterm(b)
    b = start_broker("--persistence-file", store)
    try:
        with R.connected(addr(b), "watcher") as w:
            w.subscribe("w/#", 0)
            m = w.recv_publish(timeout=10)
            assert (m.topic, m.payload) == ("w/gone", b"bye")
    finally:
        stop_broker(b)


def test_sigterm_is_bounded_when_a_client_does_not_read(tmp_path: Path) -> None:
    """A subscriber that stops reading cannot hold a stop up: cut after the grace (node.py
    CLOSE_GRACE), exit 0. (From Python 3.12 the listener's wait_closed() waits for every
    connection, so without the grace this stop would never end; 3.11 does not wait.)"""
    b = start_broker("--persistence-file", str(tmp_path / "p.db"), "--slow-subscriber-timeout", "0")
    stalled = R.connected(addr(b), "stalled", 5)
    stalled.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.subscribe("big/#", 0)
    with R.connected(addr(b), "flood") as p:
        for _ in range(300):
            p.publish("big/x", b"x" * 60000)  # ~18 MB for a client reading nothing
        p.ping()  # all of it went through the broker
    started = time.monotonic()
    sigterm(b)
    took = time.monotonic() - started
    assert took < 12, f"the stop took {took:.1f} s"
    stalled.close()
