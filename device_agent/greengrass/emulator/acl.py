"""IPC authorization as the nucleus applies a component's ``accessControl`` configuration.

``accessControl`` maps a destination service (``aws.greengrass.ipc.mqttproxy``, ``aws.greengrass.ipc.pubsub``,
``aws.greengrass.ShadowManager`` …) to named policies, each with ``operations`` and ``resources``::

    accessControl:
      aws.greengrass.ipc.mqttproxy:
        com.example.Thing:mqttproxy:1:
          operations: [aws.greengrass#PublishToIoTCore]
          resources: [battwin/{iot:thingName}/*]

The principal is the component itself. A request is allowed if some policy of its destination lists the
operation (or ``*``) and a resource pattern matching the requested resource. Resource matching follows
the nucleus' wildcard trie: a lone ``*`` matches everything; ``*`` inside a pattern matches characters
within one topic level (no ``/``); a whole ``+`` level matches one level; a trailing ``/#`` matches the
rest. (Older nuclei let ``*`` cross ``/``; the emulator is the stricter of the two.)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

MQTT_PROXY = "aws.greengrass.ipc.mqttproxy"
PUBSUB = "aws.greengrass.ipc.pubsub"
SHADOW_MANAGER = "aws.greengrass.ShadowManager"


class AccessControlError(ValueError):
    """``accessControl`` is malformed."""


@dataclass(frozen=True)
class Policy:
    destination: str
    policy_id: str
    operations: tuple[str, ...]
    resources: tuple[str, ...]

    def allows(self, operation: str, resource: str) -> bool:
        if operation not in self.operations and "*" not in self.operations:
            return False
        return any(resource_matches(p, resource) for p in self.resources)


class AccessControl:
    def __init__(self, policies: list[Policy]) -> None:
        self.policies = policies

    @classmethod
    def from_configuration(cls, configuration: Mapping[str, Any]) -> AccessControl:
        """Parse ``configuration["accessControl"]`` (absent = nothing allowed)."""
        raw = configuration.get("accessControl")
        if raw is None:
            return cls([])
        if not isinstance(raw, Mapping):
            raise AccessControlError("accessControl must be a mapping of destination → policies")
        policies: list[Policy] = []
        for destination, by_id in raw.items():
            if not isinstance(by_id, Mapping):
                raise AccessControlError(f"accessControl.{destination} must be a mapping of policy id → policy")
            for policy_id, policy in by_id.items():
                if not isinstance(policy, Mapping):
                    raise AccessControlError(f"accessControl.{destination}.{policy_id} must be a mapping")
                operations = policy.get("operations")
                resources = policy.get("resources")
                for key, value in (("operations", operations), ("resources", resources)):
                    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
                        raise AccessControlError(
                            f"accessControl.{destination}.{policy_id}.{key} must be a non-empty list of strings"
                        )
                assert isinstance(operations, list) and isinstance(resources, list)
                policies.append(Policy(str(destination), str(policy_id), tuple(operations), tuple(resources)))
        return cls(policies)

    def allows(self, destination: str, operation: str, resource: str) -> bool:
        return any(p.allows(operation, resource) for p in self.policies if p.destination == destination)

    def resources(self, destination: str, operation: str) -> list[str]:
        return [
            r
            for p in self.policies
            if p.destination == destination and (operation in p.operations or "*" in p.operations)
            for r in p.resources
        ]


@lru_cache(maxsize=1024)
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    levels = pattern.split("/")
    parts: list[str] = []
    for i, level in enumerate(levels):
        last = i == len(levels) - 1
        if last and level == "#" and i > 0:
            parts.append("/.*")  # the level's own "/" and everything after it
            continue
        prefix = "/" if i > 0 else ""
        if level == "+":
            parts.append(prefix + "[^/]*")
        else:
            parts.append(prefix + "[^/]*".join(re.escape(chunk) for chunk in level.split("*")))
    return re.compile("".join(parts), re.DOTALL)


def resource_matches(pattern: str, resource: str) -> bool:
    """Whether an ``accessControl`` resource pattern covers the requested resource (see module doc)."""
    if pattern in ("*", resource):
        return True
    return _pattern_regex(pattern).fullmatch(resource) is not None


def shadow_resource(thing_name: str, shadow_name: str | None) -> str:
    """The resource ShadowManager authorizes: the classic or the named shadow of a thing."""
    if shadow_name:
        return f"$aws/things/{thing_name}/shadow/name/{shadow_name}"
    return f"$aws/things/{thing_name}/shadow"
