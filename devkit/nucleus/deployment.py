"""Local deployments that run lifecycles, as the nucleus of the emulator's flavour does them.

A deployment takes recipes and their artifact folders (a GDK ``greengrass-build`` folder:
``recipes/*.yaml`` and ``artifacts/<name>/<version>/``) and lays them out under the root folder as the
nucleus does::

    <root>/packages/recipes/<name>-<version>.yaml
    <root>/packages/artifacts/<name>/<version>/...
    <root>/packages/artifacts-unarchived/<name>/<version>/<zip stem>/...   (classic unpacks ZIP artifacts)
    <root>/work/<name>/                                                    (the step's working folder)
    <root>/logs/<name>.log

Every recipe is read and every lifecycle interpolated BEFORE anything changes; a refusal raises
:class:`~devkit.nucleus.resolve.DeploymentError` and leaves the running components as
they were. Then, in dependency order, a new component is installed and started; one whose version or
install script changed is reinstalled; one whose interpolated lifecycle (run/startup script or Setenv)
changed is restarted (classic: ``GenericExternalService``'s config watcher; every component's lifecycle
is re-interpolated, so a dependency's new version changes ``{Dep:artifacts:path}``); any other keeps
running untouched. Lite redeploys a component of the deployment only when its version changed, the
deployment configures it, or it is not RUNNING/FINISHED (a new lifecycle under the same version is not
picked up), and deletes a component's previous version's artifacts once the new one is deployed.
Each component gets its own SVCUID and the nucleus' environment (SVCUID, the IPC socket,
AWS_IOT_THING_NAME, AWS_REGION) plus its Setenv.

Lite runs a component as a systemd unit with ``Restart=on-failure``, ``RestartSec=1``,
``StartLimitBurst=3`` in ``StartLimitInterval=3600`` (the unit recipe2unit writes): a run step that exits
non-zero is started again after :data:`LITE_RESTART_SEC` with a new SVCUID (recipe-runner gets one from
ggipcd at every start), at most :data:`LITE_START_LIMIT_BURST` times an hour, then it stays ERRORED. Classic
restarts an errored component too (not emulated here).
"""

from __future__ import annotations

import os
import secrets
import shutil
import threading
import time
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devkit.nucleus.acl import AccessControl
from devkit.nucleus.core import SOCKET_ENV, TOKEN_ENV, EmulatorCore, log
from devkit.nucleus.processes import ComponentProcesses
from devkit.nucleus.recipe import LifecycleContext, default_configuration, load_recipe
from devkit.nucleus.resolve import (
    ComponentRecipe,
    DeploymentError,
    Steps,
    interpolate_steps,
    read_component,
)

INSTALL_TIMEOUT = 300.0  # the nucleus' default install Timeout
#: lite's component units (modules/recipe2unit): Restart=on-failure, RestartSec=1, StartLimitBurst=3 per 3600 s
LITE_RESTART_SEC = 1.0
LITE_START_LIMIT_BURST = 3
LITE_START_LIMIT_INTERVAL_S = 3600.0


@dataclass
class Deployed:
    name: str
    version: str
    recipe: ComponentRecipe
    token: str
    steps: Steps
    context: LifecycleContext | None = None  # to start it again (lite's Restart=on-failure)


@dataclass
class DeploymentResult:
    """What a deployment did to each component."""

    installed: list[str] = field(default_factory=list)  # new, or reinstalled (version / install step changed)
    restarted: list[str] = field(default_factory=list)  # lifecycle text changed
    unchanged: list[str] = field(default_factory=list)
    removed_artifacts: list[Path] = field(default_factory=list)  # lite: previous versions deleted


def build_sources(build_dir: Path, components: Iterable[str] | None = None) -> list[tuple[Path, Path | None]]:
    """(recipe, artifact folder) pairs of a greengrass-build folder, one per component (``<name>-<version>``
    recipe files preferred over other names of the same component)."""
    wanted = set(components) if components is not None else None
    chosen: dict[str, Path] = {}
    if not (build_dir / "recipes").is_dir():
        raise DeploymentError(str(build_dir), "not a greengrass-build folder: it has no recipes/ folder")
    for path in sorted((build_dir / "recipes").iterdir()):
        if path.suffix not in (".yaml", ".yml", ".json"):
            continue
        data = load_recipe(path)
        name, version = str(data.get("ComponentName")), str(data.get("ComponentVersion"))
        if wanted is not None and name not in wanted:
            continue
        if name not in chosen or path.stem == f"{name}-{version}":
            chosen[name] = path
    missing = (wanted or set()) - set(chosen)
    if missing:
        raise DeploymentError(", ".join(sorted(missing)), f"no recipe in {build_dir / 'recipes'}")
    out: list[tuple[Path, Path | None]] = []
    for name, path in sorted(chosen.items()):
        version = str(load_recipe(path).get("ComponentVersion"))
        art = build_dir / "artifacts" / name / version
        out.append((path, art if art.is_dir() else None))
    return out


class Deployments(EmulatorCore):
    """Deployments and component processes (a mixin of NucleusEmulator)."""

    socket_path: str
    region: str

    def _init_deployments(self, root: Path | None) -> None:
        self.root = root
        self._deployed: dict[str, Deployed] = {}
        self._deploy_lock = threading.Lock()
        self._processes = ComponentProcesses(self._on_component_state)
        self._unit_restarts: dict[str, list[float]] = {}  # lite: when each component was restarted on failure

    # -- public API ---------------------------------------------------------------------------------
    def deploy_build(
        self, build_dir: str | os.PathLike[str], components: Iterable[str] | None = None, **options: Any
    ) -> DeploymentResult:
        """Deploy the components of a greengrass-build folder (all, or those named); see :meth:`deploy`."""
        self._require_root()
        return self.deploy(build_sources(Path(build_dir), components), **options)

    def deploy(
        self,
        sources: Sequence[tuple[str | os.PathLike[str], str | os.PathLike[str] | None]],
        *,
        configuration: Mapping[str, Mapping[str, Any]] | None = None,
        install_overrides: Mapping[str, str] | None = None,
        install_timeout: float = INSTALL_TIMEOUT,
    ) -> DeploymentResult:
        """Deploy (recipe file, artifact folder or None) pairs; see the module docstring.

        ``configuration`` merges values into a component's configuration (its existing one on the device,
        over the recipe's defaults for keys it does not have yet; a first deployment: the defaults), as the
        nucleus merges a deployment's configuration update; ``install_overrides``
        replaces a component's install script by another one (tests: an already-built venv) without
        changing what counts as its lifecycle."""
        self._require_root()
        with self._deploy_lock:
            return self._deploy(
                [(Path(r), Path(a) if a is not None else None) for r, a in sources],
                dict(configuration or {}),
                dict(install_overrides or {}),
                install_timeout,
            )

    def component_pid(self, name: str) -> int | None:
        """The PID of a component's running run step, or None."""
        return self._processes.pid(name)

    def deployed_version(self, name: str) -> str | None:
        with self._deploy_lock:
            found = self._deployed.get(name)
        return found.version if found else None

    def wait_for_state(self, name: str, states: str | Iterable[str], timeout: float = 30.0) -> bool:
        """Block until the component's state (lifecycle or UpdateState) is one of ``states``."""
        wanted = {states} if isinstance(states, str) else set(states)
        with self._cond:
            return self._cond.wait_for(lambda: self._states.get(name) in wanted, timeout)

    # -- internals ----------------------------------------------------------------------------------
    def _require_root(self) -> Path:
        if self.root is None:
            raise ValueError("this emulator has no root folder: give NucleusEmulator(root=...)")
        return self.root

    def _set_state(self, name: str, state: str) -> None:
        with self._cond:
            self._states[name] = state
            self._cond.notify_all()
        log.info("component state", extra={"component": name, "state": state})

    def _stop_components(self) -> None:
        self._processes.stop_all()

    def _on_component_state(self, name: str, state: str) -> None:
        self._set_state(name, state)
        if state == "ERRORED" and self.rules.name == "lite":
            timer = threading.Timer(LITE_RESTART_SEC, self._restart_on_failure, args=(name,))
            timer.daemon = True
            timer.start()

    def _restart_on_failure(self, name: str) -> None:
        """Lite's unit ``Restart=on-failure``: start the run step again with a new SVCUID, within the start limit."""
        now = time.monotonic()
        with self._deploy_lock:
            deployed = self._deployed.get(name)
            if deployed is None or deployed.context is None or self._processes.pid(name) is not None:
                return
            recent = [t for t in self._unit_restarts.get(name, []) if now - t < LITE_START_LIMIT_INTERVAL_S]
            if len(recent) >= LITE_START_LIMIT_BURST:
                log.warning("component failed too often; not restarted (start limit)", extra={"component": name})
                return
            self._unit_restarts[name] = [*recent, now]
            token = secrets.token_urlsafe(24)

            def _add() -> None:
                self._tokens[token] = name

            self._call(_add)
            deployed.token = token
            log.info("restarting a failed component with a new SVCUID", extra={"component": name})
            self._start(name, deployed.steps, token, deployed.context)

    def unit_restarts(self, name: str) -> int:
        """How many times lite's Restart=on-failure started ``name`` again."""
        with self._deploy_lock:
            return len(self._unit_restarts.get(name, []))

    def _deploy(
        self,
        sources: list[tuple[Path, Path | None]],
        configuration: dict[str, Mapping[str, Any]],
        overrides: dict[str, str],
        install_timeout: float,
    ) -> DeploymentResult:
        assert self.root is not None
        root = self.root
        rules = self.rules
        # 1. read and check everything; nothing changes before all of it passed
        read = [(read_component(path, rules), art) for path, art in sources]
        incoming = {comp.name: comp for comp, _ in read}
        artifacts = {comp.name: art for comp, art in read}
        recipes = {name: d.recipe for name, d in self._deployed.items()} | incoming
        for comp in incoming.values():
            for dep in comp.dependencies:
                if dep not in recipes and dep not in rules.available_components:
                    kind = comp.dependencies[dep]
                    raise DeploymentError(
                        comp.name,
                        f"dependency {dep} ({kind}) is not part of the deployment nor on the device, and the "
                        f"{rules.name} nucleus cannot get it",
                    )
        configs: dict[str, dict[str, Any]] = {}
        for name, comp in recipes.items():
            old = self._deployed.get(name)
            if name in incoming and (old is None or old.version != comp.version or name in configuration):
                conf = self._stored_configuration(default_configuration(comp.recipe))
                if old is not None:  # both nuclei keep a deployed component's values: a merge applies on top
                    _merge(conf, self._call(self.configs.tree, name))
                _merge(conf, configuration.get(name) or {})
                AccessControl.from_configuration(conf)
            else:
                conf = self._call(self.configs.tree, name)
            configs[name] = conf
        versions = {name: comp.version for name, comp in recipes.items()}
        context = LifecycleContext(self.thing_name, root, configs, versions=versions)
        steps = {name: interpolate_steps(comp, rules, context, configs[name]) for name, comp in recipes.items()}

        # 2. apply, dependencies first
        result = DeploymentResult()
        for name in _dependency_order(recipes):
            comp, new_steps, old = recipes[name], steps[name], self._deployed.get(name)
            if name in incoming:
                self._lay_out(comp, artifacts.get(name), context)
            token = old.token if old is not None else secrets.token_urlsafe(24)
            self._call(self._register, token, name, configs[name])
            if rules.redeploy_on_version_only:  # lite: deployment_handler.c
                with self._cond:
                    settled = self._states.get(name) in ("RUNNING", "FINISHED")
                changed = old is None or old.version != comp.version or name in configuration or not settled
                reinstall, restart = name in incoming and changed, False
                if not reinstall and old is not None:
                    new_steps = old.steps  # what runs is what was deployed
            else:  # classic: GenericExternalService reinstalls / restarts on these changes
                reinstall = old is None or old.version != comp.version or old.steps.install != new_steps.install
                restart = old is not None and old.steps.fingerprint() != new_steps.fingerprint()
            self._deployed[name] = Deployed(name, comp.version, comp, token, new_steps, context)
            if reinstall:
                self._processes.stop(name)
                self._install_and_start(name, new_steps, token, context, overrides.get(name), install_timeout)
                result.installed.append(name)
            elif restart:
                self._processes.stop(name)
                self._start(name, new_steps, token, context)
                result.restarted.append(name)
            else:
                result.unchanged.append(name)
            if old is not None and old.version != comp.version and not rules.keeps_old_artifacts:
                for kind in ("artifacts", "artifacts-unarchived"):
                    stale = root / "packages" / kind / name / old.version
                    if stale.exists():
                        shutil.rmtree(stale)
                        result.removed_artifacts.append(stale)
        log.info("deployment done", extra={"flavour": rules.name, "installed": result.installed})
        return result

    def _register(self, token: str, name: str, conf: dict[str, Any]) -> None:
        self._tokens[token] = name
        if not self.configs.has(name) or self.configs.tree(name) != conf:
            self.configs.set(name, conf, time.time())

    def _lay_out(self, comp: ComponentRecipe, source: Path | None, context: LifecycleContext) -> None:
        assert self.root is not None
        recipes_dir = self.root / "packages" / "recipes"
        recipes_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(comp.path, recipes_dir / f"{comp.name}-{comp.version}{comp.path.suffix}")
        dest = context.artifacts_path(comp.name)
        unpacked = context.decompressed_path(comp.name)
        dest.mkdir(parents=True, exist_ok=True)
        unpacked.mkdir(parents=True, exist_ok=True)
        context.work_path(comp.name).mkdir(parents=True, exist_ok=True)
        if source is not None:
            shutil.copytree(source, dest, dirs_exist_ok=True)
        if not self.rules.unarchives_local_artifacts:
            return  # lite left the ZIP of a local deployment packed (observed on lite 2.6)
        for artifact in comp.artifacts:
            uri = str(artifact.get("URI") or artifact.get("Uri") or "")
            if str(artifact.get("Unarchive", "NONE")).upper() != "ZIP" or not uri:
                continue
            archive = dest / uri.rsplit("/", 1)[-1]
            if archive.is_file():
                with zipfile.ZipFile(archive) as zf:
                    zf.extractall(unpacked / archive.stem)  # zipfile drops absolute and ".." parts

    def _env(self, token: str, steps: Steps, *, install: bool = False) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {TOKEN_ENV: token, SOCKET_ENV: self.socket_path, "AWS_IOT_THING_NAME": self.thing_name}
            | {"AWS_REGION": self.region, "AWS_DEFAULT_REGION": self.region}
        )
        env.update(dict(steps.install_setenv if install else steps.setenv))
        return env

    def _install_and_start(
        self, name: str, steps: Steps, token: str, ctx: LifecycleContext, override: str | None, timeout: float
    ) -> None:
        assert self.root is not None
        script = override if override is not None else steps.install
        if script is not None:
            self._set_state(name, "NEW")
            code = self._processes.install(
                name,
                script,
                self._env(token, steps, install=True),
                ctx.work_path(name),
                self.root / "logs" / f"{name}.log",
                timeout,
            )
            if code != 0:
                self._set_state(name, "BROKEN")
                raise DeploymentError(name, f"the install step exited with {code} (see logs/{name}.log)")
        self._set_state(name, "INSTALLED")
        self._start(name, steps, token, ctx)

    def _start(self, name: str, steps: Steps, token: str, ctx: LifecycleContext) -> None:
        assert self.root is not None
        script = steps.startup or steps.run
        if script is None:
            self._set_state(name, "FINISHED")  # nothing to run (classic accepts an artifact-only component)
            return
        self._set_state(name, "STARTING" if steps.startup else "RUNNING")
        self._processes.start(
            name, script, self._env(token, steps), ctx.work_path(name), self.root / "logs" / f"{name}.log"
        )


def _merge(into: dict[str, Any], value: Mapping[str, Any]) -> None:
    for key, new in value.items():
        if isinstance(new, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], new)
        else:
            into[key] = new


def _dependency_order(recipes: Mapping[str, ComponentRecipe]) -> list[str]:
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in seen or name not in recipes:
            return
        if name in path:
            raise DeploymentError(name, f"circular dependency: {' -> '.join((*path, name))}")
        for dep in sorted(recipes[name].dependencies):
            visit(dep, (*path, name))
        seen.add(name)
        order.append(name)

    for name in sorted(recipes):
        visit(name, ())
    return order
