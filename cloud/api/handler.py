"""Fleet and device API: an API Gateway (REST, Lambda proxy) handler, usable in-process as a plain function.

Routes (all ``GET``; JSON responses; list endpoints take ``limit`` (1–1000) and the opaque ``next`` token
returned by the previous page)::

    /devices                                   fleet summary (one row per thing)
    /devices/{thing}                           the thing's state: health, latest sample, open alarms, last cycle
    /devices/{thing}/history?from&to&kind&order   stored messages in a time range (from/to: Unix seconds or
                                               ISO 8601; kind: telemetry|cycles|health|alarms; order: asc|desc)
    /devices/{thing}/cycles                    the thing's cycle records (charge and discharge), oldest first

:func:`handle` takes the proxy event and returns the proxy response; :func:`handler` is the Lambda entry
point. Authorisation (IAM or Cognito) is API Gateway's job, configured by the template.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import unquote

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from cloud.aws import LambdaContext, client, env, error_code, request_id, setup_lambda_logging, unmarshal
from cloud.tables import HISTORY_BY_TIME_INDEX, history_pk, sk_lower, sk_upper
from schema.messages import MessageKind

log = logging.getLogger("battwin.cloud.api")

THING_RE = r"[A-Za-z0-9_.:\-]{1,128}"
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


def _validation_details(exc: ValidationError) -> list[dict[str, str]]:
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


# -- the API ----------------------------------------------------------------------------------------


class Api:
    """The routes over the two tables (``dynamodb`` is a boto3 DynamoDB client)."""

    def __init__(self, device_state_table: str, history_table: str, dynamodb: Any = None) -> None:
        self.device_state_table = device_state_table
        self.history_table = history_table
        self.ddb = dynamodb or client("dynamodb")
        self.routes: list[tuple[re.Pattern[str], str, Callable[[str, dict[str, str]], dict[str, Any]]]] = [
            (re.compile(r"^/devices/?$"), "/devices", lambda _t, q: self.list_devices(q)),
            (re.compile(r"^/devices/(?P<thing>[^/]+)/?$"), "/devices/{thing}", lambda t, q: self.get_device(t)),
            (re.compile(r"^/devices/(?P<thing>[^/]+)/history/?$"), "/devices/{thing}/history", self.history),
            (re.compile(r"^/devices/(?P<thing>[^/]+)/cycles/?$"), "/devices/{thing}/cycles", self.cycles),
        ]

    @classmethod
    def from_env(cls) -> Api:
        return cls(env("DEVICE_STATE_TABLE"), env("HISTORY_TABLE"))

    # -- dispatch ---------------------------------------------------------------------------------
    def handle(self, event: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            ev = ProxyEvent.model_validate(event)
        except ValidationError as exc:
            details = _validation_details(exc)
            return response(400, {"error": "bad_request", "message": "malformed request", "details": details})
        try:
            result = self._dispatch(ev)
            status, body = 200, result
        except ApiError as exc:
            status = exc.status
            body = {"error": exc.error, "message": exc.message}
            if exc.details is not None:
                body["details"] = exc.details
        except Exception as exc:
            log.exception("api request failed", extra={"path": ev.path, "error": error_code(exc) or type(exc).__name__})
            status, body = 500, {"error": "internal", "message": "internal error"}
        log.info(
            "api request",
            extra={
                "method": ev.httpMethod,
                "path": ev.path,
                "status": status,
                "ms": round((time.perf_counter() - started) * 1000, 1),
            },
        )
        headers = {"Allow": "GET"} if status == 405 else None
        return response(status, body, headers)

    def _dispatch(self, ev: ProxyEvent) -> dict[str, Any]:
        params = ev.pathParameters or {}
        for pattern, resource, fn in self.routes:
            if ev.resource is not None and ev.resource == resource:  # API Gateway: the matched resource
                thing = params.get("thing", "")
            else:  # a bare event (local server, tests): route by path
                m = pattern.match(ev.path)
                if m is None:
                    continue
                thing = unquote(m.groupdict().get("thing") or "")
            if ev.httpMethod.upper() != "GET":
                raise ApiError(405, "method_not_allowed", f"{ev.httpMethod} is not allowed here; use GET")
            if "{thing}" in resource and not re.fullmatch(THING_RE, thing):
                raise ApiError(400, "bad_request", f"invalid thing name {thing[:140]!r}")
            return fn(thing, ev.queryStringParameters or {})
        raise ApiError(404, "not_found", f"no route for {ev.path}")

    # -- routes -----------------------------------------------------------------------------------
    def list_devices(self, query: dict[str, str]) -> dict[str, Any]:
        q = _parse(PageQuery, query)
        scope = "devices"
        kwargs: dict[str, Any] = {"TableName": self.device_state_table, "Limit": q.limit}
        start = decode_token(q.next, scope, ("thing",))
        if start:
            kwargs["ExclusiveStartKey"] = start
        page = self._call(self.ddb.scan, **kwargs)
        items = [device_summary(unmarshal(it)) for it in page.get("Items", [])]
        items.sort(key=lambda d: d["thing"])
        return {"items": items, "next": encode_token(page.get("LastEvaluatedKey"), scope)}

    def get_device(self, thing: str) -> dict[str, Any]:
        got = self.ddb.get_item(TableName=self.device_state_table, Key={"thing": {"S": thing}}, ConsistentRead=True)
        if "Item" not in got:
            raise ApiError(404, "not_found", f"no device {thing!r}")
        return device_detail(unmarshal(got["Item"]))

    def history(self, thing: str, query: dict[str, str]) -> dict[str, Any]:
        q = _parse(HistoryQuery, query)
        lo = q.from_ if q.from_ is not None else 0.0
        hi = q.to if q.to is not None else 32_503_680_000.0
        if hi < lo:
            raise ApiError(400, "bad_request", "'to' is before 'from'")
        scope = f"history|{thing}|{q.kind or '*'}|{lo}|{hi}|{q.order}"
        kwargs: dict[str, Any] = {
            "TableName": self.history_table,
            "Limit": q.limit,
            "ScanIndexForward": q.order == "asc",
            "ExpressionAttributeValues": {":lo": {"S": sk_lower(lo)}, ":hi": {"S": sk_upper(hi)}},
        }
        if q.kind is not None:
            kwargs["KeyConditionExpression"] = "pk = :pk AND sk BETWEEN :lo AND :hi"
            kwargs["ExpressionAttributeValues"][":pk"] = {"S": history_pk(thing, q.kind)}
            key_names: tuple[str, ...] = ("pk", "sk")
        else:
            kwargs["IndexName"] = HISTORY_BY_TIME_INDEX
            kwargs["KeyConditionExpression"] = "thing = :thing AND sk BETWEEN :lo AND :hi"
            kwargs["ExpressionAttributeValues"][":thing"] = {"S": thing}
            key_names = ("pk", "sk", "thing")
        start = decode_token(q.next, scope, key_names)
        if start:
            kwargs["ExclusiveStartKey"] = start
        page = self._call(self.ddb.query, **kwargs)
        found = page.get("Items", [])
        if q.kind is None:  # the index holds keys only: fetch the items, keep the index's order
            found = self._batch_get([{"pk": k["pk"], "sk": k["sk"]} for k in found])
        items = [history_item(unmarshal(it)) for it in found]
        return {"thing": thing, "items": items, "next": encode_token(page.get("LastEvaluatedKey"), scope)}

    def _batch_get(self, keys: list[dict[str, Any]]) -> list[dict[str, Any]]:
        got: dict[tuple[str, str], dict[str, Any]] = {}
        for start in range(0, len(keys), 100):
            request: dict[str, Any] = {self.history_table: {"Keys": keys[start : start + 100]}}
            for attempt in range(8):
                resp = self.ddb.batch_get_item(RequestItems=request)
                for item in resp.get("Responses", {}).get(self.history_table, []):
                    got[(item["pk"]["S"], item["sk"]["S"])] = item
                request = resp.get("UnprocessedKeys") or {}
                if not request:
                    break
                time.sleep(min(0.05 * 2**attempt, 1.0))
            if request:
                raise RuntimeError("BatchGetItem left keys unprocessed after retries")
        # an item whose TTL expired between the two reads is simply absent
        return [got[(k["pk"]["S"], k["sk"]["S"])] for k in keys if (k["pk"]["S"], k["sk"]["S"]) in got]

    def cycles(self, thing: str, query: dict[str, str]) -> dict[str, Any]:
        q = _parse(CyclesQuery, query)
        scope = f"cycles|{thing}|{q.order}"
        kwargs: dict[str, Any] = {
            "TableName": self.history_table,
            "Limit": q.limit,
            "ScanIndexForward": q.order == "asc",
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": history_pk(thing, "cycles")}},
        }
        start = decode_token(q.next, scope, ("pk", "sk"))
        if start:
            kwargs["ExclusiveStartKey"] = start
        page = self._call(self.ddb.query, **kwargs)
        items = []
        for raw in page.get("Items", []):
            it = unmarshal(raw)
            items.append({"id": it.get("id"), "ts": it.get("ts"), **_body(it)})
        return {"thing": thing, "items": items, "next": encode_token(page.get("LastEvaluatedKey"), scope)}

    @staticmethod
    def _call(fn: Callable[..., dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
        try:
            return fn(**kwargs)
        except Exception as exc:
            if error_code(exc) == "ValidationException" and "ExclusiveStartKey" in kwargs:
                raise ApiError(400, "bad_request", "invalid next token") from None
            raise


def _parse(model: type[PageQuery], query: dict[str, str]) -> Any:
    try:
        return model.model_validate(query)
    except ValidationError as exc:
        raise ApiError(400, "bad_request", "invalid query parameters", _validation_details(exc)) from None


def _body(item: dict[str, Any]) -> dict[str, Any]:
    try:
        body = json.loads(item.get("body") or "{}")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def history_item(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": item.get("id"),
        "kind": item.get("kind"),
        "ts": item.get("ts"),
        "received_at": item.get("received_at"),
        "simulated": item.get("simulated"),
        "body": _body(item),
    }


def open_alarms(state: dict[str, Any]) -> list[dict[str, Any]]:
    alarms = state.get("alarms") or {}
    found = [a for a in alarms.values() if isinstance(a, dict) and a.get("active")]
    return sorted(found, key=lambda a: (-float(a.get("ts") or 0.0), str(a.get("code"))))


def device_summary(state: dict[str, Any]) -> dict[str, Any]:
    health = state.get("health") or {}
    sample = state.get("latest_sample") or {}
    temps = sample.get("temperatures_c") or []
    return {
        "thing": state["thing"],
        "first_seen": state.get("first_seen"),
        "last_seen": state.get("last_seen"),
        "updated_at": state.get("updated_at"),  # cloud receive time (last_seen is the device's clock)
        "source_id": sample.get("source_id") or health.get("source_id"),
        "last_kind": state.get("last_kind"),
        "simulated": state.get("simulated"),
        "soh": health.get("soh"),
        "rul_cycles": health.get("rul_cycles"),
        "capacity_ah": health.get("capacity_ah"),
        "health_method": health.get("method"),
        "cycle_index": health.get("cycle_index"),
        "voltage_v": sample.get("voltage_v"),
        "current_a": sample.get("current_a"),
        "temperature_c": (sum(temps) / len(temps)) if temps and all(math.isfinite(t) for t in temps) else None,
        "soc_pct": sample.get("soc_pct"),
        "open_alarms": [a.get("code") for a in open_alarms(state)],
    }


def device_detail(state: dict[str, Any]) -> dict[str, Any]:
    return {
        **device_summary(state),
        "latest_sample": state.get("latest_sample"),
        "health": state.get("health"),
        "health_ts": state.get("health_ts"),
        "last_cycle": state.get("last_cycle"),
        "alarms": open_alarms(state),
        "all_alarms": sorted((state.get("alarms") or {}).values(), key=lambda a: str(a.get("code"))),
    }


# -- Lambda entry -----------------------------------------------------------------------------------

_CACHE: dict[str, Api] = {}


def handle(event: dict[str, Any], api: Api | None = None) -> dict[str, Any]:
    """API Gateway proxy event → proxy response (tables from the environment unless ``api`` is given)."""
    if api is None:
        tables = (env("DEVICE_STATE_TABLE"), env("HISTORY_TABLE"))
        api = _CACHE.get("api")
        if api is None or (api.device_state_table, api.history_table) != tables:
            api = _CACHE["api"] = Api(*tables)
    return api.handle(event)


def handler(event: dict[str, Any], context: LambdaContext | None = None) -> dict[str, Any]:
    """Lambda entry point (``cloud.api.handler.handler``)."""
    setup_lambda_logging()
    resp = handle(event)
    if resp["statusCode"] >= 500:
        log.error("api error response", extra={"request_id": request_id(context)})
    return resp
