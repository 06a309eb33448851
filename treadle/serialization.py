"""The one boundary between Python values and stored JSON.

Everything treadle stores (items, outputs, review data, approved edits,
feedback) passes :func:`to_json`. What round-trips exactly:

- JSON's own types: ``dict`` with ``str`` keys, ``list``, ``str``, ``int``,
  finite ``float``, ``bool``, ``None`` (a ``tuple`` is stored as a list);
- attrs and dataclass instances of those, stored as objects of their fields
  and restored as instances where treadle knows the class: items through the
  pipeline's ``item_type``, outputs through a stage's ``output_type``;
- ``datetime``, ``date`` and ``time``, stored as ISO 8601 strings, and enums,
  stored as their value: restored as such inside typed items and outputs,
  as the plain string (or value) elsewhere.

Anything else raises :class:`~treadle.SerializationError` naming the path of
the offending part inside the value (``output['tags'][2]: bytes is not
JSON``): bytes, sets, other objects, NaN and infinities, dict keys that are
not strings, and strings holding lone surrogates (``os.fsdecode`` makes these;
they are not valid UTF-8, so no database can store them). Nothing is converted
silently.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import math
import re
from collections.abc import Mapping
from typing import Any

import attrs
import cattrs

from .errors import InvalidItemError, SerializationError

_DATETIMES = (datetime.datetime, datetime.date, datetime.time)
_STR = frozenset([str])
#: How the encoder writes a key that was not a str (``1``, ``1.5``, ``True``, ``None``).
#: Where the text has none, no key was converted; a match may be a real str key
#: (``"1"``, or text inside a string), so _str_keys then decides.
_CONVERTED_KEY = re.compile(r'"(?:-?\d[^"]*|true|false|null)":')


def _make_converter() -> cattrs.Converter:
    """The converter treadle uses everywhere; never cattrs' global one.

    A plain :class:`cattrs.Converter` (not the JSON preconf one, which turns
    bytes into base85 text and sets into lists): values it does not know stay
    as they are, and :func:`to_json` then refuses them with their path.
    """
    converter = cattrs.Converter()
    for cls in _DATETIMES:
        converter.register_unstructure_hook(cls, cls.isoformat)
        converter.register_structure_hook(
            cls, lambda value, tp: value if isinstance(value, tp) else tp.fromisoformat(value))
    return converter


CONVERTER = _make_converter()


def _default(obj: Any) -> Any:
    """What the JSON encoder does not know: attrs/dataclass instances, datetimes, enums."""
    if attrs.has(type(obj)) or (dataclasses.is_dataclass(obj) and not isinstance(obj, type)):
        return CONVERTER.unstructure(obj)
    if isinstance(obj, _DATETIMES):
        return obj.isoformat()
    if isinstance(obj, enum.Enum):
        return obj.value
    raise TypeError(f"{type(obj).__name__} is not JSON")


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                            check_circular=False,
                            default=_default)


def _str_keys(value: Any) -> bool:
    """True when every dict key in the plain containers of ``value`` is a str.

    The encoder would silently turn ``{1: "a"}`` into ``{"1": "a"}``. Keys
    inside attrs/dataclass instances are restored by their field types.
    """
    t = type(value)
    if t is dict:
        if not _STR.issuperset(map(type, value)):
            return False
        children: Any = value.values()
    elif t is list or t is tuple:
        children = value
    else:
        return True
    for child in children:
        tc = type(child)
        if (tc is dict or tc is list or tc is tuple) and not _str_keys(child):
            return False
    return True


def _is_utf8(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _problem(value: Any, path: str, active: set[int]) -> tuple[str, str] | None:
    """The first part of ``value`` that cannot be stored: ``(path, reason)``, or None."""
    if value is None or isinstance(value, (bool, int)):
        return None
    if isinstance(value, str):
        return None if _is_utf8(value) else (path, f"str {_surrogate_hint(value)} is not valid UTF-8")
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, f"float {value!r} is not JSON")
    if isinstance(value, _DATETIMES):
        return None
    if isinstance(value, enum.Enum):
        return _problem(value.value, f"{path}.value", active)
    if id(value) in active:
        return path, "circular reference"
    if isinstance(value, dict):
        children: list[tuple[str, Any]] = []
        for key, child in value.items():
            if not isinstance(key, str):
                return path, f"key {key!r} ({type(key).__name__}) is not a str"
            if not _is_utf8(key):
                return path, f"key {_surrogate_hint(key)} is not valid UTF-8"
            children.append((f"{path}[{key!r}]", child))
    elif isinstance(value, (list, tuple)):
        children = [(f"{path}[{i}]", child) for i, child in enumerate(value)]
    elif attrs.has(type(value)):
        children = [(f"{path}.{a.name}", getattr(value, a.name)) for a in attrs.fields(type(value))]
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        children = [(f"{path}.{f.name}", getattr(value, f.name)) for f in dataclasses.fields(value)]
    elif isinstance(value, (set, frozenset)):
        return path, f"{type(value).__name__} is not JSON (store a sorted list)"
    elif isinstance(value, (bytes, bytearray, memoryview)):
        return path, f"{type(value).__name__} is not JSON (store text, e.g. base64)"
    else:
        return path, f"{type(value).__name__} is not JSON"
    active.add(id(value))
    try:
        for child_path, child in children:
            found = _problem(child, child_path, active)
            if found is not None:
                return found
    finally:
        active.discard(id(value))
    return None


def _surrogate_hint(text: str) -> str:
    """A short repr of ``text`` around its first lone surrogate."""
    i = next(i for i, ch in enumerate(text) if 0xD800 <= ord(ch) <= 0xDFFF)
    shown = text[max(0, i - 10): i + 10]
    return f"{shown!r} (lone surrogate {text[i]!r} at index {i})"


def _root(what: str) -> str:
    """The name a value path starts with: ``output['tags'][2]``."""
    if what.startswith("output"):
        return "output"
    return {"review data": "review", "approved data": "data"}.get(what, what.split()[-1])


def to_json(value: Any, *, what: str = "value", item_id: str | None = None,
            stage: str | None = None) -> str:
    """Encode ``value`` as compact JSON text, exactly or not at all.

    Raises :class:`SerializationError` naming ``what``, the item and stage,
    and the path of the first part of ``value`` that cannot be stored.
    """
    try:
        # Plain JSON goes straight to the C encoder; attrs/dataclass instances,
        # datetimes and enums go through _default; the rest raises.
        text = _ENCODER.encode(value)
        if _is_utf8(text) and (_CONVERTED_KEY.search(text) is None or _str_keys(value)):
            return text
        error: BaseException | None = None
    except (TypeError, ValueError, RecursionError) as exc:
        error = exc
    try:
        found = _problem(value, _root(what), set())
    except RecursionError:
        found = None
    where = "".join((
        f" {item_id!r}" if what == "item" else f" of item {item_id!r}" if item_id is not None else "",
        f" at stage {stage!r}" if stage is not None else ""))
    reason = f"{found[0]}: {found[1]}" if found else f"{error or 'not JSON'}"
    raise SerializationError(
        f"The {what}{where} cannot be stored as JSON: {reason}. Store dicts with str keys, "
        "lists, str, finite numbers, bool, None, datetimes, enums, or attrs/dataclass "
        "instances of those (docs/concepts.md#what-can-be-stored).",
        item_id=item_id, stage=stage,
    ) from error


def from_json(text: str | None) -> Any:
    """Decode stored JSON (``None`` stays ``None``)."""
    return None if text is None else json.loads(text)


def structure(value: Any, tp: type, *, what: str, stage: str | None = None) -> Any:
    """Build a ``tp`` instance from stored plain JSON data (``None`` stays ``None``)."""
    if value is None or isinstance(value, tp):
        return value
    try:
        return CONVERTER.structure(value, tp)
    except Exception as exc:  # noqa: BLE001 - cattrs raises several kinds
        detail = cattrs.transform_error(exc) if isinstance(exc, cattrs.BaseValidationError) else exc
        raise SerializationError(
            f"The {what} {value!r} cannot be read as a {tp.__name__}: {detail}. "
            f"Make the stage return a {tp.__name__}, or change its output_type.",
            stage=stage,
        ) from None


def is_record_type(tp: Any) -> bool:
    """True for an attrs class or a dataclass (the types outputs can be restored as)."""
    return isinstance(tp, type) and (attrs.has(tp) or dataclasses.is_dataclass(tp))


def normalize_id(item_id: Any) -> str:
    """Item ids are stored as text: ``5`` and ``"5"`` name the same item."""
    if isinstance(item_id, bool) or not isinstance(item_id, (str, int)):
        raise InvalidItemError(
            f"Item id {item_id!r} must be a str or an int."
        )
    text = str(item_id)
    if not text or "\x00" in text or not _is_utf8(text):
        raise InvalidItemError(
            f"Item id {item_id!r} must be non-empty text without NUL characters or lone surrogates."
        )
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
            return normalize_id(getattr(item, "id"))  # noqa: B009 - typed as Any
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
                f"Cannot build a {self.item_type.__name__} from {data!r}: "
                f"{structure_problem(exc, self.item_type)}."
            ) from None


def structure_problem(exc: Exception, tp: type) -> str:
    """What a cattrs structuring error says, naming the fields at fault
    (``required field missing @ Track.size``)."""
    if isinstance(exc, cattrs.BaseValidationError):
        return "; ".join(cattrs.transform_error(exc, path=tp.__name__))
    return str(exc)


def issubclass_mapping(tp: type) -> bool:
    return isinstance(tp, type) and issubclass(tp, Mapping)


def storable_text(text: str) -> str:
    """Text any database can store: NUL and lone surrogates (as ``os.fsdecode``
    makes of undecodable bytes) are written as backslash escapes."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text
