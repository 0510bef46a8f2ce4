"""The device runtime of the hybrid model: loading checks, the HealthModel protocol, no TensorFlow."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import threading
from typing import Any

import numpy as np
import pytest

from device_agent.config import HealthSettings
from device_agent.health.estimator import HealthEstimator, HealthModel
from device_agent.health.hybrid import ModelLoadError, load_hybrid_model
from device_agent.health.model_files import sha256_file
from ml.data import read_cell_csv
from schema.messages import CycleRecord
from tests.ml.ml_support import CELLS, need_cells
from tests.support import REPO


def test_device_runtime_does_not_import_tensorflow(shipped_model_dir):
    need_cells()
    code = f"""
import sys
from device_agent.health.hybrid import load_hybrid_model
from device_agent.health.fade_law import CapacityPoint
import csv
m = load_hybrid_model({str(shipped_model_dir)!r})
rows = list(csv.DictReader(open({str(CELLS / "nasa" / "B0047.csv")!r})))
pts = [CapacityPoint(float(r["cycle"]), float(r["capacity_ah"])) for r in rows if float(r["capacity_ah"] or 0) > 0]
f = m.forecast(pts[:40], 1.5, 0.8, 500)
assert f is not None and f.eol_cycle is not None, f
heavy = sorted(k for k in sys.modules if k.split(".")[0] in ("tensorflow", "keras", "tf_keras", "jax", "torch"))
print("HEAVY", heavy)
assert not heavy, heavy
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "HEAVY []" in res.stdout


def test_shipped_model_loads_and_is_a_health_model(shipped_model_dir):
    need_cells()
    m = load_hybrid_model(shipped_model_dir)
    hm: HealthModel = m  # the protocol (checked statically by mypy); and its signature at run time:
    assert (
        list(inspect.signature(hm.forecast).parameters) == list(inspect.signature(HealthModel.forecast).parameters)[1:]
    )
    doc = json.loads((shipped_model_dir / "model.json").read_text())
    assert m.method == "hybrid" and m.version == doc["version"]
    assert sha256_file(shipped_model_dir / "model.tflite") == doc["tflite_sha256"]
    assert (shipped_model_dir / "model.tflite").stat().st_size <= 64 * 1024
    cell = read_cell_csv(CELLS / "nasa" / "B0055.csv")
    pts = cell.points()
    c0 = cell.c0()
    assert c0 is not None
    f = m.forecast(pts[:50], c0, 0.8, 5000)
    assert f is not None
    assert 0.5 < f.soh_now < 1.1
    assert list(f.cycles) == sorted(f.cycles) and f.cycles[0] > pts[49].cycle
    assert all(np.isfinite(f.soh))
    assert f.eol_cycle is not None  # B0055 ends at SoH 0.79: from cycle 50 its end of life is ahead
    # the trajectory reaches the threshold; the EOL comes at or before the forecast's own crossing (the band)
    assert f.soh[-1] < 0.8 <= max(f.soh[0], 0.8)
    crossing = next(c for c, s in zip(f.cycles, f.soh, strict=True) if s < 0.8)
    assert pts[49].cycle < f.eol_cycle <= crossing
    assert f.params["eol_band_sigmas"] == m.spec.eol_band_sigmas
    no_band = m.forecast_from(
        m.prepare(pts[:50], c0), m.correction(m.prepare(pts[:50], c0)), c0, 0.8, 5000, band_sigmas=0.0
    )
    assert no_band.eol_cycle is not None and no_band.eol_cycle >= f.eol_cycle
    assert no_band.eol_cycle == pytest.approx(crossing, abs=2 * (f.cycles[1] - f.cycles[0]))
    assert m.forecast(pts[:2], c0, 0.8, 5000) is None  # < 3 points: the estimator falls back to physics


def test_estimator_uses_the_hybrid_model(shipped_model_dir):
    need_cells()
    m = load_hybrid_model(shipped_model_dir)
    est = HealthEstimator(HealthSettings(), "b1", model=m)
    cell = read_cell_csv(CELLS / "nasa" / "B0046.csv")
    health = None
    t = 0.0
    for p in cell.points()[:30]:
        rec = CycleRecord(
            index=int(p.cycle),
            kind="discharge",
            start_ts=t,
            end_ts=t + 3600,
            duration_s=3600,
            charge_ah=p.capacity_ah,
            energy_wh=p.capacity_ah * 3.6,
            capacity_ah=p.capacity_ah,
            complete=True,
            start_voltage_v=4.2,
            end_voltage_v=2.7,
            min_voltage_v=2.7,
            max_voltage_v=4.2,
            mean_current_a=-2.0,
            n_samples=100,
            source_id="b1",
        )
        t += 7200
        est.observe(rec)
        health = est.estimate(rec)
    assert health is not None
    assert health.method == "hybrid" and health.model_version == m.version
    assert est.last_error is None
    assert health.forecast


def test_repeated_forecasts_are_identical_across_threads(shipped_model_dir):
    """One interpreter serves the agent's threads: the same inputs give the same outputs, call after call
    and thread against thread (latency is measured by bench/bench_ml.py, never asserted here)."""
    need_cells()
    m = load_hybrid_model(shipped_model_dir)
    cell = read_cell_csv(CELLS / "nasa" / "B0036.csv")
    prep = m.prepare(cell.points()[:150], 1.8)
    other = m.prepare(cell.points()[:60], 1.8)
    assert prep is not None and other is not None
    want = m.soh_at(prep, m.correction(prep), 1.8, np.arange(151.0, 400.0))
    want_other = m.correction(other)
    results: list[bool] = []

    def hammer(p: Any, expect: np.ndarray, kind: str) -> None:
        for _ in range(100):
            out = m.correction(p)
            got = m.soh_at(p, out, 1.8, np.arange(151.0, 400.0)) if kind == "soh" else out
            results.append(bool(np.array_equal(got, expect)))

    threads = [
        threading.Thread(target=hammer, args=(prep, want, "soh")),
        threading.Thread(target=hammer, args=(other, want_other, "raw")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 200 and all(results)


# -- load errors ------------------------------------------------------------------------------------


def test_missing(tmp_path, model_copy):
    with pytest.raises(ModelLoadError) as e:
        load_hybrid_model(tmp_path / "nope")
    assert e.value.reason == "missing"
    (model_copy / "model.tflite").unlink()
    with pytest.raises(ModelLoadError) as e:
        load_hybrid_model(model_copy)
    assert e.value.reason == "missing"
    (model_copy / "model.json").unlink()
    with pytest.raises(ModelLoadError) as e:
        load_hybrid_model(model_copy)
    assert e.value.reason == "missing"


def test_sha_mismatch(model_copy):
    data = bytearray((model_copy / "model.tflite").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (model_copy / "model.tflite").write_bytes(bytes(data))
    with pytest.raises(ModelLoadError) as e:
        load_hybrid_model(model_copy)
    assert e.value.reason == "sha_mismatch"
    assert "sha256" in str(e.value)


def _restate_sha(model_dir):
    doc = json.loads((model_dir / "model.json").read_text())
    doc["tflite_sha256"] = sha256_file(model_dir / "model.tflite")
    doc["tflite_bytes"] = (model_dir / "model.tflite").stat().st_size
    (model_dir / "model.json").write_text(json.dumps(doc))


def test_truncated_tflite_is_corrupt_even_with_a_matching_sha(model_copy):
    data = (model_copy / "model.tflite").read_bytes()
    (model_copy / "model.tflite").write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelLoadError) as e:
        load_hybrid_model(model_copy)
    assert e.value.reason == "sha_mismatch"
    _restate_sha(model_copy)
    with pytest.raises(ModelLoadError) as e:
        load_hybrid_model(model_copy)
    assert e.value.reason == "corrupt"


def test_wrong_shapes(model_copy):
    doc = json.loads((model_copy / "model.json").read_text())
    f = doc["features"]
    f["window"] += 1
    doc["seq_input"]["shape"][1] += 1
    (model_copy / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ModelLoadError) as e:
        load_hybrid_model(model_copy)
    assert e.value.reason == "shape_mismatch"
    assert "sequence input" in str(e.value)


def test_wrong_output_width(model_copy):
    doc = json.loads((model_copy / "model.json").read_text())
    f = doc["features"]
    last = f["horizons"][-1]
    f["horizons"] = f["horizons"][:-1]  # model.json is self-consistent, the .tflite has one horizon more
    f["static_features"] = [n for n in f["static_features"] if n != f"prior_h{last}"]
    n_static = len(f["static_features"])
    f["static_mean"] = f["static_mean"][:n_static]
    f["static_std"] = f["static_std"][:n_static]
    doc["static_input"]["shape"] = [1, n_static]
    doc["output"]["shape"] = [1, 2 * len(f["horizons"])]
    (model_copy / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ModelLoadError) as e:
        load_hybrid_model(model_copy)
    assert e.value.reason == "shape_mismatch"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("features"),
        lambda d: d.update(tflite_sha256="xyz"),
        lambda d: d["features"].update(seq_features=["a", "b", "c", "d"]),
        lambda d: d["features"].update(seq_std=[0.0, 1.0, 1.0, 1.0]),
        lambda d: d.update(schema_version=99),
    ],
)
def test_bad_json(model_copy, mutate):
    doc = json.loads((model_copy / "model.json").read_text())
    mutate(doc)
    (model_copy / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ModelLoadError) as e:
        load_hybrid_model(model_copy)
    assert e.value.reason == "bad_json"


def test_not_json(model_copy):
    (model_copy / "model.json").write_text("{not json")
    with pytest.raises(ModelLoadError) as e:
        load_hybrid_model(model_copy)
    assert e.value.reason == "bad_json"


def test_a_model_json_from_before_the_eol_band_still_loads(model_copy):
    """Models trained before the EOL band have no eol_band_sigmas: the mean forecast's own crossing."""
    need_cells()
    doc = json.loads((model_copy / "model.json").read_text())
    for key in ("eol_band_sigmas", "eol_scatter_cap"):
        doc["features"].pop(key)
    doc["provenance"].pop("unscorable_cells")
    (model_copy / "model.json").write_text(json.dumps(doc))
    m = load_hybrid_model(model_copy)
    assert m.spec.eol_band_sigmas == 0.0
    pts = read_cell_csv(CELLS / "nasa" / "B0055.csv").points()
    f = m.forecast(pts[:50], 1.257, 0.8, 5000)
    assert f is not None and f.eol_cycle is not None
    crossing = next(c for c, s in zip(f.cycles, f.soh, strict=True) if s < 0.8)
    assert f.eol_cycle == pytest.approx(crossing, abs=2 * (f.cycles[1] - f.cycles[0]))
