"""Items and outputs to and from JSON through the private cattrs converter."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json

import attrs
import cattrs
import pytest

from treadle import InvalidItemError, SerializationError
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


def test_outputs_use_cattrs_for_what_json_does_not_know():
    """Outputs: plain JSON as is; attrs, dates, sets, enums unstructured by cattrs."""
    text = to_json({"t": Track("a", "p"), "d": datetime.date(2026, 5, 6), "s": {1}, "c": Colour.RED})
    assert json.loads(text) == {"t": {"id": "a", "path": "p", "tags": [], "added": None},
                                "d": "2026-05-06", "s": [1], "c": "red"}


@pytest.mark.parametrize("bad", [object(), {"nan": float("nan")}, {"f": lambda: 1}])
def test_unserialisable_values_raise_serialization_error(bad):
    """What cannot be JSON raises SerializationError naming where it came from."""
    with pytest.raises(SerializationError, match="of item 'i' at stage 's' cannot be stored"):
        to_json(bad, what="output", item_id="i", stage="s")


def test_the_converter_is_private():
    """treadle never configures cattrs' global converter."""
    assert CONVERTER is not cattrs.global_converter
