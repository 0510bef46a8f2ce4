"""Fault injection shared by all emulators, switchable at run time (thread-safe).

Modes and what a driver must make of them:

============== ======================================================= ============================
mode           the emulator ...                                        driver outcome
============== ======================================================= ============================
none           answers correctly                                       Sample
bad_checksum   corrupts the checksum / CRC / PEC of every reply frame  ChecksumError
truncated      sends only the first half of the reply                  FramingError
silence        does not answer                                         SourceTimeout
slow           answers after ``slow_delay_s``                          Sample if < timeout, else
                                                                       SourceTimeout
garbage        sends line noise (no start markers) instead             FramingError
garbage_prefix sends line noise, then the correct reply                Sample (resync)
exception      answers with a protocol error (JBD status 0x80, Modbus  DecodeError subclass
               exception ``exception_code``; others: as ``none``)
implausible    reports a pack voltage 25 times too high (400 V on 4S)  ImplausibleValueError
============== ======================================================= ============================

A fixed mode applies to every request until changed; a mix (``bad_checksum:0.1,silence:0.05``) draws
a mode per request from a seeded RNG (for soak runs from the CLI).
"""

from __future__ import annotations

import enum
import random
import threading


class Fault(enum.StrEnum):
    NONE = "none"
    BAD_CHECKSUM = "bad_checksum"
    TRUNCATED = "truncated"
    SILENCE = "silence"
    SLOW = "slow"
    GARBAGE = "garbage"
    GARBAGE_PREFIX = "garbage_prefix"
    EXCEPTION = "exception"
    IMPLAUSIBLE = "implausible"


IMPLAUSIBLE_FACTOR = 25.0


class FaultControl:
    def __init__(self, seed: int = 0, slow_delay_s: float = 2.0, exception_code: int = 0x04) -> None:
        self._lock = threading.Lock()
        self._mode = Fault.NONE
        self._mix: list[tuple[Fault, float]] = []
        self._rng = random.Random(seed)
        self.slow_delay_s = slow_delay_s
        self.exception_code = exception_code
        self.requests = 0
        self.injected = 0
        self._remaining: int | None = None

    @property
    def mode(self) -> Fault:
        return self._mode

    def set(
        self,
        mode: Fault | str,
        *,
        count: int | None = None,
        slow_delay_s: float | None = None,
        exception_code: int | None = None,
    ) -> None:
        """Apply ``mode`` to every request from now on, or to the next ``count`` requests only."""
        with self._lock:
            self._mode = Fault(mode)
            self._mix = []
            self._remaining = count
            if slow_delay_s is not None:
                self.slow_delay_s = slow_delay_s
            if exception_code is not None:
                self.exception_code = exception_code

    def clear(self) -> None:
        self.set(Fault.NONE)

    def set_mix(self, mix: dict[Fault, float]) -> None:
        total = sum(mix.values())
        if any(p < 0 for p in mix.values()) or total > 1.0:
            raise ValueError("fault probabilities must be >= 0 and sum to at most 1")
        with self._lock:
            self._mode = Fault.NONE
            self._remaining = None
            self._mix = [(Fault(k), p) for k, p in mix.items()]

    def configure(self, spec: str) -> None:
        """``"silence"`` = fixed mode; ``"bad_checksum:0.1,silence:0.05"`` = random mix; ``""`` = none."""
        spec = spec.strip()
        if not spec:
            self.clear()
            return
        parts = [p.strip() for p in spec.split(",") if p.strip()]
        if len(parts) == 1 and ":" not in parts[0]:
            self.set(parts[0])
            return
        mix: dict[Fault, float] = {}
        for part in parts:
            name, _, prob = part.partition(":")
            mix[Fault(name.strip())] = float(prob) if prob else 1.0
        self.set_mix(mix)

    def pick(self) -> Fault:
        """The fault for the next request."""
        with self._lock:
            self.requests += 1
            mode = self._mode
            if self._remaining is not None:
                self._remaining -= 1
                if self._remaining <= 0:
                    self._mode = Fault.NONE
                    self._remaining = None
            if self._mix:
                roll = self._rng.random()
                mode = Fault.NONE
                for fault, prob in self._mix:
                    if roll < prob:
                        mode = fault
                        break
                    roll -= prob
            if mode is not Fault.NONE:
                self.injected += 1
            return mode

    def garbage(self, forbidden: bytes, low: int = 12, high: int = 40) -> bytes:
        """Random line noise that contains none of the ``forbidden`` bytes (start markers)."""
        with self._lock:
            n = self._rng.randint(low, high)
            out = bytearray()
            while len(out) < n:
                b = self._rng.randrange(256)
                if b not in forbidden:
                    out.append(b)
            return bytes(out)
