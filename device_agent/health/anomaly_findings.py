"""The shared types of the on-device anomaly detectors (:mod:`device_agent.health.anomalies`): the alarm a
detector returns (:class:`Finding`), one discharge as the record-based detectors see it (:class:`_Observation`)
and when two discharges are similar enough to compare."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from device_agent.config import AnomalySettings
from schema.messages import AnomalyCode

Detail = float | int | str | bool | None

#: an alarm clears once the judged value is back within this fraction of the threshold
CLEAR_FRACTION = 0.5


@dataclass(frozen=True)
class Finding:
    """An alarm to raise (``active``) or clear, with the evidence the raised alarm carries."""

    code: AnomalyCode
    active: bool
    ts: float
    message: str
    details: dict[str, Detail] = field(default_factory=dict)


@dataclass(frozen=True)
class _Observation:
    """One discharge as the record-based detectors see it."""

    index: int
    ts: float
    value: float
    current_a: float
    temperature_c: float | None


def _similar(a: _Observation, b: _Observation, s: AnomalySettings) -> bool:
    ref = max(abs(a.current_a), 1e-6)
    if abs(abs(a.current_a) - abs(b.current_a)) > s.similar_current_fraction * ref:
        return False
    if a.temperature_c is not None and b.temperature_c is not None:
        return abs(a.temperature_c - b.temperature_c) <= s.similar_temperature_c
    return True


def count_raised(findings: Iterable[Finding]) -> dict[AnomalyCode, int]:
    """How many alarms of each code were raised (for reports)."""
    out: dict[AnomalyCode, int] = {}
    for f in findings:
        if f.active:
            out[f.code] = out.get(f.code, 0) + 1
    return out
