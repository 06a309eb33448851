"""The floor: what plain ``sqlite3`` does for the same rows, one transaction per transition.

Schema (the rows treadle keeps, minus its bookkeeping): an item table, one
state row per (item, stage) holding the state and the output JSON, and an
append-only history. Setup inserts the N items and their 5 N pending state
rows in one transaction (like ``runner.submit``); then each stage completion
is its own transaction: ``BEGIN; UPDATE`` the state row to ``completed`` with
its output; ``INSERT`` a history row; ``COMMIT``. WAL mode, at
``synchronous=NORMAL`` or ``FULL``. Items walk their stages in order, item
after item.

A one-transaction-per-transition loop at ``FULL`` is bounded by the disk's
fsync rate, so only a sample of the transitions (``spec["sample"]``) is timed,
on a database already holding all N items' rows; the floor's rate is
sampled transitions / seconds.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from typing import Any

STAGES = ("s1", "s2", "s3", "s4", "s5")
PIPELINE = "floor"

SCHEMA = """
CREATE TABLE item (id INTEGER PRIMARY KEY, pipeline TEXT NOT NULL, item_id TEXT NOT NULL,
                   data TEXT NOT NULL, submitted_at REAL NOT NULL);
CREATE UNIQUE INDEX item_key ON item (pipeline, item_id);
CREATE TABLE stage (id INTEGER PRIMARY KEY, pipeline TEXT NOT NULL, item_id TEXT NOT NULL,
                    stage TEXT NOT NULL, state TEXT NOT NULL, output TEXT,
                    updated_at REAL NOT NULL);
CREATE UNIQUE INDEX stage_key ON stage (pipeline, item_id, stage);
CREATE TABLE history (id INTEGER PRIMARY KEY, pipeline TEXT NOT NULL, item_id TEXT NOT NULL,
                      stage TEXT, state TEXT NOT NULL, at REAL NOT NULL);
"""


def run_floor(spec: dict[str, Any]) -> dict[str, Any]:
    n, sync, path = int(spec["n"]), str(spec["synchronous"]).upper(), spec["path"]
    sample = min(int(spec["sample"]), n * len(STAGES))
    conn = sqlite3.connect(path, isolation_level=None)  # autocommit: explicit BEGIN/COMMIT
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={sync}")
        conn.executescript(SCHEMA)

        t0 = time.perf_counter()
        now = time.time()
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO item (pipeline, item_id, data, submitted_at) VALUES (?,?,?,?)",
            ((PIPELINE, str(i), json.dumps({"id": i}), now) for i in range(n)))
        conn.executemany(
            "INSERT INTO stage (pipeline, item_id, stage, state, updated_at) VALUES (?,?,?,'pending',?)",
            ((PIPELINE, str(i), s, now) for i in range(n) for s in STAGES))
        conn.execute("COMMIT")
        setup_s = time.perf_counter() - t0

        update = ("UPDATE stage SET state='completed', output=?, updated_at=? "
                  "WHERE pipeline=? AND item_id=? AND stage=?")
        insert = "INSERT INTO history (pipeline, item_id, stage, state, at) VALUES (?,?,?,'completed',?)"
        done = 0
        t0 = time.perf_counter()
        for i in range(n):
            item_id = str(i)
            for s in STAGES:
                if done == sample:
                    break
                at = time.time()
                conn.execute("BEGIN")
                conn.execute(update, (json.dumps({"ok": 1}), at, PIPELINE, item_id, s))
                conn.execute(insert, (PIPELINE, item_id, s, at))
                conn.execute("COMMIT")
                done += 1
            else:
                continue
            break
        seconds = time.perf_counter() - t0
        (completed,) = conn.execute("SELECT count(*) FROM stage WHERE state='completed'").fetchone()
        if completed != done:
            raise AssertionError(f"floor completed {completed} rows, expected {done}")
    finally:
        conn.close()
    for suffix in ("", "-wal", "-shm"):
        try:
            os.remove(path + suffix)
        except FileNotFoundError:
            pass
    return {
        "n": n, "synchronous": sync, "sqlite_version": sqlite3.sqlite_version,
        "setup_s": setup_s, "transitions": done, "seconds": seconds,
        "transitions_per_s": done / seconds,
    }
