"""RELIABILITY.md, "crashes": `PRAGMA quick_check` on every open; a corrupt file is a typed `SpoolError`, never
silently replaced.

The corruption is one the spool's own reads at open do not trip over (an index page of `outbox_by_priority`
overwritten), so only the integrity check can refuse the file; the same file uncorrupted opens with every message.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from device_agent.uplink.spool import Spool, SpoolError

N = 3000


def filled_spool(path: Path) -> None:
    s = Spool(path)
    for k in range(N):
        s.put(f"id{k}", "battwin/t/telemetry", f"payload-{k:06d}-".encode() * 4, float(k))
    s.close()


def index_root_page(path: Path) -> tuple[int, int]:
    db = sqlite3.connect(path)
    try:
        (root,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'outbox_by_priority'").fetchone()
        (page_size,) = db.execute("PRAGMA page_size").fetchone()
    finally:
        db.close()
    return int(root), int(page_size)


def corrupt_index(path: Path) -> None:
    """Overwrite the body of the index's root (an interior b-tree page) with 0xff, header byte kept."""
    root, page_size = index_root_page(path)
    data = bytearray(path.read_bytes())
    start = (root - 1) * page_size
    assert data[start] == 2, "the index root is an interior index page"  # so the file is big enough to matter
    data[start + 8 : start + page_size] = b"\xff" * (page_size - 8)
    path.write_bytes(bytes(data))


def test_a_corrupt_spool_is_refused_on_open_with_a_typed_error_and_left_as_it_is(tmp_path: Path) -> None:
    good = tmp_path / "good.db"
    filled_spool(good)
    bad = tmp_path / "bad.db"
    shutil.copy(good, bad)
    corrupt_index(bad)
    before = bad.read_bytes()

    # what the spool reads at open, without the check, does not notice: only quick_check can refuse this file
    db = sqlite3.connect(bad)
    assert db.execute("SELECT COALESCE(SUM(LENGTH(payload)), 0), COUNT(*) FROM outbox").fetchone()[1] == N
    assert db.execute("PRAGMA quick_check").fetchone()[0] != "ok"
    db.close()

    with pytest.raises(SpoolError, match=r"(?s)bad\.db: integrity check failed: .*page"):
        Spool(bad)
    assert bad.read_bytes() == before  # never silently replaced or repaired
    with pytest.raises(SpoolError, match="integrity check failed"):  # and on every open, not just the first
        Spool(bad)

    # positive control: the same file before the corruption opens, with every message in order
    s = Spool(good)
    try:
        assert s.pending == N
        assert [m.id for m in s.peek(5)] == ["id0", "id1", "id2", "id3", "id4"]
    finally:
        s.close()


def test_a_spool_reopened_after_a_clean_close_passes_its_check(tmp_path: Path) -> None:
    """The check runs on a reopened file and passes it: reopening many times keeps every message."""
    path = tmp_path / "s.db"
    filled_spool(path)
    for _ in range(3):
        s = Spool(path)
        assert s.pending == N
        s.close()
