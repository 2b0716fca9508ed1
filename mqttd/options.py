"""The broker's options, in one table: the CLI flags, the TOML config file, the ``MQTTD_*``
environment variables and the :class:`mqttd.MQTTApp` constructor all take these names.

Where a value comes from, lowest first: the default here, the config file (``mqttd --config`` /
``MQTTApp(config_file=...)``), then for the ``mqttd`` command the ``MQTTD_*`` environment and its
flags; for a program, the ``MQTTApp(...)`` arguments it passes and then the ``MQTTD_*``
environment, which has the last word so that a deployment can move a program (another port,
another Redis) without editing it.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from mqttd.broker import BrokerConfig


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
        "max_inflight",
        int,
        65535,
        "QoS 1/2 messages in flight to each client (default 65535; an MQTT 5 client's "
        "Receive Maximum lowers it)",
        "N",
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
        "log_level",
        str,
        "info",
        "debug, info, warning or error (default info)",
        "LEVEL",
    ),
)

BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
#: options that are not BrokerConfig fields: they make the Redis URL, or set up logging
_NOT_CONFIG = frozenset(
    {"redis_host", "redis_port", "redis_db", "redis_password", "use_redis", "log_level"}
)
LOG_LEVELS = ("debug", "info", "warning", "error")


def defaults() -> dict[str, Any]:
    return {o.name: o.default for o in OPTIONS}


def convert(name: str, value: Any, where: str) -> Any:
    """``value`` as the option's type; ValueError with a one-line reason otherwise."""
    opt = BY_NAME.get(name)
    if opt is None:
        raise ValueError(f"{where}: unknown option {name!r}")
    if value is None:
        return None
    t = opt.type
    if t is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in (
            "1",
            "true",
            "yes",
            "on",
            "0",
            "false",
            "no",
            "off",
        ):
            return value.lower() in ("1", "true", "yes", "on")
        raise ValueError(f"{where}: {name} must be true or false, not {value!r}")
    if t is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError(f"{where}: {name} must be a whole number, not {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"{where}: {name} must be a whole number, not {value!r}") from None
    if t is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"{where}: {name} must be a number, not {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{where}: {name} must be a number, not {value!r}") from None
    if not isinstance(value, str):
        raise ValueError(f"{where}: {name} must be a string, not {value!r}")
    if name == "log_level" and value.lower() not in LOG_LEVELS:
        raise ValueError(f"{where}: log_level must be one of {', '.join(LOG_LEVELS)}")
    return value


def load_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The options of a TOML config file (flat ``name = value`` lines; ``-`` or ``_``)."""
    where = str(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ValueError(f"config file {where} not found") from None
    except OSError as exc:
        raise ValueError(f"cannot read config file {where}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{where} is not valid TOML: {exc}") from None
    return {k.replace("-", "_"): convert(k.replace("-", "_"), v, where) for k, v in data.items()}


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
    config = BrokerConfig(**fields)
    config.validate()
    return config
