"""Message sizes against a transport's budget: what a telemetry envelope costs, and splitting one that is too big.

The agent writes each message as a compact JSON envelope ``{"v":1,"id":…,"thing":…,"kind":…,"ts":…,
"simulated":…,"body":…}``. A telemetry batch is closed before its envelope would exceed the transport's
payload budget (:func:`telemetry_overhead` is the envelope's cost without the samples). A telemetry message
already spooled that is too big (written by an older version, or the budget shrank) is split by
:func:`split_telemetry` into messages that fit: the same samples in the same order, each part's id derived
deterministically from the original's (:func:`part_id`), so a resend after a crash repeats the same ids and
the cloud drops the duplicates.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from schema.messages import telemetry_samples

ID_MAX_LEN = 64  # messages.Envelope.id
#: the longest a float time stamp prints (``repr`` of a negative double with an exponent)
_LONGEST_TS = -1.7976931348623157e308
_BODY_OPEN = b',"body":{"samples":['
_BODY_CLOSE = b"]}}"


def _head(envelope: dict[str, Any]) -> bytes:
    """The envelope without ``body`` and its closing brace, as the agent writes it."""
    return json.dumps(envelope, separators=(",", ":"), allow_nan=False).encode()[:-1]


def telemetry_overhead(thing: str) -> int:
    """Bytes of a telemetry envelope around its samples (the commas between samples not included), for the
    longest id and time stamp: a batch fits when this plus its samples and commas fits the budget."""
    head = {"v": 1, "id": "x" * ID_MAX_LEN, "thing": thing, "kind": "telemetry", "ts": _LONGEST_TS}
    return len(_head({**head, "simulated": False})) + len(_BODY_OPEN) + len(_BODY_CLOSE)


def part_id(original: str, index: int) -> str:
    """The id of part ``index`` of a split message: the same for the same original, always a valid id."""
    suffix = f".p{index}"
    if len(original) + len(suffix) <= ID_MAX_LEN:
        return original + suffix
    return hashlib.sha256(original.encode()).hexdigest()[: ID_MAX_LEN - len(suffix)] + suffix


class NotSplittable(ValueError):
    """The payload is not a telemetry envelope that can be split to fit (not JSON, no samples, or one sample
    alone is over the budget)."""


def split_telemetry(payload: bytes, budget: int) -> list[tuple[str, bytes]]:
    """Split a spooled telemetry envelope into ``(id, payload)`` parts of at most ``budget`` bytes each,
    keeping every sample and their order (a packed body is unpacked: the parts are plain); each part's
    ``ts`` is its last sample's (as the agent stamps a
    batch) and ``simulated`` is true when any of its samples is."""
    try:
        envelope = json.loads(payload)
        samples = telemetry_samples(envelope["body"])
        original = str(envelope["id"])
    except (ValueError, KeyError, TypeError) as exc:
        raise NotSplittable(f"not a telemetry envelope: {exc}") from exc
    if not isinstance(samples, list) or not samples or not all(isinstance(s, dict) for s in samples):
        raise NotSplittable("the envelope has no samples to split")
    encoded = [json.dumps(s, separators=(",", ":"), allow_nan=False).encode() for s in samples]
    groups: list[list[int]] = []
    size = 0
    fixed = telemetry_overhead(str(envelope.get("thing", "")))
    for k, enc in enumerate(encoded):
        if fixed + len(enc) > budget:
            raise NotSplittable(f"sample {k} alone ({len(enc)} bytes) does not fit {budget} bytes")
        if groups and size + 1 + len(enc) <= budget:
            groups[-1].append(k)
            size += 1 + len(enc)
        else:
            groups.append([k])
            size = fixed + len(enc)
    parts: list[tuple[str, bytes]] = []
    for n, group in enumerate(groups):
        pid = part_id(original, n)
        last = samples[group[-1]]
        head = {key: value for key, value in envelope.items() if key != "body"}
        head["id"] = pid
        head["ts"] = last.get("ts", envelope.get("ts"))
        head["simulated"] = any(bool(samples[k].get("simulated", False)) for k in group)
        body = b",".join(encoded[k] for k in group)
        part = _head(head) + _BODY_OPEN + body + _BODY_CLOSE
        if len(part) > budget:  # an unusual envelope (extra fields): refuse rather than send too much
            raise NotSplittable(f"part {n} is {len(part)} bytes, over {budget}")
        parts.append((pid, part))
    return parts
