"""The item cache keeps item JSON for the claims to come, bounded in bytes (#19)."""

from __future__ import annotations

import json
import threading

import pytest

from treadle import Pipeline, Runner, StoreError, StoreOptionError, open_store, stage
from treadle.store.itemcache import DEFAULT_LIMIT, ItemCache, entry_size, parse_size


def _blob(k: int, size: int) -> str:
    return json.dumps({"id": k, "blob": "x" * size})


# -- the cache's own accounting ----------------------------------------------------------
def test_the_cache_never_holds_more_bytes_than_its_bound():
    """Putting more than the bound evicts the least recently used; the bytes counted are
    those of the items held."""
    one = entry_size("0", _blob(0, 1_000))
    cache = ItemCache(limit=3 * one + one // 2)
    for k in range(10):
        cache.put("p", {str(k): _blob(k, 1_000)})
        assert cache.bytes <= cache.limit
    assert len(cache) == 3
    assert cache.get("p", [str(k) for k in range(10)]) == {
        str(k): _blob(k, 1_000) for k in (7, 8, 9)}
    assert cache.bytes == 3 * one


def test_a_looked_up_item_is_kept_longest():
    """Lookups refresh an item: the one evicted is the one unused longest."""
    one = entry_size("0", _blob(0, 100))
    cache = ItemCache(limit=2 * one)
    cache.put("p", {"0": _blob(0, 100), "1": _blob(1, 100)})
    assert cache.get("p", ["0"]) == {"0": _blob(0, 100)}
    cache.put("p", {"2": _blob(2, 100)})
    assert set(cache.get("p", ["0", "1", "2"])) == {"0", "2"}


def test_an_item_larger_than_the_bound_is_not_kept():
    """A single item over the whole bound is not cached (and evicts nothing)."""
    cache = ItemCache(limit=entry_size("0", _blob(0, 1_000)))
    cache.put("p", {"0": _blob(0, 1_000)})
    cache.put("p", {"big": _blob(1, 2_000)})
    assert set(cache.get("p", ["0", "big"])) == {"0"}


def test_lowering_the_bound_evicts_at_once_and_zero_turns_the_cache_off():
    """Setting ``limit`` shrinks the cache to it; 0 keeps nothing."""
    cache = ItemCache()
    assert cache.limit == DEFAULT_LIMIT == 64 * 2**20
    cache.put("p", {str(k): _blob(k, 500) for k in range(5)})
    cache.limit = 2 * entry_size("0", _blob(0, 500))
    assert len(cache) == 2 and cache.bytes <= cache.limit
    cache.limit = 0
    cache.put("p", {"9": _blob(9, 10)}, missed=1)
    assert len(cache) == 0 and cache.bytes == 0 and cache.misses == 1


def test_discard_and_forget_give_their_bytes_back():
    """Dropping items (one pipeline's, or some of them) lowers the bytes counted."""
    cache = ItemCache()
    cache.put("a", {"1": _blob(1, 100), "2": _blob(2, 100)})
    cache.put("b", {"1": _blob(1, 100)})
    cache.discard("a", ["1", "unknown"])
    assert cache.bytes == 2 * entry_size("1", _blob(1, 100))
    cache.forget("b")
    assert cache.bytes == entry_size("2", _blob(2, 100)) and len(cache) == 1


@pytest.mark.parametrize("text, size", [
    ("0", 0), ("65536", 65_536), ("512KB", 512 * 1024), ("64MB", 64 * 2**20),
    ("64mib", 64 * 2**20), ("1GB", 2**30), ("100b", 100)])
def test_sizes_in_urls(text, size):
    """Bytes, or a number with KB, MB or GB (powers of 1024, any case)."""
    assert parse_size(text) == size


# -- bad bounds -----------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["lots", "-5", "1.5MB", "64 TB", ""])
def test_a_bad_item_cache_option_is_a_named_error_and_creates_nothing(tmp_path, text):
    """``item_cache=`` that is not a size raises StoreOptionError naming it; no file appears."""
    path = tmp_path / "never.db"
    with pytest.raises(StoreOptionError, match="item_cache=") as info:
        open_store(f"sqlite:///{path}?item_cache={text}")
    assert info.value.option == "item_cache" and info.value.value == text
    assert isinstance(info.value, StoreError) and isinstance(info.value, ValueError)
    assert not path.exists()


@pytest.mark.parametrize("value", [-1, 1.5, "64MB", True, None])
def test_a_bad_bound_set_in_python_is_refused_and_changes_nothing(value):
    """``store.item_cache.limit = bad`` raises StoreOptionError; the bound stays."""
    store = open_store("memory://?item_cache=4096")
    with pytest.raises(StoreOptionError, match="number of bytes"):
        store.item_cache.limit = value
    assert store.item_cache.limit == 4096
    with pytest.raises(StoreOptionError):
        ItemCache(limit=value)


def test_stores_default_bound(tmp_path):
    """SQL stores keep up to 64 MB by default; the memory store none (its tables hold the
    JSON already); the URL option sets it."""
    sqlite = open_store(f"sqlite:///{tmp_path / 'a.db'}")
    assert sqlite.item_cache.limit == 64 * 2**20
    sqlite.close()
    assert open_store("memory://").item_cache.limit == 0
    small = open_store(f"sqlite:///{tmp_path / 'b.db'}?synchronous=normal&item_cache=1MB")
    assert small.item_cache.limit == 2**20 and small.synchronous == "normal"
    small.close()


# -- runs on SQLite and PostgreSQL ---------------------------------------------------------------
ITEMS = 30
SIZE = 4_000


def _chain(seen_bytes: list[int], store_ref: list) -> Pipeline:
    """Three stages in a line, each checking it got its own item and noting the cache's bytes."""
    lock = threading.Lock()

    def check(item):
        assert item["blob"] == str(item["id"] % 10) * SIZE, item["id"]
        with lock:
            seen_bytes.append(store_ref[0].item_cache.bytes)
        return len(item["blob"])

    @stage()
    def one(item):
        return check(item)

    @stage(after=[one])
    def two(item, ctx):
        return check(item) + ctx.outputs["one"]

    @stage(after=[two])
    def three(item, ctx):
        return check(item) + ctx.outputs["two"]

    return Pipeline("big_items", [one, two, three])


def _run(url: str, bound: str) -> tuple[Runner, list[int]]:
    seen: list[int] = []
    ref: list = []
    store = open_store(url + ("&" if "?" in url else "?") + f"item_cache={bound}")
    ref.append(store)
    runner = Runner(_chain(seen, ref), store, workers=4)
    runner.submit(*({"id": k, "blob": str(k % 10) * SIZE} for k in range(ITEMS)))
    return runner, seen


@pytest.mark.timeout(120)
def test_a_run_keeps_the_cache_within_its_bound_and_rereads_evicted_items(sql_url):
    """With room for about two items, every stage still gets its own item (read again
    from the store once evicted), the cache never counts more than its bound, and
    the finished items leave it."""
    bound = 2 * entry_size("29", _blob(29, SIZE)) + 100
    runner, seen = _run(sql_url, str(bound))
    cache = runner.store.item_cache
    report = runner.run()
    assert report.completed == 3 * ITEMS and report.failed == 0
    assert runner.counts() == {s: {"completed": ITEMS} for s in ("one", "two", "three")}
    assert runner.status(7).stages["three"].output == 3 * SIZE
    assert len(seen) == 3 * ITEMS and max(seen) <= bound
    assert cache.misses > ITEMS  # evicted items were read again for their next stage
    assert cache.hits + cache.misses == 3 * ITEMS
    assert len(cache) == 0 and cache.bytes == 0  # every item finished
    runner.store.close()


@pytest.mark.timeout(120)
def test_a_run_with_the_item_cache_off_reads_every_item_from_the_store(sql_url):
    """``item_cache=0``: each claim reads its item from the store, and the run is right."""
    runner, seen = _run(sql_url, "0")
    cache = runner.store.item_cache
    assert runner.run().completed == 3 * ITEMS
    assert set(seen) == {0} and cache.hits == 0 and cache.misses == 3 * ITEMS
    runner.store.close()
