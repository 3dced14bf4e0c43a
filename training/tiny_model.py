"""A tiny random-weight model with midline's tokenizer, to exercise the whole pipeline.

Its completions are nonsense, but it is a real Hugging Face model directory (config.json,
model.safetensors, tokenizer.json) in midline's FIM format, so serving, tests and benchmarks run
end to end before a trained model exists. `make_family_model` makes one of another family instead: the
real architecture (Qwen2, Starcoder2, Llama) with a tokenizer that carries that family's real special
tokens, so its FIM format is detected and laid out as for the real model (`FAMILIES`).
"""

from __future__ import annotations

import argparse
import os
import sysconfig
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Iterable

import torch

from midline.model import DEFAULT_MODEL_DIR
from midline.training.model import build_model
from midline.training.stage import expand_files
from midline.training.tokenizer import train_tokenizer, train_tokenizer_on_texts

SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}

MODEL_CARD = """\
# midline tiny model (random weights)

A {params:.2f}M-parameter Llama with **random weights** and a byte-level BPE tokenizer
(vocab {vocab}) trained on {files} Python files, made by `midline-train tiny-model` (seed {seed}).
It completes nonsense: it exists to exercise midline's pipeline (loading, FIM prompts, decoding,
the LSP server) before a trained model is available.

FIM format: midline (`<|midline:fim_suffix|>`...`<|midline:fim_prefix|>`...`<|midline:fim_middle|>`).
"""


def stdlib_corpus(limit: int = 300, max_bytes: int = 200_000) -> list[Path]:
    """Up to `limit` .py files of the running Python's stdlib, evenly spread over the sorted list (no tests)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
        files += [Path(folder, n) for n in names if n.endswith(".py") and not n.startswith("test_")]
    files = sorted(f for f in files if f.stat().st_size <= max_bytes)
    if not files:
        raise FileNotFoundError(f"no Python files found in the stdlib at {root}: pass corpus files explicitly")
    if len(files) > limit:
        files = [files[i * len(files) // limit] for i in range(limit)]
    return files


def make_tiny_model(
    out_dir: str | Path,
    *,
    corpus_files: Iterable[Path] | None = None,
    vocab_size: int = 4096,
    hidden_size: int = 128,
    layers: int = 2,
    heads: int = 4,
    max_positions: int = 4096,
    seed: int = 0,
) -> Path:
    """Train a tokenizer, build a random-weight Llama around it, and save both to `out_dir`."""
    if hidden_size % heads:
        raise ValueError(f"hidden_size ({hidden_size}) must be a multiple of heads ({heads})")
    out_dir = Path(out_dir)
    files = list(corpus_files) if corpus_files is not None else stdlib_corpus()

    tokenizer = train_tokenizer(files, vocab_size, out_dir)
    tokenizer.model_max_length = max_positions
    tokenizer.save_pretrained(out_dir)

    torch.manual_seed(seed)
    model = build_model(
        vocab_size=len(tokenizer), hidden_size=hidden_size, layers=layers, heads=heads, kv_heads=heads,
        intermediate_size=4 * hidden_size, max_positions=max_positions, rope_theta=10000.0,
        # Untied: with tied random embeddings the model echoes its last input token, which in a FIM
        # prompt is the fim_middle stop token, so every greedy completion would be empty.
        tie_embeddings=False,
        bos_id=tokenizer.bos_token_id, eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out_dir)  # safetensors (the only format transformers 5 writes) + generation_config.json

    params = sum(p.numel() for p in model.parameters()) / 1e6
    (out_dir / "README.md").write_text(MODEL_CARD.format(params=params, vocab=len(tokenizer), files=len(files),
                                                         seed=seed))
    return out_dir


@dataclass(frozen=True)
class Family:
    """A model family: its transformers architecture and its tokenizer's special tokens (as in the real model's
    tokenizer.json)."""

    architecture: str  # "qwen2", "starcoder2" or "llama"
    special_tokens: tuple[str, ...]
    eos: str
    bos: str | None = None
    pad: str | None = None


FAMILIES = {
    "qwen2": Family("qwen2", ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|fim_prefix|>", "<|fim_middle|>",
                              "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"),
                    eos="<|endoftext|>", pad="<|endoftext|>"),  # Qwen2.5-Coder
    "starcoder2": Family("starcoder2", ("<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>",
                                        "<repo_name>", "<file_sep>"), eos="<|endoftext|>", bos="<|endoftext|>"),
    "deepseek": Family("llama", ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜fim▁hole｜>",
                                 "<｜fim▁begin｜>", "<｜fim▁end｜>", "<|EOT|>"),
                       eos="<｜end▁of▁sentence｜>", bos="<｜begin▁of▁sentence｜>"),  # DeepSeek-Coder: a Llama
}


def make_family_model(out_dir: str | Path, family: str, *, corpus_files: Iterable[Path] | None = None,
                      vocab_size: int = 1024, hidden_size: int = 64, layers: int = 2, heads: int = 4,
                      kv_heads: int = 2, max_positions: int = 2048, seed: int = 0) -> Path:
    """A random-weight model of `family` (one of FAMILIES) with a byte-level BPE tokenizer trained on the files,
    carrying the family's special tokens; saved to `out_dir`."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Starcoder2Config
    from transformers import Starcoder2ForCausalLM

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    spec, out_dir = FAMILIES[family], Path(out_dir)
    files = list(corpus_files) if corpus_files is not None else stdlib_corpus()
    texts = (f.read_text(encoding="utf-8", errors="replace") for f in files)
    tokenizer = train_tokenizer_on_texts(texts, vocab_size, out_dir, length=len(files),
                                         special_tokens=spec.special_tokens, bos=spec.bos, eos=spec.eos, pad=spec.pad)
    tokenizer.model_max_length = max_positions
    tokenizer.save_pretrained(out_dir)
    ids = {f"{k}_token_id": tokenizer.convert_tokens_to_ids(t) if t else None
           for k, t in (("bos", spec.bos), ("eos", spec.eos), ("pad", spec.pad))}
    shape = dict(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                 num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                 max_position_embeddings=max_positions, tie_word_embeddings=False, **ids)
    config_class, model_class = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM),
                                 "starcoder2": (Starcoder2Config, Starcoder2ForCausalLM)}[spec.architecture]
    torch.manual_seed(seed)
    model = model_class(config_class(**shape))
    model.save_pretrained(out_dir)
    (out_dir / "README.md").write_text(f"# A tiny random-weight {family} model ({spec.architecture} architecture)\n\n"
                                       f"Made by `midline-train tiny-model --family {family}` for tests.\n")
    return out_dir


# -- command line ---------------------------------------------------------------------------------


def add_parser(stages) -> None:
    """The `tiny-model` subcommand."""
    p = stages.add_parser("tiny-model", help="make a tiny random-weight model (for tests and trying the server)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="where to write it (the shipped model lives in %s)" % DEFAULT_MODEL_DIR)
    p.add_argument("--files", nargs="+", metavar="GLOB",
                   help="tokenizer corpus (default: ~300 files of Python's stdlib)")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--max-positions", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--family", choices=["midline", *FAMILIES], default="midline",
                   help="midline's Llama and tokenizer (default), or another family's architecture and FIM tokens")
    p.set_defaults(run=run)


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    files = expand_files(parser, args.files) if args.files else None
    start = time.monotonic()
    if args.family != "midline":
        out = make_family_model(args.out, args.family, corpus_files=files, vocab_size=args.vocab_size,
                                hidden_size=args.hidden_size, layers=args.layers, heads=args.heads,
                                kv_heads=args.heads, max_positions=args.max_positions, seed=args.seed)
        print(f"wrote a tiny random-weight {args.family} model to {out} in {time.monotonic() - start:.1f} s")
        return 0
    out = make_tiny_model(
        args.out, corpus_files=files, vocab_size=args.vocab_size, hidden_size=args.hidden_size,
        layers=args.layers, heads=args.heads, max_positions=args.max_positions, seed=args.seed,
    )
    print(f"wrote a tiny random-weight model to {out} in {time.monotonic() - start:.1f} s")
    return 0
