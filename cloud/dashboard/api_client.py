"""How the dashboard reads the fleet/device API: in process (the handler itself) or over HTTP (API Gateway).

Both give the same JSON, because the in-process client builds the API Gateway proxy event that the
deployed API receives (:func:`cloud.api.local_server.proxy_event`) and calls the same handler.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.error
import urllib.request
from typing import Any, Literal, Protocol
from urllib.parse import quote, urlencode, urlsplit

from cloud.api.handler import Api, handle
from cloud.api.local_server import proxy_event

log = logging.getLogger("battwin.dashboard.api")


class ApiClientError(Exception):
    """The API answered with an error status (``status``, ``body``) or could not be reached (status 502)."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"API error {status}: {body.get('message') or body.get('error') or body}")
        self.status = status
        self.body = body


class ApiClient(Protocol):
    #: shown in the UI: where the data comes from
    description: str

    def request(self, path: str, query: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        """GET ``path`` (e.g. ``/devices/t1/history``) → (status, JSON body)."""
        ...


def get_json(client: ApiClient, path: str, query: dict[str, str] | None = None) -> dict[str, Any]:
    """GET and return the body; raise :class:`ApiClientError` for any status but 200."""
    status, body = client.request(path, query)
    if status != 200:
        raise ApiClientError(status, body)
    return body


def device_path(thing: str, *rest: str) -> str:
    return "/".join(["/devices", quote(thing, safe=""), *rest])


def _target(path: str, query: dict[str, str] | None) -> str:
    return path + ("?" + urlencode(query) if query else "")


def _decode(raw: bytes | str | None) -> dict[str, Any]:
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        return {"error": "bad_gateway", "message": "the API answered with something that is not JSON"}
    return body if isinstance(body, dict) else {"error": "bad_gateway", "message": "unexpected JSON"}


class InProcessApi:
    """Calls :func:`cloud.api.handler.handle` directly (tables from ``api`` or the environment)."""

    def __init__(self, api: Api | None = None, description: str = "API handler (in process)") -> None:
        self.api = api
        self.description = description

    def request(self, path: str, query: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        event = proxy_event("GET", _target(path, query), {"Accept": "application/json"})
        resp = handle(event, self.api)
        return int(resp.get("statusCode", 500)), _decode(resp.get("body"))


_EXECUTE_API_RE = re.compile(r"\.execute-api\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?$")


class HttpApi:
    """A deployed API (API Gateway stage URL), optionally signed with SigV4 for ``ApiAuth=IAM``."""

    def __init__(
        self,
        base_url: str,
        auth: Literal["none", "iam"] = "none",
        region: str | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"API URL must be http(s)://host[/stage], got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.auth = auth
        match = _EXECUTE_API_RE.search(parts.hostname or "")
        self.region = region or (match.group(1) if match else None)
        if auth == "iam" and not self.region:
            raise ValueError("IAM-signed requests need the API's region (--region)")
        self.timeout_s = timeout_s
        self.description = f"API {self.base_url}" + (" (IAM)" if auth == "iam" else "")

    def _headers(self, url: str) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.auth != "iam":
            return headers
        import boto3
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        credentials = boto3.session.Session().get_credentials()
        if credentials is None:
            raise ApiClientError(401, {"error": "no_credentials", "message": "no AWS credentials to sign with"})
        req = AWSRequest(method="GET", url=url, headers=headers)
        SigV4Auth(credentials.get_frozen_credentials(), "execute-api", str(self.region)).add_auth(req)
        return dict(req.headers.items())

    def request(self, path: str, query: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        url = self.base_url + _target(path, query)
        req = urllib.request.Request(url, headers=self._headers(url), method="GET")  # noqa: S310 - http(s) only
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # noqa: S310 - checked scheme
                return int(resp.status), _decode(resp.read())
        except urllib.error.HTTPError as exc:
            return int(exc.code), _decode(exc.read())
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            log.warning("API unreachable", extra={"url": url, "error": str(exc)[:200]})
            return 502, {"error": "bad_gateway", "message": f"API unreachable: {exc}"[:300]}
