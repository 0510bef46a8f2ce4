"""Component recipes: loading, platform selection and recipe-variable interpolation as the nucleus does it.

Recipe variables have the form ``{namespace:key}`` or ``{component:namespace:key}``:

* ``{iot:thingName}`` — the core device's thing name;
* ``{artifacts:path}`` / ``{artifacts:decompressedPath}`` — the component's artifact folders;
* ``{work:path}`` — its writable working folder; ``{kernel:rootPath}`` — the Greengrass root;
* ``{configuration:/json/pointer}`` — a value of the component's configuration.

The ``component:`` prefix reads another component's (a dependency's) values. The nucleus interpolates
the lifecycle always, and the component configuration (``DefaultConfiguration``, including
``accessControl``) only with ``interpolateComponentConfiguration: true`` (nucleus ≥ 2.6.0).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

NAMESPACES = ("artifacts", "configuration", "work", "kernel", "iot")
RECIPE_VARIABLE = re.compile(
    r"\{(?:(?P<component>[A-Za-z0-9._-]+):)?(?P<namespace>" + "|".join(NAMESPACES) + r"):(?P<key>[^{}]+)\}"
)
#: anything that looks like ``{word:…}``: a recipe variable, or shell syntax the nucleus would try to read as one
VARIABLE_LIKE = re.compile(r"\{[A-Za-z0-9._-]+:[^{}\s]*\}")

Resolver = Callable[[str | None, str, str], str | None]


class RecipeError(ValueError):
    """The recipe is malformed or a variable cannot be resolved."""


def load_recipe(source: Path | str | Mapping[str, Any]) -> dict[str, Any]:
    """A recipe as a dict, from a YAML/JSON file or an already-parsed mapping (deep-copied)."""
    if isinstance(source, Mapping):
        return copy.deepcopy(dict(source))
    path = Path(source)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping")
    return data


def component_name(recipe: Mapping[str, Any]) -> str:
    name = recipe.get("ComponentName")
    if not isinstance(name, str) or not name:
        raise RecipeError("recipe has no ComponentName")
    return name


def default_configuration(recipe: Mapping[str, Any]) -> dict[str, Any]:
    conf = (recipe.get("ComponentConfiguration") or {}).get("DefaultConfiguration") or {}
    if not isinstance(conf, dict):
        raise RecipeError("ComponentConfiguration.DefaultConfiguration must be a mapping")
    return copy.deepcopy(conf)


def select_manifest(recipe: Mapping[str, Any], os_name: str = "linux", architecture: str = "amd64") -> dict[str, Any]:
    """The first manifest whose platform matches, as the nucleus picks it."""
    for manifest in recipe.get("Manifests") or []:
        platform = manifest.get("Platform") or {}
        if platform.get("os", os_name) in (os_name, "*") and platform.get("architecture", architecture) in (
            architecture,
            "*",
        ):
            return dict(manifest)
    raise RecipeError(f"no manifest for {os_name}/{architecture}")


def json_pointer(document: Any, pointer: str) -> Any:
    """RFC 6901 lookup (``/a/b/0``); KeyError if absent."""
    if pointer in ("", "/"):
        return document
    if not pointer.startswith("/"):
        raise KeyError(pointer)
    node = document
    for raw in pointer[1:].split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise KeyError(pointer)
    return node


def format_value(value: Any) -> str:
    """How a configuration value is written into a lifecycle script: scalars as text, containers as JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"))


def interpolate(text: str, resolve: Resolver, *, strict: bool = False) -> str:
    """Replace the recipe variables in ``text``; unresolved ones stay as written (or raise when strict)."""

    def _sub(match: re.Match[str]) -> str:
        value = resolve(match.group("component"), match.group("namespace"), match.group("key"))
        if value is None:
            if strict:
                raise RecipeError(f"unresolved recipe variable {match.group(0)}")
            return match.group(0)
        return value

    return RECIPE_VARIABLE.sub(_sub, text)


def interpolate_tree(node: Any, resolve: Resolver, *, strict: bool = False) -> Any:
    """``interpolate`` applied to every string in a JSON-like tree (keys included)."""
    if isinstance(node, str):
        return interpolate(node, resolve, strict=strict)
    if isinstance(node, list):
        return [interpolate_tree(v, resolve, strict=strict) for v in node]
    if isinstance(node, dict):
        return {
            interpolate(str(k), resolve, strict=strict): interpolate_tree(v, resolve, strict=strict)
            for k, v in node.items()
        }
    return node


def thing_name_resolver(thing_name: str) -> Resolver:
    """Resolves only ``{iot:thingName}`` (what configuration interpolation needs in the emulator)."""

    def resolve(component: str | None, namespace: str, key: str) -> str | None:
        if component is None and namespace == "iot" and key == "thingName":
            return thing_name
        return None

    return resolve


class LifecycleContext:
    """Everything the nucleus substitutes into a component's lifecycle on a given core device."""

    def __init__(
        self,
        thing_name: str,
        root: Path,
        configurations: Mapping[str, Mapping[str, Any]],
        *,
        versions: Mapping[str, str] | None = None,
    ) -> None:
        self.thing_name = thing_name
        self.root = Path(root)
        self.configurations = configurations
        self.versions = dict(versions or {})

    def artifacts_path(self, component: str) -> Path:
        return self.root / "packages" / "artifacts" / component / self.versions.get(component, "0.0.0")

    def decompressed_path(self, component: str) -> Path:
        return self.root / "packages" / "artifacts-unarchived" / component / self.versions.get(component, "0.0.0")

    def work_path(self, component: str) -> Path:
        return self.root / "work" / component

    def resolver(self, current: str) -> Resolver:
        def resolve(component: str | None, namespace: str, key: str) -> str | None:
            target = component or current
            if namespace == "iot":
                return self.thing_name if key == "thingName" and component is None else None
            if namespace == "kernel":
                return str(self.root) if key == "rootPath" else None
            if namespace == "work":
                return str(self.work_path(target)) if key == "path" else None
            if namespace == "artifacts":
                if key == "path":
                    return str(self.artifacts_path(target))
                if key == "decompressedPath":
                    return str(self.decompressed_path(target))
                return None
            if namespace == "configuration":
                conf = self.configurations.get(target)
                if conf is None:
                    return None
                try:
                    return format_value(json_pointer(conf, key))
                except KeyError:
                    return None
            return None

        return resolve
