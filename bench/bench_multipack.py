"""Multi-pack benchmark (issue #17 item 1): 16 packs under one agent at 1 Hz, CPU and memory.

Two agents run side by side for the same wall time, each in its own process against the same mosquitto:
the multi-pack agent (``--packs`` simulated packs, one MQTT connection) and the single-pack agent as it ran
before (the baseline, measured in the same run). Both sample at 1 Hz in real time (the simulator unaccelerated,
as a BMS is polled), spool every message in SQLite and publish it with QoS 1; the shipped health model is
loaded (as on a device), the config shadow is off (no shadow service answers here). Each process measures its
own CPU time (user + system, ``getrusage``) over the steady window after a warm-up, as a percentage of one core,
and its resident memory (VmRSS at the end, VmHWM peak). Simulated packs: every figure is of simulated data.

    python bench/bench_multipack.py                 # 16 packs, 600 s (what ``make bench`` runs)
    python bench/bench_multipack.py --seconds 60    # a quick run

Writes bench/results/multipack.json (``packs``, ``cpu_pct_of_one_core``, ``rss_mb`` and the single-pack
figures). Needs mosquitto on PATH (apt-get install mosquitto). Targets: CPU <= 2 % of one core, RSS <= 100 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RESULTS = REPO / "bench" / "results"
WARMUP_S = 15.0
CPU_TARGET_PCT = 2.0
RSS_TARGET_MB = 100.0


def _status_mb(field: str) -> float:
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith(field)).split()[1]) / 1024


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child(packs: int, seconds: float, broker: str, work: Path, warmup_s: float = WARMUP_S) -> dict[str, Any]:
    """One agent process: ``packs`` = 0 runs the single-pack agent (no ``packs`` configured)."""
    import logging

    from device_agent.config import load_config
    from device_agent.runtime import build_runner

    logging.basicConfig(level=logging.ERROR)
    overrides: dict[str, Any] = {
        "thing_name": "bench-core" if packs else "bench-single",  # MQTT client ids must differ
        "mqtt": {"url": broker},
        "spool": {"path": str(work / "spool.db")},
        "shadow": {"enabled": False},
        "source": {"url": "simulator", "sample_interval_s": 1.0},
        "log_level": "ERROR",
    }
    if packs:
        overrides["packs"] = [
            {"id": f"p{k:02d}", "url": "simulator", "source": {"simulator": {"seed": k}}} for k in range(packs)
        ]
    config = load_config(None, overrides)
    runner = build_runner(config)
    stop = threading.Event()
    t_start = time.monotonic()
    cpu_start = _cpu_s()
    marks: dict[str, float] = {}

    def mark() -> None:
        marks["t"], marks["cpu"] = time.monotonic(), _cpu_s()

    threading.Timer(warmup_s, mark).start()
    threading.Timer(warmup_s + seconds, stop.set).start()
    stats = runner.run(stop)
    t_end, cpu_end = time.monotonic(), _cpu_s()
    rss_end = _status_mb("VmRSS")
    # the CPU of the drain and shutdown after stop is counted in the steady window's CPU (conservative)
    steady_wall = (warmup_s + seconds) - (marks["t"] - t_start)
    from device_agent.packs import MultiPackAgent

    if isinstance(runner, MultiPackAgent) and isinstance(stats, dict):
        samples = sum(s.samples for s in stats.values())
        published = sum(p.agent.publisher.acked for p in runner.packs)
    else:
        samples = stats.samples  # type: ignore[union-attr]
        published = runner.publisher.acked  # type: ignore[union-attr]
    runner.close()
    return {
        "packs": packs or 1,
        "seconds": seconds,
        "samples": samples,
        "messages_published": published,
        "cpu_pct_of_one_core": 100.0 * (cpu_end - marks["cpu"]) / max(steady_wall, 1e-9),
        "cpu_pct_whole_run": 100.0 * (cpu_end - cpu_start) / (t_end - t_start),
        "rss_mb": rss_end,
        "peak_rss_mb": max(_status_mb("VmHWM"), rss_end),  # VmHWM is updated lazily by the kernel
        "threads_at_end": threading.active_count(),
    }


def _spawn(packs: int, seconds: float, broker: str, work: Path, warmup_s: float) -> subprocess.Popen[str]:
    work.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, __file__, "--child", "--packs", str(packs), "--seconds", str(seconds)]
    args += ["--warmup", str(warmup_s)]
    args += ["--broker", broker, "--work", str(work)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _collect(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed ({proc.returncode}): {err[-2000:]}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--packs", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=600.0, help="steady window after a 15 s warm-up")
    parser.add_argument("--warmup", type=float, default=WARMUP_S, help="seconds before the window (start-up)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--broker", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS / "multipack.json")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.packs, args.seconds, args.broker, args.work, args.warmup)))
        return 0

    from bench.bench_agent import Broker

    work = Path(tempfile.mkdtemp(prefix="battwin-bench-multipack-"))
    broker = Broker(work)
    try:
        timeout = args.warmup + args.seconds + 120
        multi = _spawn(args.packs, args.seconds, broker.url, work / "multi", args.warmup)
        single = _spawn(0, args.seconds, broker.url, work / "single", args.warmup)
        m = _collect(multi, timeout)
        s = _collect(single, timeout)
        bare = subprocess.run(
            [
                sys.executable,
                "-c",
                f"import sys;sys.path.insert(0,{str(REPO)!r});from bench.bench_multipack import "
                "_status_mb;print(_status_mb('VmRSS'))",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    bare_mb = float(bare.stdout.strip())
    extra_packs = max(1, m["packs"] - 1)
    results: dict[str, Any] = {
        "packs": m["packs"],
        "seconds": args.seconds,
        "sample_hz_per_pack": 1.0,
        "simulated": True,
        "cpu_pct_of_one_core": round(m["cpu_pct_of_one_core"], 3),
        "rss_mb": round(m["rss_mb"], 1),
        "peak_rss_mb": round(m["peak_rss_mb"], 1),
        "single_pack": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in s.items()},
        "multi_pack": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in m.items()},
        "bare_python_rss_mb": round(bare_mb, 1),
        "ratio_cpu_vs_single": round(m["cpu_pct_of_one_core"] / max(s["cpu_pct_of_one_core"], 1e-9), 2),
        "ratio_rss_vs_single": round(m["rss_mb"] / s["rss_mb"], 2),
        "cpu_pct_per_extra_pack": round((m["cpu_pct_of_one_core"] - s["cpu_pct_of_one_core"]) / extra_packs, 4),
        "rss_mb_per_extra_pack": round((m["rss_mb"] - s["rss_mb"]) / extra_packs, 2),
        "targets": {"cpu_pct_of_one_core": CPU_TARGET_PCT, "rss_mb": RSS_TARGET_MB},
        "met": {
            "cpu_pct_of_one_core": m["cpu_pct_of_one_core"] <= CPU_TARGET_PCT,
            "rss_mb": m["rss_mb"] <= RSS_TARGET_MB and m["peak_rss_mb"] <= RSS_TARGET_MB,
        },
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }
    print(
        f"multipack: {m['packs']} simulated packs at 1 Hz for {args.seconds:.0f} s: "
        f"CPU {m['cpu_pct_of_one_core']:.2f} % "
        f"of one core (single pack {s['cpu_pct_of_one_core']:.2f} %, {results['ratio_cpu_vs_single']:.1f}x; target "
        f"<= {CPU_TARGET_PCT} %), RSS {m['rss_mb']:.1f} MB, peak {m['peak_rss_mb']:.1f} MB (single pack "
        f"{s['rss_mb']:.1f} MB, {results['ratio_rss_vs_single']:.2f}x; bare python {bare_mb:.1f} MB; target "
        f"<= {RSS_TARGET_MB:.0f} MB); {m['messages_published']} messages published"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
