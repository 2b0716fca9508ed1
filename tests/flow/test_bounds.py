"""The bounds of issue 12 (flow control), each scenario of ``benchmarks/flow.py`` in a short form,
against a real mqttd process started by the test (``python -m mqttd --port 0``, its pid checked,
stopped afterwards). Each asserts the bound the issue states, in a form a broker without flow
control fails:

(a) 1 stalled QoS 1 subscriber, 50,000 x 1 KB: the broker's RSS peak over its start stays within
    the configured limits (queue + in-flight window) + SLACK; the session holds at most
    max_queued_messages + max_inflight ($SYS, with the subscriber still stalled, and what it
    gets when it reads again); every publish is acknowledged.
(b) 50 stalled + 1 fast subscriber at QoS 0 and at QoS 1, 20,000 x 1 KB, with small limits
    (--max-queued-bytes / --max-buffer 262144): RSS within 50 x the limits + SLACK; at QoS 1 the
    fast subscriber gets every message once, in order, and every publish is acknowledged.
(c) 4 stalled QoS 1 subscribers, 4 publishers of 64 KB for 5 s: RSS within the limits + SLACK,
    and flat (RSS at 100 % of the run minus RSS at 40 % < 10 MiB).
(d) 1 fast QoS 1 subscriber, --max-inflight 20: nothing dropped ($SYS), every message once, in
    order.
(e) a persistent QoS 1 session away: the broker holds at most max_queued_messages + max_inflight
    for it ($SYS), sends at most max_inflight before its first PUBACK on return, and then the
    rest (at least its queue), in order.
(f) 6,000 filters of 100 levels from one client, then 200 PUBLISH in one write: new clients'
    CONNECT -> CONNACK + PINGREQ -> PINGRESP answered within 2.0 s while the burst is delivered
    (the issue's figure is 0.6 s; this machine-independent bound still fails a broker without
    the turn budget: about 3.3 s here, see ``burst_check``).

No sleep is followed by a count: the end of a phase is a marker (a PUBLISH sent after the data
on the publisher's own connection, a PINGRESP, a ``$SYS`` read whose own marker came back and
whose values come from a round computed after the read started; benchmarks/flow.py). The
whole file takes about 60 s.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import broker_kind

ROOT = Path(__file__).resolve().parents[2]


def _load_flow() -> ModuleType:
    """benchmarks/flow.py as a module (benchmarks/ is not a package)."""
    name = "mqttd_benchmarks_flow"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "flow.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up while it executes
    spec.loader.exec_module(mod)
    return mod


flow = _load_flow()
MiB = flow.MiB
#: RSS the bounds allow beyond the configured limits: allocator slack, asyncio's and the
#: interpreter's own buffers, the messages of one read being dispatched
SLACK = 20 * MiB

pytestmark = pytest.mark.skipif(
    broker_kind() != "mqttd", reason="mqttd's flow-control options and limits"
)


@contextmanager
def mqttd(*args: str) -> Iterator[tuple[Any, Any, int]]:
    """A fresh mqttd (``--sys-interval 1`` + ``args``): (broker, Ctx, RSS at start). Stopped
    afterwards; its log must have no traceback or ERROR line."""
    b = flow.start_mqttd(["--sys-interval", "1", *args])
    try:
        base = flow.proc_status(b.pid, "VmRSS")
        ctx = flow.Ctx(b, 1.0, timeout=40.0, rss_cap=4096 * MiB, drain_max=15.0)
        yield b, ctx, base
        assert b.alive(), "the broker exited:\n" + b.tail()
    finally:
        b.stop()
    assert not b.n_errors, "errors in the broker's log:\n" + "".join(b.errors)


def limits(*args: str) -> dict[str, int]:
    return flow.mqttd_limits(list(args))


def queue_msgs(lim: dict[str, int], size: int) -> int:
    """Messages of ``size`` bytes one session's queue may hold."""
    n = lim["max_queued_messages"]
    return min(n, lim["max_queued_bytes"] // size) if lim["max_queued_bytes"] else n


def stored(values: dict[str, str] | None) -> int:
    """Messages queued or in flight for sessions, per $SYS (its store count less retained)."""
    assert values is not None, "no $SYS answer"
    total = flow.sys_int(values, "store/messages/count")
    retained = flow.sys_int(values, "retained messages/count") or 0
    assert total is not None, values
    return total - retained


def dropped_consistent(res: dict[str, Any]) -> None:
    """$SYS publish/messages/dropped is the sum of its reasons."""
    d = res["dropped"]
    assert "total" in d, res.get("sys")
    assert d["total"] == sum(v for k, v in d.items() if k != "total"), d


def rss_at(series: list[tuple[float, int]], t: float) -> int:
    return min(series, key=lambda s: abs(s[0] - t))[1]


@pytest.mark.timeout(60)
def test_one_stalled_qos1_subscriber_is_bounded() -> None:
    n, size = 50_000, 1024 + len("flow/a/0")
    with mqttd() as (_b, ctx, base):
        res = flow.fanout(ctx, "a", qos=1, n_slow=1, n_fast=0, messages=n)
    lim = limits()
    allow = flow.limits_allowance((1, 1, size), lim)
    assert res["status"] == "ok", res["status"]
    assert res["published"] == n and res["acked"] == n, (res["published"], res["acked"])
    growth = res["rss_peak"] - base
    assert growth <= allow + SLACK, f"RSS grew {growth / MiB:.1f} MiB, limits {allow / MiB:.1f}"
    cap = queue_msgs(lim, size) + lim["max_inflight"]
    assert stored(res["sys_stalled"]) <= cap
    assert res["slow"]["drain_complete"], res["slow"]
    assert res["slow"]["delivered_max"] <= cap, res["slow"]
    dropped_consistent(res)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("qos", [0, 1])
def test_fifty_stalled_subscribers_and_a_fast_one(qos: int) -> None:
    n, size = 20_000, 1024 + len("flow/b0/0")
    args = ("--max-queued-bytes", "262144", "--max-buffer", "262144")
    with mqttd(*args) as (_b, ctx, base):
        res = flow.fanout(ctx, f"b{qos}", qos=qos, n_slow=50, n_fast=1, messages=n)
    lim = limits(*args)
    allow = flow.limits_allowance((50, qos, size), lim)
    assert res["status"] == "ok", res["status"]
    growth = res["rss_peak"] - base
    assert growth <= allow + SLACK, f"RSS grew {growth / MiB:.1f} MiB, limits {allow / MiB:.1f}"
    assert res["published"] == n
    fast = res["fast"]
    assert not fast["closed"], fast["closed"]
    if qos:
        assert res["acked"] == n, f"{res['acked']} of {n} acknowledged"
        assert fast["delivered"] == n, f"the fast subscriber lost {n - fast['delivered']}"
        assert fast["reordered_or_dup"] == 0 and fast["gaps"] == 0, fast
        cap = queue_msgs(lim, size) + lim["max_inflight"]
        assert res["slow"]["delivered_max"] <= cap, res["slow"]
        assert stored(res["sys_stalled"]) <= 50 * cap
    else:
        assert fast["delivered"] > 0
        assert res["dropped"].get("buffer_full", 0) > 0, res["dropped"]
    dropped_consistent(res)


@pytest.mark.timeout(60)
def test_big_messages_to_stalled_subscribers_stay_flat() -> None:
    size = 65536 + len("flow/c/0")
    with mqttd() as (_b, ctx, base):
        res = flow.fanout(
            ctx, "c", qos=1, n_slow=4, n_fast=0, n_pubs=4, duration=5.0, payload=65536
        )
    allow = flow.limits_allowance((4, 1, size), limits())
    assert res["status"] == "ok", res["status"]
    assert res["acked"] == res["published"] > 0
    growth = res["rss_peak"] - base
    assert growth <= allow + SLACK, f"RSS grew {growth / MiB:.1f} MiB, limits {allow / MiB:.1f}"
    t0, t1 = res["load_t"]
    series = res["rss_series"]
    late = rss_at(series, t1) - rss_at(series, t0 + 0.4 * (t1 - t0))
    assert late < 10 * MiB, f"RSS grew {late / MiB:.1f} MiB from 40 % of the run to its end"
    dropped_consistent(res)


@pytest.mark.timeout(60)
def test_window_of_20_delivers_everything_once_in_order() -> None:
    n = 20_000
    with mqttd("--max-inflight", "20") as (_b, ctx, _base):
        res = flow.fanout(ctx, "d", qos=1, n_slow=0, n_fast=1, messages=n)
    assert res["status"] == "ok", res["status"]
    assert res["acked"] == n
    fast = res["fast"]
    assert fast["delivered"] == n, f"delivered {fast['delivered']} of {n}"
    assert fast["reordered_or_dup"] == 0 and fast["gaps"] == 0 and fast["next_seq"] == [n], fast
    assert res["dropped"].get("total") == 0, res["dropped"]


@pytest.mark.timeout(60)
def test_offline_session_is_bounded_and_gets_a_window_at_once() -> None:
    args = ("--max-queued-messages", "200", "--max-inflight", "20")
    lim = limits(*args)
    cap = lim["max_queued_messages"] + lim["max_inflight"]
    with mqttd(*args) as (_b, ctx, _base):
        res = flow.offline_run(ctx, 100, 1000)
    assert res["status"] == "ok", res["status"]
    assert stored(res["sys_offline"]) <= cap
    assert res["session_present"]
    assert res["resend_marked"], "no PINGRESP on return"
    assert 1 <= res["resend_burst_msgs"] <= lim["max_inflight"], res["resend_burst_msgs"]
    assert res["held_drain_complete"], res.get("held_closed") or "no marker"
    assert lim["max_queued_messages"] <= res["held"] <= cap, res["held"]
    assert res["held_reordered_or_dup"] == 0
    dropped_consistent(res)


def burst_check(ctx: Any) -> dict[str, Any]:
    """The burst and its probes on the broker of ``ctx``; asserts the bound. Run against a
    broker whose ``mqttd.connection.TURN_BUDGET`` is 1e9 (no budget), it fails: the first
    new client waits about 3.3 s on a 2-core machine."""
    res = flow.burst_run(ctx, 6_000)
    assert res["status"] == "ok", res["status"]
    assert res["delivered"] == 200, res["delivered"]
    assert res["probe_max_s"] <= 2.0, (
        f"a new client waited {res['probe_max_s']:.2f} s for CONNACK + PINGRESP "
        f"(first {res['probe_s']:.2f} s, {res['probes']} clients)"
    )
    # The first probe must have been answered while the burst was still being delivered, or
    # it proves nothing.
    first_end = res["probe_ends_s"][0]
    assert res["deliveries_s"] is not None and first_end < res["deliveries_s"], res
    return res


@pytest.mark.timeout(60)
def test_a_burst_of_expensive_publishes_does_not_hold_new_clients() -> None:
    with mqttd() as (_b, ctx, _base):
        burst_check(ctx)
