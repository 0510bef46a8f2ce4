"""IPC authorization as the nucleus applies a component's ``accessControl`` configuration.

``accessControl`` maps a destination service (``aws.greengrass.ipc.mqttproxy``, ``aws.greengrass.ipc.pubsub``,
``aws.greengrass.ShadowManager`` …) to named policies, each with ``operations`` and ``resources``::

    accessControl:
      aws.greengrass.ipc.mqttproxy:
        com.example.Thing:mqttproxy:1:
          operations: [aws.greengrass#PublishToIoTCore]
          resources: [battwin/+/#]

The principal is the component itself. A request is allowed if some policy of its destination lists the
operation (or ``*``) and a resource pattern matching the requested resource. How a pattern matches is
the nucleus' own (:func:`matcher_for`):

classic (aws-greengrass-nucleus ``authorization/WildcardTrie.java``, ``AuthorizationHandler.java``)
    mqttproxy resources are matched MQTT style (``MqttProxyIPCAgent.doAuthorization``, nucleus >= 2.6.0):
    ``*`` matches any characters, ``/`` included; ``+`` is a wildcard only as a whole level (any characters
    but ``/``); ``#`` only as the last whole level, where it matches the rest and the parent level itself
    (``a/#`` matches ``a``, ``a/`` and ``a/b/c``); elsewhere ``+`` and ``#`` are literal; ``${c}`` is the
    literal character ``c``. Other destinations are matched STANDARD style: only ``*`` (and ``${c}``).
    ``{iot:thingName}`` arrives already interpolated with the configuration.

lite v2.6.0 (aws-greengrass-lite ``modules/ggipcd/src/ipc_authz.c``, ``services/mqttproxy/mqttproxy.c``)
    no interpolation: ``{iot:thingName}`` stays as written and never matches a real topic. The default
    matcher (pub/sub, everything but mqttproxy) is a glob: ``*`` matches any characters (``/`` included),
    ``${…}`` escapes up to ``}``, ``+`` and ``#`` are literal. mqttproxy (PublishToIoTCore,
    SubscribeToIoTCore) uses the default matcher OR an MQTT filter match in which ``+`` matches any
    characters but ``/`` wherever it stands, ``#`` matches whatever follows wherever it stands (but
    ``a/#`` does not match ``a``), and ``*`` is literal; the filter match sees the pattern as the default
    matcher left it (it rewrites ``*`` to NUL in place), so a pattern with ``*`` matches only as a glob.
    A resource exactly ``*`` matches everything on both.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
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

    def allows(self, operation: str, resource: str, matcher: Matcher) -> bool:
        if operation not in self.operations and "*" not in self.operations:
            return False
        return any(matcher(p, resource) for p in self.resources)


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

    def allows(self, destination: str, operation: str, resource: str, flavour: str = "classic") -> bool:
        """Whether a policy of ``destination`` allows the request, by ``flavour``'s matching rules."""
        matcher = matcher_for(flavour, destination)
        return any(p.allows(operation, resource, matcher) for p in self.policies if p.destination == destination)

    def resources(self, destination: str, operation: str) -> list[str]:
        return [
            r
            for p in self.policies
            if p.destination == destination and (operation in p.operations or "*" in p.operations)
            for r in p.resources
        ]


Matcher = Callable[[str, str], bool]  # (pattern, requested resource) -> allowed


@lru_cache(maxsize=1024)
def _classic_regex(pattern: str, mqtt: bool) -> re.Pattern[str]:
    """A regex with WildcardTrie's meaning of ``pattern`` (see the module doc)."""
    parts: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "$" and i + 3 < n and pattern[i + 1] == "{" and pattern[i + 3] == "}":
            parts.append(re.escape(pattern[i + 2]))  # ${c}: c literally
            i += 4
            continue
        level_start = i == 0 or pattern[i - 1] == "/"
        level_end = i == n - 1 or pattern[i + 1] == "/"
        if c == "*":
            parts.append(".*")
        elif mqtt and c == "+" and level_start and level_end:
            parts.append("[^/]*")
        elif mqtt and c == "#" and i == n - 1 and level_start:
            if i == 0:
                parts.append(".*")
            else:  # "a/#" also matches "a": the level separator before it is optional
                parts[-1] = "(?:/.*)?"
        else:
            parts.append(re.escape(c))
        i += 1
    return re.compile("".join(parts), re.DOTALL)


def classic_standard_matches(pattern: str, resource: str) -> bool:
    """Classic, STANDARD lookup (every destination but mqttproxy)."""
    return pattern == "*" or _classic_regex(pattern, False).fullmatch(resource) is not None


def classic_mqtt_matches(pattern: str, resource: str) -> bool:
    """Classic, MQTT_STYLE lookup (mqttproxy: PublishToIoTCore / SubscribeToIoTCore)."""
    return pattern in ("*", "#") or _classic_regex(pattern, True).fullmatch(resource) is not None


_NUL = "\0"


def _lite_rewrite(pattern: str) -> tuple[str, str]:
    """Lite's default matcher rewrites the pattern in place: ``*`` becomes NUL, ``${…}`` loses ``$``, ``{``
    and ``}``. Returns (the rewritten pattern, the whole buffer as it is left: rewritten + original tail)."""
    out: list[str] = []
    in_escape = False
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if in_escape:
            if c == "}":
                in_escape = False
                i += 1
                continue
        elif c == "*":
            out.append(_NUL)
            i += 1
            continue
        elif c == "$" and i < len(pattern) - 1 and pattern[i + 1] == "{":
            in_escape = True
            i += 2
            continue
        out.append(c)
        i += 1
    rewritten = "".join(out)
    return rewritten, rewritten + pattern[len(rewritten) :]


def lite_default_matches(pattern: str, resource: str) -> bool:
    """Lite v2.6.0's ``ggl_ipc_default_policy_matcher``: a glob where ``*`` matches any characters."""
    if pattern == "*":
        return True
    glob = _lite_rewrite(pattern)[0]
    segments = glob.split(_NUL)
    if len(segments) == 1:
        return resource == glob
    first, *middle, last = segments
    if not resource.startswith(first):
        return False
    remaining = resource[len(first) :]
    for segment in middle:  # leftmost occurrence of each inner segment
        found = remaining.find(segment)
        if found < 0:
            return False
        remaining = remaining[found + len(segment) :]
    return remaining.endswith(last)


def _lite_topic_filter_matches(resource: str, topic_filter: str) -> bool:
    """Lite's ``match_topic_filter``: ``+`` eats up to the next ``/``, ``#`` ends the match, anything else
    must be the same character."""
    j = 0
    for c in topic_filter:
        if c == "+":
            while j < len(resource) and resource[j] != "/":
                j += 1
        elif c == "#":
            return True
        else:
            if j >= len(resource) or resource[j] != c:
                return False
            j += 1
    return j == len(resource)


def lite_mqtt_matches(pattern: str, resource: str) -> bool:
    """Lite v2.6.0's ``ggl_ipc_mqtt_policy_matcher``: the default matcher, or the MQTT filter match on the
    buffer the default matcher left behind."""
    if lite_default_matches(pattern, resource):
        return True
    return _lite_topic_filter_matches(resource, _lite_rewrite(pattern)[1])


def matcher_for(flavour: str, destination: str) -> Matcher:
    """How the flavour's nucleus matches accessControl resources of ``destination``."""
    mqtt = destination == MQTT_PROXY
    if flavour == "lite":
        return lite_mqtt_matches if mqtt else lite_default_matches
    return classic_mqtt_matches if mqtt else classic_standard_matches


def resource_matches(pattern: str, resource: str, flavour: str = "classic", destination: str = MQTT_PROXY) -> bool:
    """Whether an ``accessControl`` resource pattern covers the requested resource (see module doc)."""
    return matcher_for(flavour, destination)(pattern, resource)


def shadow_resource(thing_name: str, shadow_name: str | None) -> str:
    """The resource ShadowManager authorizes: the classic or the named shadow of a thing."""
    if shadow_name:
        return f"$aws/things/{thing_name}/shadow/name/{shadow_name}"
    return f"$aws/things/{thing_name}/shadow"
