"""The agent's side of the Home Assistant output: :func:`attach_home_assistant` hooks an agent's ``on_message``
(every message the agent spooled: telemetry, cycles, health, alarms) to a :class:`HomeAssistantBridge`, which
queues it for the state publisher's thread and there turns it into discovery configs and states per pack.

A pack is one attached agent (one source): a Home Assistant device. Its sample entities are announced with its
first sample (the number of cells and temperature sensors is the pack's), its health entities and alarm binary
sensors when it is attached. Simulated fallback samples of a real source (``source.fallback = "simulator"``) never
reach Home Assistant: the pack is unavailable while its source is offline. A multi-pack runner (anything with an
``agents`` list) is attached pack by pack, over one connection.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from device_agent.config import AgentConfig, ConfigError, HomeAssistantSettings
from device_agent.home_assistant.discovery import (
    OFFLINE,
    ONLINE,
    PackIdentity,
    Topics,
    battwin_version,
    discovery_config,
    slug,
)
from device_agent.home_assistant.entities import (
    ALARM_ROWS,
    HEALTH_ROWS,
    EntityDescription,
    Value,
    sample_rows,
    state_of,
)
from device_agent.home_assistant.publisher import Publication, StatePublisher
from schema.messages import Alarm, Health, Message, MessageKind, Sample, Telemetry

if TYPE_CHECKING:
    from device_agent.agent import Agent
    from device_agent.home_assistant.connection import LocalBroker

log = logging.getLogger(__name__)


@runtime_checkable
class HasAgents(Protocol):
    """A runner of several packs (``device_agent.packs.MultiPackAgent``): one agent per pack."""

    config: AgentConfig

    @property
    def agents(self) -> list[Agent]: ...


class HomeAssistantConfigError(ConfigError):
    """The ``home_assistant`` section names something that is not there (a TLS file)."""


@dataclass
class _Pack:
    identity: PackIdentity
    rows: tuple[EntityDescription[Sample], ...] = ()
    active: set[str] = field(default_factory=set)
    online: bool | None = None


@dataclass(frozen=True)
class _Seed:
    """A pack attached: its identity and the alarms already active (raised before the bridge was there)."""

    identity: PackIdentity
    active: frozenset[str]


@dataclass(frozen=True)
class _Delivered:
    #: the pack (the agent that spooled the message)
    pack: str
    kind: MessageKind
    body: Message
    #: the delivering agent's source is the simulator (else simulated samples are its fallback: not shown)
    source_simulated: bool


def check_files(settings: HomeAssistantSettings) -> None:
    """The TLS files named in the section exist (checked before anything connects)."""
    for name in ("ca_file", "cert_file", "key_file"):
        path = getattr(settings, name)
        if path is not None and not path.is_file():
            raise HomeAssistantConfigError(f"home_assistant.{name}: {path} does not exist or is not a file")


class HomeAssistantBridge:
    def __init__(self, settings: HomeAssistantSettings, thing_name: str) -> None:
        self.settings = settings
        node_id = settings.node_id or slug(thing_name)
        self.topics = Topics(settings.discovery_prefix, settings.state_prefix, node_id)
        self.client_id = settings.client_id or f"battwin-ha-{node_id}"[:64]
        self.sw_version = battwin_version()
        self.thing_name = thing_name
        self._packs: dict[str, _Pack] = {}  # the publisher's thread only
        self._users = 0
        self._keys: set[str] = set()
        self._lock = threading.Lock()
        self.publisher = StatePublisher(self._translate, settings.queue_size, self._status)
        self.broker: LocalBroker | None = None

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        from device_agent.home_assistant.connection import LocalBroker

        self.broker = LocalBroker(
            self.settings,
            self.client_id,
            self.topics.status,
            OFFLINE.encode(),
            self.topics.birth,
            self._on_broker_message,
            self.publisher.wake,
        )
        self.publisher.start(self.broker)
        self.broker.start()
        log.info(
            "home assistant output on",
            extra={"broker": self.broker.broker, "discovery_prefix": self.topics.discovery_prefix,
                   "node_id": self.topics.node_id},
        )  # fmt: skip

    def stop(self, timeout_s: float = 5.0) -> None:
        self.publisher.stop(timeout_s)
        if self.broker is not None:
            self.broker.stop(timeout_s)
        log.info(
            "home assistant output off",
            extra={"published": self.publisher.published, "dropped_queue_full": self.publisher.dropped,
                   "superseded_undelivered": self.publisher.superseded},
        )  # fmt: skip

    def add_agent(self, agent: Agent) -> None:
        """Follow ``agent``: its messages become states; the bridge stops after the last agent's shutdown."""
        simulated = agent.source.simulated
        source_id, thing = agent.source.source_id, agent.config.thing_name
        with self._lock:
            key = slug(source_id)
            if key in self._keys:  # two packs on the same kind of source id: the thing name tells them apart
                key = slug(f"{thing}_{source_id}")
            base, n = key, 1
            while key in self._keys:
                n += 1
                key = f"{base}_{n}"
            self._keys.add(key)
            self._users += 1
        identity = PackIdentity(source_id, thing, simulated, key)
        self.publisher.submit(_Seed(identity, frozenset(agent.alarms.active)), droppable=False)
        previous = agent.on_message

        def on_message(kind: MessageKind, body: Message, msg_id: str) -> None:
            if previous is not None:
                previous(kind, body, msg_id)
            # a telemetry batch may be dropped by a full queue (the next one carries newer readings); an alarm or
            # a health record never is: it changes what Home Assistant shows until the next one
            self.publisher.submit(_Delivered(key, kind, body, simulated), droppable=isinstance(body, Telemetry))

        agent.on_message = on_message
        agent.on_shutdown.append(self._release)

    def _release(self) -> None:
        with self._lock:
            self._users -= 1
            last = self._users == 0
        if last:
            self.stop()

    # -- broker side --------------------------------------------------------------------------------
    def _on_broker_message(self, topic: str, payload: bytes) -> None:
        if topic == self.topics.birth and payload.strip() == ONLINE.encode():
            log.info("home assistant (re)started: sending discovery and states again")
            self.publisher.request_resync()

    def _status(self, online: bool) -> Publication:
        return Publication(self.topics.status, (ONLINE if online else OFFLINE).encode(), True)

    # -- messages → publications (the publisher's thread) -------------------------------------------------
    def _translate(self, item: Any) -> Iterator[Publication]:
        if isinstance(item, _Seed):
            yield from self._seed(item)
            return
        if not isinstance(item, _Delivered):
            return
        pack = self._packs.get(item.pack)
        if pack is None:  # not seeded: the bridge stopped before this pack was added
            return
        body = item.body
        if isinstance(body, Telemetry):
            shown = [s for s in body.samples if not (s.simulated and not item.source_simulated)]
            if shown:  # the batch's latest reading (fallback data while the real source is offline: not shown)
                yield from self._on_sample(pack, shown[-1])
        elif isinstance(body, Health):
            yield self._state(pack, "health", state_of(HEALTH_ROWS, body), body.ts, body.simulated)
        elif isinstance(body, Alarm):
            yield from self._on_alarm(pack, body)

    def _seed(self, seed: _Seed) -> Iterator[Publication]:
        pack = self._packs[seed.identity.pack] = _Pack(seed.identity, active=set(seed.active))
        yield from self._discovery(pack, HEALTH_ROWS)
        yield from self._discovery(pack, ALARM_ROWS)
        yield self._alarm_state(pack)
        if "source_offline" in pack.active:
            pack.online = False
            yield self._availability(pack)

    def _on_sample(self, pack: _Pack, sample: Sample) -> Iterator[Publication]:
        rows = sample_rows(sample)
        if len(rows) > len(pack.rows):  # the first sample, or more cells / sensors than before
            pack.rows = rows
            yield from self._discovery(pack, rows)
        # a batch closed after the source went offline still carries the readings from before: they are shown,
        # but only the source_offline alarm's clearing brings the pack back online
        if pack.online is not True and "source_offline" not in pack.active:
            pack.online = True
            yield self._availability(pack)
        yield self._state(pack, "sample", state_of(pack.rows, sample), sample.ts, sample.simulated)

    def _on_alarm(self, pack: _Pack, alarm: Alarm) -> Iterator[Publication]:
        if alarm.active:
            pack.active.add(alarm.code)
        else:
            pack.active.discard(alarm.code)
        if alarm.code == "source_offline":
            online = not alarm.active
            if pack.online != online:
                pack.online = online
                yield self._availability(pack)
        yield self._alarm_state(pack)

    # -- publications -------------------------------------------------------------------------------
    def _discovery(self, pack: _Pack, rows: tuple[EntityDescription[Any], ...]) -> Iterator[Publication]:
        for row in rows:
            topic, config = discovery_config(row, pack.identity, self.topics, self.sw_version)
            yield Publication(topic, _json(config), self.settings.retain_discovery)

    def _availability(self, pack: _Pack) -> Publication:
        payload = ONLINE if pack.online else OFFLINE
        return Publication(self.topics.pack_availability(pack.identity.pack), payload.encode(), True)

    def _alarm_state(self, pack: _Pack) -> Publication:
        state = state_of(ALARM_ROWS, frozenset(pack.active))
        return Publication(self.topics.state(pack.identity.pack, "alarms"), _json(state), self.settings.retain_state)

    def _state(self, pack: _Pack, stream: str, state: dict[str, Value], ts: float, simulated: bool) -> Publication:
        payload = {**state, "ts": ts, "simulated": simulated}
        return Publication(self.topics.state(pack.identity.pack, stream), _json(payload), self.settings.retain_state)


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def attach_home_assistant(
    target: Agent | HasAgents, config: AgentConfig | None = None, bridge: HomeAssistantBridge | None = None
) -> HomeAssistantBridge | None:
    """With ``home_assistant.enabled``: publish the packs of ``target`` (an agent, or a multi-pack runner with an
    ``agents`` list) to Home Assistant: MQTT discovery on the local broker, in a thread of its own. Several calls
    in one process can share one connection: pass the first call's result as ``bridge``. Off (the default):
    returns None and nothing connects."""
    config = config or target.config
    settings = config.home_assistant
    if not settings.enabled:
        return None
    if bridge is None:
        check_files(settings)
        bridge = HomeAssistantBridge(settings, config.thing_name)
        bridge.start()
    for agent in target.agents if isinstance(target, HasAgents) else [target]:
        bridge.add_agent(agent)
    return bridge
