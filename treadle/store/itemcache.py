"""The item cache: item JSON kept for the claims to come, bounded in bytes.

Items never change once stored, so a store keeps the JSON of the items it
claimed lately and does not read it again when the item's next stage is
claimed. What the cache may hold is a number of *bytes*, not of items: a
pipeline of 100 KB items must not hold 50,000 of them because the bound was
written for 100-byte ones. It evicts the least recently used items first,
and the store drops an item as soon as it finishes (no stage of it will be
claimed again unless a human retries or reruns it; then it is read again).

The bound is ``item_cache=SIZE`` in a store URL (``64MB`` by default, ``0``
turns the cache off) or :attr:`ItemCache.limit`. What it counts is the
memory of what it holds: each JSON string (``sys.getsizeof``), its id, and
a fixed estimate of an entry's bookkeeping (:data:`ENTRY_OVERHEAD`).

Several threads may share one store (a runner's scheduler, its heartbeat,
the API called from other threads): the cache has a lock of its own.
"""

from __future__ import annotations

import re
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping

from ..errors import StoreOptionError

#: The default bound, in bytes.
DEFAULT_LIMIT = 64 * 2**20

#: Bytes counted per entry on top of its strings: the ordered dict's node and
#: slot, and the (pipeline, item id) key tuple (CPython 3.11, 64-bit).
ENTRY_OVERHEAD = 160

_UNITS = {"": 1, "b": 1, "kb": 2**10, "kib": 2**10, "mb": 2**20, "mib": 2**20,
          "gb": 2**30, "gib": 2**30}
_SIZE = re.compile(r"^\s*(\d+)\s*([a-z]*)\s*$", re.IGNORECASE)


def check_limit(value: object, *, option: str = "item_cache") -> int:
    """``value`` as a byte bound (an int >= 0), else :class:`~treadle.StoreOptionError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise StoreOptionError(
            f"{option} must be a number of bytes >= 0 (0 turns the item cache off), "
            f"got {value!r}.", option=option, value=value)
    return value


def parse_size(text: str, *, option: str = "item_cache") -> int:
    """A size written in a URL, ``65536``, ``512KB``, ``64MB`` or ``1GB`` (powers of
    1024; case does not matter), as bytes; anything else is a
    :class:`~treadle.StoreOptionError` naming the option and the value."""
    m = _SIZE.match(text)
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS:
        raise StoreOptionError(
            f"{option}={text!r} is not a size; write bytes, or a number with KB, MB or GB "
            f"(e.g. {option}=64MB; {option}=0 turns the item cache off).",
            option=option, value=text)
    return int(m.group(1)) * _UNITS[unit]


def entry_size(item_id: str, data: str) -> int:
    """The bytes one cached item counts for."""
    return sys.getsizeof(data) + sys.getsizeof(item_id) + ENTRY_OVERHEAD


class ItemCache:
    """Item JSON by (pipeline, item id), least recently used first out, at most
    :attr:`limit` bytes (see :func:`entry_size`)."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self._limit = check_limit(limit)
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str], tuple[str, int]] = OrderedDict()
        self._bytes = 0
        #: Items looked up and found, looked up and not found (read from the store).
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"ItemCache(limit={self._limit}, bytes={self._bytes}, items={len(self)})"

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def limit(self) -> int:
        """The bound in bytes; setting it evicts down to the new bound at once."""
        return self._limit

    @limit.setter
    def limit(self, value: int) -> None:
        limit = check_limit(value)
        with self._lock:
            self._limit = limit
            self._shrink()

    @property
    def bytes(self) -> int:
        """The bytes the cached items count for now (never above :attr:`limit`)."""
        return self._bytes

    def get(self, pipeline: str, item_ids: Iterable[str]) -> dict[str, str]:
        """The cached JSON of those of ``item_ids`` held (each now most recently used)."""
        found: dict[str, str] = {}
        entries = self._entries
        with self._lock:
            for item_id in item_ids:
                key = (pipeline, item_id)
                entry = entries.get(key)
                if entry is not None:
                    entries.move_to_end(key)
                    found[item_id] = entry[0]
            self.hits += len(found)
        return found

    def put(self, pipeline: str, items: Mapping[str, str], *, missed: int = 0) -> None:
        """Keep these items' JSON, evicting the least recently used beyond the bound.
        An item larger than the whole bound is not kept. ``missed``: how many
        lookups these items answer (counted in :attr:`misses`)."""
        entries = self._entries
        with self._lock:
            self.misses += missed
            if self._limit == 0:
                return
            for item_id, data in items.items():
                size = entry_size(item_id, data)
                if size > self._limit:
                    continue
                old = entries.pop((pipeline, item_id), None)
                if old is not None:
                    self._bytes -= old[1]
                entries[(pipeline, item_id)] = (data, size)
                self._bytes += size
            self._shrink()

    def discard(self, pipeline: str, item_ids: Iterable[str]) -> None:
        """Forget these items (they finished, or changed)."""
        entries = self._entries
        with self._lock:
            for item_id in item_ids:
                old = entries.pop((pipeline, item_id), None)
                if old is not None:
                    self._bytes -= old[1]

    def forget(self, pipeline: str) -> None:
        """Forget every item of ``pipeline`` (its items were migrated)."""
        with self._lock:
            for key in [k for k in self._entries if k[0] == pipeline]:
                self._bytes -= self._entries.pop(key)[1]

    def _shrink(self) -> None:
        entries = self._entries
        while self._bytes > self._limit:
            _, (_, size) = entries.popitem(last=False)
            self._bytes -= size


__all__ = ["DEFAULT_LIMIT", "ENTRY_OVERHEAD", "ItemCache", "check_limit", "entry_size",
           "parse_size"]
