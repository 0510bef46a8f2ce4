"""Local device shadows with the semantics of Greengrass ShadowManager (and AWS IoT device shadows).

* An update merges ``state.desired`` / ``state.reported`` into the document (``null`` deletes a key, or
  the whole section); the version goes up by one on every accepted update, starting at 1.
* A request that carries ``version`` is refused with a conflict unless it equals the current version.
* ``desired`` + ``reported`` may not exceed ``max_document_bytes`` (ShadowManager's default: 8 KiB).
* ``clientToken`` is echoed in the response and in the messages published for the update.
* After an update ShadowManager publishes on local pub/sub (binary JSON payloads), in this order:
  ``…/update/delta`` (only if desired ≠ reported), ``…/update/documents``, ``…/update/accepted``;
  a refused update publishes ``…/update/rejected`` with ``{"code", "message"}``.

Topic prefix: ``$aws/things/<thing>/shadow`` (classic) or ``$aws/things/<thing>/shadow/name/<name>``.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MAX_DOCUMENT_BYTES = 8 * 1024
MAX_DEPTH = 6
MAX_CLIENT_TOKEN = 64
PAYLOAD_TOO_LARGE = "The payload exceeds the maximum size allowed"
VERSION_CONFLICT = "Version conflict"


def topic_prefix(thing_name: str, shadow_name: str | None) -> str:
    if shadow_name:
        return f"$aws/things/{thing_name}/shadow/name/{shadow_name}"
    return f"$aws/things/{thing_name}/shadow"


class ShadowRequestError(Exception):
    """A refused request: ``kind`` is the IPC error shape (ConflictError, InvalidArgumentsError,
    ResourceNotFoundError), ``code`` the HTTP-style code ShadowManager puts on the rejected topic."""

    def __init__(self, kind: str, code: int, message: str, client_token: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = code
        self.message = message
        self.client_token = client_token


@dataclass
class ShadowResult:
    response: dict[str, Any]
    #: (topic, JSON payload) published on local pub/sub, in order
    events: list[tuple[str, bytes]] = field(default_factory=list)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=False).encode()


def _depth(node: Any) -> int:
    if isinstance(node, dict):
        return 1 + max((_depth(v) for v in node.values()), default=0)
    return 0


def _merge(target: dict[str, Any], meta: dict[str, Any], patch: dict[str, Any], ts: int) -> dict[str, Any]:
    """Merge ``patch`` into ``target`` (None deletes); update ``meta`` alike; return the patch's metadata."""
    patch_meta: dict[str, Any] = {}
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
            meta.pop(key, None)
            patch_meta[key] = {"timestamp": ts}
        elif isinstance(value, dict):
            sub = target.get(key)
            if not isinstance(sub, dict):
                sub = {}
                target[key] = sub
            sub_meta = meta.get(key)
            if not isinstance(sub_meta, dict) or "timestamp" in sub_meta:
                sub_meta = {}
                meta[key] = sub_meta
            patch_meta[key] = _merge(sub, sub_meta, value, ts)
        else:
            target[key] = copy.deepcopy(value)
            meta[key] = {"timestamp": ts}
            patch_meta[key] = {"timestamp": ts}
    return patch_meta


def compute_delta(desired: Any, reported: Any) -> dict[str, Any]:
    """The desired keys whose values differ from reported (nested objects compared key by key)."""
    if not isinstance(desired, dict):
        return {}
    out: dict[str, Any] = {}
    rep = reported if isinstance(reported, dict) else {}
    for key, dv in desired.items():
        rv = rep.get(key, _MISSING)
        if isinstance(dv, dict) and isinstance(rv, dict):
            sub = compute_delta(dv, rv)
            if sub:
                out[key] = sub
        elif dv != rv:
            out[key] = copy.deepcopy(dv)
    return out


def _delta_metadata(delta: dict[str, Any], meta: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in delta.items():
        m = meta.get(key) if isinstance(meta, dict) else None
        if isinstance(value, dict) and isinstance(m, dict) and "timestamp" not in m:
            out[key] = _delta_metadata(value, m)
        elif m is not None:
            out[key] = copy.deepcopy(m)
    return out


class _Missing:
    pass


_MISSING = _Missing()


@dataclass
class _Shadow:
    state: dict[str, dict[str, Any]]
    metadata: dict[str, dict[str, Any]]
    version: int
    timestamp: int

    def document(self, with_delta: bool = False) -> dict[str, Any]:
        state = {k: copy.deepcopy(v) for k, v in self.state.items()}
        metadata = {k: copy.deepcopy(v) for k, v in self.metadata.items()}
        if with_delta:
            delta = compute_delta(self.state.get("desired"), self.state.get("reported"))
            if delta:
                state["delta"] = delta
        return {"state": state, "metadata": metadata, "version": self.version, "timestamp": self.timestamp}


class ShadowStore:
    """All shadows of the emulated core device, keyed by (thing, shadow name; "" = classic)."""

    def __init__(
        self, max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES, clock: Callable[[], float] = time.time
    ) -> None:
        self.max_document_bytes = max_document_bytes
        self._clock = clock
        self._shadows: dict[tuple[str, str], _Shadow] = {}

    def _now(self) -> int:
        return int(self._clock())

    def get(self, thing_name: str, shadow_name: str | None) -> dict[str, Any]:
        shadow = self._shadows.get((thing_name, shadow_name or ""))
        if shadow is None:
            raise ShadowRequestError(
                "ResourceNotFoundError", 404, f"No shadow exists with name: '{thing_name}/{shadow_name or ''}'"
            )
        return shadow.document(with_delta=True)

    def names(self, thing_name: str) -> list[str]:
        return sorted(name for (thing, name) in self._shadows if thing == thing_name and name)

    def update(self, thing_name: str, shadow_name: str | None, payload: bytes) -> ShadowResult:
        prefix = topic_prefix(thing_name, shadow_name)
        request, token = self._parse_update(payload)  # refusals carry the request's clientToken once known
        return self._apply(thing_name, shadow_name or "", request, token, prefix)

    def rejected_event(
        self, thing_name: str, shadow_name: str | None, op: str, exc: ShadowRequestError
    ) -> tuple[str, bytes]:
        body: dict[str, Any] = {"code": exc.code, "message": exc.message, "timestamp": self._now()}
        if exc.client_token is not None:
            body["clientToken"] = exc.client_token
        return f"{topic_prefix(thing_name, shadow_name)}/{op}/rejected", _dumps(body)

    def _parse_update(self, payload: bytes) -> tuple[dict[str, Any], str | None]:
        if not payload:
            raise ShadowRequestError("InvalidArgumentsError", 400, "Missing update payload")
        try:
            request = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            raise ShadowRequestError("InvalidArgumentsError", 400, "Invalid JSON") from None
        if not isinstance(request, dict):
            raise ShadowRequestError("InvalidArgumentsError", 400, "Invalid JSON: the document must be an object")
        token = request.get("clientToken")
        if token is not None and (not isinstance(token, str) or len(token) > MAX_CLIENT_TOKEN):
            raise ShadowRequestError("InvalidArgumentsError", 400, "Invalid clientToken")
        state = request.get("state")
        if not isinstance(state, dict):
            raise ShadowRequestError("InvalidArgumentsError", 400, "Missing required node: state", token)
        for key, value in state.items():
            if key not in ("desired", "reported"):
                raise ShadowRequestError("InvalidArgumentsError", 400, f"Invalid state node: {key}", token)
            if value is not None and not isinstance(value, dict):
                raise ShadowRequestError("InvalidArgumentsError", 400, f"State node {key} must be an object", token)
            if _depth(value) > MAX_DEPTH:
                too_deep = f"JSON contains too many levels of nesting; maximum is {MAX_DEPTH}"
                raise ShadowRequestError("InvalidArgumentsError", 400, too_deep, token)
        version = request.get("version")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 0):
            raise ShadowRequestError("InvalidArgumentsError", 400, "Invalid version", token)
        return request, token

    def _apply(
        self, thing_name: str, shadow_name: str, request: dict[str, Any], token: str | None, prefix: str
    ) -> ShadowResult:
        key = (thing_name, shadow_name)
        current = self._shadows.get(key)
        version = request.get("version")
        if version is not None and version != (current.version if current else 0):
            raise ShadowRequestError("ConflictError", 409, VERSION_CONFLICT, token)
        ts = self._now()
        new = copy.deepcopy(current) if current else _Shadow({}, {}, 0, ts)
        patch_meta: dict[str, Any] = {}
        for section, patch in request["state"].items():
            if patch is None:
                new.state.pop(section, None)
                new.metadata.pop(section, None)
                continue
            target = new.state.setdefault(section, {})
            meta = new.metadata.setdefault(section, {})
            patch_meta[section] = _merge(target, meta, patch, ts)
        size = sum(len(_dumps(new.state[s])) for s in ("desired", "reported") if s in new.state)
        if size > self.max_document_bytes:
            raise ShadowRequestError("InvalidArgumentsError", 413, PAYLOAD_TOO_LARGE, token)
        new.version += 1
        new.timestamp = ts
        self._shadows[key] = new

        def with_token(body: dict[str, Any]) -> dict[str, Any]:
            if token is not None:
                body["clientToken"] = token
            return body

        events: list[tuple[str, bytes]] = []
        delta = compute_delta(new.state.get("desired"), new.state.get("reported"))
        if delta:
            delta_msg = {
                "version": new.version,
                "timestamp": ts,
                "state": delta,
                "metadata": _delta_metadata(delta, new.metadata.get("desired")),
            }
            events.append((f"{prefix}/update/delta", _dumps(with_token(delta_msg))))
        previous = current.document() if current else None
        documents = {"previous": previous, "current": new.document(), "timestamp": ts}
        events.append((f"{prefix}/update/documents", _dumps(with_token(documents))))
        response = with_token(
            {"state": copy.deepcopy(request["state"]), "metadata": patch_meta, "version": new.version, "timestamp": ts}
        )
        events.append((f"{prefix}/update/accepted", _dumps(response)))
        return ShadowResult(response, events)

    def delete(self, thing_name: str, shadow_name: str | None) -> ShadowResult:
        key = (thing_name, shadow_name or "")
        current = self._shadows.pop(key, None)
        if current is None:
            raise ShadowRequestError(
                "ResourceNotFoundError", 404, f"No shadow exists with name: '{thing_name}/{shadow_name or ''}'"
            )
        response = {"version": current.version, "timestamp": self._now()}
        return ShadowResult(response, [(f"{topic_prefix(thing_name, shadow_name)}/delete/accepted", _dumps(response))])
