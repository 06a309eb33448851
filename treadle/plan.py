"""``Runner.plan()``: what the pipeline definition changes for the items already stored.

The plan compares the pipeline (its stages, their fingerprints, its item type
and version) with what the store holds, and lists each change with item
counts. It only reads; docs/changes.md explains each kind of change and what
needs a decision.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from .fingerprint import describe
from .states import FINISHED_ITEM_STATES, StageState

if TYPE_CHECKING:
    from .pipeline import Pipeline
    from .store.base import StateStore
    from .store.records import ResultRow

#: The states of a stage row that hold a result made by some definition of the stage.
RESULT_STATES = frozenset({StageState.COMPLETED.value, StageState.SKIPPED.value,
                           StageState.AWAITING_REVIEW.value})
_RUNNING = StageState.RUNNING.value
#: Item states of items that had finished (plan counts them for an added stage).
FINISHED = FINISHED_ITEM_STATES

#: Kinds of change, in the order a plan lists them.
KINDS = ("added", "removed", "renamed", "changed", "unknown", "migrate", "unrestorable")


def short(fp: str | None) -> str:
    """A fingerprint as shown in messages (its first 8 hex digits)."""
    return "unknown" if fp is None else fp[:8]


@attrs.frozen
class Change:
    """One change the definition makes to stored items.

    ``kind`` is one of :data:`KINDS`; ``items`` the items it touches;
    ``downstream`` the results downstream of a changed stage that depend on
    the stale ones; ``in_flight`` the touched items with a stage running now;
    ``reasons`` what differs ("new dependency x", "code changed");
    ``old``/``new`` the fingerprints (or versions) involved.
    """

    kind: str
    stage: str | None
    items: int
    summary: str
    needs_decision: bool
    downstream: int = 0
    in_flight: int = 0
    reasons: tuple[str, ...] = ()
    old: str | None = None
    new: str | None = None
    item_ids: tuple[str, ...] = attrs.field(default=(), repr=False)

    def to_json(self) -> dict[str, Any]:
        """The change as plain JSON data (``plan --json``)."""
        data = attrs.asdict(self)
        data["reasons"] = list(self.reasons)
        data["item_ids"] = list(self.item_ids[:100])  # a sample: the counts are exact
        return data


@attrs.frozen
class Plan:
    """What the pipeline definition changes for stored items (``Runner.plan()``)."""

    pipeline: str
    version: str | None
    items: int
    changes: tuple[Change, ...]

    @property
    def needs_decision(self) -> bool:
        """True when some change needs a decision (``plan`` exits 1)."""
        return any(c.needs_decision for c in self.changes)

    def stale(self, stage: str | None = None) -> list[Change]:
        """The ``changed`` entries (of ``stage``, if given): results made by an older definition."""
        return [c for c in self.changes if c.kind == "changed" and stage in (None, c.stage)]

    def to_json(self) -> dict[str, Any]:
        """The plan as plain JSON data (``plan --json``)."""
        return {"pipeline": self.pipeline, "version": self.version, "items": self.items,
                "needs_decision": self.needs_decision,
                "changes": [c.to_json() for c in self.changes]}


def make_plan(pipeline: Pipeline, store: StateStore) -> Plan:
    """Compare ``pipeline`` with what ``store`` holds (reads only).

    One pass over the stage rows (plain tuples) finds the stale groups and
    the rows per stage; only the items a change touches are looked at again.
    """
    rows = store.result_rows(pipeline)
    items = store.item_versions(pipeline)
    current = pipeline.fingerprints
    per_stage: Counter[str] = Counter()
    groups: dict[tuple[str, str | None], list[str]] = {}
    for item_id, stage, state, fp in rows:
        per_stage[stage] += 1
        if state in RESULT_STATES and fp != current.get(stage, fp):
            groups.setdefault((stage, fp), []).append(item_id)
    changes: list[Change] = []
    finished = {i for i, _, _, state in items if state in FINISHED}
    changes += _shape_changes(pipeline, rows, per_stage, [i for i, _, _, _ in items], finished)
    changes += _stale(pipeline, rows, groups, store.definitions(pipeline))
    changes += _restore_checks(pipeline, items)
    return Plan(pipeline.name, pipeline.version, len(items), tuple(changes))


def _shape_changes(pipeline: Pipeline, rows: list[ResultRow], per_stage: Mapping[str, int],
                   item_ids: list[str], finished: set[str]) -> list[Change]:
    """Stages added (rows missing), removed (rows of unknown stages), renamed (declared)."""
    out: list[Change] = []
    renamed_from = dict(pipeline.renames)
    lacking = [s for s in pipeline.order
               if per_stage.get(s, 0) + sum(per_stage.get(o, 0) for o, n in renamed_from.items()
                                            if n == s) < len(item_ids)]
    if lacking:  # some items lack a row of these stages: read those items' rows
        names = set(lacking) | {o for o, n in renamed_from.items() if n in lacking}
        having: dict[str, set[str]] = {s: set() for s in names}
        for item_id, stage, _, _ in rows:
            if stage in names:
                having[stage].add(item_id)
        for stage in lacking:
            olds = [having[o] for o, n in renamed_from.items() if n == stage]
            missing = [i for i in item_ids
                       if i not in having[stage] and not any(i in h for h in olds)]
            if not missing:
                continue
            settled = sum(1 for i in missing if i in finished)
            out.append(Change(
                "added", stage, len(missing),
                f"new stage {stage!r}: {len(missing)} item(s) will run it "
                f"({settled} of them finished before)", True, item_ids=tuple(missing)))
    for stage, n in sorted(per_stage.items()):
        if stage in pipeline.stages:
            continue
        if stage in renamed_from:
            out.append(Change("renamed", stage, n,
                              f"stage {stage!r} renamed to {renamed_from[stage]!r}: the records of "
                              f"{n} item(s) carry over", False, new=renamed_from[stage]))
        else:
            out.append(Change("removed", stage, n,
                              f"stage {stage!r} removed: the records of {n} item(s) are kept "
                              "(archived) and ignored", False))
    return out


def _stale(pipeline: Pipeline, rows: list[ResultRow],
           groups: Mapping[tuple[str, str | None], list[str]],
           recorded: Mapping[tuple[str, str], str]) -> list[Change]:
    """Results made by another definition of their stage, grouped by old fingerprint."""
    rank = {s: i for i, s in enumerate(pipeline.order)}
    out: list[Change] = []
    for (stage, fp), ids in sorted(groups.items(), key=lambda g: (rank[g[0][0]], g[0][1] or "")):
        ids = sorted(ids)
        new = pipeline.fingerprints[stage]
        if fp is None:
            out.append(Change("unknown", stage, len(ids),
                              f"stage {stage!r}: {len(ids)} result(s) made before fingerprints "
                              "(their definition is unknown; rerun --stale leaves them)", False,
                              new=new, item_ids=tuple(ids)))
            continue
        text = recorded.get((stage, fp))
        reasons = tuple(describe(json.loads(text) if text else None, pipeline.definitions[stage]))
        below = pipeline.descendants[stage]
        touched = below | {stage}
        members = set(ids)
        downstream = 0
        flying: set[str] = set()
        for item_id, s, state, _ in rows:
            if s in touched and item_id in members:
                if state == _RUNNING:
                    flying.add(item_id)
                elif s in below and state in RESULT_STATES:
                    downstream += 1
        policy = pipeline.change_policy(stage)
        then = ("the next run reruns them (on_change='rerun')" if policy == "rerun"
                else "kept until python -m treadle rerun --stale")
        out.append(Change(
            "changed", stage, len(ids),
            f"stage {stage!r}: {len(ids)} item(s) hold results of fingerprint {short(fp)} "
            f"(now {short(new)}: {', '.join(reasons)}); {downstream} result(s) downstream "
            f"depend on them; {then}",
            policy == "keep", downstream=downstream, in_flight=len(flying), reasons=reasons,
            old=fp, new=new, item_ids=tuple(ids)))
    return out


def restore_error(pipeline: Pipeline, data: Any) -> str | None:
    """Why ``data`` cannot be restored as the pipeline's item type (None if it can)."""
    item_type = pipeline.codec.item_type
    if item_type is None or (isinstance(item_type, type) and issubclass(item_type, Mapping)):
        return None if isinstance(data, Mapping) else "not a JSON object"
    from .serialization import CONVERTER, structure_problem

    try:
        CONVERTER.structure(data, item_type)
    except Exception as exc:  # noqa: BLE001 - cattrs raises several kinds
        return structure_problem(exc, item_type)
    return None


def _shape(value: Any) -> Hashable:
    """The shape of JSON data: field names and value types, recursively (values
    themselves do not count: items of one shape restore alike)."""
    if isinstance(value, dict):
        return (tuple(value), tuple(_shape(v) if isinstance(v, (dict, list)) else type(v).__name__
                                    for v in value.values()))
    if isinstance(value, list):
        return ("[]", frozenset(_shape(v) for v in value))
    return type(value).__name__


def _restore_checks(pipeline: Pipeline,
                    items: Iterable[tuple[str, str | None, str, str]]) -> list[Change]:
    """Items a migration will upgrade, and items the item type can no longer restore."""
    migrate: dict[str | None, list[str]] = {}
    broken: dict[tuple[str | None, str], list[str]] = {}
    check = pipeline.item_type is not None
    seen: dict[Hashable, str | None] = {}  # JSON shape -> restore error: one check per shape
    for item_id, version, data, _ in items:
        if version != pipeline.version and version in pipeline.migrations:
            migrate.setdefault(version, []).append(item_id)
            continue
        if not check:
            continue
        value = json.loads(data)
        key = _shape(value)
        if key not in seen:
            seen[key] = restore_error(pipeline, value)
        error = seen[key]
        if error is not None:
            broken.setdefault((version, error), []).append(item_id)
    out: list[Change] = []
    for version, ids in migrate.items():
        target = pipeline.migrations[version][0]
        out.append(Change("migrate", None, len(ids),
                          f"{len(ids)} item(s) of version {version!r} will be migrated to "
                          f"{target!r} when a runner starts", False, old=version, new=target,
                          item_ids=tuple(ids)))
    for (version, error), ids in broken.items():
        out.append(Change(
            "unrestorable", None, len(ids),
            f"{len(ids)} item(s) recorded at version {version!r} cannot be restored as "
            f"{getattr(pipeline.item_type, '__name__', '?')} (pipeline version "
            f"{pipeline.version!r}): {error}; add @pipeline.migrate(from_version={version!r})",
            True, reasons=(error,), old=version, new=pipeline.version, item_ids=tuple(ids)))
    return out


def stale_resets(plan: Plan, stage: str | None = None) -> list[tuple[str, str, dict[str, Any]]]:
    """(item, stage, reason) of each stale result of ``plan`` (of ``stage``, if given)."""
    out = []
    for change in plan.stale(stage):
        why = f"fingerprint {short(change.old)} -> {short(change.new)}: {', '.join(change.reasons)}"
        reason = {"reason": "stale", "why": why, "old_fingerprint": change.old,
                  "new_fingerprint": change.new, "changes": list(change.reasons)}
        out += [(i, change.stage, reason) for i in change.item_ids if change.stage is not None]
    return out


__all__ = [
    "KINDS",
    "RESULT_STATES",
    "Change",
    "Plan",
    "make_plan",
    "restore_error",
    "short",
    "stale_resets",
]
