"""Peers: the same workloads written for other durable-execution libraries.

Each peer module runs inside a measurement's child process and is imported
only there; the parent decides from installed *distributions* (no import)
whether a peer can run. Peers are optional and are not dependencies of
treadle; install them with::

    pip install dbos langgraph langgraph-checkpoint-sqlite

Workloads (the same logical work as treadle's, one item = one workflow run):

- **W1 linear**: 5 no-op steps in a line returning ``{"ok": 1}``;
  5 transitions per item.
- **W2 fan-out**: a fan step whose 8 subtasks return a small dict, then a
  join reading their outputs; 10 transitions per item (fan + 8 subtasks + join).

Each peer uses its own durable SQLite default, see ``PEERS``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

INSTALL = "pip install dbos langgraph langgraph-checkpoint-sqlite"


@dataclass(frozen=True)
class Peer:
    label: str
    module: str
    dists: tuple[str, ...]
    durability: str
    shape: dict[str, str]


PEERS: dict[str, Peer] = {
    "dbos": Peer(
        label="DBOS Transact",
        module="benchmarks.peers.dbos_transact",
        dists=("dbos",),
        durability="SQLite system database `sqlite:///file` with DBOS's defaults "
                   "(rollback journal, synchronous=FULL); every step's output is "
                   "checkpointed before the workflow goes on",
        shape={"W1": "one workflow per item calling 5 `@DBOS.step()` functions",
               "W2": "one workflow per item calling 8 subtask steps, then a fan step "
                     "recording their outputs, then a join step (steps of a synchronous "
                     "workflow run one after another)"},
    ),
    "langgraph": Peer(
        label="LangGraph",
        module="benchmarks.peers.langgraph_sqlite",
        dists=("langgraph", "langgraph-checkpoint-sqlite"),
        durability="`SqliteSaver` checkpointer on a file (WAL, synchronous=FULL, the "
                   "stdlib sqlite3 defaults), `durability=\"sync\"`: each superstep's "
                   "checkpoint is written before the next step starts",
        shape={"W1": "a `StateGraph` of 5 nodes in a line, one `invoke` (thread) per item",
               "W2": "a `StateGraph`: fan node -> 8 subtask nodes in parallel (one "
                     "superstep) -> join node, one `invoke` (thread) per item"},
    ),
}


def versions(name: str) -> dict[str, str] | None:
    """Installed versions of the peer's distributions, or None if any is missing."""
    out = {}
    for dist in PEERS[name].dists:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            return None
    return out


def run_peer(spec: dict[str, Any]) -> dict[str, Any]:
    """Child-process entry point: ``spec["peer"]`` runs ``spec["workload"]``."""
    module = importlib.import_module(PEERS[spec["peer"]].module)
    result: dict[str, Any] = module.run(spec)
    return dict(result, peer=spec["peer"], workload=spec["workload"],
                versions=versions(spec["peer"]))
