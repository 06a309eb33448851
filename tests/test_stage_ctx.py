"""Which stage functions receive ``ctx``: a required, ``ctx``-named or context-annotated second parameter."""

from __future__ import annotations

from typing import Optional

import pytest

import treadle
from treadle import InvalidStageError, Pipeline, Runner, StageContext, open_store, stage
from treadle.stage import arity


def run_one(fn, **options):
    """Run ``fn`` as the only stage of a pipeline on one item; return its output."""
    spec_fn = stage(**options)(fn)
    runner = Runner(Pipeline("p", [spec_fn]), open_store("memory://"))
    runner.submit({"id": "a"})
    runner.run()
    status = runner.status("a").stages[fn.__name__]
    assert status.state == "completed", status.error
    return status.output


def test_a_required_second_parameter_receives_ctx():
    """def f(item, c): c is the context, whatever its name."""
    def f(item, c):
        return [type(c).__name__, c.item_id]
    assert run_one(f) == ["StageContext", "a"]


def test_a_second_parameter_named_ctx_receives_ctx_even_with_a_default():
    """def f(item, ctx=None): ctx is the context."""
    def f(item, ctx=None):
        return ctx.stage
    assert run_one(f) == "f"


def test_a_second_parameter_annotated_with_the_context_type_receives_ctx():
    """def f(item, c: StageContext | None = None): c is the context (class or string annotation)."""
    def f(item, c: StageContext | None = None):  # a string annotation (future import)
        return c.attempt if c is not None else None

    def g(item, c: treadle.StageContext = None):  # type: ignore[assignment]
        return c.item_id
    g.__annotations__["c"] = StageContext  # as without the future import: the class itself

    def h(item, c: Optional[StageContext] = None):  # noqa: UP045 - the typing spelling
        return c.stage if c is not None else None
    h.__annotations__["c"] = Optional[StageContext]  # noqa: UP045
    assert run_one(f) == 1 and run_one(g) == "a" and run_one(h) == "h"


def test_a_defaulted_second_parameter_keeps_its_default():
    """The closure idiom def f(item, _n=n) in a loop: _n keeps its value, ctx is not passed."""
    stages = []
    for n in (1, 2):
        @stage(name=f"s{n}")
        def f(item, _n=n):
            return _n
        stages.append(f)
    runner = Runner(Pipeline("p", stages), open_store("memory://"))
    runner.submit({"id": "a"})
    runner.run()
    stages_status = runner.status("a").stages
    assert [stages_status[s].output for s in ("s1", "s2")] == [1, 2]


def test_item_only_and_var_positional_functions_get_the_item_only():
    """def f(item) and def f(*args) are called with the item alone."""
    def f(item):
        return item["id"]

    def g(*args):
        return len(args)
    assert run_one(f) == "a" and run_one(g) == 1


def test_when_and_rollback_follow_the_same_rule():
    """when= and rollback= callables get ctx by the same rule as stage functions."""
    assert arity(lambda item, ctx: True, "when", "s") is True
    assert arity(lambda item, _limit=3: True, "when", "s") is False
    assert arity(lambda item, ctx=None: True, "rollback", "s") is True
    seen = []

    def keep(item, _seen=seen):
        _seen.append(item["id"])
        return True
    assert run_one(ran, when=keep) == "ran" and seen == ["a"]


def ran(item):
    return "ran"


@pytest.mark.parametrize("fn", [lambda: None, lambda item, ctx, extra: None,
                                lambda item, *, ctx: None])
def test_a_function_that_cannot_take_item_or_item_ctx_is_rejected(fn):
    """Neither (item) nor (item, ctx): InvalidStageError at decoration."""
    with pytest.raises(InvalidStageError, match=r"cannot take \(item\) or \(item, ctx\)"):
        stage(name="bad")(fn)
