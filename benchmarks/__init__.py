"""treadle's benchmark suite: ``python -m benchmarks [--quick] [--json PATH] [--markdown PATH]``.

Workloads (no-op stages):

- **W1 linear**: N items through 5 stages in a line, submit + run to the end.
- **W2 fan-out**: N items; stage ``fan`` returns ``FanOut`` of 8 subtasks, stage
  ``join`` reads their outputs (10 transitions per item: 2 stages + 8 subtasks).
- **W3 diamond + review**: a -> b, a -> c, b + c -> review (``Review`` for every
  item) -> publish; run, approve half the items one by one, run again.
- **W4 status**: ``runner.counts()`` and ``runner.items(stage=, state=, limit=100)``
  on a store holding many (item, stage) rows.
- **W5 resume**: from a fresh process start to the first stage executing, on an
  SQLite store of N items of which half are complete.

Each is measured on ``memory://``, SQLite ``synchronous=full`` (the default) and
SQLite ``synchronous=normal``, and W1-W3 on PostgreSQL when
``$TREADLE_TEST_POSTGRES_URL`` is set (a fresh schema per measurement). Every
measurement runs in a fresh child process (so peak RSS is per measurement).
W1 is compared with a floor measured in the same run: a plain ``sqlite3`` loop
writing the same rows with one transaction per transition. W1 and W2 are also
run on peers, DBOS Transact and LangGraph, when installed (see ``peers/``); the
results end with the benchmark issue's targets and whether each is met
(``targets.py``).

Nothing here is imported by treadle; importing this package is free of side
effects (the child processes import treadle and the peers themselves).
"""
