"""A small JSON diff: what a reviewer changed, recorded in the history."""

from __future__ import annotations

from typing import Any


def json_diff(old: Any, new: Any, path: str = "") -> list[dict[str, Any]]:
    """Changes from ``old`` to ``new`` as JSON-Pointer-style operations.

    ``[{"op": "replace", "path": "/title", "old": "A", "new": "B"}, ...]``;
    dicts are compared key by key, lists by position, anything else by value.
    """
    if isinstance(old, dict) and isinstance(new, dict):
        ops: list[dict[str, Any]] = []
        for key in old:
            sub = f"{path}/{_escape(key)}"
            if key not in new:
                ops.append({"op": "remove", "path": sub, "old": old[key]})
            else:
                ops.extend(json_diff(old[key], new[key], sub))
        for key in new:
            if key not in old:
                ops.append({"op": "add", "path": f"{path}/{_escape(key)}", "new": new[key]})
        return ops
    if isinstance(old, list) and isinstance(new, list):
        ops = []
        for i in range(max(len(old), len(new))):
            sub = f"{path}/{i}"
            if i >= len(new):
                ops.append({"op": "remove", "path": sub, "old": old[i]})
            elif i >= len(old):
                ops.append({"op": "add", "path": sub, "new": new[i]})
            else:
                ops.extend(json_diff(old[i], new[i], sub))
        return ops
    if old == new and type(old) is type(new):
        return []
    return [{"op": "replace", "path": path or "/", "old": old, "new": new}]


def _escape(key: Any) -> str:
    return str(key).replace("~", "~0").replace("/", "~1")
