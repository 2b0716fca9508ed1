"""The library: an MQTT broker with your own logic inside a Python program.

    from mqttd import MQTTApp, MQTTMessage, MQTTClient

    app = MQTTApp(port=1883)

    @app.subscribe("sensors/temperature")
    async def on_subscribe(topic: str, client: MQTTClient) -> None: ...

    @app.publish_handler("sensors/+")
    async def on_publish(message: MQTTMessage, client: MQTTClient) -> None: ...

    app.run()

The interface is the one of the ``mqttd`` 0.5.x package, so programs written for it run
unchanged; underneath is the same broker as the ``mqttd`` command (:class:`mqttd.broker.Broker`).
Handlers observe and never sit on the delivery path: they run after the broker has routed the
message, as their own tasks. What must decide before routing (deny, rewrite, lower a QoS) is an
authorization hook, which is on the hot path only when one is registered.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import logging
import os
import ssl
import sys
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Protocol, TypeAlias, TypeVar

from mqttd import options
from mqttd._speedups import match, route

# "X as X" re-exports explicitly (see below), so that a program checked with mypy --strict, which
# does not re-export imported names implicitly, may import them from here
from mqttd.auth import BAD_USERNAME_OR_PASSWORD as BAD_USERNAME_OR_PASSWORD
from mqttd.auth import NOT_AUTHORIZED as NOT_AUTHORIZED
from mqttd.auth import QUOTA_EXCEEDED as QUOTA_EXCEEDED
from mqttd.auth import SUCCESS as SUCCESS
from mqttd.auth import UNSPECIFIED_ERROR as UNSPECIFIED_ERROR
from mqttd.broker import Broker, ListenerConfig
from mqttd.constants import (
    CONTENT_TYPE,
    CORRELATION_DATA,
    FAILURE_THRESHOLD,
    MESSAGE_EXPIRY_INTERVAL,
    PAYLOAD_FORMAT_INDICATOR,
    RESPONSE_TOPIC,
    SUBSCRIPTION_IDENTIFIER,
    USER_PROPERTY,
)
from mqttd.logs import setup_logging
from mqttd.node import Node, run, serve

log = logging.getLogger("mqttd")

# Reason codes a hook may return (MQTT 5 §2.4; 3.1.1 clients get their nearest equivalent) are
# those of mqttd.auth, re-exported here: SUCCESS, UNSPECIFIED_ERROR, BAD_USERNAME_OR_PASSWORD,
# NOT_AUTHORIZED, QUOTA_EXCEEDED.

#: MQTT 5 PUBLISH properties by the names MQTTMessage.properties uses
PROPERTY_NAMES: dict[int, str] = {
    PAYLOAD_FORMAT_INDICATOR: "payload_format_indicator",
    MESSAGE_EXPIRY_INTERVAL: "message_expiry_interval",
    CONTENT_TYPE: "content_type",
    RESPONSE_TOPIC: "response_topic",
    CORRELATION_DATA: "correlation_data",
    USER_PROPERTY: "user_property",
    SUBSCRIPTION_IDENTIFIER: "subscription_identifier",
}
PROPERTY_IDS: dict[str, int] = {v: k for k, v in PROPERTY_NAMES.items()}


class QoS(IntEnum):
    """Quality of Service levels."""

    AT_MOST_ONCE = 0
    AT_LEAST_ONCE = 1
    EXACTLY_ONCE = 2


@dataclass
class MQTTMessage:
    """One application message, as a client published it."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    #: the publisher's packet id (QoS 1/2); None for QoS 0 and for messages the app publishes
    packet_id: int | None = None
    #: MQTT 5 properties by name (``response_topic``, ``correlation_data``, ``content_type``,
    #: ``user_property`` as a list of (name, value), ``message_expiry_interval``, ...)
    properties: dict[str, Any] = field(default_factory=dict)

    @property
    def payload_str(self) -> str:
        """The payload decoded as UTF-8 (undecodable bytes become U+FFFD)."""
        return self.payload.decode("utf-8", errors="replace")

    @property
    def payload_json(self) -> Any:
        """The payload parsed as JSON (``json.JSONDecodeError`` if it is not)."""
        return json.loads(self.payload)


@dataclass
class MQTTClient:
    """A connected client, as handlers see it."""

    client_id: str
    username: str | None = None
    password: str | None = None
    keepalive: int = 60
    clean_session: bool = True
    #: (host, port) of the client's end of the connection
    address: tuple[Any, ...] | None = None
    #: 3 (MQTT 3.1), 4 (3.1.1) or 5
    protocol_version: int = 4
    connection_id: str | None = None  # for 0.5.x compatibility (its QUIC connections)
    #: the client's TLS certificate as ``ssl.SSLSocket.getpeercert()`` gives it (subject,
    #: issuer, notAfter, ...), on a listener with ``cafile``; None otherwise
    certificate: dict[str, Any] | None = None

    def __str__(self) -> str:
        return f"MQTTClient(id={self.client_id}, user={self.username})"


# -- what a handler must be ------------------------------------------------------------------------
# Callback protocols, so that mypy --strict finds a wrong handler in the user's program: one
# that takes other arguments than those the library passes, or answers with something the
# library cannot use. The parameters are positional-only because the library passes them by
# position: the handler may name them as it likes. Each decorator takes the plain form or the
# async one (any callable returning an awaitable), and gives the handler back as it was (a
# TypeVar bound to the two), so that it keeps its own signature for the program's other uses.

#: what a subscribe handler may return: sent to the new subscriber (bytes-like or str), or nothing
SubscribeReply: TypeAlias = bytes | bytearray | memoryview | str | None
#: what ``@app.authenticate`` may return: True/False, or an MQTT reason code (0 accepts)
AuthenticateResult: TypeAlias = bool | int
#: what ``@app.authorize_publish`` may return: True/False, a reason code, or a rewritten message
AuthorizePublishResult: TypeAlias = bool | int | MQTTMessage
#: what ``@app.authorize_subscribe`` may return: True/False, the QoS 0-2 granted at most, or a
#: reason code >= 0x80
AuthorizeSubscribeResult: TypeAlias = bool | int


class SubscribeHandler(Protocol):
    """``@app.subscribe``: ``handler(topic, client) -> bytes | str | None``."""

    def __call__(self, topic: str, client: MQTTClient, /) -> SubscribeReply: ...


class AsyncSubscribeHandler(Protocol):
    """``@app.subscribe``: ``async handler(topic, client) -> bytes | str | None``."""

    def __call__(self, topic: str, client: MQTTClient, /) -> Awaitable[SubscribeReply]: ...


class PublishHandler(Protocol):
    """``@app.publish_handler``: ``handler(message, client) -> None`` (an observer: nothing it
    could return would be used)."""

    def __call__(self, message: MQTTMessage, client: MQTTClient, /) -> None: ...


class AsyncPublishHandler(Protocol):
    """``@app.publish_handler``: ``async handler(message, client) -> None``."""

    def __call__(self, message: MQTTMessage, client: MQTTClient, /) -> Awaitable[None]: ...


class ClientHandler(Protocol):
    """``@app.on_connect``, ``@app.on_disconnect``: ``handler(client) -> None``."""

    def __call__(self, client: MQTTClient, /) -> None: ...


class AsyncClientHandler(Protocol):
    """``@app.on_connect``, ``@app.on_disconnect``: ``async handler(client) -> None``."""

    def __call__(self, client: MQTTClient, /) -> Awaitable[None]: ...


class AuthenticateHook(Protocol):
    """``@app.authenticate``: ``hook(client, username, password) -> bool | int``."""

    def __call__(
        self, client: MQTTClient, username: str | None, password: str | None, /
    ) -> AuthenticateResult: ...


class AsyncAuthenticateHook(Protocol):
    """``@app.authenticate``: ``async hook(client, username, password) -> bool | int``."""

    def __call__(
        self, client: MQTTClient, username: str | None, password: str | None, /
    ) -> Awaitable[AuthenticateResult]: ...


class AuthorizePublishHook(Protocol):
    """``@app.authorize_publish``: ``hook(message, client) -> bool | int | MQTTMessage``."""

    def __call__(self, message: MQTTMessage, client: MQTTClient, /) -> AuthorizePublishResult: ...


class AsyncAuthorizePublishHook(Protocol):
    """``@app.authorize_publish``: ``async hook(message, client) -> bool | int | MQTTMessage``."""

    def __call__(
        self, message: MQTTMessage, client: MQTTClient, /
    ) -> Awaitable[AuthorizePublishResult]: ...


class AuthorizeSubscribeHook(Protocol):
    """``@app.authorize_subscribe``: ``hook(topic, qos, client) -> bool | int``."""

    def __call__(self, topic: str, qos: int, client: MQTTClient, /) -> AuthorizeSubscribeResult: ...


class AsyncAuthorizeSubscribeHook(Protocol):
    """``@app.authorize_subscribe``: ``async hook(topic, qos, client) -> bool | int``."""

    def __call__(
        self, topic: str, qos: int, client: MQTTClient, /
    ) -> Awaitable[AuthorizeSubscribeResult]: ...


SubscribeHandlerT = TypeVar("SubscribeHandlerT", bound=SubscribeHandler | AsyncSubscribeHandler)
PublishHandlerT = TypeVar("PublishHandlerT", bound=PublishHandler | AsyncPublishHandler)
ClientHandlerT = TypeVar("ClientHandlerT", bound=ClientHandler | AsyncClientHandler)
AuthenticateHookT = TypeVar("AuthenticateHookT", bound=AuthenticateHook | AsyncAuthenticateHook)
AuthorizePublishHookT = TypeVar(
    "AuthorizePublishHookT", bound=AuthorizePublishHook | AsyncAuthorizePublishHook
)
AuthorizeSubscribeHookT = TypeVar(
    "AuthorizeSubscribeHookT", bound=AuthorizeSubscribeHook | AsyncAuthorizeSubscribeHook
)
#: ``@app.on_startup`` / ``@app.on_shutdown``: ``hook()`` or ``async hook()``
LifespanHookT = TypeVar("LifespanHookT", bound=Callable[[], None] | Callable[[], Awaitable[None]])

# The arguments each decorator's handlers are called with, by position (for the check below)
_SUBSCRIBE_ARGS = ("topic", "client")
_PUBLISH_ARGS = ("message", "client")
_CLIENT_ARGS = ("client",)
_AUTHENTICATE_ARGS = ("client", "username", "password")
_AUTHORIZE_SUBSCRIBE_ARGS = ("topic", "qos", "client")


def _check_handler(func: object, decorator: str, args: tuple[str, ...]) -> None:
    """Refuse, as it is registered, a handler that cannot be called with ``args``: called only
    at the first event, it would fail at every one, each time with a traceback in the log (and
    an authentication hook would refuse every client). Whatever can take them is accepted:
    extra parameters with defaults, ``*args``, bound methods, partials, callable objects."""
    if not callable(func):
        raise TypeError(f"@app.{decorator} handler must be callable, not {type(func).__name__}")
    try:
        sig = _signature(func)
    except (TypeError, ValueError):
        # Some callables written in C have no signature to read: nothing to hold against them,
        # and a wrong one still fails, logged, when it is called
        return
    try:
        sig.bind(*args)
    except TypeError:
        raise TypeError(
            f"@app.{decorator} handler {_describe(func, sig)} must accept ({', '.join(args)})"
        ) from None


def _signature(func: Callable[..., Any]) -> inspect.Signature:
    options: dict[str, Any] = {}
    if sys.version_info >= (3, 14):
        # From 3.14 annotations are evaluated when read: one naming what is imported only under
        # TYPE_CHECKING must not fail the check, which needs the parameters, not their types
        import annotationlib

        options["annotation_format"] = annotationlib.Format.FORWARDREF
    try:
        # What will be called is what must take the arguments, not the function a decorator
        # wrapped (its __wrapped__): a (*args) wrapper that adds an argument of its own, as a
        # dependency injector does, is fine though the function alone could not be called so
        return inspect.signature(func, follow_wrapped=False, **options)
    except ValueError:
        # A wrapper written in C (functools.lru_cache) shows its signature only by __wrapped__
        return inspect.signature(func, **options)


def _describe(func: object, sig: inspect.Signature) -> str:
    """``name(parameters)`` as the user wrote them, annotations left out (they are long and say
    nothing about what can be passed)."""
    bare = sig.replace(
        parameters=[p.replace(annotation=p.empty) for p in sig.parameters.values()],
        return_annotation=sig.empty,
    )
    return f"{_name(func)}{bare}"


def _name(func: object) -> str:
    if isinstance(func, functools.partial):
        return f"partial({_name(func.func)})"
    name = getattr(func, "__name__", None)
    return name if isinstance(name, str) else type(func).__name__  # a callable object: its class


@dataclass
class _Route:
    pattern: str | None
    func: Callable[..., Any]
    qos: int = 0


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", errors="surrogateescape")


def _check_pattern(pattern: str) -> str:
    if not isinstance(pattern, str) or not match.validate_filter(pattern):
        raise ValueError(f"not a valid MQTT topic filter: {pattern!r}")
    return pattern


def _property_ids(props: dict[Any, Any] | None) -> dict[int, Any]:
    out: dict[int, Any] = {}
    for key, value in (props or {}).items():
        pid = PROPERTY_IDS.get(key) if isinstance(key, str) else key
        if pid is None:
            raise ValueError(f"unknown MQTT 5 property {key!r} (known: {', '.join(PROPERTY_IDS)})")
        out[pid] = value
    return out


class _DefaultInt(int):
    """A default value of MQTTApp's signature, told apart from the same value passed on purpose
    (which wins over the config file)."""


class _DefaultStr(str):
    __doc__ = _DefaultInt.__doc__


_HOST = _DefaultStr("0.0.0.0")
_PORT = _DefaultInt(1883)
_REDIS_PORT = _DefaultInt(6379)
_REDIS_DB = _DefaultInt(0)


class MQTTApp:
    """An MQTT broker you program with decorators; see the module's documentation."""

    def __init__(
        self,
        host: str = _HOST,
        port: int = _PORT,
        ssl_context: ssl.SSLContext | None = None,
        config_file: str | os.PathLike[str] | None = None,
        redis_host: str | None = None,
        redis_port: int = _REDIS_PORT,
        redis_db: int = _REDIS_DB,
        redis_password: str | None = None,
        redis_url: str | None = None,
        use_redis: bool = False,
        max_connections: int | None = None,
        max_connections_per_ip: int | None = None,
        max_messages_per_second: float | None = None,
        max_subscriptions_per_minute: int | None = None,
        *,
        enable_tcp: bool = True,
        enable_quic: bool = False,
        quic_port: int | None = None,
        quic_certfile: str | None = None,
        quic_keyfile: str | None = None,
        listeners: Sequence[ListenerConfig | dict[str, Any]] | None = None,
        **more: Any,
    ) -> None:
        """Options, lowest precedence first: mqttd's defaults (but ``host`` 0.0.0.0 as in 0.5.x),
        the TOML ``config_file``, the arguments given here, then ``MQTTD_<OPTION>`` environment
        variables. ``more`` takes any other option of the
        table in :mod:`mqttd.options` (``max_packet_size=...``, ``redis_prefix=...``).
        ``listeners``: :class:`ListenerConfig` objects or dicts with the keys of a
        ``[[listener]]`` table (docs/listeners.md); they replace the listener of host and
        port."""
        if not enable_tcp or enable_quic or quic_certfile or quic_keyfile or quic_port:
            quic = {
                "enable_quic": enable_quic,
                "quic_port": quic_port,
                "quic_certfile": quic_certfile,
                "quic_keyfile": quic_keyfile,
            }
            given = [n for n, v in quic.items() if v] + ([] if enable_tcp else ["enable_tcp=False"])
            raise ValueError(
                "mqttd does not support MQTT over QUIC "
                f"({', '.join(given)} given); it serves TCP and TLS (ssl_context)"
            )
        values = options.defaults()
        values["host"] = "0.0.0.0"
        if config_file is not None:
            values.update(options.load_file(config_file))
        given_args = {
            "host": host,
            "port": port,
            "redis_host": redis_host,
            "redis_port": redis_port,
            "redis_db": redis_db,
            "redis_password": redis_password,
            "redis_url": redis_url,
            "use_redis": use_redis,
            "max_connections": max_connections,
            "max_connections_per_ip": max_connections_per_ip,
            "max_messages_per_second": max_messages_per_second,
            "max_subscriptions_per_minute": max_subscriptions_per_minute,
        }
        for name, value in given_args.items():
            if value is None or isinstance(value, (_DefaultInt, _DefaultStr)):
                continue  # not given: the file's value, else the default
            if name == "use_redis" and value is False:
                continue
            values[name] = options.convert(name, value, f"MQTTApp({name}=...)")
        for name, value in more.items():
            values[name] = options.convert(name, value, f"MQTTApp({name}=...)")
        if listeners is not None:
            values["listeners"] = options.listeners_from(list(listeners), "MQTTApp(listeners=...)")
        values.update(options.from_env())
        self._values = values
        self.config = options.broker_config(values)  # ValueError names the bad option
        self.ssl_context = ssl_context
        self.config_file = config_file
        self._subscribe_routes: list[_Route] = []
        self._publish_routes: list[_Route] = []
        self._on_connect: list[Callable[..., Any]] = []
        self._on_disconnect: list[Callable[..., Any]] = []
        #: called (awaited if async) once the broker serves / before it stops
        self._on_startup: list[Callable[[], Any]] = []
        self._on_shutdown: list[Callable[[], Any]] = []
        self._stopping = False
        self._authenticate: Callable[..., Any] | None = None
        self._authorize_publish: Callable[..., Any] | None = None
        self._authorize_subscribe: Callable[..., Any] | None = None
        self._node: Node | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- what the options came to ----------------------------------------------------------------
    @property
    def host(self) -> str:
        return self.config.host

    @property
    def port(self) -> int:
        """The port; after start, the one bound (useful with port 0)."""
        if self._node is not None and self._node.addresses:
            return self._node.addresses[0][1]
        return self.config.port

    @property
    def use_redis(self) -> bool:
        return self.config.redis_url is not None

    @property
    def broker(self) -> Broker:
        """The running broker (for what the decorators do not cover)."""
        if self._node is None:
            raise RuntimeError("the app is not running (await app.start() first)")
        return self._node.broker

    # -- decorators ------------------------------------------------------------------------------
    def subscribe(
        self, topic: str, qos: int = 0
    ) -> Callable[[SubscribeHandlerT], SubscribeHandlerT]:
        """``handler(topic, client)`` runs when a client subscribes with a filter equal to
        ``topic``, or, for a filter without wildcards, one that ``topic`` matches. A ``bytes``
        or ``str`` it returns is sent to that subscriber as a PUBLISH on that topic at the
        granted QoS (nothing is sent for a wildcard filter). ``qos`` is kept for 0.5.x
        compatibility: the QoS granted is the one the client asked for (an authorization hook
        may lower it)."""
        _check_pattern(topic)

        def decorator(func: SubscribeHandlerT) -> SubscribeHandlerT:
            _check_handler(func, "subscribe", _SUBSCRIBE_ARGS)
            self._subscribe_routes.append(_Route(topic, func, qos))
            return func

        return decorator

    def publish_handler(
        self, topic: str | None = None
    ) -> Callable[[PublishHandlerT], PublishHandlerT]:
        """``handler(message, client)`` observes each PUBLISH from a client whose topic matches
        ``topic`` (every one when None), after it was routed (locally and through Redis), once,
        on the node where it entered. It never delays delivery."""
        if topic is not None:
            _check_pattern(topic)

        def decorator(func: PublishHandlerT) -> PublishHandlerT:
            _check_handler(func, "publish_handler", _PUBLISH_ARGS)
            self._publish_routes.append(_Route(topic, func))
            return func

        return decorator

    def on_connect(self, func: ClientHandlerT) -> ClientHandlerT:
        """``handler(client)`` after the client got its CONNACK."""
        _check_handler(func, "on_connect", _CLIENT_ARGS)
        self._on_connect.append(func)
        return func

    def on_disconnect(self, func: ClientHandlerT) -> ClientHandlerT:
        """``handler(client)`` after the client's connection ended."""
        _check_handler(func, "on_disconnect", _CLIENT_ARGS)
        self._on_disconnect.append(func)
        return func

    def on_startup(self, func: LifespanHookT) -> LifespanHookT:
        """Register ``func()`` (sync or async) to run once the broker serves, before
        :meth:`start` returns (or ``run()`` waits): open what your handlers need, publish a
        first retained message. An exception stops the start (the broker is shut down)."""
        self._on_startup.append(func)
        return func

    def on_shutdown(self, func: LifespanHookT) -> LifespanHookT:
        """Register ``func()`` (sync or async) to run when the app stops, before its clients are
        disconnected (it may still publish); each is given the shutdown's timeout."""
        self._on_shutdown.append(func)
        return func

    def authenticate(self, func: AuthenticateHookT) -> AuthenticateHookT:
        """``handler(client, username, password) -> bool | reason code``, sync or async, decides
        each CONNECT: True (or 0) accepts; False refuses with 0x86 Bad user name or password
        (3.1.1: 0x04); a reason code >= 0x80 refuses with it. An exception refuses (0x80), and
        so does None (a hook that forgot to return must not let everybody in)."""
        _check_handler(func, "authenticate", _AUTHENTICATE_ARGS)
        self._authenticate = func
        return func

    def authorize_publish(self, func: AuthorizePublishHookT) -> AuthorizePublishHookT:
        """``handler(message, client)``, sync or async, runs before each client PUBLISH is
        routed: True allows, False refuses (0x87 Not authorized in the PUBACK/PUBREC of MQTT 5;
        3.1.1 has no refusal, the message is dropped), an int is a reason code, and an
        MQTTMessage is routed instead of the original (rewrite). An exception refuses (0x80),
        None refuses (0x87). It runs on the event loop before each message is routed: keep a
        plain function quick, or make it async."""
        _check_handler(func, "authorize_publish", _PUBLISH_ARGS)
        self._authorize_publish = func
        return func

    def authorize_subscribe(self, func: AuthorizeSubscribeHookT) -> AuthorizeSubscribeHookT:
        """``handler(topic, qos, client)``, sync or async, runs for each filter of a SUBSCRIBE:
        True grants the QoS asked, an int 0-2 grants at most that QoS, False or None refuses
        (0x87; 3.1.1: 0x80), an int >= 0x80 refuses with that code."""
        _check_handler(func, "authorize_subscribe", _AUTHORIZE_SUBSCRIBE_ARGS)
        self._authorize_subscribe = func
        return func

    # -- publishing ------------------------------------------------------------------------------
    async def publish(
        self,
        topic: str,
        payload: bytes | str,
        qos: int = 0,
        retain: bool = False,
        properties: dict[Any, Any] | None = None,
    ) -> bool:
        """Publish as the broker: to this node's subscribers and, with Redis, every node's."""
        msg = self._message(topic, payload, qos, retain, properties)
        self.broker.publish(msg)
        return True

    async def publish_to_client(
        self,
        client: MQTTClient | str,
        topic: str,
        payload: bytes | str,
        qos: int = 0,
        retain: bool = False,
        properties: dict[Any, Any] | None = None,
    ) -> bool:
        """Send one PUBLISH to one client of this node (by MQTTClient or client id), whether or
        not it subscribed. False if no session of that id is here; a QoS 1/2 message for a
        persistent session that is offline waits for it."""
        client_id = client if isinstance(client, str) else client.client_id
        session = self.broker.sessions.get(client_id)
        if session is None or (session.connection is None and qos == 0):
            return False
        session.outlet.send(self._message(topic, payload, qos, retain, properties), qos, retain)
        return True

    def _message(self, topic: str, payload: bytes | str, qos: int, retain: bool, props: Any) -> Any:
        if not isinstance(topic, str) or not match.validate_topic(topic):
            raise ValueError(f"not a valid MQTT topic name: {topic!r}")
        if qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, not {qos!r}")
        data = payload.encode() if isinstance(payload, str) else bytes(payload)
        return self.broker.make_message(topic, data, qos, bool(retain), _property_ids(props))

    # -- running ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Listen (and join Redis) in the running event loop; returns once clients can connect.
        Raises OSError (port taken), ValueError (bad TLS files) or
        ``mqttd.redis.RedisUnavailable``, having closed whatever it opened."""
        node = self._prepare()
        try:
            await node.start()
        except BaseException:
            self._node = None
            raise
        log.info("%s", node.start_line())
        await self._started()

    async def _started(self) -> None:
        try:
            for func in self._on_startup:
                result = func()
                if inspect.isawaitable(result):
                    await result
        except BaseException:
            await self.shutdown()
            raise

    def _prepare(self) -> Node:
        """The node of this run, with the hooks installed on its broker (they may run as soon
        as the socket listens)."""
        if self._node is not None:
            raise RuntimeError("the app is already running")
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        node = self._node = Node(self.config, ssl_context=self.ssl_context)
        self._install(node.broker)
        return node

    async def serve_forever(self, *, handle_signals: bool = True) -> None:
        """Start if needed, then serve until :meth:`shutdown`, or (``handle_signals``, in the
        main thread) until SIGINT or SIGTERM, then shut down: so that
        ``asyncio.run(app.serve_forever())`` in a program's own ``main`` stops as ``run()`` does
        (SIGHUP reloads the log file, passwords, ACL and certificates)."""
        if self._node is None:
            await self.start()
        node, stopped = self._node, self._stopped
        assert node is not None and stopped is not None
        signals = asyncio.Event()
        catching = False
        if handle_signals and threading.current_thread() is threading.main_thread():
            with contextlib.suppress(NotImplementedError, RuntimeError):
                node.catch_signals(signals)
                catching = True
        try:
            waits = {asyncio.ensure_future(stopped.wait()), asyncio.ensure_future(signals.wait())}
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
            if signals.is_set():
                log.info("stopping")
                await self.shutdown()
        finally:
            if catching:
                node.release_signals()

    async def shutdown(self, timeout: float = 30.0) -> None:
        """Run the on_shutdown hooks, stop listening, tell MQTT 5 clients (DISCONNECT 0x8B),
        close every connection, write the persistence file, leave Redis, and give running
        handlers up to ``timeout`` seconds to finish."""
        if self._node is None or self._stopping:
            return
        self._stopping = True
        try:
            # while the broker still serves: a hook may publish a last message
            for func in self._on_shutdown:
                try:
                    result = func()
                    if inspect.isawaitable(result):
                        await asyncio.wait_for(result, timeout)
                except Exception:
                    log.exception("on_shutdown hook %s failed", getattr(func, "__name__", func))
            node, self._node = self._node, None
            if node is not None:
                await node.shutdown(timeout)
        finally:
            self._stopping = False
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
        if self._stopped is not None:
            self._stopped.set()

    async def __aenter__(self) -> MQTTApp:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    def run(
        self,
        host: str | None = None,
        port: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """Serve until Ctrl-C or SIGTERM (blocking). Sets up logging at ``log_level`` when the
        program did not; a start-up error (port taken, Redis unreachable) is one line on
        stderr and exit status 1."""
        if host is not None or port is not None:
            values = dict(self._values)
            if host is not None:
                values["host"] = host
            if port is not None:
                values["port"] = port
            values.update(options.from_env())
            self.config = options.broker_config(values)
        if ssl_context is not None:
            self.ssl_context = ssl_context
        if not logging.getLogger().handlers and not log.handlers:
            setup_logging(
                str(self._values["log_level"]),
                None,
                str(self._values["log_format"]),
                self._values["log_file"],
            )
        status = run(self._main)
        if status:
            raise SystemExit(status)

    async def _main(self) -> int:
        # serve() starts the node, says a start error in one line, logs the start line and
        # waits for a signal, or for shutdown() from a handler (which sets _stopped)
        node = self._prepare()
        assert self._stopped is not None
        status = await serve(
            node, stopping=self.shutdown, until=self._stopped, started=self._started
        )
        if status:
            self._node = None  # it did not start: the app is not running
        return status

    # -- figures ---------------------------------------------------------------------------------
    def get_metrics(self) -> dict[str, Any]:
        """Counters since start: connections, messages in and out, subscriptions, Redis."""
        node = self._node
        if node is None:
            return {"running": False}
        b = node.broker
        f = node.figures()
        stats = b.stats
        flusher = b.flusher
        out: dict[str, Any] = {
            "running": True,
            "total_connections": f["sockets_total"],
            "current_connections": f["connections"],
            "total_messages_published": f["messages_received"],
            "total_messages_received": f["messages_received"],
            "total_messages_sent": f["messages_sent"],
            "messages_dropped": flusher.messages_dropped if flusher is not None else 0,
            "bytes_received": f["bytes_received"],
            "bytes_sent": f["bytes_sent"],
            "total_subscriptions": stats["subscriptions_total"],
            "total_unsubscriptions": stats["unsubscriptions_total"],
            "active_subscriptions_count": f["subscriptions"],
            "retained_messages_count": f["retained"],
            "sessions": f["sessions"],
            "connections_per_ip": dict(b.clients_per_ip),
            "flow": f["flow"],
            # docs/security.md: CONNECTs refused by authentication, and connections closed for
            # holding too much of a partly received packet (max_incoming_bytes)
            "auth_failures": f["auth_failures"],
            "closed_incoming_limit": f["closed_incoming_limit"],
        }
        if f["redis"] is not None:
            out["redis"] = f["redis"]
        return out

    def health_check(self) -> dict[str, Any]:
        """``status`` is "healthy", or "degraded" with the reasons in ``errors`` (Redis away,
        connection limit reached); plus the broker's own figures."""
        b = self._node.broker if self._node is not None else None
        errors: list[str] = []
        out: dict[str, Any] = {
            "status": "healthy",
            "running": b is not None,
            "connections": 0,
            "max_connections": self.config.max_connections or None,
            "redis_connected": False,
            "errors": errors,
        }
        if b is None:
            out["status"] = "stopped"
            return out
        out.update(b.health_check())
        out["status"] = "healthy"
        out["connections"] = b.clients
        if b.peers.remote:
            up = b.peers.health().get("redis") == "up"
            out["redis_connected"] = up
            if not up:
                errors.append("Redis connection not available")
        cap = self.config.max_connections
        if cap and b.clients >= cap:
            errors.append(f"connection limit reached: {b.clients}/{cap}")
        if errors:
            out["status"] = "degraded"
        return out

    # -- wiring into the broker ------------------------------------------------------------------
    def _install(self, broker: Broker) -> None:
        if self._publish_routes:
            broker.publish_observers.append(self._published)
        if self._subscribe_routes:
            broker.subscribe_observers.append(self._subscribed)
        if self._on_connect:
            broker.connect_observers.append(self._connected)
        if self._on_disconnect:
            broker.disconnect_observers.append(self._disconnected)
        if self._authenticate is not None:
            broker.authenticate = self._check_credentials
        if self._authorize_publish is not None:
            broker.authorize_publish = self._check_publish
        if self._authorize_subscribe is not None:
            broker.authorize_subscribe = self._check_subscribe

    @staticmethod
    def client_of(conn: Any) -> MQTTClient:
        """The MQTTClient view of a connection (made once)."""
        client: MQTTClient | None = conn.app_client
        if client is None:
            client = conn.app_client = MQTTClient(
                client_id=conn.client_id,
                username=conn.username,
                password=_text(conn.password),
                keepalive=conn.keepalive,
                clean_session=conn.clean_start,
                address=conn.peer if isinstance(conn.peer, tuple) else None,
                protocol_version=conn.version,
                certificate=conn.certificate,
            )
        return client

    def _run(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        what: str,
        done: Callable[[Any], None] | None = None,
    ) -> None:
        """Run a handler as a task of its own, so that neither the connection that triggered it
        nor other deliveries wait for it; ``done`` gets what it returns; failures are logged."""
        assert self._loop is not None
        task = self._loop.create_task(self._handle(func, args, what, done))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        what: str,
        done: Callable[[Any], None] | None,
    ) -> None:
        try:
            if inspect.iscoroutinefunction(func):
                result = await func(*args)
            else:
                # A plain function runs in a worker thread (as FastAPI runs ``def`` endpoints):
                # a slow one must not hold up the event loop and every other client with it
                assert self._loop is not None
                result = await self._loop.run_in_executor(None, functools.partial(func, *args))
                if inspect.isawaitable(result):
                    result = await result
        except Exception:
            log.exception("handler %s failed (%s)", getattr(func, "__name__", func), what)
            return
        if done is not None:
            done(result)

    def _published(self, conn: Any, msg: Any, packet_id: int | None) -> None:
        topic = msg.topic
        message = None
        for r in self._publish_routes:
            if r.pattern is None or match.topic_matches(r.pattern, topic):
                if message is None:
                    message = MQTTMessage(
                        topic,
                        msg.payload,
                        msg.qos,
                        bool(msg.retain),
                        packet_id or None,
                        {PROPERTY_NAMES.get(k, str(k)): v for k, v in msg.properties.items()},
                    )
                what = f"topic {topic!r}, client {conn.client_id!r}"
                self._run(r.func, (message, self.client_of(conn)), what)

    def _subscribed(self, conn: Any, filt: str, granted: int) -> None:
        shared = match.parse_shared(filt)
        inner = filt if shared is None else shared[1]
        wild = "+" in inner or "#" in inner
        for r in self._subscribe_routes:
            assert r.pattern is not None
            if r.pattern == filt or (
                not wild
                and not r.pattern.startswith("$share/")
                and match.topic_matches(r.pattern, inner)
            ):
                what = f"subscription {filt!r}, client {conn.client_id!r}"
                reply = None if wild else _Reply(conn, inner, granted, what)
                self._run(r.func, (filt, self.client_of(conn)), what, reply)

    def _connected(self, conn: Any) -> None:
        client = self.client_of(conn)
        for func in self._on_connect:
            self._run(func, (client,), f"connect, client {conn.client_id!r}")

    def _disconnected(self, conn: Any) -> None:
        client = self.client_of(conn)
        for func in self._on_disconnect:
            self._run(func, (client,), f"disconnect, client {conn.client_id!r}")

    def _sync_or_async(
        self, func: Callable[..., Any], args: tuple[Any, ...], what: str, then: Callable[[Any], Any]
    ) -> Any:
        """Call a hook; a plain answer is turned by ``then`` at once, an awaitable one later."""
        try:
            result = func(*args)
        except Exception:
            log.exception("hook %s failed (%s)", getattr(func, "__name__", func), what)
            return then(UNSPECIFIED_ERROR)
        if inspect.isawaitable(result):
            return self._then(result, func, what, then)
        return then(result)

    async def _then(
        self,
        pending: Awaitable[Any],
        func: Callable[..., Any],
        what: str,
        then: Callable[[Any], Any],
    ) -> Any:
        try:
            result = await pending
        except Exception:
            log.exception("hook %s failed (%s)", getattr(func, "__name__", func), what)
            result = UNSPECIFIED_ERROR
        return then(result)

    def _check_credentials(self, conn: Any, username: str | None, password: bytes | None) -> Any:
        assert self._authenticate is not None
        what = f"authenticate, client {conn.client_id!r}"
        args = (self.client_of(conn), username, _text(password))
        return self._sync_or_async(self._authenticate, args, what, _connect_code)

    def _check_publish(self, conn: Any, msg: Any, packet_id: int | None) -> Any:
        assert self._authorize_publish is not None
        message = MQTTMessage(
            msg.topic,
            msg.payload,
            msg.qos,
            bool(msg.retain),
            packet_id or None,
            {PROPERTY_NAMES.get(k, str(k)): v for k, v in msg.properties.items()},
        )
        what = f"authorize publish, topic {msg.topic!r}, client {conn.client_id!r}"

        def then(result: Any) -> Any:
            if isinstance(result, MQTTMessage):
                try:
                    return self._message(
                        result.topic, result.payload, result.qos, result.retain, result.properties
                    )
                except ValueError as exc:
                    log.error("%s: the rewritten message is invalid: %s", what, exc)
                    return UNSPECIFIED_ERROR
            return _publish_code(result)

        return self._sync_or_async(
            self._authorize_publish, (message, self.client_of(conn)), what, then
        )

    def _check_subscribe(self, conn: Any, filt: str, qos: int) -> Any:
        assert self._authorize_subscribe is not None
        what = f"authorize subscribe, filter {filt!r}, client {conn.client_id!r}"
        return self._sync_or_async(
            self._authorize_subscribe,
            (filt, qos, self.client_of(conn)),
            what,
            lambda r: _subscribe_code(r, qos),
        )


class _Reply:
    """What a subscribe handler returned goes to that subscriber, on the topic it subscribed."""

    __slots__ = ("conn", "topic", "qos", "what")

    def __init__(self, conn: Any, topic: str, qos: int, what: str) -> None:
        self.conn, self.topic, self.qos, self.what = conn, topic, qos, what

    def __call__(self, result: Any) -> None:
        if result is None:
            return
        if isinstance(result, str):
            result = result.encode()
        if not isinstance(result, (bytes, bytearray, memoryview)):
            log.warning(
                "%s: the handler returned %s; only bytes or str are sent",
                self.what,
                type(result).__name__,
            )
            return
        conn = self.conn
        if conn.closing or conn.outlet is None:
            return
        conn.outlet.send(route.Message(self.topic, bytes(result), self.qos, False), self.qos, False)


def _refuse_none(hook: str) -> int:
    # A hook that forgot its return statement must not let everybody in
    log.warning("%s hook returned None; refusing (return True to allow)", hook)
    return UNSPECIFIED_ERROR if hook == "authenticate" else NOT_AUTHORIZED


def _connect_code(result: Any) -> int:
    if result is None:
        return _refuse_none("authenticate")
    if result is True:
        return SUCCESS
    if result is False:
        return BAD_USERNAME_OR_PASSWORD
    if isinstance(result, int):
        return result if result >= FAILURE_THRESHOLD or result == 0 else UNSPECIFIED_ERROR
    log.error("authenticate hook returned %r; refusing", result)
    return UNSPECIFIED_ERROR


def _publish_code(result: Any) -> int:
    if result is None:
        return _refuse_none("authorize_publish")
    if result is True:
        return SUCCESS
    if result is False:
        return NOT_AUTHORIZED
    if isinstance(result, int):
        return result
    log.error("authorize_publish hook returned %r; refusing", result)
    return UNSPECIFIED_ERROR


def _subscribe_code(result: Any, asked: int) -> int:
    if result is None:
        return _refuse_none("authorize_subscribe")
    if result is True:
        return asked
    if result is False:
        return NOT_AUTHORIZED
    if isinstance(result, int) and (0 <= result <= 2 or result >= FAILURE_THRESHOLD):
        return min(result, asked) if result <= 2 else result
    log.error("authorize_subscribe hook returned %r; refusing", result)
    return UNSPECIFIED_ERROR
