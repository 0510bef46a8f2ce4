"""Component configurations as the nucleus keeps them: a JSON-like tree per component, leaf timestamps.

* ``get(component, key_path)`` returns the subtree; a leaf comes back as ``{leaf_name: value}`` (as
  GetConfiguration answers for a leaf); a missing key raises KeyError.
* ``merge(component, key_path, value, timestamp)`` merges a mapping at ``key_path``; a leaf whose stored
  timestamp is newer than the update's is left alone (the nucleus ignores stale writes). It returns
  the key paths of the leaves that changed, which is what SubscribeToConfigurationUpdate reports.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

KeyPath = tuple[str, ...]


class ConfigStore:
    def __init__(self) -> None:
        self._trees: dict[str, dict[str, Any]] = {}
        self._stamps: dict[str, dict[KeyPath, float]] = {}

    def components(self) -> list[str]:
        return sorted(self._trees)

    def set(self, component: str, configuration: Mapping[str, Any], timestamp: float = 0.0) -> None:
        self._trees[component] = copy.deepcopy(dict(configuration))
        self._stamps[component] = {path: timestamp for path in _leaf_paths(self._trees[component], ())}

    def has(self, component: str) -> bool:
        return component in self._trees

    def tree(self, component: str) -> dict[str, Any]:
        return copy.deepcopy(self._trees.get(component, {}))

    def get(self, component: str, key_path: Sequence[str]) -> dict[str, Any]:
        if component not in self._trees:
            raise KeyError(component)
        node: Any = self._trees[component]
        for key in key_path:
            if not isinstance(node, dict) or key not in node:
                raise KeyError("/".join(key_path))
            node = node[key]
        if isinstance(node, dict):
            return copy.deepcopy(node)
        return {key_path[-1]: copy.deepcopy(node)}

    def merge(
        self, component: str, key_path: Sequence[str], value: Mapping[str, Any], timestamp: float
    ) -> list[KeyPath]:
        tree = self._trees.setdefault(component, {})
        stamps = self._stamps.setdefault(component, {})
        node = tree
        for key in key_path:
            child = node.get(key)
            if not isinstance(child, dict):
                child = {}
                node[key] = child
            node = child
        changed: list[KeyPath] = []
        self._merge_into(node, dict(value), tuple(key_path), timestamp, stamps, changed)
        return changed

    def _merge_into(
        self,
        node: dict[str, Any],
        value: dict[str, Any],
        path: KeyPath,
        timestamp: float,
        stamps: dict[KeyPath, float],
        changed: list[KeyPath],
    ) -> None:
        for key, new in value.items():
            child_path = (*path, str(key))
            if isinstance(new, Mapping):
                child = node.get(key)
                if not isinstance(child, dict):
                    if child is not None:
                        stamps.pop(child_path, None)
                        changed.append(child_path)
                    child = {}
                    node[key] = child
                self._merge_into(child, dict(new), child_path, timestamp, stamps, changed)
                continue
            if stamps.get(child_path, float("-inf")) > timestamp:
                continue  # a newer write already happened
            if node.get(key, _ABSENT) != new or key not in node:
                node[key] = copy.deepcopy(new)
                changed.append(child_path)
            stamps[child_path] = timestamp


_ABSENT = object()


def _leaf_paths(node: Any, path: KeyPath) -> list[KeyPath]:
    if isinstance(node, dict):
        out: list[KeyPath] = []
        for key, value in node.items():
            out.extend(_leaf_paths(value, (*path, str(key))))
        return out
    return [path]
