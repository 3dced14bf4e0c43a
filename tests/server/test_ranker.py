"""The learnt ranker in the server: its features, its file, and how the completer orders and hides with it."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from midline.server import ranker as R
from midline.server.completion import Completer
from midline.server.config import Config, OutcomesConfig
from midline.server.context import build_context
from midline.server.documents import Document
from midline.server.outcomes import OutcomeLog
from midline.server.postprocess import Suggestion
from tests.server.test_completion import LOOP, ScriptedCandidates

ANSWERS = ["print(out)\n", "total = len(out)\n", "print(name)\n"]  # the model's order: mean log-prob -0.1, -0.2, -0.3


def write_ranker(path: Path, weights: dict[str, float], floor: float = 0.0, languages=("python",)) -> Path:
    """A ranker file whose weights are zero except `weights` (by feature name), on unstandardised features."""
    names = R.names(languages)
    ranker = R.Ranker(tuple(languages), (0.0,) * len(names), (1.0,) * len(names),
                      tuple(weights.get(n, 0.0) for n in names), 0.0, {"*": floor})
    path.write_text(json.dumps(ranker.to_json()))
    return path


def loop_doc(tmp_path) -> tuple[Document, int]:
    marked = LOOP.format("\n█")  # a fresh line in the loop's body, `return out` below
    return Document((tmp_path / "loop.py").as_uri(), "python", 1, marked.replace("█", "")), marked.index("█")


def run(tiny_engine, tmp_path, config: Config, *, model_floor: float | None = None, report=None):
    engine = ScriptedCandidates(tiny_engine, ANSWERS)
    engine.min_mean_logprob = model_floor  # the model's own floor (its midline.json)
    document, offset = loop_doc(tmp_path)
    with ThreadPoolExecutor(max_workers=1) as executor:
        completer = Completer(engine, config, executor, **({"report": report} if report else {}))  # type: ignore
        completion = asyncio.run(completer.complete(document, offset))
    return completer, completion


def test_without_a_ranker_the_models_order_and_floor_apply(tiny_engine, tmp_path):
    _, completion = run(tiny_engine, tmp_path, Config(debounce_ms=0, cache_size=0), model_floor=-0.25)
    assert [s.text.strip() for s in completion.suggestions] == ["print(out)", "total = len(out)"]
    assert completion.features == []  # neither a ranker nor the outcome record wants them


def test_a_ranker_orders_by_predicted_acceptance_and_replaces_the_models_floor(tiny_engine, tmp_path):
    longest_first = write_ranker(tmp_path / "ranker.json", {"log_chars": 4.0})
    config = Config(debounce_ms=0, cache_size=0, ranker=str(longest_first))
    _, completion = run(tiny_engine, tmp_path, config, model_floor=-0.25)
    # The model's floor would hide print(name) (-0.3); the ranker's (0) shows all three, longest first.
    assert [s.text.strip() for s in completion.suggestions] == ["total = len(out)", "print(name)", "print(out)"]
    assert [f["rank"] for f in completion.features] == [1, 2, 0]
    assert [f["mean_logprob"] for f in completion.features] == [-0.2, -0.3, -0.1]
    models_order = write_ranker(tmp_path / "ranker.json", {"rank": -3.0})  # (a changed file is read again)
    _, completion = run(tiny_engine, tmp_path, Config(debounce_ms=0, cache_size=0, ranker=str(models_order)))
    assert [s.text.strip() for s in completion.suggestions] == ["print(out)", "total = len(out)", "print(name)"]


def test_the_rankers_floor_hides_what_it_predicts_unlikely(tiny_engine, tmp_path):
    path = write_ranker(tmp_path / "ranker.json", {"rank": -3.0}, floor=0.2)  # p = 0.5, 0.047, 0.0025
    completer, completion = run(tiny_engine, tmp_path, Config(debounce_ms=0, cache_size=0, ranker=str(path)))
    assert [s.text.strip() for s in completion.suggestions] == ["print(out)"]
    path = write_ranker(tmp_path / "ranker.json", {"rank": -3.0}, floor=0.9)
    completer, completion = run(tiny_engine, tmp_path, Config(debounce_ms=0, cache_size=0, ranker=str(path)))
    assert completion.suggestions == [] and completer.stats.low_confidence == 1
    assert completer.trace.hidden == "ranker: predicted acceptance 0.500 under its floor 0.900"


@pytest.mark.parametrize("content, says", [
    (None, "does not exist"),
    ("{not json", "is not JSON"),
    ('{"format": "something else"}', "is not a midline ranker"),
    ('{"format": "midline-ranker", "version": 9}', "has version 9"),
    ('{"format": "midline-ranker", "version": 1, "languages": []}', "made for other features"),
])
def test_a_bad_ranker_file_is_reported_once_and_the_models_ranking_stays(tiny_engine, tmp_path, content, says):
    path = tmp_path / "ranker.json"
    if content is not None:
        path.write_text(content)
    reports: list[str] = []
    config = Config(debounce_ms=0, cache_size=0, ranker=str(path))
    completer, completion = run(tiny_engine, tmp_path, config, model_floor=-0.25, report=reports.append)
    assert [s.text.strip() for s in completion.suggestions] == ["print(out)", "total = len(out)"]
    assert len(reports) == 1 and str(path) in reports[0] and says in reports[0]
    assert completer.ranker_error is not None and says in completer.ranker_error
    completer.ranker()
    assert len(reports) == 1  # said once, until the file changes


def test_features_of_a_suggestion(tiny_engine, tmp_path):
    text = "def total(names):\n    out = []\n    return out\n"
    document = Document((tmp_path / "t.py").as_uri(), "python", 1, text)
    offset = text.index("    return") - 1  # the end of `out = []`
    ctx = build_context(document, offset, count_tokens=len, budget=1000)
    assert R.repeats_next_lines(Suggestion("\n    x = 1\n    return out"), ctx)
    assert not R.repeats_next_lines(Suggestion("\n    x = 1"), ctx)
    assert R.syntax_valid(Suggestion("\n    x = 1"), ctx)
    assert not R.syntax_valid(Suggestion("\n    x = ("), ctx)
    assert not R.syntax_valid(Suggestion("    x = 1"), ctx)  # glued to `out = []`
    x = R.vector({"mean_logprob": None, "chars": 3, "lines": 1, "rank": 2}, "new_line", "multi_line", "python",
                 ["go", "python"])
    assert len(x) == len(R.names(["go", "python"])) and x[0] != x[0]  # a missing log-probability is nan
    assert x[-2:] == [0.0, 1.0] and x[R.NUMERIC.index("rank")] == 2.0


def test_the_outcome_record_keeps_features_and_only_with_prompts_the_prompt(tiny_engine, tmp_path):
    for prompts in (False, True):
        record = tmp_path / f"outcomes-{prompts}.jsonl"
        config = Config(debounce_ms=0, cache_size=0,
                        outcomes=OutcomesConfig(record=True, file=str(record), prompts=prompts))
        completer, completion = run(tiny_engine, tmp_path, config)
        outcomes = OutcomeLog(config)
        document, offset = loop_doc(tmp_path)
        outcomes.note(document, offset, completion, 1.0, "tiny")
        outcomes.close(document.uri)
        (line,) = [json.loads(x) for x in record.read_text().splitlines()]
        assert len(line["features"]) == len(line["suggestions"]) == 3
        assert line["features"][0]["syntax_valid"] is True and line["features"][1]["chars"] == len("total = len(out)")
        assert ("prompt" in line) is prompts
        if prompts:
            assert line["prompt"] == list(completion.prompt.encoded)
