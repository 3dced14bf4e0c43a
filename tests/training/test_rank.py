"""`midline-train rank` (a ranker learnt from the outcome record, and DPO) and `midline-train attention`."""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import random
from pathlib import Path

import numpy as np
import pytest

from midline.model.fim import FimPrompt
from midline.server import ranker as R
from midline.server.config import Config, OutcomesConfig
from midline.training import prefer as D
from midline.training import rank as K
from midline.training import evaluate as ev
from midline.training import positions as P
from midline.training.cli import main
from midline.training.tiny_model import make_family_model, stdlib_corpus
from tests.training.test_positions import RECORDS


def synthetic_log(n: int = 600, seed: int = 0) -> list[dict]:
    """Answers whose acceptance depends on the features as a user's might: confident, valid, short suggestions at
    a line's end are taken more often; the rest is noise."""
    rng = random.Random(seed)
    records = []
    for k in range(n):
        position = rng.choice(R.POSITIONS)
        features = []
        for rank in range(rng.choice((1, 1, 2, 3))):
            mean = rng.uniform(-2.5, 0.0)
            valid = rng.random() < 0.8
            features.append({"mean_logprob": round(mean, 4), "min_logprob": round(mean - rng.uniform(0, 3), 4),
                             "chars": rng.randint(1, 80), "lines": rng.randint(1, 4), "kept": 1.0,
                             "syntax_valid": valid, "repeats_suffix": rng.random() < 0.1, "rank": rank})
        scores = [2.5 * f["mean_logprob"] + 1.5 * f["syntax_valid"] - 2 * f["repeats_suffix"]
                  + (0.8 if position == "line_end" else 0.0) + rng.gauss(0, 0.7) for f in features]
        best = max(range(len(features)), key=scores.__getitem__)
        taken = 1 / (1 + math.exp(-(scores[best] + 0.5))) > rng.random()
        records.append({"id": f"r{k}", "outcome": "accepted" if taken else "dismissed",
                        "accepted": best if taken else None, "typed": 0,
                        "suggestions": [f"s{k}_{i}" for i in range(len(features))], "features": features,
                        "language": rng.choice(("python", "python", "go")), "position": position,
                        "hole": "multi_line" if position != "mid_line" else "single_line"})
    return records


def write_log(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "not json\n")
    return path


def test_a_ranker_learns_what_predicts_acceptance_on_a_synthetic_log():
    ranker, report = K.train_ranker(synthetic_log(), precision=0.5)
    held = report["held_out"]
    assert held["auc"] > 0.8 and held["auc"] > held["auc_mean_logprob"]  # more than the model's log-prob alone
    weights = report["weights"]
    assert weights["mean_logprob"] > 0 and weights["syntax_valid"] > 0 and weights["repeats_suffix"] < 0
    assert weights["position=line_end"] > weights["position=mid_line"]
    assert held["at_floor"]["precision"] > held["at_floor"]["precision_without_floor"]
    assert 0 < held["at_floor"]["shown_share"] < 1 and set(report["floor"]) == {"*", *R.POSITIONS}


def test_labels_are_the_accepted_suggestion_and_the_server_scores_as_training_did():
    records = synthetic_log(200)
    data = K.examples(records)
    assert data.y.sum() == sum(r["outcome"] == "accepted" for r in records)
    assert len(data.y) == sum(len(r["suggestions"]) for r in records) and data.languages == ["go", "python"]
    ranker, _ = K.train_ranker(records)
    loaded_path = Path(tempfile.mkdtemp()) / "ranker.json"
    loaded_path.write_text(json.dumps(ranker.to_json()))
    loaded = R.load(loaded_path)
    record = records[3]
    x = R.vector(record["features"][0], record["position"], record["hole"], record["language"], loaded.languages)
    mean, scale = np.array(ranker.mean), np.array(ranker.scale)
    z = (np.array(x) - mean) / scale
    expected = 1 / (1 + math.exp(-(z @ np.array(ranker.weights) + ranker.bias)))
    assert loaded.probability(x) == pytest.approx(expected)


def test_auc_and_floor():
    assert K.auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert K.auc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5 and K.auc(np.array([1.0]), np.array([1])) is None
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.01])
    labels = np.array([1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0])
    assert K.floor_for(scores, labels, 0.75) == 0.6  # 3 of the 4 at or above 0.6
    assert K.floor_for(scores, labels, 0.35) == 0.2  # 3 of 8
    assert K.floor_for(scores, labels, 0.25) == 0.01  # all: 3 of 11
    unsure = np.array([0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    assert K.floor_for(scores, unsure, 0.9) == 0.05  # none reach it: the best precision over 10 or more


def test_the_rank_command_writes_a_ranker_the_server_loads(tmp_path, capsys):
    log = write_log(tmp_path / "outcomes.jsonl", synthetic_log(300))
    assert main(["rank", "--log", str(log), "--out", str(tmp_path / "rank")]) == 0
    out = capsys.readouterr().out
    assert "held-out AUC" in out and "ranker:" in out
    report = json.loads((tmp_path / "rank" / "report.json").read_text())
    assert report["skipped_lines"] == 1 and report["held_out"]["auc"] > 0.75
    assert R.load(tmp_path / "rank" / "ranker.json").floor == report["floor"]
    with pytest.raises(SystemExit):
        main(["rank", "--log", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "x")])
    assert "no outcome record" in capsys.readouterr().err


# -- DPO ------------------------------------------------------------------------------------------


def dpo_log(engine, n: int = 12) -> list[dict]:
    """Answers at new lines in small functions: `return total` accepted, `pass` or `print(1)` dismissed; prompts
    kept, as `outcomes.prompts` keeps them."""
    records = []
    for k in range(n):
        text = f"def total_{k}(values):\n    total = sum(values)\n    "
        ids = engine.encode(FimPrompt(text, "\n", path=f"m{k}.py"))
        records.append({"id": f"a{k}", "outcome": "accepted", "accepted": 0, "prompt": ids, "position": "new_line",
                        "suggestions": ["return total", "pass"], "features": [{}, {}]})
        records.append({"id": f"d{k}", "outcome": "dismissed", "accepted": None, "prompt": ids,
                        "position": "new_line", "suggestions": ["print(1)"], "features": [{}]})
    return records


def test_pairs_are_accepted_against_dismissed_at_the_same_prompt_or_position():
    records = [
        {"id": "a", "outcome": "accepted", "accepted": 1, "prompt": [1, 2], "position": "new_line",
         "suggestions": ["x", "y", "z"]},
        {"id": "b", "outcome": "accepted", "accepted": 0, "prompt": [3], "position": "new_line", "suggestions": ["u"]},
        {"id": "c", "outcome": "dismissed", "prompt": [4], "position": "new_line", "suggestions": ["v", "w"]},
        {"id": "d", "outcome": "accepted", "accepted": 0, "position": "new_line", "suggestions": ["no prompt"]},
    ]
    pairs = D.pairs(records)
    assert [(p.chosen, p.rejected, p.rejected_prompt) for p in pairs] == [("y", "x", (1, 2)), ("y", "z", (1, 2)),
                                                                          ("u", "v", (4,))]


def test_dpo_raises_the_accepted_suggestions_margin(tiny_engine, tiny_model_dir, tmp_path):
    config = D.PreferConfig(steps=6, lr=3e-3, batch=4, device="cpu", held_out=0.25, max_pairs=10)
    summary = D.prefer(tiny_model_dir, dpo_log(tiny_engine), tmp_path / "dpo", config)  # 12 pairs, 10 used
    assert summary["pairs"]["train"] > 0 and summary["pairs"]["train"] + summary["pairs"]["held_out"] == 10
    assert summary["margin_after"]["train"] > summary["margin_before"]["train"] + 0.5
    assert (tmp_path / "dpo" / "adapter" / "adapter_config.json").is_file()
    assert json.loads((tmp_path / "dpo" / "summary.json").read_text())["steps"] == 6


def test_dpo_needs_prompts(tiny_model_dir, tmp_path):
    records = synthetic_log(20)
    with pytest.raises(ValueError, match="outcomes.prompts"):
        D.prefer(tiny_model_dir, records, tmp_path / "dpo", D.PreferConfig(steps=1, device="cpu"))


# -- attention ------------------------------------------------------------------------------------

SOURCE = '''\
import os


def home():
    """Where the user lives."""
    return os.path.expanduser("~")


def mean(values):
    total = sum(values)
    return
'''


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory) -> Path:
    return make_family_model(tmp_path_factory.mktemp("qwen2"), "qwen2", corpus_files=stdlib_corpus(limit=20))


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_attention_per_prompt_line(family, tiny_model_dir, qwen_dir, tmp_path, capsys):
    model = tiny_model_dir if family == "llama" else qwen_dir
    source = tmp_path / "stats.py"
    source.write_text(SOURCE)
    out = tmp_path / "attention.png"
    settings = json.dumps({"maxNewTokens": 6, "minMeanLogprob": -1e9, "candidates": 1})
    assert main(["attention", f"{source}:11:11", "--model", str(model), "--settings", settings, "--out",
                 str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(out.with_suffix(".json").read_text())
    lines = report["lines"]
    cursor = [line for line in lines if line["region"] == "prefix" and line["file_line"] == 11]
    assert cursor and cursor[0]["text"] == "    return"
    assert {line["region"] for line in lines} >= {"prefix", "suffix", "header"}
    assert [line["text"] for line in lines if line["region"] == "prefix"][:2] == ["import os", ""]
    # Every generated token's attention, in every layer, is shared out among the lines, FIM tokens and itself.
    for layer in range(report["layers"]):
        total = sum(line["per_layer"][layer] for line in lines)
        assert total == pytest.approx(1 - report["special"] - report["to_generated"], abs=0.05)
    assert sum(report["regions"].values()) + report["special"] + report["to_generated"] == pytest.approx(1, abs=1e-3)
    assert len(report["per_token"]) == len(report["generated_tokens"]) >= 1
    assert "wrote" in capsys.readouterr().out


def test_attention_needs_a_hole(tiny_model_dir, tmp_path):
    source = tmp_path / "w.py"
    source.write_text("value = 1\nprint(val)\n")
    with pytest.raises(SystemExit):
        main(["attention", f"{source}:2:9", "--model", str(tiny_model_dir), "--out", str(tmp_path / "a.png")])


def test_replay_writes_an_outcome_record_rank_reads(tiny_engine, tmp_path):
    tasks = [t for t in P.build_position_tasks(RECORDS, per_kind=1, functions=3, seed=0) if t.kind == P.REPLAY]
    record = tmp_path / "outcomes.jsonl"
    config = dataclasses.replace(ev.eval_config(6, 60_000), cache_size=Config().cache_size, min_mean_logprob=-1e9,
                     outcomes=OutcomesConfig(record=True, file=str(record), prompts=True))
    rows = P.replay(tiny_engine, tasks, config, model="tiny")
    lines = [json.loads(x) for x in record.read_text().splitlines()]
    assert 0 < len(lines) <= sum(r["shown"] for r in rows)  # one line per answer (its typed-through rests: none)
    assert all(len(x["features"]) == len(x["suggestions"]) and x["prompt"] and x["model"] == "tiny" for x in lines)
    assert sum(x["outcome"] == "accepted" for x in lines) <= sum(r["accepted"] for r in rows)
    records, skipped = K.read_log(record)
    assert len(records) == len(lines) and skipped == 0
