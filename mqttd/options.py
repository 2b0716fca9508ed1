"""The broker's options, in one table: the CLI flags, the TOML config file, the ``MQTTD_*``
environment variables and the :class:`mqttd.MQTTApp` constructor all take these names.

Where a value comes from, lowest first: the default here, the config file (``mqttd --config`` /
``MQTTApp(config_file=...)``), then for the ``mqttd`` command the ``MQTTD_*`` environment and its
flags; for a program, the ``MQTTApp(...)`` arguments it passes and then the ``MQTTD_*``
environment, which has the last word so that a deployment can move a program (another port,
another Redis) without editing it.
"""

from __future__ import annotations

import json
import os
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from mqttd.broker import BrokerConfig, ListenerConfig


@dataclass(frozen=True)
class Option:
    name: str
    type: type
    default: Any
    help: str
    metavar: str | None = None


OPTIONS: tuple[Option, ...] = (
    Option(
        "host",
        str,
        "127.0.0.1",
        "address to listen on (default 127.0.0.1, local clients only; 0.0.0.0 accepts "
        "remote clients; MQTTApp's default is 0.0.0.0)",
        "ADDRESS",
    ),
    Option("port", int, 1883, "TCP port (default 1883; 0 picks a free port and prints it)"),
    Option(
        "max_packet_size",
        int,
        1024 * 1024,
        "largest packet accepted (default 1048576, at most 268435460)",
        "BYTES",
    ),
    Option(
        "max_queued_messages",
        int,
        1000,
        "QoS 1/2 messages queued per offline or busy session (default 1000)",
        "N",
    ),
    Option(
        "max_queued_bytes",
        int,
        8 * 1024 * 1024,
        "bytes those queued messages may take per session (default 8388608; 0: no limit)",
        "BYTES",
    ),
    Option(
        "max_inflight",
        int,
        1000,
        "QoS 1/2 messages in flight to each client (default 1000; an MQTT 5 client's "
        "Receive Maximum lowers it)",
        "N",
    ),
    Option(
        "max_inflight_bytes",
        int,
        1024 * 1024,
        "bytes those in-flight messages may take per client (default 1048576; 0: no limit)",
        "BYTES",
    ),
    Option(
        "max_buffer",
        int,
        1024 * 1024,
        "bytes held for a client that stopped reading; its QoS 0 messages beyond are dropped "
        "(default 1048576)",
        "BYTES",
    ),
    Option(
        "memory_limit",
        int,
        0,
        "bytes the node may hold for all clients before it stops reading publishers "
        "(default 0: no limit)",
        "BYTES",
    ),
    Option(
        "slow_subscriber_timeout",
        float,
        1.0,
        "seconds a subscriber with a full queue may acknowledge nothing before it is "
        "disconnected; its publishers are slowed down meanwhile (default 1; 0: never slow "
        "publishers, drop the oldest)",
        "SECONDS",
    ),
    Option(
        "receive_maximum",
        int,
        65535,
        "QoS 2 messages a client may have awaiting PUBREL (default 65535)",
        "N",
    ),
    Option(
        "topic_alias_maximum",
        int,
        10,
        "topic aliases an MQTT 5 client may use (default 10; 0 refuses them)",
        "N",
    ),
    Option(
        "max_keepalive",
        int,
        0,
        "longest keepalive granted (default 0: as the client asks)",
        "SECONDS",
    ),
    Option(
        "sys_interval",
        float,
        10.0,
        "seconds between $SYS/broker updates (default 10; 0 turns them off)",
        "SECONDS",
    ),
    Option(
        "max_connections",
        int,
        0,
        "clients connected at once (default 0: no limit); more are refused with CONNACK "
        "0x97 (3.1.1: 0x03)",
        "N",
    ),
    Option(
        "max_connections_per_ip",
        int,
        0,
        "clients connected at once from one IP address (default 0: no limit)",
        "N",
    ),
    Option(
        "max_messages_per_second",
        float,
        0.0,
        "PUBLISH packets a client may send per second (default 0: no limit); a faster client "
        "is read from more slowly, nothing is dropped",
        "RATE",
    ),
    Option(
        "max_subscriptions_per_minute",
        int,
        0,
        "subscriptions a client may make per minute (default 0: no limit); the excess is "
        "refused in the SUBACK (0x97; 3.1.1: 0x80)",
        "N",
    ),
    Option("certfile", str, None, "TLS: PEM certificate chain of the listener", "PATH"),
    Option("keyfile", str, None, "TLS: PEM private key (if not in the certfile)", "PATH"),
    Option(
        "ws_port",
        int,
        None,
        "also serve MQTT over WebSocket (ws://HOST:PORT/mqtt) on this port",
        "PORT",
    ),
    Option(
        "wss_port",
        int,
        None,
        "also serve MQTT over secure WebSocket (wss://) on this port, with --certfile",
        "PORT",
    ),
    Option(
        "metrics_port",
        int,
        None,
        "serve Prometheus metrics (/metrics), /health and /ready over HTTP on this port "
        "(default: off)",
        "PORT",
    ),
    Option(
        "metrics_host",
        str,
        "127.0.0.1",
        "address of the metrics endpoint (default 127.0.0.1)",
        "ADDRESS",
    ),
    Option(
        "persistence_file",
        str,
        None,
        "keep retained messages and persistent sessions in this SQLite file across restarts "
        "(default: off)",
        "PATH",
    ),
    Option(
        "persistence_interval",
        float,
        1.0,
        "seconds between writes of what changed, to the persistence file or to Redis "
        "(default 1; a crash loses at most this much)",
        "SECONDS",
    ),
    Option(
        "cafile",
        str,
        None,
        "TLS: CA certificates (PEM) that client certificates must be signed by",
        "PATH",
    ),
    Option(
        "require_certificate",
        bool,
        False,
        "TLS: refuse clients without a certificate signed by --cafile (at the handshake)",
    ),
    Option(
        "use_identity_as_username",
        bool,
        False,
        "the client certificate's CN is the user name (for the ACL); no password asked",
    ),
    Option(
        "use_subject_as_username",
        bool,
        False,
        "the client certificate's whole subject (CN=...,O=...) is the user name",
    ),
    Option(
        "password_file",
        str,
        None,
        "Mosquitto-format password file (mosquitto_passwd or mqttd passwd); clients must then "
        "give a user name and password unless --allow-anonymous",
        "PATH",
    ),
    Option(
        "acl_file",
        str,
        None,
        "Mosquitto-format ACL file: who may publish and read which topics (no matching rule: "
        "denied)",
        "PATH",
    ),
    Option(
        "allow_anonymous",
        bool,
        None,
        "accept clients without a user name (default: only while there is no password file "
        "and no certificate identity, as Mosquitto 2.0); --allow-anonymous false refuses them",
    ),
    Option(
        "session_owner_check",
        bool,
        True,
        "a persistent session is taken over only by the user that made it (default true; "
        "false lets any client, as Mosquitto)",
    ),
    Option(
        "max_topic_levels",
        int,
        200,
        "levels a topic name or filter may have (default 200)",
        "N",
    ),
    Option(
        "max_incoming_bytes",
        int,
        64 * 1024 * 1024,
        "bytes held in partly received packets across all connections; the connection that "
        "would pass it is closed (default 67108864; 0: no limit)",
        "BYTES",
    ),
    Option(
        "connect_timeout",
        float,
        10.0,
        "seconds a new connection has to send its CONNECT (default 10)",
        "SECONDS",
    ),
    Option(
        "redis_url",
        str,
        None,
        "join other mqttd nodes through Redis: redis://[:password@]host:port/db, rediss:// "
        "(TLS) or unix:///path; redis+cluster://host:port (a seed node of a Redis Cluster, "
        "sharded pub/sub, Redis 7+; rediss+cluster:// for TLS) (default: this node only)",
        "URL",
    ),
    Option(
        "redis_host",
        str,
        None,
        "Redis host, another way to say --redis-url (with --redis-port, --redis-db, "
        "--redis-password)",
        "HOST",
    ),
    Option("redis_port", int, 6379, "Redis port with --redis-host (default 6379)", "PORT"),
    Option("redis_db", int, 0, "Redis database number with --redis-host (default 0)", "N"),
    Option("redis_password", str, None, "Redis password with --redis-host", "PASSWORD"),
    Option(
        "use_redis",
        bool,
        False,
        "join through the Redis at localhost:6379 when no --redis-url or --redis-host is given",
    ),
    Option(
        "redis_prefix",
        str,
        "",
        "prefix of the Redis channels, to keep deployments sharing one Redis apart "
        "(default empty: topic a/b is channel a/b)",
        "PREFIX",
    ),
    Option(
        "redis_streams",
        bool,
        True,
        "QoS 1/2 between nodes through a Redis stream, kept across Redis outages (default on; "
        "off: pub/sub, at most once)",
    ),
    Option(
        "redis_node_name",
        str,
        None,
        "this node's name, the same across its restarts: a restarted node takes back the "
        "persistent sessions it kept in Redis and reads the stream on from where it stopped "
        "(default none: a new node each start)",
        "NAME",
    ),
    Option(
        "redis_stream_maxlen",
        int,
        100_000,
        "entries the Redis stream keeps (default 100000): how far behind a node may read",
        "ENTRIES",
    ),
    Option(
        "redis_stream_buffer",
        int,
        64 * 1024 * 1024,
        "bytes of QoS 1/2 messages kept for the stream while Redis is away (default 67108864); "
        "beyond, dropped and counted",
        "BYTES",
    ),
    Option(
        "log_level",
        str,
        "info",
        "debug, info, warning or error (default info)",
        "LEVEL",
    ),
    Option(
        "log_format",
        str,
        "text",
        "text (default) or json: one JSON object per line, for log shippers",
        "FORMAT",
    ),
    Option(
        "log_file",
        str,
        None,
        "log to this file instead of standard output; reopened on SIGHUP (logrotate)",
        "PATH",
    ),
)

BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
#: options that are not BrokerConfig fields: they make the Redis URL, or set up logging
_NOT_CONFIG = frozenset(
    {
        "redis_host", "redis_port", "redis_db", "redis_password", "use_redis", "log_level",
        "log_format", "log_file",
    }
)  # fmt: skip
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
#: options that are BrokerConfig fields, whose limits BrokerConfig.check knows
_CONFIG_FIELDS = frozenset(o.name for o in OPTIONS if o.name not in _NOT_CONFIG)


def reference_markdown() -> str:
    """The configuration reference of docs/operations.md, made from :data:`OPTIONS` (a test
    checks that the doc holds it, and says how to write it again when an option changes)."""
    lines = [
        "| TOML key | flag | environment | default | what |",
        "| --- | --- | --- | --- | --- |",
    ]
    for o in OPTIONS:
        flag = "--" + o.name.replace("_", "-") + (f" {o.metavar}" if o.metavar else "")
        default = "-" if o.default is None else f"`{_toml(o.default)}`"
        what = o.help.replace("|", "\\|")
        lines.append(f"| `{o.name}` | `{flag}` | `MQTTD_{o.name.upper()}` | {default} | {what} |")
    return "\n".join(lines) + "\n"


def defaults() -> dict[str, Any]:
    return {o.name: o.default for o in OPTIONS}


#: what each type is called in an error
_TYPE_NAMES: dict[type, str] = {
    bool: "true or false",
    int: "a whole number",
    float: "a number",
    str: "a string",
}


def _toml(value: Any) -> str:
    """``value`` as it is written in TOML, for the hints in errors."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


def _from_text(t: type, text: str) -> Any:
    """``text`` as type ``t``; ValueError if it is not one."""
    if t is bool:
        word = text.strip().lower()
        if word in ("1", "true", "yes", "on"):
            return True
        if word in ("0", "false", "no", "off"):
            return False
        raise ValueError(text)
    return t(text)


def convert(name: str, value: Any, where: str, *, typed: bool = False) -> Any:
    """``value`` as the option's type, checked against its limits; ValueError with a one-line
    reason starting with ``where`` otherwise.

    ``typed``: the value comes from a file with types of its own (TOML), where ``port = "1884"``
    is a string, not a port, and is refused; the environment and the flags are text by nature,
    and text is converted."""
    opt = BY_NAME.get(name)
    if opt is None:
        close = _close_matches(name, BY_NAME)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ValueError(f"{where}: unknown option {name!r}{hint}")
    if value is None:
        return None
    t = opt.type
    expected = f"{where}: {name} must be {_TYPE_NAMES[t]}"
    if isinstance(value, str) and t is not str:
        try:
            converted = _from_text(t, value)
        except ValueError:
            shown = f"the string {value!r}" if typed else repr(value)
            raise ValueError(f"{expected}, not {shown}") from None
        if typed:
            bare = _toml(converted) if t is bool else value.strip()
            raise ValueError(f"{expected}, not the string {value!r} (write {name} = {bare})")
        value = converted
    # bool is an int to Python, but true is no port; an int is a fine float (sys_interval = 5)
    elif isinstance(value, bool) != (t is bool) or not isinstance(
        value, (int, float) if t is float else t
    ):
        raise ValueError(f"{expected}, not {_toml(value)}")
    if t is float:
        value = float(value)
    if name == "log_format" and value not in LOG_FORMATS:
        raise ValueError(f"{where}: log_format must be text or json, not {value!r}")
    if name == "log_level" and value.lower() not in LOG_LEVELS:
        raise ValueError(
            f"{where}: log_level must be one of {', '.join(LOG_LEVELS)}, not {value!r}"
        )
    try:
        _check(name, value)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    return value


def _check(name: str, value: Any) -> None:
    """The limits of one option: BrokerConfig's for its fields, and those of the options that
    only make the Redis URL."""
    if name in _CONFIG_FIELDS:
        BrokerConfig.check(name, value)
    elif name == "redis_port" and not 1 <= value <= 65535:
        raise ValueError(f"redis_port must be 1..65535, not {value}")
    elif name == "redis_db" and value < 0:
        raise ValueError(f"redis_db must be 0 or more, not {value}")


def load_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The options of a TOML config file: flat ``name = value`` lines (``-`` or ``_``), each of the
    option's own TOML type. Every error is one line naming the file and the key."""
    where = str(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ValueError(f"config file {where} not found") from None
    except OSError as exc:
        raise ValueError(f"cannot read config file {where}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{where} is not UTF-8 text (byte {exc.start}), so not TOML") from None
    import tomllib  # (here: 0.8 MB at start for a node without a config file, issue 16)

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        mosquitto = _mosquitto_hint(text)
        if mosquitto is not None:
            raise ValueError(f"{where} looks like a mosquitto.conf file {mosquitto}") from None
        raise ValueError(f"{where} is not valid TOML: {exc}") from None
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name == "listener":
            out["listeners"] = listeners_from(value, where)
            continue
        if isinstance(value, dict) or (
            isinstance(value, list) and value and all(isinstance(v, dict) for v in value)
        ):
            raise ValueError(_table_error(where, key, value, text))
        out[name] = convert(name, value, where, typed=True)
    return out


def _toml_type(hint: Any) -> type:
    """The TOML value type of a field's annotation: ``str | None`` -> str, ``list[str]`` -> list."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return typing.get_origin(args[0]) or args[0]  # type: ignore[no-any-return]


#: the keys of a [[listener]] table and their TOML types: ListenerConfig's fields, read from it
_LISTENER_TYPES: dict[str, type] = {
    name: _toml_type(hint) for name, hint in typing.get_type_hints(ListenerConfig).items()
}


def listeners_from(value: Any, where: str) -> list[ListenerConfig]:
    """``[[listener]]`` tables (or MQTTApp(listeners=[...]) dicts) as ListenerConfigs; one-line
    ValueError naming ``where``, the table's number and the key otherwise."""
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise ValueError(f"{where}: listener must be [[listener]] tables, not {_toml(value)}")
    out = []
    for i, table in enumerate(value, 1):
        if isinstance(table, ListenerConfig):
            table.validate(f"{where}: listener {i}")
            out.append(table)
            continue
        if not isinstance(table, dict):
            raise ValueError(f"{where}: listener {i} must be a table, not {_toml(table)}")
        fields: dict[str, Any] = {}
        for key, item in table.items():
            name = key.replace("-", "_")
            types = _LISTENER_TYPES.get(name)
            if types is None:
                close = _close_matches(name, _LISTENER_TYPES)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise ValueError(f"{where}: listener {i}: unknown key {key!r}{hint}")
            if isinstance(item, bool) != (types is bool) or not isinstance(item, types):
                kind = {int: "a whole number", str: "a string", bool: "true or false",
                        list: "a list of strings"}[types]  # fmt: skip
                raise ValueError(f"{where}: listener {i}: {name} must be {kind}, not {_toml(item)}")
            if isinstance(item, list) and not all(isinstance(o, str) for o in item):
                raise ValueError(f"{where}: listener {i}: origins must be a list of strings")
            fields[name] = item
        listener = ListenerConfig(**fields)
        listener.validate(f"{where}: listener {i}")
        out.append(listener)
    return out


def _table_error(where: str, key: str, value: Any, text: str) -> str:
    """The error for a table in the file: mqttd's file is flat but for its [[listener]] tables,
    so the error names the table rather than guessing at it."""
    inner = value if isinstance(value, dict) else value[0]
    first = next(iter(inner.items()), None)
    example = "port = 1883"
    if first is not None and first[0].replace("-", "_") in BY_NAME:
        if not isinstance(first[1], (dict, list)):
            example = f"{first[0]} = {_toml(first[1])}"
    escaped = re.escape(key)
    if isinstance(value, list):
        what = f"array of tables [[{key}]]"
    elif first is not None and re.search(rf"^\s*{escaped}\s*\.", text, re.MULTILINE):
        what = f"dotted key {key}.{first[0]}"
    else:
        what = f"table [{key}]"
    return (
        f"{where}: {what} is not supported: the config file is flat, name = value lines "
        f"without a [table] header (e.g. {example}), and [[listener]] tables"
    )


#: words that start a line of mosquitto.conf: a file of such lines is Mosquitto's, not TOML
_MOSQUITTO_WORDS = frozenset(
    {
        "listener", "port", "bind_address", "bind_interface", "allow_anonymous", "persistence",
        "persistence_location", "persistence_file", "autosave_interval", "password_file",
        "acl_file", "log_dest", "log_type", "log_timestamp", "connection_messages", "include_dir",
        "cafile", "capath", "certfile", "keyfile", "require_certificate", "tls_version",
        "max_connections", "max_inflight_messages", "max_queued_messages", "max_packet_size",
        "max_keepalive", "message_size_limit", "sys_interval", "protocol", "user", "pid_file",
        "per_listener_settings", "allow_zero_length_clientid", "retain_available", "plugin",
        "auth_plugin", "persistent_client_expiration", "set_tcp_nodelay", "connection",
        "address", "topic", "socket_domain", "http_dir", "queue_qos0_messages",
        "max_queued_bytes", "memory_limit", "max_inflight_bytes", "use_identity_as_username",
        "use_subject_as_username",
    }
)  # fmt: skip
#: mosquitto.conf words that are an mqttd option, for the hint in the error
_MOSQUITTO_TO_MQTTD = {
    "port": "port",
    "bind_address": "host",
    "max_inflight_messages": "max_inflight",
    "max_queued_messages": "max_queued_messages",
    "max_queued_bytes": "max_queued_bytes",
    "max_inflight_bytes": "max_inflight_bytes",
    "memory_limit": "memory_limit",
    "max_packet_size": "max_packet_size",
    "max_keepalive": "max_keepalive",
    "sys_interval": "sys_interval",
    "certfile": "certfile",
    "keyfile": "keyfile",
    "cafile": "cafile",
    "require_certificate": "require_certificate",
    "use_identity_as_username": "use_identity_as_username",
    "use_subject_as_username": "use_subject_as_username",
    "password_file": "password_file",
    "acl_file": "acl_file",
    "allow_anonymous": "allow_anonymous",
}


def _mosquitto_hint(text: str) -> str | None:
    """When ``text`` reads as mosquitto.conf (mostly ``word value`` lines with Mosquitto's words,
    no ``=``): the line that says so and how mqttd writes such a line; None otherwise."""
    found: list[tuple[int, list[str]]] = []
    assignments = 0
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if "=" in line:
            assignments += 1
        elif words[0] in _MOSQUITTO_WORDS:
            found.append((number, words))
    if not found or assignments > len(found):
        return None
    number, words = found[0]
    hint = next((h for _, w in found if (h := _translated(w))), "port = 1883")
    return f"(line {number}: {' '.join(words)!r}); mqttd reads TOML name = value lines: `{hint}`"


def _translated(words: list[str]) -> str | None:
    """A mosquitto.conf line as mqttd's TOML, when there is a plain equivalent."""
    if len(words) < 2:
        return None
    name = "port" if words[0] == "listener" else _MOSQUITTO_TO_MQTTD.get(words[0])
    if name is None:
        return None
    t = BY_NAME[name].type
    if t is str:
        value = _toml(words[1])
    else:
        try:
            _from_text(t, words[1])  # Mosquitto's value must be one of mqttd's as it stands
        except ValueError:
            return None
        value = words[1]
    if words[0] == "listener" and len(words) > 2:  # listener PORT ADDRESS
        return f"port = {value}` and `host = {_toml(words[2])}"
    return f"{name} = {value}"


def from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``MQTTD_<OPTION>`` variables (``MQTTD_PORT=1884``); other ``MQTTD_*`` names are not
    options (``MQTTD_NO_EXTENSIONS``) and are left alone."""
    env = os.environ if environ is None else environ
    out = {}
    for opt in OPTIONS:
        raw = env.get("MQTTD_" + opt.name.upper())
        if raw is not None:
            out[opt.name] = convert(opt.name, raw, "MQTTD_" + opt.name.upper())
    return out


def redis_url(values: Mapping[str, Any]) -> str | None:
    """The Redis URL the options say: redis_url, else one made of redis_host & co."""
    if values.get("redis_url"):
        return str(values["redis_url"])
    host = values.get("redis_host")
    if host is None and not values.get("use_redis"):
        return None
    host = host or "localhost"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address
    auth = ""
    if values.get("redis_password"):
        auth = ":" + quote(str(values["redis_password"]), safe="") + "@"
    return f"redis://{auth}{host}:{values.get('redis_port', 6379)}/{values.get('redis_db', 0)}"


def broker_config(values: Mapping[str, Any]) -> BrokerConfig:
    """A validated BrokerConfig from merged option values (ValueError says what is wrong)."""
    fields = {
        k: v for k, v in values.items() if k not in _NOT_CONFIG and k in BY_NAME and v is not None
    }
    fields["redis_url"] = redis_url(values)
    if values.get("listeners"):
        fields["listeners"] = list(values["listeners"])
    config = BrokerConfig(**fields)
    config.validate()
    return config


def _close_matches(name: str, names: Any) -> list[str]:
    """The known name ``name`` is closest to, for a "did you mean" (difflib, imported only for a
    mistake)."""
    import difflib

    return difflib.get_close_matches(name, names, n=1)
