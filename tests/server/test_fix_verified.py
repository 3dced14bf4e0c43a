"""Fix, verified: a fix is run against the evidence the workspace has for the function (its doctests, the workspace
tests that name it, a reproducible diagnostic) on the current code and on the fix, in the sandbox, and offered only
if it passes what the original passed and fixes something that failed; with no evidence it is offered marked
unverified, without a sandbox run. Scripted model answers (`Canned`), real sandbox runs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from midline.server import actions, fix_evidence
from midline.server.actions import Actions, Nothing, Replace
from midline.server.config import Config
from midline.server.documents import Document
from midline.server.fix_evidence import Evidence, judge
from midline.server.targets import Target
from midline.server.verify import TestRun

from ..marks import needs_sandbox
from .test_actions import Canned

CORRECT = '''import math


def mean_and_spread(values):
    """The mean and the population standard deviation of `values`."""
    total = 0.0
    for v in values:
        total += v
    mean = total / len(values)
    var = sum((v - mean) ** 2 for v in values) / len(values)
    return mean, math.sqrt(var)
'''
BUGGY = CORRECT.replace("/ len(values)\n    return", "/ (len(values) - 1)\n    return")  # the sample deviation
FIX = CORRECT[CORRECT.index("def mean_and_spread") :]
BREAKS_THE_MEAN = FIX.replace("mean = total / len(values)", "mean = total / (len(values) + 1)")
TESTS = '''from stats import mean_and_spread


def test_mean():
    assert mean_and_spread([1.0, 2.0, 3.0])[0] == 2.0


def test_spread():
    assert mean_and_spread([1.0, 3.0])[1] == 1.0


def test_unrelated():
    assert sum([1, 2]) == 3
'''
# What the model answered in the report (issue 20): the body's first line at the top level, then the function again.
SYNTAX_BROKEN = (
    "    total += v\nmean = total / total\n" + FIX.replace('    """The mean', '    """Mean').split("\n", 1)[0] + "\n"
    "    total = 0.0\n    for v in values:\n        total += v\n    return total / len(values), 0.0\n"
)


def workspace(tmp_path: Path, module: str, tests: str | None = TESTS) -> Document:
    """A workspace folder with stats.py (open in the editor) and, if given, tests/test_stats.py."""
    (tmp_path / "stats.py").write_text(module)
    if tests is not None:
        (tmp_path / "tests").mkdir()
        (tmp_path / "tests" / "test_stats.py").write_text(tests)
    return Document((tmp_path / "stats.py").as_uri(), "python", 1, module)


def fix(d: Document, answer: str, root: Path | None, diagnostics=()) -> Replace | Nothing:
    offered = actions.offers(d, d.text.index("def "), d.text.index("def "), diagnostics)
    offer = next(o for o in offered if o.action == "fix")
    acts = Actions(Canned({"fix": answer}), Config(), str(root) if root else None)
    return asyncio.run(acts.resolve(d, offer.data))


def test_the_reported_syntax_broken_fix_is_withheld_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(actions, "run_tests", lambda *a, **k: pytest.fail("nothing may run"))
    d = workspace(tmp_path, CORRECT)
    broken = CORRECT[: CORRECT.index("def mean")] + SYNTAX_BROKEN
    with pytest.raises(SyntaxError, match="unexpected indent"):
        compile(broken, "stats.py", "exec")
    outcome = fix(d, SYNTAX_BROKEN, tmp_path)
    assert isinstance(outcome, Nothing) and "did not parse" in outcome.message


def test_tree_sitter_errors_and_missing_nodes_gate_other_languages():
    go = "package calc\n\nfunc Add(a, b int) int {\n\treturn a + b\n}\n"
    target = Target("function", "Add", go.index("func"), len(go), go[go.index("func") :])
    missing_brace = "func Add(a, b int) int {\n\treturn a - b\n"  # tree-sitter inserts a MISSING `}`
    assert actions.fix_gate(go, target, missing_brace, "go") is None
    assert actions.fix_gate(go, target, "func Add(a, b int) int {\n\treturn b + a\n}\n", "go") is not None


@needs_sandbox
def test_a_fix_that_makes_a_failing_test_pass_is_offered_with_what_it_passed(tmp_path):
    outcome = fix(workspace(tmp_path, BUGGY), FIX, tmp_path)
    assert isinstance(outcome, Replace), outcome
    assert outcome.note == "passes 1 test that failed before and the 1 that passed"
    assert outcome.titled("midline: Fix `mean_and_spread`") == (
        "midline: Fix `mean_and_spread`: passes 1 test that failed before and the 1 that passed"
    )


@needs_sandbox
def test_a_fix_that_breaks_a_passing_test_is_withheld(tmp_path):
    outcome = fix(workspace(tmp_path, BUGGY), BREAKS_THE_MEAN, tmp_path)
    assert isinstance(outcome, Nothing) and "not offered: it breaks 1 test that passed before (test_mean)" in (
        outcome.message
    )


@needs_sandbox
def test_a_fix_of_a_function_whose_tests_all_pass_is_not_offered(tmp_path):
    rewritten = FIX.replace("for v in values:\n        total += v", "total = sum(values)")  # correct, but needless
    outcome = fix(workspace(tmp_path, CORRECT), rewritten, tmp_path)
    assert isinstance(outcome, Nothing)
    assert "the current code passes all 2 tests (2 workspace tests)" in outcome.message


def test_with_no_evidence_the_fix_is_offered_unverified_and_nothing_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(actions, "run_tests", lambda *a, **k: pytest.fail("nothing may run"))
    (tmp_path / "untested").mkdir()
    (tmp_path / "elsewhere").mkdir()
    untested = workspace(tmp_path / "untested", BUGGY, TESTS.replace("mean_and_spread", "median"))  # names it not
    outside = workspace(tmp_path / "elsewhere", BUGGY)  # tests there, but no workspace folder is open
    for d, root in ((untested, tmp_path / "untested"), (outside, None)):
        outcome = fix(d, FIX, root)
        assert isinstance(outcome, Replace) and outcome.note == "unverified: no tests found"
        assert outcome.titled("midline: Fix `f`") == "midline: Fix `f` (unverified: no tests found)"


DOCTESTED = '''def clamp(x, low, high):
    """Keep `x` within `low`..`high`.

    >>> clamp(5, 0, 3)
    3
    >>> clamp(-1, 0, 3)
    0
    """
    return max(low, min(x, low))
'''
DOCTESTED_FIX = DOCTESTED.replace("min(x, low)", "min(x, high)")


@needs_sandbox
def test_the_functions_doctests_are_evidence_without_a_workspace(tmp_path):
    d = Document((tmp_path / "numbers.py").as_uri(), "python", 1, DOCTESTED)
    outcome = fix(d, DOCTESTED_FIX, None)
    assert isinstance(outcome, Replace) and outcome.note == "passes 1 test that failed before"
    wrong = fix(d, DOCTESTED.replace("min(x, low)", "min(x, high) + 1"), None)
    assert isinstance(wrong, Nothing) and "still fails the 1 test that fails now (1 doctest)" in wrong.message


COUNT = "def count_above(values, limit):\n    n = 0\n    for i in range(1, len(values)):\n" \
        "        if values[i] > limit:\n            n += 1\n    return n\n"


@needs_sandbox
def test_a_diagnostic_with_a_reproducible_message_is_evidence(tmp_path):
    d = Document((tmp_path / "numbers.py").as_uri(), "python", 1, COUNT)
    diagnostic = [(2, "count_above([5.0, 1.0], 2.0) returned 0, expected 1")]
    good = COUNT.replace("range(1, len(values))", "range(len(values))")
    outcome = fix(d, good, None, diagnostic)
    assert isinstance(outcome, Replace) and outcome.note == "passes 1 test that failed before"
    still = fix(d, COUNT.replace("values[i] > limit", "values[i] >= limit"), None, diagnostic)
    assert isinstance(still, Nothing) and "1 reproduced diagnostic" in still.message


def test_reproductions_read_returned_expected_and_assert_messages_that_name_the_function():
    found = fix_evidence.reproductions(
        ["line 3: count_above([5.0, 1.0], 2.0) returned 0, expected 1",
         "line 4: AssertionError: assert count_above([], 0) == 0",
         "line 5: assert 0 == 1",  # names no function
         "line 6: undefined name 'x'",
         "line 7: count_above((( returned 1, expected 2"],  # not Python
        "count_above")
    assert found == ["(count_above([5.0, 1.0], 2.0)) == (1)", "count_above([], 0) == 0"]


def test_doctests_are_read_from_the_function_and_its_methods():
    code = ('class C:\n    """>>> C().f()\n    1\n    """\n'
            '    def f(self):\n        """>>> 1 + 1\n        2\n        """\n')
    assert [name for name, _ in fix_evidence.doctests(code)] == ["C", "C.f"]
    assert fix_evidence.doctests("def f(:\n") == []


def test_judging_two_runs():
    evidence = Evidence(tests=["t.py::a", "t.py::b"], workspace=2)
    run = lambda **o: TestRun(outcomes=o)  # noqa: E731
    assert judge(evidence, run(**{"t.py::a": True, "t.py::b": False}), run(**{"t.py::a": True, "t.py::b": True})) \
        .offered
    assert not judge(evidence, run(**{"t.py::a": True}), run(**{"t.py::b": True})).offered  # broke a, fixed b
    assert not judge(evidence, run(**{"t.py::a": True, "t.py::b": True}), run(**{"t.py::a": True})).offered
    not_run = judge(evidence, TestRun(ran=False, note="bubblewrap is not installed"), TestRun(ran=False))
    assert not_run.offered and not_run.note == "unverified: tests not run (bubblewrap is not installed)"
    uncollected = TestRun(uncollected=["t.py"], outcomes={"t.py::a": False, "t.py::b": False})
    assert judge(evidence, uncollected, uncollected).note.startswith("unverified: the tests do not run")
    assert judge(Evidence(), None, None) == fix_evidence.Verdict(True, "unverified: no tests found")
