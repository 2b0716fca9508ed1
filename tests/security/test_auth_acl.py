"""The command's security against a real broker: password files (made by both tools), the ACL
on PUBLISH, SUBSCRIBE and delivery (live, retained, wills), session ownership, SIGHUP reload,
the open-broker warning and the slowing of repeated failures. Raw clients see the exact codes;
mosquitto_pub/sub show that real clients get in with -u/-P."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mqtt_raw import PUBACK, PUBREC, Client, parse_ack
from mqtt_raw import publish as raw_publish

from mqttd.cli import main as cli_main
from tests.conftest import BrokerProc, require_program, start_broker, stop_broker

ACL = """\
topic read public/#

user alice
topic readwrite alice/#
topic deny alice/secret
topic read public/#
topic write public/#

user bob
topic readwrite bob/#
topic read alice/news
"""
NOT_AUTHORIZED = 0x87


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(password file with alice by mqttd passwd and bob by mosquitto_passwd, ACL file)."""
    d = tmp_path_factory.mktemp("sec")
    pw = d / "passwd"
    assert cli_main(["passwd", "-c", "-b", str(pw), "alice", "alice-pw"]) == 0
    tool = require_program("mosquitto_passwd")
    subprocess.run([tool, "-b", str(pw), "bob", "bob-pw"], check=True)
    acl = d / "acl"
    acl.write_text(ACL)
    return pw, acl


@pytest.fixture(scope="module")
def secured(files: tuple[Path, Path]) -> Iterator[BrokerProc]:
    pw, acl = files
    b = start_broker("--password-file", str(pw), "--acl-file", str(acl))
    try:
        yield b
    finally:
        stop_broker(b)


def addr(b: BrokerProc) -> tuple[str, int]:
    return (b.host, b.port)


@pytest.mark.parametrize("level, anon, bad", [(4, 5, 4), (5, 0x87, 0x86)])
def test_password_file_refuses_anonymous_and_bad_passwords(
    secured: BrokerProc, level: int, anon: int, bad: int
) -> None:
    """With a password file, allow_anonymous defaults to false (as Mosquitto 2.0): 3.1.1 CONNACK
    5 Not authorized / 4 Bad user name or password; MQTT 5 0x87 / 0x86 [MQTT-3.2.2-6]."""
    with Client(addr(secured), level=level) as c:
        c.connect(f"anon{level}", expect_rc=anon)
    with Client(addr(secured), level=level) as c:
        c.connect(f"bad{level}", username="alice", password=b"wrong", expect_rc=bad)
    with Client(addr(secured), level=level) as c:
        c.connect(f"nouser{level}", username="mallory", password=b"x", expect_rc=bad)
    for user, password in (("alice", b"alice-pw"), ("bob", b"bob-pw")):
        with Client(addr(secured), level=level) as c:
            c.connect(f"{user}{level}", username=user, password=password)
            c.ping()


def test_real_clients_with_user_and_password(secured: BrokerProc) -> None:
    sub_tool = require_program("mosquitto_sub")
    pub_tool = require_program("mosquitto_pub")
    port = str(secured.port)
    sub = subprocess.Popen(
        [sub_tool, "-h", "127.0.0.1", "-p", port, "-u", "bob", "-P", "bob-pw", "-t", "bob/#",
         "-C", "1", "-W", "10"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # published until the subscriber is in (a retained message would do too, but this
        # checks the live path): -C 1 makes it exit on the first
        deadline = time.monotonic() + 10
        while sub.poll() is None and time.monotonic() < deadline:
            subprocess.run(
                [pub_tool, "-h", "127.0.0.1", "-p", port, "-u", "bob", "-P", "bob-pw",
                 "-t", "bob/x", "-m", "hello"],
                check=True,
            )  # fmt: skip
            time.sleep(0.1)
        out, _ = sub.communicate(timeout=10)
    finally:
        sub.kill()
    assert out.strip() == "hello"
    bad = subprocess.run(
        [pub_tool, "-h", "127.0.0.1", "-p", port, "-u", "bob", "-P", "nope", "-t", "bob/x",
         "-m", "x"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode != 0


def _alice(b: BrokerProc, cid: str, level: int = 5) -> Client:
    c = Client(addr(b), level=level)
    c.connect(cid, username="alice", password=b"alice-pw")
    return c


def test_publish_refused_by_the_acl(secured: BrokerProc) -> None:
    """MQTT 5: PUBACK / PUBREC 0x87 Not authorized; 3.1.1 cannot say it: acknowledged, dropped."""
    with _alice(secured, "pub5") as a, _alice(secured, "watch5") as w:
        w.subscribe("alice/#", qos=1)
        a.send(raw_publish("bob/x", b"no", qos=1, pid=7, level=5))
        assert parse_ack(a.expect(PUBACK), PUBACK, 5) == (7, NOT_AUTHORIZED)
        a.send(raw_publish("alice/secret", b"no", qos=2, pid=8, level=5))
        assert parse_ack(a.expect(PUBREC), PUBREC, 5) == (8, NOT_AUTHORIZED)
        a.publish("alice/ok", b"marker", qos=1)
        got = w.recv_publish()
        assert (got.topic, got.payload) == ("alice/ok", b"marker")  # nothing refused came first
    with _alice(secured, "pub4", level=4) as a, _alice(secured, "watch4") as w:
        w.subscribe("alice/#", qos=1)
        a.publish("alice/secret", b"dropped", qos=1)  # PUBACK as usual
        a.publish("alice/ok", b"marker4", qos=1)
        got = w.recv_publish()
        assert (got.topic, got.payload) == ("alice/ok", b"marker4")


def test_subscribe_to_everything_receives_only_what_may_be_read(secured: BrokerProc) -> None:
    """A subscription to # is granted, and only readable topics are delivered: live messages,
    retained ones and another client's will. A filter with nothing readable: SUBACK 0x87."""
    with _alice(secured, "ret-pub") as a:
        a.publish("alice/secret", b"retained secret", qos=1, retain=True)
        a.publish("alice/open", b"retained open", qos=1, retain=True)
    with Client(addr(secured), level=5) as bob:
        bob.connect("bob-all", username="bob", password=b"bob-pw")
        assert bob.subscribe([("#", 1), ("alice/secret", 1), ("alice/news", 1)]) == [
            1,
            NOT_AUTHORIZED,
            1,
        ]
        # Retained messages come first: bob may read neither alice/secret nor alice/open
        with Client(addr(secured), level=5) as dying:
            dying.connect(
                "dying", username="alice", password=b"alice-pw", will_topic="alice/will",
                will_payload=b"unreadable will",
            )  # fmt: skip
            dying.kill()  # the will goes to alice/will, which bob may not read
        with _alice(secured, "live-pub") as a:
            a.publish("alice/other", b"unreadable live", qos=1)
            a.publish("alice/news", b"readable live", qos=1)
        got = bob.recv_publish()
        assert (got.topic, got.payload) == ("alice/news", b"readable live")
        bob.ping()


def test_a_will_the_client_may_not_publish_refuses_the_connect(secured: BrokerProc) -> None:
    with Client(addr(secured), level=5) as c:
        c.connect(
            "will-bad", username="bob", password=b"bob-pw", will_topic="alice/x",
            will_payload=b"x", expect_rc=NOT_AUTHORIZED,
        )  # fmt: skip


def test_a_session_is_taken_over_by_its_own_user_only(secured: BrokerProc) -> None:
    """Any client could otherwise take over a client id and inherit its subscriptions and
    queued messages: another user gets CONNACK 0x87 (3.1.1: 5), the same user takes over."""
    with _alice(secured, "owned", level=4) as first:
        for level, code in ((4, 5), (5, NOT_AUTHORIZED)):
            with Client(addr(secured), level=level) as thief:
                thief.connect("owned", username="bob", password=b"bob-pw", expect_rc=code)
        first.ping()  # still connected: the refused attempt did not disturb it
        with _alice(secured, "owned", level=4) as again:
            again.ping()
        first.wait_closed()  # taken over by the same user [MQTT-3.1.4-3]


def test_session_owner_check_can_be_turned_off(files: tuple[Path, Path]) -> None:
    pw, acl = files
    b = start_broker("--password-file", str(pw), "--session-owner-check", "false")
    try:
        with _alice(b, "shared-id", level=4):
            with Client(addr(b), level=4) as c:
                c.connect("shared-id", username="bob", password=b"bob-pw")
    finally:
        stop_broker(b)


def test_sighup_reloads_rights_without_dropping_clients(tmp_path: Path) -> None:
    """SIGHUP reads the ACL again: bob's subscription to # stops receiving alice/news as soon
    as the new file takes it away, and his connection stays."""
    pw = tmp_path / "pw"
    cli_main(["passwd", "-c", "-b", str(pw), "alice", "alice-pw"])
    cli_main(["passwd", "-b", str(pw), "bob", "bob-pw"])
    acl = tmp_path / "acl"
    acl.write_text(ACL)
    b = start_broker("--password-file", str(pw), "--acl-file", str(acl))
    try:
        with Client(addr(b), level=5) as bob, _alice(b, "alice-hup") as alice:
            bob.connect("bob-hup", username="bob", password=b"bob-pw")
            assert bob.subscribe([("#", 1)]) == [1]
            alice.publish("alice/news", b"before", qos=1)
            assert bob.recv_publish().payload == b"before"
            acl.write_text(ACL.replace("topic read alice/news", "topic read reload/marker"))
            b.proc.send_signal(signal.SIGHUP)
            # The reload is done once bob may subscribe to reload/marker (refused before)
            deadline = time.monotonic() + 10
            while bob.subscribe([("reload/marker", 0)], pid=9) != [0]:
                assert time.monotonic() < deadline, "SIGHUP did not reload the ACL"
                time.sleep(0.05)
            alice.publish("alice/news", b"after", qos=1)
            bob.publish("bob/end", b"end", qos=1)
            got = bob.recv_publish()
            assert (got.topic, got.payload) == ("bob/end", b"end")
            assert b.alive()
    finally:
        stop_broker(b)


def test_a_bad_file_at_reload_keeps_the_old_rules(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    cli_main(["passwd", "-c", "-b", str(pw), "alice", "alice-pw"])
    b = start_broker("--password-file", str(pw))
    try:
        pw.write_text("alice:not-a-hash\n")
        b.proc.send_signal(signal.SIGHUP)
        with _alice(b, "still") as a:  # the old file stays in force (and no exit on SIGHUP)
            a.ping()
        assert b.alive()
    finally:
        stop_broker(b)


def test_bad_files_stop_the_start_with_file_and_line(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("alice:$7$101$AAAA\n")
    acl = tmp_path / "acl"
    acl.write_text("user alice\ntopik read x\n")
    for flag, path, says in (
        ("--password-file", pw, f"{pw}, line 1"),
        ("--acl-file", acl, f"{acl}, line 2: unknown keyword"),
    ):
        r = subprocess.run(
            [sys.executable, "-m", "mqttd", "--port", "0", flag, str(path)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert r.returncode == 1 and says in r.stderr, r.stderr


def _start_capturing(*flags: str) -> tuple[subprocess.Popen[str], list[str]]:
    """A broker whose lines up to its listening line are returned (start_broker drops them)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mqttd", "--port", "0", *flags],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if "listening on" in line:
            break
    return proc, lines


@pytest.mark.parametrize(
    "flags, warned",
    [
        (("--host", "0.0.0.0"), True),
        (("--host", "0.0.0.0", "--allow-anonymous", "false"), False),
        ((), False),  # loopback only
    ],
)
def test_an_open_broker_on_the_network_says_so(flags: tuple[str, ...], warned: bool) -> None:
    proc, lines = _start_capturing(*flags)
    try:
        text = "".join(lines)
        assert "listening on" in text
        assert ("with no authentication" in text) is warned, text
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)


def test_repeated_failures_from_an_address_are_answered_later(files: tuple[Path, Path]) -> None:
    """After three failures within a minute an address waits 0.5 s, then 1 s, ... for each
    further refusal (its own broker: every test connects from 127.0.0.1)."""
    b = start_broker("--password-file", str(files[0]))
    try:
        took = []
        for i in range(5):
            start = time.monotonic()
            with Client(addr(b), level=4, timeout=15) as c:
                c.connect(f"guess{i}", username="alice", password=b"guess", expect_rc=4)
            took.append(time.monotonic() - start)
        assert took[3] >= 0.45 and took[4] >= 0.95, took
        with _alice(b, "right") as a:  # a good password from there is let in (and resets it)
            a.ping()
    finally:
        stop_broker(b)


def test_a_file_made_by_mqttd_passwd_works_in_mosquitto(files: tuple[Path, Path]) -> None:
    """The other direction: Mosquitto 2.0 reads mqttd's $7$ hashes (at our iteration count)."""
    from tests.conftest import _start_mosquitto

    require_program("mosquitto_pub")
    pw, _ = files
    import getpass

    # (as root, Mosquitto would switch to its own user, who cannot read a 0600 file of ours)
    conf = f"allow_anonymous false\npassword_file {pw}\nuser {getpass.getuser()}\n"
    m = _start_mosquitto(15.0, conf)
    try:
        for password, code in ((b"alice-pw", 0), (b"wrong", 5), (b"bob-pw", 5)):
            with Client(addr(m), level=4) as c:
                c.connect(f"mosq-{code}", username="alice", password=password, expect_rc=code)
        with Client(addr(m), level=4) as c:
            c.connect("mosq-bob", username="bob", password=b"bob-pw")
    finally:
        stop_broker(m)


def test_allow_anonymous_false_without_a_password_file_refuses_everyone() -> None:
    """Nothing could check a user name, so nobody is let in (as Mosquitto 2.0)."""
    b = start_broker("--allow-anonymous", "false")
    try:
        with Client(addr(b), level=5) as c:
            c.connect("anon", expect_rc=NOT_AUTHORIZED)
        with Client(addr(b), level=4) as c:
            c.connect("named", username="alice", password=b"x", expect_rc=5)
    finally:
        stop_broker(b)


def test_an_acl_alone_governs_anonymous_clients(tmp_path: Path) -> None:
    """No password file: anonymous clients are welcome and get the rules before any user line."""
    acl = tmp_path / "acl"
    acl.write_text(ACL)
    b = start_broker("--acl-file", str(acl))
    try:
        with Client(addr(b), level=5) as anon, Client(addr(b), level=5) as pub:
            anon.connect("anon-reader")
            pub.connect("anon-writer")
            assert anon.subscribe([("#", 1), ("alice/#", 1)]) == [1, NOT_AUTHORIZED]
            pub.send(raw_publish("public/x", b"no", qos=1, pid=3, level=5))
            assert parse_ack(pub.expect(PUBACK), PUBACK, 5) == (3, NOT_AUTHORIZED)  # read only
            with Client(addr(b), level=5) as alice:
                # no password file: a user name is a label, and alice's rules are hers
                alice.connect("alice-label", username="alice", password=b"anything")
                alice.publish("alice/x", b"hidden", qos=1)
                alice.publish("public/x", b"news", qos=1)
            got = anon.recv_publish()
            assert (got.topic, got.payload) == ("public/x", b"news")
    finally:
        stop_broker(b)


def test_the_library_takes_the_same_files_and_counts_refusals(files: tuple[Path, Path]) -> None:
    """MQTTApp(password_file=..., acl_file=...): the same checks in a program, and
    get_metrics()["auth_failures"] counts the refused CONNECTs."""
    from tests.library.conftest import AppRunner, local_app

    pw, acl = files
    runner = AppRunner(local_app(password_file=str(pw), acl_file=str(acl)))
    try:
        where = ("127.0.0.1", runner.port)
        with Client(where, level=5) as c:
            c.connect("lib-bad", username="alice", password=b"nope", expect_rc=0x86)
        with Client(where, level=5) as c:
            c.connect("lib-good", username="alice", password=b"alice-pw")
            assert c.subscribe([("bob/#", 0)]) == [NOT_AUTHORIZED]
        assert runner.app.get_metrics()["auth_failures"] == 1
    finally:
        runner.stop()
