"""Quality of generated code (issue 20): lint (ruff), security (bandit) and complexity (radon) on planted code, and an
action result that adds findings says so."""

from __future__ import annotations

import asyncio

import pytest

from midline.server import actions, quality
from midline.server.actions import Actions, Replace
from midline.server.config import Config
from midline.server.documents import Document

from .test_actions import Canned

PLANTED = '''import os


def pick(items, key):
    unused = 1
    if not items:
        return None
    for item in items:
        if item == key or eval(key):
            return item
    return items[0]
'''


def test_lint_security_and_complexity_of_planted_code():
    if not quality.ruff_available():
        pytest.skip("ruff is not installed (the test extra)")
    assert [(f.code, f.line) for f in quality.lint(PLANTED)] == [("F401", 1), ("F841", 5)]
    assert [(f.code, f.line) for f in quality.security_findings(PLANTED)] == [("B307", 9)]
    assert quality.complexity(PLANTED) == 5  # 1 + if + for + if + or
    assert quality.complexity("def f(:\n") is None
    assert quality.measure(PLANTED) == {"complexity": 5, "lint": 2, "security": 1}


def test_added_findings_are_counted_by_rule_and_message_not_line():
    before = "import os\n\n\ndef f():\n    return 1\n"
    moved = "import os\n\n\n\n\ndef f():\n    return 1\n"
    assert quality.added_findings(before, moved, "python") == []  # the same finding, lower down
    adds = quality.added_findings(before, before.replace("return 1", "x = 2\n    return eval('1')"), "python")
    assert [f.code for f in adds] == ["F841", "B307"]
    assert quality.describe(adds) == (
        "adds 1 lint finding (F841 Local variable `x` is assigned to but never used (line 5)) and 1 security "
        "finding (B307 Use of possibly insecure function - consider using safer ast.literal_eval. (line 6))")
    assert quality.added_findings(before, before + "x = 1\n", "go") == [] and quality.describe([]) is None


def test_a_fix_that_adds_lint_findings_says_so(tmp_path):
    if not quality.ruff_available():
        pytest.skip("ruff is not installed (the test extra)")
    code = "def total(xs):\n    return sum(xs) + 1\n"
    d = Document((tmp_path / "t.py").as_uri(), "python", 1, code)
    offer = next(o for o in actions.offers(d, 0, 0) if o.action == "fix")
    answer = "def total(xs):\n    n = len(xs)\n    return sum(xs)\n"
    outcome = asyncio.run(Actions(Canned({"fix": answer}), Config()).resolve(d, offer.data))
    assert isinstance(outcome, Replace) and outcome.note == "unverified: no tests found"
    assert outcome.findings == "adds 1 lint finding (F841 Local variable `n` is assigned to but never used (line 2))"
    clean_fix = "def total(xs):\n    return sum(xs)\n"
    clean = asyncio.run(Actions(Canned({"fix": clean_fix}), Config()).resolve(d, offer.data))
    assert isinstance(clean, Replace) and clean.findings is None
