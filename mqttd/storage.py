"""Where the state that outlives a connection lives: retained messages, sessions, client ids.

The protocol code reaches this state only through :class:`Storage`, so that the Redis backend (and
later a file) replaces :class:`MemoryStorage` without touching it. The calls that may need a round
trip to another process are coroutines (``claim``, ``get_session``, ``retained``); the ones on the
message path are plain calls that a remote store performs without waiting (``retain``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any


class Storage(ABC):
    """The interface the broker keeps its durable state behind."""

    #: True when its coroutines never wait and need no task (they may run from a protocol
    #: callback: mqttd.connection's _block); a storage over the network keeps False
    instant: bool = False

    # -- retained messages -----------------------------------------------------------------------
    @abstractmethod
    def retain(self, msg: Any) -> None:
        """Keep ``msg`` as the retained message of its topic; an empty payload clears the topic
        [MQTT-3.3.1-6][MQTT-3.3.1-7]."""

    @abstractmethod
    def retained_now(self, filt: str) -> list[Any] | None:
        """The retained messages matching ``filt`` when they are at hand without waiting, else
        None (then call :meth:`retained`)."""

    @abstractmethod
    async def retained(self, filt: str) -> list[Any]:
        """The retained messages whose topics match ``filt``."""

    @abstractmethod
    def forget_retained(self, topic: str, msg: Any) -> None:
        """Drop ``msg`` (expired) if it is still the one retained at ``topic``."""

    @abstractmethod
    def retained_count(self) -> int: ...

    # -- sessions --------------------------------------------------------------------------------
    @abstractmethod
    async def get_session(self, client_id: str) -> Any | None:
        """The session of ``client_id`` if one exists."""

    @abstractmethod
    def put_session(self, session: Any) -> None: ...

    @abstractmethod
    def drop_session(self, session: Any) -> None:
        """The session ended; forget it if it is still the one stored for its client id."""

    @abstractmethod
    def sessions(self) -> dict[str, Any]:
        """The sessions this node holds, by client id."""

    # -- client-id ownership ---------------------------------------------------------------------
    @abstractmethod
    async def claim(self, client_id: str, owner: Any) -> Any | None:
        """Make ``owner`` (a connection) the one connection of ``client_id``; return the previous
        owner on this node, which the caller closes [MQTT-3.1.4-3]. A shared store also makes
        other nodes close theirs."""

    @abstractmethod
    def release(self, client_id: str, owner: Any) -> None:
        """``owner`` is gone; no-op if another connection owns ``client_id`` by now."""


class _RetainedNode:
    __slots__ = ("children", "msg")

    def __init__(self) -> None:
        self.children: dict[str, _RetainedNode] = {}
        self.msg: Any = None


class RetainedIndex:
    """Retained messages in a tree of topic levels, so that a filter finds its topics by walking
    the tree, not by scanning every retained topic."""

    def __init__(self) -> None:
        self.root = _RetainedNode()
        self.count = 0

    def set(self, topic: str, msg: Any) -> None:
        node = self.root
        for level in topic.split("/"):
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = _RetainedNode()
            node = child
        if node.msg is None:
            self.count += 1
        node.msg = msg

    def get(self, topic: str) -> Any:
        node: _RetainedNode | None = self.root
        for level in topic.split("/"):
            node = node.children.get(level)  # type: ignore[union-attr]
            if node is None:
                return None
        return node.msg  # type: ignore[union-attr]

    def delete(self, topic: str) -> bool:
        path = [self.root]
        levels = topic.split("/")
        for level in levels:
            child = path[-1].children.get(level)
            if child is None:
                return False
            path.append(child)
        if path[-1].msg is None:
            return False
        path[-1].msg = None
        self.count -= 1
        # Free the branch that no longer leads to a message
        for i in range(len(levels), 0, -1):
            node = path[i]
            if node.msg is not None or node.children:
                break
            del path[i - 1].children[levels[i - 1]]
        return True

    def match(self, filt: str) -> Iterator[Any]:
        """Messages whose topics ``filt`` matches, with MQTT's ``+``, ``#`` and ``$`` rules."""
        levels = filt.split("/")
        # Filters starting with a wildcard do not match topics starting with '$' [MQTT-4.7.2-1]
        no_dollar = levels[0] in ("+", "#")
        stack: list[tuple[_RetainedNode, int]] = [(self.root, 0)]
        n = len(levels)
        while stack:
            node, i = stack.pop()
            if i == n:
                if node.msg is not None:
                    yield node.msg
                continue
            level = levels[i]
            if level == "#":
                # '#' matches the parent level too ("a/#" matches "a") [MQTT-4.7.1-2]
                if node.msg is not None and i > 0:
                    yield node.msg
                todo = [
                    c
                    for k, c in node.children.items()
                    if not (i == 0 and no_dollar and k[:1] == "$")
                ]
                while todo:
                    sub = todo.pop()
                    if sub.msg is not None:
                        yield sub.msg
                    todo.extend(sub.children.values())
            elif level == "+":
                for k, child in node.children.items():
                    if i == 0 and no_dollar and k[:1] == "$":
                        continue
                    stack.append((child, i + 1))
            else:
                child = node.children.get(level)
                if child is not None:
                    stack.append((child, i + 1))


class MemoryStorage(Storage):
    """Everything in this process: the embedded default."""

    instant = True

    def __init__(self) -> None:
        self.index = RetainedIndex()
        self._sessions: dict[str, Any] = {}
        self._owners: dict[str, Any] = {}
        #: topic -> retained message (None: cleared) since mqttd.persistence last wrote them;
        #: None while nothing persists (a dict set per retained message otherwise)
        self.journal: dict[str, Any] | None = None

    def retain(self, msg: Any) -> None:
        if msg.payload:
            self.index.set(msg.topic, msg)
        else:
            self.index.delete(msg.topic)
        if self.journal is not None and not msg.topic.startswith("$SYS"):
            self.journal[msg.topic] = msg if msg.payload else None

    def retained_now(self, filt: str) -> list[Any] | None:
        return list(self.index.match(filt))

    async def retained(self, filt: str) -> list[Any]:
        return list(self.index.match(filt))

    def forget_retained(self, topic: str, msg: Any) -> None:
        if self.index.get(topic) is msg:
            self.index.delete(topic)
            if self.journal is not None:
                self.journal[topic] = None

    def retained_count(self) -> int:
        return self.index.count

    async def get_session(self, client_id: str) -> Any | None:
        return self._sessions.get(client_id)

    def put_session(self, session: Any) -> None:
        self._sessions[session.client_id] = session

    def drop_session(self, session: Any) -> None:
        if self._sessions.get(session.client_id) is session:
            del self._sessions[session.client_id]

    def sessions(self) -> dict[str, Any]:
        return self._sessions

    async def claim(self, client_id: str, owner: Any) -> Any | None:
        previous = self._owners.get(client_id)
        self._owners[client_id] = owner
        return previous if previous is not owner else None

    def release(self, client_id: str, owner: Any) -> None:
        if self._owners.get(client_id) is owner:
            del self._owners[client_id]


__all__ = ["MemoryStorage", "RetainedIndex", "Storage"]
