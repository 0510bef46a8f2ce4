"""A moto server on a free loopback port with the tables and bucket of the template, and clients for it.

Nothing here touches the process environment: the clients carry the endpoint and dummy credentials
themselves, so the local stack can run next to code (or tests) that use real AWS settings.
:meth:`LocalAws.environment` gives the variables a separate process (``battwin dashboard --local``) needs.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config

from cloud.ingest.handler import Ingestor, IngestSettings
from cloud.lake import FIREHOSE_PARTITION_JQ, PartitionError, firehose_partition, firehose_prefix
from cloud.lake_expand.handler import LakeTransform, TransformSettings
from cloud.local_stack.template import (
    FirehoseSpec,
    TemplateError,
    firehose_streams,
    function_environment,
    load_template,
    resource,
    table_request,
    table_ttl,
    transformed,
)

log = logging.getLogger("battwin.local_stack.aws")

REGION = "us-east-1"
_CREDENTIALS = {"aws_access_key_id": "battwin-local", "aws_secret_access_key": "battwin-local"}
_CONFIG = Config(retries={"max_attempts": 3, "mode": "standard"}, max_pool_connections=32)


@dataclass(frozen=True)
class StackNames:
    """Physical names of the emulated resources. Unique per stack, as CloudFormation's are: moto keeps its
    state per process, so two stacks in one process (tests) would otherwise share tables."""

    suffix: str = field(default_factory=lambda: secrets.token_hex(4))

    @property
    def device_state_table(self) -> str:
        return f"battwin-local-{self.suffix}-DeviceState"

    @property
    def history_table(self) -> str:
        return f"battwin-local-{self.suffix}-History"

    @property
    def bucket(self) -> str:
        return f"battwin-local-{self.suffix}-data"

    @property
    def failure_queue(self) -> str:
        return f"battwin-local-{self.suffix}-IngestFailureQueue"

    def refs(self) -> dict[str, str]:
        """``!Ref`` of the template's logical ids → the names used here."""
        return {
            "DeviceStateTable": self.device_state_table,
            "HistoryTable": self.history_table,
            "DataBucket": self.bucket,
        }


@dataclass
class LocalAws:
    """``ThreadedMotoServer`` + boto3 clients bound to it (``start()`` before use)."""

    names: StackNames = field(default_factory=StackNames)
    host: str = "127.0.0.1"
    port: int = 0
    _server: Any = None
    _clients: dict[str, Any] = field(default_factory=dict)
    _created: bool = False
    failure_queue_url: str = ""
    endpoint: str = ""

    def start(self) -> LocalAws:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log would flood the demo
        self._server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        log.info("moto server listening", extra={"endpoint": self.endpoint})
        return self

    @classmethod
    @contextmanager
    def running(cls, *, resources: bool = True) -> Iterator[LocalAws]:
        """A started moto server (with the stack's tables, bucket and streams unless ``resources=False``),
        stopped on the way out whatever happened inside."""
        local = cls().start()
        try:
            if resources:
                local.create_resources()
            yield local
        finally:
            local.stop()

    def stop(self) -> None:
        if self._server is not None:
            if self._created:
                self._delete_resources()
            self._server.stop()
            self._server = None
        self._clients.clear()

    def _delete_resources(self) -> None:
        """Free what this stack made in moto's process-wide state (best effort)."""
        try:
            ddb, s3 = self.client("dynamodb"), self.client("s3")
            for table in (self.names.device_state_table, self.names.history_table):
                ddb.delete_table(TableName=table)
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.names.bucket):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    s3.delete_objects(Bucket=self.names.bucket, Delete={"Objects": keys, "Quiet": True})
            s3.delete_bucket(Bucket=self.names.bucket)
            if self.failure_queue_url:
                self.client("sqs").delete_queue(QueueUrl=self.failure_queue_url)
        except Exception as exc:
            log.warning("could not delete the local resources", extra={"error": str(exc)[:200]})

    def client(self, service: str) -> Any:
        """A client of ``service`` on the moto server (one per service, thread-safe for calls)."""
        if not self.endpoint:
            raise RuntimeError("LocalAws.start() first")
        found = self._clients.get(service)
        if found is None:
            found = self._clients[service] = boto3.session.Session().client(
                service, region_name=REGION, endpoint_url=self.endpoint, config=_CONFIG, **_CREDENTIALS
            )
        return found

    def create_resources(self) -> None:
        """DeviceState, History (with its index and TTL), the data bucket and the ingest failure queue, as the
        template defines them."""
        template = load_template()
        ddb = self.client("dynamodb")
        self._created = True  # from here on, stop() removes what was made (best effort)
        for logical, name in (
            ("DeviceStateTable", self.names.device_state_table),
            ("HistoryTable", self.names.history_table),
        ):
            ddb.create_table(**table_request(template, logical, name))
            ddb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 50})
            ttl = table_ttl(template, logical)
            if ttl is not None:
                ddb.update_time_to_live(TableName=name, TimeToLiveSpecification=ttl)
        s3 = self.client("s3")
        s3.create_bucket(Bucket=self.names.bucket)
        s3.put_bucket_encryption(
            Bucket=self.names.bucket,
            ServerSideEncryptionConfiguration={
                "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}, "BucketKeyEnabled": True}]
            },
        )
        s3.put_public_access_block(
            Bucket=self.names.bucket,
            PublicAccessBlockConfiguration={
                "BlockPublicAcls": True,
                "IgnorePublicAcls": True,
                "BlockPublicPolicy": True,
                "RestrictPublicBuckets": True,
            },
        )
        queue = resource(template, "IngestFailureQueue", "AWS::SQS::Queue")
        attrs = (
            {"MessageRetentionPeriod": str(queue["MessageRetentionPeriod"])}
            if "MessageRetentionPeriod" in queue
            else {}
        )
        self.failure_queue_url = self.client("sqs").create_queue(QueueName=self.names.failure_queue, Attributes=attrs)[
            "QueueUrl"
        ]
        log.info("local tables and bucket created", extra=self.names.refs())

    def firehose_targets(self, transform: LakeTransform | None = None) -> dict[str, Callable[[bytes], None]]:
        """The template's Firehose streams as targets of :class:`~cloud.local_stack.rules.LocalRulesRunner`:
        logical id → put one record. Each record is written to S3 as its own object under its partition's prefix
        (the stream's ``Prefix`` with the keys of :func:`cloud.lake.firehose_partition`, the stream's JQ query in
        Python: the template's query must be that one), named as Firehose names its objects; a record the query
        fails on goes to the stream's error output prefix, as Firehose does. No buffering: what moto's Firehose
        does, which knows no dynamic partitioning — one moto stream per partition hit moto's 50-stream quota on a
        backfilled past of hundreds of days, and creating and retiring streams made the demo's ingest slow.
        Buffering is counted by :class:`cloud.local_stack.firehose.BufferedFirehose` (the scale run). A stream's
        Lambda transform is ``transform`` (default: :meth:`lake_transform` with the template's settings)."""
        streams = firehose_streams(load_template())
        for spec in streams.values():
            if spec.partition_query is not None and spec.partition_query != FIREHOSE_PARTITION_JQ:
                raise TemplateError(f"{spec.logical_id}: the local stack mirrors only cloud.lake.FIREHOSE_PARTITION_JQ")
        lake_transform = transform if transform is not None else self.lake_transform()
        return {lid: self._firehose_target(spec, lake_transform) for lid, spec in streams.items()}

    def _firehose_target(self, spec: FirehoseSpec, transform: LakeTransform) -> Callable[[bytes], None]:
        s3, bucket = self.client("s3"), self.names.bucket

        def put(record: bytes) -> None:
            record = transformed(spec, record, transform)
            try:
                keys = firehose_partition(json.loads(record)) if spec.partition_query else {}
                prefix = firehose_prefix(spec.prefix, keys)
            except (PartitionError, ValueError) as exc:
                day = time.strftime("%Y-%m-%d", time.gmtime())
                key = (
                    spec.error_prefix.replace("!{firehose:error-output-type}", "processing-failed").replace(
                        "!{timestamp:yyyy-MM-dd}", day
                    )
                    + f"{uuid.uuid4()}"
                )
                error = {"errorCode": "DynamicPartitioning.MetadataExtractionFailed", "errorMessage": str(exc)[:300]}
                body = json.dumps({**error, "rawData": record.decode("utf-8", "replace")}).encode()
                s3.put_object(Bucket=bucket, Key=key, Body=body)
                return
            stamp = time.strftime("%Y-%m-%d-%H-%M-%S", time.gmtime())
            s3.put_object(Bucket=bucket, Key=f"{prefix}{spec.logical_id}-1-{stamp}-{uuid.uuid4()}", Body=record)

        return put

    def ingest_environment(self) -> dict[str, str]:
        """The ingest Lambda's environment as the template sets it, with the local names."""
        return function_environment(load_template(), "IngestFunction", self.names.refs())

    def ingestor(self, **overrides: Any) -> Ingestor:
        """The real ingest handler on this server: its settings read from the template's environment of the
        function (as the deployed one reads its own), ``overrides`` on top (e.g. a demo's clock skew)."""
        settings = IngestSettings.from_env(self.ingest_environment())
        if overrides:
            settings = IngestSettings.model_validate({**settings.model_dump(), **overrides})
        return Ingestor(settings, dynamodb=self.client("dynamodb"), s3=self.client("s3"))

    def lake_transform(self, **overrides: Any) -> LakeTransform:
        """The real lake-stream transform on this server, its settings read from the template's environment of
        the function (telemetry's live-window items go to this server's History table), ``overrides`` on top
        (e.g. a demo's clock skew, as for :meth:`ingestor`)."""
        env = function_environment(load_template(), "LakeExpandFunction", self.names.refs())
        settings = TransformSettings.from_env(env)
        if overrides:
            settings = TransformSettings.model_validate({**settings.model_dump(), **overrides})
        return LakeTransform(settings, dynamodb=self.client("dynamodb"), s3=self.client("s3"))

    def environment(self) -> dict[str, str]:
        """Variables with which another process's boto3 (and the API handler) reach this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ACCESS_KEY_ID": _CREDENTIALS["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": _CREDENTIALS["aws_secret_access_key"],
            "DEVICE_STATE_TABLE": self.names.device_state_table,
            "HISTORY_TABLE": self.names.history_table,
            "DATA_BUCKET": self.names.bucket,
        }
