"""SFT stage: explain / tests / fix examples mined from a planted corpus, laid out as the server prompts, loss on
the answers only; `midline-train sft` end to end with a resume, and `eval-tasks` figures."""

from __future__ import annotations

import ast
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from midline.model import tasks
from midline.model.fim import MIDLINE
from midline.model.syntax import parses
from midline.model.engine import Engine
from midline.training import evaluate_tasks as E
from midline.training import sft, sft_mine
from midline.training import train as T
from midline.training.cli import main
from midline.training.data import PackedDataset

from ..marks import needs_sandbox

OPS = '''\
"""Small arithmetic helpers."""


def clamp(value, low, high):
    """Limit `value` to the range [low, high].

    Values below `low` become `low`, values above `high` become `high`.
    """
    if value < low:
        return low
    if value > high:
        return high
    return value


def mean(values):
    """Return the arithmetic mean of a non-empty list of numbers."""
    total = 0
    for v in values:
        total += v
    return total / len(values)


class Counter:
    """Count how many times each key was added."""

    def __init__(self):
        self.counts = {}

    def add(self, key, times=1):
        """Add `key` to the counts `times` times and return its new count."""
        current = self.counts.get(key, 0)
        self.counts[key] = current + times
        return self.counts[key]
'''

TEST_OPS = '''\
"""Tests of the helpers."""
import pytest

from calc.ops import (
    clamp,
    mean,
)


def test_clamp():
    assert clamp(5, 0, 3) == 3
    assert clamp(-1, 0, 3) == 0


def test_mean():
    assert mean([1, 2, 3]) == 2
'''

TEXT = '''\
def shout(text, times=1):
    """Upper-case `text` and add `times` exclamation marks."""
    marks = "!" * times
    return text.upper() + marks


def window(items, size):
    """The consecutive runs of `size` items in `items`."""
    out = []
    for start in range(len(items) - size + 1):
        out.append(items[start:start + size])
    return out
'''

MORE = '''\
def first_word(line):
    """The first word of `line`, or "" for a blank line."""
    parts = line.split()
    return parts[0] if parts else ""
'''


def write_planted(root: Path) -> Path:
    """A corpus in the corpus stage's format: a package with a test file (train) and a held-out package."""
    train = [
        {"repo": "calc", "path": "calc/ops.py", "text": OPS},
        {"repo": "calc", "path": "calc/tests/test_ops.py", "text": TEST_OPS},
        {"repo": "calc", "path": "calc/__init__.py", "text": "from calc.ops import clamp, mean\n"},
    ]
    valid = [{"repo": "strs", "path": "strs/text.py", "text": TEXT},
             {"repo": "strs", "path": "strs/more.py", "text": MORE}]
    root.mkdir(parents=True, exist_ok=True)
    for split, docs in (("train", train), ("valid", valid)):
        (root / f"{split}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / "manifest.json").write_text(json.dumps({"complete": True}))
    return root


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    return write_planted(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def mined(planted, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mined")
    sft_mine.mine(planted, out, sft_mine.MineConfig(workers=0))
    return out


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_miners_find_docstrings_tests_and_bugs(mined):
    meta = json.loads((mined / "meta.json").read_text())
    records = sft_mine.read_records(mined, "train")
    explain = {r["name"]: r for r in records if r["kind"] == "explain"}
    assert set(explain) == {"clamp", "mean", "Counter", "add"}
    prompt, middle = sft.task_example(explain["add"])
    # the method, dedented
    assert prompt.prefix == 'def add(self, key, times=1):\n    """' and prompt.path == "calc/ops.py"
    assert middle == "Add `key` to the counts `times` times and return its new count."
    assert "Add `key`" not in prompt.suffix and prompt.suffix.startswith('"""\n    current = ')

    (pair,) = [r for r in records if r["kind"] == "tests"]
    assert (pair["path"], pair["test_path"]) == ("calc/ops.py", "calc/tests/test_ops.py")
    prompt, middle = sft.task_example(pair)
    # as the test imports it (multi-line)
    assert prompt.prefix == "import pytest\n\nfrom calc.ops import clamp, mean\n\n\ndef test_"
    assert prompt.snippets[0].text == OPS and middle.startswith("clamp():\n    assert clamp(5, 0, 3) == 3")

    fixes = [r for r in records if r["kind"] == "fix"]
    assert fixes and meta["splits"]["train"]["fix"] == len(fixes)
    for r in fixes:
        assert r["buggy"] != r["fixed"] and parses("python", r["buggy"]) and sft_mine.compiles(r["buggy"])
        assert r["fixed"].split("\n")[0] in OPS + TEST_OPS and r["mutation"] in sft_mine.MUTATIONS
    assert {r["repo"] for r in sft_mine.read_records(mined, "valid")} == {"strs"}  # held out by package


@pytest.mark.parametrize("kind", sft_mine.MUTATIONS)
def test_every_mutation_parses_and_differs(kind):
    code = (
        "def f(items, limit, scale=2):\n"
        "    total = 0\n"
        "    for i in range(1, len(items)):\n"
        "        if items[i] > limit and i != 3:\n"
        "            total += items[i - 1] * scale\n"
        "    return divmod(total, limit)\n"
    )
    seen = set()
    for seed in range(30):
        found = sft_mine.mutate(code, random.Random(seed), kinds=[kind])
        assert found is not None and found[0] == kind
        mutant = found[1]
        assert mutant != code and sft_mine.compiles(mutant) and ast.dump(ast.parse(mutant)) != ast.dump(ast.parse(code))
        seen.add(mutant)
    assert len(seen) > 1 or kind == "boolean"  # (one `and` in the code)
    assert sft_mine.mutate("def g():\n    return None\n", random.Random(0)) is None  # nothing to mutate


def test_wrong_variable_uses_a_name_bound_before():
    code = "def f(a):\n    b = a + 1\n    c = g(b)\n    return c\n"
    for seed in range(20):
        _, mutant = sft_mine.mutate(code, random.Random(seed), kinds=["wrong_variable"])
        assert "c = g(c)" not in mutant  # c is bound only after that statement


def test_prompt_tokens_equal_the_servers_and_the_loss_is_on_the_answer_only(mined, tiny_model_dir, tiny_engine):
    tokenizer = tiny_engine.tokenizer
    records = sft_mine.read_records(mined, "train")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, local_files_only=True).eval()
    for kind in sft_mine.KINDS:
        record = next(r for r in records if r["kind"] == kind)
        ids, n = sft.encode_record(record, tokenizer, 4096)
        if kind == "explain":
            served = tasks.EXPLAIN.prompt(record["code"], path=record["path"])
        elif kind == "fix":
            served = tasks.FIX.prompt(record["buggy"], path=record["path"])
        else:
            served = tasks.TESTS.prompt(record["path"], record["module"], ["clamp", "mean"], module="calc.ops",
                                        test_path=record["test_path"])
        assert ids[:n] == tiny_engine.encode(served)  # the server's own encoding (the format's default layout)
        middle = sft.task_example(record)[1]
        assert tokenizer.decode(ids[n:-1]) == middle and ids[-1] == tokenizer.convert_tokens_to_ids("<|endoftext|>")

        row = torch.from_numpy(sft.masked(ids, n).astype(np.int64))[None]
        assert T.target_count(row, pad=-7).item() == len(ids) - n  # the middle and EOT
        with torch.no_grad():
            got = T.loss_sum(model, row, pad=-7)
            logits = model(torch.tensor([ids])).logits[0, :-1]
            want = F.cross_entropy(logits[n - 1 :], torch.tensor(ids[n:]), reduction="sum")
        assert got.item() == pytest.approx(want.item(), rel=1e-4)


def test_too_long_tests_are_shrunk_to_fit(mined, tiny_engine):
    pair = next(r for r in sft_mine.read_records(mined, "train") if r["kind"] == "tests")
    variants = list(sft.shrink_tests(pair))  # whole; the module pruned; one test and its part of the module
    sizes = [len(MIDLINE.encode_example(*sft.task_example(v), tiny_engine.tokenizer)) for v in variants]
    assert len(sizes) == 3 and sizes[0] > sizes[1] > sizes[2]
    whole = MIDLINE.encode_example(*sft.task_example(pair), tiny_engine.tokenizer)
    assert sft.encode_record(pair, tiny_engine.tokenizer, sizes[0])[0] == whole
    ids, _ = sft.encode_record(pair, tiny_engine.tokenizer, sizes[1] - 1)
    text = tiny_engine.tokenizer.decode(ids)
    assert len(ids) == sizes[2] and "def test_mean" not in text and "clamp():" in text  # one test left...
    # ...and what it uses
    assert "def mean" not in text and "Small arithmetic" not in text and "from calc.ops import clamp\n" in text
    assert sft.encode_record(pair, tiny_engine.tokenizer, 20) is None


def test_sft_runs_end_to_end_and_resumes(planted, mined, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "sft"
    base = tmp_path / "base"  # the tiny model with serving settings, which the fine-tune carries over
    shutil.copytree(tiny_model_dir, base)
    (base / "midline.json").write_text('{"min_mean_logprob": -1.25}')
    flags = ["--seq-len", "256", "--batch-size", "2", "--grad-accum", "1", "--max-steps", "4", "--checkpoint-every",
             "2", "--eval-every", "2", "--eval-batches", "1", "--log-every", "1", "--warmup-steps", "1", "--device",
             "cpu", "--no-compile", "--workers", "0", "--fim-share", "0.3"]

    def killed(step: int) -> None:
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sft.finetune(base, out, corpus_dir=planted, mined_dir=mined, sft_config=sft.SftConfig(seq_len=256, workers=0),
                     train_overrides=dict(batch_size=2, grad_accum=1, max_steps=4, checkpoint_every=2, eval_every=2,
                                          eval_batches=1, log_every=1, warmup_steps=1, device="cpu", compile=False),
                     on_step=killed)
    assert json.loads((out / "run" / "checkpoint" / "state.json").read_text())["step"] == 2
    assert main(["sft", "--model", str(base), "--corpus", str(planted), "--mined", str(mined), "--out", str(out),
                 *flags]) == 0
    assert '"export": ' in capsys.readouterr().out
    log = (out / "run" / "loss.csv").read_text().splitlines()[1:]
    assert [int(line.split(",")[0]) for line in log] == [1, 2, 3, 4]  # resumed at 2: step 3 once
    meta = json.loads((out / "data" / "meta.json").read_text())
    train = meta["splits"]["train"]
    # tests twice (tests_repeat)
    assert train["explain"] == 4 and train["fix"] >= 3 and train["tests"] == 2 and train["fim"] >= 1
    assert 0 < train["fim_tokens"] < train["sft_tokens"] and meta["seq_len"] == 256
    rows = PackedDataset(out / "data", "train")
    assert rows[0].dtype == np.int32 and (rows[0] < 0).any()  # prompts stored negated
    engine = Engine.load(out / "export", device="cpu")
    assert engine.fim.name == "midline" and f"fine-tuned from `{base}`" in (out / "export" / "README.md").read_text()
    assert engine.min_mean_logprob == -1.25


def test_scores_of_right_and_wrong_answers():
    text = {"kind": "explain", "repo": "r", "path": "m.py",
            "code": 'def f(x):\n    """Double x."""\n    return 2 * x\n'}
    assert E.score_explain(text, 'Double x."""')["rouge_l"] == 1.0
    wrong = E.score_explain(text, "Triple y.")
    assert wrong["rouge_l"] == 0.0 and 0 <= wrong["edit_similarity"] < 1 and not wrong["exact"]
    precision, recall = 4 / 6, 4 / 5  # LCS "the sum of list"
    assert E.rouge_l("return the sum of a list", "the sum of the list") == pytest.approx(
        2 * precision * recall / (precision + recall))

    fix = {"kind": "fix", "buggy": "def f(a, b):\n    return a < b\n", "fixed": "def f(a, b):\n    return a <= b\n"}
    right = E.score_fix(fix, "def f(a, b):\n    return a <= b\n# Buggy version:\n")
    assert right["fixed"] and right["same_tree"] and right["parses"] and not right["unchanged"]
    same = E.score_fix(fix, "def f(a, b):\n    return (a <= b)  # ok\n")
    assert not same["fixed"] and same["same_tree"]
    assert E.score_fix(fix, fix["buggy"])["unchanged"]


@needs_sandbox
def test_generated_tests_pass_on_the_code_and_kill_the_mutant():
    task = {"kind": "tests", "path": "strs/text.py", "name": "shout", "module": TEXT,
            "mutant": TEXT.replace('"!" * times', '"!" * (times + 1)')}
    good = 'shout():\n    assert shout("a") == "A!"\n\n\ndef test_shout_twice():\n    assert shout("b", 2) == "B!!"\n'
    row = E.score_tests(task, good)
    assert (row["tests"], row["passed"], row["passes"], row["kills"]) == (2, 2, True, True)
    weak = E.score_tests(task,
                         'shout():\n    assert shout("a").startswith("A")\n\n\ndef test_broken():\n    assert 1 == 2\n')
    assert (weak["tests"], weak["passed"], weak["passes"], weak["kills"]) == (2, 1, True, False)


@needs_sandbox
def test_eval_tasks_runs_end_to_end(planted, tiny_model_dir, tmp_path, capsys):
    report_path = tmp_path / "tasks.json"
    assert main(["eval-tasks", "--model", str(tiny_model_dir), "--corpus", str(planted), "--per-kind", "2", "--tests",
                 "1", "--max-new-tokens", "8", "24", "24", "--device", "cpu", "--out", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    m = report["metrics"]
    assert report["tasks"]["by_kind"] == {"explain": 2, "fix": 2, "tests": 1}  # one task per file and kind
    assert m["explain"]["n"] == 2 and 0 <= m["explain"]["rouge_l"] <= 1 and 0 <= m["explain"]["edit_similarity"] <= 1
    assert m["fix"]["n"] == 2 and 0 <= m["fix"]["fix_rate"] <= 1 and 0 <= m["fix"]["parses"] <= 1
    assert m["tests"]["n"] == 1 and 0 <= m["tests"]["pass_rate"] <= 1
    assert 0 <= m["tests"]["kill_rate"] <= m["tests"]["pass_rate"]
    assert (tmp_path / "tasks.tasks.jsonl").exists()
    assert "explain  n=2" in capsys.readouterr().out


def test_the_mined_and_evaluated_kinds_come_from_the_task_records():
    assert sft_mine.KINDS == ("explain", "tests", "fix")  # the order mined records are sorted in (outputs unchanged)
    assert E.KINDS == ("explain", "fix", "tests")  # the order of eval-tasks' --max-new-tokens
    assert all(tasks.TASKS[kind].record_example is not None for kind in E.KINDS)
