"""How the command line writes: rich on a terminal, plain lines otherwise.

On a terminal (and without ``NO_COLOR``) tables have a header rule and a
little colour, and a cell too long for the terminal wraps onto more lines of
its column: nothing is cut. When stdout is not a terminal, or ``NO_COLOR``
is set (https://no-color.org), the same tables are plain text without any
control code, as wide as their longest row (each row on one line unless a
cell holds a line break), so ``grep`` and CI logs see every value whole.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Sequence
from typing import Any, TextIO

import attrs
from rich import box
from rich.console import Console
from rich.table import Table

#: A header underlined with ``-`` and no other lines: plain ASCII.
_PLAIN_BOX = box.Box("    \n    \n -  \n    \n    \n    \n    \n    \n", ascii=True)


@attrs.frozen
class Look:
    """How to render for one stream: ``plain`` text, or for a terminal ``width`` wide."""

    plain: bool = True
    width: int = 100

    @classmethod
    def of(cls, stream: TextIO) -> Look:
        """Plain unless ``stream`` is a terminal and ``NO_COLOR`` is unset (or empty)."""
        try:
            tty = stream.isatty()
        except (AttributeError, ValueError):
            tty = False
        if not tty or os.environ.get("NO_COLOR"):
            return cls(plain=True)
        return cls(plain=False, width=shutil.get_terminal_size((100, 24)).columns)

    def console(self, file: TextIO, width: int | None = None) -> Console:
        """A rich console writing to ``file`` in this look."""
        if self.plain:
            return Console(file=file, width=width or self.width, color_system=None,
                           force_terminal=False, highlight=False, emoji=False, markup=False,
                           soft_wrap=False)
        return Console(file=file, width=width or self.width, force_terminal=True,
                       highlight=False, emoji=False, markup=False)


PLAIN = Look()


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], look: Look = PLAIN,
          *, title: str | None = None) -> str:
    """``rows`` under ``headers`` as text; cells are shown whole (wrapped on a terminal)."""
    t = Table(box=_PLAIN_BOX if look.plain else box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
              header_style=None if look.plain else "bold", title=title, title_justify="left",
              title_style=None if look.plain else "bold")
    for h in headers:
        t.add_column(str(h), overflow="fold")
    for r in rows:
        t.add_row(*["" if c is None else str(c) for c in r])
    buf = io.StringIO()
    if look.plain:  # as wide as the widest row: nothing wraps
        probe = look.console(io.StringIO(), width=1_000_000)
        width = max(probe.measure(t).maximum, 20)
        look.console(buf, width=width).print(t)
    else:
        look.console(buf).print(t)
    return "\n".join(line.rstrip() for line in buf.getvalue().rstrip("\n").split("\n"))
