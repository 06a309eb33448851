"""The tables of the SQL store, as peewee models bound to one database.

peewee owns the schema (DDL, indexes, future migrations) and the
connections; the hot path issues its own prepared SQL over those
connections (see ``sql.py``), so no query is built per transition.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import peewee as pw

#: Bump when the tables change, and add the step that gets there to MIGRATIONS.
SCHEMA_VERSION = 8

#: Partial indexes of what lease recovery reads every second: the running stage
#: rows and the items whose rollback waits or runs (few of either, among many
#: rows). The queries repeat these predicates literally (``sql.py``), so that
#: SQLite and PostgreSQL both use them.
RECOVERY_INDEXES = (
    ("CREATE INDEX IF NOT EXISTS treadle_stage_running ON treadle_stage (pipeline, id) "
     "WHERE state = 'running'"),
    ("CREATE INDEX IF NOT EXISTS treadle_item_rolling_back ON treadle_item (pipeline, id) "
     "WHERE state LIKE 'rolling_back%'"),
)


def _add_recovery_indexes(migrator: Any) -> None:
    """Schema 2: index the rows ``recover()`` looks for."""
    db = migrator.database
    for sql in RECOVERY_INDEXES:
        # psycopg2 formats parameters even when there are none: escape the LIKE's %
        db.execute_sql(sql.replace("%", "%%") if isinstance(db, pw.PostgresqlDatabase) else sql)


def _add_control_table(migrator: Any) -> None:
    """Schema 3: the control rows (pauses, resumes, cancellations) every runner follows."""
    db = migrator.database
    models = make_models(db)
    db.create_tables([models["Control"]], safe=True)
def _add_fingerprints(migrator: Any) -> None:
    """Schema 4: the fingerprint and pipeline version of each stage result, the
    version of each item, and the table of stage definitions by fingerprint.
    Rows stored earlier keep NULL: made before fingerprints (docs/changes.md)."""
    from playhouse.migrate import migrate

    db = migrator.database
    have = {(t, c.name) for t in ("treadle_stage", "treadle_item") for c in db.get_columns(t)}
    wanted = [("treadle_stage", "fingerprint"), ("treadle_stage", "version"),
              ("treadle_item", "version")]
    migrate(*(migrator.add_column(t, c, pw.TextField(null=True))
              for t, c in wanted if (t, c) not in have))  # a step may run again after a crash
    db.create_tables([make_models(migrator.database)["Definition"]], safe=True)


#: The claim's index (schema 5): ready rows, highest priority first, then oldest.
READY_INDEX = ("CREATE INDEX IF NOT EXISTS treadle_stage_ready_p ON treadle_stage "
               "(pipeline, priority DESC, id) WHERE state = 'pending' AND ready = 1")


def _add_flow_control(migrator: Any) -> None:
    """Schema 5: priorities on items and stage rows, the claim index ordered by
    priority, and the table of limits shared by runners (docs/flow-control.md)."""
    from playhouse.migrate import migrate

    db = migrator.database
    have = {(t, c.name) for t in ("treadle_stage", "treadle_item") for c in db.get_columns(t)}
    migrate(*(migrator.add_column(t, "priority",
                                  pw.IntegerField(default=0, constraints=[pw.SQL("DEFAULT 0")]))
              for t in ("treadle_stage", "treadle_item") if (t, "priority") not in have))
    db.execute_sql("DROP INDEX IF EXISTS treadle_stage_ready")
    db.execute_sql(READY_INDEX)
    db.create_tables([make_models(db)["Limit"]], safe=True)


def _add_child_table(migrator: Any) -> None:
    """Schema 6: the links from a stage that spawned child items to those children."""
    db = migrator.database
    db.create_tables([make_models(db)["Child"]], safe=True)  # safe: a step may run again


def _add_fanout_plans(migrator: Any) -> None:
    """Schema 8: the latest subtask plan of each fan-out, to resume it after a crash
    without calling its stage function again (docs/fanout.md)."""
    db = migrator.database
    db.create_tables([make_models(db)["FanOutPlan"]], safe=True)  # safe: a step may run again
#: items(stage, state) oldest first (schema 7): ``id`` breaks ties of ``updated_at`` inside
#: the index (rows of one submission share it), so PostgreSQL reads the first rows of
#: the index in order instead of sorting every row of a tie; SQLite has the row id there.
STAGE_STATE_INDEX = ("CREATE INDEX IF NOT EXISTS treadle_stage_by_state ON treadle_stage "
                     "(pipeline, stage, state, updated_at, id)")


def _add_counters(migrator: Any) -> None:
    """Schema 7: the stage counters (``store/counts.py``), built from the stage rows, and
    the index of ``items(stage, state)`` with ``id`` as its last column."""
    from .counts import rebuild

    db = migrator.database
    db.create_tables([make_models(db)["Count"]], safe=True)  # safe: a step may run again
    rebuild(db.execute_sql)
    db.execute_sql("DROP INDEX IF EXISTS stagerun_pipeline_stage_state_updated_at")  # peewee's name
    db.execute_sql(STAGE_STATE_INDEX)


#: version -> step from version - 1, given a ``playhouse.migrate.SchemaMigrator``
#: (call ``playhouse.migrate.migrate(migrator.add_column(...), ...)``). Steps run
#: in order, in one transaction, under the store's exclusive lock; a version
#: without a step changes no table.
MIGRATIONS: dict[int, Callable[[Any], None]] = {
    2: _add_recovery_indexes,
    3: _add_control_table,
    4: _add_fingerprints,
    5: _add_flow_control,
    6: _add_child_table,
    7: _add_counters,
    8: _add_fanout_plans,
}


def make_models(db: pw.Database) -> dict[str, type[pw.Model]]:
    """Model classes bound to ``db`` (one set per store, so stores never share state)."""

    class Base(pw.Model):
        class Meta:
            database = db

    class Meta(Base):
        key = pw.CharField(primary_key=True, max_length=200)
        value = pw.TextField()

        class Meta:
            table_name = "treadle_meta"

    class Item(Base):
        id = pw.AutoField()
        pipeline = pw.TextField()
        item_id = pw.TextField()
        data = pw.TextField()
        state = pw.TextField(default="pending")
        submitted_at = pw.DoubleField()
        updated_at = pw.DoubleField()
        version = pw.TextField(null=True)
        priority = pw.IntegerField(default=0, constraints=[pw.SQL("DEFAULT 0")])

        class Meta:
            table_name = "treadle_item"
            indexes = ((("pipeline", "item_id"), True), (("pipeline", "state"), False))

    class StageRun(Base):
        id = pw.AutoField()
        pipeline = pw.TextField()
        item_id = pw.TextField()
        stage = pw.TextField()
        state = pw.TextField(default="pending")
        ready = pw.IntegerField(default=0)
        attempt = pw.IntegerField(default=0)
        owner = pw.TextField(null=True)
        not_before = pw.DoubleField(default=0.0)
        output = pw.TextField(null=True)
        error = pw.TextField(null=True)
        review = pw.TextField(null=True)
        updated_at = pw.DoubleField()
        fingerprint = pw.TextField(null=True)
        version = pw.TextField(null=True)
        priority = pw.IntegerField(default=0, constraints=[pw.SQL("DEFAULT 0")])

        class Meta:
            table_name = "treadle_stage"
            indexes = (
                (("pipeline", "item_id", "stage"), True),
            )

    # the claim's order: highest priority first, then oldest (schema 5, READY_INDEX)
    StageRun.add_index(
        StageRun.index(StageRun.pipeline, StageRun.priority.desc(), StageRun.id,
                       name="treadle_stage_ready_p",
                       where=(StageRun.state == "pending") & (StageRun.ready == 1))
    )

    # items(stage, state) oldest first (schema 7, STAGE_STATE_INDEX)
    StageRun.add_index(
        StageRun.index(StageRun.pipeline, StageRun.stage, StageRun.state, StageRun.updated_at,
                       StageRun.id, name="treadle_stage_by_state"))

    class SubtaskRun(Base):
        id = pw.AutoField()
        pipeline = pw.TextField()
        item_id = pw.TextField()
        stage = pw.TextField()
        name = pw.TextField()
        state = pw.TextField(default="pending")
        attempt = pw.IntegerField(default=0)
        owner = pw.TextField(null=True)
        output = pw.TextField(null=True)
        error = pw.TextField(null=True)
        updated_at = pw.DoubleField()

        class Meta:
            table_name = "treadle_subtask"
            indexes = ((("pipeline", "item_id", "stage", "name"), True),)

    class History(Base):
        id = pw.BigAutoField()
        pipeline = pw.TextField()
        item_id = pw.TextField()
        stage = pw.TextField(null=True)
        subtask = pw.TextField(null=True)
        state = pw.TextField()
        attempt = pw.IntegerField(default=0)
        actor = pw.TextField()
        at = pw.DoubleField()
        error = pw.TextField(null=True)
        traceback = pw.TextField(null=True)
        details = pw.TextField(null=True)

        class Meta:
            table_name = "treadle_history"
            indexes = ((("pipeline", "item_id", "id"), False),)

    class Runner(Base):
        owner = pw.CharField(primary_key=True, max_length=200)
        host = pw.TextField()
        pid = pw.IntegerField()
        started_at = pw.DoubleField()
        expires_at = pw.DoubleField()

        class Meta:
            table_name = "treadle_runner"

    class Control(Base):
        """What people asked every runner to honour, in order: ``pause`` / ``resume``
        (target: a stage, or "" for the whole pipeline) and ``cancel`` (target: an
        item). Runners read the rows after the last one they saw."""

        id = pw.BigAutoField()
        pipeline = pw.TextField()
        kind = pw.TextField()
        target = pw.TextField()
        at = pw.DoubleField()
        actor = pw.TextField()
        reason = pw.TextField(null=True)

        class Meta:
            table_name = "treadle_control"
            indexes = ((("pipeline", "id"), False),)

    class Definition(Base):
        """A stage definition seen by a runner: its fingerprint and the parts hashed."""

        id = pw.AutoField()
        pipeline = pw.TextField()
        stage = pw.TextField()
        fingerprint = pw.TextField()
        definition = pw.TextField()
        seen_at = pw.DoubleField()

        class Meta:
            table_name = "treadle_definition"
            indexes = ((("pipeline", "stage", "fingerprint"), True),)

    class Limit(Base):
        """A limit every runner shares (schema 5): the token bucket of a stage's
        rate (``tokens`` as of ``updated_at``), and the row a claim locks before it
        counts a global concurrency limit's running rows."""

        pipeline = pw.TextField()
        key = pw.TextField()
        tokens = pw.DoubleField(default=0.0)
        updated_at = pw.DoubleField(default=0.0)

        class Meta:
            table_name = "treadle_limit"
            primary_key = pw.CompositeKey("pipeline", "key")

    class Child(Base):
        """A child item spawned by (pipeline, item_id, stage) into ``child_pipeline``."""

        id = pw.AutoField()
        pipeline = pw.TextField()
        item_id = pw.TextField()
        stage = pw.TextField()
        child_pipeline = pw.TextField()
        child_id = pw.TextField()

        class Meta:
            table_name = "treadle_child"
            indexes = ((("pipeline", "item_id", "stage", "child_pipeline", "child_id"), True),
                       (("child_pipeline", "child_id"), False))

    class FanOutPlan(Base):
        """The latest FanOut of (pipeline, item_id, stage): started at ``attempt``, its
        subtasks as data (``plan``; NULL when they cannot be rebuilt from data), and
        ``resume_at``: the attempt whose claim went back to pending unfinished, so the
        next claim rebuilds the subtasks from the plan (schema 8)."""

        pipeline = pw.TextField()
        item_id = pw.TextField()
        stage = pw.TextField()
        attempt = pw.IntegerField()
        plan = pw.TextField(null=True)
        resume_at = pw.IntegerField(null=True)

        class Meta:
            table_name = "treadle_fanout_plan"
            primary_key = pw.CompositeKey("pipeline", "item_id", "stage")
    class Count(Base):
        """How many stage rows of (pipeline, stage) are in ``state`` (schema 7; kept by
        the transactions that move the rows, see ``store/counts.py``)."""

        pipeline = pw.TextField()
        stage = pw.TextField()
        state = pw.TextField()
        n = pw.BigIntegerField(default=0)

        class Meta:
            table_name = "treadle_count"
            primary_key = pw.CompositeKey("pipeline", "stage", "state")

    models: dict[str, Any] = {
        "Meta": Meta, "Item": Item, "StageRun": StageRun, "SubtaskRun": SubtaskRun,
        "History": History, "Runner": Runner, "Control": Control, "Definition": Definition,
        "Limit": Limit, "Child": Child, "FanOutPlan": FanOutPlan, "Count": Count,
    }
    return models
