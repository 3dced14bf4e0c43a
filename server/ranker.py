"""A learnt ranker of suggestions: how likely the user is to accept each one (opt-in: the `ranker` setting).

`midline-train rank` fits it on the outcome record (outcomes.py) and writes it as JSON; the server loads it and,
for each post-processed suggestion, computes `features` (what the server knows of it already: the model's mean and
lowest token log-probability, its length and lines, how much of the model's text post-processing kept, whether it
leaves the cursor's lines without syntax errors, whether it writes again a line that follows the cursor, its rank
in the model's order, and the request's position kind, hole and language), predicts its acceptance with a logistic
regression, orders the suggestions by it, and hides those under the ranker's floor for the position kind (learnt
from the user's own record), in place of the model's confidence floor.

The same `features` go into the outcome record, so a ranker is trained on exactly what it is served with, and
`vector` is the one place that turns them into numbers.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from midline.model import syntax
from midline.model.backend import Generation
from midline.model.languages import resolve

from .context import CompletionContext, Hole
from .postprocess import Suggestion

FORMAT = "midline-ranker"
VERSION = 1
POSITIONS = ("mid_line", "line_end", "new_line")
# The numeric features, in the order of a ranker's weights (one-hot positions, hole and languages follow).
NUMERIC = ("mean_logprob", "min_logprob", "log_chars", "lines", "kept", "syntax_valid", "repeats_suffix", "rank")
SUFFIX_LINES = 3  # non-blank lines after the cursor a suggestion's lines are compared with


class RankerError(ValueError):
    """A ranker file that cannot be used; the message names the file and says what is wrong."""


def features(suggestion: Suggestion, generation: Generation, ctx: CompletionContext, rank: int) -> dict[str, Any]:
    """What the server knows of one shown suggestion, as the outcome record keeps it (JSON-ready)."""
    logprobs = generation.token_logprobs
    raw = generation.text.strip()
    text = suggestion.text.strip()
    return {
        "mean_logprob": _rounded(generation.mean_logprob),
        "min_logprob": _rounded(min(logprobs)) if logprobs else None,
        "chars": len(text),
        "lines": len([line for line in suggestion.text.split("\n") if line.strip()]),
        "kept": round(min(1.0, len(text) / len(raw)), 3) if raw else 1.0,
        "syntax_valid": syntax_valid(suggestion, ctx),
        "repeats_suffix": repeats_next_lines(suggestion, ctx),
        "rank": rank,
    }


def syntax_valid(suggestion: Suggestion, ctx: CompletionContext) -> bool:
    """Whether the document with `suggestion` inserted has no syntax error on the lines from the cursor's to the
    suggestion's last (languages without a grammar: True)."""
    if resolve(ctx.language).grammar is None:
        return True
    text = ctx.text
    before = text[: ctx.offset]
    document = before + suggestion.text + text[ctx.offset + suggestion.replace :]
    first = syntax.byte_offset(document, syntax.line_start(document, ctx.offset))
    last = syntax.byte_offset(document, syntax.line_end(document, ctx.offset + len(suggestion.text)))
    spans = syntax.error_spans(syntax.parse(ctx.language, document).root_node)
    return not any(start <= last and end >= first for start, end in spans)


def repeats_next_lines(suggestion: Suggestion, ctx: CompletionContext) -> bool:
    """Whether a line of `suggestion` is one of the next `SUFFIX_LINES` non-blank lines from the cursor on (the rest
    of its line first; white space aside): a partial repeat of the suffix (a whole one is never shown)."""
    after = ctx.suffix[suggestion.replace :].split("\n")
    following = set([line.strip() for line in after if line.strip()][:SUFFIX_LINES])
    return any(line.strip() in following for line in suggestion.text.split("\n") if line.strip())


def vector(shown: Mapping[str, Any], position: str, hole: str, language: str, languages: Sequence[str]) -> list[float]:
    """One suggestion's features (`features`' dict) and its request's as numbers, in a ranker's order: `NUMERIC`
    (a missing log-probability as nan, which normalisation makes the mean), then one-hot position kinds, a multi-line
    hole, and `languages`."""
    numbers = [
        _number(shown.get("mean_logprob")), _number(shown.get("min_logprob")),
        math.log1p(float(shown.get("chars", 0))), float(shown.get("lines", 0)), float(shown.get("kept", 1.0)),
        float(bool(shown.get("syntax_valid", True))), float(bool(shown.get("repeats_suffix", False))),
        float(shown.get("rank", 0)),
    ]
    return [*numbers, *(float(position == p) for p in POSITIONS), float(hole == Hole.MULTI_LINE.value),
            *(float(language == name) for name in languages)]


def names(languages: Sequence[str]) -> list[str]:
    """The names of `vector`'s entries."""
    return [*NUMERIC, *(f"position={p}" for p in POSITIONS), "multi_line", *(f"language={name}" for name in languages)]


@dataclass(frozen=True)
class Ranker:
    """A logistic regression over standardised `vector`s, and the floor of predicted acceptance per position kind."""

    languages: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    floor: Mapping[str, float]  # position kind (or "*") -> the least predicted acceptance shown
    path: str = ""

    def predict(self, shown: Mapping[str, Any], ctx: CompletionContext) -> float:
        """The predicted probability that the suggestion with `shown` features is accepted."""
        return self.probability(vector(shown, ctx.position, ctx.hole.value, ctx.language, self.languages))

    def probability(self, x: Sequence[float]) -> float:
        z = self.bias
        for value, mean, scale, weight in zip(x, self.mean, self.scale, self.weights):
            z += weight * ((mean if math.isnan(value) else value) - mean) / scale
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))

    def floor_for(self, position: str) -> float:
        """The least predicted acceptance shown at this position kind."""
        return self.floor.get(position, self.floor.get("*", 0.0))

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "features": names(self.languages),
                "languages": list(self.languages), "mean": list(self.mean), "scale": list(self.scale),
                "weights": list(self.weights), "bias": self.bias, "floor": dict(self.floor)}


def load(path: str | Path) -> Ranker:
    """The ranker in the JSON file `path` (`midline-train rank`'s `ranker.json`); RankerError says what is wrong."""
    path = Path(path).expanduser()
    where = f"the ranker {path}"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RankerError(f"{where} does not exist: make one with `midline-train rank`, or unset `ranker`") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RankerError(f"cannot read {where}: {getattr(exc, 'strerror', None) or exc}") from None
    except json.JSONDecodeError as exc:
        raise RankerError(f"{where} is not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise RankerError(f"{where} is not a midline ranker (no \"format\": \"{FORMAT}\")")
    if data.get("version") != VERSION:
        raise RankerError(f"{where} has version {data.get('version')!r}; this midline reads version {VERSION}")
    try:
        languages = tuple(str(name) for name in data["languages"])
        size = len(names(languages))
        if data.get("features") != names(languages):
            raise RankerError(f"{where} was made for other features ({data.get('features')}); train it again")
        columns = {key: tuple(float(v) for v in data[key]) for key in ("mean", "scale", "weights")}
        if any(len(values) != size for values in columns.values()):
            raise RankerError(f"{where} has {size} features but mean, scale and weights of other lengths")
        if any(not math.isfinite(v) for values in columns.values() for v in values) or min(columns["scale"]) <= 0:
            raise RankerError(f"{where} has a non-finite number, or a scale that is not positive")
        floor = {str(k): float(v) for k, v in dict(data["floor"]).items()}
        return Ranker(languages, columns["mean"], columns["scale"], columns["weights"], float(data["bias"]), floor,
                      str(path))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, RankerError):
            raise
        raise RankerError(f"{where} is missing or has a bad field ({type(exc).__name__}: {exc})") from None


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _rounded(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 4)
