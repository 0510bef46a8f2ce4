"""``battwin ml train`` and ``battwin ml evaluate`` (registered through the ``battwin.cli`` entry point).

Exit codes: 0 success, 2 bad input (missing folder, no CSVs, a file that breaks the contract, a model
that does not load, bad option values), 1 any other failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
MODEL_REL = Path("device_agent") / "health" / "shipped_model"
MODEL_ENV = "BATTWIN_ML_MODEL_DIR"


def default_model_dir() -> Path:
    """The model the device ships with: ``$BATTWIN_ML_MODEL_DIR``, else ``device_agent/health/shipped_model``
    of the repository this package lives in, else of the current directory or one of its parents."""
    env = os.environ.get(MODEL_ENV)
    if env:
        return Path(env)
    candidates = [Path(__file__).resolve().parents[1] / MODEL_REL]
    cwd = Path.cwd().resolve()
    candidates += [d / MODEL_REL for d in (cwd, *cwd.parents)]
    for c in candidates:
        if (c / "model.json").is_file():
            return c
    return candidates[0]


def _points(text: str) -> list[float]:
    try:
        pts = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--points must be comma-separated numbers, got {text!r}") from None
    if not pts or any(not (0.0 < p < 1.0) or not math.isfinite(p) for p in pts):
        raise argparse.ArgumentTypeError(f"--points must be fractions in (0, 1), got {text!r}")
    return pts


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1): {text!r}")
    return v


def _threshold(text: str) -> float:
    v = _fraction(text)
    if v <= 0.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1): {text!r}")
    return v


def _in_range(cast: type[int] | type[float], lo: float, hi: float, what: str) -> Callable[[str], Any]:
    """An argparse type: ``cast(text)`` within [lo, hi], else a message naming ``what``."""

    def parse(text: str) -> Any:
        try:
            v = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if cast is int else 'a number'}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{text!r}: {what} must be between {lo:g} and {hi:g}")
        return v

    return parse


_band = _in_range(float, 0.0, 5.0, "the EOL band (in sigmas)")
_folds = _in_range(int, 2, 50, "the number of folds")
_margin = _in_range(float, 0.0, 10.0, "the fallback margin")
_spacing = _in_range(float, 1.0, 1e6, "the input window's cycles per point")
_thin = _in_range(int, 1, 1000, "the thinning (keep every K-th measurement)")
_fallback_points = _in_range(int, 6, 10_000, "the fallback's minimum history")


#: the --fallback-* options of crossval --by dataset and the FallbackSpec field each replaces (not given: keep)
FALLBACK_ARGS = {
    "fallback_hindcast": "enabled",
    "fallback_margin": "margin",
    "fallback_max_spacing": "max_window_spacing",
    "fallback_min_points": "min_points",
}


def _max_spacing(text: str) -> float | None:
    """``off`` (None) or cycles per measured point ≥ 1 (the fallback's sparse-input guard)."""
    return None if text.strip().lower() == "off" else float(_spacing(text))


def _on_off(text: str) -> bool:
    if text.strip().lower() not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")
    return text.strip().lower() == "on"


def _usage(message: str) -> int:
    print(f"battwin ml: {message}", file=sys.stderr)
    return EXIT_USAGE


def _setup_logging(verbose: bool) -> None:
    if not logging.getLogger().handlers:
        level = logging.INFO if verbose else logging.WARNING
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _read_dirs(dirs: list[Path], limit: int | None = None) -> list[Any]:
    from ml.train import read_training_cells

    return read_training_cells(dirs, limit)


def cmd_train(args: argparse.Namespace) -> int:
    from ml.data import CellFileError
    from ml.export import ExportError
    from ml.metrics import summary_table
    from ml.train import train
    from ml.train_config import TrainConfig

    _setup_logging(args.verbose)
    overrides: dict[str, Any] = {}
    if args.config is not None:
        try:
            overrides = json.loads(Path(args.config).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            return _usage(f"--config {args.config}: {exc}")
        if not isinstance(overrides, dict):
            return _usage(f"--config {args.config}: must hold a JSON object of training options")
    for key in ("epochs", "seed", "test_frac", "val_frac", "jobs"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    try:
        cfg = TrainConfig.tiny_preset(**overrides) if args.tiny else TrainConfig(**overrides)
    except ValidationError as exc:
        return _usage(f"bad training option: {exc}")
    try:
        cells = _read_dirs(args.cells, cfg.max_cells_per_dataset)
    except (CellFileError, ValueError) as exc:
        return _usage(str(exc))
    report = args.report if args.report is not None else args.out.parent / f"{args.out.name}-report"
    try:
        result = train(args.cells, args.out, cfg, report_dir=report, cells=cells)
    except ExportError as exc:
        print(f"battwin ml train: export failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except ValueError as exc:
        return _usage(str(exc))
    mf = result.model_file
    print(
        f"model {mf.version}: {args.out} ({mf.quantization}, {mf.tflite_bytes} bytes, "
        f"trained in {mf.provenance.training_time_s:.1f} s)"
    )
    print(f"held-out cells: {mf.provenance.test_cells}")
    if result.metrics:
        print(summary_table(result.metrics))
    print(f"report: {report}")
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    from device_agent.health.hybrid import ModelLoadError, load_hybrid_model
    from ml.data import CellFileError
    from ml.evaluate import evaluate
    from ml.metrics import summary_table

    _setup_logging(args.verbose)
    model_dir = args.model if args.model is not None else default_model_dir()
    try:
        cells = _read_dirs(args.cells)
    except (CellFileError, ValueError) as exc:
        return _usage(str(exc))
    try:
        model = load_hybrid_model(model_dir)
    except ModelLoadError as exc:
        return _usage(f"model {model_dir}: {exc}")
    if args.eol_band is not None:  # e.g. 0: score the mean forecast's own crossing instead of the model's band
        model.spec = model.spec.model_copy(update={"eol_band_sigmas": args.eol_band})
    metrics = evaluate(
        cells,
        model,
        args.out,
        points=args.points,
        threshold=args.eol,
        max_cycles=args.max_cycles,
        plots=not args.no_plots,
        progress=not args.quiet,
    )
    if not args.quiet:
        print(f"model {model.version} ({model_dir})")
        print(summary_table(metrics))
        print(f"wrote {args.out / 'predictions.csv'}, {args.out / 'metrics.json'} and plots")
    return EXIT_OK


def cmd_crossval(args: argparse.Namespace) -> int:
    from ml.crossval import crossval
    from ml.data import CellFileError
    from ml.export import ExportError
    from ml.lodo import lodo
    from ml.metrics import summary_table
    from ml.train_config import TrainConfig

    _setup_logging(args.verbose)
    if args.by == "dataset" and args.dataset is not None:
        return _usage("--by dataset holds out every dataset in turn; --dataset is for --by cell")
    if args.by == "cell" and args.dataset is None:
        return _usage("--by cell (the default) needs --dataset NAME (or use --by dataset)")
    if args.by == "cell" and (
        args.models_from is not None or any(hasattr(args, a) for a in FALLBACK_ARGS) or args.thin_held_out != 1
    ):
        return _usage("--models-from, --thin-held-out and --fallback-* are for --by dataset")
    overrides = {k: v for k in ("epochs", "seed") if (v := getattr(args, k)) is not None}
    try:
        cfg = TrainConfig.tiny_preset(**overrides) if args.tiny else TrainConfig(**overrides)
        cells = _read_dirs(args.cells, cfg.max_cells_per_dataset)
        if args.by == "dataset":
            fallback: dict[str, Any] = {}
            for arg, name in FALLBACK_ARGS.items():
                if hasattr(args, arg):  # given (argparse.SUPPRESS: absent otherwise)
                    fallback[name] = getattr(args, arg)
            lresult = lodo(
                cells, cfg, args.out, models_from=args.models_from, fallback=fallback, thin=args.thin_held_out
            )
        else:
            result = crossval(cells, args.dataset, args.folds, cfg, args.out)
    except ValidationError as exc:
        return _usage(f"bad training option: {exc}")
    except ExportError as exc:
        print(f"battwin ml crossval: export failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except (CellFileError, ValueError) as exc:
        return _usage(str(exc))
    if args.by == "dataset":
        for f in lresult.folds:
            print(
                f"held out {f['held_out']}: {len(f['test_cells'])} scorable cells scored "
                f"(model {f['model_version']}, EOL band {f['eol_band_sigmas']:g})"
            )
        print(lresult.table)
        print(
            f"wrote {args.out / 'table.md'}, {args.out / 'metrics.json'}, {args.out / 'predictions.csv'}, "
            f"{args.out / 'folds.json'}"
        )
        return EXIT_OK
    for f in result.folds:
        print(f"fold {f['fold']}: held out {', '.join(f['test_cells'])} (model {f['model_version']})")
    print(summary_table(result.metrics))
    print(f"wrote {args.out / 'predictions.csv'}, {args.out / 'metrics.json'}, {args.out / 'folds.json'}")
    return EXIT_OK


def register(subparsers: Any) -> None:
    """Add ``ml`` and its subcommands to the ``battwin`` parser (the ``battwin.cli`` entry point)."""
    ml = subparsers.add_parser("ml", help="train and evaluate the hybrid state-of-health model")
    sub = ml.add_subparsers(dest="ml_command", required=True)

    p = sub.add_parser("train", help="train, export (TFLite + model.json) and evaluate on held-out cells")
    p.add_argument(
        "--cells",
        type=Path,
        action="append",
        required=True,
        metavar="DIR",
        help="a folder of per-cycle cell CSVs (repeatable; the folder name is the dataset)",
    )
    p.add_argument("--out", type=Path, required=True, metavar="MODEL_DIR", help="where model.tflite + model.json go")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--test-frac",
        type=_fraction,
        default=None,
        dest="test_frac",
        help="fraction of each dataset's cells held out for the test report (default 0.25)",
    )
    p.add_argument(
        "--val-frac",
        type=_fraction,
        default=None,
        dest="val_frac",
        help="fraction of the remaining cells for early stopping (default 0.15)",
    )
    p.add_argument("--jobs", type=int, default=None, help="processes for data preparation (default 2)")
    p.add_argument("--tiny", action="store_true", help="a CI-sized run (few cells, small network, few epochs)")
    p.add_argument("--config", type=Path, default=None, help="JSON object of further training options")
    p.add_argument("--report", type=Path, default=None, help="report folder (default MODEL_DIR-report beside it)")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="persistence vs physics vs hybrid on folders of cell CSVs")
    p.add_argument(
        "--cells",
        type=Path,
        action="append",
        required=True,
        metavar="DIR",
        help="a folder of per-cycle cell CSVs (repeatable; the folder name is the dataset)",
    )
    p.add_argument(
        "--model",
        type=Path,
        default=None,
        metavar="MODEL_DIR",
        help=f"model folder (default: the shipped model, {MODEL_REL})",
    )
    p.add_argument("--out", type=Path, required=True, metavar="OUT_DIR")
    p.add_argument(
        "--points",
        type=_points,
        default=[0.25, 0.5, 0.75],
        help="prediction points as fractions of each cell's valid rows (default 0.25,0.5,0.75)",
    )
    p.add_argument("--eol", type=_threshold, default=0.8, help="end-of-life SoH threshold (default 0.8)")
    p.add_argument(
        "--max-cycles",
        type=int,
        default=5000,
        dest="max_cycles",
        help="how far ahead end of life is searched (default 5000 cycles)",
    )
    p.add_argument(
        "--eol-band",
        type=_band,
        default=None,
        dest="eol_band",
        metavar="SIGMAS",
        help="override the model's EOL band (in the cell's scatter; 0 = the mean forecast's crossing)",
    )
    p.add_argument("--no-plots", action="store_true", dest="no_plots")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "crossval",
        help="cross-validation: leave one dataset out (--by dataset) or k folds of one "
        "dataset's scorable cells (--by cell --dataset NAME)",
    )
    p.add_argument(
        "--cells",
        type=Path,
        action="append",
        required=True,
        metavar="DIR",
        help="a folder of per-cycle cell CSVs (repeatable; the folder name is the dataset)",
    )
    p.add_argument(
        "--by",
        choices=("cell", "dataset"),
        default="cell",
        help="dataset: hold out each whole dataset in turn, train on the others (table.md); "
        "cell (default): k folds of --dataset's cells",
    )
    p.add_argument("--dataset", default=None, help="--by cell: the dataset (folder name) whose cells are folded")
    p.add_argument("--folds", type=_folds, default=4, help="--by cell: number of folds (default 4)")
    p.add_argument("--out", type=Path, required=True, metavar="OUT_DIR")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--tiny", action="store_true", help="CI-sized models (few cells, small network, few epochs)")
    p.add_argument(
        "--models-from",
        type=Path,
        default=None,
        dest="models_from",
        metavar="LODO_DIR",
        help="--by dataset: re-score the fold models an earlier run saved in LODO_DIR/<dataset>/model "
        "instead of training",
    )
    keep = argparse.SUPPRESS  # a --fallback-* option not given leaves the fold model's own rule
    p.add_argument(
        "--fallback-hindcast",
        type=_on_off,
        default=keep,
        dest="fallback_hindcast",
        metavar="on|off",
        help="--by dataset: the device's hindcast fallback to the fade law on every history (on) or on "
        "sparse ones only (off)",
    )
    p.add_argument(
        "--fallback-margin",
        type=_margin,
        default=keep,
        dest="fallback_margin",
        metavar="MARGIN",
        help="--by dataset: the hindcast falls back when the network's error is > (1 + MARGIN) x the fade law's",
    )
    p.add_argument(
        "--fallback-max-spacing",
        type=_max_spacing,
        default=keep,
        dest="fallback_max_spacing",
        metavar="CYCLES|off",
        help="--by dataset: the hindcast decides for input windows sparser than CYCLES per measured point (off: never)",
    )
    p.add_argument(
        "--fallback-min-points",
        type=_fallback_points,
        default=keep,
        dest="fallback_min_points",
        metavar="N",
        help="--by dataset: the history length from which the fallback decides",
    )
    p.add_argument(
        "--thin-held-out",
        type=_thin,
        default=1,
        dest="thin_held_out",
        metavar="K",
        help="--by dataset: score the held-out cells as a device measuring capacity on every K-th "
        "discharge only would see them (first 5, then every K-th; default 1: all)",
    )
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=cmd_crossval)


def main(argv: list[str] | None = None) -> int:
    """Standalone use: ``python -m ml.cli ml train …`` (the same commands as ``battwin ml …``)."""
    parser = argparse.ArgumentParser(prog="battwin")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
