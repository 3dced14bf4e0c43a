"""Evaluate stage: reproducible infilling tasks, scoring, doctest pass@1 in the sandbox, loss, and the report."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest

from midline.model.engine import Engine, Generation
from midline.server.context import classify_hole
from midline.server.postprocess import Suggestion
from midline.training import evaluate as ev, metrics

from ..marks import needs_sandbox, require_sandbox

MATH = '''\
"""Small math helpers."""

import math


def clamp(value, low, high):
    """Limit value to [low, high].

    >>> clamp(5, 0, 3)
    3
    >>> clamp(-1, 0, 3)
    0
    """
    if value < low:
        return low
    if value > high:
        return high
    return value


def mean(values):
    """Arithmetic mean.

    >>> mean([1, 2, 3, 4])
    2.5
    """
    total = sum(values)
    return total / len(values)


def hypotenuse(a, b):
    """Wrong on purpose: this doctest fails.

    >>> hypotenuse(3, 4)
    6.0
    """
    return math.sqrt(a * a + b * b)
'''

STRINGS = '''\
def shout(text, times=1):
    """Upper-case text, repeated.

    >>> shout("hi", times=2)
    'HI HI'
    """
    words = [text.upper()] * times
    return " ".join(words)


class Greeter:
    def __init__(self, name):
        self.name = name
        self.count = 0

    def greet(self, polite=False):
        self.count += 1
        if polite:
            message = f"Good day, {self.name}."
            return message
        return f"hi {self.name}"
'''

BROKEN_DOCTEST = '''\
def double(x):
    """Twice x, says the docstring; the doctest disagrees.

    >>> double(2)
    5
    """
    result = x * 2
    return result
'''


def _module(i: int) -> str:
    return f'''\
import os


def walk_{i}(root, suffix=".py"):
    found = []
    for folder, _, names in os.walk(root):
        for name in names:
            if name.endswith(suffix):
                found.append(os.path.join(folder, name))
    return sorted(found)


def parse_{i}(line):
    key, _, value = line.partition("=")
    if not key.strip():
        raise ValueError(f"no key in {{line!r}}")
    return key.strip(), value.strip()
'''


RECORDS = [
    {"repo": "acme/tools", "path": "mathutil.py", "text": MATH},
    {"repo": "acme/tools", "path": "strings.py", "text": STRINGS},
    {"repo": "acme/tools", "path": "broken.py", "text": BROKEN_DOCTEST},
    {"repo": "acme/tools", "path": "README.md", "text": "# not python\n\nsome text that is long enough\n"},
    *({"repo": "acme/walk", "path": f"pkg/mod{i}.py", "text": _module(i)} for i in range(4)),
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    (root / "valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return root


@pytest.fixture(scope="module")
def tasks(corpus) -> list[ev.Task]:
    require_sandbox()  # doctest tasks are kept only if the original passes in the sandbox
    return ev.build_tasks(corpus, per_kind=3, seed=0, doctests=2)


# -- tasks ----------------------------------------------------------------------------------------


def test_tasks_are_deterministic_and_of_each_kind(corpus, tasks):
    counts = {kind: sum(t.kind == kind for t in tasks) for kind in ev.KINDS}
    assert counts == {"single_line": 3, "multi_line": 3, "random_span": 3, "doctest": 2}
    assert ev.build_tasks(corpus, per_kind=3, seed=0, doctests=2) == tasks
    # input order does not matter
    assert ev.build_tasks(list(reversed(RECORDS)), per_kind=3, seed=0, doctests=2) == tasks
    assert ev.build_tasks(corpus, per_kind=3, seed=1, doctests=0) != [t for t in tasks if t.kind != "doctest"]


def test_tasks_rebuild_the_file_and_match_the_servers_hole(tasks):
    texts = {r["path"]: r["text"] for r in RECORDS}
    expected_hole = {"single_line": "single_line", "multi_line": "multi_line", "doctest": "multi_line"}
    for task in tasks:
        assert task.path.endswith(".py")
        assert task.prefix + task.middle + task.suffix == texts[task.path] == task.original
        assert task.hole == classify_hole(task.text_with_hole, task.offset, "python").value
        assert task.hole == expected_hole.get(task.kind, task.hole) != "none"
        assert task.middle.strip()


def test_task_kinds_mask_what_they_say(tasks):
    for task in tasks:
        line_prefix = task.prefix[task.prefix.rfind("\n") + 1 :]
        if task.kind == "single_line":
            assert "\n" not in task.middle and line_prefix.strip() and task.suffix.startswith("\n")
        elif task.kind in ("multi_line", "doctest"):
            assert not line_prefix.strip() and task.suffix[:1] in ("\n", "")
            assert task.middle.count("\n") + 1 <= 8
            assert task.kind == "doctest" or task.middle.count("\n") >= 1
        else:
            assert task.middle.count("\n") <= 2
            assert not (task.prefix[-1:].isalnum() and task.middle[0].isalnum())  # no mid-identifier start


@needs_sandbox
def test_only_doctests_whose_original_passes_are_kept(corpus):
    doctests = [t for t in ev.build_tasks(corpus, per_kind=0, seed=3, doctests=10) if t.kind == "doctest"]
    assert doctests and {t.function for t in doctests} <= {"clamp", "mean", "shout"}
    assert "return" in "".join(t.middle for t in doctests)


def test_tasks_round_trip_through_a_file(tasks, tmp_path):
    digest = ev.save_tasks(tasks, tmp_path / "tasks.jsonl")
    assert ev.load_tasks(tmp_path / "tasks.jsonl") == tasks
    assert len(digest) == 64


# -- metrics --------------------------------------------------------------------------------------


def test_metric_functions_on_known_strings():
    assert metrics.levenshtein("kitten", "sitting") == 3
    assert metrics.edit_similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    assert metrics.edit_similarity("", "") == 1.0 and metrics.edit_similarity("abc", "") == 0.0
    assert metrics.normalize("a  \n  b\t\n\n") == "a\n  b"
    task = ev.Task("single_line", "r", "f.py", "x = f()\n", 6, "a, b", "single_line")
    assert ev.score(task, Suggestion("a, b  ")) == (True, 1.0)  # trailing whitespace does not count
    assert ev.score(task, Suggestion("a, b)", replace=1)) == (True, 1.0)  # reusing the auto-closed ")"
    exact, similarity = ev.score(task, Suggestion("a, c"))
    assert not exact and similarity == pytest.approx(0.75)
    assert ev.score(task, None) == (False, 0.0)
    assert ev.completed_text(task, Suggestion("a, b)", replace=1)) == "x = f(a, b)\n"


def test_summary_figures():
    rows = [
        {"exact_match": True, "edit_similarity": 1.0, "empty": False, "latency_ms": 10.0, "tokens": 4,
         "finish_reason": "eot"},
        {"exact_match": False, "edit_similarity": 0.0, "empty": True, "latency_ms": 30.0, "tokens": 8,
         "finish_reason": "timeout"},
    ]
    summary = ev.summarize(rows)
    assert summary["exact_match"] == 0.5 and summary["empty_rate"] == 0.5 and summary["tokens_mean"] == 6
    assert summary["latency_ms_mean"] == 20.0 and summary["timeouts"] == 1


# -- functional -----------------------------------------------------------------------------------


def test_doctest_original_passes_and_a_wrong_body_fails(tasks):
    task = next(t for t in tasks if t.kind == "doctest")
    assert ev.run_doctests(task.function, task.original).ok
    wrong = task.prefix + "return None" + task.suffix
    assert not ev.run_doctests(task.function, wrong).ok
    broken = task.prefix + "return (" + task.suffix  # a syntax error fails too
    assert not ev.run_doctests(task.function, broken).ok


# -- completion -----------------------------------------------------------------------------------


class Oracle:
    """An engine that answers with a fixed text (the task's middle), through the real prompt and post-processing."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.answer = ""

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def generate(self, prompt_ids, **kwargs) -> Generation:
        ids = self._engine.tokenizer.encode(self.answer, add_special_tokens=False)
        return Generation(self.answer, ids, "eot", 0.0, len(prompt_ids), 0.0)


def test_the_right_answer_scores_exact_through_the_server_path(tiny_engine, tasks):
    oracle = Oracle(tiny_engine)
    config = ev.eval_config(64, 60_000)
    for task in (t for t in tasks if t.kind in ("single_line", "multi_line", "doctest")):
        oracle.answer = task.middle + "\n"  # a model also goes on past the middle; post-processing cuts it
        [outcome] = ev.complete_tasks(oracle, [task], config)
        assert ev.score(task, outcome.suggestion) == (True, 1.0), (task, outcome)
        if task.kind == "doctest":
            assert ev.run_doctests(task.function, ev.completed_text(task, outcome.suggestion)).ok


def test_evaluate_end_to_end_on_the_tiny_model(tiny_model_dir, tasks):
    texts = [r["text"] for r in RECORDS]
    report = ev.evaluate(tiny_model_dir, tasks, device="cpu", max_new_tokens=8, valid_texts=texts, loss_docs=3)
    assert set(report["metrics"]) == {"overall", *ev.KINDS}
    for figures in report["metrics"].values():
        for key in ("exact_match", "edit_similarity", "empty_rate", "latency_ms_mean", "tokens_mean"):
            assert math.isfinite(figures[key])
        assert 0 <= figures["exact_match"] <= figures["edit_similarity"] + 1e-9 <= 1 + 1e-9
    assert report["metrics"]["overall"]["n"] == len(tasks) == len(report["per_task"])
    functional = report["functional"]
    assert functional["tasks"] == 2 and functional["original_pass_rate"] == 1.0
    assert functional["counted"] == 2 and 0 <= functional["pass_at_1"] <= 1  # both holes remove code the doctests need
    loss = report["loss"]
    assert loss["docs"] == 3 and loss["tokens"] > 0 and loss["bytes"] > 0
    assert math.isfinite(loss["nats_per_token"]) and math.isfinite(loss["bits_per_byte"]) and loss["bits_per_byte"] > 0
    assert "overall" in ev.format_report(report)
    json.dumps(report, allow_nan=False)


def test_loss_truncates_to_the_context(tiny_engine):
    loss = ev.validation_loss(tiny_engine, ["x = 1\n" * 200], max_tokens=32)
    assert loss["tokens"] == 31 and 0 < loss["bytes"] < len("x = 1\n" * 200)
    bits = loss["nats_per_token"] * loss["tokens"] / (math.log(2) * loss["bytes"])
    assert loss["bits_per_byte"] == pytest.approx(bits)


def test_cli_builds_saves_and_reuses_tasks(tiny_model_dir, corpus, tmp_path):
    parser = argparse.ArgumentParser()
    ev.add_parser(parser.add_subparsers())
    tasks_file, out = tmp_path / "tasks.jsonl", tmp_path / "report.json"
    common = ["evaluate", "--model", str(tiny_model_dir), "--tasks", str(tasks_file), "--per-kind", "1", "--device",
              "cpu", "--max-new-tokens", "4", "--no-functional", "--out", str(out)]
    for argv in ([*common, "--corpus", str(corpus), "--loss-docs", "1"], common):
        args = parser.parse_args(argv)
        assert args.run(parser, args) == 0
    report = json.loads(out.read_text())
    assert report["tasks"]["count"] == 3 and report["tasks"]["sha256"] and report["loss"] is None
    assert report["functional"] is None
