"""Problems in a Peak-style body: the error that carries them, and pydantic's errors in words.

A problem's field is the JSON path the client wrote (``steps.train.parents[0]``,
``watchers[1].webhook.url``); the API answers them as ``detail: [{field, message}]``.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Sequence
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from bridge.spec.errors import Loc, Problem, SpecError
from runtimes import safety


class FieldError(ValueError):
    """One thing wrong, at one field path (``field``), said in ``message``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message

    def detail(self) -> list[dict[str, str]]:
        return [{"field": self.field, "message": self.message}]


class DefinitionError(SpecError):
    """A Peak-style body that cannot be accepted; ``problems`` lists every reason."""

    def __init__(self, problems: Sequence[Problem], source: str = "<body>") -> None:
        super().__init__(problems, source)

    @property
    def detail(self) -> list[dict[str, str]]:
        """The problems as the API's ``detail``: ``[{field, message}]``."""
        return [{"field": p.path, "message": p.message} for p in self.problems]

    def __reduce__(self) -> tuple[type[DefinitionError], tuple[list[Problem], str]]:
        return (DefinitionError, (self.problems, self.source))


def field_path(loc: Loc) -> str:
    """``("steps", "a", "parents", 0)`` → ``steps.a.parents[0]`` (pydantic's ``[key]`` dropped)."""
    path = ""
    for part in loc:
        if part == "[key]":
            continue
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def describe(value: object) -> str:
    """A JSON value in words, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the string {safety.show(value)}"
    return f"the number {safety.show(repr(value))[1:-1]}"


_EXPECTED = {
    "string_type": "a string",
    "int_type": "a whole number",
    "float_type": "a number",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}
_BOUNDS = {
    "less_than_equal": ("at most", "le"),
    "greater_than_equal": ("at least", "ge"),
    "less_than": ("below", "lt"),
    "greater_than": ("above", "gt"),
}


def _message(error: ErrorDetails, root: type[BaseModel]) -> str:
    kind, value = error["type"], error.get("input")
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return _unknown_field(tuple(error["loc"]), root)
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, not {describe(value)}"
    if kind in _BOUNDS:
        words, key = _BOUNDS[kind]
        return f"must be {words} {_number(ctx[key])}, not {_number(value)}"
    if kind == "literal_error":
        return f"must be {ctx['expected']}, not {describe(value)}"
    if kind in ("too_short", "string_too_short") and ctx.get("min_length") == 1:
        return "must not be empty"
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"])
    return str(error["msg"])


def _number(value: object) -> str:
    """``120.0`` as ``120``; other values as :func:`repr`."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value)


def from_pydantic(exc: ValidationError, root: type[BaseModel]) -> list[Problem]:
    """Each of pydantic's errors for ``root`` as a problem with its field path."""
    return [Problem(field_path(tuple(e["loc"])), _message(e, root)) for e in exc.errors()]


def suggest(word: str, choices: Sequence[str]) -> str | None:
    """The choice ``word`` was probably meant to be: the same but for case, else a close one."""
    for choice in choices:
        if choice.lower() == word.lower():
            return choice
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return close[0] if close else None


def _unknown_field(loc: Loc, root: type[BaseModel]) -> str:
    model = _model_at(root, loc[:-1])
    allowed = [f.alias or n for n, f in model.model_fields.items()] if model else []
    message = f"unknown field {str(loc[-1])!r}"
    close = suggest(str(loc[-1]), allowed)
    if close:
        return f"{message}; did you mean {close!r}?"
    return f"{message} (allowed here: {', '.join(allowed)})" if allowed else message


def _model_at(root: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The model that describes the object at ``loc`` (through lists and maps)."""
    annotation: object = root
    for part in loc:
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = next((f for n, f in annotation.model_fields.items()
                          if (f.alias or n) == part), None)
            if field is None:
                return None
            annotation = field.annotation
        elif get_origin(annotation) in (list, dict):
            annotation = get_args(annotation)[-1]
        else:
            return None
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _unwrap(annotation: object) -> object:
    """``Annotated[X, ...] | None`` → ``X``."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            rest = [a for a in get_args(annotation) if a is not type(None)]
            if len(rest) != 1:
                return annotation
            annotation = rest[0]
        else:
            return annotation
