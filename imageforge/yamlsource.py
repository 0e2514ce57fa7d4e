"""YAML loading that remembers where every key and list item stood (file, line, column)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from imageforge.errors import ConfigError


@dataclass(frozen=True)
class Mark:
    """A position in a source file, 1-based like editors show it."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class LocatedDict(dict):
    """A mapping that knows its own position and the position of each key."""

    mark: Mark
    marks: dict[Any, Mark]


class LocatedList(list):
    """A sequence that knows its own position and the position of each item."""

    mark: Mark
    marks: list[Mark]


def _mark(file: str, node: yaml.Node) -> Mark:
    return Mark(file, node.start_mark.line + 1, node.start_mark.column + 1)


class _Loader(yaml.SafeLoader):
    filename = "<string>"

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> LocatedDict:
        result = LocatedDict()
        result.mark = _mark(self.filename, node)
        result.marks = {}
        self.flatten_mapping(node)
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool) and key is not None:
                raise ConfigError(
                    f"{_mark(self.filename, key_node)}: mapping keys must be plain strings"
                )
            if key in result:
                raise ConfigError(
                    f"{_mark(self.filename, key_node)}: duplicate key {key!r} "
                    f"(first defined at line {result.marks[key].line})"
                )
            result[key] = self.construct_object(value_node, deep=True)
            result.marks[key] = _mark(self.filename, key_node)
        return result

    def construct_sequence(self, node: yaml.SequenceNode, deep: bool = False) -> LocatedList:
        result = LocatedList(self.construct_object(child, deep=True) for child in node.value)
        result.mark = _mark(self.filename, node)
        result.marks = [_mark(self.filename, child) for child in node.value]
        return result


_Loader.add_constructor("tag:yaml.org,2002:map", _Loader.construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:seq", _Loader.construct_sequence)


def load(text: str, filename: str) -> Any:
    """Parse YAML text; a syntax error becomes a located ConfigError."""
    loader = _Loader(text)
    loader.filename = filename
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        where = exc.problem_mark or exc.context_mark
        pos = f"{filename}:{where.line + 1}:{where.column + 1}" if where else filename
        message = f"{pos}: YAML syntax error: {exc.problem or exc.context or 'invalid YAML'}"
        if exc.context and exc.context_mark and exc.problem:
            started = exc.context_mark
            message += (
                f" ({exc.context} started at line {started.line + 1}, column {started.column + 1})"
            )
        raise ConfigError(message) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{filename}: YAML error: {exc}") from None
    finally:
        loader.dispose()


def load_file(path: Path, display: str | None = None) -> Any:
    """Read and parse a YAML file."""
    name = display or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{name}: no such file", hint="run from the project root or pass --config"
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return load(text, name)


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
