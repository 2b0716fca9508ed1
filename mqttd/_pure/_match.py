"""Topic validation and the subscription tree (pure-Python twin of ``mqttd._match``).

This module is the reference: ``mqttd/_match.pyx`` has the same names and the same behaviour, and
the tests run every case against both (tests/unit/test_match*.py).

Rules enforced (MQTT 3.1.1 §4.7 and MQTT 5.0 §4.7, §4.8.2):

* A topic name (PUBLISH) is non-empty, holds no wildcard '+' or '#' [MQTT-3.3.2-2][MQTT-4.7.3-1],
  no U+0000 [MQTT-4.7.3-2], is well-formed UTF-8 (no surrogates) [MQTT-1.5.4-1] and at most
  65535 bytes long once encoded [MQTT-4.7.3-3].
* A topic filter follows the same string rules; '#' is alone in the last level [MQTT-4.7.1-2],
  '+' is alone in its level [MQTT-4.7.1-3].
* ``$share/{ShareName}/{filter}``: the share name is at least one character long and holds no
  '/', '+' or '#', and is followed by '/' and a valid filter [MQTT-4.8.2-1][MQTT-4.8.2-2].
* Matching: '+' matches exactly one level, an empty one included; '#' matches the parent and any
  number of levels below it [MQTT-4.7.1-2]; a filter starting with a wildcard does not match a
  topic name starting with '$' [MQTT-4.7.2-1]. Leading, trailing and double '/' make empty levels
  that are real levels ("/finance" has the two levels "" and "finance").
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator

from mqttd.constants import MAX_STRING  # a UTF-8 string has a two-byte length [MQTT-1.5.4]

__all__ = [
    "SubscriptionTree",
    "parse_shared",
    "topic_matches",
    "validate_filter",
    "validate_topic",
]

_SHARE_PREFIX = "$share/"


def _string_ok(s: str) -> bool:
    """The rules common to topic names and filters: non-empty, no U+0000, <= 65535 UTF-8 bytes."""
    if not s or "\x00" in s:  # [MQTT-4.7.3-1] [MQTT-4.7.3-2]
        return False
    if s.isascii():
        return len(s) <= MAX_STRING
    # One code point is at most 4 bytes: short strings need no encoding for the length check,
    # but every non-ASCII string is encoded once to reject lone surrogates [MQTT-1.5.4-1].
    try:
        return len(s.encode("utf-8")) <= MAX_STRING  # [MQTT-4.7.3-3]
    except UnicodeEncodeError:
        return False


def _check_str(s: object, what: str) -> None:
    if not isinstance(s, str):
        raise TypeError(f"{what} must be str, not {type(s).__name__}")


def validate_topic(topic: str) -> bool:
    """True when ``topic`` is a valid topic name for PUBLISH (no wildcards)."""
    _check_str(topic, "topic")
    if "+" in topic or "#" in topic:  # [MQTT-3.3.2-2]
        return False
    return _string_ok(topic)


def _plain_filter_ok(flt: str) -> bool:
    """Validity of a filter read literally, without the ``$share/`` form."""
    if not _string_ok(flt):
        return False
    if "+" not in flt and "#" not in flt:
        return True
    levels = flt.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if "#" in level:
            # '#' stands alone in the last level [MQTT-4.7.1-2]
            if level != "#" or i != last:
                return False
        elif "+" in level and level != "+":  # '+' stands alone in its level [MQTT-4.7.1-3]
            return False
    return True


def _split_shared(flt: str) -> tuple[str, str] | None:
    """(share_name, inner filter) of a ``$share/`` filter, None if not one; ValueError if bad."""
    if not flt.startswith(_SHARE_PREFIX):
        return None
    rest = flt[len(_SHARE_PREFIX) :]
    slash = rest.find("/")
    if slash < 0:
        # the share name MUST be followed by '/' and a topic filter [MQTT-4.8.2-2]
        raise ValueError(f"shared subscription {flt!r} has no topic filter after the share name")
    name = rest[:slash]
    inner = rest[slash + 1 :]
    if not name:  # [MQTT-4.8.2-1]
        raise ValueError(f"shared subscription {flt!r} has an empty share name")
    if "+" in name or "#" in name or "\x00" in name:  # [MQTT-4.8.2-2] [MQTT-4.7.3-2]
        raise ValueError(f"share name {name!r} must not contain '+', '#' or U+0000")
    if not _plain_filter_ok(inner):  # [MQTT-4.8.2-2]
        raise ValueError(f"shared subscription {flt!r} has an invalid topic filter {inner!r}")
    return name, inner


def parse_shared(filter: str) -> tuple[str, str] | None:
    """Split ``$share/{ShareName}/{filter}`` into ``(share_name, filter)``.

    Returns None when ``filter`` does not start with ``$share/``; raises ValueError when it does
    but is malformed (empty share name, share name holding '+' or '#', missing, empty or invalid
    inner filter). The share name cannot hold '/': the first '/' after the prefix ends it.
    """
    _check_str(filter, "filter")
    return _split_shared(filter)


def validate_filter(filter: str) -> bool:
    """True when ``filter`` is a valid topic filter for SUBSCRIBE (``$share/`` form included)."""
    _check_str(filter, "filter")
    if not _plain_filter_ok(filter):
        return False
    if filter.startswith(_SHARE_PREFIX):
        try:
            _split_shared(filter)
        except ValueError:
            return False
    return True


def topic_matches(filter: str, topic: str) -> bool:
    """True when the topic name ``topic`` matches the topic filter ``filter``.

    A ``$share/{ShareName}/`` prefix on the filter is stripped first (the share name only groups
    subscribers). An invalid filter or topic name matches nothing.
    """
    if not validate_topic(topic) or not validate_filter(filter):
        return False
    shared = _split_shared(filter)
    if shared is not None:
        filter = shared[1]
    # [MQTT-4.7.2-1] wildcards at the first level do not match topics starting with '$'
    if topic[0] == "$" and filter[0] in "+#":
        return False
    flevels = filter.split("/")
    tlevels = topic.split("/")
    nt = len(tlevels)
    for i, fl in enumerate(flevels):
        if fl == "#":
            return True  # the rest, the parent level included [MQTT-4.7.1-2]
        if i >= nt:
            return False
        if fl != "+" and fl != tlevels[i]:
            return False
    return len(flevels) == nt


class _Node:
    """One level of the tree: literal children by level string, and the '+' and '#' children
    apart, so a walk never hashes a wildcard. ``subs`` is None while nobody subscribes here."""

    __slots__ = ("children", "plus", "hash", "subs")

    def __init__(self) -> None:
        self.children: dict[str, _Node] | None = None
        self.plus: _Node | None = None
        self.hash: _Node | None = None
        self.subs: dict | None = None


class SubscriptionTree:
    """Subscriptions by topic filter: ``{filter: {key: value}}`` arranged as a level tree.

    Filters given to ``add`` are plain filters (the broker strips ``$share/{name}/``). ``collect``
    returns the subscriber dicts of every filter matching a topic name; that is the per-message
    hot path. Empty branches are freed when their last subscription goes.
    """

    __slots__ = ("_root", "_count", "_filters", "_nodes")

    def __init__(self) -> None:
        self._root = _Node()
        self._count = 0  # (filter, key) pairs
        self._filters = 0  # nodes with a non-empty subs dict
        self._nodes = 0  # nodes allocated, root excluded

    # -- changes -----------------------------------------------------------------------------

    def add(self, filter: str, key: Hashable, value: object) -> bool:
        """Store ``value`` for ``key`` at ``filter``; True if ``key`` was new at that filter.

        Raises ValueError for an invalid filter: a stray '#' in the middle would leave an
        unreachable branch behind.
        """
        _check_str(filter, "filter")
        if not _plain_filter_ok(filter):
            raise ValueError(f"invalid topic filter {filter!r}")
        hash(key)  # an unhashable key fails here, before any node is made for it
        node = self._root
        for level in filter.split("/"):
            if level == "+":
                child = node.plus
                if child is None:
                    child = node.plus = _Node()
                    self._nodes += 1
            elif level == "#":
                child = node.hash
                if child is None:
                    child = node.hash = _Node()
                    self._nodes += 1
            else:
                children = node.children
                if children is None:
                    children = node.children = {}
                child = children.get(level)
                if child is None:
                    child = children[level] = _Node()
                    self._nodes += 1
            node = child
        subs = node.subs
        if subs is None:
            subs = node.subs = {}
            self._filters += 1
        new = key not in subs
        subs[key] = value
        if new:
            self._count += 1
        return new

    def remove(self, filter: str, key: Hashable) -> bool:
        """Remove ``key`` from ``filter``; True if it was there. Empty nodes are pruned."""
        _check_str(filter, "filter")
        path: list[tuple[_Node, str]] = []
        node = self._root
        for level in filter.split("/"):
            if level == "+":
                child = node.plus
            elif level == "#":
                child = node.hash
            else:
                children = node.children
                child = None if children is None else children.get(level)
            if child is None:
                return False
            path.append((node, level))
            node = child
        subs = node.subs
        if subs is None or key not in subs:
            return False
        del subs[key]
        self._count -= 1
        if subs:
            return True
        node.subs = None
        self._filters -= 1
        # Free the branch bottom-up while nodes carry neither subscribers nor children.
        while path:
            if node.subs is not None or node.plus is not None or node.hash is not None:
                break
            if node.children:
                break
            parent, level = path.pop()
            if level == "+":
                parent.plus = None
            elif level == "#":
                parent.hash = None
            else:
                children = parent.children
                del children[level]  # type: ignore[union-attr]
                if not children:
                    parent.children = None
            self._nodes -= 1
            node = parent
        return True

    # -- look-ups ----------------------------------------------------------------------------

    def _find(self, filter: str) -> _Node | None:
        node: _Node | None = self._root
        for level in filter.split("/"):
            if level == "+":
                node = node.plus  # type: ignore[union-attr]
            elif level == "#":
                node = node.hash  # type: ignore[union-attr]
            else:
                children = node.children  # type: ignore[union-attr]
                node = None if children is None else children.get(level)
            if node is None:
                return None
        return node

    def get(self, filter: str, key: Hashable, default: object = None) -> object:
        """The value stored for ``key`` at ``filter``, or ``default``."""
        _check_str(filter, "filter")
        node = self._find(filter)
        if node is None or node.subs is None:
            return default
        return node.subs.get(key, default)

    def __contains__(self, filter: object) -> bool:
        """True when ``filter`` has at least one subscriber."""
        if not isinstance(filter, str):
            return False
        node = self._find(filter)
        return node is not None and node.subs is not None

    def collect(self, topic: str) -> list[dict]:
        """The subscriber dicts of every filter matching the topic name ``topic``.

        The dicts are the tree's own, not copies: read them, never change them, and do not keep
        them across a change of the tree. A key appears in several dicts when its subscriptions
        overlap. ``topic`` must be a valid topic name (see ``validate_topic``); order unspecified.
        """
        if not isinstance(topic, str):
            raise TypeError(f"topic must be str, not {type(topic).__name__}")
        out: list[dict] = []
        levels = topic.split("/")
        n = len(levels)
        # [MQTT-4.7.2-1]: the root's '+' and '#' children are skipped for '$' topics.
        root_wild = not topic.startswith("$")
        # Depth-first: follow the literal child in a loop, push the '+' branch for later.
        stack: list[tuple[_Node, int]] = [(self._root, 0)]
        pop = stack.pop
        push = stack.append
        while stack:
            node, i = pop()
            while True:
                wild = i > 0 or root_wild
                h = node.hash
                # '#' matches the rest, the parent included (a '#' node is a leaf: it is there
                # only while it has subscribers)
                if h is not None and h.subs is not None and wild:
                    out.append(h.subs)
                if i == n:
                    if node.subs is not None:
                        out.append(node.subs)
                    break
                if node.plus is not None and wild:
                    push((node.plus, i + 1))
                children = node.children
                if children is None:
                    break
                child = children.get(levels[i])
                if child is None:
                    break
                node = child
                i += 1
        return out

    def match(self, topic: str) -> dict:
        """``{key: [value, ...]}`` over every filter matching ``topic`` (a merged ``collect``)."""
        merged: dict = {}
        for subs in self.collect(topic):
            for key, value in subs.items():
                values = merged.get(key)
                if values is None:
                    merged[key] = [value]
                else:
                    values.append(value)
        return merged

    # -- sizes and listing -------------------------------------------------------------------

    def __len__(self) -> int:
        """Number of (filter, key) subscriptions."""
        return self._count

    def filter_count(self) -> int:
        """Number of distinct filters with at least one subscriber."""
        return self._filters

    def node_count(self) -> int:
        """Number of nodes allocated, the root excluded (0 for an empty tree)."""
        return self._nodes

    def filters(self) -> Iterator[str]:
        """The filters with at least one subscriber (a snapshot; order unspecified)."""
        found: list[str] = []
        path: list[str] = []  # the levels leading to the node being visited
        stack: list[tuple[_Node, int, str]] = [(self._root, 0, "")]
        while stack:
            node, depth, level = stack.pop()
            if depth:
                del path[depth - 1 :]
                path.append(level)
            if node.subs is not None:
                found.append("/".join(path))
            depth += 1
            if node.hash is not None:
                stack.append((node.hash, depth, "#"))
            if node.plus is not None:
                stack.append((node.plus, depth, "+"))
            if node.children is not None:
                for level, child in node.children.items():
                    stack.append((child, depth, level))
        return iter(found)

    def __repr__(self) -> str:
        return f"<SubscriptionTree {self._count} subscriptions, {self._filters} filters>"
