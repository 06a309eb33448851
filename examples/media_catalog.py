"""Media catalogue: scan -> identify -> enrich (fan-out) -> review -> export.

    python examples/media_catalog.py        # run; a flaky source fails once
    python examples/media_catalog.py        # run again: only the failed lookups rerun

It creates a few small "audio" files in ./media_demo/, identifies each from
its name, enriches it from three simulated sources at once (a FanOut: one
subtask per source, each tracked on its own), asks a human to confirm titles
it is unsure of, and exports ./media_demo/catalogue.json.

The "lyrics" source is flaky: it fails the first time it is asked about a
track. The enrich stage then fails with the other two sources' results
kept; the next run (or `python -m treadle retry`) reruns only that lookup.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from pathlib import Path

import attrs

from treadle import FanOut, Pipeline, Review, Runner, open_store, stage

FOLDER = Path(os.environ.get("MEDIA_DIR", "media_demo"))
FILES = {"Artist One - Morning.flac": 2, "artist_two-night_drive.mp3": 3, "Unknown Track.ogg": 1}


@attrs.frozen
class Track:
    id: str
    path: str


def scan_folder():
    """The source: one Track per file (created on first use)."""
    FOLDER.mkdir(exist_ok=True)
    for name, size in FILES.items():
        path = FOLDER / name
        if not path.exists():
            path.write_bytes(b"\0" * 1024 * size)
        yield Track(hashlib.sha1(name.encode()).hexdigest()[:8], str(path))


@stage()
def scan(track: Track):
    return {"bytes": os.path.getsize(track.path), "ext": Path(track.path).suffix[1:]}


@stage(after=[scan])
def identify(track: Track):
    stem = Path(track.path).stem.replace("_", " ")
    if " - " in stem:
        artist, title = stem.split(" - ", 1)
        return {"artist": artist.title(), "title": title.title(), "confident": True}
    if "-" in stem:
        artist, title = stem.split("-", 1)
        return {"artist": artist.title(), "title": title.title(), "confident": False}
    return {"artist": None, "title": stem.title(), "confident": False}


def genre_db(title: str) -> str:
    return ["ambient", "rock", "jazz"][len(title) % 3]


def year_db(title: str) -> int:
    return 1990 + len(title)


def lyrics_db(track_id: str) -> str:
    seen = FOLDER / ".lyrics_asked"
    asked = set(seen.read_text().split()) if seen.exists() else set()
    if track_id not in asked:  # flaky: fails the first time for each track
        seen.write_text(" ".join(sorted(asked | {track_id})))
        raise ConnectionError("lyrics service timed out")
    return f"la la la ({track_id})"


@stage(after=[identify])
def enrich(track: Track, ctx):
    title = ctx.outputs["identify"]["title"]
    return FanOut({
        "genre": lambda: genre_db(title),
        "year": lambda: year_db(title),
        "lyrics": lambda: lyrics_db(track.id),
    })


@stage(after=[enrich])
def review(track: Track, ctx):
    found = {**ctx.outputs["identify"], **ctx.outputs["enrich"]}
    if not found.pop("confident"):
        return Review(found, message="Not sure about artist/title: confirm or edit")
    return found


_catalogue_lock = threading.Lock()  # exports of several tracks run at once


@stage(after=[review])
def export(track: Track, ctx):
    catalogue_path = FOLDER / "catalogue.json"
    with _catalogue_lock:
        catalogue = json.loads(catalogue_path.read_text()) if catalogue_path.exists() else {}
        catalogue[track.id] = {"path": track.path, **ctx.outputs["scan"], **ctx.outputs["review"]}
        tmp = catalogue_path.with_suffix(".tmp")  # idempotent: write whole, then rename
        tmp.write_text(json.dumps(catalogue, indent=2, sort_keys=True))
        tmp.replace(catalogue_path)
    return {"exported": str(catalogue_path)}


pipeline = Pipeline("media", [scan, identify, enrich, review, export], item_type=Track,
                    source=scan_folder)


def main() -> int:
    url = os.environ.get("TREADLE_DB", "sqlite:///media_catalog.db")
    runner = Runner(pipeline, open_store(url), workers=1)
    runner.retry()  # failed lookups from an earlier run: rerun just those subtasks
    report = runner.run()
    for status in runner.items():
        enrich_status = status.stages["enrich"]
        subs = ", ".join(f"{n}={s.state.value}" for n, s in enrich_status.subtasks.items())
        print(f"{status.item_id} {status.state.value:16} enrich[{subs}]")
    for item_id, stage_name, error in report.failures:
        print(f"  {item_id} {stage_name} failed: {error}")
    waiting = runner.items(state="awaiting_review")
    if waiting:
        print(f"{len(waiting)} track(s) await review: python -m treadle review "
              f"{os.path.relpath(__file__)}:pipeline --db {url}")
    if report.failures:
        print("run again to retry the failed lookups")
    return 0


if __name__ == "__main__":
    sys.exit(main())
