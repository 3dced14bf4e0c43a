"""Refine on failure and synthesis from examples (issue 20): scripted model answers (`Canned`, one per ask in turn),
real sandbox runs. A fix or a test that fails is asked again with its failure in the prompt; code from a comment with
examples is written as several candidates, run against them, and the first that passes all is offered."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from midline.server import actions, examples
from midline.server.actions import Actions, Nothing, Replace, TestFile
from midline.server.assistant import Assistant, Progress
from midline.server.config import ActionsConfig, Config
from midline.server.documents import Document
from midline.server.refine import Checked, refine
from midline.server.verify import failure_message, run_tests

from ..marks import needs_sandbox
from .test_actions import Canned

CLAMP = '''def clamp(x, low, high):
    """Keep `x` within `low`..`high`.

    >>> clamp(5, 0, 3)
    3
    >>> clamp(-1, 0, 3)
    0
    """
    return max(low, min(x, low))
'''
CLAMP_WRONG = CLAMP[CLAMP.index("def"):].replace("min(x, low)", "min(x, high) + 1")
CLAMP_RIGHT = CLAMP[CLAMP.index("def"):].replace("min(x, low)", "min(x, high)")


def resolve(d: Document, action: str, answers: dict, root: Path | None, config: Config | None = None, at: int = 0):
    """Resolve `action` at `at` with scripted answers; the outcome, the assistant (its asks) and the progress."""
    offer = next(o for o in actions.offers(d, at, at) if o.action == action)
    messages: list[str] = []
    acts = Actions(Canned(answers), config or Config(), str(root) if root else None)
    outcome = asyncio.run(acts.resolve(d, offer.data, Progress(report=messages.append)))
    return outcome, acts.assistant, messages


# -- refine on failure ------------------------------------------------------------------------------------------


@needs_sandbox
def test_a_fix_that_fails_its_doctest_is_repaired_on_the_second_attempt_from_the_failure(tmp_path):
    d = Document((tmp_path / "numbers.py").as_uri(), "python", 1, CLAMP)
    outcome, assistant, progress = resolve(d, "fix", {"fix": [CLAMP_WRONG, [CLAMP_RIGHT]]}, None)
    assert isinstance(outcome, Replace) and outcome.text == CLAMP_RIGHT
    assert outcome.note == "passes 1 test that failed before, on attempt 2 of 3"
    second = assistant.asks[1].prompt.prefix
    assert "min(x, high) + 1" in second  # the failed attempt is the code to fix now...
    assert "# - a doctest failed: Failed example: clamp(5, 0, 3) Expected: 3 Got: 4" in second  # ...with its failure
    assert any(m.startswith("attempt 2 of 3, told: a doctest failed") for m in progress)
    assert "passed on attempt 2 of 3 (candidate 1 of 1)" in progress


@needs_sandbox
def test_a_fix_that_does_not_compile_is_asked_again_with_the_compile_error(tmp_path):
    d = Document((tmp_path / "numbers.py").as_uri(), "python", 1, CLAMP)
    broken = CLAMP_RIGHT.replace("    return max", "  return max")
    outcome, assistant, _ = resolve(d, "fix", {"fix": [broken, [CLAMP_RIGHT]]}, None)
    assert isinstance(outcome, Replace) and outcome.note.endswith("on attempt 2 of 3")
    second = assistant.asks[1].prompt.prefix
    assert second.startswith("# Buggy version:\n" + CLAMP)  # the original again: the fix did not compile
    assert "# - the fix does not compile: line 9: unindent does not match any outer indentation level" in second


@needs_sandbox
def test_refining_stops_at_the_budget_of_attempts_and_time(tmp_path):
    d = Document((tmp_path / "numbers.py").as_uri(), "python", 1, CLAMP)
    script = {"fix": [CLAMP_WRONG, [CLAMP_WRONG.replace("+ 1", "+ 2")], [CLAMP_RIGHT]]}
    three = resolve(d, "fix", script, None)
    assert isinstance(three[0], Replace) and three[0].note.endswith("on attempt 3 of 3") and len(three[1].asks) == 3
    two = resolve(d, "fix", script, None, Config(actions=ActionsConfig(attempts=2)))
    assert isinstance(two[0], Nothing) and len(two[1].asks) == 2
    assert "still fails the 1 test that fails now (1 doctest) (2 attempts, 2 candidates)" in two[0].message
    no_time = resolve(d, "fix", script, None, Config(actions=ActionsConfig(refine_ms=0)))
    assert isinstance(no_time[0], Nothing) and len(no_time[1].asks) == 1
    assert "out of time for attempt 2 of 3" in no_time[2]


@needs_sandbox
def test_a_failing_generated_test_is_repaired_on_the_second_attempt_from_its_error(tmp_path):
    (tmp_path / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    d = Document((tmp_path / "calc.py").as_uri(), "python", 1, (tmp_path / "calc.py").read_text())
    wrong, right = "add():\n    assert add(2, 2) == 5\n", "add():\n    assert add(2, 2) == 4\n"
    outcome, assistant, progress = resolve(d, "tests", {"tests": [wrong, [right]]}, tmp_path)
    assert isinstance(outcome, TestFile) and "assert add(2, 2) == 4" in outcome.text
    assert outcome.verified.passed == ["test_add"]
    second = assistant.asks[1].prompt.prefix
    assert "# An earlier attempt failed:\n# - test_add failed: test_calc_midline.py:7: assert 4 == 5" in second
    assert second.endswith("def test_") and "An earlier attempt" not in outcome.text  # not in the test file
    assert "passed on attempt 2 of 3 (candidate 1 of 1)" in progress


def test_refine_feeds_back_the_best_failed_candidate_and_checks_each_answer_once():
    asked: list[tuple[int, str | None]] = []
    scores = {"a": 1, "b": 2, "c": 0, "d": 3}

    async def ask(attempt, previous):
        asked.append((attempt, previous.answer if previous else None))
        return [["a", "b"], ["c", "b"], ["d"]][attempt - 1]

    async def check(answer):
        return Checked(answer, answer == "d", failures=[f"{answer} failed"], score=scores[answer])

    refined = asyncio.run(refine(ask, check, attempts=3, seconds=60))
    assert asked == [(1, None), (2, "b"), (3, "b")] and refined.passed and refined.best.answer == "d"
    assert (refined.attempt, refined.attempts, refined.candidates) == (3, 3, 5)


# -- synthesis from examples ------------------------------------------------------------------------------------

SQUARES = "import math\n\n# The sum of the squares of 1..n: squares(3) -> 14, squares(0) -> 0.\n"
WRONG_SQUARES = "def squares(n):\n    return sum(i * i for i in range(n))\n"
OFF_SQUARES = "def squares(n):\n    return n * n\n"
RIGHT_SQUARES = "def squares(n):\n    return sum(i * i for i in range(1, n + 1))\n"


@needs_sandbox
def test_the_candidate_that_satisfies_the_examples_is_the_one_offered(tmp_path):
    d = Document((tmp_path / "sums.py").as_uri(), "python", 1, SQUARES)
    at = SQUARES.index("# The sum")
    outcome, assistant, progress = resolve(
        d, "fromComment", {"fromComment": [[WRONG_SQUARES, OFF_SQUARES, RIGHT_SQUARES]]}, None, at=at)
    assert isinstance(outcome, Replace) and outcome.text == RIGHT_SQUARES
    assert outcome.note == "passes all 2 examples"
    assert outcome.titled("midline: Write the code this comment describes") == (
        "midline: Write the code this comment describes: passes all 2 examples")
    assert len(assistant.asks) == 1 and "attempt 1 of 3: checking candidate 3 of 3" in progress


@needs_sandbox
def test_no_candidate_passing_the_examples_is_refined_then_withheld(tmp_path):
    d = Document((tmp_path / "sums.py").as_uri(), "python", 1, SQUARES)
    at = SQUARES.index("# The sum")
    outcome, assistant, _ = resolve(d, "fromComment", {"fromComment": [[WRONG_SQUARES, OFF_SQUARES]]}, None, at=at)
    assert isinstance(outcome, Nothing) and "passes all 2 examples of the comment (the best passes 1 of 2;" in (
        outcome.message)
    assert len(assistant.asks) == 3  # refined twice: the best candidate's failure fed back
    assert "# - an example failed: squares(3) returned 5, expected 14" in assistant.asks[1].prompt.prefix


@needs_sandbox
def test_a_docstrings_doctests_are_the_examples_of_its_function(tmp_path):
    stub = 'def fib(n):\n    """The n-th Fibonacci number.\n\n    >>> fib(10)\n    55\n    """\n    pass\n'
    d = Document((tmp_path / "seq.py").as_uri(), "python", 1, stub)
    right = "    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n"
    outcome, _, _ = resolve(d, "fromComment", {"fromComment": [["    return n\n", right]]}, None, at=stub.index("The"))
    assert isinstance(outcome, Replace) and outcome.text == right and outcome.note == "passes all 1 example"


def test_without_examples_code_from_a_comment_is_written_once_as_before(tmp_path, monkeypatch):
    monkeypatch.setattr(actions, "run_tests", lambda *a, **k: pytest.fail("nothing may run"))
    text = "# The sum of the squares of 1..n\n"
    d = Document((tmp_path / "sums.py").as_uri(), "python", 1, text)
    outcome, assistant, _ = resolve(d, "fromComment", {"fromComment": RIGHT_SQUARES}, None, at=0)
    assert isinstance(outcome, Replace) and outcome.text == RIGHT_SQUARES and outcome.note is None
    assert len(assistant.asks) == 1


def test_examples_are_read_from_doctests_arrows_and_prose():
    found = examples.read('# squares(3) -> 14, squares(0) => 0; f(x) -> y\n# Returns 6 for 1, 2, 3.')
    assert found.expressions == ["(squares(3)) == (14)", "(squares(0)) == (0)"]  # `f(x) -> y` is no example
    assert found.checks("total") == [*found.expressions, "(total(1, 2, 3)) == (6)"] and found.checks(None) == \
        found.expressions
    docstring = examples.read('"""Fib.\n\n    >>> xs = [1]\n    >>> fib(len(xs))\n    1\n    >>> fib(10)\n    55\n"""')
    assert docstring.doctests == [("example_0", ">>> xs = [1]\n>>> fib(len(xs))\n1\n"),
                                  ("example_1", ">>> xs = [1]\n>>> fib(10)\n55\n")]
    assert len(examples.read("# Sum the squares; returns the total for a list")) == 0
    assert len(examples.read('"""Random bytes.\n\n    >>> token_bytes(16)  #doctest:+SKIP\n    b"x"\n"""')) == 0


# -- what failed, as a prompt line ------------------------------------------------------------------------------


@needs_sandbox
def test_a_failing_tests_message_is_its_last_frame_and_assertion():
    module = {"calc.py": "def div(a, b):\n    return a / b\n"}
    tests = {"test_calc.py": "from calc import div\n\n\ndef test_div():\n    assert div(4, 2) == 3\n\n\n"
                             "def test_zero():\n    assert div(1, 0) == 0\n"}
    run = run_tests(tests, ["test_calc.py::test_div", "test_calc.py::test_zero"], files=module)
    assert run.messages["test_calc.py::test_div"].startswith("test_calc.py:5: assert 2.0 == 3")
    assert run.messages["test_calc.py::test_zero"] == "calc.py:2: ZeroDivisionError: division by zero"


def test_failure_messages_fold_doctest_reports_and_assert_explanations():
    why = ("test_midline_evidence.py:12: AssertionError: *****\nFile \"/tmp/x/m.py\", line 3, in clamp\n"
           "Failed example:\n    clamp(5, 0, 3)\nExpected:\n    3\nGot:\n    4\n\nassert not 1\n +  where 1 = x")
    assert failure_message(why) == "test_midline_evidence.py:12: Failed example: clamp(5, 0, 3) Expected: 3 Got: 4"
    assert len(failure_message("t.py:1: " + "x" * 1000)) == 300


# -- the batched engine's candidates ----------------------------------------------------------------------------


def test_the_assistant_asks_the_local_engine_for_batched_candidates(tiny_engine):
    async def engine():
        return tiny_engine

    assistant = Assistant(engine, Config(actions=ActionsConfig(max_new_tokens=8)), ThreadPoolExecutor(max_workers=1))
    ask = actions.explain_ask("def add(a, b):\n    return a + b\n", "python")
    found = asyncio.run(assistant.candidates(ask, 3))
    assert 1 <= len(found) <= 3 and len(set(found)) == len(found)
    assert asyncio.run(assistant.run(ask)) in found  # the greedy answer among them
    assert asyncio.run(assistant.candidates(ask, 3)) == found and assistant.stats.cache_hits == 1  # cached
