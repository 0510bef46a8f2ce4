"""Telemetry batching: samples collected into one message by count, by age (sample time) and by size."""

from __future__ import annotations

from dataclasses import dataclass

from schema.messages import Sample, encode_sample


@dataclass(frozen=True, slots=True)
class TelemetryBatch:
    samples: list[Sample]
    #: the samples as the JSON array the envelope carries (messages.encode_samples: readings a source lacks
    #: left out, not null), encoded once as they were batched
    samples_json: bytes


class TelemetryBatcher:
    """Collects samples into batches by count, by age (sample time), and by size: with ``max_bytes`` (the
    transport's payload budget less the envelope around the samples) a batch is closed before the next
    sample would make its envelope too big for the transport; ``max_samples`` stays an upper bound."""

    def __init__(self, max_samples: int, max_age_s: float, decimation: int = 1, max_bytes: int | None = None) -> None:
        self.max_samples = max_samples
        self.max_age_s = max_age_s
        self.decimation = decimation
        self.max_bytes = max_bytes
        self._buf: list[Sample] = []
        self._enc: list[bytes] = []
        self._bytes = 0  # the samples' JSON with the commas between them
        self._n = 0

    def add(self, sample: Sample) -> TelemetryBatch | None:
        self._n += 1
        if (self._n - 1) % self.decimation:
            return None
        enc = encode_sample(sample)
        closed = None
        if self._buf and self.max_bytes is not None and self._bytes + 1 + len(enc) > self.max_bytes:
            closed = self.take()
        self._buf.append(sample)
        self._enc.append(enc)
        self._bytes += len(enc) + (1 if len(self._enc) > 1 else 0)
        if closed is not None:
            return closed
        if len(self._buf) >= self.max_samples or sample.ts - self._buf[0].ts >= self.max_age_s:
            return self.take()
        return None

    def take(self) -> TelemetryBatch | None:
        if not self._buf:
            return None
        out = TelemetryBatch(self._buf, b"[" + b",".join(self._enc) + b"]")
        self._buf, self._enc, self._bytes = [], [], 0
        return out
