"""The connections' deadlines (CONNECT timeout, keep-alive) on one timer: a timer wheel.

One ``loop.call_later`` per connection costs a ``TimerHandle`` and a uvloop ``UVTimer``: 650 bytes
held by every idle connection (benchmarks/memory.py, issue 16), and a heap operation at every
reschedule. Here a deadline is an entry in the set of its tick (``TICK`` seconds wide): about
40 bytes, and the loop has one timer for the earliest due tick. A deadline fires at most one
tick late and never early, as the spec needs: the keep-alive rule is "not within 1.5 x Keep
Alive" [MQTT-3.1.2-24], so closing a quarter second later is still right.

An item is anything with a ``deadline()`` method; ``add`` returns the tick it was put in, which
the item keeps to ``discard`` itself (no search).
"""

from __future__ import annotations

import heapq
import math
from typing import Any, Protocol


class Item(Protocol):
    def deadline(self) -> None: ...


#: seconds per tick: the resolution of every deadline
TICK = 0.25


class Deadlines:
    __slots__ = ("loop", "ticks", "heap", "handle", "at")

    def __init__(self, loop: Any) -> None:
        self.loop = loop
        self.ticks: dict[int, set[Item]] = {}
        self.heap: list[int] = []  # the ticks of ``ticks``, earliest first
        self.handle: Any = None  # the loop's timer for tick ``at``
        self.at: int | None = None

    @staticmethod
    def tick(when: float) -> int:
        """The tick a deadline at loop time ``when`` is put in."""
        return math.ceil(when / TICK)

    def add(self, item: Item, when: float) -> int:
        """Call ``item.deadline()`` at loop time ``when`` (rounded up to the next tick)."""
        tick = self.tick(when)
        bucket = self.ticks.get(tick)
        if bucket is None:
            bucket = self.ticks[tick] = set()
            heapq.heappush(self.heap, tick)
            if self.at is None or tick < self.at:
                self._arm(tick)
        bucket.add(item)
        return tick

    def discard(self, item: Item, tick: int) -> None:
        bucket = self.ticks.get(tick)
        if bucket is None:
            return
        bucket.discard(item)
        if not bucket:
            # An emptied tick goes now, not when due: clients that come and go with long
            # keepalives would otherwise leave an empty set (216 bytes) per quarter second for
            # up to 1.5 x 65535 s. Its heap entry stays (skipped when due) until the heap holds
            # twice the live ticks, then the heap is rebuilt.
            del self.ticks[tick]
            if len(self.heap) > 64 and len(self.heap) > 2 * len(self.ticks):
                self.heap = list(self.ticks)
                heapq.heapify(self.heap)

    def __len__(self) -> int:
        return sum(len(b) for b in self.ticks.values())

    def _arm(self, tick: int) -> None:
        if self.handle is not None:
            self.handle.cancel()
        self.at = tick
        self.handle = self.loop.call_later(max(0.0, tick * TICK - self.loop.time()), self._fire)

    def _fire(self) -> None:
        self.handle = self.at = None
        now = self.loop.time()
        ticks = self.ticks
        # (self.heap each time: a discard from a deadline() may rebuild it)
        while self.heap and self.heap[0] * TICK <= now:
            for item in ticks.pop(heapq.heappop(self.heap), ()):
                item.deadline()  # may add it again, to a later tick
        heap = self.heap
        if heap and (self.at is None or heap[0] < self.at):  # (an add above may have armed)
            self._arm(heap[0])

    def close(self) -> None:
        """Nothing fires any more (the node stops)."""
        if self.handle is not None:
            self.handle.cancel()
        self.handle = self.at = None
        self.ticks.clear()
        self.heap.clear()
