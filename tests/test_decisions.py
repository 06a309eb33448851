"""Richer decisions: choices route the item, forms are validated, assignees are enforced."""

from __future__ import annotations

import pytest

from treadle import (
    InvalidDecisionError,
    InvalidTransitionError,
    Pipeline,
    Review,
    Runner,
    StageState,
    chose,
    stage,
)

from .decision_forms import Label

pytestmark = pytest.mark.timeout(60)
seen: dict[str, object] = {}


@stage()
def moderate(item):
    return Review({"text": item["text"]}, message="Where does it go?",
                  options=["publish", "archive", "legal"])


@stage(after=[moderate], when=chose("moderate", "publish"))
def publish(item, ctx):
    return {"published": ctx.outputs["moderate"]["data"]["text"]}


@stage(after=[moderate], when=chose("moderate", "archive"))
def archive(item):
    return "archived"


@stage(after=[moderate], when=chose("moderate", "legal"))
def legal(item):
    return "sent to legal"


choices = Pipeline("choices", [moderate, publish, archive, legal])


@stage(output_type=Label)
def tag(item):
    return Review({"isrc": "", "label": item["label"]}, message="Fill in the ISRC", form=Label)


@stage(after=[tag])
def release(item, ctx):
    seen[item["id"]] = ctx.outputs["tag"]
    return {"isrc": ctx.outputs["tag"].isrc}


forms = Pipeline("forms", [tag, release])


@stage(reviewers=["ana", "bo"])
def legal_check(item):
    return Review(item, message="Legal only")


@stage()
def personal(item):
    return Review(item, assignees=["cy"])


assigned = Pipeline("assigned", [legal_check, personal])


def test_a_choice_routes_the_item_down_the_chosen_branch_only(store):
    """The chosen branch runs; the others are skipped naming the choice; history has it."""
    runner = Runner(choices, store, workers=2)
    runner.submit({"id": "p1", "text": "hello"})
    runner.run()
    review = runner.status("p1").stages["moderate"].review
    assert review is not None and review.options == ["publish", "archive", "legal"]
    runner.approve("p1", "moderate", choice="publish", reviewer="ana")
    runner.run()
    st = runner.status("p1").stages
    assert st["publish"].state == StageState.COMPLETED
    assert st["publish"].output == {"published": "hello"}
    assert st["moderate"].output == {"choice": "publish", "data": {"text": "hello"}}
    assert st["moderate"].review is not None and st["moderate"].review.choice == "publish"
    assert st["archive"].state == st["legal"].state == StageState.SKIPPED
    history = runner.history("p1")
    skip = next(h for h in history if h.stage == "archive" and h.state == "skipped")
    assert skip.details["reason"] == "stage 'moderate' chose 'publish', not 'archive'"
    decided = next(h for h in history if h.stage == "moderate" and h.state == "completed")
    assert decided.details["choice"] == "publish" and decided.details["reviewer"] == "ana"
    assert decided.actor == "ana"


def test_a_choice_not_offered_is_refused_naming_the_options(store):
    """An unknown or missing choice changes nothing and lists the options."""
    runner = Runner(choices, store)
    runner.submit({"id": "p2", "text": "x"})
    runner.run()
    before = runner.history("p2")
    with pytest.raises(InvalidDecisionError, match="'publish', 'archive', 'legal'"):
        runner.approve("p2", "moderate", choice="delete")
    with pytest.raises(InvalidDecisionError, match="choose one of"):
        runner.approve("p2", "moderate")
    assert runner.history("p2") == before
    assert runner.status("p2").stages["moderate"].state == StageState.AWAITING_REVIEW


def test_multiple_choices_and_a_default():
    """multiple=True takes a list; the default applies when no choice is given."""
    @stage()
    def pick(item):
        return Review(None, options=["a", "b", "c"], multiple=True, default=["b"])

    @stage(after=[pick], when=chose("pick", "a"))
    def on_a(item):
        return 1

    @stage(after=[pick], when=chose("pick", "b"))
    def on_b(item):
        return 2

    from treadle import MemoryStore
    runner = Runner(Pipeline("multi", [pick, on_a, on_b]), MemoryStore())
    runner.submit({"id": 1}, {"id": 2})
    runner.run()
    runner.approve(1, "pick", choice=["a", "b"])
    runner.approve(2, "pick")
    runner.run()
    one, two = runner.status(1).stages, runner.status(2).stages
    assert (one["on_a"].state, one["on_b"].state) == (StageState.COMPLETED, StageState.COMPLETED)
    assert (two["on_a"].state, two["on_b"].state) == (StageState.SKIPPED, StageState.COMPLETED)
    assert two["pick"].output == {"choice": ["b"], "data": None}


def test_bad_options_fail_the_stage_at_review_time():
    """Review() checks its options and default when it is built."""
    with pytest.raises(ValueError, match="default"):
        Review(None, options=["a"], default="z")
    with pytest.raises(TypeError, match="options"):
        Review(None, options="ab")
    with pytest.raises(TypeError, match="form"):
        Review(None, form=42)


def test_a_form_answer_with_a_wrong_type_is_refused_naming_the_field(store):
    """Wrong type, unknown or missing field: refused with its name, the store unchanged."""
    runner = Runner(forms, store)
    runner.submit({"id": "f1", "label": "Acme"})
    runner.run()
    review = runner.status("f1").stages["tag"].review
    assert review is not None and [f["name"] for f in review.form or []] == ["isrc", "label", "year"]
    before = runner.history("f1")
    with pytest.raises(InvalidDecisionError, match="'year' must be a int") as err:
        runner.approve("f1", "tag", data={"isrc": "US1", "label": "Acme", "year": "1999"})
    assert err.value.field == "year"
    with pytest.raises(InvalidDecisionError, match="no field 'isbn'") as err:
        runner.approve("f1", "tag", data={"isrc": "US1", "label": "Acme", "isbn": "x"})
    assert err.value.field == "isbn"
    with pytest.raises(InvalidDecisionError, match="'isrc' is required"):
        runner.approve("f1", "tag", data={"label": "Acme"})
    assert runner.history("f1") == before
    assert runner.status("f1").stages["tag"].state == StageState.AWAITING_REVIEW


def test_a_right_form_answer_is_the_output_restored_as_the_class_downstream(store):
    """The validated answer is stored (defaults applied) and downstream gets a Label."""
    runner = Runner(forms, store)
    runner.submit({"id": "f2", "label": "Acme"})
    runner.run()
    runner.approve("f2", "tag", data={"isrc": "US-ABC", "label": "Acme"}, reviewer="ana")
    runner.run()
    st = runner.status("f2").stages
    assert st["tag"].output == {"isrc": "US-ABC", "label": "Acme", "year": 2000}
    assert st["release"].output == {"isrc": "US-ABC"}
    assert seen["f2"] == Label("US-ABC", "Acme", 2000)


def test_a_field_spec_form():
    """A {name: type} spec works like a class; (type, default) makes a field optional."""
    from treadle import MemoryStore

    @stage()
    def ask(item):
        return Review({"n": 1}, form={"n": int, "why": (str, "none given")})

    runner = Runner(Pipeline("spec", [ask]), MemoryStore())
    runner.submit({"id": 1})
    runner.run()
    with pytest.raises(InvalidDecisionError, match="'n' must be a int"):
        runner.approve(1, "ask", data={"n": True})
    runner.approve(1, "ask")  # the review data pre-fills the form
    assert runner.status(1).stages["ask"].output == {"n": 1, "why": "none given"}


def test_a_decision_by_a_non_assigned_reviewer_is_refused(store):
    """Stage reviewers and Review assignees: others (and no name) are refused; they succeed."""
    runner = Runner(assigned, store)
    runner.submit({"id": "a1"})
    runner.run()
    before = runner.history("a1")
    with pytest.raises(InvalidTransitionError, match="may only be decided by ana, bo"):
        runner.approve("a1", "legal_check", reviewer="zed")
    with pytest.raises(InvalidTransitionError, match="no reviewer name"):
        runner.reject("a1", "legal_check", reason="no")
    with pytest.raises(InvalidTransitionError, match="may only be decided by cy"):
        runner.request_changes("a1", "personal", feedback="redo", reviewer="ana")
    assert runner.history("a1") == before
    runner.approve("a1", "legal_check", reviewer="bo")
    runner.approve("a1", "personal", reviewer="cy")
    st = runner.status("a1").stages
    assert st["legal_check"].review is not None and st["legal_check"].review.assignees == ["ana", "bo"]
    assert st["legal_check"].state == st["personal"].state == StageState.COMPLETED
