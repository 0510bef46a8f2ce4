"""Fleet retraining: the scheduled Lambda assembles contract CSVs from the lake's cycle records and starts a
SageMaker job (recorded by moto); the completion Lambda judges challengers and, only for a winner, creates the
Greengrass component version and deployment (checked with botocore's Stubber against the real API model)."""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import ANY, Stubber

from cloud.aws import unmarshal
from cloud.ingest.handler import handler as ingest
from cloud.retrain.promote import Promoter, PromoteSettings
from cloud.retrain.promote import handler as promote_handler
from cloud.retrain.registry import Registry
from cloud.retrain.start import Retrainer, ScheduleEvent, StartSettings
from cloud.retrain.start import handler as start_handler
from devkit.nucleus.flavours import rules_for
from devkit.nucleus.resolve import read_component
from ml.data import read_cell_csv
from schema.messages import CycleRecord, Envelope, encode_envelope
from tests.cloud.cloud_support import REGION, deliver_to_lake, rule_event
from tests.cloud.conftest import FLEET_START

GROUP_ARN = "arn:aws:iot:us-east-1:123456789012:thinggroup/battwin-fleet"


def cycle(
    thing: str,
    index: int,
    kind: str,
    start: float,
    end: float,
    cap: float | None,
    *,
    complete: bool = True,
    temp: float = 25.0,
    source: str = "bms:jbd-1",
    simulated: bool = False,
) -> tuple[str, bytes]:
    body = CycleRecord(
        index=index,
        kind=kind,
        start_ts=start,
        end_ts=end,
        duration_s=end - start,
        charge_ah=cap or 0.5,
        energy_wh=(cap or 0.5) * 3.6,
        capacity_ah=cap if kind == "discharge" and complete else None,
        complete=complete,
        cutoff_voltage_v=2.7 if kind == "discharge" else None,
        start_voltage_v=4.1,
        end_voltage_v=2.7,
        min_voltage_v=2.7,
        max_voltage_v=4.2,
        mean_current_a=-1.0 if kind == "discharge" else 1.0,
        mean_temperature_c=temp,
        max_temperature_c=temp + 2,
        n_samples=100,
        source_id=source,
        simulated=simulated,
    )
    return f"battwin/{thing}/cycles", encode_envelope(thing, "cycles", body, ts=end)


@pytest.fixture(scope="module")
def real_battery(
    aws: dict[str, Any], use_env_module: Any, ingested: dict[str, Any], lambda_env: dict[str, dict[str, str]]
) -> list[tuple[str, bytes]]:
    """Records of a real (not simulated) battery, with what real fleets produce: a partial discharge, a record
    re-sent under a new id, an agent reinstalled without its state (indices restart), a battery swap."""
    h = 3600.0
    t = FLEET_START
    msgs = [
        cycle("bt-r", 1, "discharge", t, t + h, 2.00, temp=24.0),
        cycle("bt-r", 1, "charge", t + 1.2 * h, t + 3 * h, None),
        cycle("bt-r", 2, "discharge", t + 4 * h, t + 4.5 * h, None, complete=False),  # partial: no capacity
        cycle("bt-r", 2, "charge", t + 5 * h, t + 6 * h, None),
        cycle("bt-r", 3, "discharge", t + 7 * h, t + 8 * h, 1.98, temp=26.0),
        cycle("bt-r", 1, "discharge", t + 9 * h, t + 10 * h, 1.97, temp=27.0),  # reinstalled: index restarts
        cycle("bt-r", 2, "discharge", t + 11 * h, t + 12 * h, 1.96, temp=25.5),
        cycle("bt-r", 1, "discharge", t + 13 * h, t + 14 * h, 2.50, source="bms:jbd-2"),  # new battery
        cycle("bt-r", 2, "discharge", t + 15 * h, t + 16 * h, 2.49, source="bms:jbd-2"),
    ]
    resent = json.loads(msgs[4][1])
    resent["id"] = "resent-under-a-new-id"
    msgs.append(("battwin/bt-r/cycles", json.dumps(resent).encode()))
    for topic, payload in msgs:
        assert ingest(rule_event(topic, payload))["status"] == "stored"
    bucket = lambda_env["ingest"]["DATA_BUCKET"]
    deliver_to_lake(aws["s3"], bucket, msgs)
    # Firehose delivers at least once: a record of the first discharge delivered again, later, in another object
    deliver_to_lake(aws["s3"], bucket, msgs[:1], received_ms=int(time.time() * 1000) + 60_000)
    # a cycle record whose envelope names another thing than its topic (the ingest dead-letters it; the lake
    # keeps what was sent, and its readers leave it out)
    foreign = cycle("bt-r", 4, "discharge", t + 17 * h, t + 18 * h, 0.10)
    deliver_to_lake(aws["s3"], bucket, [("battwin/bt-x/cycles", foreign[1])])
    return msgs


@pytest.fixture(scope="module")
def use_env_module(lambda_env: dict[str, dict[str, str]]) -> Any:
    with pytest.MonkeyPatch.context() as mp:
        for key, value in lambda_env["ingest"].items():
            mp.setenv(key, value)
        yield mp


def read_csv(aws: dict[str, Any], bucket: str, key: str, tmp: Path) -> Any:
    path = tmp / key.rsplit("/", 1)[1]
    path.write_bytes(aws["s3"].get_object(Bucket=bucket, Key=key)["Body"].read())
    return read_cell_csv(path, "fleet")  # the project's own reader of the contract


def expected_rows(envelopes: list[Envelope], thing: str) -> list[tuple[int, float | None, float | None, float | None]]:
    """The contract rows computed directly from the device's messages (one per discharge)."""
    mine = sorted((e for e in envelopes if e.thing == thing and e.kind == "cycles"), key=lambda e: e.ts)
    first = min(e.body["start_ts"] for e in mine)
    rows = []
    for e in mine:
        b = e.body
        if b["kind"] != "discharge":
            continue
        ok = b["complete"] and b["capacity_ah"]
        rows.append(
            (
                b["index"],
                b["capacity_ah"] if ok else None,
                b["mean_temperature_c"] if ok else None,
                (b["end_ts"] - first) / 3600.0 if ok else None,
            )
        )
    return rows


def _nan_or(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def test_training_set_follows_the_contract_and_the_job_is_started(
    aws: dict[str, Any],
    use_env: Any,
    ingested: dict[str, Any],
    real_battery: list[tuple[str, bytes]],
    tmp_path: Path,
    stack: Any,
) -> None:
    env = use_env("start")
    bucket = env["DATA_BUCKET"]
    out = start_handler(
        {
            "id": "ev-1",
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "time": "2025-06-01T00:00:00Z",
            "resources": [],
            "detail": {},
        }
    )
    job = "battwin-soh-20250601-000000"
    assert out["status"] == "started" and out["job_name"] == job
    prefix = f"training/{job}/train/fleet/"
    keys = sorted(o["Key"] for o in aws["s3"].list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"])
    names = [k.rsplit("/", 1)[1] for k in keys]
    assert {"bt-a.csv", "bt-b.csv", "bt-r__bms_jbd-1.csv", "bt-r__bms_jbd-2.csv"} <= set(names)
    envelopes = [Envelope.model_validate_json(p) for _t, p in ingested["messages"]]
    for thing in ("bt-a", "bt-b"):
        cell = read_csv(aws, bucket, f"{prefix}{thing}.csv", tmp_path)
        rows = list(zip(cell.cycles, cell.capacity_ah, cell.temperature_c, cell.elapsed_h, strict=True))
        want = expected_rows(envelopes, thing)
        assert [int(c) for c, *_ in rows] == [w[0] for w in want]
        for (_, cap, temp, el), (_, wcap, wtemp, wel) in zip(rows, want, strict=True):
            assert _nan_or(cap) == pytest.approx(wcap, rel=1e-9)
            assert _nan_or(temp) == pytest.approx(wtemp, rel=1e-9)
            assert _nan_or(el) == pytest.approx(wel, rel=1e-9)
    assert len(read_csv(aws, bucket, f"{prefix}bt-b.csv", tmp_path)) >= 10
    # the real battery: partial discharge without capacity, re-sent record once, restart renumbered, swap split
    r1 = read_csv(aws, bucket, f"{prefix}bt-r__bms_jbd-1.csv", tmp_path)
    assert [int(c) for c in r1.cycles] == [1, 2, 3, 4, 5]
    assert [_nan_or(c) for c in r1.capacity_ah] == [2.00, None, 1.98, 1.97, 1.96]
    assert [_nan_or(e) for e in r1.elapsed_h] == [1.0, None, 8.0, 10.0, 12.0]
    assert [_nan_or(x) for x in r1.temperature_c] == [24.0, None, 26.0, 27.0, 25.5]
    r2 = read_csv(aws, bucket, f"{prefix}bt-r__bms_jbd-2.csv", tmp_path)
    assert [int(c) for c in r2.cycles] == [1, 2] and list(r2.capacity_ah) == [2.50, 2.49]
    assert list(r2.elapsed_h) == [1.0, 3.0]
    header = aws["s3"].get_object(Bucket=bucket, Key=f"{prefix}bt-a.csv")["Body"].read().decode().splitlines()[0]
    assert header == "cycle,capacity_ah,ambient_temperature_c,elapsed_h"
    # the channel as SageMaker's File mode lays it out, read the way ml/sagemaker_entry.py reads it
    channel = tmp_path / "channel"
    for key in keys:
        dest = channel / key.removeprefix(f"training/{job}/train/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(aws["s3"].get_object(Bucket=bucket, Key=key)["Body"].read())
    import ml.sagemaker_entry as entry
    from ml.train import read_training_cells

    dirs = entry.dataset_dirs(channel)
    assert [d.name for d in dirs] == ["fleet"]
    cells = read_training_cells(dirs)
    assert sorted(c.cell for c in cells) == sorted(n.removesuffix(".csv") for n in names)
    assert "tensorflow" not in sys.modules
    manifest = json.loads(aws["s3"].get_object(Bucket=bucket, Key=f"training/{job}/manifest.json")["Body"].read())
    assert {c["file"] for c in manifest["files"]} == {f"fleet/{n}" for n in names}
    assert manifest["cells"] == len(names) and manifest["valid_rows"] == out["valid_rows"]

    # the training job as SageMaker recorded it
    desc = aws["sagemaker"].describe_training_job(TrainingJobName=job)
    assert desc["AlgorithmSpecification"]["TrainingImage"] == env["TRAINING_IMAGE_URI"]
    # the metric definitions capture the lines ml/sagemaker_entry.py prints (f"held_out_{ds}_{method}_rmse_pp=")
    # (moto answers DescribeTrainingJob with canned metric definitions: check the request the handler builds)
    sent = Retrainer(StartSettings.from_env()).training_job_request(job, channel_uri := f"s3://{bucket}/x/")
    assert sent["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] == channel_uri
    defs = {d["Name"]: d["Regex"] for d in sent["AlgorithmSpecification"]["MetricDefinitions"]}
    assert re.search(defs["held_out_fleet_hybrid_rmse_pp"], "held_out_fleet_hybrid_rmse_pp=1.2345").group(1) == "1.2345"
    assert not re.search(defs["held_out_fleet_hybrid_rmse_pp"], "held_out_fleet_physics_rmse_pp=1.2345")
    assert desc["RoleArn"] == env["TRAINING_ROLE_ARN"]
    channel = desc["InputDataConfig"][0]
    assert channel["ChannelName"] == "train"
    assert channel["DataSource"]["S3DataSource"]["S3Uri"] == f"s3://{bucket}/training/{job}/train/"
    hp = desc["HyperParameters"]
    assert json.loads(hp["sagemaker_program"]) == "battwin_train.py"
    assert json.loads(hp["sagemaker_submit_directory"]) == env["TRAINING_SOURCE_URI"]
    assert desc["OutputDataConfig"]["S3OutputPath"] == f"s3://{bucket}/models/training/"
    # the submitted source is where the job looks for it, and runs the ml/ entry point
    src_bucket, src_key = env["TRAINING_SOURCE_URI"][5:].split("/", 1)
    data = aws["s3"].get_object(Bucket=src_bucket, Key=src_key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = set(tar.getnames())
        launcher = tar.extractfile("battwin_train.py").read().decode()  # type: ignore[union-attr]
    assert {"battwin_train.py", "requirements.txt", "ml/data.py", "schema/messages.py"} <= members
    assert 'run_module("ml.sagemaker_entry"' in launcher
    # the registry has the job and the decision
    registry = Registry(env["REGISTRY_TABLE"])
    item = registry.get_job(job)
    assert item is not None and item["status"] == "training" and item["cells"] == len(names)
    assert any(d["job_name"] == job and d["decision"] == "started" for d in registry.decisions())


def test_not_enough_data_is_recorded_and_starts_nothing(
    aws: dict[str, Any], use_env: Any, ingested: dict[str, Any]
) -> None:
    env = use_env("start", MIN_VALID_ROWS="100000")
    before = len(aws["sagemaker"].list_training_jobs()["TrainingJobSummaries"])
    out = start_handler({"time": "2025-06-08T00:00:00Z"})
    assert out["status"] == "skipped" and "need 100000" in out["reason"]
    assert len(aws["sagemaker"].list_training_jobs()["TrainingJobSummaries"]) == before
    decisions = Registry(env["REGISTRY_TABLE"]).decisions()
    assert any(d["job_name"] == "battwin-soh-20250608-000000" and d["decision"] == "skipped" for d in decisions)


def test_simulated_data_is_left_out_unless_allowed(
    aws: dict[str, Any], use_env: Any, real_battery: list[tuple[str, bytes]]
) -> None:
    env = use_env("start", INCLUDE_SIMULATED="false")
    out = start_handler({"time": "2025-06-15T00:00:00Z"})
    assert out["status"] == "started" and out["things"] == ["bt-r"]
    keys = aws["s3"].list_objects_v2(Bucket=env["DATA_BUCKET"], Prefix=f"training/{out['job_name']}/train/")
    assert sorted(o["Key"].rsplit("/", 1)[1] for o in keys["Contents"]) == [
        "bt-r__bms_jbd-1.csv",
        "bt-r__bms_jbd-2.csv",
    ]


def test_a_redelivered_schedule_event_starts_no_second_job(use_env: Any, real_battery: list[tuple[str, bytes]]) -> None:
    """SageMaker refuses a second job of the same name (moto does not: checked against the API with Stubber)."""
    use_env("start", INCLUDE_SIMULATED="false")
    sm = boto3.client("sagemaker", region_name=REGION)
    retrainer = Retrainer(StartSettings.from_env(), sagemaker=sm)
    with Stubber(sm) as stub:
        stub.add_client_error("create_training_job", "ResourceInUse", "Training job names must be unique")
        out = retrainer.run(ScheduleEvent.model_validate({"time": "2025-06-15T00:00:00Z"}))
        stub.assert_no_pending_responses()
    assert out["status"] == "exists"


# -- promotion ---------------------------------------------------------------------------------------


def model_archive(score: float | None, *, with_json: bool = True, version: str = "hybrid-1-test") -> bytes:
    tflite = hashlib.sha256(f"weights {score} {version}".encode()).digest() * 64
    metrics: dict[str, Any] = {"export": {"quantization": "float16"}}
    if score is not None:
        metrics["held_out"] = {
            "fleet": {
                "cells": ["bt-b"],
                "hybrid": {"all": {"horizon_rmse_pp": score}},
                "physics": {"all": {"horizon_rmse_pp": score + 1.0}},
            },
            "nasa": {"cells": ["B0005"], "hybrid": {"all": {"horizon_rmse_pp": score + 0.5}}},
        }
    model_json = {"version": version, "tflite_sha256": hashlib.sha256(tflite).hexdigest(), "metrics": metrics}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        files = [("model.tflite", tflite)] + ([("model.json", json.dumps(model_json).encode())] if with_json else [])
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def completed(
    aws: dict[str, Any],
    bucket: str,
    job: str,
    archive: bytes,
    status: str = "Completed",
    final_metric: float | None = None,
) -> dict[str, Any]:
    key = f"models/training/{job}/output/model.tar.gz"
    aws["s3"].put_object(Bucket=bucket, Key=key, Body=archive)
    detail: dict[str, Any] = {
        "TrainingJobName": job,
        "TrainingJobStatus": status,
        "TrainingJobArn": f"arn:aws:sagemaker:{REGION}:123456789012:training-job/{job}",
        "ModelArtifacts": {"S3ModelArtifacts": f"s3://{bucket}/{key}"},
    }
    if status == "Failed":
        detail["FailureReason"] = "AlgorithmError: out of memory"
    if final_metric is not None:
        detail["FinalMetricDataList"] = [
            {"MetricName": "held_out_fleet_hybrid_rmse_pp", "Value": final_metric, "Timestamp": "2025-06-01T01:00:00Z"},
            {"MetricName": "held_out_fleet_physics_rmse_pp", "Value": 1.0, "Timestamp": "2025-06-01T01:00:00Z"},
        ]
    return {
        "version": "0",
        "id": f"ev-{job}",
        "detail-type": "SageMaker Training Job State Change",
        "source": "aws.sagemaker",
        "account": "123456789012",
        "time": "2025-06-01T01:00:00Z",
        "region": REGION,
        "resources": [detail["TrainingJobArn"]],
        "detail": detail,
    }


CURRENT_DEPLOYMENT = {
    "targetArn": GROUP_ARN,
    "revisionId": "3",
    "deploymentId": "dep-current",
    "deploymentName": "fleet",
    "deploymentStatus": "COMPLETED",
    "components": {
        "com.battwin.Agent": {
            "componentVersion": "1.1.0",
            "configurationUpdate": {"merge": '{"source":{"url":"jbd:/dev/ttyUSB0"}}'},
        },
        "aws.greengrass.Nucleus": {"componentVersion": "2.12.0"},
        "com.battwin.SohModel": {"componentVersion": "1.0.0"},
    },
    "deploymentPolicies": {
        "failureHandlingPolicy": "ROLLBACK",
        "componentUpdatePolicy": {"timeoutInSeconds": 120, "action": "NOTIFY_COMPONENTS"},
    },
}


class Greengrass:
    """A greengrassv2 client whose calls are checked by Stubber; records the requests sent."""

    def __init__(self) -> None:
        self.client = boto3.client("greengrassv2", region_name=REGION)
        self.stub = Stubber(self.client)
        self.sent: dict[str, dict[str, Any]] = {}
        self.client.meta.events.register("before-parameter-build.greengrassv2.*", self._record)

    def _record(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self.sent[model.name] = dict(params)

    def expect_promotion(self, version: str) -> None:
        arn = f"arn:aws:greengrass:{REGION}:123456789012:components:com.battwin.SohModel:versions:{version}"
        self.stub.add_response(
            "create_component_version",
            {
                "arn": arn,
                "componentName": "com.battwin.SohModel",
                "componentVersion": version,
                "creationTimestamp": "2025-06-01T01:00:00Z",
                "status": {"componentState": "DEPLOYABLE"},
            },
            {"inlineRecipe": ANY},
        )
        self.stub.add_response(
            "list_deployments",
            {
                "deployments": [
                    {
                        k: CURRENT_DEPLOYMENT[k]
                        for k in ("targetArn", "revisionId", "deploymentId", "deploymentName", "deploymentStatus")
                    }
                ]
            },
            {"targetArn": GROUP_ARN, "historyFilter": "LATEST_ONLY"},
        )
        self.stub.add_response("get_deployment", CURRENT_DEPLOYMENT, {"deploymentId": "dep-current"})
        components = {
            **CURRENT_DEPLOYMENT["components"],  # type: ignore[dict-item]
            "com.battwin.SohModel": {"componentVersion": version},
            "com.battwin.Agent": {
                "componentVersion": "1.2.0",
                "configurationUpdate": {"merge": '{"source":{"url":"jbd:/dev/ttyUSB0"}}'},
            },
        }
        self.stub.add_response(
            "create_deployment",
            {"deploymentId": f"dep-{version}"},
            {
                "targetArn": GROUP_ARN,
                "deploymentName": f"battwin-soh-model-{version}",
                "components": components,
                "deploymentPolicies": CURRENT_DEPLOYMENT["deploymentPolicies"],
                "tags": {"battwin:model-version": version},
            },
        )


@pytest.fixture
def promoter_env(use_env: Any) -> dict[str, str]:
    env = dict(use_env("promote"))
    assert env["AGENT_COMPONENT_VERSION"] == "1.2.0" and env["THING_GROUP_ARN"] == GROUP_ARN
    return env


def _decision(env: dict[str, str], job: str) -> dict[str, Any]:
    item = Registry(env["REGISTRY_TABLE"]).get_job(job)
    assert item is not None
    return item


def test_champion_challenger_promotion(aws: dict[str, Any], promoter_env: dict[str, str], tmp_path: Path) -> None:
    env, bucket = promoter_env, promoter_env["DATA_BUCKET"]
    registry = Registry(env["REGISTRY_TABLE"])
    assert registry.champion() is None

    # 1. the first model wins (no champion): component version + deployment, champion recorded
    gg = Greengrass()
    gg.expect_promotion("1.0.1")
    with gg.stub:
        out = Promoter(PromoteSettings.from_env(), greengrass=gg.client).handle(
            completed(aws, bucket, "battwin-soh-20250601-000000", model_archive(3.0))
        )
        gg.stub.assert_no_pending_responses()
    assert out["status"] == "promoted" and out["component_version"] == "1.0.1"
    assert out["challenger_score"] == pytest.approx((3.0 + 3.5) / 2)  # mean over the held-out datasets
    recipe = json.loads(gg.sent["CreateComponentVersion"]["inlineRecipe"])
    assert recipe["ComponentName"] == "com.battwin.SohModel" and recipe["ComponentVersion"] == "1.0.1"
    # both nuclei take it as it is (the emulator's flavours apply each nucleus' recipe rules)
    for flavour in ("classic", "lite"):
        recipe_file = tmp_path / f"promoted-{flavour}.json"
        recipe_file.write_text(json.dumps(recipe))
        component = read_component(recipe_file, rules_for(flavour))
        assert component.lifecycle.get("run") == "true", flavour
    uris = [a["URI"] for a in recipe["Manifests"][0]["Artifacts"]]
    assert uris == [
        f"s3://{bucket}/models/released/1.0.1/model.tflite",
        f"s3://{bucket}/models/released/1.0.1/model.json",
    ]
    with tarfile.open(fileobj=io.BytesIO(model_archive(3.0))) as tar:
        tflite = tar.extractfile("model.tflite").read()  # type: ignore[union-attr]
    assert aws["s3"].get_object(Bucket=bucket, Key="models/released/1.0.1/model.tflite")["Body"].read() == tflite
    champion = registry.champion()
    assert champion is not None and champion["job_name"] == "battwin-soh-20250601-000000"
    assert champion["component_version"] == "1.0.1" and champion["deployment_id"] == "dep-1.0.1"
    assert _decision(env, "battwin-soh-20250601-000000")["decision"] == "promoted"

    # 2. a worse challenger is rejected: no Greengrass call at all (the stubber has nothing queued)
    gg = Greengrass()
    with gg.stub:
        out = Promoter(PromoteSettings.from_env(), greengrass=gg.client).handle(
            completed(aws, bucket, "battwin-soh-20250608-000000", model_archive(3.6))
        )
        gg.stub.assert_no_pending_responses()
    assert gg.sent == {}
    assert out["status"] == "rejected" and "does not beat" in out["reason"]
    assert out["champion_score"] == pytest.approx(3.25) and out["challenger_score"] == pytest.approx(3.85)
    assert registry.champion()["job_name"] == "battwin-soh-20250601-000000"  # type: ignore[index]
    assert "Contents" not in aws["s3"].list_objects_v2(Bucket=bucket, Prefix="models/released/1.0.2/")

    # 3. a better one wins and becomes 1.0.2
    gg = Greengrass()
    gg.expect_promotion("1.0.2")
    with gg.stub:
        out = Promoter(PromoteSettings.from_env(), greengrass=gg.client).handle(
            completed(aws, bucket, "battwin-soh-20250615-000000", model_archive(2.0, version="hybrid-1-better"))
        )
        gg.stub.assert_no_pending_responses()
    assert out["status"] == "promoted" and out["component_version"] == "1.0.2"
    assert registry.champion()["model_version"] == "hybrid-1-better"  # type: ignore[index]

    # every decision is in the log, with both scores
    log = {d["job_name"]: d for d in registry.decisions() if d["decision"] in ("promoted", "rejected")}
    assert log["battwin-soh-20250608-000000"]["decision"] == "rejected"
    assert log["battwin-soh-20250608-000000"]["challenger_score"] == pytest.approx(3.85)
    assert log["battwin-soh-20250615-000000"]["champion_job"] == "battwin-soh-20250601-000000"

    # a re-delivered completion event changes nothing
    again = promote_handler(completed(aws, bucket, "battwin-soh-20250601-000000", model_archive(3.0)))
    assert again["status"] == "duplicate"


def test_failed_unusable_and_foreign_jobs(aws: dict[str, Any], promoter_env: dict[str, str]) -> None:
    env, bucket = promoter_env, promoter_env["DATA_BUCKET"]
    out = promote_handler(completed(aws, bucket, "battwin-soh-20250701-000000", b"", status="Failed"))
    assert out["status"] == "failed" and "out of memory" in out["reason"]
    assert _decision(env, "battwin-soh-20250701-000000")["decision"] == "failed"
    out = promote_handler(completed(aws, bucket, "battwin-soh-20250702-000000", model_archive(1.0, with_json=False)))
    assert out["status"] == "rejected" and "lacks ['model.json']" in out["reason"]
    assert promote_handler(completed(aws, bucket, "other-job-1", model_archive(1.0)))["status"] == "ignored"
    bad = model_archive(1.0)
    out = promote_handler(completed(aws, bucket, "battwin-soh-20250703-000000", bad[:-40]))
    assert out["status"] == "rejected"


def test_final_metric_is_the_fallback_score(aws: dict[str, Any], promoter_env: dict[str, str]) -> None:
    bucket = promoter_env["DATA_BUCKET"]
    gg = Greengrass()
    with gg.stub:  # worse than the champion: judged on the job's final metric, rejected, nothing deployed
        out = Promoter(PromoteSettings.from_env(), greengrass=gg.client).handle(
            completed(aws, bucket, "battwin-soh-20250704-000000", model_archive(None), final_metric=9.0)
        )
    assert out["status"] == "rejected" and out["score_source"] == "final metrics held_out_*_hybrid_rmse_pp"
    assert out["challenger_score"] == 9.0


def test_an_aws_error_releases_the_job_for_the_retry(aws: dict[str, Any], promoter_env: dict[str, str]) -> None:
    env, bucket = promoter_env, promoter_env["DATA_BUCKET"]
    event = completed(aws, bucket, "battwin-soh-20250705-000000", model_archive(0.5))
    gg = Greengrass()
    gg.stub.add_client_error("create_component_version", "ThrottlingException", "slow down", http_status_code=429)
    with gg.stub, pytest.raises(ClientError) as caught:
        Promoter(PromoteSettings.from_env(), greengrass=gg.client).handle(event)
    assert caught.value.response["Error"]["Code"] == "ThrottlingException"
    assert "decision" not in _decision(env, "battwin-soh-20250705-000000")
    assert any(
        d["job_name"] == "battwin-soh-20250705-000000" and d["decision"] == "error"
        for d in Registry(env["REGISTRY_TABLE"]).decisions()
    )
    version = str(
        int(
            unmarshal(
                aws["dynamodb"].get_item(
                    TableName=env["REGISTRY_TABLE"], Key={"pk": {"S": "counter"}, "sk": {"S": "component_version"}}
                )["Item"]
            )["seq"]
        )
        + 1
    )
    gg = Greengrass()
    gg.expect_promotion(f"1.0.{version}")
    with gg.stub:
        out = Promoter(PromoteSettings.from_env(), greengrass=gg.client).handle(event)
        gg.stub.assert_no_pending_responses()
    assert out["status"] == "promoted"
