"""Redis URLs: which ones mqttd takes, and which of them name a Redis Cluster.

Read when the options are, so it imports nothing heavy: ``mqttd.broker`` imports it at module top,
and a node without Redis never loads redis-py or hiredis.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit

#: the schemes --redis-url takes, as the error for any other lists them
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")


class RedisUnavailable(Exception):
    """Redis could not be reached at start; the message is one line for the user. (Here, with
    the other start-up checks, so that a node without Redis can name it without loading
    redis-py.)"""


def is_cluster_url(url: str) -> bool:
    """``redis+cluster://`` / ``rediss+cluster://``: join through a Redis Cluster (sharded
    pub/sub, mqttd.redis.cluster)."""
    return url.split("://", 1)[0].lower() in ("redis+cluster", "rediss+cluster")


def _shown(url: str) -> str:
    """``url`` with its password masked: the error line lands in logs."""
    return re.sub(r"^([^:/]*://[^/@:]*:)[^/@]*@", r"\1***@", url)


def check_redis_url(url: str) -> None:
    """ValueError in one line if ``url`` is no Redis URL mqttd can use (scheme, port, database).

    The one check of a URL, run when the options are read (BrokerConfig.validate), so that a typo
    stops the start at once instead of after a connection attempt. redis-py would take
    ``redis://host/abc`` as database 0 and ``redis://host/3/4`` as 34: both are refused here.
    """
    head = f"redis_url {_shown(url)!r}"
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in REDIS_SCHEMES:
        said = f"unknown scheme {scheme!r}" if sep else "no scheme"
        accepted = ", ".join(s + "://" for s in REDIS_SCHEMES)
        raise ValueError(f"{head}: {said}; use one of {accepted}")
    scheme = scheme.lower()
    example = "unix:///run/redis.sock?db=0" if scheme == "unix" else f"{scheme}://host:6379/0"
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unclosed [IPv6 address
        raise ValueError(f"{head}: {exc} ({example})") from None
    hostport = parts.netloc.rpartition("@")[2]
    port_text = hostport.rpartition("]")[2] if hostport.startswith("[") else hostport
    port_text = port_text.partition(":")[2]
    if port_text and not (port_text.isascii() and port_text.isdigit() and int(port_text) < 65536):
        raise ValueError(f"{head}: port {port_text!r} is not a number 0..65535 ({example})")
    if scheme == "unix" and not parts.path:
        raise ValueError(f"{head}: give the path of the socket (unix:///run/redis.sock)")
    # unix:// has the socket as its path and the database in ?db=; the others /db or ?db=
    db_text = "" if scheme == "unix" else parts.path.lstrip("/")
    db_text = db_text or dict(parse_qsl(parts.query)).get("db", "")
    if db_text and not (db_text.isascii() and db_text.isdigit()):
        raise ValueError(f"{head}: database {db_text!r} is not a number ({example})")
    if is_cluster_url(url) and db_text and int(db_text) != 0:
        raise ValueError(f"{head}: a Redis Cluster has only database 0")
    plain = url if not is_cluster_url(url) else scheme.removesuffix("+cluster") + url[len(scheme) :]
    # Here, not at module top: redis-py takes about 0.1 s to import, paid only with a Redis URL
    from redis.asyncio.connection import parse_url

    try:
        parse_url(plain)  # whatever else redis-py refuses (a bad query argument)
    except ValueError as exc:
        raise ValueError(f"{head}: {exc}") from None
