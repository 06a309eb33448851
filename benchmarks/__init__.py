"""treadle's benchmark suite: ``python -m benchmarks [--quick] [--json PATH] [--markdown PATH]``.

Workloads (no-op stages returning ``{"ok": 1}``):

- **W1 linear**: N items through 5 stages in a line, submit + run to the end.
- **W4 status**: ``runner.counts()`` and ``runner.items(stage=, state=, limit=100)``
  on a store holding many (item, stage) rows.
- **W5 resume**: from a fresh process start to the first stage executing, on an
  SQLite store of N items of which half are complete.

Each is measured on ``memory://``, SQLite ``synchronous=full`` (the default) and
SQLite ``synchronous=normal``, every measurement in a fresh child process (so
peak RSS is per measurement), against a floor measured in the same run: a plain
``sqlite3`` loop writing the same rows with one transaction per transition.

Nothing here is imported by treadle; importing this package is free of side
effects (the child processes import treadle themselves).
"""
