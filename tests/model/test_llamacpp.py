"""The llama.cpp engine (model/llamacpp.py): the same prompts, tokens, stops and prefix reuse as the PyTorch engine,
on real models converted on first use; its tokenizer without transformers; and when the server chooses it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from midline.model import DEFAULT_MODEL_DIR, fim
from midline.model.backend import ModelLoadError
from midline.model.engine import Engine
from midline.model.fim import FimPrompt
from midline.model.tokenizer import FastTokenizer
from midline.training.tiny_model import make_family_model, stdlib_corpus

from ..model.test_gguf_export import prompt_ids

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install -e '.[cpu]')")

from midline.model import llamacpp  # noqa: E402  (after the skip: nothing to test without llama.cpp)
from midline.model.llamacpp import LlamaCppEngine  # noqa: E402

SOURCES = [Path(llamacpp.__file__), Path(fim.__file__), Path(__file__).parent.parent / "data" / "example.py"]


@pytest.fixture(scope="module")
def pair(tiny_model_dir: Path, tiny_engine: Engine) -> tuple[Engine, LlamaCppEngine]:
    """The tiny model in both engines, llama.cpp's in f32 (so greedy tokens must be equal)."""
    return tiny_engine, LlamaCppEngine.load(tiny_model_dir, weight_type="f32")


def family_model(path: Path, family: str, **kwargs) -> Path:
    """A random-weight model of `family` whose tokenizer.json is what transformers uses for that family, as a real
    model's is (transformers 5 builds Qwen2's pre-tokenizer and normaliser itself, whatever the file says)."""
    from transformers import AutoTokenizer

    make_family_model(path, family, corpus_files=stdlib_corpus(limit=20), vocab_size=600, **kwargs)
    AutoTokenizer.from_pretrained(path, local_files_only=True).backend_tokenizer.save(str(path / "tokenizer.json"))
    return path


def first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


@pytest.mark.parametrize("model", ["tiny", "default", "qwen2", "starcoder2", "deepseek"])
def test_the_tokenizer_without_transformers_encodes_and_decodes_as_the_hugging_face_one(model, tiny_model_dir,
                                                                                       tmp_path):
    from transformers import AutoTokenizer

    path = {"tiny": tiny_model_dir, "default": DEFAULT_MODEL_DIR}.get(model) or family_model(tmp_path / model, model)
    hf, fast = AutoTokenizer.from_pretrained(path, local_files_only=True), FastTokenizer.load(path)
    fmt = fim.detect(fast.get_vocab())
    assert fmt == fim.detect(hf.get_vocab()) and (fast.bos_token_id, fast.eos_token_id) == (hf.bos_token_id,
                                                                                           hf.eos_token_id)
    texts = [p.read_text() for p in SOURCES] + [f"x = 1  # {fmt.prefix} {fmt.eot} are text here\n", " naïve ∑ 😀\t\r\n"]
    for text in texts:
        ids = fim.encode_text(hf, text)
        assert fim.encode_text(fast, text) == ids
        assert fast.decode(ids) == hf.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    prompt = FimPrompt(prefix=texts[2][:300], suffix=texts[2][300:600], path="pkg/example.py")
    assert fmt.encode(prompt, fast) == fmt.encode(prompt, hf)


def test_greedy_tokens_equal_the_pytorch_engines_in_f32_cold_and_with_the_prefix_reused(pair):
    torch_engine, engine = pair
    ids = prompt_ids(torch_engine)[-300:]
    expected = torch_engine.generate(ids, max_new_tokens=32, ignore_eos=True)
    engine.clear_cache()
    cold = engine.generate(ids, max_new_tokens=32, ignore_eos=True)
    assert cold.token_ids == expected.token_ids and cold.text == expected.text and cold.reused_tokens == 0
    assert cold.mean_logprob == pytest.approx(expected.mean_logprob, abs=1e-3)
    typed = ids[:-3] + ids[-2:]  # an edit near the end of the prompt: the cache is cut back, not thrown away
    warm = engine.generate(typed, max_new_tokens=32, ignore_eos=True)
    assert warm.reused_tokens == len(ids) - 3
    engine.clear_cache()
    assert engine.generate(typed, max_new_tokens=32, ignore_eos=True).token_ids == warm.token_ids


def test_prompt_lookup_drafts_change_nothing_but_the_speed(pair, tiny_model_dir):
    _, engine = pair
    plain = LlamaCppEngine.load(tiny_model_dir, weight_type="f32")
    plain.lookup = 0
    text = (Path(__file__).parent.parent / "data" / "example.py").read_text()
    ids = engine.encode(FimPrompt(prefix=text * 2, suffix="", path="a.py"))[-500:]  # repeats: drafts get accepted
    assert engine.generate(ids, max_new_tokens=48, ignore_eos=True).token_ids == plain.generate(
        ids, max_new_tokens=48, ignore_eos=True).token_ids


def test_stops_as_the_pytorch_engine_does(pair):
    torch_engine, engine = pair
    ids = prompt_ids(torch_engine)[-200:]
    for kwargs in ({"should_stop": lambda text: "\n" in text}, {"max_new_tokens": 5}):
        kwargs = {"max_new_tokens": 40, **kwargs}
        got, want = engine.generate(ids, **kwargs), torch_engine.generate(ids, **kwargs)
        assert (got.token_ids, got.finish_reason) == (want.token_ids, want.finish_reason)
    cancel = threading.Event()
    cancel.set()
    assert engine.generate(ids, cancel=cancel).finish_reason == "cancelled"
    assert engine.generate(ids, deadline=time.monotonic() - 1).finish_reason == "timeout"
    stop = next(iter(engine.stop_ids))
    assert stop in torch_engine.stop_ids and engine.stop_ids == torch_engine.stop_ids


def test_sampling_is_reproducible_and_candidates_lead_with_the_best(pair):
    torch_engine, engine = pair
    ids = prompt_ids(torch_engine)[-200:]
    one = engine.generate(ids, max_new_tokens=16, temperature=0.8, top_p=0.9, seed=7)
    assert one.token_ids == engine.generate(ids, max_new_tokens=16, temperature=0.8, top_p=0.9, seed=7).token_ids
    greedy = engine.generate(ids, max_new_tokens=16)
    rows = engine.candidates(ids, 3, max_new_tokens=16, seed=1, greedy_first=True)
    assert len(rows) == 3 and greedy.token_ids in [r.token_ids for r in rows]
    assert [r.mean_logprob for r in rows] == sorted((r.mean_logprob for r in rows), reverse=True)


def test_the_conversion_is_cached_until_the_model_changes(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MIDLINE_CACHE", str(tmp_path / "cache"))
    first = llamacpp.gguf_for(tiny_model_dir, "f32")
    assert first.parent == tmp_path / "cache" / "gguf" and first.is_file()
    written = first.stat().st_mtime_ns
    assert llamacpp.gguf_for(tiny_model_dir, "f32") == first and first.stat().st_mtime_ns == written
    copy = tmp_path / "model"
    copy.mkdir()
    for file in tiny_model_dir.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    assert llamacpp.gguf_for(copy, "f32") != first  # another directory
    config = json.loads((copy / "config.json").read_text())
    before = llamacpp.gguf_for(copy, "f32")
    (copy / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-5}))
    assert llamacpp.gguf_for(copy, "f32") != before  # changed weights or config: converted again


def test_families_load_and_write_their_own_fim_layout(tmp_path):
    for family in ("qwen2", "starcoder2", "deepseek"):
        path = family_model(tmp_path / family, family)
        torch_engine = Engine.load(path, device="cpu")
        engine = LlamaCppEngine.load(path, weight_type="f32")
        prompt = FimPrompt(prefix="def f(x):\n    return ", suffix="\n\nprint(f(2))\n", path="pkg/f.py")
        ids = torch_engine.encode(prompt)
        assert engine.encode(prompt) == ids and engine.fim == torch_engine.fim
        assert engine.stop_ids == torch_engine.stop_ids, family
        want = torch_engine.generate(ids, max_new_tokens=12, ignore_eos=True).token_ids
        assert first_difference(engine.generate(ids, max_new_tokens=12, ignore_eos=True).token_ids, want) >= 8, family


def test_the_engine_says_when_it_cannot_serve(tiny_model_dir, tmp_path):
    assert llamacpp.unsupported(tiny_model_dir) is None
    assert "CUDA" in llamacpp.unsupported(tiny_model_dir, device="cuda")
    assert "adapter" in llamacpp.unsupported(tiny_model_dir, adapter=tmp_path)
    assert "trust_remote_code" in llamacpp.unsupported(tiny_model_dir, trust_remote_code=True)
    other = tmp_path / "gpt2"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    assert "GPT2LMHeadModel" in llamacpp.unsupported(other)
    with pytest.raises(ModelLoadError, match="not a model directory"):
        llamacpp.unsupported(tmp_path / "missing")


def server_engine(settings: dict, env: dict | None = None) -> dict:
    """What `open_engine` makes of `settings` in a fresh process: its class, decode path, and whether torch and
    transformers were imported."""
    code = (
        "import json, sys; from midline.server.config import Config; from midline.server.server import open_engine; "
        "e = open_engine(Config.from_json(json.loads(sys.argv[1]))); "
        "print(json.dumps({'engine': type(e).__name__, 'path': getattr(e, 'decode_path', ''), "
        "'torch': 'torch' in sys.modules, 'transformers': 'transformers' in sys.modules}))"
    )
    out = subprocess.run([sys.executable, "-c", code, json.dumps(settings)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, **(env or {})})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_server_serves_the_default_model_with_llama_cpp_without_importing_torch(tmp_path):
    chosen = server_engine({}, {"MIDLINE_CACHE": str(tmp_path)})
    assert chosen.pop("path").startswith("llama.cpp, q8_0, ")
    assert chosen == {"engine": "LlamaCppEngine", "torch": False, "transformers": False}
    assert server_engine({"engine": "torch"})["engine"] == "Engine"


def test_auto_falls_back_to_pytorch_where_llama_cpp_cannot_serve(tiny_model_dir, tmp_path):
    adapter = tmp_path / "adapter"  # not read: the choice is made before loading
    from midline.server.config import Config
    from midline.server.server import _llamacpp_engine

    assert _llamacpp_engine(Config.from_json({"adapter": str(adapter)}), tiny_model_dir) is None
    with pytest.raises(ModelLoadError, match="llama.cpp engine can't serve .*adapter"):
        _llamacpp_engine(Config.from_json({"engine": "llamacpp", "adapter": str(adapter)}), tiny_model_dir)
