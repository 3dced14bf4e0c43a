"""eval-tasks' fix figures with and without verification: scripted answers through the server's fix path (the
compile gate, the function's doctests run on the buggy and the fixed module in the sandbox)."""

from __future__ import annotations

import random

from midline.training import evaluate_tasks as E

from ..marks import needs_sandbox
from ..server.test_actions import Canned

MODULE = '''"""Small helpers."""


def clamp(x, low, high):
    """Keep `x` within `low`..`high`.

    >>> clamp(5, 0, 3)
    3
    >>> clamp(-1, 0, 3)
    0
    """
    return max(low, min(x, high))


def twice(x):
    return 2 * x
'''
CLAMP = MODULE[MODULE.index("def clamp") : MODULE.index("\n\n\ndef twice")] + "\n"
TWICE = "def twice(x):\n    return 2 * x\n"


def task(fixed: str, buggy: str) -> dict:
    name = fixed.split("(", 1)[0].removeprefix("def ")
    return {"kind": "fix", "repo": "r", "path": "helpers.py", "name": name, "mutation": "comparison",
            "buggy": buggy, "fixed": fixed, "module": MODULE}


@needs_sandbox
def test_verification_offers_the_fix_its_doctests_pass_and_withholds_the_rest():
    clamp = task(CLAMP, CLAMP.replace("min(x, high)", "min(x, low)"))
    right = E.verify_fix(clamp, CLAMP)
    assert right["offered_plain"] and right["offered_verified"] and right["verified"] and right["evidence_tests"] == 1
    wrong = E.verify_fix(clamp, CLAMP.replace("min(x, high)", "min(x, high) + 1"))
    assert wrong["offered_plain"] and not wrong["offered_verified"] and wrong["withheld"] == "tests"
    broken = E.verify_fix(clamp, "    return x\nlow = 1\n" + CLAMP)  # tree-sitter takes it, Python does not
    assert broken["offered_plain"] and not broken["offered_verified"] and broken["withheld"] == "gate"
    untested = E.verify_fix(task(TWICE, TWICE.replace("2 * x", "3 * x")), TWICE)
    assert untested["offered_verified"] and not untested["verified"] and untested["note"].startswith("unverified")
    rows = [dict(r, same_tree=s) for r, s in ((right, True), (wrong, False), (broken, False), (untested, True))]
    assert E._offered(rows, "offered_plain") == {"offered": 4, "right": 2, "wrong": 2, "precision": 0.5}
    assert E._offered(rows, "offered_verified") == {"offered": 2, "right": 2, "wrong": 0, "precision": 1.0}


@needs_sandbox
def test_doctested_fix_tasks_are_bugs_their_doctests_catch():
    found = E.doctested_fix_task({"repo": "r", "path": "helpers.py", "text": MODULE}, random.Random(0), 20.0)
    assert found is not None and found["name"] == "clamp" and found["buggy"] != CLAMP and found["module"] == MODULE
    assert E.verify_fix(found, CLAMP)["verified"]
    assert E.doctested_fix_task({"repo": "r", "path": "t.py", "text": TWICE}, random.Random(0), 20.0) is None


# -- refinement and synthesis through the server's action path (issue 20) -------------------------------------


def scripted(answers: dict) -> E.ServerPath:
    """The server's action path with scripted model answers (`Canned`) in place of the engine's."""
    server = E.ServerPath(None, attempts=3, candidates=3, max_new_tokens=64, timeout_s=20.0)
    server.assistant = Canned(answers)
    return server


@needs_sandbox
def test_refinement_is_measured_beside_one_attempt():
    clamp = task(CLAMP, CLAMP.replace("min(x, high)", "min(x, low)"))
    wrong = CLAMP.replace("min(x, high)", "min(x, high) + 1")
    row = E.refined_fix(clamp, scripted({"fix": [wrong, wrong, [CLAMP]]}))
    assert not row["server_once"]["offered"] and row["server_refined"]["offered"] and row["server_refined"]["right"]
    assert row["server_refined"]["note"].endswith("on attempt 2 of 3")
    summary = E.summarize([{"kind": "fix", "fixed": False, "same_tree": False, "parses": True, "unchanged": False,
                            "edit_similarity": 0.5, "tokens": 9, "mutation": "comparison", **row}], run_tests=False)
    assert summary["fix"]["refinement"]["once"]["offered"] == 0
    assert summary["fix"]["refinement"]["refined"] == {"offered": 1, "right": 1,
                                                       "s_mean": row["server_refined"]["s"]}


@needs_sandbox
def test_synthesis_tasks_are_functions_whose_docstring_examples_pass_and_are_scored_side_by_side():
    found = E.synthesis_task({"repo": "r", "path": "helpers.py", "text": MODULE}, random.Random(0), 20.0)
    assert found is not None and found["name"] == "clamp" and found["examples"] == 2
    assert "    0\n    \"\"\"\n    pass\n\n\ndef twice" in found["stub"]
    wrong, right = "    return x\n", "    return max(low, min(x, high))\n"
    row = E.score_synthesis(found, scripted({"fromComment": [[wrong, right]] * 3}))
    assert not row["server_greedy"]["offered"]  # the one greedy answer fails the examples
    assert row["server_candidates"]["offered"] and row["server_refined"]["offered"]
    assert row["server_candidates"]["note"] == "passes all 2 examples"
    assert row["quality_generated"] == row["quality_reference"] == {"complexity": 1, "lint": 0, "security": 0}
    report = {"metrics": E.summarize([{"kind": "synthesis", **row}])}
    assert report["metrics"]["synthesis"]["candidates"]["success_rate"] == 1.0
    assert "synth    n=1    examples 2.000 per task; passes all examples: greedy 0.000" in E.format_report(report)
    assert E.synthesis_task({"repo": "r", "path": "t.py", "text": TWICE}, random.Random(0), 20.0) is None


def test_fix_quality_measures_the_answer_and_the_reference():
    clamp = task(CLAMP, CLAMP.replace("min(x, high)", "min(x, low)"))
    row = E.fix_quality(clamp, CLAMP.replace("return max", "unused = 1\n    return max"))
    assert row["quality_reference"] == {"complexity": 1, "lint": 0, "security": 0}
    assert row["quality_generated"]["lint"] == 1  # F841, on the answer's own lines
    assert "quality_generated" not in E.fix_quality(clamp, "def clamp(:\n")
