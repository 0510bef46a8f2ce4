"""Constants and helpers shared by the Greengrass tests (importable as ``tests.greengrass.gg_support``)."""

from __future__ import annotations

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
DELTA_TOPIC = f"$aws/things/{THING}/shadow/name/battwin-config/update/delta"


def load_yaml(path: Path) -> Any:
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8"))


def broad_recipe(component: str = "com.battwin.Test") -> dict[str, Any]:
    """A test component allowed IoT Core publish/subscribe and local pub/sub on battwin/<thing>/#."""
    return {
        "ComponentName": component,
        "ComponentConfiguration": {
            "DefaultConfiguration": {
                "accessControl": {
                    "aws.greengrass.ipc.mqttproxy": {
                        f"{component}:mqtt:1": {
                            "operations": ["aws.greengrass#PublishToIoTCore", "aws.greengrass#SubscribeToIoTCore"],
                            "resources": ["battwin/{iot:thingName}/#", "cloud/+/commands"],
                        }
                    },
                    "aws.greengrass.ipc.pubsub": {
                        f"{component}:pubsub:1": {
                            "operations": ["*"],
                            "resources": ["local/#"],
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
                            "resources": ["battwin/{iot:thingName}/*"],
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
