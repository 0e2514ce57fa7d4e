"""HCL writing: any string survives a round trip through python-hcl2, and output is canonical."""

from __future__ import annotations

import hcl2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imageforge.packer import hcl

PARSE = hcl2.SerializationOptions(
    strip_string_quotes=True, with_comments=False, explicit_blocks=False
)


def parse(text: str) -> dict:
    return hcl2.loads(text, serialization_options=PARSE)


NASTY = ['"', "\\", "${", "%{", "$${", "\n", "\r\n", "\t", "\x00", "\x1b", "ü", "日本", "🙂", "}"]
text = st.lists(st.text(max_size=8) | st.sampled_from(NASTY), max_size=12).map("".join)


@settings(max_examples=300, deadline=None)
@given(text)
def test_any_string_round_trips(value: str) -> None:
    parsed = parse(f"x = {hcl.string(value)}\n")["x"]
    assert parsed == value


def test_interpolation_cannot_be_injected() -> None:
    written = hcl.string('a"} ${file("/etc/shadow")} %{ if true }x%{ endif }')
    assert "${" not in written and "%{" not in written
    assert written == (
        '"a\\"} \\u0024{file(\\"/etc/shadow\\")} \\u0025{ if true }x\\u0025{ endif }"'
    )


def test_control_characters_use_unicode_escapes() -> None:
    assert hcl.string("a\x00b\x7f") == '"a\\u0000b\\u007f"'


def test_attributes_leave_alignment_to_packer_fmt() -> None:
    text = hcl.attributes(
        {"a": 1, "long_name": "x", "tags": {"k": "v", "key2": hcl.Raw("var.x")}, "b": None}
    )
    assert text.splitlines() == [
        "  a = 1",
        '  long_name = "x"',
        "  tags = {",
        '    "k" = "v"',
        '    "key2" = var.x',
        "  }",
        "  b = null",
    ]
    assert isinstance(text, hcl.Raw)


def test_attribute_names_must_be_identifiers() -> None:
    with pytest.raises(ValueError, match="not an HCL attribute name"):
        hcl.attributes({"x = 1\ny": 2})


def test_template_escapes_text_and_keeps_interpolations() -> None:
    written = hcl.template(hcl.Raw("${var.dir}/"), 'a"${b}', ".box")
    assert written == '"${var.dir}/a\\"\\u0024{b}.box"'
    assert parse(f"x = {written}\n")["x"] == '${var.dir}/a"${b}.box'


def test_line_separators_are_escaped() -> None:
    assert hcl.string("a\u2028b\u2029") == '"a\\u2028b\\u2029"'
