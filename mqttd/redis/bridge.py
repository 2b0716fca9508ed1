"""Redis pub/sub as the distributed engine: any number of mqttd nodes behave as one broker.

A message entering a node is routed to that node's own subscribers at once, then PUBLISHed to
Redis on the channel ``prefix + topic`` inside a small envelope (``docs/redis.md``). Each node
subscribes once per distinct MQTT filter its clients hold: a filter without wildcards is an exact
channel (SUBSCRIBE), one with ``+``/``#`` a glob pattern (PSUBSCRIBE) that is at least as wide as
the filter; what arrives is routed through the node's own subscription tree, so the result is
exact MQTT matching. Redis sends one copy per matching channel or pattern: a node keeps exactly one
of them (the exact channel's, else the smallest matching pattern's), drops its own messages (no
echo), and counts the gaps in each origin's sequence numbers (pub/sub is at-most-once).

Both Redis connections speak RESP directly, parsed by hiredis: one writes PUBLISH commands
pipelined (many per write, no awaited round trip per message), one reads the subscription stream.
When Redis goes away the node keeps serving its local clients, counts what it could not forward,
and reconnects with backoff, subscribing again to every filter.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import ssl as ssl_module
import time
import zlib
from typing import TYPE_CHECKING, Any

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import RedisError

from mqttd import sessionstate
from mqttd._speedups import match, route
from mqttd.redis.envelope import (
    MAGIC_BATCH,
    MAX_BATCH,
    _retained_message,
    decode_batch,
    decode_envelope,
    encode_envelope,
    envelope_message,
)
from mqttd.redis.keys import _glob_regex, redis_key
from mqttd.redis.resp import _command, _PushResp, _Resp
from mqttd.redis.streams import STREAM_COUNTERS, Streams
from mqttd.redis.url import RedisUnavailable

if TYPE_CHECKING:
    from mqttd.broker import Broker

log = logging.getLogger("mqttd.redis")

#: a batch closes at this many payload bytes (or at MAX_BATCH messages, all its count can say)
MAX_BATCH_BYTES = 256 * 1024

#: bytes of PUBLISH commands allowed to wait for a stalled Redis before we stop forwarding
MAX_PENDING_BYTES = 64 * 1024 * 1024
HEALTH_INTERVAL = 1.0  # seconds between PINGs on the subscriber connection
HEALTH_TIMEOUT = 3.0  # no PONG for this long: Redis is stalled, reconnect
BACKOFF_MAX = 1.0
GROUP_TTL = 15.0  # a node's shared groups count this long after its last announcement
HANDOFF_WAIT = 2.0  # seconds a node waits for another to hand a session over
_DEL_IF_EQUAL = (
    b"if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end"
)
#: topics whose sequence numbers a node keeps before it forgets the oldest
MAX_TRACKED_TOPICS = route.MAX_TRACKED_TOPICS


class RedisBridge:
    """Joins one broker to the others through Redis pub/sub.

    The transport for one Redis server; ``mqttd.redis.cluster`` replaces it for a Redis Cluster
    and keeps everything above it. ``mqttd.redis.open_bridge`` picks the class from the URL."""

    #: the broker has other nodes to tell (``mqttd.peers.Peers``; $SYS and health read it)
    remote = True

    def __init__(self, broker: Broker, url: str, prefix: str = "") -> None:
        self.broker = broker
        self.url = url
        self.params = parse_url(url)
        self.prefix = prefix
        self.prefix_b = prefix.encode()
        self.node = os.urandom(8)
        #: Redis channel / glob -> MQTT filters of this node that use it
        self.channels: dict[bytes, set[str]] = {}
        self.patterns: dict[bytes, set[str]] = {}
        self._regex: dict[bytes, re.Pattern[bytes]] = {}
        self._canonical: dict[bytes, bytes | None] = {}
        #: channel or pattern -> resolved when Redis confirms our (P)SUBSCRIBE of it
        self._confirming: dict[bytes, asyncio.Future[None]] = {}
        #: channel -> its MQTT topic, for channels seen and found valid (read by PushReader)
        self._topics: dict[bytes, str] = {}
        self.pub: _Resp | None = None
        self.sub: _Resp | None = None
        self.up = False
        #: the next pipelined write: messages numbered and framed (compiled), and commands
        self.out = route.Outbox(self.node, self.prefix_b, MAX_BATCH, MAX_BATCH_BYTES)
        #: our identity for a message entering here (mqttd.peers.Peers.stamp): the Outbox's
        self.stamp = self.out.stamp  # type: ignore[method-assign]
        self._flush_scheduled = False
        self._in_flight = 0  # PUBLISH commands sent, not yet answered
        self._last_pong = 0.0
        self._supervisor: asyncio.Task | None = None
        self._wake = asyncio.Event()
        #: last sequence number seen per (origin node, topic) (ours per topic: out.topic_seq)
        self.last_seq: dict[tuple[bytes, str], int] = {}
        #: shared groups with members on other nodes: node id -> (groups, when last announced)
        self.remote_groups: dict[bytes, tuple[set[tuple[str, str]], float]] = {}
        self._announced = 0.0
        self._cmd: Any = None  # redis-py client for the few request/response calls
        #: the channel nodes tell each other about client ids connecting (takeover)
        self.control = self.prefix_b + b"$mqttd/control"
        #: the hash of retained messages: topic -> envelope + payload; and the sorted set of
        #: their topics, where a filter finds its topics by prefix (ZRANGEBYLEX)
        self.retained_key = self.prefix_b + b"$mqttd/retained"
        self.retained_index = self.prefix_b + b"$mqttd/retained-topics"
        self.channels[self.control] = set()
        #: persistent sessions and wills kept in Redis for when this node dies (sessions.py)
        self.sessions: Any = None
        #: the token this node found in the epoch key: gone after a reconnect means Redis
        #: restarted empty
        self._epoch: bytes | None = None
        self._ping_sent = 0.0
        #: seconds of the last PING..PONG on the subscriber connection
        self.rtt = 0.0
        self.stats = {
            "forwarded": 0,
            "not_forwarded": 0,
            "data_lost": 0,
            "received": 0,
            "raw_received": 0,
            "lost": 0,
            "reconnects": 0,
            "errors": 0,
        }
        #: QoS 1/2 to the other nodes through a Redis stream (mqttd.redis.streams), unless
        #: redis_streams is off; its writing connection
        self.streams: Streams | None = None
        self.swriter: _Resp | None = None
        cfg = broker.config
        if cfg.redis_streams:
            self.streams = Streams(
                self, cfg.redis_stream_maxlen, cfg.redis_stream_buffer, cfg.redis_node_name
            )
            self.stamp = self._stamp  # type: ignore[method-assign]
            for key in STREAM_COUNTERS:
                self.stats[key] = 0

    # -- where ------------------------------------------------------------------------------------
    @property
    def address(self) -> str:
        p = self.params
        if "path" in p:
            return p["path"]
        return f"{p.get('host', 'localhost')}:{p.get('port', 6379)}"

    async def _open(self, on_reply: Any, push: bool = False) -> _Resp:
        loop = asyncio.get_running_loop()
        p = self.params

        def factory() -> _Resp:
            if push:
                return _PushResp(self._push_reader(), self._lost, self.broker)
            return _Resp(on_reply, self._lost)

        if "path" in p:
            _, proto = await loop.create_unix_connection(factory, p["path"])
        else:
            ctx = None
            if p.get("connection_class") is not None and "SSL" in p["connection_class"].__name__:
                ctx = ssl_module.create_default_context()
            _, proto = await loop.create_connection(
                factory, p.get("host", "localhost"), p.get("port", 6379), ssl=ctx
            )
        self._authenticate(proto)
        if p.get("db"):
            # Pub/sub ignores it, but retained messages and session markers live in this db
            proto.transport.write(_command(b"SELECT", str(p["db"]).encode()))
        return proto

    def _authenticate(self, proto: _Resp) -> None:
        """AUTH first on a new connection, when the URL has a password (its answer is checked by
        the PING that follows, see _connect)."""
        p = self.params
        if p.get("password"):
            args = [b"AUTH"]
            if p.get("username"):
                args.append(p["username"].encode())
            args.append(p["password"].encode())
            proto.transport.write(_command(*args))

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect, or raise RedisUnavailable with one clear line."""
        try:
            await asyncio.wait_for(self._connect(), 5.0)
        except (TimeoutError, OSError, ConnectionError) as exc:
            for conn in self._conns():  # what did open is not left running
                if conn is not None and conn.transport is not None:
                    conn.transport.close()
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            if isinstance(exc, asyncio.TimeoutError):
                reason = "no answer within 5 s"
            raise RedisUnavailable(
                f"Failed to connect to Redis at {self.address}: {reason}"
            ) from None
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())
        await self._check_epoch()
        from mqttd.redis.sessions import RedisSessions

        self.sessions = RedisSessions(self, self.broker.config.persistence_interval)
        await self.sessions.start()
        if self.streams is not None:
            await self.streams.start()

    async def _check_epoch(self) -> None:
        """Redis restarted without its data (no persistence, or a new server): every node's
        retained messages, session markers and kept sessions are gone from it. Said in the log
        and in metrics (``data_lost``), and this node writes its own again."""
        key = self.prefix_b + b"$mqttd/epoch"
        try:
            client = await self._client()
            await client.set(key, os.urandom(8).hex(), nx=True)
            epoch = await client.get(key)
        except (OSError, RedisError, TimeoutError) as exc:
            log.warning("could not read the epoch key from Redis: %s", exc)
            return
        if self._epoch is not None and epoch != self._epoch:
            self.stats["data_lost"] += 1
            if self.streams is not None:
                self.streams.data_lost()
            log.warning(
                "Redis at %s came back empty (restarted without its data): retained messages "
                "and sessions kept there by other nodes are lost; this node writes its own again",
                self.address,
            )
            self._write_back()
        self._epoch = epoch

    def _write_back(self) -> None:
        """After Redis lost its data: this node's retained messages and sessions, again."""
        broker = self.broker
        index = getattr(broker.storage, "index", None)
        if index is not None:
            for msg in index.match("#"):
                origin = msg.origin
                if origin is None or origin[0] == self.node:
                    self.store_retained(msg)
        for client_id, session in broker.sessions.items():
            if session.expiry_interval:
                self.mark_session(client_id)
        if self.sessions is not None:
            self.sessions.changed.forget()

    async def _connect(self) -> None:
        # Check the answers: a wrong password fails here (with Redis's own words), not later
        self._auth_checked = asyncio.get_running_loop().create_future()
        self.pub = await self._open(self._on_pub_reply)
        self.sub = await self._open(self._on_push, push=True)
        if self.streams is not None:
            self.swriter = await self._open(self.streams.on_reply)
        self.pub.transport.write(_command(b"PING"))
        await asyncio.wait_for(self._auth_checked, 5.0)
        if self.streams is not None and self.swriter is not None:
            # (only now: a Redis that does not answer is not sent the whole buffer again at
            # each attempt)
            p = self.params
            self.streams.connected(self.swriter, bool(p.get("password")) + bool(p.get("db")))
        for key in self.channels:
            self.sub.transport.write(_command(b"SUBSCRIBE", key))
        for key in self.patterns:
            self.sub.transport.write(_command(b"PSUBSCRIBE", key))
        self._in_flight = 0
        self._last_pong = time.monotonic()
        self.up = True
        # Learn the other nodes' shared groups, tell them ours
        self.pub.transport.write(_command(b"PUBLISH", self.control, b"hello\x00" + self.node))
        self._in_flight += 1
        self.announce_groups()
        log.info(
            "connected to Redis at %s (%d channels, %d patterns)",
            self.address,
            len(self.channels),
            len(self.patterns),
        )

    async def stop(self) -> None:
        self._confirmed()
        if self.streams is not None:
            await self.streams.stop(self.up)
        if self.sessions is not None:
            sessions, self.sessions = self.sessions, None
            await sessions.stop()
        if self._cmd is not None:
            await self._cmd.aclose()
            self._cmd = None
        if self._supervisor is not None:
            self._supervisor.cancel()
            self._supervisor = None
        self._flush()
        self.up = False
        for conn in self._conns():
            if conn is not None and conn.transport is not None:
                conn.transport.close()

    def _conns(self) -> list[_Resp | None]:
        """Every Redis connection of the transport (publishing and subscribing)."""
        return [self.pub, self.swriter, self.sub]  # (the subscription last: _supervise)

    def _send(self, key: bytes, cmd: bytes, replies: int = 1) -> None:
        """Write commands about ``key`` now (unpipelined control traffic); ``replies`` answers
        are expected."""
        self.pub.transport.write(cmd)  # type: ignore[union-attr]
        self._in_flight += replies

    def _ping(self) -> None:
        self._ping_sent = time.monotonic()
        self.sub.transport.write(_command(b"PING"))  # type: ignore[union-attr]

    def _stalled(self) -> bool:
        # A PONG queued behind a backlog of messages we are still reading is late, but Redis is
        # not stalled: any data counts as a sign of life
        if self.sub is not None and getattr(self.sub, "held", 0):
            return False  # not read by our choice (a full local queue): its PONG waits
        last = max(self._last_pong, self.sub.last_rx if self.sub is not None else 0.0)
        return time.monotonic() - last > HEALTH_TIMEOUT

    def _lost(self, conn: _Resp, exc: Exception | None) -> None:
        if conn not in self._conns():
            return
        self._confirmed()  # nobody waits for a subscription on a connection that is gone
        waiter = getattr(self, "_auth_checked", None)
        if waiter is not None and not waiter.done():
            # A connection reset while connecting: fail this attempt now, not after its timeout
            waiter.set_exception(ConnectionError(f"connection lost: {exc or 'closed'}"))
        if self.streams is not None:
            self.streams.lost()  # what it did not confirm is written again once connected
        if self.up:
            log.warning("lost the connection to Redis at %s: %s", self.address, exc or "closed")
            self.up = False
            if conn is not self.sub and self._in_flight:
                # Written but never confirmed: count them as not forwarded
                self.stats["not_forwarded"] += self._in_flight
                self._in_flight = 0
            # Both go: the one that failed may still be open (a stalled Redis)
            for c in self._conns():
                if c is not None and c.transport is not None and not c.transport.is_closing():
                    c.transport.abort()
        self._wake.set()

    async def _supervise(self) -> None:
        """Health checks while up; reconnection with backoff while down."""
        delay = 0.05
        while True:
            if self.up:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), HEALTH_INTERVAL)
                except TimeoutError:
                    pass
                if not self.up:
                    continue
                if self._stalled():
                    log.warning("Redis at %s does not answer: reconnecting", self.address)
                    self._lost(self._conns()[-1], TimeoutError("no PONG"))  # type: ignore[arg-type]
                    continue
                self._ping()
                if time.monotonic() - self._announced > GROUP_TTL / 3:
                    self.announce_groups()
                delay = 0.05
                continue
            try:
                await asyncio.wait_for(self._connect(), 3.0)
                self.stats["reconnects"] += 1
                delay = 0.05
                await self._check_epoch()
            except (TimeoutError, OSError, ConnectionError) as exc:
                log.debug("Redis at %s still unreachable: %s", self.address, exc)
                for conn in self._conns():
                    if conn is not None and conn.transport is not None:
                        conn.transport.close()
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)

    # -- replies ----------------------------------------------------------------------------------
    def _connecting_failed(self, reply: Any) -> bool:
        """An error reply while connecting fails the attempt (with Redis's words): True."""
        waiter = getattr(self, "_auth_checked", None)
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError(str(reply)))
            return True
        return False

    def _on_pub_reply(self, reply: Any) -> None:
        if isinstance(reply, hiredis.ReplyError):
            if self._connecting_failed(reply):
                return
            self.stats["errors"] += 1
            # while connecting, the failure is the connection attempt's (reported with it)
            (log.warning if self.up else log.debug)("Redis error: %s", reply)
        if reply == b"PONG" or reply == "PONG":
            waiter = self._auth_checked
            if not waiter.done():
                waiter.set_result(None)
            return
        if self._in_flight:
            self._in_flight -= 1

    def _on_push(self, reply: Any) -> None:
        if isinstance(reply, hiredis.ReplyError):
            if self._connecting_failed(reply):
                return
            self.stats["errors"] += 1
            (log.warning if self.up else log.debug)("Redis error on the subscription: %s", reply)
            return
        kind = reply[0]
        if kind == b"message":
            self._on_message(reply[1], reply[2], None)
        elif kind == b"pmessage":
            self._on_message(reply[2], reply[3], reply[1])
        elif kind == b"pong" or reply == b"PONG":
            self._last_pong = time.monotonic()
            if self._ping_sent:
                self.rtt = self._last_pong - self._ping_sent
        elif kind == b"subscribe" or kind == b"psubscribe":
            self._confirmed(reply[1])

    def _push_reader(self) -> Any:
        return route.PushReader(
            self._on_push,
            self.node,
            self.control,
            self.channels,
            self._canonical,
            self._topics,
            self.last_seq,
            self.stats,
            self.broker.tree,
        )

    def _canonical_pattern(self, channel: bytes) -> bytes | None:
        """The one of our patterns whose copy of a message on ``channel`` we keep."""
        try:
            return self._canonical[channel]
        except KeyError:
            pass
        best = None
        for pattern, regex in self._regex.items():
            if regex.match(channel) and (best is None or pattern < best):
                best = pattern
        if len(self._canonical) > 100_000:
            self._canonical.clear()
        self._canonical[channel] = best
        return best

    def _on_message(self, channel: bytes, data: bytes, pattern: bytes | None) -> None:
        if channel == self.control and pattern is None:
            self._on_control(data)
            return
        # One copy per matching channel or pattern arrives; keep exactly one of them.
        if pattern is not None and (
            channel in self.channels or self._canonical_pattern(channel) != pattern
        ):
            return
        if not channel.startswith(self.prefix_b):
            return
        try:
            topic = channel[len(self.prefix_b) :].decode()
        except UnicodeDecodeError:
            return
        if not match.validate_topic(topic):
            return
        if len(self._topics) < MAX_TRACKED_TOPICS:
            self._topics[channel] = topic  # the fast path (route.PushReader) knows it now
        self._receive(topic, data)

    def _receive(self, topic: str, data: bytes) -> None:
        """One message of ``topic`` from Redis (the copy kept): to this node's subscribers."""
        if data[:5] == MAGIC_BATCH:
            batch = decode_batch(data)
            if batch is None:
                self.stats["errors"] += 1  # ours by its magic, but unreadable: dropped
                return
            origin, first, items = batch
            for i, (qos, payload) in enumerate(items):
                self._receive_one(topic, origin, first + i, qos, False, b"\x00", payload)
            return
        env = decode_envelope(data)
        if env is None:
            # Not from mqttd (redis-cli PUBLISH, another program): a QoS 0 message
            self.stats["raw_received"] += 1
            msg = route.Message(topic, data)
        else:
            self._receive_one(topic, *env)
            return
        self.broker.deliver_remote(msg)

    def _receive_one(
        self,
        topic: str,
        origin: bytes,
        seq: int,
        qos: int,
        retain: bool,
        block: bytes,
        payload: bytes,
    ) -> None:
        if origin == self.node:
            return  # our own: local subscribers already have it
        self.stats["received"] += 1
        route.track_seq(self.last_seq, self.stats, origin, topic, seq, seq)
        msg = envelope_message(topic, origin, seq, qos, retain, block, payload)
        if msg is None:
            # Looked like an envelope but is not one we can read: dropped, counted
            self.stats["errors"] += 1
            return
        self.broker.deliver_remote(msg)

    # -- retained messages ------------------------------------------------------------------------
    def store_retained(self, msg: Any) -> None:
        """Keep (or clear) the retained message of a topic in Redis, for nodes that start later.
        Written without waiting, pipelined with the PUBLISH commands."""
        if not self.up or self.pub is None:
            return
        topic = msg.topic.encode()
        if msg.payload:
            cmd = _command(
                b"HSET", self.retained_key, topic, encode_envelope(self.node, 0, msg)
            ) + _command(b"ZADD", self.retained_index, b"0", topic)
        else:
            cmd = _command(b"HDEL", self.retained_key, topic) + _command(
                b"ZREM", self.retained_index, topic
            )
        self.out.add_command(cmd)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def fetch_retained(self, filt: str) -> list[Any]:
        """The retained messages kept in Redis whose topics match ``filt``: the topics come from
        the index by their literal prefix, not from a scan of the keyspace."""
        client = await self._client()
        levels = filt.split("/")
        literal: list[str] = []
        for level in levels:
            if level in ("+", "#"):
                break
            literal.append(level)
        if len(literal) == len(levels):
            topics = [filt.encode()]
        else:
            prefix = "/".join(literal).encode()
            if not literal:
                topics = await client.zrange(self.retained_index, 0, -1)
            else:
                # UTF-8 never has the byte 0xFF: "[p/" .. "[p/\xff" is every topic under p/
                topics = await client.zrangebylex(
                    self.retained_index, b"[" + prefix + b"/", b"[" + prefix + b"/\xff"
                )
                if levels[len(literal)] == "#":
                    topics.append(prefix)  # "a/#" matches "a" too [MQTT-4.7.1-2]
            topics = [t for t in topics if match.topic_matches(filt, t.decode(errors="replace"))]
        if not topics:
            return []
        values = await client.hmget(self.retained_key, topics)
        out = []
        for topic_b, data in zip(topics, values, strict=True):
            msg = _retained_message(topic_b, data) if data is not None else None
            if msg is not None:
                out.append(msg)
        return out

    async def load_retained(self) -> int:
        """Read the retained messages kept in Redis into this node's store, at start."""
        entries = await (await self._client()).hgetall(self.retained_key)
        count = 0
        for topic_b, data in entries.items():
            msg = _retained_message(topic_b, data)
            if msg is not None:
                self.broker.storage.retain(msg)
                count += 1
        return count

    # -- client ids and sessions across nodes --------------------------------------------------------
    def _session_key(self, client_id: str) -> bytes:
        return self.prefix_b + b"$mqttd/session/" + client_id.encode()

    def _handoff_key(self, client_id: str) -> bytes:
        return self.prefix_b + b"$mqttd/handoff/" + client_id.encode()

    async def _client(self) -> Any:
        if self._cmd is None:
            self._cmd = self.new_client()
        return self._cmd

    def new_client(self) -> Any:
        """A redis-py client of its own (the stream's reader blocks one in XREAD)."""
        import redis.asyncio as aioredis

        return aioredis.from_url(self.url, socket_connect_timeout=3, socket_timeout=5)

    async def acquire_session(self, client_id: str, clean_start: bool) -> dict | None:
        """Tell the other nodes ``client_id`` connected here: whoever holds its connection closes
        it [MQTT-3.1.4-3], and whoever holds its session ends it, handing it over first when the
        client resumes it (Clean Start 0). Returns the handed-over session, or None."""
        if not self.up or self.pub is None:
            return None
        holder = None
        if not clean_start:
            try:
                holder = await (await self._client()).get(self._session_key(client_id))
            except (OSError, RedisError, TimeoutError) as exc:
                log.warning("could not look up the session of %s in Redis: %s", client_id, exc)
        want = holder is not None and holder != self.node
        if want and self.sessions is not None:
            # The client resumes its session here: the will of its connection on the holder is
            # not sent [MQTT-3.1.3-9]. This node removes it from the holder's wills before the
            # holder hears of the takeover (one connection: Redis runs the two in this order),
            # so the holder dying before it removes it itself leaves no stale will for the
            # survivors to publish (tests/redis/test_dead_node.py).
            wills = self.sessions.wills_key(holder)
            self._send(wills, _command(b"HDEL", wills, client_id.encode()))
        data = b"connect\x00" + self.node + (b"\x01" if want else b"\x00") + client_id.encode()
        self._send(self.control, _command(self._publish, self.control, data))
        if not want:
            return None
        if self.sessions is not None:
            try:
                dead = not await self.sessions.alive(holder)
            except (OSError, RedisError, TimeoutError) as exc:
                log.warning("could not ask Redis whether node %s lives: %s", holder.hex(), exc)
                dead = False
            if dead:
                # Its node is dead: the session as that node last wrote it (sessions.py)
                return await self._kept_session(client_id, f"node {holder.hex()} is gone")
        try:
            got = await (await self._client()).blpop([self._handoff_key(client_id)], HANDOFF_WAIT)
        except (OSError, RedisError, TimeoutError) as exc:
            log.warning("no session handed over for %s: %s", client_id, exc)
            return None
        if got is None:
            # Dead and not noticed yet (sessions.NODE_TTL), or stuck: what it last wrote
            return await self._kept_session(
                client_id, f"node {holder.hex()} did not hand it over within {HANDOFF_WAIT} s"
            )
        return sessionstate.decode(got[1])

    async def _kept_session(self, client_id: str, why: str) -> dict | None:
        """The session of ``client_id`` as its node last wrote it to Redis, or None."""
        if self.sessions is None:
            log.warning("session of %s not taken over: %s", client_id, why)
            return None
        try:
            kept = await (await self._client()).get(self.sessions.state_key(client_id))
            if kept is None:
                log.warning("session of %s lost: %s and it kept none in Redis", client_id, why)
                return None
            state = sessionstate.decode(kept)
        except (OSError, RedisError, TimeoutError, ValueError) as exc:
            log.warning(
                "session of %s lost: %s and its kept one is unreadable: %s", client_id, why, exc
            )
            return None
        log.info("session of %s taken from Redis: %s", client_id, why)
        return state

    def mark_session(self, client_id: str) -> None:
        """This node holds the persistent session of ``client_id`` now."""
        if self.up and self.pub is not None:
            key = self._session_key(client_id)
            self._send(key, _command(b"SET", key, self.node))

    def forget_session(self, client_id: str) -> None:
        """The session ended here: drop the marker, unless another node holds it by now."""
        if self.up and self.pub is not None:
            key = self._session_key(client_id)
            self._send(key, _command(b"EVAL", _DEL_IF_EQUAL, b"1", key, self.node))

    def will_armed(self, client_id: str, will: Any, delay: int) -> None:
        if self.sessions is not None:
            self.sessions.will_armed(client_id, will, delay)

    def will_gone(self, client_id: str) -> None:
        if self.sessions is not None:
            self.sessions.will_gone(client_id)

    def _hand_over(self, session: Any) -> None:
        key = self._handoff_key(session.client_id)
        self._send(
            key,
            _command(b"RPUSH", key, sessionstate.encode(sessionstate.dump(session)))
            + _command(b"EXPIRE", key, b"30"),
            2,
        )

    def restore_session(self, session: Any, state: dict) -> None:
        """Rebuild a session another node handed over: subscriptions, queue, messages in flight."""
        sessionstate.restore(self.broker, session, state)

    def _on_connect_elsewhere(self, client_id: str, want: bool) -> None:
        broker = self.broker
        session = broker.sessions.get(client_id)
        if session is None:
            return
        if session.connection is not None:
            log.info("client %s connected to another node: closing it here", client_id)
            if session.connection.will_shared:
                # Decided here (published or cancelled): not a will for survivors any more
                session.connection.will_shared = False
                self.will_gone(client_id)
            # ``want``: the new node carries this session on, which cancels an MQTT 5 will
            session.connection.taken_over(want)
            session.connection = None
        # Its new node has it now: no delayed will from here [MQTT-3.1.3-9]
        broker.cancel_will(session)
        if want and self.up and self.pub is not None:
            self._hand_over(session)
        broker.end_session(session, moved=True)

    # -- shared subscriptions across nodes ----------------------------------------------------------
    def announce_groups(self) -> None:
        """Tell the other nodes which shared groups have members here (also every few seconds,
        so that a node that died drops out of the choice)."""
        if not self.up or self.pub is None:
            return
        groups = sorted([name, filt] for name, filt in self.broker.shared)
        data = b"share\x00" + self.node + json.dumps(groups).encode()
        self._send(self.control, _command(self._publish, self.control, data))
        self._announced = time.monotonic()

    #: the command that publishes (the cluster transport uses SPUBLISH)
    _publish = b"PUBLISH"

    def is_mine(self, name: str, filt: str, msg: Any) -> bool:
        """Whether this node delivers ``msg`` to its member of the group: every node with
        members computes the same choice from the message's identity, so each message goes to
        one node of the cluster, then to one member there."""
        key = (name, filt)
        now = time.monotonic()
        nodes = [self.node]
        for node, (groups, seen) in self.remote_groups.items():
            if key in groups and now - seen < GROUP_TTL:
                nodes.append(node)
        if len(nodes) == 1:
            return True
        nodes.sort()
        if msg.origin is not None:
            ident = msg.origin[0] + msg.origin[1].to_bytes(8, "big") + msg.topic.encode()
        else:
            ident = msg.topic.encode() + msg.payload  # a raw message from another program
        index = zlib.crc32(ident + name.encode() + b"\x00" + filt.encode()) % len(nodes)
        return nodes[index] == self.node

    def _on_control(self, data: bytes) -> None:
        kind, _, rest = data.partition(b"\x00")
        if len(rest) < 8 or rest[:8] == self.node:
            return
        if kind == b"share":
            try:
                groups = {(g[0], g[1]) for g in json.loads(rest[8:])}
            except (ValueError, TypeError, IndexError):
                return
            self.remote_groups[rest[:8]] = (groups, time.monotonic())
            return
        if kind == b"hello":
            self.announce_groups()  # a node (re)joined: tell it what we have
            return
        if kind == b"connect" and len(rest) > 8:
            self._on_connect_elsewhere(rest[9:].decode(errors="replace"), rest[8:9] == b"\x01")

    # -- publishing -------------------------------------------------------------------------------
    def forward(self, msg: Any) -> None:
        """PUBLISH ``msg`` to the other nodes, pipelined with the rest of this loop iteration.

        Consecutive messages of one topic (a client publishing in a burst) go in one PUBLISH, a
        batch (``MAGIC_BATCH``): Redis then does one command, and the receiving nodes one push,
        for all of them. Order is kept: only a run of the same topic with nothing in between is
        batched. A message with properties or the retain flag goes alone (route.Outbox).

        QoS 1 and 2 go to the stream instead (mqttd.redis.streams): kept until Redis confirms
        them, whether Redis is up or not."""
        if msg.qos and self.streams is not None:
            self.streams.add(msg)
            return
        if not self.up:
            self.stats["not_forwarded"] += 1
            return
        self.out.add(msg)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _stamp(self, msg: Any) -> int:
        """A message's identity across nodes: numbered per topic on pub/sub (QoS 0), per node
        on the stream (QoS 1/2), so that neither sees gaps that are the other's."""
        if msg.qos:
            return self.streams.stamp(msg)  # type: ignore[union-attr]
        return self.out.stamp(msg)  # type: ignore[no-any-return]

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not len(self.out):
            return
        pub = self.pub
        if (
            not self.up
            or pub is None
            or pub.transport is None
            # Redis is not reading: do not grow without bound
            or pub.transport.get_write_buffer_size() > MAX_PENDING_BYTES
        ):
            self.stats["not_forwarded"] += self.out.drop()  # (not framed for nothing)
            return
        data, commands, publishes = self.out.take()
        pub.transport.write(data)
        self._in_flight += commands
        self.stats["forwarded"] += publishes

    # -- subscriptions ----------------------------------------------------------------------------
    def filter_added(self, filt: str) -> None:
        """The first local subscriber of ``filt``: subscribe its channel or pattern once."""
        is_pattern, key = redis_key(self.prefix_b, filt)
        table = self.patterns if is_pattern else self.channels
        users = table.get(key)
        if users is None:
            table[key] = {filt}
            if is_pattern:
                self._regex[key] = _glob_regex(key)
            self._canonical.clear()
            if self.up and self.sub is not None:
                self.sub.transport.write(
                    _command(b"PSUBSCRIBE" if is_pattern else b"SUBSCRIBE", key)
                )
                if key not in self._confirming:
                    self._confirming[key] = asyncio.get_running_loop().create_future()
        else:
            users.add(filt)

    def route_ready(self, filt: str) -> asyncio.Future[None] | None:
        """While Redis has not confirmed the subscription that serves ``filt`` (a ``$share``
        prefix included), a future that completes when it does; else None."""
        shared = match.parse_shared(filt)
        _, key = redis_key(self.prefix_b, filt if shared is None else shared[1])
        fut = self._confirming.get(key)
        return fut if fut is not None and not fut.done() else None

    def _confirmed(self, key: bytes | None = None) -> None:
        """Redis confirmed the subscription of ``key`` (None: give up waiting on all of them)."""
        if key is None:
            futs, self._confirming = list(self._confirming.values()), {}
        else:
            futs = [self._confirming.pop(key, None)]
        for fut in futs:
            if fut is not None and not fut.done():
                fut.set_result(None)

    def filter_removed(self, filt: str) -> None:
        """The last local subscriber of ``filt`` left: unsubscribe when no filter needs it."""
        is_pattern, key = redis_key(self.prefix_b, filt)
        table = self.patterns if is_pattern else self.channels
        users = table.get(key)
        if users is None:
            return
        users.discard(filt)
        if not users and key != self.control:
            del table[key]
            self._regex.pop(key, None)
            self._canonical.clear()
            if self.up and self.sub is not None:
                self.sub.transport.write(
                    _command(b"PUNSUBSCRIBE" if is_pattern else b"UNSUBSCRIBE", key)
                )

    def health(self) -> dict[str, Any]:
        return {
            "redis": "up" if self.up else "down",
            "redis_address": self.address,
            "channels": len(self.channels),
            "patterns": len(self.patterns),
            "rtt": self.rtt,
            **self.stats,
            **(self.sessions.stats if self.sessions is not None else {}),
        }
