"""The ``@stage`` decorator and the frozen spec it attaches to a function."""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar

import attrs

from .errors import InvalidStageError
from .limits import SCOPES, Rate, check_priority, parse_rate, stage_uses
from .outcomes import Completed, FanOut, Review, Skipped, Spawn
from .serialization import is_record_type, structure

F = TypeVar("F", bound=Callable[..., Any])

SPEC_ATTR = "__treadle_stage__"
REVIEW_POLICIES = ("never", "always", "on_escalation", "on_uncertain", "on_escalation_or_uncertain")
ON_EXHAUSTED = ("fail", "escalate")
ON_TIMEOUT = ("approve", "reject")
ON_CHANGE = ("keep", "rerun")
ON_CHILD_FAILURE = ("fail", "ignore")

#: A dependency: a stage function or a stage name.
Dependency = str | Callable[..., Any]


@attrs.frozen
class StageSpec:
    """Everything ``@stage`` knows about one stage; read by :class:`~treadle.Pipeline`."""

    name: str
    fn: Callable[..., Any]
    after: tuple[str, ...] = ()
    when: Callable[..., bool] | None = None
    retry: Any = None
    rollback: Callable[..., Any] | None = None
    timeout: float | None = None
    concurrency: int | None = None
    gate: Callable[..., Any] | None = None
    on_exhausted: str = "fail"
    review: str = "never"
    review_timeout: float | None = None
    on_timeout: str = "reject"
    output_type: type | None = None
    #: An explicit label that replaces the code in the stage's fingerprint.
    version: str | None = None
    #: What a changed definition does to stored results: "keep" (``plan`` shows them as
    #: stale) or "rerun" (a runner start reruns them); None: the pipeline's ``on_change``.
    on_change: str | None = None
    reviewers: tuple[str, ...] = ()
    notify: tuple[Callable[..., Any], ...] = ()
    escalate_to: tuple[str, ...] = ()
    #: Pipelines this stage may spawn child items into (``Spawn``), and what makes
    #: its output of the settled children (docs/nested.md).
    spawns: tuple[Any, ...] = ()
    collect: Callable[[dict[str, Any]], Any] | None = None
    on_child_failure: str = "fail"
    #: A rate limit shared by every runner on the store ("5/s", "60/min"), parsed.
    rate: Rate | None = None
    #: Where ``concurrency`` holds: "runner" (each runner process) or "global" (the store).
    scope: str = "runner"
    #: The priority of this stage's runs when an item is submitted without one.
    priority: int | None = None
    #: Named limits of the Pipeline this stage takes: name -> units per run.
    limits: Mapping[str, int] = attrs.field(factory=dict)
    takes_ctx: bool = True
    when_takes_ctx: bool = True
    rollback_takes_ctx: bool = True
    #: ``output_type`` of each upstream stage that has one; set by the Pipeline.

    def call(self, item: Any, ctx: Any) -> Any:
        """Call the stage function with ``(item, ctx)`` or ``(item)`` as it accepts.

        Upstream outputs with an ``output_type`` come back as instances of it.
        """
        result = self.fn(item, ctx) if self.takes_ctx else self.fn(item)
        if self.output_type is None:
            return result
        if inspect.isawaitable(result):  # an async stage: check what it returns when awaited
            return self._checked(result)
        self._check_output(result)
        return result

    async def _checked(self, awaitable: Awaitable[Any]) -> Any:
        result = await awaitable
        self._check_output(result)
        return result

    def _check_output(self, result: Any) -> None:
        """A declared output_type must fit what the stage returns (None is allowed).

        Raises SerializationError, which fails the stage without a retry.
        """
        output = result.output if isinstance(result, Completed) else result
        if output is None or isinstance(result, (Review, FanOut, Skipped, Spawn)):
            return
        assert self.output_type is not None
        if not isinstance(output, self.output_type):
            structure(output, self.output_type, what=f"output of stage {self.name!r}",
                      stage=self.name)


#: An annotation that names the context type: ``StageContext``, ``treadle.StageContext``,
#: ``StageContext | None``, as a class or as a string (``from __future__ import annotations``).
_CONTEXT_ANNOTATION = re.compile(r"\bStageContext\b")
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def wants_context(param: inspect.Parameter) -> bool:
    """Whether a function's second positional parameter is meant for ``ctx``.

    It is when it is required (no default), named ``ctx``, or annotated with
    the context type. A parameter with a default, such as the closure idiom
    ``def f(item, _s=s)``, keeps its default.
    """
    if param.default is inspect.Parameter.empty or param.name == "ctx":
        return True
    annotation = param.annotation
    if annotation is inspect.Parameter.empty:
        return False
    text = annotation if isinstance(annotation, str) else repr(annotation)
    return bool(_CONTEXT_ANNOTATION.search(text))


def arity(fn: Callable[..., Any], what: str, name: str) -> bool:
    """Return True if ``fn`` is called ``(item, ctx)``, False if ``(item)``.

    ``fn`` must accept one positional argument (the item); it also gets ``ctx``
    when its second positional parameter :func:`wants_context`. ``*args`` alone
    gets the item only. Raises :class:`InvalidStageError` if ``fn`` can take
    neither ``(item)`` nor ``(item, ctx)``.
    """
    if not callable(fn):
        raise InvalidStageError(
            f"{what} {name!r} is {fn!r}, which is not callable; pass a function.", stage=name
        )
    if inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
        kind = "an async generator" if inspect.isasyncgenfunction(fn) else "a generator"
        raise InvalidStageError(
            f"{what} {name!r} is {kind} function (it yields); treadle calls it once and "
            "stores what it returns: return the result (or a FanOut of several subtasks).",
            stage=name,
        )
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: trust them with (item)
        return False
    positional = [p for p in sig.parameters.values() if p.kind in _POSITIONAL]
    for args in ((None,), (None, None)):
        try:
            sig.bind(*args)
        except TypeError:
            continue
        if len(args) == 2:  # the second parameter is required
            return True
        return len(positional) >= 2 and wants_context(positional[1])
    raise InvalidStageError(
        f"{what} {name!r} has signature {sig}, which cannot take (item) or (item, ctx); "
        "define it as def f(item) or def f(item, ctx).",
        stage=name,
    )


def dependency_name(dep: Dependency) -> str:
    """The stage name a dependency refers to (a name, or a function's stage name)."""
    if isinstance(dep, str):
        return dep
    spec = getattr(dep, SPEC_ATTR, None)
    if isinstance(spec, StageSpec):
        return spec.name
    if callable(dep):
        return getattr(dep, "__name__", repr(dep))
    raise InvalidStageError(
        f"Dependency {dep!r} is neither a stage name nor a stage function.", stage=None
    )


def _check_options(name: str, opts: dict[str, Any]) -> None:
    def bad(option: str, expected: str) -> InvalidStageError:
        return InvalidStageError(
            f"Stage {name!r}: {option}={opts[option]!r} is invalid; expected {expected}.", stage=name
        )

    retry = opts["retry"]
    if retry is not None:
        if isinstance(retry, bool) or (isinstance(retry, int) and retry < 1):
            raise bad("retry", "an int >= 1 (attempts in all) or a RetryPolicy")
        if not isinstance(retry, int) and not callable(retry):
            raise bad("retry", "an int >= 1 (attempts in all) or a RetryPolicy")
    timeout = opts["timeout"]
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0
    ):
        raise bad("timeout", "a number of seconds > 0")
    conc = opts["concurrency"]
    if conc is not None and (isinstance(conc, bool) or not isinstance(conc, int) or conc < 1):
        raise bad("concurrency", "an int >= 1")
    for option in ("when", "gate", "rollback"):
        if opts[option] is not None and not callable(opts[option]):
            raise bad(option, "a callable")
    if opts["on_exhausted"] not in ON_EXHAUSTED:
        raise bad("on_exhausted", " or ".join(repr(v) for v in ON_EXHAUSTED))
    if opts["review"] not in REVIEW_POLICIES:
        raise bad("review", ", ".join(repr(v) for v in REVIEW_POLICIES))
    rt = opts["review_timeout"]
    if rt is not None and (isinstance(rt, bool) or not isinstance(rt, (int, float)) or rt <= 0):
        raise bad("review_timeout", "a number of seconds > 0")
    if opts["on_timeout"] not in ON_TIMEOUT:
        raise bad("on_timeout", "'approve' or 'reject'")
    if opts["output_type"] is not None and not is_record_type(opts["output_type"]):
        raise bad("output_type", "an attrs class or a dataclass")
    if opts["version"] is not None and (not isinstance(opts["version"], str) or not opts["version"]):
        raise bad("version", "a non-empty string label")
    if opts["on_change"] is not None and opts["on_change"] not in ON_CHANGE:
        raise bad("on_change", "'keep' or 'rerun'")
    for option in ("reviewers", "escalate_to"):
        names = opts[option]
        if isinstance(names, str) or not all(isinstance(n, str) and n for n in names):
            raise bad(option, "a list of reviewer names")
    if opts["escalate_to"] and rt is None:
        raise bad("escalate_to", "reviewer names together with review_timeout=SECONDS")
    if not all(callable(n) for n in opts["notify"]):
        raise bad("notify", "a notifier (a callable) or a list of them")
    _check_spawn_options(name, opts, bad)
    _check_flow(name, opts, bad)


def _check_spawn_options(name: str, opts: dict[str, Any],
                         bad: Callable[[str, str], InvalidStageError]) -> None:
    spawns = opts["spawns"]
    if spawns is None:
        spawns = ()
    elif not isinstance(spawns, (list, tuple)):
        spawns = (spawns,)
    for child in spawns:  # a Pipeline (checked by duck type: pipeline.py imports this module)
        if not (isinstance(getattr(child, "name", None), str) and hasattr(child, "order")):
            raise InvalidStageError(
                f"Stage {name!r}: spawns={child!r} is not a Pipeline; pass the Pipeline (or a "
                "list of them) its Spawn outcomes submit child items into.", stage=name)
    opts["spawns"] = tuple(spawns)
    if opts["collect"] is not None and not callable(opts["collect"]):
        raise bad("collect", "a callable taking {child id: outputs}")
    if opts["on_child_failure"] not in ON_CHILD_FAILURE:
        raise bad("on_child_failure", "'fail' or 'ignore'")
    if not spawns and (opts["collect"] is not None or opts["on_child_failure"] != "fail"):
        raise InvalidStageError(
            f"Stage {name!r}: collect= and on_child_failure= apply to stages that spawn child "
            "items; add spawns=<child pipeline>.", stage=name)


def _check_flow(name: str, opts: dict[str, Any], bad: Callable[[str, str], Exception]) -> None:
    """Validate ``rate``, ``scope`` and ``priority``."""
    rate = opts["rate"]
    if rate is not None and not isinstance(rate, Rate):
        try:
            parse_rate(rate)
        except ValueError as exc:
            raise InvalidStageError(f"Stage {name!r}: {exc}.", stage=name) from None
    if opts["scope"] not in SCOPES:
        raise bad("scope", "'runner' or 'global'")
    if opts["scope"] == "global" and opts["concurrency"] is None:
        raise InvalidStageError(f"Stage {name!r}: scope='global' limits concurrency across "
                                "runners; give concurrency=N too.", stage=name)
    if opts["priority"] is not None:
        try:
            check_priority(opts["priority"])
        except ValueError:
            raise bad("priority", "an int (higher runs first)") from None


def returned_type(fn: Callable[..., Any]) -> type | None:
    """The attrs class or dataclass ``fn`` is annotated to return, if any.

    treadle's own outcome classes (``-> Review``, ``-> Completed``) do not count.
    """
    try:
        hint = typing.get_type_hints(fn).get("return")
    except Exception:  # noqa: BLE001 - unresolvable annotations: no output type
        return None
    if not is_record_type(hint) or hint.__module__.partition(".")[0] == "treadle":
        return None  # not a record, or an outcome (Review, Completed, FanOut, ...)
    return hint


_DEFAULTS: dict[str, Any] = dict(
    after=(), name=None, when=None, retry=None, rollback=None, timeout=None, concurrency=None,
    gate=None, on_exhausted="fail", review="never", review_timeout=None, on_timeout="reject",
    output_type=None, version=None, on_change=None, reviewers=(), notify=(), escalate_to=(),
    spawns=(), collect=None, on_child_failure="fail",
    rate=None, scope="runner", priority=None, limits=None,
)


def _notifiers(notify: Any) -> tuple[Any, ...]:
    if notify is None:
        return ()
    return tuple(notify) if isinstance(notify, (list, tuple)) else (notify,)


def make_spec(fn: Callable[..., Any], **options: Any) -> StageSpec:
    """Build and validate a :class:`StageSpec` for ``fn`` (used by ``@stage``)."""
    options = {**_DEFAULTS, **options}
    name = options.pop("name", None) or getattr(fn, "__name__", None)
    if not isinstance(name, str) or not name:
        raise InvalidStageError(f"Stage {fn!r} needs a name; pass @stage(name=...).", stage=None)
    takes_ctx = arity(fn, "Stage", name)
    after = options.pop("after", None) or ()
    if isinstance(after, (str, bytes)) or not isinstance(after, Sequence):
        after = (after,) if callable(after) or isinstance(after, str) else tuple(after)
    for option in ("reviewers", "escalate_to"):
        if isinstance(options[option], list):
            options[option] = tuple(options[option])
    options["notify"] = _notifiers(options["notify"])
    spawns = options["spawns"]
    options["spawns"] = (() if spawns is None else tuple(spawns)
                         if isinstance(spawns, (list, tuple)) else (spawns,))
    _check_options(name, options)
    when = options.get("when")
    when_ctx = arity(when, "The when= predicate of stage", name) if when is not None else True
    rollback = options.get("rollback")
    rollback_ctx = arity(rollback, "The rollback of stage", name) if rollback is not None else True
    if options["output_type"] is None:
        options["output_type"] = returned_type(fn)
    if isinstance(options["rate"], str):
        options["rate"] = parse_rate(options["rate"])  # checked above
    options["limits"] = stage_uses(name, options["limits"])
    return StageSpec(
        name=name, fn=fn, after=tuple(dependency_name(d) for d in after),
        takes_ctx=takes_ctx, when_takes_ctx=when_ctx, rollback_takes_ctx=rollback_ctx, **options,
    )


def stage(
    *,
    after: Sequence[Dependency] = (),
    name: str | None = None,
    when: Callable[..., bool] | None = None,
    retry: Any = None,
    rollback: Callable[..., Any] | None = None,
    timeout: float | None = None,
    concurrency: int | None = None,
    gate: Callable[..., Any] | None = None,
    on_exhausted: Literal["fail", "escalate"] = "fail",
    review: str = "never",
    review_timeout: float | None = None,
    on_timeout: Literal["approve", "reject"] = "reject",
    output_type: type | None = None,
    version: str | None = None,
    on_change: Literal["keep", "rerun"] | None = None,
    reviewers: Sequence[str] = (),
    notify: Any = None,
    escalate_to: Sequence[str] = (),
    spawns: Any = (),
    collect: Callable[[dict[str, Any]], Any] | None = None,
    on_child_failure: Literal["fail", "ignore"] = "fail",
    rate: str | None = None,
    scope: Literal["runner", "global"] = "runner",
    priority: int | None = None,
    limits: Mapping[str, int] | Sequence[str] | None = None,
) -> Callable[[F], F]:
    """Mark a function as a pipeline stage; the function is returned unchanged.

    ``after`` lists the stages (functions or names) that must be completed or
    skipped first. ``when`` is a predicate ``(item, ctx) -> bool``: false
    skips the stage. The other options are described in docs/reference.md.
    Decorating a function twice raises ``TypeError``.

    ``review_timeout`` (seconds) with ``on_timeout="approve" | "reject"``
    decides a review nobody decided in time (actor ``timeout``).

    ``output_type`` (an attrs class or dataclass; by default the function's
    return annotation when it is one) restores this stage's output as an
    instance in downstream stages' ``ctx.outputs``.

    ``version`` (a label such as ``"3"``) replaces the stage's code in its
    fingerprint: editing the code then marks no stored result as changed
    until the label changes. ``on_change`` (``"keep"`` or ``"rerun"``;
    default: the pipeline's) says what a runner does with results made by an
    older definition (docs/changes.md).
    ``reviewers`` (names) may decide this stage's reviews, nobody else;
    ``notify`` (a notifier, or a list: see ``treadle.contrib.notify``) is told
    of each review request; ``escalate_to`` (names, with ``review_timeout``)
    reassigns and notifies a review nobody decided in time, instead of
    deciding it.

    ``spawns`` (a Pipeline or a list of them) lets the stage return
    :class:`~treadle.Spawn`; ``collect`` (``{child id: {stage: output}} ->
    output``) and ``on_child_failure`` (``"fail"`` or ``"ignore"``) say what
    the settled children make of it (docs/nested.md).

    Flow control (docs/flow-control.md): ``rate`` (``"1/s"``, ``"60/min"``,
    ``"1000/h"``) limits how often the stage starts across every runner on
    the store; ``scope="global"`` makes ``concurrency`` count runs across
    every runner instead of per runner; ``priority`` is the default priority
    of the stage's runs (higher is claimed first); ``limits`` names the
    Pipeline's named limits each run takes (``{"openai": 1}``, or
    ``["openai"]`` for one unit each).
    """
    options = dict(
        after=after, name=name, when=when, retry=retry, rollback=rollback, timeout=timeout,
        concurrency=concurrency, gate=gate, on_exhausted=on_exhausted, review=review,
        review_timeout=review_timeout, on_timeout=on_timeout, output_type=output_type,
        version=version, on_change=on_change,
        reviewers=reviewers, notify=notify, escalate_to=escalate_to,
        spawns=spawns, collect=collect, on_child_failure=on_child_failure,
        rate=rate, scope=scope, priority=priority, limits=limits,
    )

    def decorate(fn: F) -> F:
        if isinstance(getattr(fn, SPEC_ATTR, None), StageSpec):
            raise TypeError(f"{getattr(fn, '__name__', fn)!r} is already decorated with @stage")
        spec = make_spec(fn, **options)
        try:
            setattr(fn, SPEC_ATTR, spec)
        except (AttributeError, TypeError):
            raise InvalidStageError(
                f"Cannot attach a stage spec to {fn!r}; wrap it in a plain function.",
                stage=spec.name,
            ) from None
        return fn

    return decorate


def spec_of(obj: Any) -> StageSpec:
    """The spec of a decorated function; a plain callable gets a default spec."""
    spec = getattr(obj, SPEC_ATTR, None)
    if isinstance(spec, StageSpec):
        return spec
    if not callable(obj):
        raise InvalidStageError(
            f"Stage {obj!r} is not callable; pass functions decorated with @stage.", stage=None
        )
    return make_spec(obj)
