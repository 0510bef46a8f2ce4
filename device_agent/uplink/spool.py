"""Durable store-and-forward spool (SQLite, WAL).

Every outgoing message is written here *before* it is sent and deleted only after the broker
acknowledged it (PUBACK), so a crash, a reboot or a long outage loses nothing that was accepted.
Messages leave in the order they were accepted (``seq``). The spool is bounded by ``max_bytes`` of
payload: when full, ``drop_oldest`` deletes the oldest messages to make room (telemetry keeps flowing),
``drop_newest`` refuses the new one; either way the drop is counted (persistently) and reported.

The same database keeps a small key/value table for the agent's own state (cycle counter, capacity
history), so that state survives restarts together with the messages that depend on it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    id      TEXT NOT NULL UNIQUE,
    topic   TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL,
    priority INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS outbox_by_priority ON outbox (priority, seq);
CREATE TABLE IF NOT EXISTS kv (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


INSERT_SQL = "INSERT OR IGNORE INTO outbox (id, topic, payload, created, priority) VALUES (?, ?, ?, ?, ?)"
RESERVE_BYTES = 512 * 1024
UNCAPPED_PAGES = 1_073_741_823  # SQLite's default max_page_count
LOW_PRIORITY_SUFFIX = "/telemetry"  # dropped first when the spool is full
WAL_LIMIT_BYTES = 1024 * 1024
WAL_AUTOCHECKPOINT_PAGES = 1000
CAPPED_AUTOCHECKPOINT_PAGES = 32
ACK_BATCH = 50  # acknowledgements deleted together (see Spool.ack)
ACK_DELAY_S = 0.05  # ... or once the oldest has waited this long


def _disk_full(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "full" in text or "no space" in text


class SpoolError(RuntimeError):
    """The spool database cannot be opened or written (corrupt file, disk full beyond recovery)."""


@dataclass(frozen=True, slots=True)
class SpooledMessage:
    seq: int
    id: str
    topic: str
    payload: bytes
    created: float


@dataclass(frozen=True, slots=True)
class PutResult:
    accepted: int
    dropped: int  # messages dropped to make room (drop_oldest) or refused (drop_newest)


class Spool:
    def __init__(
        self,
        path: Path | str,
        max_bytes: int = 64 * 1024 * 1024,
        policy: Literal["drop_oldest", "drop_newest"] = "drop_oldest",
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.policy = policy
        self._lock = threading.Lock()
        self._ack_lock = threading.Lock()  # guards _acked only (never held while waiting for _lock)
        self._acked: list[int] = []  # acknowledged, not yet deleted (see ack)
        self._acked_since = 0.0  # monotonic time the oldest of them was queued
        try:
            if str(self.path) != ":memory:":
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
            # checkpoint often: a small WAL keeps the spool's disk footprint close to its contents
            self._db.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(outbox)")}
            if columns and "priority" not in columns:
                self._db.execute("ALTER TABLE outbox ADD COLUMN priority INTEGER NOT NULL DEFAULT 1")
            self._db.executescript(SCHEMA)
            row = self._db.execute("SELECT COALESCE(SUM(LENGTH(payload)), 0), COUNT(*) FROM outbox").fetchone()
            check = self._db.execute("PRAGMA quick_check").fetchone()
        except sqlite3.DatabaseError as exc:
            raise SpoolError(f"spool {self.path}: cannot open: {exc}") from exc
        if check[0] != "ok":
            raise SpoolError(f"spool {self.path}: integrity check failed: {check[0]}")
        self._bytes = int(row[0])
        self._count = int(row[1])
        # the publisher reads through a connection of its own: in WAL mode a reader does not wait for the
        # writer, so reading the next batch to send does not hold up the agent's puts (an in-memory database
        # exists only in its one connection, so it reads through that)
        self._read_lock = threading.Lock()
        self._reader = self._db
        if str(self.path) != ":memory:":
            try:
                self._reader = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
                self._reader.execute("PRAGMA query_only=ON")
            except sqlite3.DatabaseError as exc:
                raise SpoolError(f"spool {self.path}: cannot open for reading: {exc}") from exc
        self.dropped_total = int(self.get_state("spool.dropped_total", 0))
        self._closed = False
        self._puts = 0
        # a reserve file next to the spool: deleted when the disk is full, so that SQLite has the room it
        # needs to delete the oldest messages (a DELETE writes to the WAL too), re-made when space returns
        self._reserve = None if str(self.path) == ":memory:" else self.path.with_name(self.path.name + ".reserve")
        self._reserve_missing = True
        self._capped = False
        self._make_reserve()

    # -- messages ---------------------------------------------------------------------------------
    def put(self, msg_id: str, topic: str, payload: bytes, created: float) -> PutResult:
        return self.put_many([(msg_id, topic, payload, created)])

    def put_many(self, items: Sequence[tuple[str, str, bytes, float]]) -> PutResult:
        """Accept messages atomically (all or none). Returns how many were accepted and dropped."""
        if not items:
            return PutResult(0, 0)
        incoming = sum(len(p) for _, _, p, _ in items)
        with self._lock:
            dropped = 0
            if self._bytes + incoming > self.max_bytes:
                if self.policy == "drop_newest" or incoming > self.max_bytes:
                    self._count_drops(len(items))
                    return PutResult(0, len(items))
                try:
                    dropped = self._drop_oldest(self._bytes + incoming - self.max_bytes)
                except sqlite3.OperationalError as exc:
                    self._rollback()
                    if not _disk_full(exc):
                        raise SpoolError(f"spool {self.path}: write failed: {exc}") from exc
                    return self._put_on_full_disk(items, incoming)
            try:
                self._insert(items)
            except sqlite3.OperationalError as exc:
                self._rollback()
                if not _disk_full(exc):
                    raise SpoolError(f"spool {self.path}: write failed: {exc}") from exc
                result = self._put_on_full_disk(items, incoming)
                return PutResult(result.accepted, result.dropped + dropped)
            self._bytes += incoming
            self._count += len(items)
            self._puts += 1
            if (self._capped and self._puts % 10 == 0) or (self._reserve_missing and self._puts % 200 == 0):
                self._lift_cap_if_room()
            return PutResult(len(items), dropped)

    def _insert(self, items: Sequence[tuple[str, str, bytes, float]]) -> None:
        """Insert (lock held), in the same transaction deleting the acknowledged messages still queued."""
        rows = [(i, t, p, c, 0 if t.endswith(LOW_PRIORITY_SUFFIX) else 1) for i, t, p, c in items]
        with self._ack_lock:
            acked = list(self._acked)
        if len(rows) == 1 and not acked:  # one statement in autocommit mode is its own transaction
            self._db.execute(INSERT_SQL, rows[0])
            return
        self._db.execute("BEGIN IMMEDIATE")
        removed, freed = self._delete(acked) if acked else (0, 0)
        self._db.executemany(INSERT_SQL, rows)
        self._db.execute("COMMIT")
        self._acks_deleted(len(acked), removed, freed)

    def _put_on_full_disk(self, items: Sequence[tuple[str, str, bytes, float]], incoming: int) -> PutResult:
        """The filesystem is full. From here the spool lives inside the space it already has:

        1. release the reserve file, so SQLite has the room to move its WAL into the database file;
        2. cap the database at its current page count (``max_page_count``): it cannot grow any more,
           new messages reuse the pages old ones leave free, and every WAL frame fits a page the file has;
        3. apply the policy — drop the oldest (telemetry first) until the new message fits, or refuse it.

        The cap is lifted when the filesystem has room again (checked every few hundred puts).
        """
        if self._capped:
            self._lift_cap_if_room()
            if not self._capped:  # the disk has room again: plain insert
                try:
                    self._insert(items)
                except sqlite3.OperationalError:
                    self._rollback()
                else:
                    self._bytes += incoming
                    self._count += len(items)
                    return PutResult(len(items), 0)
        log.warning("spool disk full", extra={"path": str(self.path), "policy": self.policy})
        self._release_reserve()
        self._checkpoint()
        self._cap_growth()
        dropped = 0
        if self.policy == "drop_oldest":
            need = max(incoming * 2, 64 * 1024)
            for _attempt in range(4):
                try:
                    dropped += self._drop_oldest(need)
                except sqlite3.OperationalError:
                    self._rollback()
                self._checkpoint()
                try:
                    self._insert(items)
                except sqlite3.OperationalError:
                    self._rollback()
                    need *= 2
                    continue
                self._bytes += incoming
                self._count += len(items)
                return PutResult(len(items), dropped)
        self._count_drops(len(items))
        return PutResult(0, dropped + len(items))

    def _cap_growth(self) -> None:
        """Let the database grow into what is left of the disk, less room for the WAL, and no further."""
        with contextlib.suppress(sqlite3.Error, OSError):
            pages = int(self._db.execute("PRAGMA page_count").fetchone()[0])
            page_size = int(self._db.execute("PRAGMA page_size").fetchone()[0])
            st = os.statvfs(self.path.parent)
            # on a full disk the WAL is checkpointed often, so it needs little room
            self._db.execute(f"PRAGMA wal_autocheckpoint={CAPPED_AUTOCHECKPOINT_PAGES}")
            wal_budget = (CAPPED_AUTOCHECKPOINT_PAGES + 32) * (page_size + 24)
            spare = max(0, st.f_bavail * st.f_frsize - wal_budget) // page_size
            self._db.execute(f"PRAGMA max_page_count={max(pages + spare, 8)}")
            self._capped = True

    def _lift_cap_if_room(self) -> None:
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return
        if st.f_bavail * st.f_frsize >= 2 * RESERVE_BYTES + WAL_LIMIT_BYTES:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute(f"PRAGMA max_page_count={UNCAPPED_PAGES}")
                self._db.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
                self._capped = False
                log.info("spool disk has room again; growth cap lifted", extra={"path": str(self.path)})
            self._make_reserve()

    # -- disk-full reserve ------------------------------------------------------------------------
    def _make_reserve(self) -> None:
        if self._reserve is None:
            return
        try:
            with self._reserve.open("wb") as fh:
                fh.truncate(0)
                os.posix_fallocate(fh.fileno(), 0, RESERVE_BYTES)
        except OSError:
            self._reserve.unlink(missing_ok=True)
            self._reserve_missing = True
        else:
            self._reserve_missing = False

    def _release_reserve(self) -> None:
        if self._reserve is not None and not self._reserve_missing:
            self._reserve.unlink(missing_ok=True)
            self._reserve_missing = True

    def _checkpoint(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def peek(self, limit: int, after_seq: int = 0) -> list[SpooledMessage]:
        """The oldest messages (seq > after_seq), oldest first; acknowledged ones are never returned."""
        # the acknowledged set is read before the rows: a row in the snapshot read below whose delete commits
        # meanwhile was acknowledged before this point (acknowledgements leave the set only once deleted)
        with self._ack_lock:
            gone = set(self._acked) if self._acked else None
        lock = self._read_lock if self._reader is not self._db else self._lock
        with lock:
            rows = self._reader.execute(
                "SELECT seq, id, topic, payload, created FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [SpooledMessage(r[0], r[1], r[2], bytes(r[3]), r[4]) for r in rows if gone is None or r[0] not in gone]

    def ack(self, seqs: Iterable[int], *, wait: bool = False) -> None:
        """Delete acknowledged messages (their ``seq``).

        Acknowledgements are queued and deleted in batches: within the next put's own transaction (one
        commit instead of two), or here once ``ACK_BATCH`` are queued or the oldest has waited
        ``ACK_DELAY_S`` — and then only if no put holds the spool at this moment: under a steady stream of
        puts, waiting for the spool would hold the publisher up far longer than the delete takes.
        ``wait=True`` deletes everything queued before returning. A queued message is never returned by
        :meth:`peek`; after a crash before its delete it is sent again (at least once; its id identifies
        the duplicate).
        """
        new = list(seqs)
        now = time.monotonic()
        with self._ack_lock:
            if new and not self._acked:
                self._acked_since = now
            self._acked.extend(new)
            if not self._acked:
                return
            due = wait or len(self._acked) >= ACK_BATCH or now - self._acked_since >= ACK_DELAY_S
        if due and self._lock.acquire(blocking=wait):
            try:
                self._apply_acks()
            finally:
                self._lock.release()

    def _apply_acks(self) -> None:
        """Delete the queued acknowledgements (lock held). On a database error they stay queued for the next
        try. They leave the queue only once the delete is committed (peek relies on it)."""
        with self._ack_lock:
            seq_list = list(self._acked)
        if not seq_list or self._closed:
            return
        try:
            self._db.execute("BEGIN IMMEDIATE")
            removed, freed = self._delete(seq_list)
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            log.warning("spool: deleting acknowledged messages failed; will retry", extra={"error": str(exc)[:200]})
            return
        self._acks_deleted(len(seq_list), removed, freed)

    def _delete(self, seq_list: Sequence[int]) -> tuple[int, int]:
        """Delete messages by seq inside the open transaction: (how many were still there, their bytes)."""
        removed = 0
        freed = 0
        for start in range(0, len(seq_list), 500):
            chunk = seq_list[start : start + 500]
            marks = ",".join("?" * len(chunk))
            row = self._db.execute(
                f"SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox WHERE seq IN ({marks})",  # noqa: S608
                chunk,
            ).fetchone()
            self._db.execute(f"DELETE FROM outbox WHERE seq IN ({marks})", chunk)  # noqa: S608
            removed += int(row[0])
            freed += int(row[1])
        return removed, freed

    def _acks_deleted(self, n_queued: int, removed: int, freed: int) -> None:
        """The first ``n_queued`` queued acknowledgements were deleted (committed). ack() only appends, so
        they are still the first ones in the queue."""
        with self._ack_lock:
            del self._acked[:n_queued]
            self._acked_since = time.monotonic()
        self._bytes -= freed
        self._count -= removed

    @property
    def pending(self) -> int:
        return self._count

    @property
    def bytes_used(self) -> int:
        return self._bytes

    # -- agent state ------------------------------------------------------------------------------
    def get_state(self, key: str, default: Any = None) -> Any:
        with self._lock:
            row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_state(self, key: str, value: Any) -> None:
        data = json.dumps(value, allow_nan=False, separators=(",", ":"))
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, data))

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._apply_acks()
                self._closed = True
                with self._read_lock:
                    if self._reader is not self._db:
                        self._reader.close()
                self._db.close()
                if self._reserve is not None:
                    self._reserve.unlink(missing_ok=True)

    # -- internals (lock held) --------------------------------------------------------------------
    def _drop_oldest(self, need_bytes: int) -> int:
        """Delete the oldest messages until ``need_bytes`` are freed: telemetry first (the least valuable:
        cycles, health and alarms summarise it), then the rest."""
        freed = 0
        victims: list[int] = []
        for seq, size in self._db.execute("SELECT seq, LENGTH(payload) FROM outbox ORDER BY priority, seq"):
            freed += int(size)
            victims.append(int(seq))
            if freed >= need_bytes:
                break
        if not victims:
            return 0
        n = len(victims)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for start in range(0, n, 500):
                chunk = victims[start : start + 500]
                self._db.execute(f"DELETE FROM outbox WHERE seq IN ({','.join('?' * len(chunk))})", chunk)  # noqa: S608
            self._db.execute(
                "INSERT OR REPLACE INTO kv (key, value) VALUES ('spool.dropped_total', ?)",
                (str(self.dropped_total + n),),
            )
            self._db.execute("COMMIT")
        except sqlite3.Error:
            self._rollback()
            raise
        self.dropped_total += n
        self._count -= n
        self._bytes -= freed
        log.warning("spool full: dropped the oldest messages", extra={"dropped": n, "freed_bytes": freed})
        return n

    def _count_drops(self, n: int) -> None:
        self.dropped_total += n
        try:  # best effort on a full disk: the in-memory count is exact, the stored one catches up later
            self._db.execute(
                "INSERT OR REPLACE INTO kv (key, value) VALUES ('spool.dropped_total', ?)", (str(self.dropped_total),)
            )
        except sqlite3.OperationalError as exc:
            if not _disk_full(exc):
                raise

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("ROLLBACK")
