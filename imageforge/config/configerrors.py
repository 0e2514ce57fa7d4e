"""Validation errors of images.yml in the user's words: located, with what is allowed."""

from __future__ import annotations

import difflib
import types
import typing
from typing import Annotated, Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from imageforge.config import yamlsource
from imageforge.config.yamlsource import Mark
from imageforge.errors import ConfigError


def dotted(path: tuple[Any, ...]) -> str:
    """Key path as people write it: flavors.slurm-node.provisioners[0].script."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not str(part).isprintable():  # never a control character on the user's terminal
            out += f"[{str(part)!r}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def suggest(word: object, choices: typing.Iterable[object]) -> str:
    """'; did you mean X?' for the nearest choice, or nothing."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def explain(
    exc: ValidationError, merged: Any, display: str, root_model: type[BaseModel]
) -> ConfigError:
    """pydantic's first error as one located line: file:line:col, key path, what is allowed."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = tuple(p for p in first["loc"] if p != "[key]" and not _is_wrapper(p))
    mark = yamlsource.locate(merged, loc, Mark(display, 1, 1))
    kind = first["type"]
    annotation = _annotation_at(root_model, loc[:-1] if kind == "extra_forbidden" else loc)
    if kind == "extra_forbidden":
        allowed = _fields(annotation)
        message = (
            f"unknown key {loc[-1]!r}; allowed: {', '.join(allowed)}{suggest(loc[-1], allowed)}"
        )
        where = dotted(loc[:-1])
    elif kind == "literal_error":
        allowed = [str(a) for a in typing.get_args(_unwrap(annotation))]
        message = f"{first['input']!r} is not allowed; allowed: {', '.join(allowed)}"
        message += suggest(first["input"], allowed)
        where = dotted(loc)
    elif kind == "missing":
        message = f"missing required key {loc[-1]!r}"
        where = dotted(loc[:-1])
    elif "[key]" in first["loc"]:
        message = f"{loc[-1]!r} is not a valid name: {_human(first)}"
        where = dotted(loc)
    else:
        message = f"{_human(first)} (got {shown(first['input'])})"
        where = dotted(loc)
    others = {yamlsource.locate(merged, tuple(e["loc"]), mark) for e in errors[1:]} - {mark}
    more = f" (and {len(others)} more)" if others else ""
    return ConfigError(f"{mark}: {where}: {message}{more}")


def _human(error: ErrorDetails) -> str:
    """pydantic's message in this file's words."""
    kind, ctx = error["type"], error.get("ctx", {})
    if kind == "string_pattern_mismatch":
        return f"must match {ctx['pattern']}"
    if kind == "too_short":
        return "needs at least one entry"
    if kind == "string_type" and isinstance(error["input"], int | float | bool):
        return "input should be a string; quote it in YAML"
    if kind == "value_error":  # our own validators' words
        return str(error["ctx"]["error"])
    text = (
        error["msg"].replace("a valid tuple", "a list").replace("a valid dictionary", "a mapping")
    )
    return text[0].lower() + text[1:]


def shown(value: Any) -> str:
    """A value as an error message shows it: a list, nothing, 'text'."""
    if isinstance(value, dict):
        return "a mapping" if value else "an empty mapping"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    if value is None:
        return "nothing"
    return repr(value) if isinstance(value, str | int | float | bool) else type(value).__name__


def _is_wrapper(part: Any) -> bool:
    # pydantic adds validator names such as 'function-before[...]' to some locations
    return isinstance(part, str) and ("[" in part and part.endswith("]") and "-" in part)


def _unwrap(annotation: Any) -> Any:
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = args[0] if len(args) == 1 else annotation
            if len(args) != 1:
                return annotation
        else:
            return annotation


def _annotation_at(model: Any, loc: tuple[Any, ...]) -> Any:
    annotation: Any = model
    for part in loc:
        annotation = _unwrap(annotation)
        origin = typing.get_origin(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(str(part))
            if field is None:
                return None
            annotation = field.annotation
        elif origin is dict:
            annotation = typing.get_args(annotation)[1]
        elif origin is tuple:
            annotation = typing.get_args(annotation)[0]
        else:
            return None
    return annotation


def _fields(annotation: Any) -> list[str]:
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []
