"""A Remaining Length of 268,435,455 (the largest a fixed header can announce), sent alone and
then dribbled.

Proves: the broker refuses an oversized packet from its fixed header, before any of the body
(MQTT 5: DISCONNECT 0x95 first); where its limit allows such a packet, announcing one and
dribbling the body costs only the bytes really sent, not the 256 MB announced; and the limit on
bytes held in partly received packets (``--max-incoming-bytes``) closes a connection that passes
it.
"""

from __future__ import annotations

import time

import pytest
from mqtt_raw import CONNACK, Client, assert_closed, varint

from .support import (
    BASELINE_RSS_MIB,
    MIB,
    SLACK_MIB,
    assert_healthy,
    connected_client,
    dribble,
    hostile_broker,
)

MAX_REMAINING_LENGTH = 268_435_455  # 0xFF 0xFF 0xFF 0x7F [MQTT 5 §1.5.5, 3.1.1 §2.2.3]
#: A PUBLISH QoS 0 fixed header announcing the largest Remaining Length.
HUGE_PUBLISH_HEADER = b"\x30" + varint(MAX_REMAINING_LENGTH)
#: the start of that PUBLISH's body: topic "big", then payload bytes
HUGE_PUBLISH_START = b"\x00\x03big"
PACKET_TOO_LARGE = 0x95
QUOTA_EXCEEDED = 0x97  # the reason mqttd gives for --max-incoming-bytes (MQTT 5 §3.14.2.1)
MAX_PACKET_SIZE_LIMIT = 268_435_460  # the largest --max-packet-size mqttd accepts

#: Nothing here is held beyond a few KiB of dribbled body: a fresh broker's RSS and the slack.
#: Preallocating the announced packet would add 256 MiB.
RSS_BOUND_MIB = BASELINE_RSS_MIB + SLACK_MIB
#: The --max-incoming-bytes case lets the broker hold up to 1 MiB of partial body, which may
#: exist twice while it is taken in (the bytes read and the Reader's copy): two of it on top.
INCOMING_LIMIT = 1 * MIB
INCOMING_RSS_BOUND_MIB = BASELINE_RSS_MIB + SLACK_MIB + 2


@pytest.fixture(scope="module")
def default_broker():
    with hostile_broker() as b:
        yield b


def test_announced_max_before_connect_closed(default_broker):
    """Attack: the first bytes on a connection are a fixed header announcing 268,435,455 bytes,
    then body bytes dribbled. Expected: closed from the header (the default Maximum Packet Size
    is 1 MiB), no CONNACK 0 [MQTT-3.1.0-1], broker healthy."""
    b = default_broker
    c = Client(b.addr, 4)
    try:
        c.send(HUGE_PUBLISH_HEADER)
        body = HUGE_PUBLISH_START + b"x" * 64
        sent = dribble(c, body, 0.02, until=time.monotonic() + 2.0)
        got = c.wait_closed()
    finally:
        c.close()
    assert all(p.type == CONNACK and p.body[1] != 0 for p in got), f"answered {got!r}"
    assert sent < len(body), "the whole dribble went out: the broker waited for the body"
    assert_healthy(b, RSS_BOUND_MIB)


@pytest.mark.parametrize("level", [4, 5])
def test_announced_max_after_connect_closed(default_broker, level):
    """Attack: a connected client announces a PUBLISH of 268,435,455 bytes and dribbles its
    body. Expected: the broker refuses it from the fixed header, above its Maximum Packet Size
    (1 MiB, announced in the MQTT 5 CONNACK): MQTT 5 gets DISCONNECT 0x95 Packet too large
    first (MQTT 5 §3.2.2.3.6, §4.13.1), 3.1.1 is just closed [MQTT-4.8.0-1]."""
    b = default_broker
    c = connected_client(b.addr, level)
    try:
        c.send(HUGE_PUBLISH_HEADER)
        dribble(c, HUGE_PUBLISH_START + b"x" * 64, 0.02, until=time.monotonic() + 2.0)
        assert_closed(c, (PACKET_TOO_LARGE,))
    finally:
        c.close()
    assert_healthy(b, RSS_BOUND_MIB)


def test_announced_max_allowed_and_dribbled_costs_what_is_sent():
    """Attack: with --max-packet-size at its largest (so the packet is legal), a client
    announces 268,435,455 bytes and dribbles 1 KiB every 10 ms for 2 s. Expected: the broker
    neither preallocates the announced size nor closes a legal, slow packet: it keeps serving,
    the connection stays open (a PINGREQ after it would be the packet's body, so openness is
    read from the socket), and its peak RSS stays within a fresh broker's plus slack."""
    with hostile_broker("--max-packet-size", str(MAX_PACKET_SIZE_LIMIT)) as b:
        c = connected_client(b.addr, 5)
        try:
            c.send(HUGE_PUBLISH_HEADER + HUGE_PUBLISH_START)
            until = time.monotonic() + 2.0
            body = b"y" * (400 * 1024)
            sent = dribble(c, body, 0.01, chunk=1024, until=until)
            assert sent >= 100 * 1024, f"only {sent} bytes dribbled: the broker closed early?"
            assert_healthy(b, RSS_BOUND_MIB, peak_bound_mib=RSS_BOUND_MIB)
            # Still open: nothing came back and no EOF.
            c.expect_quiet(0.2)
        finally:
            c.close()
        assert_healthy(b, RSS_BOUND_MIB, peak_bound_mib=RSS_BOUND_MIB)


def test_announced_max_past_incoming_limit_closed():
    """Attack: with the largest --max-packet-size, a client announces 268,435,455 bytes and
    sends the body in 64 KiB pieces. Expected: once the partial packet would hold more than
    --max-incoming-bytes (1 MiB here) the connection is closed -- after no more than that limit
    plus what was in flight; MQTT 5 is first told DISCONNECT 0x97 Quota exceeded -- and the
    broker's peak RSS stays bounded."""
    flags = ("--max-packet-size", str(MAX_PACKET_SIZE_LIMIT))
    with hostile_broker(*flags, "--max-incoming-bytes", str(INCOMING_LIMIT)) as b:
        c = connected_client(b.addr, 5)
        try:
            c.send(HUGE_PUBLISH_HEADER + HUGE_PUBLISH_START)
            body = b"z" * (16 * INCOMING_LIMIT)
            sent = dribble(c, body, 0.005, chunk=64 * 1024, until=time.monotonic() + 4.0)
            assert sent < len(body), "16 MiB of a partial packet accepted past a 1 MiB limit"
            assert_closed(c, (QUOTA_EXCEEDED,))
        finally:
            c.close()
        assert_healthy(b, INCOMING_RSS_BOUND_MIB, peak_bound_mib=INCOMING_RSS_BOUND_MIB)
