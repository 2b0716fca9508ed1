"""The timer wheel of the connections' deadlines (mqttd.deadlines): never early, at most a tick
late, one loop timer whatever the number of items."""

from __future__ import annotations

import pytest

from mqttd.deadlines import TICK, Deadlines
from tests.unit.test_connection import FakeLoop


class Item:
    def __init__(self, loop: FakeLoop, fired: list[tuple[str, float]], name: str) -> None:
        self.loop, self.fired, self.name = loop, fired, name
        self.again: float | None = None
        self.wheel: Deadlines | None = None

    def deadline(self) -> None:
        self.fired.append((self.name, self.loop.time()))
        if self.again is not None and self.wheel is not None:
            self.wheel.add(self, self.loop.time() + self.again)
            self.again = None


def test_fires_never_early_and_at_most_a_tick_late() -> None:
    loop = FakeLoop()
    wheel = Deadlines(loop)
    fired: list[tuple[str, float]] = []
    t0 = loop.time()
    for i, delay in enumerate([0.1, 1.3, 1.3, 2.0, 7.77]):
        wheel.add(Item(loop, fired, f"i{i}"), t0 + delay)
    loop.advance(10)
    fired.sort(key=lambda f: (f[1], f[0]))  # (one tick's items come in no set order)
    assert [n for n, _ in fired] == ["i0", "i1", "i2", "i3", "i4"]
    for (_, at), delay in zip(fired, [0.1, 1.3, 1.3, 2.0, 7.77], strict=True):
        assert t0 + delay <= at <= t0 + delay + TICK
    assert len(wheel) == 0 and wheel.handle is None  # nothing due: no timer left armed


def test_one_loop_timer_for_many_items() -> None:
    loop = FakeLoop()
    wheel = Deadlines(loop)
    fired: list[tuple[str, float]] = []
    for i in range(1000):
        wheel.add(Item(loop, fired, str(i)), loop.time() + 60 + i % 7)
    assert len(loop.timers) == 1 and len(wheel) == 1000
    loop.advance(70)
    assert len(fired) == 1000


def test_discarded_item_does_not_fire() -> None:
    loop = FakeLoop()
    wheel = Deadlines(loop)
    fired: list[tuple[str, float]] = []
    a, b = Item(loop, fired, "a"), Item(loop, fired, "b")
    tick = wheel.add(a, loop.time() + 1)
    wheel.add(b, loop.time() + 1)
    wheel.discard(a, tick)
    wheel.discard(a, tick)  # twice, or after it fired: nothing
    loop.advance(5)
    assert [n for n, _ in fired] == ["b"]


@pytest.mark.parametrize("first", [5.0, 0.5])
def test_an_earlier_deadline_added_while_firing_is_not_missed(first: float) -> None:
    """An item that adds itself again from deadline() (the keep-alive check) to a tick before or
    after the one already waiting: both fire on time."""
    loop = FakeLoop()
    wheel = Deadlines(loop)
    fired: list[tuple[str, float]] = []
    a, b = Item(loop, fired, "a"), Item(loop, fired, "b")
    a.wheel, a.again = wheel, first
    t0 = loop.time()
    wheel.add(a, t0 + 1)
    wheel.add(b, t0 + 3)
    loop.advance(10)
    want = sorted([("a", 1.0), ("b", 3.0), ("a", 1.0 + first)], key=lambda x: x[1])
    assert [n for n, _ in fired] == [n for n, _ in want]
    for (_, at), (_, due) in zip(fired, want, strict=True):
        assert t0 + due <= at <= t0 + due + 2 * TICK


def test_close_stops_everything() -> None:
    loop = FakeLoop()
    wheel = Deadlines(loop)
    fired: list[tuple[str, float]] = []
    wheel.add(Item(loop, fired, "a"), loop.time() + 1)
    wheel.close()
    loop.advance(5)
    assert fired == [] and len(wheel) == 0


def test_emptied_ticks_go_at_once_and_the_heap_stays_bounded() -> None:
    """Clients that come and go with long keepalives leave nothing behind: an emptied tick is
    dropped when its last item leaves, and the heap of ticks is rebuilt once it holds twice the
    live ones; what is still waiting fires on time."""
    loop = FakeLoop()
    wheel = Deadlines(loop)
    fired: list[tuple[str, float]] = []
    keep = Item(loop, fired, "keep")
    t0 = loop.time()
    wheel.add(keep, t0 + 5000)
    for i in range(10_000):  # each a tick of its own, up to 2,500 s ahead
        item = Item(loop, fired, str(i))
        wheel.discard(item, wheel.add(item, t0 + 10 + i * TICK))
    assert len(wheel.ticks) == 1 and len(wheel.heap) <= 2 * 64
    loop.advance(6000)
    assert [n for n, _ in fired] == ["keep"]
    assert t0 + 5000 <= fired[0][1] <= t0 + 5000 + TICK
