"""Configuration operations (GetConfiguration, UpdateConfiguration, SubscribeToConfigurationUpdate,
SubscribeToValidateConfigurationUpdates, which is accepted and never fires) and UpdateState."""

from __future__ import annotations

from typing import Any

from devkit.nucleus.core import EmulatorCore, IpcError, key_path_arg
from devkit.nucleus.streams import NS, Connection, Reply, Stream


class ConfigurationOps(EmulatorCore):
    """Configuration and state operations (a mixin of NucleusEmulator)."""

    def _op_get_configuration(self, conn: Connection, sid: int, req: dict[str, Any]) -> Reply:
        assert conn.component is not None
        component = req.get("componentName") or conn.component
        key_path = key_path_arg(req.get("keyPath"))
        if not isinstance(component, str) or not self.configs.has(component):
            raise IpcError("ResourceNotFoundError", f"Component {component} not found", resourceType="Component")
        try:
            value = self.configs.get(component, key_path)
        except KeyError:
            raise IpcError("ResourceNotFoundError", "Key not found", resourceType="Configuration") from None
        return Reply(NS + "GetConfigurationResponse", {"componentName": component, "value": value})

    def _op_update_configuration(self, conn: Connection, sid: int, req: dict[str, Any]) -> Reply:
        assert conn.component is not None
        key_path = key_path_arg(req.get("keyPath"))
        value = req.get("valueToMerge")
        stamp = req.get("timestamp")
        if not isinstance(value, dict):
            raise IpcError("InvalidArgumentsError", "valueToMerge must be an object")
        if not isinstance(stamp, int | float) or isinstance(stamp, bool):
            raise IpcError("InvalidArgumentsError", "timestamp is required")
        self._merge_config(conn.component, key_path, value, float(stamp))
        return Reply(NS + "UpdateConfigurationResponse", {})

    def _merge_config(
        self, component: str, key_path: tuple[str, ...], value: dict[str, Any], stamp: float
    ) -> list[tuple[str, ...]]:
        changed = self.configs.merge(component, key_path, value, stamp)
        loop = self._require_loop()
        for path in changed:
            loop.call_soon(self._notify_config, component, path)
        return changed

    def _notify_config(self, component: str, path: tuple[str, ...]) -> None:
        body = {"configurationUpdateEvent": {"componentName": component, "keyPath": list(path)}}
        for conn in list(self._conns):
            for stream in list(conn.streams.values()):
                if stream.kind != "config" or stream.component != component:
                    continue
                n = min(len(stream.key_path), len(path))
                if stream.key_path[:n] == path[:n]:
                    stream.push(body)

    def _op_subscribe_to_configuration_update(self, conn: Connection, sid: int, req: dict[str, Any]) -> Reply:
        assert conn.component is not None
        component = req.get("componentName") or conn.component
        if not isinstance(component, str) or not self.configs.has(component):
            raise IpcError("ResourceNotFoundError", f"Component {component} not found", resourceType="Component")
        key_path = key_path_arg(req.get("keyPath"))
        stream = Stream(conn, sid, "config", NS + "ConfigurationUpdateEvents", component=component, key_path=key_path)
        return Reply(NS + "SubscribeToConfigurationUpdateResponse", {}, stream)

    def _op_subscribe_to_validate(self, conn: Connection, sid: int, req: dict[str, Any]) -> Reply:
        assert conn.component is not None
        stream = Stream(conn, sid, "validate", NS + "ValidateConfigurationUpdateEvents", component=conn.component)
        return Reply(NS + "SubscribeToValidateConfigurationUpdatesResponse", {}, stream)

    def _op_update_state(self, conn: Connection, sid: int, req: dict[str, Any]) -> Reply:
        assert conn.component is not None
        state = req.get("state")
        if state not in ("RUNNING", "ERRORED"):
            raise IpcError("InvalidArgumentsError", f"invalid state {state!r}")
        with self._cond:
            self._states[conn.component] = str(state)
            self._cond.notify_all()
        return Reply(NS + "UpdateStateResponse", {})
