"""Definition changes: fingerprints, plan, rerun --stale, versions, item migrations
(docs/changes.md), on the memory, SQLite and PostgreSQL stores."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from treadle import InvalidItemError, Pipeline, Runner, open_store, stage
from treadle.cli.target import load_target
from treadle.fingerprint import code_hash

pytestmark = pytest.mark.timeout(120)

#: Version 1: a -> b -> c. Each stage counts its calls in CALLS.
V1 = '''
from treadle import Pipeline, stage

CALLS = {}

def count(name):
    CALLS[name] = CALLS.get(name, 0) + 1

@stage()
def a(item):
    count("a")
    return item["n"]

@stage(after=[a])
def b(item, ctx):
    count("b")
    return ctx.outputs["a"] + ctx.outputs.get("x", 0)

@stage(after=[b])
def c(item, ctx):
    count("c")
    return ctx.outputs["b"] * 10

pipeline = Pipeline("changes", [a, b, c])
'''


def module(tmp_path: Path, name: str, source: str) -> Any:
    """Write ``source`` as ``name``.py and load its pipeline (a module version)."""
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    pipeline = load_target(f"{path}:pipeline")
    import sys

    return pipeline, sys.modules[pipeline.stages[pipeline.order[0]].fn.__module__]


def v2_with_x(tmp_path: Path) -> tuple[Pipeline, Any]:
    """V2: a -> x -> b -> c (a dependency inserted upstream of completed b)."""
    src = V1.replace('@stage(after=[a])\ndef b', '@stage()\ndef x(item):\n    count("x")\n'
                     '    return 100\n\n@stage(after=[a, x])\ndef b')
    src = src.replace('Pipeline("changes", [a, b, c])', 'Pipeline("changes", [a, x, b, c])')
    return module(tmp_path, "v2x", src)


def submit_and_run(runner: Runner, ids: range) -> None:
    runner.submit(*[{"id": f"i{n}", "n": n} for n in ids])
    report = runner.run()
    assert report.ok and not report.interrupted


def by_kind(plan: Any) -> dict[tuple[str, str | None], Any]:
    return {(c.kind, c.stage): c for c in plan.changes}


def test_a_dependency_inserted_upstream_makes_outputs_stale_and_rerun_recomputes_exactly_those(
        store, tmp_path):
    """V1 a->b->c, V2 a->x->b->c: plan counts b's stale outputs and c's downstream ones;
    rerun_stale recomputes exactly those; the history says why."""
    p1, m1 = module(tmp_path, "v1", V1)
    submit_and_run(Runner(p1, store), range(10))
    assert Runner(p1, store).plan().changes == ()

    p2, m2 = v2_with_x(tmp_path)
    runner = Runner(p2, store)
    plan = runner.plan()
    changes = by_kind(plan)
    assert set(changes) == {("added", "x"), ("changed", "b")}
    assert changes[("added", "x")].items == 10
    stale = changes[("changed", "b")]
    assert (stale.items, stale.downstream, stale.in_flight) == (10, 10, 0)
    assert stale.reasons == ("new dependency x",)
    assert plan.needs_decision

    submit_and_run(runner, range(10, 12))  # two new items: made by V2, not stale
    assert m2.CALLS == {"a": 2, "x": 12, "b": 2, "c": 2}
    stale = by_kind(runner.plan())[("changed", "b")]
    assert stale.items == 10 and stale.item_ids == tuple(sorted(f"i{n}" for n in range(10)))

    reset = runner.rerun_stale(actor="test")
    assert sorted(reset) == sorted((f"i{n}", s) for n in range(10) for s in ("b", "c"))
    m2.CALLS.clear()
    report = runner.run()
    assert m2.CALLS == {"b": 10, "c": 10}  # exactly the stale ones and their downstream
    assert report.ok
    assert runner.status("i3").stages["c"].output == (3 + 100) * 10
    assert runner.plan().changes == ()
    assert not runner.plan().needs_decision
    why = [h.details for h in runner.history("i3") if h.stage == "b" and h.state == "pending"]
    assert len(why) == 1 and why[0]["reason"] == "stale"
    assert "new dependency x" in why[0]["why"] and "fingerprint" in why[0]["why"]
    assert why[0]["superseded_output"] == 3


V_CODE = V1.replace('return ctx.outputs["b"] * 10', 'return ctx.outputs["b"] * 1000')
V_REFORMATTED = V1.replace('''def a(item):
    count("a")
    return item["n"]''', '''def a(item):
    """Now with a docstring."""
    # and a comment
    count( "a" )

    return (item["n"])''')


def test_changed_code_counts_old_outputs_formatting_does_not_and_version_overrides(store, tmp_path):
    """A stage's code changed: plan counts the items holding its old outputs; a change of
    comments or formatting alone changes nothing; version= overrides the code hash."""
    p1, _ = module(tmp_path, "c1", V1)
    submit_and_run(Runner(p1, store), range(7))

    p_fmt, _ = module(tmp_path, "c_fmt", V_REFORMATTED)
    assert p_fmt.fingerprints == p1.fingerprints
    assert Runner(p_fmt, store).plan().changes == ()

    p2, _ = module(tmp_path, "c2", V_CODE)
    assert p2.fingerprints["c"] != p1.fingerprints["c"]
    assert [p2.fingerprints[s] == p1.fingerprints[s] for s in "ab"] == [True, True]
    plan = Runner(p2, store).plan()
    (change,) = plan.changes
    assert (change.kind, change.stage, change.items, change.downstream) == ("changed", "c", 7, 0)
    assert change.reasons == ("code changed",)

    pinned = V1.replace("@stage(after=[b])", '@stage(after=[b], version="1")')
    p_pin1, _ = module(tmp_path, "pin1", pinned)
    p_pin2, _ = module(tmp_path, "pin2", pinned.replace("* 10", "* 1000"))
    p_pin3, _ = module(tmp_path, "pin3", pinned.replace('version="1"', 'version="2"'))
    assert p_pin1.fingerprints["c"] == p_pin2.fingerprints["c"]  # the label, not the code
    assert p_pin3.fingerprints["c"] != p_pin1.fingerprints["c"]
    runner = Runner(p_pin1, store)
    runner.rerun_stale()  # c's results now made under the label "1"
    runner.run()
    assert Runner(p_pin2, store).plan().changes == ()
    (change,) = Runner(p_pin3, store).plan().changes
    assert change.reasons == ("version 1 -> version 2",) and change.items == 7


def test_comments_docstrings_and_formatting_do_not_change_a_code_hash():
    """code_hash reads the syntax tree: comments, docstrings, blank lines do not count."""
    ns1: dict[str, Any] = {}
    ns2: dict[str, Any] = {}
    exec("def f(x):\n    return x + 1\n", ns1)  # no source: bytecode and constants count
    exec("def f(x):\n\n    return x+1  # same\n", ns2)
    assert code_hash(ns1["f"]) == code_hash(ns2["f"])

    def g(item):
        return item + 1

    def h(item):
        return item + 2

    assert code_hash(g) != code_hash(h)


V_SHAPES = V1.replace('@stage(after=[b])\ndef c', '@stage(after=[a])\ndef d(item, ctx):\n'
                      '    count("d")\n    return 1\n\n@stage(after=["b2"])\ndef c')
V_SHAPES = V_SHAPES.replace("@stage(after=[a])\ndef b", '@stage(after=[a], name="b2")\ndef b')
V_SHAPES = V_SHAPES.replace('Pipeline("changes", [a, b, c])',
                            'Pipeline("changes", [a, b, d], renames={"b": "b2"})')


def test_added_removed_and_renamed_stages_counts_match_what_run_does(store, tmp_path):
    """V1 a->b->c; V2 renames b to b2, removes c, adds d: plan's counts are what run does."""
    p1, _ = module(tmp_path, "s1", V1)
    submit_and_run(Runner(p1, store), range(6))
    p2, m2 = module(tmp_path, "s2", V_SHAPES)
    runner = Runner(p2, store)
    changes = by_kind(runner.plan())
    assert set(changes) == {("added", "d"), ("renamed", "b"), ("removed", "c")}
    assert changes[("added", "d")].items == 6 and changes[("added", "d")].needs_decision
    assert changes[("renamed", "b")].items == 6 and changes[("renamed", "b")].new == "b2"
    assert changes[("removed", "c")].items == 6 and not changes[("removed", "c")].needs_decision
    report = runner.run()
    assert m2.CALLS == {"d": 6}  # d ran for every item; b2 kept b's records
    assert report.executed == changes[("added", "d")].items
    assert runner.status("i4").stages["b2"].output == 4
    after = by_kind(runner.plan())
    assert set(after) == {("removed", "c")}  # kept, archived, no decision
    assert not runner.plan().needs_decision


REVIEWED = '''
from treadle import Pipeline, Review, stage

@stage()
def a(item):
    return item["n"]

@stage(after=[a])
def check(item, ctx):
    return Review({"n": ctx.outputs["a"]}, message="ok?")

pipeline = Pipeline("reviewed", [a, check])
'''


def test_a_stale_reviewed_stage_goes_back_to_review_with_the_earlier_decision(store, tmp_path):
    """rerun --stale on a reviewed stage: it awaits review again, showing the earlier decision."""
    p1, _ = module(tmp_path, "r1", REVIEWED)
    r1 = Runner(p1, store)
    r1.submit({"id": "k", "n": 1})
    r1.run()
    r1.approve("k", "check", data={"n": 1, "ok": True}, reviewer="ana", note="fine")
    r1.run()
    p2, _ = module(tmp_path, "r2", REVIEWED.replace('message="ok?"', 'message="still ok?"'))
    r2 = Runner(p2, store)
    assert [c.stage for c in r2.plan().stale()] == ["check"]
    assert r2.rerun_stale() == [("k", "check")]
    r2.run()
    status = r2.status("k").stages["check"]
    assert status.state == "awaiting_review"
    assert status.review is not None and status.review.message == "still ok?"
    previous = status.review.previous
    assert previous is not None
    assert (previous["decision"], previous["reviewer"], previous["note"]) == ("approved", "ana", "fine")
    assert previous["data"] == {"n": 1}  # what the reviewer saw then
    assert "code changed" in previous["why"]


def test_on_change_rerun_reruns_stale_stages_when_a_runner_starts(store, tmp_path):
    """@stage(on_change="rerun"): no decision needed; the next run recomputes them."""
    p1, _ = module(tmp_path, "o1", V1)
    submit_and_run(Runner(p1, store), range(4))
    src = V_CODE.replace("@stage(after=[b])", '@stage(after=[b], on_change="rerun")')
    p2, m2 = module(tmp_path, "o2", src)
    runner = Runner(p2, store)
    (change,) = runner.plan().changes
    assert change.items == 4 and not change.needs_decision
    runner.run()
    assert m2.CALLS == {"c": 4}
    assert runner.status("i2").stages["c"].output == 2000
    assert runner.plan().changes == ()


def test_versions_are_recorded_on_items_and_results(store, tmp_path):
    """Pipeline(version=...) is recorded on each item at submission and on each result."""
    p1, _ = module(tmp_path, "ver1", V1.replace('[a, b, c])', '[a, b, c], version="2026.11")'))
    submit_and_run(Runner(p1, store), range(2))
    p2, _ = module(tmp_path, "ver2", V1.replace('[a, b, c])', '[a, b, c], version="2026.12")'))
    runner = Runner(p2, store)
    submit_and_run(runner, range(2, 3))
    old, new = runner.status("i0"), runner.status("i2")
    assert (old.version, new.version) == ("2026.11", "2026.12")
    assert {s.version for s in old.stages.values()} == {"2026.11"}
    assert {s.version for s in new.stages.values()} == {"2026.12"}
    assert old.stages["a"].fingerprint == p2.fingerprints["a"]
    assert runner.plan().changes == ()  # a version label alone changes no result


TRACK_V1 = '''
import attrs
from treadle import Pipeline, stage

@attrs.frozen
class Track:
    id: str
    path: str

@stage()
def scan(item):
    return len(item.path)

pipeline = Pipeline("tracks", [scan], item_type=Track, version="1")
'''
TRACK_V2 = TRACK_V1.replace("    path: str\n", "    path: str\n    size: int\n").replace(
    'version="1"', 'version="2"').replace("len(item.path)", "item.size")
MIGRATION = '''
import os, time

@pipeline.migrate(from_version="1")
def add_size(data):
    delay = float(os.environ.get("MIGRATION_DELAY", "0"))
    if delay:
        with open(os.environ["MIGRATION_LOG"], "a") as log:
            log.write(data["id"] + "\\n")
        time.sleep(delay)
    return {**data, "size": len(data["path"])}
'''


def test_without_a_migration_plan_lists_old_items_and_restoring_names_the_field(store, tmp_path):
    """item_type gained a field: plan lists the items it cannot restore; restoring one fails
    with an error naming the field and the versions."""
    p1, _ = module(tmp_path, "t1", TRACK_V1)
    runner1 = Runner(p1, store)
    runner1.submit(*[p1.item_type(f"t{n}", "a" * n) for n in range(5)])
    p2, _ = module(tmp_path, "t2", TRACK_V2)
    runner = Runner(p2, store)
    plan = runner.plan()
    (change,) = [c for c in plan.changes if c.kind == "unrestorable"]
    assert change.items == 5 and change.needs_decision
    assert "size" in change.summary and "'1'" in change.summary and "'2'" in change.summary
    with pytest.raises(InvalidItemError) as err:
        runner.item("t3")
    assert "size" in str(err.value) and "'1'" in str(err.value) and "'2'" in str(err.value)

    p3, _ = module(tmp_path, "t3", TRACK_V2 + MIGRATION)
    runner3 = Runner(p3, store)
    (change,) = runner3.plan().changes
    assert (change.kind, change.items, change.old, change.new) == ("migrate", 5, "1", "2")
    assert not runner3.plan().needs_decision
    report = runner3.run()
    assert report.ok and runner3.item("t3") == p3.item_type("t3", "aaa", 3)
    assert runner3.status("t3").version == "2"
    assert runner3.status("t4").stages["scan"].output == 4
    assert [h.details for h in runner3.history("t1") if h.state == "migrated"] == [
        {"reason": "migrated", "from_version": "1", "to_version": "2"}]
    assert runner3.plan().changes == ()


def test_pipeline_options_are_checked():
    """Bad version, on_change or migration declarations are named errors."""
    from treadle import InvalidStageError, PipelineDefinitionError

    @stage()
    def a(item):
        return 1

    with pytest.raises(PipelineDefinitionError, match="on_change"):
        Pipeline("p", [a], on_change="sometimes")  # type: ignore[arg-type]
    with pytest.raises(PipelineDefinitionError, match="version"):
        Pipeline("p", [a], version="")
    with pytest.raises(InvalidStageError, match="on_change"):
        stage(on_change="never")(lambda item: 1)  # type: ignore[arg-type]
    with pytest.raises(PipelineDefinitionError, match="needs a version"):
        Pipeline("p", [a]).migrate(from_version="1")
    p = Pipeline("p", [a], version="2")
    p.migrate(from_version="1")(lambda d: d)
    with pytest.raises(PipelineDefinitionError, match="two migrations"):
        p.migrate(from_version="1")(lambda d: d)


def test_a_plan_as_json_is_plain_data(store, tmp_path):
    """plan.to_json() is plain JSON data."""
    p1, _ = module(tmp_path, "j1", V1)
    submit_and_run(Runner(p1, store), range(2))
    p2, _ = v2_with_x(tmp_path)
    data = json.loads(json.dumps(Runner(p2, store).plan().to_json()))
    assert data["needs_decision"] is True and data["items"] == 2
    assert {(c["kind"], c["stage"]) for c in data["changes"]} == {("added", "x"), ("changed", "b")}


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_migration_upgrades_1000_items_once_even_when_killed_midway(kind, tmp_path, request):
    """A runner killed (SIGKILL) while migrating leaves whole batches migrated; the next
    one finishes: every item is migrated exactly once."""
    import os
    import signal
    import subprocess
    import sys
    import time

    url = (f"sqlite:///{tmp_path / 'm.db'}" if kind == "sqlite"
           else request.getfixturevalue("postgres_url"))
    p1, _ = module(tmp_path, "k1", TRACK_V1)
    Runner(p1, open_store(url)).submit(*[p1.item_type(f"t{n:04}", "x" * (n % 7)) for n in range(1000)])
    (tmp_path / "k2.py").write_text(textwrap.dedent(TRACK_V2 + MIGRATION))
    log = tmp_path / "calls.log"
    env = {**os.environ, "MIGRATION_DELAY": "0.003", "MIGRATION_LOG": str(log), "TREADLE_DB": url}
    proc = subprocess.Popen([sys.executable, "-m", "treadle", "run", f"{tmp_path / 'k2.py'}:pipeline"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if log.exists() and len(log.read_text().splitlines()) >= 300:
            break
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)

    p2, _ = module(tmp_path, "k2b", TRACK_V2 + MIGRATION)
    store = open_store(url)
    runner = Runner(p2, store)
    (change,) = [c for c in runner.plan().changes if c.kind == "migrate"]
    migrated_before = 1000 - change.items
    assert 0 < migrated_before < 1000 and migrated_before % 200 == 0  # whole transactions
    assert runner.run().ok
    versions = {runner.status(f"t{n:04}").version for n in range(1000)}
    assert versions == {"2"}
    assert runner.item("t0010") == p2.item_type("t0010", "xxx", 3)
    migrated = [sum(1 for h in runner.history(f"t{n:04}") if h.state == "migrated")
                for n in range(1000)]
    assert migrated == [1] * 1000
    assert runner.plan().changes == ()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_schema_2_store_is_migrated_and_its_old_results_have_unknown_fingerprints(
        kind, tmp_path, request):
    """A store written before fingerprints (schema 2) gains them: its rows keep working,
    their fingerprint is unknown, and plan reports them without asking for a decision."""
    url = (f"sqlite:///{tmp_path / 'old.db'}" if kind == "sqlite"
           else request.getfixturevalue("postgres_url"))
    p1, _ = module(tmp_path, "old1", V1)
    store = open_store(url)
    submit_and_run(Runner(p1, store), range(3))
    with store.transaction() as tx:  # back to schema 2: its tables had none of this
        tx._exec("DROP TABLE treadle_definition")
        for table, column in (("treadle_stage", "fingerprint"), ("treadle_stage", "version"),
                              ("treadle_item", "version")):
            tx._exec(f"ALTER TABLE {table} DROP COLUMN {column}")
        tx._exec("UPDATE treadle_meta SET value='2' WHERE key='schema_version'")
    store.close()

    new = open_store(url)
    from treadle.store import schema

    assert new._read("SELECT value FROM treadle_meta WHERE key='schema_version'") == [
        (str(schema.SCHEMA_VERSION),)]
    runner = Runner(p1, new)
    assert runner.status("i1").stages["c"].output == 10
    assert runner.status("i1").stages["c"].fingerprint is None
    plan = runner.plan()
    assert {(c.kind, c.stage, c.items) for c in plan.changes} == {
        ("unknown", "a", 3), ("unknown", "b", 3), ("unknown", "c", 3)}
    assert not plan.needs_decision
    assert "made before fingerprints" in plan.changes[0].summary
    assert runner.rerun_stale() == []  # unknown is not stale
    submit_and_run(runner, range(3, 5))  # new results get fingerprints
    assert runner.status("i4").stages["c"].fingerprint == p1.fingerprints["c"]
    assert {c.items for c in runner.plan().changes} == {3}


def test_cli_plan_gates_a_deploy_and_rerun_stale_recomputes(tmp_path):
    """python -m treadle plan exits 0 when nothing needs a decision, 1 otherwise (--json
    too); rerun --stale --yes resets the stale results; a missing store is exit 2."""
    import os
    import subprocess
    import sys

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "treadle", *args, "--db", db],
                              capture_output=True, text=True, timeout=120, env=dict(os.environ))

    db = f"sqlite:///{tmp_path / 'cli.db'}"
    (tmp_path / "one.py").write_text(textwrap.dedent(V1))
    src = V1.replace('@stage(after=[a])\ndef b', '@stage()\ndef x(item):\n    count("x")\n'
                     '    return 100\n\n@stage(after=[a, x])\ndef b')
    (tmp_path / "two.py").write_text(src.replace("[a, b, c])", "[a, x, b, c])"))
    one, two = f"{tmp_path / 'one.py'}:pipeline", f"{tmp_path / 'two.py'}:pipeline"
    missing = subprocess.run([sys.executable, "-m", "treadle", "plan", one, "--db",
                              f"sqlite:///{tmp_path / 'none.db'}"], capture_output=True, text=True,
                             timeout=120)
    assert missing.returncode == 2 and "no store at" in missing.stderr
    assert cli("run", one, "--item", '{"id": "q1", "n": 1}', "--item", '{"id": "q2", "n": 2}'
               ).returncode == 0
    same = cli("plan", one)
    assert same.returncode == 0, same.stderr
    assert "changes nothing" in same.stdout
    changed = cli("plan", two)
    assert changed.returncode == 1, changed.stderr
    assert "new dependency x" in changed.stdout and "needs a decision" in changed.stdout
    data = json.loads(cli("plan", two, "--json").stdout)
    assert {(c["kind"], c["stage"], c["items"]) for c in data["changes"]} == {
        ("added", "x", 2), ("changed", "b", 2)}
    assert cli("run", two).returncode == 0
    rerun = cli("rerun", two, "--stale", "--yes")
    assert rerun.returncode == 0, rerun.stderr
    assert "4 stage result(s) of 2 item(s) back to pending" in rerun.stdout
    assert cli("run", two).returncode == 0
    assert cli("plan", two).returncode == 0
    history = json.loads(cli("history", two, "q1", "--json").stdout)
    reasons = [h["details"]["why"] for h in history
               if h["stage"] == "b" and isinstance(h.get("details"), dict)
               and h["details"].get("reason") == "stale"]
    assert len(reasons) == 1 and "new dependency x" in reasons[0]
    assert cli("rerun", two, "--stale", "--stage", "nope").returncode == 2
    assert cli("rerun", two).returncode == 2  # neither ITEM --from nor --stale


def test_cli_reviews_show_the_earlier_decision_of_a_stale_review(tmp_path):
    """reviews (table and --json) show the decision made before rerun --stale."""
    import os
    import subprocess
    import sys

    db = f"sqlite:///{tmp_path / 'r.db'}"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "treadle", *args, "--db", db],
                              capture_output=True, text=True, timeout=120, env=dict(os.environ))

    (tmp_path / "rv1.py").write_text(textwrap.dedent(REVIEWED))
    (tmp_path / "rv2.py").write_text(textwrap.dedent(REVIEWED).replace('"ok?"', '"sure?"'))
    one, two = f"{tmp_path / 'rv1.py'}:pipeline", f"{tmp_path / 'rv2.py'}:pipeline"
    assert cli("run", one, "--item", '{"id": "k", "n": 1}').returncode == 0
    assert cli("approve", one, "k", "check", "--reviewer", "ana").returncode == 0
    assert cli("rerun", two, "--stale", "--yes").returncode == 0
    assert cli("run", two).returncode == 0
    table = cli("reviews", two)
    assert "earlier: approved by ana" in table.stdout, table.stdout
    (entry,) = json.loads(cli("reviews", two, "--json").stdout)
    assert entry["message"] == "sure?" and entry["previous"]["decision"] == "approved"


@pytest.mark.timeout(120)
def test_items_version_filter_and_the_submitted_event_name_the_version(tmp_path: Path) -> None:
    """items --version V lists the items submitted at V; each one's submitted event says V."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    module = tmp_path / "versioned.py"
    db = f"sqlite:///{tmp_path / 'v.db'}"

    def write(version: str) -> None:
        module.write_text(textwrap.dedent(f"""
            from treadle import Pipeline, stage

            @stage()
            def a(item):
                return 1

            pipeline = Pipeline("versioned", [a], version={version!r})
        """))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "treadle", *args, "--db", db], cwd=root,
                              capture_output=True, text=True, timeout=60)

    write("1")
    assert cli("submit", f"{module}:pipeline", "--item", '{"id": "old"}').returncode == 0
    write("2")
    assert cli("submit", f"{module}:pipeline", "--item", '{"id": "new"}').returncode == 0
    listed = cli("items", f"{module}:pipeline", "--version", "1", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [r["item_id"] for r in json.loads(listed.stdout)] == ["old"]
    events = [json.loads(line) for line in cli("events", f"{module}:pipeline", "--json").stdout.splitlines()]
    assert [(e["item_id"], e["details"]) for e in events if e["state"] == "submitted"] == [
        ("old", {"version": "1"}), ("new", {"version": "2"})]
