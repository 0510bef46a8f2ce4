"""Configuration through the device shadow ``battwin-config``.

The desired state uses the config file's structure (``{"source": {"sample_interval_s": 5}, "health":
{"eol_threshold": 0.75}, "log_level": "DEBUG"}``) and is validated by the same pydantic model. Each
changed field is judged on its own: a valid change to a field in :data:`LIVE_FIELDS` is applied at
once, without a restart; anything else is refused and named under ``reported.rejected`` with the reason,
and the last good value stays in force. The reported state echoes every live field's value in effect.

Shadow deltas arrive on transport threads; they are handed to the agent's own thread (``call_soon``)
so configuration never changes under a running poll.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from pydantic import ValidationError

from device_agent.config import AgentConfig
from device_agent.shadow.client import ShadowClient, ShadowError

log = logging.getLogger(__name__)

#: fields a shadow may change while the agent runs
LIVE_FIELDS: frozenset[str] = frozenset(
    {
        "log_level",
        "source.sample_interval_s",
        "source.offline_after_failures",
        "source.retries",
        "telemetry.batch_max_samples",
        "telemetry.batch_max_age_s",
        "telemetry.decimation",
        "telemetry.encoding",
        "tracker.rest_current_a",
        "tracker.cutoff_voltage_per_cell_v",
        "tracker.min_segment_s",
        "tracker.max_gap_s",
        "tracker.debounce_samples",
        "health.eol_threshold",
        "health.rated_capacity_ah",
        "health.min_cycles_for_fit",
        "health.forecast_max_cycles",
        "health.model_version_pin",
        "alarms.max_temperature_c",
        "alarms.hysteresis_c",
        "alarms.max_cell_spread_v",
    }
)
MAX_REASON = 200


class ConfigTarget(Protocol):
    config: AgentConfig

    def apply_config(self, config: AgentConfig) -> None: ...

    def call_soon(self, fn: Callable[[], None]) -> None: ...


def leaves(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Flatten a nested dict to ("a.b", value) pairs."""
    if isinstance(tree, dict) and tree:
        for key, value in tree.items():
            yield from leaves(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, tree


def nest(pairs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dotted, value in pairs.items():
        node = out
        keys = dotted.split(".")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return out


def live_values(config: AgentConfig) -> dict[str, Any]:
    data = config.model_dump(mode="json")
    out: dict[str, Any] = {}
    for path in LIVE_FIELDS:
        node: Any = data
        for key in path.split("."):
            node = node[key]
        out[path] = node
    return nest(out)


def judge(config: AgentConfig, desired: dict[str, Any]) -> tuple[AgentConfig, dict[str, str], list[str]]:
    """Validate desired changes field by field. Returns (new config, rejected {field: reason}, applied)."""
    rejected: dict[str, str] = {}
    accepted: dict[str, Any] = {}
    base = config.model_dump(mode="json")
    for path, value in leaves(desired):
        if not path:
            continue
        if path == "rejected" or path.startswith("rejected."):
            continue
        if path not in LIVE_FIELDS:
            rejected[path] = "not a live setting (unknown, or needs a restart with a new config file)"
            continue
        candidate = _with(base, path, value)
        try:
            AgentConfig.model_validate(candidate)
        except ValidationError as exc:
            rejected[path] = "; ".join(e["msg"] for e in exc.errors())[:MAX_REASON]
            continue
        accepted[path] = value
    merged = base
    for path, value in accepted.items():
        merged = _with(merged, path, value)
    try:
        new = AgentConfig.model_validate(merged)
    except ValidationError as exc:  # a combination of individually valid values that is invalid
        reason = "; ".join(e["msg"] for e in exc.errors())[:MAX_REASON]
        return config, {**rejected, **dict.fromkeys(accepted, reason)}, []
    changed = [p for p in accepted if _get(base, p) != _get(new.model_dump(mode="json"), p)]
    return new, rejected, changed


def _with(tree: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    keys = path.split(".")
    out = dict(tree)
    node = out
    for key in keys[:-1]:
        node[key] = dict(node.get(key) or {})
        node = node[key]
    node[keys[-1]] = value
    return out


def _get(tree: dict[str, Any], path: str) -> Any:
    node: Any = tree
    for key in path.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node


class ConfigSync:
    """Follows the shadow on a worker thread; applies accepted changes on the agent's thread."""

    def __init__(self, target: ConfigTarget, shadow: ShadowClient, timeout_s: float = 10.0) -> None:
        self.target = target
        self.shadow = shadow
        self.timeout_s = timeout_s
        self.config = target.config  # the configuration as judged (applied on the agent thread soon)
        self.rejected: dict[str, str] = {}
        self._rejected_values: dict[str, Any] = {}
        self.applied_version: int | None = None
        self.on_rejected: Callable[[dict[str, str]], None] | None = None
        self._inbox: queue.Queue[tuple[dict[str, Any], int | None] | None] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.handled = 0

    # -- lifecycle --------------------------------------------------------------------------------
    def start(
        self, connected: Callable[[float], bool] | None = None, reconnects: Callable[[], int] | None = None
    ) -> None:
        """Start following the shadow in the background. ``connected(timeout)`` waits for the link;
        ``reconnects()`` counts connections, so the document is read again after each reconnect."""
        self._connected = connected or (lambda _t: True)
        self._reconnects = reconnects or (lambda: 0)
        self._thread = threading.Thread(target=self._run, name="shadow-config", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._inbox.put(None)
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s + 5)

    def _run(self) -> None:
        synced_at = -1
        subscribed = False
        while not self._stop.is_set():
            if synced_at != self._reconnects():
                if not self._connected(1.0):
                    continue
                try:
                    if not subscribed:
                        self.shadow.on_delta(lambda state, version: self._inbox.put((state, version)))
                        subscribed = True
                    synced_at = self._reconnects()
                    doc = self.shadow.get(self.timeout_s)
                except Exception as exc:
                    log.warning("shadow read failed; will retry", extra={"error": str(exc)[:200]})
                    self._stop.wait(2.0)
                    synced_at = -1
                    continue
                desired = ((doc or {}).get("state") or {}).get("desired") or {}
                self._rejected_values = {}  # judge the whole desired state afresh
                self.handle(desired, (doc or {}).get("version"))
            try:
                item = self._inbox.get(timeout=1.0)
            except queue.Empty:
                continue
            if item is not None:
                self.handle(*item)

    # -- judging ----------------------------------------------------------------------------------
    def handle(self, desired: dict[str, Any], version: int | None) -> None:
        pairs = dict(leaves(desired))
        if pairs and all(k in self._rejected_values and self._rejected_values[k] == v for k, v in pairs.items()):
            # a delta that only repeats what was already refused (IoT Core re-sends the delta after every
            # update while desired ≠ reported): nothing new to judge or report, and no report loop
            return
        self.handled += 1
        new, rejected, changed = judge(self.config, desired)
        self._rejected_values = {k: pairs.get(k) for k in rejected}
        if changed:
            self.config = new
            self.target.call_soon(lambda: self.target.apply_config(new))
            log.info("configuration applied from shadow", extra={"fields": changed, "shadow_version": version})
        if rejected:
            log.warning("shadow configuration rejected", extra={"rejected": rejected, "shadow_version": version})
            if self.on_rejected is not None:
                self.on_rejected(rejected)
        self.applied_version = version
        self.report(rejected)

    def report(self, rejected: dict[str, str]) -> None:
        reported: dict[str, Any] = live_values(self.config)
        # replace the whole rejected section: null removes what is no longer rejected
        stale = {k: None for k in self.rejected if k not in rejected}
        reported["rejected"] = {**stale, **rejected} if (rejected or stale) else None
        self.rejected = rejected
        try:
            self.shadow.update({"state": {"reported": reported}}, self.timeout_s)
        except ShadowError as exc:
            log.warning("could not report configuration to the shadow", extra={"error": str(exc)})
