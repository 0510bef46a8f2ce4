"""The fleet loop, locally: lake → training job → champion/challenger gate → new SohModel version → agents.

What runs is the deployed code, with two AWS services replaced by local stand-ins:

* :class:`LocalSageMaker` takes the very ``CreateTrainingJob`` request that :class:`cloud.retrain.start.Retrainer`
  builds and executes it as SageMaker's local mode does, without Docker: the ``train`` channel (the S3 prefix
  the request names, in the moto bucket) is copied to ``<job>/input/data/train``; the real entry point
  (``python -m ml.sagemaker_entry``, what ``battwin_train.py`` of the source tarball runs) is started as a
  subprocess with SageMaker's environment (``SM_CHANNEL_TRAIN``, ``SM_MODEL_DIR``, ``SM_OUTPUT_DATA_DIR``,
  ``SM_HPS``, ``SM_CHANNELS``, ``SM_CURRENT_HOST``…) and the hyperparameters as ``--key value`` arguments;
  the job's log is kept (CloudWatch's stand-in); the request's ``MetricDefinitions`` are applied to the log
  (the job's final metrics); ``SM_MODEL_DIR`` is archived as ``model.tar.gz`` and uploaded where SageMaker
  puts it, ``<S3OutputPath><job>/output/model.tar.gz``; the ``MaxRuntimeInSeconds`` stopping condition
  stops the process. The result is the ``SageMaker Training Job State Change`` event EventBridge would send.
* :class:`LocalGreengrass` takes what :class:`cloud.retrain.promote.Promoter` sends to Greengrass v2
  (``CreateComponentVersion`` with the inline recipe, ``CreateDeployment``) and does what the nucleus does
  with a deployment of the model component: it downloads the recipe's artifacts (from the moto bucket) into
  ``<artifact root>/<version>/`` — the folder the agents' ``health.model_root`` points at. The agents'
  ModelManager sees the new version folder, checks it and switches without a restart.

:class:`LocalRetrainLoop` wires them with the deployed Retrainer and Promoter and a ModelRegistry table made
from the template's definition. Differences from AWS are listed in cloud/README.md ("The fleet loop, locally").
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from botocore.exceptions import ClientError

from cloud.lake import encode_jsonl_gz, firehose_partition, lake_record, partition_prefix
from cloud.local_stack.template import load_template, table_request
from cloud.retrain.challenger import split_s3
from cloud.retrain.promote import Promoter, PromoteSettings
from cloud.retrain.registry import Registry
from cloud.retrain.start import PINNED_TRAINING_IMAGE, Retrainer, ScheduleEvent, StartSettings

log = logging.getLogger("battwin.local_stack.train")

REPO = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
ACCOUNT = "000000000000"
ENTRY_MODULE = "ml.sagemaker_entry"
MODEL_COMPONENT = "com.battwin.SohModel"
#: a CI-sized run of the real trainer (ml.train_config.TrainConfig.tiny_preset, fewer epochs): seconds, not hours
TINY_HYPERPARAMETERS: dict[str, Any] = {"tiny": True, "epochs": 2, "samples_per_dataset": 60, "seed": 1}
LOG_TAIL_BYTES = 4000


class LocalJobError(RuntimeError):
    """A local training job could not be run (not: the training failed — that is a ``Failed`` job)."""


def _client_error(code: str, message: str, operation: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, operation)


def _hp_value(text: str) -> Any:
    """SageMaker's hyperparameters are strings; the Retrainer JSON-encodes non-strings."""
    try:
        return json.loads(text)
    except ValueError:
        return text


@dataclass
class LocalJob:
    name: str
    request: dict[str, Any]
    arn: str
    status: str = "InProgress"
    secondary: str = "Starting"
    failure_reason: str | None = None
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    model_uri: str | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    log_path: Path | None = None

    def describe(self) -> dict[str, Any]:
        detail: dict[str, Any] = {
            "TrainingJobName": self.name,
            "TrainingJobArn": self.arn,
            "TrainingJobStatus": self.status,
            "SecondaryStatus": self.secondary,
            "TrainingStartTime": self.started_at,
        }
        if self.failure_reason:
            detail["FailureReason"] = self.failure_reason
        if self.ended_at is not None:
            detail["TrainingEndTime"] = self.ended_at
            detail["TrainingTimeInSeconds"] = round(self.ended_at - self.started_at, 3)
        if self.model_uri:
            detail["ModelArtifacts"] = {"S3ModelArtifacts": self.model_uri}
        if self.metrics:
            detail["FinalMetricDataList"] = self.metrics
        return detail


class LocalSageMaker:
    """``create_training_job`` / ``describe_training_job`` run locally (see the module doc). Jobs run when
    :meth:`run_job` is called (the loop calls it on its own thread)."""

    def __init__(self, s3: Any, workdir: Path, *, python: str = sys.executable, region: str = REGION) -> None:
        self.s3 = s3
        self.workdir = workdir
        self.python = python
        self.meta = SimpleNamespace(region_name=region)
        self.jobs: dict[str, LocalJob] = {}
        self._lock = threading.Lock()

    def create_training_job(self, **request: Any) -> dict[str, Any]:
        name = str(request["TrainingJobName"])
        with self._lock:
            if name in self.jobs:
                raise _client_error("ResourceInUse", f"Training job {name} already exists", "CreateTrainingJob")
            arn = f"arn:aws:sagemaker:{self.meta.region_name}:{ACCOUNT}:training-job/{name}"
            self.jobs[name] = LocalJob(name, request, arn)
        log.info("local training job created", extra={"job": name})
        return {"TrainingJobArn": arn}

    def describe_training_job(self, TrainingJobName: str) -> dict[str, Any]:
        job = self.jobs.get(TrainingJobName)
        if job is None:
            raise _client_error("ValidationException", f"Requested resource not found: {TrainingJobName}", "Describe")
        return job.describe()

    # -- running a job ----------------------------------------------------------------------------
    def run_job(self, name: str) -> dict[str, Any]:
        """Run the job to its end; returns the EventBridge state-change event for it."""
        job = self.jobs[name]
        req = job.request
        base = self.workdir / name
        if base.exists():
            shutil.rmtree(base)
        channel = base / "input" / "data" / "train"
        model_dir = base / "model"
        output_data = base / "output" / "data"
        for d in (channel, model_dir, output_data):
            d.mkdir(parents=True)
        job.log_path = base / "training.log"
        try:
            job.secondary = "Downloading"
            files = self._download_channel(req, channel)
            job.secondary = "Training"
            rc, timed_out = self._train(req, channel, model_dir, output_data, base, job.log_path)
            text = job.log_path.read_text(errors="replace")
            job.metrics = self._final_metrics(req, text)
            if timed_out:
                job.status, job.secondary = "Stopped", "MaxRuntimeExceeded"
                job.failure_reason = "MaxRuntimeInSeconds reached"
            elif rc != 0:
                tail = text[-LOG_TAIL_BYTES:].strip().splitlines()
                job.status, job.secondary = "Failed", "Failed"
                job.failure_reason = f"AlgorithmError: exit code {rc}: {tail[-1] if tail else ''}"[:1024]
            else:
                job.secondary = "Uploading"
                job.model_uri = self._upload_outputs(req, name, model_dir, output_data)
                job.status, job.secondary = "Completed", "Completed"
        except Exception as exc:  # the stand-in itself failed: reported as SageMaker reports an internal error
            log.exception("local training job could not run", extra={"job": name})
            job.status, job.secondary = "Failed", "Failed"
            job.failure_reason = f"InternalServerError: {type(exc).__name__}: {exc}"[:1024]
            files = 0
        job.ended_at = time.time()
        log.info(
            "local training job ended",
            extra={
                "job": name,
                "status": job.status,
                "seconds": round(job.ended_at - job.started_at, 1),
                "channel_files": files,
                "reason": job.failure_reason,
            },
        )
        return {
            "version": "0",
            "source": "aws.sagemaker",
            "detail-type": "SageMaker Training Job State Change",
            "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "region": self.meta.region_name,
            "detail": job.describe(),
        }

    def _download_channel(self, req: dict[str, Any], channel: Path) -> int:
        (spec,) = [c for c in req["InputDataConfig"] if c["ChannelName"] == "train"]
        bucket, prefix = split_s3(spec["DataSource"]["S3DataSource"]["S3Uri"])
        n = 0
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(prefix) :].lstrip("/")
                if not rel or ".." in Path(rel).parts:
                    continue
                dst = channel / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(self.s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())
                n += 1
        if n == 0:
            raise LocalJobError(f"the train channel s3://{bucket}/{prefix} is empty")
        return n

    def _train(
        self, req: dict[str, Any], channel: Path, model_dir: Path, output_data: Path, base: Path, log_path: Path
    ) -> tuple[int, bool]:
        hps = {k: _hp_value(v) for k, v in req.get("HyperParameters", {}).items() if not k.startswith("sagemaker_")}
        argv: list[str] = []
        for k, v in hps.items():
            argv += [f"--{k}", v if isinstance(v, str) else json.dumps(v)]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
            "SM_CHANNELS": json.dumps(["train"]),
            "SM_CHANNEL_TRAIN": str(channel),
            "SM_MODEL_DIR": str(model_dir),
            "SM_OUTPUT_DATA_DIR": str(output_data),
            "SM_OUTPUT_DIR": str(base / "output"),
            "SM_INPUT_DIR": str(base / "input"),
            "SM_HPS": json.dumps(hps),
            "SM_USER_ARGS": json.dumps(argv),
            "SM_CURRENT_HOST": "algo-1",
            "SM_HOSTS": json.dumps(["algo-1"]),
            "SM_NUM_CPUS": str(os.cpu_count() or 1),
            "SM_NUM_GPUS": "0",
            "TRAINING_JOB_NAME": str(req["TrainingJobName"]),
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "CUDA_VISIBLE_DEVICES": "",
        }
        limit = float(req.get("StoppingCondition", {}).get("MaxRuntimeInSeconds", 3600))
        with log_path.open("wb") as out:
            proc = subprocess.Popen(  # noqa: S603 - this checkout's entry point, as the training container runs it
                [self.python, "-m", ENTRY_MODULE, *argv],
                cwd=base,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                return proc.wait(timeout=limit), False
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                return -9, True

    @staticmethod
    def _final_metrics(req: dict[str, Any], text: str) -> list[dict[str, Any]]:
        """SageMaker's metric definitions on the job's log: the last value of each regex."""
        out = []
        for md in req.get("AlgorithmSpecification", {}).get("MetricDefinitions", []):
            found = re.findall(md["Regex"], text)
            if found:
                try:
                    out.append({"MetricName": md["Name"], "Value": float(found[-1]), "Timestamp": time.time()})
                except ValueError:
                    continue
        return out

    def _upload_outputs(self, req: dict[str, Any], name: str, model_dir: Path, output_data: Path) -> str:
        out_uri = str(req["OutputDataConfig"]["S3OutputPath"]).rstrip("/")
        bucket, prefix = split_s3(out_uri)
        key = f"{prefix}/{name}/output/model.tar.gz"
        self.s3.put_object(Bucket=bucket, Key=key, Body=_tar_gz(model_dir))
        if any(output_data.iterdir()):
            self.s3.put_object(Bucket=bucket, Key=f"{prefix}/{name}/output/output.tar.gz", Body=_tar_gz(output_data))
        return f"s3://{bucket}/{key}"


def _tar_gz(folder: Path) -> bytes:
    """The folder's contents at the archive's top level, as SageMaker archives SM_MODEL_DIR."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                tar.add(p, arcname=str(p.relative_to(folder)))
    return buf.getvalue()


class LocalGreengrass:
    """Greengrass v2's component and deployment API for the model component, with the nucleus's part of a
    deployment done locally: artifacts land in ``<artifact_root>/<version>/`` (see the module doc)."""

    def __init__(self, s3: Any, artifact_root: Path, component_name: str = MODEL_COMPONENT) -> None:
        self.s3 = s3
        self.artifact_root = artifact_root
        self.component_name = component_name
        self.recipes: dict[tuple[str, str], dict[str, Any]] = {}
        self.deployments: list[dict[str, Any]] = []
        self.deployed_at: dict[str, float] = {}

    def create_component_version(self, inlineRecipe: bytes) -> dict[str, Any]:
        recipe = json.loads(inlineRecipe)
        name, version = recipe["ComponentName"], recipe["ComponentVersion"]
        if (name, version) in self.recipes:
            raise _client_error("ConflictException", f"{name} {version} exists", "CreateComponentVersion")
        self.recipes[(name, version)] = recipe
        return {"arn": f"arn:aws:greengrass:{REGION}:{ACCOUNT}:components:{name}:versions:{version}"}

    def list_deployments(self, targetArn: str, historyFilter: str = "ALL") -> dict[str, Any]:
        mine = [d for d in self.deployments if d["targetArn"] == targetArn]
        if historyFilter == "LATEST_ONLY":
            mine = mine[-1:]
        return {"deployments": [{"deploymentId": d["deploymentId"], "targetArn": targetArn} for d in mine]}

    def get_deployment(self, deploymentId: str) -> dict[str, Any]:
        for d in self.deployments:
            if d["deploymentId"] == deploymentId:
                return dict(d)
        raise _client_error("ResourceNotFoundException", deploymentId, "GetDeployment")

    def create_deployment(self, **request: Any) -> dict[str, Any]:
        deployment_id = secrets.token_hex(8)
        wanted = request.get("components", {}).get(self.component_name, {}).get("componentVersion")
        if wanted is not None:
            recipe = self.recipes.get((self.component_name, wanted))
            if recipe is None:
                raise _client_error("ResourceNotFoundException", f"{self.component_name} {wanted}", "CreateDeployment")
            self._place(recipe, wanted)
        self.deployments.append({**request, "deploymentId": deployment_id, "deploymentStatus": "COMPLETED"})
        return {"deploymentId": deployment_id}

    def _place(self, recipe: dict[str, Any], version: str) -> None:
        """Download the artifacts into a hidden folder and rename it to the version: the agents never see a
        half-written version (the nucleus, too, verifies artifacts before the component uses them)."""
        self.artifact_root.mkdir(parents=True, exist_ok=True)
        final = self.artifact_root / version
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=self.artifact_root))
        for manifest in recipe.get("Manifests", []):
            for art in manifest.get("Artifacts", []):
                bucket, key = split_s3(art["URI"])
                data = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
                (tmp / key.rsplit("/", 1)[-1]).write_bytes(data)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        self.deployed_at[version] = time.time()
        log.info("model version deployed locally", extra={"version": version, "path": str(final)})


#: NASA cells of the lab data (``<cells>/nasa/<name>.csv``) that make a fleet history for the local lake
NASA_HISTORY_CELLS = ("B0025", "B0029", "B0042", "B0045", "B0046", "B0047", "B0054", "B0055")


def seed_lake_with_cells(
    s3: Any,
    bucket: str,
    cells_dir: Path,
    names: tuple[str, ...] = NASA_HISTORY_CELLS,
    *,
    lake_prefix: str = "lake/",
    t0: float = 1_700_000_000.0,
) -> int:
    """Put measured NASA discharges into the lake's cycles partitions as the lake's Firehose stream delivers a
    thing's cycle messages (one record per discharge: the envelope plus the rule's fields, gzip JSON lines,
    one object per day partition) under the thing ``nasa-<name>`` (real data: ``simulated`` false; the body
    holds the fields the retraining reads). Returns the measured capacities (> 0 Ah; a few NASA discharges
    recorded 0 Ah, which the retraining does not count)."""
    n = 0
    by_day: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        path = cells_dir / "nasa" / f"{name}.csv"
        thing = f"nasa-{name}"
        with path.open() as fh:
            for r in csv.DictReader(fh):
                if not r["capacity_ah"]:
                    continue
                end = t0 + float(r["elapsed_h"]) * 3600.0
                capacity = float(r["capacity_ah"])
                n += capacity > 0
                temp = r["ambient_temperature_c"]
                body = {
                    "index": int(r["cycle"]),
                    "kind": "discharge",
                    "start_ts": end - 3600.0,
                    "end_ts": end,
                    "capacity_ah": capacity,
                    "complete": True,
                    "mean_temperature_c": float(temp) if temp else None,
                    "source_id": name,
                    "simulated": False,
                }
                envelope = {
                    "v": 1,
                    "id": f"{name}-{r['cycle']}",
                    "thing": thing,
                    "kind": "cycles",
                    "ts": end,
                    "simulated": False,
                    "body": body,
                }
                record = lake_record(envelope, thing, "cycles", int(end * 1000))
                by_day.setdefault(firehose_partition(record)["dt"], []).append(record)
    for day, records in sorted(by_day.items()):
        key = f"{partition_prefix(lake_prefix, 'cycles', day)}nasa-history-{day}.gz"
        s3.put_object(Bucket=bucket, Key=key, Body=encode_jsonl_gz(records))
    return n


class LoopBusy(RuntimeError):
    """A retraining run is already in progress."""


class LocalRetrainLoop:
    """Retrainer → :class:`LocalSageMaker` → Promoter → :class:`LocalGreengrass`, on one local stack."""

    def __init__(
        self,
        *,
        s3: Any,
        dynamodb: Any,
        bucket: str,
        model_root: Path,
        workdir: Path,
        lake_prefix: str | None = None,
        hyperparameters: dict[str, Any] | None = None,
        include_simulated: bool = True,
        min_cells: int = 3,
        min_valid_rows: int = 20,
        max_runtime_s: int = 1800,
        min_improvement: float = 0.0,
        python: str = sys.executable,
    ) -> None:
        self.s3 = s3
        self.ddb = dynamodb
        self.bucket = bucket
        self.registry_table = f"{bucket}-ModelRegistry"
        self.model_root = model_root
        self.sagemaker = LocalSageMaker(s3, workdir / "jobs", python=python)
        self.greengrass = LocalGreengrass(s3, model_root)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.running: str | None = None
        self.last: dict[str, Any] | None = None
        self._create_registry()
        self.registry = Registry(self.registry_table, dynamodb)
        hps = TINY_HYPERPARAMETERS if hyperparameters is None else hyperparameters
        start_kw: dict[str, Any] = {"lake_prefix": lake_prefix} if lake_prefix is not None else {}
        self.retrainer = Retrainer(
            StartSettings(
                bucket=bucket,
                registry_table=self.registry_table,
                image_uri=PINNED_TRAINING_IMAGE.format(region=REGION),
                role_arn=f"arn:aws:iam::{ACCOUNT}:role/battwin-local-training",
                # not read locally: the job runs this checkout's ml package (see cloud/README.md)
                source_uri=f"s3://{bucket}/source/training-source.tar.gz",
                include_simulated=include_simulated,
                min_cells=min_cells,
                min_valid_rows=min_valid_rows,
                max_runtime_s=max_runtime_s,
                hyperparameters={k: v if isinstance(v, str) else json.dumps(v) for k, v in hps.items()},
                read_workers=4,
                **start_kw,
            ),
            s3=s3,
            sagemaker=self.sagemaker,
            registry=self.registry,
        )
        self.promoter = Promoter(
            PromoteSettings(
                bucket=bucket,
                registry_table=self.registry_table,
                thing_group_arn=f"arn:aws:iot:{REGION}:{ACCOUNT}:thinggroup/battwin-local-fleet",
                min_improvement=min_improvement,
            ),
            s3=s3,
            greengrass=self.greengrass,
            registry=self.registry,
        )

    def _create_registry(self) -> None:
        request = table_request(load_template(), "ModelRegistryTable", self.registry_table)
        self.ddb.create_table(**request)
        self.ddb.get_waiter("table_exists").wait(
            TableName=self.registry_table, WaiterConfig={"Delay": 0.2, "MaxAttempts": 50}
        )

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        try:
            self.ddb.delete_table(TableName=self.registry_table)
        except Exception as exc:
            log.warning("could not delete the local registry table", extra={"error": str(exc)[:200]})

    # -- one run ----------------------------------------------------------------------------------
    def run(self, now: float | None = None) -> dict[str, Any]:
        """One whole run, on the caller's thread: the scheduled Lambda, the job, the completion Lambda."""
        if not self._lock.acquire(blocking=False):
            raise LoopBusy(f"retraining job {self.running or ''} is still running")
        try:
            return self._run(now)
        finally:
            self.running = None
            self._lock.release()

    def _run(self, now: float | None) -> dict[str, Any]:
        t0 = time.time() if now is None else now
        event = ScheduleEvent(time=datetime.fromtimestamp(t0, UTC), source="battwin.local", id=secrets.token_hex(4))
        result: dict[str, Any] = {"started_at": time.time()}
        started = self.retrainer.run(event, now=t0)
        result["start"] = started
        if started["status"] != "started":
            result["status"] = started["status"]
            result["reason"] = started.get("reason", "")
            self.last = result
            return result
        job = started["job_name"]
        self.running = job
        change = self.sagemaker.run_job(job)
        result["job"] = change["detail"]
        decision = self.promoter.handle(change)
        result["decision"] = decision
        result["status"] = decision["status"]
        result["reason"] = decision.get("reason", "")
        result["ended_at"] = time.time()
        self.last = result
        return result

    def start(self) -> str:
        """Run in the background (the dashboard's button); LoopBusy if a run is in progress."""
        if self._thread is not None and self._thread.is_alive():
            raise LoopBusy(f"retraining job {self.running or ''} is still running")

        def target() -> None:
            try:
                self.run()
            except LoopBusy:
                pass
            except Exception as exc:
                log.exception("local retraining run failed")
                self.last = {"status": "error", "reason": f"{type(exc).__name__}: {exc}"[:500]}

        self._thread = threading.Thread(target=target, name="battwin-retrain", daemon=True)
        self._thread.start()
        return "started"

    def status(self) -> dict[str, Any]:
        """What the dashboard shows: the run in progress, the last result, the champion, recent decisions."""
        champion = self.registry.champion()
        busy = self._thread is not None and self._thread.is_alive()
        return {
            "running": busy,
            "job": self.running,
            "last": self.last,
            "champion": champion,
            "decisions": self.registry.decisions(limit=50)[-10:],
            "deployed_versions": sorted(self.greengrass.deployed_at),
        }
