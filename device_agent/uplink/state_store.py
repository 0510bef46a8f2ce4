"""The agent's own durable state: the capacity history and counters its health estimate depends on.

Kept in the spool's SQLite file (a second connection; WAL lets both work), so messages and the state
they were computed from survive a restart together. Capacity points are appended one row per complete
discharge — never rewritten — so saving after each cycle costs the same in year five as on day one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

from device_agent.health.fade_law import CapacityPoint

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS capacity (
    source_id     TEXT NOT NULL,
    cycle         REAL NOT NULL,
    capacity_ah   REAL NOT NULL,
    elapsed_h     REAL,
    temperature_c REAL
);
CREATE INDEX IF NOT EXISTS capacity_by_source ON capacity (source_id);
CREATE TABLE IF NOT EXISTS agent_state (
    source_id TEXT PRIMARY KEY,
    value     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS agent_facts (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


class StateStore:
    def __init__(self, path: Path | str) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        if str(path) != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)

    def append_point(self, source_id: str, p: CapacityPoint) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO capacity (source_id, cycle, capacity_ah, elapsed_h, temperature_c) VALUES (?,?,?,?,?)",
                (source_id, p.cycle, p.capacity_ah, p.elapsed_h, p.temperature_c),
            )

    def points(self, source_id: str, limit: int) -> list[CapacityPoint]:
        with self._lock:
            rows = self._db.execute(
                "SELECT cycle, capacity_ah, elapsed_h, temperature_c FROM "
                "(SELECT rowid AS n, * FROM capacity WHERE source_id = ? ORDER BY rowid DESC LIMIT ?) ORDER BY n",
                (source_id, limit),
            ).fetchall()
        return [CapacityPoint(float(c), float(q), h, t) for c, q, h, t in rows]

    def save(self, source_id: str, value: dict[str, Any]) -> None:
        data = json.dumps(value, allow_nan=False, separators=(",", ":"))
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO agent_state (source_id, value) VALUES (?, ?)", (source_id, data))

    def load(self, source_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM agent_state WHERE source_id = ?", (source_id,)).fetchone()
        if row is None:
            return None
        try:
            value = json.loads(row[0])
        except ValueError:
            log.warning("saved agent state unreadable; starting afresh", extra={"source_id": source_id})
            return None
        return value if isinstance(value, dict) else None

    def put_fact(self, key: str, value: dict[str, Any]) -> None:
        """Keep one JSON object under ``key`` (device-wide, not per source; e.g. the last good health model)."""
        data = json.dumps(value, allow_nan=False, separators=(",", ":"))
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO agent_facts (key, value) VALUES (?, ?)", (key, data))

    def get_fact(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM agent_facts WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            value = json.loads(row[0])
        except ValueError:
            log.warning("saved agent fact unreadable; ignored", extra={"key": key})
            return None
        return value if isinstance(value, dict) else None

    def close(self) -> None:
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._db.close()
