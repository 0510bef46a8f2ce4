"""Scheduled retraining Lambda: the lake's cycle records → cell CSVs in S3 → a SageMaker training job.

Triggered by an EventBridge schedule. Steps:

1. read the lake's cycles partitions (``<lake>/kind=cycles/dt=…/``: Firehose's buffer objects, in parallel) and
   keep each message once (Firehose delivers at least once);
2. build one contract CSV per battery (:mod:`cloud.retrain.dataset`) and upload them as the ``train``
   channel: ``s3://<bucket>/<training prefix><job>/train/<dataset>/<cell>.csv`` (the trainer reads
   ``SM_CHANNEL_TRAIN/<dataset>/*.csv``; the folder name is the dataset name), with a ``manifest.json``
   beside the channel;
3. if there is enough data (``MIN_CELLS`` batteries, ``MIN_VALID_ROWS`` measured capacities), start a
   SageMaker training job with the TensorFlow framework image (script mode: ``sagemaker_program`` and
   ``sagemaker_submit_directory`` point at the source tarball built by ``cloud/package.py``, whose
   ``battwin_train.py`` runs ``ml.sagemaker_entry``); otherwise record the skip;
4. record the job (``started``) or the skip in the ModelRegistry table.

The job name comes from the schedule event's time, so a re-delivered event cannot start a second job.
"""

from __future__ import annotations

import json
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cloud.aws import (
    LambdaContext,
    client,
    env,
    env_bool,
    env_int,
    error_code,
    request_id,
    setup_lambda_logging,
)
from cloud.lake import (
    DEFAULT_LAKE_PREFIX,
    decode_jsonl,
    flat_row,
    lake_records,
    normalise_prefix,
    parse_partition,
    partition_prefix,
)
from cloud.retrain.dataset import CellCsv, LakeCycle, build_cell_csvs, fingerprint
from cloud.retrain.registry import Registry

log = logging.getLogger("battwin.cloud.retrain.start")

#: methods whose held-out error the trainer prints as ``held_out_<dataset>_<method>_rmse_pp=<value>``
METHODS = ("hybrid", "physics", "persistence")


def metric_definitions(dataset: str) -> list[dict[str, str]]:
    """SageMaker metric definitions for the trainer's log lines (they become the job's final metrics)."""
    return [
        {
            "Name": f"held_out_{dataset}_{m}_rmse_pp",
            "Regex": rf"held_out_{re.escape(dataset)}_{m}_rmse_pp=([0-9.eE+\-]+)",
        }
        for m in METHODS
    ]


def _hyperparameters(text: str) -> dict[str, str]:
    """A JSON object → SageMaker's string-valued hyperparameters (non-strings JSON-encoded)."""
    try:
        value = json.loads(text or "{}")
    except ValueError:
        raise ValueError(f"TRAINING_HYPERPARAMETERS is not JSON: {text[:200]!r}") from None
    if not isinstance(value, dict):
        raise ValueError("TRAINING_HYPERPARAMETERS must be a JSON object")
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}


#: the training images the code runs on: SageMaker's TensorFlow framework image (script mode, which
#: ``sagemaker_program`` needs) of TensorFlow >= 2.19 for Python >= 3.11 — the Python the project needs; the
#: TensorFlow images are py310 up to 2.18 and py312 from 2.19. cloud/template.yaml's TrainingImageUri has the
#: same AllowedPattern (with "" for the pinned default, PINNED_TRAINING_IMAGE in the stack's region).
TRAINING_IMAGE_PATTERN = (
    r"^[0-9]{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/tensorflow-training:"
    r"2\.(19|[2-9][0-9])\.[0-9]+-(cpu|gpu)-py3(1[1-9]|[2-9][0-9])(-[A-Za-z0-9._-]+)?$"
)
PINNED_TRAINING_IMAGE = "763104351884.dkr.ecr.{region}.amazonaws.com/tensorflow-training:2.19.0-cpu-py312"


class StartSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    bucket: str
    registry_table: str
    image_uri: str = Field(pattern=TRAINING_IMAGE_PATTERN)
    role_arn: str = Field(min_length=1)
    source_uri: str = Field(pattern=r"^s3://[^/]+/.+")
    lake_prefix: str = DEFAULT_LAKE_PREFIX
    training_prefix: str = "training/"
    model_prefix: str = "models/training/"
    instance_type: str = "ml.m5.xlarge"
    volume_gb: int = Field(default=10, ge=1, le=16384)
    max_runtime_s: int = Field(default=3 * 3600, ge=60, le=28 * 86400)
    job_prefix: str = Field(default="battwin-soh", pattern=r"^[A-Za-z0-9](-*[A-Za-z0-9]){0,39}$")
    min_cells: int = Field(default=1, ge=1)
    min_valid_rows: int = Field(default=20, ge=1)
    include_simulated: bool = False
    hyperparameters: dict[str, str] = Field(default_factory=dict)
    entry_point: str = "battwin_train.py"
    dataset_name: str = Field(default="fleet", pattern=r"^[A-Za-z0-9_.\-]+$")
    read_workers: int = Field(default=16, ge=1, le=32)

    @classmethod
    def from_env(cls) -> StartSettings:
        return cls(
            bucket=env("DATA_BUCKET"),
            registry_table=env("REGISTRY_TABLE"),
            image_uri=env("TRAINING_IMAGE_URI"),
            role_arn=env("TRAINING_ROLE_ARN"),
            source_uri=env("TRAINING_SOURCE_URI"),
            lake_prefix=env("LAKE_PREFIX", DEFAULT_LAKE_PREFIX),
            training_prefix=env("TRAINING_PREFIX", "training/"),
            model_prefix=env("MODEL_PREFIX", "models/training/"),
            instance_type=env("TRAINING_INSTANCE_TYPE", "ml.m5.xlarge"),
            volume_gb=env_int("TRAINING_VOLUME_GB", 10),
            max_runtime_s=env_int("TRAINING_MAX_RUNTIME_S", 3 * 3600),
            job_prefix=env("JOB_PREFIX", "battwin-soh"),
            min_cells=env_int("MIN_CELLS", 1),
            min_valid_rows=env_int("MIN_VALID_ROWS", 20),
            include_simulated=env_bool("INCLUDE_SIMULATED", False),
            hyperparameters=_hyperparameters(env("TRAINING_HYPERPARAMETERS", "{}")),
            entry_point=env("TRAINING_ENTRY_POINT", "battwin_train.py"),
            dataset_name=env("TRAINING_DATASET_NAME", "fleet"),
        )


class ScheduleEvent(BaseModel):
    """An EventBridge scheduled event (every field optional: a manual invocation may send ``{}``)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    id: str | None = None
    detail_type: str | None = Field(default=None, alias="detail-type")
    source: str | None = None
    time: datetime | None = None


class Retrainer:
    def __init__(
        self, settings: StartSettings, *, s3: Any = None, sagemaker: Any = None, registry: Registry | None = None
    ) -> None:
        self.settings = settings
        self.s3 = s3 or client("s3")
        self.sagemaker = sagemaker or client("sagemaker")
        self.registry = registry or Registry(settings.registry_table)

    # -- reading the lake -------------------------------------------------------------------------
    def cycle_keys(self) -> list[str]:
        """The objects of the lake's cycles partitions (``kind=cycles/dt=…/``): Firehose's buffers, a few per day
        for the whole fleet (not one per message)."""
        prefix = partition_prefix(self.settings.lake_prefix, "cycles")
        keys: list[str] = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.settings.bucket, Prefix=prefix):
            keys.extend(
                obj["Key"] for obj in page.get("Contents", []) if "dt" in parse_partition(obj["Key"]) and obj["Size"]
            )
        return keys

    def _read(self, key: str) -> list[dict[str, Any]]:
        return list(decode_jsonl(self.s3.get_object(Bucket=self.settings.bucket, Key=key)["Body"].read()))

    def read_cycles(self) -> list[LakeCycle]:
        """Every cycle record of the lake once (one per thing and message id, the envelope naming the topic's
        thing: :func:`cloud.lake.lake_records`, what the Athena data set keeps)."""
        keys = self.cycle_keys()
        raw: list[dict[str, Any]] = []
        with ThreadPoolExecutor(max_workers=self.settings.read_workers) as pool:
            for recs in pool.map(self._read, keys):
                raw.extend(recs)
        records: list[LakeCycle] = []
        for rec in lake_records(raw, "cycles"):
            row = flat_row(rec)
            cyc = LakeCycle.from_row(row) if row is not None else None
            if cyc is None:
                log.warning("unusable cycle record in the lake", extra={"message_id": str(rec.get("id"))[:64]})
                continue
            records.append(cyc)
        log.info("lake cycle records read", extra={"objects": len(keys), "lines": len(raw), "records": len(records)})
        return records

    # -- the run ----------------------------------------------------------------------------------
    def job_name(self, event: ScheduleEvent) -> str:
        when = event.time or datetime.now(UTC)
        return f"{self.settings.job_prefix}-{when.astimezone(UTC).strftime('%Y%m%d-%H%M%S')}"

    def run(self, event: ScheduleEvent, now: float | None = None) -> dict[str, Any]:
        st = self.settings
        now = time.time() if now is None else now
        job = self.job_name(event)
        cells = build_cell_csvs(self.read_cycles(), include_simulated=st.include_simulated)
        valid = sum(c.valid_rows for c in cells)
        summary: dict[str, Any] = {
            "cells": len(cells),
            "rows": sum(c.rows for c in cells),
            "valid_rows": valid,
            "things": sorted({c.thing for c in cells}),
            "data_fingerprint": fingerprint(cells),
        }
        if len(cells) < st.min_cells or valid < st.min_valid_rows:
            reason = (
                f"not enough data: {len(cells)} batteries (need {st.min_cells}), "
                f"{valid} measured capacities (need {st.min_valid_rows})"
            )
            self.registry.record(job, "skipped", reason, now=now, **summary)
            log.info("retraining skipped", extra={"job": job, "reason": reason})
            return {"status": "skipped", "job_name": job, "reason": reason, **summary}
        base = f"{normalise_prefix(st.training_prefix)}{job}/"
        train_prefix = f"{base}train/"
        self._upload(cells, train_prefix, base, job, summary)
        params = self.training_job_request(job, f"s3://{st.bucket}/{train_prefix}")
        try:
            created = self.sagemaker.create_training_job(**params)
        except Exception as exc:
            if error_code(exc) == "ResourceInUse":
                log.info("training job already exists (re-delivered schedule event)", extra={"job": job})
                return {"status": "exists", "job_name": job, **summary}
            raise
        self.registry.put_job(
            job,
            {
                "status": "training",
                "started_at": now,
                "training_job_arn": created.get("TrainingJobArn"),
                "train_uri": f"s3://{st.bucket}/{train_prefix}",
                "image_uri": st.image_uri,
                "source_uri": st.source_uri,
                **summary,
            },
        )
        self.registry.record(job, "started", "training job created", now=now, **summary)
        log.info("training job started", extra={"job": job, **{k: v for k, v in summary.items() if k != "things"}})
        return {"status": "started", "job_name": job, **summary}

    def _upload(self, cells: list[CellCsv], train_prefix: str, base: str, job: str, summary: dict[str, Any]) -> None:
        st = self.settings
        for cell in cells:
            self.s3.put_object(
                Bucket=st.bucket,
                Key=f"{train_prefix}{st.dataset_name}/{cell.name}.csv",
                Body=cell.text.encode("utf-8"),
                ContentType="text/csv",
            )
        manifest = {
            "job_name": job,
            "dataset": st.dataset_name,
            "columns": ["cycle", "capacity_ah", "ambient_temperature_c", "elapsed_h"],
            "files": [
                {
                    "file": f"{st.dataset_name}/{c.name}.csv",
                    "thing": c.thing,
                    "source_id": c.source_id,
                    "rows": c.rows,
                    "valid_rows": c.valid_rows,
                    "sha256": c.sha256,
                    "first_ts": c.first_ts,
                    "last_ts": c.last_ts,
                }
                for c in cells
            ],
            **summary,
        }
        self.s3.put_object(
            Bucket=st.bucket,
            Key=f"{base}manifest.json",
            Body=json.dumps(manifest, indent=1).encode(),
            ContentType="application/json",
        )

    def training_job_request(self, job: str, train_uri: str) -> dict[str, Any]:
        st = self.settings
        region = self.sagemaker.meta.region_name
        hyper = {
            **st.hyperparameters,
            "sagemaker_program": json.dumps(st.entry_point),
            "sagemaker_submit_directory": json.dumps(st.source_uri),
            "sagemaker_region": json.dumps(region),
            "sagemaker_container_log_level": "20",
            "sagemaker_job_name": json.dumps(job),
        }
        return {
            "TrainingJobName": job,
            "AlgorithmSpecification": {
                "TrainingImage": st.image_uri,
                "TrainingInputMode": "File",
                "MetricDefinitions": metric_definitions(st.dataset_name),
            },
            "RoleArn": st.role_arn,
            "InputDataConfig": [
                {
                    "ChannelName": "train",
                    "DataSource": {
                        "S3DataSource": {
                            "S3DataType": "S3Prefix",
                            "S3Uri": train_uri,
                            "S3DataDistributionType": "FullyReplicated",
                        }
                    },
                    "ContentType": "text/csv",
                    "InputMode": "File",
                }
            ],
            "OutputDataConfig": {"S3OutputPath": f"s3://{st.bucket}/{normalise_prefix(st.model_prefix)}"},
            "ResourceConfig": {"InstanceType": st.instance_type, "InstanceCount": 1, "VolumeSizeInGB": st.volume_gb},
            "StoppingCondition": {"MaxRuntimeInSeconds": st.max_runtime_s},
            "HyperParameters": hyper,
            "Tags": [{"Key": "battwin:job", "Value": job}],
        }


_CACHE: dict[str, Retrainer] = {}


def handler(event: dict[str, Any], context: LambdaContext | None = None) -> dict[str, Any]:
    """Lambda entry point (``cloud.retrain.start.handler``)."""
    setup_lambda_logging()
    try:
        ev = ScheduleEvent.model_validate(event or {})
    except ValidationError as exc:
        log.error("unexpected event", extra={"error": str(exc)[:500], "request_id": request_id(context)})
        raise
    settings = StartSettings.from_env()
    retrainer = _CACHE.get("retrainer")
    if retrainer is None or retrainer.settings != settings:
        retrainer = _CACHE["retrainer"] = Retrainer(settings)
    return retrainer.run(ev)
