"""`Engine`: the decode loop matches transformers, and stops for every reason it should."""

from __future__ import annotations

import math
import threading
import time

import pytest
import torch

from midline.model import fim
from midline.model.engine import Engine, sample
from midline.model.fim import FimFormatError, FimPrompt, Snippet

PROMPTS = [
    FimPrompt(prefix="def add(a, b):\n    return ", suffix="\n\nprint(add(1, 2))\n", path="calc.py"),
    FimPrompt(prefix="import os\n\nfor name in os.listdir('.'):\n", suffix="", path="ls.py", snippets=[Snippet("util.py", "def f():\n    pass\n")], repo="demo"),
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
    threads = [threading.Thread(target=lambda: results.append(engine.generate(prompt_ids, max_new_tokens=12).token_ids)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected] * 3


def test_count_tokens_treats_special_strings_as_text(engine):
    assert engine.count_tokens("") == 0
    assert engine.count_tokens(fim.EOT) > 1
    assert engine.count_tokens("def f():\n    pass\n") == len(engine.tokenizer.encode("def f():\n    pass\n", add_special_tokens=False))


def test_bad_arguments(engine, prompt_ids):
    with pytest.raises(ValueError, match="empty"):
        engine.generate([])
    with pytest.raises(ValueError, match="top_p"):
        engine.generate(prompt_ids, temperature=0.5, top_p=0)
