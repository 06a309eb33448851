"""Stage fingerprints: what a stage's results were made with.

A fingerprint is a short hash of the parts of a stage's definition that
change its results (see docs/changes.md, "What counts"):

- ``code``: the stage function's syntax tree (``ast.dump`` of its source,
  docstrings removed), so comments, blank lines, formatting and docstrings do
  not count. Without source (a builtin, a function made by ``exec``) it is the
  bytecode and constants instead. ``@stage(version="3")`` replaces it with the
  label ``version 3``: code edits then count only when the label changes.
- ``after``: the stage's dependencies (sorted).
- ``when`` and ``gate``: the code hash of each callable, or null.
- ``output_type``: the qualified name of the declared output type, or null.

Each part is kept next to the fingerprint in the store, so ``plan`` can say
what changed ("new dependency x", "code changed").
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import textwrap
import types
from collections.abc import Callable, Mapping
from typing import Any

#: The fingerprint of results stored before fingerprints existed.
UNKNOWN = None


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
            body = node.body
            if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                node.body = body[1:] or [ast.Pass()]
    return tree


def _unwrap(fn: Any) -> Any:
    fn = inspect.unwrap(fn) if callable(fn) else fn
    return getattr(fn, "__func__", fn)  # bound methods: their function


def _bytecode(code: types.CodeType) -> bytes:
    """Bytecode and constants of ``code`` (nested code objects included, without
    their line numbers or file names)."""
    parts = [code.co_code, repr(code.co_names).encode(), repr(code.co_varnames).encode()]
    for const in code.co_consts:
        parts.append(_bytecode(const) if isinstance(const, types.CodeType) else repr(const).encode())
    return b"\0".join(parts)


def code_hash(fn: Callable[..., Any] | None) -> str | None:
    """A hash of what ``fn`` does, blind to comments, formatting and docstrings.

    The syntax tree of its source when the source is available, else its
    bytecode and constants; None for None.
    """
    if fn is None:
        return None
    fn = _unwrap(fn)
    try:
        if getattr(fn, "__name__", None) == "<lambda>":
            raise TypeError("a lambda's source line holds more than the lambda")
        source = textwrap.dedent(inspect.getsource(fn))
        tree = _strip_docstrings(ast.parse(source))
        # decorators are not the function's code (the @stage options count on their own)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                node.decorator_list = []
                break
        data = ast.dump(tree, annotate_fields=False, include_attributes=False).encode()
    except (OSError, TypeError, SyntaxError, IndentationError):
        code = getattr(fn, "__code__", None)
        if code is None:
            name = getattr(fn, "__qualname__", None) or getattr(type(fn), "__qualname__", "")
            data = f"{getattr(fn, '__module__', '')}.{name}".encode()
        else:
            data = _bytecode(code)
    return hashlib.sha256(data).hexdigest()[:16]


def parts(spec: Any) -> dict[str, Any]:
    """The parts of a stage spec that change its results (what a fingerprint hashes)."""
    version = getattr(spec, "version", None)
    out_type = spec.output_type
    return {
        "code": f"version {version}" if version is not None else code_hash(spec.fn),
        "after": sorted(spec.after),
        "when": code_hash(spec.when),
        "gate": code_hash(spec.gate),
        "output_type": None if out_type is None else f"{out_type.__module__}.{out_type.__qualname__}",
    }


def fingerprint(definition: Mapping[str, Any]) -> str:
    """The fingerprint of a stage definition's :func:`parts` (12 hex digits)."""
    text = json.dumps(definition, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def describe(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    """What differs between two definitions, in words ("new dependency x", "code changed")."""
    if old is None:
        return ["definition not recorded"]
    out = [f"new dependency {d}" for d in new["after"] if d not in old.get("after", [])]
    out += [f"removed dependency {d}" for d in old.get("after", []) if d not in new["after"]]
    if old.get("code") != new["code"]:
        both = [str(v) for v in (old.get("code"), new["code"]) if str(v).startswith("version ")]
        out.append(" -> ".join(both) if len(both) == 2 else "code changed")
    out += [f"{k} changed" for k in ("when", "gate", "output_type") if old.get(k) != new[k]]
    return out or ["definition changed"]


__all__ = ["UNKNOWN", "code_hash", "describe", "fingerprint", "parts"]
