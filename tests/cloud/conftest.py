"""Fixtures of the cloud tests: a moto server (real HTTP), the stack created on it through CloudFormation by
the deployer, the Lambda environments moto recorded, and real device messages."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from cloud.aws import reset_clients
from cloud.deploy import DeployResult, deploy
from tests.cloud.cloud_support import ACCOUNT, REGION, Resolver, load_template, run_agent
from tests.support import real_component, slow_fixture

STACK = "battwin-test"
TEST_PARAMS = {
    "TrainingImageUri": "763104351884.dkr.ecr.us-east-1.amazonaws.com/tensorflow-training:2.19.0-cpu-py312",
    "QuickSightPrincipalArn": f"arn:aws:quicksight:{REGION}:{ACCOUNT}:user/default/fleet-admin",
    "GreengrassTokenExchangeRoleName": "GreengrassV2TokenExchangeRole",
    "ComponentArtifactBucket": "battwin-greengrass-artifacts-us-east-1-123456789012",
    "AgentComponentVersion": "1.2.0",
    "TrainOnSimulated": "true",
    "MinValidRows": "3",
    "RawTelemetryTtlDays": "2",
}
FUNCTIONS = {
    "ingest": "IngestFunction",
    "api": "ApiFunction",
    "start": "RetrainStartFunction",
    "promote": "PromoteFunction",
    "silence": "SilenceCheckFunction",
}


@pytest.fixture(scope="package")
@real_component("moto server")
def moto_endpoint() -> Iterator[str]:
    """A moto server on a free port, and an environment in which boto3 talks to it (restored afterwards)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
            mp.delenv(var, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", REGION)
        mp.setenv("AWS_REGION", REGION)
        mp.setenv("AWS_ENDPOINT_URL", endpoint)
        mp.setenv("AWS_CONFIG_FILE", os.devnull)
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        reset_clients()
        try:
            yield endpoint
        finally:
            reset_clients()
            server.stop()


@pytest.fixture(scope="package")
def aws(moto_endpoint: str) -> dict[str, Any]:
    """boto3 clients on the moto server (the test's own, independent of the handlers' cached ones)."""
    names = [
        "cloudformation",
        "s3",
        "dynamodb",
        "lambda",
        "iam",
        "iot",
        "glue",
        "events",
        "apigateway",
        "sagemaker",
        "athena",
        "quicksight",
        "sqs",
        "logs",
        "sns",
        "cloudwatch",
        "firehose",
    ]
    return {n: boto3.client(n, region_name=REGION, endpoint_url=moto_endpoint) for n in names}


@pytest.fixture(scope="package")
def stack(aws: dict[str, Any]) -> DeployResult:
    """The template deployed to moto by the real deployer (packages and uploads the code, creates the stack)."""
    aws["iam"].create_role(  # the core devices' token exchange role exists before the stack (Greengrass setup)
        RoleName=TEST_PARAMS["GreengrassTokenExchangeRoleName"],
        AssumeRolePolicyDocument='{"Version":"2012-10-17","Statement":[{"Effect":"Allow",'
        '"Principal":{"Service":"credentials.iot.amazonaws.com"},"Action":"sts:AssumeRole"}]}',
    )
    result = deploy(STACK, params=TEST_PARAMS, artifact_bucket="battwin-test-artifacts", say=lambda _t: None)
    assert result.status == "CREATE_COMPLETE", result
    return result


@pytest.fixture(scope="package")
def physical_ids(aws: dict[str, Any], stack: DeployResult) -> dict[str, str]:
    resources = aws["cloudformation"].describe_stack_resources(StackName=STACK)["StackResources"]
    return {r["LogicalResourceId"]: str(r.get("PhysicalResourceId")) for r in resources if r.get("LogicalResourceId")}


@pytest.fixture(scope="package")
def template() -> dict[str, Any]:
    return load_template()


@pytest.fixture(scope="package")
def resolver(
    aws: dict[str, Any], stack: DeployResult, physical_ids: dict[str, str], template: dict[str, Any]
) -> Resolver:
    def get_att(logical: str, attr: str) -> str:
        rtype = template["Resources"][logical]["Type"]
        pid = physical_ids[logical]
        if rtype == "AWS::Lambda::Function" and attr == "Arn":
            return str(aws["lambda"].get_function(FunctionName=pid)["Configuration"]["FunctionArn"])
        if rtype == "AWS::IAM::Role" and attr == "Arn":
            return str(aws["iam"].get_role(RoleName=pid)["Role"]["Arn"])
        if rtype == "AWS::S3::Bucket" and attr == "Arn":
            return f"arn:aws:s3:::{pid}"
        if rtype == "AWS::DynamoDB::Table" and attr == "Arn":
            return str(aws["dynamodb"].describe_table(TableName=pid)["Table"]["TableArn"])
        if rtype == "AWS::SQS::Queue" and attr == "Arn":
            url = pid
            return str(
                aws["sqs"].get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            )
        if rtype == "AWS::SQS::Queue" and attr == "QueueName":
            return pid.rstrip("/").rsplit("/", 1)[-1]  # the physical id is the queue's URL
        if rtype == "AWS::Logs::LogGroup" and attr == "Arn":
            return f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{pid}:*"
        if rtype == "AWS::ApiGateway::RestApi" and attr == "RootResourceId":
            items = aws["apigateway"].get_resources(restApiId=pid)["items"]
            return str(next(i["id"] for i in items if i["path"] == "/"))
        if rtype == "AWS::Events::Rule" and attr == "Arn":
            return str(aws["events"].describe_rule(Name=pid)["Arn"])
        raise KeyError(f"GetAtt {logical}.{attr} ({rtype})")

    return Resolver(template, TEST_PARAMS, STACK, physical_ids, get_att)


@pytest.fixture(scope="package")
def lambda_env(aws: dict[str, Any], physical_ids: dict[str, str]) -> dict[str, dict[str, str]]:
    """Each function's environment as CloudFormation configured it on moto (what the handler sees on AWS)."""
    out = {}
    for short, logical in FUNCTIONS.items():
        conf = aws["lambda"].get_function_configuration(FunctionName=physical_ids[logical])
        out[short] = {k: str(v) for k, v in conf["Environment"]["Variables"].items()}  # moto keeps Number params as int
    return out


@pytest.fixture
def use_env(monkeypatch: pytest.MonkeyPatch, lambda_env: dict[str, dict[str, str]]) -> Any:
    """``use_env("ingest")``: put that function's environment into os.environ for an in-process call."""

    def apply(name: str, **overrides: str) -> dict[str, str]:
        env = {**lambda_env[name], **overrides}
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        return env

    return apply


# -- device data ------------------------------------------------------------------------------------

#: simulated fleet time: two days ago, on the hour (every time stamp stays in the past)
FLEET_START = float(int(time.time() // 3600) * 3600 - 2 * 86_400)


@pytest.fixture(scope="package")
def device_a_messages() -> list[tuple[str, bytes]]:
    """Everything the real agent publishes in 2.5 simulated hours at default settings (incl. a discharge)."""
    msgs = run_agent("bt-a", 2.5, FLEET_START)
    kinds = {t.rsplit("/", 1)[1] for t, _ in msgs}
    assert {"telemetry", "cycles", "health"} <= kinds, kinds
    return msgs


@pytest.fixture(scope="package")
def device_b_records() -> list[tuple[str, bytes]]:
    """Cycle, health and alarm messages of 30 simulated hours of a faster-ageing battery (no telemetry)."""
    msgs = run_agent("bt-b", 30.0, FLEET_START, source="simulator:?seed=2", ageing_factor=40.0)
    out = [(t, p) for t, p in msgs if not t.endswith("/telemetry")]
    assert sum(1 for t, _ in out if t.endswith("/cycles")) >= 8
    return out


# -- the types moto's CloudFormation skips, created through the service APIs on moto ----------------

#: resource types of the template that moto's CloudFormation does not create (it logs and skips them)
MOTO_SKIPPED_TYPES = {
    "AWS::S3::BucketPolicy",
    "AWS::Lambda::EventInvokeConfig",
    "AWS::IoT::ThingGroup",
    "AWS::IoT::TopicRule",
    "AWS::ApiGateway::Stage",
    "AWS::ApiGateway::Authorizer",
    "AWS::Glue::Database",
    "AWS::Glue::Table",
    "AWS::Athena::WorkGroup",
    "AWS::QuickSight::DataSource",
    "AWS::QuickSight::DataSet",
    "AWS::QuickSight::Analysis",
    "AWS::QuickSight::Template",
    "AWS::QuickSight::Dashboard",
    "AWS::CloudWatch::Alarm",
    "AWS::KinesisFirehose::DeliveryStream",
    "AWS::Logs::LogStream",
    "AWS::SNS::Subscription",  # conditional: only with an AlarmEmail (the tests deploy without one)
}


def _of_type(template: dict[str, Any], rtype: str) -> list[str]:
    return sorted(k for k, v in template["Resources"].items() if v["Type"] == rtype)


@pytest.fixture(scope="package")
def skipped_created(
    aws: dict[str, Any], resolver: Resolver, template: dict[str, Any], physical_ids: dict[str, str]
) -> dict[str, Any]:
    """Create every skipped resource from its resolved template properties with the service's API on moto.

    botocore validates each request against the service model, so a property that the API would reject
    (wrong name, type or shape) fails here. Returns what was created, by logical id.
    """
    from tests.cloud.cloud_support import lower_camel

    made: dict[str, Any] = {}
    rest_api = physical_ids["RestApi"]
    deployments = aws["apigateway"].get_deployments(restApiId=rest_api)["items"]
    resolver.physical_ids["ApiDeployment"] = deployments[0]["id"]

    # DynamoDB TTL: moto's CloudFormation ignores TimeToLiveSpecification; apply it with UpdateTimeToLive
    ttl = resolver.properties("HistoryTable")["TimeToLiveSpecification"]
    aws["dynamodb"].update_time_to_live(TableName=physical_ids["HistoryTable"], TimeToLiveSpecification=ttl)
    made["HistoryTable.TimeToLiveSpecification"] = ttl

    props = resolver.properties("DataBucketPolicy")
    import json

    aws["s3"].put_bucket_policy(Bucket=props["Bucket"], Policy=json.dumps(props["PolicyDocument"]))
    made["DataBucketPolicy"] = json.loads(aws["s3"].get_bucket_policy(Bucket=props["Bucket"])["Policy"])
    # moto evaluates bucket policies without their conditions, so the TLS-only Deny would refuse every request
    # of the (plain HTTP) tests: the policy was accepted and read back; take it off again
    aws["s3"].delete_bucket_policy(Bucket=props["Bucket"])

    props = resolver.properties("IngestEventInvokeConfig")
    aws["lambda"].put_function_event_invoke_config(**props)
    made["IngestEventInvokeConfig"] = props

    for logical in _of_type(template, "AWS::Logs::LogStream"):  # the Firehose stream's delivery log
        props = resolver.properties(logical)
        aws["logs"].create_log_stream(logGroupName=props["LogGroupName"], logStreamName=props["LogStreamName"])
        resolver.physical_ids[logical] = props["LogStreamName"]
        made[logical] = props
    # the lake's Firehose stream (botocore validates the request; moto keeps it and writes records straight to S3)
    for logical in _of_type(template, "AWS::KinesisFirehose::DeliveryStream"):
        props = resolver.properties(logical)
        aws["firehose"].create_delivery_stream(**props)
        resolver.physical_ids[logical] = props["DeliveryStreamName"]
        made[logical] = props

    # CloudWatch alarms (moto's CloudFormation skips them): PutMetricAlarm validates each one's properties
    for logical in _of_type(template, "AWS::CloudWatch::Alarm"):
        props = resolver.properties(logical)
        aws["cloudwatch"].put_metric_alarm(**props)
        made[logical] = props

    props = resolver.properties("FleetThingGroup")
    made["FleetThingGroup"] = aws["iot"].create_thing_group(**lower_camel(props))

    for logical in _of_type(template, "AWS::IoT::TopicRule"):
        props = resolver.properties(logical)
        aws["iot"].create_topic_rule(
            ruleName=props["RuleName"], topicRulePayload=lower_camel(props["TopicRulePayload"])
        )
        made[logical] = props

    props = resolver.properties("LakeDatabase")
    aws["glue"].create_database(**props)
    made["LakeDatabase"] = props
    for logical in _of_type(template, "AWS::Glue::Table"):
        props = resolver.properties(logical)
        aws["glue"].create_table(**props)
        made[logical] = props

    props = resolver.properties("AnalyticsWorkGroup")
    props["Configuration"] = props.pop("WorkGroupConfiguration")  # CFN's name for the API's Configuration
    assert props.pop("State") == "ENABLED"  # CreateWorkGroup always creates an enabled work group
    assert props.pop("RecursiveDeleteOption") is True  # CloudFormation-only: how the stack deletes it
    aws["athena"].create_work_group(**props)
    made["AnalyticsWorkGroup"] = props

    props = resolver.properties("ApiStage")
    settings = props.pop("MethodSettings")
    aws["apigateway"].create_stage(
        restApiId=props["RestApiId"], stageName=props["StageName"], deploymentId=props["DeploymentId"]
    )
    made["ApiStage"] = {**props, "MethodSettings": settings}

    # QuickSight: moto has data sources and data sets; the analysis is checked with botocore's Stubber
    props = resolver.properties("QuickSightDataSource")
    made["QuickSightDataSource"] = aws["quicksight"].create_data_source(**props)
    for logical in _of_type(template, "AWS::QuickSight::DataSet"):
        props = resolver.properties(logical)
        made[logical] = aws["quicksight"].create_data_set(**props)
    return made


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # moto logs every resource type its CloudFormation skips; those are expected (and asserted on)
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.filterwarnings("ignore:Tried to parse AWS:UserWarning"))


@pytest.fixture(scope="package")
@slow_fixture  # runs the agent for two devices through the ingest: tens of seconds
def ingested(
    aws: dict[str, Any],
    lambda_env: dict[str, dict[str, str]],
    skipped_created: dict[str, Any],
    device_a_messages: list[tuple[str, bytes]],
    device_b_records: list[tuple[str, bytes]],
) -> dict[str, Any]:
    """Devices A and B's messages delivered once each through the ingest Lambda's handler (DynamoDB) and through
    the rules' Firehose actions to the lake's stream (buffered delivery to S3): the fleet's data."""
    from cloud.ingest.handler import handler
    from tests.cloud.cloud_support import deliver_to_lake, rule_event

    outcomes = []
    with pytest.MonkeyPatch.context() as mp:
        for key, value in lambda_env["ingest"].items():
            mp.setenv(key, value)
        for topic, payload in [*device_a_messages, *device_b_records]:
            outcomes.append(handler(rule_event(topic, payload)))
    messages = [*device_a_messages, *device_b_records]
    lake = deliver_to_lake(aws["s3"], lambda_env["ingest"]["DATA_BUCKET"], messages)
    return {"outcomes": outcomes, "messages": messages, "lake_objects": lake.objects, "lake_records": lake.records}
