"""A tiny training run on real cells (CI runs it): files that load on the device, TFLite/Keras parity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from device_agent.health.hybrid import load_hybrid_model
from device_agent.health.model_files import ModelFile, sha256_file
from ml.data import read_cell_csv, read_cells_dir
from ml.export import PARITY_TOLERANCE, ExportError, convert_to_tflite
from ml.fit import normalise
from ml.samples import build_samples, identity_spec
from tests.ml.ml_support import CELLS, SHIPPED_MODEL, SHIPPED_REPORT, need_cells, need_tensorflow

pytestmark = pytest.mark.slow


def test_tiny_training_produces_a_device_model(tiny_trained):
    model_dir, report, elapsed = tiny_trained
    # the CI budget (2 min) is reported, never a pass/fail condition: test-artifacts/ml/tiny_training.json
    artifacts = Path(__file__).resolve().parents[2] / "test-artifacts" / "ml"
    artifacts.mkdir(parents=True, exist_ok=True)
    (artifacts / "tiny_training.json").write_text(json.dumps({"wall_s": round(elapsed, 1), "budget_s": 120}) + "\n")
    assert sorted(p.name for p in model_dir.iterdir()) == ["model.json", "model.tflite"]
    mf = ModelFile.model_validate_json((model_dir / "model.json").read_text())
    assert mf.tflite_sha256 == sha256_file(model_dir / "model.tflite")
    assert mf.method == "hybrid" and mf.version.startswith("hybrid-1-")
    p = mf.provenance
    assert p.datasets == ["nasa", "xjtu"]
    for ds in p.datasets:
        tr, va, te = set(p.train_cells[ds]), set(p.val_cells[ds]), set(p.test_cells[ds])
        assert tr and not (tr & te) and not (tr & va) and not (va & te)
    assert p.training_time_s > 0 and p.epochs_run >= 1 and p.n_train_samples > 100
    assert len(p.data_fingerprint) == 64
    assert mf.parity_max_abs_soh <= PARITY_TOLERANCE[mf.quantization]
    assert mf.metrics["held_out"]["nasa"]["hybrid"]["all"]["horizon_rmse_pp"] is not None
    # the 80 % interval's spread factors, calibrated on the validation cells only, ship in model.json
    iv = mf.features.intervals
    assert iv is not None and iv.coverage == 0.8
    assert iv.physics == sorted(iv.physics) and iv.hybrid == sorted(iv.hybrid)
    cal = mf.metrics["export"]["intervals"]
    assert cal["n_points"] > 0 and any(v["source"] == "validation" for v in cal["methods"]["physics"].values())
    m = load_hybrid_model(model_dir)
    assert m.version == mf.version
    for name in (
        "metrics.json",
        "predictions.csv",
        "training_report.md",
        "loss.png",
        "error_vs_horizon_nasa.png",
        "model.keras",
    ):
        assert (report / name).is_file(), name


def _parity(model_dir, keras_path, cells):
    need_tensorflow()
    import keras

    m = load_hybrid_model(model_dir)
    km = keras.saving.load_model(keras_path, compile=False)
    worst = 0.0
    n = 0
    for cell in cells:
        pts = cell.points()
        c0 = cell.c0()
        for k in range(3, len(pts), max(1, len(pts) // 12)):
            prep = m.prepare(pts[:k], c0)
            if prep is None:
                continue
            out_t = m.correction(prep)
            out_k = np.asarray(km.predict([prep.seq[None], prep.static[None]], verbose=0))[0].astype(float)
            targets = np.array([pts[k - 1].cycle + h for h in (1, 5, 20, 100, 400)])
            diff = m.soh_at(prep, out_t, c0, targets) - m.soh_at(prep, out_k, c0, targets)
            worst = max(worst, float(np.max(np.abs(diff))))
            n += 1
    assert n >= 20
    return worst, m.model_file


def test_tflite_keras_parity_tiny(tiny_trained):
    model_dir, report, _ = tiny_trained
    cells = [read_cell_csv(CELLS / "nasa" / f"{n}.csv") for n in ("B0046", "B0055", "B0033")]
    worst, mf = _parity(model_dir, report / "model.keras", cells)
    assert worst <= PARITY_TOLERANCE[mf.quantization], worst


def test_tflite_keras_parity_shipped():
    need_cells()
    if not (SHIPPED_REPORT / "model.keras").is_file():
        pytest.fail("the shipped model's Keras twin (report/model.keras) is missing")
    cells = [read_cell_csv(CELLS / "nasa" / f"{n}.csv") for n in ("B0046", "B0055", "B0033")]
    cells.append(read_cell_csv(CELLS / "xjtu" / "XJTU_2C_battery-3.csv"))
    worst, mf = _parity(SHIPPED_MODEL, SHIPPED_REPORT / "model.keras", cells)
    # the stated tolerance for the shipped export (dynamic-range: 0.005 SoH = 0.5 pp)
    assert worst <= PARITY_TOLERANCE[mf.quantization], worst


def test_device_features_equal_training_features(tiny_trained):
    """The trainer's normalised inputs are bit-for-bit what the device computes for the same history."""
    model_dir, _, _ = tiny_trained
    mf = ModelFile.model_validate_json((model_dir / "model.json").read_text())
    spec = mf.features
    spec0 = identity_spec(spec.window, spec.horizons)
    cells = read_cells_dir(CELLS / "nasa", limit=3)
    s = build_samples(cells, spec0, samples_per_dataset=30, jobs=1)
    seq, static = normalise(s, spec)
    m = load_hybrid_model(model_dir)
    for i in range(0, len(s), 7):
        cell = next(c for c in cells if c.cell == s.cell[i])
        pts = [p for p in cell.points() if p.cycle <= s.at_cycle[i]]
        prep = m.prepare(pts, float(np.median([p.capacity_ah for p in pts[:5]])))
        assert prep is not None
        np.testing.assert_allclose(prep.seq, seq[i], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(prep.static, static[i], rtol=1e-5, atol=1e-5)


def test_converter_crash_is_an_export_error(tmp_path):
    need_tensorflow()
    bogus = tmp_path / "bogus.keras"
    bogus.write_bytes(b"not a keras file")
    with pytest.raises(ExportError, match="failed with exit code"):
        convert_to_tflite(bogus, tmp_path / "out.tflite", "dynamic_range")
    assert not (tmp_path / "out.tflite").exists()


def test_shipped_model_provenance():
    doc = json.loads((SHIPPED_MODEL / "model.json").read_text())
    p = doc["provenance"]
    assert "nasa" in p["datasets"]
    assert set(p["test_cells"]["nasa"]).isdisjoint(p["train_cells"]["nasa"])
    assert set(p["test_cells"]["nasa"]).isdisjoint(p["val_cells"]["nasa"])
    assert p["training_time_s"] < 15 * 60
    assert doc["tflite_bytes"] <= 64 * 1024


def test_training_is_deterministic(tiny_trained, tiny_data, tmp_path):
    """The same data, seed and options give a byte-identical model."""
    from ml.cli import main

    model_dir, _, _ = tiny_trained
    out = tmp_path / "again"
    rc = main(
        [
            "ml",
            "train",
            "--cells",
            str(tiny_data[0]),
            "--cells",
            str(tiny_data[1]),
            "--out",
            str(out),
            "--report",
            str(tmp_path / "report"),
            "--tiny",
            "--seed",
            "3",
        ]
    )
    assert rc == 0
    assert sha256_file(out / "model.tflite") == sha256_file(model_dir / "model.tflite")
    a = json.loads((model_dir / "model.json").read_text())
    b = json.loads((out / "model.json").read_text())
    assert a["version"] == b["version"] and a["provenance"]["data_fingerprint"] == b["provenance"]["data_fingerprint"]


def test_the_version_names_the_device_rules_so_a_changed_rule_is_a_new_model() -> None:
    """Two model.json files with the same network but different device-side rules (here the sparse-history
    fallback) must not share a version: the device, its Health messages and the fleet's records tell them apart.
    The shipped model's version is the one its own rules give."""
    from device_agent.health.model_files import read_model_file
    from ml.train import model_version

    shipped = read_model_file(SHIPPED_MODEL / "model.json")
    fp8 = shipped.version.split("-")[2]
    assert shipped.version == model_version(fp8, shipped.tflite_sha256, shipped.features)
    looser = shipped.features.model_copy(
        update={"fallback": shipped.features.fallback.model_copy(update={"max_window_spacing": 3.0})}
    )
    changed = model_version(fp8, shipped.tflite_sha256, looser)
    assert changed != shipped.version
    assert changed.rsplit("-", 1)[0] == shipped.version.rsplit("-", 1)[0]  # same data, same network
