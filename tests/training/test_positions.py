"""Positions stage: tasks at the positions editors ask, their scoring, and the typing replay."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import pytest
from midline.server.config import Config
from midline.server.documents import Document
from midline.server.postprocess import Suggestion
from midline.training import evaluate as ev
from midline.training import positions as P
from midline.training.cli import main

HOME = '''\
import os


def home():
    """Where the user lives."""
    return os.path.expanduser("~")
'''

MEAN = '''\
def mean(values):
    total = sum(values)
    return total / len(values)
'''

COLLECT = '''\
def collect(xs):
    out = []
    for x in xs:
        out.append(x)
    return out
'''

QUIET = """\
import sys


def quiet():
    old_stdout = sys.stdout
    old_stderr = sys.stderr
"""

FILES = (("home.py", HOME), ("mean.py", MEAN), ("collect.py", COLLECT), ("quiet.py", QUIET))
RECORDS = [{"repo": "acme/tools", "path": path, "text": text} for path, text in FILES]
TEXTS = {r["path"]: r["text"] for r in RECORDS}


@pytest.fixture(scope="module")
def tasks() -> list[ev.Task]:
    return P.build_position_tasks(RECORDS, per_kind=5, functions=5, seed=0)


def find(tasks: list[ev.Task], kind: str, path: str) -> ev.Task:
    (task,) = [t for t in tasks if t.kind == kind and t.path == path]
    return task


def edited(task: ev.Task) -> tuple[str, str]:
    """The document as the editor has it, split at the cursor."""
    return task.text_with_hole[: task.offset], task.text_with_hole[task.offset :]


# -- tasks ----------------------------------------------------------------------------------------


def test_tasks_rebuild_their_file_one_per_file_and_kind_reproducibly(tasks, tmp_path):
    assert {t.kind for t in tasks} == {*P.KINDS, P.REPLAY}
    assert all(t.original == TEXTS[t.path] for t in tasks)
    assert len({(t.kind, t.path) for t in tasks}) == len(tasks)
    assert P.build_position_tasks(list(reversed(RECORDS)), per_kind=5, functions=5, seed=0) == tasks
    ev.save_tasks(tasks, tmp_path / "tasks.jsonl")
    assert ev.load_tasks(tmp_path / "tasks.jsonl") == tasks


def test_enter_tasks_empty_a_body_line_with_or_without_its_indentation(tasks):
    # home.py's one code line in a block (the import is top level; the docstring is not code)
    col0 = find(tasks, "enter_col0", "home.py")
    assert edited(col0) == ('import os\n\n\ndef home():\n    """Where the user lives."""\n', "\n")
    assert col0.middle == '    return os.path.expanduser("~")' and col0.hole == "multi_line"
    indented = find(tasks, "enter_indented", "home.py")
    assert edited(indented) == ('import os\n\n\ndef home():\n    """Where the user lives."""\n    ', "\n")
    assert indented.middle == 'return os.path.expanduser("~")'


def test_line_start_deletes_the_line_above_the_cursor(tasks):
    task = find(tasks, "line_start", "mean.py")
    assert edited(task) == ("def mean(values):\n    ", "return total / len(values)\n")
    assert task.middle == "total = sum(values)\n    "
    assert not [t for t in tasks if t.kind == "line_start" and t.path == "home.py"]  # no two statements in a block


def test_end_of_line_tasks(tasks):
    task = find(tasks, "end_of_line_next", "collect.py")  # the only code line followed by one
    assert edited(task) == ("def collect(xs):\n    out = []\n    for x in xs:\n        out.append(x)", "\n")
    assert task.middle == "\n    return out"
    nothing = [t for t in tasks if t.kind == "end_of_line_nothing"]
    assert all(t.middle == "" and t.text_with_hole == t.original and t.original[t.offset] == "\n" for t in nothing)
    assert all(t.original[t.prefix.rfind("\n") + 1 : t.offset].strip() for t in nothing)  # after a code line's end


def test_mid_line_empty_block_and_end_of_file(tasks):
    mid = find(tasks, "mid_line", "mean.py")
    line = mid.original[mid.prefix.rfind("\n") + 1 :].split("\n")[0]
    assert line.lstrip().startswith(mid.prefix[mid.prefix.rfind("\n") + 1 :].lstrip()) and mid.hole == "single_line"
    assert line.endswith(mid.middle)
    block = find(tasks, "empty_block", "home.py")  # the docstring stays
    assert edited(block) == ('import os\n\n\ndef home():\n    """Where the user lives."""\n    ', "\n")
    assert block.middle == 'return os.path.expanduser("~")'
    block = find(tasks, "empty_block", "collect.py")
    assert edited(block) == ("def collect(xs):\n    ", "\n")
    assert block.middle == "out = []\n    for x in xs:\n        out.append(x)\n    return out"
    end = find(tasks, "end_of_file", "home.py")  # only the last line: the docstring above is not code
    assert edited(end) == ('import os\n\n\ndef home():\n    """Where the user lives."""\n    ', "")
    assert end.middle == 'return os.path.expanduser("~")\n'


def test_replay_tasks_delete_a_function_body(tasks):
    task = find(tasks, P.REPLAY, "mean.py")
    assert edited(task) == ("def mean(values):", "\n") and task.function == "mean"
    assert task.middle == "\n    total = sum(values)\n    return total / len(values)"


# -- scoring --------------------------------------------------------------------------------------


def test_a_column_0_suggestion_must_bring_the_indentation_once(tasks):
    col0, indented = find(tasks, "enter_col0", "home.py"), find(tasks, "enter_indented", "home.py")
    right = P.score_position(col0, Suggestion('    return os.path.expanduser("~")'))
    assert right["exact_first_line"] and right["exact_match"]
    assert not right["harmful"] and right["invalid_syntax"] is False
    assert right["edit_similarity"] == 1.0 and right["glued"] is None
    for wrong in (Suggestion('        return os.path.expanduser("~")'), Suggestion('return os.path.expanduser("~")')):
        scores = P.score_position(col0, wrong)
        assert not scores["exact_first_line"] and not scores["exact_match"] and scores["harmful"]
    assert P.score_position(indented, Suggestion('return os.path.expanduser("~")'))["exact_first_line"]
    doubled = P.score_position(indented, Suggestion('    return os.path.expanduser("~")'))
    assert doubled["harmful"] and doubled["shown_line"] == '        return os.path.expanduser("~")'
    assert P.score_position(col0, Suggestion('\n    return os.path.expanduser("~")'))["harmful"]  # a line too low
    # only the first line is compared for exact_first_line
    assert P.score_position(col0, Suggestion('    return os.path.expanduser("~")\n    x = 1'))["exact_first_line"]
    empty = P.score_position(col0, None)
    assert empty["empty"] and not empty["harmful"] and not empty["exact_first_line"] and empty["invalid_syntax"] is None
    # the tail of `return`
    assert right["mid_word"] is False and P.score_position(col0, Suggestion("    eturn home"))["mid_word"]
    assert not P.score_position(col0, Suggestion("    unknown_name = 1"))["mid_word"]


def test_a_suggestion_glued_to_a_complete_line_is_wrong_and_invalid(tasks):
    task = find(tasks, "end_of_line_next", "collect.py")
    right = P.score_position(task, Suggestion("\n    return out"))
    assert right["exact_first_line"] and right["exact_match"] and right["glued"] is False
    glued = P.score_position(task, Suggestion("return out"))  # `out.append(x)return out`: a hidden MISSING newline
    assert glued["glued"] and glued["harmful"] and glued["invalid_syntax"]
    assert glued["shown_line"] == "        out.append(x)return out"
    assert P.score_position(task, Suggestion(" return out"))["glued"]  # `out.append(x) return out`: an ERROR node
    for continued in (Suggestion(".copy()"), Suggestion(" + 1")):  # wrong, but one valid statement
        scores = P.score_position(task, continued)
        assert scores["harmful"] and scores["glued"] is False and scores["invalid_syntax"] is False
    quiet = find(tasks, "end_of_line_next", "quiet.py")
    # `sys.stdoutold_stderr = sys.stderr`: valid
    merged = P.score_position(quiet, Suggestion("old_stderr = sys.stderr"))
    assert merged["glued"] and merged["invalid_syntax"] is False and merged["harmful"]
    assert P.score_position(task, Suggestion("return"))["glued"]  # `out.append(x)return`: a keyword, not a name
    # (`s` goes on a word)
    assert not P._is_statement("s") and not P._is_statement(" + 1") and P._is_statement(" x = 1")
    wrong_line = P.score_position(task, Suggestion("\n        return out"))  # the next line, indented as the loop body
    assert wrong_line["harmful"] and not wrong_line["glued"]


def test_hidden_missing_nodes_are_counted():
    text = "def collect(xs):\n    out = []\n    for x in xs:\n        out.append(x)return out\n"
    assert P.syntax_errors(COLLECT) == 0 and P.syntax_errors(text) == 1
    assert P.syntax_errors("x = (1,\n") >= 1


def test_at_the_end_of_a_complete_line_nothing_is_right(tasks):
    task = find(tasks, "end_of_line_nothing", "collect.py")
    nothing = P.score_position(task, None)
    assert nothing["exact_first_line"] and nothing["exact_match"] and nothing["empty"] and not nothing["harmful"]
    assert nothing["edit_similarity"] == 1.0
    assert P.score_position(task, Suggestion("\n"))["empty"]  # white space shows nothing
    for shown in (Suggestion("\n    print(out)"), Suggestion(" + 1")):
        scores = P.score_position(task, shown)
        assert not scores["exact_match"] and not scores["exact_first_line"]
        assert scores["harmful"] and scores["edit_similarity"] == 0.0
        assert scores["glued"] is None  # the expected text does not start a new line


def test_line_start_needs_the_line_break(tasks):
    task = find(tasks, "line_start", "mean.py")
    assert P.score_position(task, Suggestion("total = sum(values)\n    "))["exact_match"]
    assert P.score_position(task, Suggestion("total = sum(values)\n"))["exact_first_line"]
    one_line = P.score_position(task, Suggestion("total = sum(values)"))  # joined with the line after the cursor
    assert one_line["harmful"] and one_line["shown_line"] == "    total = sum(values)return total / len(values)"


def test_summary_figures(tasks):
    eol, nothing = find(tasks, "end_of_line_next", "collect.py"), find(tasks, "end_of_line_nothing", "collect.py")
    def outcome(suggestion):
        return ev.Outcome(suggestion, 10.0, 3, "stop")

    rows = [P._row(eol, outcome(Suggestion("return out"))), P._row(eol, outcome(Suggestion("\n    return out"))),
            P._row(nothing, outcome(None)), P._row(nothing, outcome(Suggestion(" + 1")))]
    m = P.summarize_positions(rows)
    assert (m["n"], m["shown"], m["glued"], m["glued_of_shown"]) == (4, 3, 1, 0.5)
    assert (m["exact_first_line"], m["exact_match"], m["harmful_rate"], m["empty_rate"]) == (0.5, 0.5, 0.5, 0.25)
    assert m["invalid_syntax_rate"] == pytest.approx(1 / 3)  # the glued one (`+ 1` continues any of collect's lines)
    assert rows[0]["cursor"] == "        out.append(x)█"


# -- typing replay --------------------------------------------------------------------------------


def scripted(original: str, calls: list[str], right: bool = True):
    """A completion function that suggests the rest of the original line (or something wrong), recording the
    cursor's line prefix at every request."""

    async def complete(doc: Document, offset: int) -> Suggestion | None:
        assert original.startswith(doc.text[:offset])
        calls.append(doc.text[doc.text.rfind("\n", 0, offset) + 1 : offset])
        rest = original[offset : original.find("\n", offset)]
        return Suggestion(rest if right else "oops") if rest else None

    return complete


def test_replay_pauses_at_line_starts_and_word_ends(tasks):
    task = find(tasks, P.REPLAY, "mean.py")
    calls: list[str] = []
    row = asyncio.run(P.replay_function(task, scripted(task.original, calls, right=False)))
    # (none after the last character)
    assert calls == ["    ", "    total ", "    total = sum(", "    total = sum(values)",
                     "    ", "    return ", "    return total ", "    return total / len("]
    assert row["chars"] == len(task.middle) - 8 and row["accepted_chars"] == 0
    assert row["requests"] == 8 and row["shown"] == 7


def test_replay_accepts_the_right_next_line(tasks):
    task = find(tasks, P.REPLAY, "collect.py")
    calls: list[str] = []
    row = asyncio.run(P.replay_function(task, scripted(task.original, calls)))
    lines = task.middle.split("\n")[1:]
    assert calls == [line[: len(line) - len(line.lstrip())] for line in lines]  # one request a line, all accepted
    assert row["accepted_texts"] == [line.strip() for line in lines]
    assert row["chars"] == row["accepted_chars"] + len(lines) and row["accepted"] == row["shown"] == len(lines)
    summary = P.summarize_replay([row])
    assert summary["accepted_share"] == row["accepted_chars"] / row["chars"] and summary["latency_ms_p50"] >= 0


def test_replay_end_to_end_on_the_tiny_model(tiny_engine, tasks):
    replays = [t for t in tasks if t.kind == P.REPLAY]
    rows = P.replay(tiny_engine, replays,
                    dataclasses.replace(ev.eval_config(8, 60_000), cache_size=Config().cache_size))
    assert [r["function"] for r in rows] == [t.function for t in replays]
    assert all(r["requests"] >= r["shown"] >= r["accepted"] and r["model_calls"] >= 1 for r in rows)
    assert all(len(r["latencies_ms"]) == r["requests"] > 0 for r in rows)


def test_cli_builds_tasks_and_reports(tiny_model_dir, tmp_path, capsys):
    corpus = tmp_path / "valid.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    out, tasks_file = tmp_path / "report.json", tmp_path / "tasks.jsonl"
    args = ["positions", "--model", str(tiny_model_dir), "--device", "cpu", "--corpus", str(corpus), "--tasks",
            str(tasks_file), "--per-kind", "1", "--functions", "1", "--max-new-tokens", "4", "--out", str(out)]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert report["tasks"]["count"] == len(ev.load_tasks(tasks_file)) == len(P.KINDS) + 1
    assert set(report["metrics"]) == {"overall", *P.KINDS} and report["replay"]["functions"] == 1
    assert len(report["per_task"]) == len(P.KINDS) and report["tasks"]["sha256"]
    table = capsys.readouterr().out
    assert "end_of_line_nothing" in table and "typing replay: 1 functions" in table
    assert Path(report["model"]) == Path(tiny_model_dir).resolve()


def test_workspaces_index_each_repository_at_the_tasks_paths():
    """A task's Completer sees its repository's other files where the task's document is (/<repo>/<path>)."""
    from midline.training.workspaces import Workspaces

    records = [*RECORDS, {"repo": "acme/other", "path": "lib/mean_copy.py", "text": MEAN}]
    workspaces = Workspaces(records)
    symbols, retrieval = workspaces.indexes("acme/tools")
    assert workspaces.indexes("acme/tools")[1] is retrieval and workspaces.files("acme/tools") == len(RECORDS)
    assert [d.path for d in symbols.lookup(["mean"])] == ["/acme/tools/mean.py"]  # not the other repository's copy
    query = "def average(values):\n    total = sum(values)\n    return total / len(values)\n"
    assert [c.path for c in retrieval.search(query)] == ["/acme/tools/mean.py"]
    assert retrieval.search(query, exclude_path="/acme/tools/mean.py") == []  # the task's own file: never


def test_cli_compares_retrieval_side_by_side(tiny_model_dir, tmp_path, capsys):
    corpus = tmp_path / "valid.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    out = tmp_path / "report.json"
    args = ["positions", "--model", str(tiny_model_dir), "--device", "cpu", "--corpus", str(corpus), "--per-kind", "1",
            "--functions", "0", "--max-new-tokens", "4", "--retrieval", "both", "--out", str(out)]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert report["settings"]["server_config"]["context"]["retrieval"] is True
    assert report["without_retrieval"]["server_config"]["context"]["retrieval"] is False
    assert set(report["without_retrieval"]["metrics"]) == set(report["metrics"])
    assert len(report["without_retrieval"]["per_task"]) == len(report["per_task"]) == len(P.KINDS)
    assert report["retrieval"]["tasks_in_repos_with_other_files"] == len(P.KINDS)
    assert "without / with retrieval" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # the other files come from the corpus: a tasks file alone is not enough
        main(["positions", "--model", str(tiny_model_dir), "--tasks", str(out.with_suffix(".tasks.jsonl")),
              "--retrieval", "on"])
