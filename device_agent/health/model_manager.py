"""Loads the health model and swaps it live when a new version arrives.

A new ``com.battwin.SohModel`` component version lands in a new artifact directory (or replaces the files
in place). :meth:`ModelManager.swap` loads it with every check the runtime makes (sha256 of the
.tflite against model.json, tensor shapes, feature list) and, if a ``health.model_version_pin`` is set,
its version; only then does the agent switch to it, between two polls. A model that fails any check is
refused with a ``model_rejected`` alarm naming the reason, and the model in use keeps running.
:meth:`watch` notices files that change in place (mtime/size of model.json and model.tflite) and, given the
component's artifact root (``…/artifacts/com.battwin.SohModel``), a new version directory appearing there —
which is how a new model component version arrives under Greengrass while the agent keeps running (the
Agent depends on SohModel with ``DependencyType: SOFT``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from device_agent.health.estimator import HealthModel

log = logging.getLogger(__name__)

Loader = Callable[[Path], HealthModel]


class SwapTarget(Protocol):
    config: Any

    def call_soon(self, fn: Callable[[], None]) -> None: ...

    def set_health_model(self, model: HealthModel | None, reason: str | None = None) -> None: ...

    def raise_alarm(self, code: str, message: str) -> None: ...


def default_loader(model_dir: Path) -> HealthModel:
    from device_agent.health.hybrid import load_hybrid_model

    return load_hybrid_model(model_dir)


def _inside(path: Path, root: Path) -> bool:
    """True if ``path`` (symlinks and '..' resolved) lies inside ``root``."""
    try:
        return path.resolve().is_relative_to(root.resolve())
    except OSError:
        return False


def _version_key(name: str) -> tuple[int, ...] | None:
    parts = name.split("-", maxsplit=1)[0].split(".")
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else None


def newest_version_dir(root: Path) -> Path | None:
    """The highest-versioned sub-directory of ``root`` holding a model.json (numeric: 1.10.0 > 1.9.0)."""
    try:
        candidates = [
            (key, d)
            for d in root.iterdir()
            if d.is_dir() and (key := _version_key(d.name)) is not None and (d / "model.json").is_file()
        ]
    except OSError:
        return None
    return max(candidates)[1] if candidates else None


def _fingerprint(model_dir: Path) -> tuple[tuple[str, int, int], ...]:
    out = []
    for name in ("model.json", "model.tflite"):
        try:
            st = (model_dir / name).stat()
        except OSError:
            out.append((name, -1, -1))
        else:
            out.append((name, st.st_mtime_ns, st.st_size))
    return tuple(out)


class ModelManager:
    def __init__(self, target: SwapTarget, loader: Loader = default_loader) -> None:
        self.target = target
        self.loader = loader
        self.current_dir: Path | None = None
        self.current_version: str | None = None
        self._fingerprint: tuple[tuple[str, int, int], ...] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.swaps = 0
        self.refusals = 0
        self._refused: set[tuple[Path, tuple[tuple[str, int, int], ...]]] = set()

    def swap(self, model_dir: Path | str) -> bool:
        """Try to switch to the model in ``model_dir``. True if the agent will use it."""
        path = Path(model_dir)
        with self._lock:
            fingerprint = _fingerprint(path)
            root = getattr(self.target.config.health, "model_root", None)
            if root is not None and not _inside(path, Path(root)):
                return self._refuse(path, f"outside the allowed model root {root}", fingerprint)
            try:
                model = self.loader(path)
            except Exception as exc:
                return self._refuse(path, f"{type(exc).__name__}: {exc}", fingerprint)
            pin = getattr(self.target.config.health, "model_version_pin", None)
            if pin and model.version != pin:
                return self._refuse(path, f"version {model.version} does not match the pin {pin}", fingerprint)
            previous = self.current_version
            self.current_dir, self.current_version, self._fingerprint = path, model.version, fingerprint
            self.swaps += 1
        self.target.call_soon(lambda: self.target.set_health_model(model))
        log.info("health model loaded", extra={"model_dir": str(path), "version": model.version, "previous": previous})
        return True

    def _refuse(self, path: Path, reason: str, fingerprint: tuple[tuple[str, int, int], ...]) -> bool:
        self.refusals += 1
        if path == self.current_dir:
            self._fingerprint = fingerprint  # do not retry the same broken files over and over
        log.warning(
            "health model refused; keeping the current one",
            extra={"model_dir": str(path), "reason": reason[:300], "current": self.current_version},
        )
        if self.current_version is None:  # nothing to keep: the agent runs on physics, the alarm stays active
            self.target.call_soon(lambda: self.target.set_health_model(None, f"{path}: {reason}"[:900]))
        else:
            message = f"model at {path} refused ({reason}); still using {self.current_version}"
            self.target.call_soon(lambda: self.target.raise_alarm("model_rejected", message[:1024]))
        return False

    def watch(self, interval_s: float = 10.0, root: Path | None = None) -> None:
        """Every ``interval_s`` seconds: switch to the newest version directory under ``root`` (if given)
        and reload the current directory if its files changed in place."""
        self._thread = threading.Thread(
            target=self._watch, args=(interval_s, root), name="model-watch", daemon=True
        )
        self._thread.start()

    def check_root(self, root: Path) -> None:
        newest = newest_version_dir(root)
        if newest is None or newest == self.current_dir:
            return
        key = (newest, _fingerprint(newest))
        if key in self._refused:
            return
        if not self.swap(newest):
            self._refused.add(key)

    def _watch(self, interval_s: float, root: Path | None) -> None:
        while not self._stop.wait(interval_s):
            if root is not None:
                self.check_root(root)
            path = self.current_dir
            if path is not None and _fingerprint(path) != self._fingerprint:
                self.swap(path)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
