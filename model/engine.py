"""The decode loop: FIM prompt in, completion out.

`Engine.generate` is a plain loop in the style of gpt-fast's generate.py: prefill the prompt once, then
feed back one token at a time through the model's KV cache, stopping on an end/FIM token, a length limit,
the caller's `should_stop`, a cancel event or a deadline.

Between keystrokes most of a prompt is unchanged (midline's SPM layout puts the stable suffix first), so the
engine keeps the KV cache of its last generation with the token ids it holds, and the next call prefills only
what follows the longest common prefix.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from midline.model import fim
from midline.model.fim import FimFormat, FimPrompt, Mode
from midline.model.loader import load_model

# CPU threads: torch's default (one per core) less one CPU left to the editor and the server's event loop. On 2 cores,
# 2 threads were 1.1-1.4x faster when idle but 2.5-3.5x slower with the other core busy (BENCHMARKS.md).
CPU_THREADS = max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) - 1))


@dataclass
class Generation:
    """One completion and how it ended."""

    text: str  # decoded generated text (stop token excluded)
    token_ids: list[int]
    finish_reason: str  # "eot" | "length" | "stop" | "cancelled" | "timeout"
    mean_logprob: float  # mean log-probability of the generated tokens (nan if none)
    prompt_tokens: int  # prompt length actually fed to the model (after any truncation)
    elapsed_s: float
    reused_tokens: int = 0  # leading prompt tokens whose KV cache came from the previous generation


class Engine:
    """A loaded model, its tokenizer and FIM format, and a decode loop."""

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, device: torch.device, fim_format: FimFormat,
        *, reuse_prefix: bool = True,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.fim = fim_format
        config = model.config
        self.max_context: int = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 2048
        self.stop_ids: frozenset[int] = _stop_ids(tokenizer, model, fim_format)
        # Ask for the last position's logits only where the model can (saves a vocab-sized matmul per prompt token).
        self._last_only = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
        self.reuse_prefix = reuse_prefix  # keep the last generation's KV cache and reuse its common prefix
        self._cache: DynamicCache | None = None  # KV cache of the last generation...
        self._cached_ids: list[int] = []  # ...and the token ids it holds
        # The server counts the tokens of every line in its windows on every keystroke; almost all lines are unchanged.
        self._count_tokens = functools.lru_cache(maxsize=1 << 14)(lambda text: len(fim.encode_text(tokenizer, text)))
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls, path: str | Path, *, device: str = "auto", fim_format: str | None = None, trust_remote_code: bool = False,
        reuse_prefix: bool = True, threads: int | None = None,
    ) -> Engine:
        """Load a local model dir; its FIM format is detected from the vocabulary unless `fim_format` names one.

        On CPU this sets torch's process-wide thread count to `threads` (default `CPU_THREADS`).
        """
        model, tokenizer, device_ = load_model(path, device=device, trust_remote_code=trust_remote_code)
        if device_.type == "cpu":
            torch.set_num_threads(threads or CPU_THREADS)
        fmt = fim.get(fim_format) if fim_format else fim.detect(tokenizer.get_vocab())
        return cls(model, tokenizer, device_, fmt, reuse_prefix=reuse_prefix)

    def count_tokens(self, text: str) -> int:
        """Tokens in `text` as plain text (special-token strings in it count as text). Memoized."""
        return self._count_tokens(text)

    def encode(self, prompt: FimPrompt, mode: Mode | None = None) -> list[int]:
        """Token ids of a FIM prompt in this model's format."""
        return self.fim.encode(prompt, self.tokenizer, mode)

    def generate(
        self,
        prompt_ids: list[int],
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        should_stop: Callable[[str], bool] | None = None,
        cancel: threading.Event | None = None,
        deadline: float | None = None,
    ) -> Generation:
        """Complete `prompt_ids`: greedy at temperature 0, else temperature + top-p sampling.

        `should_stop` sees the text so far after each token; `deadline` is a `time.monotonic()` time.
        A prompt longer than `max_context - max_new_tokens` keeps its last tokens.
        """
        if not prompt_ids:
            raise ValueError("prompt_ids is empty")
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
        with self._lock, torch.inference_mode():
            start = time.monotonic()
            prompt_ids = list(prompt_ids[-max(1, self.max_context - max_new_tokens):])
            generator = None
            if temperature > 0:
                generator = torch.Generator(device=self.device)
                if seed is None:
                    generator.seed()
                else:
                    generator.manual_seed(seed)

            # Prefix reuse: keep the cached KV of the longest common prefix, prefill the rest (at least one token).
            # The cache is taken out while generating, so an exception mid-forward leaves none rather than a corrupt one.
            cache, cached_ids, self._cache, self._cached_ids = self._cache, self._cached_ids, None, []
            reused = min(common_prefix(cached_ids, prompt_ids), len(prompt_ids) - 1) if self.reuse_prefix and cache is not None else 0
            if reused:
                cache.crop(reused - cache.get_seq_length())  # a negative count: drop that many tokens from the end
            else:
                cache = None  # the model makes its own cache (DynamicCache) on prefill
            fed = prompt_ids[:reused]  # the token ids whose KV is in `cache`
            feed = prompt_ids[reused:]

            tokens: list[int] = []
            logprobs: list[float] = []
            finish_reason = "length"
            for _ in range(max_new_tokens):
                if cancel is not None and cancel.is_set():
                    finish_reason = "cancelled"
                    break
                if deadline is not None and time.monotonic() > deadline:
                    finish_reason = "timeout"
                    break
                out = self.model(input_ids=torch.tensor([feed], device=self.device), past_key_values=cache, use_cache=True, **self._last_only)
                cache = out.past_key_values
                fed += feed
                logits = out.logits[0, -1].float()
                token = sample(logits, temperature, top_p, generator)
                if token in self.stop_ids:
                    finish_reason = "eot"
                    break
                tokens.append(token)
                logprobs.append(torch.log_softmax(logits, dim=-1)[token].item())
                if should_stop is not None and should_stop(self.decode(tokens)):
                    finish_reason = "stop"
                    break
                feed = [token]

            if self.reuse_prefix and croppable(cache):
                self._cache, self._cached_ids = cache, fed
            return Generation(
                text=self.decode(tokens),
                token_ids=tokens,
                finish_reason=finish_reason,
                mean_logprob=sum(logprobs) / len(logprobs) if logprobs else math.nan,
                prompt_tokens=len(prompt_ids),
                elapsed_s=time.monotonic() - start,
                reused_tokens=reused,
            )

    def clear_cache(self) -> None:
        """Drop the kept KV cache (the next generation prefills its whole prompt)."""
        with self._lock:
            self._cache, self._cached_ids = None, []

    def decode(self, token_ids: list[int]) -> str:
        """Text of generated tokens, without special tokens or a trailing incomplete UTF-8 character."""
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return text.rstrip("\ufffd")


def sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    """Next token from a 1-D logits vector: argmax at temperature 0, else from the top-p nucleus."""
    if temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1:
        probs, order = probs.sort(descending=True)
        probs[probs.cumsum(-1) - probs >= top_p] = 0  # keep the smallest head whose mass reaches top_p
        return int(order[torch.multinomial(probs, 1, generator=generator)])
    return int(torch.multinomial(probs, 1, generator=generator))


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token id lists."""
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def croppable(cache: object) -> bool:
    """Whether `cache` can be cut back to a prefix exactly: a full-attention `DynamicCache` (no sliding window)."""
    return isinstance(cache, DynamicCache) and getattr(cache, "is_croppable", True) and not any(cache.is_sliding)


def _stop_ids(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, fmt: FimFormat) -> frozenset[int]:
    """Ids of the format's stop tokens that the vocabulary has, plus the tokenizer's and model's EOS."""
    vocab = tokenizer.get_vocab()
    ids = {vocab[t] for t in fmt.stop_tokens if t in vocab}
    generation_config = getattr(model, "generation_config", None)
    for eos in (tokenizer.eos_token_id, getattr(generation_config, "eos_token_id", None)):
        if isinstance(eos, int):
            ids.add(eos)
        elif eos:
            ids.update(eos)
    return frozenset(ids)
