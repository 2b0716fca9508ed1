"""Password and ACL files in Mosquitto's formats, without a broker: parsing, errors that name the
file and line, hashes from both tools, ACL answers and the filter algebra behind SUBSCRIBE."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from mqttd import acl, passwords
from mqttd.cli import main as cli_main
from tests.conftest import require_program

# -- password files --------------------------------------------------------------------------------


def test_mqttd_passwd_writes_hashes_that_check(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    assert cli_main(["passwd", "-c", "-b", str(f), "alice", "s3cret"]) == 0
    assert cli_main(["passwd", "-b", str(f), "bob", "pa:ss word"]) == 0
    assert f.stat().st_mode & 0o777 == 0o600
    users = passwords.load(str(f))
    assert users["alice"].iterations == passwords.ITERATIONS > 101
    assert users["alice"].matches(b"s3cret") and not users["alice"].matches(b"s3cre")
    assert users["bob"].matches(b"pa:ss word")
    assert f.read_text().startswith("alice:$7$")
    assert cli_main(["passwd", "-D", str(f), "alice"]) == 0
    assert set(passwords.load(str(f))) == {"bob"}
    assert cli_main(["passwd", "-D", str(f), "alice"]) == 1  # no such user any more


def test_mosquitto_passwd_files_are_read(tmp_path: Path) -> None:
    """A file written by Debian's mosquitto_passwd ($7$, 101 iterations) checks in mqttd."""
    tool = require_program("mosquitto_passwd")
    f = tmp_path / "pw"
    subprocess.run([tool, "-c", "-b", str(f), "carol", "c-123"], check=True)
    subprocess.run([tool, "-b", str(f), "dave", "ünïcode"], check=True)
    users = passwords.load(str(f))
    assert users["carol"].iterations == 101
    assert users["carol"].matches(b"c-123") and not users["carol"].matches(b"c-124")
    assert users["dave"].matches("ünïcode".encode())


def test_sha512_kind_of_mosquitto_1x() -> None:
    """``$6$salt$hash``: SHA-512 of password + salt (mosquitto 1.x; seen in old files)."""
    import base64
    import hashlib

    salt = b"0123456789ab"
    digest = hashlib.sha512(b"old" + salt).digest()
    line = f"eve:$6${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}\n"
    users = passwords.parse_lines([line], "pw")
    assert users["eve"].iterations == 0
    assert users["eve"].matches(b"old") and not users["eve"].matches(b"new")


@pytest.mark.parametrize(
    "line, says",
    [
        ("alice\n", "expected user:hash"),
        (":$7$101$AAAA$AAAA\n", "expected user:hash"),
        ("alice:plaintext\n", "plain text is refused"),
        ("alice:\n", "plain text is refused"),
        ("alice:$7$0$YWJj$" + "A" * 88 + "\n", "iteration count 0"),
        ("alice:$7$101$!!!$AAAA\n", "bad base64"),
        ("alice:$7$101$YWJj$YWJj\n", "64 bytes, this one 3"),
    ],
)
def test_a_bad_line_names_file_and_line_never_an_empty_password(line: str, says: str) -> None:
    with pytest.raises(passwords.PasswordFileError) as err:
        passwords.parse_lines(["# users\n", "\n", line], "/etc/mqttd/pw")
    assert "/etc/mqttd/pw, line 3" in str(err.value) and says in str(err.value)


def test_missing_password_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(passwords.PasswordFileError, match=r"password file .*nope: No such file"):
        passwords.load(str(tmp_path / "nope"))


# -- ACL files -------------------------------------------------------------------------------------

ACL = """\
# anonymous clients
topic read public/#

user alice
topic readwrite alice/#
topic deny alice/secret
topic write shared/in

user bob and more
topic bob/#

pattern write devices/%c/state
pattern read users/%u/inbox/#
pattern deny devices/%c/locked
"""


@pytest.fixture
def rules() -> acl.Acl:
    return acl.parse_lines(ACL.splitlines(True), "acl")


def test_user_rules_topic_access(rules: acl.Acl) -> None:
    alice = rules.rights("alice", "c1")
    assert alice.may_read("alice/x") and alice.may_write("alice/x/y")
    assert not alice.may_read("alice/secret") and not alice.may_write("alice/secret")
    assert alice.may_write("shared/in") and not alice.may_read("shared/in")
    assert not alice.may_read("public/news")  # anonymous rules are not alice's
    assert not alice.may_read("bob/x")  # no matching rule: denied
    bob = rules.rights("bob and more", "c2")  # a user name with spaces, as Mosquitto reads it
    assert bob.may_read("bob/1") and bob.may_write("bob/1")  # no access word: readwrite


def test_anonymous_rules_are_the_ones_before_any_user(rules: acl.Acl) -> None:
    anon = rules.rights(None, "c3")
    assert anon.may_read("public/news") and not anon.may_write("public/news")
    assert not anon.may_read("alice/x")


def test_patterns_apply_to_everyone_with_their_own_ids(rules: acl.Acl) -> None:
    alice = rules.rights("alice", "dev7")
    assert alice.may_write("devices/dev7/state") and not alice.may_write("devices/dev8/state")
    assert alice.may_read("users/alice/inbox/1") and not alice.may_read("users/bob/inbox/1")
    anon = rules.rights(None, "dev9")
    assert anon.may_write("devices/dev9/state")
    assert not anon.may_read("users/None/inbox/1")  # %u says nothing about anonymous clients


@pytest.mark.parametrize("evil", ["+", "#", "a/b", "dev+", "x#"])
def test_wildcards_in_an_id_cannot_widen_a_pattern(rules: acl.Acl, evil: str) -> None:
    """A client id or user name holding + # / grants nothing through a pattern."""
    by_id = rules.rights("alice", evil)
    assert not by_id.may_write("devices/dev7/state")
    assert not by_id.may_write(f"devices/{evil}/state")
    by_user = rules.rights(evil, "c1")
    assert not by_user.may_read("users/bob/inbox/1")


def test_a_deny_pattern_with_a_wildcard_id_fails_closed() -> None:
    rules = acl.parse_lines(["pattern readwrite #\n", "pattern deny devices/%c/#\n"], "acl")
    assert rules.rights(None, "ok").may_write("devices/other/x")
    assert not rules.rights(None, "+").may_write("devices/other/x")


def test_subscribe_granted_when_something_is_readable(rules: acl.Acl) -> None:
    alice = rules.rights("alice", "c1")
    assert alice.may_subscribe("#")  # granted; delivery filters message by message
    assert alice.may_subscribe("alice/+") and alice.may_subscribe("+/x")
    assert not alice.may_subscribe("alice/secret")  # a deny rule covers it whole
    assert not alice.may_subscribe("bob/#")  # nothing there is readable
    assert not alice.may_subscribe("$SYS/#")  # "#"-style rules never reach $ topics


@pytest.mark.parametrize(
    "a, b, overlap, covers",
    [
        ("#", "a/b", True, True),
        ("#", "$SYS/x", False, False),  # [MQTT-4.7.2-1]
        ("a/#", "a", True, True),  # "a/#" matches "a" too [MQTT-4.7.1-2]
        ("a/+", "a/#", True, False),
        ("a/+/c", "a/b/+", True, False),
        ("a/b", "a/b/c", False, False),
        ("+/+", "a/b", True, True),
        ("a/b", "+/b", True, False),
        ("$SYS/#", "$SYS/broker/x", True, True),
    ],
)
def test_filter_overlap_and_cover(a: str, b: str, overlap: bool, covers: bool) -> None:
    assert acl.overlap(a, b) is overlap and acl.overlap(b, a) is overlap
    assert acl.covers(a, b) is covers


@pytest.mark.parametrize(
    "line, says",
    [
        ("topic read a/#/b\n", "invalid topic filter"),
        ("topic read\n", "needs a topic filter"),
        ("user\n", "needs a user name"),
        ("topik read a\n", "unknown keyword 'topik'"),
    ],
)
def test_a_bad_acl_line_names_file_and_line(line: str, says: str) -> None:
    with pytest.raises(acl.AclFileError) as err:
        acl.parse_lines(["# x\n", line], "/etc/mqttd/acl")
    assert "/etc/mqttd/acl, line 2" in str(err.value) and says in str(err.value)
