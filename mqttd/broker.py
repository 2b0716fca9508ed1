"""The broker: sessions, subscriptions, retained messages and routing, for one node.

This layer knows MQTT semantics but no bytes and no sockets: packets arrive decoded from
:mod:`mqttd.connection`, and messages leave through :mod:`mqttd._route` (compiled, or its pure
twin), which writes them into each session's output buffer. What other nodes must hear of, or
have a say in, goes through :attr:`Broker.peers` (:mod:`mqttd.peers`): nothing for a node alone,
Redis when :mod:`mqttd.node` joined one. The node also gives the broker its event loop
(:meth:`Broker.attach`), the clock and timers of the session expiry and will delay.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mqttd import sessionstate
from mqttd._speedups import codec, match, route
from mqttd.deadlines import Deadlines
from mqttd.flow import FlowControl
from mqttd.peers import LOCAL, Peers
from mqttd.redis.url import check_redis_url
from mqttd.storage import MemoryStorage, Storage

if TYPE_CHECKING:
    from mqttd.auth import Authenticator
    from mqttd.connection import Connection

log = logging.getLogger("mqttd")

MAX_PACKET_SIZE_LIMIT = 268_435_460  # 1 + 4 + 268,435,455: the largest packet MQTT can frame
#: outgoing QoS 1/2 messages in flight per client unless configured (docs/flow-control.md)
DEFAULT_MAX_INFLIGHT = 1000
#: seconds a SUBACK waits at most for the other nodes to route a new filter here (then it goes)
ROUTE_WAIT = 2.0

Message = route.Message
Outlet = route.Outlet


def tls_settings_problem(
    certfile: str | None, keyfile: str | None, cafile: str | None, require_certificate: bool
) -> str:
    """What is wrong with a set of TLS options (the node's or a listener's), or ''."""
    if keyfile and not certfile:
        return "a TLS key file needs a certificate file (certfile)"
    if (cafile or require_certificate) and not certfile:
        return "client certificates (cafile, require_certificate) need TLS (certfile)"
    if require_certificate and not cafile:
        return "require_certificate needs the CA to check them against (cafile)"
    return ""


#: what a listener speaks: MQTT straight over TCP (or TLS, or a Unix socket), or over WebSocket
LISTENER_PROTOCOLS = ("mqtt", "websockets")


@dataclass
class ListenerConfig:
    """One listener of a node: a ``[[listener]]`` table of the config file, an entry of
    ``MQTTApp(listeners=[...])``, or what ``--port``/``--ws-port``/``--wss-port`` make
    (docs/listeners.md)."""

    #: TCP port (0: a free one); not used with ``socket``
    port: int = 1883
    #: address to listen on; None: the node's ``host``
    host: str | None = None
    #: "mqtt" (TCP, TLS or a Unix socket) or "websockets" (ws://, or wss:// with a certfile)
    protocol: str = "mqtt"
    #: the HTTP path WebSocket clients ask for
    path: str = "/mqtt"
    #: TLS on this listener: certificate chain and key (PEM); client certificates as the node's
    certfile: str | None = None
    keyfile: str | None = None
    cafile: str | None = None
    require_certificate: bool = False
    #: a Unix socket path instead of host and port
    socket: str | None = None
    #: permissions of the Unix socket file
    socket_mode: int = 0o660
    #: clients connected at once through this listener (0: no limit), refused with 0x97 / 3
    max_connections: int = 0
    #: WebSocket: the Origin header values allowed (browsers); None: any
    origins: list[str] | None = None
    #: this listener's own users and rules instead of the node's (docs/security.md); None: the
    #: node's
    password_file: str | None = None
    acl_file: str | None = None
    allow_anonymous: bool | None = None

    @property
    def own_security(self) -> bool:
        """True when this listener authenticates differently from the node."""
        return bool(self.password_file or self.acl_file or self.allow_anonymous is not None)

    def validate(self, where: str = "listener") -> None:
        """ValueError in one line naming ``where`` and the field."""
        if self.protocol not in LISTENER_PROTOCOLS:
            raise ValueError(
                f'{where}: protocol must be "mqtt" or "websockets", not {self.protocol!r}'
            )
        if not 0 <= self.port <= 65535:
            raise ValueError(f"{where}: port must be 0..65535, not {self.port}")
        if not self.path.startswith("/"):
            raise ValueError(f"{where}: path must start with /, not {self.path!r}")
        why = tls_settings_problem(
            self.certfile, self.keyfile, self.cafile, self.require_certificate
        )
        if why:
            raise ValueError(f"{where}: {why}")
        if not 0 <= self.socket_mode <= 0o777:
            raise ValueError(f"{where}: socket_mode must be 0..0o777, not {self.socket_mode:#o}")
        if self.max_connections < 0:
            raise ValueError(f"{where}: max_connections must be 0 or more")

    def url(self, host: str, port: int) -> str:
        """How clients reach it: mqtt://, mqtts://, ws://, wss:// or unix:."""
        if self.socket:
            return f"unix:{self.socket}"
        shown = f"[{host}]" if ":" in host else host
        if self.protocol == "websockets":
            return f"{'wss' if self.certfile else 'ws'}://{shown}:{port}{self.path}"
        return f"{'mqtts' if self.certfile else 'mqtt'}://{shown}:{port}"


@dataclass
class BrokerConfig:
    """What a broker is told at start; every field has the embedded default."""

    host: str = "127.0.0.1"
    port: int = 1883
    #: largest packet accepted, whole (fixed header included); enforced from the fixed header
    max_packet_size: int = 1024 * 1024
    #: outgoing QoS 1/2 messages in flight per client (lowered by an MQTT 5 Receive Maximum);
    #: Mosquitto's default is 20, EMQX's 32: docs/flow-control.md says why 1000, in bytes too
    max_inflight: int = DEFAULT_MAX_INFLIGHT
    #: bytes (payload and topic) those in-flight messages may take per client (0: no limit; one
    #: message goes whatever its size), as Mosquitto's max_inflight_bytes
    max_inflight_bytes: int = 1024 * 1024
    #: inbound QoS 2 messages awaiting PUBREL per client; announced as our Receive Maximum
    receive_maximum: int = 65535
    #: QoS 1/2 messages queued per session while offline or while the window is full
    max_queued_messages: int = 1000
    #: bytes (payload and topic) those queued messages may take, per session (0: no limit)
    max_queued_bytes: int = 8 * 1024 * 1024
    #: bytes buffered for a client that has stopped taking writes; its QoS 0 messages beyond
    #: that are dropped (counted), its QoS 1/2 ones stay queued
    max_buffer: int = 1024 * 1024
    #: bytes the node may hold for all its clients (queues, in-flight windows, buffers, partly
    #: received packets) before it stops reading from publishers (0: no limit, as Mosquitto)
    memory_limit: int = 0
    #: seconds a session with a full queue may acknowledge nothing (its publishers held
    #: meanwhile) before its client is disconnected; one that reads but stays full ten times as
    #: long drops its oldest messages instead (0: publishers never held; docs/flow-control.md)
    slow_subscriber_timeout: float = 1.0
    retain_available: bool = True
    #: topic aliases a client may use towards us (MQTT 5 Topic Alias Maximum; 0 refuses them)
    topic_alias_maximum: int = 10
    #: longest keepalive granted, in seconds (0: whatever the client asks); a longer or zero
    #: request gets this value, told to MQTT 5 clients as Server Keep Alive
    max_keepalive: int = 0
    #: seconds between $SYS/broker/... updates (0: no $SYS topics)
    sys_interval: float = 10.0
    #: MQTT 5 Response Information sent to clients that request it (None: not offered)
    response_information: str | None = None
    #: join other nodes through Redis pub/sub (redis://, rediss://, unix://); None: this node only
    redis_url: str | None = None
    #: prefix of the Redis channels, to keep deployments that share one Redis apart
    redis_prefix: str = ""
    #: QoS 1/2 between nodes through a Redis stream, kept across Redis outages (False: pub/sub)
    redis_streams: bool = True
    #: this node's name across its restarts (None: a new node each start): a restarted node
    #: takes back its sessions kept in Redis and reads the stream on from where it stopped
    redis_node_name: str | None = None
    #: entries the stream keeps (XADD MAXLEN ~): how far behind a node may read
    redis_stream_maxlen: int = 100_000
    #: bytes of QoS 1/2 messages kept for the stream while Redis is away; beyond, dropped
    redis_stream_buffer: int = 64 * 1024 * 1024
    #: clients connected at once (0: no limit); the excess CONNECT is refused (0x97 / 0x03)
    max_connections: int = 0
    #: clients connected at once from one IP address (0: no limit), refused the same way
    max_connections_per_ip: int = 0
    #: PUBLISH packets a client may send per second (0: no limit); a faster client is not read
    #: from until it is back under the rate (backpressure: nothing is dropped)
    max_messages_per_second: float = 0.0
    #: subscriptions a client may make per minute (0: no limit); the excess is refused in the
    #: SUBACK (0x97 Quota exceeded; 0x80 in 3.1.1)
    max_subscriptions_per_minute: int = 0
    #: TLS: certificate chain and private key (PEM) of the listener; None: plain TCP
    certfile: str | None = None
    keyfile: str | None = None
    #: TLS: CA certificates (PEM) that client certificates are checked against
    cafile: str | None = None
    #: TLS: refuse the handshake of a client without a certificate signed by cafile
    require_certificate: bool = False
    #: the client certificate's CN is the user name (no password asked)
    use_identity_as_username: bool = False
    #: the client certificate's whole subject (RFC 2253) is the user name
    use_subject_as_username: bool = False
    #: Mosquitto-format password file (docs/security.md)
    password_file: str | None = None
    #: Mosquitto-format ACL file (docs/security.md)
    acl_file: str | None = None
    #: clients without a user name; None: allowed only while nothing authenticates clients
    #: (no password file, no certificate identity), as Mosquitto 2.0
    allow_anonymous: bool | None = None
    #: once clients authenticate, a persistent session is taken over by the same user only
    #: (another gets CONNACK 0x87 / 0x05); False: any client may, as Mosquitto
    session_owner_check: bool = True
    #: levels a topic name or filter may have (a topic/filter deeper is refused as invalid)
    max_topic_levels: int = 200
    #: bytes held in partly received packets across all connections; the connection that
    #: would pass it is closed (0: no limit)
    max_incoming_bytes: int = 64 * 1024 * 1024
    #: seconds a new connection has to send its CONNECT
    connect_timeout: float = 10.0
    #: a WebSocket listener on this port besides the default one (host as above)
    ws_port: int | None = None
    #: a secure WebSocket listener on this port, with certfile/keyfile
    wss_port: int | None = None
    #: HTTP port of the Prometheus metrics, /health and /ready (None: off; mqttd.metrics)
    metrics_port: int | None = None
    #: address of that endpoint
    metrics_host: str = "127.0.0.1"
    #: SQLite file that keeps retained messages and persistent sessions across restarts
    #: (None: off, as in Mosquitto; mqttd.persistence, docs/operations.md)
    persistence_file: str | None = None
    #: seconds between writes of what changed (to the file, or to Redis for a node that dies):
    #: a crash loses at most this much
    persistence_interval: float = 1.0
    #: the listeners of [[listener]] tables / MQTTApp(listeners=...); they replace the default
    #: listener of host, port and certfile (docs/listeners.md)
    listeners: list[ListenerConfig] = field(default_factory=list)

    def all_listeners(self) -> list[ListenerConfig]:
        """Every listener the node opens, in order: the tables' (or the default one of host,
        port, certfile), then --ws-port's and --wss-port's."""
        out = list(self.listeners) or [
            ListenerConfig(
                port=self.port,
                host=self.host,
                certfile=self.certfile,
                keyfile=self.keyfile,
                cafile=self.cafile,
                require_certificate=self.require_certificate,
            )
        ]
        if self.ws_port is not None:
            out.append(ListenerConfig(port=self.ws_port, host=self.host, protocol="websockets"))
        if self.wss_port is not None:
            out.append(
                ListenerConfig(
                    port=self.wss_port,
                    host=self.host,
                    protocol="websockets",
                    certfile=self.certfile,
                    keyfile=self.keyfile,
                    cafile=self.cafile,
                    require_certificate=self.require_certificate,
                )
            )
        return out

    def validate(self) -> None:
        """ValueError in one line naming the first bad field (by its option name) and what it
        may be."""
        for name in self.__dataclass_fields__:
            if name != "listeners":
                self.check(name, getattr(self, name))
        for i, listener in enumerate(self.listeners):
            listener.validate(f"listener {i + 1}")
        if self.wss_port is not None and not self.certfile:
            raise ValueError("wss_port needs a certificate (certfile)")
        why = tls_settings_problem(
            self.certfile, self.keyfile, self.cafile, self.require_certificate
        )
        if why:
            raise ValueError(why)
        if self.persistence_file and self.redis_url:
            raise ValueError(
                "persistence_file: not with redis_url (with Redis, sessions and retained "
                "messages are kept in Redis)"
            )
        cafiles = self.cafile or any(lst.cafile for lst in self.listeners)
        if (self.use_identity_as_username or self.use_subject_as_username) and not cafiles:
            raise ValueError("use_identity_as_username needs client certificates (cafile)")

    @staticmethod
    def check(name: str, value: Any) -> None:
        """ValueError if ``value`` is not allowed for field ``name`` (ranges, the Redis URL).

        The one place the limits are written: validate() runs it on every field, and
        mqttd.options on each option as it is read, so that the error names where the value came
        from (the config file, a flag, an MQTTD_* variable)."""
        if value is None:
            return
        #: field -> (lowest, highest, unit) allowed
        ranges: dict[str, tuple[int, int, str]] = {
            "port": (0, 65535, ""),
            "max_packet_size": (16, MAX_PACKET_SIZE_LIMIT, " bytes"),
            "receive_maximum": (1, 65535, ""),
            "max_inflight": (1, 65535, ""),
            "topic_alias_maximum": (0, 65535, ""),
            "max_keepalive": (0, 65535, " seconds"),
            "max_topic_levels": (1, 65535, ""),
            "ws_port": (0, 65535, ""),
            "redis_stream_maxlen": (100, 1 << 40, " entries"),
            "redis_stream_buffer": (0, 1 << 40, " bytes"),
            "metrics_port": (0, 65535, ""),
            "wss_port": (0, 65535, ""),
        }
        #: field -> what 0 means, for the fields that are 0 or more
        at_least_0 = {
            "max_queued_messages": "",
            "max_queued_bytes": " (no limit)",
            "max_inflight_bytes": " (no limit)",
            "max_buffer": "",
            "memory_limit": " (no limit)",
            "slow_subscriber_timeout": " (never hold publishers)",
            "sys_interval": " (off)",
            "max_connections": " (no limit)",
            "max_connections_per_ip": " (no limit)",
            "max_subscriptions_per_minute": " (no limit)",
            "max_messages_per_second": " (no limit)",
            "max_incoming_bytes": " (no limit)",
        }
        if name in ranges:
            low, high, unit = ranges[name]
            if not low <= value <= high:
                raise ValueError(f"{name} must be {low}..{high}{unit}, not {value}")
        elif name in at_least_0:
            if not value >= 0:  # written so that NaN is refused too
                raise ValueError(f"{name} must be 0{at_least_0[name]} or more, not {value}")
        elif name == "redis_url":
            check_redis_url(value)
        elif name == "redis_node_name":
            # a Redis key's last part: printable, no spaces, short
            if not (0 < len(value) <= 64 and value.isprintable() and " " not in value):
                raise ValueError(
                    f"redis_node_name must be 1..64 printable characters without spaces, "
                    f"not {value!r}"
                )
        elif name == "persistence_interval":
            if not 0 < value <= 3600:
                raise ValueError(
                    f"persistence_interval must be more than 0 and at most 3600 seconds, not "
                    f"{value}"
                )
        elif name == "connect_timeout":
            if not 0 < value <= 3600:
                raise ValueError(
                    f"connect_timeout must be more than 0 and at most 3600 seconds, not {value}"
                )


class SharedGroup:
    """Subscribers of one ``$share/{name}/{filter}``: each message goes to one of them."""

    __slots__ = ("name", "filter", "members", "_next", "peers")

    def __init__(self, name: str, filter: str, peers: Peers = LOCAL) -> None:
        self.name = name
        self.filter = filter
        self.members: dict[Any, int] = {}  # Outlet -> options
        self._next = 0
        self.peers = peers  # with other nodes: one delivery per group across all of them

    def pick(self, msg: Any, origin: Any) -> tuple[Any, int] | None:
        """Round robin over the members, preferring ones that are connected."""
        if not self.peers.is_mine(self.name, self.filter, msg):
            return None  # another node's member gets this one
        members = list(self.members.items())
        n = len(members)
        for i in range(n):
            outlet, opts = members[(self._next + i) % n]
            if outlet.transport is not None:
                self._next = (self._next + i + 1) % n
                return outlet, opts
        if members:
            # Nobody online: queue on the next member (QoS 1/2 waits for its session).
            outlet, opts = members[self._next % n]
            self._next = (self._next + 1) % n
            return outlet, opts
        return None


_NO_IDS: frozenset[int] = frozenset()


class _NoSubscriptions(dict[str, int]):
    """The subscriptions of every session that has none yet, shared: an empty dict is 64 bytes
    held by every idle connection that never subscribes (issue 16). Read like any dict (an
    unknown filter's ``pop`` changes nothing); a session gets a dict of its own at its first
    subscription (Broker.subscribe), and writing here is a bug."""

    def __setitem__(self, key: str, value: int) -> None:
        raise TypeError("a session's own subscriptions dict is made by its first subscription")


_NO_SUBS = _NoSubscriptions()


class Session:
    """State that belongs to a client id and may outlive its network connection."""

    __slots__ = (  # fixed fields: one per connection, so no __dict__ (benchmarks/memory.py)
        "client_id",
        "outlet",
        "subscriptions",
        "awaiting_rel",
        "connection",
        "expiry_interval",
        "expiry_handle",
        "will",
        "will_handle",
        "owner",
        "security",
        "offline_since",
    )

    def __init__(self, client_id: str, outlet: Any) -> None:
        self.client_id = client_id
        self.outlet = outlet
        outlet.session = self
        #: filter as subscribed (``$share/...`` included) -> subscription options byte (the
        #: shared empty _NO_SUBS until the first)
        self.subscriptions: dict[str, int] = _NO_SUBS
        #: inbound QoS 2 packet ids delivered and awaiting PUBREL [MQTT-4.3.3-10] (a set made
        #: by the first: an empty set is 216 bytes, held by every idle connection)
        self.awaiting_rel: set[int] | frozenset[int] = _NO_IDS
        self.connection: Connection | None = None
        #: seconds the session lives after disconnect; 0 ends it with the connection,
        #: 0xFFFFFFFF never expires (MQTT 5 Session Expiry Interval; 3.1.1 clean session = 0)
        self.expiry_interval = 0
        self.expiry_handle: asyncio.TimerHandle | None = None
        #: a will waiting for its MQTT 5 Will Delay Interval, and its timer
        self.will: Any = None
        self.will_handle: asyncio.TimerHandle | None = None
        #: the user name of the client that made it (its connection's since); only that user
        #: takes it over once clients authenticate (BrokerConfig.session_owner_check)
        self.owner: str | None = None
        #: the listener's own mqttd.security.Security its client came through, if it has one
        self.security: Any = None
        #: wall-clock time its client left (0 while connected): a restored session's expiry
        #: counts from it (mqttd.sessionstate)
        self.offline_since = 0.0

    def release_later(self, packet_id: int) -> None:
        """A QoS 2 PUBLISH was delivered: its id awaits the PUBREL [MQTT-4.3.3-10]."""
        if self.awaiting_rel is _NO_IDS:
            self.awaiting_rel = set()
        self.awaiting_rel.add(packet_id)  # type: ignore[union-attr]


class Broker:
    """One mqttd node with in-process routing."""

    def __init__(self, config: BrokerConfig | None = None, storage: Storage | None = None) -> None:
        self.config = config or BrokerConfig()
        self.config.validate()
        #: retained messages, sessions and client-id ownership (in memory unless told otherwise)
        self.storage: Storage = storage if storage is not None else MemoryStorage()
        self.tree = match.SubscriptionTree()
        self.shared: dict[tuple[str, str], SharedGroup] = {}
        self.connections: set[Connection] = set()
        #: the event loop (or a test's fake one), given by attach(): the clock, the timers
        self.loop: asyncio.AbstractEventLoop | None = None
        self.flusher: Any = None
        #: refresh_expiry bound once, for every outlet (a bound method each is 64 bytes)
        self._refresh = self.refresh_expiry
        #: the connections' CONNECT deadlines and keep-alive checks, on one timer
        self.deadlines = Deadlines(None)
        self.flow: FlowControl = FlowControl(self)
        self.started_at = time.time()
        self.stats = {
            "messages_received": 0,
            "messages_sent": 0,
            "bytes_received": 0,
            "connections_total": 0,
            "packets_received": 0,
            "subscriptions_total": 0,
            "unsubscriptions_total": 0,
            # connections closed for max_incoming_bytes
            "refused_incoming": 0,
        }
        #: PUBLISH received, and their payload bytes, by QoS
        self.received_qos = [0, 0, 0]
        self.received_payload_bytes = [0, 0, 0]
        #: CONNECTs refused, by reason code (the MQTT 5 code; 3.1.1 clients got its equivalent)
        self.refused: dict[int, int] = {}
        #: clients past CONNECT (counted against max_connections), and per IP address
        self.clients = 0
        self.clients_per_ip: dict[str, int] = {}
        #: bytes in partly received packets across all connections (max_incoming_bytes)
        self.incoming = 0
        #: password file, ACL, certificate identity (mqttd.security); None: none configured
        self.security: Any = None
        #: Hooks for the library layer (mqttd.app). Each is None or empty unless registered, so
        #: they cost nothing on the hot path otherwise.
        #: ``authenticate(conn, username, password)``: a reason code (< 0x80 accepts), or an
        #: awaitable of one; awaited before the session is attached (packets are held meanwhile).
        self.authenticate: Callable[[Any, str | None, bytes | None], Any] | None = None
        #: ``authorize_publish(conn, msg, packet_id)`` before routing: a reason code (< 0x80 allows), a
        #: replacement Message, or an awaitable of either (the connection's packets wait for it).
        self.authorize_publish: Callable[[Any, Any, int | None], Any] | None = None
        #: ``authorize_subscribe(conn, filter, qos)``: the QoS granted (0-2, may be lower than
        #: asked) or a refusal >= 0x80, or an awaitable of that.
        self.authorize_subscribe: Callable[[Any, str, int], Any] | None = None
        #: observers, called after the fact and never waited for
        self.publish_observers: list[Callable[[Any, Any, int | None], None]] = []
        self.subscribe_observers: list[Callable[[Any, str, int], None]] = []
        self.connect_observers: list[Callable[[Any], None]] = []
        self.disconnect_observers: list[Callable[[Any], None]] = []
        #: enhanced authentication methods by name (MQTT 5 §4.12); see mqttd.auth
        self.authenticators: dict[str, Authenticator] = {}
        #: the other nodes (mqttd.peers): none unless the node joined them through Redis
        self.peers: Peers = LOCAL
        #: 128 random bits per node: unique across the nodes of a deployment, whatever their
        #: host names or start order (secrets, not the object's address, which repeats)
        self._assigned_prefix = f"mqttd-{secrets.token_hex(16)}-"
        self._next_assigned = 0

    # -- lifecycle -------------------------------------------------------------------------------
    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run on ``loop``: its clock and timers for sessions and wills, its turns for the
        coalesced writes (mqttd.node does this at start; a test may give a fake loop)."""
        self.loop = loop
        self.flusher = route.Flusher(loop)
        self.deadlines.close()
        self.deadlines = Deadlines(loop)
        self.flow.stop()
        self.flow = FlowControl(self)
        self.flow.start()
        self.started_at = time.time()

    def close_connections(self) -> None:
        """The node is stopping: every connection is told (MQTT 5: DISCONNECT 0x8B) and closed."""
        for conn in list(self.connections):
            conn.shutdown()

    def stop_timers(self) -> None:
        """The node has stopped (its connections ended, which may have armed expiry timers): no
        session expires later."""
        for session in self.sessions.values():
            if session.expiry_handle is not None:
                session.expiry_handle.cancel()
        self.deadlines.close()
        self.flow.stop()

    @property
    def instant(self) -> bool:
        """Sessions are found without waiting: a local storage and no other nodes."""
        return self.storage.instant and not self.peers.remote

    @property
    def bridge(self) -> Any:
        """The Redis bridge, or None: what mqttd 0.6.0 programs read; ``peers`` says it now."""
        return self.peers if self.peers.remote else None

    def health_check(self) -> dict[str, Any]:
        """Figures for a health endpoint: connections, messages, and the Redis state."""
        flusher = self.flusher
        out: dict[str, Any] = {
            "status": "ok",
            "connections": len(self.connections),
            "sessions": len(self.sessions),
            "subscriptions": len(self.tree),
            "retained": self.storage.retained_count(),
            "messages_received": self.stats["messages_received"],
            "messages_sent": flusher.messages_sent if flusher is not None else 0,
            "messages_dropped": flusher.messages_dropped if flusher is not None else 0,
        }
        if self.peers.remote:
            out.update(self.peers.health())
            if out.get("redis") != "up":
                out["status"] = "degraded"  # local clients are served; other nodes are not
        return out

    # -- sessions --------------------------------------------------------------------------------
    @property
    def sessions(self) -> dict[str, Session]:
        """The sessions this node holds, by client id."""
        return self.storage.sessions()

    def assign_client_id(self) -> str:
        """A client id for a client that sent none [MQTT-3.1.3-6]: this node's random part and a
        counter, so that no two nodes of a deployment ever hand out the same one (a shared id
        would make one client take the other over)."""
        self._next_assigned += 1
        return f"{self._assigned_prefix}{self._next_assigned}"

    def session_owner(self, client_id: str) -> tuple[bool, str | None]:
        """(True, user name) of this node's session or connection of ``client_id``, or
        (False, None) when it has none."""
        session = self.storage.sessions().get(client_id)
        if session is not None:
            return True, session.owner
        return False, None

    def refresh_rights(self) -> None:
        """The ACL changed (SIGHUP): every session's rights again, connected or not, so that a
        client whose rights were removed stops receiving what it may no longer read."""
        for session in list(self.storage.sessions().values()):
            # the rules of the listener it came through, else the node's
            security = session.security if session.security is not None else self.security
            rights = None if security is None else security.rights(session.owner, session.client_id)
            session.outlet.readable = None if rights is None else rights.may_read
            if session.connection is not None:
                session.connection.rights = rights

    async def open_session(
        self, conn: Connection, client_id: str, clean_start: bool, version: int
    ) -> tuple[Session, bool]:
        """Attach ``conn`` to the session of ``client_id``; returns (session, session_present).

        An existing connection with the same client id is taken over: it is closed
        [MQTT-3.1.4-3] (MQTT 5: DISCONNECT 0x8E first), and its will, if any, is published or
        cancelled (:meth:`Connection.taken_over`). The old session is resumed only when the new
        connection asks for it (Clean Start 0) and the old one outlives its connection: the state
        of a CleanSession 1 / Session Expiry 0 session is never reused [MQTT-3.1.2-6], so the
        new connection gets Session Present 0 [MQTT-3.2.2-3] and an empty session.
        """
        previous = await self.storage.claim(client_id, conn)
        if previous is not None:
            if previous.will_shared:
                # Its will is this node's to publish or cancel now, not the other nodes'
                previous.will_shared = False
                self.peers.will_gone(client_id)
            previous.taken_over(_resumes(previous.session, clean_start))
        # Another node's connection is closed too; its session comes here if wanted
        handed = await self.peers.acquire_session(client_id, clean_start)
        old = await self.storage.get_session(client_id)
        resume = _resumes(old, clean_start)
        if old is not None and old.connection is not None:
            if old.connection is not previous:
                old.connection.taken_over(resume)
            old.connection = None  # its connection_lost now sees a takeover
        if old is not None:
            if old.expiry_handle is not None:
                old.expiry_handle.cancel()
                old.expiry_handle = None
            # Back before its Will Delay Interval passed: no will [MQTT-3.1.3-9]
            self.cancel_will(old)
        if old is not None and not resume:
            self.end_session(old)
            old = None
        if old is None:
            session = self.new_session(client_id, version)
            present = False
            if handed is not None:
                self.peers.restore_session(session, handed)
                present = True
        else:
            session = old
            present = True
        session.connection = conn
        session.offline_since = 0.0
        session.outlet.version = version
        return session, present

    def new_session(self, client_id: str, version: int) -> Session:
        """An empty session for ``client_id``, kept in the store."""
        cfg = self.config
        outlet = route.Outlet(
            self.flusher,
            version,
            cfg.max_inflight,
            cfg.max_queued_messages,
            cfg.max_buffer,
            cfg.max_queued_bytes,
            cfg.max_inflight_bytes,
        )
        outlet.refresh = self._refresh
        session = Session(client_id, outlet)
        self.storage.put_session(session)
        return session

    def revive(self, state: dict[str, Any]) -> Session | None:
        """Bring back an offline session written before a restart (mqttd.sessionstate): its
        subscriptions, queued and in-flight messages, its will with delay and its expiry, counted
        from when its client left. None when it expired meanwhile (its will is published then,
        as the session ends [MQTT-3.1.3-9])."""
        now = time.time()
        session = self.new_session(state["client_id"], 5)
        sessionstate.restore(self, session, state)
        session.offline_since = state["offline_since"]
        if state.get("will"):
            session.will = sessionstate.unpack_message(state["will"])
            due = state.get("will_due") or now
            if self.loop is not None:
                session.will_handle = self.loop.call_later(
                    max(0.0, due - now), self._fire_will, session
                )
        expiry = session.expiry_interval
        left = expiry - (now - session.offline_since)
        if expiry < 0xFFFFFFFF and left <= 0:
            self.end_session(session)
            return None
        if expiry < 0xFFFFFFFF and self.loop is not None:
            session.expiry_handle = self.loop.call_later(left, self._expire, session)
        return session

    def detach(
        self, session: Session, conn: Connection, will: Any = None, will_delay: int = 0
    ) -> None:
        """The connection of ``session`` ended; publish its will, keep the session or end it.

        The will is published at once, or after its MQTT 5 Will Delay Interval, or when the
        session ends, whichever comes first (MQTT 5 §3.1.3.2.2).
        """
        self.storage.release(session.client_id, conn)
        if session.connection is not conn:
            # Taken over: Connection.taken_over already decided about the will (a delay of 0
            # left means: publish it now) [MQTT-3.1.4-3][MQTT-3.1.3-9]
            if will is not None and will_delay == 0:
                self.publish(will)
            return
        session.connection = None
        session.offline_since = time.time()
        if conn.will_shared:
            self.peers.will_gone(session.client_id)  # this node publishes it, or it was dropped
        outlet = session.outlet
        outlet.transport = None
        outlet.buf = bytearray()
        outlet.paused = False
        outlet.wake()  # an offline session holds no publisher back
        if will is not None:
            if will_delay == 0 or session.expiry_interval == 0:
                self.publish(will)
            elif self.loop is not None:
                session.will = will
                session.will_handle = self.loop.call_later(
                    min(will_delay, session.expiry_interval), self._fire_will, session
                )
        if session.expiry_interval == 0:
            if conn.was_cut:
                # Disconnected for not reading (mqttd.flow): what it held is lost, counted
                for _ in range(len(outlet.queue) + len(outlet.inflight)):
                    outlet.drop("slow_client")
            self.end_session(session)
        elif session.expiry_interval < 0xFFFFFFFF and self.loop is not None:
            session.expiry_handle = self.loop.call_later(
                session.expiry_interval, self._expire, session
            )

    def _fire_will(self, session: Session) -> None:
        session.will_handle = None
        will, session.will = session.will, None
        if will is not None:
            self.publish(will)

    def cancel_will(self, session: Session) -> None:
        """Forget a will waiting for its delay (the client came back, or its session moved)."""
        if session.will_handle is not None:
            session.will_handle.cancel()
            session.will_handle = None
        session.will = None

    def _expire(self, session: Session) -> None:
        session.expiry_handle = None
        if session.connection is None and self.sessions.get(session.client_id) is session:
            self.end_session(session)

    def end_session(self, session: Session, moved: bool = False) -> None:
        """The session ends (``moved``: it went to another node, which now holds it)."""
        if not moved and session.expiry_interval:
            self.peers.forget_session(session.client_id)
        if session.will is not None:
            # The session ends before the will's delay: the will goes now (MQTT 5 §3.1.3.2.2)
            will = session.will
            self.cancel_will(session)
            self.publish(will)
        for filt in list(session.subscriptions):
            self.unsubscribe(session, filt)
        self.storage.drop_session(session)
        session.outlet.clear()

    # -- subscriptions ---------------------------------------------------------------------------
    def subscribe(self, session: Session, filt: str, options: int) -> bool:
        """Add or replace a subscription [MQTT-3.8.4-3]; True when it is new."""
        shared = match.parse_shared(filt)
        outlet = session.outlet
        inner = filt if shared is None else shared[1]
        first = inner not in self.tree
        if shared is not None:
            group = self.shared.get(shared)
            if group is None:
                group = self.shared[shared] = SharedGroup(shared[0], inner, self.peers)
                self.tree.add(inner, group, 0)
                self.peers.announce_groups()
            new = outlet not in group.members
            group.members[outlet] = options
        else:
            new = self.tree.add(filt, outlet, options)
        if session.subscriptions is _NO_SUBS:
            session.subscriptions = {}
        session.subscriptions[filt] = options
        self.stats["subscriptions_total"] += 1
        if first:
            self.peers.filter_added(inner)
        return new

    def unsubscribe(self, session: Session, filt: str) -> bool:
        if session.subscriptions.pop(filt, None) is None:
            return False
        self.stats["unsubscriptions_total"] += 1
        shared = match.parse_shared(filt)
        inner = filt
        if shared is not None:
            inner = shared[1]
            group = self.shared.get(shared)
            if group is not None:
                group.members.pop(session.outlet, None)
                if not group.members:
                    del self.shared[shared]
                    self.tree.remove(group.filter, group)
                    self.peers.announce_groups()
        else:
            self.tree.remove(filt, session.outlet)
        if inner not in self.tree:
            self.peers.filter_removed(inner)
        return True

    def routes_ready(self, filters: list[str]) -> Awaitable[Any] | None:
        """Something to wait for until what other nodes publish to ``filters`` reaches this node
        (at most ROUTE_WAIT seconds), or None when it already does."""
        waits = [w for f in filters if (w := self.peers.route_ready(f)) is not None]
        return asyncio.wait(waits, timeout=ROUTE_WAIT) if waits else None

    def retained_matching(self, filt: str) -> list[Any] | None:
        """Retained messages for a new subscription to ``filt``, if the store has them at hand
        (else None: use :meth:`fetch_retained`). Expired ones are dropped [MQTT-3.3.2-5]."""
        found = self.storage.retained_now(filt)
        return None if found is None else self._fresh(found)

    async def fetch_retained(self, filt: str) -> list[Any]:
        return self._fresh(await self.storage.retained(filt))

    def _fresh(self, msgs: list[Any]) -> list[Any]:
        out = []
        for msg in msgs:
            if msg.expires_at:
                fresh = self.refresh_expiry(msg)
                if fresh is None:
                    self.storage.forget_retained(msg.topic, msg)
                    continue
                msg = fresh
            out.append(msg)
        return out

    def refresh_expiry(self, msg: Any) -> Any:
        """``msg`` with its Message Expiry Interval reduced by the time it waited, or None.

        A message whose interval has passed is not delivered [MQTT-3.3.2-5]; one that waited goes
        out with the interval that is left [MQTT-3.3.2-6].
        """
        left = msg.expires_at - time.monotonic()
        if left <= 0:
            return None
        seconds = math.ceil(left)
        if seconds == msg.properties.get(MESSAGE_EXPIRY_INTERVAL):
            return msg
        props = dict(msg.properties)
        props[MESSAGE_EXPIRY_INTERVAL] = seconds
        fresh = route.Message(
            msg.topic,
            msg.payload,
            msg.qos,
            msg.retain,
            props,
            codec.encode_properties(props),
            msg.origin,
        )
        fresh.expires_at = msg.expires_at
        return fresh

    # -- publishing ------------------------------------------------------------------------------
    def publish(self, msg: Any, origin: Any = None) -> int:
        """Route one message to every matching subscriber on this node; keep it if retained."""
        if msg.retain:
            # Kept, or cleared by an empty payload [MQTT-3.3.1-6][MQTT-3.3.1-7]
            self.storage.retain(msg)
        peers = self.peers
        # Two calls that do nothing for a node alone are 50 ns of a ~300 ns publish: asked once.
        # $SYS is per node, as in Mosquitto: never stamped nor forwarded, whatever the transport
        # (one first-character test here, not a startswith in every transport: 80 ns a message)
        topic = msg.topic
        remote = peers.remote and not (topic[0] == "$" and topic.startswith("$SYS"))
        if remote:
            peers.stamp(msg)  # its identity across nodes, before any shared group picks
        nodes = self.tree.collect(msg.topic)
        count = route.deliver(nodes, msg, origin) if nodes else 0
        if remote:
            peers.forward(msg)  # the other nodes' subscribers ($SYS stays here, as in Mosquitto)
        return count

    def deliver_remote(self, msg: Any) -> int:
        """A message another node published: to this node's subscribers only."""
        if msg.retain:
            # Every node keeps the retained messages it hears of, for its later subscribers
            self.storage.retain(msg)
        nodes = self.tree.collect(msg.topic)
        return route.deliver(nodes, msg, None) if nodes else 0

    def make_message(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        properties: dict | None,
        origin: Any = None,
    ) -> Any:
        """A Message with the MQTT 5 properties that are forwarded to subscribers."""
        block = b"\x00"
        props = properties or {}
        if props:
            fwd = {k: v for k, v in props.items() if k not in _NOT_FORWARDED}
            if fwd:
                block = codec.encode_properties(fwd)
            props = fwd
        msg = route.Message(topic, payload, qos, retain, props, block, origin)
        expiry = props.get(MESSAGE_EXPIRY_INTERVAL)
        if expiry is not None:
            msg.expires_at = time.monotonic() + expiry
        return msg


def _resumes(session: Session | None, clean_start: bool) -> bool:
    """Whether a new connection with ``clean_start`` carries on ``session``: only Clean Start 0,
    and only a session that outlives its connection (3.1.1 CleanSession 0, MQTT 5 Session Expiry
    above 0) [MQTT-3.1.2-6][MQTT-3.1.2-4]."""
    return session is not None and not clean_start and session.expiry_interval != 0


def tls_context(certfile: str, keyfile: str | None = None) -> ssl.SSLContext:
    """A server-side TLS context from PEM files (TLS 1.2 and later).

    ValueError in one line saying which file is wrong and why: OpenSSL only says ``PEM lib``
    for a missing key, a key given as the certificate or the two swapped, so the PEM blocks of
    each file are looked at first."""
    fail = "cannot load the TLS certificate: "

    def blocks(role: str, path: str) -> tuple[bool, bool, bool]:
        """(holds a certificate, holds a private key, the key is encrypted) of a PEM file."""
        try:
            with open(path, "rb") as f:
                pem = f.read()
        except OSError as exc:
            raise ValueError(f"{fail}cannot read {role} {path}: {exc.strerror or exc}") from None
        # -----BEGIN PRIVATE KEY-----, or RSA / EC / ENCRYPTED ... PRIVATE KEY
        key = any(
            line.startswith(b"-----BEGIN ") and line.rstrip().endswith(b"PRIVATE KEY-----")
            for line in pem.splitlines()
        )
        encrypted = b"ENCRYPTED PRIVATE KEY" in pem or b"Proc-Type: 4,ENCRYPTED" in pem
        return b"-----BEGIN CERTIFICATE-----" in pem, key, encrypted

    cert_has_cert, cert_has_key, encrypted = blocks("certfile", certfile)
    key_path, key_has_cert, key_has_key = certfile, False, cert_has_key
    if keyfile is not None:  # the key is read from there, not from the certfile
        key_path = keyfile
        key_has_cert, key_has_key, encrypted = blocks("keyfile", keyfile)
    if not cert_has_cert:
        if key_has_cert and cert_has_key:
            raise ValueError(
                f"{fail}certfile {certfile} holds a private key and keyfile {keyfile} a "
                f"certificate: swapped? (--certfile {keyfile} --keyfile {certfile})"
            )
        if cert_has_key:
            raise ValueError(f"{fail}certfile {certfile} holds no certificate (is it the key?)")
        raise ValueError(
            f"{fail}certfile {certfile} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        )
    if not key_has_key:
        if keyfile is None:
            raise ValueError(f"{fail}certfile {certfile} has no private key; give --keyfile")
        if key_has_cert:
            raise ValueError(
                f"{fail}keyfile {keyfile} holds no private key (is it the certificate?)"
            )
        raise ValueError(f"{fail}keyfile {keyfile} holds no PEM private key")
    if encrypted:
        # OpenSSL would ask for the passphrase on the terminal, or fail with "PEM lib"
        raise ValueError(
            f"{fail}the private key in {key_path} is encrypted; mqttd needs it without a "
            f"passphrase (openssl pkey -in {key_path} -out key.pem)"
        )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(certfile, keyfile)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ValueError(
                f"{fail}the key in {key_path} does not match the certificate in {certfile}"
            ) from None
        raise ValueError(f"{fail}{certfile}: {exc.reason or exc}") from None
    except OSError as exc:
        raise ValueError(f"{fail}{certfile}: {exc.strerror or exc}") from None
    return ctx


# Topic Alias is per network connection (MQTT 5 §3.3.2.3.4) and Subscription Identifiers are per
# subscription (§3.3.4): neither is forwarded as the publisher sent it.
# The Will Delay Interval is the will's own, not a PUBLISH property.
_NOT_FORWARDED = frozenset({0x23, 0x0B, 0x18})
MESSAGE_EXPIRY_INTERVAL = 0x02
