"""The lake's record format and readers (cloud/lake.py) and the buffered local Firehose that writes it
(cloud/local_stack/firehose.py): partitions by kind and day, at-least-once copies kept once, few objects."""

from __future__ import annotations

import json
from typing import Any

from cloud.lake import (
    decode_jsonl,
    encode_jsonl_gz,
    firehose_partition,
    flat_row,
    lake_record,
    lake_records,
    parse_partition,
)
from cloud.local_stack.firehose import BufferedFirehose
from cloud.local_stack.template import firehose_streams, load_template


class FakeS3:
    """Just put_object, keeping what was written."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put_object(self, Bucket: str, Key: str, Body: bytes, **_: Any) -> dict[str, Any]:
        assert Key not in self.objects
        self.objects[Key] = Body
        return {}


def _envelope(kind: str, msg_id: str, ts: float, thing: str = "t1", **body: Any) -> dict[str, Any]:
    return {"v": 1, "id": msg_id, "thing": thing, "kind": kind, "ts": ts, "simulated": True, "body": body}


def test_every_lake_kind_has_its_partition_and_a_foreign_kind_is_rejected() -> None:
    day = 1_780_000_000.0
    for kind in ("telemetry", "cycles", "health", "alarms"):
        rec = lake_record(_envelope(kind, "a", day), "t1", kind, 1)
        assert firehose_partition(rec) == {"kind": kind, "dt": "2026-05-28"}
    # a cycle envelope published on the health topic, and a kind the lake does not know
    assert firehose_partition(lake_record(_envelope("cycles", "a", day), "t1", "health", 1))["kind"] == "rejected"
    assert firehose_partition(lake_record(_envelope("other", "a", day), "t1", "other", 1))["kind"] == "rejected"


def test_readers_keep_each_message_once_and_only_the_topics_thing() -> None:
    first = lake_record(_envelope("cycles", "m1", 10.0, index=1), "t1", "cycles", 2_000)
    again = {**first, "rule_received_ms": 9_000}  # Firehose delivered it twice
    early = {**first, "rule_received_ms": 1_000, "body": {"index": 99}}  # the earliest copy wins
    foreign = lake_record(_envelope("cycles", "m2", 11.0, thing="t1", index=2), "t9", "cycles", 1)
    other_kind = lake_record(_envelope("health", "m3", 12.0), "t1", "health", 1)
    kept = list(lake_records([first, again, early, foreign, other_kind], "cycles"))
    assert kept == [early]
    row = flat_row(kept[0])
    assert row == {"simulated": True, "index": 99, "msg_id": "m1", "msg_ts": 10.0, "thing": "t1"}
    # the same lines gzip'd (Firehose) or as put (moto's Firehose) read the same; a broken line is skipped
    lines = [first, foreign]
    plain = b"".join(json.dumps(r).encode() + b"\n" for r in lines) + b"{not json\n"
    assert list(decode_jsonl(plain)) == list(decode_jsonl(encode_jsonl_gz(lines))) == lines
    assert parse_partition("lake/kind=cycles/dt=2026-01-02/2026/01/03/04/x") == {"kind": "cycles", "dt": "2026-01-02"}


def test_buffered_firehose_writes_one_object_per_partition_and_buffer() -> None:
    (spec,) = firehose_streams(load_template()).values()
    s3, now = FakeS3(), [1_780_000_000.0]
    stream = BufferedFirehose(spec, s3, "b", clock=lambda: now[0])
    day = 1_780_000_000.0

    def put(kind: str, n: int) -> None:
        for i in range(n):
            rec = lake_record(_envelope(kind, f"{kind}-{now[0]}-{i}", day), "t1", kind, 1)
            stream.put(json.dumps(rec).encode() + b"\n")

    put("telemetry", 50)
    put("cycles", 3)
    assert s3.objects == {}  # buffered
    now[0] += spec.buffer_s  # the interval passes: the next put writes the buffers that are due
    put("health", 1)
    assert sorted(parse_partition(k)["kind"] for k in s3.objects) == ["cycles", "telemetry"]
    stream.flush()
    assert stream.objects == len(s3.objects) == 3 and stream.records == 54
    for key, data in s3.objects.items():
        assert key.endswith(".gz") and "/battwin-lake-1-2026-05-" in key
        kinds = {r["kind"] for r in decode_jsonl(data)}
        assert kinds == {parse_partition(key)["kind"]}
    assert sum(len(list(decode_jsonl(d))) for d in s3.objects.values()) == 54
    # a record without a numeric ts goes to the error output, one object each
    stream.put(b'{"kind":"cycles","rule_kind":"cycles","ts":"x"}\n')
    (err,) = [k for k in s3.objects if k.startswith("dead-letter/firehose/processing-failed/")]
    assert json.loads(s3.objects[err])["errorCode"] == "DynamicPartitioning.MetadataExtractionFailed"


def test_buffered_firehose_writes_a_full_buffer_at_once() -> None:
    (spec,) = firehose_streams(load_template()).values()
    small = spec.__class__(**{**spec.__dict__, "buffer_mb": 1})
    s3 = FakeS3()
    stream = BufferedFirehose(small, s3, "b", clock=lambda: 1_780_000_000.0)
    record = json.dumps(lake_record(_envelope("telemetry", "x", 1_780_000_000.0, pad="p" * 4000), "t1", "telemetry", 1))
    for _ in range(300):  # 300 x ~4 KB: one full 1 MB buffer and a part of the next
        stream.put(record.encode() + b"\n")
    assert stream.objects == 1
    stream.flush()
    assert stream.objects == 2
    sizes = sorted(len(list(decode_jsonl(d))) for d in s3.objects.values())
    assert sum(sizes) == 300 and sizes[1] >= 250  # the first object is the full buffer
