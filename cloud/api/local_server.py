"""A small local HTTP server that serves the API handler (for a local dashboard, tests and demos).

Each request is turned into an API Gateway REST proxy event and passed to the same
:func:`cloud.api.handler.handle` that runs in Lambda, so both answer identically. Tables come from
``DEVICE_STATE_TABLE`` / ``HISTORY_TABLE`` (and ``AWS_ENDPOINT_URL`` for a local emulator), or from an
:class:`~cloud.api.handler.Api` passed in.

    python -m cloud.api.local_server --port 8080        # or: battwin cloud api-local --port 8080
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cloud.api.handler import Api, handle

log = logging.getLogger("battwin.cloud.api.local")

Handler = Callable[[dict[str, Any]], dict[str, Any]]


def proxy_event(method: str, target: str, headers: dict[str, str], body: bytes | None = None) -> dict[str, Any]:
    """An HTTP request line + headers → an API Gateway REST proxy event (without ``resource``)."""
    parts = urlsplit(target)
    multi = parse_qs(parts.query, keep_blank_values=True)
    return {
        "httpMethod": method,
        "path": parts.path or "/",
        "resource": None,
        "pathParameters": None,
        "queryStringParameters": {k: v[-1] for k, v in multi.items()} or None,
        "multiValueQueryStringParameters": multi or None,
        "headers": headers,
        "body": body.decode("utf-8", "replace") if body else None,
        "isBase64Encoded": False,
        "requestContext": {"stage": "local", "httpMethod": method, "path": parts.path},
    }


class _RequestHandler(BaseHTTPRequestHandler):
    server_version = "battwin-api/1"
    api_handler: Handler

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else None
        event = proxy_event(self.command, self.path, {k: v for k, v in self.headers.items()}, body)
        try:
            resp = type(self).api_handler(event)
        except Exception:
            log.exception("local api handler failed")
            resp = {
                "statusCode": 500,
                "headers": {"Content-Type": "application/json"},
                "body": json.dumps({"error": "internal", "message": "internal error"}),
            }
        payload = str(resp.get("body") or "").encode("utf-8")
        self.send_response(int(resp.get("statusCode", 500)))
        for name, value in (resp.get("headers") or {}).items():
            self.send_header(name, str(value))
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = _serve
    do_POST = _serve
    do_PUT = _serve
    do_DELETE = _serve
    do_PATCH = _serve
    do_HEAD = _serve

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("local api: " + format, *args)


class LocalApiServer:
    """``ThreadingHTTPServer`` around the API handler; ``start()`` serves in a background thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, api: Api | None = None) -> None:
        def call(event: dict[str, Any]) -> dict[str, Any]:
            return handle(event, api)

        handler_cls = type("BoundHandler", (_RequestHandler,), {"api_handler": staticmethod(call)})
        self.httpd = ThreadingHTTPServer((host, port), handler_cls)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> LocalApiServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="battwin-local-api", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)


def run(args: argparse.Namespace) -> int:
    from device_agent.logging_setup import setup_logging

    setup_logging("INFO")
    server = LocalApiServer(args.host, args.port)
    print(f"battwin API on {server.url} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="battwin-api-local", description="serve the battwin API locally")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
