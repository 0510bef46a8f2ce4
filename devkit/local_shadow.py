"""A local device-shadow service on an MQTT broker, implementing AWS IoT Core's shadow topics.

For MQTT mode without AWS (``battwin demo``, tests, a lab bench): it subscribes to the reserved topics
``$aws/things/+/shadow/[name/+/]get|update|delete`` and answers as IoT Core documents it:

* ``update``: merge desired/reported (``null`` deletes), bump ``version``, publish ``update/accepted``
  (the request's state + metadata), ``update/documents`` (previous and current) and, when desired differs
  from reported, ``update/delta``; reject with ``update/rejected`` (400 bad JSON / missing state,
  409 version conflict, 413 document over 8 KB);
* ``get``: ``get/accepted`` with state (desired, reported, delta), metadata, version; 404 if none;
* ``delete``: ``delete/accepted`` or 404.

Every response echoes ``clientToken``. Documents are kept in memory and, with ``path``, in a JSON file.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from device_agent.config import MqttSettings
from device_agent.shadow.topics import (
    AWS_ROOT,
    MAX_DEPTH,
    MAX_DOCUMENT_BYTES,
    compute_delta,
    depth,
    encoded_size,
    merge_state,
    metadata_for,
)
from device_agent.uplink.mqtt_transport import MqttTransport

log = logging.getLogger(__name__)


def request_filters(root: str) -> tuple[str, ...]:
    return tuple(
        f"{root}/things/+/shadow/{named}{op}" for named in ("name/+/", "") for op in ("get", "update", "delete")
    )


class ShadowStore:
    """Shadow documents and AWS IoT's update rules, independent of any transport."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.docs: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        if path is not None and path.is_file():
            try:
                self.docs = json.loads(path.read_text())
            except ValueError:
                log.warning("shadow store file unreadable; starting empty", extra={"path": str(path)})

    @staticmethod
    def key(thing: str, shadow: str | None) -> str:
        return f"{thing}/{shadow or ''}"

    def _save(self) -> None:
        if self.path is not None:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.docs))
            tmp.replace(self.path)

    def get(self, thing: str, shadow: str | None) -> dict[str, Any] | None:
        with self._lock:
            doc = self.docs.get(self.key(thing, shadow))
            if doc is None:
                return None
            state = dict(doc["state"])
            delta = compute_delta(state.get("desired", {}), state.get("reported", {}))
            if delta:
                state["delta"] = delta
            return {"state": state, "metadata": doc["metadata"], "version": doc["version"], "timestamp": _now()}

    def update(self, thing: str, shadow: str | None, request: Any) -> tuple[int, dict[str, Any]]:
        """Apply an update request. Returns (0, {accepted, documents, delta}) or (code, error message)."""
        if not isinstance(request, dict) or not isinstance(request.get("state"), dict):
            return 400, {"message": "Missing required node: state"}
        state_in = request["state"]
        unknown = set(state_in) - {"desired", "reported"}
        if unknown:
            return 400, {"message": f"State contains an invalid node: '{sorted(unknown)[0]}'"}
        for section in ("desired", "reported"):
            if section in state_in and state_in[section] is not None and not isinstance(state_in[section], dict):
                return 400, {"message": f"Invalid {section} node: must be an object or null"}
            if depth(state_in.get(section)) > MAX_DEPTH:
                return 400, {"message": "JSON contains too many levels of nesting; maximum is 8"}
        ts = _now()
        with self._lock:
            k = self.key(thing, shadow)
            old = self.docs.get(k)
            version = old["version"] if old else 0
            if "version" in request and old is not None and request["version"] != version:
                return 409, {"message": "Version conflict"}
            prev_state = old["state"] if old else {}
            new_state: dict[str, Any] = {}
            new_meta: dict[str, Any] = dict(old["metadata"]) if old else {}
            for section in ("desired", "reported"):
                base = prev_state.get(section, {})
                if section in state_in:
                    patch = state_in[section]
                    merged = {} if patch is None else merge_state(base, patch)
                    new_meta[section] = merge_state(new_meta.get(section, {}), metadata_for(patch or {}, ts))
                else:
                    merged = base
                if merged:
                    new_state[section] = merged
            doc = {"state": new_state, "metadata": new_meta, "version": version + 1}
            if encoded_size({"state": new_state}) > MAX_DOCUMENT_BYTES:
                return 413, {"message": "The payload exceeds the maximum size allowed"}
            self.docs[k] = doc
            self._save()
        accepted = {
            "state": state_in,
            "metadata": metadata_for(state_in, ts),
            "version": doc["version"],
            "timestamp": ts,
        }
        documents = {
            "previous": {"state": prev_state, "metadata": old["metadata"] if old else {}, "version": version}
            if old
            else None,
            "current": {"state": new_state, "metadata": new_meta, "version": doc["version"]},
            "timestamp": ts,
        }
        delta = compute_delta(new_state.get("desired", {}), new_state.get("reported", {}))
        return 0, {"accepted": accepted, "documents": documents, "delta": delta, "version": doc["version"], "ts": ts}

    def delete(self, thing: str, shadow: str | None) -> dict[str, Any] | None:
        with self._lock:
            doc = self.docs.pop(self.key(thing, shadow), None)
            self._save()
        if doc is None:
            return None
        return {"version": doc["version"], "timestamp": _now()}


def _now() -> int:
    return int(time.time())


def parse_topic(topic: str, root: str = AWS_ROOT) -> tuple[str, str | None, str] | None:
    """``$aws/things/T/shadow/name/S/update`` → (T, S, "update"); classic shadow → (T, None, op)."""
    parts = topic.split("/")
    if len(parts) == 7 and parts[:2] == [root, "things"] and parts[3:5] == ["shadow", "name"]:
        return parts[2], parts[5], parts[6]
    if len(parts) == 5 and parts[:2] == [root, "things"] and parts[3] == "shadow":
        return parts[2], None, parts[4]
    return None


class LocalShadowService:
    """Serves :class:`ShadowStore` on a broker through the same awscrt client the agent uses."""

    def __init__(
        self,
        broker_url: str,
        path: Path | None = None,
        client_id: str = "battwin-shadow-service",
        topic_root: str = AWS_ROOT,
    ) -> None:
        self.topic_root = topic_root
        self.store = ShadowStore(path)
        self.transport = MqttTransport(MqttSettings(url=broker_url), client_id=client_id)
        self.requests = 0

    def start(self, timeout: float = 10.0) -> LocalShadowService:
        self.transport.start()
        if not self.transport.wait_connected(timeout):
            raise RuntimeError("shadow service could not connect to the broker")
        for f in [self.transport.subscribe(t, self._on_request) for t in request_filters(self.topic_root)]:
            f.result(timeout)
        return self

    def stop(self) -> None:
        self.transport.stop()

    def _publish(self, topic: str, body: dict[str, Any]) -> None:
        self.transport.publish(topic, json.dumps(body, separators=(",", ":")).encode())

    def _on_request(self, topic: str, payload: bytes) -> None:
        parsed = parse_topic(topic, self.topic_root)
        if parsed is None:
            return
        thing, shadow, op = parsed
        self.requests += 1
        base = topic
        try:
            request: Any = json.loads(payload) if payload.strip() else {}
        except ValueError:
            self._publish(
                f"{base}/rejected", {"code": 400, "message": "Payload contains invalid json", "timestamp": _now()}
            )
            return
        token = request.get("clientToken") if isinstance(request, dict) else None
        echo = {"clientToken": token} if token is not None else {}

        def reject(code: int, message: str) -> None:
            self._publish(f"{base}/rejected", {"code": code, "message": message, "timestamp": _now(), **echo})

        missing = f"No shadow exists with name: '{shadow or thing}'"
        if op in ("get", "delete"):
            found = self.store.get(thing, shadow) if op == "get" else self.store.delete(thing, shadow)
            if found is None:
                reject(404, missing)
            else:
                self._publish(f"{base}/accepted", {**found, **echo})
        elif op == "update":
            code, result = self.store.update(thing, shadow, request)
            if code:
                reject(code, result["message"])
                return
            self._publish(f"{base}/accepted", {**result["accepted"], **echo})
            self._publish(f"{base}/documents", {**result["documents"], **echo})
            if result["delta"]:
                self._publish(
                    f"{base}/delta",
                    {
                        "version": result["version"],
                        "timestamp": result["ts"],
                        "state": result["delta"],
                        "metadata": metadata_for(result["delta"], result["ts"]),
                        **echo,
                    },
                )
