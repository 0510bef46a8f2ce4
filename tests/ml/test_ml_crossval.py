"""``battwin ml crossval``: every scorable cell of the dataset is scored once, by a model that never saw it."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from device_agent.health.model_files import ModelFile
from ml.cli import EXIT_OK, EXIT_USAGE, main
from ml.crossval import fold_splits
from ml.data import read_cells_dir, scorability
from ml.train_config import TrainConfig
from tests.ml.ml_support import need_tensorflow

pytestmark = pytest.mark.slow


def test_fold_splits_hold_out_each_scorable_cell_once(tiny_data):
    cells = read_cells_dir(tiny_data[0]) + read_cells_dir(tiny_data[1])
    cfg = TrainConfig()
    splits = fold_splits(cells, "nasa", 3, cfg)
    scorable = {c.cell for c in cells if c.dataset == "nasa" and scorability(c).ok}
    held = [n for s in splits for n in s.test["nasa"]]
    assert sorted(held) == sorted(scorable)  # each exactly once
    for s in splits:
        test = set(s.test["nasa"])
        assert not test & set(s.train["nasa"]) and not test & set(s.val["nasa"])
        assert {"B0042", "B0050"} <= set(s.train["nasa"])  # unscorable cells always train
        assert set(s.test) == {"nasa"}  # the other dataset is not scored
    assert fold_splits(cells, "nasa", 3, cfg) == splits  # seeded
    with pytest.raises(ValueError, match="fewer than"):
        fold_splits(cells, "nasa", 50, cfg)


def test_crossval_cli_scores_every_scorable_cell_out_of_fold(tiny_data, tmp_path, capsys):
    need_tensorflow()
    out = tmp_path / "cv"
    rc = main(["ml", "crossval", "--cells", str(tiny_data[0]), "--cells", str(tiny_data[1]), "--dataset", "nasa",
               "--folds", "2", "--out", str(out), "--tiny", "--seed", "3"])
    assert rc == EXIT_OK
    folds = json.loads((out / "folds.json").read_text())
    assert len(folds) == 2
    with (out / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    scored = {r["cell"] for r in rows}
    assert scored == {c for f in folds for c in f["test_cells"]}
    for f in folds:  # the model that scored a fold never trained or validated on it
        mf = ModelFile.model_validate_json((out / f"fold-{f['fold']}" / "model" / "model.json").read_text())
        assert not set(f["test_cells"]) & set(mf.provenance.train_cells["nasa"])
        assert not set(f["test_cells"]) & set(mf.provenance.val_cells["nasa"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["crossval"]["k"] == 2 and set(metrics["datasets"]) == {"nasa"}
    # the EOL rules are compared on the same forecasts: the device's own rule gives the hybrid's EOL
    rules = json.loads((out / "eol_rules.json").read_text())
    hybrid_eol = metrics["datasets"]["nasa"]["methods"]["hybrid"]["all"]["eol"]["cells"]
    shipped = {(c["cell"], c["p"]): c["eol_pred"] for c in hybrid_eol}
    assert rules["points"] and {(r["cell"], r["p"]) for r in rules["points"]} == set(shipped)
    for r in rules["points"]:
        assert r["eol_pred"]["hybrid_model_band"] == pytest.approx(shipped[(r["cell"], r["p"])])
    assert {"physics", "prior_band_0", "first_passage_prior"} <= set(rules["rules"])
    assert "fold 0: held out" in capsys.readouterr().out

    assert main(["ml", "crossval", "--cells", str(tiny_data[0]), "--dataset", "mit", "--out", str(tmp_path / "x"),
                 "--tiny"]) == EXIT_USAGE
    assert "no cells of dataset 'mit'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["ml", "crossval", "--cells", str(tiny_data[0]), "--dataset", "nasa", "--folds", "1",
              "--out", str(tmp_path / "y")])


def test_first_passage_fires_earlier_the_more_measurements_scatter_and_never_far_above():
    from ml.eol_rules import first_passage_eol

    cycles = np.arange(1.0, 401.0)
    line = 1.0 - 0.001 * cycles  # crosses 0.8 at cycle 200
    tight = first_passage_eol(cycles, line, 0.0, 1.0, 0.001, 0.8)
    loose = first_passage_eol(cycles, line, 0.0, 1.0, 0.03, 0.8)
    assert tight == pytest.approx(200.0, abs=2.0)
    assert loose is not None and 150.0 < loose < tight  # a reading below comes before the trend crosses
    assert first_passage_eol(cycles, np.full(400, 0.95), 0.0, 1.0, 0.01, 0.8) is None  # 15 sigma above
