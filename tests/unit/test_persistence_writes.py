"""mqttd.persistence's writes: a failed write (disk full, I/O error) is retried whole at the next
turn, deletions included, and is logged once; the file then holds exactly the broker's state."""

from __future__ import annotations

import asyncio
import sqlite3

from mqttd.broker import Broker, BrokerConfig
from mqttd.persistence import Persistence


def rows(path: str) -> tuple[set[str], set[str]]:
    db = sqlite3.connect(path)
    try:
        sessions = {r[0] for r in db.execute("SELECT client_id FROM sessions")}
        retained = {r[0] for r in db.execute("SELECT topic FROM retained")}
        return sessions, retained
    finally:
        db.close()


def test_a_failed_write_is_made_whole_at_the_next(tmp_path, caplog) -> None:
    path = str(tmp_path / "p.db")

    async def main() -> None:
        broker = Broker(BrokerConfig())
        broker.attach(asyncio.get_running_loop())
        p = Persistence(broker, path, interval=3600)
        await p.start()
        keep, gone = broker.new_session("keep", 5), broker.new_session("gone", 5)
        keep.expiry_interval = gone.expiry_interval = 600
        broker.publish(broker.make_message("r/1", b"x", 0, True, None))
        await p.flush()
        # now a write fails: the session that ended and the retained message cleared meanwhile
        broker.end_session(gone)
        broker.publish(broker.make_message("r/1", b"", 0, True, None))
        broker.publish(broker.make_message("r/2", b"y", 0, True, None))
        real = p.store.write

        def broken(changes: object) -> None:
            raise sqlite3.OperationalError("disk I/O error")

        p.store.write = broken  # type: ignore[method-assign]
        await p.flush()
        await p.flush()  # failing still: logged once
        assert p.stats["write_errors"] == 2
        p.store.write = real  # type: ignore[method-assign]
        await p.flush()
        await p.close()

    asyncio.run(main())
    assert rows(path) == ({"keep"}, {"r/2"})
    failures = [r for r in caplog.records if "write failed" in r.getMessage()]
    assert len(failures) == 1
