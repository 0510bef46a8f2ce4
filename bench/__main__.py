"""``make bench``: run every benchmark script; each prints its figures with in-run baselines and writes
bench/results/<name>.json. A benchmark that fails to run is reported and makes the exit code non-zero."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = [
    "bench_agent",
    "bench_multipack",
    "bench_drivers",
    "bench_ml",
    "bench_cloud",
    "bench_cost",
    "bench_scale",
    "bench_fuzz",
]


def main() -> int:
    failed = []
    for name in ORDER:
        script = HERE / f"{name}.py"
        if not script.exists():
            continue
        print(f"== {name}", flush=True)
        if subprocess.run([sys.executable, str(script)], cwd=HERE.parent, check=False).returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
