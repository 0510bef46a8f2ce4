"""Find charge, discharge and rest segments from samples alone, and measure each discharge's capacity.

Only time, voltage, current (positive = charging) and temperature are used: no hints from the source.

* Each sample is classified by its current: charge if ``I > rest_current_a``, discharge if
  ``I < −rest_current_a``, rest otherwise.
* A change of state must be confirmed by ``debounce_samples`` consecutive samples; the samples that
  confirmed it belong to the new segment (its start is back-dated to the first of them), so nothing
  is lost and a one-sample spike does not split a segment.
* A rest inside a discharge (or a charge) shorter than ``min_segment_s`` is absorbed into it, so pulsed
  loads stay one discharge.
* A gap in time longer than ``max_gap_s`` closes the open segment; charge is never integrated across it.
* Charge is integrated with the trapezoid rule. A discharge's capacity is the charge delivered from its
  start down to the first sample at or below the cut-off voltage (``cells_series ×
  cutoff_voltage_per_cell_v``), the lab definition (NASA PCoE). A discharge that ends before the
  cut-off is partial: ``complete = False`` and no capacity. So is a discharge whose start was not seen: one
  that opens after a gap in the samples, or at the tracker's first sample. It is the rest of a discharge that
  began unseen (a stalled reader, an agent started mid-discharge), and the charge from there to the cut-off
  is a fraction of the capacity: recorded as a capacity it is a "dip" that the health forecast would take
  for a measurement (a demo battery on a loaded machine got them, at 1000× time a stall of 0.6 s is a 600 s
  gap).
* Resistance: when a discharge starts within ``max_gap_s`` of a rest sample, R = ΔV/ΔI across the step.

Segments shorter than ``min_segment_s`` are dropped as noise. Rest segments are tracked but not emitted.
Cycle numbering: a discharge opens cycle n (1, 2, …); the charge after it belongs to the same cycle n.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from device_agent.config import TrackerSettings
from schema.messages import CycleRecord, Sample

State = Literal["charge", "discharge", "rest"]


@dataclass(slots=True)
class _Segment:
    state: State
    start_ts: float
    start_v: float
    last_ts: float
    last_v: float
    last_i: float
    n: int = 1
    charge_as: float = 0.0  # ampere-seconds, absolute
    energy_ws: float = 0.0
    cutoff_as: float | None = None  # charge delivered down to the first cut-off crossing
    #: the segment opened on a change of state seen in the samples (not after a gap, nor at the first sample)
    start_seen: bool = False
    min_v: float = 0.0
    max_v: float = 0.0
    sum_i: float = 0.0
    sum_t: float = 0.0
    n_t: int = 0
    max_t: float | None = None
    gaps: int = 0
    resistance_ohm: float | None = None
    # timestamp of the last sample whose own state equals the segment's (end of the active part)
    last_active_ts: float = 0.0
    last_active_v: float = 0.0
    last_active_as: float = 0.0
    last_active_ws: float = 0.0
    last_active_n: int = 1


def _classify(current: float, threshold: float) -> State:
    if current > threshold:
        return "charge"
    if current < -threshold:
        return "discharge"
    return "rest"


class CycleTracker:
    """Feed samples with :meth:`push`; it returns the CycleRecords each sample completes."""

    def __init__(
        self,
        settings: TrackerSettings,
        source_id: str,
        *,
        simulated: bool = False,
        first_cycle: int = 0,
        on_record: Callable[[CycleRecord], None] | None = None,
    ) -> None:
        self.settings = settings
        self.source_id = source_id
        self.simulated = simulated
        self.cycle = first_cycle
        self._seg: _Segment | None = None
        # samples since the last one that matched the open segment's state: (ts, v, i, temp, state, below)
        self._pending: list[tuple[float, float, float, float | None, State, bool]] = []
        self._counts: dict[State, int] = {"charge": 0, "discharge": 0, "rest": 0}
        self._last: tuple[float, float, float, float | None] | None = None
        self._min_cell: float | None = None  # lowest cell voltage of the sample being pushed
        self._on_record = on_record
        self.samples_seen = 0
        self.gaps_seen = 0

    @property
    def cutoff_v(self) -> float:
        return self.settings.cells_series * self.settings.cutoff_voltage_per_cell_v

    @property
    def state(self) -> State | None:
        return self._seg.state if self._seg else None

    # -- public -----------------------------------------------------------------------------------
    def push(self, sample: Sample) -> list[CycleRecord]:
        cells = sample.cell_voltages_v
        self._min_cell = min(cells) if cells else None
        return self.push_values(sample.ts, sample.voltage_v, sample.current_a, sample.temperature_c)

    def push_values(self, ts: float, v: float, i: float, temp: float | None) -> list[CycleRecord]:
        """Feed one reading. The cut-off is checked on the lowest cell when the last :meth:`push`
        carried cell voltages, else on pack voltage / ``cells_series``."""
        self.samples_seen += 1
        out: list[CycleRecord] = []
        st = self.settings
        state = _classify(i, st.rest_current_a)
        below = self._below_cutoff(v)
        seg = self._seg
        if seg is None:
            self._start(state, ts, v, i, temp, below, prev=None)
            self._last = (ts, v, i, temp)
            return out
        last = self._last
        assert last is not None
        dt = ts - last[0]
        if dt <= 0.0:
            return out  # duplicate or out-of-order sample: ignored, never integrated backwards
        self._last = (ts, v, i, temp)
        if dt > st.max_gap_s:
            self.gaps_seen += 1
            self._absorb_pending()
            self._close(out)
            self._start(state, ts, v, i, temp, below, prev=None)
            return out
        pending = self._pending
        if state == seg.state and (state != "rest" or not pending):
            self._absorb_pending()
            self._extend(seg, ts, v, i, temp, below, active=True)
            return out
        pending.append((ts, v, i, temp, state, below))
        if state not in ("rest", seg.state):
            self._counts[state] += 1
            if self._counts[state] >= st.debounce_samples:
                self._switch_to(state, out)
            return out
        # a rest sample (inside an active segment, or after blips in a rest segment)
        k = len(pending) - 1
        while k > 0 and pending[k - 1][4] == "rest":
            k -= 1
        if ts - pending[k][0] >= st.min_segment_s:
            if seg.state == "rest":
                self._absorb_pending()  # the active blips were noise
            else:
                self._switch_to("rest", out, first=k)
        return out

    def flush(self) -> list[CycleRecord]:
        """Close the open segment (end of a log, shutdown). A discharge may be partial."""
        out: list[CycleRecord] = []
        if self._seg is not None:
            self._absorb_pending()
            self._close(out)
        return out

    # -- internals --------------------------------------------------------------------------------
    def _start(
        self,
        state: State,
        ts: float,
        v: float,
        i: float,
        temp: float | None,
        below: bool,
        prev: tuple[float, float, float, float | None] | None,
    ) -> None:
        """Open a segment. With ``prev`` (the sample just before), the interval from it is included."""
        first = prev if prev is not None else (ts, v, i, temp)
        seg = _Segment(
            state=state,
            start_ts=first[0],
            start_v=first[1],
            last_ts=first[0],
            last_v=first[1],
            last_i=first[2],
            min_v=first[1],
            max_v=first[1],
            start_seen=prev is not None,
        )
        seg.sum_i = first[2]
        seg.last_active_ts = first[0]
        seg.last_active_v = first[1]
        if first[3] is not None:
            seg.sum_t = first[3]
            seg.n_t = 1
            seg.max_t = first[3]
        self._seg = seg
        self._pending = []
        self._counts = {"charge": 0, "discharge": 0, "rest": 0}
        if state == "discharge":
            self.cycle += 1
            if prev is not None and prev[2] - i > 1e-3 and _classify(prev[2], self.settings.rest_current_a) == "rest":
                r = (prev[1] - v) / (prev[2] - i)
                if 0.0 < r < 100.0:
                    seg.resistance_ohm = r
            if prev is None and below:
                seg.cutoff_as = 0.0
        if prev is not None:
            self._extend(seg, ts, v, i, temp, below, active=True)

    def _extend(
        self, seg: _Segment, ts: float, v: float, i: float, temp: float | None, below: bool, *, active: bool
    ) -> None:
        dt = ts - seg.last_ts
        if dt > 0.0:
            sign = -1.0 if seg.state == "discharge" else 1.0
            seg.charge_as += sign * 0.5 * (i + seg.last_i) * dt
            seg.energy_ws += sign * 0.5 * (i * v + seg.last_i * seg.last_v) * dt
        seg.n += 1
        seg.sum_i += i
        if temp is not None:
            seg.sum_t += temp
            seg.n_t += 1
            if seg.max_t is None or temp > seg.max_t:
                seg.max_t = temp
        seg.min_v = min(seg.min_v, v)
        seg.max_v = max(seg.max_v, v)
        seg.last_ts, seg.last_v, seg.last_i = ts, v, i
        if below and seg.state == "discharge" and seg.cutoff_as is None:
            seg.cutoff_as = seg.charge_as
        if active:
            seg.last_active_ts = ts
            seg.last_active_v = v
            seg.last_active_as = seg.charge_as
            seg.last_active_ws = seg.energy_ws
            seg.last_active_n = seg.n

    def _below_cutoff(self, v: float) -> bool:
        if self._min_cell is not None:
            return self._min_cell <= self.settings.cutoff_voltage_per_cell_v
        return v <= self.cutoff_v

    def _absorb_pending(self) -> None:
        seg = self._seg
        if seg is None or not self._pending:
            return
        for ts, v, i, temp, state, below in self._pending:
            self._extend(seg, ts, v, i, temp, below, active=state == seg.state)
        self._pending = []
        self._counts = {"charge": 0, "discharge": 0, "rest": 0}

    def _switch_to(self, new_state: State, out: list[CycleRecord], first: int | None = None) -> None:
        """Close the open segment and start ``new_state`` at pending[first] (default: its first sample
        of that state). Pending samples before it stay with the old segment."""
        seg = self._seg
        assert seg is not None
        pending = self._pending
        if first is None:
            first = next(k for k, p in enumerate(pending) if p[4] == new_state)
        for ts, v, i, temp, state, below in pending[:first]:
            self._extend(seg, ts, v, i, temp, below, active=state == seg.state)
        prev = (seg.last_ts, seg.last_v, seg.last_i, None) if new_state != "rest" else None
        self._close(out)
        ts, v, i, temp, _, below = pending[first]
        rest = pending[first + 1 :]
        self._start(new_state, ts, v, i, temp, below, prev=prev)
        seg = self._seg
        assert seg is not None
        for ts, v, i, temp, state, below in rest:
            self._extend(seg, ts, v, i, temp, below, active=state == new_state)

    def _close(self, out: list[CycleRecord]) -> None:
        seg, self._seg = self._seg, None
        if seg is None or seg.state == "rest":
            return
        # a trailing rest that was absorbed is not part of the active segment
        end_ts = seg.last_active_ts
        duration = end_ts - seg.start_ts
        if duration < self.settings.min_segment_s:
            if seg.state == "discharge":
                self.cycle -= 1  # noise, not a cycle
            return
        n = seg.last_active_n
        charge_ah = seg.last_active_as / 3600.0
        # a capacity is the charge from a discharge's start to the cut-off: only when that start was seen
        complete = seg.state == "discharge" and seg.cutoff_as is not None and seg.start_seen
        record = CycleRecord(
            index=max(self.cycle, 0),
            kind=seg.state,
            start_ts=seg.start_ts,
            end_ts=end_ts,
            duration_s=duration,
            charge_ah=charge_ah,
            energy_wh=seg.last_active_ws / 3600.0,
            capacity_ah=(seg.cutoff_as / 3600.0) if complete and seg.cutoff_as is not None else None,
            complete=complete if seg.state == "discharge" else True,
            cutoff_voltage_v=self.cutoff_v if seg.state == "discharge" else None,
            start_voltage_v=seg.start_v,
            end_voltage_v=seg.last_active_v,
            min_voltage_v=seg.min_v,
            max_voltage_v=seg.max_v,
            mean_current_a=seg.sum_i / seg.n,
            mean_temperature_c=(seg.sum_t / seg.n_t) if seg.n_t else None,
            max_temperature_c=seg.max_t,
            resistance_ohm=seg.resistance_ohm,
            n_samples=n,
            gaps=seg.gaps,
            source_id=self.source_id,
            simulated=self.simulated,
        )
        out.append(record)
        if self._on_record is not None:
            self._on_record(record)
