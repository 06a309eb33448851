"""A form class at module level, importable by name (as a form in a pipeline module is)."""

from __future__ import annotations

import attrs


@attrs.frozen
class Label:
    isrc: str
    label: str
    year: int = 2000
