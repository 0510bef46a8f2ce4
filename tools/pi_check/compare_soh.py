"""Compare two `battwin replay` outputs (host vs arm64): every health record's SoH and forecast must agree.

Usage: compare_soh.py HOST.jsonl ARM64.jsonl [--tolerance 1e-4]
Exit 0 when both replays found the same health records by the same method, both used the learned model (at least one
record with method "hybrid"), and every SoH and forecast point differs by at most the tolerance; prints the measured
figures either way.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def health_records(path: Path) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row.get("kind") == "health":
                records.append(row)
    return records


def compare(host: list[dict[str, Any]], arm: list[dict[str, Any]], tolerance: float) -> tuple[list[str], float]:
    """Return (problems, the largest absolute difference over SoH and forecast points)."""
    problems: list[str] = []
    if not host:
        problems.append("the host replay produced no health record")
    if len(host) != len(arm):
        problems.append(f"health records: host {len(host)}, arm64 {len(arm)}")
    worst = 0.0
    for i, (h, a) in enumerate(zip(host, arm, strict=False)):
        if h.get("method") != a.get("method"):
            problems.append(f"record {i}: method {h.get('method')!r} on the host, {a.get('method')!r} on arm64")
        if h["cycle_index"] != a["cycle_index"]:
            problems.append(f"record {i}: cycle {h['cycle_index']} on the host, {a['cycle_index']} on arm64")
        pairs = [(h["soh"], a["soh"])]
        hf, af = h.get("forecast") or [], a.get("forecast") or []
        if len(hf) != len(af):
            problems.append(f"record {i}: forecast of {len(hf)} points on the host, {len(af)} on arm64")
        pairs += [(p["soh"], q["soh"]) for p, q in zip(hf, af, strict=False)]
        for x, y in pairs:
            worst = max(worst, abs(float(x) - float(y)))
    for side, records in (("host", host), ("arm64", arm)):
        if records and not any(r.get("method") == "hybrid" for r in records):
            problems.append(f"the {side} replay never used the learned model (no health record with method 'hybrid')")
    if worst > tolerance:
        problems.append(f"largest SoH difference {worst:.3g} exceeds the tolerance {tolerance:g}")
    return problems, worst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("host", type=Path)
    p.add_argument("arm64", type=Path)
    p.add_argument("--tolerance", type=float, default=1e-4)
    args = p.parse_args(argv)
    host, arm = health_records(args.host), health_records(args.arm64)
    problems, worst = compare(host, arm, args.tolerance)
    if host and arm:
        hybrid = sum(r.get("method") == "hybrid" for r in host)
        print(
            f"health records: {len(host)} ({hybrid} by the learned model); "
            f"last SoH host {host[-1]['soh']:.9f} arm64 {arm[-1]['soh']:.9f}; "
            f"largest |difference| over SoH and forecasts: {worst:.3g} (tolerance {args.tolerance:g})"
        )
    for problem in problems:
        print(f"compare: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
