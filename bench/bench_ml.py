"""ML benchmarks (issue #4): TFLite latency of the shipped model against Keras in the same run, model size,
training time.

* TFLite: the device runtime (``device_agent.health.hybrid``, ai-edge-litert, 1 thread) on inputs prepared
  from a real NASA history: the interpreter call alone, and the whole forecast after the fade-law fit
  (interpreter + a 2000-point trajectory + end of life); the fade-law fit itself for scale.
* Keras: the batch-1 Keras twin of the export (``report/model.keras``, saved by the trainer), on the same
  input: ``model.predict`` and a direct call ``model(x)``.
* Size of model.tflite; training time from model.json (``--train`` measures a fresh full training run).

Prints every figure and writes bench/results/ml.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from device_agent.health.fade_law import fit_fade  # noqa: E402
from device_agent.health.hybrid import causal_clean, load_hybrid_model  # noqa: E402
from ml.data import read_cell_csv  # noqa: E402

RESULTS = REPO / "bench" / "results"
COMPONENT = REPO / "components" / "com.battwin.SohModel"
CELLS = REPO.parent / "shared" / "data" / "cells"
CELL = CELLS / "nasa" / "B0036.csv"
HISTORY = 150


def pct(ts: list[float]) -> dict[str, float]:
    a = np.asarray(ts) * 1e6
    return {"p50_us": float(np.percentile(a, 50)), "p99_us": float(np.percentile(a, 99)), "n": len(ts)}


def timed(fn: Callable[[], object], n: int, warmup: int = 20) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def report(r: dict[str, Any]) -> None:
    t, f = r["tflite"]["interpreter_call"], r["tflite"]["forecast_after_fit"]
    ph, k, tr = r["physics"], r["keras"], r["training"]
    print(f"model {r['model']['version']}: {r['model']['tflite_bytes']} bytes ({r['model']['quantization']})")
    print(f"TFLite interpreter call: p50 {t['p50_us']:.1f} us, p99 {t['p99_us']:.1f} us")
    print(f"TFLite forecast after the fit: p50 {f['p50_us']:.1f} us, p99 {f['p99_us']:.1f} us")
    print(
        f"fade-law fit ({r['input']['history_points']} points): p50 {ph['fit_fade']['p50_us'] / 1000:.1f} ms; "
        f"full forecast incl. fit p50 {ph['full_forecast_incl_fit']['p50_us'] / 1000:.1f} ms"
    )
    h = r["history_1000"]
    print(
        f"1000-point history: cleaning p50 {h['causal_clean']['p50_us']:.0f} us, fade-law fit p50 "
        f"{h['fit_fade']['p50_us'] / 1000:.1f} ms, inputs incl. fit p50 "
        f"{h['prepare_incl_fit_and_cleaning']['p50_us'] / 1000:.1f} ms"
    )
    if "predict" in k:
        print(
            f"Keras predict: p50 {k['predict']['p50_us']:.0f} us, p99 {k['predict']['p99_us']:.0f} us "
            f"(x{k['ratio_predict_p50_over_tflite_p50']:.0f} TFLite); direct call p50 "
            f"{k['direct_call']['p50_us']:.0f} us (x{k['ratio_call_p50_over_tflite_p50']:.0f}); "
            f"max |output diff| {k['max_abs_output_diff']:.2e}"
        )
    else:
        print(f"Keras: {k['skipped']}")
    measured = f"; measured now: {tr['measured_s']:.1f} s" if "measured_s" in tr else ""
    print(f"training time (model.json): {tr['from_model_json_s']:.1f} s{measured}")
    print(f"wrote {RESULTS / 'ml.json'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path, default=COMPONENT / "model")
    ap.add_argument("--keras", type=Path, default=COMPONENT / "report" / "model.keras")
    ap.add_argument("--n", type=int, default=5000, help="TFLite repetitions")
    ap.add_argument("--n-keras", type=int, default=300, help="Keras repetitions")
    ap.add_argument("--train", action="store_true", help="measure a full training run of the shipped model")
    args = ap.parse_args()

    model = load_hybrid_model(args.model, num_threads=1)
    mf = model.model_file
    cell = read_cell_csv(CELL)
    pts = cell.points()[:HISTORY]
    c0 = cell.c0() or 1.0
    prep = model.prepare(pts, c0)
    assert prep is not None
    seq, static = prep.seq[None], prep.static[None]

    tfl_invoke = timed(lambda: model.correction(prep), args.n)
    tfl_forecast = timed(lambda: model.forecast_from(prep, model.correction(prep), c0, 0.8, 5000), args.n // 5)
    t_prepare = timed(lambda: model.prepare(pts, c0), 50, warmup=3)
    t_fit = timed(lambda: fit_fade(pts), 50, warmup=3)
    t_full = timed(lambda: model.forecast(pts, c0, 0.8, 5000), 50, warmup=3)
    out_tfl = model.correction(prep)
    long_cell = read_cell_csv(CELLS / "hust" / "HUST_1-1.csv")
    long_pts = long_cell.points()[:1000]
    t_clean_1000 = timed(lambda: causal_clean(long_pts, mf.features.cleaning), 50, warmup=3)
    t_prepare_1000 = timed(lambda: model.prepare(long_pts, long_cell.c0() or 1.0), 20, warmup=2)
    t_fit_1000 = timed(lambda: fit_fade(causal_clean(long_pts, mf.features.cleaning)), 20, warmup=2)

    result: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
        },
        "model": {
            "version": mf.version,
            "quantization": mf.quantization,
            "tflite_bytes": (args.model / "model.tflite").stat().st_size,
            "json_bytes": (args.model / "model.json").stat().st_size,
            "window": mf.features.window,
            "horizons": len(mf.features.horizons),
        },
        "input": {"cell": f"nasa/{CELL.stem}", "history_points": len(pts)},
        "tflite": {
            "interpreter_call": pct(tfl_invoke),
            "forecast_after_fit": pct(tfl_forecast),
            "note": "interpreter_call = set inputs, invoke, read output (1 thread); forecast_after_fit = "
            "that plus the 2000-point trajectory and end of life, fade-law fit excluded",
        },
        "physics": {
            "fit_fade": pct(t_fit),
            "prepare_incl_fit_and_cleaning": pct(t_prepare),
            "full_forecast_incl_fit": pct(t_full),
        },
        "history_1000": {
            "cell": "hust/HUST_1-1",
            "causal_clean": pct(t_clean_1000),
            "fit_fade": pct(t_fit_1000),
            "prepare_incl_fit_and_cleaning": pct(t_prepare_1000),
        },
    }
    if args.keras.is_file():
        import keras

        km = keras.saving.load_model(args.keras, compile=False)
        k_predict = timed(lambda: km.predict([seq, static], verbose=0), args.n_keras, warmup=5)
        k_call = timed(lambda: km([seq, static], training=False), args.n_keras * 3, warmup=5)
        out_k = np.asarray(km.predict([seq, static], verbose=0))[0]
        tp50 = pct(tfl_invoke)["p50_us"]
        result["keras"] = {
            "predict": pct(k_predict),
            "direct_call": pct(k_call),
            "ratio_predict_p50_over_tflite_p50": pct(k_predict)["p50_us"] / tp50,
            "ratio_call_p50_over_tflite_p50": pct(k_call)["p50_us"] / tp50,
            "max_abs_output_diff": float(np.max(np.abs(out_k - out_tfl))),
            "keras_version": keras.__version__,
        }
    else:
        result["keras"] = {"skipped": f"{args.keras} not found (written by `battwin ml train --report`)"}
    prov = mf.provenance
    result["training"] = {
        "from_model_json_s": prov.training_time_s,
        "data_preparation_s": prov.prepare_time_s,
        "epochs_run": prov.epochs_run,
        "n_train_samples": prov.n_train_samples,
    }
    if args.train:
        from ml.train import TrainConfig, train

        cfg = TrainConfig(**{k: v for k, v in prov.config.items() if k in TrainConfig.model_fields})
        dirs = [CELLS / d for d in prov.datasets]
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            r = train(dirs, Path(tmp) / "model", cfg)
            result["training"]["measured_s"] = time.perf_counter() - t0
            result["training"]["measured_model_version"] = r.model_file.version

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ml.json").write_text(json.dumps(result, indent=2) + "\n")
    report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
