"""Check what `mosquitto_sub -v` received from a `battwin run`: valid envelopes with the expected telemetry.

Usage: count_telemetry.py RECEIVED.txt --thing THING --min-samples N
Each line is "<topic> <payload>". Exit 0 when the telemetry envelopes (de-duplicated by id) validate against the
project's message models and carry at least N samples in all.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError

from schema.messages import Envelope, PackedBodyError, Telemetry


def count(lines: list[str], thing: str) -> tuple[int, dict[str, int], list[str]]:
    """Return (telemetry samples, messages per kind, problems)."""
    problems: list[str] = []
    kinds: dict[str, int] = {}
    seen: set[str] = set()
    samples = 0
    for n, line in enumerate(lines, 1):
        topic, _, payload = line.rstrip("\n").partition(" ")
        if not topic.startswith(f"battwin/{thing}/"):
            continue
        try:
            env = Envelope.model_validate_json(payload)
            body = env.parsed_body()
        except ValidationError as exc:
            problems.append(f"line {n} ({topic}): not a valid envelope: {exc.errors()[0]['msg']}")
            continue
        except PackedBodyError as exc:
            problems.append(f"line {n} ({topic}): not a valid envelope: {exc}")
            continue
        if env.thing != thing:
            problems.append(f"line {n}: thing {env.thing!r}, expected {thing!r}")
        if env.id in seen:
            continue
        seen.add(env.id)
        kinds[env.kind] = kinds.get(env.kind, 0) + 1
        if isinstance(body, Telemetry):
            samples += len(body.samples)
    return samples, kinds, problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("received", type=Path)
    p.add_argument("--thing", required=True)
    p.add_argument("--min-samples", type=int, required=True)
    args = p.parse_args(argv)
    lines = args.received.read_text(encoding="utf-8").splitlines()
    samples, kinds, problems = count(lines, args.thing)
    print(f"received from {args.thing}: {kinds or 'nothing'}; telemetry samples {samples}")
    if samples < args.min_samples:
        problems.append(f"{samples} telemetry samples arrived, expected at least {args.min_samples}")
    for problem in problems:
        print(f"telemetry: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
