"""The decorators are typed so that ``mypy --strict`` finds a wrong handler in a user's program:
handler_types_bad.py must give an error on each line marked ``# error: <decorator>`` and on no
other, handler_types_good.py (every documented form, sync and async) none at all."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.library.programs import ROOT

HERE = Path(__file__).resolve().parent
GOOD = HERE / "handler_types_good.py"
BAD = HERE / "handler_types_bad.py"
MARK = re.compile(r"#\s*error:\s*(\w+)")
#: the type variable of each decorator, named in mypy's message
CONTRACT = {
    "subscribe": "SubscribeHandlerT",
    "publish_handler": "PublishHandlerT",
    "on_connect": "ClientHandlerT",
    "on_disconnect": "ClientHandlerT",
    "authenticate": "AuthenticateHookT",
    "authorize_publish": "AuthorizePublishHookT",
    "authorize_subscribe": "AuthorizeSubscribeHookT",
}
ERROR = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+): error: (?P<message>.*)$")


def marked_lines(path: Path) -> dict[int, str]:
    """Line number -> the decorator named by that line's ``# error:`` mark."""
    out: dict[int, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        m = MARK.search(line)
        if m:
            out[number] = m.group(1)
    return out


@pytest.fixture(scope="module")
def mypy_errors() -> dict[str, dict[int, list[str]]]:
    """One mypy run over both programs (mypy takes seconds): file name -> line -> messages."""
    pytest.importorskip("mypy")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--follow-imports=silent",  # mqttd's own modules are not the user's to fix
            "--no-incremental",
            "--no-pretty",
            "--no-error-summary",
            str(GOOD.relative_to(ROOT)),
            str(BAD.relative_to(ROOT)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(ROOT),
    )
    errors: dict[str, dict[int, list[str]]] = {GOOD.name: {}, BAD.name: {}}
    for line in out.stdout.splitlines():
        m = ERROR.match(line)
        if m:
            lines = errors.setdefault(Path(m["path"]).name, {})
            lines.setdefault(int(m["line"]), []).append(m["message"])
    # mypy exits 1 for errors found, 2 when it could not check at all
    assert out.returncode in (0, 1), out.stdout + out.stderr
    assert set(errors) == {GOOD.name, BAD.name}, out.stdout
    return errors


def test_correct_handlers_type_check(mypy_errors: dict[str, dict[int, list[str]]]) -> None:
    assert mypy_errors[GOOD.name] == {}


def test_wrong_handlers_are_mypy_errors_on_their_line(
    mypy_errors: dict[str, dict[int, list[str]]],
) -> None:
    expected = marked_lines(BAD)
    assert len(expected) >= 10
    got = mypy_errors[BAD.name]
    assert sorted(got) == sorted(expected), got
    for number, decorator in expected.items():
        messages = " ".join(got[number])
        # the message names the contract the handler breaks (the type variable bound to the
        # decorator's handler protocols), and the decorator when it is not a decorator factory
        assert f'"{CONTRACT[decorator]}"' in messages, (number, messages)
        if decorator not in ("subscribe", "publish_handler"):
            assert f'"{decorator}" of "MQTTApp"' in messages, (number, messages)
