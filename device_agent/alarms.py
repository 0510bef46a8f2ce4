"""Alarms as data: every alarm the device raises is one row of :data:`ALARMS`, and :class:`AlarmBook` makes
sure each change is published exactly once (when an alarm becomes active, and again when it clears).

Rows are declared like Home Assistant's entity descriptions: a code, a severity, a text and, for alarms
judged from a reading, the condition itself (:class:`Threshold`: a ``value_fn`` over the sample or the
health estimate, the limit and the clear level). Every threshold follows one hysteresis model: raised when
the value goes past the limit (strictly), cleared once it has come back strictly past the clear level. The
other rows are events the agent sees (a source that stops answering, a refused model): raised, cleared or
pulsed by code where they happen. Codes are the closed type :data:`AlarmCode`, checked by mypy at every call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from device_agent.config import AgentConfig
from schema.messages import Alarm, AnomalyCode, Health, Sample, Severity

AlarmCode = Literal[
    "source_offline",
    "source_fallback_simulator",
    "spool_dropped",
    "message_too_large",
    "model_unavailable",
    "model_rejected",
    "eol_reached",
    "over_temperature",
    "cell_imbalance",
    "config_rejected",
    "soc_disagreement",
    AnomalyCode,  # a nested Literal: flattened, one closed set of codes
]
Detail = float | int | str | bool | None
Side = Literal["above", "below"]
T = TypeVar("T", Sample, Health)

#: SoH must recover this much above the end-of-life threshold to clear the EOL alarm
EOL_HYSTERESIS = 0.02
#: the cell-imbalance alarm clears once the spread is below this fraction of the limit
IMBALANCE_CLEAR_FRACTION = 0.8


@dataclass(frozen=True)
class Threshold(Generic[T]):
    """The condition of an alarm judged from one input (a :class:`Sample` or a :class:`Health`).

    ``side = "above"``: raised when the value is above the limit, cleared when it is below the clear level
    (``"below"`` mirrors it). Between the two the alarm keeps its state (hysteresis).
    """

    side: Side
    #: the value judged, or None when this input says nothing (no temperature sensor, the pack not at rest)
    value_fn: Callable[[T, AgentConfig], float | None]
    limit_fn: Callable[[T, AgentConfig], float]
    #: the clear level, from the limit
    clear_fn: Callable[[float, AgentConfig], float]
    #: what the raised alarm carries in ``details``
    details_fn: Callable[[float], dict[str, Detail]]

    def judge(self, value: float, limit: float, clear_at: float) -> bool | None:
        """True: raise; False: clear; None: keep the state (within the hysteresis band)."""
        if self.side == "above":
            tripped, recovered = value > limit, value < clear_at
        else:
            tripped, recovered = value < limit, value > clear_at
        return True if tripped else False if recovered else None


@dataclass(frozen=True)
class AlarmSpec:
    code: AlarmCode
    severity: Severity
    text: str


@dataclass(frozen=True)
class ThresholdAlarm(AlarmSpec, Generic[T]):
    threshold: Threshold[T]


def _hottest(sample: Sample, _: AgentConfig) -> float | None:
    return max(sample.temperatures_c) if sample.temperatures_c else None


def _spread_at_rest(sample: Sample, config: AgentConfig) -> float | None:
    # imbalance is judged at rest only: under load, near the cut-off, cells spread apart normally
    cells = sample.cell_voltages_v
    if not cells or len(cells) < 2 or abs(sample.current_a) >= config.tracker.rest_current_a:
        return None
    return max(cells) - min(cells)


OVER_TEMPERATURE: ThresholdAlarm[Sample] = ThresholdAlarm(
    "over_temperature",
    "critical",
    "battery temperature above the limit",
    Threshold(
        "above",
        value_fn=_hottest,
        limit_fn=lambda _s, config: config.alarms.max_temperature_c,
        clear_fn=lambda limit, config: limit - config.alarms.hysteresis_c,
        details_fn=lambda hottest: {"temperature_c": hottest},
    ),
)
CELL_IMBALANCE: ThresholdAlarm[Sample] = ThresholdAlarm(
    "cell_imbalance",
    "warning",
    "cell voltage spread above the limit",
    Threshold(
        "above",
        value_fn=_spread_at_rest,
        limit_fn=lambda _s, config: config.alarms.max_cell_spread_v,
        clear_fn=lambda limit, _c: limit * IMBALANCE_CLEAR_FRACTION,
        details_fn=lambda spread: {"spread_v": round(spread, 4)},
    ),
)


def _soc_disagreement(sample: Sample, config: AgentConfig) -> float | None:
    # judged only when both are there: the BMS reports a SoC and battwin's own is known well enough to publish
    if not config.soc.enabled or sample.soc_pct is None or sample.soc_est_pct is None:
        return None
    return abs(sample.soc_pct - sample.soc_est_pct)


SOC_DISAGREEMENT: ThresholdAlarm[Sample] = ThresholdAlarm(
    "soc_disagreement",
    "warning",
    "the BMS's state of charge and battwin's own disagree by more than the margin",
    Threshold(
        "above",
        value_fn=_soc_disagreement,
        limit_fn=lambda _s, config: config.soc.margin_pct,
        clear_fn=lambda limit, config: limit - config.soc.hysteresis_pct,
        details_fn=lambda diff: {"difference_pct": round(diff, 1)},
    ),
)
EOL_REACHED: ThresholdAlarm[Health] = ThresholdAlarm(
    "eol_reached",
    "critical",
    "state of health is below the end-of-life threshold",
    Threshold(
        "below",
        value_fn=lambda health, _c: health.soh,
        limit_fn=lambda health, _c: health.eol_threshold,
        clear_fn=lambda limit, _c: limit + EOL_HYSTERESIS,
        details_fn=lambda soh: {"soh": round(soh, 4)},
    ),
)

#: the alarms judged from every sample, and from every health estimate
SAMPLE_ALARMS: tuple[ThresholdAlarm[Sample], ...] = (OVER_TEMPERATURE, CELL_IMBALANCE, SOC_DISAGREEMENT)
HEALTH_ALARMS: tuple[ThresholdAlarm[Health], ...] = (EOL_REACHED,)

ALARMS: dict[AlarmCode, AlarmSpec] = {
    spec.code: spec
    for spec in (
        AlarmSpec("source_offline", "critical", "the battery source stopped answering; data is stale"),
        AlarmSpec("source_fallback_simulator", "warning", "the source is offline; simulated data is being sent"),
        AlarmSpec("spool_dropped", "warning", "the offline spool is full; messages were dropped"),
        AlarmSpec("message_too_large", "warning", "a spooled message exceeds the transport's size limit; deleted"),
        AlarmSpec("model_unavailable", "warning", "the health model is missing or invalid; physics-only estimate"),
        AlarmSpec("model_rejected", "warning", "a new health model was refused; the previous one keeps running"),
        EOL_REACHED,
        OVER_TEMPERATURE,
        CELL_IMBALANCE,
        AlarmSpec("config_rejected", "warning", "a configuration change was rejected"),
        SOC_DISAGREEMENT,
        # anomalies judged from the battery's own history (device_agent.health.anomalies; evidence in details)
        AlarmSpec("capacity_drop", "warning", "capacity dropped suddenly below its recent level"),
        AlarmSpec("resistance_jump", "warning", "internal resistance jumped above its recent level"),
        AlarmSpec("abnormal_heating", "warning", "temperature rise out of proportion to the current"),
        AlarmSpec("cell_drift", "warning", "a cell is drifting away from its siblings at rest"),
    )
}


class AlarmBook:
    def __init__(self, source_id: str, emit: Callable[[Alarm], None], simulated: bool = False) -> None:
        self.source_id = source_id
        self.simulated = simulated
        self._emit = emit
        self.active: dict[AlarmCode, Alarm] = {}

    def _alarm(
        self,
        code: AlarmCode,
        ts: float,
        active: bool,
        message: str,
        severity: Severity | None = None,
        details: dict[str, Detail] | None = None,
    ) -> Alarm:
        return Alarm(
            ts=ts,
            code=code,
            severity=severity or ALARMS[code].severity,
            active=active,
            message=message[:1024],
            details=details or {},
            source_id=self.source_id,
            simulated=self.simulated,
        )

    def raise_(self, code: AlarmCode, ts: float, message: str | None = None, **details: Detail) -> bool:
        """Activate ``code``; returns True if this changed its state (and an Alarm was emitted)."""
        if code in self.active:
            return False
        alarm = self._alarm(code, ts, True, message or ALARMS[code].text, details=details)
        self.active[code] = alarm
        self._emit(alarm)
        return True

    def clear(self, code: AlarmCode, ts: float, message: str | None = None) -> bool:
        if self.active.pop(code, None) is None:
            return False
        self._emit(self._alarm(code, ts, False, message or f"cleared: {ALARMS[code].text}", severity="info"))
        return True

    def pulse(self, code: AlarmCode, ts: float, message: str | None = None, **details: Detail) -> None:
        """A one-off event (e.g. 'N messages dropped'): emitted every time, never stays active."""
        self._emit(self._alarm(code, ts, False, message or ALARMS[code].text, details=details))

    def evaluate(self, rows: tuple[ThresholdAlarm[T], ...], value: T, config: AgentConfig, ts: float) -> None:
        """Judge ``value`` (a sample or a health estimate) against each row: raise, clear or keep each alarm."""
        for row in rows:
            rule = row.threshold
            judged = rule.value_fn(value, config)
            if judged is None:
                continue
            limit = rule.limit_fn(value, config)
            verdict = rule.judge(judged, limit, rule.clear_fn(limit, config))
            if verdict is True:
                self.raise_(row.code, ts, None, **rule.details_fn(judged))
            elif verdict is False:
                self.clear(row.code, ts)
