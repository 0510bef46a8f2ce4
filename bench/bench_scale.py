"""The cloud path at fleet scale on the local stack (issue #16 item 5): N simulated devices × one simulated day.

Runs :func:`cloud.local_stack.scale.run_scale` (the real agent's day replayed as N things through the local rules
runner, the real ingest handler on moto, the lake's buffered Firehose stream on the simulated clock) and prints
the lake objects per kind, DynamoDB items and the ingest throughput of this machine; then extrapolates to
1,000 / 10,000 / 100,000 devices — the extrapolation is arithmetic on the measured counts (labelled so), not a run.

``BATTWIN_SCALE_DEVICES`` (default 5) sets N, ``BATTWIN_SCALE_HOURS`` (default 24) the simulated hours. Writes
bench/results/scale.json (a run of other than 24 h: scale-<N>x<hours>h.json).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cloud.cost_model import FLEET_SIZES, run_agent  # noqa: E402
from cloud.local_stack.scale import run_scale  # noqa: E402
from cloud.local_stack.template import firehose_streams, load_template  # noqa: E402

RESULTS = REPO / "bench" / "results"
#: what the lake rules add to the envelope (rule_thing, rule_kind, rule_received_ms) and the separator, about
RULE_FIELDS_BYTES = 85


def extrapolate(per_device: list[tuple[str, bytes]], measured: dict[str, Any], hours: float) -> dict[str, Any]:
    """Counts at the fleet sizes from one device's day and the measured run (arithmetic, not a run)."""
    (spec,) = firehose_streams(load_template()).values()
    buffer_bytes = spec.buffer_mb * 1024 * 1024
    kinds: dict[str, list[int]] = {}
    for topic, payload in per_device:
        kinds.setdefault(topic.rsplit("/", 1)[1], []).append(len(payload) + RULE_FIELDS_BYTES)
    day_s = 86_400.0
    per_day = 24.0 / hours
    out: dict[str, Any] = {}
    for n in FLEET_SIZES:
        objects = {}
        for kind, sizes in kinds.items():
            records_per_s = len(sizes) * per_day * n / day_s
            bytes_per_s = sum(sizes) * per_day * n / day_s
            # one partition (kind, day) open: a flush per 900 s or per full buffer, never more than one per record
            flushes_per_s = min(records_per_s, max(1 / spec.buffer_s, bytes_per_s / buffer_bytes))
            objects[kind] = math.ceil(flushes_per_s * day_s)
        messages_per_day = sum(len(s) for s in kinds.values()) * per_day * n
        out[str(n)] = {
            "lake_objects_per_day_by_kind": objects,
            "lake_objects_per_day": sum(objects.values()),
            "history_items_written_per_day": round(messages_per_day),
            "device_state_items": n,
            "messages_per_s_average": round(messages_per_day / day_s, 2),
            "local_stack_hours_for_one_day": round(messages_per_day / measured["messages_per_s"] / 3600, 2),
        }
    return out


def main() -> int:
    devices = int(os.environ.get("BATTWIN_SCALE_DEVICES", "5"))
    hours_set = os.environ.get("BATTWIN_SCALE_HOURS")
    hours = float(hours_set) if hours_set else 24.0
    start = float(int(time.time() // 3600) * 3600 - 3 * 86_400)
    print(f"one device's day: the real agent on the simulator, default settings, {hours:g} simulated hours ...")
    day = run_agent(hours, thing="scale-template", start_ts=start)
    print(f"{devices} simulated devices x {hours:g} h ({devices * len(day)} messages) through the local stack ...")
    result = run_scale(devices, hours, start_ts=start, device_day=day)
    measured = result.as_dict()
    print(f"  messages           {result.messages}  {result.messages_by_kind}")
    print(f"  ingest outcomes    {result.outcomes}")
    print(f"  lake objects       {result.lake_objects}  {result.lake_objects_by_kind}  ({result.lake_records} records)")
    print(f"  History items      {result.history_items}   DeviceState items {result.device_state_items}")
    print(f"  dead letters       {result.dead_letter_objects}")
    print(
        f"  throughput         {result.messages_per_s:.1f} messages/s ({result.wall_s:.0f} s wall, "
        f"{result.workers} workers, moto server over HTTP, this machine)"
    )
    ext = extrapolate(day, measured, hours)
    print("extrapolated (arithmetic on the measured counts, not a run):")
    for n, e in ext.items():
        print(
            f"  {n:>6} devices: lake objects/day {e['lake_objects_per_day']:>5} {e['lake_objects_per_day_by_kind']}  "
            f"History items written/day {e['history_items_written_per_day']:>10}  "
            f"average {e['messages_per_s_average']:>8} msg/s  "
            f"local stack: {e['local_stack_hours_for_one_day']} h per day"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    # a run of other than a day (BATTWIN_SCALE_HOURS) is kept apart: scale-<devices>x<hours>h.json
    out = RESULTS / ("scale.json" if not hours_set else f"scale-{devices}x{hours:g}h.json")
    out.write_text(
        json.dumps(
            {
                "measured": measured,
                "extrapolated": ext,
                "note": "simulated devices (one real agent day replayed as N things); the extrapolation is arithmetic "
                "on the measured counts with the template's buffering hints, not a run at those sizes",
            },
            indent=2,
        )
        + "\n"
    )
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
