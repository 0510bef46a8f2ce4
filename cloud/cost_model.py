"""What one device costs in the cloud per month, from measured traffic (issue #16, item 1).

Three inputs, all typed (pydantic at the boundary):

* :class:`PriceTable` — the AWS prices the model uses (us-east-1), each with the pricing page it comes from.
  There is no network where this is written: the prices are the public list prices **as of the date in
  ``PRICES.as_of``** (the pricing pages as last read then), not fetched. Free tiers are ignored (a fleet
  exhausts them); volume tiers are modelled where a fleet of 100,000 devices reaches them (IoT messaging).
* :class:`DeviceTraffic` — one device's messages and bytes per kind per hour, measured by running the real
  agent on the simulator (:func:`measure_device_traffic`): the 5 KB metering units are counted per message
  from the real payload sizes, never from a mean.
* :class:`CloudPath` — the cloud path's requests per message per kind, measured by running the real ingest
  handler against moto and counting its AWS calls with a botocore event hook (:func:`measure_cloud_path`):
  S3 PUTs and their bytes, DynamoDB writes and the write units their item sizes cost, Glue calls, the
  handler's own CPU time and log bytes.

and an :class:`Architecture` (today's, or the target of issue #16). :func:`monthly_bill` gives the bill per
device-month, line by line, at a fleet size. The assumptions that are not measured (AWS-side latencies of a
call, how often the dashboard is opened, how long data is kept) are fields of :class:`Assumptions`, named in
the output and in cloud/README.md ("What a device costs").
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import math
import os
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cloud.aws import marshal
from cloud.lake_expand.handler import LakeTransform, TransformSettings, expand_record
from cloud.local_stack.iot_sql import BASIC_INGEST_ROOT, basic_ingest_target
from schema.messages import Telemetry, encode_envelope, is_packed, unpacked_body

log = logging.getLogger("battwin.cloud.cost")

KB = 1024
GB = 1024**3
TB = 1024**4
UNIT_5KB = 5 * KB
HOURS_PER_MONTH = 730.0
DAYS_PER_MONTH = HOURS_PER_MONTH / 24.0
FLEET_SIZES = (1_000, 10_000, 100_000)
KINDS = ("telemetry", "cycles", "health", "alarms")


def units_5kb(size_bytes: int) -> int:
    """IoT Core messages, rules and Firehose records are metered in 5 KB increments (at least one)."""
    if size_bytes < 0:
        raise ValueError(f"a message size cannot be negative: {size_bytes}")
    return max(1, math.ceil(size_bytes / UNIT_5KB))


# ----------------------------------------------------------------------------------------------- prices
class Price(BaseModel):
    model_config = ConfigDict(frozen=True)

    usd: float = Field(ge=0.0)
    per: str = Field(min_length=1, description="the unit the price is for")
    source: str = Field(min_length=1, description="the AWS pricing page (and section) it comes from")


class Tier(BaseModel):
    model_config = ConfigDict(frozen=True)

    up_to: float | None = Field(description="upper bound of the tier in units per month; None = no bound")
    usd_per_unit: float = Field(ge=0.0)


class PriceTable(BaseModel):
    """List prices (USD, us-east-1) with their sources. Not fetched: stated as of ``as_of``."""

    model_config = ConfigDict(frozen=True)

    region: str = "us-east-1"
    as_of: date
    iot_messaging_tiers: tuple[Tier, ...]
    iot_messaging_source: str
    iot_connectivity_per_million_minutes: Price
    iot_rule_triggered_per_million: Price
    iot_action_executed_per_million: Price
    firehose_ingest_per_gb: Price
    firehose_dp_per_gb: Price
    firehose_dp_per_1000_objects: Price
    firehose_format_conversion_per_gb: Price
    lambda_per_million_requests: Price
    lambda_per_gb_second: Price
    ddb_per_million_wru: Price
    ddb_per_million_rru: Price
    ddb_storage_per_gb_month: Price
    ddb_pitr_per_gb_month: Price
    s3_put_per_1000: Price
    s3_get_per_1000: Price
    s3_storage_per_gb_month: Price
    athena_per_tb_scanned: Price
    athena_min_bytes_per_query: int = Field(ge=0)
    glue_catalog_per_million_requests: Price
    glue_catalog_per_100k_objects_month: Price
    logs_ingest_per_gb: Price
    logs_storage_per_gb_month: Price

    def iot_messaging_usd(self, units_per_month: float) -> float:
        """The monthly charge for ``units_per_month`` 5 KB message units, across the volume tiers."""
        total, below = 0.0, 0.0
        for tier in self.iot_messaging_tiers:
            top = units_per_month if tier.up_to is None else min(units_per_month, tier.up_to)
            if top > below:
                total += (top - below) * tier.usd_per_unit
            if tier.up_to is None or units_per_month <= tier.up_to:
                break
            below = tier.up_to
        return total


_IOT = "AWS IoT Core pricing page (aws.amazon.com/iot-core/pricing), us-east-1"
_FH = "Amazon Data Firehose pricing page (aws.amazon.com/firehose/pricing), us-east-1, Direct PUT"
_LAMBDA = "AWS Lambda pricing page (aws.amazon.com/lambda/pricing), us-east-1, x86, first tier"
_DDB = "Amazon DynamoDB pricing page, on-demand capacity (aws.amazon.com/dynamodb/pricing/on-demand), us-east-1"
_S3 = "Amazon S3 pricing page (aws.amazon.com/s3/pricing), us-east-1, S3 Standard"
_ATHENA = "Amazon Athena pricing page (aws.amazon.com/athena/pricing), us-east-1, SQL queries"
_GLUE = "AWS Glue pricing page (aws.amazon.com/glue/pricing), Data Catalog"
_CW = "Amazon CloudWatch pricing page (aws.amazon.com/cloudwatch/pricing), us-east-1, Logs, Standard class"

#: The list prices the model uses, as of 2025-06-01 (the pricing pages as last read on that date; no network
#: here to re-check them). DynamoDB on-demand is at its price after the November 2024 reduction.
PRICES = PriceTable(
    as_of=date(2025, 6, 1),
    iot_messaging_tiers=(
        Tier(up_to=1e9, usd_per_unit=1.00e-6),
        Tier(up_to=5e9, usd_per_unit=0.80e-6),
        Tier(up_to=None, usd_per_unit=0.70e-6),
    ),
    iot_messaging_source=f"{_IOT}, Messaging: $1.00/M (first 1 B), $0.80/M (next 4 B), $0.70/M (over 5 B); "
    "5 KB increments; Basic Ingest ($aws/rules/...) has no messaging charge",
    iot_connectivity_per_million_minutes=Price(
        usd=0.08, per="million connection-minutes", source=f"{_IOT}, Connectivity"
    ),
    iot_rule_triggered_per_million=Price(
        usd=0.15, per="million rules triggered (5 KB increments)", source=f"{_IOT}, Rules Engine"
    ),
    iot_action_executed_per_million=Price(
        usd=0.15, per="million actions executed (5 KB increments)", source=f"{_IOT}, Rules Engine"
    ),
    firehose_ingest_per_gb=Price(
        usd=0.029, per="GB ingested, each record rounded up to 5 KB", source=f"{_FH}, first 500 TB/month"
    ),
    firehose_dp_per_gb=Price(
        usd=0.020, per="GB processed by dynamic partitioning", source=f"{_FH}, Dynamic partitioning"
    ),
    firehose_dp_per_1000_objects=Price(
        usd=0.005, per="1,000 S3 objects delivered (dynamic partitioning)", source=f"{_FH}, Dynamic partitioning"
    ),
    firehose_format_conversion_per_gb=Price(
        usd=0.018, per="GB converted to Parquet", source=f"{_FH}, Format conversion"
    ),
    lambda_per_million_requests=Price(usd=0.20, per="million requests", source=_LAMBDA),
    lambda_per_gb_second=Price(usd=0.0000166667, per="GB-second", source=_LAMBDA),
    ddb_per_million_wru=Price(usd=0.625, per="million write request units (1 KB each)", source=_DDB),
    ddb_per_million_rru=Price(usd=0.125, per="million read request units (4 KB each)", source=_DDB),
    ddb_storage_per_gb_month=Price(
        usd=0.25, per="GB-month (items + 100 B each)", source=f"{_DDB}, Data storage (Standard)"
    ),
    ddb_pitr_per_gb_month=Price(usd=0.20, per="GB-month of table size", source=f"{_DDB}, Continuous backups (PITR)"),
    s3_put_per_1000=Price(usd=0.005, per="1,000 PUT/COPY/POST/LIST requests", source=f"{_S3}, Requests"),
    s3_get_per_1000=Price(usd=0.0004, per="1,000 GET/SELECT requests", source=f"{_S3}, Requests"),
    s3_storage_per_gb_month=Price(usd=0.023, per="GB-month (first 50 TB)", source=f"{_S3}, Storage"),
    athena_per_tb_scanned=Price(usd=5.00, per="TB scanned", source=_ATHENA),
    athena_min_bytes_per_query=10 * 1024 * 1024,
    glue_catalog_per_million_requests=Price(usd=1.00, per="million Data Catalog requests", source=_GLUE),
    glue_catalog_per_100k_objects_month=Price(
        usd=1.00, per="100,000 catalog objects (tables, partitions) per month", source=_GLUE
    ),
    logs_ingest_per_gb=Price(usd=0.50, per="GB ingested", source=f"{_CW}, Collect (data ingestion)"),
    logs_storage_per_gb_month=Price(usd=0.03, per="GB-month archived", source=f"{_CW}, Store (archival)"),
)


# ----------------------------------------------------------------------------------------------- traffic
class KindTraffic(BaseModel):
    """One kind of message of one device, per hour."""

    model_config = ConfigDict(frozen=True)

    messages_per_hour: float = Field(ge=0.0)
    payload_bytes_per_hour: float = Field(ge=0.0)
    units_5kb_per_hour: float = Field(ge=0.0, description="sum over messages of ceil(size / 5 KB)")

    @classmethod
    def from_sizes(cls, sizes: Iterable[int], hours: float) -> KindTraffic:
        if hours <= 0:
            raise ValueError(f"hours must be positive, got {hours}")
        sizes = list(sizes)
        return cls(
            messages_per_hour=len(sizes) / hours,
            payload_bytes_per_hour=sum(sizes) / hours,
            units_5kb_per_hour=sum(units_5kb(s) for s in sizes) / hours,
        )

    @property
    def mean_payload_bytes(self) -> float:
        return self.payload_bytes_per_hour / self.messages_per_hour if self.messages_per_hour else 0.0


class DeviceTraffic(BaseModel):
    """One device's uplink: per kind, as JSON envelopes (today) and with telemetry compacted (target)."""

    model_config = ConfigDict(frozen=True)

    source: str = Field(min_length=1, description="how it was obtained (a real agent run, or stated)")
    simulated_hours: float = Field(gt=0.0)
    json_kinds: dict[str, KindTraffic]
    compact_kinds: dict[str, KindTraffic]
    expand_cpu_s: float = Field(
        default=0.0, ge=0.0, description="CPU time to expand one compact telemetry batch into lake rows (measured)"
    )
    ingress: Literal["mqtt", "basic_ingest"] = Field(
        default="mqtt", description="how the measured messages were published: Basic Ingest topics ($aws/rules/...)"
    )

    def kinds(self, encoding: Literal["json", "compact"]) -> dict[str, KindTraffic]:
        return self.json_kinds if encoding == "json" else self.compact_kinds

    @property
    def messages_per_hour(self) -> float:
        return sum(k.messages_per_hour for k in self.json_kinds.values())


class KindPath(BaseModel):
    """What the ingest Lambda does for one message of a kind (means over the measured messages)."""

    model_config = ConfigDict(frozen=True)

    messages: int = Field(ge=1)
    s3_puts: float = Field(ge=0.0)
    s3_put_bytes: float = Field(ge=0.0, description="the lake object's bytes")
    ddb_wru: float = Field(ge=0.0, description="write units of the table writes (1 KB each, item size rules)")
    ddb_gsi_wru: float = Field(ge=0.0, description="write units of the index writes")
    ddb_stored_bytes: float = Field(ge=0.0, description="History item + its index entry, with 100 B overhead each")
    ddb_calls: float = Field(ge=0.0)
    glue_calls: float = Field(ge=0.0)
    cpu_s: float = Field(ge=0.0, description="the handler thread's CPU time (moto's own work excluded)")
    log_bytes: float = Field(ge=0.0, description="the handler's log lines at INFO and above")
    rules_triggered: float = Field(
        default=1.0, ge=0.0, description="the template's enabled topic rules the message's topic matches"
    )
    lambda_invocations: float = Field(default=1.0, ge=0.0, description="rule actions invoking the ingest Lambda")
    firehose_records: float = Field(default=0.0, ge=0.0, description="records the rules' Firehose actions put")
    firehose_record_bytes: float = Field(
        default=0.0, ge=0.0, description="those records' bytes (the rule SQL's JSON + the action's separator)"
    )
    firehose_billed_bytes: float = Field(
        default=0.0, ge=0.0, description="the same records rounded up to 5 KB each (how Firehose bills ingestion)"
    )
    firehose_gz_bytes: float = Field(
        default=0.0, ge=0.0, description="the records' share of their buffer gzip'd (what lands in the lake)"
    )
    firehose_expanded_bytes: float = Field(
        default=0.0,
        ge=0.0,
        description="the records after the stream's transform (packed telemetry expanded): what is partitioned",
    )
    transform_wru: float = Field(
        default=0.0, ge=0.0, description="write units of the lake transform's writes (telemetry's live-window item)"
    )
    transform_rru: float = Field(
        default=0.0, ge=0.0, description="read units of the transform's reads (is the thing in DeviceState?)"
    )
    transform_cpu_s: float = Field(
        default=0.0, ge=0.0, description="the transform's CPU per record: expand, check, build the item (no AWS calls)"
    )
    transform_ddb_calls: float = Field(
        default=0.0, ge=0.0, description="the transform's DynamoDB calls per record, batched as at fleet scale"
    )

    @property
    def lake_gz_bytes(self) -> float:
        """Bytes of the lake per message: Firehose's gzip'd records when the rules feed it, else the object."""
        return self.firehose_gz_bytes if self.firehose_records else self.s3_put_bytes


class CloudPath(BaseModel):
    model_config = ConfigDict(frozen=True)

    source: str
    kinds: dict[str, KindPath]
    calls: dict[str, int] = Field(description="every AWS operation the handler called, counted")

    def kind(self, name: str) -> KindPath:
        """A kind's measured path; a small kind the run did not produce (alarms in a healthy day) costs what a
        measured small kind does (never what telemetry does: its path differs)."""
        if name in self.kinds:
            return self.kinds[name]
        if name != "telemetry":
            for other in ("health", "cycles", "alarms"):
                if other in self.kinds:
                    return self.kinds[other]
        raise KeyError(f"the measured cloud path has no {name!r} messages, nor a small kind to stand in for it")


class Assumptions(BaseModel):
    """What the model assumes and does not measure (each one named in the README's cost section)."""

    model_config = ConfigDict(frozen=True)

    lambda_memory_gb: float = Field(default=0.5, gt=0.0, description="template.yaml IngestFunction MemorySize 512")
    transform_memory_gb: float = Field(
        default=0.25, gt=0.0, description="template.yaml LakeExpandFunction MemorySize 256"
    )
    transform_buffer_mb: float = Field(
        default=0.25, gt=0.0, description="the stream's Lambda processor BufferSizeInMBs: one invocation per buffer"
    )
    lambda_cpu_slowdown: float = Field(
        default=1769 / 512, gt=0.0, description="one vCPU at 1,769 MB: CPU time stretches by 1769/MemorySize"
    )
    latency_s: dict[str, float] = Field(
        default={"s3": 0.025, "dynamodb": 0.006, "glue": 0.030},
        description="wall time of one AWS call from Lambda (typical in-region figures, not measured here)",
    )
    lambda_platform_log_bytes: int = Field(default=360, ge=0, description="START + END + REPORT lines")
    log_event_overhead_bytes: int = Field(default=26, ge=0, description="CloudWatch's per-event overhead")
    log_retention_days: float = Field(default=30.0, ge=0.0, description="template LogRetentionDays default")
    raw_ttl_days: float = Field(
        default=1.0, ge=0.0, description="History's telemetry live-window TTL (template RawTelemetryTtlDays)"
    )
    lake_retention_months: float = Field(
        default=12.0, gt=0.0, description="lake kept this long (billed at that steady-state size)"
    )
    dashboard_loads_per_day: float = Field(
        default=8.0, ge=0.0, description="the fleet dashboard opened (DIRECT_QUERY: its queries run) this often"
    )
    telemetry_query_days: float = Field(
        default=1.5, gt=0.0, description="dt >= yesterday: yesterday and today so far, 1.5 days on average"
    )
    gets_per_object: dict[str, float] = Field(
        default={"jsonl_gz": 1.0, "parquet": 3.0}, description="S3 GETs Athena makes per object read"
    )
    parquet_scan_fraction: float = Field(
        default=0.5, gt=0.0, le=1.0, description="share of a Parquet object's bytes the dashboard's columns read"
    )
    firehose_buffer_s: float = Field(default=900.0, gt=0.0)
    firehose_buffer_bytes: float = Field(default=128 * 1024 * 1024, gt=0.0)
    lake_parquet_ratio: float = Field(
        default=0.6, gt=0.0, description="Parquet bytes per byte of the same rows as gzip JSON lines"
    )


class Architecture(BaseModel):
    """A way of carrying the uplink into the cloud (what decides the bill)."""

    model_config = ConfigDict(frozen=True)

    name: str
    description: str
    ingress: Literal["mqtt", "basic_ingest"]
    encoding: Literal["json", "compact"]
    telemetry_path: Literal["lambda_ddb_s3", "firehose"]
    #: the cloud path as measured: rules, Lambda invocations, lake writes and Firehose records per message are the
    #: measured ones (the template's rules on the real handler), nothing is assumed away
    as_measured: bool = False
    #: actions on the telemetry rule besides the lake (a DynamoDBv2 write of the latest sample summary)
    telemetry_latest_state_action: bool = False
    firehose_dynamic_partitioning: bool = True
    firehose_parquet: bool = True
    glue_partition_projection: bool = False
    pitr: bool = True
    #: days of cycles/health/alarms the dashboard's data sets read (today's SQL has no date filter: all of it)
    dashboard_small_kinds_days: float = Field(default=365.0, gt=0.0)
    built: dict[str, bool] = Field(default_factory=dict, description="which parts exist in the code today")


TODAY = Architecture(
    name="today",
    description="every message -> IoT rule -> ingest Lambda -> DynamoDB History item + DeviceState update "
    "+ one S3 object per message + a Glue partition per kind, day and thing",
    ingress="mqtt",
    encoding="json",
    telemetry_path="lambda_ddb_s3",
    built={"everything": True},
)
BUILT = Architecture(
    name="built",
    description="as built: Basic Ingest (the recipe's default; no messaging charge), packed telemetry (one 5 KB unit "
    "a batch); one rule per kind -> Firehose (one stream, dynamic partitioning by kind and date, gzip JSON lines, "
    "128 MB / 900 s buffers: the lake for every kind) whose transform Lambda expands packed batches and writes "
    "telemetry's one DynamoDB item (a 1 KB live-window History item, TTL'd, not indexed; no Lambda per telemetry "
    "message); cycles/health/alarms also -> the ingest Lambda (DeviceState, History, alarms); no raw telemetry in "
    "DynamoDB; Glue partition projection",
    ingress="basic_ingest",
    encoding="compact",
    telemetry_path="firehose",
    as_measured=True,
    firehose_parquet=False,
    glue_partition_projection=True,
    built={
        "basic_ingest": True,
        "firehose_lake": True,
        "firehose_small_kinds": True,
        "partition_projection": True,
        "live_window_history": True,
        "compact_telemetry": True,
        "telemetry_without_lambda": True,
    },
)
TARGET = Architecture(
    name="target",
    description="Basic Ingest; compact telemetry (one 5 KB unit); telemetry rule -> Firehose (dynamic "
    "partitioning by kind and date, Parquet) + a DynamoDBv2 action writing the latest-sample summary; "
    "cycles/health/alarms keep the ingest Lambda; no raw telemetry in DynamoDB; Glue partition projection",
    ingress="basic_ingest",
    encoding="compact",
    telemetry_path="firehose",
    telemetry_latest_state_action=True,
    glue_partition_projection=True,
    dashboard_small_kinds_days=30.0,
    built={
        "basic_ingest": False,
        "compact_telemetry": True,
        "firehose_lake": True,
        "partition_projection": True,
        "latest_state_action": False,
        "parquet": False,
    },
)
TARGET_MQTT = TARGET.model_copy(
    update={"name": "target, MQTT topics", "ingress": "mqtt", "description": "the target without Basic Ingest"}
)
TARGET_JSON = TARGET.model_copy(
    update={"name": "target, JSON telemetry", "encoding": "json", "description": "the target without compaction"}
)
#: what the bench prices from the measured path (TODAY's path, one lake object and a full History item per
#: telemetry message, no longer exists to be measured: its last measured bill is :data:`BEFORE_FIREHOSE`)
ARCHITECTURES = (BUILT, TARGET, TARGET_MQTT, TARGET_JSON)

#: TODAY's bill per device-month as last measured (bench_cost at commit f9c886f, the same prices and the real
#: agent's traffic, before the Firehose lake): kept as the baseline the built path is compared with
BEFORE_FIREHOSE = {
    "measured_at_commit": "f9c886f",
    "per_device_month_usd": {"1000": 1.992467, "10000": 1.986065, "100000": 1.959864},
}


# ----------------------------------------------------------------------------------------------- the bill
class Bill(BaseModel):
    model_config = ConfigDict(frozen=True)

    architecture: str
    fleet_size: int
    lines_usd: dict[str, float]

    @property
    def total_usd(self) -> float:
        return sum(self.lines_usd.values())


def monthly_bill(
    traffic: DeviceTraffic,
    path: CloudPath,
    arch: Architecture,
    fleet_size: int,
    prices: PriceTable = PRICES,
    assume: Assumptions | None = None,
) -> Bill:
    """The bill of one device-month (USD) at ``fleet_size`` devices, line by line."""
    if fleet_size < 1:
        raise ValueError(f"fleet_size must be at least 1, got {fleet_size}")
    a = assume or Assumptions()
    kinds = traffic.kinds(arch.encoding)
    month = {k: t.messages_per_hour * HOURS_PER_MONTH for k, t in kinds.items()}
    units = {k: t.units_5kb_per_hour * HOURS_PER_MONTH for k, t in kinds.items()}
    json_kinds = traffic.json_kinds
    lines: dict[str, float] = defaultdict(float)

    # IoT Core: messaging (tiered over the whole fleet), connectivity, rules and actions (5 KB units)
    all_units = sum(units.values())
    ingress = traffic.ingress if arch.as_measured else arch.ingress  # as built: how the measured agent published
    if ingress == "mqtt":
        lines["iot_messaging"] = prices.iot_messaging_usd(all_units * fleet_size) / fleet_size
    else:
        lines["iot_messaging"] = 0.0
    lines["iot_connectivity"] = 60 * HOURS_PER_MONTH / 1e6 * prices.iot_connectivity_per_million_minutes.usd
    if arch.as_measured:
        # the template's rules the topic matches (one per kind) and their actions as measured (the lake's Firehose
        # record and the ingest Lambda's invocation); both metered in 5 KB units of the message
        rule_units = sum(units[k] * path.kind(k).rules_triggered for k in units)
        actions = sum(units[k] * (path.kind(k).lambda_invocations + path.kind(k).firehose_records) for k in units)
    else:
        rule_units = all_units
        actions = all_units  # one action per message: the ingest Lambda today, Firehose (the lake) in the target
        if arch.telemetry_latest_state_action and "telemetry" in units:
            actions += units["telemetry"]  # + the DynamoDBv2 write of the latest-sample summary
        if arch.telemetry_path == "firehose":
            actions += sum(u for k, u in units.items() if k != "telemetry")  # the small kinds: lake + Lambda
    lines["iot_rules"] = rule_units * prices.iot_rule_triggered_per_million.usd / 1e6
    lines["iot_actions"] = actions * prices.iot_action_executed_per_million.usd / 1e6

    firehose = arch.telemetry_path == "firehose"
    # the ingest Lambda: every kind today; in the target only the small kinds (DeviceState, alarms, their small
    # History items), and without the lake object or Glue call (the lake is Firehose's for every kind)
    # (as built and measured: every kind invokes it as often as the rules do, and its lake writes are measured)
    if arch.as_measured:
        lambda_kinds = [k for k in month if path.kind(k).lambda_invocations > 0]
        invocations = sum(month[k] * path.kind(k).lambda_invocations for k in lambda_kinds)
    else:
        lambda_kinds = [k for k in month if not (k == "telemetry" and firehose)]
        invocations = sum(month[k] for k in lambda_kinds)
    gb_s = 0.0
    s3_puts = wru = rru = stored_ddb = log_bytes = glue_calls = 0.0
    for k, n_month in month.items():  # what each kind keeps in DynamoDB, whoever writes it (telemetry: the transform)
        p = path.kind(k)
        if arch.as_measured or k in lambda_kinds:
            retention_months = (a.raw_ttl_days / DAYS_PER_MONTH) if k == "telemetry" else a.lake_retention_months
            stored_ddb += n_month * p.ddb_stored_bytes * retention_months
        if arch.as_measured:
            wru += n_month * p.transform_wru
            rru += n_month * p.transform_rru
    for k in lambda_kinds:
        p = path.kind(k)
        puts = p.s3_puts if (arch.as_measured or not firehose) else 0.0
        glue = p.glue_calls if (arch.as_measured or not (firehose or arch.glue_partition_projection)) else 0.0
        duration = (
            p.cpu_s * a.lambda_cpu_slowdown
            + puts * a.latency_s["s3"]
            + p.ddb_calls * a.latency_s["dynamodb"]
            + glue * a.latency_s["glue"]
        )
        billed_ms = math.ceil(round(duration * 1000, 6))  # Lambda bills whole milliseconds
        gb_s += month[k] * billed_ms / 1000 * a.lambda_memory_gb
        s3_puts += month[k] * puts
        wru += month[k] * (p.ddb_wru + p.ddb_gsi_wru)
        log_bytes += month[k] * (p.log_bytes + a.lambda_platform_log_bytes + 3 * a.log_event_overhead_bytes)
        glue_calls += month[k] * glue
    lines["lambda_requests"] = invocations * prices.lambda_per_million_requests.usd / 1e6
    lines["lambda_duration"] = gb_s * prices.lambda_per_gb_second.usd
    if arch.telemetry_latest_state_action and "telemetry" in month:
        wru += month["telemetry"] * 1  # the summary item (< 1 KB) written by the DynamoDBv2 action
    lines["dynamodb_writes"] = wru * prices.ddb_per_million_wru.usd / 1e6
    lines["dynamodb_reads"] = rru * prices.ddb_per_million_rru.usd / 1e6
    lines["dynamodb_storage"] = stored_ddb / GB * prices.ddb_storage_per_gb_month.usd
    lines["dynamodb_pitr"] = stored_ddb / GB * prices.ddb_pitr_per_gb_month.usd if arch.pitr else 0.0

    # the lake: bytes stored, objects written (and read by Athena below)
    lake_bytes_month: dict[str, float] = {}
    objects_month: dict[str, float] = {}
    firehose_kinds: list[str] = []
    for k, n_month in month.items():
        p = path.kind(k)
        gz = p.lake_gz_bytes * n_month  # the rows as gzip JSON lines
        via_firehose = (p.firehose_records > 0) if arch.as_measured else firehose
        if via_firehose:
            firehose_kinds.append(k)
            lake_bytes_month[k] = gz * (a.lake_parquet_ratio if arch.firehose_parquet else 1.0)
            # the fleet's records of a kind (one partition a day) are buffered together: an object per buffer
            # interval or per full buffer; the buffer fills with the records as put (before compression)
            filled = p.firehose_record_bytes * n_month if arch.as_measured else lake_bytes_month[k]
            fleet_bytes_per_s = filled * fleet_size / (HOURS_PER_MONTH * 3600)
            per_s = max(1 / a.firehose_buffer_s, fleet_bytes_per_s / a.firehose_buffer_bytes)
            objects_month[k] = per_s * HOURS_PER_MONTH * 3600 / fleet_size
        else:
            lake_bytes_month[k] = gz
            objects_month[k] = n_month * p.s3_puts
    fmt: Literal["jsonl_gz", "parquet"] = "parquet" if (firehose and arch.firehose_parquet) else "jsonl_gz"
    if firehose:
        if arch.as_measured:  # the records the rules put, each rounded up to 5 KB; processed as put
            ingested = sum(month[k] * path.kind(k).firehose_billed_bytes for k in firehose_kinds)
            expanded = sum(
                month[k] * max(path.kind(k).firehose_expanded_bytes, path.kind(k).firehose_record_bytes)
                for k in firehose_kinds
            )
        else:
            ingested = sum(units.values()) * UNIT_5KB
            expanded = sum(t.payload_bytes_per_hour for t in json_kinds.values()) * HOURS_PER_MONTH
        objects = sum(objects_month[k] for k in firehose_kinds)
        lines["firehose_ingest"] = ingested / GB * prices.firehose_ingest_per_gb.usd
        dp = expanded / GB * prices.firehose_dp_per_gb.usd + objects / 1000 * prices.firehose_dp_per_1000_objects.usd
        lines["firehose_dynamic_partitioning"] = dp if arch.firehose_dynamic_partitioning else 0.0
        conv = expanded / GB * prices.firehose_format_conversion_per_gb.usd
        lines["firehose_format_conversion"] = conv if arch.firehose_parquet else 0.0
        s3_puts += objects if arch.as_measured else sum(objects_month.values())
        # the stream's transform: one invocation per processor buffer of input (the records as put)
        measured_transform = arch.as_measured and any(path.kind(k).transform_cpu_s > 0 for k in firehose_kinds)
        if measured_transform:  # its CPU per record and its batched DynamoDB calls, as measured
            put_bytes = sum(month[k] * path.kind(k).firehose_record_bytes for k in firehose_kinds)
            lines["lambda_requests"] += (
                put_bytes / (a.transform_buffer_mb * 1024 * 1024) * prices.lambda_per_million_requests.usd / 1e6
            )
            transform_gb_s = sum(
                month[k]
                * (
                    path.kind(k).transform_cpu_s * a.lambda_cpu_slowdown * a.lambda_memory_gb  # CPU: same GB-s
                    + path.kind(k).transform_ddb_calls * a.latency_s["dynamodb"] * a.transform_memory_gb
                )
                for k in firehose_kinds
            )
            lines["lambda_duration"] += transform_gb_s * prices.lambda_per_gb_second.usd
        elif arch.encoding == "compact" and "telemetry" in month:
            # not measured: one invocation per ~1 MB of input, its CPU the measured expansion of one batch (x2 for
            # writing the rows back out)
            lines["lambda_requests"] += ingested / (1024 * 1024) * prices.lambda_per_million_requests.usd / 1e6
            lines["lambda_duration"] += (
                month["telemetry"] * 2 * traffic.expand_cpu_s * a.lambda_cpu_slowdown * a.lambda_memory_gb
            ) * prices.lambda_per_gb_second.usd
    lines["s3_puts"] = s3_puts * prices.s3_put_per_1000.usd / 1000
    lines["s3_storage"] = (
        sum(lake_bytes_month.values()) * a.lake_retention_months / GB * prices.s3_storage_per_gb_month.usd
    )

    # Athena: the dashboard's four data sets run at every load (DIRECT_QUERY), fleet-wide
    loads_month = a.dashboard_loads_per_day * DAYS_PER_MONTH
    retained_days = DAYS_PER_MONTH * a.lake_retention_months
    scanned = 0.0
    gets = 0.0
    for k in month:
        days = a.telemetry_query_days if k == "telemetry" else min(arch.dashboard_small_kinds_days, retained_days)
        window_bytes = lake_bytes_month[k] / DAYS_PER_MONTH * days
        window_objects = objects_month[k] / DAYS_PER_MONTH * days
        if fmt == "parquet":
            window_bytes *= a.parquet_scan_fraction
        # the 10 MB minimum per query, shared by the fleet
        per_query = max(window_bytes * fleet_size, prices.athena_min_bytes_per_query) / fleet_size
        scanned += per_query * loads_month
        gets += window_objects * a.gets_per_object[fmt] * loads_month
    lines["athena_scanned"] = scanned / TB * prices.athena_per_tb_scanned.usd
    lines["s3_gets"] = gets * prices.s3_get_per_1000.usd / 1000

    # Glue Data Catalog: partition calls and the partitions kept (none with partition projection)
    lines["glue_catalog"] = glue_calls * prices.glue_catalog_per_million_requests.usd / 1e6
    if not arch.glue_partition_projection:
        partitions_month = len(month) * DAYS_PER_MONTH  # one per kind, day and thing
        kept = partitions_month * a.lake_retention_months
        lines["glue_catalog"] += kept / 100_000 * prices.glue_catalog_per_100k_objects_month.usd

    # CloudWatch Logs of the Lambdas that run per message
    lines["logs_ingest"] = log_bytes / GB * prices.logs_ingest_per_gb.usd
    lines["logs_storage"] = (
        log_bytes * (a.log_retention_days / DAYS_PER_MONTH) / GB * prices.logs_storage_per_gb_month.usd
    )
    return Bill(architecture=arch.name, fleet_size=fleet_size, lines_usd=dict(lines))


# ----------------------------------------------------------------------------------------------- measuring
def recipe_mqtt_defaults() -> dict[str, Any]:
    """The ``mqtt`` section of the agent component's default configuration (recipes/com.battwin.Agent.yaml): how a
    deployed agent publishes (Basic Ingest to the stack's rules)."""
    import yaml

    recipe = yaml.safe_load((Path(__file__).resolve().parents[1] / "recipes" / "com.battwin.Agent.yaml").read_text())
    mqtt: dict[str, Any] = recipe["ComponentConfiguration"]["DefaultConfiguration"]["mqtt"]
    return {k: v for k, v in mqtt.items() if k == "basic_ingest_rule_prefix"}


def run_agent(
    hours: float,
    thing: str = "cost-device",
    start_ts: float | None = None,
    telemetry: dict[str, Any] | None = None,
    mqtt: dict[str, Any] | None = None,
) -> list[tuple[str, bytes]]:
    """The real agent on the simulator for ``hours`` simulated hours, at its default settings or with the
    ``telemetry`` section given (batching) and the ``mqtt`` section (e.g. :func:`recipe_mqtt_defaults`): (topic,
    payload) as published."""
    from device_agent.agent import Agent
    from device_agent.config import AgentConfig
    from device_agent.uplink.spool import Spool
    from device_agent.uplink.transport import MemoryTransport
    from hardware.registry import create_source

    start = start_ts if start_ts is not None else float(int(time.time() // 3600) * 3600 - 3 * 86_400)
    config = AgentConfig(
        thing_name=thing,
        source={"url": "simulator", "simulator": {"time_acceleration": 1_000_000.0, "start_ts": start}},
        telemetry=telemetry or {},
        mqtt=mqtt or {},
    )
    transport = MemoryTransport()
    agent = Agent(config, create_source(config.source.url, config.source), transport, Spool(":memory:"))
    agent.run(threading.Event(), max_samples=int(hours * 3600 / config.source.sample_interval_s))
    return list(transport.published)


def compact_telemetry(payload: bytes) -> bytes:
    """One telemetry envelope as the device sends it packed (``telemetry.encoding = "packed"``, the default; the
    device's own encoder, :func:`schema.messages.encode_envelope`); a packed one is returned as it is."""
    env = json.loads(payload)
    if is_packed(env["body"]):
        return payload
    body = Telemetry.model_validate(env["body"])
    return encode_envelope(env["thing"], "telemetry", body, env["ts"], env["id"], packed=True)


def plain_telemetry(payload: bytes) -> bytes:
    """One telemetry envelope as plain JSON (``telemetry.encoding = "json"``; what versions before 0.2 sent)."""
    env = json.loads(payload)
    if not is_packed(env["body"]):
        return payload
    return json.dumps({**env, "body": unpacked_body(env["body"])}, separators=(",", ":"), allow_nan=False).encode()


def traffic_from_messages(messages: list[tuple[str, bytes]], hours: float, source: str) -> DeviceTraffic:
    sizes: dict[str, list[int]] = defaultdict(list)
    compact: dict[str, list[int]] = defaultdict(list)
    expand_s, expanded = 0.0, 0
    for topic, payload in messages:
        kind = topic.rsplit("/", 1)[1]
        if kind == "telemetry":
            sizes[kind].append(len(plain_telemetry(payload)))
            small = compact_telemetry(payload)
            compact[kind].append(len(small))
            t0 = time.thread_time()
            expand_record(small)  # what the lake stream's transform does with it
            expand_s += time.thread_time() - t0
            expanded += 1
        else:
            sizes[kind].append(len(payload))
            compact[kind].append(len(payload))
    return DeviceTraffic(
        source=source,
        simulated_hours=hours,
        expand_cpu_s=expand_s / expanded if expanded else 0.0,
        ingress="basic_ingest" if all(t.startswith(BASIC_INGEST_ROOT) for t, _ in messages) else "mqtt",
        json_kinds={k: KindTraffic.from_sizes(v, hours) for k, v in sizes.items()},
        compact_kinds={k: KindTraffic.from_sizes(v, hours) for k, v in compact.items()},
    )


def measure_device_traffic(
    hours: float = 24.0, telemetry: dict[str, Any] | None = None, mqtt: dict[str, Any] | None = None
) -> tuple[DeviceTraffic, list[tuple[str, bytes]]]:
    """Run the real agent for ``hours`` simulated hours (its deployed defaults: the recipe's ``mqtt`` section, i.e.
    Basic Ingest, unless ``mqtt`` is given; the ``telemetry`` section given, if any) and measure its uplink (and
    return the messages)."""
    messages = run_agent(hours, telemetry=telemetry, mqtt=recipe_mqtt_defaults() if mqtt is None else mqtt)
    if not messages:
        raise RuntimeError("the agent published nothing")
    settings = "default settings" if not telemetry else f"telemetry {json.dumps(telemetry, sort_keys=True)}"
    return traffic_from_messages(messages, hours, f"real agent, simulator, {settings}, {hours:g} h"), messages


def _value_bytes(v: dict[str, Any]) -> int:
    ((t, x),) = v.items()
    if t == "S":
        return len(x.encode())
    if t == "N":
        digits = len(x.lstrip("-").replace(".", "").lstrip("0")) or 1
        return math.ceil(digits / 2) + 1
    if t == "B":
        return len(x)
    if t in ("BOOL", "NULL"):
        return 1
    if t == "M":
        return 3 + sum(len(k.encode()) + _value_bytes(e) + 1 for k, e in x.items())
    if t == "L":
        return 3 + sum(_value_bytes(e) + 1 for e in x)
    raise ValueError(f"unknown DynamoDB type {t}")


def dynamodb_item_bytes(item: dict[str, Any]) -> int:
    """An item's size as DynamoDB bills it: attribute names plus values (documented sizing rules)."""
    return sum(len(name.encode()) + _value_bytes(value) for name, value in item.items())


def wru(item_bytes: int) -> int:
    return max(1, math.ceil(item_bytes / KB))


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        from device_agent.logging_setup import JsonFormatter

        self.setFormatter(JsonFormatter())
        self.bytes = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.bytes += len(self.format(record).encode()) + 1


@contextmanager
def _fake_aws_env() -> Iterator[None]:
    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_PROFILE")
    saved = {n: os.environ.get(n) for n in names}
    os.environ.update({"AWS_ACCESS_KEY_ID": "cost", "AWS_SECRET_ACCESS_KEY": "cost", "AWS_DEFAULT_REGION": "us-east-1"})
    os.environ.pop("AWS_ENDPOINT_URL", None)
    os.environ.pop("AWS_PROFILE", None)
    try:
        yield
    finally:
        for n, v in saved.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


def measure_cloud_path(messages: list[tuple[str, bytes]]) -> CloudPath:
    """Run the real ingest handler (in-process, on moto) over ``messages`` and count what it calls.

    A botocore ``before-parameter-build`` hook on the handler's own clients counts every operation and keeps its
    parameters: S3 bodies give the lake bytes, DynamoDB items their write units by the sizing rules (an
    UpdateItem is billed on the larger of the item before and after; both are read back from moto)."""
    import boto3
    from moto import mock_aws

    from cloud import aws as cloud_aws
    from cloud.ingest import handler as ingest

    env_names = ("HISTORY_TABLE", "DEVICE_STATE_TABLE", "DATA_BUCKET", "GLUE_DATABASE")
    saved = {n: os.environ.get(n) for n in env_names}
    with _fake_aws_env(), mock_aws():
        cloud_aws.reset_clients()
        ingest._CACHE.clear()
        try:
            return _measure_on_moto(messages, boto3, cloud_aws, ingest)
        finally:
            cloud_aws.reset_clients()
            ingest._CACHE.clear()
            for n, v in saved.items():
                if v is None:
                    os.environ.pop(n, None)
                else:
                    os.environ[n] = v


def _measure_on_moto(messages: list[tuple[str, bytes]], boto3: Any, cloud_aws: Any, ingest: Any) -> CloudPath:
    inspect = boto3.client("dynamodb")
    keys = [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}]
    inspect.create_table(
        TableName="History",
        BillingMode="PAY_PER_REQUEST",
        KeySchema=keys,
        AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"} for a in ("pk", "sk", "thing")],
        GlobalSecondaryIndexes=[
            {
                "IndexName": "by_thing_time",
                "Projection": {"ProjectionType": "KEYS_ONLY"},
                "KeySchema": [
                    {"AttributeName": "thing", "KeyType": "HASH"},
                    {"AttributeName": "sk", "KeyType": "RANGE"},
                ],
            }
        ],
    )
    inspect.create_table(
        TableName="DeviceState",
        BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "thing", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "thing", "AttributeType": "S"}],
    )
    boto3.client("s3").create_bucket(Bucket="cost-lake")
    glue = boto3.client("glue")
    glue.create_database(DatabaseInput={"Name": "cost_lake"})
    for kind in KINDS:
        glue.create_table(
            DatabaseName="cost_lake",
            TableInput={
                "Name": kind,
                "StorageDescriptor": {"Columns": [{"Name": "thing", "Type": "string"}], "Location": "s3://cost-lake/"},
                "PartitionKeys": [{"Name": "dt", "Type": "string"}, {"Name": "thing", "Type": "string"}],
            },
        )
    os.environ.update(
        {
            "HISTORY_TABLE": "History",
            "DEVICE_STATE_TABLE": "DeviceState",
            "DATA_BUCKET": "cost-lake",
            "GLUE_DATABASE": "cost_lake",
        }
    )
    from cloud.local_stack.iot_sql import Message, RuleQuery
    from cloud.local_stack.rules import firehose_record
    from cloud.local_stack.template import load_template, topic_rules

    # the template's enabled topic rules, evaluated by the local rules runner's SQL on each message: how many a
    # topic triggers, which invoke the ingest Lambda, and the records the Firehose actions put
    rules = [(spec, RuleQuery(spec.sql)) for spec in topic_rules(load_template()) if not spec.disabled]
    records: dict[str, list[bytes]] = defaultdict(list)
    calls: list[tuple[str, str, dict[str, Any]]] = []
    transform_counts: Counter[str] = Counter()
    # the lake stream's transform, as deployed (its writes: telemetry's live-window items, new things' DeviceState)
    transform = LakeTransform(
        TransformSettings(history_table="History", device_state_table="DeviceState", bucket="cost-lake"),
        dynamodb=cloud_aws.client("dynamodb"),
        s3=cloud_aws.client("s3"),
    )

    def hook(model: Any, params: dict[str, Any], **_: Any) -> None:
        calls.append((model.service_model.service_name, model.name, dict(params)))

    for service in ("dynamodb", "s3", "glue"):
        cloud_aws.client(service).meta.events.register("before-parameter-build", hook)
    capture = _Capture()
    logging.getLogger("battwin").addHandler(capture)
    acc: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    counted: dict[str, int] = defaultdict(int)
    try:
        by_name = {spec.rule_name: (spec, query) for spec, query in rules}
        for published, payload in messages:
            topic = published
            target = basic_ingest_target(published)
            if target is not None:  # Basic Ingest: that rule alone, on the topic without the prefix
                name, topic = target
                if name not in by_name:
                    raise RuntimeError(f"the agent published to a Basic Ingest rule the template lacks: {name!r}")
                matching = [by_name[name]]
            else:
                matching = [(spec, query) for spec, query in rules if query.matches(topic)]
            parts = topic.split("/")
            received_ms = int(json.loads(payload)["ts"] * 1000)
            event = {
                "payload_b64": base64.b64encode(payload).decode(),
                "rule_topic": topic,
                "rule_thing": parts[1],
                "rule_kind": parts[2],
                "rule_received_ms": received_ms,
            }
            kind = parts[2]
            a = acc[kind]
            for key in KindPath.model_fields:  # every measured quantity starts at zero for a kind
                a[key] += 0.0
            msg = Message(topic=topic, payload=payload, received_ms=received_ms)
            invokes_ingest = False
            for spec, query in matching:
                a["rules_triggered"] += 1
                if spec.function == "IngestFunction":
                    a["lambda_invocations"] += 1
                    invokes_ingest = True
                if spec.firehose is not None:
                    record = firehose_record(spec, query.evaluate(msg))
                    records[kind].append(record)
                    a["firehose_records"] += 1
                    a["firehose_record_bytes"] += len(record)
                    a["firehose_billed_bytes"] += units_5kb(len(record)) * UNIT_5KB
                    a["firehose_expanded_bytes"] += len(expand_record(record))
                    _measure_transform(transform, record, calls, inspect, a, transform_counts)
            a["messages"] += 1
            if not invokes_ingest:
                continue
            before = inspect.get_item(TableName="DeviceState", Key={"thing": {"S": parts[1]}}).get("Item", {})
            calls.clear()
            capture.bytes = 0
            cpu0 = time.thread_time()
            outcome = ingest.handler(event)
            cpu = time.thread_time() - cpu0
            if outcome["status"] != "stored":
                raise RuntimeError(f"the ingest handler did not store a real agent message: {outcome}")
            after = inspect.get_item(TableName="DeviceState", Key={"thing": {"S": parts[1]}}).get("Item", {})
            a["cpu_s"] += cpu
            a["log_bytes"] += capture.bytes
            for service, op, params in calls:
                counted[f"{service}.{op}"] += 1
                if service == "s3" and op == "PutObject":
                    a["s3_puts"] += 1
                    a["s3_put_bytes"] += _body_bytes(params.get("Body"))
                elif service == "glue":
                    a["glue_calls"] += 1
                elif service == "dynamodb":
                    a["ddb_calls"] += 1
            _account_writes(calls, before, after, a)
    finally:
        logging.getLogger("battwin").removeHandler(capture)
    for kind, recs in records.items():  # Firehose gzips a buffer of records: each record's share of it
        lake = b"".join(expand_record(r) for r in recs)  # after the stream's transform: what the lake keeps
        acc[kind]["firehose_gz_bytes"] = float(len(gzip.compress(lake, compresslevel=6, mtime=0)))
    kinds = {}
    for kind, a in acc.items():
        n = a.pop("messages")

        kinds[kind] = KindPath(messages=int(n), **{k: v / n for k, v in a.items()})
    counted.update({f"transform.dynamodb.{op}": n for op, n in transform_counts.items()})
    return CloudPath(
        source=f"real ingest handler and lake transform on moto, {len(messages)} real agent messages",
        kinds=kinds,
        calls=dict(counted),
    )


#: the transform's DynamoDB batches at fleet scale: an invocation holds ~170 records of as many devices
BATCH_WRITE_ITEMS = 25
BATCH_GET_KEYS = 100


def _measure_transform(
    transform: LakeTransform,
    record: bytes,
    calls: list[tuple[str, str, dict[str, Any]]],
    inspect: Any,
    a: dict[str, float],
    counts: Counter[str],
) -> None:
    """One record through the real transform: its CPU (expand, check, build the item; no AWS calls), then its
    DynamoDB writes and reads as made (the writes' units by the sizing rules; a read is 0.5 unit per 4 KB)."""
    cpu0 = time.thread_time()
    expand_record(record)
    found = transform.checked_live_item(record)
    if found is not None:
        marshal(found[1])
    a["transform_cpu_s"] += time.thread_time() - cpu0
    calls.clear()
    transform.records([record])
    for service, op, params in calls:
        if service != "dynamodb":
            continue
        counts[op] += 1
        if op == "BatchWriteItem":
            for requests in params.get("RequestItems", {}).values():
                for req in requests:
                    item = req["PutRequest"]["Item"]
                    size = dynamodb_item_bytes(item)
                    a["transform_wru"] += wru(size)
                    a["ddb_stored_bytes"] += size + 100
                    if "thing" in item:  # in the by-time index
                        keys = {k: item[k] for k in ("pk", "sk", "thing")}
                        a["transform_wru"] += wru(dynamodb_item_bytes(keys))
                        a["ddb_stored_bytes"] += dynamodb_item_bytes(keys) + 100
                    a["transform_ddb_calls"] += 1 / BATCH_WRITE_ITEMS
        elif op == "BatchGetItem":
            for table, req in params.get("RequestItems", {}).items():
                for key in req["Keys"]:
                    got = inspect.get_item(TableName=table, Key=key).get("Item", {})
                    a["transform_rru"] += 0.5 * max(1, math.ceil(dynamodb_item_bytes(got) / 4096))
                    a["transform_ddb_calls"] += 1 / BATCH_GET_KEYS
        elif op == "PutItem":  # a thing's first telemetry: its DeviceState item
            a["transform_wru"] += wru(dynamodb_item_bytes(params.get("Item", {})))
            a["transform_ddb_calls"] += 1


def _body_bytes(body: Any) -> int:
    if body is None:
        return 0
    if isinstance(body, (bytes, bytearray, str)):
        return len(body)
    if hasattr(body, "getbuffer"):  # botocore wraps bytes into a BytesIO for S3
        return int(body.getbuffer().nbytes)
    raise TypeError(f"cannot size an S3 body of type {type(body).__name__}")


def _account_writes(
    calls: list[tuple[str, str, dict[str, Any]]], before: dict[str, Any], after: dict[str, Any], a: dict[str, float]
) -> None:
    """Write units of one message's DynamoDB writes and the stored bytes of its History item."""
    state_size = max(dynamodb_item_bytes(before), dynamodb_item_bytes(after))
    for service, op, params in calls:
        if service != "dynamodb":
            continue
        if op == "PutItem":
            item = params.get("Item", {})
            size = dynamodb_item_bytes(item)
            a["ddb_wru"] += wru(size)
            keys = {k: item[k] for k in ("pk", "sk", "thing") if k in item}
            a["ddb_gsi_wru"] += wru(dynamodb_item_bytes(keys))
            a["ddb_stored_bytes"] += size + 100 + dynamodb_item_bytes(keys) + 100
        elif op == "UpdateItem":
            a["ddb_wru"] += wru(state_size)
