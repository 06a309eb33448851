"""The stored plan of a fan-out: its subtasks as data, so a resume can rebuild them.

When a stage returns a :class:`~treadle.FanOut`, the worker tries to write
its subtasks down as ``(name, "module:qualname", args, kwargs)``; the store
keeps that plan with the fan-out's subtask rows (same transaction). If the
process dies mid fan-out, the next claim of the stage carries the plan and
the subtasks are rebuilt from it, without calling the stage function again
(docs/fanout.md, "Crashes").

A subtask can be written down when its function is importable by name (a
module-level function, a class, a static method of an imported module, not
of the script being run: resolving ``module:qualname`` gives back the very
same object) and its arguments
survive a JSON round trip unchanged. ``functools.partial`` of such a
function is unfolded into the function and its arguments. Anything else (a
lambda, a closure, a bound method, a tuple or an object among the
arguments) leaves the fan-out without a plan: it is rebuilt by calling the
stage function, as before.
"""

from __future__ import annotations

import functools
import importlib
import json
import sys
from collections.abc import Mapping
from typing import Any

from ..errors import FanOutPlanError, SerializationError
from ..limits import Rate
from ..outcomes import SubTask
from ..store.records import dumps
from .fanout import Fanned

#: The plan format this code writes and reads.
VERSION = 1


def planned(subtasks: list[SubTask], keys: Mapping[str, str] | None = None,
            rates: Mapping[str, Rate | None] | None = None) -> Fanned:
    """The subtasks with their plan (JSON, carrying their rate keys, name -> key, and
    the FanOut's rates, key -> Rate or None for the Pipeline's named one), or with
    the reason there is none."""
    keys, rates = dict(keys or {}), dict(rates or {})
    parts = []
    for sub in subtasks:
        part, why_not = _entry(sub)
        if part is None:
            return Fanned(subtasks, keys, rates, None, why_not)
        parts.append(part)
    limits = ""
    if keys:
        limits = (',"keys":' + json.dumps(keys) + ',"rates":'
                  + json.dumps({k: None if r is None else [r.count, r.per]
                                for k, r in rates.items()}))
    return Fanned(subtasks, keys, rates,
                  f'{{"v":{VERSION},"subtasks":[{",".join(parts)}]{limits}}}')


def _entry(sub: SubTask) -> tuple[str | None, str | None]:
    """One subtask as JSON text, or (None, why not)."""
    fn, args, kwargs = _unfold(sub.fn, tuple(sub.args), dict(sub.kwargs))
    if getattr(fn, "__module__", None) == "__main__":
        return None, (f"subtask {sub.name!r} calls {fn!r}, defined in the script being run "
                      "(__main__), which a resuming process may not be: put it in a module")
    where = _name_of(fn)
    if where is None:
        return None, (f"subtask {sub.name!r} calls {fn!r}, which is not importable by name "
                      "(use a module-level function)")
    try:
        SubTask(sub.name, fn, *args, **kwargs)  # what the rebuild will call
    except TypeError:
        return None, (f"a keyword argument of subtask {sub.name!r} collides with SubTask's "
                      "own parameters")
    entry = {"name": sub.name, "fn": where, "args": list(args), "kwargs": kwargs}
    try:
        text = dumps(entry, what=f"plan of subtask {sub.name!r}")
    except SerializationError:
        text = None
    if text is None or json.loads(text) != entry:  # a tuple, a non-str key, an object
        return None, f"the arguments of subtask {sub.name!r} are not plain JSON data"
    return text, None


def _unfold(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
            ) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    """``partial(f, *a, **k)(*args, **kwargs)`` as ``f`` with all its arguments."""
    while isinstance(fn, functools.partial):
        args = (*fn.args, *args)
        kwargs = {**fn.keywords, **kwargs}
        fn = fn.func
    return fn, args, kwargs


def _name_of(fn: Any) -> str | None:
    """``module:qualname`` of ``fn`` if that name, in the modules imported (``fn``'s
    own is, unless it was loaded without a name), leads back to ``fn`` itself."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname \
            or module not in sys.modules:
        return None
    try:
        found = _resolve(module, qualname)
    except Exception:  # noqa: BLE001 - not found by that name: no plan
        return None
    return f"{module}:{qualname}" if found is fn else None


def _resolve(module: str, qualname: str) -> Any:
    """The object at ``qualname`` inside ``module`` (imported if need be)."""
    obj: Any = sys.modules.get(module) or importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def rebuild(plan: str, item_id: str, stage: str) -> Fanned:
    """The subtasks written in ``plan``, with their rate keys and rates;
    :class:`FanOutPlanError` names what is missing."""
    try:
        data = json.loads(plan)
        version = data["v"]
        entries = [(e["name"], e["fn"], list(e["args"]), dict(e["kwargs"]))
                   for e in data["subtasks"]] if version == VERSION else []
        keys = {str(n): str(k) for n, k in data.get("keys", {}).items()}
        rates = {str(k): None if r is None else Rate(float(r[0]), float(r[1]))
                 for k, r in data.get("rates", {}).items()}
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise _error(item_id, stage, f"is unreadable ({type(exc).__name__}: {exc})") from exc
    if version != VERSION:
        raise _error(item_id, stage, f"has format {version!r}, which this treadle does not "
                     f"read (it reads {VERSION}); upgrade treadle")
    subtasks = []
    for name, where, args, kwargs in entries:
        module, _, qualname = where.partition(":")
        try:
            fn = _resolve(module, qualname)
        except Exception as exc:  # any import failure (a syntax error too): name it
            raise _error(item_id, stage, f"names {where!r} for subtask {name!r}, which cannot be "
                         f"imported any more ({type(exc).__name__}: {exc})",
                         subtask=name, function=where) from exc
        if not callable(fn):
            raise _error(item_id, stage, f"names {where!r} for subtask {name!r}, which is now "
                         f"a {type(fn).__name__}, not a function", subtask=name, function=where)
        subtasks.append(SubTask(name, fn, *args, **kwargs))
    return Fanned(subtasks, keys, rates, plan)


def _error(item_id: str, stage: str, what: str, *, subtask: str | None = None,
           function: str | None = None) -> FanOutPlanError:
    return FanOutPlanError(
        f"The stored subtask plan of stage {stage!r} of item {item_id!r} {what}. Restore the "
        f"function, or retry the stage (runner.retry({item_id!r}, stage={stage!r})): a retry "
        "calls the stage function again to rebuild the FanOut; completed subtasks keep "
        "their outputs.", item_id=item_id, stage=stage, subtask=subtask, function=function)


__all__ = ["VERSION", "planned", "rebuild"]
