"""The path of one keystroke: document -> context -> prompt -> model -> post-processing -> suggestion.

`Completer.complete` is shared by the LSP handlers and `midline complete`; it answers a `Completion`: the
suggestion, and the generation and trace of the model call, if there was one. Its prompt, sized to the model's
context, comes from `prompt.PromptBuilder` (`Completer.prompts`). Around the model call it
adds what makes completion feel instant: an optional debounce for automatic triggers, typing-through (the user
types what is shown: answer with the rest, no model call), a cache keyed by the prompt, and
cancellation (a cancelled or superseded request stops its generation).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import Executor
from dataclasses import dataclass

from midline.model.backend import Backend, EncodedPrompt, Generation

from . import security
from .config import Config, CurrentConfig, Settings
from .context import CompletionContext, Hole
from .documents import Document
from .postprocess import Suggestion, block_complete, cut_unsure_lines, postprocess
from .prompt import PromptBuilder
from .retrieval import RetrievalIndex
from .symbols import SymbolIndex

log = logging.getLogger(__name__)


@dataclass
class _Shown:
    """The last suggestion given for a document, and the text around the cursor it was made for."""

    before: str
    after: str
    suggestion: Suggestion


@dataclass
class Trace:
    """What happened to the last request that reached the model (for "why no suggestion?")."""

    line_prefix: str = ""
    hole: str = ""
    raw: str = ""  # the model's text before post-processing
    finish_reason: str = ""
    shown: str | None = None  # what post-processing kept
    hidden: str = ""  # why what post-processing kept is not shown: a security finding


@dataclass
class Completion:
    """What one request answered: the suggestion, and the model call behind it (None where there was none:
    completion off, no hole, typed through, a cached prompt, superseded while debouncing)."""

    suggestion: Suggestion | None
    generation: Generation | None = None
    trace: Trace | None = None


@dataclass
class Stats:
    """Counters for logs and benchmarks."""

    requests: int = 0
    model_calls: int = 0
    cache_hits: int = 0
    typed_through: int = 0
    cancelled: int = 0
    timeouts: int = 0
    low_confidence: int = 0  # suggestions hidden for a mean log-probability under the floor
    tails_cut: int = 0  # suggestions whose unsure last lines were cut
    insecure: int = 0  # suggestions hidden for a high-severity security finding (security.py)
    last_latency_ms: float = 0.0


class Completer:
    """Answers completion requests for open documents with one model (local or remote: a `Backend`)."""

    config = CurrentConfig()  # the current settings, read from `settings` each time

    def __init__(
        self,
        engine: Backend,
        config: Config | Settings,
        executor: Executor,
        *,
        symbols: SymbolIndex | None = None,
        root: str | None = None,
        retrieval: RetrievalIndex | None = None,
    ) -> None:
        self.engine = engine
        self.settings = Settings.of(config)  # the server's holder, shared with its other components
        self.executor = executor  # one worker: the model runs one generation at a time
        self.prompts = PromptBuilder(engine, self.settings, root=root, symbols=symbols, retrieval=retrieval)
        self.stats = Stats()
        self.trace = Trace()
        self._cache: OrderedDict[tuple, Suggestion | None] = OrderedDict()
        self._shown: dict[str, _Shown] = {}
        self._latest: dict[str, int] = {}  # uri -> id of its newest request
        self._running: dict[str, threading.Event] = {}  # uri -> cancel flag of its generation

    async def complete(self, doc: Document, offset: int, *, automatic: bool = False) -> Completion:
        """The suggestion for the cursor at `offset` in `doc` (or None), with its generation and trace."""
        started = time.perf_counter()
        self.stats.requests += 1
        request = self._latest[doc.uri] = self._latest.get(doc.uri, 0) + 1
        if not self.enabled(doc):
            return Completion(None)
        if (rest := self._type_through(doc, offset)) is not None:
            self.stats.typed_through += 1
            return Completion(rest)
        if automatic and self.config.debounce_ms:
            await asyncio.sleep(self.config.debounce_ms / 1000)
            if self._latest.get(doc.uri) != request:  # superseded while waiting
                return Completion(None)

        built = self.prompts.build(doc, offset)
        if built is None:  # no hole at the cursor
            return Completion(None)
        ctx, prompt = built.context, built.encoded
        generation: Generation | None = None
        trace: Trace | None = None
        key = (tuple(prompt), ctx.hole, ctx.block, self.config.max_lines, self.config.temperature, self.config.top_p, self.config.seed)
        if key in self._cache:
            self.stats.cache_hits += 1
            self._cache.move_to_end(key)
            suggestion = self._cache[key]
        else:
            finished, generation, suggestion = await self._generate(doc.uri, ctx, prompt)
            trace = self.trace
            if finished:
                self._remember(key, suggestion)
        if suggestion is not None:
            self._shown[doc.uri] = _Shown(doc.text[:offset], doc.text[offset:], suggestion)
        self.stats.last_latency_ms = (time.perf_counter() - started) * 1000
        return Completion(suggestion, generation, trace)

    def enabled(self, doc: Document) -> bool:
        """Whether to complete in `doc`'s language: the `enable` setting, else the model's own languages."""
        return self.config.enabled_for(doc.language_id, self.engine.languages)

    @property
    def generating(self) -> bool:
        """Whether a generation is running now."""
        return bool(self._running)

    def forget(self, uri: str) -> None:
        """Drop per-document state (the document was closed) and stop its generation."""
        self._shown.pop(uri, None)
        self._latest.pop(uri, None)
        if (flag := self._running.pop(uri, None)) is not None:
            flag.set()

    # -- internals ----------------------------------------------------------------------------

    def _type_through(self, doc: Document, offset: int) -> Suggestion | None:
        """The rest of the shown suggestion if the user has typed its first characters."""
        shown, text = self._shown.get(doc.uri), doc.text
        # (Compared in place: no copy of a large document's text per request.)
        if shown is None or len(text) - offset != len(shown.after) or not text.endswith(shown.after):
            return None
        if offset < len(shown.before) or not text.startswith(shown.before):
            return None
        typed = text[len(shown.before) : offset]
        text = shown.suggestion.text
        if typed and len(typed) < len(text) and text.startswith(typed):
            return Suggestion(text[len(typed) :], shown.suggestion.replace)
        return None

    async def _generate(self, uri: str, ctx: CompletionContext, prompt: EncodedPrompt) -> tuple[bool, Generation, Suggestion | None]:
        """Generate and post-process off the event loop; a newer request for the same document stops this one.

        Returns whether the generation finished (a cancelled or timed-out one is not cached), it, and the suggestion.
        """
        if (previous := self._running.get(uri)) is not None:
            previous.set()
        cancel = self._running[uri] = threading.Event()
        config = self.config
        max_lines = config.max_lines
        floor = _floor(config.min_mean_logprob, self.engine, "min_mean_logprob", ctx.position)
        line_floor = _floor(config.min_line_logprob, self.engine, "min_line_logprob", ctx.position)

        hidden: list[str] = []  # why run() hid the post-processed suggestion

        def run() -> tuple[Generation, Suggestion | None]:
            generation = self.engine.generate(
                prompt,
                max_new_tokens=config.max_new_tokens,
                temperature=config.temperature,
                top_p=config.top_p,
                seed=config.seed,
                should_stop=lambda text: block_complete(text, ctx, max_lines),
                cancel=cancel,
                deadline=time.monotonic() + config.timeout_ms / 1000,
            )
            if generation.finish_reason in ("cancelled", "timeout"):
                return generation, None
            if floor is not None and generation.mean_logprob < floor:  # nan (a remote backend) is never below
                self.stats.low_confidence += 1
                return generation, None
            text = generation.text
            # (Only a multi-line hole keeps more than a line; a remote backend gives no log-probabilities.)
            if line_floor is not None and ctx.hole is Hole.MULTI_LINE and generation.token_logprobs:
                text = cut_unsure_lines(text, self.engine.token_ends(generation.token_ids), generation.token_logprobs, line_floor)
                self.stats.tails_cut += text != generation.text
            suggestion = postprocess(text, ctx, max_lines)
            if suggestion is not None and config.security.completions and (finding := _insecure(suggestion, ctx)):
                self.stats.insecure += 1
                hidden.append(f"insecure: {finding}")
                return generation, None
            return generation, suggestion

        self.stats.model_calls += 1
        try:
            generation, suggestion = await asyncio.get_running_loop().run_in_executor(self.executor, run)
        except asyncio.CancelledError:  # $/cancelRequest, or shutdown: stop the generation too
            cancel.set()
            self.stats.cancelled += 1
            raise
        finally:
            if self._running.get(uri) is cancel:
                del self._running[uri]
        log.debug(
            "generated %d tokens in %.0f ms (%s, prompt %d tokens)",
            len(generation.token_ids), generation.elapsed_s * 1000, generation.finish_reason, generation.prompt_tokens,
        )
        self.trace = Trace(
            ctx.line_prefix, ctx.hole.value, generation.text, generation.finish_reason, suggestion.text if suggestion else None,
            *hidden,
        )
        if generation.finish_reason == "cancelled":
            self.stats.cancelled += 1
            return False, generation, None
        if generation.finish_reason == "timeout":
            self.stats.timeouts += 1
            log.warning("generation passed the %d ms time limit; answering with nothing", config.timeout_ms)
            return False, generation, None
        return True, generation, suggestion

    def _remember(self, key: tuple, suggestion: Suggestion | None) -> None:
        if self.config.cache_size <= 0:
            return
        self._cache[key] = suggestion
        while len(self._cache) > self.config.cache_size:
            self._cache.popitem(last=False)


def _floor(configured: float | None, engine: Backend, name: str, position: str) -> float | None:
    """A confidence floor: the user's, else the one the model ships with for this cursor position (its
    midline.json: one floor, or one per position), else None."""
    if configured is not None:
        return configured
    floor = getattr(engine, name)
    return floor.get(position) if isinstance(floor, dict) else floor


def _insecure(suggestion: Suggestion, ctx: CompletionContext) -> security.Finding | None:
    """The security finding that hides `suggestion`, scanned as the lines it makes in the document; or None."""
    before = ctx.prefix[: len(ctx.prefix) - len(ctx.indent)]  # the document's own text (the suggestion has the indent)
    return security.hides(suggestion.text, ctx.language, context=before, after=ctx.line_suffix[suggestion.replace :])
