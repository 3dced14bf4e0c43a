"""The completion pipeline in-process: enablement, holes, cache, typing-through, prompt budget."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from midline.model.engine import Generation
from midline.model.fim import FimFormatError, FimPrompt, get
from midline.server.completion import Completer
from midline.server.config import Config
from midline.server.documents import Document
from midline.server.postprocess import Suggestion, postprocess, repeats_suffix
from midline.server.lsp import as_snippet

CODE = "import os\n\n\ndef home():\n    # the user's home directory, from \n    return os.path.expanduser('~')\n"
CURSOR = CODE.index("from ") + len("from ")


@pytest.fixture
def completer(tiny_engine, tmp_path):
    with ThreadPoolExecutor(max_workers=1) as executor:
        yield Completer(tiny_engine, Config(debounce_ms=0, max_new_tokens=16), executor, root=str(tmp_path))


def doc(tmp_path, text: str = CODE, language: str = "python", name: str = "home.py") -> Document:
    return Document((tmp_path / name).as_uri(), language, 1, text)


def complete(completer: Completer, document: Document, offset: int) -> Suggestion | None:
    return asyncio.run(completer.complete(document, offset)).suggestion


def test_disabled_language_never_reaches_the_model(completer, tmp_path):
    completer.config = Config(debounce_ms=0, enable={"python": False})
    assert complete(completer, doc(tmp_path), CURSOR) is None
    assert completer.stats.model_calls == 0


def test_model_languages_are_the_default_and_settings_override_them(completer, tmp_path, monkeypatch):
    monkeypatch.setattr(completer.engine, "languages", ("python",))
    js = doc(tmp_path, "const x = 1;\n", "javascript", "x.js")
    assert complete(completer, js, len("const x = 1;")) is None and completer.stats.model_calls == 0
    assert completer.enabled(doc(tmp_path)) and not completer.enabled(js)
    completer.config = Config(debounce_ms=0, max_new_tokens=4, enable={"*": True, "javascript": True})
    assert completer.enabled(js)  # the user turned it on
    completer.config = Config(debounce_ms=0, enable={"python": False})
    assert not completer.enabled(doc(tmp_path))


def test_mid_identifier_is_no_hole(completer, tmp_path):
    offset = CODE.index("expanduser") + 3
    assert complete(completer, doc(tmp_path), offset) is None
    assert completer.stats.model_calls == 0


def test_same_context_is_cached_and_cache_is_bounded(completer, tmp_path):
    completer.config = Config(debounce_ms=0, max_new_tokens=16, cache_size=1)
    first = complete(completer, doc(tmp_path), CURSOR)
    assert complete(completer, doc(tmp_path), CURSOR) == first
    assert (completer.stats.model_calls, completer.stats.cache_hits) == (1, 1)
    complete(completer, doc(tmp_path, CODE.replace("expanduser", "expandvars")), CURSOR)  # evicts the first
    complete(completer, doc(tmp_path), CURSOR)
    assert completer.stats.model_calls == 3


def test_a_completion_carries_its_model_call(completer, tmp_path):
    made = asyncio.run(completer.complete(doc(tmp_path), CURSOR))
    assert made.generation is not None and made.trace is completer.trace and made.trace.raw == made.generation.text
    assert made.trace.shown == (made.suggestion.text if made.suggestion else None)
    cached = asyncio.run(completer.complete(doc(tmp_path), CURSOR))  # no model call: no generation, no trace
    assert (cached.suggestion, cached.generation, cached.trace) == (made.suggestion, None, None)


def test_typing_through_only_while_the_typed_text_matches(completer, tmp_path):
    shown = complete(completer, doc(tmp_path), CURSOR)
    assert shown is not None and len(shown.text) > 2
    typed = CODE[:CURSOR] + shown.text[:2] + CODE[CURSOR:]
    rest = complete(completer, doc(tmp_path, typed), CURSOR + 2)
    assert rest == Suggestion(shown.text[2:], shown.replace) and completer.stats.typed_through == 1
    wrong = CODE[:CURSOR] + "@@" + CODE[CURSOR:]  # typed something else: back to the model
    complete(completer, doc(tmp_path, wrong), CURSOR + 2)
    assert completer.stats.typed_through == 1 and completer.stats.model_calls == 2


def test_prompt_fits_the_model_context(completer, tmp_path):
    long_file = "".join(f"value_{i} = {i} * {i}\n" for i in range(3000)) + "total = "
    completer.config = Config.from_json({"debounceMs": 0, "maxNewTokens": 16, "context": {"budget": 100_000}})
    ctx = completer.prompts.context(doc(tmp_path, long_file), len(long_file))
    ids = completer.engine.encode(completer.prompts.fim_prompt(ctx))
    assert len(ids) + completer.config.max_new_tokens <= completer.engine.max_context


def test_prompt_paths_are_relative_to_the_workspace(completer, tmp_path):
    ctx = completer.prompts.context(doc(tmp_path, name="pkg/home.py"), CURSOR)
    prompt = completer.prompts.fim_prompt(ctx)
    assert prompt.path == "pkg/home.py" and prompt.repo == tmp_path.name


def test_fim_mode_setting_picks_the_layout(completer, tmp_path):
    ctx = completer.prompts.context(doc(tmp_path), CURSOR)
    completer.config = Config(fim_mode="psm")
    psm = completer.engine.encode(completer.prompts.fim_prompt(ctx), completer.prompts.mode)
    completer.config = Config()
    spm = completer.engine.encode(completer.prompts.fim_prompt(ctx), completer.prompts.mode)
    fmt = completer.engine.fim
    prefix_id, suffix_id = (completer.engine.tokenizer.convert_tokens_to_ids(t) for t in (fmt.prefix, fmt.suffix))
    assert psm.index(prefix_id) < psm.index(suffix_id)
    assert spm.index(suffix_id) < spm.index(prefix_id)  # midline's own models default to SPM


def test_a_layout_the_format_lacks_is_a_clear_error():
    with pytest.raises(FimFormatError, match="no SPM layout"):
        get("qwen").segments(FimPrompt("a", "b"), "spm")


def test_snippet_fallback_expands_to_exactly_the_suggestion():
    document = "def f():\n    x = {\n"
    offset = document.index("{") + 1
    assert as_snippet("'a': $b}\n    y = 2", document, offset) == "'a': \\$b\\}\ny = 2"
    assert as_snippet("c:\\\\d", document, offset) == "c:\\\\\\\\d"


def test_suggestions_under_the_confidence_floor_are_hidden(completer, tmp_path):
    """The random-weight model is never confident: a floor of 0 nats hides everything, a floor far below shows it."""
    completer.config = Config(debounce_ms=0, max_new_tokens=16, cache_size=0, min_mean_logprob=-1e9)
    assert complete(completer, doc(tmp_path), CURSOR) is not None
    completer.config = Config(debounce_ms=0, max_new_tokens=16, cache_size=0, min_mean_logprob=0.0)
    assert complete(completer, doc(tmp_path), CURSOR) is None
    assert completer.stats.low_confidence == 1


def test_the_models_own_floor_applies_unless_the_settings_name_one(completer, tmp_path, monkeypatch):
    monkeypatch.setattr(completer.engine, "min_mean_logprob", 0.0)
    completer.config = Config(debounce_ms=0, max_new_tokens=16, cache_size=0)
    assert complete(completer, doc(tmp_path), CURSOR) is None
    completer.config = Config(debounce_ms=0, max_new_tokens=16, cache_size=0, min_mean_logprob=-1e9)
    assert complete(completer, doc(tmp_path), CURSOR) is not None


def test_the_models_floor_may_differ_by_cursor_position(tiny_engine, tmp_path, monkeypatch):
    """The end of a complete line is "line_end"; a blank line in a body is "new_line". (The scripted answer's mean
    log-probability is -0.1.)"""
    monkeypatch.setattr(tiny_engine, "min_mean_logprob", {"new_line": 0.0})
    engine = ScriptedEngine(tiny_engine, "\n        print(name)\n")
    with ThreadPoolExecutor(max_workers=1) as executor:
        completer = Completer(engine, Config(debounce_ms=0, cache_size=0), executor)  # type: ignore[arg-type]
        at_end = LOOP.format("█")
        assert complete(completer, doc(tmp_path, at_end.replace("█", "")), at_end.index("█")) is not None  # no floor
        engine.answer = "print(out)\n"
        blank = LOOP.format("\n█")
        assert complete(completer, doc(tmp_path, blank.replace("█", ""), name="b.py"), blank.index("█")) is None
    assert completer.stats.low_confidence == 1


def test_unsure_lines_after_the_first_are_cut(completer, tmp_path):
    """The random-weight model is never confident: a line floor of 0 nats cuts after the first line, one far below
    never."""
    text = "import os\n\n\ndef home():\n    \n"
    offset = text.index("    \n") + 4
    completer.config = Config(debounce_ms=0, max_new_tokens=48, cache_size=0, min_mean_logprob=-1e9,
                              min_line_logprob=-1e9)
    for name in (f"home{i}.py" for i in range(20)):  # (the first file name under which the model writes two lines)
        complete(completer, doc(tmp_path, text, name=name), offset)
        if "\n" in completer.trace.raw.strip():
            break
    assert "\n" in completer.trace.raw.strip() and completer.stats.tails_cut == 0
    completer.config = Config(debounce_ms=0, max_new_tokens=48, cache_size=0, min_mean_logprob=-1e9,
                              min_line_logprob=0.0)
    complete(completer, doc(tmp_path, text, name=name), offset)
    assert completer.stats.tails_cut == 1


class ScriptedEngine:
    """The tiny engine, except that the model's answer is scripted; records the prompts it was given."""

    def __init__(self, engine, answer: str) -> None:
        self._engine, self.answer, self.prompts = engine, answer, []

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    def generate(self, ids, **kwargs) -> Generation:
        self.prompts.append(self._engine.tokenizer.decode(ids))
        return Generation(self.answer, [], "eot", -0.1, len(ids), 0.0)

    def candidates(self, ids, n: int, **kwargs) -> list[Generation]:
        """Every candidate is the scripted answer (they merge into one suggestion)."""
        return [self.generate(ids)] * n


LOOP = "def total(names):\n    out = []\n    for name in names:\n        out.append(name){}\n    return out\n"


@pytest.mark.parametrize(
    "marked, answer, shown, prompt_end",
    [
        # Enter at column 0 in a body: the prompt has the implied indentation, and so has the suggestion.
        (LOOP.format("\n█"), "print(out)\n", "        print(out)", "out.append(name)\n        "),
        # The end of a complete line: the answer's new line stays a new line.
        (LOOP.format("█"), "\n        print(name)\n", "\n        print(name)", "out.append(name)"),
        # The start of a line's code: a line written above it.
        (LOOP.format("").replace("    return", "    █return"), "print(out)\n", "print(out)\n    ", "\n    "),
    ],
    ids=["column-0", "end-of-line", "start-of-line"],
)
def test_editor_positions_through_the_completer(tiny_engine, tmp_path, marked, answer, shown, prompt_end):
    engine = ScriptedEngine(tiny_engine, answer)
    with ThreadPoolExecutor(max_workers=1) as executor:
        completer = Completer(engine, Config(debounce_ms=0, cache_size=0), executor)  # type: ignore[arg-type]
        suggestion = complete(completer, doc(tmp_path, marked.replace("█", "")), marked.index("█"))
    assert suggestion is not None and suggestion.text == shown
    assert engine.prompts[0].endswith(prompt_end + "<|midline:fim_middle|>")


# -- several candidates ------------------------------------------------------------------------------


class ScriptedCandidates(ScriptedEngine):
    """The tiny engine with scripted candidates, best first (as `Engine.candidates` ranks them); records how many
    were asked for."""

    def __init__(self, engine, answers: list[str]) -> None:
        super().__init__(engine, answers[0])
        self.answers, self.asked = answers, []

    def candidates(self, ids, n: int, **kwargs) -> list[Generation]:
        self.asked.append(n)
        return [Generation(a, [], "eot", -0.1 * (i + 1), len(ids), 0.0) for i, a in enumerate(self.answers[:n])]


class RecordedCandidates:
    """The tiny engine, keeping the candidates it ranked."""

    def __init__(self, engine) -> None:
        self._engine, self.ranked = engine, []

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    def candidates(self, ids, n: int, **kwargs) -> list[Generation]:
        self.ranked = self._engine.candidates(ids, n, **kwargs)
        return self.ranked


def test_an_explicit_request_gets_the_ranked_candidates_an_automatic_one_the_greedy_answer(tiny_engine, tmp_path):
    engine = RecordedCandidates(tiny_engine)
    text = "import os\n\n\ndef home():\n    # the user's home directory\n    "
    document = doc(tmp_path, text)
    config = Config(debounce_ms=0, max_new_tokens=16, cache_size=0, min_mean_logprob=-1e9)
    with ThreadPoolExecutor(max_workers=1) as executor:
        completer = Completer(engine, config, executor, root=str(tmp_path))  # type: ignore[arg-type]
        explicit = asyncio.run(completer.complete(document, len(text)))
        ranked = engine.ranked
        assert completer.trace.candidates == 3 and len(ranked) == 3
        means = [g.mean_logprob for g in ranked]
        assert means == sorted(means, reverse=True)
        ctx = completer.prompts.build(document, len(text)).context
        kept = [postprocess(g.text, ctx, config.max_lines) for g in ranked]
        shown = [s for s in kept if s is not None and not repeats_suffix(s, ctx)]
        assert explicit.suggestions == list(dict.fromkeys(shown))
        assert explicit.generation in ranked and completer.trace.others == [s.text for s in explicit.suggestions[1:]]
        automatic = asyncio.run(completer.complete(document, len(text), automatic=True))
    assert engine.ranked is ranked and completer.trace.candidates == 1 and len(automatic.suggestions) <= 1  # `generate`
    assert automatic.generation is not None
    assert automatic.generation.token_ids in [g.token_ids for g in ranked]  # the greedy answer is a candidate


def test_candidates_that_fail_the_gate_or_repeat_the_suffix_are_dropped_and_duplicates_merged(tiny_engine, tmp_path):
    marked = LOOP.format("\n█")  # column 0 of a fresh line in the loop's body, `return out` below
    answers = ["print(out)\n", "x = (\n", "print(out)\n", "return out\n", "total = len(out)\n"]
    engine = ScriptedCandidates(tiny_engine, answers)
    with ThreadPoolExecutor(max_workers=1) as executor:
        config = Config(debounce_ms=0, cache_size=0, candidates=5)
        completer = Completer(engine, config, executor)  # type: ignore[arg-type]
        completion = asyncio.run(completer.complete(doc(tmp_path, marked.replace("█", "")), marked.index("█")))
    assert [s.text for s in completion.suggestions] == ["        print(out)", "        total = len(out)"]
    assert engine.asked == [5] and completer.trace.candidates == 5
    assert completer.trace.others == ["        total = len(out)"]


def test_automatic_requests_get_several_candidates_only_while_the_model_is_idle(tiny_engine, tmp_path):
    engine = ScriptedCandidates(tiny_engine, ["print(out)\n", "total = len(out)\n"])
    marked = LOOP.format("\n█")
    document = doc(tmp_path, marked.replace("█", ""))
    config = Config(debounce_ms=0, cache_size=0, candidates=2, automatic_candidates=2)
    with ThreadPoolExecutor(max_workers=1) as executor:
        completer = Completer(engine, config, executor)  # type: ignore[arg-type]
        assert len(asyncio.run(completer.complete(document, marked.index("█"), automatic=True)).suggestions) == 2
        completer._running["file:///elsewhere.py"] = threading.Event()  # another document's completion is generating
        busy = asyncio.run(completer.complete(document, marked.index("█"), automatic=True))
    assert engine.asked == [2] and [s.text for s in busy.suggestions] == ["        print(out)"]  # one: `generate`


def test_typing_through_keeps_the_candidates_that_match_and_the_cache_keeps_them_all(tiny_engine, tmp_path):
    engine = ScriptedCandidates(tiny_engine, ["print(out)\n", "print(len(out))\n", "total = len(out)\n"])
    marked = LOOP.format("\n█")
    text, offset = marked.replace("█", ""), marked.index("█")
    with ThreadPoolExecutor(max_workers=1) as executor:
        completer = Completer(engine, Config(debounce_ms=0), executor)  # type: ignore[arg-type]
        first = asyncio.run(completer.complete(doc(tmp_path, text), offset))
        shown = ["        print(out)", "        print(len(out))", "        total = len(out)"]
        assert [s.text for s in first.suggestions] == shown
        typed = "        print("
        typed_doc = doc(tmp_path, text[:offset] + typed + text[offset:])
        after = asyncio.run(completer.complete(typed_doc, offset + len(typed)))
        assert [s.text for s in after.suggestions] == ["out)", "len(out))"] and completer.stats.typed_through == 1
        assert asyncio.run(completer.complete(doc(tmp_path, text), offset)).suggestions == first.suggestions
        assert completer.stats.cache_hits == 1 and engine.asked == [3]
        # An automatic request may be typed through; it asks for one candidate, which the cache keeps apart.
        assert len(asyncio.run(completer.complete(doc(tmp_path, text), offset, automatic=True)).suggestions) == 1
        assert engine.asked == [3] and completer.stats.model_calls == 2
