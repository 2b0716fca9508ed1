"""Scenario builders. Each returns a ``Scenario``: publisher and subscriber specs, nothing more.

Adding a scenario (fan-out, many-to-many, QoS 1 round trips, ...) means writing one builder here
and one sub-command in cli.py; the engine, runner and report are shared.
"""

from __future__ import annotations

import os

from mqttd.bench.engine import PubSpec, SubSpec
from mqttd.bench.runner import Scenario


def run_tag() -> str:
    """A short random tag so concurrent runs never share topics or client identifiers."""
    return os.urandom(3).hex()


def fanin(
    publishers: int = 8,
    payload: int = 64,
    qos: int = 0,
    rate: float = 0.0,
    prefix: str | None = None,
    wildcard: str = "+",
    tag: str | None = None,
) -> Scenario:
    """N publishers -> 1 subscriber; publisher i publishes to ``prefix/i``; the subscriber
    subscribes to ``prefix/+`` (or ``prefix/#``). ``rate`` is the total messages/s over all
    publishers (0 = each publisher as fast as the broker reads)."""
    if publishers < 1:
        raise ValueError("need at least one publisher")
    if wildcard not in ("+", "#"):
        raise ValueError("wildcard must be '+' or '#'")
    tag = tag or run_tag()
    prefix = prefix or f"bench/fanin/{tag}"
    per_pub = rate / publishers if rate > 0 else 0.0
    # Client identifiers stay within the 23 characters every server must accept [MQTT-3.1.3-5].
    pubs = [
        PubSpec(
            index=i,
            client_id=f"fi{tag}p{i}",
            topic=f"{prefix}/{i}",
            qos=qos,
            payload=payload,
            rate=per_pub,
        )
        for i in range(publishers)
    ]
    sub = SubSpec(
        client_id=f"fi{tag}s",
        filters=[f"{prefix}/{wildcard}"],
        qos=qos,
        expects=list(range(publishers)),
    )
    return Scenario(
        name="fanin",
        pubs=pubs,
        subs=[sub],
        description=f"{publishers} publishers -> 1 subscriber on {prefix}/{wildcard}",
    )
