"""The path of one keystroke: document -> context -> prompt -> model -> post-processing -> suggestion.

`Completer.complete` is shared by the LSP handlers and `midline complete`; it answers a `Completion`: the
suggestion, and the generation and trace of the model call, if there was one. Its prompt, sized to the model's
context, comes from `prompt.PromptBuilder` (`Completer.prompts`). Around the model call it
adds what makes completion feel instant: an optional debounce for automatic triggers, typing-through (the user
types what is shown: answer with the rest, no model call), a cache keyed by the prompt, and
cancellation (a cancelled or superseded request stops its generation).

An explicit request (and an automatic one while the model is idle, per `automaticCandidates`) gets several
suggestions, for the editor to cycle through: the model's candidates from one batched pass, best first by mean
log-probability, each post-processed; those dropped there or that repeat the text after the cursor are left out,
and duplicates merge into the better-ranked one. A backend without batched candidates (a remote one) gives one.
With a learnt ranker (the `ranker` setting, ranker.py) the suggestions are ordered by predicted acceptance instead,
and those under the ranker's floor for the position kind are hidden (in place of the model's confidence floor).
With an attribution index (the `attribution.index` setting, attribution.py), a suggestion that repeats a long span
of the model's training data verbatim is hidden, as is one with a high security finding (security.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import OrderedDict
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, TypedDict

from midline.model.backend import Backend, EncodedPrompt, Generation
from midline.model.remote import RemoteError

from . import attribution, security
from . import ranker as ranking
from .config import Config, CurrentConfig, Settings
from .context import CompletionContext, Hole
from .documents import Document
from .postprocess import Suggestion, block_complete, cut_unsure_lines, kept_end, postprocess, repeats_suffix
from .prompt import Prompt, PromptBuilder
from .retrieval import RetrievalIndex
from .symbols import SymbolIndex

log = logging.getLogger(__name__)


# Candidates after the first (greedy) one are sampled: from this distribution, with this seed unless `seed` is set
# (the same prompt gives the same candidates).
CANDIDATE_TEMPERATURE = 0.8
CANDIDATE_TOP_P = 0.95
CANDIDATE_SEED = 0


@dataclass
class _Shown:
    """The last suggestions given for a document, the text around the cursor they were made for, and how many
    candidates were asked for."""

    before: str
    after: str
    suggestions: list[Suggestion]
    asked: int


@dataclass
class Trace:
    """What happened to the last request that reached the model (for "why no suggestion?")."""

    line_prefix: str = ""
    hole: str = ""
    raw: str = ""  # the model's text before post-processing
    finish_reason: str = ""
    shown: str | None = None  # what post-processing kept
    hidden: str = ""  # why what post-processing kept is not shown: a security finding
    candidates: int = 1  # answers the model wrote (several: sampled in one batched pass); raw is the first shown's
    others: list[str] = field(default_factory=list)  # the suggestions after the first, in order


@dataclass
class Completion:
    """What one request answered: the suggestions, best first, and the model call behind the first (None where
    there was none: completion off, no hole, typed through, a cached prompt, superseded while debouncing)."""

    suggestions: list[Suggestion] = field(default_factory=list)
    generation: Generation | None = None
    trace: Trace | None = None
    prompt: Prompt | None = None  # the prompt it answers (None where there was none: typed through, no hole, off)
    # each suggestion's features (ranker.features), where a ranker or the outcome record wants them, else empty
    features: list[dict] = field(default_factory=list)
    typed_through: bool = False  # the rest of the document's shown suggestion, whose start the user typed
    # the first suggestion's `shown_logprob` (what the confidence floor judged); nan without a model call or
    # log-probabilities
    confidence: float = math.nan

    @property
    def suggestion(self) -> Suggestion | None:
        """The suggestion shown first, or None."""
        return self.suggestions[0] if self.suggestions else None


@dataclass
class Stats:
    """Counters for logs and benchmarks."""

    requests: int = 0
    model_calls: int = 0
    cache_hits: int = 0
    typed_through: int = 0
    cancelled: int = 0
    timeouts: int = 0
    low_confidence: int = 0  # answers with nothing shown where one was under the confidence floor
    tails_cut: int = 0  # suggestions whose unsure last lines were cut
    insecure: int = 0  # suggestions hidden for a high-severity security finding (security.py)
    attributed: int = 0  # suggestions hidden for repeating a long span of the training data (attribution.py)
    last_latency_ms: float = 0.0


class _Limits(TypedDict):
    """When a generation stops: the arguments `Backend.generate` and `Engine.candidates` share."""

    max_new_tokens: int
    should_stop: Callable[[str], bool]
    cancel: threading.Event
    deadline: float


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
        folders: Callable[[], Iterable[str | Path]] | None = None,
        retrieval: RetrievalIndex | None = None,
        report: Callable[[str], None] = log.error,
    ) -> None:
        self.engine = engine
        self.report = report  # says once that the ranker file cannot be used
        self.settings = Settings.of(config)  # the server's holder, shared with its other components
        self.executor = executor  # one worker: the model runs one generation at a time
        self.prompts = PromptBuilder(
            engine, self.settings, root=root, folders=folders, symbols=symbols, retrieval=retrieval
        )
        self.stats = Stats()
        self.trace = Trace()
        self._cache: OrderedDict[tuple, tuple[tuple[Suggestion, ...], tuple[dict, ...]]] = OrderedDict()
        self._ranker: tuple[tuple, ranking.Ranker | None] = ((), None)  # (path, mtime, size) -> the loaded ranker
        self.ranker_error: str | None = None
        # (path, mtime, size) -> the loaded attribution index
        self._attribution: tuple[tuple, attribution.AttributionIndex | None] = ((), None)
        self.attribution_error: str | None = None
        self._shown: dict[str, _Shown] = {}
        self._latest: dict[str, int] = {}  # uri -> id of its newest request
        self._running: dict[str, threading.Event] = {}  # uri -> cancel flag of its generation

    async def complete(self, doc: Document, offset: int, *, automatic: bool = False) -> Completion:
        """The suggestion for the cursor at `offset` in `doc` (or None), with its generation and trace."""
        started = time.perf_counter()
        self.stats.requests += 1
        request = self._latest[doc.uri] = self._latest.get(doc.uri, 0) + 1
        if not self.enabled(doc):
            return Completion()
        asked = self._asked(automatic)
        if rest := self._type_through(doc, offset, asked):
            self.stats.typed_through += 1
            return Completion(rest, typed_through=True)
        if automatic and self.config.debounce_ms:
            await asyncio.sleep(self.config.debounce_ms / 1000)
            if self._latest.get(doc.uri) != request:  # superseded while waiting
                return Completion()

        built = self.prompts.build(doc, offset)
        if built is None:  # no hole at the cursor
            return Completion()
        ctx, prompt = built.context, built.encoded
        generation: Generation | None = None
        trace: Trace | None = None
        confidence = math.nan
        config = self.config
        sampling = (config.temperature, config.top_p, config.seed)
        ranker = self.ranker()
        ranked_by = self._ranker[0] if ranker is not None else None
        checked_by = self._attribution[0] if self.attribution_index() is not None else None
        key = (tuple(prompt), ctx.hole, ctx.block, config.max_lines, *sampling, asked, ranked_by,
               config.outcomes.record, checked_by)
        if key in self._cache:
            self.stats.cache_hits += 1
            self._cache.move_to_end(key)
            cached, cached_features = self._cache[key]
            suggestions, features = list(cached), list(cached_features)
        else:
            finished, generation, suggestions, features, confidence = await self._generate(
                doc.uri, ctx, prompt, asked, ranker
            )
            trace = self.trace
            if finished:
                self._remember(key, suggestions, features)
        if suggestions:
            self._shown[doc.uri] = _Shown(doc.text[:offset], doc.text[offset:], suggestions, asked)
        self.stats.last_latency_ms = (time.perf_counter() - started) * 1000
        return Completion(suggestions, generation, trace, prompt=built, features=features, confidence=confidence)

    def enabled(self, doc: Document) -> bool:
        """Whether to complete in `doc`'s language: the `enable` setting, else the model's own languages."""
        return self.config.enabled_for(doc.language_id, self.engine.languages)

    def ranker(self) -> ranking.Ranker | None:
        """The `ranker` setting's ranker, loaded again when its file changes; None when unset or unusable (then the
        error is reported once and suggestions are ranked by the model's log-probability)."""
        path = self.config.ranker
        if path is None:
            self.ranker_error = None
            return None
        try:
            stat = Path(path).expanduser().stat()
            key: tuple = (path, stat.st_mtime_ns, stat.st_size)
        except OSError:
            key = (path,)
        if key != self._ranker[0]:
            try:
                self._ranker, self.ranker_error = (key, ranking.load(path)), None
            except ranking.RankerError as exc:
                self._ranker, self.ranker_error = (key, None), str(exc)
                self.report(f"midline: {exc}; ranking by the model's log-probability")
        return self._ranker[1]

    def attribution_index(self) -> attribution.AttributionIndex | None:
        """The `attribution.index` setting's index, loaded again when its header changes; None when unset or unusable
        (then the error is reported once and suggestions are not checked)."""
        path = self.config.attribution.index
        if path is None:
            self.attribution_error = None
            return None
        try:
            stat = (Path(path).expanduser() / attribution.HEADER).stat()
            key: tuple = (path, stat.st_mtime_ns, stat.st_size)
        except OSError:
            key = (path,)
        if key != self._attribution[0]:
            try:
                self._attribution, self.attribution_error = (key, attribution.AttributionIndex.load(path)), None
            except attribution.AttributionError as exc:
                self._attribution, self.attribution_error = (key, None), str(exc)
                self.report(f"midline: {exc}; suggestions are not checked against the training data")
        return self._attribution[1]

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

    def _asked(self, automatic: bool) -> int:
        """Candidates to ask for: `candidates` for an explicit request; `automaticCandidates` for an automatic one
        while no other completion is generating (the model is idle), else one."""
        if not automatic:
            return self.config.candidates
        return 1 if self.generating else self.config.automatic_candidates

    def _type_through(self, doc: Document, offset: int, asked: int) -> list[Suggestion]:
        """The rest of each shown suggestion the user has typed the first characters of, in order (none where fewer
        candidates were asked for than this request asks for: the user wants more)."""
        shown, text = self._shown.get(doc.uri), doc.text
        # (Compared in place: no copy of a large document's text per request.)
        if shown is None or shown.asked < asked:
            return []
        if len(text) - offset != len(shown.after) or not text.endswith(shown.after):
            return []
        if offset < len(shown.before) or not text.startswith(shown.before):
            return []
        typed = text[len(shown.before) : offset]
        if not typed:
            return []
        rests = (Suggestion(s.text[len(typed) :], s.replace) for s in shown.suggestions if s.text.startswith(typed))
        return list(dict.fromkeys(rest for rest in rests if rest.text))

    async def _generate(
        self, uri: str, ctx: CompletionContext, prompt: EncodedPrompt, asked: int, ranker: ranking.Ranker | None
    ) -> tuple[bool, Generation, list[Suggestion], list[dict], float]:
        """Generate and post-process off the event loop; a newer request for the same document stops this one.

        Returns whether the generation finished (a cancelled or timed-out one is not cached), the generation behind
        the first suggestion (the best-ranked one where none is kept), the suggestions, best first, their features
        (where a ranker or the outcome record wants them), and the first suggestion's `shown_logprob` (nan: none).
        The confidence floor judges each answer after post-processing, on the tokens that write what is shown.
        """
        if (previous := self._running.get(uri)) is not None:
            previous.set()
        cancel = self._running[uri] = threading.Event()
        config = self.config
        max_lines = config.max_lines
        # (A ranker's floor replaces the model's; a floor the user set stays.)
        floor = config.min_mean_logprob
        if ranker is None:
            floor = _floor(floor, self.engine, "min_mean_logprob", ctx.position)
        described = ranker is not None or config.outcomes.record
        line_floor = _floor(config.min_line_logprob, self.engine, "min_line_logprob", ctx.position)

        hidden: list[str] = []  # why run() hid the post-processed suggestion
        means: dict[Suggestion, float] = {}  # each kept suggestion's shown_logprob (its best-ranked answer's)
        under_floor: list[float] = []  # the shown means of the answers hidden under the floor
        tails_cut: list[bool] = []

        def keep(generation: Generation) -> tuple[Suggestion, float] | None:
            """What post-processing keeps of one answer and its `shown_logprob`; None where post-processing drops
            it (its syntax gate, repeated text) or that mean is under the confidence floor."""
            text, logprobs = generation.text, generation.token_logprobs
            ends = self._token_ends(generation) if logprobs else []  # (none from some remote backends)
            # (Only a multi-line hole keeps more than a line.)
            if line_floor is not None and ctx.hole is Hole.MULTI_LINE and logprobs:
                text = cut_unsure_lines(text, ends, logprobs, line_floor)
                tails_cut.append(text != generation.text)
            suggestion = postprocess(text, ctx, max_lines)
            if suggestion is None:
                return None
            mean = shown_logprob(generation, ends, suggestion.text)
            if floor is not None and mean < floor:  # nan (no log-probabilities) is never below
                under_floor.append(mean)
                return None
            return suggestion, mean

        def secure(suggestion: Suggestion) -> bool:
            """Whether `suggestion` has no high security finding (or the scan is off for completions)."""
            if config.security.completions and (finding := _insecure(suggestion, ctx)):
                self.stats.insecure += 1
                hidden.append(f"insecure: {finding}")
                return False
            return True

        index = self._attribution[1] if self.config.attribution.index is not None else None

        def original(suggestion: Suggestion) -> bool:
            """Whether `suggestion` repeats no long span of the training data verbatim (or no index is set)."""
            if index is not None and (match := index.match(suggestion.text)):
                self.stats.attributed += 1
                hidden.append(f"attribution: {match.describe()}")
                return False
            return True

        def rank(kept: list[tuple[Suggestion, Generation, dict]]) -> list[tuple[Suggestion, Generation, dict]]:
            """`kept` by the ranker's predicted acceptance, best first, without those under its floor."""
            assert ranker is not None
            scored = sorted(((ranker.predict(f, ctx), i) for i, (_, _, f) in enumerate(kept)), reverse=True)
            least = ranker.floor_for(ctx.position)
            shown = [kept[i] for p, i in scored if p >= least]
            if kept and not shown:
                self.stats.low_confidence += 1
                hidden.append(f"ranker: predicted acceptance {scored[0][0]:.3f} under its floor {least:.3f}")
            return shown

        def run() -> tuple[list[Generation], list[tuple[Suggestion, Generation, dict]]]:
            generations = self._answers(prompt, asked, ctx, cancel)
            if any(g.finish_reason in ("cancelled", "timeout") for g in generations):
                return generations, []
            kept: dict[Suggestion, Generation] = {}  # in rank order; a duplicate merges into the better-ranked one
            for generation in generations:
                if (answer := keep(generation)) is None:
                    continue
                suggestion, mean = answer
                means.setdefault(suggestion, mean)
                if suggestion in kept or repeats_suffix(suggestion, ctx):
                    continue
                # (scanned once per distinct suggestion, after the cheaper filters)
                if original(suggestion) and secure(suggestion):
                    kept[suggestion] = generation
            if under_floor and not kept:
                self.stats.low_confidence += 1
                hidden.append(f"confidence: the shown tokens' mean log-probability {max(under_floor):.3f} is under "
                              f"the floor {floor:.3f}")
            self.stats.tails_cut += any(tails_cut)
            order = {id(g): i for i, g in enumerate(generations)}  # the model's rank of each answer
            ranked = [(s, g, ranking.features(s, g, ctx, order[id(g)]) if described else {}) for s, g in kept.items()]
            return generations, rank(ranked) if ranker is not None else ranked

        self.stats.model_calls += 1
        try:
            generations, kept = await asyncio.get_running_loop().run_in_executor(self.executor, run)
        except asyncio.CancelledError:  # $/cancelRequest, or shutdown: stop the generation too
            cancel.set()
            self.stats.cancelled += 1
            raise
        finally:
            if self._running.get(uri) is cancel:
                del self._running[uri]
        suggestions = [suggestion for suggestion, _, _ in kept]
        features = [shown for _, _, shown in kept] if described else []
        generation = kept[0][1] if kept else generations[0]
        log.debug(
            "generated %d tokens in %.0f ms (%s, prompt %d tokens; %d of %d answers kept)",
            len(generation.token_ids), generation.elapsed_s * 1000, generation.finish_reason, generation.prompt_tokens,
            len(kept), len(generations),
        )
        shown = suggestions[0].text if suggestions else None
        self.trace = Trace(
            ctx.line_prefix, ctx.hole.value, generation.text, generation.finish_reason, shown,
            hidden=hidden[0] if hidden else "", candidates=len(generations), others=[s.text for s in suggestions[1:]],
        )
        halted = next((g.finish_reason for g in generations if g.finish_reason in ("cancelled", "timeout")), None)
        if halted == "cancelled":
            self.stats.cancelled += 1
            return False, generation, [], [], math.nan
        if halted == "timeout":
            self.stats.timeouts += 1
            log.warning("generation passed the %d ms time limit; answering with nothing", config.timeout_ms)
            return False, generation, [], [], math.nan
        return True, generation, suggestions, features, means[suggestions[0]] if suggestions else math.nan

    def _answers(
        self, prompt: EncodedPrompt, asked: int, ctx: CompletionContext, cancel: threading.Event
    ) -> list[Generation]:
        """The model's answers, best first: one (greedy, or sampled at `temperature`), or for several `asked` a batch
        in one pass, ranked by mean log-probability: the greedy answer and samples (`CANDIDATE_TEMPERATURE`), or
        all sampled at `temperature`. A backend without batched candidates (a remote one) gives one."""
        config = self.config
        limits: _Limits = {
            "max_new_tokens": config.max_new_tokens,
            "should_stop": lambda text: block_complete(text, ctx, config.max_lines),
            "cancel": cancel,
            "deadline": time.monotonic() + config.timeout_ms / 1000,
        }
        candidates = getattr(self.engine, "candidates", None)  # the local Engine's; not part of the Backend protocol
        if asked == 1 or candidates is None:
            sampled = self.engine.generate(
                prompt, temperature=config.temperature, top_p=config.top_p, seed=config.seed, **limits
            )
            return [sampled]
        greedy = config.temperature == 0
        return candidates(
            prompt,
            asked,
            temperature=CANDIDATE_TEMPERATURE if greedy else config.temperature,
            top_p=CANDIDATE_TOP_P if greedy else config.top_p,
            seed=CANDIDATE_SEED if config.seed is None else config.seed,
            greedy_first=greedy,
            **limits,
        )

    def _token_ends(self, generation: Generation) -> list[int]:
        """Where each generated token ends in the text; none where the backend can't tell (a served model without a
        local tokenizer: its log-probabilities are then judged all together)."""
        try:
            return self.engine.token_ends(generation.token_ids)
        except RemoteError:
            return []

    def _remember(self, key: tuple, suggestions: list[Suggestion], features: list[dict]) -> None:
        if self.config.cache_size <= 0:
            return
        self._cache[key] = (tuple(suggestions), tuple(features))
        while len(self._cache) > self.config.cache_size:
            self._cache.popitem(last=False)


def shown_logprob(generation: Generation, ends: list[int], shown: str) -> float:
    """The mean log-probability of the generated tokens that write the suggestion text `shown`: those up to the
    token that writes the last character of the part of the model's text that post-processing kept (`kept_end`:
    white space before it included, the text cut after it not), `ends` being where each token ends in that text
    (`Backend.token_ends`). All tokens where `shown` is not made of the model's first non-blank characters or
    `ends` is empty (the backend can't place its tokens); the generation's own mean without per-token
    log-probabilities (nan from a remote backend without them, never under a floor)."""
    logprobs = generation.token_logprobs
    if not logprobs:
        return generation.mean_logprob
    end = kept_end(generation.text, shown)
    count = len(logprobs)
    if end is not None:
        count = next((i + 1 for i, token_end in enumerate(ends) if token_end >= end), count)
    return sum(logprobs[:count]) / count


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
