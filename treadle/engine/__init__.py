"""The scheduler's parts, each the one owner of its concern.

- :mod:`.tasks`: the frozen keys of work in hand (stage, subtask, rollback);
- :mod:`.loop`: drain results, one group commit, dispatch;
- :mod:`.slots`: the in-flight table: concurrency slots, pool capacity, deadlines;
- :mod:`.pool`: where tasks run (own threads, or any ``Executor``);
- :mod:`.worker`, :mod:`.gate`, :mod:`.failures`: what runs in a pool thread;
- :mod:`.fanout`, :mod:`.rollback`: fan-outs and compensations in progress;
- :mod:`.report`: counters, and signals on a delivery thread of their own;
- :mod:`.lease`: registration, heartbeat thread, recovery, reconnection.
"""

from .loop import Scheduler
from .report import Counters

__all__ = ["Counters", "Scheduler"]
