"""Fleet and device API: an API Gateway (REST, Lambda proxy) handler, usable in-process as a plain function.

Routes (all ``GET``; JSON responses; list endpoints take ``limit`` (1–1000) and the opaque ``next`` token
returned by the previous page; a page also ends before its items pass :data:`MAX_PAGE_BYTES` in the response,
so no response reaches Lambda's 6 MB limit whatever the items' sizes, and ``next`` then continues after the
last item returned)::

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

import json
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
from cloud.api.views import device_detail, device_summary, history_item, message_body, with_live
from cloud.aws import (
    LambdaContext,
    batch_get_items,
    client,
    env,
    error_code,
    request_id,
    setup_lambda_logging,
    unmarshal,
)
from cloud.live_window import newest_live_item
from cloud.tables import HISTORY_BY_TIME_INDEX, history_pk, sk_lower, sk_upper

log = logging.getLogger("battwin.cloud.api")

THING_RE = r"[A-Za-z0-9_.:\-]{1,128}"
#: a page's items, measured as they appear in the Lambda proxy response (the body is a JSON string inside the
#: response JSON, so quotes count twice), stay under this; Lambda refuses responses over 6 MB (API Gateway: 502)
MAX_PAGE_BYTES = 5 * 1024 * 1024


def encoded_size(view: dict[str, Any]) -> int:
    """Bytes ``view`` adds to the proxy response: its JSON, escaped into the body string, plus a comma."""
    return len(json.dumps(json.dumps(view, separators=(",", ":"), allow_nan=False))) - 1


class PageBuilder:
    """Collects a page's views until the next one would pass :data:`MAX_PAGE_BYTES` (at least one item)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.views: list[dict[str, Any]] = []
        self.size = 0
        self.last_raw: dict[str, Any] | None = None
        self.full = False

    def add(self, raw: dict[str, Any], view: dict[str, Any]) -> bool:
        """Add the view of stored item ``raw``; False (and full) if it does not fit."""
        n = encoded_size(view)
        if self.views and self.size + n > self.max_bytes:
            self.full = True
            return False
        self.views.append(view)
        self.size += n
        self.last_raw = raw
        return True

    def next_key(self, key_names: tuple[str, ...], last_evaluated: dict[str, Any] | None) -> dict[str, Any] | None:
        """Where the next page starts: after the last item taken if the page filled up, else DynamoDB's."""
        if self.full and self.last_raw is not None:
            return {k: self.last_raw[k] for k in key_names}
        return last_evaluated


# -- the API ----------------------------------------------------------------------------------------


class Api:
    """The routes over the two tables (``dynamodb`` is a boto3 DynamoDB client)."""

    def __init__(
        self, device_state_table: str, history_table: str, dynamodb: Any = None, max_page_bytes: int = MAX_PAGE_BYTES
    ) -> None:
        self.max_page_bytes = max_page_bytes
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
        out = PageBuilder(self.max_page_bytes)
        for raw in page.get("Items", []):
            state = unmarshal(raw)
            if not out.add(raw, device_summary(with_live(state, self._live(state["thing"])))):
                break
        items = sorted(out.views, key=lambda d: d["thing"])
        return {"items": items, "next": encode_token(out.next_key(("thing",), page.get("LastEvaluatedKey")), scope)}

    def get_device(self, thing: str) -> dict[str, Any]:
        got = self.ddb.get_item(TableName=self.device_state_table, Key={"thing": {"S": thing}}, ConsistentRead=True)
        if "Item" not in got:
            raise ApiError(404, "not_found", f"no device {thing!r}")
        return device_detail(with_live(unmarshal(got["Item"]), self._live(thing)))

    def _live(self, thing: str) -> dict[str, Any] | None:
        """The thing's newest telemetry live-window item (its latest sample; telemetry does not touch DeviceState)."""
        return newest_live_item(self.ddb, self.history_table, thing)

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
        out = PageBuilder(self.max_page_bytes)
        # the index holds keys only: fetch the items (100 at a time, keeping the index's order) until the page is full
        chunk = len(found) if q.kind is not None else 100
        for first in range(0, len(found), max(chunk, 1)):
            part = found[first : first + chunk]
            if q.kind is None:
                part = self._batch_get([{"pk": k["pk"], "sk": k["sk"]} for k in part])
            if not all(out.add(raw, history_item(unmarshal(raw))) for raw in part):
                break
        last = out.next_key(key_names, page.get("LastEvaluatedKey"))
        return {"thing": thing, "items": out.views, "next": encode_token(last, scope)}

    def _batch_get(self, keys: list[dict[str, Any]]) -> list[dict[str, Any]]:
        got = {(i["pk"]["S"], i["sk"]["S"]): i for i in batch_get_items(self.ddb, self.history_table, keys)}
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
        out = PageBuilder(self.max_page_bytes)
        for raw in page.get("Items", []):
            it = unmarshal(raw)
            if not out.add(raw, {"id": it.get("id"), "ts": it.get("ts"), **message_body(it)}):
                break
        last = out.next_key(("pk", "sk"), page.get("LastEvaluatedKey"))
        return {"thing": thing, "items": out.views, "next": encode_token(last, scope)}

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
