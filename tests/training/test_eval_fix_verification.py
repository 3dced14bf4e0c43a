"""eval-tasks' fix figures with and without verification: scripted answers through the server's fix path (the
compile gate, the function's doctests run on the buggy and the fixed module in the sandbox)."""

from __future__ import annotations

import random

from midline.training import evaluate_tasks as E

from ..marks import needs_sandbox

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
