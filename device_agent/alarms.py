"""Alarm bookkeeping: an alarm is published when it becomes active and again when it clears.

Conditions are declared as data (code, severity, text) like Home Assistant declares its sensors; the
agent raises and clears them by code and this class makes sure each change is sent exactly once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from schema.messages import Alarm, Severity


@dataclass(frozen=True)
class AlarmSpec:
    code: str
    severity: Severity
    text: str


ALARMS: dict[str, AlarmSpec] = {
    spec.code: spec
    for spec in (
        AlarmSpec("source_offline", "critical", "the battery source stopped answering; data is stale"),
        AlarmSpec("source_fallback_simulator", "warning", "the source is offline; simulated data is being sent"),
        AlarmSpec("spool_dropped", "warning", "the offline spool is full; messages were dropped"),
        AlarmSpec("message_too_large", "warning", "a spooled message exceeds the transport's size limit; deleted"),
        AlarmSpec("model_unavailable", "warning", "the health model is missing or invalid; physics-only estimate"),
        AlarmSpec("model_rejected", "warning", "a new health model was refused; the previous one keeps running"),
        AlarmSpec("eol_reached", "critical", "state of health is below the end-of-life threshold"),
        AlarmSpec("over_temperature", "critical", "battery temperature above the limit"),
        AlarmSpec("cell_imbalance", "warning", "cell voltage spread above the limit"),
        AlarmSpec("config_rejected", "warning", "a configuration change was rejected"),
    )
}


class AlarmBook:
    def __init__(self, source_id: str, emit: Callable[[Alarm], None], simulated: bool = False) -> None:
        self.source_id = source_id
        self.simulated = simulated
        self._emit = emit
        self.active: dict[str, Alarm] = {}

    def _alarm(
        self,
        code: str,
        ts: float,
        active: bool,
        message: str,
        severity: Severity | None = None,
        details: dict[str, float | int | str | bool | None] | None = None,
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

    def raise_(
        self, code: str, ts: float, message: str | None = None, **details: float | int | str | bool | None
    ) -> bool:
        """Activate ``code``; returns True if this changed its state (and an Alarm was emitted)."""
        if code in self.active:
            return False
        alarm = self._alarm(code, ts, True, message or ALARMS[code].text, details=details)
        self.active[code] = alarm
        self._emit(alarm)
        return True

    def clear(self, code: str, ts: float, message: str | None = None) -> bool:
        if self.active.pop(code, None) is None:
            return False
        self._emit(self._alarm(code, ts, False, message or f"cleared: {ALARMS[code].text}", severity="info"))
        return True

    def pulse(
        self, code: str, ts: float, message: str | None = None, **details: float | int | str | bool | None
    ) -> None:
        """A one-off event (e.g. 'N messages dropped'): emitted every time, never stays active."""
        self._emit(self._alarm(code, ts, False, message or ALARMS[code].text, details=details))
