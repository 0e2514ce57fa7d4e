"""pytest's JUnit XML, as the verification writes it: each test case with its outcome, read
once for the record (the counts and the failed names) and for the HTML report."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Case:
    """One test of the verification's JUnit XML."""

    name: str
    seconds: float
    outcome: str  # passed, failed, error or skipped
    message: str = ""


def read_junit(path: Path) -> list[Case]:
    """Every test case of pytest's JUnit XML, with its outcome and first line of message."""
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag, name in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
            found = case.find(tag)
            if found is not None:
                text = found.get("message") or found.text or ""
                outcome, message = name, (text.strip().splitlines() or [""])[0][:300]
                break
        classname = case.get("classname", "")
        name = f"{classname}::{case.get('name', '')}" if classname else case.get("name", "")
        cases.append(Case(name, float(case.get("time") or 0), outcome, message))
    return cases


def summary(path: Path) -> dict[str, Any]:
    """The record's account of a verification: counts and the names of failed tests."""
    cases = read_junit(path)
    counted = {
        k: sum(c.outcome == k for c in cases) for k in ("passed", "failed", "error", "skipped")
    }
    return {
        "passed": counted["passed"],
        "failed": counted["failed"],
        "errors": counted["error"],
        "skipped": counted["skipped"],
        "failures": [c.name for c in cases if c.outcome in ("failed", "error")],
        "junit": path.name,
    }
