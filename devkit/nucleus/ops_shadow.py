"""ShadowManager operations: Get/Update/DeleteThingShadow, ListNamedShadowsForThing (see ``shadows``).

Updates publish ``…/update/delta|documents|accepted`` (or ``…/rejected``) on local pub/sub as binary
JSON messages, from the ShadowManager component.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from devkit.nucleus.acl import SHADOW_MANAGER, shadow_resource
from devkit.nucleus.core import SHADOW_MANAGER_COMPONENT, IpcError, b64_arg
from devkit.nucleus.ops_pubsub import LocalPubSubOps
from devkit.nucleus.shadows import ShadowRequestError
from devkit.nucleus.streams import NS, Connection, Reply

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_-")


class ShadowOps(LocalPubSubOps):
    """ShadowManager operations (a mixin of NucleusEmulator)."""

    def _shadow_target(self, conn: Connection, req: dict[str, Any], operation: str) -> tuple[str, str | None]:
        assert conn.component is not None
        thing = req.get("thingName")
        shadow = req.get("shadowName")
        if not isinstance(thing, str) or not thing:
            raise IpcError("InvalidArgumentsError", "ThingName absent in request")
        if shadow is not None and not isinstance(shadow, str):
            raise IpcError("InvalidArgumentsError", "shadowName must be a string")
        for value in (thing, shadow or ""):
            if len(value) > 128 or any(c not in _NAME_CHARS for c in value):
                raise IpcError("InvalidArgumentsError", f"invalid thing or shadow name {value!r}")
        self._authorize(conn.component, SHADOW_MANAGER, operation, shadow_resource(thing, shadow))
        return thing, shadow or None

    def _publish_events(self, events: list[tuple[str, bytes]]) -> None:
        loop = self._require_loop()
        for topic, payload in events:
            loop.call_soon(self._deliver_local, topic, payload, SHADOW_MANAGER_COMPONENT)

    def _op_get_thing_shadow(self, conn: Connection, sid: int, req: dict[str, Any]) -> Reply:
        thing, shadow = self._shadow_target(conn, req, "GetThingShadow")
        try:
            doc = self.shadows.get(thing, shadow)
        except ShadowRequestError as exc:
            self._publish_events([self.shadows.rejected_event(thing, shadow, "get", exc)])
            raise IpcError(exc.kind, exc.message, resourceType="Shadow") from None
        payload = json.dumps(doc, separators=(",", ":")).encode()
        prefix = shadow_resource(thing, shadow)
        self._publish_events([(f"{prefix}/get/accepted", payload)])
        return Reply(NS + "GetThingShadowResponse", {"payload": base64.b64encode(payload).decode()})

    def _op_update_thing_shadow(self, conn: Connection, sid: int, req: dict[str, Any]) -> Reply:
        thing, shadow = self._shadow_target(conn, req, "UpdateThingShadow")
        payload = b64_arg(req.get("payload"), "payload")
        try:
            result = self.shadows.update(thing, shadow, payload)
        except ShadowRequestError as exc:
            self._publish_events([self.shadows.rejected_event(thing, shadow, "update", exc)])
            raise IpcError(exc.kind, exc.message) from None
        self._shadow_changed()
        self._publish_events(result.events)
        body = json.dumps(result.response, separators=(",", ":")).encode()
        return Reply(NS + "UpdateThingShadowResponse", {"payload": base64.b64encode(body).decode()})

    def _op_delete_thing_shadow(self, conn: Connection, sid: int, req: dict[str, Any]) -> Reply:
        thing, shadow = self._shadow_target(conn, req, "DeleteThingShadow")
        try:
            result = self.shadows.delete(thing, shadow)
        except ShadowRequestError as exc:
            self._publish_events([self.shadows.rejected_event(thing, shadow, "delete", exc)])
            raise IpcError(exc.kind, exc.message, resourceType="Shadow") from None
        self._shadow_changed()
        self._publish_events(result.events)
        body = json.dumps(result.response, separators=(",", ":")).encode()
        return Reply(NS + "DeleteThingShadowResponse", {"payload": base64.b64encode(body).decode()})

    def _op_list_named_shadows(self, conn: Connection, sid: int, req: dict[str, Any]) -> Reply:
        assert conn.component is not None
        thing = req.get("thingName")
        if not isinstance(thing, str) or not thing:
            raise IpcError("InvalidArgumentsError", "ThingName absent in request")
        self._authorize(conn.component, SHADOW_MANAGER, "ListNamedShadowsForThing", shadow_resource(thing, None))
        return Reply(
            NS + "ListNamedShadowsForThingResponse",
            {"results": self.shadows.names(thing), "timestamp": time.time()},
        )
