"""``battwin dashboard`` (registered through the ``battwin.cli`` entry-point group).

    battwin dashboard --local [--shadow iot|mqtt://HOST:PORT] [--port 8090]
        the API handler in process: tables from DEVICE_STATE_TABLE / HISTORY_TABLE (AWS_ENDPOINT_URL for an
        emulator), shadow edits through the IoT data plane or a broker with the local shadow service
    battwin dashboard --api https://ID.execute-api.REGION.amazonaws.com/v1 [--api-auth iam|none] [--shadow iot]
        a deployed API (SigV4-signed with the default AWS credentials: the default for execute-api URLs)

``battwin demo`` starts its own dashboard on the local stack.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from collections.abc import Sequence
from typing import Any, Literal

log = logging.getLogger("battwin.dashboard.cli")


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--api", metavar="URL", help="a deployed fleet/device API (API Gateway stage URL)")
    src.add_argument(
        "--local", action="store_true", help="call the API handler in process (tables from the environment)"
    )
    p.add_argument(
        "--api-auth",
        choices=["none", "iam"],
        default=None,
        help="sign API requests with SigV4 (default: iam for an execute-api URL, none otherwise)",
    )
    p.add_argument("--region", help="the API's region (default: from the URL)")
    p.add_argument(
        "--shadow",
        default="none",
        metavar="iot|mqtt://HOST:PORT|none",
        help="how configuration edits travel: IoT data plane (boto3), a broker with the shadow service, or none",
    )
    p.add_argument(
        "--shadow-root", default="$aws", help="shadow topic root on an MQTT broker ($aws; local-aws on amqtt)"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--poll-ms", type=int, default=1500, help="how often the UI polls (ms)")


def default_auth(url: str) -> Literal["none", "iam"]:
    """API Gateway stage URLs are signed (the template's default ApiAuth is IAM); anything else is not."""
    return "iam" if ".execute-api." in url else "none"


def run(args: argparse.Namespace) -> int:
    from cloud.dashboard.api_client import ApiClient, HttpApi, InProcessApi
    from cloud.dashboard.server import Dashboard, DashboardServer
    from cloud.dashboard.shadow_control import IotDataShadowControl, MqttShadowControl, ShadowControl
    from device_agent.logging_setup import setup_logging

    setup_logging("INFO", stream=sys.stderr)
    try:
        api: ApiClient = (
            InProcessApi(description="API handler in process")
            if args.local
            else HttpApi(args.api, auth=args.api_auth or default_auth(args.api), region=args.region)
        )
    except ValueError as exc:
        print(f"battwin dashboard: {exc}", file=sys.stderr)
        return 2
    shadows: ShadowControl | None = None
    if args.shadow == "iot":
        shadows = IotDataShadowControl()
    elif args.shadow.startswith(("mqtt://", "mqtts://")):
        shadows = MqttShadowControl(args.shadow, topic_root=args.shadow_root)
    elif args.shadow != "none":
        print(
            f"battwin dashboard: --shadow must be iot, mqtt://HOST:PORT or none, not {args.shadow!r}", file=sys.stderr
        )
        return 2
    server = DashboardServer(Dashboard(api, shadows, poll_ms=args.poll_ms), args.host, args.port).start()
    print(f"battwin dashboard on {server.url} (data: {api.description}; Ctrl-C to stop)", flush=True)
    stop = threading.Event()
    try:
        import signal

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
    finally:
        server.stop()
    return 0


def register(subparsers: Any) -> None:
    """Add ``dashboard`` to the ``battwin`` parser (the ``battwin.cli`` entry point)."""
    p = subparsers.add_parser("dashboard", help="serve the web dashboard over the fleet/device API")
    add_arguments(p)
    p.set_defaults(func=run)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="battwin dashboard", description="serve the battwin web dashboard")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
