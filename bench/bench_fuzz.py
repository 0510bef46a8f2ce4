"""Benchmark-size fuzzing (issue #8): ≥ 100,000 hypothesis cases per decoder and message parser.

Random bytes and mutated real frames (../shared/bms-frames) go into every BMS frame decoder, and random
JSON into the message parsers; anything raised other than the typed error counts as a failure.
Prints cases/s per target and writes bench/results/fuzz.json. FUZZ_CASES overrides the count.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from hardware.bms.daly import decode as daly  # noqa: E402
from hardware.bms.daly.framing import build_frame as build_daly  # noqa: E402
from hardware.bms.jbd import decode as jbd  # noqa: E402
from hardware.bms.jbd.framing import build_response as build_jbd  # noqa: E402
from hardware.bms.jk import decode as jk  # noqa: E402
from hardware.bms.jk.framing import TYPE_RESPONSE as JK_RESPONSE  # noqa: E402
from hardware.bms.jk.framing import build_frame as build_jk  # noqa: E402
from hardware.errors import ProtocolError  # noqa: E402
from hardware.modbus.sunspec import MODEL_802_SIZE, decode_model_802  # noqa: E402
from hardware.sbs.registers import decode_transaction  # noqa: E402
from schema.messages import Envelope  # noqa: E402

CASES = int(os.environ.get("FUZZ_CASES", "100000"))
FRAMES = REPO.parent / "shared" / "bms-frames"


def corpus(protocols: tuple[str, ...]) -> list[bytes]:
    out = []
    for name in ("jbd.jsonl", "daly.jsonl", "jk.jsonl"):
        path = FRAMES / name
        if path.exists():
            for line in path.read_text().splitlines():
                rec = json.loads(line)
                if rec["protocol"] in protocols:
                    out.append(bytes.fromhex(rec["hex"]))
    return out or [b"\x00"]


PER_EXAMPLE = 100  # decoder calls per hypothesis example (inputs derived from the example's random stream)


def mutate(rng: random.Random, frame: bytes) -> bytes:
    """A real frame with a few bytes flipped, inserted or cut: reaches deeper than random bytes."""
    data = bytearray(frame)
    for _ in range(rng.randint(1, 4)):
        op = rng.randint(0, 2)
        pos = rng.randint(0, max(len(data) - 1, 0))
        if op == 0 and data:
            data[pos] = rng.randint(0, 255)
        elif op == 1:
            data.insert(pos, rng.randint(0, 255))
        elif data:
            del data[pos:]
    return bytes(data)


def byte_inputs(
    seeds: list[bytes], max_len: int, valid: Callable[[random.Random], bytes] | None = None
) -> Callable[[random.Random], bytes]:
    """Random bytes, mutated real frames, and (with ``valid``) well-framed frames with random payloads,
    which pass framing and checksum and so reach the payload decoders."""

    def make(rng: random.Random) -> bytes:
        r = rng.random()
        if valid is not None and r < 0.4:
            return valid(rng)
        if r < 0.7:
            return mutate(rng, rng.choice(seeds))
        return rng.randbytes(rng.randint(0, max_len))

    return make


def jbd_valid(rng: random.Random) -> bytes:
    return build_jbd(
        rng.choice([3, 4, 5, rng.randint(0, 255)]), rng.randbytes(rng.randint(0, 60)), rng.choice([0, 0, 0x80])
    )


def daly_valid(rng: random.Random) -> bytes:
    return build_daly(
        rng.randint(0, 255),
        rng.choice([0x90, 0x91, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, rng.randint(0, 255)]),
        rng.randbytes(8),
    )


def jk_valid(rng: random.Random) -> bytes:
    body = bytearray()
    if rng.random() < 0.5:
        n = rng.randint(0, 24)
        body += bytes([jk.TAG_CELLS, 3 * n]) + rng.randbytes(3 * n)
    tags = sorted(jk.TAG_LENGTHS)
    for _ in range(rng.randint(0, 30)):
        tag = rng.choice(tags)
        body += bytes([tag]) + rng.randbytes(jk.TAG_LENGTHS[tag])
    return build_jk(0x06, bytes(body), source=0, transport_type=JK_RESPONSE)


def register_inputs(rng: random.Random) -> list[int]:
    size = MODEL_802_SIZE if rng.random() < 0.5 else rng.randint(0, 70)
    regs = [rng.choice([rng.randint(0, 0xFFFF), rng.randint(0, 100), 0x8000, 0xFFFF]) for _ in range(size)]
    if len(regs) >= 2 and rng.random() < 0.5:
        regs[0], regs[1] = 802, 62
    return regs


def json_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randint(0, 6 if depth < 4 else 3)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([rng.uniform(-1e6, 1e6), float("nan"), float("inf"), rng.randint(-(2**40), 2**40)])
    if kind == 3:
        return rng.choice(["", "telemetry", "health", "x" * rng.randint(0, 80), "v", "id", "1"])
    if kind in (4, 5):
        keys = ["v", "id", "thing", "kind", "ts", "simulated", "body", "samples", "voltage_v", "x"]
        return {rng.choice(keys): json_value(rng, depth + 1) for _ in range(rng.randint(0, 7))}
    return [json_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]


def envelope_inputs(rng: random.Random) -> bytes:
    if rng.random() < 0.2:
        return rng.randbytes(rng.randint(0, 200))
    return json.dumps(json_value(rng)).encode()


TARGETS: dict[str, tuple[Callable[[Any], Any], Callable[[random.Random], Any], type[Exception]]] = {
    "jbd": (jbd.decode_response, byte_inputs(corpus(("jbd",)), 300, jbd_valid), ProtocolError),
    "daly": (daly.decode_frame, byte_inputs(corpus(("daly_uart",)), 40, daly_valid), ProtocolError),
    "jk": (jk.decode_frame, byte_inputs(corpus(("jk_uart_4e57",)), 400, jk_valid), ProtocolError),
    "sbs": (decode_transaction, byte_inputs([b"\x00\x00\x00"], 64), ProtocolError),
    "sunspec802": (decode_model_802, register_inputs, ProtocolError),
    "envelope_json": (Envelope.model_validate_json, envelope_inputs, ValidationError),
}


def run_target(
    name: str, fn: Callable[[Any], Any], make: Callable[[random.Random], Any], allowed: type[Exception]
) -> dict[str, Any]:
    count = {"n": 0, "typed_errors": 0}

    @settings(
        max_examples=max(1, CASES // PER_EXAMPLE),
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.integers(0, 2**64 - 1))
    def case(seed: int) -> None:
        rng = random.Random(seed)  # hypothesis picks (and on failure reports) the seed; derivation is fast
        for _ in range(PER_EXAMPLE):
            data = make(rng)
            count["n"] += 1
            try:
                fn(data)
            except allowed:
                count["typed_errors"] += 1

    t0 = time.perf_counter()
    case()  # any other exception propagates (hypothesis shrinks and reports it): the run fails
    dt = time.perf_counter() - t0
    return {
        "cases": count["n"],
        "typed_errors": count["typed_errors"],
        "seconds": round(dt, 1),
        "cases_per_s": round(count["n"] / dt),
    }


def main() -> int:
    results: dict[str, Any] = {"cases_per_target": CASES}
    for name, (fn, make, allowed) in TARGETS.items():
        r = run_target(name, fn, make, allowed)
        results[name] = r
        print(
            f"fuzz {name}: {r['cases']:,} cases, {r['typed_errors']:,} typed errors, no other exception "
            f"({r['cases_per_s']:,}/s)"
        )
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "fuzz.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
