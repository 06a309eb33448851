"""Albums -> tracks, the fixture pipelines of tests/test_nested.py and its crash script.

``python tests/nested/albums.py DB`` submits three albums of five tracks and
runs them to the end. Each track stage appends ``<stage> <item> <pid>`` to
``$NESTED_LOG`` (one ``write``, ``fsync``) *before* it works, so a test sees
every execution, including one cut short by a kill. ``$NESTED_SLOW`` (seconds)
slows the track stages down, so a kill lands while children run.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from treadle import Pipeline, Review, Runner, Spawn, open_store, stage

ALBUMS = ("album-1", "album-2", "album-3")
TRACKS = 5


def _log(stage_name: str, item_id: str) -> None:
    path = os.environ.get("NESTED_LOG")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{stage_name} {item_id} {os.getpid()}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    time.sleep(float(os.environ.get("NESTED_SLOW", "0")))


@stage()
def identify(item: dict[str, Any], ctx: Any) -> dict[str, Any]:
    _log("identify", ctx.item_id)
    return {"title": item["title"].upper(), "confidence": item.get("confidence", 0.9)}


@stage(after=[identify])
def check(item: dict[str, Any], ctx: Any) -> Any:
    _log("check", ctx.item_id)
    found = ctx.outputs["identify"]
    if found["confidence"] < 0.5:
        return Review(found, message="low confidence: confirm the title")
    return found


tracks = Pipeline("tracks", [identify, check])


@stage(spawns=tracks)
def split(album: dict[str, Any], ctx: Any) -> Spawn:
    _log("split", ctx.item_id)
    return Spawn(tracks, [{"id": f"t{n}", "title": t, "confidence": c}
                          for n, (t, c) in enumerate(album["tracks"])])


@stage(after=[split])
def export(album: dict[str, Any], ctx: Any) -> dict[str, Any]:
    _log("export", ctx.item_id)
    return {"tracks": sorted(ctx.outputs["split"])}


albums = Pipeline("albums", [split, export])


def album(album_id: str, low: tuple[int, ...] = ()) -> dict[str, Any]:
    """An album of TRACKS tracks; those numbered in ``low`` need a review."""
    return {"id": album_id, "tracks": [[f"{album_id} song {n}", 0.2 if n in low else 0.9]
                                       for n in range(TRACKS)]}


def main(db: str) -> None:
    runner = Runner(albums, open_store(db), workers=4)
    runner.submit(*(album(a) for a in ALBUMS))
    runner.run()


if __name__ == "__main__":
    main(sys.argv[1])
