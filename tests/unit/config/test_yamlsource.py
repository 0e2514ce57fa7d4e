"""YAML loading: positions, and one located line for every kind of bad or hostile file."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from imageforge import config
from imageforge.config import yamlsource
from imageforge.config.yamlsource import Mark
from imageforge.errors import ConfigError

from ..conftest import write


def load_error(text: str | bytes, tmp_path: Path) -> str:
    path = tmp_path / "images.yml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        yamlsource.load_file(path, "images.yml")
    message = str(caught.value)
    assert "\n" not in message
    assert caught.value.exit_code == 2
    return message


BAD = {
    "scanner: a tab in the indentation": (
        "a:\n\tb: 1\n",
        "images.yml:2:1: YAML syntax error: found character '\\t' that cannot start any token",
    ),
    "scanner: mapping value in a plain scalar": (
        "a: b: c\n",
        "images.yml:1:5: YAML syntax error: mapping values are not allowed here",
    ),
    "parser: unclosed flow sequence": (
        "flavors:\n  a:\n    user: [unclosed\n",
        "images.yml:4:1: YAML syntax error: expected ',' or ']', but got '<stream end>' "
        "(while parsing a flow sequence started at line 3, column 11)",
    ),
    "composer: two documents": (
        "a: 1\n---\nb: 2\n",
        "images.yml:2:1: YAML syntax error: but found another document "
        "(expected a single document in the stream started at line 1, column 1)",
    ),
    "duplicate key": (
        "flavors:\n  a: {}\n  b: {}\n  a: {}\n",
        "images.yml:4:3: duplicate key 'a' (first defined at line 2)",
    ),
    "constructor: keys equal only once constructed": (
        "a:\n  1: x\n  0x1: y\n",
        'images.yml:3:3: found duplicate key "1"',
    ),
    "NUL byte": (
        "a: b\x00c\n",
        "images.yml:1:5: YAML syntax error: character U+0000 is not allowed in YAML text",
    ),
    "escape character": (
        "a: 1\nb: \x1b[31m\n",
        "images.yml:2:4: YAML syntax error: character U+001B is not allowed in YAML text",
    ),
    "not UTF-8": (
        b"a: 1\nb: caf\xe9\n",
        "images.yml:2:7: not UTF-8 text (byte 0xe9: invalid continuation byte)",
    ),
    "UTF-16": (
        "a: 1\n".encode("utf-16"),
        "images.yml:1:1: not UTF-8 text (byte 0xff: invalid start byte)",
    ),
    "empty file": ("", "images.yml:1:1: the file is empty"),
    "only blanks": ("\n  \n", "images.yml:1:1: the file is empty"),
    "alias": (
        "a: &x [1]\nb: *x\n",
        "images.yml:1:4: anchors and aliases (&, *) are not allowed in this file "
        "(hint: put shared flavor settings under `defaults:`)",
    ),
    "merge key": (
        "a:\n  <<: {b: 1}\n",
        "images.yml:2:3: merge keys (<<) are not allowed in this file "
        "(hint: put shared flavor settings under `defaults:`)",
    ),
    "custom tag": (
        "a: !shell rm -rf /\n",
        "images.yml:1:4: YAML tags such as '!shell' are not allowed in this file (hint: quote a value to make it a string)",
    ),
    "python tag": (
        "a: !!python/object:os.system {}\n",
        "images.yml:1:4: YAML tags such as '!!python/object:os.system' are not allowed in this file (hint: quote a value to make it a string)",
    ),
    "str tag": (
        "a: !!str 1\n",
        "images.yml:1:4: YAML tags such as '!!str' are not allowed in this file (hint: quote a value to make it a string)",
    ),
    "complex key": ("? [a, b]\n: 1\n", "images.yml:1:3: mapping keys must be plain strings"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_yaml_gives_one_located_line(tmp_path: Path, name: str) -> None:
    text, expected = BAD[name]
    assert load_error(text, tmp_path) == expected


def test_billion_laughs_is_refused_fast(tmp_path: Path) -> None:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    started = time.monotonic()
    message = load_error("\n".join(lines) + "\n", tmp_path)
    assert time.monotonic() - started < 0.5
    assert message.startswith("images.yml:1:5: anchors and aliases")


@pytest.mark.parametrize("opener", ["[", "{a: ", "- "])
def test_deep_nesting_is_refused_fast(tmp_path: Path, opener: str) -> None:
    if opener == "- ":
        text = "".join("  " * i + "-\n" for i in range(200))
    else:
        text = opener * 50_000 + "\n"
    started = time.monotonic()
    message = load_error(text, tmp_path)
    assert time.monotonic() - started < 0.5
    assert message.endswith(f"nested more than {yamlsource.MAX_DEPTH} levels deep")


def test_nesting_up_to_the_limit_loads() -> None:
    depth = yamlsource.MAX_DEPTH
    data = yamlsource.load("[" * depth + "]" * depth + "\n", "f")
    for _ in range(depth - 1):
        data = data[0]
    assert data == []


def test_huge_file_is_refused_before_parsing(tmp_path: Path) -> None:
    text = "a: " + "x" * (yamlsource.MAX_BYTES) + "\n"
    started = time.monotonic()
    message = load_error(text, tmp_path)
    assert time.monotonic() - started < 0.5
    assert message == "images.yml:1:1: the file is larger than 256 KiB"


@pytest.mark.parametrize(
    "text",
    [
        "".join(f"k{i}: v\n" for i in range(2000)),  # a long mapping
        "a: [" + "1, " * 60_000 + "]\n",  # a long flow list
        "a: [" + "[], " * 30_000 + "]\n",  # many small collections
    ],
)
def test_too_many_values_are_refused_fast(tmp_path: Path, text: str) -> None:
    started = time.monotonic()
    message = load_error(text, tmp_path)
    assert time.monotonic() - started < 0.5
    assert message.endswith(f"more than {yamlsource.MAX_NODES} values in one file")


def test_brackets_in_text_are_not_nesting() -> None:
    text = (
        "a: x" + "[" * 40 + "\n"  # a plain scalar
        "b: ['" + "[" * 40 + "', \"" + "{" * 40 + '"]\n'  # quoted scalars in a flow list
        "c: 1  # " + "[" * 40 + "\n"  # a comment
    )
    data = yamlsource.load(text, "f")
    assert data == {"a": "x" + "[" * 40, "b": ["[" * 40, "{" * 40], "c": 1}


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^nope.yml: no such file"):
        yamlsource.load_file(tmp_path / "nope.yml", "nope.yml")
    with pytest.raises(ConfigError, match=r"^dir: is a directory"):
        yamlsource.load_file(tmp_path, "dir")


def test_positions_of_keys_and_items() -> None:
    data = yamlsource.load("top:\n  key: value\n  list:\n    - one\n    - {two: 2}\n", "f.yml")
    assert data == {"top": {"key": "value", "list": ["one", {"two": 2}]}}
    assert data.marks["top"] == Mark("f.yml", 1, 1)
    assert data["top"].marks["list"] == Mark("f.yml", 3, 3)
    assert data["top"]["list"].marks == [Mark("f.yml", 4, 7), Mark("f.yml", 5, 7)]
    assert yamlsource.locate(data, ("top", "list", 1, "two"), Mark("f.yml", 1, 1)) == Mark(
        "f.yml", 5, 8
    )


def test_values_are_plain_python_types() -> None:
    data = yamlsource.load("a: 1.5\nb: 0x10\nc: true\nd: |\n  text\ne: yes\n", "f")
    assert [type(v) for v in data.values()] == [float, int, bool, str, str]
    assert data["e"] == "yes"  # YAML 1.2: only true/false are booleans


@pytest.mark.parametrize(
    ("text", "shown"),
    [("- a\n- b\n", "a list"), ("just text\n", "'just text'"), ("~\n", "nothing")],
)
def test_top_level_must_be_a_mapping(scratch: Path, text: str, shown: str) -> None:
    write(scratch, text)
    with pytest.raises(ConfigError) as caught:
        config.load("images.yml")
    assert str(caught.value) == (
        f"images.yml:1:1: the file must be a mapping with a 'flavors' key (got {shown})"
    )
