"""Pipeline of the volume CLI tests: fetch (sleeps, may fail or return what JSON cannot hold)
-> enrich (a fan-out of two named subtasks) -> review (a 300-character message for 'review*')."""

import time

import attrs

from treadle import FanOut, Pipeline, Review, stage

#: 300 characters, every word numbered: a cut or a reordering shows.
LONG_MESSAGE = " ".join(f"w{i:03d}" for i in range(60))[:299] + "."


@attrs.frozen
class Job:
    id: str
    secs: float = 0.0


@stage(retry=2)
def fetch(item: Job) -> dict[str, object]:
    time.sleep(item.secs)
    if item.id.startswith("fail"):
        raise RuntimeError(f"cannot fetch {item.id}")
    if item.id.startswith("unstorable"):
        return {"when": {1, 2}}  # a set: not JSON
    return {"n": 1}


@stage(after=[fetch])
def enrich(item: Job) -> FanOut:
    return FanOut({"left": lambda: 1, "right": lambda: 2})


@stage(after=[enrich])
def review(item: Job) -> object:
    if item.id.startswith("review"):
        return Review({"title": "A", "tags": ["x"]}, message=LONG_MESSAGE)
    return {"title": "A"}


pipeline = Pipeline("volume", [fetch, enrich, review], item_type=Job)
