"""QoS 1 and 2 between nodes through a Redis stream: at least once across Redis outages (issue 17).

Pub/sub is at most once: a message published while Redis stalls or restarts is gone, though its
publisher was acknowledged. A message published at QoS 1 or 2 therefore goes to the stream
``{prefix}$mqttd/stream`` instead (``XADD ... MAXLEN ~ N``; QoS 0 stays on pub/sub for speed), and
every node reads the stream from where it stopped (``XREAD`` with the last id it read).

The publishing node keeps each message (the framed ``XADD``) until Redis answers it: while Redis
stalls or is away, the messages wait here, bounded by ``redis_stream_buffer`` bytes (beyond that
they are dropped and counted in ``stream_dropped``); when the bridge is connected again, everything
not yet answered is written again, in order. A message Redis took whose answer was lost comes
twice: each carries its origin node and a number of that node's (the envelope's sequence
number, counted here for QoS 1/2 messages, apart from the per-topic numbers of pub/sub), and a
reading node drops a number it has already delivered (``stream_duplicates``). Redis keeps what it
answered only as well as it is configured to: across a kill, with ``appendonly yes`` and
``appendfsync always`` (docs/redis.md, section 8).

One stream, hash-tagged (``{mqttd}``) so that it is one key on one shard of a Redis Cluster, keeps
every message in the order its node wrote it. Connections: the bridge's third (writing) one, its
replies counted here (on a Cluster, one to the shard that holds the stream); the reading one is
a redis-py client of its own (a blocking ``XREAD``: in the bridge's shared client it would hold
a pooled connection and make the others open more).

A node with a name (``redis_node_name``) keeps where its reading stands (the last id read, and the
last number delivered per origin) in ``{prefix}{mqttd}$mqttd/stream-at/<name>``, written with its
sessions (mqttd.redis.sessions, each interval: the sessions and the position of one moment); the
same name started again takes its sessions back and reads on from there, so what was published
while it was down reaches its persistent sessions. A number skipped by an origin (an entry
trimmed by ``MAXLEN`` before this node read it, or dropped at its origin) is counted in
``stream_lost``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import hiredis
from redis.exceptions import RedisError

from mqttd.redis.envelope import decode_envelope, encode_envelope, envelope_message
from mqttd.redis.resp import _command

if TYPE_CHECKING:
    from mqttd.redis.bridge import RedisBridge

log = logging.getLogger("mqttd.redis")

#: entries one XREAD returns at most
READ_COUNT = 1000
#: milliseconds an XREAD waits for new entries
READ_BLOCK_MS = 1000
#: origin nodes whose last number is remembered (a node that restarts is a new origin)
MAX_ORIGINS = 10_000
#: origins whose last number a named node keeps with its position (those it met last: a node
#: that restarts is a new origin, and the old ones publish no more)
POSITION_ORIGINS = 1000
#: error replies that say "not now" (a Cluster without a quorum of its shards, a Redis loading
#: its data, a replica promoted, a busy script): the entry is kept and written again
RETRY_ERRORS = ("CLUSTERDOWN", "TRYAGAIN", "LOADING", "MASTERDOWN", "READONLY", "BUSY")
#: seconds before writing again after such a reply
RETRY_AFTER = 0.5
#: bytes written to the connection and not yet sent before writing stops (Redis not reading)
MAX_UNSENT = 8 * 1024 * 1024
#: the stream's counts, in the bridge's stats (and /metrics as mqttd_redis_<name>_total)
STREAM_COUNTERS = (
    "stream_added",
    "stream_confirmed",
    "stream_resent",
    "stream_dropped",
    "stream_errors",
    "stream_received",
    "stream_duplicates",
    "stream_lost",
)


class Streams:
    def __init__(
        self, bridge: RedisBridge, maxlen: int, buffer_bytes: int, name: str | None = None
    ) -> None:
        self.bridge = bridge
        self.key = bridge.prefix_b + b"{mqttd}$mqttd/stream"
        #: where a named node's reading stands, kept across its restarts (None: unnamed)
        self.at_key = (
            bridge.prefix_b + b"{mqttd}$mqttd/stream-at/" + name.encode() if name else None
        )
        self._maxlen = str(maxlen).encode()
        self.buffer_bytes = buffer_bytes
        self.stats = bridge.stats
        #: XADD commands written or to write, not yet answered, oldest first
        self.pending: deque[bytes] = deque()
        self.pending_bytes = 0
        self.written = 0  # of ``pending``, from the left, written on the current connection
        self._ever = 0  # of ``pending``, from the left, written on some connection
        self.conn: Any = None  # the bridge's writing connection while it is up
        self._skip = 0  # replies to the connection's set-up commands (AUTH, SELECT) to pass
        self._scheduled = False
        self._seq = itertools.count(1)
        #: origin node -> the last number delivered from it
        self.seen: dict[bytes, int] = {}
        self.last_id = b""  # of the last entry read; empty until the reader started
        self._reader: asyncio.Task[None] | None = None
        self._client: Any = None  # the reader's redis-py client
        self._held = 0  # queues (and the node's memory limit) the reader waits for
        self._go = asyncio.Event()
        self._dropped_logged = 0.0
        self._retry_at = 0.0  # (monotonic) no writing before, after a "not now" reply

    # -- the publishing side ----------------------------------------------------------------------
    def stamp(self, msg: Any) -> int:
        """A QoS 1/2 message's identity: (this node, its next number), dense per node."""
        seq = next(self._seq)
        msg.origin = (self.bridge.node, seq)
        return seq

    def add(self, msg: Any) -> None:
        origin = msg.origin
        seq = origin[1] if origin is not None and origin[0] == self.bridge.node else self.stamp(msg)
        entry = encode_envelope(self.bridge.node, seq, msg)
        cmd = _command(
            b"XADD",
            self.key,
            b"MAXLEN",
            b"~",
            self._maxlen,
            b"*",
            b"t",
            msg.topic.encode(),
            b"m",
            entry,
        )
        if self.pending_bytes + len(cmd) > self.buffer_bytes:
            # Redis away too long: the buffer is full; this message is lost, counted
            self.stats["stream_dropped"] += 1
            now = time.monotonic()
            if now - self._dropped_logged > 10:
                self._dropped_logged = now
                log.warning(
                    "Redis stream buffer full (%d bytes waiting for Redis): QoS 1/2 messages "
                    "to other nodes are dropped, counted in stream_dropped",
                    self.pending_bytes,
                )
            return
        self.pending.append(cmd)
        self.pending_bytes += len(cmd)
        self.stats["stream_added"] += 1
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled and self.conn is not None:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._write)

    def _write(self) -> None:
        """Write what is not written yet, once per loop turn (pipelined), unless Redis is not
        reading what was written (then the rest waits here, within the buffer's bound)."""
        self._scheduled = False
        conn = self.conn
        if conn is None or conn.transport is None or conn.transport.is_closing():
            return
        if conn.transport.get_write_buffer_size() > MAX_UNSENT:
            return  # written again as replies come (on_reply)
        n = len(self.pending)
        if self.written < n:
            conn.transport.write(b"".join(itertools.islice(self.pending, self.written, n)))
            self.written = n
            if n > self._ever:
                self._ever = n

    def on_reply(self, reply: Any) -> None:
        if self._skip:
            self._skip -= 1  # AUTH / SELECT: the bridge's PING on its own connection checks them
            return
        if not self.pending or not self.written:
            return
        if isinstance(reply, hiredis.ReplyError):
            text = str(reply)
            if text.startswith(("MOVED", "ASK")):
                # A Cluster moved the stream's slot: kept, written again to its new shard once
                # the bridge read the slot map again (mqttd.redis.cluster)
                redirected = getattr(self.bridge, "_redirected", None)
                if redirected is not None:
                    redirected(text)
                return
            if text.startswith(RETRY_ERRORS):
                # Not now (a Cluster failing while a shard is away, a Redis loading its data):
                # kept; the connection is dropped so that everything unanswered is written
                # again, in order, RETRY_AFTER s after the bridge is connected again. (An entry
                # after this one that Redis took meanwhile comes twice: removed by number)
                self._retry_at = time.monotonic() + RETRY_AFTER
                log.info("Redis said %s to a stream entry: writing again shortly", text)
                self.bridge._lost(self.conn, ConnectionError(f"stream entry refused: {text}"))
                return
        cmd = self.pending.popleft()
        self.pending_bytes -= len(cmd)
        self.written -= 1
        if self._ever:
            self._ever -= 1
        if isinstance(reply, hiredis.ReplyError):
            # Redis refused it (out of memory, the key of another type): lost, counted
            self.stats["stream_errors"] += 1
            log.warning("Redis refused a stream entry: %s", reply)
        else:
            self.stats["stream_confirmed"] += 1
        if self.written < len(self.pending) and not self._scheduled:
            self._schedule()

    def connected(self, conn: Any, setup_replies: int) -> None:
        """The bridge (re)connected: everything unanswered is written again, in order."""
        self.conn = conn
        self._skip = setup_replies
        if self.pending:
            # (resent: written before and not answered; the rest were never written)
            self.stats["stream_resent"] += min(self._ever, len(self.pending))
            log.info("writing %d QoS 1/2 messages kept while Redis was away", len(self.pending))
        self.written = 0
        wait = self._retry_at - time.monotonic()
        if wait > 0:
            asyncio.get_running_loop().call_later(wait, self._schedule)
        else:
            self._schedule()

    def lost(self) -> None:
        self.conn = None
        self.written = 0

    # -- the reading side -------------------------------------------------------------------------
    async def start(self) -> None:
        """Read on from where this node's name stopped reading, else from the stream's end as it
        is now (what came before is not this node's)."""
        if not self.last_id:
            client = await self.bridge._client()
            if self.at_key is not None:
                self._resume(await client.get(self.at_key))
            if not self.last_id:
                last = await client.xrevrange(self.key, count=1)
                self.last_id = last[0][0] if last else b"0-0"
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read())

    def position(self) -> bytes:
        """Where reading stands (kept in Redis with the sessions: mqttd.redis.sessions)."""
        latest = itertools.islice(reversed(self.seen.items()), POSITION_ORIGINS)
        seen = {origin.hex(): seq for origin, seq in latest}
        return json.dumps({"id": self.last_id.decode(), "seen": seen}).encode()

    def _resume(self, kept: bytes | None) -> None:
        if kept is None:
            return
        try:
            at = json.loads(kept)
            last_id = at["id"].encode()
            seen = {bytes.fromhex(o): int(seq) for o, seq in reversed(at["seen"].items())}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning(
                "stream position %s unreadable (%s): reading from the end", self.at_key, exc
            )
            return
        self.last_id, self.seen = last_id, seen
        log.info("reading the Redis stream on from %s", last_id.decode())

    def data_lost(self) -> None:
        """Redis came back empty: the stream starts again from nothing."""
        self.last_id = b"0-0"

    async def stop(self, up: bool) -> None:
        """The node stops: what Redis has not confirmed yet gets a second to be (else it is
        lost with the node, counted in stream_dropped), and reading ends."""
        deadline = time.monotonic() + 1.0
        while up and self.pending and self.conn is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self.pending:
            self.stats["stream_dropped"] += len(self.pending)
            log.warning("%d QoS 1/2 messages not confirmed by Redis at stop", len(self.pending))
            self.pending.clear()
            self.pending_bytes = 0
            self.written = self._ever = 0
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except asyncio.CancelledError:
                pass
            self._reader = None
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def _read(self) -> None:
        bridge = self.bridge
        broker = bridge.broker
        while True:
            if not bridge.up:
                await asyncio.sleep(0.05)
                continue
            try:
                if self._client is None:
                    self._client = bridge.new_client()
                reply = await self._client.xread(
                    {self.key: self.last_id}, count=READ_COUNT, block=READ_BLOCK_MS
                )
            except (RedisError, OSError, TimeoutError) as exc:
                log.debug("reading the Redis stream: %s", exc)
                await asyncio.sleep(0.1)
                continue
            for _key, entries in reply or ():
                for entry_id, fields in entries:
                    self.last_id = entry_id
                    self._deliver(fields)
                    flusher = broker.flusher
                    if flusher.pressure or flusher.over:
                        await self._wait(broker)

    async def _wait(self, broker: Any) -> None:
        """Subscribers' queues this entry filled past their limits (or the node's memory limit):
        the stream waits, as a held publisher does (docs/flow-control.md), before the next one;
        Redis keeps the rest."""
        flusher = broker.flusher
        pressure, flusher.pressure = flusher.pressure, []
        self._held += broker.flow.hold(self, pressure)
        if flusher.over:
            broker.flow.hold_node(self)
            self._held += 1
        if self._held:
            self._go.clear()
            try:
                # (every hold ends by a drain, a slow session or its end: mqttd.flow; the
                # timeout only keeps a missed wake-up from stopping the stream for good)
                await asyncio.wait_for(self._go.wait(), 10.0)
            except TimeoutError:
                self._held = 0

    def unhold(self) -> None:
        """A queue it waited for drained (mqttd.flow)."""
        if self._held:
            self._held -= 1
        if not self._held:
            self._go.set()

    def _deliver(self, fields: dict[bytes, bytes]) -> None:
        topic_b, data = fields.get(b"t"), fields.get(b"m")
        env = decode_envelope(data) if topic_b is not None and data is not None else None
        if env is None:
            self.stats["stream_errors"] += 1  # not an entry we wrote
            return
        origin, seq, qos, retain, block, payload = env
        if origin == self.bridge.node:
            return  # ours: local subscribers have it
        last = self.seen.get(origin)
        if last is not None:
            if seq <= last:
                self.stats["stream_duplicates"] += 1  # written again after an outage: had it
                return
            if seq > last + 1:
                # numbers never read here: trimmed (MAXLEN) before we read them, or dropped or
                # refused at their origin (its stream_dropped / stream_errors)
                self.stats["stream_lost"] += seq - last - 1
        elif len(self.seen) >= MAX_ORIGINS:
            del self.seen[next(iter(self.seen))]
        self.seen[origin] = seq
        try:
            topic = topic_b.decode()  # type: ignore[union-attr]
        except UnicodeDecodeError:
            msg = None
        else:
            msg = envelope_message(topic, origin, seq, qos, retain, block, payload)
        if msg is None:
            self.stats["stream_errors"] += 1
            return
        self.stats["stream_received"] += 1
        self.bridge.broker.deliver_remote(msg)
