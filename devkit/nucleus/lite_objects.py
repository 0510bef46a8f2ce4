"""Nucleus lite's fixed object budgets, as its sources count them (lite v2.6.0, gg-sdk v1.0.4).

A recipe is parsed into one object tree (YAML aliases expanded: ``modules/ggl-yaml/src/yaml_decode.c``) and
walked by ``gg_obj_visit`` (gg-sdk ``src/object_visit.c``) before dependency resolution. The walk adds up, over
the WHOLE tree, 2 "subobjects" per map entry (key and value) and 1 per list item; past
``GG_MAX_OBJECT_SUBOBJECTS`` (255, ``include/gg/object.h``) it fails with "Visited object's subobjects exceeds
maximum.", and an object ``GG_MAX_OBJECT_DEPTH`` (15) levels below the root fails with "Visited object's depth
exceeds maximum." Either way ggdeploymentd logs "Failed to do dependency resolution for deployment" and
the deployment fails. Checked on lite 2.6.0: a recipe of 255 subobjects deploys, 256 does not.

The DefaultConfiguration then goes to ggconfigd in ONE core-bus request
``{key_path: [services, <component>, configuration], value: <DefaultConfiguration>, timestamp}``
(``modules/core-bus-gg-config/src/gg_config.c``), which the core-bus server decodes into a fixed arena of
``PAYLOAD_VALUE_MAX_SUBOBJECTS`` (200) ``GgObject``s (``modules/core-bus/src/server.c``): on a 64-bit build
2,200 bytes, of which every map entry takes a ``GgKV`` (21 B) and every list item a ``GgObject`` (11 B);
strings stay in the packet (``object_serde.c``, ``read_buf``). When it does not fit: "Insufficient memory to
decode packet." and ggdeploymentd's "Failed to send default config to ggconfigd." (deployment FAILED).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MAX_OBJECT_SUBOBJECTS = 255  # GG_MAX_OBJECT_SUBOBJECTS
MAX_OBJECT_DEPTH = 15  # GG_MAX_OBJECT_DEPTH
PAYLOAD_VALUE_MAX_SUBOBJECTS = 200  # core-bus server.c
GG_OBJECT_BYTES = 11  # sizeof(GgObject), 64-bit (types.h: 9 on 32-bit)
GG_KV_BYTES = 8 + 2 + GG_OBJECT_BYTES  # sizeof(GgKV), 64-bit
CONFIG_WRITE_ARENA_BYTES = PAYLOAD_VALUE_MAX_SUBOBJECTS * GG_OBJECT_BYTES
#: the request around the DefaultConfiguration: a 3-entry map and the 3-item key path
CONFIG_WRITE_ENVELOPE_BYTES = 3 * GG_KV_BYTES + 3 * GG_OBJECT_BYTES

SUBOBJECTS_MESSAGE = "Visited object's subobjects exceeds maximum."
DEPTH_MESSAGE = "Visited object's depth exceeds maximum."
DECODE_MESSAGE = "Insufficient memory to decode packet."


class ObjectLimitError(ValueError):
    """The object does not fit lite's budget; ``message`` is lite's own log text."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(f"{message} ({detail})")
        self.message = message
        self.detail = detail


def count_subobjects(obj: Any) -> int:
    """The recipe's "subobjects" as ``gg_obj_visit`` adds them up: 2 per map entry, 1 per list item."""
    if isinstance(obj, Mapping):
        return 2 * len(obj) + sum(count_subobjects(v) for v in obj.values())
    if isinstance(obj, list):
        return len(obj) + sum(count_subobjects(v) for v in obj)
    return 0


def check_visit(obj: Any) -> None:
    """Walk ``obj`` as ``gg_obj_visit`` does (depth first, containers counted when entered); ObjectLimitError
    with lite's message at the first budget it exceeds."""
    total = 0

    def visit(node: Any, depth: int) -> None:
        nonlocal total
        if isinstance(node, Mapping):
            children: list[Any] = list(node.values())
            total += 2 * len(children)
        elif isinstance(node, list):
            children = node
            total += len(children)
        else:
            return
        if total > MAX_OBJECT_SUBOBJECTS:
            raise ObjectLimitError(SUBOBJECTS_MESSAGE, f"more than {MAX_OBJECT_SUBOBJECTS} subobjects")
        for child in children:
            if depth + 1 >= MAX_OBJECT_DEPTH:
                detail = f"an object {depth + 1} levels below the root; at most {MAX_OBJECT_DEPTH - 1}"
                raise ObjectLimitError(DEPTH_MESSAGE, detail)
            visit(child, depth + 1)

    visit(obj, 0)


def decode_bytes(obj: Any) -> int:
    """Arena bytes the core-bus decoder claims for ``obj``'s maps and lists (64-bit build)."""
    if isinstance(obj, Mapping):
        return GG_KV_BYTES * len(obj) + sum(decode_bytes(v) for v in obj.values())
    if isinstance(obj, list):
        return GG_OBJECT_BYTES * len(obj) + sum(decode_bytes(v) for v in obj)
    return 0


def check_default_config_write(default_configuration: Any) -> None:
    """ObjectLimitError when ggconfigd cannot decode the request carrying this DefaultConfiguration."""
    need = CONFIG_WRITE_ENVELOPE_BYTES + decode_bytes(default_configuration)
    if need > CONFIG_WRITE_ARENA_BYTES:
        raise ObjectLimitError(
            DECODE_MESSAGE, f"the DefaultConfiguration needs {need} B of the {CONFIG_WRITE_ARENA_BYTES} B decode arena"
        )
