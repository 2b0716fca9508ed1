"""mqttd._stream, the node's own epoll transport for plain TCP, against real sockets on a free
port, on uvloop and on asyncio's own loop: it keeps the asyncio transport contract mqttd's
protocols rely on (callbacks in asyncio's order, connection_lost once and in a later turn,
pause_writing above the high-water mark, nothing read while paused) and never spins on a peer
that is gone."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from mqttd._speedups import stream as _stream
from mqttd.listener import serve_streams

pytestmark = pytest.mark.skipif(_stream is None, reason="mqttd._stream is not compiled here")


def _loops() -> list[Any]:
    out: list[Any] = [pytest.param(asyncio.new_event_loop, id="asyncio")]
    try:
        import uvloop

        out.append(pytest.param(uvloop.new_event_loop, id="uvloop"))
    except ImportError:
        pass
    return out


class Recorder(asyncio.Protocol):
    """Every callback, in order; the received bytes; events a test can wait for."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.data = bytearray()
        self.transport: Any = None
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.got = asyncio.Event()
        self.keep_open = False
        self.fail_on_data = False

    def connection_made(self, transport: Any) -> None:
        self.calls.append("made")
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.calls.append("data")
        self.data += data
        self.got.set()
        if self.fail_on_data:
            raise RuntimeError("protocol bug")

    def eof_received(self) -> bool:
        self.calls.append("eof")
        return self.keep_open

    def pause_writing(self) -> None:
        self.calls.append("pause")

    def resume_writing(self) -> None:
        self.calls.append("resume")

    def connection_lost(self, exc: Exception | None) -> None:
        self.calls.append("lost")
        assert not self.lost.done(), "connection_lost twice"
        self.lost.set_result(exc)


Scenario = Callable[[Any, list[Recorder], socket.socket], Awaitable[None]]


def _run(
    new_loop: Callable[[], asyncio.AbstractEventLoop], scenario: Scenario, host: str = "127.0.0.1"
) -> list[Any]:
    """Serve on host:<free>, connect one blocking client socket, run the scenario with the
    server's protocols; the loop's exception handler calls are returned."""
    loop = new_loop()
    errors: list[Any] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))

    async def main() -> None:
        poller = _stream.Poller(asyncio.get_running_loop())
        made: list[Recorder] = []

        def factory() -> Recorder:
            made.append(Recorder())
            return made[-1]

        try:
            server = serve_streams(poller, factory, host, 0, 16)
        except OSError:
            poller.close()
            raise
        port = server.sockets[0].getsockname()[1]
        client = socket.create_connection((host, port), timeout=5)
        try:
            await _until(lambda: made and made[0].transport is not None)
            await scenario(server, made, client)
        finally:
            client.close()
            server.close()
            for r in made:
                if r.transport is not None:
                    r.transport.abort()
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            poller.close()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    return errors


def on_both_loops(reported: str | None = None) -> Callable[[Scenario], Callable[[Any], None]]:
    """A test of the scenario, on uvloop and on asyncio's loop: the loop's exception handler
    must have been called once with ``reported`` in its message, or never (None)."""

    def make(scenario: Scenario) -> Callable[[Any], None]:
        @pytest.mark.parametrize("new_loop", _loops())
        def test(new_loop: Any) -> None:
            errors = _run(new_loop, scenario)
            if reported is None:
                assert errors == []
            else:
                assert len(errors) == 1 and reported in errors[0]["message"]

        test.__name__, test.__doc__ = scenario.__name__, scenario.__doc__
        return test

    return make


async def _until(cond: Callable[[], Any], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.005)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        assert chunk, f"EOF after {len(out)} of {n} bytes"
        out += chunk
    return bytes(out)


@on_both_loops()
async def test_bytes_both_ways_and_the_addresses(
    server: Any, made: list[Recorder], client: socket.socket
) -> None:
    r = made[0]
    t = r.transport
    assert t.get_extra_info("peername") == client.getsockname()
    assert t.get_extra_info("sockname") == client.getpeername()
    assert t.get_extra_info("peercert") is None
    assert t.get_extra_info("nothing", "x") == "x"
    client.sendall(b"ping")
    await _until(lambda: bytes(r.data) == b"ping")
    t.write(b"pong")
    t.write(bytearray(b"!"))
    t.write(b"")
    assert _recv_exactly(client, 5) == b"pong!"
    assert t.get_write_buffer_size() == 0
    assert r.calls == ["made", "data"]


@on_both_loops()
async def test_a_peer_that_does_not_read_pauses_the_writer_and_gets_every_byte_in_order(
    server: Any, made: list[Recorder], client: socket.socket
) -> None:
    """Beyond what the kernel takes the rest waits in the stream's buffer: pause_writing above
    64 KiB, resume_writing once it drained below 16 KiB, and nothing lost or reordered."""
    total = 8 * 1024 * 1024
    r = made[0]
    t = r.transport
    payload = bytes(range(256)) * (total // 256)
    for i in range(0, total, 4096):
        t.write(payload[i : i + 4096])
    assert r.calls[-1] == "pause"
    assert t.get_write_buffer_size() > 64 * 1024
    got = await asyncio.get_running_loop().run_in_executor(None, _recv_exactly, client, total)
    assert got == payload
    await _until(lambda: t.get_write_buffer_size() == 0)
    assert r.calls == ["made", "pause", "resume"]


@on_both_loops()
async def test_close_sends_what_is_buffered_first_then_connection_lost_once(
    server: Any, made: list[Recorder], client: socket.socket
) -> None:
    # (more than the kernel's socket buffers of both ends can take unread: Linux's tcp_wmem
    # and tcp_rmem maxima are 4 and 6 MiB)
    total = 32 * 1024 * 1024
    r = made[0]
    t = r.transport
    t.write(b"x" * total)
    t.close()
    t.close()
    assert t.is_closing()
    t.write(b"after close")  # dropped: nobody will read it
    assert t.get_write_buffer_size() > 0
    assert not r.lost.done(), "lost before its buffer was written"
    got = await asyncio.get_running_loop().run_in_executor(None, _recv_exactly, client, total)
    assert got == b"x" * total
    assert await asyncio.wait_for(r.lost, 5) is None
    assert client.recv(10) == b""  # then the FIN
    assert r.calls[-1] == "lost" and r.calls.count("lost") == 1


@on_both_loops()
async def test_connection_lost_comes_in_a_later_turn_not_inside_close(
    server: Any, made: list[Recorder], client: socket.socket
) -> None:
    r = made[0]
    r.transport.abort()
    assert not r.lost.done()
    assert await asyncio.wait_for(r.lost, 5) is None
    assert client.recv(10) == b""


@on_both_loops()
async def test_the_peer_closing_gives_eof_then_connection_lost(
    server: Any, made: list[Recorder], client: socket.socket
) -> None:
    r = made[0]
    client.sendall(b"last words")
    client.shutdown(socket.SHUT_WR)
    assert await asyncio.wait_for(r.lost, 5) is None
    assert r.calls == ["made", "data", "eof", "lost"]
    assert bytes(r.data) == b"last words"


@on_both_loops()
async def test_eof_received_true_keeps_the_stream_open_for_writing(
    server: Any, made: list[Recorder], client: socket.socket
) -> None:
    r = made[0]
    r.keep_open = True
    client.shutdown(socket.SHUT_WR)
    await _until(lambda: "eof" in r.calls)
    r.transport.write(b"still here")
    assert _recv_exactly(client, 10) == b"still here"  # (the marker: written after the EOF)
    assert not r.lost.done()


@on_both_loops()
async def test_a_reset_is_connection_lost_with_the_error(
    server: Any, made: list[Recorder], client: socket.socket
) -> None:
    r = made[0]
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # RST
    exc = await asyncio.wait_for(r.lost, 5)
    assert isinstance(exc, ConnectionResetError)


@on_both_loops()
async def test_nothing_is_read_while_paused_and_a_gone_peer_is_not_polled_meanwhile(
    server: Any, made: list[Recorder], client: socket.socket
) -> None:
    """Paused, the stream is out of the epoll set (epoll reports a hang-up to any descriptor in
    it, which would wake the loop every turn); resumed, what waited is read, then the end."""
    r = made[0]
    t = r.transport
    t.pause_reading()
    assert not t.is_reading()
    client.sendall(b"held")
    client.close()
    # A marker: a second client's bytes, sent after those, read in a later poll of the set
    other = socket.create_connection(server.sockets[0].getsockname(), timeout=5)
    try:
        await _until(lambda: len(made) == 2 and made[1].transport is not None)
        other.sendall(b"marker")
        await _until(lambda: bytes(made[1].data) == b"marker")
        await asyncio.sleep(0)
    finally:
        other.close()
    assert r.calls == ["made"]
    assert t.events == 0  # not in the set: no wake-up for the hang-up
    t.resume_reading()
    assert await asyncio.wait_for(r.lost, 5) is None
    assert bytes(r.data) == b"held"
    assert r.calls == ["made", "data", "eof", "lost"]


@on_both_loops(reported="data_received")
async def test_a_protocol_that_raises_is_reported_and_its_connection_closed(
    server: Any, made: list[Recorder], client: socket.socket
) -> None:
    r = made[0]
    r.fail_on_data = True
    client.sendall(b"boom")
    exc = await asyncio.wait_for(r.lost, 5)
    assert isinstance(exc, RuntimeError)
    assert client.recv(10) == b""


@on_both_loops()
async def test_many_clients_and_a_closed_server_accepts_no_more(
    server: Any, made: list[Recorder], client: socket.socket
) -> None:
    port = server.sockets[0].getsockname()[1]
    others = await asyncio.get_running_loop().run_in_executor(
        None,
        lambda: [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(300)],
    )
    try:
        await _until(lambda: len(made) == 301)
        for i, s in enumerate(others):
            s.sendall(b"%d" % i)
        await _until(lambda: all(r.data for r in made[1:]))
        assert sorted(int(r.data) for r in made[1:]) == list(range(300))
        assert {r.transport.get_extra_info("peername") for r in made[1:]} == {
            s.getsockname() for s in others
        }
        assert server.is_serving()
        server.close()
        assert not server.is_serving()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        # those accepted stay
        first = next(
            r for r in made if r.transport.get_extra_info("peername") == others[0].getsockname()
        )
        first.transport.write(b"ok")
        assert _recv_exactly(others[0], 2) == b"ok"
    finally:
        for s in others:
            s.close()


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
def test_an_ipv6_peer_has_the_socket_modules_four_field_address() -> None:
    async def scenario(server: Any, made: list[Recorder], client: socket.socket) -> None:
        peer = made[0].transport.get_extra_info("peername")
        assert peer == client.getsockname() and len(peer) == 4

    try:
        errors = _run(asyncio.new_event_loop, scenario, "::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    assert errors == []


def test_a_taken_port_is_eaddrinuse() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)

    async def main() -> None:
        poller = _stream.Poller(asyncio.get_running_loop())
        try:
            with pytest.raises(OSError) as info:
                serve_streams(poller, asyncio.Protocol, "127.0.0.1", taken.getsockname()[1], 8)
            assert info.value.errno == 98
        finally:
            poller.close()

    try:
        asyncio.run(main())
    finally:
        taken.close()


# -- the node -------------------------------------------------------------------------------------
_CONNECT = bytes([0x10, 13, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 60, 0, 1]) + b"c"
_CONNACK = bytes([0x20, 2, 0, 0])


async def _connected_transport(node: Any) -> Any:
    """Connect a client to the node, CONNECT, and give back the broker side's transport."""
    host, port = node.addresses[0]
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(_CONNECT)
    assert await asyncio.wait_for(reader.readexactly(4), 5) == _CONNACK
    (conn,) = node.broker.connections
    writer.close()
    return conn.transport


def test_a_nodes_plain_tcp_connections_are_streams_and_its_set_closes_with_it() -> None:
    from mqttd.broker import BrokerConfig
    from mqttd.node import Node

    async def main() -> None:
        node = Node(BrokerConfig(host="127.0.0.1", port=0, sys_interval=0))
        await node.start()
        try:
            poller = node._poller
            transport = await _connected_transport(node)
            assert isinstance(transport, _stream.Stream)
            assert node.broker.connections.copy().pop().peer == transport.get_extra_info("peername")
        finally:
            await node.shutdown()
        assert node._poller is None
        with pytest.raises(Exception):  # noqa: B017 (closed: the loop watches it no more)
            poller.serve(socket.socket(), asyncio.Protocol)

    asyncio.run(main())


class _NoReaderLoop(asyncio.SelectorEventLoop):
    """A loop that cannot watch a descriptor for its user (as a proactor loop)."""

    def add_reader(self, *args: Any) -> None:
        raise NotImplementedError


def test_a_loop_that_cannot_watch_a_descriptor_gets_the_loops_own_transports() -> None:
    from mqttd.broker import BrokerConfig
    from mqttd.node import Node

    async def main() -> None:
        node = Node(BrokerConfig(host="127.0.0.1", port=0, sys_interval=0))
        await node.start()
        try:
            transport = await _connected_transport(node)
            assert not isinstance(transport, _stream.Stream)
            assert node._poller is False
        finally:
            await node.shutdown()

    loop = _NoReaderLoop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
