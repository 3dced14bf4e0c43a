"""GGUF export: read back with the gguf package (metadata, tokenizer, FIM ids, tensor names, shapes and values), and
loaded by llama.cpp (llama-cpp-python), whose greedy tokens must match midline's PyTorch engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from midline.model import DEFAULT_MODEL_DIR, fim
from midline.model.engine import Engine
from midline.model.fim import FimPrompt
from midline.model import gguf_export as G
from midline.training.cli import main
from midline.training.tiny_model import make_family_model, stdlib_corpus

gguf = pytest.importorskip("gguf", reason="the gguf package is not installed (pip install -e '.[train]')")

EXAMPLE = Path(__file__).parent.parent / "data" / "example.py"


def read(path: Path) -> tuple[dict, dict[str, object]]:
    """(metadata fields by key as Python values, tensors by name) of a GGUF file."""
    reader = gguf.GGUFReader(path)
    fields = {k: f.contents() for k, f in reader.fields.items()}
    return fields, {t.name: t for t in reader.tensors}


def hf_tensors(model_dir: Path) -> dict[str, np.ndarray]:
    out = {}
    for path in model_dir.glob("*.safetensors"):
        with safe_open(path, framework="pt") as f:
            out |= {name: f.get_tensor(name).float().numpy() for name in f.keys()}
    return out


def values(tensor) -> np.ndarray:
    """A GGUF tensor as float32 in Hugging Face's (rows, columns) order."""
    data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    return np.asarray(data, dtype=np.float32).reshape(tuple(int(d) for d in reversed(tensor.shape)))


@pytest.fixture(scope="module")
def tiny_f32(tiny_model_dir: Path, tmp_path_factory) -> Path:
    return G.export_gguf(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf", "f32")


def test_midline_model_metadata_declares_gpt2_pre_tokenizer_and_fim_ids(tiny_model_dir, tiny_tokenizer, tiny_f32):
    fields, tensors = read(tiny_f32)
    config = json.loads((tiny_model_dir / "config.json").read_text())
    vocab = tiny_tokenizer.get_vocab()
    assert fields["general.architecture"] == "llama"
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert {k.removeprefix("tokenizer.ggml.").removesuffix("_token_id"): v for k, v in fields.items()
            if k.startswith("tokenizer.ggml.fim_")} == {
        "fim_pre": vocab[fim.FIM_PREFIX], "fim_suf": vocab[fim.FIM_SUFFIX], "fim_mid": vocab[fim.FIM_MIDDLE],
        "fim_pad": vocab[fim.FIM_PAD], "fim_rep": vocab[fim.REPO_NAME], "fim_sep": vocab[fim.FILE_SEP]}
    assert fields["tokenizer.ggml.eos_token_id"] == fields["tokenizer.ggml.eot_token_id"] == vocab[fim.EOT]
    assert fields["tokenizer.ggml.add_bos_token"] is False
    tokens = fields["tokenizer.ggml.tokens"]
    assert len(tokens) == config["vocab_size"] and all(tokens[i] == t for t, i in vocab.items())
    types = fields["tokenizer.ggml.token_type"]
    assert types[vocab[fim.FIM_MIDDLE]] == gguf.TokenType.CONTROL and types[vocab["Ġreturn"]] == gguf.TokenType.NORMAL
    merges = json.loads((tiny_model_dir / "tokenizer.json").read_text())["model"]["merges"]
    assert fields["tokenizer.ggml.merges"] == [m if isinstance(m, str) else " ".join(m) for m in merges]
    assert fields["llama.block_count"] == config["num_hidden_layers"]
    assert fields["llama.attention.head_count"] == config["num_attention_heads"]
    assert fields["llama.context_length"] == config["max_position_embeddings"]
    # token_embd, output (unless tied), 9 tensors a block, the final norm
    output = set() if config.get("tie_word_embeddings") else {"output.weight"}
    assert set(tensors) == {"token_embd.weight", "output_norm.weight"} | output | {
        f"blk.{i}.{n}.weight" for i in range(config["num_hidden_layers"])
        for n in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up",
                  "ffn_down")}


def test_f32_holds_the_exact_weights_with_q_and_k_rows_interleaved_for_llama_rotary(tiny_model_dir, tiny_f32):
    _, tensors = read(tiny_f32)
    hf = hf_tensors(tiny_model_dir)
    config = json.loads((tiny_model_dir / "config.json").read_text())
    heads, kv = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    np.testing.assert_array_equal(values(tensors["token_embd.weight"]), hf["model.embed_tokens.weight"])
    np.testing.assert_array_equal(values(tensors["blk.1.ffn_down.weight"]), hf["model.layers.1.mlp.down_proj.weight"])
    np.testing.assert_array_equal(values(tensors["blk.0.attn_v.weight"]), hf["model.layers.0.self_attn.v_proj.weight"])
    q, k = hf["model.layers.0.self_attn.q_proj.weight"], hf["model.layers.0.self_attn.k_proj.weight"]
    np.testing.assert_array_equal(values(tensors["blk.0.attn_q.weight"]), G.rotary_interleave(q, heads))
    np.testing.assert_array_equal(values(tensors["blk.0.attn_k.weight"]), G.rotary_interleave(k, kv))
    assert not np.array_equal(G.rotary_interleave(q, heads), q)


def test_rotary_interleave_pairs_each_heads_halves():
    # two heads of size 4, rows named by (head, index): rotate-half order -> pairs (0, 2), (1, 3)
    rows = np.arange(8, dtype=np.float32).reshape(8, 1)
    assert G.rotary_interleave(rows, 2).ravel().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_q8_0_quantises_matrices_and_keeps_vectors_f32(tiny_model_dir, tmp_path):
    path = G.export_gguf(tiny_model_dir, tmp_path / "tiny-q8.gguf", "q8_0")
    fields, tensors = read(path)
    hf = hf_tensors(tiny_model_dir)
    assert fields["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0
    assert tensors["blk.0.ffn_up.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    up = hf["model.layers.0.mlp.up_proj.weight"]
    error = np.abs(values(tensors["blk.0.ffn_up.weight"]) - up)
    # q8_0: one scale per 32 values, max |x| / 127: half a step off, plus up to 127 x the f16 scale's rounding (2^-11)
    step = np.abs(up.reshape(-1, 32)).max(axis=1, keepdims=True) / 127
    assert (error.reshape(-1, 32) <= step * 0.6).all()
    assert 0 < error.max()
    assert path.stat().st_size < 0.4 * G.export_gguf(tiny_model_dir, tmp_path / "f32.gguf", "f32").stat().st_size


@pytest.mark.parametrize("family", ["qwen2", "starcoder2", "deepseek"])
def test_other_families_keep_their_architecture_and_fim_tokens(family, tmp_path):
    model_dir = make_family_model(tmp_path / family, family, corpus_files=stdlib_corpus(limit=6), vocab_size=384)
    fields, tensors = read(G.export_gguf(model_dir, tmp_path / "m.gguf", "f16"))
    tokens = fields["tokenizer.ggml.tokens"]
    fmt = fim.detect(tokens)
    assert fields["general.architecture"] == {"qwen2": "qwen2", "starcoder2": "starcoder2", "deepseek": "llama"}[family]
    assert tokens[fields["tokenizer.ggml.fim_pre_token_id"]] == fmt.prefix
    assert tokens[fields["tokenizer.ggml.fim_mid_token_id"]] == fmt.middle
    assert tokens[fields["tokenizer.ggml.eot_token_id"]] == fmt.eot
    assert "output.weight" in tensors  # untied
    assert tensors["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.F16


def test_pre_tokenizer_names_by_structure():
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    assert G.pre_tokenizer_name(byte_level) == "gpt-2"
    assert G.pre_tokenizer_name({"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, byte_level]}) == "starcoder"
    assert G.pre_tokenizer_name({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": G.QWEN2_REGEX}, "behavior": "Isolated"},
        {**byte_level, "use_regex": False}]}) == "qwen2"
    assert G.pre_tokenizer_name({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": r"\s+"}}, {**byte_level, "use_regex": False}]}) is None
    assert G.pre_tokenizer_name({**byte_level, "use_regex": False}) is None


def test_unknown_pre_tokenizer_is_refused_unless_named(tiny_model_dir, tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for path in tiny_model_dir.iterdir():
        (model_dir / path.name).write_bytes(path.read_bytes())
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    tokenizer["pre_tokenizer"] = {"type": "Whitespace"}
    (model_dir / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(G.GgufExportError, match="--pre"):
        G.export_gguf(model_dir, tmp_path / "x.gguf", "f16")
    assert not (tmp_path / "x.gguf").exists() and not list(tmp_path.glob(".x.gguf-*"))
    fields, _ = read(G.export_gguf(model_dir, tmp_path / "x.gguf", "f16", pre="gpt-2"))
    assert fields["tokenizer.ggml.pre"] == "gpt-2"


def test_cli_writes_gguf_and_rejects_bad_input(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "m.gguf"
    assert main(["export", "--gguf", "bf16", "--model", str(tiny_model_dir), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert G.default_path(DEFAULT_MODEL_DIR, "q8_0") == Path("midline-q8_0.gguf")
    fields, tensors = read(out)
    assert tensors["blk.0.ffn_up.weight"].tensor_type == gguf.GGMLQuantizationType.BF16
    with pytest.raises(SystemExit):
        main(["export", "--gguf", "q4_0", "--model", str(tiny_model_dir)])
    with pytest.raises(SystemExit):
        main(["export", "--gguf", "f16", "--model", str(tmp_path / "missing"), "--out", str(out)])
    assert "config.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export"])  # neither --run nor --gguf
    assert "--run" in capsys.readouterr().err


# -- loaded by llama.cpp ----------------------------------------------------------------------------


def llama_greedy(path: Path, prompt: list[int], n: int) -> list[int]:
    """n greedy tokens from llama.cpp (in process, 2 threads, flash attention off)."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install "
                                                        "llama-cpp-python: it builds llama.cpp)")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=len(prompt) + n + 8, n_threads=2, n_batch=512,
                          logits_all=False, verbose=False, **FLASH_OFF)
    out: list[int] = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
        out.append(token)
        if len(out) == n:
            break
    return out


FLASH_OFF = {"flash_attn": False}


def prompt_ids(engine: Engine) -> list[int]:
    text = EXAMPLE.read_text()
    cut = text.index("return", text.index("def mean")) + len("return")
    return engine.encode(FimPrompt(prefix=text[:cut], suffix=text[cut:], path="stats/example.py"))


def test_llama_cpp_greedy_tokens_match_the_engine_in_f32(tiny_model_dir, tiny_f32):
    engine = Engine.load(tiny_model_dir, device="cpu")
    ids = prompt_ids(engine)[-200:]
    expected = engine.generate(ids, max_new_tokens=24, ignore_eos=True).token_ids
    assert llama_greedy(tiny_f32, ids, 24) == expected


@pytest.mark.slow
def test_default_model_in_llama_cpp_writes_what_midline_writes(tmp_path):
    """midline's own model: f32 greedy tokens exactly; q8_0 the same until a near-tie, if any (reported)."""
    engine = Engine.load(DEFAULT_MODEL_DIR, device="cpu")
    ids = prompt_ids(engine)
    expected = engine.generate(ids, max_new_tokens=32, ignore_eos=True).token_ids
    assert llama_greedy(G.export_gguf(DEFAULT_MODEL_DIR, tmp_path / "f32.gguf", "f32"), ids, 32) == expected
    q8 = llama_greedy(G.export_gguf(DEFAULT_MODEL_DIR, tmp_path / "q8.gguf", "q8_0"), ids, 32)
    assert q8[:8] == expected[:8], f"q8_0 differs early: {q8} vs {expected}"
