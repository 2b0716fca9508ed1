"""Persistent sessions kept in Redis, so that a node that dies loses nothing it acknowledged
(docs/redis.md, "A node that dies").

Each node, every ``persistence_interval`` seconds (1 by default):

- says it is alive: ``{prefix}$mqttd/node/<id>`` with a time to live of :data:`NODE_TTL` seconds
  (three intervals if that is longer), and its id in the set ``{prefix}$mqttd/nodes``;
- writes the persistent sessions it holds that changed (mqttd.sessionstate: subscriptions,
  queued and in-flight QoS 1/2 messages, QoS 2 receive state, will with delay) to
  ``{prefix}$mqttd/state/<client id>``, and their client ids to ``{prefix}$mqttd/holds/<id>``;
- looks for nodes of the set whose alive key has expired: a dead node. The first survivor to
  claim it (``SET NX``) publishes the wills of the dead node's connected clients (kept in
  ``{prefix}$mqttd/wills/<id>`` while they are connected: MQTT says a will goes when the
  connection is lost [MQTT-3.1.2-8], and that node can no longer say it), after their Will Delay
  Interval, and starts the expiry of its sessions.

A node with a name (``redis_node_name``) says in ``{prefix}$mqttd/named/<name>`` which node id
runs under it. Started again under that name, it takes over the node before it (as a survivor
would: it claims it, publishes the wills of the clients connected to it), but takes its sessions
back instead of letting them expire: their subscriptions are here again before the stream is
read on from where that node stopped (mqttd.redis.streams, whose position is written here with
the sessions: both of one moment), so what was published meanwhile reaches them.

A client that reconnects elsewhere with Clean Start 0 and finds its session marked as held by a
dead node gets the state written here (mqttd.redis.bridge.acquire_session). Detection takes the
alive key's time to live plus at most one interval: 6 s by default. A node says it is alive once
before its first client (else a node that just started would look dead).

The connections' wills are written when a client connects with one (an HSET) and removed when
it disconnects: the only Redis traffic per connection. What a dead node received after its last
write (at most one interval) is lost, as a crash loses it with ``--persistence-file``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from mqttd import sessionstate

if TYPE_CHECKING:
    from mqttd.redis.bridge import RedisBridge

log = logging.getLogger("mqttd.redis")

#: seconds a node's alive key lives (at least; 3 intervals if longer): silent this long, dead
NODE_TTL = 5.0
#: seconds a survivor's claim on a dead node lasts (one survivor publishes its wills)
CLAIM_TTL = 60

_ERRORS = (OSError, RedisError, TimeoutError, ConnectionError)


class RedisSessions:
    """The session-keeping side of one node's bridge."""

    def __init__(self, bridge: RedisBridge, interval: float) -> None:
        self.bridge = bridge
        self.interval = interval
        #: how long this node's alive key lives: several intervals, at least NODE_TTL
        self.ttl = max(NODE_TTL, 3 * interval)
        self.changed = sessionstate.ChangedSessions(bridge.broker)
        self.me = bridge.node.hex()
        p = bridge.prefix
        self._state = f"{p}$mqttd/state/"
        self._node = f"{p}$mqttd/node/"
        self._nodes = f"{p}$mqttd/nodes"
        self._holds = f"{p}$mqttd/holds/"
        self._wills = f"{p}$mqttd/wills/"
        self._claim = f"{p}$mqttd/reaping/"
        name = bridge.broker.config.redis_node_name
        self._named = f"{p}$mqttd/named/{name}" if name else None
        #: node id -> the name it runs under (a dead node's sessions' ids are kept for it)
        self._name_of = f"{p}$mqttd/name-of/"
        self._task: asyncio.Task[None] | None = None
        self._timers: list[asyncio.TimerHandle] = []
        #: wills to set (text) or remove (None) in Redis, in order, and the task sending them
        self._will_ops: list[tuple[str, str | None]] = []
        self._will_task: asyncio.Task[None] | None = None
        self.stats = {
            "sessions_written": 0,
            "dead_nodes": 0,
            "wills_published": 0,
            "sessions_taken_back": 0,
        }

    async def start(self) -> None:
        """Say this node is alive before any client connects (a node that has not said it yet
        would look dead to the others), then write every interval. A named node first takes
        back what it held before its restart."""
        try:
            if self._named is not None:
                await self._take_back()
            await self._write()
        except _ERRORS as exc:
            log.warning("sessions in Redis: %s", exc)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for timer in self._timers:
            timer.cancel()
        if self.bridge.up:
            # A clean stop: what changed is written, and this node leaves the set (it is not
            # dead: its clients' wills were published as their connections closed)
            with contextlib.suppress(*_ERRORS):
                await asyncio.wait_for(self._write(), 3.0)
                client = await self.bridge._client()
                await client.delete(self._node + self.me, self._wills + self.me)
                await client.srem(self._nodes, self.me)

    def state_key(self, client_id: str) -> str:
        return self._state + client_id

    def wills_key(self, node: bytes) -> bytes:
        """The hash of the wills of ``node``'s connected clients (client id -> will)."""
        return (self._wills + node.hex()).encode()

    async def alive(self, node: bytes) -> bool:
        client = await self.bridge._client()
        return bool(await client.exists(self._node + node.hex()))

    # -- what connections say ------------------------------------------------------------------
    def will_armed(self, client_id: str, will: Any, delay: int) -> None:
        """``client_id`` connected here with a will: survivors publish it if this node dies."""
        data = json.dumps({"will": sessionstate.pack_message(will), "delay": delay})
        self._will_op(client_id, data)

    def will_gone(self, client_id: str) -> None:
        self._will_op(client_id, None)

    def _will_op(self, client_id: str, data: str | None) -> None:
        """Queued and sent in order, pipelined, by one task: a will removed and another set for
        the same client id (a takeover) must reach Redis in that order, which commands sent on
        the pool's several connections would not promise."""
        if not self.bridge.up:
            return
        self._will_ops.append((client_id, data))
        if self._will_task is None or self._will_task.done():
            self._will_task = asyncio.get_running_loop().create_task(self._send_will_ops())

    async def _send_will_ops(self) -> None:
        key = self._wills + self.me
        while self._will_ops:
            ops, self._will_ops = self._will_ops, []
            with contextlib.suppress(*_ERRORS):
                pipe = (await self.bridge._client()).pipeline(transaction=False)
                for client_id, data in ops:
                    if data is None:
                        pipe.hdel(key, client_id)
                    else:
                        pipe.hset(key, client_id, data)
                await pipe.execute()

    # -- each interval -------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if not self.bridge.up:
                continue
            try:
                await self._write()
                await self._look_for_dead()
            except _ERRORS as exc:
                log.warning("sessions in Redis: %s", exc)
                self.changed.forget()  # written whole at the next turn

    async def _take_back(self) -> None:
        """The node that ran under this name before (stopped, or crashed: found dead by a
        survivor by now, or not yet): its sessions are revived here."""
        client = await self.bridge._client()
        before = await client.set(self._named, self.me, get=True)
        await client.set(self._name_of + self.me, self.bridge.broker.config.redis_node_name)
        if before is None or before.decode() == self.me:
            return
        node = before.decode()
        if await client.exists(self._node + node):
            # (crashed less than its alive key's life ago, or two nodes given one name)
            log.warning(
                "node %s, which ran under the name %s before, still says it is alive: taking "
                "its sessions over (if it still runs, give each node a name of its own)",
                node,
                self.bridge.broker.config.redis_node_name,
            )
        if await client.set(self._claim + node, self.me, nx=True, ex=CLAIM_TTL):
            await self._reap(node, take_back=True)
            return
        # Found dead by a survivor already, which published the wills of its connected clients
        # and left its sessions' ids for this name (_reap): the sessions come back all the same
        held = await client.smembers(self._holds + node)
        log.info(
            "taking back %d sessions of node %s (this name's before the restart, found dead by "
            "another node)",
            len(held),
            node,
        )
        for raw in held:
            await self._revive(raw.decode(), node)
        await client.delete(self._holds + node, self._name_of + node)

    async def _write(self) -> None:
        client = await self.bridge._client()
        pipe = client.pipeline(transaction=False)
        pipe.set(self._node + self.me, b"1", px=int(self.ttl * 1000))
        pipe.sadd(self._nodes, self.me)
        changes = self.changed.collect()
        streams = self.bridge.streams
        if streams is not None and streams.at_key is not None and streams.last_id:
            # where the stream's reading stands, of the same moment as the sessions collected
            pipe.set(streams.at_key, streams.position())
        gone = []
        for client_id, state in changes.items():
            if state is None:
                gone.append(client_id)
                continue
            pipe.set(self.state_key(client_id), state)
            pipe.sadd(self._holds + self.me, client_id)
        await pipe.execute()
        self.stats["sessions_written"] += len(changes) - len(gone)
        for client_id in gone:
            # Gone from here: ended (its marker was dropped), or moved to a node that writes it
            holder = await client.get(self.bridge._session_key(client_id))
            if holder is None or holder == self.bridge.node:
                await client.delete(self.state_key(client_id))
            await client.srem(self._holds + self.me, client_id)

    async def _look_for_dead(self) -> None:
        client = await self.bridge._client()
        for raw in await client.smembers(self._nodes):
            node = raw.decode()
            if node == self.me or await client.exists(self._node + node):
                continue
            if await client.set(self._claim + node, self.me, nx=True, ex=CLAIM_TTL):
                await self._reap(node)

    async def _reap(self, node: str, take_back: bool = False) -> None:
        """``node`` stopped without leaving: its clients' wills, its sessions' expiry; or, when
        this node runs under its name now (``take_back``), its sessions revived here."""
        client = await self.bridge._client()
        wills = await client.hgetall(self._wills + node)
        held = await client.smembers(self._holds + node)
        if take_back:
            log.info(
                "taking back %d sessions of node %s (this name's before the restart); "
                "publishing the wills of its %d connected clients",
                len(held),
                node,
                len(wills),
            )
        else:
            self.stats["dead_nodes"] += 1
            log.warning(
                "node %s stopped answering (its alive key expired): publishing the wills of its "
                "%d connected clients; its %d sessions wait in Redis for their clients",
                node,
                len(wills),
                len(held),
            )
        armed = []
        for client_id, data in wills.items():
            try:
                entry = json.loads(data)
                will = sessionstate.unpack_message(entry["will"])
                delay = float(entry.get("delay") or 0)
            except (ValueError, KeyError, TypeError) as exc:
                log.error("unreadable will of %s: %s", client_id, exc)
                continue
            armed.append((client_id.decode(), will, delay))
        if not take_back:
            for client_id, will, delay in armed:
                self._will_after(client_id, will, delay, node)
        now = time.time()
        for raw in held:
            client_id = raw.decode()
            if take_back:
                await self._revive(client_id, node)
                continue
            key = self.state_key(client_id)
            data = await client.get(key)
            if data is None:
                continue
            try:
                state = sessionstate.decode(data)
            except ValueError:
                continue
            if state.get("will") and state.get("will_due"):
                # a will that was waiting for its delay on the dead node
                will = sessionstate.unpack_message(state["will"])
                self._will_after(client_id, will, max(0.0, state["will_due"] - now), node)
            expiry = state["expiry"]
            if expiry < 0xFFFFFFFF:
                # It expires from now, unless its client comes back [MQTT-3.1.2-23]
                await client.expire(key, max(1, int(expiry)))
        if take_back:
            # (after the sessions: a client whose session is back here has its will on it)
            for client_id, will, delay in armed:
                self._will_here(client_id, will, delay, node)
            await client.delete(self._holds + node, self._node + node, self._name_of + node)
        elif not await client.exists(self._name_of + node):
            # (a named node's stay: started again, it takes these sessions back, _take_back)
            await client.delete(self._holds + node)
        await client.delete(self._wills + node)
        await client.srem(self._nodes, node)

    async def _revive(self, client_id: str, node: str) -> None:
        """A session that ``node`` (this name's before the restart) held: here again, as a
        persistence file brings one back (Broker.revive: its expiry counted from when its client
        left), unless its client took it to another node meanwhile."""
        broker = self.bridge.broker
        if client_id in broker.sessions:
            return
        client = await self.bridge._client()
        holder = await client.get(self.bridge._session_key(client_id))
        if holder is not None and holder.hex() != node:
            return  # resumed elsewhere (its marker names that node)
        data = await client.get(self.state_key(client_id))
        if data is None:
            return  # (ended, or expired in Redis)
        try:
            session = broker.revive(sessionstate.decode(data))
        except (ValueError, KeyError, TypeError) as exc:
            log.error("session of %s unreadable, not taken back: %s", client_id, exc)
            return
        if session is not None:
            self.stats["sessions_taken_back"] += 1
            self.bridge.mark_session(client_id)

    def _will_here(self, client_id: str, will: Any, delay: float, node: str) -> None:
        """The will of a client whose connection went with the node before this name's restart:
        on its session taken back here, it waits for its delay or the session's end, and its
        client coming back cancels it, as for any client that left [MQTT-3.1.3-9]."""
        broker = self.bridge.broker
        session = broker.sessions.get(client_id)
        if session is None or session.connection is not None or session.will is not None:
            self._will_after(client_id, will, delay, node)
            return
        if delay <= 0:
            self._publish_will(client_id, will)
            return
        session.will = will
        session.will_handle = asyncio.get_running_loop().call_later(
            min(delay, session.expiry_interval), broker._fire_will, session
        )

    def _will_after(self, client_id: str, will: Any, delay: float, node: str) -> None:
        loop = asyncio.get_running_loop()
        if delay <= 0:
            self._publish_will(client_id, will)
            return
        # Published after its delay unless its client is back by then [MQTT-3.1.3-9]
        self._timers.append(
            loop.call_later(delay, lambda: loop.create_task(self._will_due(client_id, will, node)))
        )

    async def _will_due(self, client_id: str, will: Any, node: str) -> None:
        with contextlib.suppress(*_ERRORS):
            holder = await (await self.bridge._client()).get(self.bridge._session_key(client_id))
            if holder is not None and holder.hex() != node:
                return  # its client reconnected on another node
        self._publish_will(client_id, will)

    def _publish_will(self, client_id: str, will: Any) -> None:
        log.info("publishing the will of %s (its node is gone) to %s", client_id, will.topic)
        self.stats["wills_published"] += 1
        self.bridge.broker.publish(will)


__all__ = ["NODE_TTL", "RedisSessions"]
