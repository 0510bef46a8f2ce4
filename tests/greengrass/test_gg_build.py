"""``python -m components.build`` (make gg-build) and the GDK custom build: the output layout GDK and
``greengrass-cli deployment create --recipeDir … --artifactDir …`` expect."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from components import build
from tests.greengrass.gg_support import AGENT, MODEL, fake_model, load_yaml
from tests.support import REPO

AGENT_VERSION = load_yaml(REPO / "recipes" / f"{AGENT}.yaml")["ComponentVersion"]
MODEL_VERSION = load_yaml(REPO / "recipes" / f"{MODEL}.yaml")["ComponentVersion"]


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_module_builds_the_local_deployment_layout(tmp_path):
    out = tmp_path / "greengrass-build"
    model = fake_model(tmp_path / "model")
    result = subprocess.run(
        [sys.executable, "-m", "components.build", "--out", str(out), "--model-dir", str(model)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert _files(out) == {
        f"artifacts/{AGENT}/{AGENT_VERSION}/battwin-agent.zip",
        f"artifacts/{MODEL}/{MODEL_VERSION}/model.tflite",
        f"artifacts/{MODEL}/{MODEL_VERSION}/model.json",
        f"recipes/{AGENT}-{AGENT_VERSION}.yaml",
        f"recipes/{MODEL}-{MODEL_VERSION}.yaml",
    }
    recipe = load_yaml(out / "recipes" / f"{AGENT}-{AGENT_VERSION}.yaml")
    assert recipe["ComponentVersion"] == AGENT_VERSION
    uris = {a["URI"] for m in recipe["Manifests"] for a in m["Artifacts"]}
    assert uris == {"s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/battwin-agent.zip"}
    text = (out / "recipes" / f"{AGENT}-{AGENT_VERSION}.yaml").read_text()
    assert not re.search(r"(^|\s)[&*]\w", text.replace("&&", "").replace(">&2", "")), "YAML anchors/aliases left"
    assert text.count("Lifecycle:") == 3  # expanded in every manifest
    assert (out / "artifacts" / MODEL / MODEL_VERSION / "model.tflite").read_bytes() == (
        model / "model.tflite"
    ).read_bytes()


def test_agent_zip_content_and_reproducibility(tmp_path):
    first = build.build_agent_zip(_mkdir(tmp_path / "a"))
    second = build.build_agent_zip(_mkdir(tmp_path / "b"))
    assert first.read_bytes() == second.read_bytes()  # same sources, same artifact digest
    with zipfile.ZipFile(first) as zf:
        names = zf.namelist()
        requirements = zf.read("requirements.txt").decode().splitlines()
    assert names == sorted(names)
    assert "device_agent/cli.py" in names and "device_agent/greengrass/ipc_transport.py" in names
    assert "hardware/source.py" in names and "hardware/modbus/maps/generic_pack.yaml" in names
    assert not any("__pycache__" in n or n.endswith(".pyc") or n.startswith("tests/") for n in names)
    assert any(r.startswith("awsiotsdk") for r in requirements) and any(r.startswith("pydantic") for r in requirements)
    assert not any(r.startswith("amqtt") for r in requirements)  # the demo's broker stays off the device
    assert requirements == build.agent_requirements()


def test_model_build_checks_its_inputs(tmp_path):
    with pytest.raises(build.BuildError, match="missing"):
        build.build_model_artifacts(_mkdir(tmp_path / "out1"), _mkdir(tmp_path / "empty"))
    with pytest.raises(build.BuildError, match="tflite_sha256"):
        build.build_model_artifacts(_mkdir(tmp_path / "out2"), fake_model(tmp_path / "bad", corrupt=True))
    assert build.main(["--component", MODEL, "--out", str(tmp_path / "o"), "--model-dir", str(tmp_path / "empty")]) == 1
    assert not (tmp_path / "o" / "artifacts" / MODEL / MODEL_VERSION).exists()  # nothing half-built is left


def test_gdk_custom_build_from_a_project_folder(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    config = json.loads((REPO / "components" / MODEL / "gdk-config.json").read_text())
    config["component"][MODEL]["version"] = "1.2.3"  # GDK's version wins over the recipe's
    config["component"][MODEL]["author"] = "Battwin Test"
    (project / "gdk-config.json").write_text(json.dumps(config))
    model = fake_model(tmp_path / "model")
    # what `gdk component build` runs: the custom command, as a plain script, from the project folder
    result = subprocess.run(
        [sys.executable, str(REPO / "components" / "build.py"), "--gdk", "--model-dir", str(model)],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = project / "greengrass-build"
    assert _files(out) == {
        "recipes/recipe.yaml",  # the name `gdk component publish` reads back
        f"artifacts/{MODEL}/1.2.3/model.tflite",
        f"artifacts/{MODEL}/1.2.3/model.json",
    }
    recipe = load_yaml(out / "recipes" / "recipe.yaml")
    assert recipe["ComponentVersion"] == "1.2.3" and recipe["ComponentPublisher"] == "Battwin Test"


def test_build_refuses_inconsistent_inputs(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "recipes", repo / "recipes")
    recipe = load_yaml(repo / "recipes" / f"{MODEL}.yaml")
    recipe["Manifests"][0]["Artifacts"].append({"URI": "s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/extra.bin"})
    (repo / "recipes" / f"{MODEL}.yaml").write_text(json.dumps(recipe))  # JSON is YAML
    with pytest.raises(build.BuildError, match="extra.bin"):
        build.build_component(MODEL, tmp_path / "out", repo=repo, model_dir=fake_model(tmp_path / "m"))
    with pytest.raises(build.BuildError, match="NEXT_PATCH"):
        build.build_component(MODEL, tmp_path / "out", repo=repo, version="NEXT_PATCH")


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
