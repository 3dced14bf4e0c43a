"""The static KV cache path gives transformers' greedy tokens exactly: plain, with prefix reuse, padded short
prefills, grouped-query attention with biases and tied embeddings (Qwen2's layout), and under torch.compile."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from midline.model import fim, static_decode
from midline.model.engine import Engine
from midline.model.static_decode import CHUNK, StaticDecoder, unsupported

from tests.model.test_engine import PROMPTS, transformers_greedy, typing_session


def engine_on(base: Engine, model=None, **kwargs) -> Engine:
    """An engine on `base`'s model (or `model`): no prompt-lookup drafts unless asked (test_engine.py covers the CPU's
    default)."""
    return Engine(model or base.model, base.tokenizer, base.device, base.fim, **{"lookup": 0, **kwargs})


@pytest.fixture(scope="module")
def qwen_engine(tiny_engine) -> Engine:
    """A random Qwen2-layout model (grouped-query attention 6:2, q/k/v biases, tied embeddings) on the tiny
    tokenizer."""
    torch.manual_seed(0)
    config = Qwen2Config(
        hidden_size=96, intermediate_size=192, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
        vocab_size=len(tiny_engine.tokenizer), tie_word_embeddings=True, max_position_embeddings=512,
        initializer_range=0.1,  # at 0.02 its first greedy token is an end token: nothing to compare
    )
    model = Qwen2ForCausalLM(config).eval()
    assert unsupported(model) is None
    return engine_on(tiny_engine, model)


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_both_paths_match_transformers_greedy(tiny_engine, static):
    engine = engine_on(tiny_engine, static=static, reuse_prefix=False)
    generated = 0
    for prompt in PROMPTS:
        ids = engine.encode(prompt)
        g = engine.generate(ids, max_new_tokens=24)
        assert g.token_ids == transformers_greedy(engine, ids, 24)
        assert len(g.token_logprobs) == len(g.token_ids) and all(lp <= 0 for lp in g.token_logprobs)
        assert (engine._decoder is not None) == static
        generated += len(g.token_ids)
    assert generated >= 24  # something to compare


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_prefix_reuse_matches_transformers_while_typing(tiny_engine, static):
    engine = engine_on(tiny_engine, static=static)
    for step, ids in typing_session(tiny_engine):
        g = engine.generate(ids, max_new_tokens=12)
        assert g.token_ids == transformers_greedy(engine, ids, 12), step
    assert g.reused_tokens == 0 or step != "back"


def test_grouped_query_attention_with_biases_and_tied_embeddings(qwen_engine):
    ids = qwen_engine.encode(PROMPTS[0])
    related = ids[:-3] + ids[-2:]  # a deleted token: reuse up to it
    for ids_ in (ids, related, ids):
        g = qwen_engine.generate(ids_, max_new_tokens=20)
        assert qwen_engine._decoder is not None
        assert len(g.token_ids) >= 10 and g.token_ids == transformers_greedy(qwen_engine, ids_, 20)
    assert g.reused_tokens > 0


def test_padded_short_prefill_and_stale_cache_are_invisible(qwen_engine):
    """Short prompt tails go through the CHUNK-token step padded (as on CUDA); what pads write is never seen."""
    engine = engine_on(qwen_engine)
    decoder = engine._static_decoder()
    decoder.pad_prefill = True  # what capturing graphs turns on
    ids = engine.encode(PROMPTS[1])
    first = engine.generate(ids, max_new_tokens=10)
    typed = engine.generate(ids + [first.token_ids[0] if first.token_ids else 5], max_new_tokens=10)
    assert 0 < len(ids) + 1 - typed.reused_tokens <= CHUNK  # the padded path fed the tail
    assert typed.token_ids == transformers_greedy(engine, ids + [first.token_ids[0] if first.token_ids else 5], 10)
    assert len(first.token_ids) >= 5 and len(typed.token_ids) >= 5
    shorter = ids[: len(ids) // 2]  # the cache holds more than this prompt: the rest must be masked out
    assert engine.generate(shorter, max_new_tokens=10).token_ids == transformers_greedy(engine, shorter, 10)


def test_decoder_logits_match_the_model(qwen_engine):
    model = qwen_engine.model
    ids = list(range(3, 60))
    with torch.inference_mode():
        expected = model(torch.tensor([ids])).logits[0].float()
        decoder = StaticDecoder(model, 64)
        assert torch.allclose(decoder.prefill(ids[:40], 0)[0], expected[39], atol=1e-5)
        assert torch.allclose(decoder.run(torch.tensor([ids[40:40 + CHUNK]]), 40)[0], expected[40:40 + CHUNK],
                              atol=1e-5)
        assert torch.allclose(decoder.run(torch.tensor([[ids[56]]]), 56)[0, 0], expected[56], atol=1e-5)
        with pytest.raises(ValueError, match="past the static cache"):
            decoder.run(torch.tensor([[1, 2]]), 63)


def test_compiled_layer_is_one_graph_for_every_layer(qwen_engine):
    """What CUDA compiles: the decoder layer traces whole (fullgraph) and once for all layers, and gives the same
    logits."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = qwen_engine.model
    ids = list(range(3, 40))
    with torch.inference_mode():
        expected = model(torch.tensor([ids])).logits[0, -1].float()
        decoder = StaticDecoder(model, 64)
        decoder.prefill(ids[:-1], 0)
        decoder.compiled_layer = torch.compile(static_decode.layer_forward, fullgraph=True, dynamic=False,
                                               backend="eager")
        positions = decoder.arange[len(ids) - 1 : len(ids)]
        # as captured
        got = decoder.forward(torch.tensor([ids[-1:]]), positions, kv_len=decoder.max_len, compiled=True)[0, -1]
    assert torch.allclose(got, expected, atol=1e-5)
    assert counters["stats"]["unique_graphs"] == 1
    torch._dynamo.reset()


@pytest.mark.slow
def test_compiled_steps_match_transformers_greedy(qwen_engine):
    """The CPU's compiled steps (inductor, dynamic lengths): two graphs serve every position and every length up to
    CHUNK (one-token decoding, prompt tails, lookup checks), and give transformers' greedy tokens."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    engine = engine_on(qwen_engine, lookup=8)
    engine.compile_steps()
    assert engine.decode_path == "static, compiled"
    lengths = []
    for step, ids in typing_session(qwen_engine)[:6]:
        g = engine.generate(ids, max_new_tokens=24)
        assert g.token_ids == transformers_greedy(engine, ids, 24), step
        lengths.append(len(ids) - g.reused_tokens)
    assert max(lengths) > 1 and len(set(lengths)) > 1  # tails of several lengths went through the compiled step
    assert counters["stats"]["unique_graphs"] == 2  # no recompiles
    torch._dynamo.reset()


def test_warmup_checks_the_static_path(tiny_engine):
    engine = engine_on(tiny_engine)
    engine.warmup()
    assert engine.static and engine._cached_ids == []
    broken = engine_on(tiny_engine)
    decoder = broken._static_decoder()
    decoder.cos = decoder.cos.flip(0)  # wrong positions: the check must catch it
    broken.warmup()
    assert not broken.static and broken._decoder is None
    ids = broken.encode(PROMPTS[0])
    assert broken.generate(ids, max_new_tokens=8).token_ids == transformers_greedy(broken, ids, 8)


def test_long_prompts_take_the_dynamic_path(tiny_engine):
    engine = engine_on(tiny_engine, static_len=64)
    ids = engine.encode(PROMPTS[1]) * 2
    assert len(ids) + 8 > 64
    g = engine.generate(ids, max_new_tokens=8)
    assert g.token_ids == transformers_greedy(engine, ids, 8)
    assert engine._decoder is None  # never needed
    short = ids[:20]
    assert engine.generate(short, max_new_tokens=8).token_ids == transformers_greedy(engine, short, 8)
    assert engine._decoder is not None and engine._decoder.max_len == 64


def test_ignore_eos_gives_an_exact_length(tiny_engine):
    ids = tiny_engine.encode(PROMPTS[0])
    stopper = engine_on(tiny_engine)
    first = stopper.generate(ids, max_new_tokens=6).token_ids
    stopper.stop_ids = frozenset({first[2]})
    assert stopper.generate(ids, max_new_tokens=6).finish_reason == "eot"
    g = stopper.generate(ids, max_new_tokens=6, ignore_eos=True)
    assert (g.finish_reason, g.token_ids) == ("length", first)


def test_unsupported_models_are_named(tiny_engine):
    config = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=64, use_sliding_window=True, sliding_window=16,
                         max_window_layers=1)
    assert "sliding" in unsupported(Qwen2ForCausalLM(config))
    assert fim.MIDLINE is tiny_engine.fim


# -- prompt-lookup speculative decoding ----------------------------------------------------------------


def test_ngram_index_drafts_what_followed_the_last_occurrence():
    from midline.model.decoding import NgramIndex

    index = NgramIndex([1, 2, 3, 4, 1, 2])
    assert index.draft(3) == [3, 4, 1]  # after the earlier "1 2"
    index.append(9)
    assert index.draft(3) == []  # "9" never came before
    index.append(1)
    assert index.draft(2) == []  # "9 1" never came before, and one token ("1") is too little to go on
    for token in (2, 3, 7, 2, 3):
        index.append(token)
    assert index.draft(3) == [7, 2, 3]  # after the latest earlier "2 3", not the first (followed by 4)
    assert NgramIndex([5]).draft(4) == []


@pytest.mark.parametrize("which", ["tiny", "qwen"])
def test_lookup_decoding_matches_transformers_greedy(tiny_engine, qwen_engine, which):
    base = tiny_engine if which == "tiny" else qwen_engine
    engine = engine_on(base, lookup=8)
    decoder = engine._static_decoder()
    passes = []
    run = decoder.run
    decoder.run = lambda tokens, start: passes.append(tokens.shape[1]) or run(tokens, start)  # count forward passes
    generated = 0
    for step, ids in typing_session(base)[:6]:
        g = engine.generate(ids, max_new_tokens=40)
        assert g.token_ids == transformers_greedy(engine, ids, 40), step
        assert len(g.token_logprobs) == len(g.token_ids)
        generated += len(g.token_ids)
    assert any(t > 1 for t in passes)  # drafts were checked...
    assert len(passes) < generated  # ...and accepted: fewer passes than tokens


# -- several candidates in one batched pass -------------------------------------------------------------


def teacher_forced_logprobs(engine: Engine, ids: list[int], tokens: list[int]) -> list[float]:
    """transformers' log-probabilities of `tokens` after `ids`, from one forward pass."""
    with torch.inference_mode():
        logits = engine.model(torch.tensor([ids + tokens])).logits[0, len(ids) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(tokens)[:, None])[:, 0].tolist()


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_candidates_are_ranked_samples_with_true_logprobs(qwen_engine, static):
    engine = engine_on(qwen_engine, static=static)
    ids = engine.encode(PROMPTS[0])
    for prompt in (ids, ids[:-2] + ids[-1:]):  # the second reuses the batch cache on the static path
        cands = engine.candidates(prompt, 4, max_new_tokens=12, temperature=1.0, top_p=0.9, seed=1)
        assert len(cands) == 4 and len({tuple(c.token_ids) for c in cands}) > 1
        means = [c.mean_logprob for c in cands if c.token_ids]
        assert means == sorted(means, reverse=True)
        for c in cands:
            assert c.finish_reason in ("eot", "length") and len(c.token_logprobs) == len(c.token_ids)
            if c.token_ids:
                assert c.token_logprobs == pytest.approx(teacher_forced_logprobs(engine, prompt, c.token_ids), abs=1e-4)
    assert cands[0].reused_tokens == (len(ids) - 2 if static else 0)
    again = engine.candidates(prompt, 4, max_new_tokens=12, temperature=1.0, top_p=0.9, seed=1)
    assert [c.token_ids for c in again] == [c.token_ids for c in cands]
    greedy = engine.candidates(ids, 2, max_new_tokens=12, temperature=0)
    assert [c.token_ids for c in greedy] == [transformers_greedy(engine, ids, 12)] * 2


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_greedy_first_puts_the_greedy_answer_among_the_samples(qwen_engine, static):
    engine = engine_on(qwen_engine, static=static)
    ids = engine.encode(PROMPTS[0])
    greedy = transformers_greedy(engine, ids, 12)
    cands = engine.candidates(ids, 3, max_new_tokens=12, temperature=1.0, top_p=0.9, seed=1, greedy_first=True)
    assert [c.token_ids for c in cands].count(greedy) >= 1 and len({tuple(c.token_ids) for c in cands}) > 1
    means = [c.mean_logprob for c in cands if c.token_ids]
    assert means == sorted(means, reverse=True)
    plain = engine.candidates(ids, 3, max_new_tokens=12, temperature=1.0, top_p=0.9, seed=1)
    assert greedy not in [c.token_ids for c in plain]  # (the same seed's samples without it do not happen to be greedy)


def test_candidates_stop_each_row_and_all_on_cancel(qwen_engine):
    import threading

    engine = engine_on(qwen_engine)
    ids = engine.encode(PROMPTS[1])
    cands = engine.candidates(ids, 3, max_new_tokens=12, seed=2, should_stop=lambda text: len(text) > 8)
    assert all(c.finish_reason in ("stop", "eot", "length") for c in cands)
    assert any(c.finish_reason == "stop" for c in cands)
    cancel = threading.Event()
    cancel.set()
    assert {c.finish_reason for c in engine.candidates(ids, 2, cancel=cancel)} == {"cancelled"}
