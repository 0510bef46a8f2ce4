"""Deploy ``cloud/template.yaml`` with boto3: package, upload, create or update the stack, wait, report outputs.

The account and region are those of the environment (the usual boto3 chain: ``AWS_PROFILE``,
``AWS_REGION`` …; ``AWS_ENDPOINT_URL`` for an emulator). Artifacts go to ``--artifact-bucket`` or to
``battwin-deploy-<account>-<region>`` (created private and encrypted if missing), under keys that contain
their SHA-256, so an unchanged Lambda package is neither re-uploaded nor redeployed. The template is uploaded
too (it is larger than CloudFormation's 51,200-byte inline limit) and passed by URL.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloud.aws import client, error_code
from cloud.package import Artifact, build_lambda_zip, build_training_source

log = logging.getLogger("battwin.cloud.deploy")

TEMPLATE = Path(__file__).resolve().parent / "template.yaml"
CODE_PARAMETERS = ("CodeBucket", "CodeKey", "TrainingSourceKey")
CAPABILITIES = ["CAPABILITY_IAM"]
_FAILED = ("CREATE_FAILED", "UPDATE_FAILED", "DELETE_FAILED", "ROLLBACK_IN_PROGRESS", "UPDATE_ROLLBACK_IN_PROGRESS")


class DeployError(RuntimeError):
    """The deployment could not be done (bad parameter, failed stack operation)."""


@dataclass
class DeployResult:
    stack: str
    action: str  # created | updated | unchanged
    status: str
    outputs: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)


def parse_params(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DeployError(f"--param expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value
    return out


def template_parameters(text: str) -> dict[str, bool]:
    """The template's parameters → whether each has a default, read locally (JSON, or YAML's top-level
    ``Parameters:`` block with two-space indentation); empty if the layout is not recognised."""
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            declared = json.loads(stripped).get("Parameters", {})
        except ValueError:
            return {}
        return {str(k): isinstance(v, dict) and "Default" in v for k, v in declared.items()}
    found: dict[str, bool] = {}
    inside = False
    current: str | None = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace():
            inside = line.rstrip() == "Parameters:"
            current = None
            continue
        if not inside:
            continue
        m = re.match(r"^  ([A-Za-z0-9]+):\s*(#.*)?$", line)
        if m:
            current = m.group(1)
            found[current] = False
        elif current is not None and re.match(r"^    Default:", line):
            found[current] = True
    return found


def _s3_url(bucket: str, key: str, region: str) -> str:
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"https://{bucket}.s3.{region}.{suffix}/{key}"


def ensure_bucket(s3: Any, bucket: str, region: str) -> None:
    try:
        s3.head_bucket(Bucket=bucket)
        return
    except Exception as exc:
        if error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
            raise DeployError(f"artifact bucket {bucket}: {exc}") from exc
    kwargs: dict[str, Any] = {"Bucket": bucket}
    if region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    s3.create_bucket(**kwargs)
    s3.put_public_access_block(
        Bucket=bucket,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
    s3.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )
    log.info("artifact bucket created", extra={"bucket": bucket})


def upload(s3: Any, bucket: str, key: str, data: bytes) -> bool:
    """Put ``data`` unless an object with this (content-addressed) key exists; True if uploaded."""
    try:
        s3.head_object(Bucket=bucket, Key=key)
        return False
    except Exception as exc:
        if error_code(exc) not in ("404", "NoSuchKey", "NotFound"):
            raise
    s3.put_object(Bucket=bucket, Key=key, Body=data)
    return True


def _stack(cfn: Any, name: str) -> dict[str, Any] | None:
    try:
        stacks = cfn.describe_stacks(StackName=name)["Stacks"]
    except Exception as exc:
        if error_code(exc) == "ValidationError" and "does not exist" in str(exc):
            return None
        raise
    return stacks[0] if stacks else None


def _failure_events(cfn: Any, name: str, limit: int = 10) -> list[str]:
    try:
        events = cfn.describe_stack_events(StackName=name)["StackEvents"]
    except Exception:
        return []
    out = []
    for ev in events:
        if ev.get("ResourceStatus") in _FAILED and ev.get("ResourceStatusReason"):
            out.append(f"{ev.get('LogicalResourceId')}: {ev['ResourceStatusReason']}")
        if len(out) >= limit:
            break
    return out


def deploy(
    stack: str,
    template: Path = TEMPLATE,
    params: dict[str, str] | None = None,
    artifact_bucket: str | None = None,
    wait: bool = True,
    say: Callable[[str], None] = print,
    lambda_zip: Artifact | None = None,
    training_source: Artifact | None = None,
) -> DeployResult:
    params = dict(params or {})
    cfn, s3 = client("cloudformation"), client("s3")
    region = str(cfn.meta.region_name)
    account = client("sts").get_caller_identity()["Account"]
    bucket = artifact_bucket or f"battwin-deploy-{account}-{region}"
    ensure_bucket(s3, bucket, region)

    say("packaging Lambda code and training source ...")
    zip_art = lambda_zip or build_lambda_zip()
    src_art = training_source or build_training_source()
    body = Path(template).read_bytes()
    tpl_art = Artifact("template.yaml", body)
    keys = {
        "CodeKey": f"{stack}/lambda/{zip_art.sha256[:20]}.zip",
        "TrainingSourceKey": f"{stack}/training/{src_art.sha256[:20]}/{src_art.name}",
        "template": f"{stack}/template/{tpl_art.sha256[:20]}.yaml",
    }
    for name, art in (("CodeKey", zip_art), ("TrainingSourceKey", src_art), ("template", tpl_art)):
        fresh = upload(s3, bucket, keys[name], art.data)
        say(f"  s3://{bucket}/{keys[name]} ({len(art.data):,} bytes{', uploaded' if fresh else ', unchanged'})")
    template_url = _s3_url(bucket, keys["template"], region)

    defaults = template_parameters(body.decode("utf-8"))
    if not defaults:  # a layout the local reader does not know: ask CloudFormation
        summary = cfn.get_template_summary(TemplateURL=template_url).get("Parameters", [])
        defaults = {p["ParameterKey"]: p.get("DefaultValue") is not None for p in summary}
    declared = set(defaults)
    unknown = sorted(set(params) - declared)
    if unknown:
        raise DeployError(f"unknown template parameter(s) {unknown}; the template declares {sorted(declared)}")
    values = {
        **params,
        "CodeBucket": bucket,
        "CodeKey": keys["CodeKey"],
        "TrainingSourceKey": keys["TrainingSourceKey"],
    }

    existing = _stack(cfn, stack)
    if existing is not None and existing["StackStatus"] == "ROLLBACK_COMPLETE":
        raise DeployError(f"stack {stack} is in ROLLBACK_COMPLETE (its creation failed): delete it, then deploy again")
    common: dict[str, Any] = {
        "StackName": stack,
        "TemplateURL": template_url,
        "Capabilities": CAPABILITIES,
        "Tags": [{"Key": "battwin:stack", "Value": stack}],
    }
    if existing is None:
        missing = sorted(k for k, has_default in defaults.items() if not has_default and k not in values)
        if missing:
            raise DeployError(
                f"parameter(s) without a default need a value: {', '.join(f'--param {k}=...' for k in missing)}"
            )
        common["Parameters"] = [{"ParameterKey": k, "ParameterValue": v} for k, v in sorted(values.items())]
        say(f"creating stack {stack} in {account}/{region} ...")
        cfn.create_stack(**common, OnFailure="ROLLBACK")
        action, waiter = "created", "stack_create_complete"
    else:
        # parameters not given keep their current values: passed explicitly (NoEcho ones, shown as ****, by
        # UsePreviousValue), which also holds for parameters that were left at their defaults
        previous = {p["ParameterKey"]: p.get("ParameterValue", "") for p in existing.get("Parameters", [])}
        plist: list[dict[str, Any]] = [{"ParameterKey": k, "ParameterValue": v} for k, v in sorted(values.items())]
        for key in sorted((set(previous) & declared) - set(values)):
            if previous[key] == "****":
                plist.append({"ParameterKey": key, "UsePreviousValue": True})
            else:
                plist.append({"ParameterKey": key, "ParameterValue": previous[key]})
        common["Parameters"] = plist
        say(f"updating stack {stack} in {account}/{region} ...")
        try:
            cfn.update_stack(**common)
        except Exception as exc:
            if "No updates are to be performed" not in str(exc):
                raise
            say("no changes")
            return DeployResult(stack, "unchanged", existing["StackStatus"], _outputs(existing), keys)
        action, waiter = "updated", "stack_update_complete"
    if wait:
        started = time.monotonic()
        try:
            cfn.get_waiter(waiter).wait(StackName=stack, WaiterConfig={"Delay": 5, "MaxAttempts": 720})
        except Exception as exc:
            reasons = _failure_events(cfn, stack)
            raise DeployError(f"stack {stack} was not {action}: {exc}" + "".join(f"\n  {r}" for r in reasons)) from None
        say(f"stack {stack} {action} in {time.monotonic() - started:.0f} s")
    final = _stack(cfn, stack) or {}
    return DeployResult(stack, action, str(final.get("StackStatus", "")), _outputs(final), keys)


def _outputs(stack: dict[str, Any]) -> dict[str, str]:
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", []) or []}


def stack_outputs(stack: str) -> dict[str, str]:
    found = _stack(client("cloudformation"), stack)
    if found is None:
        raise DeployError(f"stack {stack} does not exist")
    return _outputs(found)
