"""`Engine`: the decode loop matches transformers, stops for every reason it should, and reuses its KV cache exactly."""

from __future__ import annotations

import math
import os
import shutil
import threading
import time

import pytest
import torch

from midline.model import fim
from midline.model.backend import model_settings
from midline.model.engine import Engine, sample
from midline.model.fim import FimFormatError, FimPrompt, Snippet
from midline.model.loader import ModelLoadError

PROMPTS = [
    FimPrompt(prefix="def add(a, b):\n    return ", suffix="\n\nprint(add(1, 2))\n", path="calc.py"),
    FimPrompt(prefix="import os\n\nfor name in os.listdir('.'):\n", suffix="", path="ls.py",
              snippets=[Snippet("util.py", "def f():\n    pass\n")], repo="demo"),
    FimPrompt(prefix="", suffix="    return x\n"),
]


@pytest.fixture(scope="module")
def engine(tiny_engine) -> Engine:
    return tiny_engine


@pytest.fixture(scope="module")
def prompt_ids(engine) -> list[int]:
    return engine.encode(PROMPTS[0])


def test_loads_and_detects_midline_format(engine, tiny_model_dir):
    assert engine.fim is fim.MIDLINE
    assert engine.device == torch.device("cpu")
    assert engine.max_context == 4096
    assert engine.stop_ids == frozenset(range(len(fim.SPECIAL_TOKENS)))  # every midline special token ends a completion


def test_confidence_floor_ships_with_the_model(engine, tiny_model_dir, tmp_path):
    assert engine.min_mean_logprob is None  # no midline.json
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    (model_dir / "midline.json").write_text('{"min_mean_logprob": -1.5, "min_line_logprob": -2.5}')
    loaded = Engine.load(model_dir, device="cpu")
    assert (loaded.min_mean_logprob, loaded.min_line_logprob) == (-1.5, -2.5)
    (model_dir / "midline.json").write_text('{"min_mean_logprob": {"line_end": -0.5, "new_line": -1.2}, '
                                            '"languages": ["python"]}')
    loaded = Engine.load(model_dir, device="cpu")
    assert loaded.min_mean_logprob == {"line_end": -0.5, "new_line": -1.2} and loaded.languages == ("python",)
    (model_dir / "midline.json").write_text('{"min_mean_logprob": "low"}')
    with pytest.raises(ModelLoadError, match="midline.json: min_mean_logprob must be a number"):
        Engine.load(model_dir, device="cpu")


@pytest.mark.parametrize(
    "floor", ['"low"', "true", "NaN", "Infinity", '{"newline": -1.0}', '{"line_end": false}', '{"mid_line": null}']
)
def test_a_floor_that_is_not_a_number_is_refused(tmp_path, floor):
    (tmp_path / "midline.json").write_text(f'{{"min_line_logprob": {floor}}}')
    with pytest.raises(ModelLoadError,
                       match="min_line_logprob must be a number, or an object of numbers by cursor position"):
        model_settings(tmp_path)


def test_fim_format_override_and_unknown_name(tiny_model_dir):
    assert Engine.load(tiny_model_dir, device="cpu", fim_format="midline").fim is fim.MIDLINE
    with pytest.raises(FimFormatError, match="unknown FIM format 'nope'"):
        Engine.load(tiny_model_dir, device="cpu", fim_format="nope")


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_matches_transformers_generate(engine, prompt):
    ids = engine.encode(prompt)
    ours = engine.generate(ids, max_new_tokens=24)
    theirs = engine.model.generate(
        torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long), do_sample=False,
        max_new_tokens=24, eos_token_id=sorted(engine.stop_ids), pad_token_id=engine.tokenizer.pad_token_id,
    )[0, len(ids):].tolist()
    if theirs and theirs[-1] in engine.stop_ids:  # transformers keeps the stop token; we drop it
        assert ours.finish_reason == "eot"
        theirs = theirs[:-1]
    assert ours.token_ids == theirs
    assert ours.text == engine.decode(theirs)


def test_length_limit(engine, prompt_ids):
    g = engine.generate(prompt_ids, max_new_tokens=10)
    assert (g.finish_reason, len(g.token_ids)) == ("length", 10)
    assert g.prompt_tokens == len(prompt_ids)
    assert -math.log(len(engine.tokenizer)) * 3 < g.mean_logprob < 0
    assert g.elapsed_s > 0
    empty = engine.generate(prompt_ids, max_new_tokens=0)
    assert (empty.finish_reason, empty.token_ids, empty.text) == ("length", [], "")
    assert math.isnan(empty.mean_logprob)


def test_stop_token_ends_generation(engine, prompt_ids):
    tokens = engine.generate(prompt_ids, max_new_tokens=10).token_ids
    stopper = Engine(engine.model, engine.tokenizer, engine.device, engine.fim)
    stopper.stop_ids = frozenset({tokens[3]})
    g = stopper.generate(prompt_ids, max_new_tokens=10)
    assert g.finish_reason == "eot"
    assert g.token_ids == tokens[: tokens.index(tokens[3])]


def test_should_stop_sees_the_text_so_far(engine, prompt_ids):
    seen: list[str] = []

    def after_three(text: str) -> bool:
        seen.append(text)
        return len(seen) == 3

    g = engine.generate(prompt_ids, max_new_tokens=20, should_stop=after_three)
    assert (g.finish_reason, len(g.token_ids)) == ("stop", 3)
    assert seen[-1] == g.text == engine.decode(g.token_ids)


def test_cancel_before_and_while_generating(engine, prompt_ids):
    cancel = threading.Event()
    cancel.set()
    g = engine.generate(prompt_ids, cancel=cancel)
    assert (g.finish_reason, g.token_ids) == ("cancelled", [])

    cancel = threading.Event()

    def newer_request_arrives(text: str) -> bool:
        cancel.set()  # what the server does when a newer request for the document comes in
        return False

    g = engine.generate(prompt_ids, max_new_tokens=20, should_stop=newer_request_arrives, cancel=cancel)
    assert g.finish_reason == "cancelled"
    assert len(g.token_ids) == 1  # what was generated before the cancel comes back


def test_deadline(engine, prompt_ids):
    g = engine.generate(prompt_ids, deadline=time.monotonic() - 1)
    assert (g.finish_reason, g.token_ids) == ("timeout", [])


def test_sampling_is_reproducible_with_a_seed(engine, prompt_ids):
    def run(seed):
        return engine.generate(prompt_ids, max_new_tokens=16, temperature=1.0, top_p=0.95, seed=seed).token_ids

    assert run(1) == run(1)
    assert run(1) != run(2)
    greedy = engine.generate(prompt_ids, max_new_tokens=16).token_ids
    assert engine.generate(prompt_ids, max_new_tokens=16, temperature=1e-6, seed=3).token_ids == greedy


def test_top_p_keeps_the_nucleus():
    logits = torch.tensor([3.0, 2.0, 1.0, -5.0])
    generator = torch.Generator().manual_seed(0)
    picks = {sample(logits, 1.0, 0.5, generator) for _ in range(50)}
    assert picks == {0}  # token 0 alone holds > 50% of the mass
    picks = {sample(logits, 1.0, 0.9, generator) for _ in range(200)}
    assert picks == {0, 1}


def test_long_prompt_is_left_truncated(engine, prompt_ids):
    long = prompt_ids * (engine.max_context // len(prompt_ids) + 5)
    g = engine.generate(long, max_new_tokens=8)
    assert g.prompt_tokens == engine.max_context - 8
    assert len(g.token_ids) <= 8


def test_concurrent_calls_are_serialized(engine, prompt_ids):
    expected = engine.generate(prompt_ids, max_new_tokens=12).token_ids
    results: list[list[int]] = []
    def generate() -> None:
        results.append(engine.generate(prompt_ids, max_new_tokens=12).token_ids)

    threads = [threading.Thread(target=generate) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected] * 3


def test_count_tokens_treats_special_strings_as_text(engine):
    assert engine.count_tokens("") == 0
    assert engine.count_tokens(fim.EOT) > 1
    code = "def f():\n    pass\n"
    assert engine.count_tokens(code) == len(engine.tokenizer.encode(code, add_special_tokens=False))


def test_bad_arguments(engine, prompt_ids):
    with pytest.raises(ValueError, match="empty"):
        engine.generate([])
    with pytest.raises(ValueError, match="top_p"):
        engine.generate(prompt_ids, temperature=0.5, top_p=0)


# -- prefix reuse ---------------------------------------------------------------------------------


def transformers_greedy(engine: Engine, ids: list[int], max_new_tokens: int) -> list[int]:
    """transformers' own greedy tokens for `ids`, up to (not including) a stop token."""
    out = engine.model.generate(
        torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long), do_sample=False,
        max_new_tokens=max_new_tokens, eos_token_id=sorted(engine.stop_ids), pad_token_id=engine.tokenizer.pad_token_id,
    )[0, len(ids):].tolist()
    return out[:-1] if out and out[-1] in engine.stop_ids else out


def typing_session(engine: Engine) -> list[tuple[str, list[int]]]:
    """Prompts as they come while editing, named: typing, a deletion, an accepted completion, another file, ..."""
    suffix, prefix = "\n\nprint(total([1, 2, 3]))\n", "def total(xs):\n    s = 0\n    for x in xs:\n        s +"
    ids = {tail: engine.encode(FimPrompt(prefix=prefix + tail, suffix=suffix, path="calc.py"))
           for tail in ("", "=", "= ", "= x")}
    deleted = engine.encode(FimPrompt(prefix=prefix[:-1], suffix=suffix, path="calc.py"))
    accepted = deleted + engine.generate(deleted, max_new_tokens=6).token_ids  # the user took the first tokens shown
    other = engine.encode(PROMPTS[1])
    return [
        ("first", ids[""]), ("same", ids[""]), ("typed", ids["="]), ("typed", ids["= "]), ("typed", ids["= x"]),
        ("deleted", deleted), ("accepted", accepted), ("other file", other),
        ("strict prefix", other[:-5]), ("diverges", other[:-5] + [7, 8, 9]), ("back", ids["= x"]),
    ]


def test_prefix_reuse_is_exact_while_typing(engine):
    reusing = Engine(engine.model, engine.tokenizer, engine.device, engine.fim)
    fresh = Engine(engine.model, engine.tokenizer, engine.device, engine.fim, reuse_prefix=False)
    session = typing_session(engine)
    reused: dict[str, list[int]] = {}
    previous: list[int] = []  # the ids whose KV the reusing engine holds
    for step, ids in session:
        ours, baseline = reusing.generate(ids, max_new_tokens=16), fresh.generate(ids, max_new_tokens=16)
        assert ours.token_ids == baseline.token_ids == transformers_greedy(engine, ids, 16), step
        assert (ours.text, ours.finish_reason, ours.prompt_tokens) == (baseline.text, baseline.finish_reason,
                                                                       baseline.prompt_tokens)
        assert ours.mean_logprob == pytest.approx(baseline.mean_logprob, abs=1e-4) or not ours.token_ids
        assert baseline.reused_tokens == 0
        common = next((i for i, (a, b) in enumerate(zip(previous, ids)) if a != b), min(len(previous), len(ids)))
        assert ours.reused_tokens == min(common, len(ids) - 1), step
        reused.setdefault(step, []).append(ours.reused_tokens)
        # the last token is never fed
        previous = ids + (ours.token_ids if ours.finish_reason == "eot" else ours.token_ids[:-1])
    assert reused["first"] == [0] and reused["same"] == [len(session[0][1]) - 1]  # re-feeds the last token
    assert all(r > 10 for r in reused["typed"] + reused["deleted"] + reused["accepted"] + reused["strict prefix"])
    assert reused["other file"] == reused["back"] == [0]


def test_prefix_reuse_with_sampling_and_truncation(engine, prompt_ids):
    reusing = Engine(engine.model, engine.tokenizer, engine.device, engine.fim)
    fresh = Engine(engine.model, engine.tokenizer, engine.device, engine.fim, reuse_prefix=False)

    def both(ids, **kw):
        return reusing.generate(ids, **kw), fresh.generate(ids, **kw)

    for seed in (1, 2):
        ours, baseline = both(prompt_ids, max_new_tokens=12, temperature=0.8, top_p=0.9, seed=seed)
        assert ours.token_ids == baseline.token_ids
    long = (prompt_ids * (engine.max_context // len(prompt_ids) + 5))[: engine.max_context + 50]
    for ids in (long, long + [prompt_ids[0]]):  # the truncated window moves: little or nothing to reuse, still exact
        ours, baseline = both(ids, max_new_tokens=8)
        assert ours.token_ids == baseline.token_ids
        assert ours.prompt_tokens == baseline.prompt_tokens == engine.max_context - 8


def test_stopped_generations_leave_a_usable_cache(engine, prompt_ids):
    reusing = Engine(engine.model, engine.tokenizer, engine.device, engine.fim)
    expected = engine.generate(prompt_ids, max_new_tokens=12).token_ids

    cancel = threading.Event()

    def newer_request_arrives(text: str) -> bool:
        cancel.set()
        return False

    assert reusing.generate(prompt_ids, max_new_tokens=12, should_stop=newer_request_arrives,
                            cancel=cancel).finish_reason == "cancelled"
    again = reusing.generate(prompt_ids, max_new_tokens=12)
    assert (again.token_ids, again.reused_tokens) == (expected, len(prompt_ids) - 1)
    assert reusing.generate(prompt_ids, deadline=time.monotonic() - 1).finish_reason == "timeout"
    assert reusing.generate(prompt_ids, max_new_tokens=0).token_ids == []
    assert reusing.generate(prompt_ids, max_new_tokens=12).token_ids == expected

    def boom(text: str) -> bool:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        reusing.generate(prompt_ids, max_new_tokens=12, should_stop=boom)
    after = reusing.generate(prompt_ids, max_new_tokens=12)  # an exception mid-generation drops the cache
    assert (after.token_ids, after.reused_tokens) == (expected, 0)


def test_prefix_reuse_off_or_cleared(engine, prompt_ids):
    off = Engine(engine.model, engine.tokenizer, engine.device, engine.fim, reuse_prefix=False)
    assert [off.generate(prompt_ids, max_new_tokens=4).reused_tokens for _ in range(2)] == [0, 0]
    assert off._cache is None
    on = Engine(engine.model, engine.tokenizer, engine.device, engine.fim)
    assert [on.generate(prompt_ids, max_new_tokens=4).reused_tokens for _ in range(2)] == [0, len(prompt_ids) - 1]
    on.clear_cache()
    assert on.generate(prompt_ids, max_new_tokens=4).reused_tokens == 0


def test_load_sets_cpu_threads(tiny_model_dir):
    from midline.model.engine import CPU_THREADS

    assert 1 <= CPU_THREADS <= max(1, (os.cpu_count() or 1) - 1)  # a CPU left free wherever there are two
    Engine.load(tiny_model_dir, device="cpu", threads=1)
    assert torch.get_num_threads() == 1
    Engine.load(tiny_model_dir, device="cpu")
    assert torch.get_num_threads() == CPU_THREADS


def test_token_ends_locate_each_token_in_the_decoded_text(engine):
    ids = engine.tokenizer("def f(x):\n    return 'é' + x\n", add_special_tokens=False)["input_ids"]
    ends = engine.token_ends(ids)
    text = engine.decode(ids)
    assert ends[-1] == len(text) and ends == sorted(ends)
    assert all(text[:end] == engine.decode(ids[: i + 1]) for i, end in enumerate(ends))
