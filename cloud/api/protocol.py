"""What the fleet API takes and gives: query models, errors, proxy responses and pagination tokens."""

from __future__ import annotations

import base64
import binascii
import json
import os
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from schema.messages import MessageKind

MAX_LIMIT = 1000


# -- request models ---------------------------------------------------------------------------------


def _parse_time(value: Any) -> Any:
    """Unix seconds (number or numeric string) or ISO 8601 (naive = UTC) → Unix seconds."""
    if value is None or isinstance(value, int | float):
        return value
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is neither Unix seconds nor an ISO 8601 time") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


TimeParam = Annotated[float, BeforeValidator(_parse_time), Field(allow_inf_nan=False, ge=0.0)]


class PageQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    limit: int = Field(default=100, ge=1, le=MAX_LIMIT)
    next: str | None = Field(default=None, max_length=4096)


class HistoryQuery(PageQuery):
    from_: TimeParam | None = Field(default=None, alias="from")
    to: TimeParam | None = None
    kind: MessageKind | None = None
    order: Literal["asc", "desc"] = "asc"


class CyclesQuery(PageQuery):
    order: Literal["asc", "desc"] = "asc"


class ProxyEvent(BaseModel):
    """The fields of an API Gateway REST proxy event that the handler reads."""

    model_config = ConfigDict(extra="ignore")

    httpMethod: str = "GET"
    path: str = "/"
    resource: str | None = None
    pathParameters: dict[str, str] | None = None
    queryStringParameters: dict[str, str] | None = None


# -- errors and responses ---------------------------------------------------------------------------


class ApiError(Exception):
    def __init__(self, status: int, error: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.details = details


def _headers() -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Cache-Control": "no-store"}
    origin = os.environ.get("CORS_ALLOW_ORIGIN", "")
    if origin:
        headers["Access-Control-Allow-Origin"] = origin
    return headers


def response(status: int, body: Any, extra_headers: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {**_headers(), **(extra_headers or {})},
        "body": json.dumps(body, separators=(",", ":"), allow_nan=False),
        "isBase64Encoded": False,
    }


def validation_details(exc: ValidationError) -> list[dict[str, str]]:
    return [{"field": ".".join(str(p) for p in err["loc"]) or "(query)", "problem": err["msg"]} for err in exc.errors()]


# -- pagination tokens ------------------------------------------------------------------------------


def encode_token(last_key: dict[str, Any] | None, scope: str) -> str | None:
    """DynamoDB's LastEvaluatedKey (wire format) → an opaque URL-safe token bound to the query's scope."""
    if not last_key:
        return None
    raw = json.dumps({"s": scope, "k": last_key}, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str | None, scope: str, key_names: tuple[str, ...]) -> dict[str, Any] | None:
    if token is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError):
        raise ApiError(400, "bad_request", "invalid next token") from None
    if not isinstance(data, dict) or data.get("s") != scope or not isinstance(data.get("k"), dict):
        raise ApiError(400, "bad_request", "the next token does not belong to this query")
    key = data["k"]
    if set(key) != set(key_names):
        raise ApiError(400, "bad_request", "invalid next token")
    for value in key.values():
        if not (isinstance(value, dict) and len(value) == 1 and next(iter(value)) in ("S", "N")):
            raise ApiError(400, "bad_request", "invalid next token")
        if not isinstance(next(iter(value.values())), str):
            raise ApiError(400, "bad_request", "invalid next token")
    return key


def parse_query(model: type[PageQuery], query: dict[str, str]) -> Any:
    try:
        return model.model_validate(query)
    except ValidationError as exc:
        raise ApiError(400, "bad_request", "invalid query parameters", validation_details(exc)) from None
