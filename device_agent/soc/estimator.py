"""battwin's SoC from the samples alone: coulomb counting on the battery's measured capacity, corrected at rest
from the chemistry's OCV table (weighted by the table's slope), re-anchored at the end of a full charge.

Per sample (:meth:`SocEstimator.update`):

* **count** — the charge since the last sample (trapezoid of the two currents) over the capacity
  (:mod:`.capacity`): the health estimator's latest measured capacity, else the configured rated one
  (``soc.capacity_ah``, else ``health.rated_capacity_ah``), refined between measurements by partial cycles
  (the charge counted between two rests or full charges far apart in SoC); during a discharge the capacities
  measured on similar discharges (:mod:`.similar`) unless partial cycles have refined it since; with no
  capacity at all nothing is counted and nothing published. The measured capacity was counted with the
  sensor's offset in it: the learnt offset times the time that discharge took to reach the cut-off is put
  back;
* **rest** — once the current has stayed below ``tracker.rest_current_a`` for ``soc.rest_min_s``, each rest
  sample's voltage per cell is read through the OCV table and blended in with a standard deviation of
  ``ocv_sd_v`` over the table's slope there (on LFP's plateau: tens of pp, so it barely moves the count).
  The blend is always made from the state at the moment the rest qualified (counted on since), so one rest
  is one measurement however many samples it lasts — the latest, most relaxed voltage;
* **full** — charging at or above the full voltage per cell with the current tapered below
  ``full_taper_c`` × capacity: 100 % with a standard deviation of :data:`FULL_SD_PCT`;
* **zero-current offset** — while a rest qualifies, the current read is the sensor's offset (nothing flows):
  it is learnt (a time-weighted average over :data:`OFFSET_TAU_S`, limited to the rest current) and taken off
  every reading before counting, as battery fuel gauges calibrate their offset (``soc.learn_offset``; a pack
  with a real standing load below the rest current should turn it off);
* **gaps** — no sample for longer than ``tracker.max_gap_s``: nothing is counted across it; if the battery
  was at rest on both sides the rest goes on (a lab's rest between runs), otherwise the SoC is unknown again
  (standard deviation back to :data:`UNKNOWN_SD_PCT`) until the next rest or full charge.

The first sample starts the estimate from the OCV table with :data:`UNKNOWN_SD_PCT` (not published until a
rest or a full charge narrows it). Nothing here looks ahead: each value depends on the samples so far only.
"""

from __future__ import annotations

import logging
import statistics
from collections import deque
from collections.abc import Callable
from typing import Any

from device_agent.config import AgentConfig, SocSettings, TrackerSettings
from device_agent.health.estimator import HealthEstimator
from device_agent.soc.capacity import CapacityTracker
from device_agent.soc.kalman import SocFilter
from device_agent.soc.ocv import OCV_TABLES, OcvTable
from device_agent.soc.similar import DischargeMemory
from schema.messages import Sample

log = logging.getLogger(__name__)

#: standard deviation (pp) of an estimate with nothing to go on (the start, a gap under load)
UNKNOWN_SD_PCT = 25.0
#: standard deviation (pp) of the full-charge anchor
FULL_SD_PCT = 0.5
#: a measured capacity below this fraction of the median of the latest ones (the rated one first) is not counted
#: on: a run cut short or a freak reading, not the battery; a lasting change is followed once it is the median
PLAUSIBLE_FRACTION = 0.5
PLAUSIBLE_WINDOW = 5
#: the time constant (s of qualified rest) of the learnt current offset
OFFSET_TAU_S = 600.0


def latest_capacity(estimator: HealthEstimator) -> Callable[[], float | None]:
    """The health estimator's latest measured capacity (Ah), or None before the first one."""
    return lambda: estimator.points[-1].capacity_ah if estimator.points else None


class SocEstimator:
    def __init__(self, config: AgentConfig, capacity_fn: Callable[[], float | None] = lambda: None) -> None:
        self.capacity_fn = capacity_fn
        self.settings: SocSettings = config.soc
        self.tracker: TrackerSettings = config.tracker
        self.table: OcvTable = OCV_TABLES[config.soc.chemistry]
        self.rated_ah: float | None = None
        self.capacity = CapacityTracker(None)
        self.apply(config)
        self.filter: SocFilter | None = None
        self._last_ts: float | None = None
        self._last_current = 0.0
        self._last_rest = False
        self._rest_since: float | None = None
        self._rest_prior: SocFilter | None = None
        self._rest_reading: tuple[float, float] | None = None  # the latest rest's OCV reading: SoC and sd (pp)
        self._full_counted: float | None = None  # the count at the latest full-charge anchor not yet referenced
        #: the current sensor's offset learnt at rest (A), taken off every reading
        self.offset_a = 0.0
        self._discharge_since: float | None = None
        self._past_cutoff = False  # the discharge under way has crossed the cut-off (until the next charge)
        self._seen_measured: float | None = None
        self._recent_measured: deque[float] = deque(maxlen=PLAUSIBLE_WINDOW)
        self.memory = DischargeMemory()
        #: how long the latest discharge that reached the cut-off took to reach it (s)
        self.last_discharge_s: float | None = None
        #: how often the count was corrected at rest and anchored at full (for logs and evaluations)
        self.rest_corrections = 0
        self.full_anchors = 0

    def apply(self, config: AgentConfig) -> None:
        """Take a new configuration (live, from the shadow)."""
        self.settings = config.soc
        self.tracker = config.tracker
        self.table = OCV_TABLES[config.soc.chemistry]
        self.rated_ah = config.soc.capacity_ah or config.health.rated_capacity_ah
        self.capacity.rated(self.rated_ah)

    def capacity_ah(self, ts: float | None = None) -> float | None:
        """The capacity to count on now: during a discharge (``ts`` given) the one measured on similar
        discharges (:mod:`.similar`), else the tracked one (:mod:`.capacity`)."""
        # a measured capacity was counted with the offset in it: true = read - offset
        correction = self.offset_a * self.last_discharge_s / 3600.0 if self.last_discharge_s is not None else 0.0
        raw = self.capacity_fn()
        if raw is not None and raw > 0.0 and raw != self._seen_measured:
            self._seen_measured = raw
            recent = ([self.rated_ah] if self.rated_ah else []) + list(self._recent_measured)
            self._recent_measured.append(raw)
            reference = statistics.median(recent[-PLAUSIBLE_WINDOW:]) if recent else raw
            if raw >= PLAUSIBLE_FRACTION * reference:  # an aborted or freak run does not set the capacity
                self.memory.measured(max(0.5 * raw, raw + correction))
                self.capacity.measured(raw, correction)
            else:
                self.memory.pending = None
        # the capacities of similar discharges, unless partial cycles have refined the capacity since the latest
        # measurement (a battery that has not reached the cut-off for a while: those measurements are stale)
        fresh = self.capacity.partial_since_measured == 0
        similar = self.memory.capacity_now(ts) if ts is not None and fresh else None
        return similar if similar is not None else self.capacity.capacity_ah

    def update(self, sample: Sample) -> Sample:
        """``sample`` with ``soc_est_pct`` filled in (unchanged when disabled or not known well enough)."""
        if not self.settings.enabled:
            return sample
        value = self.step(sample)
        return sample if value is None else sample.model_copy(update={"soc_est_pct": value})

    def step(self, sample: Sample) -> float | None:
        """Advance the estimate by one sample; the SoC to publish (percent, 0.1 resolution) or None."""
        st = self.settings
        cells = len(sample.cell_voltages_v) if sample.cell_voltages_v else self.tracker.cells_series
        v_cell = sample.voltage_v / cells
        current = sample.current_a
        at_rest = abs(current) < self.tracker.rest_current_a
        capacity = self.capacity_ah(sample.ts)
        f = self.filter
        dt = 0.0
        if f is None:
            f = self.filter = SocFilter(100.0 * self.table.soc_at(v_cell), UNKNOWN_SD_PCT)
            self._rest_since = sample.ts if at_rest else None
        else:
            last_ts = self._last_ts if self._last_ts is not None else sample.ts
            dt = sample.ts - last_ts
            if dt < 0.0:
                return self._published()  # out of order: ignored
            if dt > self.tracker.max_gap_s:
                if not (at_rest and self._last_rest):  # unknown what happened meanwhile
                    f.sd_pct = max(f.sd_pct, UNKNOWN_SD_PCT)
                    self._end_rest()
                    self.capacity.forget_reference()
            elif capacity is not None:
                delta_ah = (0.5 * (self._last_current + current) - self.offset_a) * dt / 3600.0
                f.predict(delta_ah, dt, capacity, st.offset_sd_c, st.capacity_sd)
                self.capacity.count(delta_ah)
                if self._rest_prior is not None:
                    self._rest_prior.predict(delta_ah, dt, capacity, st.offset_sd_c, st.capacity_sd)
        self._last_ts, self._last_current, self._last_rest = sample.ts, current, at_rest
        lowest = min(sample.cell_voltages_v) if sample.cell_voltages_v else v_cell
        self._discharge(sample.ts, current, lowest, sample.temperature_c)
        if at_rest:
            self._rest(sample.ts, v_cell, current, dt_s=0.0 if self._rest_prior is None else dt)
        else:
            self._end_rest()
            self._full(current, v_cell, capacity)
        return self._published() if capacity is not None else None

    # -- corrections ------------------------------------------------------------------------------
    def _rest(self, ts: float, v_cell: float, current: float, dt_s: float) -> None:
        if self._rest_since is None:
            self._rest_since = ts
        if ts - self._rest_since < self.settings.rest_min_s:
            return
        assert self.filter is not None
        if self._rest_prior is None:
            self._rest_prior = SocFilter(self.filter.soc_pct, self.filter.sd_pct)
            self.rest_corrections += 1
        if self.settings.learn_offset and 0.0 < dt_s <= self.tracker.max_gap_s:
            limit = self.tracker.rest_current_a
            learnt = self.offset_a + min(1.0, dt_s / OFFSET_TAU_S) * (current - self.offset_a)
            self.offset_a = min(limit, max(-limit, learnt))
        measured = self.table.soc_at(v_cell)
        sd_pct = 100.0 * self.settings.ocv_sd_v / self.table.slope(measured)
        self.filter = SocFilter.fused(self._rest_prior, 100.0 * measured, sd_pct)
        self._rest_reading = (100.0 * measured, sd_pct)

    def _discharge(self, ts: float, current: float, lowest_v: float, temperature_c: float | None) -> None:
        """Time the discharge from its start to the cut-off (the lowest cell's crossing, as the cycle tracker
        measures capacity), for the offset in the measured capacity."""
        if current >= self.tracker.rest_current_a:
            self._discharge_since = None  # charging
            self._past_cutoff = False
            self.memory.stop()
        elif current <= -self.tracker.rest_current_a and self._discharge_since is None and not self._past_cutoff:
            self._discharge_since = ts
            self.memory.start(ts, temperature_c)
        elif self._discharge_since is not None and lowest_v <= self.tracker.cutoff_voltage_per_cell_v:
            self.memory.add(ts, current)
            self.last_discharge_s = ts - self._discharge_since
            self.memory.reached_cutoff(ts)
            self._discharge_since = None
            self._past_cutoff = True
            return
        self.memory.add(ts, current)

    def _end_rest(self) -> None:
        if self._rest_reading is not None:  # the rest's last (most relaxed) reading: a known SoC
            self.capacity.reference(*self._rest_reading)
        self._rest_since = None
        self._rest_prior = None
        self._rest_reading = None

    def _full(self, current: float, v_cell: float, capacity: float | None) -> None:
        st = self.settings
        full_v = st.full_voltage_per_cell_v if st.full_voltage_per_cell_v is not None else self.table.full_voltage_v
        if capacity is None or current <= 0.0 or v_cell < full_v or current > st.full_taper_c * capacity:
            if self._full_counted is not None:  # the anchoring is over: the last anchor is a known SoC
                self.capacity.reference(100.0, FULL_SD_PCT, self._full_counted)
                self._full_counted = None
            return  # (current > 0 here means charging: the caller saw it above the rest current)
        assert self.filter is not None
        self.filter.correct(100.0, FULL_SD_PCT)
        self._full_counted = self.capacity.counted_ah
        self.full_anchors += 1

    def _published(self) -> float | None:
        f = self.filter
        if f is None or f.sd_pct > self.settings.publish_max_sd_pct:
            return None
        return round(f.soc_pct, 1)

    # -- restarts ---------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any] | None:
        """What survives a restart (``device_agent.progress``)."""
        f = self.filter
        if f is None or self._last_ts is None:
            return None
        return {
            "soc_pct": f.soc_pct,
            "sd_pct": f.sd_pct,
            "ts": self._last_ts,
            "rest": self._last_rest,
            "offset_a": self.offset_a,
        }

    def restore(self, state: dict[str, Any] | None) -> None:
        """Continue from :meth:`snapshot` (a gap since then is handled like any gap)."""
        if not state:
            return
        try:
            f = SocFilter(float(state["soc_pct"]), float(state["sd_pct"]))
            ts = float(state["ts"])
            offset = float(state.get("offset_a", 0.0))
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("saved SoC state unreadable; starting afresh", extra={"error": str(exc)[:200]})
            return
        if not (0.0 <= f.soc_pct <= 100.0 and f.sd_pct >= 0.0):
            log.warning("saved SoC state out of range; starting afresh", extra={"soc_pct": f.soc_pct})
            return
        self.filter, self._last_ts, self._last_rest = f, ts, bool(state.get("rest", False))
        self.offset_a = offset if abs(offset) <= self.tracker.rest_current_a else 0.0
