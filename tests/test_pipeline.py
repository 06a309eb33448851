"""Declaring stages and pipelines: the DAG, its order, and every definition error."""

from __future__ import annotations

import attrs
import pytest

from treadle import (
    CycleError,
    DuplicateStageError,
    InvalidStageError,
    Pipeline,
    PipelineDefinitionError,
    UnknownStageError,
    stage,
)
from treadle.stage import SPEC_ATTR

from . import pipelines_diamond


def test_stage_decorator_returns_the_function_unchanged():
    """@stage attaches a spec and hands back the same, still callable function."""

    def f(item):
        return item + 1

    g = stage(after=["x"], name="renamed")(f)
    assert g is f and f(1) == 2
    spec = getattr(f, SPEC_ATTR)
    assert spec.name == "renamed" and spec.after == ("x",) and spec.takes_ctx is False


def test_double_decoration_is_a_type_error():
    """Decorating a function twice raises TypeError."""
    with pytest.raises(TypeError, match="already decorated"):
        @stage()
        @stage()
        def f(item): ...


@pytest.mark.parametrize("option, value, fragment", [
    ("retry", 0, "retry=0"), ("retry", True, "retry=True"), ("timeout", -1, "timeout=-1"),
    ("concurrency", 0, "concurrency=0"), ("on_exhausted", "explode", "on_exhausted='explode'"),
    ("review", "sometimes", "review='sometimes'"), ("when", 3, "when=3"), ("gate", "x", "gate='x'"),
])
def test_invalid_stage_options_are_rejected_at_decoration(option, value, fragment):
    """Each invalid option raises InvalidStageError naming the stage and the option."""

    def f(item): ...

    with pytest.raises(InvalidStageError, match=f"Stage 'f': {fragment}"):
        stage(**{option: value})(f)
    assert not hasattr(f, SPEC_ATTR)


def test_valid_options_are_kept_on_the_spec():
    """Every option of the design is accepted and stored."""

    @stage(retry=3, timeout=1.5, concurrency=2, on_exhausted="escalate",
           review="on_uncertain", when=lambda item, ctx: True, gate=lambda i, o, c: None,
           rollback=lambda item: None)
    def f(item, ctx): ...

    spec = getattr(f, SPEC_ATTR)
    assert (spec.retry, spec.timeout, spec.concurrency, spec.on_exhausted, spec.review) == (
        3, 1.5, 2, "escalate", "on_uncertain")


def test_order_is_topological_and_stable():
    """Stages are ordered by dependencies, ties in the order given."""
    p = pipelines_diamond.pipeline
    assert p.order == ("fetch", "left", "right", "join", "publish")
    assert p.deps["join"] == ("left", "right")
    assert p.dependents["fetch"] == ("left", "right")
    assert p.ancestors["publish"] == {"fetch", "left", "right", "join"}


def test_dependencies_by_function_or_name():
    """after= accepts stage functions and names alike."""

    @stage(name="first")
    def a(item): ...

    @stage(after=[a, "first"])
    def b(item): ...

    assert Pipeline("p", [a, b]).deps["b"] == ("first", "first")


def test_cycle_error_shows_the_cycle_path():
    """A cycle raises CycleError whose message walks the cycle."""

    @stage(after=["c"])
    def a(item): ...

    @stage(after=[a])
    def b(item): ...

    @stage(after=[b])
    def c(item): ...

    with pytest.raises(CycleError) as info:
        Pipeline("p", [a, b, c])
    msg = str(info.value)
    assert "cycle" in msg
    path = info.value.cycle
    assert path[0] == path[-1] and set(path) == {"a", "b", "c"}
    # each stage in the path runs before the next: the next depends on it
    deps = {"a": ("c",), "b": ("a",), "c": ("b",)}
    assert all(path[i] in deps[path[i + 1]] for i in range(len(path) - 1))
    assert " -> ".join(path) in msg


def test_unknown_dependency_suggests_the_closest_name():
    """An unknown dependency raises UnknownStageError with a did-you-mean."""

    @stage()
    def identify(item): ...

    @stage(after=["identfy"])
    def export(item): ...

    with pytest.raises(UnknownStageError, match="Did you mean 'identify'") as info:
        Pipeline("p", [identify, export])
    assert info.value.stage == "identfy"
    assert "'export' depends on 'identfy'" in str(info.value)
    assert isinstance(info.value, KeyError) and isinstance(info.value, PipelineDefinitionError)


def test_duplicate_stage_name():
    """Two stages with one name raise DuplicateStageError naming it."""

    @stage(name="x")
    def a(item): ...

    @stage(name="x")
    def b(item): ...

    with pytest.raises(DuplicateStageError, match="two stages are named 'x'"):
        Pipeline("p", [a, b])


def test_non_callable_stage():
    """A non-callable in the stage list raises InvalidStageError."""

    @stage()
    def a(item): ...

    with pytest.raises(InvalidStageError, match="is not callable"):
        Pipeline("p", [a, 42])


def test_impossible_signature():
    """A function that cannot take (item) or (item, ctx) is refused with its signature."""
    def three(a, b, c): ...

    def none(): ...

    for fn in (three, none):
        with pytest.raises(InvalidStageError, match="cannot take \\(item\\) or \\(item, ctx\\)"):
            stage()(fn)
        with pytest.raises(InvalidStageError):
            Pipeline("p", [fn])


def test_plain_callables_are_stages_without_options():
    """An undecorated function is a root stage named after itself."""
    def solo(item):
        return 1

    assert Pipeline("p", [solo]).order == ("solo",)


def test_from_module_collects_stages_in_definition_order():
    """Pipeline.from_module gathers the module's @stage functions."""
    p = Pipeline.from_module(pipelines_diamond.__name__, name="diamond")
    assert p.name == "diamond" and p.order == pipelines_diamond.pipeline.order


def test_from_module_without_stages():
    """A module without stages is a definition error that says so."""
    with pytest.raises(PipelineDefinitionError, match="defines no @stage functions"):
        Pipeline.from_module("json")


def test_item_type_must_be_attrs_or_dataclass():
    """item_type must be something cattrs can restore."""
    from treadle import InvalidItemError

    with pytest.raises(InvalidItemError, match="item_type"):
        Pipeline("p", [pipelines_diamond.fetch], item_type=int)

    @attrs.frozen
    class T:
        id: str

    assert Pipeline("p", [pipelines_diamond.fetch], item_type=T).item_type is T


def test_on_failure_and_source_validated():
    """Bad on_failure or source values are definition errors."""
    with pytest.raises(PipelineDefinitionError, match="on_failure"):
        Pipeline("p", [pipelines_diamond.fetch], on_failure="explode")
    with pytest.raises(PipelineDefinitionError, match="source"):
        Pipeline("p", [pipelines_diamond.fetch], source=[1, 2])


def test_public_api_is_exported_and_sorted():
    """treadle.__all__ is sorted and every name in it is importable."""
    import treadle

    assert treadle.__all__ == sorted(treadle.__all__)
    assert all(hasattr(treadle, name) for name in treadle.__all__)
    assert treadle.__version__
