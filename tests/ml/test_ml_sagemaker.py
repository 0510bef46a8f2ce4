"""The SageMaker script-mode entry point, run locally with the SM_* variables set (tiny run)."""

from __future__ import annotations

import json

import pytest

from device_agent.health.hybrid import load_hybrid_model
from ml.sagemaker_entry import check_runtime, dataset_dirs, main, parse_hyperparameters
from tests.ml.ml_support import copy_cells, need_cells, need_tensorflow


def test_hyperparameters_from_cli_and_sm_hps():
    hps = parse_hyperparameters(
        [
            "--epochs",
            "3",
            "--tiny",
            "True",
            "--test-frac=0.3",
            "--model_dir",
            "s3://b/k",
            "--dataset_weights",
            '{"nasa": 2}',
            "--verbose",
        ],
        json.dumps({"epochs": 9, "seed": 4}),
    )
    assert hps == {
        "epochs": 3,
        "seed": 4,
        "tiny": True,
        "test_frac": 0.3,
        "dataset_weights": {"nasa": 2},
        "verbose": True,
    }
    with pytest.raises(ValueError, match="unexpected argument"):
        parse_hyperparameters(["stray"], None)


def test_channel_layouts(tmp_path):
    need_cells()
    with pytest.raises(FileNotFoundError):
        dataset_dirs(tmp_path / "nope")
    ch = tmp_path / "train"
    ch.mkdir()
    with pytest.raises(FileNotFoundError, match="no <dataset>"):
        dataset_dirs(ch)
    copy_cells(ch, "nasa", ("B0025",))
    copy_cells(ch, "xjtu", ("XJTU_2C_battery-1",))
    (ch / "manifest.json").write_text("{}")
    assert [d.name for d in dataset_dirs(ch)] == ["nasa", "xjtu"]
    flat = copy_cells(tmp_path, "nasa", ("B0025",), folder="flat")
    assert dataset_dirs(flat) == [flat]


@pytest.mark.slow
def test_sagemaker_entry_tiny_run(tmp_path, monkeypatch, capsys, tiny_data):
    need_tensorflow()
    nasa, xjtu = tiny_data
    channel = tmp_path / "input" / "data" / "train"
    copy_cells(channel, "nasa", tuple(p.stem for p in sorted(nasa.glob("*.csv"))[:6]))
    copy_cells(channel, "xjtu", tuple(p.stem for p in sorted(xjtu.glob("*.csv"))[:4]))
    model_dir = tmp_path / "model"
    output_dir = tmp_path / "output" / "data"
    monkeypatch.setenv("SM_CHANNEL_TRAIN", str(channel))
    monkeypatch.setenv("SM_MODEL_DIR", str(model_dir))
    monkeypatch.setenv("SM_OUTPUT_DATA_DIR", str(output_dir))
    monkeypatch.setenv("SM_HPS", json.dumps({"epochs": 2, "seed": 1}))
    rc = main(["--tiny", "true", "--samples_per_dataset", "60", "--model_dir", "s3://bucket/job/model"])
    assert rc == 0
    m = load_hybrid_model(model_dir)
    doc = json.loads((model_dir / "model.json").read_text())
    assert doc["provenance"]["datasets"] == ["nasa", "xjtu"]
    assert doc["provenance"]["seed"] == 1 and doc["provenance"]["config"]["epochs"] == 2
    assert doc["provenance"]["config"]["samples_per_dataset"] == 60
    assert m.version == doc["version"]
    assert (output_dir / "metrics.json").is_file() and (output_dir / "predictions.csv").is_file()
    out = capsys.readouterr().out
    assert "held_out_nasa_hybrid_rmse_pp=" in out and f"model_version={m.version}" in out


@pytest.mark.parametrize(
    ("python", "tensorflow", "refused"),
    [
        ((3, 10), "2.18.0", "Python 3.10 (needs >= 3.11) and TensorFlow 2.18.0 (needs >= 2.19)"),
        ((3, 10), "2.19.0", "Python 3.10 (needs >= 3.11)"),
        ((3, 12), "2.16.1", "TensorFlow 2.16.1 (needs >= 2.19)"),
    ],
)
def test_trainer_refuses_an_image_too_old_for_the_code(python, tensorflow, refused):
    with pytest.raises(SystemExit, match="tensorflow-training:2.19.0-cpu-py312") as exc:
        check_runtime(python, tensorflow)
    assert refused in str(exc.value)


def test_trainer_runs_on_the_pinned_image_and_newer():
    for python, tensorflow in (((3, 12), "2.19.0"), ((3, 12), "2.21.0"), ((3, 13), "2.21.0")):
        check_runtime(python, tensorflow)
    check_runtime()  # this environment (Python >= 3.11, tensorflow-cpu 2.21 when the ml extra is installed)
