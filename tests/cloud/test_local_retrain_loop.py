"""The fleet loop closed once, locally: the lake's cycles → a local SageMaker training job running the real entry
point → the champion/challenger gate → a new com.battwin.SohModel version folder → a running agent switches to
it and its health messages carry the new model version, without a restart."""

from __future__ import annotations

import io
import json
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud.local_stack.aws_local import LocalAws
from cloud.local_stack.local_train import NASA_HISTORY_CELLS, LocalRetrainLoop, seed_lake_with_cells
from device_agent.agent import Agent
from device_agent.config import AgentConfig
from device_agent.health.model_files import read_model_file
from device_agent.health.shipped import SHIPPED_MODEL_DIR
from device_agent.runtime import attach_model_manager
from device_agent.uplink.spool import Spool
from device_agent.uplink.transport import MemoryTransport
from hardware.simulator.source import SimulatorSource
from schema.simulator_settings import SimulatorSettings
from tests.ml.ml_support import CELLS, need_cells, need_tensorflow
from tests.support import require_module

#: real NASA cells, put into the lake as if eight things had reported their discharges (not simulated)
LAKE_CELLS = NASA_HISTORY_CELLS
T0 = 1_700_000_000.0


def seed_lake(s3: Any, bucket: str, cells: tuple[str, ...] = LAKE_CELLS) -> int:
    return seed_lake_with_cells(s3, bucket, CELLS, cells, t0=T0)


@pytest.fixture
def aws() -> Iterator[LocalAws]:
    with LocalAws.running() as local:
        yield local


def new_agent(tmp_path: Path, root: Path, health: list[dict[str, Any]]) -> Agent:
    cfg = AgentConfig(
        thing_name="loop-1",
        spool={"path": tmp_path / "spool.db"},
        health={"model_root": root, "model_poll_s": 0.05},
    )
    src = SimulatorSource(SimulatorSettings(time_acceleration=2e4), interval_s=10)

    def on_message(kind: str, body: Any, msg_id: str) -> None:
        if kind == "health":
            health.append(body.model_dump(mode="json"))

    return Agent(cfg, src, MemoryTransport(), Spool(tmp_path / "spool.db"), on_message=on_message)


def wait_for(done: Any, timeout_s: float = 300.0) -> bool:
    """Poll ``done`` while the agent runs on its own thread (the bound only limits a failing run)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if done():
            return True
        time.sleep(0.05)
    return bool(done())


@pytest.mark.slow
def test_the_fleet_loop_closes_lake_to_running_agent(aws: LocalAws, tmp_path: Path) -> None:
    need_cells()
    need_tensorflow()
    require_module("ai_edge_litert")
    s3 = aws.client("s3")
    seeded = seed_lake(s3, aws.names.bucket)
    root = tmp_path / "greengrass" / "packages" / "artifacts" / "com.battwin.SohModel"
    root.mkdir(parents=True)
    shipped_version = read_model_file(SHIPPED_MODEL_DIR / "model.json").version

    # a running agent on the model component's artifact root: nothing there yet, so the shipped model
    health: list[dict[str, Any]] = []
    agent = new_agent(tmp_path, root, health)
    agent.model_manager = attach_model_manager(agent)
    stop = threading.Event()
    runner = threading.Thread(target=agent.run, args=(stop,), name="agent", daemon=True)
    runner.start()
    try:
        # the first estimates are the physics fit's (too few cycles for the model's window), then the model's
        assert wait_for(lambda: any(h["model_version"] == shipped_version for h in health)), (
            f"no health estimate from the shipped model: {[h['model_version'] for h in health[-3:]]}"
        )
        assert agent.estimator.model is not None and agent.estimator.model.version == shipped_version

        loop = LocalRetrainLoop(
            s3=s3, dynamodb=aws.client("dynamodb"), bucket=aws.names.bucket, model_root=root, workdir=tmp_path / "stack"
        )
        try:
            result = loop.run()
            # the scheduled Lambda's part: the whole lake was read and the train channel written
            assert result["start"]["status"] == "started", result
            assert result["start"]["cells"] == len(LAKE_CELLS) and result["start"]["valid_rows"] == seeded
            job = result["job"]
            assert job["TrainingJobStatus"] == "Completed", job
            # model.tar.gz where SageMaker puts it: <S3OutputPath><job>/output/model.tar.gz
            uri = job["ModelArtifacts"]["S3ModelArtifacts"]
            assert uri == f"s3://{aws.names.bucket}/models/training/{job['TrainingJobName']}/output/model.tar.gz"
            data = s3.get_object(Bucket=aws.names.bucket, Key=uri.split("/", 3)[3])["Body"].read()
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                assert {"model.tflite", "model.json"} <= set(tar.getnames())
            # the job's final metrics, captured from the entry point's log by the request's metric definitions
            names = {m["MetricName"] for m in job["FinalMetricDataList"]}
            assert "held_out_fleet_hybrid_rmse_pp" in names
            # the gate: no champion yet, so the challenger's held-out score makes it the champion
            decision = result["decision"]
            assert decision["status"] == "promoted", decision
            assert decision["score_source"] == "model.json" and decision["challenger_score"] > 0
            version = decision["component_version"]
            model_version = decision["model_version"]
            assert model_version and model_version != shipped_version
            assert (root / version / "model.tflite").is_file()
            doc = json.loads((root / version / "model.json").read_text())
            assert doc["version"] == model_version and doc["provenance"]["datasets"] == ["fleet"]
            champion = loop.registry.champion()
            assert champion is not None and champion["component_version"] == version
            deployed = loop.greengrass.deployed_at[version]

            # the same agent, never restarted, switches and reports the new model in its health messages
            before = len(health)
            switched = wait_for(lambda: any(h["model_version"] == model_version for h in health[before:]))
            took = time.time() - deployed
            assert switched, f"the agent kept {health[-1]['model_version'] if health else None}"
            assert agent.estimator.model is not None and agent.estimator.model.version == model_version

            # a second run on the same lake whose gate demands a 99 % lower held-out error: the challenger is
            # rejected, nothing is deployed, and the running agent keeps the champion it switched to
            loop.promoter.settings = loop.promoter.settings.model_copy(update={"min_improvement": 0.99})
            mark = len(health)
            second = loop.run(now=time.time() + 60.0)
            assert second["job"]["TrainingJobStatus"] == "Completed", second["job"]
            assert second["status"] == "rejected" and "does not beat champion" in second["reason"], second
            assert second["decision"]["champion_score"] == decision["challenger_score"]
            champion = loop.registry.champion()
            assert champion is not None and champion["component_version"] == version
            assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == [version]
            assert sorted(loop.greengrass.deployed_at) == [version]
            assert wait_for(lambda: len(health) >= mark + 3)
            assert {h["model_version"] for h in health[mark:]} == {model_version}
            assert agent.estimator.model is not None and agent.estimator.model.version == model_version
            print(
                f"local job {job['TrainingTimeInSeconds']:.1f} s; gate: champion {decision['challenger_score']:.3f} pp "
                f"(model {model_version}), second challenger {second['decision']['challenger_score']:.3f} pp rejected; "
                f"deployment to new health message {took:.2f} s"
            )
        finally:
            loop.close()
    finally:
        stop.set()
        runner.join(timeout=30)
        agent.close()
    assert not runner.is_alive()


def test_not_enough_lake_data_starts_no_job(aws: LocalAws, tmp_path: Path) -> None:
    need_cells()
    s3 = aws.client("s3")
    seed_lake(s3, aws.names.bucket, LAKE_CELLS[:1])
    loop = LocalRetrainLoop(
        s3=s3,
        dynamodb=aws.client("dynamodb"),
        bucket=aws.names.bucket,
        model_root=tmp_path / "root",
        workdir=tmp_path / "stack",
    )
    try:
        result = loop.run()
        assert result["status"] == "skipped" and "1 batteries (need 3)" in result["reason"]
        assert loop.sagemaker.jobs == {} and not (tmp_path / "root").exists()
        (decision,) = loop.registry.decisions()
        assert decision["decision"] == "skipped"
    finally:
        loop.close()
