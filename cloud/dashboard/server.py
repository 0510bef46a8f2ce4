"""The dashboard's HTTP server: the static single-page UI and its JSON endpoints.

    GET  /                               the UI (static/index.html; static/* for its scripts and styles)
    GET  /api/info                       where the data comes from, whether shadow editing is available
    GET  /api/fleet                      one row per thing (DashboardData.fleet)
    GET  /api/fleet/overview             the fleet view's charts, ≤ 5 MB (DashboardData.fleet_overview)
    GET  /api/things/{thing}             everything a battery page shows (DashboardData.thing)
    GET  /api/things/{thing}/shadow      the configuration shadow: desired, reported, rejected, delta
    POST /api/things/{thing}/shadow      {"desired": {...}}: merged into the shadow's desired state
    GET  /api/v1/devices[/…]             the fleet/device API itself, passed through unchanged
    GET  /api/retrain                    the local stack's retraining loop: run in progress, last result, champion
    POST /api/retrain                    start one retraining run (202; 409 while one runs; 501 without a loop)

Loopback by default. POSTs must be ``application/json`` and, when the browser sends an ``Origin``, come
from this server's own origin, so another web page cannot change a device's configuration.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from cloud.dashboard.api_client import ApiClient, ApiClientError
from cloud.dashboard.shadow_control import ShadowControl, ShadowControlError, shadow_view
from cloud.dashboard.views import DashboardData

log = logging.getLogger("battwin.dashboard.server")

STATIC_DIR = Path(__file__).resolve().parent / "static"
THING_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
MAX_BODY_BYTES = 16 * 1024
POLL_MS = 1500
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


class HttpError(Exception):
    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message


class RetrainControl(Protocol):
    """What the dashboard needs of a retraining loop (cloud.local_stack.local_train.LocalRetrainLoop)."""

    def start(self) -> str: ...  # a RuntimeError (LoopBusy) while a run is in progress

    def status(self) -> dict[str, Any]: ...


class Dashboard:
    """The application behind the HTTP handler (usable without a socket in tests)."""

    def __init__(
        self,
        api: ApiClient,
        shadows: ShadowControl | None = None,
        poll_ms: int = POLL_MS,
        retrain: RetrainControl | None = None,
    ) -> None:
        self.api = api
        self.data = DashboardData(api)
        self.shadows = shadows
        self.poll_ms = poll_ms
        self.retrain = retrain

    def info(self) -> dict[str, Any]:
        return {
            "api": self.api.description,
            "shadow": self.shadows.description if self.shadows is not None else None,
            "poll_ms": self.poll_ms,
            "retrain": self.retrain is not None,
        }

    def retrain_status(self) -> dict[str, Any]:
        if self.retrain is None:
            raise HttpError(501, "no_retrain", "this dashboard was started without a retraining loop")
        return self.retrain.status()

    def start_retrain(self) -> dict[str, Any]:
        if self.retrain is None:
            raise HttpError(501, "no_retrain", "this dashboard was started without a retraining loop")
        if self.retrain.status().get("running"):
            raise HttpError(409, "busy", "a retraining run is in progress")
        try:
            self.retrain.start()
        except RuntimeError as exc:  # LoopBusy: another request started one just now
            raise HttpError(409, "busy", str(exc)) from None
        return self.retrain.status()

    def get_shadow(self, thing: str) -> dict[str, Any]:
        if self.shadows is None:
            raise HttpError(501, "no_shadow_control", "this dashboard was started without shadow control")
        try:
            return shadow_view(self.shadows.get(thing))
        except ShadowControlError as exc:
            raise HttpError(exc.status, "shadow_error", exc.message) from None

    def set_shadow(self, thing: str, body: Any) -> dict[str, Any]:
        if self.shadows is None:
            raise HttpError(501, "no_shadow_control", "this dashboard was started without shadow control")
        if not isinstance(body, dict) or not isinstance(body.get("desired"), dict) or not body["desired"]:
            raise HttpError(400, "bad_request", 'expected {"desired": {<section>: {<field>: <value>}}}')
        try:
            self.shadows.update_desired(thing, body["desired"])
            return shadow_view(self.shadows.get(thing))
        except ShadowControlError as exc:
            raise HttpError(exc.status, "shadow_error", exc.message) from None

    def close(self) -> None:
        self.data.close()
        if self.shadows is not None:
            self.shadows.close()


def _thing(raw: str) -> str:
    thing = unquote(raw)
    if not THING_RE.match(thing):
        raise HttpError(400, "bad_request", f"invalid thing name {thing[:140]!r}")
    return thing


class _Handler(BaseHTTPRequestHandler):
    server_version = "battwin-dashboard/1"
    app: Dashboard

    # -- plumbing ---------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str, cache: str = "no-store") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'",
        )
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload: Any) -> None:
        self._send(status, json.dumps(payload, separators=(",", ":"), allow_nan=False).encode(), "application/json")

    def _error(self, status: int, error: str, message: str) -> None:
        self._json(status, {"error": error, "message": message})

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("dashboard: " + format, *args)

    # -- routes -----------------------------------------------------------------------------------
    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        path = parts.path
        try:
            if path in ("/", "/index.html"):
                self._static("index.html")
            elif path.startswith("/static/"):
                self._static(path[len("/static/") :])
            elif path == "/api/info":
                self._json(200, self.app.info())
            elif path == "/api/fleet":
                self._json(200, self.app.data.fleet())
            elif path == "/api/fleet/overview":
                self._json(200, self.app.data.fleet_overview())
            elif path == "/api/retrain":
                self._json(200, self.app.retrain_status())
            elif m := re.fullmatch(r"/api/things/([^/]+)/shadow", path):
                self._json(200, self.app.get_shadow(_thing(m.group(1))))
            elif m := re.fullmatch(r"/api/things/([^/]+)", path):
                self._json(200, self.app.data.thing(_thing(m.group(1))))
            elif path.startswith("/api/v1/devices"):
                query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
                status, body = self.app.api.request(path[len("/api/v1") :], query or None)
                self._json(status, body)
            else:
                self._error(404, "not_found", f"no route for {path}")
        except HttpError as exc:
            self._error(exc.status, exc.error, exc.message)
        except ApiClientError as exc:
            self._json(exc.status if 400 <= exc.status < 600 else 502, exc.body)
        except (BrokenPipeError, ConnectionResetError):
            log.debug("the browser went away before the answer", extra={"path": path})
        except Exception:
            log.exception("dashboard request failed", extra={"path": path})
            self._error(500, "internal", "internal error")

    do_HEAD = do_GET

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        try:
            if path == "/api/retrain":
                self._check_origin()
                self._json(202, self.app.start_retrain())
                return
            m = re.fullmatch(r"/api/things/([^/]+)/shadow", path)
            if m is None:
                raise HttpError(404, "not_found", f"no route for POST {path}")
            self._check_origin()
            if (self.headers.get("Content-Type") or "").split(";")[0].strip().lower() != "application/json":
                raise HttpError(415, "unsupported_media_type", "send application/json")
            length = int(self.headers.get("Content-Length") or 0)
            if length <= 0 or length > MAX_BODY_BYTES:
                raise HttpError(413 if length > 0 else 400, "bad_request", f"body must be 1..{MAX_BODY_BYTES} bytes")
            try:
                body = json.loads(self.rfile.read(length))
            except ValueError:
                raise HttpError(400, "bad_request", "the body is not JSON") from None
            self._json(200, self.app.set_shadow(_thing(m.group(1)), body))
        except HttpError as exc:
            self._error(exc.status, exc.error, exc.message)
        except (BrokenPipeError, ConnectionResetError):
            log.debug("the browser went away before the answer", extra={"path": path})
        except Exception:
            log.exception("dashboard request failed", extra={"path": path})
            self._error(500, "internal", "internal error")

    def _check_origin(self) -> None:
        origin = self.headers.get("Origin")
        host = self.headers.get("Host")
        if origin is not None and urlsplit(origin).netloc != host:
            raise HttpError(403, "forbidden", "cross-origin requests may not change a shadow")

    def _static(self, name: str) -> None:
        allowed = {p.name: p for p in STATIC_DIR.iterdir() if p.is_file()}
        target = allowed.get(name)
        if target is None:
            raise HttpError(404, "not_found", f"no file {name[:100]!r}")
        self._send(200, target.read_bytes(), _TYPES.get(target.suffix, "application/octet-stream"), "no-cache")


class DashboardServer:
    """``ThreadingHTTPServer`` around :class:`Dashboard`; ``start()`` serves in a background thread."""

    def __init__(self, app: Dashboard, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        handler = type("DashboardHandler", (_Handler,), {"app": app})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}/"

    def start(self) -> DashboardServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="battwin-dashboard", daemon=True)
        self._thread.start()
        log.info("dashboard serving", extra={"url": self.url})
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self.app.close()
