"""``python -m components.build`` (make gg-build) and the GDK custom build: the output layout GDK and
``greengrass-cli deployment create --recipeDir … --artifactDir …`` expect."""

from __future__ import annotations

import json
import os
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
    assert text.count("Lifecycle:") == 1  # one global lifecycle, not a copy per manifest
    assert (out / "artifacts" / MODEL / MODEL_VERSION / "model.tflite").read_bytes() == (
        model / "model.tflite"
    ).read_bytes()


def test_agent_zip_content_and_reproducibility(tmp_path):
    first = build.build_agent_zip(_mkdir(tmp_path / "a"))
    second = build.build_agent_zip(_mkdir(tmp_path / "b"))
    assert first.read_bytes() == second.read_bytes()  # same sources, same artifact digest
    with zipfile.ZipFile(first) as zf:
        names = zf.namelist()
        locks = {lock: zf.read(lock) for lock in build.DEVICE_LOCKS}
    assert names == sorted(names)
    assert "device_agent/cli.py" in names and "device_agent/greengrass/ipc_transport.py" in names
    assert "hardware/source.py" in names and "hardware/modbus/maps/generic_pack.yaml" in names
    assert not any("__pycache__" in n or n.endswith(".pyc") or n.startswith("tests/") for n in names)
    # the locked device requirements, as in the repo, for device_agent/bootstrap.py (no unpinned requirements.txt)
    assert "requirements.txt" not in names
    assert set(locks) == {"requirements/device.lock", "requirements/device-32bit.lock"}
    for lock, data in locks.items():
        assert data == (REPO / lock).read_bytes()
    assert b"ai-edge-litert==" in locks["requirements/device.lock"]
    assert b"ai-edge-litert" not in locks["requirements/device-32bit.lock"]  # no armv7 wheel
    assert b"amqtt" not in locks["requirements/device.lock"]  # the demo's broker stays off the device


def test_model_build_checks_its_inputs(tmp_path):
    with pytest.raises(build.BuildError, match="missing"):
        build.build_model_artifacts(_mkdir(tmp_path / "out1"), _mkdir(tmp_path / "empty"))
    with pytest.raises(build.BuildError, match="tflite_sha256"):
        build.build_model_artifacts(_mkdir(tmp_path / "out2"), fake_model(tmp_path / "bad", corrupt=True))
    assert build.main(["--component", MODEL, "--out", str(tmp_path / "o"), "--model-dir", str(tmp_path / "empty")]) == 1
    assert not (tmp_path / "o" / "artifacts" / MODEL / MODEL_VERSION).exists()  # nothing half-built is left


def _gdk_recipe_file(project: Path) -> Path:
    """GDK 1.6.2's own lookup (gdk/common/config/GDKProject.py ``_get_recipe_file``), restated: glob
    ``recipe.json`` and ``recipe.yaml`` in the project folder, exactly one of them, ``.resolve()``d; publish
    then reads ``greengrass-build/recipes/<that file's name>`` (PublishRecipeTransformer.transform)."""
    json_file = list(project.glob("recipe.json"))
    yaml_file = list(project.glob("recipe.yaml"))
    assert bool(json_file) != bool(yaml_file), "GDK: PROJECT_RECIPE_FILE_NOT_FOUND"
    return (json_file + yaml_file)[0].resolve()


@pytest.mark.parametrize(
    "project", [REPO, REPO / "components" / AGENT, REPO / "components" / MODEL], ids=lambda p: p.name
)
def test_gdk_build_writes_the_recipe_gdk_publish_reads(project, tmp_path):
    """`gdk component build` then `gdk component publish` in each of the three GDK projects: the custom
    command, run as GDK runs it (from the project folder), leaves the recipe where publish looks for it."""
    work = tmp_path / "work"
    shutil.copytree(
        REPO, work, ignore=shutil.ignore_patterns(".git", ".venv", "greengrass-build", "__pycache__"), symlinks=True
    )
    folder = work / project.relative_to(REPO)
    config = json.loads((folder / "gdk-config.json").read_text())
    ((name, settings),) = config["component"].items()
    command = settings["build"]["custom_build_command"]
    command = [sys.executable if part == "python3" else part for part in command]
    model = fake_model(tmp_path / "model")
    env = {**os.environ, "PYTHONPATH": str(work)}
    extra = ["--model-dir", str(model)] if name == MODEL else []
    result = subprocess.run(
        [*command, *extra], cwd=folder, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    built = folder / "greengrass-build" / "recipes" / _gdk_recipe_file(folder).name
    assert built.name == f"{name}.yaml"  # recipe.yaml links to recipes/<name>.yaml
    recipe = load_yaml(built)
    assert recipe["ComponentName"] == name and recipe["ComponentVersion"] == settings["version"]
    artifacts = folder / "greengrass-build" / "artifacts" / name / settings["version"]
    for manifest in recipe["Manifests"]:
        for artifact in manifest["Artifacts"]:
            assert (artifacts / artifact["URI"].rsplit("/", 1)[-1]).is_file()  # what publish uploads
    assert len(built.read_bytes()) < 16000  # GDK's recipe size limit


def test_gdk_recipe_file_name_follows_gdk(tmp_path):
    project = tmp_path / "p"
    project.mkdir()
    with pytest.raises(build.BuildError, match="exactly one"):
        build.gdk_recipe_file_name(project)
    target = tmp_path / "recipes" / "com.example.Thing.yaml"
    target.parent.mkdir()
    target.write_text("ComponentName: com.example.Thing\n")
    (project / "recipe.yaml").symlink_to(target)
    assert build.gdk_recipe_file_name(project) == _gdk_recipe_file(project).name == "com.example.Thing.yaml"
    (project / "recipe.json").write_text("{}")
    with pytest.raises(build.BuildError, match="exactly one"):  # GDK refuses both, too
        build.gdk_recipe_file_name(project)
    (project / "recipe.yaml").unlink()
    assert build.gdk_recipe_file_name(project) == _gdk_recipe_file(project).name == "recipe.json"


def test_gdk_custom_build_from_a_project_folder(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    config = json.loads((REPO / "components" / MODEL / "gdk-config.json").read_text())
    config["component"][MODEL]["version"] = "1.2.3"  # GDK's version wins over the recipe's
    config["component"][MODEL]["author"] = "Battwin Test"
    (project / "gdk-config.json").write_text(json.dumps(config))
    (project / "recipe.yaml").symlink_to(REPO / "recipes" / f"{MODEL}.yaml")
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
        f"recipes/{MODEL}.yaml",  # the name `gdk component publish` reads back: the link target's
        f"artifacts/{MODEL}/1.2.3/model.tflite",
        f"artifacts/{MODEL}/1.2.3/model.json",
    }
    recipe = load_yaml(out / "recipes" / f"{MODEL}.yaml")
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
