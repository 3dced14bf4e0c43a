"""The decode loop: FIM prompt in, completion out.

`Engine.generate` is a plain loop in the style of gpt-fast's generate.py: prefill the prompt once, then
feed back one token at a time through the model's KV cache, stopping on an end/FIM token, a length limit,
the caller's `should_stop`, a cancel event or a deadline.

Tokens come from one of two streams, and the loop that stops them is the same for both:
- the static path (`static_decode.StaticDecoder`, for Llama-family models): a preallocated KV cache, CUDA-graph
  replays on a GPU, and tokens read back to the host in chunks (1, 2, 4, then `sync_every` tokens), so the GPU
  never waits for the host between tokens; the loop then takes them one by one, exactly as if computed one by one;
- the dynamic path (any other model, or a prompt longer than the static cache): transformers' `DynamicCache`.

Between keystrokes most of a prompt is unchanged (midline's SPM layout puts the stable suffix first), so the
engine keeps the KV cache of its last generation with the token ids it holds, and the next call prefills only
what follows the longest common prefix.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Callable, Generator, Iterator, Sequence, cast

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from midline.model import decoding, fim
from midline.model.backend import Generation, decoded_ends, model_settings
from midline.model.decoding import NgramIndex, common_prefix
from midline.model.fim import FimFormat, FimFormatError, FimPrompt, Mode
from midline.model.loader import load_model
from midline.model.static_decode import CHUNK, StaticDecoder, unsupported

log = logging.getLogger(__name__)

# CPU threads: torch's default (one per core) less one CPU left to the editor and the server's event loop. On 2 cores,
# 2 threads were 1.1-1.4x faster when idle but 2.5-3.5x slower with the other core busy (BENCHMARKS.md).
CPU_THREADS = max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) - 1))
# Prompt-lookup draft tokens by default: on the CPU a step of 5 tokens costs about 1.4 steps of one, and 4 drafts made
# typing 1.3-1.6x faster in the keystroke replay; on a GPU drafts gave no gain (BENCHMARKS.md).
CPU_LOOKUP = 4


class Engine:
    """A loaded model, its tokenizer and FIM format, and a decode loop: the local `Backend`.

    A chat model (code actions' `actions.model`) has no FIM format: it gets `fim_format=None` and its
    end-of-turn tokens as `stop_tokens`."""

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, device: torch.device,
        fim_format: FimFormat | None, *, reuse_prefix: bool = True, static: bool | None = None,
        static_len: int = 4096, sync_every: int = 8, lookup: int | None = None,
        stop_tokens: Sequence[str] | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.fim = fim_format
        config = model.config
        self.max_context: int = (
            getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 2048
        )
        stop_tokens = fim_format.stop_tokens if stop_tokens is None and fim_format is not None else stop_tokens or ()
        self.stop_ids: frozenset[int] = _stop_ids(tokenizer, model, stop_tokens)
        # Ask for the last position's logits only where the model can (saves a vocab-sized matmul per prompt token).
        keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._last_only = {"logits_to_keep": 1} if keeps_logits else {}
        self.reuse_prefix = reuse_prefix  # keep the last generation's KV cache and reuse its common prefix
        # the model's confidence floors (its midline.json), if it has them: one, or one per cursor position
        self.min_mean_logprob: float | dict[str, float] | None = None  # hide a suggestion less sure than this
        self.min_line_logprob: float | dict[str, float] | None = None  # cut at a later line less sure than this
        # languages the model was trained on (its midline.json); None: any
        self.languages: tuple[str, ...] | None = None
        # The static path, where the model supports it (None: wherever it does). Its cache holds `static_len` positions.
        self.static = unsupported(model) is None if static is None else static
        self.static_len = min(static_len, self.max_context)
        self.sync_every = sync_every  # most tokens computed ahead of the stop checks on the static path
        # Prompt-lookup speculative decoding (greedy, static path): up to `lookup` draft tokens copied from the context
        # after an earlier occurrence of the last few tokens, checked in one forward pass. 0 = off; None = CPU_LOOKUP
        # on the CPU, off on a GPU.
        self.lookup = min((CPU_LOOKUP if device.type == "cpu" else 0) if lookup is None else lookup, CHUNK - 1)
        self._decoder: StaticDecoder | None = None  # made on first use
        # candidates: n -> a batch-n decoder, the ids it holds
        self._batch: dict[int, tuple[StaticDecoder, list[int]]] = {}
        self._cache: DynamicCache | StaticDecoder | None = None  # KV cache of the last generation...
        self._cached_ids: list[int] = []  # ...and the token ids it holds
        # The server counts the tokens of every line in its windows on every keystroke; almost all lines are unchanged.
        self._count_tokens = functools.lru_cache(maxsize=1 << 14)(lambda text: len(fim.encode_text(tokenizer, text)))
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls, path: str | Path, *, device: str = "auto", fim_format: str | None = None, trust_remote_code: bool = False,
        reuse_prefix: bool = True, threads: int | None = None, static: bool | None = None,
        adapter: str | Path | None = None,
    ) -> Engine:
        """Load a local model dir (with a LoRA `adapter` dir merged in, if given); its FIM format is detected from the
        vocabulary unless `fim_format` names one.

        On CPU this sets torch's process-wide thread count to `threads` (default `CPU_THREADS`).
        """
        model, tokenizer, device_ = load_model(path, device=device, trust_remote_code=trust_remote_code,
                                               adapter=adapter)
        if device_.type == "cpu":
            torch.set_num_threads(threads or CPU_THREADS)
        fmt = fim.get(fim_format) if fim_format else fim.detect(tokenizer.get_vocab())
        engine = cls(model, tokenizer, device_, fmt, reuse_prefix=reuse_prefix, static=static)
        settings = model_settings(Path(path))
        engine.min_mean_logprob = settings.get("min_mean_logprob")
        engine.min_line_logprob = settings.get("min_line_logprob")
        engine.languages = tuple(settings["languages"]) if settings.get("languages") is not None else None
        return engine

    def count_tokens(self, text: str) -> int:
        """Tokens in `text` as plain text (special-token strings in it count as text). Memoized."""
        return self._count_tokens(text)

    def encode(self, prompt: FimPrompt, mode: Mode | None = None) -> list[int]:
        """Token ids of a FIM prompt in this model's format."""
        if self.fim is None:
            raise FimFormatError("this model has no fill-in-the-middle format (a chat model)")
        return self.fim.encode(prompt, self.tokenizer, mode)

    def warmup(self) -> None:
        """Pay one-off costs before the first request: on CUDA, compile and capture the static path's graphs.

        Then check the static path against the model's own forward pass; if they disagree (a model variant the
        static path does not know), it is turned off and generation takes the dynamic path.
        """
        with self._lock, torch.inference_mode():
            started = time.monotonic()
            try:
                decoder = self._static_decoder()
                if decoder is not None and self.device.type == "cuda" and not decoder.graphs:
                    decoder.capture()
                if decoder is not None and not self._static_agrees(decoder):
                    self.static, self._decoder = False, None
            except Exception:  # a compiler or driver problem must not stop the server: the dynamic path still works
                log.exception("could not set up the static decode path: using the dynamic path")
                self.static, self._decoder = False, None
            self._cache, self._cached_ids = None, []
        ids = list(range(min(32, self.model.config.vocab_size)))
        for _ in range(2):  # a whole prompt, then the same prompt again (prefix reuse: the short-tail step)
            self.generate(ids, max_new_tokens=8, ignore_eos=True)
        self.clear_cache()
        elapsed, path = time.monotonic() - started, "on" if self.static else "off"
        log.info("engine warm-up took %.1f s (static path: %s)", elapsed, path)

    def compile_steps(self) -> None:
        """Compile the static path's steps of up to CHUNK tokens for the CPU (`StaticDecoder.compile_steps`).

        Not done by default: on 2 cores it takes 25-120 s, during which requests in the same process are slowed
        several-fold (the compiler's Python work holds the GIL), for keystrokes 1.1-1.2x faster afterwards
        (BENCHMARKS.md).
        """
        with self._lock, torch.inference_mode():
            decoder = self._static_decoder()
            if decoder is not None:
                self._cache, self._cached_ids = None, []  # compiling writes a few cache positions
                decoder.compile_steps()

    @property
    def decode_path(self) -> str:
        """How tokens are computed now: "static, CUDA graphs", "static, compiled", "static", or "dynamic"."""
        decoder = self._decoder
        if not self.static:
            return "dynamic"
        if decoder is not None and decoder.graphs:
            return "static, CUDA graphs"
        return "static, compiled" if decoder is not None and decoder.compiled_forward is not None else "static"

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
        ignore_eos: bool = False,
    ) -> Generation:
        """Complete `prompt_ids`: greedy at temperature 0, else temperature + top-p sampling.

        `should_stop` sees the text so far after each token; `deadline` is a `time.monotonic()` time.
        A prompt longer than `max_context - max_new_tokens` keeps its last tokens. `ignore_eos` (benchmarks:
        an exact length) generates through stop tokens.
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
            # The cache is taken out while generating, so an exception mid-forward leaves none, not a corrupt one.
            decoder = self._static_decoder() if len(prompt_ids) + max_new_tokens <= self.static_len else None
            cache, cached_ids, self._cache, self._cached_ids = self._cache, self._cached_ids, None, []
            usable = cache is decoder if decoder is not None else isinstance(cache, DynamicCache)
            reused = (
                min(common_prefix(cached_ids, prompt_ids), len(prompt_ids) - 1) if self.reuse_prefix and usable else 0
            )
            if decoder is not None:
                cache = decoder
                if self.lookup and temperature == 0:
                    steps = self._lookup_steps(decoder, prompt_ids, reused)
                else:
                    steps = self._static_steps(
                        decoder, prompt_ids, reused, max_new_tokens, temperature, top_p, generator
                    )
            else:
                if reused and isinstance(cache, DynamicCache):  # (something is reused only from a DynamicCache)
                    cache.crop(reused - cache.get_seq_length())  # a negative count: drop that many tokens from the end
                else:
                    cache = None  # the model makes its own cache (DynamicCache) on prefill
                box = [cache]  # the dynamic stream puts each step's cache here
                steps = self._dynamic_steps(box, prompt_ids[reused:], temperature, top_p, generator)

            [tokens], [logprobs], [finish_reason] = decoding.run_stops(
                ([step] for step in steps), 1, max_new_tokens, self.stop_ids, self.decode, should_stop, cancel,
                deadline, ignore_eos,
            )
            started = inspect.getgeneratorstate(steps) != inspect.GEN_CREATED  # the prompt went into the cache
            steps.close()

            # The cache now holds the prompt and every generated token but the last (which was never fed back),
            # or, when the end token came, all of them.
            fed = prompt_ids + (tokens if finish_reason == "eot" else tokens[:-1]) if started else prompt_ids[:reused]
            cache = cache if decoder is not None else box[0]
            if self.reuse_prefix and (decoder is not None or croppable(cache)):
                self._cache, self._cached_ids = cache, fed
            return Generation.of(
                self.decode(tokens), tokens, logprobs, finish_reason, len(prompt_ids), time.monotonic() - start, reused
            )

    def candidates(
        self,
        prompt_ids: list[int],
        n: int = 3,
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.8,
        top_p: float = 0.95,
        seed: int | None = None,
        should_stop: Callable[[str], bool] | None = None,
        cancel: threading.Event | None = None,
        deadline: float | None = None,
        ignore_eos: bool = False,
        greedy_first: bool = False,
    ) -> list[Generation]:
        """`n` completions of `prompt_ids` sampled in one batched pass, best first (highest mean log-probability).

        With `greedy_first`, the first row takes the most likely token at every step (`generate`'s greedy answer
        among the samples). Each row stops on its own (end token, `should_stop`); cancel and deadline stop them
        all. On the static path the batch keeps its own KV cache, with prefix reuse; no graphs are captured for it.
        """
        if not prompt_ids or n < 1:
            raise ValueError("need a non-empty prompt and n >= 1")
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
        with self._lock, torch.inference_mode():
            start = time.monotonic()
            prompt_ids = list(prompt_ids[-max(1, self.max_context - max_new_tokens):])
            generator = torch.Generator(device=self.device)
            generator.seed() if seed is None else generator.manual_seed(seed)
            reused = 0
            static = self.static and len(prompt_ids) + max_new_tokens <= self.static_len
            if static:
                kept = self._batch.pop(n, None)
                decoder, cached_ids = kept or (StaticDecoder(self.model, self.static_len, batch=n), [])
                reused = min(common_prefix(cached_ids, prompt_ids), len(prompt_ids) - 1) if self.reuse_prefix else 0
                logits = decoder.prefill(prompt_ids[reused:], reused)

                def step(tokens: torch.Tensor, position: int) -> torch.Tensor:
                    return decoder.run(tokens[:, None], position)[:, -1]
            else:
                box = [None]  # transformers' DynamicCache; every row has the same prompt, so no padding

                def step(tokens: torch.Tensor, position: int) -> torch.Tensor:
                    out = self.model(
                        input_ids=tokens[:, None], past_key_values=box[0], use_cache=True, **self._last_only
                    )
                    box[0] = out.past_key_values
                    return out.logits[:, -1].float()

                # The prompt is computed once; every row starts from its keys and values.
                ids = torch.tensor([prompt_ids], device=self.device)
                out = self.model(input_ids=ids, use_cache=True, **self._last_only)
                out.past_key_values.batch_repeat_interleave(n)
                box[0], logits = out.past_key_values, out.logits[:, -1].float().expand(n, -1)

            def batch_steps(logits: torch.Tensor) -> Iterator[list[tuple[int, float]]]:
                for i in range(max_new_tokens):
                    tokens, token_logprobs = pick(logits, temperature, top_p, generator)
                    if greedy_first:
                        tokens[0], token_logprobs[0] = (x[0] for x in pick(logits[:1], 0.0, 1.0, None))
                    picked = torch.stack((tokens.double(), token_logprobs.double()), dim=1)
                    yield [(int(t), lp) for t, lp in picked.tolist()]
                    if i + 1 < max_new_tokens:  # the last tokens are never fed back
                        logits = step(tokens, len(prompt_ids) + i)

            rows, logprobs, finish = decoding.run_stops(
                batch_steps(logits), n, max_new_tokens, self.stop_ids, self.decode, should_stop, cancel, deadline,
                ignore_eos,
            )
            if static:
                self._batch[n] = (decoder, prompt_ids if self.reuse_prefix else [])  # the rows differ after the prompt
            elapsed = time.monotonic() - start
            generations = [
                Generation.of(self.decode(row), row, lp, f, len(prompt_ids), elapsed, reused)
                for row, lp, f in zip(rows, logprobs, finish)
            ]
            return sorted(generations, key=lambda g: -g.mean_logprob if g.token_ids else math.inf)

    def _dynamic_steps(
        self, box: list, feed: list[int], temperature: float, top_p: float, generator: torch.Generator | None,
    ) -> Generator[tuple[int, float], None, None]:
        """Tokens and their log-probabilities, one forward pass each, through transformers' DynamicCache."""
        while True:
            ids = torch.tensor([feed], device=self.device)
            out = self.model(input_ids=ids, past_key_values=box[0], use_cache=True, **self._last_only)
            box[0] = out.past_key_values
            token, logprob = pick(out.logits[:, -1].float(), temperature, top_p, generator)
            yield int(token), float(logprob)
            feed = [int(token)]

    def _static_steps(
        self, decoder: StaticDecoder, prompt_ids: list[int], reused: int, max_new_tokens: int,
        temperature: float, top_p: float, generator: torch.Generator | None,
    ) -> Generator[tuple[int, float], None, None]:
        """Tokens and their log-probabilities through the static cache, computed ahead in chunks of 1, 2, 4, ...

        Each chunk is queued on the device without waiting, then read back with one host sync.
        """
        logits = decoder.prefill(prompt_ids[reused:], reused)
        position, done, chunk = len(prompt_ids), 0, 1
        while done < max_new_tokens:
            picked = []
            for _ in range(min(chunk, max_new_tokens - done)):
                token, logprob = pick(logits, temperature, top_p, generator)
                picked.append(torch.stack((token.double(), logprob.double())))
                done += 1
                if done < max_new_tokens:  # the last token is never fed back
                    logits = decoder.run(token[:, None], position)[:, -1]
                    position += 1
            for token, logprob in torch.cat(picked, dim=1).T.tolist():  # the one host sync per chunk
                yield int(token), logprob
            chunk = min(2 * chunk, self.sync_every)

    def _lookup_steps(
        self, decoder: StaticDecoder, prompt_ids: list[int], reused: int
    ) -> Generator[tuple[int, float], None, None]:
        """Greedy tokens with prompt-lookup drafts: feed the last token and the draft in one pass, keep the draft up to
        its first token that differs from the model's own choice, plus the model's token there.

        Rejected draft tokens leave stale keys past the current position, invisible and overwritten later.
        """
        logits = decoder.prefill(prompt_ids[reused:], reused)
        first, first_logprob = pick(logits, 0.0, 1.0, None)
        drafts = NgramIndex(prompt_ids)  # built while the prefill runs on the device
        position = len(prompt_ids)  # where the last emitted token goes when fed
        emitted: list[tuple[int, float]] = [(int(first), float(first_logprob))]
        while True:
            for token, logprob in emitted:
                yield token, logprob
                drafts.append(token)
            padded = decoder.pad_prefill  # on CUDA: the captured CHUNK-token step, padded
            draft = drafts.draft(min(self.lookup, decoder.max_len - position - (CHUNK if padded else 1)))
            feed = [token, *draft]
            pads = [token] * (CHUNK - len(feed)) if padded and draft else []
            logits = decoder.run(torch.tensor([feed + pads], device=self.device), position)[0, : len(feed)]
            chosen_ids, chosen_logprobs = pick(logits, 0.0, 1.0, None)
            chosen: list[int] = chosen_ids.tolist()
            logprobs: list[float] = chosen_logprobs.tolist()
            accepted = next((i for i, (d, c) in enumerate(zip(draft, chosen)) if d != c), len(draft))
            emitted = list(zip(chosen[: accepted + 1], logprobs[: accepted + 1]))
            position += accepted + 1

    def _static_decoder(self) -> StaticDecoder | None:
        """The static path's decoder (made on first use), or None where it is off."""
        if self.static and self._decoder is None:
            self._decoder = StaticDecoder(self.model, self.static_len)
        return self._decoder if self.static else None

    def _static_agrees(self, decoder: StaticDecoder) -> bool:
        """Whether the static path's logits match the model's own forward pass: a long prefill, a short one (the
        padded chunk step once graphs are captured) and a one-token step."""
        ids = list(range(1, min(CHUNK + 16, self.model.config.vocab_size)))
        expected = self.model(input_ids=torch.tensor([ids], device=self.device)).logits[0].float()
        long, short = CHUNK + 4, CHUNK + 12
        got = torch.cat((
            decoder.prefill(ids[:long], 0),
            decoder.prefill(ids[long:short], long),
            decoder.run(torch.tensor([ids[short : short + 1]], device=self.device), short)[:, -1],
        ))
        expected = expected[[long - 1, short - 1, short]]
        error = float((got - expected).abs().max() / expected.abs().max().clamp_min(1e-6))
        tolerance = 1e-3 if decoder.dtype == torch.float32 else 1e-1  # a wrong position or layout is off by O(1)
        if not error <= tolerance:
            log.warning(
                "static decode path disagrees with the model (relative error %.2g > %.2g): using the dynamic path",
                error, tolerance,
            )
        return error <= tolerance

    def clear_cache(self) -> None:
        """Drop the kept KV caches (the next generation prefills its whole prompt)."""
        with self._lock:
            self._cache, self._cached_ids = None, []
            self._batch = {n: (decoder, []) for n, (decoder, _) in self._batch.items()}

    def decode(self, token_ids: list[int]) -> str:
        """Text of generated tokens, without special tokens or a trailing incomplete UTF-8 character."""
        # decode's type covers a batch of sequences too (a list of texts); one sequence decodes to one text.
        text = cast(str, self.tokenizer.decode(token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))
        return text.rstrip("\ufffd")

    def token_ends(self, token_ids: list[int]) -> list[int]:
        """Where each token's text ends in `decode(token_ids)` (a token that ends mid-character ends where it began)."""
        return decoded_ends(self.decode, token_ids)


def pick(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next tokens `[B]` from logits `[B, V]`, and their log-probabilities, without a host sync.

    Greedy at temperature 0, else from the top-p nucleus of the tempered distribution, sampled as the argmax of
    probs / Exponential(1) noise (an exact sample, unlike torch.multinomial free of device syncs).
    """
    if temperature == 0:
        token = logits.argmax(-1)
    else:
        probs = torch.softmax(logits / temperature, dim=-1)
        if top_p < 1:
            probs, order = probs.sort(dim=-1, descending=True)
            # keep the smallest head whose mass reaches top_p
            probs = probs.masked_fill(probs.cumsum(-1) - probs >= top_p, 0)
        noise = torch.empty_like(probs).exponential_(1, generator=generator)
        token = (probs / noise).argmax(-1)
        if top_p < 1:
            token = order.gather(-1, token[:, None])[:, 0]
    return token, torch.log_softmax(logits, dim=-1).gather(-1, token[:, None])[:, 0]


def sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    """Next token from a 1-D logits vector: argmax at temperature 0, else from the top-p nucleus."""
    return int(pick(logits[None], temperature, top_p, generator)[0][0])


def croppable(cache: object) -> bool:
    """Whether `cache` can be cut back to a prefix exactly: a full-attention `DynamicCache` (no sliding window)."""
    return isinstance(cache, DynamicCache) and getattr(cache, "is_croppable", True) and not any(cache.is_sliding)


def _stop_ids(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, stop_tokens: Sequence[str]) -> frozenset[int]:
    """Ids of the stop tokens that the vocabulary has, plus the tokenizer's and model's EOS."""
    vocab = tokenizer.get_vocab()
    ids = {vocab[t] for t in stop_tokens if t in vocab}
    generation_config = getattr(model, "generation_config", None)
    for eos in (tokenizer.eos_token_id, getattr(generation_config, "eos_token_id", None)):
        if isinstance(eos, int):
            ids.add(eos)
        elif eos:
            ids.update(eos)
    return frozenset(ids)
