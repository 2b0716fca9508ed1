"""Facts about topic names that are not the wire format's (that is ``match``'s validation)."""

from __future__ import annotations

#: the broker's own tree (mqttd.systopics publishes there)
SYS_ROOT = "$SYS"


def is_reserved_topic(topic: str) -> bool:
    """True when a client may not publish to ``topic``: the broker's own ``$SYS`` tree.

    Topic names starting with '$' are reserved for the server's own use (MQTT 5 §4.7.2); a client
    PUBLISH (or will) into ``$SYS`` would overwrite the broker's retained status values.
    """
    return topic.startswith(SYS_ROOT) and (len(topic) == 4 or topic[4] == "/")
