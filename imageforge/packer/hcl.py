"""Writing HCL values safely.

Every user-supplied value reaches a template through `string()` (or `value()`, which calls it),
so quotes, backslashes, `${`, `%{`, newlines and control characters can never break out of a
string literal or start an interpolation. What this module returns is `Raw`: the only kind of
text render.py lets a template print. Layout (alignment on '=') is left to `packer fmt`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_UNICODE_ESCAPED = frozenset([*map(chr, range(0x20)), "\x7f", "\u2028", "\u2029"])
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


class Raw(str):
    """An HCL expression written as is (a variable reference, or text escaped here)."""


def inner(text: str) -> str:
    """The inside of a quoted HCL string literal whose value is exactly `text`.

    A "$" or "%" before "{" is written as a unicode escape: HCL starts templates only at a
    literal "${" or "%{", so the escaped form can never open one (and, unlike "$${", every
    HCL parser reads it back the same way).
    """
    text = str(text)
    out = []
    for index, char in enumerate(text):
        following = text[index + 1 : index + 2]
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif char in _UNICODE_ESCAPED or (char in "$%" and following == "{"):
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return "".join(out)


def string(text: str) -> Raw:
    """A quoted HCL string literal whose value is exactly `text`."""
    return Raw('"' + inner(text) + '"')


def template(*parts: str) -> Raw:
    """A quoted HCL string of literal text (escaped) and Raw interpolations such as
    Raw("${var.artifact_dir}"), which are written as they are."""
    return Raw('"' + "".join(p if isinstance(p, Raw) else inner(p) for p in parts) + '"')


def value(obj: Any, indent: int = 0) -> Raw:
    """Any config value as an HCL expression; maps become multi-line objects."""
    if isinstance(obj, Raw):
        return obj
    if obj is None:
        return Raw("null")
    if isinstance(obj, bool):
        return Raw("true" if obj else "false")
    if isinstance(obj, int | float):
        return Raw(repr(obj))
    if isinstance(obj, str):
        return string(obj)
    if isinstance(obj, Mapping):
        return _object(obj, indent)
    if isinstance(obj, Sequence):
        return Raw("[" + ", ".join(value(item, indent) for item in obj) + "]")
    raise TypeError(f"cannot write {type(obj).__name__} as HCL")


def _object(mapping: Mapping[str, Any], indent: int) -> Raw:
    if not mapping:
        return Raw("{}")
    pad = " " * (indent + 2)
    lines = [f"{pad}{string(str(k))} = {value(v, indent + 2)}" for k, v in mapping.items()]
    return Raw("{\n" + "\n".join(lines) + "\n" + " " * indent + "}")


def attributes(pairs: Mapping[str, Any], indent: int = 2) -> Raw:
    """Attribute lines `name = value`; the names are ours (identifiers), the values escaped."""
    pad = " " * indent
    for key in pairs:
        if not IDENTIFIER.fullmatch(key):
            raise ValueError(f"not an HCL attribute name: {key!r}")
    return Raw("\n".join(f"{pad}{key} = {value(obj, indent)}" for key, obj in pairs.items()))
