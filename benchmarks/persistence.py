"""What ``--persistence-file`` costs, and why SQLite (docs/operations.md, "Persistence").

Two parts, both in this process (no network, so the figures are the persistence's own):

1. The event loop's share, each ``persistence_interval``: looking at every persistent session
   (its fingerprint) when nothing changed, and writing out (dump + JSON) the ones that changed.
2. The store's share, in its worker thread: one transaction of those sessions and of retained
   messages, in SQLite (WAL, synchronous=NORMAL, as mqttd opens it) and, when the ``lmdb``
   package is installed, in LMDB with and without a sync per commit, for the comparison the
   choice rests on.

    python benchmarks/persistence.py [--sessions 1000] [--queued 100] [--retained 10000]

The end-to-end cost on the PUBLISH path is the suite with persistence on and off:

    python benchmarks/suite.py --no-redis --only fanin_q0,fanin_q1,fanout_q0 \\
        --mqttd-args '--persistence-file {tmp}/p.db'
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mqttd.broker import Broker, BrokerConfig  # noqa: E402
from mqttd.persistence import Persistence  # noqa: E402


def median_ms(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


async def build(sessions: int, queued: int, retained: int) -> Broker:
    broker = Broker(BrokerConfig(max_queued_messages=queued * 2))
    broker.attach(asyncio.get_running_loop())
    for i in range(sessions):
        s = broker.new_session(f"client-{i}", 4)
        s.expiry_interval = 3600
        s.offline_since = time.time()
        broker.subscribe(s, f"t/{i}/#", 1)
    payload = b"x" * 64
    for i in range(sessions):
        for _ in range(queued):
            broker.publish(broker.make_message(f"t/{i}/a", payload, 1, False, None))
    for i in range(retained):
        broker.publish(broker.make_message(f"r/{i}", payload, 0, True, None))
    return broker


async def main_async(args: argparse.Namespace) -> None:
    broker = await build(args.sessions, args.queued, args.retained)
    tmp = tempfile.mkdtemp(prefix="mqttd-persist-bench-")
    p = Persistence(broker, os.path.join(tmp, "p.db"))
    p.store.open()
    broker.storage.journal = {}  # type: ignore[attr-defined]
    for msg in broker.storage.index.match("#"):  # type: ignore[attr-defined]
        broker.storage.journal[msg.topic] = msg  # type: ignore[attr-defined]

    n = args.sessions
    t = time.perf_counter()
    changes = p._collect()  # every session changed (first write), every retained message
    first_ms = (time.perf_counter() - t) * 1000
    sizes = [len(v) for v in changes[1].values() if v]
    idle_ms = median_ms(p._collect)  # nothing changed: fingerprints only
    payload = b"y" * 64

    def one_more_each() -> None:
        for i in range(n):
            broker.publish(broker.make_message(f"t/{i}/b", payload, 1, False, None))

    one_more_each()
    t = time.perf_counter()
    p._collect()
    changed_ms = (time.perf_counter() - t) * 1000
    print(
        f"{n:,} persistent sessions x {args.queued} queued 64-byte QoS 1 messages, "
        f"{args.retained:,} retained messages"
    )
    print(
        f"  loop, nothing changed:      {idle_ms:8.2f} ms per interval "
        f"({idle_ms * 1000 / n:.2f} us per session)"
    )
    print(
        f"  loop, first write:          {first_ms:8.2f} ms "
        f"(every session, {statistics.median(sizes):,.0f} bytes each, and every retained one)"
    )
    print(
        f"  loop, every session changed:{changed_ms:8.2f} ms "
        f"({changed_ms * 1000 / n:.1f} us per session: one more message each)"
    )

    sessions_only = ({}, changes[1])
    total = sum(sizes) + sum(len(v) for v in changes[0].values() if v)
    sq = median_ms(lambda: p.store.write(changes), 3)
    sq_s = median_ms(lambda: p.store.write(sessions_only), 3)
    print(f"  SQLite WAL write, all:      {sq:8.1f} ms ({total / 1e6 / (sq / 1000):.0f} MB/s)")
    print(f"  SQLite WAL write, sessions: {sq_s:8.1f} ms")
    one = {next(iter(changes[1])): changes[1][next(iter(changes[1]))]}
    sq_1 = median_ms(lambda: p.store.write(({}, one)), 20)
    print(f"  SQLite WAL write, 1 session:{sq_1:8.2f} ms (the usual interval: few changed)")
    p.store.close()
    try:
        import lmdb
    except ImportError:
        print("  (pip install lmdb for the LMDB comparison)")
        return
    for sync in (True, False):
        env = lmdb.open(
            os.path.join(tmp, f"lmdb-{sync}"), map_size=1 << 32, max_dbs=4, sync=sync, metasync=sync
        )
        rdb = env.open_db(b"retained")
        sdb = env.open_db(b"sessions")

        def write(ch=changes, env=env, rdb=rdb, sdb=sdb) -> None:
            with env.begin(write=True) as txn:
                for k, v in ch[0].items():
                    if v is None:
                        txn.delete(k.encode(), db=rdb)
                    else:
                        txn.put(k.encode(), v, db=rdb)
                for k, v in ch[1].items():
                    if v is None:
                        txn.delete(k.encode(), db=sdb)
                    else:
                        txn.put(k.encode(), v, db=sdb)

        lm = median_ms(write, 3)
        lm_1 = median_ms(lambda w=write: w(({}, one)), 20)
        print(f"  LMDB sync={sync!s:5} write, all: {lm:8.1f} ms; 1 session: {lm_1:.2f} ms")
        env.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--queued", type=int, default=100)
    ap.add_argument("--retained", type=int, default=10000)
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
