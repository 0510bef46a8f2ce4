"""Recipes and GDK configurations checked against their formats (written here as JSON Schema: the part of the
recipe format both nucleus classic and nucleus lite 2.6 accept) and against what the agent needs: platforms,
one lifecycle both nuclei pick, variables lite can fill in, sizes, least-privilege access, configuration."""

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
from devkit.nucleus.acl import AccessControl
from devkit.nucleus.lite_objects import (
    CONFIG_WRITE_ARENA_BYTES,
    CONFIG_WRITE_ENVELOPE_BYTES,
    ObjectLimitError,
    check_default_config_write,
    check_visit,
    count_subobjects,
    decode_bytes,
)
from devkit.nucleus.recipe import RECIPE_VARIABLE, VARIABLE_LIKE, LifecycleContext, interpolate
from tests.greengrass.gg_support import (
    AGENT,
    AGENT_ACCESS_CONTROL,
    AGENT_RECIPE,
    MODEL,
    MODEL_RECIPE,
    THING,
    classic_lifecycle,
    fake_model,
    lite_lifecycle,
    load_yaml,
)
from tests.support import REPO

SEMVER = r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$"
# lite 2.6 looks the steps up by their lower-case names and their fields by the PascalCase ones
# (recipe2unit, ggl-recipe); classic reads lifecycle keys case-insensitively (config Topics)
STEP_NAMES = ("bootstrap", "install", "startup", "run", "shutdown", "recover")
#: lite's recipe buffer (a bigger recipe: "Insufficient memory for file") and GDK's limit
LITE_MAX_RECIPE_BYTES = 8196
GDK_MAX_RECIPE_BYTES = 16000

# The recipe format (RecipeFormatVersion 2020-01-25) of the Greengrass developer guide's recipe reference,
# narrowed to what nucleus lite also accepts.
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
            "not": {"required": ["startup", "run"]},  # a component has one or the other
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
        # the global lifecycle under a selection key both nuclei resolve ("all", or "linux" when selected)
        "Lifecycle": {
            "type": "object",
            "propertyNames": {"enum": ["all", "linux"]},
            "additionalProperties": {"$ref": "#/$defs/lifecycle"},
        },
        "Manifests": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "Name": {"type": "string"},
                    "Platform": {  # lite skips a manifest without runtime; classic matches "*" always
                        "type": "object",
                        "required": ["os", "runtime"],
                        "properties": {"runtime": {"enum": ["*", "aws_nucleus_lite"]}},
                        "additionalProperties": {"type": "string"},
                    },
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

#: one manifest for every linux machine: no architecture (both nuclei then match any), runtime for lite
PLATFORM = {"os": "linux", "runtime": "*"}
#: what issue 13 targets for the recipes as built: well under lite's 255 (GG_MAX_OBJECT_SUBOBJECTS)
MAX_BUILT_SUBOBJECTS = 220
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
        {**good, "Lifecycle": {"all": {"run": {"RequiresPrivilege": False}}}},  # no Script
        {**good, "Lifecycle": {"all": {"run": "a", "startup": "b"}}},
        {**good, "Lifecycle": {"all": {"Run": "true"}}},  # lite does not know "Run"
        {**good, "Lifecycle": {"all": {"run": {"script": "true"}}}},  # nor "script"
        {**good, "Lifecycle": {"run": "true"}},  # lite finds no "all" (or "linux") key
        {**good, "Manifests": [{"Platform": {"os": "linux", "architecture": "amd64"}}]},  # lite skips it
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
    (manifest,) = recipe["Manifests"]  # one copy: lite counts every object of the recipe
    assert manifest["Platform"] == PLATFORM  # runtime "*": "aws_nucleus_lite" would make classic skip it
    assert "Lifecycle" not in manifest and "Selections" not in manifest  # the lifecycle is the global one
    for artifact in manifest["Artifacts"]:
        assert artifact["URI"].startswith("s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/")
    assert path.stat().st_size < 6000  # room to grow under lite's 8,196 B


def test_built_recipes_follow_the_recipe_format(built_recipes):
    for name, recipe in built_recipes.items():
        _validate(recipe, RECIPE_SCHEMA)
        assert recipe["ComponentName"] == name


def test_built_recipes_fit_lite_and_gdk(built_recipes, tmp_path):
    out = tmp_path / "gg-build"
    model = fake_model(tmp_path / "model")
    bucket = "b" * 63  # the longest S3 bucket name: what `gdk component publish` puts into the URIs
    for name in (AGENT, MODEL):
        path = build_component(name, out, model_dir=model)[0]
        text = path.read_text(encoding="utf-8")
        published = text.replace("BUCKET_NAME", bucket).replace("COMPONENT_NAME", name)
        as_json = json.dumps(load_yaml(path), indent=2).replace("BUCKET_NAME", bucket)
        for form in (text, published, as_json):
            size = len(form.encode())
            assert size < LITE_MAX_RECIPE_BYTES, f"{name}: {size} B"
            assert size < GDK_MAX_RECIPE_BYTES, f"{name}: {size} B"
        assert len(text.encode()) < 6000, f"{name}: {len(text.encode())} B as built"


def test_built_recipes_fit_lites_object_budgets(built_recipes):
    """Lite 2.6.0 refuses a recipe of more than 255 subobjects or 15 levels at dependency resolution, and a
    DefaultConfiguration ggconfigd cannot decode (lite_objects); ours stay well under."""
    for name, recipe in built_recipes.items():
        count = count_subobjects(recipe)
        assert count <= MAX_BUILT_SUBOBJECTS, f"{name}: {count} subobjects as built"
        check_visit(recipe)
        conf = recipe.get("ComponentConfiguration", {}).get("DefaultConfiguration")
        if conf is not None:
            check_default_config_write(conf)
            assert CONFIG_WRITE_ENVELOPE_BYTES + decode_bytes(conf) < 0.6 * CONFIG_WRITE_ARENA_BYTES, name
    # negative control: the check is live on this recipe (the rest of the margin filled, then one more)
    agent = json.loads(json.dumps(built_recipes[AGENT]))
    agent["ComponentDescription"] = list(range(255 - count_subobjects(agent)))
    check_visit(agent)
    agent["ComponentDescription"].append(0)
    with pytest.raises(ObjectLimitError, match="subobjects exceeds maximum"):
        check_visit(agent)


def _steps(lifecycle: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in lifecycle.items() if k != "Setenv"}


@pytest.mark.parametrize("architecture", ["amd64", "aarch64", "arm"])
def test_both_nuclei_run_the_same_lifecycle(built_recipes, architecture):
    for name, recipe in built_recipes.items():
        lite = lite_lifecycle(recipe, architecture)
        assert lite == classic_lifecycle(recipe, architecture), name
        assert lite == recipe["Lifecycle"]["all"]
        for step, body in _steps(lite).items():
            assert step in STEP_NAMES  # lower case: lite ignores "Run", "Install"
            if isinstance(body, dict):
                assert set(body) <= {"Script", "Setenv", "Timeout", "RequiresPrivilege", "Skipif"}, body
        assert "run" in lite  # lite fails a component without a run step (and waits 300 s on install-only)
    # negative control: the helpers do check the architecture when a manifest names one
    pinned = json.loads(json.dumps(built_recipes[AGENT]))
    pinned["Manifests"][0]["Platform"]["architecture"] = "riscv64"
    with pytest.raises(LookupError):
        lite_lifecycle(pinned, architecture)
    with pytest.raises(LookupError):
        classic_lifecycle(pinned, architecture)


def test_the_lifecycle_rules_tell_the_nuclei_apart():
    # what issue 13 found on lite: no runtime, or a global lifecycle without a selection key, is not found
    old = {
        "Manifests": [{"Platform": {"os": "linux", "architecture": "amd64"}, "Lifecycle": {"Run": "x"}}],
    }
    assert classic_lifecycle(old, "amd64") == {"Run": "x"}
    with pytest.raises(LookupError):
        lite_lifecycle(old, "amd64")
    plain_global = {
        "Manifests": [{"Platform": {"os": "linux", "architecture": "*", "runtime": "*"}}],
        "Lifecycle": {"run": "x"},
    }
    assert classic_lifecycle(plain_global, "arm") == {"run": "x"}
    with pytest.raises(LookupError):
        lite_lifecycle(plain_global, "arm")


def test_agent_lifecycle(built_recipes):
    recipe = built_recipes[AGENT]
    lifecycle = recipe["Lifecycle"]["all"]
    install, run = lifecycle["install"], lifecycle["run"]
    shared = lifecycle["Setenv"]
    # the unpacked artifact whether or not {artifacts:decompressedPath} ends with "/"; the ZIP as a fallback
    assert shared["AGENT_APP"] == "{artifacts:decompressedPath}/battwin-agent"
    assert shared["AGENT_ZIP"] == "{artifacts:path}/battwin-agent.zip"
    assert shared["AGENT_UNPACKED"].startswith("{work:path}/") and shared["AGENT_VENV"] == "{work:path}/venv"
    assert install["RequiresPrivilege"] is False and install["Timeout"] >= 900
    assert 'python3 -m zipfile -e "$AGENT_ZIP" "$AGENT_APP"' in install["Script"]
    assert re.search(
        r'python3 "\$AGENT_APP/device_agent/bootstrap\.py" --app "\$AGENT_APP" --venv "\$AGENT_VENV"', install["Script"]
    )
    assert run["RequiresPrivilege"] is False
    assert re.search(r'exec "\$AGENT_VENV/bin/python" -m device_agent\.cli run$', run["Script"])
    assert "model" not in run["Script"]  # no versioned model path: a new model changes no lifecycle text
    assert "startup" not in lifecycle and "shutdown" not in lifecycle  # the nucleus SIGTERMs run; the agent drains
    for manifest in recipe["Manifests"]:
        assert manifest["Artifacts"] == [
            {"URI": "s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/battwin-agent.zip", "Unarchive": "ZIP"}
        ]
    # lite resolves SOFT dependencies too: only the model, which is deployed with the agent
    assert recipe["ComponentDependencies"] == {
        MODEL: {"VersionRequirement": ">=1.0.0 <2.0.0", "DependencyType": "SOFT"}  # SOFT: no restart
    }


def test_model_component_has_a_harmless_run_step(built_recipes):
    recipe = built_recipes[MODEL]
    assert recipe["Lifecycle"] == {"all": {"run": "true"}}  # lite fails an artifact-only component
    assert "ComponentDependencies" not in recipe
    for manifest in recipe["Manifests"]:
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
        # lite: "Unhandled variable substitution" for another component's variables
        assert not any(m.group("component") for m in RECIPE_VARIABLE.finditer(text)), path.name
        # lite fills in {iot:thingName} in accessControl (at authorisation) only, not in configuration
        outside = {k: v for k, v in recipe.get("ComponentConfiguration", {}).get("DefaultConfiguration", {}).items()}
        outside.pop("accessControl", None)
        assert "{iot:" not in json.dumps(outside) + json.dumps(recipe.get("Lifecycle")), path.name
        interpolate(json.dumps(recipe["Lifecycle"]), ctx.resolver(recipe["ComponentName"]), strict=True)
    lifecycle_text = json.dumps(agent["Lifecycle"])
    assert "{artifacts:decompressedPath}" in lifecycle_text and "{work:path}" in lifecycle_text
    assert "thing_name" not in conf  # the agent takes AWS_IOT_THING_NAME from the nucleus


def test_access_control_is_least_privilege():
    conf = load_yaml(AGENT_RECIPE)["ComponentConfiguration"]["DefaultConfiguration"]
    granted = {
        (destination, op, resource)
        for destination, policies in conf["accessControl"].items()
        for policy in policies.values()
        for op in policy["operations"]
        for resource in policy["resources"]
    }
    shadow = "$aws/things/+/shadow/name/battwin-config"
    publish, subscribe = "aws.greengrass#PublishToIoTCore", "aws.greengrass#SubscribeToIoTCore"
    mqtt = "aws.greengrass.ipc.mqttproxy"
    # the shadow over the IoT Core topics, no ShadowManager; no {iot:thingName} (lite 2.6.0 leaves it literal)
    assert granted == {
        (mqtt, publish, "battwin/+/#"),
        (mqtt, publish, "$aws/rules/+/battwin/+/+"),  # Basic Ingest: DeviceBasicIngestPolicy names the rules
        (mqtt, publish, f"{shadow}/get"),
        (mqtt, publish, f"{shadow}/update"),
        (mqtt, subscribe, f"{shadow}/get/+"),
        (mqtt, subscribe, f"{shadow}/update/+"),
    }
    assert conf["mqtt"]["topic_prefix"] == "battwin"  # the prefix the mqttproxy policy allows
    # Basic Ingest to the rules of a stack deployed with the template's default ResourcePrefix
    assert conf["mqtt"]["basic_ingest_rule_prefix"] == "battwin"
    assert conf["accessControl"] == AGENT_ACCESS_CONTROL  # what the shadow and agent tests deploy


#: what the agent does (allowed) and what it must not (refused), on both nuclei's matching rules
_PREFIX = f"$aws/things/{THING}/shadow/name/battwin-config"
ALLOWED = [
    ("aws.greengrass#PublishToIoTCore", f"battwin/{THING}/telemetry"),
    ("aws.greengrass#PublishToIoTCore", f"battwin/{THING}/alarms"),
    ("aws.greengrass#PublishToIoTCore", f"$aws/rules/battwin_telemetry/battwin/{THING}/telemetry"),
    ("aws.greengrass#PublishToIoTCore", f"$aws/rules/battwin_alarms/battwin/{THING}/alarms"),
    ("aws.greengrass#PublishToIoTCore", f"$aws/rules/battwin_cycles/battwin/{THING}.p1/cycles"),  # a pack
    ("aws.greengrass#PublishToIoTCore", f"{_PREFIX}/get"),
    ("aws.greengrass#PublishToIoTCore", f"{_PREFIX}/update"),
    ("aws.greengrass#SubscribeToIoTCore", f"{_PREFIX}/get/+"),
    ("aws.greengrass#SubscribeToIoTCore", f"{_PREFIX}/update/+"),
    ("aws.greengrass#SubscribeToIoTCore", f"{_PREFIX}/update/delta"),
]
REFUSED = [
    ("aws.greengrass#PublishToIoTCore", f"other/{THING}/telemetry"),  # another prefix
    ("aws.greengrass#PublishToIoTCore", "battwin"),
    ("aws.greengrass#PublishToIoTCore", f"$aws/rules/battwin_telemetry/other/{THING}/telemetry"),  # not battwin/
    ("aws.greengrass#PublishToIoTCore", f"$aws/rules/battwin_telemetry/{THING}/telemetry"),
    ("aws.greengrass#PublishToIoTCore", "$aws/rules/battwin_telemetry"),
    ("aws.greengrass#PublishToIoTCore", f"$aws/rules/battwin_telemetry/battwin/{THING}/x/telemetry"),
    ("aws.greengrass#SubscribeToIoTCore", "$aws/rules/battwin_telemetry/#"),  # nobody subscribes to Basic Ingest
    ("aws.greengrass#PublishToIoTCore", f"$aws/things/{THING}/shadow/name/other/update"),  # another shadow
    ("aws.greengrass#PublishToIoTCore", f"$aws/things/{THING}/shadow/update"),  # the classic shadow
    ("aws.greengrass#PublishToIoTCore", f"{_PREFIX}/delete"),
    ("aws.greengrass#PublishToIoTCore", f"{_PREFIX}/update/accepted"),  # answers are the cloud's
    ("aws.greengrass#SubscribeToIoTCore", "#"),
    ("aws.greengrass#SubscribeToIoTCore", f"battwin/{THING}/#"),  # publish only
    ("aws.greengrass#SubscribeToIoTCore", f"{_PREFIX}/#"),
    ("aws.greengrass#SubscribeToIoTCore", f"{_PREFIX}/delete/+"),
    ("aws.greengrass#SubscribeToIoTCore", f"$aws/things/{THING}/shadow/name/other/update/+"),
    ("aws.greengrass#UpdateThingShadow", f"{_PREFIX}"),  # no ShadowManager
]


@pytest.mark.parametrize("flavour", ["classic", "lite"])
def test_access_control_allows_our_topics_and_nothing_else_on_both_nuclei(flavour):
    conf = load_yaml(AGENT_RECIPE)["ComponentConfiguration"]["DefaultConfiguration"]
    acl = AccessControl.from_configuration(conf)
    mqtt = "aws.greengrass.ipc.mqttproxy"
    for operation, resource in ALLOWED:
        assert acl.allows(mqtt, operation, resource, flavour), (operation, resource)
    for operation, resource in REFUSED:
        assert not acl.allows(mqtt, operation, resource, flavour), (operation, resource)
    assert not acl.allows("aws.greengrass.ShadowManager", "aws.greengrass#GetThingShadow", _PREFIX, flavour)
    # what lite 2.6.0 did to the resources agreed before (interface 4 of issue 13): {iot:thingName} is left
    # literal, so none of the agent's requests was allowed (classic interpolated it with the configuration)
    before = AccessControl.from_configuration(
        {"accessControl": {mqtt: {"p": {"operations": ["*"], "resources": ["battwin/{iot:thingName}/*"]}}}}
    )
    assert not before.allows(mqtt, "aws.greengrass#PublishToIoTCore", f"battwin/{THING}/telemetry", "lite")


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
    expected = AgentConfig.model_validate(
        {**settings, "thing_name": THING}
    )  # the same names and validation as the agent's config
    leaves = _leaves(settings)
    assert all(v is not None for v in leaves.values())  # null would interpolate to "" and fail validation

    run = recipe["Lifecycle"]["all"]["run"]
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
    monkeypatch.setenv("AWS_IOT_THING_NAME", THING)  # what the nucleus gives every component
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
    assert from_env.thing_name == THING


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
