"""Assemble an agent from its configuration: source, transport, spool, health model."""

from __future__ import annotations

import json
import logging
import os
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from device_agent.agent import Agent
from device_agent.config import AgentConfig
from device_agent.health.estimator import HealthModel
from device_agent.health.model_manager import ModelManager
from device_agent.health.shipped import shipped_model_dir
from device_agent.home_assistant import attach_home_assistant
from device_agent.shadow.client import ShadowClient
from device_agent.shadow.config_sync import ConfigSync
from device_agent.shadow.mqtt_shadow import MqttShadowClient
from device_agent.uplink.spool import Spool
from device_agent.uplink.transport import MemoryTransport, Transport
from hardware.errors import SourceError
from hardware.registry import create_source
from hardware.replay import ReplaySource
from schema.messages import Message, MessageKind

if TYPE_CHECKING:
    from device_agent.packs import MultiPackAgent

log = logging.getLogger(__name__)

GG_SOCKET_ENV = "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT"


def uplink_description(config: AgentConfig) -> str:
    """Where the agent's messages go, for its start-up log line: the nucleus under Greengrass, else the broker."""
    if os.environ.get(GG_SOCKET_ENV) and os.environ.get("SVCUID"):
        return "greengrass-ipc"
    return config.mqtt.url


def build_transport(config: AgentConfig) -> Transport:
    if os.environ.get(GG_SOCKET_ENV) and os.environ.get("SVCUID"):
        try:
            from device_agent.greengrass.ipc_transport import IpcTransport
        except ImportError:
            log.warning("running under Greengrass but the IPC transport is not available; using MQTT")
        else:
            from device_agent.greengrass.connection import IpcConnection

            ipc = config.ipc
            connection = IpcConnection(
                stale_token_refusals=ipc.stale_token_refusals, stale_token_after_s=ipc.stale_token_after_s
            )
            transport = IpcTransport(
                connection,
                max_inflight_messages=ipc.inflight_messages,
                max_inflight_bytes=ipc.inflight_bytes,
                store_hold_s=ipc.store_hold_s,
                close_connection=True,
            )
            return transport
    from device_agent.uplink.mqtt_transport import MqttTransport

    return MqttTransport(config.mqtt, client_id=config.mqtt.client_id or config.thing_name)


def model_dir_for(config: AgentConfig) -> Path | None:
    """``health.model_dir``, else the shipped model (unless ``health.use_shipped_model`` is off)."""
    if config.health.model_dir is not None:
        return config.health.model_dir
    return shipped_model_dir() if config.health.use_shipped_model else None


def load_health_model(config: AgentConfig) -> tuple[HealthModel | None, str | None]:
    """The learned model for this configuration, or (None, reason)."""
    model_dir = model_dir_for(config)
    if model_dir is None:
        return None, None
    try:
        from device_agent.health.hybrid import load_hybrid_model
    except ImportError as exc:
        return None, f"hybrid runtime not installed: {exc}"
    try:
        return load_hybrid_model(model_dir), None
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"


def build_shadow(config: AgentConfig, transport: Transport) -> ShadowClient:
    """The shadow over IoT Core's shadow topics on the agent's own transport: MQTT, or under Greengrass
    PublishToIoTCore / SubscribeToIoTCore (both nuclei; lite has no shadow IPC)."""
    return MqttShadowClient(transport, config.thing_name, config.shadow.name, config.shadow.topic_root)


def attach_config_sync(agent: Agent, shadow: ShadowClient) -> ConfigSync:
    """Follow the config shadow: changes apply live; refused fields raise a ``config_rejected`` alarm."""
    sync = ConfigSync(agent, shadow, agent.config.shadow.timeout_s)

    def on_rejected(rejected: dict[str, str]) -> None:
        detail = "; ".join(f"{k}: {v}" for k, v in rejected.items())
        agent.call_soon(lambda: agent.alarms.pulse("config_rejected", agent.now(), f"rejected: {detail}"[:1024]))

    sync.on_rejected = on_rejected
    transport = agent.transport
    sync.start(connected=transport.wait_connected, reconnects=lambda: int(getattr(transport, "connects", 0)))
    agent.on_shutdown.append(sync.stop)
    return sync


def attach_model_manager(agent: Agent, model_dir: Path | None = None, watch_s: float | None = None) -> ModelManager:
    """Choose the health model and keep watching: with ``health.model_root`` the last good version (kept in
    the agent's state store), else the newest under the root that passes its checks, else the shipped model;
    newer versions are switched to live once checked, a bad one is refused with an alarm and the model in
    use keeps running (see health.model_manager). Without a root, ``model_dir`` (or the shipped model)."""
    health = agent.config.health
    manager = ModelManager(agent, store=agent.state)
    manager.start(model_dir if model_dir is not None else health.model_dir)
    manager.watch(watch_s if watch_s is not None else health.model_poll_s, root=health.model_root)
    agent.on_shutdown.append(manager.stop)
    return manager


def build_agent(config: AgentConfig, transport: Transport | None = None) -> Agent:
    source = create_source(config.source.url, config.source)
    agent = Agent(config, source, transport or build_transport(config))
    if config.health.model_root is not None or model_dir_for(config) is not None:
        agent.model_manager = attach_model_manager(agent, config.health.model_dir)
    if config.shadow.enabled:
        attach_config_sync(agent, build_shadow(config, agent.transport))
    attach_home_assistant(agent, config)  # optional output to Home Assistant (off unless home_assistant.enabled)
    return agent


def build_runner(config: AgentConfig, transport: Transport | None = None) -> Agent | MultiPackAgent:
    """One agent, or with ``packs`` configured the multi-pack agent (device_agent.packs) over one transport."""
    if config.packs:
        return build_pack_runner(config, transport)
    return build_agent(config, transport)


def build_pack_runner(config: AgentConfig, transport: Transport | None = None) -> MultiPackAgent:
    """The multi-pack agent (device_agent.packs) over one transport, with the optional outputs attached."""
    from device_agent.packs import build_multipack

    runner = build_multipack(config, transport)
    attach_home_assistant(runner, config)  # every pack over one local connection (off unless enabled)
    return runner


class _DiscardTransport(MemoryTransport):
    """Acknowledges everything and keeps nothing (offline replay)."""

    def publish(self, topic: str, payload: bytes) -> Future[None]:
        fut: Future[None] = Future()
        fut.set_result(None)
        return fut


def replay_offline(
    config: AgentConfig, log_path: Path, out_path: Path, start_ts: float = 0.0, *, telemetry: bool = False
) -> dict[str, Any]:
    """Run a BMS log through tracker + estimator without a broker; write cycles/health/alarms as JSONL (and with
    ``telemetry`` the telemetry messages too: every sample, with battwin's ``soc_est_pct``)."""
    config = config.model_copy(deep=True)
    if not telemetry:
        config.telemetry.decimation = 10_000
    source = ReplaySource(log_path, start_ts=start_ts)
    source.open()  # raises SourceConfigError for a missing file or columns before anything is written
    model, reason = load_health_model(config)
    counts: dict[str, Any] = {"cycles": 0, "health": 0, "alarms": 0, "telemetry": 0, "samples": 0, "error": None}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("w", encoding="utf-8") as out:

        def write(kind: MessageKind, body: Message, msg_id: str) -> None:
            if kind == "telemetry" and not telemetry:
                return
            counts[kind] += 1
            if kind == "telemetry":  # a reading the source does not have is left out, as on the wire
                out.write('{"kind":"telemetry",' + body.model_dump_json(exclude_none=True)[1:] + "\n")
                return
            out.write(json.dumps({"kind": kind, **body.model_dump(mode="json")}, separators=(",", ":")) + "\n")

        agent = Agent(config, source, _DiscardTransport(), Spool(":memory:"), health_model=model, on_message=write)
        if reason:
            agent.set_health_model(None, reason)
        try:
            stats = agent.run(threading.Event())
        except SourceError as exc:
            counts["error"] = f"{type(exc).__name__}: {exc}"
            stats = agent.stats
        counts["samples"] = stats.samples
        counts["skipped_rows"] = source.skipped
    return counts
