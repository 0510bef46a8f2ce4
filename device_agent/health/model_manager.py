"""Chooses the health model, swaps it live when a new version arrives, and remembers the last good one.

Under Greengrass the agent is given the ``com.battwin.SohModel`` component's artifact ROOT
(``health.model_root`` = ``{kernel:rootPath}/packages/artifacts/com.battwin.SohModel``), never a version's
path: a new model version is a new folder under it (``<root>/<semantic version>/model.tflite + model.json``),
so a model deployment changes nothing in the Agent's lifecycle and the nucleus does not restart the agent.

* **Versions** are the sub-folders whose names are semantic versions, ordered by semantic-version
  precedence (1.10.0 > 1.9.0 > 1.9.0-rc.1); other names are ignored.
* **Start-up**: the last model that passed its checks (its folder name and the sha256 of its ``.tflite``,
  kept in the agent's state store) if that folder is still there with the same file, then any newer
  version that passes; else the newest version that passes; else the model shipped in the package
  (``health.use_shipped_model``); else physics only, with a ``model_unavailable`` alarm saying why.
* **Watching** (every ``health.model_poll_s``): a version newer than the one in use is loaded with every
  check the runtime makes (sha256 of the .tflite against model.json, tensor shapes, feature list, a smoke
  run; and ``health.model_version_pin`` if set) once its files have stayed unchanged for one poll (a
  folder still being written is left alone); only then does the agent switch, between two polls. A
  version that fails is refused with a ``model_rejected`` alarm and remembered: it is tried again only if
  its files change. The model in use keeps running.
* **Removed versions** never matter to the running agent: the interpreter is in memory. Nucleus lite
  deletes the previous version's artifacts after a deployment; if the folder of the model in use
  disappears, the agent keeps running that model (it never falls back to an older version by itself).

Without a root, ``health.model_dir`` (or the shipped model) is loaded and watched for files replaced in place.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol

from device_agent.alarms import AlarmCode
from device_agent.health.estimator import HealthModel
from device_agent.health.model_files import MODEL_JSON, MODEL_TFLITE, sha256_file
from device_agent.health.shipped import shipped_model_dir

log = logging.getLogger(__name__)

Loader = Callable[[Path], HealthModel]
Fingerprint = tuple[tuple[str, int, int], ...]
Origin = Literal["root", "dir", "shipped"]
LAST_GOOD_KEY = "health.last_good_model"
DEFAULT_POLL_S = 30.0

_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+[0-9A-Za-z.-]+)?$"
)


class SwapTarget(Protocol):
    config: Any

    def call_soon(self, fn: Callable[[], None]) -> None: ...

    def set_health_model(self, model: HealthModel | None, reason: str | None = None) -> None: ...

    def raise_alarm(self, code: AlarmCode, message: str) -> None: ...


class FactStore(Protocol):
    """Where the last good model is remembered (``device_agent.uplink.state_store.StateStore``)."""

    def put_fact(self, key: str, value: dict[str, Any]) -> None: ...

    def get_fact(self, key: str) -> dict[str, Any] | None: ...


def default_loader(model_dir: Path) -> HealthModel:
    from device_agent.health.hybrid import load_hybrid_model

    return load_hybrid_model(model_dir)


def semver_key(name: str) -> tuple[Any, ...] | None:
    """A sort key with semantic-version precedence (build metadata ignored), or None for another name."""
    m = _SEMVER.match(name)
    if m is None:
        return None
    major, minor, patch, pre = m.groups()
    if pre is None:
        return (int(major), int(minor), int(patch), 1, ())
    ids = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return (int(major), int(minor), int(patch), 0, ids)


def version_dirs(root: Path) -> list[Path]:
    """The version folders under ``root``, newest first (an unreadable or missing root has none)."""
    try:
        entries = list(root.iterdir())
    except OSError:
        return []
    found = []
    for d in entries:
        key = semver_key(d.name)
        if key is not None and d.is_dir():
            found.append((key, d.name, d))
    return [d for _, _, d in sorted(found, reverse=True)]


def newest_version_dir(root: Path) -> Path | None:
    """The newest version folder under ``root`` that holds a model.json."""
    return next((d for d in version_dirs(root) if (d / MODEL_JSON).is_file()), None)


def _inside(path: Path, root: Path) -> bool:
    """True if ``path`` (symlinks and '..' resolved) lies inside ``root``."""
    try:
        return path.resolve().is_relative_to(root.resolve())
    except OSError:
        return False


def _fingerprint(model_dir: Path) -> Fingerprint:
    out = []
    for name in (MODEL_JSON, MODEL_TFLITE):
        try:
            st = (model_dir / name).stat()
        except OSError:
            out.append((name, -1, -1))
        else:
            out.append((name, st.st_mtime_ns, st.st_size))
    return tuple(out)


def _complete(fp: Fingerprint) -> bool:
    return all(size >= 0 for _, _, size in fp)


class ModelManager:
    def __init__(
        self,
        target: SwapTarget,
        loader: Loader = default_loader,
        store: FactStore | None = None,
    ) -> None:
        self.target = target
        self.loader = loader
        self.store = store
        self.current_dir: Path | None = None
        self.current_version: str | None = None  # the model's own version (model.json)
        self.current_origin: Origin | None = None
        self._fingerprint: Fingerprint | None = None
        self._refused: dict[Path, Fingerprint] = {}
        self._seen: dict[Path, Fingerprint] = {}  # fingerprints of the previous scan (a folder must settle)
        self._starting = False
        self._notes: list[str] = []  # why nothing could be loaded (for the start-up alarm)
        self.runtime_missing: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.swaps = 0
        self.refusals = 0

    # -- choosing ---------------------------------------------------------------------------------
    def start(self, model_dir: Path | None = None) -> None:
        """Pick the model to start on (see the module doc); with none, the agent runs physics only."""
        health = self.target.config.health
        root: Path | None = health.model_root
        shipped = shipped_model_dir() if health.use_shipped_model else None
        self._starting = True
        try:
            if root is not None:
                if model_dir is not None:
                    log.info(
                        "health.model_root is set: the model folder given is not used",
                        extra={"model_dir": str(model_dir), "model_root": str(root)},
                    )
                last = self._last_good(Path(root))
                if last is not None:
                    self._try(last, "root")
                self.check_root(Path(root))
                if self.current_dir is None and self.runtime_missing is None:
                    self._notes.append(
                        f"no version under {root} passed its checks"
                        if version_dirs(Path(root))
                        else f"no model version under {root}"
                    )
            elif model_dir is not None and model_dir != shipped:
                self._try(Path(model_dir), "dir")
            if self.current_dir is None and self.runtime_missing is None:
                if shipped is not None:
                    self._try(shipped, "shipped")
                else:
                    self._notes.append("no shipped model" if health.use_shipped_model else "shipped model disabled")
        finally:
            self._starting = False
        if self.current_dir is None:
            reason = self.runtime_missing or "; ".join(self._notes) or "no model configured"
            log.warning("no health model: physics only", extra={"reason": reason[:300]})
            self.target.call_soon(lambda: self.target.set_health_model(None, reason[:900]))

    def swap(self, model_dir: Path | str) -> bool:
        """Try to switch to the model in ``model_dir`` (inside ``health.model_root`` if one is set)."""
        return self._try(Path(model_dir), "dir")

    def check_root(self, root: Path, *, settle: bool = False) -> None:
        """Switch to the newest version under ``root`` newer than the one in use that passes its checks.
        With ``settle`` a folder is only tried once its files are unchanged since the previous scan."""
        if self.runtime_missing is not None:
            return
        dirs = version_dirs(root)
        fps = {d: _fingerprint(d) for d in dirs}
        previous, self._seen = self._seen, fps
        pin = self.target.config.health.model_version_pin
        pin_unmet = bool(pin) and self.current_version != pin
        current_key = (
            semver_key(self.current_dir.name)
            if self.current_origin == "root" and self.current_dir is not None
            else None
        )
        for d in dirs:
            fp = fps[d]
            key = semver_key(d.name)
            if current_key is not None and not pin_unmet and key is not None and key < current_key:
                break  # older than the model in use: never switched to by itself
            if d == self.current_dir and fp == self._fingerprint:
                if pin_unmet:
                    continue
                break
            if not _complete(fp) or self._refused.get(d) == fp:
                continue  # still arriving, or refused and unchanged since
            if settle and previous.get(d) != fp:
                continue  # new or changed since the last scan: look again next time
            if self._try(d, "root") or self.runtime_missing is not None:
                return

    def _last_good(self, root: Path) -> Path | None:
        fact = None
        if self.store is not None:
            try:
                fact = self.store.get_fact(LAST_GOOD_KEY)
            except Exception as exc:
                log.warning("last good model unreadable", extra={"error": str(exc)[:200]})
        if not fact or fact.get("root") != str(root):
            return None
        name = str(fact.get("component_version", ""))
        d = root / name
        if semver_key(name) is None or not (d / MODEL_TFLITE).is_file():
            log.info("the last good model is gone", extra={"model_dir": str(d)})
            return None
        try:
            same = sha256_file(d / MODEL_TFLITE) == fact.get("tflite_sha256")
        except OSError:
            same = False
        if not same:
            log.info("the last good model's files changed; choosing afresh", extra={"model_dir": str(d)})
            return None
        return d

    def _remember(self, path: Path, model: HealthModel) -> None:
        root = self.target.config.health.model_root
        if self.store is None or root is None:
            return
        model_file = getattr(model, "model_file", None)
        try:
            sha = getattr(model_file, "tflite_sha256", None) or sha256_file(path / MODEL_TFLITE)
            self.store.put_fact(
                LAST_GOOD_KEY,
                {
                    "root": str(root),
                    "component_version": path.name,
                    "tflite_sha256": sha,
                    "model_version": model.version,
                    "saved_ts": time.time(),
                },
            )
        except Exception as exc:  # a full disk must not stop the switch; the next start chooses afresh
            log.warning("could not remember the last good model", extra={"error": str(exc)[:200]})

    # -- loading ----------------------------------------------------------------------------------
    def _try(self, path: Path, origin: Origin) -> bool:
        with self._lock:
            fingerprint = _fingerprint(path)
            root = self.target.config.health.model_root
            if origin != "shipped" and root is not None and not _inside(path, Path(root)):
                return self._refuse(path, f"outside the allowed model root {root}", fingerprint)
            try:
                model = self.loader(path)
            except Exception as exc:
                if getattr(exc, "reason", None) == "runtime_unavailable":
                    # not the model's fault and no model can load: stop trying until the agent is reinstalled
                    self.runtime_missing = f"{type(exc).__name__}: {exc}"
                    log.warning("no TFLite runtime: physics only", extra={"reason": self.runtime_missing[:300]})
                    return False
                return self._refuse(path, f"{type(exc).__name__}: {exc}", fingerprint)
            pin = self.target.config.health.model_version_pin
            if pin and model.version != pin:
                return self._refuse(path, f"version {model.version} does not match the pin {pin}", fingerprint)
            previous = self.current_version
            self.current_dir, self.current_version, self.current_origin = path, model.version, origin
            self._fingerprint = fingerprint
            self._refused.pop(path, None)
            self.swaps += 1
            if origin == "root":
                self._remember(path, model)
        self.target.call_soon(lambda: self.target.set_health_model(model))
        log.info(
            "health model loaded",
            extra={"model_dir": str(path), "version": model.version, "origin": origin, "previous": previous},
        )
        return True

    def _refuse(self, path: Path, reason: str, fingerprint: Fingerprint) -> bool:
        self.refusals += 1
        self._refused[path] = fingerprint  # not tried again while its files stay the same
        if path == self.current_dir:
            self._fingerprint = fingerprint
        if self.current_version:
            using, outcome = f"still using {self.current_version}", "keeping the current one"
        elif self._starting:  # nothing chosen yet: the start-up goes on to the next candidate
            using, outcome = "trying the next candidate at start-up", "trying the next candidate"
        else:
            using, outcome = "no model in use", "no model in use"
        log.warning(
            f"health model refused; {outcome}",
            extra={"model_dir": str(path), "reason": reason[:300], "current": self.current_version},
        )
        message = f"model at {path} refused ({reason}); {using}"[:1024]
        if self._starting:
            self._notes.append(f"{path.name}: {reason}"[:300])
        self.target.call_soon(lambda: self.target.raise_alarm("model_rejected", message))
        if self.current_version is None and not self._starting:  # physics only, the alarm stays active
            self.target.call_soon(lambda: self.target.set_health_model(None, f"{path}: {reason}"[:900]))
        return False

    # -- watching ---------------------------------------------------------------------------------
    def watch(self, interval_s: float = DEFAULT_POLL_S, root: Path | None = None) -> None:
        """Every ``interval_s`` seconds: look for a newer version under ``root`` (if given), else reload
        the model folder in use if its files were replaced in place."""
        self._thread = threading.Thread(target=self._watch, args=(interval_s, root), name="model-watch", daemon=True)
        self._thread.start()

    def poll(self, root: Path | None) -> None:
        """One look (what the watch thread does each interval)."""
        if root is not None:
            self.check_root(root, settle=True)
            return
        path = self.current_dir
        if path is None or self.current_origin != "dir" or self.runtime_missing is not None:
            return
        fp = _fingerprint(path)
        previous = self._seen.get(path)
        self._seen = {path: fp}
        if fp != self._fingerprint and fp == previous and _complete(fp):
            self._try(path, "dir")

    def _watch(self, interval_s: float, root: Path | None) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.poll(root)
            except Exception:  # the watcher must outlive any surprise; the model in use keeps running
                log.exception("model watch failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
