"""pytest's JUnit XML, read once for the record and the report."""

from __future__ import annotations

from pathlib import Path

from imageforge.records import junit

XML = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="1" skipped="1" tests="4" time="3.2">
<testcase classname="test_common" name="test_booted" time="1.5"/>
<testcase classname="test_common" name="test_keys" time="0.5">
  <failure message="assert 'degraded' == 'running'&#10;more">details</failure></testcase>
<testcase classname="test_common" name="test_mounts" time="0.2"><error message="">boom
second line</error></testcase>
<testcase name="test_vnc" time="1.0"><skipped message="no desktop"/></testcase>
</testsuite></testsuites>
"""


def test_each_case_has_its_outcome_and_first_message_line(tmp_path: Path) -> None:
    path = tmp_path / "verify.junit.xml"
    path.write_text(XML)
    assert junit.read_junit(path) == [
        junit.Case("test_common::test_booted", 1.5, "passed"),
        junit.Case("test_common::test_keys", 0.5, "failed", "assert 'degraded' == 'running'"),
        junit.Case("test_common::test_mounts", 0.2, "error", "boom"),
        junit.Case("test_vnc", 1.0, "skipped", "no desktop"),
    ]


def test_the_records_summary_counts_and_names_the_failures(tmp_path: Path) -> None:
    path = tmp_path / "verify.junit.xml"
    path.write_text(XML)
    assert junit.summary(path) == {
        "passed": 1,
        "failed": 1,
        "errors": 1,
        "skipped": 1,
        "failures": ["test_common::test_keys", "test_common::test_mounts"],
        "junit": "verify.junit.xml",
    }
