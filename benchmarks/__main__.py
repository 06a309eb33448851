"""``python -m benchmarks``: run the suite, print a table, optionally write JSON / markdown."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
import tempfile
import time
from typing import Any

from .peers import INSTALL, PEERS
from .report import format_markdown, format_text, git_info, load_average, machine_info
from .suite import PRESETS, STORES, WORKLOADS, Settings, Suite


def _sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(x.replace("_", "")) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError("sizes must be positive integers")
    return sizes


def _choices(allowed: tuple[str, ...] | list[str], none: bool = False) -> Any:
    def parse(text: str) -> list[str]:
        if none and text.strip() == "none":
            return []
        picked = [x.strip() for x in text.split(",") if x.strip()]
        unknown = [x for x in picked if x not in allowed]
        if unknown or not picked:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(unknown) or 'empty list'}; choose from {', '.join(allowed)}")
        return picked
    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark treadle against a plain-sqlite3 floor and, when installed, "
                    "against DBOS Transact and LangGraph. PostgreSQL is measured when "
                    "$TREADLE_TEST_POSTGRES_URL is set. Full mode takes a quarter of an "
                    "hour or so; --quick well under two minutes.",
        epilog=f"Peers (optional, not treadle dependencies): {INSTALL}")
    p.add_argument("--quick", action="store_true",
                   help="small sizes (W1 N=1,000 and 5,000; W2, W3 N=1,000; W4 50,000 rows; "
                        "W5 5,000 items; W7 1,000 items; peers N=100; PostgreSQL N<=1,000)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--markdown", metavar="PATH", help="write a markdown report")
    p.add_argument("--workloads", type=_choices(WORKLOADS), metavar="LIST",
                   help=f"comma-separated subset of {','.join(WORKLOADS)}")
    p.add_argument("--stores", type=_choices(list(STORES)), metavar="LIST",
                   help=f"comma-separated subset of {','.join(STORES)}")
    p.add_argument("--w1-sizes", type=_sizes, metavar="N,N,...", help="W1 item counts")
    p.add_argument("--w2-sizes", type=_sizes, metavar="N,N,...", help="W2 item counts")
    p.add_argument("--w3-sizes", type=_sizes, metavar="N,N,...", help="W3 item counts")
    p.add_argument("--w4-rows", type=int, metavar="ROWS", help="W4 (item, stage) rows")
    p.add_argument("--w5-items", type=int, metavar="N", help="W5 items (half complete)")
    p.add_argument("--w5-repeats", type=int, metavar="K", help="W5 resumes per store (default 3)")
    p.add_argument("--w7-items", type=int, metavar="N",
                   help="W7 large items (and as many small ones; default 1,000 quick, 20,000 full)")
    p.add_argument("--w7-size", type=int, metavar="BYTES",
                   help="W7 bytes per large item (default 100,000)")
    p.add_argument("--repeats", type=int, metavar="K",
                   help="W1, W2, W3 and floor runs per N up to 10,000, median kept "
                        "(default 1 quick, 3 full)")
    p.add_argument("--workers", type=int, help="Runner workers (default 4)")
    p.add_argument("--peers", type=_choices(list(PEERS), none=True), metavar="LIST",
                   help=f"comma-separated subset of {','.join(PEERS)}, or none "
                        "(default: those installed)")
    p.add_argument("--peer-sizes", type=_sizes, metavar="N,N,...",
                   help="peer item counts (default 100 quick, 1,000 full)")
    p.add_argument("--peer-callers", type=_sizes, metavar="K,K,...",
                   help="concurrent callers for the peers, the best is compared "
                        "(default 1 quick, 1,4 full)")
    p.add_argument("--postgres-max-n", type=int, metavar="N",
                   help="largest N run on PostgreSQL (default 1,000 quick, 10,000 full)")
    p.add_argument("--attempts", type=int, metavar="K",
                   help="tries per measurement if it fails, every failure reported "
                        "(default 1 quick, 4 full)")
    p.add_argument("--item-cache", type=int, metavar="BYTES",
                   help="set the byte bound of treadle's item JSON cache (BaseStore."
                        "ITEM_CACHE_BYTES, default 64 MiB; 0 turns it off) in the "
                        "measurements; shown in the report")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="limit per measurement (default 300 quick, 900 full)")
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    mode = "quick" if args.quick else "full"
    s = Settings(mode=mode, **PRESETS[mode])
    for attr in ("workloads", "stores", "w1_sizes", "w2_sizes", "w3_sizes", "w4_rows",
                 "w5_items", "w5_repeats", "w7_items", "w7_size", "repeats", "workers",
                 "timeout", "peers", "peer_sizes", "peer_callers", "postgres_max_n", "attempts",
                 "item_cache"):
        value = getattr(args, attr)
        if value is not None:
            setattr(s, attr, value)
    for attr in ("w4_rows", "w5_items", "w5_repeats", "w7_items", "w7_size", "repeats",
                 "workers", "attempts"):
        if getattr(s, attr) < (2 if attr == "w5_items" else 1):
            raise SystemExit(f"python -m benchmarks: --{attr.replace('_', '-')} is too small")
    return s


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    settings = settings_from(args)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    started = time.perf_counter()
    header: dict[str, Any] = {
        "schema": 2,
        "mode": settings.mode,
        "command": shlex.join(["python", "-m", "benchmarks", *argv]),
        "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "load_start": load_average(),
    }
    log(f"treadle benchmarks, {settings.mode} mode")
    with tempfile.TemporaryDirectory(prefix="treadle-bench-") as tmp:
        body = Suite(settings, tmp, log).run()
    results = {**header, **body, "load_end": load_average(), "git_end": git_info(),
               "duration_s": time.perf_counter() - started}
    print(format_text(results), end="")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)
            fh.write("\n")
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as fh:
            fh.write(format_markdown(results))
    if results["errors"]:
        log(f"{len(results['errors'])} measurement(s) failed; see the notes above.")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
