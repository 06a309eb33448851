"""State stores and ``open_store``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import StoreError, StoreOptionError
from .base import StateStore
from .itemcache import parse_size
from .memory import MemoryStore
from .urls import mask_url, no_store, pop_option, split

if TYPE_CHECKING:
    from .postgres import PostgresStore
    from .sqlite import SqliteStore

__all__ = ["MemoryStore", "StateStore", "open_store"]


def open_store(url: str = "sqlite:///treadle.db", *, create: bool = True) -> StateStore:
    """Open (creating if needed) the store at ``url``.

    - ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``; query
      options ``synchronous=full|normal`` and ``busy_timeout=SECONDS``.
    - ``postgresql://user:password@host:5432/db``: PostgreSQL (``treadle[postgres]``).
    - ``memory://``: an in-process store, gone when the process ends.

    Every URL also takes ``item_cache=SIZE``: the bytes of item JSON the store
    keeps for the claims to come (``64MB`` by default, none on ``memory://``,
    whose tables hold the JSON already; ``512KB``, ``1GB`` or a plain number of
    bytes; ``0`` turns the cache off; see
    :class:`~treadle.store.itemcache.ItemCache`). A bad value raises
    :class:`~treadle.StoreOptionError` before anything is opened.

    With ``create=False`` nothing is created or changed where no store is: a
    missing or empty SQLite file, an SQLite file without treadle's tables, a
    PostgreSQL database (or ``schema=``) without them, or ``memory://`` (empty
    in a new process) raise :class:`~treadle.StoreError` starting "no store at";
    what only reads or decides opens its store this way.

    Raises :class:`~treadle.StoreError` for an unknown scheme, an unreachable
    database, or a store written by a newer treadle.
    """
    if not isinstance(url, str):
        raise StoreError(f"A store URL must be a string like 'sqlite:///pipeline.db', got {url!r}.")
    url, cache = pop_option(url, "item_cache")
    limit = None if cache is None else parse_size(cache)  # a bad value: before opening
    store = _open(url, create)
    if limit is not None:
        store.item_cache.limit = limit
    return store


def _open(url: str, create: bool) -> MemoryStore | SqliteStore | PostgresStore:
    scheme, rest, query = split(url)
    if scheme == "memory":
        if not create:
            raise no_store(url, "an in-process store lives only in the process that made it, "
                                "so this one is empty")
        return MemoryStore()
    if scheme == "sqlite":
        from .sqlite import SqliteStore

        path = rest.removeprefix("/")
        if not path:
            raise StoreError(f"Store URL {url!r} names no file; use sqlite:///path/to/file.db.")
        unknown = set(query) - {"synchronous", "busy_timeout"}
        if unknown:
            names = ", ".join(sorted(unknown))
            raise StoreOptionError(
                f"Store URL {mask_url(url)!r} has unknown option(s) {names}; "
                "sqlite URLs take synchronous=, busy_timeout= and item_cache=.",
                option=names, value=url)
        try:
            timeout = float(query.get("busy_timeout", 60))
        except ValueError:
            raise StoreOptionError(f"busy_timeout in {url!r} must be a number of seconds.",
                                   option="busy_timeout", value=query["busy_timeout"]) from None
        return SqliteStore(url, path, synchronous=query.get("synchronous", "full").lower(),
                           busy_timeout=timeout, create=create)
    if scheme in ("postgresql", "postgres"):
        from .postgres import PostgresStore

        return PostgresStore(url, create=create)
    raise StoreError(
        f"Unknown store URL {mask_url(url)!r}; use sqlite:///path/to/file.db, "
        "postgresql://user@host/db or memory://."
    )
