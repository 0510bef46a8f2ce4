"""The 80 % interval in the evaluation: predictions.csv's soh_lo / soh_hi, the coverage in metrics.json, and
the spread factor's calibration on validation cells (ml.eol_band.calibrate_interval_spread)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from device_agent.health.hybrid import load_hybrid_model
from device_agent.health.model_files import IntervalSpec, read_model_file, write_model_file
from ml.cli import EXIT_OK, main
from ml.data import read_cell_csv
from ml.eol_band import INTERVAL_HORIZONS, calibrate_interval_spread
from ml.metrics import coverage_table, horizon_bin
from ml.predictions import INTERVAL_METHODS, PRED_COLUMNS, predict_cell_at, prediction_k
from tests.ml.ml_support import copy_cells, need_cells

CELLS_USED = ("B0025", "B0036", "B0055")


@pytest.fixture
def cells_dir(tmp_path: Path) -> Path:
    need_cells()
    return copy_cells(tmp_path / "in", "nasa", CELLS_USED)


def test_predictions_carry_the_interval_and_metrics_its_coverage(cells_dir, tmp_path, shipped_model_dir):
    out = tmp_path / "out"
    assert main(["ml", "evaluate", "--cells", str(cells_dir), "--model", str(shipped_model_dir), "--out", str(out),
                 "--quiet", "--no-plots"]) == EXIT_OK  # fmt: skip
    with (out / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == PRED_COLUMNS and PRED_COLUMNS[-2:] == ("soh_lo", "soh_hi")
    for r in rows:
        if r["method"] == "persistence":  # no trend, no interval
            assert r["soh_lo"] == r["soh_hi"] == ""
        else:
            assert float(r["soh_lo"]) <= float(r["soh_pred"]) <= float(r["soh_hi"]), r
    metrics = json.loads((out / "metrics.json").read_text())
    nasa = metrics["datasets"]["nasa"]["methods"]
    assert nasa["persistence"]["all"]["interval_80"] is None
    for m in INTERVAL_METHODS:
        mine = [r for r in rows if r["method"] == m]
        inside = [float(r["soh_lo"]) <= float(r["soh_true"]) <= float(r["soh_hi"]) for r in mine]
        iv = nasa[m]["all"]["interval_80"]
        assert iv["n_rows"] == len(mine)
        assert iv["coverage"] == pytest.approx(np.mean(inside), abs=2e-3)  # the CSV rounds to 6 digits
        by_bin: dict[int, list[bool]] = {}
        for r, ok in zip(mine, inside, strict=True):
            by_bin.setdefault(horizon_bin(float(r["target_cycle"]) - float(r["at_cycle"])), []).append(ok)
        got = {int(b): v["n_rows"] for b, v in iv["coverage_by_horizon"].items()}
        assert got == {b: len(v) for b, v in by_bin.items()}
        assert 0.0 < iv["coverage"] < 1.0 and iv["mean_width_pp"] > 0
    # the table the CLI prints: one line per method with an interval, its pooled coverage first
    lines = coverage_table(metrics).splitlines()
    assert [ln.split()[:2] for ln in lines[1:]] == [["nasa", m] for m in INTERVAL_METHODS]
    for ln, m in zip(lines[1:], INTERVAL_METHODS, strict=True):
        assert float(ln.split()[2]) == pytest.approx(nasa[m]["all"]["interval_80"]["coverage"], abs=0.005)


def test_the_band_widens_with_the_horizon_in_the_evaluation(shipped_model_dir):
    need_cells()
    from tests.ml.ml_support import CELLS

    cell = read_cell_csv(CELLS / "nasa" / "B0055.csv")
    model = load_hybrid_model(shipped_model_dir)
    n = int(cell.valid.sum())
    pp = predict_cell_at(cell, prediction_k(0.5, n), model, p=0.5)
    assert pp is not None
    for m in INTERVAL_METHODS:
        lo, hi = pp.interval[m]
        assert np.all(lo <= pp.pred[m]) and np.all(pp.pred[m] <= hi)
        assert np.all(np.diff(np.log(pp.pred[m] / lo)) >= -1e-9)  # the lower half-width never shrinks
        assert hi[-1] - lo[-1] > hi[0] - lo[0]


def test_calibration_reaches_the_coverage_on_its_cells_and_ships_in_model_json(model_copy):
    need_cells()
    from tests.ml.ml_support import CELLS

    cells = [read_cell_csv(CELLS / "nasa" / f"{n}.csv") for n in ("B0025", "B0036", "B0055")]
    model = load_hybrid_model(model_copy)
    spec, table = calibrate_interval_spread(cells, model, [0.25, 0.5, 0.75])
    assert spec.horizons == list(INTERVAL_HORIZONS) and table["n_points"] == 9
    for m in INTERVAL_METHODS:
        factors = getattr(spec, m)
        assert factors == sorted(factors)  # non-decreasing with the horizon
        calibrated = {b: v for b, v in table["methods"][m].items() if v["source"] == "validation"}
        assert calibrated and all(v["coverage"] >= 0.8 for v in calibrated.values())
    # asking for more coverage needs a wider band
    wider, _ = calibrate_interval_spread(cells, model, [0.25, 0.5, 0.75], coverage=0.95)
    assert all(w >= s for w, s in zip(wider.physics, spec.physics, strict=True)) and wider.physics != spec.physics
    # shipped in model.json: the device and the evaluation read it back and use it
    mf = read_model_file(model_copy / "model.json")
    assert mf.features.intervals is None  # the shipped model predates the intervals: the default applies
    write_model_file(mf.model_copy(update={"features": mf.features.model_copy(update={"intervals": spec})}),
                     model_copy / "model.json")  # fmt: skip
    loaded = load_hybrid_model(model_copy)
    assert isinstance(loaded.spec.intervals, IntervalSpec) and loaded.spec.intervals.physics == spec.physics
    cell = cells[0]
    k = prediction_k(0.5, int(cell.valid.sum()))
    calibrated_pp = predict_cell_at(cell, k, loaded, p=0.5)
    default_pp = predict_cell_at(cell, k, model, p=0.5)
    assert calibrated_pp is not None and default_pp is not None
    assert not np.allclose(calibrated_pp.interval["physics"][0], default_pp.interval["physics"][0])
