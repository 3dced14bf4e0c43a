"""The prompt of one completion: the context sized to the model's room, laid out as a FimPrompt, encoded.

The model's context holds the prompt and the answer, so a prompt gets `max_context - max_new_tokens` tokens
(`room`), or the engine cuts its head. Of that room the layout takes its part first: FIM tokens, the
repository name and the file path, measured in the backend's own token counts and kept per path (`Layout`);
snippets get at most `context.snippetBudget` (a quarter of the room in a short context), their path headers
included; the windows before and after the cursor get the rest, up to `context.budget` (`Budgets`).
`context.build_context` fills those budgets. The prompt built from it is counted once more, whole: a prompt
that still does not fit (snippets from files with longer paths, tokens that merge differently across lines)
is built again with windows smaller by what was over.

Paths are shown to the model as training shows them (`model.fim.shown_path`): relative to the workspace folder that
holds them (the innermost; a snippet from a second folder relative to that one), a file in no folder by its name
alone, never absolute. The repository name shown is the name of the folder holding the file being completed, as
training pairs a repository's name with a path in it, else the root folder's. The builder follows the live folder
list (`folders`: the server passes the code actions' list, which it updates as folders are added and removed).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from midline.model import languages
from midline.model.backend import Backend, EncodedPrompt
from midline.model.fim import FimPrompt, Mode, Snippet, holding_folder, shown_path

from .config import Config, CurrentConfig, Settings
from .context import CompletionContext, Hole, build_context
from .documents import Document
from .retrieval import RetrievalIndex
from .symbols import SymbolIndex

MIN_WINDOWS = 16  # tokens the windows keep however small the room
_REFITS = 2  # builds after the first when a prompt does not fit


@dataclass(frozen=True)
class Layout:
    """Tokens a file's prompts spend besides their windows and snippet texts."""

    frame: int  # FIM tokens (and BOS), the repository name and the file's path
    per_snippet: int  # one snippet's header (separator and path; measured with the file's own path)


@dataclass(frozen=True)
class Budgets:
    """How a request's room is split: tokens for the windows, and for the snippets' texts."""

    windows: int
    snippets: int


@dataclass(frozen=True)
class Prompt:
    """One request's prompt: its context, the FIM prompt laid out from it, that encoded for the backend, and
    its length in tokens (exact for a local model, the backend's estimate for a remote one)."""

    context: CompletionContext
    fim: FimPrompt
    encoded: EncodedPrompt
    tokens: int


class PromptBuilder:
    """Builds one backend's completion prompts for the documents of a workspace."""

    config = CurrentConfig()  # the current settings, read from `settings` each time

    def __init__(
        self,
        engine: Backend,
        config: Config | Settings,
        *,
        root: str | Path | None = None,
        folders: Callable[[], Iterable[str | Path]] | None = None,
        symbols: SymbolIndex | None = None,
        retrieval: RetrievalIndex | None = None,
    ) -> None:
        self.engine = engine
        self.settings = Settings.of(config)
        self.root = Path(root) if root else None
        # The workspace folders now (the root among them); without a list, the root alone.
        self.folders: Callable[[], Iterable[str | Path]] = folders or (lambda: [self.root] if self.root else [])
        self.symbols = symbols
        self.retrieval = retrieval
        self._layout = functools.lru_cache(maxsize=256)(self._measure_layout)

    @property
    def mode(self) -> Mode | None:
        """The FIM layout the settings ask for; None: the format's own."""
        return None if self.config.fim_mode == "auto" else self.config.fim_mode

    @property
    def room(self) -> int:
        """Prompt tokens that leave room for the longest answer in the model's context."""
        return self.engine.max_context - self.config.max_new_tokens

    def build(self, doc: Document, offset: int) -> Prompt | None:
        """The prompt for a completion at `offset` in `doc`, fitted to the room; None where there is no hole."""
        return self._fitted(doc, offset, need_hole=True)

    def window(self, doc: Document, offset: int) -> FimPrompt:
        """The completion prompt at any `offset` (code from a comment: the same windows and extra context)."""
        prompt = self._fitted(doc, offset, need_hole=False)
        assert prompt is not None
        return prompt.fim

    def context(self, doc: Document, offset: int, windows: int | None = None) -> CompletionContext:
        """The context at `offset` in `doc` within this request's budgets (`windows`: a smaller window budget)."""
        ctx_config = self.config.context
        budgets = self.budgets(doc.path)
        return build_context(
            doc,
            offset,
            count_tokens=self.engine.count_tokens,
            budget=budgets.windows if windows is None else min(windows, budgets.windows),
            prefix_share=ctx_config.prefix_share,
            symbols=self.symbols if ctx_config.cross_file else None,
            max_snippets=ctx_config.max_snippets,
            snippet_budget=budgets.snippets,
            retrieval=self.retrieval if ctx_config.retrieval else None,
        )

    def budgets(self, path: str) -> Budgets:
        """The split of the room for a file at `path`: snippets at most a quarter of it, windows the rest."""
        ctx_config = self.config.context
        layout = self.layout(path)
        room = self.room - layout.frame
        snippets = min(ctx_config.snippet_budget, room // 4)
        headers = ctx_config.max_snippets * layout.per_snippet
        return Budgets(max(MIN_WINDOWS, min(ctx_config.budget, room - snippets)), max(0, snippets - headers))

    def layout(self, path: str) -> Layout:
        """What the layout costs in prompts for the file at `path` in the current FIM layout (cached)."""
        return self._layout(self.shown(path), self.repo(path), self.mode)

    def fim_prompt(self, ctx: CompletionContext) -> FimPrompt:
        """`ctx` as the model sees it: paths relative to their folders, its repository, its language's comments."""
        return FimPrompt(
            prefix=ctx.prefix,
            suffix=ctx.suffix,
            path=self.shown(ctx.path),
            snippets=[Snippet(self.shown(s.path), s.text) for s in ctx.snippets],
            repo=self.repo(ctx.path),
            comment=languages.resolve(ctx.language).line_comment,
        )

    def shown(self, path: str | Path) -> str:
        """A path as the model sees it: relative to the workspace folder holding it, else its file name."""
        return shown_path(path, self.folders())

    def repo(self, path: str | Path) -> str:
        """The repository name the prompts of the file at `path` show: its workspace folder's, else the root's."""
        folder = holding_folder(path, self.folders()) or self.root
        return folder.name if folder else ""

    def count(self, prompt: FimPrompt, mode: Mode | None = None) -> int:
        """Tokens of `prompt` in the backend's FIM format: one per special token (and BOS), the backend's count
        for each text part (what a local model's `encode` gives, token for token)."""
        fmt = self.engine.fim
        if fmt is None:
            return 0
        parts = fmt.segments(prompt, mode)
        return int(fmt.bos) + sum(1 if special else self.engine.count_tokens(text) for text, special in parts)

    # -- internals ----------------------------------------------------------------------------

    def _fitted(self, doc: Document, offset: int, *, need_hole: bool) -> Prompt | None:
        ctx = self.context(doc, offset)
        if need_hole and ctx.hole is Hole.NONE:
            return None
        room, windows = self.room, None
        for attempt in range(_REFITS + 1):
            fim = self.fim_prompt(ctx)
            encoded = self.engine.encode(fim, self.mode)
            tokens = len(encoded) if isinstance(encoded, list) else self.count(fim, self.mode)
            if tokens <= room or attempt == _REFITS:
                break
            budget = self.budgets(doc.path).windows if windows is None else windows
            if budget <= MIN_WINDOWS:
                break
            windows = max(MIN_WINDOWS, budget - (tokens - room))
            ctx = self.context(doc, offset, windows)
        return Prompt(ctx, fim, encoded, tokens)

    def _measure_layout(self, path: str, repo: str, mode: Mode | None) -> Layout:
        frame = FimPrompt("", "", path=path, repo=repo)
        bare = self.count(frame, mode)
        with_snippet = self.count(FimPrompt("", "", path=path, snippets=[Snippet(path, "")], repo=repo), mode)
        return Layout(bare, with_snippet - bare)
