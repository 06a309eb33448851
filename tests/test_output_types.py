"""Outputs declared with a type come back downstream as instances, also after a restart."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime

import attrs
import pytest

from treadle import (
    InvalidStageError,
    Pipeline,
    Review,
    Runner,
    SerializationError,
    open_store,
    stage,
)


@attrs.frozen
class Track:
    title: str
    tags: tuple[str, ...] = ()
    added: datetime.date | None = None


@dataclasses.dataclass
class Size:
    bytes_: int


@stage(output_type=Track)
def identify(item):
    return Track(item["title"], ("rock",), datetime.date(2026, 1, 2))


@stage()
def measure(item) -> Size:  # the return annotation declares the type
    return Size(123)


@stage(after=[identify, measure])
def check(item, ctx):
    return Review({"title": ctx.outputs["identify"].title}, message="title ok?")


@stage(after=[check])
def export(item, ctx):
    track, size = ctx.outputs["identify"], ctx.outputs["measure"]
    return {"track": type(track).__name__, "tags": list(track.tags), "added": track.added.isoformat(),
            "size": type(size).__name__, "review": type(ctx.outputs["check"]).__name__}


def make_pipeline() -> Pipeline:
    return Pipeline("typed", [identify, measure, check, export])


def test_a_declared_output_type_comes_back_as_an_instance_after_a_restart(tmp_path):
    """identify (output_type=Track) and measure (-> Size) reach export as instances, across a restart."""
    url = f"sqlite:///{tmp_path / 'typed.db'}"
    first = Runner(make_pipeline(), open_store(url))
    first.submit({"id": "t1", "title": "Song"})
    first.run()
    assert first.status("t1").stages["check"].review.data == {"title": "Song"}
    first.store.close()

    # A new process would do exactly this: a new pipeline object, a new store connection.
    second = Runner(make_pipeline(), open_store(url))
    second.approve("t1", "check")
    second.run()
    assert second.status("t1").stages["export"].output == {
        "track": "Track", "tags": ["rock"], "added": "2026-01-02", "size": "Size", "review": "dict"}
    # What status() shows stays the stored JSON.
    assert second.status("t1").stages["identify"].output == {
        "title": "Song", "tags": ["rock"], "added": "2026-01-02"}


def test_the_pipeline_lists_its_output_types():
    """Pipeline.output_types maps each typed stage to its type."""
    assert dict(make_pipeline().output_types) == {"identify": Track, "measure": Size}


def test_an_outcome_annotation_is_not_an_output_type():
    """def f(item) -> Review: the approved data stays as it was stored (Review is not the output)."""
    @stage()
    def ask(item) -> Review:
        return Review({"x": 1})

    @stage()
    def plain(item) -> dict:
        return {}
    assert ask.__treadle_stage__.output_type is None and plain.__treadle_stage__.output_type is None


def test_an_output_type_must_be_an_attrs_class_or_a_dataclass():
    """@stage(output_type=dict) is refused at decoration."""
    with pytest.raises(InvalidStageError, match="output_type=<class 'dict'> is invalid"):
        stage(output_type=dict)(lambda item: None)


def test_an_output_that_does_not_fit_its_type_fails_the_stage_that_returned_it():
    """A stage with output_type=Track returning something that is not one fails, not retried."""
    @stage(output_type=Track, retry=3)
    def wrong(item):
        return {"name": "no title"}

    @stage(output_type=Track)
    def fits(item):
        return {"title": "a dict that builds a Track"}

    runner = Runner(Pipeline("typed", [wrong, fits]), open_store("memory://"))
    runner.submit({"id": "a"})
    runner.run()
    status = runner.status("a").stages
    assert status["wrong"].state == "failed" and status["wrong"].attempts == 1
    assert status["wrong"].error.startswith(
        "SerializationError: The output of stage 'wrong' {'name': 'no title'} cannot be read as a Track")
    assert status["fits"].state == "completed"


def test_a_review_edit_that_does_not_fit_the_type_fails_the_stage_reading_it():
    """An approved edit missing a field of the output_type fails the downstream stage, naming both."""
    @stage(output_type=Track)
    def ask(item):
        return Review(Track("Song"), message="title?")

    @stage(after=[ask])
    def reader(item, ctx):
        return ctx.outputs["ask"].title

    runner = Runner(Pipeline("typed", [ask, reader]), open_store("memory://"))
    runner.submit({"id": "a"})
    runner.run()
    runner.approve("a", "ask", data={"name": "no title"})
    runner.run()
    status = runner.status("a").stages
    assert status["ask"].state == "completed" and status["reader"].state == "failed"
    assert "SerializationError: The output of stage 'ask' {'name': 'no title'} cannot be read as a Track" in (
        status["reader"].error)


def test_the_output_type_of_an_async_stage_is_checked_when_it_is_awaited():
    """spec.call of an async def stage returns an awaitable whose result is checked."""
    @stage(output_type=Track)
    async def good(item):
        return Track("t")

    @stage(output_type=Track)
    async def bad(item):
        return {"name": "no title"}

    ctx = None
    assert asyncio.run(good.__treadle_stage__.call({"id": "a"}, ctx)) == Track("t")
    with pytest.raises(SerializationError, match="output of stage 'bad'"):
        asyncio.run(bad.__treadle_stage__.call({"id": "a"}, ctx))
