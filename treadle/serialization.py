"""Items and outputs to and from JSON, through one private cattrs converter."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import attrs
import cattrs
from cattrs.preconf.json import make_converter

from .errors import InvalidItemError, SerializationError


def _make_converter() -> cattrs.Converter:
    """The converter treadle uses everywhere; never cattrs' global one."""
    return make_converter()


CONVERTER = _make_converter()


def _unstructure(obj: Any) -> Any:
    plain = CONVERTER.unstructure(obj)
    if plain is obj:  # cattrs does not know it either
        raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")
    return plain


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                            default=_unstructure)


def to_json(value: Any, *, what: str = "value", item_id: str | None = None,
            stage: str | None = None) -> str:
    """Unstructure ``value`` with cattrs and encode it as compact JSON.

    Raises :class:`SerializationError` naming ``what`` when that is impossible.
    """
    try:
        # Plain JSON data goes straight to the encoder; cattrs unstructures only
        # what the encoder does not know (attrs, dataclasses, datetimes, sets...).
        return _ENCODER.encode(value)
    except (TypeError, ValueError, RecursionError) as exc:
        where = "".join(
            part for part in (
                f" of item {item_id!r}" if item_id is not None else "",
                f" at stage {stage!r}" if stage is not None else "",
            )
        )
        raise SerializationError(
            f"The {what}{where} cannot be stored as JSON: {exc}. "
            "Return dicts, lists, str, int, float, bool, None, or attrs/dataclass instances of those.",
            item_id=item_id, stage=stage,
        ) from exc


def from_json(text: str | None) -> Any:
    """Decode stored JSON (``None`` stays ``None``)."""
    return None if text is None else json.loads(text)


def normalize_id(item_id: Any) -> str:
    """Item ids are stored as text: ``5`` and ``"5"`` name the same item."""
    if isinstance(item_id, bool) or not isinstance(item_id, (str, int)):
        raise InvalidItemError(
            f"Item id {item_id!r} must be a str or an int."
        )
    text = str(item_id)
    if not text or "\x00" in text:
        raise InvalidItemError(f"Item id {item_id!r} must be non-empty and without NUL characters.")
    return text


class ItemCodec:
    """Stores items as JSON and restores them as ``item_type`` (or dicts)."""

    def __init__(self, item_type: type | None) -> None:
        if item_type is not None and not (
            attrs.has(item_type) or dataclasses.is_dataclass(item_type)
            or (isinstance(item_type, type) and issubclass(item_type, Mapping))
        ):
            raise InvalidItemError(
                f"item_type={item_type!r} must be an attrs class, a dataclass or dict."
            )
        self.item_type = item_type

    def item_id(self, item: Any) -> str:
        """The normalised id of ``item``; raises InvalidItemError if it has none."""
        if isinstance(item, Mapping):
            if "id" not in item:
                raise InvalidItemError(
                    f"Item {item!r} has no 'id' key; every item needs an id (str or int)."
                )
            return normalize_id(item["id"])
        if attrs.has(type(item)) or dataclasses.is_dataclass(item):
            if self.item_type is None or not isinstance(item, self.item_type):
                raise InvalidItemError(
                    f"Item {item!r} is a {type(item).__name__}, but the pipeline's item_type is "
                    f"{getattr(self.item_type, '__name__', None)!r}; pass "
                    f"item_type={type(item).__name__} to Pipeline(...) so stored items can be restored."
                )
            if not hasattr(item, "id"):
                raise InvalidItemError(
                    f"Item {item!r} has no 'id' attribute; add an id field (str or int)."
                )
            return normalize_id(item.id)
        raise InvalidItemError(
            f"Item {item!r} is a {type(item).__name__}; items must be attrs instances, "
            "dataclass instances or dicts with an 'id' key."
        )

    def dump(self, item: Any) -> str:
        """JSON text of ``item``."""
        return to_json(item, what="item", item_id=self.item_id(item))

    def load(self, text: str) -> Any:
        """Restore an item from its JSON text."""
        return self.from_plain(json.loads(text))

    def from_plain(self, data: Any) -> Any:
        """Build an item from plain JSON data (a dict), as ``item_type`` if set."""
        if self.item_type is None or issubclass_mapping(self.item_type):
            if not isinstance(data, Mapping):
                raise InvalidItemError(f"Item {data!r} must be a JSON object with an 'id'.")
            return data
        try:
            return CONVERTER.structure(data, self.item_type)
        except Exception as exc:  # noqa: BLE001 - cattrs raises several kinds
            raise InvalidItemError(
                f"Cannot build a {self.item_type.__name__} from {data!r}: {exc}."
            ) from None


def issubclass_mapping(tp: type) -> bool:
    return isinstance(tp, type) and issubclass(tp, Mapping)
