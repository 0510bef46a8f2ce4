"""The template deployed on a moto server through CloudFormation (by the real deployer), and the resource types
moto's CloudFormation skips created from the template's resolved properties through the service APIs."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.stub import Stubber

from cloud.package import LAMBDA_RUNTIME
from cloud.tables import HISTORY_BY_TIME_INDEX
from tests.cloud.cloud_support import ACCOUNT, REGION, Resolver, policy_document
from tests.cloud.conftest import FUNCTIONS, MOTO_SKIPPED_TYPES, STACK, TEST_PARAMS


def test_stack_is_created_with_outputs(aws: dict[str, Any], stack: Any, physical_ids: dict[str, str]) -> None:
    described = aws["cloudformation"].describe_stacks(StackName=STACK)["Stacks"][0]
    assert described["StackStatus"] == "CREATE_COMPLETE"
    outputs = stack.outputs
    assert outputs["DataBucketName"] == physical_ids["DataBucket"]
    assert outputs["HistoryTableName"] == physical_ids["HistoryTable"]
    assert outputs["ThingGroupArn"] == f"arn:aws:iot:{REGION}:{ACCOUNT}:thinggroup/battwin-fleet"
    assert outputs["GlueDatabaseName"] == "battwin_lake"
    assert outputs["ApiUrl"] == f"https://{physical_ids['RestApi']}.execute-api.{REGION}.amazonaws.com/v1"
    # the code was uploaded under content-addressed keys and the functions point at it
    code_key = {p["ParameterKey"]: p["ParameterValue"] for p in described["Parameters"]}["CodeKey"]
    assert code_key == stack.artifacts["CodeKey"] and code_key.startswith(f"{STACK}/lambda/")


def test_moto_created_and_skipped_exactly_the_expected_types(
    aws: dict[str, Any], template: dict[str, Any], stack: Any
) -> None:
    created = {
        r["ResourceType"]
        for r in aws["cloudformation"].describe_stack_resources(StackName=STACK)["StackResources"]
        if r.get("ResourceType")
    }
    declared = {r["Type"] for r in template["Resources"].values()}
    assert declared - created == MOTO_SKIPPED_TYPES
    assert {
        "AWS::DynamoDB::Table",
        "AWS::S3::Bucket",
        "AWS::Lambda::Function",
        "AWS::IAM::Role",
        "AWS::IoT::Policy",
        "AWS::Events::Rule",
        "AWS::ApiGateway::RestApi",
        "AWS::ApiGateway::Method",
        "AWS::SQS::Queue",
        "AWS::Lambda::Permission",
        "AWS::IAM::Policy",
        "AWS::Logs::LogGroup",
    } <= created


def test_tables(aws: dict[str, Any], physical_ids: dict[str, str]) -> None:
    ddb = aws["dynamodb"]
    history = ddb.describe_table(TableName=physical_ids["HistoryTable"])["Table"]
    assert [k["AttributeName"] for k in history["KeySchema"]] == ["pk", "sk"]
    gsi = {g["IndexName"]: g for g in history["GlobalSecondaryIndexes"]}
    assert [k["AttributeName"] for k in gsi[HISTORY_BY_TIME_INDEX]["KeySchema"]] == ["thing", "sk"]
    assert gsi[HISTORY_BY_TIME_INDEX]["Projection"]["ProjectionType"] == "KEYS_ONLY"
    state = ddb.describe_table(TableName=physical_ids["DeviceStateTable"])["Table"]
    assert [k["AttributeName"] for k in state["KeySchema"]] == ["thing"]
    registry = ddb.describe_table(TableName=physical_ids["ModelRegistryTable"])["Table"]
    assert [k["AttributeName"] for k in registry["KeySchema"]] == ["pk", "sk"]


def test_functions(aws: dict[str, Any], physical_ids: dict[str, str], lambda_env: dict[str, dict[str, str]]) -> None:
    handlers = {
        "ingest": "cloud.ingest.handler.handler",
        "api": "cloud.api.handler.handler",
        "start": "cloud.retrain.start.handler",
        "promote": "cloud.retrain.promote.handler",
        "silence": "cloud.silence.handler.handler",
        "lake_expand": "cloud.lake_expand.handler.handler",
    }
    for short, logical in FUNCTIONS.items():
        conf = aws["lambda"].get_function_configuration(FunctionName=physical_ids[logical])
        assert conf["Runtime"] == LAMBDA_RUNTIME and conf["Handler"] == handlers[short]
        assert conf["Role"].split("/")[-1].startswith(f"{STACK}-")
    # the environment CloudFormation resolved is complete for each handler's settings
    from cloud.api.handler import Api
    from cloud.ingest.handler import IngestSettings
    from cloud.retrain.promote import PromoteSettings
    from cloud.retrain.start import StartSettings

    with pytest.MonkeyPatch.context() as mp:
        for short, model in (("ingest", IngestSettings), ("start", StartSettings), ("promote", PromoteSettings)):
            for k, v in lambda_env[short].items():
                mp.setenv(k, v)
            settings = model.from_env()  # type: ignore[attr-defined]
            assert settings is not None
        for k, v in lambda_env["api"].items():
            mp.setenv(k, v)
        assert Api.from_env().history_table == physical_ids["HistoryTable"]
    from cloud.lake_expand.handler import TransformSettings

    transform = TransformSettings.from_env(lambda_env["lake_expand"])  # telemetry's writes: the lake transform's
    assert (transform.history_table, transform.device_state_table, transform.bucket) == (
        physical_ids["HistoryTable"],
        physical_ids["DeviceStateTable"],
        physical_ids["DataBucket"],
    )
    assert "GLUE_DATABASE" not in lambda_env["ingest"]  # partitions are projected: the ingest registers none
    assert lambda_env["promote"]["THING_GROUP_ARN"] == f"arn:aws:iot:{REGION}:{ACCOUNT}:thinggroup/battwin-fleet"
    assert lambda_env["start"]["TRAINING_SOURCE_URI"].startswith("s3://battwin-test-artifacts/")
    assert lambda_env["start"]["TRAINING_ROLE_ARN"].endswith(physical_ids["SageMakerTrainingRole"])


def test_iam_roles_and_policies(aws: dict[str, Any], physical_ids: dict[str, str]) -> None:
    iam = aws["iam"]
    role = physical_ids["IngestRole"]
    names = iam.list_role_policies(RoleName=role)["PolicyNames"]
    doc = policy_document(iam.get_role_policy(RoleName=role, PolicyName=names[0])["PolicyDocument"])
    resources = [
        r for s in doc["Statement"] for r in (s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]])
    ]
    assert "*" not in resources
    bucket = physical_ids["DataBucket"]
    # the dead letters only: never the lake (Firehose writes every kind) nor Glue
    assert [r for r in resources if r.startswith("arn:aws:s3")] == [f"arn:aws:s3:::{bucket}/dead-letter/*"]
    assert not [r for r in resources if ":glue:" in r]
    # the conditional policy on the existing Greengrass token exchange role
    tes = iam.list_role_policies(RoleName=TEST_PARAMS["GreengrassTokenExchangeRoleName"])["PolicyNames"]
    assert f"{STACK}-read-released-models" in tes
    # and the GDK artifact bucket: a device reads the published components' artifacts with this role
    assert f"{STACK}-read-component-artifacts" in tes
    doc = policy_document(
        iam.get_role_policy(
            RoleName=TEST_PARAMS["GreengrassTokenExchangeRoleName"], PolicyName=f"{STACK}-read-component-artifacts"
        )["PolicyDocument"]
    )
    (statement,) = doc["Statement"]
    bucket = TEST_PARAMS["ComponentArtifactBucket"]
    assert statement["Action"] == "s3:GetObject"
    assert statement["Resource"] == [
        f"arn:aws:s3:::{bucket}/com.battwin.Agent/*",
        f"arn:aws:s3:::{bucket}/com.battwin.SohModel/*",
    ]


def test_iot_policy_is_scoped_to_the_connecting_thing(aws: dict[str, Any], stack: Any) -> None:
    # (moto's Ref of an AWS::IoT::Policy gives an object repr instead of the name: find it by the stack's name)
    (name,) = [
        p["policyName"]
        for p in aws["iot"].list_policies()["policies"]
        if p["policyName"].startswith(f"{STACK}-DevicePolicy-")
    ]
    doc = policy_document(aws["iot"].get_policy(policyName=name)["policyDocument"])
    by_action = {s["Action"]: s for s in doc["Statement"]}
    thing = "${iot:Connection.Thing.ThingName}"
    arn = f"arn:aws:iot:{REGION}:{ACCOUNT}"
    assert by_action["iot:Connect"]["Resource"] == f"{arn}:client/{thing}"
    assert by_action["iot:Publish"]["Resource"] == [
        f"{arn}:topic/battwin/{thing}/*",
        f"{arn}:topic/battwin/{thing}.*",
        f"{arn}:topic/$aws/things/{thing}/shadow/name/battwin-config/get",
        f"{arn}:topic/$aws/things/{thing}/shadow/name/battwin-config/update",
    ]
    assert (
        by_action["iot:Subscribe"]["Resource"] == f"{arn}:topicfilter/$aws/things/{thing}/shadow/name/battwin-config/*"
    )
    assert by_action["iot:Receive"]["Resource"] == f"{arn}:topic/$aws/things/{thing}/shadow/name/battwin-config/*"
    # Basic Ingest: a policy of its own (the two would not fit IoT Core's 2,048-character limit together)
    (name,) = [
        p["policyName"]
        for p in aws["iot"].list_policies()["policies"]
        if p["policyName"].startswith(f"{STACK}-DeviceBasicIngestPolicy-")
    ]
    (statement,) = policy_document(aws["iot"].get_policy(policyName=name)["policyDocument"])["Statement"]
    assert statement["Action"] == "iot:Publish"
    assert statement["Resource"][:2] == [
        f"{arn}:topic/$aws/rules/battwin_telemetry/battwin/{thing}/telemetry",
        f"{arn}:topic/$aws/rules/battwin_telemetry/battwin/{thing}.*",
    ]
    assert len(statement["Resource"]) == 8


def test_event_rules(aws: dict[str, Any], physical_ids: dict[str, str], lambda_env: dict[str, dict[str, str]]) -> None:
    events = aws["events"]
    schedule = events.describe_rule(Name=physical_ids["RetrainScheduleRule"])
    assert schedule["ScheduleExpression"] == "rate(7 days)"
    targets = events.list_targets_by_rule(Rule=physical_ids["RetrainScheduleRule"])["Targets"]
    assert targets[0]["Arn"].endswith(physical_ids["RetrainStartFunction"])
    done = events.describe_rule(Name=physical_ids["TrainingCompletedRule"])
    pattern = done["EventPattern"]
    targets = events.list_targets_by_rule(Rule=physical_ids["TrainingCompletedRule"])["Targets"]
    assert targets[0]["Arn"].endswith(physical_ids["PromoteFunction"])
    prefix = lambda_env["start"]["JOB_PREFIX"]

    # moto's server has no TestEventPattern; its in-process matcher (the one that routes put_events) judges
    from moto.events.models import EventPattern

    matcher = EventPattern.load(pattern)

    def matches(name: str, status: str, detail_type: str = "SageMaker Training Job State Change") -> bool:
        return bool(
            matcher.matches_event(
                {
                    "id": "1",
                    "account": ACCOUNT,
                    "region": REGION,
                    "time": "2025-01-01T00:00:00Z",
                    "resources": [],
                    "source": "aws.sagemaker",
                    "detail-type": detail_type,
                    "detail": {"TrainingJobName": name, "TrainingJobStatus": status},
                }
            )
        )

    job = f"{prefix}-20250101-000000"
    assert matches(job, "Completed") and matches(job, "Failed") and matches(job, "Stopped")
    assert not matches(job, "InProgress")
    assert not matches("someone-else-20250101", "Completed")
    assert not matches(job, "Completed", detail_type="SageMaker Endpoint State Change")


def test_rest_api_routes(aws: dict[str, Any], physical_ids: dict[str, str]) -> None:
    api = aws["apigateway"]
    items = api.get_resources(restApiId=physical_ids["RestApi"])["items"]
    paths = {i["path"]: i for i in items}
    assert {"/devices", "/devices/{thing}", "/devices/{thing}/history", "/devices/{thing}/cycles"} <= set(paths)
    for path in ("/devices", "/devices/{thing}", "/devices/{thing}/history", "/devices/{thing}/cycles"):
        method = api.get_method(restApiId=physical_ids["RestApi"], resourceId=paths[path]["id"], httpMethod="GET")
        assert method["authorizationType"] == "AWS_IAM"
        assert method["methodIntegration"]["type"] == "AWS_PROXY"
        assert physical_ids["ApiFunction"] in method["methodIntegration"]["uri"]


def test_skipped_types_created_through_their_apis(
    aws: dict[str, Any],
    skipped_created: dict[str, Any],
    physical_ids: dict[str, str],
    lambda_env: dict[str, dict[str, str]],
) -> None:
    ttl = aws["dynamodb"].describe_time_to_live(TableName=physical_ids["HistoryTable"])["TimeToLiveDescription"]
    assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "expires_at"}
    iot = aws["iot"]
    rules = {r["ruleName"] for r in iot.list_topic_rules()["rules"]}
    # one rule per kind (a Basic Ingest message reaches only the rule it names) and the presence rule
    assert rules == {*(f"battwin_{kind}" for kind in ("telemetry", "cycles", "health", "alarms")), "battwin_presence"}
    # every kind goes to the lake's Firehose stream, which exists (moto) with its partitioning and buffering
    for kind in ("telemetry", "cycles", "health", "alarms"):
        rule = iot.get_topic_rule(ruleName=f"battwin_{kind}")["rule"]
        assert rule["actions"][0]["firehose"]["deliveryStreamName"] == "battwin-lake"
    stream = aws["firehose"].describe_delivery_stream(DeliveryStreamName="battwin-lake")["DeliveryStreamDescription"]
    dest = stream["Destinations"][0]["ExtendedS3DestinationDescription"]
    assert dest["BucketARN"] == f"arn:aws:s3:::{physical_ids['DataBucket']}"
    assert dest["Prefix"] == "lake/kind=!{partitionKeyFromQuery:kind}/dt=!{partitionKeyFromQuery:dt}/"
    assert dest["BufferingHints"] == {"SizeInMBs": 128, "IntervalInSeconds": 900}
    assert dest["CompressionFormat"] == "GZIP" and dest["ErrorOutputPrefix"].startswith("dead-letter/firehose/")
    presence = iot.get_topic_rule(ruleName="battwin_presence")["rule"]
    assert presence["sql"] == "SELECT * FROM '$aws/events/presence/+/+'"
    assert presence["actions"][0]["lambda"]["functionArn"].endswith(physical_ids["IngestFunction"])
    # the CloudWatch alarms, as CloudWatch holds them, tell the stack's SNS topic
    topic = physical_ids["AlarmTopic"]
    assert topic.startswith("arn:aws:sns:") and topic.endswith(":battwin-operator-alarms")
    alarms = aws["cloudwatch"].describe_alarms(AlarmNamePrefix="battwin-")["MetricAlarms"]
    assert len(alarms) == len([k for k in skipped_created if k.endswith("Alarm")]) >= 12
    assert all(a["AlarmActions"] == [topic] for a in alarms)
    by_name = {a["AlarmName"]: a for a in alarms}
    assert by_name["battwin-ingest-errors"]["Dimensions"] == [
        {"Name": "FunctionName", "Value": physical_ids["IngestFunction"]}
    ]
    assert by_name["battwin-ingest-dead-letters"]["Namespace"] == lambda_env["ingest"]["METRICS_NAMESPACE"]
    for kind in ("telemetry", "cycles", "health", "alarms"):
        rule = iot.get_topic_rule(ruleName=f"battwin_{kind}")["rule"]
        assert rule["sql"].endswith(f"FROM 'battwin/+/{kind}'")
        assert rule["sql"].startswith("SELECT *, topic(2) AS rule_thing, topic(3) AS rule_kind")
        lambdas = [a["lambda"]["functionArn"] for a in rule["actions"] if "lambda" in a]
        # telemetry invokes no Lambda per message (the lake stream's transform writes its live window)
        assert lambdas == ([] if kind == "telemetry" else [lambdas[0]])
        assert all(arn.endswith(physical_ids["IngestFunction"]) for arn in lambdas)
        assert rule["errorAction"]["s3"]["bucketName"] == physical_ids["DataBucket"]
    group = iot.describe_thing_group(thingGroupName="battwin-fleet")
    assert group["thingGroupArn"] == lambda_env["promote"]["THING_GROUP_ARN"]
    glue_tables = {t["Name"]: t for t in aws["glue"].get_tables(DatabaseName="battwin_lake")["TableList"]}
    assert set(glue_tables) == {"telemetry", "cycles", "health", "alarms"}
    for name, table in glue_tables.items():
        assert table["StorageDescriptor"]["Location"] == f"s3://{physical_ids['DataBucket']}/lake/kind={name}/"
        assert [k["Name"] for k in table["PartitionKeys"]] == ["dt"]
        params = table["Parameters"]
        assert params["projection.enabled"] == "true" and params["projection.dt.type"] == "date"
        assert params["storage.location.template"] == f"s3://{physical_ids['DataBucket']}/lake/kind={name}/dt=${{dt}}/"
    wg = aws["athena"].get_work_group(WorkGroup="battwin-analytics")["WorkGroup"]
    assert (
        wg["Configuration"]["ResultConfiguration"]["OutputLocation"]
        == f"s3://{physical_ids['DataBucket']}/athena-results/"
    )
    policy = skipped_created["DataBucketPolicy"]  # as S3 returned it (then removed: see the fixture)
    assert policy["Statement"][0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    stage = aws["apigateway"].get_stage(restApiId=physical_ids["RestApi"], stageName="v1")
    assert stage["deploymentId"] == skipped_created["ApiStage"]["DeploymentId"]
    invoke = aws["lambda"].get_function_event_invoke_config(FunctionName=physical_ids["IngestFunction"])
    assert invoke["MaximumRetryAttempts"] == 2 and "sqs" in invoke["DestinationConfig"]["OnFailure"]["Destination"]
    sets = aws["quicksight"].describe_data_source(AwsAccountId=ACCOUNT, DataSourceId="battwin-athena")["DataSource"]
    assert sets["Type"] == "ATHENA"


def test_quicksight_analysis_request_matches_the_api(resolver: Resolver, skipped_created: dict[str, Any]) -> None:
    """moto has no CreateAnalysis: botocore's Stubber validates the request against the real API model."""
    import boto3

    props = resolver.properties("FleetAnalysis")
    qs = boto3.client("quicksight", region_name=REGION)
    with Stubber(qs) as stub:
        arn = f"arn:aws:quicksight:{REGION}:{ACCOUNT}:analysis/{props['AnalysisId']}"
        stub.add_response(
            "create_analysis",
            {"Arn": arn, "AnalysisId": props["AnalysisId"], "Status": 202, "CreationStatus": "CREATION_IN_PROGRESS"},
            props,
        )
        assert qs.create_analysis(**props)["AnalysisId"] == "battwin-fleet"
        stub.assert_no_pending_responses()
    declared = {d["DataSetArn"].rsplit("/", 1)[1] for d in props["Definition"]["DataSetIdentifierDeclarations"]}
    created = {v["DataSetId"] for k, v in skipped_created.items() if k.endswith("DataSet")}
    assert declared == created
    visuals = props["Definition"]["Sheets"][0]["Visuals"]
    assert len(visuals) == 5


def test_quicksight_dashboard_requests_match_the_api(resolver: Resolver, skipped_created: dict[str, Any]) -> None:
    """The published dashboard: a template from the analysis, the dashboard from the template, over the analysis's
    four data sets (moto has neither call: botocore's Stubber validates the requests against the real API model)."""
    import boto3

    analysis = resolver.properties("FleetAnalysis")
    template = resolver.properties("FleetTemplate")
    dashboard = resolver.properties("FleetDashboard")
    qs = boto3.client("quicksight", region_name=REGION)
    with Stubber(qs) as stub:
        t_arn = f"arn:aws:quicksight:{REGION}:{ACCOUNT}:template/{template['TemplateId']}"
        d_arn = f"arn:aws:quicksight:{REGION}:{ACCOUNT}:dashboard/{dashboard['DashboardId']}"
        stub.add_response(
            "create_template",
            {
                "Arn": t_arn,
                "TemplateId": template["TemplateId"],
                "Status": 202,
                "CreationStatus": "CREATION_IN_PROGRESS",
            },
            template,
        )
        stub.add_response(
            "create_dashboard",
            {
                "Arn": d_arn,
                "DashboardId": dashboard["DashboardId"],
                "Status": 202,
                "CreationStatus": "CREATION_IN_PROGRESS",
            },
            dashboard,
        )
        assert qs.create_template(**template)["TemplateId"] == "battwin-fleet"
        assert qs.create_dashboard(**dashboard)["DashboardId"] == "battwin-fleet"
        stub.assert_no_pending_responses()
    source = template["SourceEntity"]["SourceAnalysis"]
    assert source["Arn"] == f"arn:aws:quicksight:{REGION}:{ACCOUNT}:analysis/{analysis['AnalysisId']}"
    assert dashboard["SourceEntity"]["SourceTemplate"]["Arn"] == t_arn
    declared = {d["Identifier"]: d["DataSetArn"] for d in analysis["Definition"]["DataSetIdentifierDeclarations"]}
    for refs in (source["DataSetReferences"], dashboard["SourceEntity"]["SourceTemplate"]["DataSetReferences"]):
        assert {r["DataSetPlaceholder"]: r["DataSetArn"] for r in refs} == declared


def test_cognito_authorizer_variant(
    aws: dict[str, Any], resolver: Resolver, template: dict[str, Any], physical_ids: dict[str, str]
) -> None:
    cognito = Resolver(
        template,
        {
            **TEST_PARAMS,
            "ApiAuth": "COGNITO",
            "CognitoUserPoolArn": f"arn:aws:cognito-idp:{REGION}:{ACCOUNT}:userpool/{REGION}_abc",
        },
        STACK,
        dict(resolver.physical_ids),
        resolver.get_att,
    )
    assert cognito.condition("UseCognito")
    props = cognito.properties("CognitoAuthorizer")
    created = aws["apigateway"].create_authorizer(
        restApiId=props["RestApiId"],
        name=props["Name"],
        type=props["Type"],
        identitySource=props["IdentitySource"],
        providerARNs=props["ProviderARNs"],
    )
    cognito.physical_ids["CognitoAuthorizer"] = created["id"]
    method = cognito.properties("HistoryGet")
    assert method["AuthorizationType"] == "COGNITO_USER_POOLS" and method["AuthorizerId"] == created["id"]
    iam_method = resolver.properties("HistoryGet")
    assert iam_method["AuthorizationType"] == "AWS_IAM" and "AuthorizerId" not in iam_method
