"""``battwin ml evaluate``: the files it writes, the contract's protocol, no peeking, CLI errors."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from device_agent.health.hybrid import load_hybrid_model
from ml.cli import EXIT_OK, EXIT_USAGE, default_model_dir, main
from ml.data import read_cell_csv
from ml.eol_band import calibrate_eol_band
from ml.predictions import METHODS, PRED_COLUMNS, predict_cell_at, prediction_k
from tests.ml.ml_support import CELLS, SHIPPED_MODEL, copy_cells, need_cells

EVAL_CELLS = ("B0025", "B0045", "B0052", "B0055")  # clean, zeros, mostly NaN, long with regeneration


@pytest.fixture
def cells_dir(tmp_path) -> Path:
    need_cells()
    return copy_cells(tmp_path / "in", "nasa", EVAL_CELLS)


def _expected_rows(cells_dir: Path, points: list[float]) -> dict[str, list[tuple[str, str, float, float]]]:
    """The contract computed independently: per cell, (at_cycle, target_cycle, soh_true) for each point."""
    out = {}
    for path in sorted(cells_dir.glob("*.csv")):
        rows = list(csv.DictReader(path.open()))
        valid = []
        for r in rows:
            try:
                c = float(r["capacity_ah"])
            except ValueError:
                continue
            if math.isfinite(c) and c > 0:
                valid.append((r["cycle"], c))
        c0 = float(np.median([c for _, c in valid[:5]]))
        exp = []
        for p in points:
            k = math.ceil(p * len(valid))
            for cyc, c in valid[k:]:
                exp.append((valid[k - 1][0], cyc, c / c0))
        out[path.stem] = exp
    return out


def test_evaluate_writes_the_contract_files(cells_dir, tmp_path, shipped_model_dir):
    out = tmp_path / "out"
    rc = main(
        ["ml", "evaluate", "--cells", str(cells_dir), "--model", str(shipped_model_dir), "--out", str(out), "--quiet"]
    )
    assert rc == EXIT_OK
    with (out / "predictions.csv").open() as fh:
        reader = csv.reader(fh)
        assert tuple(next(reader)) == PRED_COLUMNS
        rows = list(reader)
    assert {r[0] for r in rows} == {"nasa"}
    assert {r[2] for r in rows} == set(METHODS)
    expected = _expected_rows(cells_dir, [0.25, 0.5, 0.75])
    for cell, exp in expected.items():
        for method in METHODS:
            got = [(r[3], r[4], float(r[5])) for r in rows if r[1] == cell and r[2] == method]
            assert [(a, b) for a, b, _ in got] == [(a, b) for a, b, _ in exp], (cell, method)
            np.testing.assert_allclose([x for *_, x in got], [x for *_, x in exp], atol=1e-6)
    assert all(math.isfinite(float(r[6])) for r in rows)
    metrics = json.loads((out / "metrics.json").read_text())
    nasa = metrics["datasets"]["nasa"]
    assert sorted(nasa["cells"]) == sorted(EVAL_CELLS)
    for m in METHODS:
        for key in ("p0.25", "p0.5", "p0.75", "all"):
            mm = nasa["methods"][m][key]
            assert mm["horizon_rmse_pp"] > 0 and mm["one_step_rmse_pp"] >= 0
            assert {"abs_err_cycles_mean", "rel_err_mean", "n_missed", "cells"} <= set(mm["eol"])
    # persistence is the last measured SoH: its one-step error is computable by hand
    pers = [r for r in rows if r[2] == "persistence"]
    assert all(r[6] == pers[0][6] for r in pers if r[1] == pers[0][1] and r[3] == pers[0][3])
    assert sorted(p.name for p in out.glob("*.png"))  # plots
    assert (out / "error_vs_horizon_nasa.png").stat().st_size > 1000
    # B0052 (4 valid rows) is scored with the rest above, and the scorable cells again on their own
    sc = metrics["scorable"]
    assert sc["unscorable_cells"] == {"nasa": ["B0052"]} and "20 valid rows" in sc["rule"]
    assert sc["datasets"]["nasa"]["cells"] == ["B0025", "B0045", "B0055"]
    kept = sc["datasets"]["nasa"]["methods"]["persistence"]["all"]
    assert kept["n_rows"] == nasa["methods"]["persistence"]["all"]["n_rows"] - len(expected["B0052"])
    assert kept["n_cells"] == 3


def test_eol_band_override_and_calibration(cells_dir, tmp_path, shipped_model_dir):
    """--eol-band 0 scores the mean forecast's crossing; the model's own band never gives a later EOL.
    calibrate_eol_band picks the band with the lowest cost on the cells it is given."""
    runs = {}
    for name, extra in (("model", []), ("zero", ["--eol-band", "0"])):
        out = tmp_path / name
        assert (
            main(
                [
                    "ml",
                    "evaluate",
                    "--cells",
                    str(cells_dir),
                    "--model",
                    str(shipped_model_dir),
                    "--out",
                    str(out),
                    "--quiet",
                    "--no-plots",
                    *extra,
                ]
            )
            == EXIT_OK
        )
        m = json.loads((out / "metrics.json").read_text())
        runs[name] = {
            (r["cell"], r["p"]): r["eol_pred"]
            for r in m["datasets"]["nasa"]["methods"]["hybrid"]["all"]["eol"]["cells"]
        }
    assert runs["model"].keys() == runs["zero"].keys() and runs["model"]
    model = load_hybrid_model(shipped_model_dir)
    assert model.spec.eol_band_sigmas > 0
    for key, eol in runs["model"].items():
        zero = runs["zero"][key]
        assert eol is not None and (zero is None or eol <= zero + 1e-9), key
    assert any(zero is None or eol < zero for eol, zero in ((runs["model"][k], runs["zero"][k]) for k in runs["model"]))
    with pytest.raises(SystemExit):
        main(["ml", "evaluate", "--cells", str(cells_dir), "--out", str(tmp_path / "x"), "--eol-band", "-1"])

    cells = [read_cell_csv(cells_dir / f"{n}.csv") for n in ("B0045", "B0055")]
    band, table = calibrate_eol_band(cells, model, [0.25, 0.5, 0.75], grid=(0.0, 1.0, 3.0))
    costs = {float(k): v for k, v in table["mean_cost"].items()}
    assert band in costs and costs[band] == min(costs.values())
    assert table["n_points"] > 0 and set(table["cost"]["0.0"]) == {"nasa"}
    assert all(0.0 <= c <= 1.0 for c in costs.values())


def test_no_peeking_changed_future(cells_dir, shipped_model_dir, tmp_path):
    """Rewriting every row after the prediction point (kept valid) changes none of the predictions."""
    model = load_hybrid_model(shipped_model_dir)
    for name in EVAL_CELLS:
        cell = read_cell_csv(cells_dir / f"{name}.csv")
        n = int(cell.valid.sum())
        for p in (0.25, 0.5, 0.75):
            k = prediction_k(p, n)
            if k >= n:
                continue
            at = cell.valid_indices()[k - 1]
            lines = (cells_dir / f"{name}.csv").read_text().splitlines()
            header = lines[0].split(",")
            ci = header.index("capacity_ah")
            rng = np.random.default_rng(k)
            new = [lines[0]]
            for i, line in enumerate(lines[1:]):
                f = line.split(",")
                if i > at and f[ci] not in ("", "nan") and float(f[ci]) > 0:
                    f[ci] = f"{float(f[ci]) * rng.uniform(0.3, 1.7):.6f}"
                new.append(",".join(f))
            alt = tmp_path / f"{name}-{p}.csv"
            alt.write_text("\n".join(new) + "\n")
            a = predict_cell_at(cell, k, model, p=p)
            b = predict_cell_at(read_cell_csv(alt), k, model, p=p)
            assert a is not None and b is not None
            assert not np.allclose(a.soh_true, b.soh_true)
            for m in METHODS:
                np.testing.assert_array_equal(a.pred[m], b.pred[m], err_msg=f"{name} p={p} {m}")
            assert a.eol_pred == b.eol_pred


def test_no_peeking_truncated_file(cells_dir, shipped_model_dir, tmp_path):
    """Truncating the file a few rows after the prediction point changes none of the predictions."""
    model = load_hybrid_model(shipped_model_dir)
    for name in ("B0045", "B0055"):
        path = cells_dir / f"{name}.csv"
        cell = read_cell_csv(path)
        n = int(cell.valid.sum())
        for p in (0.25, 0.5, 0.75):
            k = prediction_k(p, n)
            last_row = cell.valid_indices()[k - 1 + 3]  # keep three later valid rows
            lines = path.read_text().splitlines()
            short = tmp_path / f"{name}-{p}.csv"
            short.write_text("\n".join(lines[: last_row + 2]) + "\n")
            a = predict_cell_at(cell, k, model, p=p)
            b = predict_cell_at(read_cell_csv(short), k, model, p=p)
            assert a is not None and b is not None and len(b.target_cycles) == 3
            np.testing.assert_array_equal(a.target_cycles[:3], b.target_cycles)
            for m in METHODS:
                np.testing.assert_array_equal(a.pred[m][:3], b.pred[m], err_msg=f"{name} p={p} {m}")
            assert a.eol_pred == b.eol_pred


def test_cli_errors_exit_2(tmp_path, capsys, shipped_model_dir):
    need_cells()
    out = tmp_path / "out"
    assert main(["ml", "evaluate", "--cells", str(tmp_path / "nope"), "--out", str(out)]) == EXIT_USAGE
    assert "no such directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["ml", "evaluate", "--cells", str(tmp_path / "empty"), "--out", str(out)]) == EXIT_USAGE
    assert "no *.csv" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.csv").write_text("cycle,cap\n1,2\n")
    assert main(["ml", "evaluate", "--cells", str(bad), "--out", str(out)]) == EXIT_USAGE
    assert "missing required column" in capsys.readouterr().err
    good = copy_cells(tmp_path / "g", "nasa", ("B0025",))
    assert (
        main(["ml", "evaluate", "--cells", str(good), "--model", str(tmp_path / "nomodel"), "--out", str(out)])
        == EXIT_USAGE
    )
    assert "does not exist" in capsys.readouterr().err
    assert main(["ml", "train", "--cells", str(tmp_path / "nope"), "--out", str(out)]) == EXIT_USAGE
    with pytest.raises(SystemExit) as e:
        main(["ml", "evaluate", "--cells", str(good), "--out", str(out), "--points", "0.5,2"])
    assert e.value.code == 2
    assert not out.exists()


def test_default_model_is_the_shipped_one(monkeypatch, tmp_path):
    assert default_model_dir().resolve() == SHIPPED_MODEL.resolve()
    monkeypatch.chdir(tmp_path)  # found from the package's location, not the working directory
    assert default_model_dir().resolve() == SHIPPED_MODEL.resolve()
    monkeypatch.setenv("BATTWIN_ML_MODEL_DIR", str(tmp_path))
    assert default_model_dir() == tmp_path


def test_evaluate_any_folder_with_the_default_model(tmp_path, monkeypatch):
    """A folder in the contract with other columns, gaps and missing values; --model left out."""
    need_cells()
    src = read_cell_csv(CELLS / "xjtu" / "XJTU_3C_battery-5.csv")
    d = tmp_path / "mine"
    d.mkdir()
    with (d / "cell-a.csv").open("w") as fh:
        fh.write("cycle,capacity_ah,notes\n")
        for i, (cy, c) in enumerate(zip(src.cycles, src.capacity_ah, strict=True)):
            if i % 5 == 4:
                continue  # gaps
            cap = "" if i % 17 == 3 else ("0" if i % 29 == 5 else f"{c:.5f}")
            fh.write(f"{int(cy)},{cap},x\n")
    shutil.copyfile(CELLS / "nasa" / "B0047.csv", d / "cell-b.csv")
    out = tmp_path / "out"
    assert main(["ml", "evaluate", "--cells", str(d), "--out", str(out), "--quiet", "--no-plots"]) == EXIT_OK
    metrics = json.loads((out / "metrics.json").read_text())
    assert sorted(metrics["datasets"]["mine"]["cells"]) == ["cell-a", "cell-b"]
    assert metrics["model"]["version"] == json.loads((SHIPPED_MODEL / "model.json").read_text())["version"]
