"""The other nodes, as the broker sees them: one small interface, and the answer of a node alone.

The broker (:mod:`mqttd.broker`) calls these methods at the points where another node may need to
hear of something (a message to forward, a filter this node now subscribes to, a client id that
connected here) or may have a say (which node's member of a shared group gets a message, a
session another node holds). A node without Redis has :data:`LOCAL`, whose answers cost a method
call and do nothing; a node joined through Redis has a :class:`mqttd.redis.RedisBridge`. The
broker never asks which one it has.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol


class Peers(Protocol):
    """What the broker needs from the other nodes of its deployment."""

    #: True when there are other nodes to tell (a Redis bridge); $SYS and health use it
    remote: bool

    def stamp(self, msg: Any) -> object:
        """Give a message entering here its identity across nodes, before any shared group picks
        a member for it (:meth:`is_mine` reads it)."""
        ...

    def forward(self, msg: Any) -> None:
        """Send a message published here to the other nodes' subscribers."""
        ...

    def filter_added(self, filt: str) -> None:
        """This node has a first subscriber to ``filt`` (plain, or the filter of a shared group)."""
        ...

    def filter_removed(self, filt: str) -> None:
        """This node has no subscriber to ``filt`` any more."""
        ...

    def route_ready(self, filt: str) -> Awaitable[Any] | None:
        """Something to wait for until messages for ``filt`` from other nodes reach this node
        (so that a SUBACK can promise them), or None when they already do."""
        ...

    async def acquire_session(self, client_id: str, clean_start: bool) -> dict[str, Any] | None:
        """``client_id`` connected here: other nodes close its connection [MQTT-3.1.4-3] and end
        its session, handing it over when Clean Start is 0 (the state returned, or None)."""
        ...

    def restore_session(self, session: Any, state: dict[str, Any]) -> None:
        """Rebuild a session from the state another node handed over."""
        ...

    def mark_session(self, client_id: str) -> None:
        """This node holds the persistent session of ``client_id`` now."""
        ...

    def forget_session(self, client_id: str) -> None:
        """The persistent session of ``client_id`` ended here."""
        ...

    def will_armed(self, client_id: str, will: Any, delay: int) -> None:
        """``client_id`` connected here with a will: the other nodes publish it if this node
        dies (mqttd.redis.sessions)."""
        ...

    def will_gone(self, client_id: str) -> None:
        """The connection of ``client_id`` ended here: its will is this node's business."""
        ...

    def announce_groups(self) -> None:
        """The shared groups with members here changed."""
        ...

    def is_mine(self, name: str, filt: str, msg: Any) -> bool:
        """Whether this node's member of shared group ``name`` gets ``msg`` (one node per
        message across the deployment)."""
        ...

    def health(self) -> dict[str, Any]:
        """Figures for health checks and $SYS (empty without other nodes)."""
        ...


class LocalPeers:
    """No other nodes: nothing to tell, nothing to wait for, every choice is this node's."""

    __slots__ = ()
    remote = False

    def stamp(self, msg: Any) -> None:
        pass

    def forward(self, msg: Any) -> None:
        pass

    def filter_added(self, filt: str) -> None:
        pass

    def filter_removed(self, filt: str) -> None:
        pass

    def route_ready(self, filt: str) -> None:
        return None

    async def acquire_session(self, client_id: str, clean_start: bool) -> None:
        return None

    def restore_session(self, session: Any, state: dict[str, Any]) -> None:
        raise RuntimeError("a node alone is never handed a session")

    def mark_session(self, client_id: str) -> None:
        pass

    def forget_session(self, client_id: str) -> None:
        pass

    def will_armed(self, client_id: str, will: Any, delay: int) -> None:
        pass

    def will_gone(self, client_id: str) -> None:
        pass

    def announce_groups(self) -> None:
        pass

    def is_mine(self, name: str, filt: str, msg: Any) -> bool:
        return True

    def health(self) -> dict[str, Any]:
        return {}


#: the peers of a node alone (stateless, so one serves every broker)
LOCAL: Peers = LocalPeers()
