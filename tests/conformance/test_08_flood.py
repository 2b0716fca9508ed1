"""A publisher flooding QoS 0 messages must not starve anyone else.

Found by the fan-in benchmark: uvloop reads a busy socket up to 32 times per wake-up, and writes
to subscribers happen between loop iterations, so eight flooding publishers left a subscriber
with nothing for seconds and new clients unanswered. The broker now yields after a big read.
These tests check liveness under a flood, not speed.
"""

from __future__ import annotations

import socket
import threading
import time

from mqtt_raw import Client, connect, publish

FLOOD_SECONDS = 3.0


def _flood(addr: tuple[str, int], topic: str, stop: threading.Event) -> None:
    s = socket.create_connection(addr)
    s.sendall(connect(f"flooder-{topic}", level=4))
    s.recv(4)  # CONNACK
    batch = publish(topic, b"x" * 64, level=4) * 4096  # ~330 KB of QoS 0 PUBLISH per write
    s.settimeout(0.5)
    deadline = time.monotonic() + FLOOD_SECONDS
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                s.sendall(batch)
            except TimeoutError:
                pass
    finally:
        s.close()


def test_subscriber_and_new_clients_served_during_a_flood(fresh: tuple[str, int]) -> None:
    with Client(fresh) as sub:
        sub.connect("flood-sub")
        sub.subscribe("flood/#")
        stop = threading.Event()
        floods = [
            threading.Thread(target=_flood, args=(fresh, f"flood/{i}", stop), daemon=True)
            for i in range(4)
        ]
        for t in floods:
            t.start()
        try:
            time.sleep(0.5)  # the flood is under way
            # The subscriber receives messages while the publishers are still sending ...
            got = sub.recv_publish(timeout=2.0)
            assert got.topic.startswith("flood/")
            # ... and a new client is answered while they are.
            with Client(fresh) as late:
                late.connect("late-comer")
                late.ping()
            assert any(t.is_alive() for t in floods), "flood ended before the checks"
        finally:
            stop.set()
            for t in floods:
                t.join(5)
