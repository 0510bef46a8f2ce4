"""What a device costs per month (issue #16): the bill per device at 1,000 / 10,000 / 100,000 devices.

Measured in this run: the real agent's uplink on the simulator at its deployed defaults (the recipe's: Basic
Ingest) for a simulated day (messages and bytes per kind, 5 KB units per message, the compact form of the same
telemetry batches), the real ingest handler's and the real lake transform's AWS calls per message on moto
(counted with a botocore hook), and the template's topic rules evaluated by the local rules runner's SQL on each
message (rules triggered, Lambda invocations, the Firehose records and their bytes); the same on plain MQTT
topics. Priced with the dated table of :mod:`cloud.cost_model`. The published
bill is the path as built (``cost_model.BUILT``); the modelled target variants (Basic Ingest, compact
telemetry, Parquet) are priced from the same measurements; the last measured bill before the Firehose lake
(``cost_model.BEFORE_FIREHOSE``) is the baseline.

Prints the table, merges ``cost_per_device_month_usd`` and ``cost_lines_usd`` (keyed "1000", "10000",
"100000"; the built path's) into bench/results/cloud.json (keeping what bench_cloud wrote) and draws
docs/img/cost-vs-fleet.png.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cloud import cost_model as cm  # noqa: E402

RESULTS = REPO / "bench" / "results"
PNG = REPO / "docs" / "img" / "cost-vs-fleet.png"
TARGET_USD = 0.10
#: bigger telemetry batches priced besides the default 60 (samples; batch_max_age_s the same in seconds)
BATCH_VARIANTS = (120, 200, 300)


def rounded(lines: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 6) for k, v in sorted(lines.items())}


def draw(bills: dict[str, dict[int, cm.Bill]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    sizes = list(cm.FLEET_SIZES)
    for name, by_size in bills.items():
        ax.plot(sizes, [by_size[n].total_usd for n in sizes], marker="o", label=name)
    ax.axhline(TARGET_USD, color="k", linestyle="--", linewidth=1, label="target $0.10")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("devices in the fleet")
    ax.set_ylabel("USD per device-month")
    ax.set_title(f"battwin cloud cost per device (measured traffic, prices as of {cm.PRICES.as_of})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> int:
    RESULTS.mkdir(parents=True, exist_ok=True)
    print("device traffic: real agent on the simulator, deployed defaults, 24 simulated hours ...", flush=True)
    traffic, messages = cm.measure_device_traffic(24.0)
    print(f"cloud path: the real ingest handler and lake transform on moto, {len(messages)} messages ...", flush=True)
    path = cm.measure_cloud_path(messages)
    bills = {
        arch.name: {n: cm.monthly_bill(traffic, path, arch, n) for n in cm.FLEET_SIZES} for arch in cm.ARCHITECTURES
    }
    # the same agent publishing on plain MQTT topics (mqtt.basic_ingest_rule_prefix unset): what Basic Ingest saves
    print("the same on plain MQTT topics: measuring ...", flush=True)
    m_traffic, m_messages = cm.measure_device_traffic(24.0, mqtt={})
    m_path = cm.measure_cloud_path(m_messages)
    plain_mqtt = {n: cm.monthly_bill(m_traffic, m_path, cm.BUILT, n) for n in cm.FLEET_SIZES}
    bills = {cm.BUILT.name: bills[cm.BUILT.name], "built, plain MQTT topics": plain_mqtt, **bills}
    built, target = bills[cm.BUILT.name], bills[cm.TARGET.name]
    before = cm.BEFORE_FIREHOSE["per_device_month_usd"]

    print("\none device (per hour):")
    for kind, k in sorted(traffic.json_kinds.items()):
        c = traffic.compact_kinds[kind]
        print(
            f"  {kind:<10} {k.messages_per_hour:6.2f} msgs  {k.mean_payload_bytes:7.0f} B JSON "
            f"({k.units_5kb_per_hour / max(k.messages_per_hour, 1e-9):.2f} units)  "
            f"{c.mean_payload_bytes:6.0f} B compact ({c.units_5kb_per_hour / max(c.messages_per_hour, 1e-9):.2f} units)"
        )
    print("rules (local rules runner's SQL on the template) and ingest handler (moto), per message:")
    for kind, p in sorted(path.kinds.items()):
        print(
            f"  {kind:<10} rules {p.rules_triggered:.0f}  Lambda {p.lambda_invocations:.0f}  Firehose "
            f"{p.firehose_records:.0f} rec ({p.firehose_record_bytes:6.0f} B, billed {p.firehose_billed_bytes:6.0f} B, "
            f"gz {p.firehose_gz_bytes:5.0f} B)  S3 PUT {p.s3_puts:.2f} ({p.s3_put_bytes:5.0f} B)  DynamoDB calls "
            f"{p.ddb_calls:.2f} WRU {p.ddb_wru:.2f}+{p.ddb_gsi_wru:.2f} (index)  Glue {p.glue_calls:.3f}  "
            f"CPU {p.cpu_s * 1000:.1f} ms  | transform: WRU {p.transform_wru:.3f} RRU {p.transform_rru:.2f} "
            f"CPU {p.transform_cpu_s * 1000:.2f} ms"
        )
    print(f"  calls: {path.calls}")

    lines = sorted({line for by in bills.values() for b in by.values() for line in b.lines_usd})
    print(f"\nUSD per device-month (prices as of {cm.PRICES.as_of}, {cm.PRICES.region}):")
    head = "  " + f"{'line':<30}" + "".join(f"{'built ' + str(n):>14}" for n in cm.FLEET_SIZES)
    head += "".join(f"{'target ' + str(n):>15}" for n in cm.FLEET_SIZES)
    print(head)
    for line in lines:
        row = "".join(f"{built[n].lines_usd.get(line, 0.0):14.4f}" for n in cm.FLEET_SIZES)
        row += "".join(f"{target[n].lines_usd.get(line, 0.0):15.4f}" for n in cm.FLEET_SIZES)
        print(f"  {line:<30}{row}")
    print(
        f"  {'TOTAL':<30}"
        + "".join(f"{built[n].total_usd:14.4f}" for n in cm.FLEET_SIZES)
        + "".join(f"{target[n].total_usd:15.4f}" for n in cm.FLEET_SIZES)
    )
    print("\ntotals per device-month, every architecture modelled:")
    for name, by in bills.items():
        cells = "  ".join(f"{n:>6}: ${by[n].total_usd:.4f}" for n in cm.FLEET_SIZES)
        ok = all(by[n].total_usd <= TARGET_USD for n in cm.FLEET_SIZES)
        print(f"  {name:<24} {cells}   {'<= $0.10' if ok else '> $0.10'}")
    for n in cm.FLEET_SIZES:
        print(
            f"built vs before the Firehose lake ({cm.BEFORE_FIREHOSE['measured_at_commit']}) at {n:>6} devices: "
            f"${built[n].total_usd:.4f} / ${before[str(n)]:.4f} = {built[n].total_usd / before[str(n)]:.3f}x"
        )

    # the operator's knob: bigger telemetry batches, fewer messages (each still one 5 KB unit packed), at the cost of
    # the live view's latency (a batch is published when full or when its oldest sample is that old)
    by_batch: dict[str, dict[str, float]] = {"60": {str(n): round(built[n].total_usd, 6) for n in cm.FLEET_SIZES}}
    units: dict[str, float] = {"60": traffic.compact_kinds["telemetry"].units_5kb_per_hour}
    for batch in BATCH_VARIANTS:
        settings = {"batch_max_samples": batch, "batch_max_age_s": float(batch)}
        print(f"\nbatches of {batch} samples ({batch} s at 1 s sampling): measuring ...", flush=True)
        v_traffic, v_messages = cm.measure_device_traffic(24.0, telemetry=settings)
        v_path = cm.measure_cloud_path(v_messages)
        v_bills = {n: cm.monthly_bill(v_traffic, v_path, cm.BUILT, n) for n in cm.FLEET_SIZES}
        by_batch[str(batch)] = {str(n): round(v_bills[n].total_usd, 6) for n in cm.FLEET_SIZES}
        units[str(batch)] = v_traffic.compact_kinds["telemetry"].units_5kb_per_hour
    print("\nthe path as built by telemetry batch size (1 s sampling; latency of the live view = the batch age):")
    for label, usd in by_batch.items():
        cells = "  ".join(f"{n:>6}: ${usd[str(n)]:.4f}" for n in cm.FLEET_SIZES)
        print(f"  {label:>4} samples  {units[label]:5.1f} units/h  {cells}")

    out_file = RESULTS / "cloud.json"
    result: dict[str, Any] = json.loads(out_file.read_text()) if out_file.exists() else {}
    result["cost_per_device_month_usd"] = {str(n): round(built[n].total_usd, 6) for n in cm.FLEET_SIZES}
    result["cost_lines_usd"] = {str(n): rounded(built[n].lines_usd) for n in cm.FLEET_SIZES}
    result["cost_model"] = {
        "architecture": cm.BUILT.name,
        "description": cm.BUILT.description,
        "built": cm.BUILT.built,
        "note": "the path as built, priced from measured traffic and measured requests per message (Basic "
        "Ingest as the recipe deploys it; 'built, plain MQTT topics' is the same agent with it off, measured too); "
        "the target variants are modelled from the same measurements (not built: the DynamoDBv2 latest-sample "
        "action, Parquet)",
        "target_met": all(built[n].total_usd <= TARGET_USD for n in cm.FLEET_SIZES),
        "prices_as_of": str(cm.PRICES.as_of),
        "region": cm.PRICES.region,
        "baseline_before_firehose": cm.BEFORE_FIREHOSE,
        "target_lines_usd": {str(n): rounded(target[n].lines_usd) for n in cm.FLEET_SIZES},
        "ratio_built_vs_before": {str(n): round(built[n].total_usd / before[str(n)], 4) for n in cm.FLEET_SIZES},
        "variants_per_device_month_usd": {
            name: {str(n): round(by[n].total_usd, 6) for n in cm.FLEET_SIZES} for name, by in bills.items()
        },
        "built_by_batch_samples": {
            "note": "the path as built with bigger telemetry batches (batch_max_samples = batch_max_age_s at 1 s "
            "sampling; the live view lags by up to the batch age), each measured like the default: the real agent "
            "for 24 simulated hours and the real handler on moto; on Greengrass IPC a packed batch is also capped by "
            "the transport's budget",
            "per_device_month_usd": by_batch,
            "telemetry_units_5kb_per_hour": units,
        },
        "traffic": traffic.model_dump(mode="json"),
        "cloud_path": path.model_dump(mode="json"),
        "assumptions": cm.Assumptions().model_dump(mode="json"),
    }
    out_file.write_text(json.dumps(result, indent=2) + "\n")
    draw(bills, PNG)
    print(f"\nwritten {out_file} and {PNG}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
