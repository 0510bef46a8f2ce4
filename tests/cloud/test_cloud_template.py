"""The CloudFormation template on its own: cfn-lint, and the properties that matter (security, keys, wiring,
agreement of the Glue schema with what the ingest writes, the QuickSight analysis)."""

from __future__ import annotations

import copy
import importlib
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from cfnlint.api import ManualArgs, lint_file

from cloud.deploy import template_parameters
from cloud.lake import FIREHOSE_PARTITION_JQ, firehose_partition, partition_prefix, utc_day
from cloud.local_stack.iot_sql import Message, RuleQuery
from cloud.package import LAMBDA_ARCHITECTURE, LAMBDA_RUNTIME
from cloud.retrain.start import PINNED_TRAINING_IMAGE, TRAINING_IMAGE_PATTERN, StartSettings
from cloud.tables import HISTORY_BY_TIME_INDEX
from schema.messages import BODY_TYPES, Alarm, Envelope, Sample, encode_envelope, envelope
from tests.cloud.cloud_support import TEMPLATE, Resolver, load_template, run_agent

KINDS = ("telemetry", "cycles", "health", "alarms")
#: statements allowed a "*" resource, and why (the API has no resource-level permissions for these actions)
STAR_ALLOWED = {
    "MetricsApiHasNoResourceLevelPermissions": {"cloudwatch:PutMetricData"},
    "EcrTokenApiHasNoResourceLevelPermissions": {"ecr:GetAuthorizationToken"},
    "DeploymentApisHaveNoResourceLevelPermissions": {"greengrass:CreateDeployment", "greengrass:ListDeployments"},
}


@pytest.fixture(scope="module")
def tpl() -> dict[str, Any]:
    return load_template()


def static_resolver(tpl: dict[str, Any], **params: str) -> Resolver:
    """Resolves intrinsics without a deployment: Ref → logical id, GetAtt → <logical>.<attr>."""
    base = {
        "CodeBucket": "code",
        "CodeKey": "lambda.zip",
        "TrainingSourceKey": "src.tar.gz",
        "TrainingImageUri": "763104351884.dkr.ecr.eu-west-1.amazonaws.com/tensorflow-training:2.19.0-cpu-py312",
    }
    ids = {k: k for k in tpl["Resources"]}
    return Resolver(tpl, {**base, **params}, "stack", ids, lambda logical, attr: f"{logical}.{attr}")


@pytest.mark.slow
def test_cfn_lint_passes() -> None:
    matches = lint_file(TEMPLATE, config=ManualArgs(regions=["us-east-1", "eu-west-1"]))
    assert [str(m) for m in matches] == []


def test_parameters_read_by_the_deployer(tpl: dict[str, Any]) -> None:
    found = template_parameters(TEMPLATE.read_text())
    assert found == {k: "Default" in v for k, v in tpl["Parameters"].items()}
    assert [k for k, has_default in found.items() if not has_default] == ["CodeBucket", "CodeKey", "TrainingSourceKey"]


def test_bucket_is_encrypted_private_and_tls_only(tpl: dict[str, Any]) -> None:
    r = static_resolver(tpl)
    bucket = r.properties("DataBucket")
    sse = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
    assert sse["SSEAlgorithm"] in ("AES256", "aws:kms")
    assert bucket["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    deny = r.properties("DataBucketPolicy")["PolicyDocument"]["Statement"][0]
    assert deny["Effect"] == "Deny" and deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_tables_keys_and_ttl(tpl: dict[str, Any]) -> None:
    r = static_resolver(tpl)
    history = r.properties("HistoryTable")
    assert history["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert [k["AttributeName"] for k in history["KeySchema"]] == ["pk", "sk"]
    assert [g["IndexName"] for g in history["GlobalSecondaryIndexes"]] == [HISTORY_BY_TIME_INDEX]
    for logical in ("HistoryTable", "DeviceStateTable", "ModelRegistryTable"):
        assert r.properties(logical)["SSESpecification"] == {"SSEEnabled": True}
        assert tpl["Resources"][logical]["DeletionPolicy"] == "Retain"


def test_iot_policy_scoped_to_the_connecting_thing(tpl: dict[str, Any]) -> None:
    stmts = static_resolver(tpl).properties("DevicePolicy")["PolicyDocument"]["Statement"]
    assert {s["Effect"] for s in stmts} == {"Allow"}
    assert sorted(s["Action"] for s in stmts) == ["iot:Connect", "iot:Publish", "iot:Receive", "iot:Subscribe"]
    thing = "${iot:Connection.Thing.ThingName}"
    for s in stmts:
        resources = s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]]
        for res in resources:
            assert thing in res, res  # every resource is the connecting thing's own
            assert res.startswith("arn:aws:iot:us-east-1:123456789012:")
        if s["Action"] == "iot:Connect":
            assert resources == [f"arn:aws:iot:us-east-1:123456789012:client/{thing}"]
            assert s["Condition"] == {"Bool": {"iot:Connection.Thing.IsAttached": "true"}}
        if s["Action"] == "iot:Publish":
            tails = [res.split(":topic/", 1)[1] for res in resources]
            assert tails == [
                f"battwin/{thing}/*",
                f"battwin/{thing}.*",  # the packs of a multi-pack agent (tests/test_multipack.py)
                f"$aws/things/{thing}/shadow/name/battwin-config/get",
                f"$aws/things/{thing}/shadow/name/battwin-config/update",
            ]
        if s["Action"] in ("iot:Subscribe", "iot:Receive"):
            assert resources[0].endswith(f"$aws/things/{thing}/shadow/name/battwin-config/*")
    # Basic Ingest: the thing's own topics (and its packs') through each rule, every rule named
    (ingest,) = static_resolver(tpl, ResourcePrefix="fleet1").properties("DeviceBasicIngestPolicy")["PolicyDocument"][
        "Statement"
    ]
    assert (ingest["Effect"], ingest["Action"]) == ("Allow", "iot:Publish")
    tails = [res.split(":topic/", 1)[1] for res in ingest["Resource"]]
    assert tails == [
        form
        for kind in KINDS
        for form in (f"$aws/rules/fleet1_{kind}/battwin/{thing}/{kind}", f"$aws/rules/fleet1_{kind}/battwin/{thing}.*")
    ]


def _policy_chars(doc: dict[str, Any]) -> int:
    """A policy document's size as IoT Core counts it: characters, whitespace aside."""
    return len(re.sub(r"\s", "", json.dumps(doc, separators=(",", ":"))))


@pytest.mark.parametrize("logical", ["DevicePolicy", "DeviceBasicIngestPolicy"])
def test_iot_policies_fit_iot_cores_size_limit_at_any_prefix_and_region(tpl: dict[str, Any], logical: str) -> None:
    """IoT Core refuses a policy document over 2,048 characters (whitespace aside): the longest ResourcePrefix the
    template allows, in a long region name, must still fit (the Basic Ingest resources are a policy of their own
    for this reason: with DevicePolicy's they were ~2,200)."""
    longest = "p" * 20  # ResourcePrefix ^[a-z][a-z0-9]{1,19}$
    ids = {k: k for k in tpl["Resources"]}
    for partition, region in (("aws", "us-east-1"), ("aws", "ap-southeast-2"), ("aws-us-gov", "us-gov-west-1")):
        r = Resolver(
            tpl,
            {"CodeBucket": "c", "CodeKey": "k", "TrainingSourceKey": "s", "ResourcePrefix": longest},
            "stack",
            ids,
            lambda lg, attr: f"{lg}.{attr}",
        )
        r.pseudo.update({"AWS::Region": region, "AWS::Partition": partition})
        doc = r.properties(logical)["PolicyDocument"]
        assert region in json.dumps(doc)
        assert _policy_chars(doc) <= 2048, (logical, region, _policy_chars(doc))
    both = static_resolver(tpl, ResourcePrefix=longest)
    merged = both.properties("DevicePolicy")["PolicyDocument"]
    merged["Statement"] += both.properties("DeviceBasicIngestPolicy")["PolicyDocument"]["Statement"]
    assert _policy_chars(merged) > 2048  # positive control: the two together would not fit


def test_one_topic_rule_per_kind_feeds_the_lake_and_the_ingest_lambda_but_for_telemetry(tpl: dict[str, Any]) -> None:
    r = static_resolver(tpl, ResourcePrefix="fleet1")
    rules = {k: r.properties(k) for k, v in tpl["Resources"].items() if v["Type"] == "AWS::IoT::TopicRule"}
    presence = rules.pop("PresenceRule")  # the lifecycle events (tests/cloud/test_cloud_operations.py)
    assert presence["TopicRulePayload"]["Actions"] == [{"Lambda": {"FunctionArn": "IngestFunction.Arn"}}]
    # one rule per kind, never two on a topic: a Basic Ingest message ($aws/rules/<rule>/...) reaches only the rule
    # it names, so that rule must both put the lake's record and invoke the ingest (telemetry: no Lambda per
    # message; the lake stream's transform writes its live window)
    assert sorted(rules) == sorted(f"{kind.capitalize()}Rule" for kind in KINDS)
    permissions = {
        r.properties(k)["SourceArn"]
        for k, v in tpl["Resources"].items()
        if v["Type"] == "AWS::Lambda::Permission" and r.properties(k)["Principal"] == "iot.amazonaws.com"
    }
    for kind in KINDS:
        props = rules[f"{kind.capitalize()}Rule"]
        payload = props["TopicRulePayload"]
        assert props["RuleName"] == f"fleet1_{kind}"
        assert payload["Sql"] == (
            "SELECT *, topic(2) AS rule_thing, topic(3) AS rule_kind, timestamp() AS rule_received_ms, "
            f"clientid() AS rule_client_id FROM 'battwin/+/{kind}'"
        )
        firehose = {
            "Firehose": {
                "DeliveryStreamName": "LakeFirehose",
                "RoleArn": "IotFirehoseRole.Arn",
                "Separator": "\n",
                "BatchMode": False,
            }
        }
        ingest = {"Lambda": {"FunctionArn": "IngestFunction.Arn"}}
        assert payload["Actions"] == ([firehose] if kind == "telemetry" else [firehose, ingest])
        err = payload["ErrorAction"]["S3"]
        assert (
            err["BucketName"] == "DataBucket" and err["Key"] == "dead-letter/rule-errors/${topic()}/${newuuid()}.json"
        )
        arn = f"arn:aws:iot:us-east-1:123456789012:rule/fleet1_{kind}"
        assert (arn in permissions) == (kind != "telemetry")
    assert len(permissions) == len(KINDS)  # one per rule that invokes the ingest (the presence rule's too)


def _statements(tpl: dict[str, Any], r: Resolver) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for logical, res in tpl["Resources"].items():
        if res["Type"] == "AWS::IAM::Role":
            for pol in r.properties(logical).get("Policies", []):
                out += [(logical, s) for s in pol["PolicyDocument"]["Statement"]]
        if res["Type"] == "AWS::IAM::Policy":
            out += [(logical, s) for s in r.properties(logical)["PolicyDocument"]["Statement"]]
    return out


def test_iam_least_privilege(tpl: dict[str, Any]) -> None:
    r = static_resolver(tpl, GreengrassTokenExchangeRoleName="TES")
    stmts = _statements(tpl, r)
    assert len(stmts) > 30
    for logical, s in stmts:
        actions = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
        resources = s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]]
        for a in actions:
            assert "*" not in a, (logical, a)  # no action wildcards
        if "*" in resources:
            assert set(actions) == STAR_ALLOWED[s["Sid"]], (logical, s)
        for res in resources:
            ref_is_arn = tpl["Resources"].get(res, {}).get("Type") == "AWS::SNS::Topic"  # a topic's Ref is its ARN
            assert res == "*" or ":" in res or "." in res or ref_is_arn, (logical, res)
    # the training image repository is derived from the image URI
    pull = next(s for lg, s in stmts if lg == "SageMakerTrainingRole" and s["Sid"] == "PullTrainingImage")
    assert pull["Resource"] == "arn:aws:ecr:eu-west-1:763104351884:repository/tensorflow-training"


#: what a Lambda may reach that is not one of the stack's own resources, and why (RELIABILITY.md, "least
#: privilege"); anything else a Lambda role names fails test_lambdas_reach_only_the_stacks_own_resources
NOT_THE_STACKS = {
    (
        "PromoteRole",
        "ModelComponent",
        "arn:${AWS::Partition}:greengrass:${AWS::Region}:${AWS::AccountId}:components:${ModelComponentName}",
    ): "the model component the promote Lambda publishes versions of",
    (
        "PromoteRole",
        "ReadCurrentDeployment",
        "arn:${AWS::Partition}:greengrass:${AWS::Region}:${AWS::AccountId}:deployments:*",
    ): "a deployment's id is only known after it was created",
    (
        "PromoteRole",
        "TagDeployments",
        "arn:${AWS::Partition}:greengrass:${AWS::Region}:${AWS::AccountId}:deployments:*",
    ): ("a deployment's id is only known after it was created"),
    (
        "PromoteRole",
        "DeploymentDependentIotActions",
        "arn:${AWS::Partition}:iot:${AWS::Region}:${AWS::AccountId}:thinggroup/${ThingGroupName}",
    ): "the fleet's thing group the model is deployed to",
    (
        "PromoteRole",
        "DeploymentDependentIotActions",
        "arn:${AWS::Partition}:iot:${AWS::Region}:${AWS::AccountId}:job/*",
    ): ("Greengrass deploys through an IoT job it names itself"),
    (
        "PromoteRole",
        "DeploymentDependentIotActions",
        "arn:${AWS::Partition}:iot:${AWS::Region}:${AWS::AccountId}:thing/*",
    ): "the group's things are only known at deployment time",
}


def lambda_roles(tpl: dict[str, Any]) -> set[str]:
    """The roles the template's Lambda functions run as (each must be a role of the template)."""
    roles = set()
    for res in tpl["Resources"].values():
        if res["Type"] == "AWS::Lambda::Function":
            role = res["Properties"]["Role"]
            assert isinstance(role, dict) and set(role) == {"Fn::GetAtt"}, role
            roles.add(role["Fn::GetAtt"][0])
    assert all(tpl["Resources"][r]["Type"] == "AWS::IAM::Role" for r in roles), roles
    return roles


def _sub_text(node: Any) -> str | None:
    if isinstance(node, dict) and set(node) == {"Fn::Sub"}:
        body = node["Fn::Sub"]
        return body if isinstance(body, str) else None
    return None


def foreign_resources(tpl: dict[str, Any], roles: set[str]) -> list[tuple[str, str, str]]:
    """(role, Sid, resource) for every Resource of these roles' inline policies that is not one of the stack's own:
    own = Ref / GetAtt of a resource of the template, a Sub that starts with such a resource's ``${X.Arn}`` /
    ``${X}``, or a Sub naming a resource by the stack's ``${ResourcePrefix}``. A "*" is foreign too."""
    own = set(tpl["Resources"])
    found = []
    for role in sorted(roles):
        for pol in tpl["Resources"][role]["Properties"].get("Policies", []):
            for s in pol["PolicyDocument"]["Statement"]:
                resources = s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]]
                for res in resources:
                    if isinstance(res, dict) and set(res) == {"Fn::GetAtt"} and res["Fn::GetAtt"][0] in own:
                        continue
                    if isinstance(res, dict) and set(res) == {"Ref"} and res["Ref"] in own:
                        continue
                    text = _sub_text(res)
                    if text is not None:
                        head = re.match(r"\$\{([A-Za-z0-9]+)(?:\.Arn)?\}", text)
                        if head and head.group(1) in own:
                            continue
                        if re.search(r":[a-z-]+/\$\{ResourcePrefix\}[-_]", text):
                            continue
                    found.append((role, str(s.get("Sid", "")), text if text is not None else str(res)))
    return found


def test_lambdas_reach_only_the_stacks_own_resources(tpl: dict[str, Any]) -> None:
    roles = lambda_roles(tpl)
    assert roles == {"IngestRole", "ApiRole", "RetrainStartRole", "PromoteRole", "SilenceCheckRole", "LakeExpandRole"}
    foreign = foreign_resources(tpl, roles)
    stars = [f for f in foreign if f[2] == "*"]
    assert stars == [("PromoteRole", "DeploymentApisHaveNoResourceLevelPermissions", "*")]
    assert [f for f in foreign if f[2] != "*"] == list(NOT_THE_STACKS)  # each one listed with its reason
    # the stack-prefixed names are the stack's own: the Glue database and tables, the training jobs
    glue_db = next(v for v in tpl["Resources"].values() if v["Type"] == "AWS::Glue::Database")
    assert _sub_text(glue_db["Properties"]["DatabaseInput"]["Name"]) == "${ResourcePrefix}_lake"


def test_a_foreign_resource_in_a_lambda_role_is_caught(tpl: dict[str, Any]) -> None:
    """Positive control for the check above: ARNs that are not the stack's own are reported."""
    own = foreign_resources(tpl, {"IngestRole"})
    doctored = copy.deepcopy(tpl)
    statements = doctored["Resources"]["IngestRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    statements.append(
        {
            "Sid": "Foreign",
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": [
                "arn:aws:s3:::someone-elses-bucket/*",
                {"Fn::Sub": "arn:${AWS::Partition}:s3:::${CodeBucket}/*"},  # a parameter, not a resource of the stack
                {"Fn::GetAtt": ["NotInThisStack", "Arn"]},
                {
                    "Fn::Sub": "arn:${AWS::Partition}:dynamodb:${AWS::Region}:${AWS::AccountId}:"
                    "table/other-${ResourcePrefix}"
                },
            ],
        }
    )
    caught = foreign_resources(doctored, {"IngestRole"})
    assert [c for c in caught if c not in own] == [
        ("IngestRole", "Foreign", "arn:aws:s3:::someone-elses-bucket/*"),
        ("IngestRole", "Foreign", "arn:${AWS::Partition}:s3:::${CodeBucket}/*"),
        ("IngestRole", "Foreign", "{'Fn::GetAtt': ['NotInThisStack', 'Arn']}"),
        (
            "IngestRole",
            "Foreign",
            "arn:${AWS::Partition}:dynamodb:${AWS::Region}:${AWS::AccountId}:table/other-${ResourcePrefix}",
        ),
    ]


def test_lambda_handlers_and_environment(tpl: dict[str, Any]) -> None:
    r = static_resolver(tpl)
    functions = {k: r.properties(k) for k, v in tpl["Resources"].items() if v["Type"] == "AWS::Lambda::Function"}
    assert len(functions) == 6
    for props in functions.values():
        module, func = props["Handler"].rsplit(".", 1)
        assert callable(getattr(importlib.import_module(module), func))
        assert props["Runtime"] == LAMBDA_RUNTIME == "python3.13" and props["Architectures"] == [LAMBDA_ARCHITECTURE]
        assert props["Code"] == {"S3Bucket": "code", "S3Key": "lambda.zip"}
        assert not any(k.startswith("AWS_") for k in props["Environment"]["Variables"])  # reserved by Lambda


def test_api_routes_and_authorisation(tpl: dict[str, Any]) -> None:
    res = {k: v for k, v in tpl["Resources"].items() if v["Type"] == "AWS::ApiGateway::Resource"}
    paths = {}
    for logical, v in res.items():
        parent = v["Properties"]["ParentId"]
        chain = [v["Properties"]["PathPart"]]
        while isinstance(parent, dict) and "Ref" in parent:
            chain.insert(0, res[parent["Ref"]]["Properties"]["PathPart"])
            parent = res[parent["Ref"]]["Properties"]["ParentId"]
        paths[logical] = "/" + "/".join(chain)
    assert set(paths.values()) == {
        "/devices",
        "/devices/{thing}",
        "/devices/{thing}/history",
        "/devices/{thing}/cycles",
    }
    for mode, expected in (("IAM", "AWS_IAM"), ("COGNITO", "COGNITO_USER_POOLS")):
        r = static_resolver(tpl, ApiAuth=mode, CognitoUserPoolArn="arn:aws:cognito-idp:us-east-1:1:userpool/p")
        methods = [r.properties(k) for k, v in tpl["Resources"].items() if v["Type"] == "AWS::ApiGateway::Method"]
        assert len(methods) == 4
        for m in methods:
            assert m["HttpMethod"] == "GET" and m["AuthorizationType"] == expected
            assert ("AuthorizerId" in m) == (mode == "COGNITO")
            assert m["Integration"]["Type"] == "AWS_PROXY" and "ApiFunction.Arn" in m["Integration"]["Uri"]


def test_retraining_events(tpl: dict[str, Any]) -> None:
    r = static_resolver(tpl, ResourcePrefix="fleet1")
    pattern = r.properties("TrainingCompletedRule")["EventPattern"]
    assert pattern["detail-type"] == ["SageMaker Training Job State Change"]
    assert pattern["detail"]["TrainingJobName"] == [{"prefix": "fleet1-soh-"}]
    assert r.properties("PromoteFunction")["Environment"]["Variables"]["JOB_PREFIX"] == "fleet1-soh"
    assert r.properties("RetrainStartFunction")["Environment"]["Variables"]["JOB_PREFIX"] == "fleet1-soh"
    assert r.properties("RetrainScheduleRule")["ScheduleExpression"] == "rate(7 days)"


def test_glue_tables_match_the_firehose_records(tpl: dict[str, Any]) -> None:
    """Every field of a lake record (the kind's rule's SQL on a real message) is a column of its kind's table and vice
    versa, and every field of the message body is a field of the table's ``body`` struct (the partition keys aside)."""
    r = static_resolver(tpl)
    tables = {
        r.properties(k)["TableInput"]["Name"]: r.properties(k)
        for k, v in tpl["Resources"].items()
        if v["Type"] == "AWS::Glue::Table"
    }
    assert set(tables) == set(KINDS)
    now = time.time() - 9000
    msgs = [Envelope.model_validate_json(p) for _t, p in run_agent("glue-check", 2.5, now - 2000)]
    msgs.append(
        envelope(
            "glue-check",
            "alarms",
            Alarm(
                ts=now,
                code="over_temperature",
                severity="warning",
                message="hot",
                details={"temperature_c": 61.0},
                source_id="x",
            ),
            ts=now,
        )
    )
    for kind in KINDS:
        table = tables[kind]["TableInput"]
        sd = table["StorageDescriptor"]
        assert sd["Location"] == f"s3://DataBucket/{partition_prefix('lake/', kind)}"
        # partition projection on the day: no partition is ever registered
        assert [k["Name"] for k in table["PartitionKeys"]] == ["dt"]
        params = table["Parameters"]
        assert params["projection.enabled"] == "true" and params["projection.dt.type"] == "date"
        assert params["projection.dt.format"] == "yyyy-MM-dd" and params["projection.dt.range"].endswith(",NOW")
        assert params["storage.location.template"] == f"s3://DataBucket/{partition_prefix('lake/', kind)}dt=${{dt}}/"
        columns = {c["Name"]: c["Type"] for c in sd["Columns"]}
        env = next(m for m in msgs if m.kind == kind)
        raw = encode_envelope(env.thing, kind, env.parsed_body(), env.ts, env.id)
        rule = r.properties(f"{kind.capitalize()}Rule")["TopicRulePayload"]
        record = RuleQuery(rule["Sql"]).evaluate(Message(f"battwin/{env.thing}/{kind}", raw, 1, client_id=env.thing))
        assert set(columns) == set(record), kind
        assert firehose_partition(record) == {"kind": kind, "dt": utc_day(env.ts)}
        body_type = columns["body"]
        if kind == "telemetry":
            sample_fields = set(Sample.model_fields)
            struct = re.findall(r"(\w+):", body_type.split("array<struct<", 1)[1])
            assert set(struct) - {"double", "string"} == sample_fields
            continue
        # the struct's top-level fields: names at nesting depth 1
        depth, names, token = 0, [], ""
        for ch in body_type:
            if ch == "<":
                depth += 1
                token = ""
            elif ch == ">":
                depth -= 1
            elif ch == ",":
                token = ""
            elif ch == ":" and depth == 1:
                names.append(token)
            else:
                token += ch
        assert set(names) == set(BODY_TYPES[kind].model_fields), kind


def test_lake_firehose_stream_buffers_and_partitions(tpl: dict[str, Any]) -> None:
    """The lake's telemetry: few large objects (128 MB / 15 min buffers, gzip), partitioned by kind and day with
    the query the local stack mirrors, failures under the dead-letter prefix and told by an alarm."""
    r = static_resolver(tpl)
    dest = r.properties("LakeFirehose")["ExtendedS3DestinationConfiguration"]
    assert dest["BufferingHints"] == {"SizeInMBs": 128, "IntervalInSeconds": 900}
    assert dest["CompressionFormat"] == "GZIP"
    assert dest["Prefix"] == "lake/kind=!{partitionKeyFromQuery:kind}/dt=!{partitionKeyFromQuery:dt}/"
    assert dest["ErrorOutputPrefix"].startswith("dead-letter/firehose/!{firehose:error-output-type}/")
    assert dest["DynamicPartitioningConfiguration"]["Enabled"] is True
    # Firehose runs the Lambda transform (packed telemetry -> lake rows) before the partition query
    transform, proc = dest["ProcessingConfiguration"]["Processors"]
    assert transform["Type"] == "Lambda"
    lam = {p["ParameterName"]: p["ParameterValue"] for p in transform["Parameters"]}
    assert lam["LambdaArn"] == "LakeExpandFunction.Arn"
    assert r.properties("LakeExpandFunction")["Handler"] == "cloud.lake_expand.handler.handler"
    # its input buffer: 0.25 MB of packed records expand to at most ~2.5 MB, under Lambda's 6 MB response
    assert 0.2 <= float(lam["BufferSizeInMBs"]) <= 0.5
    assert proc["Type"] == "MetadataExtraction"
    params = {p["ParameterName"]: p["ParameterValue"] for p in proc["Parameters"]}
    assert params == {"MetadataExtractionQuery": FIREHOSE_PARTITION_JQ, "JsonParsingEngine": "JQ-1.6"}
    invoke = {s["Sid"]: s for _lg, s in _statements(tpl, r) if _lg == "LakeFirehoseRole"}["Transform"]
    assert invoke["Resource"] == "LakeExpandFunction.Arn"
    # its role writes only the lake and its error prefix; the rule's role puts only to this stream
    stmts = {s["Sid"]: s for _lg, s in _statements(tpl, r) if _lg == "LakeFirehoseRole"}
    assert stmts["LakeObjects"]["Resource"] == ["DataBucket.Arn/lake/*", "DataBucket.Arn/dead-letter/firehose/*"]
    (put,) = [s for lg, s in _statements(tpl, r) if lg == "IotFirehoseRole"]
    assert put["Resource"] == "arn:aws:firehose:us-east-1:123456789012:deliverystream/battwin-lake"
    assert r.properties("LakeFirehose")["DeliveryStreamName"] == "battwin-lake"
    alarm = r.properties("LakeFirehoseDeliveryAlarm")
    assert (alarm["Namespace"], alarm["MetricName"]) == ("AWS/Firehose", "DeliveryToS3.Success")
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("LessThanThreshold", 1)


def test_quicksight_analysis_has_five_visuals_over_declared_columns(tpl: dict[str, Any]) -> None:
    r = static_resolver(tpl, QuickSightPrincipalArn="arn:aws:quicksight:us-east-1:123456789012:user/default/a")
    assert r.condition("CreateDashboards")
    datasets = {}
    glue = {
        r.properties(k)["TableInput"]["Name"] for k, v in tpl["Resources"].items() if v["Type"] == "AWS::Glue::Table"
    }
    for logical, v in tpl["Resources"].items():
        if v["Type"] == "AWS::QuickSight::DataSet":
            props = r.properties(logical)
            (table,) = props["PhysicalTableMap"].values()
            sql = table["CustomSql"]["SqlQuery"]
            assert set(re.findall(r'"battwin_lake"\."(\w+)"', sql)) <= glue
            datasets[props["DataSetId"]] = {c["Name"] for c in table["CustomSql"]["Columns"]}
    definition = r.properties("FleetAnalysis")["Definition"]
    ids = {d["Identifier"]: d["DataSetArn"].rsplit("/", 1)[1] for d in definition["DataSetIdentifierDeclarations"]}
    assert set(ids.values()) == set(datasets)
    (sheet,) = definition["Sheets"]
    visuals = sheet["Visuals"]
    kinds = [next(iter(v)) for v in visuals]
    assert len(visuals) == 5 and kinds.count("LineChartVisual") == 3 and "HistogramVisual" in kinds
    columns_used = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "DataSetIdentifier" in node and "ColumnName" in node:
                columns_used.append((node["DataSetIdentifier"], node["ColumnName"]))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(visuals)
    assert len(columns_used) >= 15
    for ident, column in columns_used:
        assert column in datasets[ids[ident]], (ident, column)
    layout = sheet["Layouts"][0]["Configuration"]["GridLayout"]["Elements"]
    assert {e["ElementId"] for e in layout} == {next(iter(v.values()))["VisualId"] for v in visuals}
    off = static_resolver(tpl)
    assert not off.condition("CreateDashboards")


def test_the_dashboards_data_sets_read_only_their_days_of_the_lake(tpl: dict[str, Any]) -> None:
    """Every QuickSight data set filters the lake by its ``dt`` partition (Athena then scans only those days):
    live telemetry the last day, cycles / health / alarms the ``DashboardDays`` parameter's."""
    r = static_resolver(
        tpl, QuickSightPrincipalArn="arn:aws:quicksight:us-east-1:123456789012:user/default/a", DashboardDays="90"
    )
    days = {}
    for logical, v in tpl["Resources"].items():
        if v["Type"] == "AWS::QuickSight::DataSet":
            (table,) = r.properties(logical)["PhysicalTableMap"].values()
            sql = table["CustomSql"]["SqlQuery"]
            scans = re.findall(
                r'FROM "battwin_lake"\."(\w+)"\s+WHERE dt >= date_format\(current_date - interval \'(\d+)\' day', sql
            )
            assert scans and len(scans) == len(re.findall(r'"battwin_lake"\.', sql)), logical
            days.update({table_name: int(n) for table_name, n in scans})
    assert days == {"telemetry": 1, "cycles": 90, "health": 90, "alarms": 90}


def test_no_references_to_types_some_emulators_skip(tpl: dict[str, Any]) -> None:
    """Supported resources reference IoT rules, thing groups, Glue, Athena and QuickSight only by name."""
    from tests.cloud.conftest import MOTO_SKIPPED_TYPES

    skipped = {k for k, v in tpl["Resources"].items() if v["Type"] in MOTO_SKIPPED_TYPES}
    conditions = {k: v.get("Condition") for k, v in tpl["Resources"].items()}
    text_refs: list[tuple[str, str]] = []

    def refs(node: Any, guard: str | None = None) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "Fn::If":  # a reference under the resource's own condition is only made with it
                    refs(value[1], value[0])
                    refs(value[2], guard)
                    continue
                if key == "Ref" and isinstance(value, str):
                    if not (guard and conditions.get(value) == guard):
                        text_refs.append(("Ref", value))
                elif key == "Fn::GetAtt":
                    text_refs.append(("GetAtt", value[0] if isinstance(value, list) else value.split(".")[0]))
                elif key == "Fn::Sub":
                    text = value if isinstance(value, str) else value[0]
                    text_refs.extend(("Sub", m.split(".")[0]) for m in re.findall(r"\$\{([^!}][^}]*)\}", text))
                refs(value, guard)
        elif isinstance(node, list):
            for v in node:
                refs(v, guard)

    for logical, res in tpl["Resources"].items():
        if logical in skipped:
            continue
        text_refs.clear()
        refs(res)
        assert not [x for x in text_refs if x[1] in skipped], logical
    text_refs.clear()
    refs(tpl["Outputs"])
    assert not [x for x in text_refs if x[1] in skipped]


def test_template_file_is_where_the_cli_expects_it() -> None:
    from cloud.deploy import TEMPLATE as DEPLOY_TEMPLATE

    assert Path(DEPLOY_TEMPLATE) == TEMPLATE


#: SageMaker TensorFlow training images: (uri, whether the code runs on it)
IMAGES = [
    ("763104351884.dkr.ecr.eu-west-1.amazonaws.com/tensorflow-training:2.19.0-cpu-py312", True),
    (
        "763104351884.dkr.ecr.us-east-1.amazonaws.com/tensorflow-training:2.19.0-gpu-py312-cu125-ubuntu22.04-sagemaker",
        True,
    ),
    ("763104351884.dkr.ecr.us-east-1.amazonaws.com/tensorflow-training:2.21.0-cpu-py313", True),
    ("763104351884.dkr.ecr.eu-west-1.amazonaws.com/tensorflow-training:2.18.0-cpu-py310", False),
    ("763104351884.dkr.ecr.eu-west-1.amazonaws.com/tensorflow-training:2.16.2-gpu-py310", False),
    ("763104351884.dkr.ecr.eu-west-1.amazonaws.com/tensorflow-training:2.19.0-cpu-py310", False),
    ("763104351884.dkr.ecr.eu-west-1.amazonaws.com/tensorflow-training:2.9.1-cpu-py39", False),
    ("123456789012.dkr.ecr.eu-west-1.amazonaws.com/my-trainer:latest", False),
]


def test_training_image_pattern_is_the_one_the_retrain_lambda_checks(tpl: dict[str, Any]) -> None:
    assert tpl["Parameters"]["TrainingImageUri"]["AllowedPattern"] == f"^$|{TRAINING_IMAGE_PATTERN}"


@pytest.mark.parametrize(("uri", "supported"), IMAGES, ids=[u.split(":")[-1] for u, _ in IMAGES])
def test_training_images_whose_python_the_code_does_not_support_are_refused(
    tpl: dict[str, Any], uri: str, supported: bool
) -> None:
    # CloudFormation matches AllowedPattern against the whole value
    assert bool(re.fullmatch(tpl["Parameters"]["TrainingImageUri"]["AllowedPattern"], uri)) == supported
    settings = {"bucket": "b", "registry_table": "t", "role_arn": "arn:r", "source_uri": "s3://c/src.tar.gz"}
    if supported:
        assert StartSettings(image_uri=uri, **settings).image_uri == uri
    else:
        with pytest.raises(ValueError, match="image_uri"):
            StartSettings(image_uri=uri, **settings)


def test_training_image_defaults_to_the_pinned_one_in_the_stack_region(tpl: dict[str, Any]) -> None:
    r = static_resolver(tpl, TrainingImageUri="")
    pinned = PINNED_TRAINING_IMAGE.format(region=r.pseudo["AWS::Region"])
    assert re.fullmatch(TRAINING_IMAGE_PATTERN, pinned)
    env = r.properties("RetrainStartFunction")["Environment"]["Variables"]
    assert env["TRAINING_IMAGE_URI"] == pinned
    stmts = _statements(tpl, r)
    pull = next(s for lg, s in stmts if lg == "SageMakerTrainingRole" and s["Sid"] == "PullTrainingImage")
    assert pull["Resource"] == f"arn:aws:ecr:{r.pseudo['AWS::Region']}:763104351884:repository/tensorflow-training"
    # a given image is used as given
    given = IMAGES[2][0]
    env = static_resolver(tpl, TrainingImageUri=given).properties("RetrainStartFunction")["Environment"]["Variables"]
    assert env["TRAINING_IMAGE_URI"] == given


def test_token_exchange_role_reads_the_gdk_artifact_bucket(tpl: dict[str, Any]) -> None:
    bucket = "battwin-greengrass-artifacts-eu-west-1-123456789012"
    r = static_resolver(tpl, GreengrassTokenExchangeRoleName="TES", ComponentArtifactBucket=bucket)
    assert r.condition("GrantArtifactRead")
    props = r.properties("TokenExchangeArtifactReadPolicy")
    assert props["Roles"] == ["TES"]
    (statement,) = props["PolicyDocument"]["Statement"]
    assert statement["Effect"] == "Allow" and statement["Action"] == "s3:GetObject"
    assert statement["Resource"] == [
        f"arn:aws:s3:::{bucket}/com.battwin.Agent/*",
        f"arn:aws:s3:::{bucket}/com.battwin.SohModel/*",
    ]
    # no policy without the role or without the bucket
    assert not static_resolver(tpl, ComponentArtifactBucket=bucket).condition("GrantArtifactRead")
    assert not static_resolver(tpl, GreengrassTokenExchangeRoleName="TES").condition("GrantArtifactRead")
    # the bucket name is checked like S3 does (lower case, 3-63 characters)
    pattern = tpl["Parameters"]["ComponentArtifactBucket"]["AllowedPattern"]
    assert re.fullmatch(pattern, bucket) and re.fullmatch(pattern, "")
    assert not re.fullmatch(pattern, "Battwin_Artifacts") and not re.fullmatch(pattern, "arn:aws:s3:::x")
