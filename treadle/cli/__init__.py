"""``python -m treadle``: run, inspect and steer pipelines from the shell."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import shlex
import sys
import traceback
from collections.abc import Sequence
from typing import Any, TextIO

from ..errors import TreadleError
from ..pipeline import Pipeline
from ..runner import Runner
from ..status import RunReport
from ..store import open_store
from ..store.urls import mask_text, mask_url
from . import (
    bulk,
    render,
    steer,  # cancel, pause, resume, events (treadle/cli/steer.py)
)
from . import items as items_cli
from . import plan as change_plan  # definition changes (treadle/cli/plan.py)
from . import serve as web_serve  # web console (treadle/cli/serve.py)
from .graph import FORMATS
from .output import Look, table
from .target import load_target

DEFAULT_DB = "sqlite:///treadle.db"

EPILOG = """examples:
  python -m treadle run examples/quickstart.py:pipeline --db sqlite:///quickstart.db
  python -m treadle status examples/quickstart.py:pipeline --db sqlite:///quickstart.db
  python -m treadle review examples/quickstart.py:pipeline --db sqlite:///quickstart.db
  python -m treadle approve examples/quickstart.py:pipeline essay-3 review --data '{"summary": "ok"}' --db sqlite:///quickstart.db
  python -m treadle graph mypkg.pipelines:tracks --format mermaid

The store is --db URL, else $TREADLE_DB, else sqlite:///treadle.db.
Exit status: 0 ok; 1 the run ended with failed items; 2 bad usage or any treadle error;
130 the run was interrupted (Ctrl-C / SIGTERM): run it again to continue."""


class UsageError(Exception):
    """Bad command-line usage (exit 2)."""


#: The commands that may create a store; every other one opens it with
#: ``open_store(url, create=False)``: "no store at ..." (exit 2) where none is.
CREATES = {"run", "submit"}


#: --reviewer: a name for the record, not a login (nothing checks who types it).
REVIEWER_HELP = ("name recorded with the decision (default: $TREADLE_REVIEWER, else $USER); "
                 "attribution, not authentication")


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    p = argparse.ArgumentParser(prog="python -m treadle", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands: dict[str, argparse.ArgumentParser] = {}

    def cmd(name: str, help_text: str, example: str, item: str | None = None) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_text, description=help_text,
                           epilog=f"example:\n  {example}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        c.add_argument("target", metavar="TARGET",
                       help="package.module:pipeline or path/to/file.py:pipeline")
        if item == "required":
            c.add_argument("item", metavar="ITEM", help="item id")
        elif item == "optional":
            c.add_argument("item", metavar="ITEM", nargs="?", help="item id")
        c.add_argument("--db", metavar="URL", help="store URL (default $TREADLE_DB or sqlite:///treadle.db)")
        c.add_argument("--debug", action="store_true", help="show tracebacks of errors")
        commands[name] = c
        return c

    run = cmd("run", "submit new items and advance everything; show progress and a summary",
              "python -m treadle run app.py:pipeline --item '{\"id\": \"t1\"}' --workers 8")
    _item_options(run)
    run.add_argument("--workers", type=int, default=4, metavar="N", help="pool threads (default 4)")
    run.add_argument("--item-id", metavar="ID", help="advance just this item")
    run.add_argument("--watch", action="store_true",
                     help="keep running, picking up new items and decisions, until Ctrl-C")
    run.add_argument("--log-format", choices=["json", "console"],
                     help="log every transition with structlog in this format")
    run.add_argument("--no-source", action="store_true", help="do not submit the pipeline's source items")
    run.add_argument("--dask", metavar="ADDRESS",  # treadle.contrib.dask
                     help="run stages on the Dask cluster at ADDRESS (e.g. tcp://host:8786); "
                          'needs pip install "treadle[dask]"')
    run.add_argument("--metrics-port", type=int, metavar="PORT",  # treadle.contrib.prometheus
                     help="serve Prometheus metrics on :PORT/metrics while the run lasts")

    submit = cmd("submit", "add items without running them",
                 "python -m treadle submit app.py:pipeline --items new.jsonl")
    _item_options(submit)

    status = cmd("status", "per-stage counts by state, or one item's stages",
                 "python -m treadle status app.py:pipeline t1 --json", item="optional")
    status.add_argument("--json", action="store_true", help="print JSON (schema in docs/cli.md)")
    status.add_argument("--window", type=float, default=300.0, metavar="SECONDS",
                        help="throughput over the last SECONDS (default 300)")

    reviews = cmd("reviews", "list what awaits review, with its data",
                  "python -m treadle reviews app.py:pipeline --json")
    reviews.add_argument("--json", action="store_true", help="print JSON")
    reviews.add_argument("--stage", help="only this stage")
    reviews.add_argument("--mine", action="store_true",
                         help="only the reviews you may decide (assigned to you, or to nobody)")
    reviews.add_argument("--reviewer", help="your name for --mine (default: $TREADLE_REVIEWER, "
                                            "else $USER)")

    review = cmd("review", "interactive: approve / edit / reject / skip each waiting review",
                 "EDITOR=nano python -m treadle review app.py:pipeline")
    review.add_argument("--stage", help="only this stage")
    review.add_argument("--reviewer", help=REVIEWER_HELP)

    approve = cmd("approve", "approve one stage awaiting review (optionally with edited data), "
                  "or --all of them", "python -m treadle approve app.py:pipeline t1 review --data "
                  "'{\"title\": \"Fixed\"}'\n  python -m treadle approve app.py:pipeline --all "
                  "--stage review --where-message 'looks fine'", item="optional")
    approve.add_argument("stage", metavar="STAGE", nargs="?")
    approve.add_argument("--data", metavar="JSON", help="the edited data, or a form's answer (JSON)")
    approve.add_argument("--choice", action="append", metavar="OPTION",
                         help="the option chosen, for a review that offers options "
                              "(repeat it where several may be chosen)")
    approve.add_argument("--note", help="a note kept in the history")
    approve.add_argument("--reviewer", help=REVIEWER_HELP)
    approve.add_argument("--expect", type=int, metavar="VERSION",
                         help="the review version you saw (reviews --json lists it); refused "
                              "if the stage was re-run since")

    reject = cmd("reject", "reject one stage awaiting review, or --all of them",
                 "python -m treadle reject app.py:pipeline t2 review --reason duplicate", item="optional")
    reject.add_argument("stage", metavar="STAGE", nargs="?")
    reject.add_argument("--reason", required=True, help="why (kept in the history)")
    reject.add_argument("--reviewer", help=REVIEWER_HELP)
    reject.add_argument("--expect", type=int, metavar="VERSION",
                        help="the review version you saw (reviews --json lists it); refused "
                             "if the stage was re-run since")

    retry = cmd("retry", "failed (and rejected) stages back to pending",
                "python -m treadle retry app.py:pipeline --all-failed", item="optional")
    retry.add_argument("--stage", help="only this stage")
    retry.add_argument("--all-failed", action="store_true", help="every failed item (needed without ITEM)")

    bulk.add_arguments(approve, reject, retry)

    rerun = cmd("rerun", "a stage and everything downstream back to pending",
                "python -m treadle rerun app.py:pipeline t1 --from identify", item="optional")
    rerun.add_argument("--from", dest="from_stage", metavar="STAGE",
                       help="the first stage to redo (everything downstream is redone too)")
    change_plan.add_rerun_arguments(rerun)  # rerun --stale: treadle/cli/plan.py

    history = cmd("history", "every recorded transition of an item",
                  "python -m treadle history app.py:pipeline t1", item="required")
    history.add_argument("--json", action="store_true", help="print JSON")

    items_cli.add_arguments(cmd("items", "list items by stage, state, error and age, a page at a time",
                                "python -m treadle items app.py:pipeline --state failed "
                                "--error timeout --since 2h"))

    graph = cmd("graph", "print the DAG", "python -m treadle graph app.py:pipeline --format mermaid")
    graph.add_argument("--format", choices=sorted(FORMATS), default="text")

    # -- web console: treadle/cli/serve.py ------------------------------------
    web_serve.add_arguments(cmd("serve", "the local web console: review inbox, live overview, items",
                            "python -m treadle serve app.py:pipeline --port 8321"))
    # -- end web console ------------------------------------------------------
    change_plan.add_arguments(cmd("plan", "what the pipeline definition changes for stored "
                                  "items; exit 1 when something needs a decision",
                                  change_plan.EXAMPLE))
    steer.add_cancel(cmd("cancel", "cancel items: their waiting stages never start, running "
                         "ones are discarded", "python -m treadle cancel app.py:pipeline t1 t2 "
                         "--reason 'withdrawn'"))
    steer.add_pause(cmd("pause", "stop every runner from starting a stage (or any stage)",
                        "python -m treadle pause app.py:pipeline --stage enrich"), pause=True)
    steer.add_pause(cmd("resume", "lift a pause (without --stage: every pause)",
                        "python -m treadle resume app.py:pipeline --stage enrich"), pause=False)
    steer.add_events(cmd("events", "the committed event feed of every runner; --follow tails it",
                         "python -m treadle events app.py:pipeline --follow"))
    return p, commands


def _item_options(c: argparse.ArgumentParser) -> None:
    c.add_argument("--item", action="append", default=[], metavar="JSON",
                   help="an item as JSON (repeatable)")
    c.add_argument("--items", metavar="FILE", help="a JSON-lines file of items ('-' for stdin)")


def _items(args: argparse.Namespace, pipeline: Pipeline, stdin: TextIO) -> list[Any]:
    raw: list[tuple[str, str]] = [("--item", text) for text in args.item]
    if args.items:
        if args.items == "-":
            lines = stdin.read().splitlines()
        else:
            try:
                with open(args.items, encoding="utf-8") as fh:
                    lines = fh.read().splitlines()
            except OSError as exc:
                raise UsageError(f"cannot read --items {args.items!r}: {exc.strerror}") from None
        raw += [(f"{args.items} line {n}", line) for n, line in enumerate(lines, 1) if line.strip()]
    items = []
    for where, text in raw:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{where} is not valid JSON: {exc}") from None
        items.append(pipeline.codec.from_plain(data))
    return items


def _json_arg(text: str | None, name: str) -> Any:
    try:
        return json.loads(text) if text is not None else None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{name} is not valid JSON: {exc}") from None


def main(argv: Sequence[str] | None = None, *, stdin: TextIO | None = None,
         stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run the command line; returns the exit status."""
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    parser, commands = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in commands:  # options and ITEM in any order after COMMAND
            args = commands[argv[0]].parse_intermixed_args(argv[1:])
            args.command = argv[0]
        else:
            args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) if exc.code in (0, None) else 2
    url = args.db or os.environ.get("TREADLE_DB") or DEFAULT_DB
    try:
        pipeline = load_target(args.target)
        if args.command == "graph":
            stdout.write(FORMATS[args.format](pipeline) + "\n")
            return 0
        store = open_store(url, create=args.command in CREATES)
        runner = Runner(pipeline, store, workers=getattr(args, "workers", 4))
        return COMMANDS[args.command](args, runner, url, stdin, stdout, stderr)
    except BrokenPipeError:  # e.g. piped into head: not an error
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        except OSError:
            pass
        return 0
    except (TreadleError, UsageError, ValueError, KeyError) as exc:
        if args.debug:
            traceback.print_exc(file=stderr)
        message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        stderr.write(f"error: {mask_text(message, url)}\n")
        return 2
    except Exception as exc:  # noqa: BLE001 - e.g. an import error inside the target
        if args.debug:
            traceback.print_exc(file=stderr)
        stderr.write(f"error: {type(exc).__name__}: {mask_text(str(exc), url)} "
                     "(--debug shows the traceback)\n")
        return 2


def _target_hint(args: argparse.Namespace, url: str) -> str:
    """TARGET and --db for a next-step command the user can copy and paste."""
    if not args.db:  # the default, or $TREADLE_DB: the same command finds it again
        return shlex.quote(args.target)
    if mask_url(url) != url:  # never print the password: let the shell supply it
        return f"{shlex.quote(args.target)} --db \"$TREADLE_DB\"  (with TREADLE_DB set to your URL)"
    return f"{shlex.quote(args.target)} --db {shlex.quote(url)}"


# -- commands -------------------------------------------------------------------

#: How long ``run`` waits at its end for review notifications still being sent.
NOTIFY_WAIT = 10.0


def _run(args: argparse.Namespace, runner: Runner, url: str,
         stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    from .progress import Progress
    from .summary import Tally, stop_on_signals

    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        raise UsageError("--metrics-port must be a port number, 0-65535")
    items = _items(args, runner.pipeline, stdin)
    disconnect = None
    if args.log_format:  # before submitting: item_submitted is logged too
        disconnect = _configure_logging(args.log_format, stdout, runner.pipeline)
    tally = Tally()
    metrics = None
    dask = None
    try:
        new = runner.submit(*items)
        dask = _connect_dask(args.dask, runner, stdout) if args.dask else None
        if args.metrics_port is not None:  # treadle.contrib.prometheus: /metrics while the run lasts
            from treadle.contrib.prometheus import instrument as metrics_for

            metrics = metrics_for(runner)
            metrics.serve(args.metrics_port)
        # Ctrl-C / SIGTERM between two passes of --watch (a pass handles them itself)
        report = None
        with stop_on_signals() as stop:
            while True:
                if not args.no_source and not args.item_id:
                    new += runner.submit_source()
                if stop.is_set():  # a signal before any stage ran: nothing to advance
                    break
                if args.log_format:
                    report = tally.add(runner.advance(args.item_id))
                else:
                    with Progress(runner, stdout):
                        report = tally.add(runner.advance(args.item_id))
                if not args.watch or report.interrupted or stop.is_set() or stop.wait(1.0):
                    break
            tally.interrupted = tally.interrupted or stop.is_set()
    finally:
        if disconnect:
            disconnect()
        if metrics is not None:
            metrics.close()
        if dask is not None:
            dask.close()
    if report is None:
        report = RunReport(0, 0, 0, 0, 0, 0, items=runner.item_counts(), interrupted=True)
    _summary(args, runner, report, tally, url, stdout, submitted=len(new))
    if not runner.wait_notifications(NOTIFY_WAIT):
        stderr.write(f"review notifications still unsent after {NOTIFY_WAIT:g} s; "
                     "the next run sends them\n")
    if tally.interrupted:
        return 130
    return 1 if report.items.get("failed") else 0


def _connect_dask(address: str, runner: Runner, stdout: TextIO) -> Any:
    """Run the stages on the Dask cluster at ``address``; returns the client to close."""
    try:
        from distributed import Client

        from treadle.contrib.dask import DaskExecutor
    except ImportError:
        raise UsageError('--dask needs dask.distributed: pip install "treadle[dask]"') from None
    try:
        client = Client(address, timeout=10)  # type: ignore[no-untyped-call]
    except Exception as exc:  # noqa: BLE001 - any failure to connect is a usage problem
        raise UsageError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
    executor = DaskExecutor(client)
    runner.executor = executor
    link = executor.dashboard_link
    stdout.write(f"running stages on the Dask cluster at {address}"
                 + (f" (dashboard: {link})" if link else "") + "\n")
    return client


def _configure_logging(fmt: str, out: TextIO, pipeline: Pipeline) -> Any:
    import structlog

    from treadle.contrib.logging import connect

    renderer = (structlog.processors.JSONRenderer() if fmt == "json"
                else structlog.dev.ConsoleRenderer(colors=out.isatty()))
    structlog.configure(
        processors=[structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso"), renderer],
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    return connect(sender=pipeline)


def _summary(args: argparse.Namespace, runner: Runner, report: RunReport, tally: Any, url: str,
             out: TextIO, *, submitted: int) -> None:
    from .summary import failure_hint

    out.write(f"\nsubmitted {submitted} new item(s); {tally.describe()}"
              f"{' (interrupted: run again to continue)' if tally.interrupted else ''}\n")
    out.write("stage states in the store:\n" + render.counts_table(runner.counts(), Look.of(out)) + "\n")
    items = ", ".join(f"{n} {s}" for s, n in sorted(report.items.items())) or "none"
    out.write(f"items in the store: {items}\n")
    memory = url.startswith("memory:")
    if report.failures:
        out.write("failed:\n")
        for item_id, stage, error in report.failures:
            out.write(f"  {item_id} {stage}: {render.short(error or '', 100)}\n")
        out.write(failure_hint(report.failures, target=_target_hint(args, url), memory=memory) + "\n")
    waiting = report.items.get("awaiting_review", 0)
    if waiting and memory:
        out.write(f"{waiting} item(s) await review, but memory:// keeps nothing once this run "
                  "ends: use a sqlite:/// or postgresql:// store to review them later\n")
    elif waiting:
        out.write(f"{waiting} item(s) await review: python -m treadle review {_target_hint(args, url)}\n")
    if report.paused:
        out.write(f"{report.paused} stage run(s) wait on a pause ({_paused_text(runner)}): "
                  f"python -m treadle resume {_target_hint(args, url)}\n")


def _paused_text(runner: Runner) -> str:
    return ", ".join("the whole pipeline" if s is None else s for s in runner.paused()) or "none"


def _submit(args: argparse.Namespace, runner: Runner, url: str,
            stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    items = _items(args, runner.pipeline, stdin)
    if not items:
        raise UsageError("nothing to submit: pass --item JSON or --items FILE.jsonl")
    new = runner.submit(*items)
    stdout.write(f"submitted {len(new)} new item(s), {len(items) - len(new)} already known\n")
    return 0


def _status(args: argparse.Namespace, runner: Runner, url: str,
            stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    if args.item is not None:
        status = runner.status(args.item)
        took = render.durations(runner.history(args.item))
        from .tree import tree_json, tree_lines

        nested = bool(runner.pipeline.children or runner.pipeline.parents)
        if args.json:
            data = render.item_json(status, took)
            data.update(tree_json(status) if nested else {})
            text = json.dumps(data, indent=2, default=str)
        else:
            text = render.item_table(status, took, Look.of(stdout))
            lines = tree_lines(runner.pipeline, runner.store, status) if nested else []
            text += "".join("\n" + line for line in lines)
        stdout.write(text + "\n")
        return 0
    counts = runner.counts()
    if args.window <= 0:
        raise UsageError("--window must be a number of seconds > 0")
    metrics = runner.stage_metrics(window=args.window)
    if args.json:
        stdout.write(json.dumps({"pipeline": runner.pipeline.name, "store": mask_url(url),
                                 "stages": counts,
                                 "items": runner.item_counts(),
                                 "paused": runner.paused(),
                                 "metrics": render.metrics_json(metrics)},
                                indent=2) + "\n")
        return 0
    look = Look.of(stdout)
    stdout.write(f"pipeline {runner.pipeline.name} in {mask_url(url)}\n")
    stdout.write(render.counts_table(counts, look) + "\n")
    items = runner.item_counts()
    stdout.write("items: " + (", ".join(f"{n} {s}" for s, n in sorted(items.items())) or "none") + "\n")
    if runner.paused():
        stdout.write(f"paused: {_paused_text(runner)} (python -m treadle resume lifts it)\n")
    stdout.write("\nstage metrics (runs: the newest history rows; per min: the last "
                 f"{render.seconds(args.window)}):\n" + render.metrics_table(metrics, look) + "\n")
    return 0


def _waiting(runner: Runner, stage: str | None) -> list[tuple[str, str, Any]]:
    if stage is not None:
        runner.pipeline.check_stage(stage)
    return [(s.item_id, name, st.review) for s in runner.items(state="awaiting_review", limit=None)
            for name, st in s.stages.items()
            if st.state == "awaiting_review" and (stage is None or name == stage)]


def _reviews(args: argparse.Namespace, runner: Runner, url: str,
             stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    waiting = _waiting(runner, args.stage)
    if args.mine:
        me = _reviewer(args)
        waiting = [w for w in waiting if not (w[2] and w[2].assignees) or me in w[2].assignees]
    from .tree import child_reviews, child_target

    children = child_reviews(runner) if runner.pipeline.children and args.stage is None else []
    if args.json:
        stdout.write(json.dumps([{"item_id": i, "stage": s, "message": r.message if r else "",
                                  "data": r.data if r else None,
                                  "version": r.version if r else None,
                                  "previous": r.previous if r else None, **_asks(r)}
                                 for i, s, r in waiting]
                                + [{"item_id": i, "stage": s, "message": r.message if r else "",
                                    "data": r.data if r else None, "pipeline": p.name,
                                    "parent": parent} for p, i, s, r, parent in children],
                                indent=2) + "\n")
        return 0
    if children:
        rows = [[i, parent or "", s, r.message if r else "", render.whole(r.data if r else None)]
                for _, i, s, r, parent in children]
        stdout.write("children awaiting review:\n" + table(
            ["item", "parent", "stage", "message", "data"], rows, Look.of(stdout)) + "\n")
        for p in dict.fromkeys(p for p, *_ in children):
            hint = _target_hint(args, url).replace(
                shlex.quote(args.target), shlex.quote(child_target(args.target, runner.pipeline, p)), 1)
            stdout.write(f"decide them with: python -m treadle review {hint}\n")
        if not waiting:
            return 0
    if not waiting:
        stdout.write("Nothing awaits review.\n")
        return 0
    rows = [[i, s, r.message + render.earlier(r) if r else "", render.whole(r.data if r else None)]
            for i, s, r in waiting]
    headers = ["item", "stage", "message", "data"]
    if any(r and (r.options or r.form or r.assignees) for _, _, r in waiting):
        headers += ["asks", "assigned to"]
        for row, (_, _, r) in zip(rows, waiting, strict=True):
            asks = ("choose " + "/".join(r.options) if r and r.options else
                    "form: " + ", ".join(f["name"] for f in r.form) if r and r.form else "")
            row += [asks, ", ".join(r.assignees) if r else ""]
    stdout.write(table(headers, rows, Look.of(stdout)) + "\n")  # whole: wrapped, never cut
    stdout.write(f"decide them with: python -m treadle review {_target_hint(args, url)}\n")
    return 0


def _asks(review: Any) -> dict[str, Any]:
    """What a review asks beyond approve / reject (for ``reviews --json``)."""
    if review is None:
        return {}
    asks = {"options": review.options, "multiple": review.multiple if review.options else None,
            "default": review.default, "form": review.form, "assignees": review.assignees or None}
    return {k: v for k, v in asks.items() if v is not None}


def _reviewer(args: argparse.Namespace) -> str:
    if args.reviewer:
        return str(args.reviewer)
    if os.environ.get("TREADLE_REVIEWER"):
        return os.environ["TREADLE_REVIEWER"]
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001
        return "human"


def _review(args: argparse.Namespace, runner: Runner, url: str,
            stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    from .interactive import review_loop

    if args.stage is not None:
        runner.pipeline.check_stage(args.stage)

    def ask(prompt: str) -> str:
        stdout.write(prompt)
        stdout.flush()
        line = stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")

    tally = review_loop(runner, reviewer=_reviewer(args), ask=ask, out=stdout, stage=args.stage)
    stdout.write("\n" + ", ".join(f"{n} {k}" for k, n in tally.items()) + "\n")
    if tally["approved"] + tally["edited"]:
        stdout.write(f"continue the approved items: python -m treadle run {_target_hint(args, url)}\n")
    return 0


def _one_decision(args: argparse.Namespace, name: str) -> None:
    if args.item is None or args.stage is None:
        raise UsageError(f"{name} needs ITEM STAGE, or --all (with --stage S, --where-message TEXT)")
    if args.only_stage is not None or args.where_message is not None:
        raise UsageError(f"--stage and --where-message go with {name} --all")


def _approve(args: argparse.Namespace, runner: Runner, url: str,
             stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    if args.all:
        return bulk.decide(args, runner, True, _reviewer(args), _target_hint(args, url), stdin, stdout)
    _one_decision(args, "approve")
    kwargs: dict[str, Any] = {}
    if args.data is not None:
        kwargs["data"] = _json_arg(args.data, "--data")
    if args.choice:
        kwargs["choice"] = args.choice[0] if len(args.choice) == 1 else args.choice
    runner.approve(args.item, args.stage, note=args.note, reviewer=_reviewer(args),
                   expect=args.expect, **kwargs)
    stdout.write(f"approved {args.item} at {args.stage}"
                 f"{' choosing ' + ', '.join(args.choice) if args.choice else ''}"
                 f"{' with edited data' if 'data' in kwargs else ''}; "
                 f"continue with: python -m treadle run {_target_hint(args, url)}\n")
    return 0


def _reject(args: argparse.Namespace, runner: Runner, url: str,
            stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    if args.all:
        return bulk.decide(args, runner, False, _reviewer(args), _target_hint(args, url), stdin, stdout)
    _one_decision(args, "reject")
    runner.reject(args.item, args.stage, reason=args.reason, reviewer=_reviewer(args),
                  expect=args.expect)
    stdout.write(f"rejected {args.item} at {args.stage}\n")
    return 0


def _retry(args: argparse.Namespace, runner: Runner, url: str,
           stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    if args.item is None and not args.all_failed:
        raise UsageError("retry needs an ITEM, or --all-failed to retry every failed item")
    if args.item is None:
        return bulk.retry(args, runner, f"cli:{_reviewer_default()}", _target_hint(args, url),
                          stdin, stdout)
    if args.error is not None:
        raise UsageError("--error goes with retry --all-failed (without ITEM)")
    moved = runner.retry(args.item, stage=args.stage, actor=f"cli:{_reviewer_default()}")
    for item_id, stage in moved:
        stdout.write(f"{item_id} {stage} -> pending\n")
    stdout.write(f"{len(moved)} stage(s) back to pending; "
                 f"run: python -m treadle run {_target_hint(args, url)}\n")
    return 0


def _reviewer_default() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001
        return "human"


def _rerun(args: argparse.Namespace, runner: Runner, url: str,
           stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    if args.stale:
        return change_plan.rerun_stale(args, runner, url, stdin, stdout, stderr,
                                       actor=f"cli:{_reviewer_default()}",
                                       hint=_target_hint(args, url))
    if args.item is None or args.from_stage is None:
        raise UsageError("rerun needs ITEM and --from STAGE (or --stale)")
    reset = runner.rerun(args.item, from_stage=args.from_stage, actor=f"cli:{_reviewer_default()}")
    stdout.write(f"{args.item}: {', '.join(reset) or 'nothing'} back to pending; "
                 f"run: python -m treadle run {_target_hint(args, url)}\n")
    return 0


def _history(args: argparse.Namespace, runner: Runner, url: str,
             stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    entries = runner.history(args.item)
    if args.json:
        stdout.write(json.dumps(render.history_json(entries), indent=2, default=str) + "\n")
    else:
        stdout.write(render.history_table(entries, Look.of(stdout)) + "\n")
    return 0


def _cancel(args: argparse.Namespace, runner: Runner, url: str,
            stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    args.actor = _reviewer_default()
    return steer.cancel(args, runner, lambda q: bulk.confirm(q, args.yes, stdin, stdout), stdout)


def _pause(args: argparse.Namespace, runner: Runner, url: str,
           stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    args.actor = _reviewer_default()
    if args.command == "pause":
        return steer.pause(args, runner, stdout)
    return steer.resume(args, runner, stdout)


def _events(args: argparse.Namespace, runner: Runner, url: str,
            stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    return steer.events(args, runner, stdout)


COMMANDS = {
    "run": _run, "submit": _submit, "status": _status, "reviews": _reviews, "review": _review,
    "approve": _approve, "reject": _reject, "retry": _retry, "rerun": _rerun, "history": _history,
    "items": items_cli.run,
    "serve": web_serve.run,  # web console: treadle/cli/serve.py
    "plan": change_plan.run,  # definition changes: treadle/cli/plan.py
    "cancel": _cancel, "pause": _pause, "resume": _pause,  # treadle/cli/steer.py
    "events": _events,
}
