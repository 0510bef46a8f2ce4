"""Several packs under one agent (``[[packs]]`` in the configuration): one process, one transport, one twin per pack.

Each pack is a complete :class:`~device_agent.agent.Agent` of its own — its own source, polling thread, cycle
tracker, health estimator, alarms, spool file (``spool.<id>.db``, with its share of ``spool.max_bytes``) and
thing name (``<core thing>.<pack id>``, topics ``battwin/<core>.<id>/<kind>``) — built from the core's
configuration by :func:`device_agent.config.pack_config`. What the packs share:

* **one transport** (one MQTT connection, or one Greengrass IPC connection), through :class:`SharedTransport`:
  every pack's agent starts and stops its handle as it always does, the connection itself is started once and
  stopped once, after the last pack finished sending;
* **one health model** (loaded and watched once, calls serialised: a TFLite interpreter is not re-entrant);
* **one configuration shadow** (the core's ``battwin-config``): a live change applies to every pack;
* **one lock per shared bus** (Modbus RTU units or SBS addresses on one device): a pack's read holds its bus,
  and a sibling that cannot get the bus within ``BUS_WAIT_S`` counts a failed poll instead of waiting.

A pack never stalls another: each polls on its own thread; a driver that raises anything other than a
``SourceError`` is counted as a failed poll of that pack (offline alarm, reconnect), and a pack whose read hangs
only holds its own thread (and its bus). The bank view (device_agent.bank) is computed every
``bank.interval_s`` on the coordinator's thread.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device_agent.agent import Agent, AgentStats
from device_agent.alarms import AlarmCode
from device_agent.bank import BankView, PackFigures, bank_view, write_status
from device_agent.config import BUS_ADDRESSED, AgentConfig, PackSettings, pack_config
from device_agent.health.estimator import HealthModel
from device_agent.uplink.publisher import Publisher
from device_agent.uplink.spool import Spool
from device_agent.uplink.state_store import StateStore
from device_agent.uplink.transport import MessageHandler, Transport, inflight_limit
from hardware.errors import SourceConfigError, SourceError, SourceUnavailable
from hardware.source import Source
from schema.messages import Sample
from schema.source_settings import parse_source_url

log = logging.getLogger(__name__)

#: how long a pack waits for its shared bus before counting the poll as failed
BUS_WAIT_S = 10.0
#: how long the coordinator waits for a pack's thread at shutdown (its drain is bounded by 5 s)
JOIN_TIMEOUT_S = 20.0


class SharedTransport:
    """One transport for several users: started by the first :meth:`acquire`, stopped by the last
    :meth:`release` — exactly once each, whatever order the users come and go in."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self._lock = threading.Lock()
        self._users = 0
        self.starts = 0
        self.stops = 0
        self.handles = 0

    def acquire(self) -> None:
        with self._lock:
            self._users += 1
            if self._users == 1:
                self.starts += 1
                self.inner.start()

    def release(self) -> None:
        with self._lock:
            if self._users == 0:
                return
            self._users -= 1
            if self._users == 0:
                self.stops += 1
                self.inner.stop()

    def handle(self) -> TransportHandle:
        self.handles += 1
        return TransportHandle(self)


class TransportHandle:
    """What one pack's agent sees of the shared transport: its own ``start``/``stop`` (each counted once),
    everything else the shared connection's."""

    def __init__(self, share: SharedTransport) -> None:
        self._share = share
        self._inner = share.inner
        self._held = False
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if not self._held:
                self._held = True
                self._share.acquire()

    def stop(self) -> None:
        with self._lock:
            if self._held:
                self._held = False
                self._share.release()

    @property
    def connected(self) -> bool:
        return self._inner.connected

    def wait_connected(self, timeout: float) -> bool:
        return self._inner.wait_connected(timeout)

    def publish(self, topic: str, payload: bytes) -> Future[None]:
        return self._inner.publish(topic, payload)

    def subscribe(self, topic: str, handler: MessageHandler) -> Future[None]:
        return self._inner.subscribe(topic, handler)

    def max_payload_bytes(self, topic: str) -> int | None:
        limit = getattr(self._inner, "max_payload_bytes", None)
        return limit(topic) if callable(limit) else None

    @property
    def max_inflight_messages(self) -> int | None:
        """The transport's window shared out among its users (at least one each)."""
        limit = inflight_limit(self._inner)
        return None if limit is None else max(1, limit // max(1, self._share.handles))

    def __getattr__(self, name: str) -> Any:  # connects, fatal, add_fatal_callback ... of the shared transport
        return getattr(self._inner, name)


class GuardedSource(Source):
    """A pack's source as its agent polls it: the last sample kept for the bank view, a shared bus held for
    the read, and anything a driver raises besides a ``SourceError`` turned into ``SourceUnavailable`` (a
    failed poll of this pack, never an exception that ends its thread)."""

    def __init__(self, inner: Source, bus: threading.Lock | None = None, bus_name: str = "") -> None:
        self.inner = inner
        self.bus = bus
        self.bus_name = bus_name
        self.source_id = inner.source_id
        self.simulated = inner.simulated
        self.paced = inner.paced
        self.time_acceleration = inner.time_acceleration
        self.last: Sample | None = None
        self.failures = 0

    @property
    def interval_s(self) -> float | None:
        return self.inner.interval_s

    @interval_s.setter
    def interval_s(self, value: float | None) -> None:
        self.inner.interval_s = value

    def _guarded(self, what: str, call: Callable[[], Any]) -> Any:
        if self.bus is not None and not self.bus.acquire(timeout=BUS_WAIT_S):
            raise SourceUnavailable(f"bus {self.bus_name} busy for {BUS_WAIT_S:.0f} s (another pack's read)")
        try:
            return call()
        except SourceError:
            self.failures += 1
            raise
        except Exception as exc:
            self.failures += 1
            log.exception("driver failed", extra={"source": self.source_id, "during": what})
            raise SourceUnavailable(f"driver failed during {what}: {type(exc).__name__}: {exc}"[:500]) from exc
        finally:
            if self.bus is not None:
                self.bus.release()

    def open(self) -> None:
        self._guarded("open", self.inner.open)

    def poll(self) -> Sample:
        sample: Sample = self._guarded("poll", self.inner.poll)
        self.last = sample
        return sample

    def close(self) -> None:
        try:
            self.inner.close()
        except Exception as exc:
            log.warning("source close failed", extra={"source": self.source_id, "error": str(exc)[:200]})


class SerialisedModel:
    """One health model shared by the packs' estimators: forecasts one at a time."""

    def __init__(self, model: HealthModel) -> None:
        self.model = model
        self.method = model.method
        self.version = model.version
        self._lock = threading.Lock()

    def forecast(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return self.model.forecast(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


@dataclass
class Pack:
    settings: PackSettings
    agent: Agent
    source: GuardedSource

    @property
    def id(self) -> str:
        return self.settings.id

    @property
    def thing_name(self) -> str:
        return self.agent.config.thing_name


def bus_key(url: str) -> str | None:
    """The device a bus-addressed source shares with its siblings (None: not a shared bus)."""
    parsed = parse_source_url(url)
    return parsed.path if parsed.scheme in BUS_ADDRESSED and parsed.path else None


class MultiPackAgent:
    """Runs every pack of ``config.packs`` (see the module doc). ``sources`` (pack id → Source) replaces the
    drivers the URLs name (tests, benchmarks)."""

    def __init__(
        self,
        config: AgentConfig,
        transport: Transport,
        sources: dict[str, Source] | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not config.packs:
            raise ValueError("MultiPackAgent needs a configuration with packs")
        from hardware.registry import create_source

        self.config = config
        self.shared = SharedTransport(transport)
        self.transport = transport
        self.clock = clock
        self.on_shutdown: list[Callable[[], None]] = []
        self.bank_views = 0
        self.last_bank: BankView | None = None
        self.packs: list[Pack] = []
        buses: dict[str, threading.Lock] = {}
        built: list[tuple[PackSettings, AgentConfig, GuardedSource]] = []
        try:
            for settings in config.packs:
                pcfg = pack_config(config, settings)
                if sources is not None and settings.id in sources:
                    inner = sources[settings.id]
                else:
                    try:
                        inner = create_source(pcfg.source.url, pcfg.source)
                    except SourceConfigError as exc:
                        raise SourceConfigError(f"packs[{settings.id}]: {exc}") from None
                key = bus_key(settings.url)
                bus = buses.setdefault(key, threading.Lock()) if key else None
                built.append((settings, pcfg, GuardedSource(inner, bus, key or "")))
            handles = [self.shared.handle() for _ in built]  # all first: each sizes its window by their number
            for (settings, pcfg, source), handle in zip(built, handles, strict=True):
                agent = Agent(pcfg, source, handle)
                self.packs.append(Pack(settings, agent, source))
        except BaseException:
            for pack in self.packs:
                pack.agent.close()
            raise
        # the core's own spool file: its facts (the last good health model), and what a single-pack agent left
        # unsent there before packs were configured — sent now, beside the packs, not forgotten
        self.core_spool = Spool(
            config.spool.path, config.spool.max_bytes, config.spool.policy, config.spool.synchronous
        )
        self.state = StateStore(self.core_spool.path)
        self.leftover: Publisher | None = None
        if self.core_spool.pending:
            log.info(
                "sending what the single-pack agent left in the core spool", extra={"pending": self.core_spool.pending}
            )
            self.leftover = Publisher(
                self.core_spool, self.shared.handle(), config.mqtt.inflight, config.mqtt.publish_timeout_s
            )

    # -- the coordinator ----------------------------------------------------------------------------
    @property
    def agents(self) -> list[Agent]:
        return [p.agent for p in self.packs]

    def run(self, stop: threading.Event, max_samples: int | None = None) -> dict[str, AgentStats]:
        """Run every pack until ``stop`` is set or every pack ended; each pack's stats by id."""
        self.shared.acquire()  # the coordinator holds the connection until every pack has drained
        threads = [
            threading.Thread(target=self._run_pack, args=(p, stop, max_samples), name=f"pack-{p.id}", daemon=True)
            for p in self.packs
        ]
        try:
            for t in threads:
                t.start()
            if self.leftover is not None:
                self.leftover.start()
            interval = self.config.bank.interval_s
            next_bank = time.monotonic() + min(interval, 5.0)
            while not stop.is_set() and any(t.is_alive() for t in threads):
                stop.wait(max(0.0, min(0.5, next_bank - time.monotonic())))
                if time.monotonic() >= next_bank:
                    next_bank += interval
                    self._safe_bank_view()
        finally:
            stop.set()
            deadline = time.monotonic() + JOIN_TIMEOUT_S
            for pack, t in zip(self.packs, threads, strict=True):
                t.join(max(0.0, deadline - time.monotonic()))
                if t.is_alive():
                    log.error("pack did not stop (its source hangs); leaving it", extra={"pack": pack.id})
            self._safe_bank_view()
            if self.leftover is not None:
                self.leftover.stop(drain_timeout_s=5.0)
            for hook in self.on_shutdown:
                try:
                    hook()
                except Exception as exc:
                    log.warning("shutdown hook failed", extra={"error": str(exc)[:200]})
            self.shared.release()
        return {p.id: p.agent.stats for p in self.packs}

    def _run_pack(self, pack: Pack, stop: threading.Event, max_samples: int | None) -> None:
        try:
            pack.agent.run(stop, max_samples=max_samples)
        except Exception:
            # only this pack ends (e.g. a replayed log with a malformed row); the others go on
            log.exception("pack stopped by an error", extra={"pack": pack.id, "thing": pack.thing_name})

    def close(self) -> None:
        for pack in self.packs:
            pack.agent.close()
        self.state.close()
        self.core_spool.close()

    @property
    def pending(self) -> int:
        return sum(p.agent.spool.pending for p in self.packs)

    # -- bank view ----------------------------------------------------------------------------------
    def figures(self) -> list[PackFigures]:
        out = []
        for pack in self.packs:
            last = pack.source.last
            points = pack.agent.estimator.points
            capacity = points[-1].capacity_ah if points else None
            c0 = pack.agent.estimator.settings.rated_capacity_ah
            out.append(
                PackFigures(
                    pack_id=pack.id,
                    online=last is not None and not pack.agent._offline,
                    capacity_ah=capacity,
                    soh=(capacity / c0) if capacity is not None and c0 else None,
                    soc_pct=last.soc_pct if last else None,
                    voltage_v=last.voltage_v if last else None,
                    current_a=last.current_a if last else None,
                )
            )
        return out

    def bank_view(self) -> BankView:
        figures = self.figures()
        simulated = any(p.source.simulated for p in self.packs)
        view = bank_view(self.config.bank.arrangement, figures, simulated=simulated)
        self.last_bank = view
        self.bank_views += 1
        log.info("bank view", extra={"bank": json.dumps(view.to_dict(), separators=(",", ":"))})
        path = self.config.bank.status_path or self.config.spool.path.with_name("bank.json")
        if str(self.config.spool.path) != ":memory:":
            write_status(Path(path), view, self.clock(), figures)
        return view

    def _safe_bank_view(self) -> None:
        try:
            self.bank_view()
        except Exception as exc:  # a full disk must not stop the packs
            log.warning("bank view failed", extra={"error": str(exc)[:200]})

    # -- fan-out: the shadow's ConfigSync and the ModelManager see the packs as one target ---------------
    def call_soon(self, fn: Callable[[], None]) -> None:
        fn()  # what it calls below only queues work on each pack's own thread

    def apply_config(self, config: AgentConfig) -> None:
        self.config = config
        for pack in self.packs:
            pack.agent.call_soon(functools.partial(pack.agent.apply_config, pack_config(config, pack.settings)))

    def set_health_model(self, model: HealthModel | None, reason: str | None = None) -> None:
        shared = SerialisedModel(model) if model is not None else None
        for agent in self.agents:
            agent.call_soon(functools.partial(agent.set_health_model, shared, reason))

    def raise_alarm(self, code: AlarmCode, message: str) -> None:
        for agent in self.agents:
            agent.call_soon(functools.partial(agent.raise_alarm, code, message))


def build_multipack(
    config: AgentConfig, transport: Transport | None = None, sources: dict[str, Source] | None = None
) -> MultiPackAgent:
    """The multi-pack agent with the runtime's parts: transport, one model manager, one config shadow."""
    from device_agent.health.model_manager import ModelManager
    from device_agent.runtime import build_shadow, build_transport, model_dir_for
    from device_agent.shadow.config_sync import ConfigSync

    runner = MultiPackAgent(config, transport or build_transport(config), sources)
    health = config.health
    if health.model_root is not None or model_dir_for(config) is not None:
        manager = ModelManager(runner, store=runner.state)
        manager.start(health.model_dir)
        manager.watch(health.model_poll_s, root=health.model_root)
        runner.on_shutdown.append(manager.stop)
    if config.shadow.enabled:
        sync = ConfigSync(runner, build_shadow(config, runner.transport), config.shadow.timeout_s)

        def on_rejected(rejected: dict[str, str]) -> None:
            detail = "; ".join(f"{k}: {v}" for k, v in rejected.items())
            runner.raise_alarm("config_rejected", f"rejected: {detail}"[:1024])

        sync.on_rejected = on_rejected
        shared_transport = runner.transport
        sync.start(
            connected=shared_transport.wait_connected,
            reconnects=lambda: int(getattr(shared_transport, "connects", 0)),
        )
        runner.on_shutdown.append(sync.stop)
    return runner
