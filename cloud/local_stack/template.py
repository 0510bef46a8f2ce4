"""What the local stack takes from ``cloud/template.yaml``: table definitions, the ingest settings, the IoT rules.

The local stack creates its tables and routes its messages from the same template that is deployed, so a
change there (a new index, a new rule) shows up locally without a second copy to keep in step.
CloudFormation's short tags (``!Ref``, ``!Sub`` …) are read as their long form (``{"Ref": …}``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cloud.deploy import TEMPLATE
from cloud.lake_expand.handler import LakeTransform, expand_record


class TemplateError(ValueError):
    """The template lacks something the local stack needs, or uses a form it cannot mirror."""


class _CfnLoader(yaml.SafeLoader):
    """A safe YAML loader that reads CloudFormation's short tags as their ``Fn::`` long form."""


def _construct_tag(loader: _CfnLoader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = "Ref" if tag_suffix == "Ref" else f"Fn::{tag_suffix}"
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if tag_suffix == "GetAtt" and isinstance(value, str):
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


_CfnLoader.add_multi_constructor("!", _construct_tag)


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    data = yaml.load(path.read_text(encoding="utf-8"), Loader=_CfnLoader)  # noqa: S506 - a SafeLoader subclass
    if not isinstance(data, dict) or not isinstance(data.get("Resources"), dict):
        raise TemplateError(f"{path} is not a CloudFormation template with Resources")
    return data


def resource(template: dict[str, Any], logical_id: str, rtype: str) -> dict[str, Any]:
    res = template["Resources"].get(logical_id)
    if not isinstance(res, dict) or res.get("Type") != rtype:
        raise TemplateError(f"the template has no {rtype} named {logical_id}")
    props = res.get("Properties") or {}
    if not isinstance(props, dict):
        raise TemplateError(f"{logical_id}: Properties is not a mapping")
    return props


def table_request(template: dict[str, Any], logical_id: str, table_name: str) -> dict[str, Any]:
    """``dynamodb.create_table`` keyword arguments equivalent to an ``AWS::DynamoDB::Table`` resource."""
    props = resource(template, logical_id, "AWS::DynamoDB::Table")
    request: dict[str, Any] = {
        "TableName": table_name,
        "AttributeDefinitions": props["AttributeDefinitions"],
        "KeySchema": props["KeySchema"],
        "BillingMode": props.get("BillingMode", "PROVISIONED"),
    }
    if props.get("GlobalSecondaryIndexes"):
        request["GlobalSecondaryIndexes"] = props["GlobalSecondaryIndexes"]
    sse = props.get("SSESpecification")
    if isinstance(sse, dict) and "SSEEnabled" in sse:
        request["SSESpecification"] = {"Enabled": bool(sse["SSEEnabled"])}
    return request


def table_ttl(template: dict[str, Any], logical_id: str) -> dict[str, Any] | None:
    """The table's ``TimeToLiveSpecification`` as ``update_time_to_live`` expects it, if any."""
    ttl = resource(template, logical_id, "AWS::DynamoDB::Table").get("TimeToLiveSpecification")
    if not isinstance(ttl, dict) or not ttl.get("Enabled"):
        return None
    return {"AttributeName": ttl["AttributeName"], "Enabled": True}


def parameter_default(template: dict[str, Any], name: str) -> str | None:
    param = (template.get("Parameters") or {}).get(name)
    if isinstance(param, dict) and "Default" in param:
        return str(param["Default"])
    return None


def function_environment(template: dict[str, Any], logical_id: str, refs: dict[str, str]) -> dict[str, str]:
    """A Lambda's environment with ``!Ref``/``!Sub`` resolved from ``refs`` and the parameters' defaults.

    A value that refers to something neither knows (e.g. the Glue database, not emulated) is left out.
    """
    props = resource(template, logical_id, "AWS::Lambda::Function")
    variables = ((props.get("Environment") or {}).get("Variables")) or {}
    out: dict[str, str] = {}
    for key, value in variables.items():
        resolved = _resolve(template, value, refs)
        if resolved is not None:
            out[str(key)] = resolved
    return out


def _resolve(template: dict[str, Any], value: Any, refs: dict[str, str]) -> str | None:
    if isinstance(value, str | int | float | bool):
        return str(value)
    if isinstance(value, dict) and "Ref" in value:
        name = str(value["Ref"])
        return refs.get(name, parameter_default(template, name))
    if isinstance(value, dict) and "Fn::Sub" in value and isinstance(value["Fn::Sub"], str):
        text: str = value["Fn::Sub"]
        missing: list[str] = []

        def sub(m: re.Match[str]) -> str:
            found = refs.get(m.group(1), parameter_default(template, m.group(1)))
            if found is None:
                missing.append(m.group(1))
                return ""
            return found

        result = re.sub(r"\$\{([A-Za-z0-9_.:]+)\}", sub, text)
        return None if missing else result
    return None


@dataclass(frozen=True)
class RuleSpec:
    """One ``AWS::IoT::TopicRule`` of the template: its SQL, the Lambda its action invokes and/or the Firehose
    stream its action puts records to."""

    logical_id: str
    sql: str
    sql_version: str
    function: str | None
    disabled: bool
    #: the S3 error action's key template (``dead-letter/rule-errors/${topic()}/${newuuid()}.json``), if any
    error_key: str | None = None
    #: logical id of the ``AWS::KinesisFirehose::DeliveryStream`` of the rule's Firehose action, if any
    firehose: str | None = None
    #: the Firehose action's ``Separator`` (appended to each record)
    separator: str = ""
    #: the rule's ``RuleName`` (``!Sub`` resolved with the parameters' defaults): the ``<rule name>`` of its Basic
    #: Ingest topics ``$aws/rules/<rule name>/…``; None if the template names the rule by something else
    rule_name: str | None = None


@dataclass(frozen=True)
class FirehoseSpec:
    """One ``AWS::KinesisFirehose::DeliveryStream`` with an S3 destination, as far as the local stack mirrors it."""

    logical_id: str
    #: the destination's ``Prefix`` (with ``!{partitionKeyFromQuery:…}`` placeholders when partitioning)
    prefix: str
    error_prefix: str
    #: the JQ ``MetadataExtractionQuery`` of dynamic partitioning (None: not partitioned)
    partition_query: str | None
    buffer_mb: int
    buffer_s: int
    compression: str
    #: the handler (``module.function``) of the stream's Lambda transform, which runs before the partition query
    #: (None: no transform); the local stack runs only :data:`LOCAL_TRANSFORM_HANDLERS` in process (:func:`transformed`)
    transform: str | None = None


#: Lambda transforms the local stack runs in process: handler -> the function applied to one record
LOCAL_TRANSFORM_HANDLERS = frozenset({"cloud.lake_expand.handler.handler"})


def _function_handler(template: dict[str, Any], ref: Any, where: str) -> str:
    """The ``Handler`` of the function a ``!GetAtt <Function>.Arn`` names."""
    target = ref.get("Fn::GetAtt") if isinstance(ref, dict) else None
    if isinstance(target, str):
        target = target.split(".")
    if not (isinstance(target, list) and len(target) == 2 and target[1] == "Arn"):
        raise TemplateError(f"{where}: the Lambda processor's LambdaArn must be !GetAtt <Function>.Arn, got {ref!r}")
    res = template["Resources"].get(target[0]) or {}
    handler = (res.get("Properties") or {}).get("Handler")
    if res.get("Type") != "AWS::Lambda::Function" or not isinstance(handler, str):
        raise TemplateError(f"{where}: {target[0]} is not a Lambda function with a Handler")
    return handler


def firehose_streams(template: dict[str, Any]) -> dict[str, FirehoseSpec]:
    out: dict[str, FirehoseSpec] = {}
    for logical_id, res in template["Resources"].items():
        if not isinstance(res, dict) or res.get("Type") != "AWS::KinesisFirehose::DeliveryStream":
            continue
        dest = (res.get("Properties") or {}).get("ExtendedS3DestinationConfiguration")
        if not isinstance(dest, dict):
            raise TemplateError(f"{logical_id}: only an ExtendedS3 destination is mirrored locally")
        query = transform = None
        for proc in (dest.get("ProcessingConfiguration") or {}).get("Processors") or []:
            if proc.get("Type") == "Lambda":
                for param in proc.get("Parameters") or []:
                    if param.get("ParameterName") == "LambdaArn":
                        transform = _function_handler(template, param.get("ParameterValue"), str(logical_id))
                if transform not in LOCAL_TRANSFORM_HANDLERS:
                    raise TemplateError(f"{logical_id}: the local stack does not run the transform {transform!r}")
        if (dest.get("DynamicPartitioningConfiguration") or {}).get("Enabled"):
            for proc in (dest.get("ProcessingConfiguration") or {}).get("Processors") or []:
                if proc.get("Type") == "MetadataExtraction":
                    for param in proc.get("Parameters") or []:
                        if param.get("ParameterName") == "MetadataExtractionQuery":
                            query = str(param["ParameterValue"])
            if query is None:
                raise TemplateError(f"{logical_id}: dynamic partitioning without a MetadataExtractionQuery")
        hints = dest.get("BufferingHints") or {}
        out[str(logical_id)] = FirehoseSpec(
            logical_id=str(logical_id),
            prefix=str(dest.get("Prefix", "")),
            error_prefix=str(dest.get("ErrorOutputPrefix", "")),
            partition_query=query,
            buffer_mb=int(hints.get("SizeInMBs", 5)),
            buffer_s=int(hints.get("IntervalInSeconds", 300)),
            compression=str(dest.get("CompressionFormat", "UNCOMPRESSED")),
            transform=transform,
        )
    return out


def topic_rules(template: dict[str, Any]) -> list[RuleSpec]:
    rules: list[RuleSpec] = []
    for logical_id, res in template["Resources"].items():
        if not isinstance(res, dict) or res.get("Type") != "AWS::IoT::TopicRule":
            continue
        payload = (res.get("Properties") or {}).get("TopicRulePayload") or {}
        function = firehose = None
        separator = ""
        for action in payload.get("Actions") or []:
            arn = (action.get("Lambda") or {}).get("FunctionArn") if isinstance(action, dict) else None
            if isinstance(arn, dict) and "Fn::GetAtt" in arn:
                function = str(arn["Fn::GetAtt"][0])
            fh = action.get("Firehose") if isinstance(action, dict) else None
            if isinstance(fh, dict):
                stream = fh.get("DeliveryStreamName")
                if not (isinstance(stream, dict) and set(stream) == {"Ref"}):
                    raise TemplateError(f"{logical_id}: the Firehose action must !Ref a stream of the template")
                firehose = str(stream["Ref"])
                separator = str(fh.get("Separator", ""))
        error_s3 = (payload.get("ErrorAction") or {}).get("S3") or {}
        rule_name = _resolve(template, (res.get("Properties") or {}).get("RuleName"), {})
        rules.append(
            RuleSpec(
                logical_id=str(logical_id),
                sql=" ".join(str(payload.get("Sql", "")).split()),
                sql_version=str(payload.get("AwsIotSqlVersion", "2015-10-08")),
                function=function,
                disabled=bool(payload.get("RuleDisabled", False)),
                error_key=str(error_s3["Key"]) if isinstance(error_s3.get("Key"), str) else None,
                firehose=firehose,
                separator=separator,
                rule_name=rule_name,
            )
        )
    if not rules:
        raise TemplateError("the template defines no IoT topic rule")
    return rules


def max_retry_attempts(template: dict[str, Any], function: str) -> int:
    """``MaximumRetryAttempts`` of the function's asynchronous invocation config (Lambda's default: 2)."""
    for res in template["Resources"].values():
        if not isinstance(res, dict) or res.get("Type") != "AWS::Lambda::EventInvokeConfig":
            continue
        props = res.get("Properties") or {}
        if props.get("FunctionName") == {"Ref": function} and "MaximumRetryAttempts" in props:
            return int(props["MaximumRetryAttempts"])
    return 2


def transformed(spec: FirehoseSpec, record: bytes, transform: LakeTransform | None = None) -> bytes:
    """``record`` after the stream's Lambda transform (the same function the deployed stream invokes): with
    ``transform`` (its clients and settings: telemetry's live-window items written, bad telemetry dead-lettered)
    one invocation of one record, else the record expansion alone."""
    if spec.transform is None:
        return record
    if transform is not None:  # the only handler in LOCAL_TRANSFORM_HANDLERS
        return transform.records([record])[0]
    return expand_record(record)
