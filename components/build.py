"""Build the Greengrass components: artifacts and recipes, laid out as the GDK CLI lays them out.

Two modes:

* ``python -m components.build`` (what ``make gg-build`` runs): every component into ``greengrass-build/``
  at the repository root, for a local deployment with ``greengrass-cli deployment create``::

      greengrass-build/artifacts/<name>/<version>/<files>
      greengrass-build/recipes/<name>-<version>.yaml

* ``--gdk`` (what the ``custom_build_command`` of a ``gdk-config.json`` runs, from that project folder):
  the project's one component into ``./greengrass-build/``, the recipe written under the name
  ``gdk component publish`` reads back (``gdk_recipe_file_name``): GDK 1.6 finds the project's
  ``recipe.json`` or ``recipe.yaml``, follows a symlink and takes the target's file name — here
  ``greengrass-build/recipes/com.battwin.Agent.yaml``, as ``recipe.yaml`` links to ``recipes/com.battwin.Agent.yaml``.
  Publish then writes ``<name>-<version>.yaml`` with the real bucket.

In both, artifact URIs are GDK's placeholders ``s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/<file>``
and every URI must name a file that was built. The agent's artifact is ``battwin-agent.zip`` (the
``device_agent`` and ``hardware`` packages + the locked device requirements ``requirements/device.lock`` and
``requirements/device-32bit.lock`` that ``device_agent/bootstrap.py`` installs; reproducible: same sources,
same bytes);
the model's are ``model.tflite`` + ``model.json`` from ``device_agent/health/shipped_model/``, checked
against each other (the sha256 the model card states).

Runs on the standard library plus PyYAML, also as a plain script (``python3 ../build.py --gdk``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
AGENT = "com.battwin.Agent"
MODEL = "com.battwin.SohModel"
COMPONENTS = (AGENT, MODEL)
AGENT_ZIP = "battwin-agent.zip"
AGENT_PACKAGES = ("schema", "hardware", "device_agent")
PACKAGE_SUFFIXES = (".py", ".json", ".yaml", ".yml", ".toml", ".tflite")
PACKAGE_FILES = ("py.typed",)
#: the locked device requirements (64-bit Python with ai-edge-litert, 32-bit without), copied from the repo
DEVICE_LOCKS = ("requirements/device.lock", "requirements/device-32bit.lock")
#: the names GDK looks for in a project folder (GDKProject._get_recipe_file, GDK CLI 1.6)
GDK_RECIPE_NAMES = ("recipe.json", "recipe.yaml")
MODEL_FILES = ("model.tflite", "model.json")
URI_PREFIX = "s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/"
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
BUILD_DIR = "greengrass-build"


class BuildError(RuntimeError):
    """The component cannot be built (missing files, inconsistent versions ...)."""


# -- inputs ---------------------------------------------------------------------------------------
def load_yaml(path: Path) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise BuildError(f"{path}: expected a mapping")
    return data


def gdk_config(path: Path) -> tuple[str, dict[str, Any]]:
    """``(component name, its settings)`` from a gdk-config.json."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        ((name, settings),) = data["component"].items()
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        raise BuildError(f"{path}: not a one-component gdk-config.json ({exc})") from None
    if not isinstance(settings, dict):
        raise BuildError(f"{path}: component settings must be an object")
    return str(name), settings


def source_recipe(name: str, repo: Path = REPO) -> Path:
    path = repo / "recipes" / f"{name}.yaml"
    if not path.is_file():
        raise BuildError(f"no recipe {path}")
    return path


def gdk_recipe_file_name(project: Path) -> str:
    """The file name ``gdk component publish`` reads from ``greengrass-build/recipes/`` for ``project``.

    GDK's own rule: exactly one of ``recipe.json`` / ``recipe.yaml`` in the project folder, resolved (a symlink
    followed to its target), and that file's name."""
    found = [project / name for name in GDK_RECIPE_NAMES if (project / name).exists()]
    if len(found) != 1:
        raise BuildError(f"{project}: GDK needs exactly one of {' or '.join(GDK_RECIPE_NAMES)} (found {len(found)})")
    return found[0].resolve().name


# -- artifacts ------------------------------------------------------------------------------------
def _package_files(repo: Path) -> list[Path]:
    files = []
    for package in AGENT_PACKAGES:
        for path in sorted((repo / package).rglob("*")):
            if not path.is_file() or "__pycache__" in path.parts:
                continue
            if path.suffix in PACKAGE_SUFFIXES or path.name in PACKAGE_FILES:
                files.append(path)
    return files


def build_agent_zip(dest_dir: Path, repo: Path = REPO) -> Path:
    """``battwin-agent.zip``: reproducible (sorted entries, fixed timestamps and modes)."""
    dest = dest_dir / AGENT_ZIP
    missing = [lock for lock in DEVICE_LOCKS if not (repo / lock).is_file()]
    if missing:
        raise BuildError(f"{AGENT}: {', '.join(missing)} missing (make lock writes them)")
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        entries = [(p.relative_to(repo).as_posix(), p.read_bytes()) for p in _package_files(repo)]
        entries += [(lock, (repo / lock).read_bytes()) for lock in DEVICE_LOCKS]
        for arcname, data in sorted(entries):
            info = zipfile.ZipInfo(arcname, date_time=ZIP_DATE)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return dest


def build_model_artifacts(dest_dir: Path, model_dir: Path) -> list[Path]:
    missing = [f for f in MODEL_FILES if not (model_dir / f).is_file()]
    if missing:
        raise BuildError(
            f"{MODEL}: {', '.join(missing)} missing in {model_dir} "
            "(the trained model goes there: model.tflite + model.json)"
        )
    try:
        card = json.loads((model_dir / "model.json").read_text(encoding="utf-8"))
    except ValueError as exc:
        raise BuildError(f"{model_dir / 'model.json'} is not JSON: {exc}") from None
    digest = hashlib.sha256((model_dir / "model.tflite").read_bytes()).hexdigest()
    stated = card.get("tflite_sha256") if isinstance(card, dict) else None
    if stated != digest:
        raise BuildError(f"{model_dir}: model.json states tflite_sha256 {stated!r}, model.tflite has {digest}")
    out = []
    for name in MODEL_FILES:
        shutil.copyfile(model_dir / name, dest_dir / name)
        out.append(dest_dir / name)
    return out


# -- recipes --------------------------------------------------------------------------------------
def build_recipe(recipe: dict[str, Any], version: str, author: str | None, artifact_dir: Path) -> dict[str, Any]:
    """The recipe as GDK's build writes it: version (and publisher) from the project, GDK artifact URIs,
    each naming a built file."""
    out = json.loads(json.dumps(recipe))  # a deep copy with YAML aliases expanded
    out["ComponentVersion"] = version
    if author:
        out["ComponentPublisher"] = author
    for manifest in out.get("Manifests") or []:
        for artifact in manifest.get("Artifacts") or []:
            uri = str(artifact.get("URI", ""))
            if not uri.startswith("s3://"):
                continue
            filename = uri.rsplit("/", 1)[-1]
            if not (artifact_dir / filename).is_file():
                name = out.get("ComponentName")
                raise BuildError(f"{name}: artifact {filename} named in the recipe was not built")
            artifact["URI"] = URI_PREFIX + filename
    return out


def dump_recipe(recipe: dict[str, Any], path: Path) -> None:
    import yaml

    class _Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    def _str(dumper: yaml.SafeDumper, value: str) -> Any:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, _str)
    if path.suffix == ".json":  # GDK reads the built recipe by its extension
        path.write_text(json.dumps(recipe, indent=2) + "\n", encoding="utf-8")
        return
    text = yaml.dump(recipe, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000, allow_unicode=True)
    path.write_text("---\n" + text, encoding="utf-8")


# -- building -------------------------------------------------------------------------------------
def build_component(
    name: str,
    out: Path,
    *,
    repo: Path = REPO,
    version: str | None = None,
    author: str | None = None,
    recipe_filename: str | None = None,
    model_dir: Path | None = None,
) -> tuple[Path, list[Path]]:
    """Build one component into ``out`` (a greengrass-build folder); ``(recipe, artifacts)``."""
    recipe = load_yaml(source_recipe(name, repo))
    if recipe.get("ComponentName") != name:
        raise BuildError(f"recipes/{name}.yaml names component {recipe.get('ComponentName')!r}")
    version = version or str(recipe.get("ComponentVersion", ""))
    if not version or version == "NEXT_PATCH":
        raise BuildError(f"{name}: give an explicit semantic version (NEXT_PATCH is not supported by this build)")
    artifact_dir = out / "artifacts" / name / version
    if artifact_dir.exists():
        shutil.rmtree(artifact_dir)
    artifact_dir.mkdir(parents=True)
    try:
        if name == AGENT:
            artifacts = [build_agent_zip(artifact_dir, repo)]
        elif name == MODEL:
            artifacts = build_model_artifacts(
                artifact_dir, model_dir or repo / "device_agent" / "health" / "shipped_model"
            )
        else:
            raise BuildError(f"unknown component {name}; known: {', '.join(COMPONENTS)}")
        built = build_recipe(recipe, version, author, artifact_dir)
    except BaseException:
        shutil.rmtree(artifact_dir, ignore_errors=True)  # no half-built component left for a deployment to pick up
        raise
    recipes_dir = out / "recipes"
    recipes_dir.mkdir(parents=True, exist_ok=True)
    recipe_path = recipes_dir / (recipe_filename or f"{name}-{version}.yaml")
    dump_recipe(built, recipe_path)
    return recipe_path, artifacts


def check_versions(repo: Path = REPO) -> None:
    """Each component's gdk-config.json and recipe must agree on the version."""
    for name in COMPONENTS:
        gdk_path = repo / "components" / name / "gdk-config.json"
        gdk_name, settings = gdk_config(gdk_path)
        recipe_version = str(load_yaml(source_recipe(name, repo)).get("ComponentVersion"))
        if gdk_name != name or str(settings.get("version")) != recipe_version:
            raise BuildError(
                f"{gdk_path} ({gdk_name} {settings.get('version')}) disagrees with "
                f"recipes/{name}.yaml ({recipe_version})"
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="components.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--component", action="append", choices=COMPONENTS, help="build only this (repeatable)")
    parser.add_argument(
        "--out", type=Path, help=f"output folder (default: <repo>/{BUILD_DIR}, or ./{BUILD_DIR} with --gdk)"
    )
    parser.add_argument(
        "--model-dir", type=Path, help="model.tflite + model.json (default: device_agent/health/shipped_model/)"
    )
    parser.add_argument("--gdk", action="store_true", help="GDK custom build: the component of ./gdk-config.json")
    args = parser.parse_args(argv)
    try:
        if args.gdk:
            project = Path.cwd()
            name, settings = gdk_config(project / "gdk-config.json")
            out = args.out or project / BUILD_DIR
            recipe, artifacts = build_component(
                name,
                out,
                version=str(settings.get("version", "")),
                author=settings.get("author"),
                recipe_filename=gdk_recipe_file_name(project),
                model_dir=args.model_dir,
            )
            results = [(recipe, artifacts)]
        else:
            check_versions()
            out = args.out or REPO / BUILD_DIR
            results = [
                build_component(name, out, model_dir=args.model_dir) for name in (args.component or list(COMPONENTS))
            ]
    except (BuildError, OSError) as exc:
        print(f"components.build: {exc}", file=sys.stderr)
        return 1
    for recipe, artifacts in results:
        print(f"{recipe}")
        for artifact in artifacts:
            print(f"  {artifact} ({artifact.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
