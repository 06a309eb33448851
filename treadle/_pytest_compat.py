"""pytest when it is installed, else a stand-in, so ``treadle.testing`` imports without it.

``capture_signals`` needs nothing from pytest. ``StoreConformance`` is a pytest
test class: its methods are decorated with ``pytest.fixture`` / ``pytest.mark``
when the class is defined, so without pytest those decorators hand the method
back unchanged, and anything that would actually need pytest (``pytest.raises``,
``pytest.skip``, ...) raises ``ModuleNotFoundError`` saying so.
"""

from __future__ import annotations

import inspect
from typing import Any

_MESSAGE = "treadle.testing.StoreConformance runs under pytest: pip install pytest"


class _Decorator:
    """``pytest.fixture`` and ``pytest.mark.*`` stand-ins: they return the function unchanged."""

    def __getattr__(self, name: str) -> _Decorator:
        if name.startswith("__"):
            raise AttributeError(name)
        return self  # pytest.mark.parametrize, pytest.mark.slow, ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and not kwargs and (inspect.isroutine(args[0]) or inspect.isclass(args[0])):
            return args[0]  # @pytest.fixture, or the decorator @pytest.fixture(...) returned
        return self  # @pytest.fixture(...) / @pytest.mark.x(...): the decorator itself


class _PytestMissing:
    """Stands for the ``pytest`` module: decorators do nothing, anything else raises."""

    def __getattr__(self, name: str) -> Any:
        if name in ("fixture", "mark"):
            return _Decorator()
        raise ModuleNotFoundError(f"{_MESSAGE} (pytest.{name} was used)", name="pytest")

    def __repr__(self) -> str:
        return "<pytest is not installed>"


try:
    import pytest
except ImportError:  # pragma: no cover - exercised in a subprocess by tests/test_testing.py
    pytest = _PytestMissing()  # type: ignore[assignment]

__all__ = ["pytest"]
