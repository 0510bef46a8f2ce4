"""Recipes and GDK configurations checked against their documented formats (written here as JSON Schema)
and against what the agent needs: platforms, lifecycle, variables, least-privilege access, configuration."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from components.build import build_component, check_versions
from device_agent.config import AgentConfig
from device_agent.greengrass.emulator.recipe import RECIPE_VARIABLE, VARIABLE_LIKE, LifecycleContext, interpolate
from tests.greengrass.gg_support import AGENT, AGENT_RECIPE, MODEL, MODEL_RECIPE, THING, fake_model, load_yaml
from tests.support import REPO

SEMVER = r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$"
STEP_NAMES = ("Bootstrap", "Install", "Startup", "Run", "Shutdown", "Recover")

# The recipe format (RecipeFormatVersion 2020-01-25) as the Greengrass developer guide's recipe reference
# documents it, with its PascalCase keys.
_STEP = {
    "oneOf": [
        {"type": "string", "minLength": 1},
        {
            "type": "object",
            "required": ["Script"],
            "additionalProperties": False,
            "properties": {
                "Script": {"type": "string", "minLength": 1},
                "RequiresPrivilege": {"type": "boolean"},
                "Timeout": {"type": "integer", "minimum": 1},
                "Setenv": {"$ref": "#/$defs/setenv"},
                "Skipif": {"type": "string", "pattern": r"^(onpath|exists)\s+\S"},
            },
        },
    ]
}
RECIPE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["RecipeFormatVersion", "ComponentName", "ComponentVersion", "Manifests"],
    "additionalProperties": False,
    "$defs": {
        "setenv": {"type": "object", "additionalProperties": {"type": "string"}},
        "lifecycle": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"Setenv": {"$ref": "#/$defs/setenv"}, **{name: _STEP for name in STEP_NAMES}},
            "not": {"required": ["Startup", "Run"]},  # a component has one or the other
        },
        "permission": {"enum": ["NONE", "OWNER", "ALL"]},
    },
    "properties": {
        "RecipeFormatVersion": {"const": "2020-01-25"},
        "ComponentName": {"type": "string", "pattern": r"^[A-Za-z0-9._-]+$", "maxLength": 128},
        "ComponentVersion": {"type": "string", "pattern": SEMVER, "maxLength": 64},
        "ComponentDescription": {"type": "string"},
        "ComponentPublisher": {"type": "string"},
        "ComponentType": {
            "enum": [
                "aws.greengrass.generic",
                "aws.greengrass.lambda",
                "aws.greengrass.plugin",
                "aws.greengrass.nucleus",
            ]
        },
        "ComponentDependencies": {
            "type": "object",
            "propertyNames": {"pattern": r"^[A-Za-z0-9._-]+$"},
            "additionalProperties": {
                "type": "object",
                "required": ["VersionRequirement"],
                "additionalProperties": False,
                "properties": {
                    "VersionRequirement": {"type": "string", "minLength": 1},
                    "DependencyType": {"enum": ["SOFT", "HARD"]},
                },
            },
        },
        "ComponentConfiguration": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"DefaultConfiguration": {"type": "object"}},
        },
        "Lifecycle": {"type": "object"},
        "Manifests": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "Name": {"type": "string"},
                    "Platform": {"type": "object", "additionalProperties": {"type": "string"}},
                    "Lifecycle": {"$ref": "#/$defs/lifecycle"},
                    "Selections": {"type": "array", "items": {"type": "string"}},
                    "Artifacts": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["URI"],
                            "additionalProperties": False,
                            "properties": {
                                "URI": {"type": "string", "pattern": r"^(s3|docker|greengrass)://"},
                                "Unarchive": {"enum": ["ZIP", "NONE"]},
                                "Permission": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "Read": {"$ref": "#/$defs/permission"},
                                        "Execute": {"$ref": "#/$defs/permission"},
                                    },
                                },
                                "Digest": {"type": "string"},
                                "Algorithm": {"type": "string"},
                            },
                        },
                    },
                },
            },
        },
    },
}

# gdk-config.json as the GDK CLI documents it: one component per file, custom builds need a command.
GDK_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["component", "gdk_version"],
    "properties": {
        "gdk_version": {"type": "string", "pattern": SEMVER},
        "component": {
            "type": "object",
            "minProperties": 1,
            "maxProperties": 1,
            "propertyNames": {"pattern": r"^[A-Za-z0-9._-]+$"},
            "additionalProperties": {
                "type": "object",
                "required": ["author", "version", "build", "publish"],
                "properties": {
                    "author": {"type": "string", "minLength": 1},
                    "version": {"anyOf": [{"type": "string", "pattern": SEMVER}, {"const": "NEXT_PATCH"}]},
                    "build": {
                        "type": "object",
                        "required": ["build_system"],
                        "properties": {
                            "build_system": {"enum": ["zip", "maven", "gradle", "gradlew", "custom"]},
                            "custom_build_command": {
                                "anyOf": [
                                    {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
                                    {"type": "string", "minLength": 1},
                                ]
                            },
                        },
                        "if": {"properties": {"build_system": {"const": "custom"}}},
                        "then": {"required": ["custom_build_command"]},
                    },
                    "publish": {
                        "type": "object",
                        "required": ["bucket", "region"],
                        "properties": {
                            "bucket": {"type": "string", "minLength": 3},
                            "region": {"type": "string", "pattern": r"^[a-z]{2}(-gov)?-[a-z]+-\d$"},
                            "options": {"type": "object"},
                        },
                    },
                },
            },
        },
    },
}

PLATFORMS = {("linux", "amd64"), ("linux", "aarch64"), ("linux", "arm")}
GDK_CONFIGS = [REPO / "gdk-config.json", *(REPO / "components" / c / "gdk-config.json" for c in (AGENT, MODEL))]


@pytest.fixture(scope="module")
def built_recipes(tmp_path_factory) -> dict[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("gg-build")
    model = fake_model(out / "model-src")
    return {name: load_yaml(build_component(name, out, model_dir=model)[0]) for name in (AGENT, MODEL)}


def _validate(doc: Any, schema: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_the_schemas_reject_what_they_should():
    good = load_yaml(MODEL_RECIPE)
    for broken in (
        {k: v for k, v in good.items() if k != "Manifests"},
        {**good, "RecipeFormatVersion": "2021-01-01"},
        {**good, "ComponentVersion": "1.0"},
        {**good, "componentname": "lowercase keys are not the documented format"},
        {**good, "Manifests": [{"Lifecycle": {"Run": {"RequiresPrivilege": False}}}]},  # no Script
        {**good, "Manifests": [{"Lifecycle": {"Run": "a", "Startup": "b"}}]},
    ):
        with pytest.raises(AssertionError):
            _validate(broken, RECIPE_SCHEMA)
    gdk = json.loads(GDK_CONFIGS[1].read_text())
    ((name, settings),) = gdk["component"].items()
    with pytest.raises(AssertionError):
        _validate(
            {"component": {name: {**settings, "build": {"build_system": "custom"}}}, "gdk_version": "1.6.0"}, GDK_SCHEMA
        )
    with pytest.raises(AssertionError):
        _validate({"component": {}, "gdk_version": "1.6.0"}, GDK_SCHEMA)


@pytest.mark.parametrize("path", [AGENT_RECIPE, MODEL_RECIPE], ids=lambda p: p.name)
def test_source_recipes_follow_the_recipe_format(path):
    recipe = load_yaml(path)
    _validate(recipe, RECIPE_SCHEMA)
    assert path.stem == recipe["ComponentName"]
    assert {(m["Platform"]["os"], m["Platform"]["architecture"]) for m in recipe["Manifests"]} == PLATFORMS
    assert len(recipe["Manifests"]) == len(PLATFORMS)
    first = recipe["Manifests"][0]
    for manifest in recipe["Manifests"][1:]:  # the same Python code everywhere
        assert manifest.get("Lifecycle") == first.get("Lifecycle") and manifest["Artifacts"] == first["Artifacts"]
    for manifest in recipe["Manifests"]:
        for artifact in manifest["Artifacts"]:
            assert artifact["URI"].startswith("s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/")


def test_built_recipes_follow_the_recipe_format(built_recipes):
    for name, recipe in built_recipes.items():
        _validate(recipe, RECIPE_SCHEMA)
        assert recipe["ComponentName"] == name


def test_agent_lifecycle(built_recipes):
    recipe = built_recipes[AGENT]
    lifecycle = recipe["Manifests"][0]["Lifecycle"]
    install, run = lifecycle["Install"], lifecycle["Run"]
    assert install["RequiresPrivilege"] is False and install["Timeout"] >= 900
    assert "python3 -m venv" in install["Script"] and "--requirement" in install["Script"]
    assert "{artifacts:decompressedPath}/battwin-agent" in install["Script"]
    assert run["RequiresPrivilege"] is False
    assert run["Setenv"]["PYTHONPATH"] == "{artifacts:decompressedPath}/battwin-agent"
    assert re.search(r'exec "\{work:path\}/venv/bin/python" -m device_agent\.cli run', run["Script"])
    assert '--model-dir "{com.battwin.SohModel:artifacts:path}"' in run["Script"]
    assert "Startup" not in lifecycle and "Shutdown" not in lifecycle  # the nucleus SIGTERMs Run; the agent drains
    artifact = recipe["Manifests"][0]["Artifacts"][0]
    assert artifact == {
        "URI": "s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/battwin-agent.zip",
        "Unarchive": "ZIP",
    }
    deps = recipe["ComponentDependencies"]
    assert deps[MODEL]["DependencyType"] == "SOFT"  # a new model version is hot-swapped, not a restart
    assert "aws.greengrass.ShadowManager" in deps


def test_model_component_is_artifact_only(built_recipes):
    recipe = built_recipes[MODEL]
    for manifest in recipe["Manifests"]:
        assert "Lifecycle" not in manifest
        assert [a["URI"].rsplit("/", 1)[-1] for a in manifest["Artifacts"]] == ["model.tflite", "model.json"]
        assert all(a["Unarchive"] == "NONE" and a["Permission"]["Read"] == "ALL" for a in manifest["Artifacts"])


def test_every_recipe_variable_is_known_and_resolves():
    agent = load_yaml(AGENT_RECIPE)
    conf = agent["ComponentConfiguration"]["DefaultConfiguration"]
    ctx = LifecycleContext(THING, Path("/greengrass/v2"), {AGENT: conf, MODEL: {}})
    for path in (AGENT_RECIPE, MODEL_RECIPE):
        recipe = load_yaml(path)
        text = json.dumps(recipe)
        # anything shaped like {x:y} is a real recipe variable (no shell ${VAR:-default} the nucleus would mangle)
        for token in VARIABLE_LIKE.findall(text):
            assert RECIPE_VARIABLE.fullmatch(token), token
        deps = set(recipe.get("ComponentDependencies", {}))
        for match in RECIPE_VARIABLE.finditer(text):
            assert match.group("component") in (None, *deps), f"{match.group(0)}: not a dependency"
        for manifest in recipe["Manifests"]:
            for step in (manifest.get("Lifecycle") or {}).values():
                interpolate(json.dumps(step), ctx.resolver(recipe["ComponentName"]), strict=True)
    lifecycle_text = json.dumps(agent["Manifests"][0]["Lifecycle"])
    assert "{artifacts:decompressedPath}" in lifecycle_text and "{work:path}" in lifecycle_text
    assert conf["thing_name"] == "{iot:thingName}"


def test_access_control_is_least_privilege():
    conf = load_yaml(AGENT_RECIPE)["ComponentConfiguration"]["DefaultConfiguration"]
    granted = {
        (destination, op, resource)
        for destination, policies in conf["accessControl"].items()
        for policy in policies.values()
        for op in policy["operations"]
        for resource in policy["resources"]
    }
    assert granted == {
        ("aws.greengrass.ipc.mqttproxy", "aws.greengrass#PublishToIoTCore", "battwin/{iot:thingName}/*"),
        (
            "aws.greengrass.ShadowManager",
            "aws.greengrass#GetThingShadow",
            "$aws/things/{iot:thingName}/shadow/name/battwin-config",
        ),
        (
            "aws.greengrass.ShadowManager",
            "aws.greengrass#UpdateThingShadow",
            "$aws/things/{iot:thingName}/shadow/name/battwin-config",
        ),
        (
            "aws.greengrass.ipc.pubsub",
            "aws.greengrass#SubscribeToTopic",
            "$aws/things/{iot:thingName}/shadow/name/battwin-config/update/delta",
        ),
    }
    assert conf["mqtt"]["topic_prefix"] == "battwin"  # the prefix the mqttproxy policy allows


def _leaves(node: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    if isinstance(node, dict):
        out: dict[tuple[str, ...], Any] = {}
        for key, value in node.items():
            out.update(_leaves(value, (*prefix, key)))
        return out
    return {prefix: node}


def test_default_configuration_maps_onto_agent_config(monkeypatch):
    recipe = load_yaml(AGENT_RECIPE)
    conf = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    settings = {k: v for k, v in conf.items() if k != "accessControl"}
    settings["thing_name"] = THING
    expected = AgentConfig.model_validate(settings)  # the same names and validation as the agent's config
    leaves = _leaves(settings)
    assert all(v is not None for v in leaves.values())  # null would interpolate to "" and fail validation

    run = recipe["Manifests"][0]["Lifecycle"]["Run"]
    mapped: dict[tuple[str, ...], str] = {}
    for var, value in run["Setenv"].items():
        if not var.startswith("BATTWIN_"):
            continue
        path = tuple(var.removeprefix("BATTWIN_").lower().split("__"))
        m = re.fullmatch(r"\{configuration:/([^}]+)\}", value)
        if m:
            assert tuple(m.group(1).split("/")) == path, f"{var} reads {value}"
            mapped[path] = var
        else:  # set by the recipe itself, not from configuration
            assert (var, value) in {
                ("BATTWIN_SPOOL__PATH", "{work:path}/spool.db"),
                ("BATTWIN_HEALTH__MODEL_ROOT", "{kernel:rootPath}/packages/artifacts/com.battwin.SohModel"),
            }
    assert set(mapped) == set(leaves), "every configuration value reaches the agent, and only those"

    ctx = LifecycleContext(THING, Path("/greengrass/v2"), {AGENT: settings, MODEL: {}})
    for key in list(os.environ):
        if key.startswith("BATTWIN_"):
            monkeypatch.delenv(key)
    for var, value in run["Setenv"].items():
        if var.startswith("BATTWIN_"):
            monkeypatch.setenv(var, interpolate(value, ctx.resolver(AGENT), strict=True))
    from_env = AgentConfig()
    for path in leaves:
        got, want = from_env, expected
        for key in path:
            got, want = getattr(got, key), getattr(want, key)
        assert got == want, path
    assert str(from_env.spool.path) == "/greengrass/v2/work/com.battwin.Agent/spool.db"
    assert str(from_env.health.model_root) == "/greengrass/v2/packages/artifacts/com.battwin.SohModel"
    assert from_env.shadow.name == "battwin-config"  # the shadow accessControl allows


@pytest.mark.parametrize("path", GDK_CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_gdk_configs_follow_the_gdk_format(path):
    config = json.loads(path.read_text())
    _validate(config, GDK_SCHEMA)
    ((name, settings),) = config["component"].items()
    project = path.parent
    if project != REPO:
        assert project.name == name
        recipe = project / "recipe.yaml"  # where GDK looks for the project's recipe
        assert recipe.resolve() == (REPO / "recipes" / f"{name}.yaml").resolve()
    assert settings["version"] == load_yaml(REPO / "recipes" / f"{name}.yaml")["ComponentVersion"]
    command = settings["build"]["custom_build_command"]
    assert settings["build"]["build_system"] == "custom" and "--gdk" in command
    assert any(part.endswith("build.py") or part == "components.build" for part in command)


def test_gdk_and_recipe_versions_agree():
    check_versions()
