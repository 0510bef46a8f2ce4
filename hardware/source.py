"""The one interface every battery source implements.

A source is polled by the agent's coordinator: ``poll()`` returns one :class:`~schema.messages.Sample`
or raises a :class:`~hardware.errors.SourceError`. Sources never invent data: when a read fails they
raise, and the coordinator decides about retries, staleness and alarms.

``paced`` tells the coordinator whether to wait ``sample_interval_s`` between polls (hardware, the
simulator) or to go as fast as the pipeline can (a replayed log).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import TYPE_CHECKING

from schema.messages import Sample

if TYPE_CHECKING:  # typing.Self from Python 3.11; annotations are not evaluated at run time
    from typing import Self


class Source(ABC):
    #: identifier that goes into every sample (``jbd:ttyUSB0``, ``simulator:cell-1`` ...)
    source_id: str
    #: True for the physics simulator and anything derived from it
    simulated: bool = False
    #: False for replayed logs: poll as fast as the pipeline goes
    paced: bool = True
    #: simulated seconds per wall second (the simulator): the coordinator waits ``sample_interval_s / this``
    time_acceleration: float = 1.0
    #: the simulated seconds one poll advances, for a source with a clock of its own (the simulator; the
    #: coordinator sets it when ``source.sample_interval_s`` changes live); None for a real battery
    interval_s: float | None = None

    def open(self) -> None:  # noqa: B027 - optional hook
        """Acquire the port / file / connection. Raise SourceUnavailable on failure."""

    @abstractmethod
    def poll(self) -> Sample:
        """Read one sample. Raise SourceError (SourceExhausted at the end of a finite source)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources; must be safe to call twice."""

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
