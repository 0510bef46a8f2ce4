"""The edge agent's coordinator: poll the source, track cycles, estimate health, spool, publish.

Data path (one thread polls, one publishes)::

    Source.poll() ─► Sample ─┬─► TelemetryBatcher ─────────────► Spool (SQLite) ─► Publisher ─► Transport
                             └─► CycleTracker ─► CycleRecord ─┬─► Spool                            (MQTT/IPC)
                                                              └─► HealthEstimator ─► Health ─► Spool
    failures / thresholds ─► AlarmBook ─► Alarm ─► Spool

Everything that leaves the device is written to the spool first, encoded by ``messages.encode_envelope``
(the one encoder of the wire format). The jobs beside the coordinator live in their own modules: batching in
``uplink.batcher``, the alarm rows and their thresholds in ``alarms``, what survives a restart in ``progress``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from device_agent.alarms import HEALTH_ALARMS, SAMPLE_ALARMS, AlarmBook, AlarmCode
from device_agent.config import AgentConfig
from device_agent.health.anomalies import AnomalyMonitor, Finding
from device_agent.health.estimator import HealthEstimator, HealthModel
from device_agent.health.model_manager import ModelManager
from device_agent.progress import Progress
from device_agent.soc import SocEstimator, latest_capacity
from device_agent.tracking.cycle_tracker import CycleTracker
from device_agent.uplink.batcher import TelemetryBatch, TelemetryBatcher
from device_agent.uplink.publisher import Publisher
from device_agent.uplink.sizing import NotSplittable, split_telemetry, telemetry_overhead
from device_agent.uplink.spool import Spool
from device_agent.uplink.state_store import StateStore
from device_agent.uplink.transport import Transport, payload_budget
from hardware.errors import DataFileError, SourceError, SourceExhausted, SourceUnavailable
from hardware.source import Source
from schema.messages import (
    Alarm,
    Body,
    CycleRecord,
    Message,
    MessageKind,
    Sample,
    Telemetry,
    encode_envelope,
    new_message_id,
)

__all__ = ["Agent", "AgentStats", "TelemetryBatch", "TelemetryBatcher"]

log = logging.getLogger(__name__)

#: at most one ``spool_dropped`` alarm this often (agent time), carrying the count since the last one
DROP_ALARM_EVERY_S = 60.0
#: how many times the plain-JSON budget a packed telemetry batch may hold before the batcher closes it (packed
#: batches are ~1/9 of their JSON; one that still comes out over the budget is split into plain parts)
PACKED_BUDGET_FACTOR = 3


@dataclass
class AgentStats:
    samples: int = 0
    poll_failures: int = 0
    telemetry_batches: int = 0
    cycles: int = 0
    health: int = 0
    alarms: int = 0
    spool_dropped: int = 0
    started_monotonic: float = field(default_factory=time.monotonic)


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        source: Source,
        transport: Transport,
        spool: Spool | None = None,
        *,
        health_model: HealthModel | None = None,
        on_message: Callable[[MessageKind, Message, str], None] | None = None,
    ) -> None:
        self.config = config
        self.source = source
        self.transport = transport
        self.spool = spool or Spool(
            config.spool.path, config.spool.max_bytes, config.spool.policy, config.spool.synchronous
        )
        self.state = StateStore(self.spool.path)
        self.publisher = Publisher(
            self.spool,
            transport,
            inflight=config.mqtt.inflight,
            ack_timeout_s=config.mqtt.publish_timeout_s,
            on_too_large=self._message_too_large,
        )
        self.stats = AgentStats()
        self.on_message = on_message
        simulated = source.simulated
        self.alarms = AlarmBook(source.source_id, self._emit_alarm, simulated=simulated)
        self.tracker = CycleTracker(config.tracker, source.source_id, simulated=simulated)
        self.estimator = HealthEstimator(config.health, source.source_id, model=health_model, simulated=simulated)
        self.anomalies = AnomalyMonitor(config.anomalies, config.tracker.rest_current_a)
        self.batcher = TelemetryBatcher(
            config.telemetry.batch_max_samples,
            config.telemetry.batch_max_age_s,
            config.telemetry.decimation,
            self._telemetry_bytes(),
        )
        self._tasks: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.on_shutdown: list[Callable[[], None]] = []
        self.model_manager: ModelManager | None = None  # set by the runtime when a model directory is configured
        self._failures = 0
        self._offline = False
        self._fallback: Source | None = None
        self._last_ts = 0.0
        self._unreported_drops = 0
        self._last_drop_alarm_ts = -DROP_ALARM_EVERY_S
        self.soc = SocEstimator(config, latest_capacity(self.estimator))
        self.progress = Progress(self.state, source.source_id, self.tracker, self.estimator, soc=self.soc)
        self.progress.restore()

    # -- public -----------------------------------------------------------------------------------
    def topic(self, kind: MessageKind) -> str:
        return self.config.mqtt.topic(self.config.thing_name, kind)

    def run(self, stop: threading.Event, max_samples: int | None = None) -> AgentStats:
        """Poll until ``stop`` is set, the source is exhausted, or ``max_samples`` were read."""
        self.transport.start()
        self.publisher.start()
        self._open_source(stop)
        accel = self.source.time_acceleration
        next_t = time.monotonic()
        try:
            while not stop.is_set():
                self._run_tasks()
                try:
                    sample = self._poll_once()
                except SourceExhausted:
                    log.info("source exhausted", extra={"source": self.source.source_id})
                    self.finish_source()
                    break
                except DataFileError as exc:
                    log.error("source data is malformed; stopping", extra={"error": str(exc)[:300]})
                    self.finish_source()  # what was read before the bad row is kept and sent
                    raise
                if sample is not None:
                    self.process(sample)
                    if max_samples is not None and self.stats.samples >= max_samples:
                        break
                if self.source.paced or sample is None:
                    next_t += self.config.source.sample_interval_s / accel
                    delay = next_t - time.monotonic()
                    if delay > 0:
                        stop.wait(delay)
                    elif delay < -1.0:
                        next_t = time.monotonic()  # fell behind: do not try to catch up in a burst
        finally:
            self.shutdown()
        return self.stats

    def process(self, sample: Sample) -> None:
        """Feed one sample through the pipeline (the polling loop calls this; so can tests)."""
        self.stats.samples += 1
        if sample.simulated and not self.source.simulated:
            # fallback data: published as telemetry, tagged simulated, kept out of cycles and health
            batch = self.batcher.add(sample)
            if batch is not None:
                self._emit_telemetry(batch)
            return
        self._last_ts = sample.ts
        sample = self.soc.update(sample)  # battwin's own SoC beside the BMS's (device_agent.soc)
        batch = self.batcher.add(sample)
        if batch is not None:
            self._emit_telemetry(batch)
        self._on_findings(self.anomalies.on_sample(sample))
        for record in self.tracker.push(sample):
            self._on_record(record)
        self.alarms.evaluate(SAMPLE_ALARMS, sample, self.config, sample.ts)

    def finish_source(self) -> None:
        """The source ended (a replayed log): close the open segment and send what is batched."""
        for record in self.tracker.flush():
            self._on_record(record)
        batch = self.batcher.take()
        if batch:
            self._emit_telemetry(batch)

    def close(self) -> None:
        """Release the spool and state databases (after :meth:`run` returned; tests may inspect them first)."""
        self.state.close()
        self.spool.close()

    def now(self) -> float:
        """Time stamp for events: the last sample's time (simulated/replayed time), else the wall clock."""
        return self._last_ts or time.time()

    def shutdown(self, drain_timeout_s: float = 5.0) -> None:
        for hook in self.on_shutdown:
            try:
                hook()
            except Exception as exc:
                log.warning("shutdown hook failed", extra={"error": str(exc)[:200]})
        deadline = time.monotonic() + drain_timeout_s
        self._run_tasks()  # events queued by other threads since the last poll
        batch = self.batcher.take()
        if batch:
            self._emit_telemetry(batch)
        self.progress.save()
        self.publisher.drain(drain_timeout_s)
        # the drain itself may raise alarms (a spooled message too large to send): spool them and send them
        # within what is left of the budget; what is not sent stays in the spool for the next start
        self._run_tasks()
        self.publisher.stop(drain_timeout_s=max(0.0, deadline - time.monotonic()))
        self.transport.stop()
        try:
            self.source.close()
        except Exception as exc:
            log.warning("source close failed", extra={"error": str(exc)})

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the agent's polling thread before its next poll (thread-safe)."""
        self._tasks.put(fn)

    def _run_tasks(self) -> None:
        if self._tasks.empty():  # the common case, checked without raising
            return
        while True:
            try:
                fn = self._tasks.get_nowait()
            except queue.Empty:
                return
            try:
                fn()
            except Exception:
                log.exception("agent task failed")

    def apply_config(self, config: AgentConfig) -> None:
        """Switch to a new configuration live (the shadow's live fields; see shadow.config_sync)."""
        self.config = config
        self.tracker.settings = config.tracker
        self.estimator.settings = config.health
        self.estimator.physics.min_points = config.health.min_cycles_for_fit
        self.anomalies.apply(config.anomalies, config.tracker.rest_current_a)
        self.soc.apply(config)
        self.batcher.max_samples = config.telemetry.batch_max_samples
        self.batcher.max_age_s = config.telemetry.batch_max_age_s
        self.batcher.decimation = config.telemetry.decimation
        self.batcher.max_bytes = self._telemetry_bytes()
        if self.source.interval_s is not None:
            self.source.interval_s = config.source.sample_interval_s
        logging.getLogger().setLevel(config.log_level)

    def raise_alarm(self, code: AlarmCode, message: str) -> None:
        """A one-off alarm event (e.g. a refused model or configuration), stamped with the agent's time."""
        self.alarms.pulse(code, self.now(), message)

    def set_health_model(self, model: HealthModel | None, reason: str | None = None) -> None:
        self.estimator.set_model(model)
        ts = self._last_ts or time.time()
        if model is None and reason:
            self.alarms.raise_("model_unavailable", ts, f"health model unavailable: {reason}"[:1024])
        elif model is not None:
            self.alarms.clear("model_unavailable", ts)

    # -- polling ----------------------------------------------------------------------------------
    def _open_source(self, stop: threading.Event) -> None:
        delay = 0.5
        while not stop.is_set():
            try:
                self.source.open()
                return
            except SourceUnavailable as exc:
                self._count_failure(exc)
                stop.wait(delay)
                delay = min(delay * 2, 30.0)

    def _poll_once(self) -> Sample | None:
        """One poll. Retries within a poll and reconnects with backoff are the driver's job
        (``source.retries``); here a failed poll is counted towards the offline alarm."""
        try:
            sample = self.source.poll()
        except (SourceExhausted, DataFileError):
            raise
        except SourceError as exc:
            self._count_failure(exc)
            return self._fallback_sample() if self._offline else None
        if self._offline:
            self._offline = False
            self.alarms.clear("source_offline", sample.ts)
            if self._fallback is not None:
                self._fallback.close()
                self._fallback = None
                self.alarms.clear("source_fallback_simulator", sample.ts)
        self._failures = 0
        return sample

    def _fallback_sample(self) -> Sample | None:
        """With ``source.fallback = "simulator"`` (explicit only): a simulated sample while the real source
        is offline. It is tagged simulated, goes to telemetry only (never into the real battery's cycles or
        health), and an alarm says so."""
        if self.config.source.fallback != "simulator":
            return None
        if self._fallback is None:
            from hardware.simulator.source import SimulatorSource

            self._fallback = SimulatorSource(
                self.config.source.simulator, self.config.source.sample_interval_s, name="fallback"
            )
            self._fallback.open()
            self.alarms.raise_("source_fallback_simulator", time.time(), source=self.source.source_id)
        return self._fallback.poll()

    def _count_failure(self, exc: Exception) -> None:
        self._failures += 1
        self.stats.poll_failures += 1
        log.warning(
            "source poll failed",
            extra={"source": self.source.source_id, "error": type(exc).__name__, "detail": str(exc)[:200]},
        )
        if not self._offline and self._failures >= self.config.source.offline_after_failures:
            self._offline = True
            self.alarms.raise_(
                "source_offline",
                time.time(),
                f"no valid reading after {self._failures} polls: {type(exc).__name__}: {exc}"[:1024],
                failures=self._failures,
                last_sample_ts=self._last_ts or None,
            )

    # -- records ----------------------------------------------------------------------------------
    def _on_record(self, record: CycleRecord) -> None:
        self.stats.cycles += 1
        self._enqueue("cycles", record, record.end_ts)
        self._on_findings(self.anomalies.on_record(record))
        point = self.estimator.observe(record)
        if point is None:
            return
        self.progress.add_point(point)
        health = self.estimator.estimate(record)
        if self.estimator.last_error:
            self.alarms.raise_("model_unavailable", record.end_ts, f"health model failed: {self.estimator.last_error}")
        if health is not None:
            self.stats.health += 1
            self._enqueue("health", health, health.ts)
            self.alarms.evaluate(HEALTH_ALARMS, health, self.config, health.ts)
        self.progress.save()

    def _on_findings(self, findings: list[Finding]) -> None:
        for f in findings:
            if f.active:
                self.alarms.raise_(f.code, f.ts, f.message, **f.details)
            else:
                self.alarms.clear(f.code, f.ts, f.message)

    def _emit_alarm(self, alarm: Alarm) -> None:
        self.stats.alarms += 1
        log.warning("alarm", extra={"code": alarm.code, "active": alarm.active, "alarm_message": alarm.message})
        self._enqueue("alarms", alarm, alarm.ts)

    def _emit_telemetry(self, batch: TelemetryBatch) -> None:
        self.stats.telemetry_batches += 1
        samples = batch.samples
        body = Telemetry.model_construct(samples=tuple(samples))
        self._enqueue("telemetry", body, samples[-1].ts, samples_json=batch.samples_json)

    def _telemetry_bytes(self) -> int | None:
        """What the samples of one telemetry batch may take as plain JSON: the transport's payload budget on the
        telemetry topic less the envelope around them (None: the transport states no limit). Packed, a batch is
        ~1/9 of its JSON: the batcher then closes at :data:`PACKED_BUDGET_FACTOR` times that, and a packed
        message that is still over the budget is split into plain parts that fit (:meth:`_enqueue`)."""
        budget = payload_budget(self.transport, self.topic("telemetry"))
        if budget is None:
            return None
        plain = max(1, budget - telemetry_overhead(self.config.thing_name))
        return plain * PACKED_BUDGET_FACTOR if self.config.telemetry.encoding == "packed" else plain

    def _message_too_large(self, topic: str, size: int, limit: int) -> None:
        """The publisher deleted a spooled message the transport cannot carry (called on its thread)."""
        message = f"a {size}-byte message on {topic} exceeds the transport's {limit}-byte limit; deleted unsent"
        self.call_soon(
            lambda: self.alarms.pulse("message_too_large", self.now(), message, topic=topic, size=size, limit=limit)
        )

    # -- spool ------------------------------------------------------------------------------------
    def _enqueue(self, kind: MessageKind, body: Body, ts: float, samples_json: bytes | None = None) -> None:
        msg_id = new_message_id()
        payload = encode_envelope(
            self.config.thing_name,
            kind,
            body,
            ts,
            msg_id,
            samples_json=samples_json,
            packed=self.config.telemetry.encoding == "packed",
        )
        if kind == "telemetry":
            budget = payload_budget(self.transport, self.topic(kind))
            if budget is not None and len(payload) > budget:
                # a packed batch that compressed worse than the batcher allowed for: plain parts that fit (one
                # sample alone over the budget cannot be split: spooled whole, the publisher then raises
                # message_too_large as for any such message)
                try:
                    parts = split_telemetry(payload, budget)
                except NotSplittable:
                    parts = [(msg_id, payload)]
                for n, (part_id_, part) in enumerate(parts):
                    self._spool(kind, body, part_id_, part, ts, announce=n == len(parts) - 1)
                return
        self._spool(kind, body, msg_id, payload, ts)

    def _spool(
        self, kind: MessageKind, body: Body, msg_id: str, payload: bytes, ts: float, announce: bool = True
    ) -> None:
        result = self.spool.put(msg_id, self.topic(kind), payload, ts)
        if self.on_message is not None and result.accepted and announce:
            self.on_message(kind, body, msg_id)
        self.publisher.notify()
        if result.dropped:
            self.stats.spool_dropped += result.dropped
            self._unreported_drops += result.dropped
        # at most one drop alarm a minute (agent time), carrying the count since the last one
        if self._unreported_drops and kind != "alarms" and ts - self._last_drop_alarm_ts >= DROP_ALARM_EVERY_S:
            dropped, self._unreported_drops = self._unreported_drops, 0
            self._last_drop_alarm_ts = ts
            self.alarms.pulse(
                "spool_dropped",
                ts,
                f"spool full: {dropped} message(s) dropped ({self.spool.dropped_total} in total)",
                dropped=dropped,
                dropped_total=self.spool.dropped_total,
                policy=self.spool.policy,
            )
