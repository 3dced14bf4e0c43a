"""llama.cpp in process: the local `Backend` on machines without a CUDA GPU.

Side by side on 2 cores (BENCHMARKS.md, issue 18), llama.cpp decodes midline's default model 2-4x faster than the
PyTorch engine, and a server that never imports torch or transformers starts in a fraction of the time and memory.
So where no CUDA GPU is used and llama-cpp-python is installed (`pip install 'midline[cpu]'`), the server serves a
local model through this engine (`engine` setting: auto, torch or llamacpp; `unsupported` says why not).

The model directory stays the one source: its safetensors are written once as GGUF (`gguf_export`, numpy only) into
midline's cache, keyed by the files' names, sizes and times, and reused by every later start. The tokenizer is read
with `tokenizers` (`FastTokenizer`), so prompts are laid out token for token as the PyTorch engine lays them out.

The loop is midline's own, over llama.cpp's low-level API (one token per `llama_decode`): the KV cache of the last
generation is kept with the ids it holds and cut back to the longest common prefix of the next prompt, greedy
decoding checks prompt-lookup drafts in one batch, and the stop rules, cancellation and deadline are checked between
tokens (`decoding.run_stops`), exactly as in the PyTorch engine.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Generator

import numpy as np

from midline.model import decoding, fim
from midline.model.backend import Generation, ModelLoadError, decoded_ends, model_settings
from midline.model.fim import FimFormat, FimFormatError, FimPrompt, Mode
from midline.model.tokenizer import FastTokenizer

log = logging.getLogger(__name__)

# The weights llama.cpp computes with: q8_0 decoded the default model fastest on 2 cores (1.4 ms/token against 2.1 for
# bf16 and 4.2 for f32, BENCHMARKS.md) and its held-out positions were answered as in fp32 (BENCHMARKS.md, issue 18).
WEIGHT_TYPE = "q8_0"
# CPU threads: one core left to the editor and the server's event loop, as in the PyTorch engine (`engine.CPU_THREADS`).
CPU_THREADS = max(1, (os.cpu_count() or 1) - 1)
LOOKUP = 4  # prompt-lookup draft tokens checked with each greedy step (0: off)
BATCH = 512  # prompt tokens per llama_decode call


def unsupported(model_dir: Path, *, device: str = "auto", adapter: object = None,
                trust_remote_code: bool = False) -> str | None:
    """Why this engine can't serve the model in `model_dir` with these settings, or None if it can: it needs
    llama-cpp-python, no CUDA device asked for or present (a GPU is the PyTorch engine's), no adapter to merge, and an
    architecture the GGUF export writes."""
    from midline.model.gguf_export import ARCHITECTURES

    if device == "cuda" or (device == "auto" and Path("/proc/driver/nvidia/version").exists()):
        return "a CUDA GPU is used (the PyTorch engine runs there)"
    if adapter is not None:
        return "an adapter is merged by peft (the PyTorch engine loads it)"
    if trust_remote_code:
        return "the model runs its own code (trust_remote_code)"
    try:
        import llama_cpp  # noqa: F401
    except ImportError as exc:  # not installed, or a library built for another CPU or libc
        return f"llama-cpp-python is not installed ({exc}): pip install 'midline[cpu]'"
    architectures = _read_config(Path(model_dir).expanduser()).get("architectures") or []
    if not set(architectures) & set(ARCHITECTURES):
        return f"architecture {architectures} is not one llama.cpp is given here ({', '.join(ARCHITECTURES)})"
    return None


def cache_dir() -> Path:
    """Where converted models are kept: $MIDLINE_CACHE, else $XDG_CACHE_HOME/midline, else ~/.cache/midline."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(os.environ.get("MIDLINE_CACHE") or Path(cache) / "midline") / "gguf"


def gguf_for(model_dir: Path, weight_type: str = WEIGHT_TYPE) -> Path:
    """The model directory as a GGUF file in the cache, written on first use (`gguf_export.export_gguf`)."""
    from midline.model.gguf_export import GgufExportError, export_gguf

    model_dir = Path(model_dir).expanduser().resolve()
    key = hashlib.sha256(f"{model_dir}\0{weight_type}".encode())
    for file in sorted(model_dir.iterdir()):
        if file.is_file() and file.suffix in (".json", ".safetensors"):
            stat = file.stat()
            key.update(f"\0{file.name}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    path = cache_dir() / f"{model_dir.name}-{key.hexdigest()[:16]}-{weight_type}.gguf"
    if not path.exists():
        started = time.monotonic()
        try:
            export_gguf(model_dir, path, weight_type)
        except (GgufExportError, FimFormatError) as exc:
            raise ModelLoadError(f"cannot convert {model_dir} for llama.cpp: {exc}") from exc
        log.info("wrote %s for llama.cpp in %.1f s", path, time.monotonic() - started)
    return path


class LlamaCppEngine:
    """A model run by llama.cpp in this process, with midline's tokenizer, FIM layout and decode loop."""

    reuse_prefix = True
    device = "cpu"  # where generation runs, for logs and `midline.status` (`decode_path` says how)

    def __init__(
        self, gguf: Path, tokenizer: FastTokenizer, fim_format: FimFormat, *, max_context: int,
        threads: int = CPU_THREADS, lookup: int = LOOKUP, weight_type: str = WEIGHT_TYPE,
    ):
        import llama_cpp.llama_cpp as L  # the ctypes binding

        # llama-cpp-python writes llama.cpp's log to stderr from its logger's level: errors only, unless ours is DEBUG
        verbose = log.isEnabledFor(logging.DEBUG)
        logging.getLogger("llama-cpp-python").setLevel(logging.DEBUG if verbose else logging.ERROR)
        self._L = L
        self.tokenizer = tokenizer
        self.fim = fim_format
        self.max_context = max_context
        self.lookup = lookup
        self.decode_path = f"llama.cpp, {weight_type}, {threads} thread{'s' if threads > 1 else ''}"
        self.min_mean_logprob: float | dict[str, float] | None = None
        self.min_line_logprob: float | dict[str, float] | None = None
        self.languages: tuple[str, ...] | None = None
        vocab = tokenizer.get_vocab()
        self.stop_ids = frozenset(
            {vocab[t] for t in fim_format.stop_tokens if t in vocab}
            | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())
        )
        L.llama_backend_init()
        model_params = L.llama_model_default_params()
        self._model = L.llama_model_load_from_file(str(gguf).encode(), model_params)
        if not self._model:
            raise ModelLoadError(f"llama.cpp could not load {gguf}")
        params = L.llama_context_default_params()
        params.n_ctx = max_context
        params.n_batch = params.n_ubatch = BATCH
        params.n_seq_max = 1
        params.n_threads = params.n_threads_batch = threads
        params.flash_attn_type = 0  # off: no faster on the CPU for these short contexts, and it rounds differently
        params.no_perf = True
        self._ctx = L.llama_init_from_model(self._model, params)
        if not self._ctx:
            L.llama_model_free(self._model)
            raise ModelLoadError(f"llama.cpp could not make a context of {max_context} tokens for {gguf}")
        self._memory = L.llama_get_memory(self._ctx)
        self._vocab_size = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self._model))
        self._batch = L.llama_batch_init(BATCH, 0, 1)
        self._ids: list[int] = []  # the token ids whose keys and values the context holds, positions 0..len-1
        self._count_tokens = functools.lru_cache(maxsize=1 << 14)(lambda text: len(fim.encode_text(tokenizer, text)))
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls, path: str | Path, *, fim_format: str | None = None, threads: int | None = None,
        weight_type: str = WEIGHT_TYPE,
    ) -> LlamaCppEngine:
        """A local model directory (Hugging Face layout, safetensors), converted to GGUF on first use; its FIM format is
        detected from the vocabulary unless `fim_format` names one."""
        path = Path(path).expanduser()
        tokenizer = FastTokenizer.load(path)
        fmt = fim.get(fim_format) if fim_format else fim.detect(tokenizer.get_vocab())
        config = _read_config(path)
        max_context = int(config.get("max_position_embeddings") or config.get("n_positions") or 2048)
        engine = cls(gguf_for(path, weight_type), tokenizer, fmt, max_context=max_context,
                     threads=threads or CPU_THREADS, weight_type=weight_type)
        settings = model_settings(path)
        engine.min_mean_logprob = settings.get("min_mean_logprob")
        engine.min_line_logprob = settings.get("min_line_logprob")
        engine.languages = tuple(settings["languages"]) if settings.get("languages") is not None else None
        engine.stop_ids |= _generation_eos(path)  # as the PyTorch engine stops on the model's generation config's
        return engine

    def __del__(self) -> None:
        L = getattr(self, "_L", None)
        if L is not None and getattr(self, "_ctx", None):
            L.llama_batch_free(self._batch)
            L.llama_free(self._ctx)
            L.llama_model_free(self._model)
            self._ctx = None

    # -- the Backend protocol -------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        """Tokens in `text` as plain text (special-token strings in it count as text). Memoized."""
        return self._count_tokens(text)

    def encode(self, prompt: FimPrompt, mode: Mode | None = None) -> list[int]:
        """Token ids of a FIM prompt in this model's format."""
        return self.fim.encode(prompt, self.tokenizer, mode)

    def warmup(self) -> None:
        """Pay one-off costs (llama.cpp's first graphs, page faults in the weights) before the first request."""
        started = time.monotonic()
        ids = list(range(min(32, self._vocab_size)))
        for _ in range(2):  # a whole prompt, then the same prompt again (prefix reuse: the short-tail step)
            self.generate(ids, max_new_tokens=8, ignore_eos=True)
        self.clear_cache()
        log.info("engine warm-up took %.1f s (llama.cpp)", time.monotonic() - started)

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
        """Complete `prompt_ids`: greedy at temperature 0 (with prompt-lookup drafts), else temperature + top-p
        sampling. As `Engine.generate`: a prompt longer than `max_context - max_new_tokens` keeps its last tokens."""
        if not prompt_ids:
            raise ValueError("prompt_ids is empty")
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
        with self._lock:
            start = time.monotonic()
            prompt_ids = list(prompt_ids[-max(1, self.max_context - max_new_tokens):])
            reused = min(decoding.common_prefix(self._ids, prompt_ids), len(prompt_ids) - 1)
            rng = np.random.default_rng(seed)
            if temperature == 0 and self.lookup:
                steps = self._lookup_steps(prompt_ids, reused)
            else:
                steps = self._steps(prompt_ids, reused, temperature, top_p, rng)
            try:
                [tokens], [logprobs], [finish_reason] = decoding.run_stops(
                    ([step] for step in steps), 1, max_new_tokens, self.stop_ids, self.decode, should_stop, cancel,
                    deadline, ignore_eos,
                )
            except BaseException:
                self._forget()  # a failed llama_decode leaves the cache's contents unknown
                raise
            finally:
                steps.close()
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
        """`n` completions of `prompt_ids`, best first (highest mean log-probability), as `Engine.candidates`: with
        `greedy_first` the first is the greedy answer. One after another, each reusing the prompt's cache (on the CPU
        a batch of rows costs about as much as the rows one by one)."""
        if not prompt_ids or n < 1:
            raise ValueError("need a non-empty prompt and n >= 1")
        rng = np.random.default_rng(seed)
        generations: list[Generation] = []
        for row in range(n):
            greedy = greedy_first and row == 0
            generations.append(self.generate(
                prompt_ids, max_new_tokens=max_new_tokens, temperature=0.0 if greedy else temperature, top_p=top_p,
                seed=int(rng.integers(1 << 63)), should_stop=should_stop, cancel=cancel, deadline=deadline,
                ignore_eos=ignore_eos,
            ))
            if generations[-1].finish_reason in ("cancelled", "timeout"):
                break
        return sorted(generations, key=lambda g: -g.mean_logprob if g.token_ids else math.inf)

    def clear_cache(self) -> None:
        """Drop the kept KV cache (the next generation prefills its whole prompt)."""
        with self._lock:
            self._forget()

    def decode(self, token_ids: list[int]) -> str:
        """Text of generated tokens, without special tokens or a trailing incomplete UTF-8 character."""
        return self.tokenizer.decode(token_ids).rstrip("\ufffd")

    def token_ends(self, token_ids: list[int]) -> list[int]:
        """Where each token's text ends in `decode(token_ids)` (a token that ends mid-character ends where it began)."""
        return decoded_ends(self.decode, token_ids)

    # -- the loop -----------------------------------------------------------------------------

    def _steps(
        self, prompt_ids: list[int], reused: int, temperature: float, top_p: float, rng: np.random.Generator,
    ) -> Generator[tuple[int, float], None, None]:
        """Tokens and their log-probabilities, one `llama_decode` each."""
        logits = self._prefill(prompt_ids, reused)
        while True:
            token, logprob = pick(logits, temperature, top_p, rng)
            yield token, logprob
            logits = self._feed([token], all_logits=False)[-1]

    def _lookup_steps(self, prompt_ids: list[int], reused: int) -> Generator[tuple[int, float], None, None]:
        """Greedy tokens with prompt-lookup drafts (as `Engine._lookup_steps`): the last token and the draft go in one
        batch; the draft is kept up to its first token that differs from the model's own choice, plus the model's
        token there, and the rejected tokens' keys and values are removed from the cache."""
        logits = self._prefill(prompt_ids, reused)
        drafts = decoding.NgramIndex(prompt_ids)
        emitted = [pick(logits, 0.0, 1.0, None)]
        while True:
            for token, logprob in emitted:
                yield token, logprob
                drafts.append(token)
            draft = drafts.draft(min(self.lookup, self.max_context - len(self._ids) - 1))
            rows = self._feed([token, *draft], all_logits=True)
            chosen = [pick(row, 0.0, 1.0, None) for row in rows]
            accepted = next((i for i, (d, (c, _)) in enumerate(zip(draft, chosen)) if d != c), len(draft))
            self._truncate(len(self._ids) - len(draft) + accepted)
            emitted = chosen[: accepted + 1]

    def _prefill(self, prompt_ids: list[int], reused: int) -> np.ndarray:
        """Cut the cache back to the first `reused` ids of the prompt, feed the rest; the last position's logits."""
        self._truncate(reused)
        rest = prompt_ids[reused:]
        for start in range(0, len(rest), BATCH):
            logits = self._feed(rest[start : start + BATCH], all_logits=False)
        return logits[-1]

    def _feed(self, tokens: list[int], *, all_logits: bool) -> np.ndarray:
        """Put `tokens` into the cache after the ids it holds; the logits of each (all_logits) or of the last."""
        batch, position = self._batch, len(self._ids)
        batch.n_tokens = len(tokens)
        for i, token in enumerate(tokens):
            batch.token[i] = token
            batch.pos[i] = position + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = all_logits or i == len(tokens) - 1
        if (status := self._L.llama_decode(self._ctx, batch)) != 0:
            raise RuntimeError(f"llama_decode failed with status {status}")
        self._ids.extend(tokens)
        rows = range(len(tokens)) if all_logits else [len(tokens) - 1]
        return np.stack([self._logits(i) for i in rows])

    def _logits(self, i: int) -> np.ndarray:
        pointer = self._L.llama_get_logits_ith(self._ctx, i)
        return np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), (self._vocab_size,)).copy()

    def _truncate(self, length: int) -> None:
        """Keep the first `length` ids' keys and values."""
        if length < len(self._ids):
            self._L.llama_memory_seq_rm(self._memory, 0, length, -1)
            del self._ids[length:]

    def _forget(self) -> None:
        self._L.llama_memory_clear(self._memory, True)
        self._ids = []


def pick(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator | None) -> tuple[int, float]:
    """The next token from a logits vector and its log-probability (under the untempered distribution, as
    `engine.pick`): the argmax at temperature 0, else a sample from the top-p nucleus of the tempered distribution."""
    logits = logits.astype(np.float64)
    top = logits.max()
    log_total = top + math.log(np.exp(logits - top).sum())
    if temperature == 0 or rng is None:
        token = int(logits.argmax())
    else:
        probs = np.exp((logits - top) / temperature)
        probs /= probs.sum()
        order = np.argsort(-probs, kind="stable")
        ranked = probs[order]
        kept = ranked[(np.cumsum(ranked) - ranked) < top_p]  # the smallest head whose mass reaches top_p
        token = int(order[rng.choice(len(kept), p=kept / kept.sum())])
    return token, float(logits[token] - log_total)


def _read_config(path: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path} is not a model directory midline can read (config.json: {exc})") from exc


def _generation_eos(path: Path) -> frozenset[int]:
    """The end token ids of the model's generation_config.json (an id or a list of them; none without the file)."""
    import json

    try:
        eos = json.loads((path / "generation_config.json").read_text(encoding="utf-8")).get("eos_token_id")
    except (OSError, ValueError, AttributeError):
        return frozenset()
    return frozenset([eos] if isinstance(eos, int) else [e for e in eos or [] if isinstance(e, int)])
