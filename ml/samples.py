"""Training samples: the device's own features at a prediction point, and the correction to learn.

For a cell and a prediction point (a valid row ``j`` that the offline cleaner labels ``ok``):

* inputs = ``device_agent.health.hybrid.prepare`` on the valid rows up to and including ``j`` — the very
  function the device runs, with identity normalisation (normalisation is fitted afterwards on the
  training cells only);
* targets, at each horizon ``h``: ``y(h) = log(C(t+h) / L)``, where ``C`` is the cleaned capacity of the
  same regime (``clean_cell``: ``ok`` rows of the same segment, linear in cycle between them) and ``L``
  the level the device computes; with them the prior ``b(h)`` the device computes (the model's output is
  scored on ``(1+u)·b + r`` against ``y``). Horizons past the end of the regime are masked (NaN).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from device_agent.health.hybrid import SEQ_FEATURES, prepare, static_feature_names
from device_agent.health.model_files import CleaningSpec, FeatureSpec
from ml.data import Cell
from ml.offline_cleaning import clean_cell

log = logging.getLogger(__name__)

C0_FIRST = 5


def identity_spec(
    window: int,
    horizons: Sequence[int],
    *,
    cycle_scale: float = 100.0,
    max_history: int = 1000,
    level_points: int = 3,
    cleaning: CleaningSpec | None = None,
) -> FeatureSpec:
    statics = static_feature_names(horizons)
    return FeatureSpec(
        window=window,
        horizons=list(horizons),
        seq_features=list(SEQ_FEATURES),
        static_features=statics,
        seq_mean=[0.0] * len(SEQ_FEATURES),
        seq_std=[1.0] * len(SEQ_FEATURES),
        static_mean=[0.0] * len(statics),
        static_std=[1.0] * len(statics),
        output_scale=1.0,
        cycle_scale=cycle_scale,
        max_history=max_history,
        level_points=level_points,
        cleaning=cleaning or CleaningSpec(),
        knee_prior=True,
    )


@dataclass
class SampleSet:
    """Raw (un-normalised) inputs and targets; one row per (cell, prediction point)."""

    seq: np.ndarray  # (N, W, F) float32
    static: np.ndarray  # (N, S) float32
    target: np.ndarray  # (N, K) float32, y = log(C/L) at the horizons, NaN where masked
    base: np.ndarray  # (N, K) float32, the prior b(h) at the horizons
    level_c0: np.ndarray  # (N,) level / C0
    dataset: np.ndarray  # (N,) str
    cell: np.ndarray  # (N,) str
    at_cycle: np.ndarray  # (N,)
    weight: np.ndarray  # (N,) float32

    def __len__(self) -> int:
        return len(self.seq)

    def subset(self, mask: np.ndarray) -> SampleSet:
        return SampleSet(*(getattr(self, f)[mask] for f in self.__dataclass_fields__))

    @staticmethod
    def concat(parts: Sequence[SampleSet], window: int, n_seq: int, n_static: int, n_out: int) -> SampleSet:
        if not parts:
            return SampleSet(
                np.zeros((0, window, n_seq), np.float32),
                np.zeros((0, n_static), np.float32),
                np.zeros((0, n_out), np.float32),
                np.zeros((0, n_out), np.float32),
                np.zeros(0),
                np.zeros(0, dtype=str),
                np.zeros(0, dtype=str),
                np.zeros(0),
                np.zeros(0, np.float32),
            )
        return SampleSet(*(np.concatenate([getattr(p, f) for p in parts]) for f in SampleSet.__dataclass_fields__))


def prediction_indices(n_valid: int, ok: np.ndarray, max_points: int) -> list[int]:
    """Evenly spaced prediction points among the ok valid rows j with 2 <= j < n_valid - 1."""
    cand = [j for j in range(2, n_valid - 1) if ok[j]]
    if len(cand) <= max_points:
        return cand
    pick = np.unique(np.round(np.linspace(0, len(cand) - 1, max_points)).astype(int))
    return [cand[i] for i in pick]


def cell_samples(cell: Cell, spec: FeatureSpec, max_points: int) -> SampleSet:
    """All samples of one cell (identity-normalised spec expected)."""
    w, k_out = spec.window, len(spec.horizons)
    n_seq, n_static = len(spec.seq_features), len(spec.static_features)
    pts = cell.points()
    cs = clean_cell(cell, spec.cleaning)
    caps = np.array([p.capacity_ah for p in pts])
    ok = cs.ok
    horizons = np.asarray(spec.horizons, dtype=float)
    seqs, statics, targets, bases, lc0, at = [], [], [], [], [], []
    if len(pts) < 4:
        return SampleSet.concat([], w, n_seq, n_static, k_out)
    for j in prediction_indices(len(pts), ok, max_points):
        c0 = float(np.median(caps[: min(C0_FIRST, j + 1)]))  # the device's C0 rule, from the history only
        prep = prepare(pts[: j + 1], c0, spec)
        if prep is None:
            continue
        same = ok & (cs.segment == cs.segment[j])
        xs, ys = cs.cycles[same], cs.capacity_ah[same]
        tc = cs.cycles[j] + horizons
        inside = tc <= xs[-1]
        if not inside.any():
            continue
        c_true = np.interp(tc, xs, ys)
        base = prep.base(tc)
        y = np.where(inside, np.log(c_true / prep.level_ah), np.nan)
        seqs.append(prep.seq)
        statics.append(prep.static)
        targets.append(y)
        bases.append(base)
        lc0.append(prep.level_ah / c0)
        at.append(cs.cycles[j])
    n = len(seqs)
    if n == 0:
        return SampleSet.concat([], w, n_seq, n_static, k_out)
    return SampleSet(
        seq=np.asarray(seqs, np.float32),
        static=np.asarray(statics, np.float32),
        target=np.asarray(targets, np.float32),
        base=np.asarray(bases, np.float32),
        level_c0=np.asarray(lc0),
        dataset=np.array([cell.dataset] * n),
        cell=np.array([cell.cell] * n),
        at_cycle=np.asarray(at),
        weight=np.ones(n, np.float32),
    )


def _worker(args: tuple[Cell, FeatureSpec, int]) -> SampleSet:
    return cell_samples(*args)


def build_samples(
    cells: Sequence[Cell],
    spec: FeatureSpec,
    *,
    samples_per_dataset: int,
    dataset_weights: dict[str, float] | None = None,
    jobs: int | None = None,
    desc: str = "samples",
) -> SampleSet:
    """Samples of many cells in parallel. Per dataset, each cell gets ceil(samples_per_dataset / cells)
    prediction points at most; weights make each cell count equally within its dataset and each dataset
    count ``dataset_weights[ds]`` (default 1) in total."""
    per_ds: dict[str, int] = {}
    for c in cells:
        per_ds[c.dataset] = per_ds.get(c.dataset, 0) + 1
    tasks = [(c, spec, max(1, math.ceil(samples_per_dataset / per_ds[c.dataset]))) for c in cells]
    jobs = jobs or min(len(tasks), os.cpu_count() or 1)
    parts: list[SampleSet] = []
    if jobs <= 1 or len(tasks) <= 1:
        for t in tqdm(tasks, desc=desc, unit="cell", leave=False):
            parts.append(_worker(t))
    else:
        with ProcessPoolExecutor(max_workers=jobs) as ex:
            results = ex.map(_worker, tasks, chunksize=1)
            parts.extend(tqdm(results, total=len(tasks), desc=desc, unit="cell", leave=False))
    w, k = spec.window, len(spec.horizons)
    out = SampleSet.concat(parts, w, len(spec.seq_features), len(spec.static_features), k)
    weights = dataset_weights or {}
    wt = np.zeros(len(out), np.float32)
    cells_per_ds = {ds: len(set(out.cell[out.dataset == ds])) for ds in per_ds}
    for ds in per_ds:
        for cell in set(out.cell[out.dataset == ds]):
            m = (out.dataset == ds) & (out.cell == cell)
            wt[m] = weights.get(ds, 1.0) / (cells_per_ds[ds] * m.sum())
    if len(out):
        wt *= len(out) / wt.sum()  # mean weight 1
    out.weight = wt
    log.info("%s: %d samples from %d cells", desc, len(out), len(cells))
    return out
