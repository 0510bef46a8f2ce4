"""Component processes as the nucleus runs them: an install step to completion, then the run step.

Each step runs as ``sh -c <script>`` in its own process group (so a stop reaches its children), in the
component's work folder, with its output appended to ``<root>/logs/<component>.log`` (as the classic
nucleus keeps one log per component). A run step that exits on its own reports FINISHED (exit 0) or
ERRORED; a step stopped by the nucleus reports nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

StateCallback = Callable[[str, str], None]


class ComponentProcesses:
    def __init__(self, on_state: StateCallback) -> None:
        self._on_state = on_state
        self._running: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    def pid(self, name: str) -> int | None:
        with self._lock:
            proc = self._running.get(name)
        return proc.pid if proc is not None and proc.poll() is None else None

    def install(self, name: str, script: str, env: Mapping[str, str], cwd: Path, log: Path, timeout: float) -> int:
        """Run an install step to its end; its exit code (a step over ``timeout`` is killed: -9)."""
        proc = self._spawn(script, env, cwd, log)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc, signal.SIGKILL)
            proc.wait()
            return -9

    def start(self, name: str, script: str, env: Mapping[str, str], cwd: Path, log: Path) -> int:
        """Start a run step; its PID. Its end is reported through the state callback."""
        proc = self._spawn(script, env, cwd, log)
        with self._lock:
            self._running[name] = proc
        threading.Thread(target=self._watch, args=(name, proc), name=f"gg-run-{name}", daemon=True).start()
        return proc.pid

    def stop(self, name: str, timeout: float = 10.0) -> None:
        """Stop a component's run step (SIGTERM to its group, SIGKILL after ``timeout``)."""
        with self._lock:
            proc = self._running.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        _kill_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc, signal.SIGKILL)
            proc.wait()

    def stop_all(self) -> None:
        with self._lock:
            names = list(self._running)
        for name in names:
            self.stop(name)

    def _watch(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        code = proc.wait()
        with self._lock:
            current = self._running.get(name) is proc
            if current:
                del self._running[name]
        if current:  # not stopped by the nucleus: the step ended by itself
            self._on_state(name, "FINISHED" if code == 0 else "ERRORED")

    @staticmethod
    def _spawn(script: str, env: Mapping[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            return subprocess.Popen(  # noqa: S603 - the recipe's own script, run as the nucleus runs it
                ["/bin/sh", "-c", script],
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )


def _kill_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
