"""Loading ``module:attr`` / ``path/to/file.py:attr`` targets for the CLI."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

from ..errors import TreadleError
from ..pipeline import Pipeline


class TargetError(TreadleError):
    """The CLI target cannot be loaded."""


def load_target(target: str) -> Pipeline:
    """Import ``module:attr`` or ``file.py:attr`` (attr defaults to ``pipeline``)."""
    spec, _, attr = target.rpartition(":") if ":" in target else (target, "", "pipeline")
    if not spec:
        raise TargetError(f"Target {target!r} names no module; use package.module:pipeline "
                          "or path/to/file.py:pipeline.")
    attr = attr or "pipeline"
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    if spec.endswith(".py") or os.sep in spec or "/" in spec:
        module = _load_file(spec, target)
    else:
        try:
            module = importlib.import_module(spec)
        except ModuleNotFoundError as exc:
            if exc.name and spec.startswith(exc.name):
                raise TargetError(
                    f"Cannot import {spec!r} (from target {target!r}): no module named {exc.name!r}. "
                    "Run from the folder that contains it, or give a path: path/to/file.py:pipeline."
                ) from None
            raise
    obj = getattr(module, attr, None)
    if obj is None:
        names = sorted(n for n, v in vars(module).items() if isinstance(v, Pipeline))
        hint = f" It defines: {', '.join(names)}." if names else ""
        raise TargetError(f"{spec!r} has no attribute {attr!r}.{hint}")
    if not isinstance(obj, Pipeline):
        raise TargetError(f"{target!r} is a {type(obj).__name__}, not a treadle Pipeline.")
    return obj


def _load_file(path_text: str, target: str) -> object:
    path = Path(path_text)
    if not path.is_file():
        raise TargetError(f"No file {path_text!r} (from target {target!r}).")
    name = path.stem
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(path.resolve()):
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise TargetError(f"Cannot load {path_text!r} as a Python module.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
