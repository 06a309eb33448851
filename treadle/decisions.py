"""Richer review decisions: choices, forms and assigned reviewers.

A :class:`~treadle.Review` may offer ``options`` (the reviewer picks one, or
several with ``multiple=True``), ask for a ``form`` (an attrs class, a
dataclass or a small ``{name: type}`` spec) and name its ``assignees``. The
worker stores what it asked in the stage's review record
(:func:`review_record`); a decision is checked against that record inside the
store's transaction (:func:`resolve`, :func:`check_assignee`), so a wrong
answer is refused before anything changes, whichever process decides.

:func:`chose` routes on a decision: ``@stage(when=chose("review", "publish"))``.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import cattrs

from .errors import InvalidDecisionError, InvalidTransitionError
from .serialization import CONVERTER, is_record_type, to_json

#: The field types a ``{name: type}`` form spec may use, by the name stored for them.
FIELD_TYPES: dict[str, type] = {"str": str, "int": int, "float": float, "bool": bool}
#: The actor of a decision made by a review timeout (exempt from assignees).
TIMEOUT_ACTOR = "timeout"


def check_options(options: Sequence[str] | None, multiple: bool, default: Any) -> None:
    """Refuse options that are not distinct non-empty strings, or a default not among them."""
    if options is None:
        if default is not None:
            raise ValueError("Review(default=...) needs options=[...] to choose from")
        return
    if isinstance(options, str) or not all(isinstance(o, str) and o for o in options):
        raise TypeError(f"Review(options=...) takes a list of non-empty strings, got {options!r}")
    if not options or len(set(options)) != len(options):
        raise ValueError(f"Review(options=...) needs distinct options, got {list(options)!r}")
    if default is not None:
        chosen = default if multiple else [default]
        if (isinstance(chosen, str) or not isinstance(chosen, (list, tuple))
                or any(c not in options for c in chosen)):
            raise ValueError(f"Review(default={default!r}) must be "
                             f"{'a list of options' if multiple else 'one of the options'} "
                             f"{list(options)!r}")


def _type_name(tp: Any) -> tuple[str, bool]:
    """The stored name of a field type (a scalar's name, else ``json``) and whether None fits."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (_type_name(rest[0])[0] if len(rest) == 1 else "json"), True
    for name, scalar in FIELD_TYPES.items():
        if tp is scalar:
            return name, False
    return "json", False


def form_fields(form: Any) -> list[dict[str, Any]]:
    """The fields of a form (attrs class, dataclass or ``{name: type}`` / ``{name: (type,
    default)}``): name, type name, whether it may be None, whether required, default."""
    out: list[dict[str, Any]] = []
    if isinstance(form, Mapping):
        for name, spec in form.items():
            tp, default, required = (spec[0], spec[1], False) if isinstance(spec, tuple) else (
                spec, None, True)
            if not isinstance(name, str) or tp not in FIELD_TYPES.values():
                raise TypeError(f"Review(form=...) field {name!r}: a spec maps names to one of "
                                f"str, int, float, bool (or (type, default)), got {spec!r}")
            out.append({"name": name, "type": tp.__name__, "nullable": False,
                        "required": required, "default": default})
        return out
    if not is_record_type(form):
        raise TypeError(f"Review(form=...) takes an attrs class, a dataclass or a "
                        f"{{name: type}} mapping, got {form!r}")
    hints = typing.get_type_hints(form)
    if attrs.has(form):
        fields = [(f.name, f.default, f.init) for f in attrs.fields(form)]
    else:
        fields = [(f.name, f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else attrs.NOTHING),
            f.init) for f in dataclasses.fields(form)]
    for name, default, init in fields:
        if not init:
            continue
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory() if not default.takes_self else None
        required = default is attrs.NOTHING or default is dataclasses.MISSING
        tname, nullable = _type_name(hints.get(name, Any))
        out.append({"name": name, "type": tname, "nullable": nullable, "required": required,
                    "default": None if required else CONVERTER.unstructure(default)})
    return out


def _qualified(cls: type) -> str | None:
    if "<locals>" in cls.__qualname__:
        return None
    return f"{cls.__module__}:{cls.__qualname__}"


def review_record(outcome: Any, reviewers: Sequence[str] = ()) -> dict[str, Any]:
    """What a stage's review record stores for a :class:`~treadle.Review` (data, message,
    and whatever of options, form and assignees it asks)."""
    record: dict[str, Any] = {"data": outcome.data, "message": outcome.message}
    if outcome.options is not None:
        record.update(options=list(outcome.options), multiple=outcome.multiple,
                      default=outcome.default)
    if outcome.form is not None:
        record["form"] = {"type": None if isinstance(outcome.form, Mapping) else
                          _qualified(outcome.form), "fields": form_fields(outcome.form)}
    assignees = list(outcome.assignees) if outcome.assignees is not None else list(reviewers)
    if assignees:
        record["assignees"] = assignees
    return record


def check_assignee(stored: Mapping[str, Any], reviewer: str | None, actor: str,
                   item_id: str, stage: str) -> None:
    """Refuse a decision by someone the review is not assigned to (timeouts are exempt)."""
    assignees = stored.get("assignees")
    if not assignees or actor == TIMEOUT_ACTOR or reviewer in assignees:
        return
    who = "no reviewer name" if reviewer is None else f"reviewer {reviewer!r}"
    raise InvalidTransitionError(
        f"Stage {stage!r} of item {item_id!r} may only be decided by {', '.join(assignees)}; "
        f"{who} may not decide it. Decide as one of them (reviewer=..., --reviewer NAME or "
        "$TREADLE_REVIEWER).", item_id=item_id, stage=stage, state="awaiting_review")


def _refuse(message: str, item_id: str, stage: str, field: str | None = None) -> InvalidDecisionError:
    return InvalidDecisionError(f"Stage {stage!r} of item {item_id!r}: {message}",
                                item_id=item_id, stage=stage, field=field)


def _resolve_choice(stored: Mapping[str, Any], choice: Any, item_id: str, stage: str) -> Any:
    options = stored.get("options")
    if options is None:
        if choice is not None:
            raise _refuse(f"this review offers no options, so choice={choice!r} cannot apply; "
                          "approve without a choice.", item_id, stage)
        return None
    if choice is None:
        choice = stored.get("default")
    allowed = ", ".join(repr(o) for o in options)
    if choice is None:
        raise _refuse(f"choose one of {allowed} (choice=..., --choice C).", item_id, stage)
    if stored.get("multiple"):
        chosen = [choice] if isinstance(choice, str) else choice
        if not isinstance(chosen, list) or not chosen:
            raise _refuse(f"choice={choice!r}: choose one or more of {allowed}.", item_id, stage)
    else:
        chosen = [choice]
    for c in chosen:
        if c not in options:
            raise _refuse(f"{c!r} is not an option; choose from {allowed}.", item_id, stage)
    return list(dict.fromkeys(chosen)) if stored.get("multiple") else choice


def form_class(form: Mapping[str, Any]) -> type:
    """The form's class: imported by name, or rebuilt from its stored fields."""
    name = form.get("type")
    if name:
        module, _, qualname = name.partition(":")
        try:
            obj: Any = importlib.import_module(module)
            for part in qualname.split("."):
                obj = getattr(obj, part)
            if isinstance(obj, type):
                return obj
        except (ImportError, AttributeError):
            pass  # decided where the pipeline's module is not importable: rebuild it
    fields = {}
    for f in form["fields"]:
        tp: Any = FIELD_TYPES.get(f["type"], Any)
        if f["nullable"]:
            tp = tp | None if tp is not Any else Any
        fields[f["name"]] = (attrs.field(type=tp) if f["required"] else
                             attrs.field(type=tp, default=f["default"]))
    return attrs.make_class("Form", fields, kw_only=True, frozen=True)


def _fits(value: Any, type_name: str, nullable: bool) -> bool:
    if value is None:
        return nullable
    if type_name == "bool":
        return isinstance(value, bool)
    if type_name == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if type_name == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if type_name == "str":
        return isinstance(value, str)
    return True


def _resolve_form(form: Mapping[str, Any], answer: Any, item_id: str, stage: str) -> Any:
    fields = {f["name"]: f for f in form["fields"]}
    if not isinstance(answer, dict):
        raise _refuse(f"a form answer is an object of fields ({', '.join(fields)}), "
                      f"got {answer!r}.", item_id, stage)
    for name in answer:
        if name not in fields:
            raise _refuse(f"the form has no field {name!r}; its fields are "
                          f"{', '.join(fields)}.", item_id, stage, name)
    for name, f in fields.items():
        if name not in answer:
            if f["required"]:
                raise _refuse(f"form field {name!r} is required.", item_id, stage, name)
        elif not _fits(answer[name], f["type"], f["nullable"]):
            raise _refuse(f"form field {name!r} must be a {f['type']}, got {answer[name]!r}.",
                          item_id, stage, name)
    cls = form_class(form)
    try:
        return CONVERTER.structure(answer, cls)
    except Exception as exc:  # noqa: BLE001 - cattrs or the class's validators
        detail = "; ".join(cattrs.transform_error(exc)) if isinstance(
            exc, cattrs.BaseValidationError) else str(exc)
        field = next((n for n in fields if n in detail), None)
        raise _refuse(f"the form answer does not fit: {detail}.", item_id, stage, field) from None


def resolve(stored: Mapping[str, Any], output: str | None, choice: Any, item_id: str,
            stage: str) -> tuple[str | None, Any]:
    """The output of an approval of ``stored`` (a review record) and the choice it made.

    ``output`` is the reviewer's data as JSON (None: the review's own data). A
    form's answer is validated and structured as its class; with options the
    output is ``{"choice": ..., "data": ...}``. Raises
    :class:`~treadle.InvalidDecisionError` naming the field or the options.
    """
    chosen = _resolve_choice(stored, choice, item_id, stage)
    form = stored.get("form")
    if form is None and chosen is None:
        return output, None
    data = json.loads(output) if output is not None else stored.get("data")
    if form is not None:
        data = _resolve_form(form, data, item_id, stage)
    if chosen is not None:
        data = {"choice": chosen, "data": data}
    return to_json(data, what="approved data", item_id=item_id, stage=stage), chosen


def parse_field(text: str, field: Mapping[str, Any]) -> Any:
    """A form field typed as text (CLI prompt, web form) as the value its type takes.

    Empty text is the field's default (or None). Raises ``ValueError`` naming the field.
    """
    text = text.strip()
    name, tp = field["name"], field["type"]
    if not text:
        return None if field["required"] else field["default"]
    try:
        if tp == "int":
            return int(text)
        if tp == "float":
            return float(text)
        if tp == "bool":
            low = text.lower()
            if low in ("y", "yes", "true", "1", "on"):
                return True
            if low in ("n", "no", "false", "0", "off"):
                return False
            raise ValueError(text)
        if tp == "json":
            return json.loads(text)
    except ValueError:
        raise ValueError(f"form field {name!r} must be a {tp}, got {text!r}") from None
    return text


def chosen(outputs: Mapping[str, Any], stage: str) -> list[str]:
    """The option(s) a review stage chose, from ``ctx.outputs`` (empty if it made none)."""
    if stage not in outputs:
        return []
    out = outputs[stage]
    if not isinstance(out, Mapping) or "choice" not in out:
        return []
    choice = out["choice"]
    return [choice] if isinstance(choice, str) else list(choice)


@attrs.frozen
class Chose:
    """A ``when=`` predicate: true when review stage ``stage`` chose ``option``."""

    stage: str
    option: str

    def __call__(self, item: Any, ctx: Any) -> bool:
        return self.option in chosen(ctx.outputs, self.stage)

    def why_not(self, ctx: Any) -> str:
        """The skip reason recorded when the predicate is false."""
        made = chosen(ctx.outputs, self.stage)
        if not made:
            return f"stage {self.stage!r} made no choice (it did not offer {self.option!r})"
        return f"stage {self.stage!r} chose {', '.join(map(repr, made))}, not {self.option!r}"


def chose(stage: str, option: str) -> Chose:
    """A ``when=`` predicate routing on a review's choice.

    ``@stage(after=[review], when=chose("review", "publish"))`` runs only when
    the reviewer of stage ``review`` chose ``"publish"`` (among others, with
    ``multiple=True``); otherwise the stage is skipped with a reason naming
    the choice made.
    """
    if not isinstance(stage, str) or not isinstance(option, str):
        raise TypeError(f"chose(stage, option) takes two strings, got {stage!r}, {option!r}")
    return Chose(stage, option)


__all__ = ["Chose", "check_assignee", "chose", "chosen", "form_class", "form_fields",
           "parse_field", "resolve", "review_record"]
