"""Firehose's buffered S3 delivery of one stream of the template, in process (for counting what the lake holds).

moto's Firehose writes every ``PutRecord`` straight to S3 as its own object (no buffering, no compression), so a
lake fed through it has one object per message: right for the demo's data flow, wrong for counting objects.
:class:`BufferedFirehose` does what the deployed stream does with the records a rule's Firehose action puts:

* the stream's Lambda transform first (:func:`cloud.local_stack.template.transformed`: packed telemetry expanded
  by the same function the deployed stream invokes), then
* the partition keys from the stream's JQ query (:func:`cloud.lake.firehose_partition`, the same query in
  Python) fill the ``Prefix``; a record the query fails on goes to the ``ErrorOutputPrefix`` (one object each);
* records are buffered per partition until the buffer holds ``SizeInMBs`` or its first record is
  ``IntervalInSeconds`` old (by the clock given: simulated time in a scale test), then written as one object,
  gzip'd when ``CompressionFormat`` is ``GZIP``, named ``<stream>-<version>-<yyyy-MM-dd-HH-mm-ss>-<uuid>[.gz]``
  as Firehose names its objects; :meth:`BufferedFirehose.flush` writes what is left.

Not mirrored: Firehose's internal parallelism (it may write a partition's buffer as more than one object),
retries, the 5 KB record rounding (a billing matter: :mod:`cloud.cost_model`).
"""

from __future__ import annotations

import gzip
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cloud.lake import FIREHOSE_PARTITION_JQ, PartitionError, firehose_partition, firehose_prefix
from cloud.lake_expand.handler import LakeTransform
from cloud.local_stack.template import FirehoseSpec, TemplateError, transformed


@dataclass
class _Buffer:
    opened_at: float
    records: list[bytes] = field(default_factory=list)
    size: int = 0


class BufferedFirehose:
    """One Firehose stream's S3 delivery with its buffering hints (see the module doc)."""

    def __init__(
        self,
        spec: FirehoseSpec,
        s3: Any,
        bucket: str,
        *,
        stream_name: str = "battwin-lake",
        clock: Callable[[], float] = time.time,
        transform: LakeTransform | None = None,
    ) -> None:
        if spec.partition_query is not None and spec.partition_query != FIREHOSE_PARTITION_JQ:
            raise TemplateError(f"{spec.logical_id}: only cloud.lake.FIREHOSE_PARTITION_JQ is mirrored locally")
        self.spec = spec
        self.s3 = s3
        self.bucket = bucket
        self.stream_name = stream_name
        self.transform = transform
        self.clock = clock
        self.max_bytes = spec.buffer_mb * 1024 * 1024
        self.interval_s = float(spec.buffer_s)
        self._buffers: dict[str, _Buffer] = {}
        self._lock = threading.Lock()
        self.records = 0
        self.objects = 0
        self.error_objects = 0
        self.bytes_written = 0

    def put(self, record: bytes) -> None:
        """One record as a rule's Firehose action puts it (the rule SQL's JSON plus the separator)."""
        now = self.clock()
        record = transformed(self.spec, record, self.transform)
        try:
            keys = firehose_partition(json.loads(record)) if self.spec.partition_query else {}
            prefix = firehose_prefix(self.spec.prefix, keys)
        except (PartitionError, ValueError) as exc:
            self._error(record, str(exc), now)
            return
        due: list[tuple[str, _Buffer]] = []
        with self._lock:
            self.records += 1
            buf = self._buffers.get(prefix)
            if buf is not None and now - buf.opened_at >= self.interval_s:
                due.append((prefix, self._buffers.pop(prefix)))  # its interval ran out before this record came
                buf = None
            if buf is None:
                buf = self._buffers[prefix] = _Buffer(opened_at=now)
            buf.records.append(record)
            buf.size += len(record)
            if buf.size >= self.max_bytes:
                due.append((prefix, self._buffers.pop(prefix)))
            for other, b in list(self._buffers.items()):  # other partitions whose interval ran out
                if now - b.opened_at >= self.interval_s:
                    due.append((other, self._buffers.pop(other)))
        for p, b in due:
            self._write(p, b, now)

    def __call__(self, record: bytes) -> None:
        self.put(record)

    def flush(self) -> int:
        """Write every open buffer now; returns the objects written."""
        with self._lock:
            due = list(self._buffers.items())
            self._buffers.clear()
        now = self.clock()
        for p, b in due:
            self._write(p, b, now)
        return len(due)

    def _write(self, prefix: str, buf: _Buffer, now: float) -> None:
        data = b"".join(buf.records)
        gz = self.spec.compression.upper() == "GZIP"
        if gz:
            data = gzip.compress(data, compresslevel=6, mtime=0)
        stamp = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d-%H-%M-%S")
        key = f"{prefix}{self.stream_name}-1-{stamp}-{uuid.uuid4()}{'.gz' if gz else ''}"
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)
        with self._lock:
            self.objects += 1
            self.bytes_written += len(data)

    def _error(self, record: bytes, message: str, now: float) -> None:
        day = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")
        key = (
            self.spec.error_prefix.replace("!{firehose:error-output-type}", "processing-failed").replace(
                "!{timestamp:yyyy-MM-dd}", day
            )
            + f"{uuid.uuid4()}"
        )
        error = {"errorCode": "DynamicPartitioning.MetadataExtractionFailed", "errorMessage": message[:300]}
        body = json.dumps({**error, "rawData": record.decode("utf-8", "replace")}).encode()
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=body)
        with self._lock:
            self.error_objects += 1
