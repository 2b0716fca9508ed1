"""Scenario builders. Each returns a ``Scenario``: publisher and subscriber specs, nothing more.

Adding a scenario means writing one builder here and one sub-command in cli.py; the engine,
runner and report are shared. (The idle-connections scenario is not a flow of messages and has
its own runner, mqttd/bench/idle.py.)
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
        rate=rate,
    )


def fanout(
    subscribers: int = 50,
    payload: int = 64,
    qos: int = 0,
    rate: float = 0.0,
    prefix: str | None = None,
    publishers: int = 1,
    tag: str | None = None,
) -> Scenario:
    """1 publisher (or a few) -> N subscribers, all on the same topic ``prefix/t``; each
    subscriber must get every message, so delivered msg/s counts every copy."""
    if subscribers < 1 or publishers < 1:
        raise ValueError("need at least one publisher and one subscriber")
    tag = tag or run_tag()
    topic = f"{prefix or f'bench/fanout/{tag}'}/t"
    per_pub = rate / publishers if rate > 0 else 0.0
    pubs = [
        PubSpec(index=i, client_id=f"fo{tag}p{i}", topic=topic, qos=qos, payload=payload,
                rate=per_pub)
        for i in range(publishers)
    ]  # fmt: skip
    subs = [
        SubSpec(client_id=f"fo{tag}s{j}", filters=[topic], qos=qos, expects=list(range(publishers)))
        for j in range(subscribers)
    ]
    return Scenario(
        name="fanout",
        pubs=pubs,
        subs=subs,
        description=f"{publishers} publisher(s) -> {subscribers} subscribers on {topic}",
        rate=rate,
    )


def p2p(
    pairs: int = 16,
    payload: int = 64,
    qos: int = 0,
    rate: float = 0.0,
    prefix: str | None = None,
    tag: str | None = None,
) -> Scenario:
    """N independent pairs: publisher i -> subscriber i on topic ``prefix/i`` (no wildcard)."""
    if pairs < 1:
        raise ValueError("need at least one pair")
    tag = tag or run_tag()
    prefix = prefix or f"bench/p2p/{tag}"
    per_pub = rate / pairs if rate > 0 else 0.0
    pubs = [
        PubSpec(index=i, client_id=f"pp{tag}p{i}", topic=f"{prefix}/{i}", qos=qos,
                payload=payload, rate=per_pub)
        for i in range(pairs)
    ]  # fmt: skip
    subs = [
        SubSpec(client_id=f"pp{tag}s{i}", filters=[f"{prefix}/{i}"], qos=qos, expects=[i])
        for i in range(pairs)
    ]
    return Scenario(
        name="p2p",
        pubs=pubs,
        subs=subs,
        description=f"{pairs} pairs, publisher i -> subscriber i on {prefix}/i",
        rate=rate,
    )


def latency(
    rate: float = 20000.0,
    payload: int = 64,
    qos: int = 0,
    publishers: int = 1,
    prefix: str | None = None,
    tag: str | None = None,
) -> Scenario:
    """Publishers at a fixed total ``rate`` -> 1 subscriber; every payload carries its send time,
    the subscriber records receive - send for each message of the window."""
    if rate <= 0:
        raise ValueError("the latency scenario needs a fixed rate (> 0 msg/s)")
    if publishers < 1:
        raise ValueError("need at least one publisher")
    tag = tag or run_tag()
    prefix = prefix or f"bench/lat/{tag}"
    pubs = [
        PubSpec(index=i, client_id=f"la{tag}p{i}", topic=f"{prefix}/{i}", qos=qos,
                payload=payload, rate=rate / publishers, stamp=True)
        for i in range(publishers)
    ]  # fmt: skip
    sub = SubSpec(
        client_id=f"la{tag}s",
        filters=[f"{prefix}/+"],
        qos=qos,
        expects=list(range(publishers)),
        latency=True,
    )
    return Scenario(
        name="latency",
        pubs=pubs,
        subs=[sub],
        description=f"{publishers} publisher(s) at {rate:,.0f} msg/s in all -> 1 subscriber",
        rate=rate,
        pace_tick=0.001,  # bursts of rate/1000 messages: 20 at 20,000 msg/s
    )
