"""Constants and helpers shared by the Greengrass tests (importable as ``tests.greengrass.gg_support``)."""

from __future__ import annotations

import copy
import hashlib
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support import REPO

THING = "gg-test-thing"
AGENT = "com.battwin.Agent"
MODEL = "com.battwin.SohModel"
AGENT_RECIPE = REPO / "recipes" / f"{AGENT}.yaml"
MODEL_RECIPE = REPO / "recipes" / f"{MODEL}.yaml"
SHADOW = "battwin-config"
SHADOW_PREFIX = f"$aws/things/{THING}/shadow/name/{SHADOW}"
DELTA_TOPIC = f"{SHADOW_PREFIX}/update/delta"

#: the Agent's accessControl for both nuclei: IoT Core only — telemetry topics (plain, and through Basic Ingest to
#: the cloud stack's rules: `+` for the rule as for the thing, the IoT policy names each), and the battwin-config
#: shadow
#: through IoT Core's shadow topics (no ShadowManager). No {iot:thingName}: lite 2.6.0 does not interpolate
#: it in accessControl; `+` stands for the thing (the cloud's IoT policy scopes the core to its own thing)
AGENT_ACCESS_CONTROL: dict[str, Any] = {
    "aws.greengrass.ipc.mqttproxy": {
        f"{AGENT}:publish:1": {
            "operations": ["aws.greengrass#PublishToIoTCore"],
            "resources": [
                "battwin/+/#",
                "$aws/rules/+/battwin/+/+",
                "$aws/things/+/shadow/name/battwin-config/get",
                "$aws/things/+/shadow/name/battwin-config/update",
            ],
        },
        f"{AGENT}:subscribe:1": {
            "operations": ["aws.greengrass#SubscribeToIoTCore"],
            "resources": [
                "$aws/things/+/shadow/name/battwin-config/get/+",
                "$aws/things/+/shadow/name/battwin-config/update/+",
            ],
        },
    }
}


def load_yaml(path: Path) -> Any:
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8"))


def agent_recipe() -> dict[str, Any]:
    """The Agent's recipe with :data:`AGENT_ACCESS_CONTROL` (what recipes/ holds; a test may change the copy)."""
    recipe = load_yaml(AGENT_RECIPE)
    recipe["ComponentConfiguration"]["DefaultConfiguration"]["accessControl"] = copy.deepcopy(AGENT_ACCESS_CONTROL)
    return recipe


def broad_recipe(component: str = "com.battwin.Test") -> dict[str, Any]:
    """A test component allowed IoT Core publish/subscribe on battwin/+/# and cloud/+/commands, local pub/sub
    on local/* (patterns both nuclei match alike; no {iot:thingName}, which lite 2.6.0 leaves literal)."""
    return {
        "ComponentName": component,
        "ComponentConfiguration": {
            "DefaultConfiguration": {
                "accessControl": {
                    "aws.greengrass.ipc.mqttproxy": {
                        f"{component}:mqtt:1": {
                            "operations": ["aws.greengrass#PublishToIoTCore", "aws.greengrass#SubscribeToIoTCore"],
                            "resources": ["battwin/+/#", "cloud/+/commands"],
                        }
                    },
                    "aws.greengrass.ipc.pubsub": {  # `*`: pub/sub resources are globs on both, `#` is literal
                        f"{component}:pubsub:1": {
                            "operations": ["*"],
                            "resources": ["local/*"],
                        }
                    },
                }
            }
        },
    }


def fake_model(directory: Path, *, corrupt: bool = False) -> Path:
    """model.tflite + model.json whose card states the tflite's sha256 (or a wrong one)."""
    directory.mkdir(parents=True, exist_ok=True)
    blob = b"TFL3" + bytes(range(256)) * 4
    (directory / "model.tflite").write_bytes(blob)
    digest = hashlib.sha256(blob + (b"x" if corrupt else b"")).hexdigest()
    (directory / "model.json").write_text(json.dumps({"version": "test-1", "tflite_sha256": digest}))
    return directory


class Collector:
    """Collects callback arguments; ``wait(n)`` blocks until n calls arrived (event-driven, no sleeps)."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._cond = threading.Condition()

    def __call__(self, *args: Any) -> None:
        with self._cond:
            self.items.append(args[0] if len(args) == 1 else args)
            self._cond.notify_all()

    def wait(self, count: int = 1, timeout: float = 10.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.items) >= count, timeout)

    def wait_until(self, predicate: Callable[[list[Any]], bool], timeout: float = 10.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.items), timeout)


# -- which lifecycle each nucleus runs, as their sources decide it -------------------------------------
def _platform_matches(platform: dict[str, Any], target: dict[str, str]) -> bool:
    """Classic's PlatformHelper.isAttributeSatisfied: every attribute must match; "*" matches anything
    (also an attribute the device has no label for, such as `runtime` on an older classic)."""
    for key, template in platform.items():
        if template == "*" or (key in ("os", "architecture") and template in ("all", "any")):
            continue
        if target.get(key) != template:
            return False
    return True


def _filter_platform(source: Any, keywords: set[str], selectors: list[str]) -> Any:
    """Classic's PlatformResolver.filterPlatform (lifecycle selection keys)."""
    if not isinstance(source, dict):
        return source
    if any(key in keywords for key in source):
        chosen = next((source[s] for s in selectors if source.get(s) is not None), source.get("all"))
        return None if chosen is None else _filter_platform(chosen, keywords, selectors)
    out = {k: _filter_platform(v, keywords, selectors) for k, v in source.items()}
    return {k: v for k, v in out.items() if v is not None}


def classic_lifecycle(recipe: dict[str, Any], architecture: str) -> dict[str, Any]:
    """The lifecycle nucleus classic runs on linux/<architecture> (RecipeLoader.convertLifecycleFromFile):
    the first matching manifest's own Lifecycle, else the global one filtered by its selection keys."""
    target = {"os": "linux", "architecture": architecture}  # classic has no `runtime` label before 2.14
    manifests = recipe.get("Manifests") or []
    manifest = next((m for m in manifests if _platform_matches(m.get("Platform") or {}, target)), None)
    if manifest is None:
        raise LookupError(f"classic: no manifest for linux/{architecture}")
    if manifest.get("Lifecycle"):
        return dict(manifest["Lifecycle"])
    keywords = {s for m in manifests for s in m.get("Selections") or []} | {"all"}
    return _filter_platform(recipe.get("Lifecycle") or {}, keywords, list(manifest.get("Selections") or [])) or {}


def lite_lifecycle(recipe: dict[str, Any], architecture: str) -> dict[str, Any]:
    """The lifecycle nucleus lite 2.6 runs (ggl-recipe select_linux_lifecycle): only manifests whose
    Platform.runtime is "*" or "aws_nucleus_lite"; the manifest's own non-empty Lifecycle, else the global
    Lifecycle's entry for the first of its Selections that is "all" or "linux" (no Selections: "all")."""
    for manifest in recipe.get("Manifests") or []:
        platform = manifest.get("Platform") or {}
        if platform.get("runtime") not in ("*", "aws_nucleus_lite"):
            continue
        if platform.get("os") not in ("linux", "*", "all"):
            continue
        if platform.get("architecture") not in (None, "", "*", architecture):
            continue
        if manifest.get("Lifecycle"):
            return dict(manifest["Lifecycle"])
        chosen = None
        for selection in manifest.get("Selections") or ["all"]:  # lite keeps the last one found
            found = (recipe.get("Lifecycle") or {}).get(selection) if selection in ("all", "linux") else None
            chosen = found if isinstance(found, dict) else chosen
        if chosen is not None:
            return dict(chosen)
    raise LookupError(f"lite: no lifecycle for linux/{architecture}")


# -- synthetic components for deployment tests ------------------------------------------------------
#: a component's run step: reports its environment over IPC (PublishToIoTCore with its own SVCUID), then idles
PROBE_APP = """\
import json, os, signal, sys, time
from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
keys = ["SVCUID", "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT", "AWS_IOT_THING_NAME", "AWS_REGION"]
keys.append("BT_SETENV")
info = {"argv": sys.argv[1:], "cwd": os.getcwd(), "env": {k: os.environ.get(k) for k in keys}}
client = GreengrassCoreIPCClientV2()
topic = "battwin/" + os.environ["AWS_IOT_THING_NAME"] + "/probe"
client.publish_to_iot_core(topic_name=topic, qos="1", payload=json.dumps(info).encode())
while True:
    time.sleep(3600)  # a long-running component idles until the nucleus stops it
"""


def probe_recipe(
    name: str,
    version: str = "1.0.0",
    *,
    run: str | None = None,
    install: str | None = None,
    lifecycle: dict[str, Any] | None = None,
    platform: dict[str, Any] | None = None,
    dependencies: dict[str, Any] | None = None,
    artifacts: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A recipe lite accepts (lower-case keys, runtime "*"), running PROBE_APP from its artifacts."""
    import sys

    if lifecycle is None:
        lifecycle = {"run": run or f"exec {sys.executable} {{artifacts:path}}/app.py", "Setenv": {"BT_SETENV": "x"}}
        if install is not None:
            lifecycle["install"] = install
    recipe: dict[str, Any] = {
        "RecipeFormatVersion": "2020-01-25",
        "ComponentName": name,
        "ComponentVersion": version,
        "ComponentConfiguration": {
            "DefaultConfiguration": {
                "thing": "{iot:thingName}",
                "accessControl": {
                    "aws.greengrass.ipc.mqttproxy": {
                        f"{name}:mqttproxy:1": {
                            "operations": ["aws.greengrass#PublishToIoTCore"],
                            "resources": ["battwin/+/#"],
                        }
                    }
                },
            }
        },
        "Manifests": [
            {
                "Platform": platform if platform is not None else {"os": "linux", "runtime": "*"},
                "Lifecycle": lifecycle,
                "Artifacts": artifacts or [],
            }
        ],
    }
    if dependencies:
        recipe["ComponentDependencies"] = dependencies
    return recipe


def write_component(build_dir: Path, recipe: dict[str, Any], files: dict[str, bytes | str] | None = None) -> Path:
    """Write a recipe and its artifacts into a greengrass-build layout; the recipe's path."""
    name, version = recipe["ComponentName"], recipe["ComponentVersion"]
    art = build_dir / "artifacts" / name / version
    art.mkdir(parents=True, exist_ok=True)
    for rel, content in (files if files is not None else {"app.py": PROBE_APP}).items():
        data = content.encode() if isinstance(content, str) else content
        (art / rel).write_bytes(data)
    recipes = build_dir / "recipes"
    recipes.mkdir(parents=True, exist_ok=True)
    path = recipes / f"{name}-{version}.json"
    path.write_text(json.dumps(recipe, indent=2))
    return path
