"""treadle.contrib.logging: every signal as a structlog event, and ctx.log's bound keys."""

from __future__ import annotations

from structlog.testing import capture_logs

from treadle import Pipeline, Runner, stage
from treadle.contrib.logging import connect


@stage()
def fetch(item, ctx):
    ctx.log.info("fetching", url="http://example")
    return {"ok": True}


@stage(after=[fetch])
def broken(item):
    raise ValueError("bad data")


pipeline = Pipeline("logged", [fetch, broken])


def test_one_event_per_transition_with_the_documented_keys(store):
    """Each transition is one structlog event carrying item_id, stage, attempt, error."""
    disconnect = connect(sender=pipeline)
    try:
        with capture_logs() as logs:
            runner = Runner(pipeline, store)
            runner.submit({"id": "x"})
            runner.run()
    finally:
        disconnect()
    from treadle import signals

    events = [(e["event"], e.get("item_id"), e.get("stage")) for e in logs if e["event"] in signals.ALL]
    assert events == [
        ("item_submitted", "x", None),
        ("stage_started", "x", "fetch"),
        ("stage_completed", "x", "fetch"),
        ("stage_started", "x", "broken"),
        ("stage_failed", "x", "broken"),
        ("item_finished", "x", None),
    ]
    failed = [e for e in logs if e["event"] == "stage_failed"][0]
    assert failed["error"] == "ValueError: bad data" and failed["attempt"] == 1
    assert failed["log_level"] == "warning" and failed["final"] is True
    inside = [e for e in logs if e["event"] == "fetching"][0]
    assert {k: inside[k] for k in ("pipeline", "item_id", "stage", "attempt", "url")} == {
        "pipeline": "logged", "item_id": "x", "stage": "fetch", "attempt": 1,
        "url": "http://example"}


def test_disconnect_stops_the_events(store):
    """The function connect() returns disconnects every receiver."""
    connect(sender=pipeline)()
    with capture_logs() as logs:
        runner = Runner(pipeline, store)
        runner.submit({"id": "y"})
        runner.run()
    assert not [e for e in logs if e["event"].startswith("stage_")]
