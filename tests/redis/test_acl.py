"""The ACL across nodes: a message published on node A reaches a subscriber on node B only when
B's client may read its topic, whatever its filter (issue 13: "messages from other nodes through
Redis"). Both nodes read the same ACL file; markers, not sleeps, end each wait."""

from __future__ import annotations

from pathlib import Path

from multinode import Client

MARK = b"--marker--"
ACL = """\
topic readwrite open/#
pattern readwrite private/%c/#
"""


def test_a_subscription_to_everything_gets_only_readable_topics_from_another_node(
    start_nodes, shared_redis, tmp_path: Path
) -> None:
    acl = tmp_path / "acl"
    acl.write_text(ACL)
    a, b = start_nodes(shared_redis, 2, "--acl-file", str(acl))
    sub = Client(b, "reader-b")
    pub = Client(a, "writer-a")
    try:
        sub.subscribe("#")
        pub.publish("private/writer-a/secret", b"not for reader-b", qos=1)
        pub.publish("open/news", b"for everyone", qos=1)
        pub.publish("open/marker", MARK, qos=1)
        got = sub.until(MARK)
        assert [(m.topic, m.payload) for m in got] == [("open/news", b"for everyone")]
        # A pattern rule across nodes: only "owner" reads and writes private/owner/#
        owner = Client(a, "owner")
        intruder = Client(b, "intruder")
        try:
            owner.subscribe("private/owner/#", "open/marker")
            intruder.publish("private/owner/x", b"forged", qos=1)  # PUBACK 0x87, dropped on B
            intruder.publish("open/marker", MARK, qos=1)
            assert owner.until(MARK) == []
        finally:
            owner.close()
            intruder.close()
    finally:
        sub.close()
        pub.close()
