"""``Tx``: the primitive row operations of one write transaction.

Every store implements them (``memory.py`` in dicts, ``sql.py`` as prepared
SQL); the transition operations (``flow``, ``fanout``, ``human``,
``rollback``) are plain functions written once over them. A primitive checks
its guard (owner, attempt, expected state) in the same statement that
changes the row, so the operations are compare-and-set.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping, Sequence

from .records import ControlRow, HistoryRow, StageRecord, SubRecord, SubResult, Transition


class Tx(abc.ABC):
    """Primitive row operations inside one write transaction."""

    now: float

    @abc.abstractmethod
    def insert_items(self, pipeline: str, rows: Sequence[tuple[str, str]],
                     version: str | None = None) -> list[str]:
        """Insert items not yet known (recorded at pipeline ``version``); return the
        ids actually inserted."""

    @abc.abstractmethod
    def insert_stage_rows(self, pipeline: str, rows: Iterable[tuple[str, str, bool]]) -> None:
        """Insert (item_id, stage, ready) rows as pending where missing."""

    @abc.abstractmethod
    def stage_states(self, pipeline: str, item_ids: Iterable[str]) -> dict[str, dict[str, tuple[str, bool]]]:
        """item_id -> stage -> (state, ready)."""

    def lock_stage_rows(self, pipeline: str, item_id: str) -> None:
        """Lock one item's stage rows until commit (claims skip them meanwhile).

        Needed only where writers run concurrently (PostgreSQL).
        """

    def lock_items(self, pipeline: str, item_ids: Iterable[str]) -> None:
        """Serialise, until commit, other writers that read these items' states.

        Stores whose write transactions already exclude each other (SQLite,
        memory) need nothing; PostgreSQL locks the item rows.
        """

    @abc.abstractmethod
    def apply(self, pipeline: str, owner: str, transitions: Sequence[Transition],
              stamps: Mapping[str, tuple[str, str | None]] | None = None) -> list[bool]:
        """Guarded update of running rows; one accepted flag per transition. With
        ``stamps`` (stage -> (fingerprint, version)), each accepted row records its
        stage's stamp in the same statement."""

    @abc.abstractmethod
    def record_definitions(self, pipeline: str, rows: Sequence[tuple[str, str, str]]) -> None:
        """Record (stage, fingerprint, definition JSON) rows not yet recorded."""

    @abc.abstractmethod
    def items_at_version(self, pipeline: str, version: str | None,
                         limit: int) -> list[tuple[str, str]]:
        """Up to ``limit`` (item_id, data) of items recorded at ``version`` (None:
        without one), oldest first."""

    @abc.abstractmethod
    def migrate_item(self, pipeline: str, item_id: str, expect: str | None, version: str,
                     data: str) -> bool:
        """Replace an item's data and version if its version is still ``expect``."""

    @abc.abstractmethod
    def rename_stage(self, pipeline: str, old: str, new: str) -> list[str]:
        """Rename ``old`` stage rows (and their subtasks) to ``new``, replacing
        ``new`` rows that never started; returns the items moved."""

    @abc.abstractmethod
    def unclaim(self, pipeline: str, owner: str, keys: Sequence[tuple[str, str, int]]) -> list[bool]:
        """Undo claims that never ran: back to pending and ready, attempt - 1 (guarded)."""

    @abc.abstractmethod
    def set_ready(self, pipeline: str, rows: Sequence[tuple[str, str]]) -> None:
        """Mark pending (item_id, stage) rows ready."""

    @abc.abstractmethod
    def set_state(self, pipeline: str, rows: Sequence[tuple[str, str]], state: str,
                  from_states: Sequence[str], *, ready: bool, error: str | None = None,
                  clear_output: bool = False) -> list[tuple[str, str]]:
        """Move rows currently in ``from_states`` to ``state``; return those moved."""

    @abc.abstractmethod
    def set_item_states(self, pipeline: str, rows: Sequence[tuple[str, str]]) -> None:
        """Record item-level states (item_id, state)."""

    @abc.abstractmethod
    def append_history(self, pipeline: str, rows: Iterable[HistoryRow]) -> None:
        """Append history rows stamped with ``now``."""

    @abc.abstractmethod
    def claim(self, pipeline: str, owner: str, stages: Sequence[str], limit: int,
              only: Sequence[str] | None = None) -> list[tuple[str, str, int]]:
        """Claim up to ``limit`` ready, due, pending rows (oldest first), optionally
        only of the items in ``only``: returns (item_id, stage, attempt)."""

    @abc.abstractmethod
    def claim_rows(self, pipeline: str, owner: str, rows: Sequence[tuple[str, str]],
                   min_priority: int | None) -> list[tuple[str, str, int]]:
        """Claim these (item, stage) rows where each is pending, due and of priority
        ``min_priority`` or more (None: any): returns (item_id, stage, attempt)."""

    @abc.abstractmethod
    def top_ready_priority(self, pipeline: str) -> int | None:
        """The highest priority among ready pending rows (None when there are none)."""

    # -- flow control (docs/flow-control.md) -----------------------------------
    @abc.abstractmethod
    def set_priority(self, pipeline: str, item_ids: Sequence[str], priority: int,
                     stages: Sequence[str] | None = None) -> None:
        """Set the priority of these items' stage rows (of ``stages`` only, when
        given; otherwise also of the items themselves)."""

    @abc.abstractmethod
    def take_limits(self, pipeline: str, keys: Sequence[str], *, lock: bool = True
                    ) -> dict[str, tuple[float, float] | None]:
        """Lock the limit rows of ``keys`` (in sorted order: no deadlocks between
        claims) until the transaction ends, creating missing ones; returns each
        bucket's (tokens, updated_at), None for a bucket never used. With
        ``lock=False`` only reads (no lock, no row created)."""

    @abc.abstractmethod
    def save_limits(self, pipeline: str, rows: Sequence[tuple[str, float, float]]) -> None:
        """Store (key, tokens, updated_at) of rate buckets."""

    @abc.abstractmethod
    def running_counts(self, pipeline: str, stages: Sequence[str]) -> dict[str, int]:
        """Running rows of each of ``stages`` (through the running rows' index)."""

    @abc.abstractmethod
    def ready_counts(self, pipeline: str, stages: Sequence[str]) -> dict[str, int]:
        """Ready pending rows of each of ``stages``."""

    @abc.abstractmethod
    def item_priorities(self, pipeline: str, item_ids: Iterable[str]) -> dict[str, int]:
        """The recorded priority of each known item of ``item_ids``."""

    @abc.abstractmethod
    def items_at_priority(self, pipeline: str, at_least: int) -> list[str]:
        """Items whose priority is ``at_least`` or more: highest first, then oldest."""

    @abc.abstractmethod
    def items_json(self, pipeline: str, item_ids: Iterable[str]) -> dict[str, str]:
        """Item JSON by id."""

    @abc.abstractmethod
    def completed_outputs(self, pipeline: str, item_ids: Iterable[str]) -> dict[str, dict[str, str | None]]:
        """Completed stage outputs (JSON) by item and stage."""

    @abc.abstractmethod
    def rows(self, pipeline: str, item_id: str) -> dict[str, StageRecord]:
        """Every stage row of one item, by stage name."""

    @abc.abstractmethod
    def cas(self, pipeline: str, item_id: str, stage: str, expect: str, state: str, *,
            output: str | None, review: str | None, attempt: int | None = None) -> bool:
        """Move one row from ``expect`` (at ``attempt``, when given) to ``state`` with
        that output and review JSON (ready cleared, owner cleared); False if it was
        not in ``expect`` (or at another attempt)."""

    def locked_rows(self, pipeline: str, item_ids: Iterable[str]) -> dict[str, dict[str, StageRecord]]:
        """Lock the stage rows of these items (as :meth:`lock_stage_rows`, item by
        item in sorted order) and return them: item_id -> stage -> record.

        Stores may do it in one statement per page (PostgreSQL)."""
        out: dict[str, dict[str, StageRecord]] = {}
        for item_id in sorted(set(item_ids)):
            self.lock_stage_rows(pipeline, item_id)
            out[item_id] = self.rows(pipeline, item_id)
        return out

    def cas_many(self, pipeline: str, expect: str, state: str,
                 rows: Sequence[tuple[str, str, int, str | None, str | None]]) -> list[bool]:
        """:meth:`cas` for many (item_id, stage, attempt, output, review) rows, each
        from ``expect`` at that attempt to ``state``; one flag per row (False: not
        moved). Stores may do it in one statement per page (PostgreSQL)."""
        return [self.cas(pipeline, i, s, expect, state, output=o, review=r, attempt=a)
                for i, s, a, o, r in rows]

    @abc.abstractmethod
    def overdue(self, pipeline: str, stage: str, before: float) -> list[str]:
        """Items whose ``stage`` has awaited review since before ``before``, oldest first."""

    @abc.abstractmethod
    def items_in_state(self, pipeline: str, state: str, limit: int | None,
                       prefix: bool = False) -> list[str]:
        """Items whose recorded item state is ``state`` (or starts with it), oldest first."""

    @abc.abstractmethod
    def item_state_of(self, pipeline: str, item_id: str) -> str | None:
        """The recorded item state of one item."""

    @abc.abstractmethod
    def cas_item_state(self, pipeline: str, item_id: str, expect: str, state: str) -> bool:
        """Set an item's recorded state if it is ``expect``."""

    @abc.abstractmethod
    def set_error(self, pipeline: str, item_id: str, stage: str, expect: str, error: str) -> bool:
        """Set a stage row's error if its state is ``expect``."""

    @abc.abstractmethod
    def owner_of(self, pipeline: str, item_id: str, stage: str) -> str | None:
        """The owner of a stage row's claim (None when unclaimed)."""

    @abc.abstractmethod
    def subtask_rows(self, pipeline: str, item_id: str, stage: str) -> dict[str, SubRecord]:
        """The subtask rows of one (item, stage), by name, in creation order."""

    @abc.abstractmethod
    def upsert_subtasks(self, pipeline: str, item_id: str, stage: str,
                        rows: Sequence[tuple[str, str, int, str | None]]) -> None:
        """Insert or overwrite (name, state, attempt, owner) subtask rows."""

    @abc.abstractmethod
    def delete_subtasks(self, pipeline: str, item_id: str, stage: str, names: Sequence[str]) -> None:
        """Remove subtask rows (the history keeps their past)."""

    @abc.abstractmethod
    def apply_subtasks(self, pipeline: str, owner: str, results: Sequence[SubResult]) -> list[bool]:
        """Guarded update of running subtask rows; one accepted flag per result."""

    @abc.abstractmethod
    def reset_subtasks(self, pipeline: str, keys: Sequence[tuple[str, str]]) -> None:
        """Running subtasks of these (item, stage) back to pending, unowned."""

    @abc.abstractmethod
    def runners(self) -> list[tuple[str, str, int, float]]:
        """(owner, host, pid, expires_at) of registered runners."""

    @abc.abstractmethod
    def running_rows(self, pipeline: str) -> list[tuple[str, str, int, str | None]]:
        """(item_id, stage, attempt, owner) of running rows."""

    @abc.abstractmethod
    def rolling_back(self, pipeline: str) -> dict[str, str]:
        """Items whose rollback waits or runs: item_id -> ``rolling_back[:owner]``
        (read through an index: there are few)."""

    @abc.abstractmethod
    def delete_runners(self, owners: Sequence[str]) -> None:
        """Remove the registrations of these runners."""

    @abc.abstractmethod
    def find(self, pipeline: str, stages: Sequence[str], item_id: str | None,
             stage: str | None, states: Sequence[str]) -> list[tuple[str, str]]:
        """(item_id, stage) rows of ``stages`` in ``states``, optionally of one item
        or one stage, in creation order."""

    @abc.abstractmethod
    def require_item(self, pipeline: str, item_id: str) -> None:
        """Raise :class:`~treadle.ItemNotFoundError` if the item is unknown."""

    @abc.abstractmethod
    def append_control(self, pipeline: str, kind: str, targets: Sequence[str], actor: str,
                       reason: str | None) -> None:
        """Append control rows (``pause``, ``resume``, ``cancel``), one per target."""

    @abc.abstractmethod
    def control_rows(self, pipeline: str, since: int, kinds: Sequence[str] | None = None
                     ) -> list[ControlRow]:
        """Control rows after id ``since`` (of those kinds, if given), oldest first."""

    @abc.abstractmethod
    def item_states(self, pipeline: str, item_ids: Iterable[str]) -> dict[str, str]:
        """The recorded item-level state of each known item of ``item_ids``."""

    # -- nested pipelines (store/nested.py) -------------------------------------
    @abc.abstractmethod
    def insert_links(self, rows: Sequence[tuple[str, str, str, str, str]]) -> None:
        """Record (pipeline, item_id, stage, child_pipeline, child_id) links not yet known."""

    @abc.abstractmethod
    def links_of(self, pipeline: str, item_id: str, stage: str | None = None
                 ) -> list[tuple[str, str, str]]:
        """(stage, child_pipeline, child_id) of the children one item spawned, in order."""

    @abc.abstractmethod
    def parents_of(self, child_pipeline: str, child_ids: Iterable[str]
                   ) -> list[tuple[str, str, str, str]]:
        """(child_id, pipeline, item_id, stage) of the parents of these children."""


__all__ = ["Tx"]
