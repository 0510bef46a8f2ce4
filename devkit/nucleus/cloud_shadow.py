"""IoT Core's Device Shadow service on its reserved MQTT topics, for the nucleus emulator's "cloud".

When the emulator does not forward to a real broker, a component's PublishToIoTCore to a shadow request
topic is answered here, as IoT Core's shadow service answers it, to the SubscribeToIoTCore subscribers
(AWS IoT Developer Guide, "Device Shadow MQTT topics" and "Device Shadow error messages"):

* ``P/get`` → ``P/get/accepted`` (state with ``delta`` when desired ≠ reported, metadata, version,
  timestamp) or ``P/get/rejected`` 404 ``No shadow exists with name: '<shadow>'``;
* ``P/update`` → ``P/update/accepted``, ``P/update/documents`` (previous and current) and, when desired ≠
  reported after it, ``P/update/delta``; or ``P/update/rejected`` (400 bad JSON / state, 409 ``Version
  conflict`` when the request's ``version`` is not the current one, 413 over the size limit);
* ``P/delete`` → ``P/delete/accepted`` or ``P/delete/rejected`` 404;

where ``P`` is ``$aws/things/<thing>/shadow`` or ``$aws/things/<thing>/shadow/name/<shadow>``. Every
answer echoes the request's ``clientToken``. The documents and their update rules are the emulator's
:class:`~devkit.nucleus.shadows.ShadowStore` (the same store the emulator's
ShadowManager operations use: one shadow per thing and name, as ShadowManager keeps it in sync).
"""

from __future__ import annotations

import json
from typing import Any

from devkit.nucleus.shadows import ShadowRequestError, ShadowResult, ShadowStore, topic_prefix

#: the order IoT Core's answers to an update are delivered in here (it does not promise one)
_UPDATE_ORDER = ("accepted", "documents", "delta")

Messages = list[tuple[str, bytes]]


def parse_request_topic(topic: str) -> tuple[str, str | None, str] | None:
    """``$aws/things/T/shadow/name/S/update`` → (T, S, "update"); ``$aws/things/T/shadow/get`` → (T, None,
    "get"); None for any other topic (including the answer topics)."""
    parts = topic.split("/")
    if len(parts) == 7 and parts[:2] == ["$aws", "things"] and parts[3:5] == ["shadow", "name"]:
        thing, shadow, op = parts[2], parts[5], parts[6]
    elif len(parts) == 5 and parts[:2] == ["$aws", "things"] and parts[3] == "shadow":
        thing, shadow, op = parts[2], None, parts[4]
    else:
        return None
    if not thing or shadow == "" or op not in ("get", "update", "delete"):
        return None
    return thing, shadow, op


def cloud_order(result: ShadowResult) -> Messages:
    """A store update's messages in the order the cloud delivers them here (accepted first)."""
    return sorted(result.events, key=lambda event: _UPDATE_ORDER.index(event[0].rsplit("/", 1)[1]))


class CloudShadowService:
    """Answers shadow requests; :meth:`handle` returns the messages to deliver to IoT Core subscribers."""

    def __init__(self, store: ShadowStore) -> None:
        self.store = store
        self.requests = 0

    def handle(self, topic: str, payload: bytes) -> Messages | None:
        """The answers to a publish on ``topic``, or None if it is not a shadow request topic."""
        parsed = parse_request_topic(topic)
        if parsed is None:
            return None
        thing, shadow, op = parsed
        self.requests += 1
        if op == "update":
            try:
                return cloud_order(self.store.update(thing, shadow, payload))
            except ShadowRequestError as exc:
                return [self.store.rejected_event(thing, shadow, op, exc)]
        token: str | None = None
        try:
            request: Any = json.loads(payload) if payload.strip() else {}
        except (ValueError, UnicodeDecodeError):
            error = ShadowRequestError("InvalidArgumentsError", 400, "Invalid JSON")
            return [self.store.rejected_event(thing, shadow, op, error)]
        if isinstance(request, dict) and isinstance(request.get("clientToken"), str):
            token = request["clientToken"]
        echo = {"clientToken": token} if token is not None else {}
        prefix = topic_prefix(thing, shadow)
        try:
            body = self.store.get(thing, shadow) if op == "get" else self.store.delete(thing, shadow).response
        except ShadowRequestError as exc:
            # IoT Core names the shadow (the named shadow, or the thing for the classic one)
            missing = ShadowRequestError(exc.kind, exc.code, f"No shadow exists with name: '{shadow or thing}'", token)
            return [self.store.rejected_event(thing, shadow, op, missing if exc.code == 404 else exc)]
        return [(f"{prefix}/{op}/accepted", json.dumps({**body, **echo}, separators=(",", ":")).encode())]
