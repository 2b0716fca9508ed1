"""Where an idle connection's memory goes (issue 16, item 1): a census, not a benchmark.

Runs a node in this process, has ``mqttd-bench idle`` open N connections to it (CONNECT, then
held), and while they are held compares with before:

- RSS per connection (what the operator pays: Python objects, allocator slack, uvloop/libuv
  handles, kernel socket buffers are not in RSS);
- the Python heap per connection by allocation site (``tracemalloc``, the lines that allocated
  what is still alive);
- objects per connection by type (``gc`` census with ``sys.getsizeof``; untracked objects such
  as bytes and the compiled classes without GC support are counted by tracemalloc only).

    python benchmarks/memory.py [--connections 5000] [--top 15]

tracemalloc slows the node down; the connections' rate here says nothing about speed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import os
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mqttd.bench.runner import proc_rss_kb  # noqa: E402
from mqttd.broker import BrokerConfig  # noqa: E402
from mqttd.node import Node  # noqa: E402


def rss_kib() -> int:
    return proc_rss_kb(os.getpid()) or 0


def census() -> collections.Counter[str]:
    sizes: collections.Counter[str] = collections.Counter()
    counts: collections.Counter[str] = collections.Counter()
    for obj in gc.get_objects():
        name = type(obj).__qualname__
        counts[name] += 1
        sizes[name] += sys.getsizeof(obj)
    return collections.Counter({k: (counts[k], sizes[k]) for k in counts})  # type: ignore[misc]


async def main_async(args: argparse.Namespace) -> None:
    node = Node(BrokerConfig(port=0, sys_interval=0))
    await node.start()
    port = node.addresses[0][1]
    gc.collect()
    if not args.rss_only:
        tracemalloc.start(args.frames)
        snap0 = tracemalloc.take_snapshot()
        objs0 = census()
    rss0 = rss_kib()
    n = args.connections
    gen = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mqttd.bench", "idle", "--port", str(port), "--connections",
        str(n), "--warmup", "0", "--duration", str(args.hold), "--json",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while node.broker.clients < n and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    held = node.broker.clients
    await asyncio.sleep(0.5)
    gc.collect()
    rss1 = rss_kib()
    if not args.rss_only:
        snap1 = tracemalloc.take_snapshot()
        objs1 = census()
    await gen.wait()
    await node.shutdown()

    print(f"{held:,} idle connections held (MQTT 3.1.1 CONNECT, keepalive 60)")
    print(
        f"RSS:          {(rss1 - rss0) * 1024 / held:8,.0f} bytes per connection"
        + ("" if args.rss_only else " (tracemalloc's own bookkeeping included)")
    )
    if args.rss_only:
        return
    stats = snap1.compare_to(snap0, "traceback" if args.tracebacks else "lineno")
    heap = sum(s.size_diff for s in stats)
    print(f"Python heap:  {heap / held:8,.0f} bytes per connection (tracemalloc)")
    print(f"\nallocation sites, bytes per connection (top {args.top}):")
    for s in sorted(stats, key=lambda s: -s.size_diff)[: args.top]:
        frame = s.traceback[-1]  # (a Traceback runs from the oldest frame to the newest)
        where = f"{Path(frame.filename).name}:{frame.lineno}"
        print(f"  {s.size_diff / held:8,.0f}  {s.count_diff / held:5.1f} blocks  {where}")
        if args.tracebacks:
            for fr in list(s.traceback)[-2:-5:-1]:
                print(f"{'':30}<- {Path(fr.filename).name}:{fr.lineno}")
    print(f"\nobjects per connection by type (gc-tracked; getsizeof, top {args.top}):")
    diff = []
    for name, (count, size) in objs1.items():
        c0, s0 = objs0.get(name, (0, 0))
        if count - c0 > 0:
            diff.append((size - s0, count - c0, name))
    for size, count, name in sorted(diff, reverse=True)[: args.top]:
        print(f"  {size / held:8,.0f} bytes  {count / held:5.2f} objects  {name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connections", type=int, default=5000)
    ap.add_argument("--hold", type=float, default=8.0, help="seconds the generator holds them")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--frames", type=int, default=8, help="tracemalloc frames kept")
    ap.add_argument("--tracebacks", action="store_true", help="group by call stack, not line")
    ap.add_argument("--rss-only", action="store_true", help="no tracemalloc: RSS as users see it")
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.run(main_async(args))
    except ImportError:
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
