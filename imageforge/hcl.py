"""Writing HCL values safely and in `packer fmt` canonical form.

Every user-supplied value reaches a template through `string()` (or `value()`, which calls it),
so quotes, backslashes, `${`, `%{`, newlines and control characters can never break out of a
string literal or start an interpolation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


class Raw(str):
    """An HCL expression written as is (a variable reference, for example)."""


def string(text: str) -> str:
    """A quoted HCL string literal whose value is exactly `text`.

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
        elif ord(char) < 0x20 or ord(char) == 0x7F or (char in "$%" and following == "{"):
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def value(obj: Any, indent: int = 0) -> str:
    """Any config value as an HCL expression; maps become multi-line, aligned objects."""
    if isinstance(obj, Raw):
        return str(obj)
    if obj is None:
        return "null"
    if isinstance(obj, bool):
        return "true" if obj else "false"
    if isinstance(obj, int | float):
        return repr(obj)
    if isinstance(obj, str):
        return string(obj)
    if isinstance(obj, Mapping):
        return _object(obj, indent)
    if isinstance(obj, Sequence):
        return "[" + ", ".join(value(item, indent) for item in obj) + "]"
    raise TypeError(f"cannot write {type(obj).__name__} as HCL")


def _object(mapping: Mapping[str, Any], indent: int) -> str:
    if not mapping:
        return "{}"
    keys = {key: string(str(key)) for key in mapping}
    width = max(len(k) for k in keys.values())
    pad = " " * (indent + 2)
    lines = [f"{pad}{keys[k].ljust(width)} = {value(v, indent + 2)}" for k, v in mapping.items()]
    return "{\n" + "\n".join(lines) + "\n" + " " * indent + "}"


def attributes(pairs: Mapping[str, Any], indent: int = 2) -> str:
    """Attribute lines as `packer fmt` writes them.

    Single-line attributes are aligned on '='; a multi-line value breaks the alignment group,
    as hclwrite does, and starts a new one after it.
    """
    lines: list[str] = []
    group: list[tuple[str, str]] = []
    pad = " " * indent

    def flush() -> None:
        if group:
            width = max(len(k) for k, _ in group)
            lines.extend(f"{pad}{k.ljust(width)} = {v}" for k, v in group)
            group.clear()

    for key, obj in pairs.items():
        rendered = value(obj, indent)
        if "\n" in rendered:
            flush()
            lines.append(f"{pad}{key} = {rendered}")
        else:
            group.append((key, rendered))
    flush()
    return "\n".join(lines)
