"""Items and outputs to and from JSON through the private cattrs converter."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json

import attrs
import cattrs
import pytest

from treadle import InvalidItemError, Pipeline, Review, Runner, SerializationError, stage
from treadle.serialization import CONVERTER, ItemCodec, normalize_id, to_json


@attrs.frozen
class Track:
    id: str
    path: str
    tags: tuple[str, ...] = ()
    added: datetime.datetime | None = None


@dataclasses.dataclass
class Doc:
    id: int
    pages: list[int]


class Colour(enum.Enum):
    RED = "red"


def test_attrs_item_round_trips():
    """An attrs item with nested types comes back equal."""
    codec = ItemCodec(Track)
    item = Track("t1", "a.flac", ("x", "y"), datetime.datetime(2026, 1, 2, 3, 4, 5))
    assert codec.load(codec.dump(item)) == item
    assert codec.item_id(item) == "t1"


def test_dataclass_item_round_trips_and_int_ids_are_text():
    """A dataclass item round-trips; its int id is stored as text."""
    codec = ItemCodec(Doc)
    assert codec.load(codec.dump(Doc(7, [1, 2]))) == Doc(7, [1, 2])
    assert codec.item_id(Doc(7, [])) == "7" == normalize_id(7)


def test_dict_items_stay_dicts():
    """Without item_type, items are dicts with an id."""
    codec = ItemCodec(None)
    assert codec.load(codec.dump({"id": 1, "x": [1]})) == {"id": 1, "x": [1]}
    with pytest.raises(InvalidItemError, match="no 'id' key"):
        codec.dump({"x": 1})


def test_what_round_trips_is_stored_exactly():
    """JSON types as they are; attrs/dataclass instances as objects; datetimes as ISO text; enums as values."""
    value = {"t": Track("a", "p", ("x",), datetime.datetime(2026, 1, 2, 3, 4, 5)),
             "d": datetime.date(2026, 5, 6), "c": Colour.RED, "doc": Doc(1, [2]),
             "plain": [1, 2.5, "é", True, None, {"k": []}], "tuple": (1, 2)}
    assert json.loads(to_json(value)) == {
        "t": {"id": "a", "path": "p", "tags": ["x"], "added": "2026-01-02T03:04:05"},
        "d": "2026-05-06", "c": "red", "doc": {"id": 1, "pages": [2]},
        "plain": [1, 2.5, "é", True, None, {"k": []}], "tuple": [1, 2]}


class Opaque:
    pass


@pytest.mark.parametrize(("value", "message"), [
    ({"tags": ["a", "b", b"x"]}, "output['tags'][2]: bytes is not JSON"),
    ({"ids": {1, 2}}, "output['ids']: set is not JSON"),
    ([frozenset()], "output[0]: frozenset is not JSON"),
    ({"obj": Opaque()}, "output['obj']: Opaque is not JSON"),
    ({"score": float("nan")}, "output['score']: float nan is not JSON"),
    ({"score": [float("-inf")]}, "output['score'][0]: float -inf is not JSON"),
    ({"name": "caf\udce9.txt"}, ("output['name']: str 'caf\\udce9.txt' (lone surrogate '\\udce9' "
                                 "at index 3) is not valid UTF-8")),
    ({"caf\udce9": 1}, "output: key 'caf\\udce9' (lone surrogate '\\udce9' at index 3) is not valid UTF-8"),
    ({"by_id": {1: "a"}}, "output['by_id']: key 1 (int) is not a str"),
    (Track("t", "p", ("ok", "\ud800")), "output.tags[1]: str '\\ud800' (lone surrogate"),
    (Doc(1, [1, b"x"]), "output.pages[1]: bytes is not JSON"),  # type: ignore[list-item]
    (Track("t", b"p"), "output.path: bytes is not JSON"),  # type: ignore[arg-type]
])
def test_what_cannot_be_stored_raises_with_its_path(value, message):
    """bytes, sets, objects, NaN/inf, lone surrogates, non-str keys: SerializationError naming the path."""
    with pytest.raises(SerializationError) as err:
        to_json(value, what="output", item_id="i", stage="s")
    assert message in str(err.value)
    assert str(err.value).startswith("The output of item 'i' at stage 's' cannot be stored as JSON: ")
    assert (err.value.item_id, err.value.stage) == ("i", "s")


def test_a_circular_value_raises_with_its_path():
    """A value that contains itself is named, not recursed into for ever."""
    loop: list = [1]
    loop.append({"again": loop})
    with pytest.raises(SerializationError, match=r"value\[1\]\['again'\]: circular reference"):
        to_json(loop)


def test_item_ids_with_lone_surrogates_are_refused():
    """An id no database can store (a lone surrogate) is an InvalidItemError."""
    with pytest.raises(InvalidItemError, match="lone surrogates"):
        normalize_id("caf\udce9")


@pytest.mark.parametrize("bad", [object(), {"nan": float("nan")}, {"f": lambda: 1}])
def test_unserialisable_values_raise_serialization_error(bad):
    """What cannot be JSON raises SerializationError naming where it came from."""
    with pytest.raises(SerializationError, match="of item 'i' at stage 's' cannot be stored"):
        to_json(bad, what="output", item_id="i", stage="s")


def test_the_converter_is_private():
    """treadle never configures cattrs' global converter."""
    assert CONVERTER is not cattrs.global_converter
# -- the boundary in use: outputs, review edits and submitted items -------------------------

BAD = {
    "bytes": ({"tags": ["a", "b", b"x"]}, "['tags'][2]: bytes is not JSON"),
    "set": ({"tags": {"a"}}, "['tags']: set is not JSON"),
    "object": ({"tags": Opaque()}, "['tags']: Opaque is not JSON"),
    "nan": ({"tags": float("nan")}, "['tags']: float nan is not JSON"),
    "surrogate": ({"tags": ["caf\udce9"]}, "['tags'][0]: str 'caf\\udce9' (lone surrogate"),
}


def snapshot(runner: Runner, item_id: str) -> tuple:
    """Everything the store says about an item."""
    return runner.status(item_id), runner.history(item_id)


@pytest.mark.parametrize("kind", sorted(BAD))
def test_an_output_that_cannot_be_stored_fails_its_stage_naming_the_path(store, kind):
    """The stage fails with the path in its error; nothing of the output is stored; others go on."""
    value, path = BAD[kind]

    @stage()
    def produce(item):
        return value if item["id"] == "bad" else {"tags": ["fine"]}

    runner = Runner(Pipeline("ser", [produce]), store)
    runner.submit({"id": "bad"}, {"id": "good"})
    runner.run()
    bad = runner.status("bad").stages["produce"]
    assert bad.state == "failed" and bad.output is None
    assert f"SerializationError: The output of item 'bad' at stage 'produce' cannot be stored as JSON: output{path}" in bad.error
    assert runner.status("good").stages["produce"].output == {"tags": ["fine"]}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_a_review_edit_that_cannot_be_stored_raises_and_changes_nothing(store, kind):
    """approve(data=...) with a bad value raises SerializationError naming data[...]; the store is unchanged."""
    value, path = BAD[kind]

    @stage()
    def check(item):
        return Review({"tags": ["x"]}, message="ok?")

    runner = Runner(Pipeline("ser", [check]), store)
    runner.submit({"id": "a"})
    runner.run()
    before = snapshot(runner, "a")
    with pytest.raises(SerializationError) as err:
        runner.approve("a", "check", data=value)
    assert f"data{path}" in str(err.value)
    assert snapshot(runner, "a") == before
    assert runner.status("a").stages["check"].state == "awaiting_review"


@pytest.mark.parametrize("kind", sorted(BAD))
def test_a_submitted_item_that_cannot_be_stored_raises_and_stores_nothing(store, kind):
    """submit() of a bad item (with good ones) raises naming item[...]; no item is stored."""
    value, path = BAD[kind]

    @stage()
    def noop(item):
        return None

    runner = Runner(Pipeline("ser", [noop]), store)
    runner.submit({"id": "known"})
    before = snapshot(runner, "known")
    with pytest.raises(SerializationError) as err:
        runner.submit({"id": "new"}, {"id": "bad", **value})
    assert f"The item 'bad' cannot be stored as JSON: item{path}" in str(err.value)
    assert [s.item_id for s in runner.items()] == ["known"]
    assert snapshot(runner, "known") == before
