"""Fleet and device API: an API Gateway (REST, Lambda proxy) handler, usable in-process as a plain function.

Routes (all ``GET``; JSON responses; list endpoints take ``limit`` (1–1000) and the opaque ``next`` token
returned by the previous page)::

    /devices                                   fleet summary (one row per thing)
    /devices/{thing}                           the thing's state: health, latest sample, open alarms, last cycle
    /devices/{thing}/history?from&to&kind&order   stored messages in a time range (from/to: Unix seconds or
                                               ISO 8601; kind: telemetry|cycles|health|alarms; order: asc|desc)
    /devices/{thing}/cycles                    the thing's cycle records (charge and discharge), oldest first

:func:`handle` takes the proxy event and returns the proxy response; :func:`handler` is the Lambda entry
point. Queries, errors, responses and pagination tokens: :mod:`cloud.api.protocol`; the JSON views of
stored items: :mod:`cloud.api.views`. Authorisation (IAM or Cognito) is API Gateway's job, configured by the template.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from pydantic import ValidationError

from cloud.api.protocol import (
    ApiError,
    CyclesQuery,
    HistoryQuery,
    PageQuery,
    ProxyEvent,
    decode_token,
    encode_token,
    parse_query,
    response,
    validation_details,
)
from cloud.api.views import device_detail, device_summary, history_item, message_body
from cloud.aws import LambdaContext, client, env, error_code, request_id, setup_lambda_logging, unmarshal
from cloud.tables import HISTORY_BY_TIME_INDEX, history_pk, sk_lower, sk_upper

log = logging.getLogger("battwin.cloud.api")

THING_RE = r"[A-Za-z0-9_.:\-]{1,128}"


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
            details = validation_details(exc)
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
        q = parse_query(PageQuery, query)
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
        q = parse_query(HistoryQuery, query)
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
        q = parse_query(CyclesQuery, query)
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
            items.append({"id": it.get("id"), "ts": it.get("ts"), **message_body(it)})
        return {"thing": thing, "items": items, "next": encode_token(page.get("LastEvaluatedKey"), scope)}

    @staticmethod
    def _call(fn: Callable[..., dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
        try:
            return fn(**kwargs)
        except Exception as exc:
            if error_code(exc) == "ValidationException" and "ExclusiveStartKey" in kwargs:
                raise ApiError(400, "bad_request", "invalid next token") from None
            raise


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
