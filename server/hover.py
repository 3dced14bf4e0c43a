"""Hover on a function or class name: its signature, and a one-paragraph explanation once there is one.

Hover never waits for the model. `hover_target` (pure) finds the definition the name at the cursor
belongs to (where it is defined, or a definition of that name in the same file); the answer is its
signature plus the cached explanation if there is one. Otherwise `Explainer` computes it in the
background, one definition at a time, only while the server is idle: no completion generating and none
asked for in the last `hover.idleMs`. A completion request stops a background explanation at once (it
is retried later). Explanations are shared with the Explain action's cache.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import tree_sitter

from midline.model import tasks
from midline.model.syntax import byte_offset, char_offset, header_colon, line_start, node_name, node_text, unwrap

from .actions import explain_ask
from .assistant import Ask, Assistant, Cancelled, Failed
from .documents import Document
from .symbols import SymbolIndex, definitions, enclosing_scopes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HoverTarget:
    """A hovered function or class."""

    name: str
    signature: str  # its header: decorators and `def f(x) -> int:`, `fn f(x: u8) -> u8`, ...
    code: str | None  # its whole source (None for a definition known only from the workspace index)
    language: str
    path: str
    start: int  # the hovered name, as string indexes
    end: int


def hover_target(doc: Document, offset: int, index: SymbolIndex | None = None) -> HoverTarget | None:
    """The definition of the function or class name at `offset`: the one it names, else one of that
    name in this file, else one in the workspace index (signature only). None elsewhere."""
    tree = doc.tree
    if tree is None:
        return None
    byte = byte_offset(doc.text, offset)
    leaf = tree.root_node.descendant_for_byte_range(byte, byte)
    if leaf is not None and not leaf.type.endswith("identifier") and byte > 0:
        leaf = tree.root_node.descendant_for_byte_range(byte - 1, byte - 1)  # the cursor just after a name
    if leaf is None or not leaf.type.endswith("identifier"):
        return None
    name = node_text(leaf)
    start = char_offset(doc.source, leaf.start_byte)
    end = start + len(name)
    node = _defining(tree, leaf, doc.language)
    if node is None:
        node = _defined_here(doc, tree, name)
    if node is not None:
        code = _source(doc, node)
        return HoverTarget(name, header(node, doc.source, doc.language), code, doc.language, doc.path, start, end)
    if index is not None:
        for d in index.lookup([name], exclude_path=doc.path):
            if d.kind in ("function", "method", "class"):
                return HoverTarget(name, d.signature, None, doc.language, d.path, start, end)
    return None


def _defining(tree: tree_sitter.Tree, leaf: tree_sitter.Node, language: str) -> tree_sitter.Node | None:
    """The definition (or its wrapper) whose name `leaf` is."""
    scopes = enclosing_scopes(tree, leaf.end_byte, language)
    for node in reversed(scopes):
        name = unwrap(node, language, fields_only=True).child_by_field_name("name")
        if name is not None and name.start_byte == leaf.start_byte:
            return node
    return None


def _defined_here(doc: Document, tree: tree_sitter.Tree, name: str) -> tree_sitter.Node | None:
    """A function or class called `name` in this file (`tree`, its parse; its wrapper, if decorated)."""
    for d in definitions(tree, doc.source, doc.language):
        if d.name != name or d.kind not in ("function", "method", "class"):
            continue
        for row in range(d.line, min(d.line + 32, doc.line_count())):  # from its decorators down to its name
            line = doc._line(row)
            if not line.strip():
                continue
            probe = byte_offset(doc.text, doc.line_start(row) + len(line) - len(line.lstrip())) + 1
            scopes = enclosing_scopes(tree, probe, doc.language)
            if scopes and node_name(scopes[-1], doc.language, fields_only=True) == name:
                return scopes[-1]
    return None


def _source(doc: Document, node: tree_sitter.Node) -> str:
    start = line_start(doc.source, node.start_byte)
    return doc.source[start : node.end_byte].decode("utf-8", "replace")


def header(node: tree_sitter.Node, source: bytes, language: str) -> str:
    """A definition's text up to its body: decorators and `def f(x):` / `class C(B):` / `fn f() -> T`."""
    inner = unwrap(node, language, fields_only=True)
    body = inner.child_by_field_name("body")
    end = inner.end_byte
    if body is not None:
        end = body.start_byte
        colon = header_colon(inner) if language == "python" else None
        end = colon.start_byte if colon is not None else end
    text = source[node.start_byte : end].decode("utf-8", "replace").rstrip()
    return text + (":" if language == "python" and body is not None else "")


def render(target: HoverTarget, explanation: str | None) -> str:
    """The hover's markdown: the signature in a code block, then the explanation's first paragraph."""
    out = f"```{target.language}\n{target.signature}\n```"
    if explanation:
        out += "\n\n" + tasks.summary(explanation)
    return out


class Explainer:
    """Explains hovered definitions in the background while the server is idle."""

    def __init__(
        self,
        assistant: Assistant,
        busy: Callable[[], bool],
        idle_ms: Callable[[], int],
        shown: Callable[[str], str] = str,
        max_queued: int = 8,
    ) -> None:
        self.assistant = assistant
        self.shown = shown  # a path as the model sees it (as the Explain action shows it: they share the cache)
        self.busy = busy  # a completion is generating
        self.idle_ms = idle_ms
        self.max_queued = max_queued
        self.computed = 0
        self._queue: OrderedDict[str, Ask] = OrderedDict()
        self._task: asyncio.Task | None = None
        self._cancel: threading.Event | None = None
        self._last_activity = 0.0

    def lookup(self, target: HoverTarget) -> str | None:
        """The cached explanation of `target`, if any."""
        if target.code is None:
            return None
        return self.assistant.cached(self._ask(target, target.code))

    def request(self, target: HoverTarget) -> None:
        """Explain `target` in the background (the newest request first)."""
        if target.code is None:
            return
        ask = self._ask(target, target.code)
        if self.assistant.cached(ask) is not None:
            return
        self._queue[ask.key] = ask
        self._queue.move_to_end(ask.key)
        while len(self._queue) > self.max_queued:
            self._queue.popitem(last=False)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._work())

    def _ask(self, target: HoverTarget, code: str) -> Ask:
        return explain_ask(code, target.language, self.shown(target.path))

    def interrupt(self) -> None:
        """A completion was asked for: stop the background explanation now, and wait for quiet."""
        self._last_activity = time.monotonic()
        if self._cancel is not None:
            self._cancel.set()

    @property
    def pending(self) -> int:
        return len(self._queue)

    def stop(self) -> None:
        self._queue.clear()
        if self._cancel is not None:
            self._cancel.set()
        if self._task is not None:
            self._task.cancel()

    async def _work(self) -> None:
        while self._queue:
            await self._wait_until_idle()
            if not self._queue:
                break
            key, ask = self._queue.popitem(last=True)
            self._cancel = threading.Event()
            try:
                await self.assistant.run(ask, self._cancel)
                self.computed += 1
            except Cancelled:  # a completion came first: try again when idle
                self._queue[key] = ask
            except Failed as exc:  # the model or backend failed: completions report that once; no popup per hover
                log.warning("background hover explanation: %s", exc)
            except Exception:  # never let a background job take the server down
                log.exception("background hover explanation failed")
            finally:
                self._cancel = None

    async def _wait_until_idle(self) -> None:
        while True:
            quiet = time.monotonic() - self._last_activity >= self.idle_ms() / 1000
            if quiet and not self.busy():
                return
            await asyncio.sleep(max(0.02, self.idle_ms() / 4000))
