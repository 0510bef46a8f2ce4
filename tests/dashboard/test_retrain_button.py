"""The local dashboard's retrain trigger: POST /api/retrain starts one run of the fleet loop on the stack's lake,
GET /api/retrain says what became of it (here: too little data, so no job), and a dashboard without a loop
says it has none. The whole loop with a real job is tests/cloud/test_local_retrain_loop.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud.api.handler import Api
from cloud.dashboard.api_client import InProcessApi
from cloud.dashboard.server import Dashboard, DashboardServer
from cloud.local_stack.aws_local import LocalAws
from cloud.local_stack.local_train import LocalRetrainLoop
from tests.dashboard.conftest import fetch, wait_for


@pytest.fixture
def aws() -> Iterator[LocalAws]:
    with LocalAws.running() as local:
        yield local


def _server(aws: LocalAws, retrain: LocalRetrainLoop | None) -> DashboardServer:
    api = Api(aws.names.device_state_table, aws.names.history_table, dynamodb=aws.client("dynamodb"))
    return DashboardServer(Dashboard(InProcessApi(api, description="moto"), retrain=retrain)).start()


def test_retrain_button_runs_the_loop_and_shows_why_no_job_started(aws: LocalAws, tmp_path: Path) -> None:
    loop = LocalRetrainLoop(
        s3=aws.client("s3"),
        dynamodb=aws.client("dynamodb"),
        bucket=aws.names.bucket,
        model_root=tmp_path / "root",
        workdir=tmp_path / "training",
    )
    server = _server(aws, loop)
    try:
        url = server.url
        status, info = fetch(url + "api/info")
        assert status == 200 and info["retrain"] is True
        status, before = fetch(url + "api/retrain")
        assert status == 200 and before["last"] is None and before["champion"] is None
        headers = {"Content-Type": "application/json", "Origin": "http://evil.example"}
        status, _ = fetch(url + "api/retrain", "POST", {}, headers)
        assert status == 403  # another web page cannot start a job
        status, started = fetch(url + "api/retrain", "POST", {}, {"Content-Type": "application/json"})
        assert status == 202, started

        def finished() -> dict[str, Any] | None:
            _, now = fetch(url + "api/retrain")
            return now if not now["running"] and now["last"] else None

        after = wait_for(finished, 60, 0.1, "the retraining run to end")
        assert after["last"]["status"] == "skipped"
        assert "0 batteries (need 3)" in after["last"]["reason"]
        assert after["champion"] is None and after["deployed_versions"] == []
        assert [d["decision"] for d in after["decisions"]] == ["skipped"]
        assert loop.sagemaker.jobs == {} and not (tmp_path / "root").exists()
    finally:
        server.stop()
        loop.close()


def test_without_a_loop_the_dashboard_says_so(aws: LocalAws) -> None:
    server = _server(aws, None)
    try:
        status, info = fetch(server.url + "api/info")
        assert status == 200 and info["retrain"] is False
        status, body = fetch(server.url + "api/retrain", "POST", {}, {"Content-Type": "application/json"})
        assert status == 501 and body["error"] == "no_retrain"
    finally:
        server.stop()
