"""The polling skeleton every wired driver shares: connect, bounded retries, reconnect with backoff.

``poll()`` makes up to ``1 + retries`` attempts. If all fail, the last typed error is raised and the
connection is marked for a reconnect, which the next poll performs once the backoff delay has passed
(until then the next poll raises SourceUnavailable at once instead of blocking). A success resets the
backoff. Whatever a subclass does, only :class:`~hardware.errors.SourceError` leaves ``poll()``.
"""

from __future__ import annotations

import logging
import time
from abc import abstractmethod
from collections.abc import Callable, Sequence

from pydantic import ValidationError

from hardware.bms.options import DriverOptions
from hardware.bms.plausibility import check_plausible
from hardware.errors import (
    DecodeError,
    ImplausibleValueError,
    SourceConfigError,
    SourceError,
    SourceUnavailable,
)
from hardware.source import Source
from hardware.transports.backoff import Backoff
from schema.messages import Sample

log = logging.getLogger(__name__)


class PolledSource(Source):
    def __init__(self, source_id: str, options: DriverOptions, clock: Callable[[], float] = time.monotonic) -> None:
        self.source_id = source_id
        self.options = options
        self._backoff = Backoff(options.backoff_min_s, options.backoff_max_s, clock)
        self._connected = False
        self._needs_reconnect = False
        self.consecutive_failures = 0

    # -- hooks -------------------------------------------------------------------------------------
    @abstractmethod
    def _connect(self) -> None:
        """Open the port / connection. Raise SourceUnavailable (or another SourceError)."""

    @abstractmethod
    def _disconnect(self) -> None:
        """Release the port / connection; must not raise."""

    @abstractmethod
    def _read(self) -> Sample:
        """One attempt: request, receive, decode, check. Raise SourceError on any failure."""

    def _recover(self) -> None:
        """Between two attempts inside one poll (e.g. drop a half-read reply)."""

    # -- Source ------------------------------------------------------------------------------------
    def open(self) -> None:
        if self._connected:
            return
        self._connect()
        self._connected = True
        self._needs_reconnect = False

    def close(self) -> None:
        if self._connected:
            self._connected = False
            self._disconnect()

    def _reconnect(self) -> None:
        wait = self._backoff.remaining()
        if wait > 0:
            raise SourceUnavailable(
                f"{self.source_id}: reconnect in {wait:.2f} s after {self.consecutive_failures} failed poll(s)"
            )
        if self._connected:
            self._connected = False
            self._disconnect()
        try:
            self._connect()
        except SourceError:
            self._failed()
            raise
        self._connected = True
        self._needs_reconnect = False
        log.info("%s: connected", self.source_id)

    def _failed(self) -> float:
        self.consecutive_failures += 1
        self._needs_reconnect = True
        return self._backoff.failed()

    def poll(self) -> Sample:
        if not self._connected or self._needs_reconnect:
            self._reconnect()
        last: SourceError | None = None
        for attempt in range(self.options.retries + 1):
            try:
                sample = self._read()
            except SourceConfigError:
                raise
            except SourceUnavailable as exc:
                last = exc
                break
            except SourceError as exc:
                last = exc
                log.debug("%s: attempt %d failed: %s: %s", self.source_id, attempt + 1, type(exc).__name__, exc)
                if attempt < self.options.retries:
                    self._recover()
                continue
            except Exception as exc:  # a bug must not escape poll() untyped
                log.exception("%s: unexpected error while reading", self.source_id)
                last = DecodeError(f"unexpected {type(exc).__name__}: {exc}")
                continue
            self.consecutive_failures = 0
            self._backoff.succeeded()
            return sample
        assert last is not None
        delay = self._failed()
        log.warning(
            "%s: poll failed after %d attempt(s): %s: %s (reconnect in %.2f s)",
            self.source_id,
            attempt + 1,
            type(last).__name__,
            last,
            delay,
        )
        raise last


def build_sample(
    source: PolledSource,
    *,
    voltage_v: float,
    current_a: float,
    temperatures_c: Sequence[float] = (),
    soc_pct: float | None = None,
    cell_voltages_v: Sequence[float] | None = None,
    reported_cells: int | None = None,
    ts: float | None = None,
) -> Sample:
    """Check plausibility and build the Sample (validation failures become ImplausibleValueError)."""
    check_plausible(
        source.options.limits,
        voltage_v=voltage_v,
        current_a=current_a,
        temperatures_c=temperatures_c,
        soc_pct=soc_pct,
        cell_voltages_v=cell_voltages_v,
        reported_cells=reported_cells,
    )
    try:
        return Sample(
            ts=time.time() if ts is None else ts,
            voltage_v=voltage_v,
            current_a=current_a,
            temperatures_c=tuple(temperatures_c),
            soc_pct=soc_pct,
            cell_voltages_v=None if cell_voltages_v is None else tuple(cell_voltages_v),
            source_id=source.source_id,
            simulated=source.simulated,
        )
    except ValidationError as exc:
        raise ImplausibleValueError(f"reading rejected by the Sample model: {exc}") from None
