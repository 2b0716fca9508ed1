"""Retained messages and persistent sessions that outlive the process (``--persistence-file``).

What is kept: every retained message (not ``$SYS``), and every session that outlives its
connection (MQTT 5 Session Expiry Interval > 0, 3.1.1 CleanSession 0): its subscriptions, its
queued and in-flight QoS 1/2 messages, its QoS 2 receive state, its will with delay, its expiry
(mqttd.sessionstate says how a session is written). QoS 0 messages are never written.

How: the store is SQLite in WAL mode, from the standard library. Every ``persistence_interval``
seconds (1 by default) what changed since the last write goes to it in one transaction, in a
worker thread (the event loop only takes the snapshot): a retained topic set or cleared, a session
whose figures moved (mqttd.sessionstate.fingerprint). So a crash at any moment, ``kill -9``
included, leaves the store as it was after the last complete write: consistent, and at most one
interval behind. A stop by SIGTERM/SIGINT writes everything before it exits, so a restart loses
nothing. Why SQLite and not LMDB: it needs no package, it is as fast as this needs (the figures
are in docs/operations.md), and its file is readable with the ``sqlite3`` command.

The file is made with mode 0600 (it holds message payloads). One that is not a readable mqttd
store (not SQLite, damaged, another format) is renamed ``PATH.corrupt-TIME`` and reported in the
log and metrics, and the node starts empty rather than not at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import stat
import time
from typing import TYPE_CHECKING, Any

from mqttd import sessionstate

if TYPE_CHECKING:
    from mqttd.broker import Broker

log = logging.getLogger("mqttd.persistence")

#: what the meta table says of a file this version reads and writes
FORMAT = "mqttd-persistence 1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS retained (topic TEXT PRIMARY KEY, message BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (client_id TEXT PRIMARY KEY, state BLOB NOT NULL);
"""

#: what a write carries: topic -> packed message (None: cleared), client id -> state (None: gone)
Changes = tuple[dict[str, bytes | None], dict[str, bytes | None]]


class CorruptStore(Exception):
    """The file is not a store this version can read."""


class FileStore:
    """The SQLite file. Its methods block: :class:`Persistence` calls them in a worker thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.db: sqlite3.Connection | None = None
        #: where an unreadable file was moved at open, if one was
        self.set_aside: str | None = None

    def open(self) -> tuple[list[tuple[str, bytes]], list[bytes]]:
        """Open (or make) the store; its retained messages and sessions."""
        try:
            return self._open()
        except sqlite3.OperationalError as exc:
            # Not the file's fault: locked by another node, a directory missing, no permission
            self.close()
            raise OSError(f"persistence file {self.path}: {exc}") from exc
        except (sqlite3.DatabaseError, CorruptStore) as exc:
            self.close()
            aside = f"{self.path}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}"
            os.replace(self.path, aside)
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(self.path + suffix, aside + suffix)
            self.set_aside = aside
            log.error(
                "persistence file %s is not readable (%s): moved to %s, starting empty",
                self.path,
                exc,
                aside,
            )
            return self._open()

    def _open(self) -> tuple[list[tuple[str, bytes]], list[bytes]]:
        # Made 0600 before SQLite opens it (its -wal and -shm files take the same mode)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise OSError(f"persistence file {self.path}: {exc.strerror or exc}") from exc
        try:
            mode = os.fstat(fd).st_mode
        finally:
            os.close(fd)
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning(
                "persistence file %s can be read by other users (mode %o): it holds message "
                "payloads; chmod 600 it",
                self.path,
                stat.S_IMODE(mode),
            )
        db = self.db = sqlite3.connect(
            self.path, timeout=0.5, isolation_level=None, check_same_thread=False
        )
        # This node's alone: a second node given the same file stops at start ("database is
        # locked") rather than both writing over each other's sessions
        db.execute("PRAGMA locking_mode=EXCLUSIVE")
        # WAL: a write is one append, and a crash leaves the last committed transaction; NORMAL
        # sync is durable across a process crash (a power cut may lose the last write)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        check = db.execute("PRAGMA quick_check").fetchone()
        if check is None or check[0] != "ok":
            raise CorruptStore(f"quick_check says {check[0] if check else 'nothing'}")
        db.executescript(_SCHEMA)
        row = db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
        if row is None:
            db.execute("INSERT INTO meta VALUES ('format', ?)", (FORMAT,))
        elif row[0] != FORMAT:
            raise CorruptStore(f"it is {row[0]!r}, this mqttd reads {FORMAT!r}")
        retained = db.execute("SELECT topic, message FROM retained").fetchall()
        sessions = [r[0] for r in db.execute("SELECT state FROM sessions")]
        return retained, sessions

    def write(self, changes: Changes) -> None:
        """One transaction: every change or none."""
        retained, sessions = changes
        db = self.db
        assert db is not None
        db.execute("BEGIN IMMEDIATE")
        try:
            for topic, message in retained.items():
                if message is None:
                    db.execute("DELETE FROM retained WHERE topic = ?", (topic,))
                else:
                    db.execute("INSERT OR REPLACE INTO retained VALUES (?, ?)", (topic, message))
            for client_id, state in sessions.items():
                if state is None:
                    db.execute("DELETE FROM sessions WHERE client_id = ?", (client_id,))
                else:
                    db.execute("INSERT OR REPLACE INTO sessions VALUES (?, ?)", (client_id, state))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        if self.db is not None:
            db, self.db = self.db, None
            db.close()


class Persistence:
    """Keeps the broker's retained messages and persistent sessions in a :class:`FileStore`."""

    def __init__(self, broker: Broker, path: str, interval: float = 1.0) -> None:
        self.broker = broker
        self.store = FileStore(path)
        self.interval = interval
        self.changed = sessionstate.ChangedSessions(broker)
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.stats = {
            "writes": 0,
            "write_errors": 0,
            "sessions_written": 0,
            "retained_written": 0,
            "bytes_written": 0,
            "unreadable_entries": 0,
            "stores_set_aside": 0,
        }
        #: seconds the last write took (in its thread)
        self.last_write_seconds = 0.0
        self._failing = False
        #: sessions whose deletion a failed write did not make: deleted at the next one
        self._gone_unwritten: set[str] = set()

    async def start(self) -> tuple[int, int]:
        """Open the store and bring back what it holds; (retained, sessions) restored."""
        retained, sessions = await asyncio.to_thread(self.store.open)
        if self.store.set_aside:
            self.stats["stores_set_aside"] += 1
        broker = self.broker
        storage: Any = broker.storage
        storage.journal = None  # what is read back is not written again
        n_retained = n_sessions = 0
        for topic, packed in retained:
            try:
                msg = sessionstate.decode_message(packed)
            except ValueError as exc:
                self._unreadable("retained message", topic, exc)
                continue
            if msg.expires_at and msg.expires_at <= time.monotonic():
                continue  # expired while the node was down [MQTT-3.3.2-5]
            msg.retain = True
            storage.retain(msg)
            n_retained += 1
        for data in sessions:
            try:
                state = sessionstate.decode(data)
                session = broker.revive(state)
            except (ValueError, KeyError, TypeError) as exc:
                self._unreadable("session", "?", exc)
                continue
            if session is not None:
                self.changed.saved[session.client_id] = sessionstate.fingerprint(session)
                n_sessions += 1
        storage.journal = {}
        self._task = asyncio.get_running_loop().create_task(self._run())
        return n_retained, n_sessions

    def _unreadable(self, what: str, key: str, exc: Exception) -> None:
        self.stats["unreadable_entries"] += 1
        log.error(
            "persistence file %s: %s %s unreadable, skipped: %s", self.store.path, what, key, exc
        )

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()

    def _collect(self) -> Changes:
        """What changed since the last write (taken on the loop: a consistent snapshot)."""
        storage: Any = self.broker.storage
        journal, storage.journal = storage.journal, {}
        retained: dict[str, bytes | None] = {
            topic: None if msg is None else sessionstate.encode_message(msg)
            for topic, msg in journal.items()
        }
        sessions = self.changed.collect()
        for client_id in self._gone_unwritten:
            if client_id not in sessions and client_id not in self.broker.sessions:
                sessions[client_id] = None
        self._gone_unwritten = set()
        return retained, sessions

    async def flush(self) -> None:
        """Write what changed now (one transaction)."""
        async with self._lock:
            if self.store.db is None:
                return
            changes = self._collect()
            retained, sessions = changes
            if not retained and not sessions:
                return
            started = time.perf_counter()
            try:
                await asyncio.to_thread(self.store.write, changes)
            except (sqlite3.Error, OSError) as exc:
                self.stats["write_errors"] += 1
                if not self._failing:
                    log.error("persistence file %s: write failed: %s", self.store.path, exc)
                self._failing = True
                # Written again, whole, at the next turn (the deletions too: forgetting what
                # was written forgets which rows are to go)
                self.changed.forget()
                self._gone_unwritten |= {c for c, state in sessions.items() if state is None}
                storage: Any = self.broker.storage
                storage.journal = {**self._journal_back(retained), **storage.journal}
                return
            if self._failing:
                log.warning("persistence file %s: writing again", self.store.path)
                self._failing = False
            self.last_write_seconds = time.perf_counter() - started
            stats = self.stats
            stats["writes"] += 1
            stats["sessions_written"] += len(sessions)
            stats["retained_written"] += len(retained)
            stats["bytes_written"] += sum(len(v) for v in retained.values() if v) + sum(
                len(v) for v in sessions.values() if v
            )

    def _journal_back(self, retained: dict[str, bytes | None]) -> dict[str, Any]:
        """The retained changes of a failed write, as journal entries again."""
        index: Any = getattr(self.broker.storage, "index", None)
        return {t: (index.get(t) if index is not None else None) for t in retained}

    async def close(self) -> None:
        """Write what is left and close the file (the node is stopping)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()
        await asyncio.to_thread(self.store.close)

    def figures(self) -> dict[str, Any]:
        return {
            **self.stats,
            "last_write_seconds": self.last_write_seconds,
            "sessions": len(self.changed.saved),
        }


__all__ = ["FileStore", "Persistence"]
