"""GGUF export: a local FIM model directory as one GGUF file that llama.cpp loads (`midline-train export --gguf`).

Written with the `gguf` package (llama.cpp's own writer), without llama.cpp's converter, which refuses any
tokenizer trained from scratch (it identifies pre-tokenizers by a hash of their output). Here the pre-tokenizer
is declared as what it is, read from tokenizer.json's structure: a bare byte-level pre-tokenizer with GPT-2's
regex (midline's) is `gpt-2`, StarCoder's digits-then-bytes is `starcoder`, Qwen2's split regex is `qwen2`;
anything else needs `--pre NAME` (llama.cpp's name for it). The FIM token ids (`tokenizer.ggml.fim_*`) come from
the FIM format midline detects, so llama-server's `/infill` works and the ids match the local engine's.

Architectures: Llama (midline's models, DeepSeek-Coder), Qwen2 (Qwen2.5-Coder) and Starcoder2. Llama's query
and key rows are permuted from Hugging Face's rotate-half rotary layout to the interleaved pairs llama.cpp's
`llama` architecture rotates; Qwen2 and Starcoder2 use llama.cpp's NEOX rotary layout, as Hugging Face does.
Weight types: f32, f16, bf16, q8_0 (matrices only; vectors stay f32; a matrix whose rows are not whole 32-value
blocks stays f16 in q8_0).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from midline.model import DEFAULT_MODEL_DIR, fim

WEIGHT_TYPES = ("f32", "f16", "bf16", "q8_0")
# Hugging Face architecture -> llama.cpp's name for it.
ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "Starcoder2ForCausalLM": "starcoder2"}
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
               r"|\s+(?!\S)|\s+")


class GgufExportError(ValueError):
    """The model can't be written as GGUF; the message says why and what to do."""


def default_path(model_dir: Path, weight_type: str) -> Path:
    """Where an export goes unless told: `<name>-<type>.gguf` in the working directory, the name being the model
    directory's (`midline` for midline's own model)."""
    model_dir = Path(model_dir).resolve()
    name = "midline" if model_dir == DEFAULT_MODEL_DIR.resolve() else model_dir.name
    return Path(f"{name}-{weight_type}.gguf")


def export_gguf(model_dir: Path = DEFAULT_MODEL_DIR, out: Path | None = None, weight_type: str = "q8_0",
                pre: str | None = None) -> Path:
    """Write `model_dir` (a Hugging Face causal LM directory with safetensors and a FIM tokenizer) as GGUF to
    `out`; returns the path. Written beside `out` and renamed into place, so a reader never sees half a file."""
    import gguf

    model_dir = Path(model_dir)
    if weight_type not in WEIGHT_TYPES:
        raise GgufExportError(f"unknown weight type {weight_type!r}; one of: {', '.join(WEIGHT_TYPES)}")
    config = _read_json(model_dir / "config.json")
    arch_name = _architecture(config)
    arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == arch_name)
    tokenizer = _read_json(model_dir / "tokenizer.json")
    out = Path(out) if out is not None else default_path(model_dir, weight_type)
    out.parent.mkdir(parents=True, exist_ok=True)

    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}-", dir=out.parent)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, arch_name)
        writer.add_name(model_dir.resolve().name)
        _add_hparams(writer, config, arch_name, weight_type)
        _add_tokenizer(writer, tokenizer, config, model_dir, pre)
        names = gguf.get_tensor_name_map(arch, config["num_hidden_layers"])
        for name, array in _tensors(model_dir, config, arch_name):
            gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
            if gguf_name is None:
                raise GgufExportError(f"no GGUF name for tensor {name!r} of a {arch_name} model")
            data, raw_type = _encode(array, weight_type)
            writer.add_tensor(gguf_name, data, raw_dtype=raw_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GgufExportError(f"{path} not found: a GGUF export needs a Hugging Face model directory") from None
    except (OSError, ValueError) as e:
        raise GgufExportError(f"could not read {path}: {e}") from e


def _architecture(config: dict[str, Any]) -> str:
    for name in config.get("architectures") or []:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
    raise GgufExportError(f"architecture {config.get('architectures')} is not one GGUF export writes; "
                          f"supported: {', '.join(ARCHITECTURES)}")


# -- hyperparameters --------------------------------------------------------------------------------


def _add_hparams(writer: Any, config: dict[str, Any], arch: str, weight_type: str) -> None:
    import gguf

    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(config["vocab_size"])
    if arch == "starcoder2":
        writer.add_layer_norm_eps(config.get("norm_epsilon", 1e-5))
    else:
        writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif kind != "default":
        raise GgufExportError(f"rotary scaling {kind!r} is not one GGUF export writes (default or linear)")
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[weight_type])


# -- tokenizer --------------------------------------------------------------------------------------


def pre_tokenizer_name(pre_tokenizer: dict[str, Any] | None) -> str | None:
    """llama.cpp's name for a tokenizer.json pre-tokenizer, from its structure; None if not one known here."""
    if not pre_tokenizer:
        return None
    sequence = pre_tokenizer.get("type") == "Sequence"
    parts: list[dict[str, Any]] = (pre_tokenizer.get("pretokenizers") or []) if sequence else [pre_tokenizer]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
        return "starcoder"
    if kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True):
        if (parts[0].get("pattern") or {}).get("Regex") == QWEN2_REGEX:
            return "qwen2"
    return None


def _add_tokenizer(writer: Any, tokenizer: dict[str, Any], config: dict[str, Any], model_dir: Path,
                   pre: str | None) -> None:
    import gguf

    model = tokenizer.get("model") or {}
    if model.get("type") != "BPE":
        raise GgufExportError(f"tokenizer model {model.get('type')!r}: GGUF export writes byte-level BPE only")
    pre = pre or pre_tokenizer_name(tokenizer.get("pre_tokenizer"))
    if pre is None:
        raise GgufExportError(f"pre-tokenizer {json.dumps(tokenizer.get('pre_tokenizer'))[:200]} is not one midline "
                              "recognises; pass --pre with llama.cpp's name for it (llama-vocab.cpp)")
    vocab: dict[str, int] = dict(model["vocab"])
    added = {t["content"]: t for t in tokenizer.get("added_tokens") or []}
    vocab |= {content: t["id"] for content, t in added.items()}
    size = max(config["vocab_size"], max(vocab.values()) + 1)
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [gguf.TokenType.UNUSED] * size
    for text, i in vocab.items():
        tokens[i] = text
        token = added.get(text)
        types[i] = (gguf.TokenType.NORMAL if token is None else
                    gguf.TokenType.CONTROL if token.get("special") else gguf.TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)

    fmt = fim.detect(vocab)
    ids = {key: vocab[token] for key, token in _fim_tokens(fmt).items() if token in vocab}
    for key, token_id in ids.items():
        writer.add_uint32(key, token_id)
    generation = _read_optional_json(model_dir / "generation_config.json")
    bos = generation.get("bos_token_id", config.get("bos_token_id"))
    if bos is not None:
        writer.add_bos_token_id(bos)
    writer.add_add_bos_token(fmt.bos)
    writer.add_add_eos_token(False)
    writer.add_eos_token_id(vocab[fmt.eot])
    writer.add_eot_token_id(vocab[fmt.eot])
    pad = generation.get("pad_token_id", config.get("pad_token_id"))
    if pad is not None:
        writer.add_pad_token_id(pad)


def _fim_tokens(fmt: fim.FimFormat) -> dict[str, str]:
    """The format's FIM tokens by GGUF key (`tokenizer.ggml.fim_*_token_id`)."""
    import gguf

    keys = gguf.Keys.Tokenizer
    tokens = {keys.FIM_PRE_ID: fmt.prefix, keys.FIM_SUF_ID: fmt.suffix, keys.FIM_MID_ID: fmt.middle}
    pad = next((s for s in fmt.stops if "pad" in s), None)
    for key, token in ((keys.FIM_PAD_ID, pad), (keys.FIM_REP_ID, fmt.repo_name), (keys.FIM_SEP_ID, fmt.file_sep)):
        if token:
            tokens[key] = token
    return {k: v for k, v in tokens.items() if v}


def _read_optional_json(path: Path) -> dict[str, Any]:
    return _read_json(path) if path.exists() else {}


# -- tensors ----------------------------------------------------------------------------------------


def _tensors(model_dir: Path, config: dict[str, Any], arch: str) -> Iterator[tuple[str, np.ndarray]]:
    """The model's tensors as float32 arrays, Hugging Face names, in file order; llama's q/k rows permuted."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise GgufExportError(f"no .safetensors weights in {model_dir}")
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    tied = config.get("tie_word_embeddings", False)
    for path in files:
        for name, array in read_safetensors(path):
            if name.endswith("rotary_emb.inv_freq") or (tied and name == "lm_head.weight"):
                continue
            if arch == "llama" and name.endswith("self_attn.q_proj.weight"):
                array = rotary_interleave(array, heads)
            elif arch == "llama" and name.endswith("self_attn.k_proj.weight"):
                array = rotary_interleave(array, kv_heads)
            yield name, array


# safetensors dtype -> (numpy dtype of the stored values, how to widen them to float32)
_FLOATS: dict[str, tuple[np.dtype, Callable[[np.ndarray], np.ndarray]]] = {
    "F32": (np.dtype("<f4"), lambda a: a),
    "F16": (np.dtype("<f2"), lambda a: a.astype(np.float32)),
    "BF16": (np.dtype("<u2"), lambda a: (a.astype(np.uint32) << 16).view(np.float32)),  # bf16 = float32's high half
}


def read_safetensors(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """Each tensor of a .safetensors file as a float32 array, in file order, read with numpy alone (no torch: the
    server's llama.cpp path exports with this). The format: an 8-byte header size, a JSON header, the raw data."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + size)
    for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
        if info["dtype"] not in _FLOATS:
            raise GgufExportError(f"{path.name}: tensor {name} is {info['dtype']}; GGUF export reads F32, F16, BF16")
        stored, widen = _FLOATS[info["dtype"]]
        start, end = info["data_offsets"]
        yield name, widen(data[start:end].view(stored).reshape(info["shape"]))


def rotary_interleave(weight: np.ndarray, heads: int) -> np.ndarray:
    """Reorder each head's output rows from rotate-half order (first half, second half) to interleaved pairs
    (0, d/2, 1, d/2+1, ...), the layout llama.cpp's `llama` architecture rotates."""
    rows = weight.shape[0]
    return (weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape))


def _encode(array: np.ndarray, weight_type: str) -> tuple[np.ndarray, Any]:
    """The array in the file's type: (data, the GGML type to declare, or None for a plain numpy dtype)."""
    import gguf

    if array.ndim < 2 or weight_type == "f32":
        return np.ascontiguousarray(array, dtype=np.float32), None
    if weight_type == "q8_0" and array.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
        return gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
    if weight_type == "bf16":
        return gguf.quants.quantize(array, gguf.GGMLQuantizationType.BF16), gguf.GGMLQuantizationType.BF16
    return array.astype(np.float16), None


def valid_pre_name(name: str) -> str:
    """argparse type for --pre: llama.cpp's pre-tokenizer names are lowercase words, digits, '-' and '_'."""
    if not re.fullmatch(r"[a-z0-9_.-]+", name):
        raise ValueError(f"not a pre-tokenizer name: {name!r}")
    return name
