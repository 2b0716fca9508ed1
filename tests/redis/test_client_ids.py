"""Client ids the nodes assign (a client that sends an empty one, as mosquitto_sub and
mosquitto_pub do by default) are unique across the whole deployment: a shared id would make the
client of one node take over the client of another [MQTT-3.1.4-3].

Nodes started by the same command on one host used to make the same ids (the middle part came
from an object address, which repeats from run to run), so the README's two-node quick start
closed a client on the first try.
"""

from __future__ import annotations

from typing import Any

import pytest
from multinode import Client as PahoClient
from multinode import Nodes, unique

from tests.conformance.mqtt_raw import ASSIGNED_CLIENT_IDENTIFIER
from tests.conformance.mqtt_raw import Client as RawClient

ROUNDS = 4  # node pairs started one after the other on the same Redis
PER_NODE = 10  # clients of each protocol level on each node


def _empty_id_clients(node: Any, level: int) -> tuple[list[RawClient], list[str]]:
    made, assigned = [], []
    for _ in range(PER_NODE):
        c = RawClient((node.host, node.port), level)
        made.append(c)
        _, _, props = c.connect("", clean=True)
        if level == 5:
            # The id is told to MQTT 5 clients [MQTT-3.2.2-16]; 3.1.1 ones are never told it
            assigned.append(props[ASSIGNED_CLIENT_IDENTIFIER][0])
    return made, assigned


def test_assigned_ids_never_collide_across_nodes(
    request: pytest.FixtureRequest, redis_server: Any
) -> None:
    seen: set[str] = set()
    for _ in range(ROUNDS):
        nodes = Nodes(request.config)
        raw: list[RawClient] = []
        paho: list[PahoClient] = []
        try:
            a, b = nodes.start(redis_server, 2)
            for node in (a, b):
                for level in (4, 5):
                    made, assigned = _empty_id_clients(node, level)
                    raw += made
                    for cid in assigned:
                        assert cid not in seen, f"client id {cid} assigned twice"
                        seen.add(cid)
            # Every claim of a client id went to the other node through Redis before this
            # message did: once it has crossed, any takeover would have happened.
            topic = unique("ids/")
            sub = PahoClient(a)
            paho.append(sub)
            sub.subscribe(topic)
            pub = PahoClient(b)
            paho.append(pub)
            pub.publish(topic, b"marker")
            assert sub.get().payload == b"marker"
            for c in raw:
                c.ping()  # a client taken over is closed (MQTT 5: DISCONNECT 0x8E) instead
        finally:
            for c in raw:
                c.close()
            for p in paho:
                p.close()
            nodes.stop_all()
    assert len(seen) == ROUNDS * 2 * PER_NODE
