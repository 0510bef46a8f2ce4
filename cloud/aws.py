"""What every battwin Lambda shares: JSON logging, cached boto3 clients, environment settings, DynamoDB values.

Handlers run unchanged on AWS and against a local emulator: clients are plain ``boto3.client(name)`` calls,
so the region comes from ``AWS_REGION``/``AWS_DEFAULT_REGION`` and an endpoint override only from
``AWS_ENDPOINT_URL`` (which boto3 honours natively). Clients are created once per process (a Lambda
container) and reused across invocations.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Protocol

import boto3
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.config import Config

from device_agent.logging_setup import JsonFormatter

log = logging.getLogger("battwin.cloud")

_CLIENTS: dict[str, Any] = {}
_LOCK = threading.Lock()
_RETRIES = Config(retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=32)


class LambdaContext(Protocol):
    """The parts of the Lambda context object the handlers use (None when called in-process)."""

    aws_request_id: str


class ConfigurationError(RuntimeError):
    """A required environment variable is missing or invalid (a deployment error, not a data error)."""


def client(service: str) -> Any:
    """A boto3 client for ``service``, created once per process."""
    found = _CLIENTS.get(service)
    if found is not None:
        return found
    with _LOCK:
        if service not in _CLIENTS:
            _CLIENTS[service] = boto3.client(service, config=_RETRIES)
        return _CLIENTS[service]


def reset_clients() -> None:
    """Forget the cached clients (after the environment changed, e.g. between test sessions)."""
    with _LOCK:
        _CLIENTS.clear()


def env(name: str, default: str | None = None, source: Mapping[str, str] | None = None) -> str:
    """A variable of the function's environment (``source``: another mapping, e.g. the template's for a local
    run); raises :class:`ConfigurationError` when it is missing and has no default."""
    value = (os.environ if source is None else source).get(name, default)
    if value is None or value == "":
        if default is not None:
            return default
        raise ConfigurationError(f"environment variable {name} is not set")
    return value


def env_int(name: str, default: int, source: Mapping[str, str] | None = None) -> int:
    raw = (os.environ if source is None else source).get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigurationError(f"environment variable {name}={raw!r} is not an integer") from None


def env_float(name: str, default: float, source: Mapping[str, str] | None = None) -> float:
    raw = (os.environ if source is None else source).get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigurationError(f"environment variable {name}={raw!r} is not a number") from None


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return raw.strip().lower() in ("1", "true", "yes", "on")


_LOGGING: dict[str, bool] = {"ready": False}


def setup_lambda_logging() -> None:
    """JSON lines on the Lambda runtime's handler (or stdout when run elsewhere); level from LOG_LEVEL."""
    if _LOGGING["ready"]:
        return
    root = logging.getLogger()
    formatter = JsonFormatter()
    if root.handlers:  # the Lambda runtime installs one handler; keep it (it adds the request id), reformat
        for handler in root.handlers:
            handler.setFormatter(formatter)
    else:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(formatter)
        root.addHandler(handler)
    level = os.environ.get("LOG_LEVEL", "INFO").upper()
    root.setLevel(level if level in ("DEBUG", "INFO", "WARNING", "ERROR") else "INFO")
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _LOGGING["ready"] = True


def request_id(context: LambdaContext | None) -> str | None:
    return getattr(context, "aws_request_id", None) if context is not None else None


# -- DynamoDB values --------------------------------------------------------------------------------


def to_ddb(value: Any) -> Any:
    """JSON-like value → what boto3's DynamoDB resource layer accepts (floats become Decimal)."""
    return json.loads(json.dumps(value, allow_nan=False), parse_float=Decimal)


def from_ddb(value: Any) -> Any:
    """DynamoDB resource-layer value → plain JSON types (Decimal → int or float, sets → sorted lists)."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() and abs(value) < 2**53 else float(value)
    if isinstance(value, dict):
        return {str(k): from_ddb(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [from_ddb(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted(from_ddb(v) for v in value)
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return value


_SER = TypeSerializer()
_DESER = TypeDeserializer()


def marshal_value(value: Any) -> dict[str, Any]:
    """One value in DynamoDB's wire format ({"S": ...}, {"N": ...}, {"M": ...} ...)."""
    return dict(_SER.serialize(to_ddb(value)))


def marshal(item: dict[str, Any]) -> dict[str, Any]:
    """A whole item in DynamoDB's wire format; attributes that are None are left out."""
    return {k: marshal_value(v) for k, v in item.items() if v is not None}


def unmarshal(item: dict[str, Any]) -> dict[str, Any]:
    """An item in DynamoDB's wire format → plain JSON types."""
    return {k: from_ddb(_DESER.deserialize(v)) for k, v in item.items()}


def batch_get_items(
    ddb: Any, table: str, keys: list[dict[str, Any]], *, projection: str | None = None, attempts: int = 8
) -> list[dict[str, Any]]:
    """The items of ``keys`` that exist (wire format, in no particular order): BatchGetItem 100 keys at a time,
    retrying what DynamoDB leaves unprocessed with a growing pause; ``RuntimeError`` if some keys are still
    unprocessed after ``attempts``."""
    found: list[dict[str, Any]] = []
    for start in range(0, len(keys), 100):
        ask: dict[str, Any] = {"Keys": keys[start : start + 100]}
        if projection is not None:
            ask["ProjectionExpression"] = projection
        request: dict[str, Any] = {table: ask}
        for attempt in range(attempts):
            resp = ddb.batch_get_item(RequestItems=request)
            found += resp.get("Responses", {}).get(table, [])
            request = resp.get("UnprocessedKeys") or {}
            if not request:
                break
            time.sleep(min(0.05 * 2**attempt, 1.0))
        if request:
            raise RuntimeError(f"BatchGetItem left keys of {table} unprocessed after {attempts} attempts")
    return found


def is_conditional_failure(exc: Exception) -> bool:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code")
    return code == "ConditionalCheckFailedException"


def error_code(exc: Exception) -> str | None:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code")
    return str(code) if code is not None else None
