"""The ``mqttd`` command: version line, clear one-line errors, clean stop on Ctrl-C."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from tests.conftest import start_broker, stop_broker

MQTTD = [sys.executable, "-m", "mqttd"]


def run(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([*MQTTD, *args], capture_output=True, text=True, timeout=timeout)


def test_version_names_the_implementation() -> None:
    out = run("--version")
    assert out.returncode == 0
    assert out.stdout.startswith("mqttd 0.")
    if os.environ.get("MQTTD_NO_EXTENSIONS") == "1":
        assert "pure Python" in out.stdout
    else:
        assert "compiled extensions" in out.stdout, out.stdout + out.stderr


def test_forced_pure_says_so() -> None:
    env = dict(os.environ, MQTTD_NO_EXTENSIONS="1")
    out = subprocess.run([*MQTTD, "--version"], capture_output=True, text=True, env=env, timeout=20)
    assert "pure Python (MQTTD_NO_EXTENSIONS=1)" in out.stdout


def test_a_node_without_those_features_does_not_import_them() -> None:
    """A node started from flags, logging to stderr, imports no TOML parser, difflib, tempfile,
    shutil or logging.handlers: only what its configuration uses (issue 16, RSS at start)."""
    code = (
        "import asyncio, sys\n"
        "from mqttd import cli, options\n"
        "from mqttd.logs import setup_logging\n"
        "from mqttd.node import Node\n"
        "cli.build_parser().parse_args(['--port', '0'])\n"
        "setup_logging('info')\n"
        "async def main():\n"
        "    node = Node(options.broker_config({'port': 0, 'sys_interval': 0}))\n"
        "    await node.start()\n"
        "    await node.shutdown()\n"
        "asyncio.run(main())\n"
        "heavy = ('tomllib', 'difflib', 'tempfile', 'shutil', 'logging.handlers')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p)),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_console_script_installed() -> None:
    exe = shutil.which("mqttd")
    if exe is None:
        pytest.skip("the mqttd console script is not on PATH (not installed with pip)")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0 and out.stdout.startswith("mqttd ")


def test_port_in_use_is_one_clear_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = run("--port", str(port))
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert f"port {port} on 127.0.0.1 is already in use" in lines[0]


@pytest.mark.parametrize(
    "args, text",
    [
        (["--max-packet-size", "300000000"], "--max-packet-size: max_packet_size must be"),
        (["--max-packet-size", "2"], "--max-packet-size: max_packet_size must be 16..268435460"),
        (["--port", "70000"], "--port: port must be 0..65535, not 70000"),
        (
            ["--redis-node-name", "node a"],
            "--redis-node-name: redis_node_name must be 1..64 printable characters",
        ),
    ],
)
def test_bad_configuration_is_one_clear_line(args: list[str], text: str) -> None:
    out = run(*args)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], out.stderr


def test_ctrl_c_stops_cleanly() -> None:
    b = start_broker()
    c = b.connect()
    c.sendall(bytes.fromhex("100c00044d5154540402003c0000"))  # CONNECT 3.1.1, empty client id
    assert c.recv(4) == b"\x20\x02\x00\x00"
    b.proc.send_signal(signal.SIGINT)
    assert b.proc.wait(10) == 0
    c.settimeout(5)
    assert c.recv(10) == b""  # the client's connection was closed, not left hanging
    c.close()


def test_start_up_line_says_how_to_accept_remote_clients() -> None:
    proc = subprocess.Popen(
        [*MQTTD, "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            if "listening on" in line:
                break
        assert "listening on 127.0.0.1:" in line and "--host 0.0.0.0" in line
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)


def test_shutdown_tells_mqtt5_clients() -> None:
    """On Ctrl-C an MQTT 5 client gets DISCONNECT 0x8B Server shutting down, then the close."""
    b = start_broker()
    c = b.connect()
    # CONNECT at MQTT 5, empty client id, no properties
    c.sendall(bytes.fromhex("100d00044d5154540502003c000000"))
    ack = c.recv(64)
    assert ack[0] == 0x20 and ack[3] == 0
    b.proc.send_signal(signal.SIGINT)
    assert b.proc.wait(10) == 0
    c.settimeout(5)
    data = b""
    while chunk := c.recv(64):
        data += chunk
    assert data[:3] == b"\xe0\x01\x8b" or data[:4] == b"\xe0\x02\x8b\x00", data
    c.close()


def test_config_file_sets_options_and_flags_win(tmp_path) -> None:
    """mqttd --config takes the TOML file of the options table; a flag beats the file."""
    conf = tmp_path / "mqttd.toml"
    conf.write_text("max-connections = 1\nsys_interval = 0\nport = 1\n")
    b = start_broker("--config", str(conf))  # --port 0 (given by start_broker) beats port = 1
    try:
        first = b.connect()
        first.sendall(b"\x10\x0f\x00\x04MQTT\x04\x02\x00\x0a\x00\x03one")
        assert first.recv(4) == b"\x20\x02\x00\x00"
        second = b.connect()
        second.sendall(b"\x10\x0f\x00\x04MQTT\x04\x02\x00\x0a\x00\x03two")
        assert second.recv(4) == b"\x20\x02\x00\x03"  # 3.1.1: Server unavailable
        first.close()
        second.close()
    finally:
        stop_broker(b)


@pytest.mark.parametrize(
    "text, error",
    [
        ("max_connections = 'many'\n", "max_connections must be a whole number"),
        ("no_such_option = 1\n", "unknown option 'no_such_option'"),
        ("port = \n", "is not valid TOML"),
    ],
)
def test_bad_config_file_is_one_clear_line(tmp_path, text: str, error: str) -> None:
    conf = tmp_path / "bad.toml"
    conf.write_text(text)
    out = run("--config", str(conf))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and error in lines[0], out.stderr


# -- the config file: real TOML types, errors naming the file and the key ---------------------------
def run_config(tmp_path, text: str, *args: str) -> subprocess.CompletedProcess:
    """``mqttd --config FILE`` with ``text`` as the file; a broker that starts anyway fails."""
    conf = tmp_path / "mqttd.toml"
    conf.write_text(text)
    try:
        return run("--config", str(conf), *args, timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the broker started with {text!r}")


def one_error_line(out: subprocess.CompletedProcess, code: int = 2) -> str:
    assert out.returncode == code, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


@pytest.mark.parametrize(
    "text, error",
    [
        ('port = "0"\n', "port must be a whole number, not the string '0' (write port = 0)"),
        ('sys_interval = "10"\n', "sys_interval must be a number, not the string '10'"),
        ('use_redis = "yes"\n', "use_redis must be true or false, not the string 'yes'"),
        ("host = 127\n", "host must be a string, not 127"),
        ("port = 1883.0\n", "port must be a whole number, not 1883.0"),
    ],
)
def test_config_file_refuses_a_string_for_a_number(tmp_path, text: str, error: str) -> None:
    """A TOML file has real types: "0" is a string there, not a port (the environment and the
    flags are text, and are converted)."""
    line = one_error_line(run_config(tmp_path, text))
    assert f"{tmp_path / 'mqttd.toml'}: {error}" in line


@pytest.mark.parametrize(
    "text, error",
    [
        ("port = -5\n", "port must be 0..65535, not -5"),
        ("max_packet_size = 2\n", "max_packet_size must be 16..268435460"),
        ("sys_interval = -1\n", "sys_interval must be 0 (off) or more"),
        ('redis_url = "reddis://127.0.0.1:1"\n', "redis_url"),
        ("redis_port = 70000\n", "redis_port must be 1..65535, not 70000"),
    ],
)
def test_config_file_range_error_names_the_file_and_the_key(
    tmp_path, text: str, error: str
) -> None:
    line = one_error_line(run_config(tmp_path, text))
    assert f"{tmp_path / 'mqttd.toml'}: {error}" in line


@pytest.mark.parametrize(
    "text, table",
    [
        ("[mqttd]\nport = 1884\n", "[mqttd]"),
        ("port = 0\n[[listeners]]\nport = 1884\n", "[[listeners]]"),
        ("tls.certfile = 'a.pem'\n", "tls.certfile"),
    ],
)
def test_config_file_table_says_the_file_is_flat(tmp_path, text: str, table: str) -> None:
    line = one_error_line(run_config(tmp_path, text))
    assert str(tmp_path / "mqttd.toml") in line and table in line and "flat" in line, line


def test_mosquitto_conf_is_recognised(tmp_path) -> None:
    text = "# mosquitto\nlistener 1883\nallow_anonymous true\npersistence true\n"
    line = one_error_line(run_config(tmp_path, text))
    assert f"{tmp_path / 'mqttd.toml'} looks like a mosquitto.conf file" in line, line
    assert "mqttd reads TOML" in line and "port = 1883" in line, line


def test_environment_and_flags_still_take_text(tmp_path) -> None:
    """Only the file is strict: MQTTD_* values and flags are text by nature."""
    env = dict(os.environ, MQTTD_SYS_INTERVAL="0", MQTTD_USE_REDIS="no")
    conf = tmp_path / "mqttd.toml"
    conf.write_text("sys_interval = 5\n")  # an integer where a number is expected is fine
    b = start_broker("--config", str(conf), "--max-connections", "3", env=env)
    stop_broker(b)


# -- start-up errors that say which file or part is wrong --------------------------------------------
@pytest.fixture(scope="module")
def pems(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    trustme = pytest.importorskip("trustme")
    d = tmp_path_factory.mktemp("pems")
    ca = trustme.CA()
    cert, other = ca.issue_cert("localhost"), ca.issue_cert("other")
    paths = {name: str(d / f"{name}.pem") for name in ("cert", "key", "other_key", "both")}
    cert.cert_chain_pems[0].write_to_path(paths["cert"])
    cert.private_key_pem.write_to_path(paths["key"])
    other.private_key_pem.write_to_path(paths["other_key"])
    cert.private_key_and_cert_chain_pem.write_to_path(paths["both"])
    return paths


@pytest.mark.parametrize(
    "files, error",
    [
        (("cert",), "certfile {cert} has no private key; give --keyfile"),
        (("key",), "certfile {key} holds no certificate (is it the key?)"),
        (("key", "cert"), "certfile {key} holds a private key and keyfile {cert} a certificate"),
        (("cert", "cert"), "keyfile {cert} holds no private key (is it the certificate?)"),
        (("cert", "other_key"), "the key in {other_key} does not match the certificate in {cert}"),
    ],
)
def test_tls_files_error_says_which_file_is_wrong(
    pems: dict[str, str], files: tuple[str, ...], error: str
) -> None:
    args = ["--port", "0", "--certfile", pems[files[0]]]
    if len(files) > 1:
        args += ["--keyfile", pems[files[1]]]
    line = one_error_line(run(*args), code=1)
    assert error.format(**pems) in line, line
    assert "PEM lib" not in line


@pytest.mark.parametrize(
    "url, error",
    [
        ("reddis://127.0.0.1:1", "redis+cluster://"),
        ("reddis://127.0.0.1:1", "rediss+cluster://"),
        ("redis://127.0.0.1:1/abc", "database 'abc' is not a number"),
        ("redis://127.0.0.1:x/0", "port"),
        ("redis+cluster://127.0.0.1:1/2", "a Redis Cluster has only database 0"),
        ("unix://", "the path of the socket"),
    ],
)
def test_bad_redis_url_is_refused_before_start(url: str, error: str) -> None:
    line = one_error_line(run("--port", "0", "--redis-url", url))
    assert line.startswith("mqttd: error: --redis-url: redis_url ") and error in line, line


def test_library_validates_the_redis_url_too() -> None:
    from mqttd.broker import BrokerConfig

    with pytest.raises(ValueError, match="database 'abc' is not a number"):
        BrokerConfig(redis_url="redis://127.0.0.1:1/abc").validate()


def test_redis_url_error_hides_the_password() -> None:
    line = one_error_line(run("--port", "0", "--redis-url", "reddis://:s3cret@127.0.0.1:1/0"))
    assert "s3cret" not in line and "reddis" in line, line


# -- a source checkout without its compiled extensions -----------------------------------------------
SOURCE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this checkout


def _checkout(tmp_path, keep: tuple[str, ...] = ()) -> str:
    """A copy of the source tree without compiled modules (but those named in ``keep``)."""
    if not os.path.isdir(os.path.join(SOURCE, "mqttd")):
        pytest.skip("the tests run against an installed mqttd, away from its source tree")
    src = SOURCE
    dst = tmp_path / "checkout"

    def ignore(folder: str, names: list[str]) -> set[str]:
        compiled = {n for n in names if n.endswith(".so") and not any(map(n.startswith, keep))}
        return compiled | {"__pycache__"}

    shutil.copytree(os.path.join(src, "mqttd"), dst / "mqttd", ignore=ignore)
    for name in ("setup.py", "pyproject.toml"):
        shutil.copy(os.path.join(src, name), dst / name)
    return str(dst)


def _version_in(checkout: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MQTTD_NO_EXTENSIONS"}
    return subprocess.run(
        [*MQTTD, "--version"], capture_output=True, text=True, env=env, cwd=checkout, timeout=20
    )


def test_checkout_without_extensions_is_one_warning(tmp_path) -> None:
    checkout = _checkout(tmp_path)
    out = _version_in(checkout)
    assert out.returncode == 0, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert f"source checkout at {checkout} has no compiled extensions" in lines[0], lines[0]
    # asked from a directory holding no mqttd: is one installed, for the checkout to shadow?
    installed = subprocess.run(
        [sys.executable, "-c", "import importlib.metadata as m; m.distribution('mqttd')"],
        cwd=tmp_path,
        capture_output=True,
        timeout=20,
    )
    if installed.returncode == 0:
        assert "shadows the installed mqttd" in lines[0], lines[0]
    assert "python setup.py build_ext --inplace" in lines[0] and "pip install -e ." in lines[0]
    assert "pure Python" in out.stdout and "mixed" not in out.stdout, out.stdout


def test_mixed_only_when_really_mixed(tmp_path) -> None:
    pkg = os.path.join(SOURCE, "mqttd")
    if not os.path.isdir(pkg):
        pytest.skip("the tests run against an installed mqttd, away from its source tree")
    if not any(n.startswith("_codec.") and n.endswith(".so") for n in os.listdir(pkg)):
        pytest.skip("no compiled mqttd._codec to keep")
    out = _version_in(_checkout(tmp_path, keep=("_codec.",)))
    assert "mixed: codec=compiled, match=pure, route=pure" in out.stdout, out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "mqttd._match" in lines[0] and "mqttd._route" in lines[0], lines
