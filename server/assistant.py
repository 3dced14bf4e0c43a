"""Asking a model to do an instruction task (model/tasks.py): explain, fix, write tests, code from a comment.

An `Ask` holds one task in both shapes: a FIM prompt for the completion model and chat messages for
an instruction model. `Assistant.run` uses the instruction model when `actions.model` names one (loaded
on first use), else the completion model; it runs on the server's model thread, stops on cancellation
and at `actions.timeoutMs`, and caches results by the task's inputs (a node's content hash). A model that
fails (a remote backend down) raises `Failed`, whose message the caller shows once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Awaitable, Callable

from midline.model.backend import Backend, ModelLoadError
from midline.model.fim import FimPrompt
from midline.model.remote import RemoteError

from .config import Config, CurrentConfig, Settings

if TYPE_CHECKING:  # torch: imported when an instruction model is loaded, not with the server
    from midline.model.instruct import InstructModel

log = logging.getLogger(__name__)


# Candidates for an action (`Assistant.candidates`) are sampled as completion's are (server/completion.py).
CANDIDATE_TEMPERATURE = 0.8
CANDIDATE_TOP_P = 0.95
CANDIDATE_SEED = 0
_SEPARATOR = "\0"  # between cached candidates


class Cancelled(Exception):
    """The task was cancelled (the request, or its progress, was cancelled by the client)."""


def _failure(task: str, exc: Exception) -> str:
    """The sentence shown when the model fails: a backend's own message says what to check; anything
    else is a bug or a broken model, whose details go to the log only."""
    if isinstance(exc, (RemoteError, ModelLoadError)):
        return f"{task} failed: {exc}"
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":  # torch's, CPU or GPU
        return f"{task} failed: the model ran out of memory; select less code, or use a smaller model."
    log.error("%s failed: %s", task, type(exc).__name__)
    log.debug("%s failed", task, exc_info=exc)
    return f"{task} failed: the model raised {type(exc).__name__}; the server log has the details."


class Failed(Exception):
    """The model failed (a remote backend down or answering with an error); the message says so, for the user."""


@dataclass(frozen=True)
class Ask:
    """One task in both shapes, and how to read each shape's answer."""

    task: str  # "explain" | "fix" | "tests" | "fromComment" (cache key, logs)
    key: str  # content hash of the task's inputs
    prompt: FimPrompt
    parse: Callable[[str], str]  # completion model's text -> result
    messages: list[dict[str, str]]
    parse_chat: Callable[[str], str]  # instruction model's answer -> result
    stop: Callable[[str], bool] | None = None  # completion model: the text so far is complete
    max_new_tokens: int | None = None  # None: actions.maxNewTokens


def content_hash(*parts: str) -> str:
    """A stable hash of the task's inputs (the node's code, its language, diagnostics...)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()[:32]


@dataclass
class AssistantStats:
    calls: int = 0  # model generations
    cache_hits: int = 0
    cancelled: int = 0
    timeouts: int = 0
    last_raw: str = ""  # the model's text for the last task, before parsing
    last_finish: str = ""


class Assistant:
    """Runs tasks on the completion model or the instruction model, one at a time on the model thread."""

    config = CurrentConfig()  # the current settings, read from `settings` each time

    def __init__(
        self,
        engine: Callable[[], Awaitable[Backend | None]],
        config: Config | Settings,
        executor: Executor,
        report: Callable[[str], None] = log.error,
    ) -> None:
        self._engine = engine
        self.settings = Settings.of(config)
        self.executor = executor
        self.report = report
        self.stats = AssistantStats()
        self._cache: OrderedDict[tuple[str, str, str], str] = OrderedDict()
        self._instruct: tuple[str, InstructModel | None] | None = None  # (path, model or None if it failed)
        self._running: set[threading.Event] = set()

    @property
    def generating(self) -> bool:
        return bool(self._running)

    def model_id(self) -> str:
        return f"instruct:{self.config.actions.model}" if self.config.actions.model else "fim"

    def cached(self, ask: Ask) -> str | None:
        key = (ask.task, ask.key, self.model_id())
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        return None

    def remember(self, ask: Ask, result: str) -> None:
        if self.config.actions.cache_size <= 0:
            return
        self._cache[(ask.task, ask.key, self.model_id())] = result
        while len(self._cache) > self.config.actions.cache_size:
            self._cache.popitem(last=False)

    async def run(self, ask: Ask, cancel: threading.Event | None = None) -> str | None:
        """The task's result (cached by its inputs); None if there is no model or it timed out.

        Raises `Cancelled` when `cancel` is set, and stops the generation when the awaiting task is cancelled;
        raises `Failed` when the model fails (reported by the caller, not here: one message per failure).
        """
        if (hit := self.cached(ask)) is not None:
            self.stats.cache_hits += 1
            return hit
        cancel = cancel or threading.Event()
        instruct = await self._instruct_model()
        engine = None if instruct is not None else await self._engine()
        if instruct is None and engine is None:
            return None
        config = self.config
        max_new_tokens = ask.max_new_tokens or config.actions.max_new_tokens
        deadline = time.monotonic() + config.actions.timeout_ms / 1000
        mode = None if config.fim_mode == "auto" else config.fim_mode

        def generate() -> tuple[str, str]:
            if instruct is not None:
                reply = instruct.generate(ask.messages, max_new_tokens=max_new_tokens, cancel=cancel, deadline=deadline)
                return reply.text, reply.finish_reason
            assert engine is not None  # run returned before this without either model
            generation = engine.generate(
                engine.encode(ask.prompt, mode),
                max_new_tokens=max_new_tokens,
                should_stop=ask.stop,
                cancel=cancel,
                deadline=deadline,
            )
            return generation.text, generation.finish_reason

        self._running.add(cancel)
        self.stats.calls += 1
        try:
            raw, finish = await asyncio.get_running_loop().run_in_executor(self.executor, generate)
        except asyncio.CancelledError:  # $/cancelRequest: stop the generation too
            cancel.set()
            self.stats.cancelled += 1
            raise
        except Exception as exc:  # a remote backend down, a model failing: the caller says so
            raise Failed(_failure(ask.task, exc)) from exc
        finally:
            self._running.discard(cancel)
        self.stats.last_raw, self.stats.last_finish = raw, finish
        log.debug("%s: %d chars (%s)", ask.task, len(raw), finish)
        if finish == "cancelled":
            self.stats.cancelled += 1
            raise Cancelled(ask.task)
        if finish == "timeout":
            self.stats.timeouts += 1
            return None
        result = (ask.parse_chat if instruct is not None else ask.parse)(raw)
        self.remember(ask, result)
        return result

    async def candidates(self, ask: Ask, n: int, cancel: threading.Event | None = None) -> list[str]:
        """Up to `n` distinct results of the task, best first: the local engine's batched candidates
        (`Engine.candidates`: the greedy answer and samples, in one pass), cached by the task's inputs and `n`; one
        result (`run`) from an instruction model, a backend without batched candidates, or for `n` 1. Raises as `run`
        does."""
        instruct = await self._instruct_model()
        engine = None if instruct is not None else await self._engine()
        batched = getattr(engine, "candidates", None)
        if n <= 1 or batched is None:
            result = await self.run(ask, cancel)
            return [result] if result else []
        many = Ask(ask.task, f"{ask.key}:{n}", ask.prompt, ask.parse, ask.messages, ask.parse_chat, ask.stop,
                   ask.max_new_tokens)
        if (hit := self.cached(many)) is not None:
            self.stats.cache_hits += 1
            return hit.split(_SEPARATOR) if hit else []
        cancel = cancel or threading.Event()
        config = self.config
        max_new_tokens = ask.max_new_tokens or config.actions.max_new_tokens
        deadline = time.monotonic() + config.actions.timeout_ms / 1000
        mode = None if config.fim_mode == "auto" else config.fim_mode

        def generate() -> list[tuple[str, str]]:
            assert engine is not None and batched is not None
            found = batched(engine.encode(ask.prompt, mode), n, max_new_tokens=max_new_tokens,
                            temperature=CANDIDATE_TEMPERATURE, top_p=CANDIDATE_TOP_P, seed=CANDIDATE_SEED,
                            should_stop=ask.stop, cancel=cancel, deadline=deadline, greedy_first=True)
            return [(g.text, g.finish_reason) for g in found]

        self._running.add(cancel)
        self.stats.calls += 1
        try:
            answers = await asyncio.get_running_loop().run_in_executor(self.executor, generate)
        except asyncio.CancelledError:
            cancel.set()
            self.stats.cancelled += 1
            raise
        except Exception as exc:
            raise Failed(_failure(ask.task, exc)) from exc
        finally:
            self._running.discard(cancel)
        if cancel.is_set() or any(finish == "cancelled" for _, finish in answers):
            self.stats.cancelled += 1
            raise Cancelled(ask.task)
        if any(finish == "timeout" for _, finish in answers):
            self.stats.timeouts += 1
        parsed = [ask.parse(text) for text, finish in answers if finish != "timeout"]
        results = list(dict.fromkeys(r for r in parsed if r.strip()))
        self.remember(many, _SEPARATOR.join(results))
        return results

    async def _instruct_model(self) -> InstructModel | None:
        """The configured instruction model, loaded once per path; None without one (or if it fails to load)."""
        path = self.config.actions.model
        if not path:
            return None
        if self._instruct is not None and self._instruct[0] == path:
            return self._instruct[1]
        config = self.config

        def load() -> InstructModel:
            from midline.model.instruct import InstructModel

            return InstructModel.load(path, device=config.device, trust_remote_code=config.trust_remote_code)

        try:
            model = await asyncio.get_running_loop().run_in_executor(self.executor, load)
        except (ModelLoadError, OSError, ValueError) as exc:
            self.report(f"midline: cannot load the instruction model at {path}: {exc}; using the completion model")
            model = None
        self._instruct = (path, model)
        return model


@dataclass
class Progress:
    """What a long task tells the client: `report(message)` between steps; `cancel` is set when the
    client cancels the progress."""

    cancel: threading.Event = field(default_factory=threading.Event)
    report: Callable[[str], None] = lambda message: None
