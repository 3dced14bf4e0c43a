"""A local record of what became of each shown suggestion (opt-in: `outcomes.record`, off by default).

It is the data a ranking or preference model trains on (`midline-train rank`), and it never leaves the machine: one
JSON line per shown answer is appended to `outcomes.file` (default: `outcomes.jsonl` in `data_folder()`). Nothing is
kept or written while the setting is off. Each suggestion's `features` (ranker.py) are kept with it; the prompt
itself only with `outcomes.prompts` (token ids; the preference fine-tune needs them), else its hash alone.

The outcomes, per document (the editor shows one answer at a time: its items, best first):

- shown: an answer with suggestions, from the model or the cache. It gets an id, which its items' command
  (`midline.accepted`, with the id and the item's index) carries; editors run an item's command on accept.
- accepted: that command ran, for the answer or for a typed-through continuation of it. `accepted` is the
  index of the suggestion taken; `typed`, the characters typed through before.
- typed: the completer's typing-through path answered with the rest of it (the user typed its first
  characters: `typed` counts them), and it was not accepted.
- dismissed: it was neither accepted nor typed through.

An answer's fate is decided by the next answer for the same document that does not continue it (a new
suggestion, or an empty answer), or when the document is closed or the server shuts down. The record is
written one decision later (at the document's next decision, or its close or the shutdown), so that an
accept command that reaches the server after the editor's next request still counts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .completion import Completion
from .config import Config, CurrentConfig, Settings
from .documents import Document
from .prompt import Prompt

log = logging.getLogger(__name__)

FILE_NAME = "outcomes.jsonl"
OUTCOMES = ("accepted", "typed", "dismissed")


def data_folder() -> Path:
    """midline's folder for user data: `$XDG_DATA_HOME/midline` where that is set, else the platform's
    (`~/.local/share/midline`; macOS `~/Library/Application Support/midline`; Windows `%LOCALAPPDATA%\\midline`)."""
    if xdg := os.environ.get("XDG_DATA_HOME"):
        return Path(xdg) / "midline"
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local") / "midline"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "midline"
    return Path.home() / ".local" / "share" / "midline"


def prompt_sha256(encoded: Sequence[Any]) -> str:
    """The SHA-256 of a prompt as the model was given it (token ids, or a remote model's rendered text)."""
    return hashlib.sha256(repr(tuple(encoded)).encode("utf-8", "surrogatepass")).hexdigest()


@dataclass
class Shown:
    """One shown answer, until its record is written."""

    id: str
    uri: str
    offset: int  # the cursor's offset it was made for
    suggestions: list[str]  # best first
    latency_ms: float
    prompt_sha256: str
    language: str
    position: str  # the cursor's position kind: mid_line, line_end, new_line
    hole: str
    model: str
    features: list[dict] = field(default_factory=list)  # each suggestion's (ranker.features), where computed
    prompt: list[Any] | None = None  # the prompt as the model was given it, with `outcomes.prompts` only
    shown: float = field(default_factory=time.time)
    showing: list[int] = field(default_factory=list)  # indexes of the suggestions its items show now, in item order
    typed: int = 0  # characters typed through
    outcome: str | None = None
    accepted: int | None = None
    decided: float | None = None

    def record(self) -> dict[str, Any]:
        """The JSON line: the prompt's hash, and the prompt only where `outcomes.prompts` kept it."""
        return {
            "id": self.id, "outcome": self.outcome, "accepted": self.accepted, "typed": self.typed,
            "suggestions": self.suggestions, "shown": round(self.shown, 3), "decided": round(self.decided or 0.0, 3),
            "latency_ms": round(self.latency_ms, 1), "prompt_sha256": self.prompt_sha256, "language": self.language,
            "position": self.position, "hole": self.hole, "model": self.model, "features": self.features,
            **({"prompt": self.prompt} if self.prompt is not None else {}),
        }


class OutcomeLog:
    """The server's record of shown suggestions: what is showing per document, and outcomes once decided."""

    config = CurrentConfig()  # the current settings, read from `settings` each time

    def __init__(self, config: Config | Settings, report: Callable[[str], None] = log.error) -> None:
        self.settings = Settings.of(config)
        self.report = report  # says once that the file cannot be written
        self.counts = dict.fromkeys(OUTCOMES, 0)  # written since the server started
        self.error: str | None = None
        self._showing: dict[str, Shown] = {}  # uri -> its answer whose fate is not decided yet
        self._decided: dict[str, Shown] = {}  # uri -> its answer decided last, not written yet
        self._by_id: dict[str, Shown] = {}

    @property
    def recording(self) -> bool:
        return self.config.outcomes.record

    @property
    def path(self) -> Path:
        """The JSONL file: `outcomes.file`, else `outcomes.jsonl` in `data_folder()`."""
        configured = self.config.outcomes.file
        return Path(configured).expanduser() if configured else data_folder() / FILE_NAME

    def note(self, doc: Document, offset: int, completion: Completion, latency_ms: float, model: str) -> None:
        """`completion`, the answer at `offset` in `doc`: a new answer, a typed-through one, or none."""
        texts = [suggestion.text for suggestion in completion.suggestions]
        if completion.typed_through:
            self.continued(doc, offset, texts)
        elif texts and completion.prompt is not None:
            self.shown(doc, offset, texts, completion.prompt, latency_ms, model, completion.features)
        else:
            self.empty(doc)

    def shown(
        self, doc: Document, offset: int, suggestions: Sequence[str], prompt: Prompt, latency_ms: float, model: str,
        features: Sequence[dict] = (),
    ) -> str | None:
        """A new answer: `suggestions` (best first, with their `features`) at `offset`, made from `prompt` in
        `latency_ms` by `model`; the document's previous answer is decided. Its id, None while not recording."""
        if not self._check():
            return None
        self._decide(doc.uri)
        ctx = prompt.context
        encoded = prompt.encoded
        kept = list(encoded) if self.config.outcomes.prompts else None  # token ids (a remote model's: its texts)
        answer = Shown(uuid.uuid4().hex, doc.uri, offset, list(suggestions), latency_ms, prompt_sha256(encoded),
                       ctx.language, ctx.position, ctx.hole.value, model, list(features), kept)
        answer.showing = list(range(len(answer.suggestions)))
        self._showing[doc.uri] = self._by_id[answer.id] = answer
        return answer.id

    def showing(self, uri: str) -> str | None:
        """The id of the document's answer whose fate is not decided yet (its items' command carries it)."""
        answer = self._showing.get(uri)
        return answer.id if answer is not None else None

    def continued(self, doc: Document, offset: int, rests: Sequence[str]) -> str | None:
        """A typed-through answer (the rests of the document's answer, past what the user typed): its id, or None."""
        answer = self._showing.get(doc.uri) if self._check() else None
        if answer is None or offset < answer.offset:
            return None
        typed = doc.text[answer.offset : offset]
        answer.typed = len(typed)
        whole = [typed + rest for rest in rests]
        answer.showing = [answer.suggestions.index(text) if text in answer.suggestions else -1 for text in whole]
        return answer.id

    def empty(self, doc: Document) -> None:
        """An answer without suggestions: the document's answer is decided."""
        if self._check():
            self._decide(doc.uri)

    def accepted(self, answer_id: str, item: int) -> bool:
        """The editor ran the command of item `item` of answer `answer_id`; False for an unknown (or written) answer."""
        answer = self._by_id.get(answer_id)
        if answer is None or not self._check():
            return False
        suggestion = answer.showing[item] if 0 <= item < len(answer.showing) else -1
        answer.outcome, answer.decided = "accepted", time.time()
        answer.accepted = suggestion if suggestion >= 0 else None
        for slot in (self._showing, self._decided):
            if slot.get(answer.uri) is answer:
                del slot[answer.uri]
        self._write(answer)
        return True

    def close(self, uri: str) -> None:
        """The document was closed: its answers are decided and written."""
        if not self._check():
            return
        self._decide(uri)
        if (last := self._decided.pop(uri, None)) is not None:
            self._write(last)

    def flush(self) -> None:
        """The server shuts down: every answer is decided and written."""
        for uri in {*self._showing, *self._decided}:
            self.close(uri)

    def status(self) -> dict[str, Any]:
        """For `midline.status`: whether it records, where, and the outcomes written since the server started."""
        if not self.recording:
            return {"record": False}
        decided = sum(self.counts.values())
        rate = self.counts["accepted"] / decided if decided else None
        error = {"error": self.error} if self.error else {}
        return {"record": True, "file": str(self.path), **self.counts, "acceptanceRate": rate, **error}

    # -- internals ----------------------------------------------------------------------------

    def _check(self) -> bool:
        """Whether it records now; turned off, it forgets every answer unwritten (nothing is written while off)."""
        if not self.recording and self._by_id:
            self._showing.clear()
            self._decided.clear()
            self._by_id.clear()
        return self.recording

    def _decide(self, uri: str) -> None:
        """The document's showing answer is decided (typed or dismissed); its previous decided one is written."""
        answer = self._showing.pop(uri, None)
        if answer is None:
            return
        answer.outcome, answer.decided = "typed" if answer.typed else "dismissed", time.time()
        if (previous := self._decided.get(uri)) is not None:
            self._write(previous)
        self._decided[uri] = answer

    def _write(self, answer: Shown) -> None:
        self._by_id.pop(answer.id, None)
        if self._decided.get(answer.uri) is answer:
            del self._decided[answer.uri]
        line = json.dumps(answer.record(), ensure_ascii=False) + "\n"
        path = self.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)  # the user's code: theirs alone
            with os.fdopen(fd, "a", encoding="utf-8", errors="surrogatepass") as out:
                out.write(line)
        except OSError as exc:
            error = f"cannot write the outcome record {path}: {exc.strerror or exc}"
            if error != self.error:
                self.report(f"midline: {error}")
            self.error = error
            return
        self.error = None
        self.counts[answer.outcome or "dismissed"] += 1
