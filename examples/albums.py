"""Nested pipelines: each album spawns its tracks into a pipeline of their own.

    python examples/albums.py            # run it (again: it resumes)

Items are stored in ./albums.db (or the URL in $TREADLE_DB). Two pipelines:

    albums:  scan -> tracks (Spawn: one child item per track, waits) -> export
    tracks:  identify -> review (a human confirms low-confidence titles)

``tracks`` of album ``a1`` are stored as ``a1/1``, ``a1/2``, ...; the album
waits at its ``tracks`` stage until every track has settled, then exports
with all of them. A track whose title the matcher is unsure of waits for a
reviewer, and so does its album:

    python -m treadle review examples/albums.py:tracks    # confirm the titles
    python examples/albums.py                             # the album exports
"""

from __future__ import annotations

import os
import sys

import attrs

from treadle import Pipeline, Review, Runner, Spawn, open_store, stage


@attrs.frozen
class Album:
    id: str
    title: str
    tracks: tuple[str, ...]


@attrs.frozen
class Track:
    id: str
    album: str
    file: str


ALBUMS = [
    Album("a1", "Blue Train", ("blue_train.flac", "moments_notice.flac", "locomotion.flac")),
    Album("a2", "Kind of Blue", ("so_what.flac", "freddie_freeloader.flac", "untitled_07.flac")),
]


def albums_source():
    """The albums pipeline's source: a run submits the ones not yet known."""
    yield from ALBUMS


# -- the child pipeline: one track ------------------------------------------------
@stage()
def identify(track: Track):
    name = track.file.removesuffix(".flac")
    sure = not name.startswith("untitled")
    return {"title": name.replace("_", " ").title(), "confidence": 0.95 if sure else 0.3}


@stage(after=[identify])
def review(track: Track, ctx):
    found = ctx.outputs["identify"]
    if found["confidence"] < 0.5:
        return Review(found, message=f"Low confidence: what is {track.file} of {track.album}?")
    return found


tracks = Pipeline("tracks", [identify, review], item_type=Track)


# -- the parent pipeline: one album -------------------------------------------------
@stage()
def scan(album: Album):
    return {"files": len(album.tracks)}


@stage(after=[scan], spawns=tracks,
       collect=lambda done: {tid: out["review"]["title"] for tid, out in done.items()})
def split(album: Album):
    # child ids are derived from the parent's: a1/1, a1/2, ...
    return Spawn(tracks, [Track(str(n), album.id, f) for n, f in enumerate(album.tracks, 1)])


@stage(after=[split])
def export(album: Album, ctx):
    titles = ctx.outputs["split"]
    return {"album": album.title, "tracklist": [titles[k] for k in sorted(titles)]}


albums = Pipeline("albums", [scan, split, export], item_type=Album, source=albums_source)


def main() -> int:
    url = os.environ.get("TREADLE_DB", "sqlite:///albums.db")
    store = open_store(url)
    runner = Runner(albums, store, workers=4)  # runs the tracks pipeline too
    report = runner.run()
    print(f"store: {url}")
    print(f"this run executed {report.executed} stage(s)")
    for status in runner.items():
        split_state = status.stages["split"].state.value
        print(f"  {status.item_id:4} {status.state.value:10} split: {split_state}")
        if status.stages["export"].output:
            print(f"       exported: {status.stages['export'].output['tracklist']}")
    waiting = Runner(tracks, store).items(state="awaiting_review")
    if waiting:
        here = os.path.relpath(__file__)
        print(f"{len(waiting)} track(s) await review, e.g. {waiting[0].item_id}")
        print(f"review them:   python -m treadle review {here}:tracks --db {url}")
        print(f"then continue: python {here}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
