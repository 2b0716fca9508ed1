"""``$SYS/broker/...`` status topics, named as Mosquitto names them (mosquitto(8), BROKER STATUS):
retained values published at an interval, never matched by a filter that starts with a wildcard
[MQTT-4.7.2-1], and not writable by clients.

Each test starts its own broker with a short interval (mqttd ``--sys-interval 0.2``; in Mosquitto
validation mode a private Mosquitto with ``sys_interval 1``, its smallest).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from mqtt_raw import MARKER, PUBACK, Client, connected, parse_ack, publish

from tests.conftest import (
    MOSQUITTO,
    BrokerProc,
    _answers_connect,
    _free_port,
    broker_kind,
    start_broker,
    stop_broker,
)

MOSQUITTO_MODE = broker_kind() == "mosquitto"
#: the interval the tests ask for; Mosquitto's is whole seconds, and it updates every ~2
INTERVAL = 1.0 if MOSQUITTO_MODE else 0.2
#: long enough for a few updates to happen
SETTLE = 4.5 if MOSQUITTO_MODE else 1.2
#: how long to wait for a value to reach what a test expects
WAIT = 8.0 if MOSQUITTO_MODE else 3.0

SYS = "$SYS/broker/"


def _start_mosquitto(interval: float) -> BrokerProc:
    """A private Mosquitto with ``sys_interval`` (the shared fixture has no option for it)."""
    if not os.path.exists(MOSQUITTO):
        pytest.skip(f"{MOSQUITTO} is not installed")
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="mqttd-mosq-sys-") as tmp:
        conf = os.path.join(tmp, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(
                f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                f"sys_interval {int(interval)}\nlog_dest none\n"
            )
        proc = subprocess.Popen(
            [MOSQUITTO, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            if _answers_connect("127.0.0.1", port):
                return BrokerProc("127.0.0.1", port, proc, [MOSQUITTO, "-c", conf])
            time.sleep(0.05)
    proc.kill()
    proc.wait(5)
    raise RuntimeError("mosquitto did not start")


@pytest.fixture
def start_sys_broker() -> Iterator[Callable[[float], tuple[str, int]]]:
    """Start a broker with a given $SYS interval (0: off); returns its address."""
    started: list[BrokerProc] = []

    def start(interval: float) -> tuple[str, int]:
        if MOSQUITTO_MODE:
            b = _start_mosquitto(interval)
        else:
            b = start_broker("--sys-interval", str(interval))
        started.append(b)
        return (b.host, b.port)

    yield start
    for b in started:
        stop_broker(b)


@pytest.fixture
def sysaddr(start_sys_broker: Callable[[float], tuple[str, int]]) -> tuple[str, int]:
    return start_sys_broker(INTERVAL)


class Watcher:
    """A client subscribed to ``$SYS/#`` that keeps the latest value of every topic."""

    def __init__(self, addr: tuple[str, int], client_id: str = "sys-watcher") -> None:
        self.client = connected(addr, client_id)
        self.values: dict[str, str] = {}
        #: (topic, payload, retain) in arrival order
        self.log: list[tuple[str, str, bool]] = []
        assert self.client.subscribe("$SYS/#", 0) == [0]
        self._take_stash()

    def _take_stash(self) -> None:
        # PUBLISH packets that came before the SUBACK were set aside by expect()
        while self.client.stash:
            self._note(self.client.recv_publish())

    def _note(self, m: object) -> None:
        topic, payload = m.topic, m.payload.decode()  # type: ignore[attr-defined]
        self.values[topic] = payload
        self.log.append((topic, payload, m.retain))  # type: ignore[attr-defined]

    def pump(self, timeout: float) -> None:
        """Read whatever arrives for ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                self._note(self.client.recv_publish(timeout=left))
            except TimeoutError:  # no PUBLISH within the time left
                return

    def wait_for(self, suffix: str, check: Callable[[str], bool], timeout: float = WAIT) -> str:
        """Read until ``$SYS/broker/<suffix>`` has a value that passes ``check``; return it."""
        topic = SYS + suffix
        deadline = time.monotonic() + timeout
        while True:
            value = self.values.get(topic)
            if value is not None and check(value):
                return value
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{topic} is {value!r} after {timeout}s")
            try:
                self._note(self.client.recv_publish(timeout=left))
            except TimeoutError:
                pass

    def number(self, suffix: str, check: Callable[[int], bool] = lambda n: True) -> int:
        return int(self.wait_for(suffix, lambda v: v.isdigit() and check(int(v))))

    def close(self) -> None:
        self.client.disconnect()


@pytest.fixture
def watcher(sysaddr: tuple[str, int]) -> Iterator[Watcher]:
    w = Watcher(sysaddr)
    try:
        yield w
    finally:
        w.close()


# -- values -------------------------------------------------------------------------------------


def test_version_and_uptime_retained_at_subscribe(watcher: Watcher) -> None:
    """A new ``$SYS/#`` subscriber gets the version and uptime at once, as retained messages."""
    retained_first = {t: p for t, p, r in watcher.log if r}
    version = retained_first.get(SYS + "version") or watcher.wait_for("version", bool)
    if MOSQUITTO_MODE:
        assert version.startswith("mosquitto version ")
    else:
        import mqttd

        assert version == f"mqttd {mqttd.__version__}"
    assert re.fullmatch(r"\d+ seconds", watcher.wait_for("uptime", bool))
    assert any(t == SYS + "uptime" for t, _, r in watcher.log if r), "uptime not retained"


def test_uptime_advances(watcher: Watcher) -> None:
    first = int(watcher.wait_for("uptime", bool).split()[0])
    later = watcher.wait_for("uptime", lambda v: int(v.split()[0]) > first)
    assert later.endswith(" seconds")


def test_clients_connected_follows_connections(sysaddr: tuple[str, int], watcher: Watcher) -> None:
    """clients/connected counts the watcher, then a second client, then the watcher alone."""
    watcher.number("clients/connected", lambda n: n == 1)
    other = connected(sysaddr, "sys-second")
    try:
        watcher.number("clients/connected", lambda n: n == 2)
        watcher.number("clients/maximum", lambda n: n >= 2)
        watcher.number("clients/total", lambda n: n >= 2)
    finally:
        other.disconnect()
    watcher.number("clients/connected", lambda n: n == 1)


def test_disconnected_counts_persistent_sessions(
    sysaddr: tuple[str, int], watcher: Watcher
) -> None:
    """A client away from its persistent session (clean session 0) counts as disconnected."""
    watcher.number("clients/disconnected", lambda n: n == 0)
    away = connected(sysaddr, "sys-persistent", clean=False)
    away.disconnect()
    watcher.number("clients/disconnected", lambda n: n == 1)
    watcher.number("clients/connected", lambda n: n == 1)


def test_messages_received_increase_after_publishes(
    sysaddr: tuple[str, int], watcher: Watcher
) -> None:
    before = watcher.number("messages/received")
    publish_before = watcher.number("publish/messages/received")
    with connected(sysaddr, "sys-pub") as pub:
        for i in range(5):
            pub.publish(f"sys-test/{i}", b"x", qos=1, pid=i + 1)
        pub.disconnect()
    watcher.number("messages/received", lambda n: n >= before + 5)
    watcher.number("publish/messages/received", lambda n: n >= publish_before + 5)


def test_bytes_and_messages_sent_increase(sysaddr: tuple[str, int], watcher: Watcher) -> None:
    sent = watcher.number("bytes/sent")
    with connected(sysaddr, "sys-sub") as sub:
        sub.subscribe("sys-out/#", 0)
        with connected(sysaddr, "sys-pub2") as pub:
            pub.publish("sys-out/a", b"y" * 100, qos=1)
        assert sub.recv_publish().payload == b"y" * 100
        sub.disconnect()
    watcher.number("bytes/sent", lambda n: n >= sent + 100)
    watcher.number("publish/messages/sent", lambda n: n >= 1)
    watcher.number("bytes/received", lambda n: n >= 100)


def test_subscriptions_count(sysaddr: tuple[str, int], watcher: Watcher) -> None:
    # The first (retained) value may predate the watcher's own $SYS/# subscription
    before = watcher.number("subscriptions/count", lambda n: n >= 1)
    with connected(sysaddr, "sys-subs") as c:
        assert c.subscribe([("sys-subs/a", 0), ("sys-subs/b/#", 1)]) == [0, 1]
        watcher.number("subscriptions/count", lambda n: n == before + 2)
        c.disconnect()
    watcher.number("subscriptions/count", lambda n: n == before)


def test_retained_messages_count(sysaddr: tuple[str, int], watcher: Watcher) -> None:
    """Retained messages are counted as they are stored, and uncounted when cleared by an empty
    payload [MQTT-3.3.1-6]."""
    watcher.pump(SETTLE)  # let the $SYS tree itself be stored first (it is retained too)
    before = watcher.number("retained messages/count")
    with connected(sysaddr, "sys-ret") as pub:
        for i in range(3):
            pub.publish(f"sys-ret/{i}", b"kept", qos=1, pid=i + 1, retain=True)
        stored = watcher.number("retained messages/count", lambda n: n >= before + 3)
        for i in range(3):
            pub.publish(f"sys-ret/{i}", b"", qos=1, pid=i + 1, retain=True)
        watcher.number("retained messages/count", lambda n: n <= stored - 3)
        pub.disconnect()


def test_load_averages(sysaddr: tuple[str, int], watcher: Watcher) -> None:
    """Mosquitto's moving averages: a number with two decimals, rising after traffic."""
    for window in ("1min", "5min", "15min"):
        assert re.fullmatch(r"\d+\.\d\d", watcher.wait_for(f"load/bytes/received/{window}", bool))
    with connected(sysaddr, "sys-load") as pub:
        for _ in range(20):
            pub.publish("sys-load/x", b"z" * 200)
        pub.ping()
        pub.disconnect()
    watcher.wait_for("load/publish/received/1min", lambda v: float(v) > 0)
    watcher.wait_for("load/bytes/received/1min", lambda v: float(v) > 0)


# -- matching ------------------------------------------------------------------------------------


def test_wildcard_filters_do_not_match_sys(sysaddr: tuple[str, int], watcher: Watcher) -> None:
    """``#`` and ``+/...`` do not match topic names beginning with '$' [MQTT-4.7.2-1]; a filter
    that names ``$SYS`` does."""
    with connected(sysaddr, "sys-wild") as wild, connected(sysaddr, "sys-named") as named:
        assert wild.subscribe([("#", 0), ("+/broker/#", 0), ("+/+/uptime", 0)]) == [0, 0, 0]
        assert named.subscribe("$SYS/+/uptime", 0) == [0]
        with connected(sysaddr, "sys-pub3") as pub:
            pub.publish("ordinary/topic", b"seen", qos=1)
        m = wild.recv_publish()
        assert (m.topic, m.payload) == ("ordinary/topic", b"seen"), "the # subscription works"
        # Several $SYS updates happen meanwhile; the named filter gets them, # gets none.
        got = named.recv_publish(timeout=WAIT)
        assert got.topic == SYS + "uptime"
        n_before = len(watcher.log)
        watcher.pump(SETTLE)
        assert len(watcher.log) > n_before, "no $SYS update during the test"
        # Those updates were routed before this marker: had # matched them, they came first.
        with connected(sysaddr, "sys-pub4") as pub:
            pub.publish("ordinary/topic", MARKER, qos=1)
        assert wild.until() == []
        wild.disconnect()
        named.disconnect()


def test_interval_zero_publishes_nothing(
    start_sys_broker: Callable[[float], tuple[str, int]],
) -> None:
    addr = start_sys_broker(0)
    with connected(addr, "sys-off") as c:
        assert c.subscribe("$SYS/#", 0) == [0]
        # The rule is about time (no update, however long one waits), and no client can publish
        # a marker into $SYS: wait several of the intervals the other tests use.
        c.expect_quiet(SETTLE)
        c.disconnect()


# -- clients cannot write $SYS ----------------------------------------------------------------


@pytest.mark.parametrize("level", [4, 5])
def test_client_publish_to_sys_is_dropped(
    sysaddr: tuple[str, int], watcher: Watcher, level: int
) -> None:
    """A client PUBLISH into ``$SYS`` is not routed nor retained (Mosquitto drops it; at MQTT 5
    the PUBACK says 0x87 Not authorized)."""
    version = watcher.wait_for("version", bool)
    with Client(sysaddr, level) as c:
        c.connect(f"sys-evil-{level}")
        c.publish(SYS + "version", b"evil-0", qos=0, retain=True)
        c.send(publish(SYS + "version", b"evil-1", qos=1, pid=7, retain=True, level=level))
        pid, rc = parse_ack(c.expect(PUBACK), PUBACK, level)
        assert pid == 7
        if level == 5:
            assert rc >= 0x80, f"PUBACK reason {rc:#x}: the message was accepted"
        c.publish(SYS + "fake/new", b"evil-2", qos=2, retain=True)
        c.ping()
        c.disconnect()
    watcher.pump(SETTLE)
    assert not [e for e in watcher.log if e[1].startswith("evil")], "a client wrote to $SYS"
    late = Watcher(sysaddr, f"sys-late-{level}")
    try:
        late.pump(0.5)
        assert late.values.get(SYS + "version") == version
        assert SYS + "fake/new" not in late.values
    finally:
        late.close()


def test_will_to_sys_is_not_published(sysaddr: tuple[str, int], watcher: Watcher) -> None:
    """A will whose topic is in ``$SYS`` is dropped like a PUBLISH there (Mosquitto accepts the
    CONNECT and never publishes the will)."""
    c = Client(sysaddr)
    c.connect("sys-will", will_topic=SYS + "version", will_payload=b"evil-will", will_retain=True)
    c.kill()  # no DISCONNECT: the will would be published now [MQTT-3.1.2-8]
    watcher.pump(SETTLE)
    assert not [e for e in watcher.log if e[1].startswith("evil")], "a will wrote to $SYS"


def test_many_clients_counted(sysaddr: tuple[str, int], watcher: Watcher) -> None:
    """Several clients connecting at once are all counted (from threads, like real devices)."""
    clients: list[Client] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        c = connected(sysaddr, f"sys-many-{i}")
        with lock:
            clients.append(c)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    try:
        assert len(clients) == 8
        watcher.number("clients/connected", lambda n: n == 9)
        watcher.number("clients/maximum", lambda n: n >= 9)
    finally:
        for c in clients:
            c.disconnect()
    watcher.number("clients/connected", lambda n: n == 1)
