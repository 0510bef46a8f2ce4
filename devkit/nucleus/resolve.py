"""What a nucleus makes of a component's recipe at deployment, per flavour (see ``flavours`` for the sources).

:func:`read_component` checks the recipe file (size, manifest, lifecycle) and :func:`interpolate_steps`
turns its lifecycle into the scripts and environment the nucleus would run. Every refusal is a
:class:`DeploymentError` naming the component and, for lite, carrying lite's own message.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devkit.nucleus.flavours import LITE_RUNTIMES, FlavourRules
from devkit.nucleus.lite_objects import ObjectLimitError, check_default_config_write, check_visit
from devkit.nucleus.recipe import (
    LifecycleContext,
    RecipeError,
    format_value,
    interpolate,
    json_pointer,
    load_recipe,
)

PHASES = ("install", "startup", "run")


class DeploymentError(RuntimeError):
    """The nucleus refused a deployment (nothing of it was applied unless it says otherwise)."""

    def __init__(self, component: str, message: str) -> None:
        super().__init__(f"{component}: {message}")
        self.component = component
        self.message = message


@dataclass
class ComponentRecipe:
    """A recipe as read for a deployment: its selected lifecycle and what it needs."""

    name: str
    version: str
    path: Path
    recipe: dict[str, Any]
    lifecycle: dict[str, Any]
    artifacts: list[dict[str, Any]]
    dependencies: dict[str, str] = field(default_factory=dict)  # name -> HARD / SOFT


@dataclass(frozen=True)
class Steps:
    """A component's lifecycle after interpolation: what runs, and with which extra environment."""

    install: str | None
    startup: str | None
    run: str | None
    setenv: tuple[tuple[str, str], ...]  # the run/startup steps': the lifecycle's Setenv, then the step's
    install_setenv: tuple[tuple[str, str], ...] = ()  # the install step's: the lifecycle's, then its own

    def fingerprint(self) -> str:
        """The text whose change makes the nucleus restart the component (lifecycle and Setenv)."""
        return json.dumps([self.startup, self.run, list(self.setenv)])


def current_architecture() -> str:
    """The name the nuclei give this machine's architecture (``amd64``, ``aarch64``, ``arm``, ``x86``)."""
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "amd64": "amd64", "i386": "x86", "i686": "x86", "arm64": "aarch64"}.get(
        machine, "arm" if machine.startswith("arm") else machine
    )


def read_component(path: Path, rules: FlavourRules) -> ComponentRecipe:
    """Read and check one recipe file as the flavour's nucleus does at deployment."""
    size = path.stat().st_size
    label = path.name
    if rules.max_recipe_bytes is not None and size > rules.max_recipe_bytes:
        # lite reads recipes into a fixed buffer (ggl-recipe/src/recipe.c, file_mem[8196])
        raise DeploymentError(label, f"Insufficient memory for file ({size} B > {rules.max_recipe_bytes} B)")
    try:
        recipe = load_recipe(path)
    except (RecipeError, ValueError) as exc:
        raise DeploymentError(label, f"the recipe cannot be read: {exc}") from None
    name, version = recipe.get("ComponentName"), recipe.get("ComponentVersion")
    if not isinstance(name, str) or not name or not isinstance(version, str) or not version:
        raise DeploymentError(label, "the recipe needs ComponentName and ComponentVersion")
    if rules.object_budgets:
        _check_object_budgets(name, recipe)
    manifest, lifecycle = _select(recipe, rules, name)
    deps: dict[str, str] = {}
    for dep, spec in (recipe.get("ComponentDependencies") or {}).items():
        kind = (spec or {}).get("DependencyType", "HARD") if isinstance(spec, Mapping) else "HARD"
        deps[str(dep)] = str(kind).upper()
    artifacts = [dict(a) for a in manifest.get("Artifacts") or [] if isinstance(a, Mapping)]
    return ComponentRecipe(name, version, path, recipe, lifecycle, artifacts, deps)


def _check_object_budgets(name: str, recipe: Mapping[str, Any]) -> None:
    """Lite's fixed object budgets for the parsed recipe and for its DefaultConfiguration (lite_objects)."""
    try:
        check_visit(recipe)
    except ObjectLimitError as exc:
        raise DeploymentError(
            name, f"{exc.message} Failed to do dependency resolution for deployment, failing deployment. ({exc.detail})"
        ) from None
    conf = recipe.get("ComponentConfiguration")
    if isinstance(conf, Mapping) and "DefaultConfiguration" in conf:
        try:
            check_default_config_write(conf["DefaultConfiguration"])
        except ObjectLimitError as exc:
            raise DeploymentError(
                name, f"{exc.message} Failed to send default config to ggconfigd. ({exc.detail})"
            ) from None


def _select(recipe: Mapping[str, Any], rules: FlavourRules, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The manifest for linux on this machine and its lifecycle (the manifest's own, or the global one)."""
    arch = current_architecture()
    for raw in recipe.get("Manifests") or []:
        if not isinstance(raw, Mapping):
            raise DeploymentError(name, "Provided manifest section is in invalid format.")
        manifest = dict(raw)
        plat = manifest.get("Platform")
        if not isinstance(plat, Mapping):
            if rules.runtime_required:
                raise DeploymentError(name, "Platform not provided")
            plat = {}
        if rules.runtime_required and plat.get("runtime") not in LITE_RUNTIMES:
            continue  # "Skipping manifest as it does not include a runtime platform field." (recipe.c)
        if plat.get("os", "linux") not in ("linux", "*", "all") or plat.get("architecture", arch) not in (arch, "*"):
            continue
        lifecycle = manifest.get("Lifecycle")
        if isinstance(lifecycle, Mapping) and lifecycle:
            return manifest, dict(lifecycle)
        selections = manifest.get("Selections") or ["all"]
        allowed = ("all", "linux") if rules.runtime_required else None  # lite's lifecycle_selection (recipe.c)
        found: dict[str, Any] | None = None
        for sel in selections:
            global_lifecycle = recipe.get("Lifecycle")
            if (allowed is None or sel in allowed) and isinstance(global_lifecycle, Mapping):
                chosen = global_lifecycle.get(sel)
                if isinstance(chosen, Mapping) and found is None:
                    found = dict(chosen)
        if found is not None or not rules.runtime_required:
            return manifest, found or {}
    if rules.runtime_required:
        raise DeploymentError(name, "No lifecycle was found for linux")
    raise DeploymentError(name, f"no manifest for linux/{arch}")


def _phase(lifecycle: Mapping[str, Any], key: str, rules: FlavourRules) -> Any:
    if rules.case_sensitive_lifecycle:
        return lifecycle.get(key)
    for k, v in lifecycle.items():
        if str(k).lower() == key:
            return v
    return None


def _script(step: Any, rules: FlavourRules, component: str) -> tuple[str | None, dict[str, Any]]:
    """A step's script and its own Setenv (a step is a string or a mapping with Script)."""
    if step is None:
        return None, {}
    if isinstance(step, str):
        return step, {}
    if isinstance(step, Mapping):
        script = _phase(step, "Script", rules) if rules.case_sensitive_lifecycle else _phase(step, "script", rules)
        setenv = _phase(step, "Setenv", rules) if rules.case_sensitive_lifecycle else _phase(step, "setenv", rules)
        return (str(script) if script is not None else None), dict(setenv or {})
    raise DeploymentError(component, f"a lifecycle step must be a script or a mapping, not {type(step).__name__}")


def interpolate_steps(
    component: ComponentRecipe, rules: FlavourRules, context: LifecycleContext, configuration: Mapping[str, Any]
) -> Steps:
    """The component's scripts and Setenv after the flavour's interpolation (errors: DeploymentError)."""
    lc = component.lifecycle
    setenv_key = "Setenv" if rules.case_sensitive_lifecycle else "setenv"
    shared: dict[str, Any] = dict(_phase(lc, setenv_key, rules) or {})
    env, install_env = dict(shared), dict(shared)  # a step's own Setenv applies to that step only
    scripts: dict[str, str | None] = {}
    for phase in PHASES:
        script, step_env = _script(_phase(lc, phase, rules), rules, component.name)
        scripts[phase] = script
        (install_env if phase == "install" else env).update(step_env)
    sub = _substituter(component, rules, context, configuration)
    out: dict[str, str | None] = {p: (sub(s) if s is not None else None) for p, s in scripts.items()}

    def resolved(variables: dict[str, Any]) -> tuple[tuple[str, str], ...]:
        pairs: list[tuple[str, str]] = []
        for key, value in variables.items():
            if rules.every_brace_is_a_variable and not isinstance(value, str):
                raise DeploymentError(component.name, "Invalid lifecycle Setenv, Key values must be String")
            pairs.append((str(key), sub(format_value(value))))
        return tuple(pairs)

    setenv = resolved(env)
    install_setenv = resolved(install_env)
    if rules.needs_run_step and out["run"] is None and out["startup"] is None:
        found = ", ".join(sorted(str(k) for k in lc)) or "nothing"
        raise DeploymentError(
            component.name,
            "no run or startup step: nucleus lite needs one (a lower-case 'run' or 'startup' key; "
            f"the lifecycle has {found}); an artifact-only or install-only component fails its deployment",
        )
    return Steps(out["install"], out["startup"], out["run"], setenv, install_setenv)


def _substituter(
    component: ComponentRecipe, rules: FlavourRules, context: LifecycleContext, configuration: Mapping[str, Any]
) -> Callable[[str], str]:
    if not rules.every_brace_is_a_variable:
        resolve = context.resolver(component.name)
        return lambda text: interpolate(text, resolve)

    slash = "/" if rules.trailing_slash_paths else ""
    fixed = {
        "kernel:rootPath": str(context.root),
        "iot:thingName": context.thing_name,
        "work:path": f"{context.work_path(component.name)}{slash}",
        "artifacts:path": f"{context.artifacts_path(component.name)}{slash}",
        "artifacts:decompressedPath": f"{context.decompressed_path(component.name)}{slash}",
    }

    def lite(text: str) -> str:
        """Lite's recipe-runner: every '{' opens a variable up to the next '}' (runner.c, handle_escape)."""
        out: list[str] = []
        i = 0
        while i < len(text):
            if text[i] != "{":
                out.append(text[i])
                i += 1
                continue
            end = text.find("}", i + 1)
            if end < 0:
                raise DeploymentError(component.name, "Recipe escape is not terminated.")
            variable = text[i + 1 : end]
            if ":" not in variable:
                raise DeploymentError(component.name, f"No : found in recipe variable. ({{{variable}}})")
            if variable in fixed:
                out.append(fixed[variable])
            elif variable.startswith("configuration:"):
                try:
                    out.append(format_value(json_pointer(configuration, variable.split(":", 1)[1])))
                except KeyError:
                    raise DeploymentError(component.name, f"configuration key not found: {{{variable}}}") from None
            else:
                raise DeploymentError(component.name, f"Unhandled variable substitution: {variable}.")
            i = end + 1
        return "".join(out)

    return lite
