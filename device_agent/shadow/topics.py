"""AWS IoT's reserved shadow topics (named shadows) and the shadow document rules both sides share."""

from __future__ import annotations

import json
from typing import Any

MAX_DOCUMENT_BYTES = 8 * 1024  # AWS IoT Core's shadow state document limit
MAX_DEPTH = 8  # AWS IoT: at most 8 levels of nesting in desired/reported


#: IoT Core's reserved root. amqtt refuses client publishes to any topic starting with '$', so against amqtt
#: the local shadow service and the agent use another root (``ShadowSettings.topic_root``).
AWS_ROOT = "$aws"
AMQTT_ROOT = "local-aws"


def shadow_prefix(thing: str, shadow: str | None, root: str = AWS_ROOT) -> str:
    if shadow:
        return f"{root}/things/{thing}/shadow/name/{shadow}"
    return f"{root}/things/{thing}/shadow"


def compute_delta(desired: Any, reported: Any) -> Any:
    """Keys of ``desired`` whose values differ from ``reported`` (recursively), as AWS IoT defines it.

    Returns None when there is no difference.
    """
    if isinstance(desired, dict):
        if not isinstance(reported, dict):
            return desired or None
        out = {}
        for key, want in desired.items():
            diff = compute_delta(want, reported.get(key)) if key in reported else want
            if diff is not None:
                out[key] = diff
        return out or None
    return None if desired == reported else desired


def merge_state(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Apply an update to a state section: nested merge, ``null`` deletes a key."""
    out = dict(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            merged = merge_state(out[key], value)
            if merged:
                out[key] = merged
            else:
                out.pop(key)
        elif isinstance(value, dict):
            cleaned = merge_state({}, value)
            if cleaned:
                out[key] = cleaned
        else:
            out[key] = value
    return out


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


def metadata_for(state: Any, ts: int) -> Any:
    if isinstance(state, dict):
        return {k: metadata_for(v, ts) for k, v in state.items()}
    return {"timestamp": ts}


def encoded_size(document: dict[str, Any]) -> int:
    return len(json.dumps(document, separators=(",", ":")).encode())
