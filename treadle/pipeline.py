"""``Pipeline``: the registry of stages, validated into a DAG at construction."""

from __future__ import annotations

import graphlib
import importlib
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal

from .errors import (
    CycleError,
    DuplicateStageError,
    InvalidStageError,
    PipelineCycleError,
    PipelineDefinitionError,
    UnknownStageError,
    did_you_mean,
)
from .fingerprint import fingerprint, parts
from .limits import NAMED, NamedLimit, StageLimit, check_uses, named_limits, stage_limits
from .serialization import ItemCodec
from .stage import ON_CHANGE, SPEC_ATTR, StageSpec, spec_of

#: An item migration: the stored item (plain JSON data) in, the upgraded data out.
Migration = Callable[[Any], Any]


class Pipeline:
    """A named DAG of stages, and how to store its items.

    ``stages`` are functions decorated with :func:`~treadle.stage` (plain
    callables are accepted as stages without options). Construction validates
    the graph and raises a :class:`~treadle.PipelineDefinitionError` subclass
    naming the culprit. ``item_type`` (an attrs class or dataclass) tells
    treadle how to restore stored items; without it items are dicts.
    ``source`` is an optional callable yielding items: each run submits the
    ones whose id is not yet known. ``renames`` maps old stage names to
    current ones: the stored records of a renamed stage carry over.

    ``version`` (a label such as ``"2026.12"``) is recorded on each item at
    submission and on each stage result. ``on_change`` (``"keep"``, the
    default, or ``"rerun"``) says what a runner does with results made by an
    older definition of their stage; ``@stage(on_change=...)`` overrides it.
    ``Runner.plan()`` reports what a changed definition does to stored items
    (docs/changes.md).

    ``limits`` declares named limits every runner on the store shares: an int
    is how many units may be in use at once, a string a rate (``"60/min"``).
    Stages take them with ``@stage(limits={"name": units})``; fan-out subtasks
    take a named rate with ``FanOut(..., rate=["name"])`` (docs/flow-control.md).
    """

    def __init__(
        self,
        name: str,
        stages: Iterable[Callable[..., Any]],
        *,
        item_type: type | None = None,
        source: Callable[[], Iterable[Any]] | None = None,
        on_failure: Literal["stop", "rollback"] = "stop",
        renames: Mapping[str, str] | None = None,
        version: str | None = None,
        on_change: Literal["keep", "rerun"] = "keep",
        limits: Mapping[str, int | str] | None = None,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise PipelineDefinitionError(f"Pipeline name must be a non-empty string, got {name!r}.")
        if on_failure not in ("stop", "rollback"):
            raise PipelineDefinitionError(
                f"Pipeline {name!r}: on_failure={on_failure!r} is invalid; use 'stop' or 'rollback'."
            )
        if source is not None and not callable(source):
            raise PipelineDefinitionError(
                f"Pipeline {name!r}: source={source!r} is not callable; pass a function yielding items."
            )
        if version is not None and (not isinstance(version, str) or not version):
            raise PipelineDefinitionError(
                f"Pipeline {name!r}: version={version!r} is invalid; use a non-empty string label.")
        if on_change not in ON_CHANGE:
            raise PipelineDefinitionError(
                f"Pipeline {name!r}: on_change={on_change!r} is invalid; use 'keep' or 'rerun'.")
        self.name = name
        self.version: str | None = version
        self.on_change: str = on_change
        #: from_version -> (to_version, migration), registered with :meth:`migrate`.
        self.migrations: dict[str | None, tuple[str, Migration]] = {}
        self.source = source
        self.on_failure: str = on_failure  # a plain str: what the store's Shape protocol reads
        self.codec = ItemCodec(item_type)
        specs = self._collect(stages)
        self._validate_deps(specs)
        order = self._toposort(specs)
        self.stages: Mapping[str, StageSpec] = MappingProxyType({n: specs[n] for n in order})
        self.order: tuple[str, ...] = tuple(order)
        self.deps: Mapping[str, tuple[str, ...]] = MappingProxyType(
            {n: specs[n].after for n in order}
        )
        dependents: dict[str, list[str]] = {n: [] for n in order}
        for n in order:
            for d in specs[n].after:
                dependents[d].append(n)
        self.dependents: Mapping[str, tuple[str, ...]] = MappingProxyType(
            {n: tuple(v) for n, v in dependents.items()}
        )
        self.ancestors: Mapping[str, frozenset[str]] = MappingProxyType(self._closure(self.deps))
        self.descendants: Mapping[str, frozenset[str]] = MappingProxyType(
            self._closure(self.dependents)
        )
        self.renames: Mapping[str, str] = MappingProxyType(self._check_renames(renames or {}))
        #: Stage name -> ``output_type``, for the stages that declare one.
        self.output_types: Mapping[str, type] = MappingProxyType(
            {n: tp for n in order if (tp := specs[n].output_type) is not None})
        #: Stages with a ``rollback`` (compensation) callable.
        self.rollback_stages: frozenset[str] = frozenset(
            n for n in order if specs[n].rollback is not None)
        #: Stage name -> the parts of its definition that change results (docs/changes.md).
        self.definitions: Mapping[str, Mapping[str, Any]] = MappingProxyType(
            {n: parts(specs[n]) for n in order})
        #: Stage name -> its fingerprint, computed once here.
        self.fingerprints: Mapping[str, str] = MappingProxyType(
            {n: fingerprint(d) for n, d in self.definitions.items()})
        #: Child pipelines by name (``@stage(spawns=...)``), and the pipelines that spawn
        #: into this one (filled in as they are built; docs/nested.md).
        self.children: Mapping[str, Pipeline] = MappingProxyType(self._spawn_children(specs))
        self.parents: dict[str, Pipeline] = {}
        for child in self.children.values():
            child.parents[name] = self
        #: Stage name -> (fingerprint, pipeline version): what each stored result records.
        self.stamps: Mapping[str, tuple[str, str | None]] = MappingProxyType(
            {n: (fp, version) for n, fp in self.fingerprints.items()})
        #: Named limits stages share, by name (``limits=``; docs/flow-control.md).
        self.named_limits: Mapping[str, NamedLimit] = MappingProxyType(
            named_limits(name, limits))
        for n in order:
            check_uses(name, n, specs[n].limits, self.named_limits)
            if n.startswith(NAMED) and n[len(NAMED):] in self.named_limits:
                raise InvalidStageError(
                    f"Stage {n!r}: a stage name may not be {NAMED!r} followed by the name of "
                    "one of the Pipeline's limits (the store keeps both under that key); "
                    "rename the stage or the limit.", stage=n)
        #: Stage name -> the limits every runner shares (docs/flow-control.md).
        self.limits: Mapping[str, StageLimit] = MappingProxyType(stage_limits(specs, order))
        #: Stage name -> default priority, for the stages that declare one.
        self.priorities: Mapping[str, int] = MappingProxyType(
            {n: p for n in order if (p := specs[n].priority) is not None})

    def change_policy(self, stage: str) -> str:
        """``"keep"`` or ``"rerun"``: the stage's ``on_change``, else the pipeline's."""
        return self.stages[stage].on_change or self.on_change

    def migrate(self, *, from_version: str | None,
                to_version: str | None = None) -> Callable[[Migration], Migration]:
        """Register an item migration: ``fn(data) -> data`` upgrades the stored JSON
        data of items recorded at ``from_version`` (None: items stored without a
        version) to ``to_version`` (default: this pipeline's version).

        A runner applies migrations when it starts, in batches of one transaction
        each, once per item (each item's history records it). Returns ``fn``.
        """
        target = to_version if to_version is not None else self.version
        if target is None:
            raise PipelineDefinitionError(
                f"Pipeline {self.name!r}: a migration needs a version to migrate to; pass "
                "Pipeline(..., version=...) or migrate(to_version=...).")
        if target == from_version:
            raise PipelineDefinitionError(
                f"Pipeline {self.name!r}: migrate(from_version={from_version!r}) would migrate "
                "items to the version they already have.")

        def register(fn: Migration) -> Migration:
            if not callable(fn):
                raise PipelineDefinitionError(
                    f"Pipeline {self.name!r}: migration {fn!r} is not callable.")
            if from_version in self.migrations:
                raise PipelineDefinitionError(
                    f"Pipeline {self.name!r}: two migrations from version {from_version!r}.")
            self.migrations[from_version] = (target, fn)
            return fn

        return register

    @property
    def item_type(self) -> type | None:
        """The attrs class or dataclass items are restored as (None: dicts)."""
        return self.codec.item_type

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}, stages={list(self.order)!r})"

    @classmethod
    def from_module(
        cls, module: str | Any, *, name: str | None = None, **options: Any
    ) -> Pipeline:
        """Build a pipeline from every ``@stage`` function defined in ``module``.

        ``module`` is a module object or its dotted name (``__name__`` from
        inside the module). Stages are taken in definition order; the name
        defaults to the module's last component.
        """
        mod = sys.modules.get(module) if isinstance(module, str) else module
        if mod is None:
            mod = importlib.import_module(module)
        found = [
            obj for obj in vars(mod).values()
            if isinstance(getattr(obj, SPEC_ATTR, None), StageSpec)
            and getattr(obj, "__module__", None) == mod.__name__
        ]
        if not found:
            raise PipelineDefinitionError(
                f"Module {mod.__name__!r} defines no @stage functions; decorate its stages with @stage()."
            )
        return cls(name or mod.__name__.rsplit(".", 1)[-1], found, **options)

    # -- validation --------------------------------------------------------
    def _collect(self, stages: Iterable[Callable[..., Any]]) -> dict[str, StageSpec]:
        given: object = stages  # checked at run time: a caller may pass anything
        if isinstance(given, (str, bytes)) or not isinstance(given, Iterable):
            raise PipelineDefinitionError(
                f"Pipeline {self.name!r}: stages must be a list of stage functions, got {stages!r}."
            )
        specs: dict[str, StageSpec] = {}
        for obj in stages:
            if not callable(obj):
                raise InvalidStageError(
                    f"Pipeline {self.name!r}: stage {obj!r} is not callable; "
                    "pass functions decorated with @stage().",
                )
            spec = spec_of(obj)
            if spec.name in specs:
                raise DuplicateStageError(
                    f"Pipeline {self.name!r}: two stages are named {spec.name!r}; "
                    "rename one with @stage(name=...).",
                    stage=spec.name,
                )
            specs[spec.name] = spec
        if not specs:
            raise PipelineDefinitionError(f"Pipeline {self.name!r} has no stages.")
        return specs

    def _validate_deps(self, specs: Mapping[str, StageSpec]) -> None:
        for spec in specs.values():
            for dep in spec.after:
                if dep not in specs:
                    raise UnknownStageError(
                        f"Stage {spec.name!r} depends on {dep!r}, which is not a stage of "
                        f"pipeline {self.name!r}.{did_you_mean(dep, specs)} "
                        "Add it to the pipeline or fix the name in after=[...].",
                        stage=dep,
                    )

    @staticmethod
    def _toposort(specs: Mapping[str, StageSpec]) -> list[str]:
        sorter = graphlib.TopologicalSorter({n: s.after for n, s in specs.items()})
        try:
            sorter.prepare()
        except graphlib.CycleError as exc:
            cycle = list(exc.args[1])
            # graphlib lists each node before the one that depends on it: run order.
            raise CycleError(cycle) from None
        order: list[str] = []
        rank = {n: i for i, n in enumerate(specs)}
        while sorter.is_active():
            ready = sorted(sorter.get_ready(), key=rank.__getitem__)
            order.extend(ready)
            sorter.done(*ready)
        return order

    @staticmethod
    def _closure(edges: Mapping[str, Sequence[str]]) -> dict[str, frozenset[str]]:
        out: dict[str, frozenset[str]] = {}

        def visit(n: str) -> frozenset[str]:
            if n not in out:
                acc: set[str] = set()
                for m in edges[n]:
                    acc.add(m)
                    acc |= visit(m)
                out[n] = frozenset(acc)
            return out[n]

        for n in edges:
            visit(n)
        return out

    def _spawn_children(self, specs: Mapping[str, StageSpec]) -> dict[str, Pipeline]:
        """The pipelines the stages spawn into; a cycle of pipelines is an error."""
        children: dict[str, Pipeline] = {}
        for spec in specs.values():
            for child in spec.spawns:
                if not isinstance(child, Pipeline):
                    raise PipelineDefinitionError(
                        f"Stage {spec.name!r} of pipeline {self.name!r}: spawns={child!r} is not "
                        "a Pipeline.", stage=spec.name)
                known = children.setdefault(child.name, child)
                if known is not child:
                    raise PipelineDefinitionError(
                        f"Pipeline {self.name!r}: two different pipelines named {child.name!r} are "
                        "spawned into; give them distinct names.", stage=spec.name)
                path = self._path_to(child, self.name, [self.name, child.name])
                if path is not None:
                    raise PipelineCycleError(path, stage=spec.name)
        return children

    @staticmethod
    def _path_to(start: Pipeline, target: str, path: list[str]) -> list[str] | None:
        """The names from ``start`` down its children to a pipeline named ``target``."""
        if start.name == target:
            return path
        for child in start.children.values():
            found = Pipeline._path_to(child, target, [*path, child.name])
            if found is not None:
                return found
        return None

    def tree(self) -> list[Pipeline]:
        """This pipeline and every pipeline it spawns into, at any depth, parents first."""
        out: dict[str, Pipeline] = {}
        todo = [self]
        while todo:
            p = todo.pop(0)
            if p.name not in out:
                out[p.name] = p
                todo.extend(p.children.values())
        return list(out.values())

    def _check_renames(self, renames: Mapping[str, str]) -> dict[str, str]:
        for old, new in renames.items():
            if new not in self.stages:
                raise UnknownStageError(
                    f"Pipeline {self.name!r}: renames maps {old!r} to {new!r}, which is not one of "
                    f"its stages.{did_you_mean(new, self.stages)}", stage=new)
            if old in self.stages:
                raise PipelineDefinitionError(
                    f"Pipeline {self.name!r}: renames maps {old!r} to {new!r}, but {old!r} is still "
                    "a stage; remove the rename or the stage.", stage=old)
        return dict(renames)

    def check_stage(self, stage: str) -> str:
        """Return ``stage`` if the pipeline has it, else raise UnknownStageError."""
        if stage not in self.stages:
            raise UnknownStageError(
                f"Pipeline {self.name!r} has no stage {stage!r}.{did_you_mean(stage, self.stages)} "
                f"Its stages are: {', '.join(self.order)}.",
                stage=stage,
            )
        return stage
