"""The Redis Cluster transport of the bridge: sharded pub/sub (SPUBLISH / SSUBSCRIBE, Redis 7+).

With ``--redis-url redis+cluster://host:port`` (one seed node; ``rediss+cluster://`` for TLS) a
node reads the slot map (CLUSTER SLOTS) and keeps two RESP connections per primary: one for
pipelined SPUBLISH and other writes, one for SSUBSCRIBE. A message's traffic goes to the one shard
that owns its channel's slot, instead of being broadcast over the cluster bus to every shard.

Sharded pub/sub has no pattern form, so wildcard filters are mapped like this (``docs/redis.md``):

- an exact filter ``a/b`` is ``SSUBSCRIBE prefix+a/b`` on the shard that owns that channel;
- every node has an inbox channel ``prefix$mqttd/node/<node id in hex>`` (SSUBSCRIBEd on its shard)
  and announces its wildcard filters on the control channel ``prefix$mqttd/control`` (on change
  and every few seconds; silent nodes are forgotten after GROUP_TTL);
- a publishing node SPUBLISHes the message on its topic channel (exact subscribers anywhere, and
  redis-cli users) and, once per node whose announced wildcard filters match the topic (MQTT
  matching, the ``$`` rule included), to that node's inbox as ``topic NUL envelope``;
- a node that holds the topic as an exact filter as well drops the inbox copy: the topic channel
  brings it. Each node keeps one copy; its own subscription tree does the exact matching.

Everything above the transport (envelope, sequence numbers, loss counts, takeover, session
handoff, shared groups, retained messages) is RedisBridge's. A redirection (MOVED / ASK, or a
shard unsubscribing us because its slot moved) refreshes the slot map and reconnects; a shard
going away is Redis going away: the node serves locally, counts, and reconnects with backoff.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import ssl as ssl_module
import time
from typing import TYPE_CHECKING, Any

import hiredis
from redis.cluster import key_slot

from mqttd._speedups import match
from mqttd.redis.bridge import GROUP_TTL, HEALTH_TIMEOUT, MAX_PENDING_BYTES, RedisBridge
from mqttd.redis.envelope import encode_envelope
from mqttd.redis.resp import _command, _Resp

if TYPE_CHECKING:
    from mqttd.broker import Broker

log = logging.getLogger("mqttd.redis")

SLOTS = 16384
Address = tuple[str, int]


def _is_wildcard(filt: str) -> bool:
    return any(level in ("+", "#") for level in filt.split("/"))


class RedisClusterBridge(RedisBridge):
    """Joins one broker to the others through a Redis Cluster's sharded pub/sub."""

    _publish = b"SPUBLISH"

    def __init__(self, broker: Broker, url: str, prefix: str = "") -> None:
        scheme, rest = url.split("://", 1)
        self.tls = scheme.lower().startswith("rediss")
        # redis-py and parse_url know the plain form; the scheme only chose this class
        super().__init__(broker, ("rediss" if self.tls else "redis") + "://" + rest, prefix)
        self.cluster_url = url
        #: slot -> address of the primary serving it
        self.slots: list[Address | None] = [None] * SLOTS
        self.pubs: dict[Address, _Resp] = {}
        self.subs: dict[Address, _Resp] = {}
        self.pongs: dict[Address, float] = {}
        self.outboxes: dict[Address, list[bytes]] = {}
        self._box_publishes = 0
        self._waiting_pongs: set[Address] = set()
        self._unsubscribing: dict[bytes, int] = {}
        #: this node's wildcard filters (announced) and the other nodes' (node -> filters, seen)
        self.wildcards: set[str] = set()
        self.remote_filters: dict[bytes, tuple[set[str], float]] = {}
        self.remote_tree = match.SubscriptionTree()
        self._announce_scheduled = False
        self.inbox = self.inbox_of(self.node)
        self.channels[self.inbox] = set()
        self.stats["redirects"] = 0
        self.stats["inbox_received"] = 0

    def inbox_of(self, node: bytes) -> bytes:
        return self.prefix_b + b"$mqttd/node/" + node.hex().encode()

    # -- slot map and connections -------------------------------------------------------------------
    def _owner(self, key: bytes) -> Address | None:
        return self.slots[key_slot(key)]

    async def _open_at(self, addr: Address, on_reply: Any, broker: Any = None) -> _Resp:
        loop = asyncio.get_running_loop()
        ctx = ssl_module.create_default_context() if self.tls else None
        _, proto = await loop.create_connection(
            lambda: _Resp(on_reply, self._lost, broker), addr[0], addr[1], ssl=ctx
        )
        self._authenticate(proto)
        return proto

    async def _load_slots(self) -> None:
        """CLUSTER SLOTS from the seed, else from any primary we knew."""
        seed = (self.params.get("host", "localhost"), int(self.params.get("port", 6379)))
        candidates = [seed] + [a for a in dict.fromkeys(self.slots) if a and a != seed]
        failure: Exception | None = None
        for addr in candidates:
            replies: asyncio.Queue = asyncio.Queue()
            try:
                conn = await self._open_at(addr, replies.put_nowait)
            except OSError as exc:
                failure = exc
                continue
            try:
                conn.transport.write(_command(b"CLUSTER", b"SLOTS"))
                while True:
                    reply = await asyncio.wait_for(replies.get(), 3.0)
                    if isinstance(reply, hiredis.ReplyError):
                        raise ConnectionError(f"CLUSTER SLOTS at {addr[0]}:{addr[1]}: {reply}")
                    if isinstance(reply, list):
                        break  # the AUTH answer came first
            except (TimeoutError, ConnectionError) as exc:
                failure = exc
                continue
            finally:
                conn.transport.close()
            slots: list[Address | None] = [None] * SLOTS
            for entry in reply:
                start, end, primary = entry[0], entry[1], entry[2]
                host = primary[0].decode() if primary[0] else addr[0]  # "" means the one asked
                for slot in range(start, end + 1):
                    slots[slot] = (host, int(primary[1]))
            if None in slots:
                failure = ConnectionError("the cluster does not serve every slot")
                continue
            self.slots = slots
            return
        raise failure or ConnectionError("no cluster node answered")

    async def _connect(self) -> None:
        await self._load_slots()
        loop = asyncio.get_running_loop()
        self._auth_checked = loop.create_future()
        self.pubs, self.subs = {}, {}
        for addr in dict.fromkeys(self.slots):
            assert addr is not None
            self.pubs[addr] = await self._open_at(addr, functools.partial(self._on_reply, addr))
            # a subscription stream: held when it fills a local queue (mqttd.redis.resp)
            self.subs[addr] = await self._open_at(
                addr, functools.partial(self._on_spush, addr), self.broker
            )
        self.pub = self.pubs[self._owner(self.control)]  # type: ignore[index]
        self.sub = self.subs[self._owner(self.control)]  # type: ignore[index]
        if self.streams is not None:
            # the stream is one key (hash-tagged): one writing connection, to its shard
            addr = self._owner(self.streams.key)
            assert addr is not None
            self.swriter = await self._open_at(addr, self.streams.on_reply)
        self._waiting_pongs = set(self.pubs)
        for conn in self.pubs.values():
            conn.transport.write(_command(b"PING"))
        await asyncio.wait_for(self._auth_checked, 5.0)
        if self.streams is not None and self.swriter is not None:
            # (only now: as RedisBridge._connect; a Cluster has no SELECT)
            self.streams.connected(self.swriter, bool(self.params.get("password")))
        for key in self.channels:
            self._ssubscribe(key)
        self._unsubscribing.clear()
        self._in_flight = 0
        now = time.monotonic()
        self.pongs = dict.fromkeys(self.subs, now)
        self.up = True
        self._send(self.control, _command(b"SPUBLISH", self.control, b"hello\x00" + self.node))
        self.announce_groups()
        log.info(
            "connected to the Redis Cluster at %s (%d primaries, %d channels, %d wildcard filters)",
            self.address,
            len(self.pubs),
            len(self.channels),
            len(self.wildcards),
        )

    def _conns(self) -> list[_Resp | None]:
        return [*self.pubs.values(), self.swriter, *self.subs.values()]

    def _send(self, key: bytes, cmd: bytes, replies: int = 1) -> None:
        conn = self.pubs.get(self._owner(key))  # type: ignore[arg-type]
        if conn is None or conn.transport is None:
            return
        conn.transport.write(cmd)
        self._in_flight += replies

    def _ping(self) -> None:
        self._ping_sent = time.monotonic()
        for conn in self.subs.values():
            conn.transport.write(_command(b"PING"))

    def _stalled(self) -> bool:
        now = time.monotonic()
        subs = self.subs
        return any(
            now - max(t, subs[addr].last_rx if addr in subs else 0.0) > HEALTH_TIMEOUT
            for addr, t in self.pongs.items()
            # a connection not read by our choice (a full local queue): its PONG waits
            if not (addr in subs and getattr(subs[addr], "held", 0))
        )

    def _redirected(self, why: str) -> None:
        """The slot map we hold is stale: read it again and subscribe everything anew."""
        if not self.up:
            return
        self.stats["redirects"] += 1
        log.info("Redis Cluster redirection (%s): refreshing the slot map", why)
        self._lost(self.pub, ConnectionError(f"slot map changed: {why}"))  # type: ignore[arg-type]

    def _ssubscribe(self, key: bytes) -> None:
        conn = self.subs.get(self._owner(key))  # type: ignore[arg-type]
        if conn is not None and conn.transport is not None:
            conn.transport.write(_command(b"SSUBSCRIBE", key))

    # -- replies ------------------------------------------------------------------------------------
    def _on_reply(self, addr: Address, reply: Any) -> None:
        if isinstance(reply, hiredis.ReplyError):
            if self._connecting_failed(reply):
                return
            text = str(reply)
            if text.startswith(("MOVED", "ASK")):
                self._redirected(text)
                return
            self.stats["errors"] += 1
            log.warning("Redis error from %s:%d: %s", addr[0], addr[1], reply)
        elif reply == b"PONG":
            self._waiting_pongs.discard(addr)
            if not self._waiting_pongs and not self._auth_checked.done():
                self._auth_checked.set_result(None)
            return
        if self._in_flight:
            self._in_flight -= 1

    def _on_spush(self, addr: Address, reply: Any) -> None:
        if isinstance(reply, hiredis.ReplyError):
            text = str(reply)
            if text.startswith(("MOVED", "ASK")):
                self._redirected(text)
                return
            self.stats["errors"] += 1
            log.warning("Redis error on the subscription at %s:%d: %s", addr[0], addr[1], text)
            return
        if reply == b"PONG":
            # A connection with no subscription on its shard (none yet, or the last one just
            # went) is not in subscribed mode: PING gets a plain +PONG there
            self.pongs[addr] = time.monotonic()
            return
        kind = reply[0]
        if kind == b"smessage":
            channel, data = reply[1], reply[2]
            if channel == self.inbox:
                self._on_inbox(data)
            else:
                self._on_message(channel, data, None)
        elif kind == b"pong":
            self.pongs[addr] = time.monotonic()
            self.rtt = self.pongs[addr] - self._ping_sent
        elif kind == b"sunsubscribe":
            channel = reply[1]
            pending = self._unsubscribing.get(channel, 0)
            if pending:
                if pending == 1:
                    del self._unsubscribing[channel]
                else:
                    self._unsubscribing[channel] = pending - 1
            elif channel in self.channels:
                # Not asked for: the shard gave the channel's slot away
                self._redirected("slot of " + channel.decode(errors="replace") + " moved")

    def _on_inbox(self, data: bytes) -> None:
        """A message another node sent here for our wildcard filters: ``topic NUL envelope``."""
        topic_b, sep, envelope = data.partition(b"\x00")
        if not sep:
            return
        if self.prefix_b + topic_b in self.channels:
            return  # we hold the topic as an exact filter too: its channel brings the copy
        try:
            topic = topic_b.decode()
        except UnicodeDecodeError:
            return
        if not match.validate_topic(topic):
            return
        self.stats["inbox_received"] += 1
        self._receive(topic, envelope)

    # -- wildcard filters across nodes ------------------------------------------------------------------
    def announce_groups(self) -> None:
        """Shared groups (RedisBridge) and this node's wildcard filters; forget silent nodes."""
        super().announce_groups()
        if not self.up:
            return
        data = b"filters\x00" + self.node + json.dumps(sorted(self.wildcards)).encode()
        self._send(self.control, _command(b"SPUBLISH", self.control, data))
        now = time.monotonic()
        for node, (_, seen) in list(self.remote_filters.items()):
            if now - seen > GROUP_TTL:
                self._set_remote(node, set())
                del self.remote_filters[node]

    def _announce_soon(self) -> None:
        if not self._announce_scheduled:
            self._announce_scheduled = True
            asyncio.get_running_loop().call_soon(self._announce_now)

    def _announce_now(self) -> None:
        self._announce_scheduled = False
        self.announce_groups()

    def _set_remote(self, node: bytes, filters: set[str]) -> None:
        old = self.remote_filters.get(node, (set(), 0.0))[0]
        tree = self.remote_tree
        for filt in old - filters:
            tree.remove(filt, node)
        kept = set()
        for filt in filters:
            if filt in old:
                kept.add(filt)
            elif match.validate_filter(filt) and match.parse_shared(filt) is None:
                tree.add(filt, node, None)
                kept.add(filt)
        self.remote_filters[node] = (kept, time.monotonic())

    def _on_control(self, data: bytes) -> None:
        kind, _, rest = data.partition(b"\x00")
        if kind == b"filters":
            if len(rest) < 8 or rest[:8] == self.node:
                return
            try:
                filters = json.loads(rest[8:])
            except ValueError:
                return
            if isinstance(filters, list) and all(isinstance(f, str) for f in filters):
                self._set_remote(rest[:8], set(filters))
            return
        super()._on_control(data)

    # -- publishing ---------------------------------------------------------------------------------
    def _queue(self, key: bytes, cmd: bytes) -> None:
        addr = self._owner(key)
        box = self.outboxes.get(addr)  # type: ignore[arg-type]
        if box is None:
            box = self.outboxes[addr] = []  # type: ignore[index]
        box.append(cmd)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def forward(self, msg: Any) -> None:
        """SPUBLISH ``msg`` on its topic channel, and to the inbox of every node whose wildcard
        filters match it; pipelined per shard with the rest of this loop iteration."""
        if msg.qos and self.streams is not None:
            self.streams.add(msg)  # QoS 1/2: the stream, on the shard of its hash tag
            return
        if not self.up:
            self.stats["not_forwarded"] += 1
            return
        topic_b = msg.topic.encode()
        channel = self.prefix_b + topic_b
        seq = msg.origin[1] if msg.origin is not None else self.stamp(msg)
        envelope = encode_envelope(self.node, seq, msg)
        self._box_publishes += 1
        self._queue(channel, _command(b"SPUBLISH", channel, envelope))
        if len(self.remote_tree):
            now = time.monotonic()
            for node in self.remote_tree.match(msg.topic):
                if now - self.remote_filters[node][1] > GROUP_TTL:
                    continue  # a node that stopped announcing (gone)
                inbox = self.inbox_of(node)
                self._queue(inbox, _command(b"SPUBLISH", inbox, topic_b + b"\x00" + envelope))

    def store_retained(self, msg: Any) -> None:
        if not self.up:
            return
        topic = msg.topic.encode()
        if msg.payload:
            data = encode_envelope(self.node, 0, msg)
            self._queue(self.retained_key, _command(b"HSET", self.retained_key, topic, data))
            self._queue(self.retained_index, _command(b"ZADD", self.retained_index, b"0", topic))
        else:
            self._queue(self.retained_key, _command(b"HDEL", self.retained_key, topic))
            self._queue(self.retained_index, _command(b"ZREM", self.retained_index, topic))

    def _flush(self) -> None:
        self._flush_scheduled = False
        boxes, self.outboxes = self.outboxes, {}
        publishes, self._box_publishes = self._box_publishes, 0
        if not boxes:
            return
        if not self.up:
            self.stats["not_forwarded"] += publishes
            return
        stalled = False
        for addr, batch in boxes.items():
            conn = self.pubs.get(addr)
            if (
                conn is None
                or conn.transport is None
                or conn.transport.get_write_buffer_size() > MAX_PENDING_BYTES
            ):
                stalled = True  # that shard is not reading: do not grow without bound
                continue
            conn.transport.write(b"".join(batch))
            self._in_flight += len(batch)
        self.stats["not_forwarded" if stalled else "forwarded"] += publishes

    # -- subscriptions ------------------------------------------------------------------------------
    def filter_added(self, filt: str) -> None:
        """The first local subscriber of ``filt``: SSUBSCRIBE its channel on the owning shard, or
        announce it (a wildcard filter) to the other nodes."""
        if _is_wildcard(filt):
            if filt not in self.wildcards:
                self.wildcards.add(filt)
                self._announce_soon()
            return
        key = self.prefix_b + filt.encode()
        users = self.channels.get(key)
        if users is None:
            self.channels[key] = {filt}
            if self.up:
                self._ssubscribe(key)
        else:
            users.add(filt)

    def filter_removed(self, filt: str) -> None:
        if _is_wildcard(filt):
            if filt in self.wildcards:
                self.wildcards.discard(filt)
                self._announce_soon()
            return
        key = self.prefix_b + filt.encode()
        users = self.channels.get(key)
        if users is None:
            return
        users.discard(filt)
        if not users and key != self.control and key != self.inbox:
            del self.channels[key]
            if self.up:
                conn = self.subs.get(self._owner(key))  # type: ignore[arg-type]
                if conn is not None and conn.transport is not None:
                    self._unsubscribing[key] = self._unsubscribing.get(key, 0) + 1
                    conn.transport.write(_command(b"SUNSUBSCRIBE", key))

    # -- request / response (retained messages, sessions) ----------------------------------------
    async def _client(self) -> Any:
        if self._cmd is None:
            self._cmd = self.new_client()
        return self._cmd

    def new_client(self) -> Any:
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url(self.url, socket_connect_timeout=3, socket_timeout=5)

    def health(self) -> dict[str, Any]:
        out = super().health()
        out.update(
            redis_mode="cluster",
            shards=len(self.pubs),
            wildcard_filters=len(self.wildcards),
            remote_nodes=len(self.remote_filters),
        )
        return out
