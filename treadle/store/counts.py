"""Stage counters: how many stage rows of each (pipeline, stage, state), kept exact
in the transactions that move the rows, so ``counts()`` reads a handful of rows
instead of counting a million (issue #19; docs/volume.md, "Counts").

Every :class:`~treadle.store.sqltx.SqlTx` primitive that changes a stage row's
state records the move in the transaction's :class:`Tally` (a dict in memory:
nothing is written per transition). At the end of the transaction,
:func:`flush` adds the aggregated changes to ``treadle_count`` in one
statement, under the pipeline's feed lock (``_before_history``), so the
counter rows of a pipeline are only ever written by one transaction at a time
(no deadlock, no lost update) and a commit that rolls back changes no counter.

Operations that move rows in bulk with plain SQL (reconciling a new pipeline
shape, renaming a stage: both rare, in ``prepare``) mark their pipeline for a
*recount* instead: at flush its counters are rebuilt from a ``GROUP BY`` over
its stage rows, which then include every change of the transaction.

Cancelled items keep their stage rows as they are (``pending`` where they
stopped); ``counts()`` reports those rows as ``cancelled`` (:func:`read`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .records import CANCELLED, PENDING

if TYPE_CHECKING:
    from .sqltx import SqlTx

#: (pipeline, stage, state) -> change of its counter in one transaction.
Key = tuple[str, str, str]
#: ``read(sql, params)``: rows of one query (the store's plain read).
Read = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]

_PAGE = 200  # counters per UPSERT statement (4 parameters each)

_UPSERT = ("INSERT INTO treadle_count (pipeline, stage, state, n) VALUES {} "
           "ON CONFLICT (pipeline, stage, state) DO UPDATE SET n = treadle_count.n + excluded.n")
_RECOUNT = ("INSERT INTO treadle_count (pipeline, stage, state, n) "
            "SELECT pipeline, stage, state, count(*) FROM treadle_stage {} "
            "GROUP BY pipeline, stage, state")
_CHUNK = 400  # item ids per IN (...) list


class Tally:
    """The counter changes of one transaction, aggregated until :func:`flush`."""

    __slots__ = ("deltas", "recount")

    def __init__(self) -> None:
        self.deltas: dict[Key, int] = {}
        self.recount: set[str] = set()  # pipelines whose counters are rebuilt at flush

    def __bool__(self) -> bool:
        return bool(self.deltas or self.recount)

    def move(self, pipeline: str, stage: str, old: str, new: str, n: int = 1) -> None:
        """``n`` rows of ``stage`` went from ``old`` to ``new``."""
        if old == new or n == 0:
            return
        d = self.deltas
        k = (pipeline, stage, old)
        d[k] = d.get(k, 0) - n
        k = (pipeline, stage, new)
        d[k] = d.get(k, 0) + n

    def add(self, pipeline: str, stage: str, state: str, n: int = 1) -> None:
        """``n`` new rows of ``stage`` in ``state``."""
        k = (pipeline, stage, state)
        self.deltas[k] = self.deltas.get(k, 0) + n

    def pipelines(self) -> set[str]:
        """The pipelines whose counters this transaction changes."""
        return {k[0] for k in self.deltas} | self.recount

    def take(self) -> tuple[list[tuple[str, str, str, int]], list[str]]:
        """(changed counters in key order, pipelines to recount), and empty the tally.

        Changes of a pipeline being recounted are dropped: its recount sees them."""
        rows = [(*k, n) for k, n in sorted(self.deltas.items()) if n and k[0] not in self.recount]
        recount = sorted(self.recount)
        self.deltas, self.recount = {}, set()
        return rows, recount


def flush(tx: SqlTx) -> None:
    """Write the transaction's counter changes: one statement per page of changed
    counters (in key order), and the recounts. Called by ``SqlTx.flush`` under the
    feed locks of the pipelines concerned, as the transaction's last writes."""
    rows, recount = tx.tally.take()
    for name in recount:
        tx._exec("DELETE FROM treadle_count WHERE pipeline=?", (name,))
        tx._exec(_RECOUNT.format("WHERE pipeline=?"), (name,))
    for start in range(0, len(rows), _PAGE):
        page = rows[start:start + _PAGE]
        tx._exec(_UPSERT.format(",".join(["(?,?,?,?)"] * len(page))),
                 [v for row in page for v in row])


def rebuild(execute: Callable[[str], Any]) -> None:
    """Schema 7: every pipeline's counters from its stage rows (the migration step)."""
    execute("DELETE FROM treadle_count")
    execute(_RECOUNT.format(""))


def read(read_rows: Read, pipeline: str, stages: Iterable[str]) -> dict[str, dict[str, int]]:
    """``counts()`` of a SQL store: per stage, rows per state (states with none left out);
    pending rows of cancelled items count as ``cancelled``."""
    out: dict[str, dict[str, int]] = {s: {} for s in stages}
    for stage, state, n in read_rows(
            "SELECT stage, state, n FROM treadle_count WHERE pipeline=? AND n<>0", (pipeline,)):
        if stage in out:
            out[stage][state] = int(n)
    return as_cancelled(out, cancelled_pending(read_rows, pipeline))


def cancelled_pending(read_rows: Read, pipeline: str) -> dict[str, int]:
    """Per stage, the pending rows of cancelled items: the cancelled items through the
    index of item states, then their rows through the (pipeline, item_id, stage) key,
    so it costs per cancelled item, never per row of the pipeline."""
    ids = [r[0] for r in read_rows(
        "SELECT item_id FROM treadle_item WHERE pipeline=? AND state=?", (pipeline, CANCELLED))]
    found: dict[str, int] = {}
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start:start + _CHUNK]
        # the state is tested here, not in SQL: a state condition tempts the planner
        # into the (pipeline, stage, state) index and a long scan
        for stage, state in read_rows(
                "SELECT stage, state FROM treadle_stage WHERE pipeline=? "
                f"AND item_id IN ({','.join('?' * len(chunk))})", (pipeline, *chunk)):
            if state == PENDING:
                found[stage] = found.get(stage, 0) + 1
    return found


def drift(read_rows: Read) -> dict[Key, tuple[int, int]]:
    """Counters that differ from a ``GROUP BY`` of the stage rows: key -> (counter, rows).
    Empty when every counter is exact (what the tests check after every operation)."""
    kept = {(p, s, st): int(n) for p, s, st, n in read_rows(
        "SELECT pipeline, stage, state, n FROM treadle_count WHERE n<>0", ())}
    rows = {(p, s, st): int(n) for p, s, st, n in read_rows(
        "SELECT pipeline, stage, state, count(*) FROM treadle_stage "
        "GROUP BY pipeline, stage, state", ())}
    return {k: (kept.get(k, 0), rows.get(k, 0)) for k in kept.keys() | rows.keys()
            if kept.get(k, 0) != rows.get(k, 0)}


def as_cancelled(counts: dict[str, dict[str, int]], cancelled: dict[str, int]
                 ) -> dict[str, dict[str, int]]:
    """``counts`` with ``cancelled[stage]`` of each stage's pending rows moved to ``cancelled``."""
    for stage, n in cancelled.items():
        by_state = counts.get(stage)
        if by_state is None or not n:
            continue
        left = by_state.get(PENDING, 0) - n
        if left:
            by_state[PENDING] = left
        else:
            by_state.pop(PENDING, None)
        by_state[CANCELLED] = by_state.get(CANCELLED, 0) + n
    return counts


__all__ = ["Key", "Read", "Tally", "as_cancelled", "cancelled_pending", "drift", "flush", "read", "rebuild"]
