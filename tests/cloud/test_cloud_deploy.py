"""``battwin cloud …`` through the project's CLI (the entry-point plugin), the deployer against moto, and the
Lambda package (reproducible, and importable with nothing but the Lambda runtime's boto3)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import zipfile
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest

import device_agent.cli as battwin_cli
from cloud.package import LAMBDA_RUNTIME, build_lambda_zip, build_training_source
from tests.support import IN_CI

CLI_STACK = "battwin-cli"
IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/tensorflow-training:2.19.0-cpu-py312"


@pytest.fixture
def with_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``battwin.cli`` entry point pyproject will declare: cloud = "cloud.cli:register"."""
    ep = EntryPoint(name="cloud", value="cloud.cli:register", group="battwin.cli")
    real = battwin_cli.entry_points

    def fake(**kw: Any) -> Any:
        return [ep] if kw.get("group") == "battwin.cli" else real(**kw)

    monkeypatch.setattr(battwin_cli, "entry_points", fake)


def run(*argv: str) -> int:
    return battwin_cli.main(list(argv))


def test_the_plugin_registers_its_commands(with_plugin: None) -> None:
    parser = battwin_cli.build_parser()
    args = parser.parse_args(["cloud", "deploy", "--stack", "s1", "--param", "A=1", "--param", "B=x=y"])
    assert args.stack == "s1" and args.param == ["A=1", "B=x=y"]
    assert Path(args.template) == Path(__file__).resolve().parents[2] / "cloud" / "template.yaml"
    from cloud.deploy import DeployError, parse_params

    assert parse_params(args.param) == {"A": "1", "B": "x=y"}
    with pytest.raises(DeployError):
        parse_params(["novalue"])
    for cmd in (["cloud", "package"], ["cloud", "outputs", "--stack", "s"], ["cloud", "api-local", "--port", "1"]):
        assert callable(parser.parse_args(cmd).func)


@pytest.mark.slow
def test_deploy_create_update_and_outputs(
    with_plugin: None, aws: dict[str, Any], stack: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # (the token exchange role is given because moto's update_stack crashes on a conditional IAM policy that
    # was not created; AWS does not)
    common = [
        "--stack",
        CLI_STACK,
        "--artifact-bucket",
        "battwin-cli-artifacts",
        "--param",
        f"TrainingImageUri={IMAGE}",
        "--param",
        "ResourcePrefix=cli",
        "--param",
        "GreengrassTokenExchangeRoleName=GreengrassV2TokenExchangeRole",
    ]
    assert run("cloud", "deploy", *common) == 0
    out = capsys.readouterr().out
    assert f"stack {CLI_STACK}: created (CREATE_COMPLETE)" in out and "ApiUrl" in out and "DataBucketName" in out
    cfn = aws["cloudformation"]
    params = {
        p["ParameterKey"]: p["ParameterValue"]
        for p in cfn.describe_stacks(StackName=CLI_STACK)["Stacks"][0]["Parameters"]
    }
    assert params["CodeBucket"] == "battwin-cli-artifacts" and params["ResourcePrefix"] == "cli"
    # an update with a changed parameter; the others keep their previous values
    assert (
        run(
            "cloud",
            "deploy",
            "--stack",
            CLI_STACK,
            "--artifact-bucket",
            "battwin-cli-artifacts",
            "--param",
            "RetrainSchedule=rate(1 day)",
        )
        == 0
    )
    assert f"stack {CLI_STACK}: updated" in capsys.readouterr().out
    described = cfn.describe_stacks(StackName=CLI_STACK)["Stacks"][0]
    params = {p["ParameterKey"]: p["ParameterValue"] for p in described["Parameters"]}
    assert params["RetrainSchedule"] == "rate(1 day)" and params["ResourcePrefix"] == "cli"
    assert params["TrainingImageUri"] == IMAGE
    rule = next(
        r
        for r in cfn.describe_stack_resources(StackName=CLI_STACK)["StackResources"]
        if r.get("LogicalResourceId") == "RetrainScheduleRule"
    )
    assert aws["events"].describe_rule(Name=rule["PhysicalResourceId"])["ScheduleExpression"] == "rate(1 day)"
    # outputs
    assert run("cloud", "outputs", "--stack", CLI_STACK, "--json") == 0
    outputs = json.loads(capsys.readouterr().out)
    assert outputs["GlueDatabaseName"] == "cli_lake" and outputs["ApiUrl"].startswith("https://")


def test_deploy_refuses_unknown_parameters(
    with_plugin: None, aws: dict[str, Any], stack: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run(
        "cloud",
        "deploy",
        "--stack",
        "battwin-typo",
        "--artifact-bucket",
        "battwin-cli-artifacts",
        "--param",
        f"TrainingImageUri={IMAGE}",
        "--param",
        "RetrainShedule=rate(1 day)",
    )
    assert code == 2
    assert "unknown template parameter(s) ['RetrainShedule']" in capsys.readouterr().err
    assert run("cloud", "outputs", "--stack", "battwin-typo") == 2


@pytest.mark.slow
def test_package_is_reproducible_and_complete(with_plugin: None, tmp_path: Path) -> None:
    a, b = build_lambda_zip(), build_lambda_zip()
    assert a.sha256 == b.sha256
    names = set(zipfile.ZipFile(io.BytesIO(a.data)).namelist())
    assert {
        "cloud/ingest/handler.py",
        "cloud/api/handler.py",
        "cloud/retrain/start.py",
        "cloud/retrain/promote.py",
        "schema/__init__.py",
        "schema/messages.py",
        "pydantic/__init__.py",
        "annotated_types/__init__.py",
    } <= names
    assert any(n.startswith("pydantic_core/_pydantic_core") and n.endswith(".so") for n in names)
    assert not any(n.startswith(("tests/", "hardware/", "ml/")) or n.endswith(".pyc") for n in names)
    # the wire format comes from the schema layer; of device_agent only the JSON log format cloud.aws shares
    assert {n for n in names if n.startswith("device_agent/")} == {
        "device_agent/__init__.py",
        "device_agent/logging_setup.py",
    }
    assert not {"cloud/deploy.py", "cloud/package.py", "cloud/cli.py", "cloud/template.yaml"} & names
    assert build_training_source().sha256 == build_training_source().sha256
    assert run("cloud", "package", "--out", str(tmp_path)) == 0
    assert (tmp_path / "lambda.zip").read_bytes() == a.data


def _lambda_python() -> str:
    """An interpreter of the Lambda runtime's Python (python3.13): on PATH or through pyenv; without one the
    test fails in CI and is skipped elsewhere."""
    from tools.pyversions import find_python

    try:
        return str(find_python(LAMBDA_RUNTIME.removeprefix("python")))
    except SystemExit as exc:
        if IN_CI:
            pytest.fail(str(exc))
        pytest.skip(str(exc))


@pytest.mark.slow
def test_lambda_package_imports_with_only_the_runtime_boto3(tmp_path: Path) -> None:
    """Unpacked, the zip plus boto3 (which the Lambda runtime provides) is enough for every handler, run by the
    Lambda runtime's Python (the zip's pydantic-core is built for it)."""
    python = _lambda_python()
    code = tmp_path / "task"
    zipfile.ZipFile(io.BytesIO(build_lambda_zip().data)).extractall(code)
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    import boto3

    site = Path(boto3.__file__).resolve().parents[1]
    for name in ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six.py"):
        os.symlink(site / name, runtime / name)
    script = (
        "import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
        "import cloud.ingest.handler, cloud.api.handler, cloud.retrain.start, cloud.retrain.promote\n"
        "import pydantic, schema.messages\n"
        "assert pydantic.__file__.startswith(sys.argv[1]), pydantic.__file__\n"
        "mods = sorted(m for m in sys.modules if m.split('.')[0] in ('hardware', 'ml', 'numpy'))\n"
        "assert not mods, mods\n"
        "out = cloud.api.handler.handle({'httpMethod': 'GET', 'path': '/nowhere'}, "
        "cloud.api.handler.Api('s', 'h', dynamodb=object()))\n"
        "print(out['statusCode'])\n"
    )
    env = {"PATH": os.environ.get("PATH", ""), "AWS_DEFAULT_REGION": "us-east-1"}
    done = subprocess.run(
        [python, "-I", "-S", "-c", script, str(code), str(runtime)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "404"
