"""Entry point of one measurement's child process.

``python -m benchmarks._child SPEC_JSON`` runs the measurement named by
``spec["kind"]`` and writes its result (plus peak RSS and CPU time of this
process) as JSON to ``spec["out"]``. A fresh process per measurement keeps
``ru_maxrss`` a per-measurement figure and keeps runs from warming each other.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

#: Wall-clock time at which this interpreter got to run benchmark code.
CHILD_STARTED = time.time()


def main(argv: list[str]) -> int:
    from .measure import cpu_seconds, peak_rss_kb, write_result

    spec = json.loads(argv[0])
    spec["child_started"] = CHILD_STARTED
    kind = spec["kind"]
    fn: Callable[[dict[str, Any]], dict[str, Any]]
    if kind == "floor":
        from .floor import run_floor as fn
    elif kind == "peer":
        from .peers import run_peer as fn
    else:
        from .workloads import KINDS

        fn = KINDS[kind]
        if spec.get("item_cache") is not None:
            # --item-cache: the byte bound of treadle's item JSON cache in every
            # store the measurement opens (the report says when it was used).
            from treadle.store.base import BaseStore

            BaseStore.ITEM_CACHE_BYTES = int(spec["item_cache"])
    result = fn(spec)
    result["peak_rss_kb"] = peak_rss_kb()
    result["cpu_s"] = cpu_seconds()
    write_result(spec["out"], result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
