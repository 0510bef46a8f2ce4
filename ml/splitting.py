"""Splits by whole cells (train / validation / test, per dataset, seeded) and the data fingerprint."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass

from ml.data import Cell, scorability


@dataclass(frozen=True)
class Split:
    train: dict[str, list[str]]
    val: dict[str, list[str]]
    test: dict[str, list[str]]

    def role(self, dataset: str, cell: str) -> str:
        for name, part in (("train", self.train), ("val", self.val), ("test", self.test)):
            if cell in part.get(dataset, []):
                return name
        return "unused"


def _systematic_pick(names: Sequence[str], frac: float, rng: random.Random) -> list[str]:
    """One random name from each consecutive block of round(1/frac) names (sorted): a stratified pick."""
    if frac <= 0 or len(names) < 2:
        return []
    block = max(1, round(1.0 / frac))
    picked = []
    for s in range(0, len(names), block):
        chunk = list(names[s : s + block])
        picked.append(rng.choice(chunk))
    return picked


def split_cells(
    cells: Sequence[Cell],
    test_frac: float,
    val_frac: float,
    seed: int,
    *,
    test_frac_by_dataset: dict[str, float] | None = None,
) -> Split:
    """Split by whole cells, per dataset: sorted by name, one test cell from each block of 1/test_frac
    scorable cells (seeded; see :func:`scorability` — unscorable cells only ever train), then validation
    cells the same way from the remaining scorable cells. A cell is in exactly one part; every dataset
    keeps at least one training cell. ``test_frac_by_dataset`` overrides ``test_frac`` for the datasets
    it names."""
    fracs = dict(test_frac_by_dataset or {})
    if not all(0.0 <= f < 1.0 for f in [test_frac, val_frac, *fracs.values()]):
        raise ValueError("test_frac, val_frac and test_frac_by_dataset values must be in [0, 1)")
    by_ds: dict[str, list[str]] = {}
    unscorable: set[tuple[str, str]] = set()
    for c in cells:
        by_ds.setdefault(c.dataset, []).append(c.cell)
        if not scorability(c).ok:
            unscorable.add((c.dataset, c.cell))
    train: dict[str, list[str]] = {}
    val: dict[str, list[str]] = {}
    test: dict[str, list[str]] = {}
    for ds in sorted(by_ds):
        names = sorted(set(by_ds[ds]))
        rng = random.Random(f"{seed}:{ds}")
        te = _systematic_pick([n for n in names if (ds, n) not in unscorable], fracs.get(ds, test_frac), rng)
        rest = [n for n in names if n not in te]
        scorable_rest = [n for n in rest if (ds, n) not in unscorable]
        va = _systematic_pick(scorable_rest, val_frac, rng) if len(rest) > 2 else []
        tr = [n for n in rest if n not in va]
        if not tr:
            tr, te = te[:1], te[1:]
        train[ds], val[ds], test[ds] = tr, va, te
    return Split(train=train, val=val, test=test)


def fingerprint(cells: Sequence[Cell], split: Split) -> str:
    """sha256 over the files' contents (their sha256) and the cell lists: independent of paths and git."""
    files = sorted((c.dataset, c.cell, c.sha256) for c in cells)
    payload = {"files": files, "train": split.train, "val": split.val, "test": split.test}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
