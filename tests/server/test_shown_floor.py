"""The confidence floor judges the tokens of the text the user will see, not those post-processing cut."""

from __future__ import annotations

import asyncio
import math
from concurrent.futures import ThreadPoolExecutor

import pytest

from midline.model.engine import Generation
from midline.server.completion import Completer, Completion, shown_logprob
from midline.server.config import Config
from midline.server.documents import Document
from midline.server.postprocess import kept_end

MEAN = "def mean(values):\n    total = 0.0\n    for value in values:\n        total += value\n    return█\n"
# The model writes on past the shown ` total`: a blank line and the next function, which post-processing cuts.
TOTAL = " total\n\n\ndef median(values):\n    values = sorted(values)\n"
BODY = "def f(x):\n    █\n"  # an empty body: a multi-line hole on a blank line


class ScoredEngine:
    """The tiny engine, except that the answer is scripted with each token's log-probability: `sure` for the tokens
    that end within its first `sure_chars` characters, `unsure` for the rest (or per line with `by_line`)."""

    def __init__(self, engine, answer: str, *, sure_chars: int = 0, sure: float = -0.1, unsure: float = -3.0,
                 by_line: list[float] | None = None) -> None:
        self._engine, self.answer = engine, answer
        self.ids = engine.tokenizer.encode(answer, add_special_tokens=False)
        assert engine.decode(self.ids) == answer  # (the scripted tokens write exactly the answer)
        ends = engine.token_ends(self.ids)
        if by_line is not None:  # a token counts for the line its last character is on
            self.logprobs = [by_line[answer.count("\n", 0, end - 1)] for end in ends]
        else:
            self.logprobs = [sure if end <= sure_chars else unsure for end in ends]

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    def generate(self, ids, **kwargs) -> Generation:
        mean = sum(self.logprobs) / len(self.logprobs)
        return Generation(self.answer, self.ids, "length", mean, len(ids), 0.0, token_logprobs=self.logprobs)

    def candidates(self, ids, n: int, **kwargs) -> list[Generation]:
        """Every candidate is the scripted answer (they merge into one suggestion)."""
        return [self.generate(ids, **kwargs)] * n


def complete(engine, marked: str, tmp_path, **config) -> tuple[Completer, Completion]:
    with ThreadPoolExecutor(max_workers=1) as executor:
        completer = Completer(engine, Config(debounce_ms=0, cache_size=0, **config), executor)
        document = Document((tmp_path / "stats.py").as_uri(), "python", 1, marked.replace("█", ""))
        return completer, asyncio.run(completer.complete(document, marked.index("█")))


def test_a_sure_shown_line_is_shown_though_the_cut_tokens_after_it_are_unsure(tiny_engine, tmp_path):
    engine = ScoredEngine(tiny_engine, TOTAL, sure_chars=len(" total"))
    whole = sum(engine.logprobs) / len(engine.logprobs)
    assert whole < -0.6  # the mean of all generated tokens: the old floor hid it
    completer, made = complete(engine, MEAN, tmp_path, min_mean_logprob=-0.6)
    assert made.suggestion is not None and made.suggestion.text == " total"
    assert made.confidence == pytest.approx(-0.1) and completer.stats.low_confidence == 0


def test_an_unsure_shown_line_is_hidden_whatever_follows(tiny_engine, tmp_path):
    engine = ScoredEngine(tiny_engine, TOTAL, sure_chars=len(" total"), sure=-0.8, unsure=-0.05)
    assert sum(engine.logprobs) / len(engine.logprobs) > -0.6  # sure of what it would not show
    completer, made = complete(engine, MEAN, tmp_path, min_mean_logprob=-0.6)
    assert made.suggestions == [] and completer.stats.low_confidence == 1
    assert completer.trace.hidden.startswith("confidence: the shown tokens' mean log-probability -0.800")


def test_the_models_floor_for_the_position_judges_the_shown_tokens(tiny_engine, tmp_path, monkeypatch):
    engine = ScoredEngine(tiny_engine, TOTAL, sure_chars=len(" total"), sure=-0.5)
    monkeypatch.setattr(tiny_engine, "min_mean_logprob", {"line_end": -0.6, "new_line": -0.4})
    assert complete(engine, MEAN, tmp_path)[1].suggestion is not None  # a line end: -0.5 is over -0.6
    assert complete(engine, BODY, tmp_path)[1].suggestions == []  # a blank line: under -0.4


def test_the_line_floor_still_cuts_later_lines_and_the_floor_judges_what_is_left(tiny_engine, tmp_path):
    answer = "y = x + 1\n    z = y * 2\n    return z\n"
    engine = ScoredEngine(tiny_engine, answer, by_line=[-0.2, -0.4, -2.5, -2.5])
    completer, made = complete(engine, BODY, tmp_path, min_mean_logprob=-0.6, min_line_logprob=-1.0)
    assert made.suggestion is not None and made.suggestion.text == "y = x + 1\n    z = y * 2"
    assert completer.stats.tails_cut == 1
    assert -0.4 < made.confidence < -0.2  # the two shown lines' tokens
    # The same answer all unsure after its first line: the line floor leaves one line, the floor judges it alone.
    sure_first = ScoredEngine(tiny_engine, answer, by_line=[-0.2, -2.0, -2.0, -2.0])
    assert sum(sure_first.logprobs) / len(sure_first.logprobs) < -0.6
    completer, made = complete(sure_first, BODY, tmp_path, min_mean_logprob=-0.6, min_line_logprob=-1.0)
    assert made.suggestion is not None and made.suggestion.text == "y = x + 1"


def test_an_answer_without_log_probabilities_is_never_under_a_floor(tiny_engine, tmp_path):
    """A remote backend without log-probabilities: the generation's mean is nan, and nan is under no floor."""
    engine = ScoredEngine(tiny_engine, TOTAL)
    engine.generate = lambda ids, **kwargs: Generation(TOTAL, [], "eot", math.nan, len(ids), 0.0)
    completer, made = complete(engine, MEAN, tmp_path, min_mean_logprob=0.0)
    assert made.suggestion is not None and made.suggestion.text == " total" and math.isnan(made.confidence)


@pytest.mark.parametrize(
    "raw, shown, end",
    [
        (" total\n\n\ndef median():\n", " total", len(" total")),  # the rest cut
        ("\n\n    print(out)\n    x", "        print(out)", len("\n\n    print(out)")),  # re-indented, indent added
        ("\n        print(name)\n", "\n        print(name)", len("\n        print(name)")),  # a new line
        ("print(out)\n", "print(out)\n    ", len("print(out)")),  # a line above the code: its break added
        ("x = 1", "y", None),  # not the model's text: all tokens count
        ("x = 1", "   ", None),
    ],
)
def test_kept_end_maps_the_shown_text_to_the_models(raw, shown, end):
    assert kept_end(raw, shown) == end


def test_shown_logprob_counts_the_tokens_up_to_the_last_kept_character(tiny_engine):
    ids = tiny_engine.tokenizer.encode(TOTAL, add_special_tokens=False)
    ends = tiny_engine.token_ends(ids)
    logprobs = [-float(i + 1) for i in range(len(ids))]
    generation = Generation(TOTAL, ids, "length", sum(logprobs) / len(logprobs), 1, 0.0, token_logprobs=logprobs)
    count = next(i + 1 for i, end in enumerate(ends) if end >= len(" total"))
    assert shown_logprob(generation, ends, " total") == pytest.approx(sum(logprobs[:count]) / count)
    assert shown_logprob(generation, ends, "unrelated") == pytest.approx(generation.mean_logprob)
    assert shown_logprob(generation, [], " total") == pytest.approx(generation.mean_logprob)  # tokens not placed
