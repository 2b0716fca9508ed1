"""MQTT filters as Redis pub/sub names: an exact channel, or a glob pattern at least as wide.

A filter without wildcards is the channel ``prefix + filter`` (SUBSCRIBE); one with ``+``/``#``
is a glob (PSUBSCRIBE) that may match more topics than the filter, since a glob ``*`` also
crosses ``/``. The node's own subscription tree does the exact MQTT matching of what arrives.
"""

from __future__ import annotations

import re

_GLOB_SPECIAL = re.compile(rb"([\\*?\[\]])")


def _glob_escape(data: bytes) -> bytes:
    return _GLOB_SPECIAL.sub(rb"\\\1", data)


def redis_key(prefix: bytes, filt: str) -> tuple[bool, bytes]:
    """(is_pattern, channel or glob) for an MQTT filter. A pattern is at least as wide as the
    filter (a glob ``*`` also crosses ``/``); the node's own tree does the exact matching."""
    levels = filt.split("/")
    if "+" not in levels and "#" not in levels:
        return False, prefix + filt.encode()
    out = _glob_escape(prefix)
    if levels[-1] == "#":
        levels = levels[:-1]
        # "a/#" matches "a" too [MQTT-4.7.1-2]: the glob "a*" covers both
        tail = b"*"
    else:
        tail = b""
    parts = [b"*" if lv == "+" else _glob_escape(lv.encode()) for lv in levels]
    return True, out + b"/".join(parts) + tail


def _glob_regex(pattern: bytes) -> re.Pattern[bytes]:
    """Redis's glob semantics for the patterns we make: ``*`` and backslash escapes."""
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i : i + 1]
        if c == b"\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1 : i + 2]))
            i += 2
            continue
        out.append(b".*" if c == b"*" else re.escape(c))
        i += 1
    return re.compile(b"".join(out) + rb"\Z", re.DOTALL)
