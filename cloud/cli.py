"""``battwin cloud …`` commands (registered through the ``battwin.cli`` entry-point group).

    battwin cloud deploy --stack NAME [--template cloud/template.yaml] [--param K=V ...] [--artifact-bucket B]
    battwin cloud package [--out DIR] [--site-packages DIR]
    battwin cloud outputs --stack NAME
    battwin cloud api-local [--host H] [--port P]

Also runnable without the entry point: ``python -m cloud.cli deploy --stack NAME``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

log = logging.getLogger("battwin.cloud.cli")


def _fail(message: str, code: int) -> int:
    print(f"battwin cloud: {message}", file=sys.stderr)
    return code


def cmd_deploy(args: argparse.Namespace) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    from cloud.deploy import DeployError, deploy, parse_params
    from cloud.package import PackageError

    template = Path(args.template)
    if not template.is_file():
        return _fail(f"template {template} does not exist", EXIT_USAGE)
    try:
        params = parse_params(args.param)
        result = deploy(
            args.stack,
            template=template,
            params=params,
            artifact_bucket=args.artifact_bucket,
            wait=not args.no_wait,
            say=lambda text: print(text, flush=True),
        )
    except (DeployError, PackageError) as exc:
        return _fail(str(exc), EXIT_FAILURE if isinstance(exc, PackageError) else EXIT_USAGE)
    except (BotoCoreError, ClientError) as exc:
        return _fail(f"{type(exc).__name__}: {exc}", EXIT_FAILURE)
    print(f"stack {result.stack}: {result.action} ({result.status})")
    _print_outputs(result.outputs)
    return EXIT_OK


def cmd_outputs(args: argparse.Namespace) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    from cloud.deploy import DeployError, stack_outputs

    try:
        outputs = stack_outputs(args.stack)
    except DeployError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except (BotoCoreError, ClientError) as exc:
        return _fail(f"{type(exc).__name__}: {exc}", EXIT_FAILURE)
    if args.json:
        print(json.dumps(outputs, indent=2, sort_keys=True))
    else:
        _print_outputs(outputs)
    return EXIT_OK


def cmd_package(args: argparse.Namespace) -> int:
    from cloud.package import PackageError, build_lambda_zip, build_training_source

    out = Path(args.out)
    try:
        site = Path(args.site_packages) if args.site_packages else None
        for art in (build_lambda_zip(site_packages=site), build_training_source()):
            path = art.write(out)
            print(f"{path}  {len(art.data):,} bytes  sha256 {art.sha256}")
    except PackageError as exc:
        return _fail(str(exc), EXIT_FAILURE)
    return EXIT_OK


def cmd_api_local(args: argparse.Namespace) -> int:
    from cloud.api.local_server import run

    return run(args)


def _print_outputs(outputs: dict[str, str]) -> None:
    if not outputs:
        return
    width = max(len(k) for k in outputs)
    print("outputs:")
    for key in sorted(outputs):
        print(f"  {key.ljust(width)}  {outputs[key]}")


def register(subparsers: Any) -> None:
    """Add ``cloud`` and its subcommands to the ``battwin`` parser (the ``battwin.cli`` entry point)."""
    from cloud.deploy import TEMPLATE

    cloud = subparsers.add_parser("cloud", help="deploy and run the battwin cloud back end (AWS)")
    sub = cloud.add_subparsers(dest="cloud_command", required=True)

    p = sub.add_parser("deploy", help="package, upload and create/update the CloudFormation stack")
    p.add_argument("--stack", required=True, help="stack name")
    p.add_argument("--template", default=str(TEMPLATE), help="template file (default: the packaged template)")
    p.add_argument("--param", action="append", metavar="K=V", help="template parameter (repeatable)")
    p.add_argument("--artifact-bucket", help="bucket for code and template (default battwin-deploy-<account>-<region>)")
    p.add_argument("--no-wait", action="store_true", help="return once the stack operation has started")
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("outputs", help="print the outputs of a deployed stack")
    p.add_argument("--stack", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_outputs)

    p = sub.add_parser("package", help="build lambda.zip and training-source.tar.gz")
    p.add_argument("--out", default="build/cloud", help="output directory (default build/cloud)")
    p.add_argument("--site-packages", help="take pydantic & co. from this directory (a Lambda-compatible install)")
    p.set_defaults(func=cmd_package)

    p = sub.add_parser("api-local", help="serve the fleet/device API locally over HTTP")
    from cloud.api.local_server import add_arguments

    add_arguments(p)
    p.set_defaults(func=cmd_api_local)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="battwin")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["cloud", *(argv if argv is not None else sys.argv[1:])])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
