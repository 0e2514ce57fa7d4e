"""YAML loading that remembers where every key and list item stood (file, line, column).

ruamel.yaml parses (YAML 1.2) and keeps positions; duplicate keys are its error too. A first pass
over the parser's events refuses, before anything is built, what a configuration file never
needs and a hostile one uses: anchors and aliases (the "billion laughs"), merge keys, tags,
complex keys and deep nesting. The file size is capped before it is read. Every problem is one
located ConfigError.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml import events as ev
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.reader import ReaderError
from ruamel.yaml.scalarbool import ScalarBoolean

from imageforge.errors import ConfigError

# ruamel.yaml parses in pure Python (~0.1 ms a value): these caps keep any file under a
# second. The shipped images.yml is 3 KiB with some 200 values.
MAX_BYTES = 256 * 1024
MAX_NODES = 3000
MAX_DEPTH = 32


@dataclass(frozen=True)
class Mark:
    """A position in a source file, 1-based like editors show it."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class LocatedDict(dict[Any, Any]):
    """A mapping that knows its own position and the position of each key."""

    mark: Mark | None
    marks: dict[Any, Mark]


class LocatedList(list[Any]):
    """A sequence that knows its own position and the position of each item."""

    mark: Mark
    marks: list[Mark]


def load(text: str, filename: str) -> Any:
    """Parse YAML text into plain values with positions; any problem is a located ConfigError."""
    if not text.strip():
        raise ConfigError(f"{filename}:1:1: the file is empty")
    try:
        _refuse_deep_flow(text, filename)
        _refuse_hostile(text, filename)
        data = YAML(typ="rt", pure=True).load(text)
    except MarkedYAMLError as exc:
        raise ConfigError(_marked_message(exc, filename)) from None
    except ReaderError as exc:
        raise ConfigError(f"{_offset_mark(text, exc.position, filename)}: {_reader(exc)}") from None
    except YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{filename}:1:1: YAML error: {first}") from None
    return _plain(data, filename)


def load_file(path: Path, display: str | None = None) -> Any:
    """Read (at most MAX_BYTES) and parse a YAML file."""
    name = display or str(path)
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(
            f"{name}: no such file", hint="run from the project root or pass --config"
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"{name}: is a directory, not a YAML file") from None
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_BYTES:
        raise ConfigError(f"{name}:1:1: the file is larger than {MAX_BYTES // 1024} KiB")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        column = len(before.rsplit(b"\n", 1)[-1].decode("utf-8", "replace")) + 1
        raise ConfigError(
            f"{name}:{line}:{column}: not UTF-8 text (byte 0x{data[exc.start]:02x}: {exc.reason})"
        ) from None
    return load(text, name)


def _mark(file: str, line: int, column: int) -> Mark:
    return Mark(file, line + 1, column + 1)


def _offset_mark(text: str, offset: int, file: str) -> Mark:
    before = text[:offset]
    return Mark(file, before.count("\n") + 1, len(before.rsplit("\n", 1)[-1]) + 1)


def _reader(exc: ReaderError) -> str:
    char = exc.character
    code = f"U+{char:04X}" if isinstance(char, int) else repr(char)
    return f"YAML syntax error: character {code} is not allowed in YAML text"


def _marked_message(exc: MarkedYAMLError, file: str) -> str:
    where = exc.problem_mark or exc.context_mark
    pos = str(_mark(file, where.line, where.column)) if where else f"{file}:1:1"
    problem = (exc.problem or exc.context or "invalid YAML").replace("\n", " ")
    if "duplicate key" in problem:
        return f"{pos}: {problem.split(' with value', 1)[0]}"
    message = f"{pos}: YAML syntax error: {problem}"
    if exc.context and exc.context_mark and exc.problem and exc.context_mark is not where:
        started = exc.context_mark
        message += (
            f" ({exc.context} started at line {started.line + 1}, column {started.column + 1})"
        )
    return message


_FLOW_SYNTAX = re.compile(r"""[\[\]{}'"#]""")
_QUOTED_REST = {'"': re.compile(r'(?:[^"\\]|\\.)*"', re.S), "'": re.compile(r"(?:[^']|'')*'")}
_BLOCK_TOKEN_START = ("", "\n", ":", "-", "?")
_TOKEN_START = (*_BLOCK_TOKEN_START, ",", "[", "{")


def _refuse_deep_flow(text: str, file: str) -> None:
    """Refuse `[[[[...` before the parser sees it: its scanner looks ahead over every open
    bracket (up to a second of work for one KiB). A rough lexer: quotes and comments are
    skipped, brackets counted where a collection can start; the event walk stays exact."""
    depth = 0
    position = 0
    while match := _FLOW_SYNTAX.search(text, position):
        char, start = match.group(), match.start()
        position = start + 1
        before = start - 1
        while before >= 0 and text[before] in " \t":
            before -= 1
        previous = text[before] if before >= 0 else ""
        if char == "#" and previous != text[start - 1 : start]:  # whitespace before: a comment
            newline = text.find("\n", start)
            position = newline if newline >= 0 else len(text)
        elif char in _QUOTED_REST and depth and previous in _TOKEN_START:
            rest = _QUOTED_REST[char].match(text, start + 1)
            position = rest.end() if rest else len(text)
        elif char in "[{" and previous in (_TOKEN_START if depth else _BLOCK_TOKEN_START):
            depth += 1
            if depth > MAX_DEPTH:
                raise ConfigError(f"{_offset_mark(text, start, file)}: {_too_deep()}")
        elif char in "]}" and depth:
            depth -= 1


def _too_deep() -> str:
    return f"nested more than {MAX_DEPTH} levels deep"


class _Frame:
    """A mapping or sequence being parsed: how many children so far, and which keys."""

    def __init__(self, mapping: bool) -> None:
        self.mapping = mapping
        self.children = 0
        self.keys: dict[str, int] = {}


def _refuse_hostile(text: str, file: str) -> None:
    """Walk the parser's events (cheap, iterative) and refuse what could blow up or mislead."""
    stack: list[_Frame] = []
    nodes = 0
    for event in YAML(typ="rt", pure=True).parse(text):
        mark = _mark(file, event.start_mark.line, event.start_mark.column)
        if isinstance(event, ev.CollectionEndEvent):
            stack.pop()
            _count(stack)
            continue
        if not isinstance(event, ev.NodeEvent):
            continue
        nodes += 1
        if nodes > MAX_NODES:
            raise ConfigError(f"{mark}: more than {MAX_NODES} values in one file")
        is_key = bool(stack) and stack[-1].mapping and stack[-1].children % 2 == 0
        if isinstance(event, ev.AliasEvent) or event.anchor is not None:
            raise ConfigError(
                f"{mark}: anchors and aliases (&, *) are not allowed in this file",
                hint="put shared flavor settings under `defaults:`",
            )
        tag = getattr(event, "tag", None)
        if tag is not None:
            shown = str(tag).replace("tag:yaml.org,2002:", "!!")
            raise ConfigError(
                f"{mark}: YAML tags such as {shown!r} are not allowed in this file",
                hint="quote a value to make it a string",
            )
        if isinstance(event, ev.CollectionStartEvent):
            if is_key:
                raise ConfigError(f"{mark}: mapping keys must be plain strings")
            if len(stack) >= MAX_DEPTH:
                raise ConfigError(f"{mark}: {_too_deep()}")
            stack.append(_Frame(isinstance(event, ev.MappingStartEvent)))
            continue
        if is_key and isinstance(event, ev.ScalarEvent):
            _check_key(stack[-1], event, mark)
        _count(stack)


def _check_key(frame: _Frame, event: ev.ScalarEvent, mark: Mark) -> None:
    if event.value == "<<" and event.style is None:
        raise ConfigError(
            f"{mark}: merge keys (<<) are not allowed in this file",
            hint="put shared flavor settings under `defaults:`",
        )
    if event.value in frame.keys:
        raise ConfigError(
            f"{mark}: duplicate key {event.value!r} (first defined at line "
            f"{frame.keys[event.value]})"
        )
    frame.keys[event.value] = mark.line


def _count(stack: list[_Frame]) -> None:
    if stack:
        stack[-1].children += 1


def _plain(node: Any, file: str) -> Any:
    """ruamel's round-trip values as plain Python values with Located positions."""
    if isinstance(node, CommentedMap):
        result = LocatedDict()
        result.mark = _mark(file, node.lc.line, node.lc.col)
        result.marks = {}
        for key, value in node.items():
            plain_key = _plain(key, file)
            result[plain_key] = _plain(value, file)
            result.marks[plain_key] = _mark(file, *node.lc.key(key))
        return result
    if isinstance(node, CommentedSeq):
        items = LocatedList(_plain(item, file) for item in node)
        items.mark = _mark(file, node.lc.line, node.lc.col)
        items.marks = [_mark(file, *node.lc.item(i)) for i in range(len(node))]
        return items
    if isinstance(node, bool | ScalarBoolean):
        return bool(node)
    for plain in (str, int, float):
        if isinstance(node, plain):
            return plain(node)
    return node  # None, a date, a set: the model judges it


def locate(data: Any, path: tuple[Any, ...], default: Mark) -> Mark:
    """The most precise known position of a key path inside loaded data."""
    best = getattr(data, "mark", default)
    node = data
    for part in path:
        if (isinstance(node, LocatedDict) and part in node) or (
            isinstance(node, LocatedList) and isinstance(part, int) and 0 <= part < len(node)
        ):
            best = node.marks[part]
            node = node[part]
        else:
            break
    return best


def merge(base: Any, override: Any) -> Any:
    """Deep-merge two loaded mappings; positions follow the value that wins."""
    if not (isinstance(base, dict) and isinstance(override, dict)):
        return override
    result = LocatedDict()
    result.mark = getattr(override, "mark", getattr(base, "mark", None))
    result.marks = {}
    for source in (base, override):
        for key, value in source.items():
            result[key] = merge(result[key], value) if key in result else value
            if hasattr(source, "marks") and key in source.marks:
                result.marks[key] = source.marks[key]
    return result
