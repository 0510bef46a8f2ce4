"""The physics simulator as a battery source (URL ``simulator`` or ``sim``).

Each :meth:`SimulatorSource.poll` advances the model by ``interval_s`` simulated seconds and returns the
measured state as a :class:`~schema.messages.Sample` stamped ``start_ts + t_s`` and tagged
``simulated=True``. The coordinator paces polls: ``time_acceleration`` simulated seconds go by per wall
second, i.e. one poll every ``interval_s / time_acceleration`` wall seconds.

URL: ``simulator`` (source id ``simulator:<seed>``) or ``simulator:NAME`` (source id ``simulator:NAME``),
with optional query options overriding ``[source.simulator]`` fields, e.g.
``simulator:?seed=3&ambient_c=40&discharge_c_rate=2&discharge_profile=pulse``.
"""

from __future__ import annotations

import logging
import math
import re
import time

from pydantic import ValidationError

from hardware.errors import ImplausibleValueError, SourceConfigError
from hardware.simulator.model import PackSimulator
from hardware.simulator.state import PackState
from hardware.source import Source
from schema.messages import Sample
from schema.simulator_settings import SimulatorSettings
from schema.source_settings import SourceSettings, SourceUrl

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


class SimulatorSource(Source):
    """A :class:`PackSimulator` behind the :class:`~hardware.source.Source` interface."""

    simulated = True
    paced = True

    def __init__(self, settings: SimulatorSettings, interval_s: float = 1.0, name: str | None = None) -> None:
        if name is not None and not _NAME_RE.match(name):
            raise SourceConfigError(f"simulator name {name!r} may only contain letters, digits, '_', '.', '-'")
        self.settings = settings.model_copy()
        self.source_id = f"simulator:{name if name is not None else settings.seed}"
        self.time_acceleration: float = settings.time_acceleration
        self.interval_s = interval_s
        self._model: PackSimulator | None = None
        self._start_ts: float | None = None

    @property
    def interval_s(self) -> float:
        """Simulated seconds advanced by each :meth:`poll`."""
        return self._interval_s

    @interval_s.setter
    def interval_s(self, value: float) -> None:
        if not (value > 0.0 and math.isfinite(value)):
            raise ValueError(f"interval_s must be a finite number > 0 (got {value!r})")
        self._interval_s = float(value)

    @property
    def model(self) -> PackSimulator:
        """The underlying model (created by :meth:`open`, or on first use)."""
        if self._model is None:
            self.open()
        assert self._model is not None
        return self._model

    @property
    def start_ts(self) -> float | None:
        """Unix time that simulated t_s = 0 maps to (None before :meth:`open`)."""
        return self._start_ts

    def open(self) -> None:
        if self._model is not None:
            return
        self._model = PackSimulator(self.settings)
        self._start_ts = self.settings.start_ts if self.settings.start_ts is not None else time.time()
        log.info(
            "simulator %s opened: %dS %.3g Ah, ambient %.1f °C, seed %d, %.3g s per poll, x%.3g",
            self.source_id,
            self.settings.cells_series,
            self.settings.capacity_ah,
            self.settings.ambient_c,
            self.settings.seed,
            self.interval_s,
            self.time_acceleration,
        )

    def poll(self) -> Sample:
        model = self.model
        state = model.step(self.interval_s)
        assert self._start_ts is not None
        return self._to_sample(state, self._start_ts)

    def close(self) -> None:
        """Nothing to release; the model is kept so a reopened source continues where it stopped."""

    def _to_sample(self, state: PackState, start_ts: float) -> Sample:
        # reported at a BMS's resolution (1 mV, 1 mA, 0.1 °C, 0.1 % SoC, 1 ms), as real hardware reports it;
        # it also keeps telemetry compact on the wire (IoT Core bills per 5 KB)
        try:
            return Sample(
                ts=round(start_ts + state.t_s, 3),
                voltage_v=round(state.voltage_v, 3),
                current_a=round(state.current_a, 3),
                temperatures_c=tuple(round(t, 1) for t in state.temperatures_c),
                soc_pct=round(state.soc_pct, 1),
                cell_voltages_v=tuple(round(v, 3) for v in state.cell_voltages_v),
                source_id=self.source_id,
                simulated=True,
            )
        except ValidationError as exc:
            raise ImplausibleValueError(f"{self.source_id}: simulated state out of range: {exc}") from exc


def create(url: SourceUrl, settings: SourceSettings) -> SimulatorSource:
    """Registry factory. ``settings`` is the agent's ``SourceSettings`` (``simulator`` and
    ``sample_interval_s`` are used); URL query options override ``settings.simulator`` fields."""
    base: SimulatorSettings = settings.simulator
    merged = base.model_dump()
    known = set(SimulatorSettings.model_fields)
    for key, value in url.query.items():
        if key not in known:
            raise SourceConfigError(
                f"source URL {url.raw!r}: unknown simulator option {key!r}; known: {', '.join(sorted(known))}"
            )
        merged[key] = None if key == "start_ts" and value.lower() in ("", "none", "now") else value
    try:
        sim_settings = SimulatorSettings.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}={err.get('input')!r}: {err['msg']}"
            for err in exc.errors()
        )
        raise SourceConfigError(f"source URL {url.raw!r}: invalid simulator option {problems}") from None
    name = url.path.strip("/") or None
    return SimulatorSource(sim_settings, interval_s=float(settings.sample_interval_s), name=name)
