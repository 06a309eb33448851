"""Pipeline of the cancel / pause / events tests: work (sleeps ``secs``) -> publish."""

import time

import attrs

from treadle import Pipeline, stage


@attrs.frozen
class Job:
    id: str
    secs: float = 0.0


@stage()
def work(item: Job) -> dict[str, str]:
    time.sleep(item.secs)
    return {"done": item.id}


@stage(after=[work])
def publish(item: Job) -> str:
    return item.id


pipeline = Pipeline("steer", [work, publish], item_type=Job)
