"""midline's language server: a flat list of LSP features, each a few lines over the helper modules.

Model work runs on one worker thread, off the event loop, so the server answers every request (and
`$/cancelRequest`) while it generates. A missing or broken model never stops the server: it says what
is wrong once, with `window/showMessage`, and answers completions with nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams
from pygls.capabilities import get_capability
from pygls.lsp.server import LanguageServer
from pygls.uris import to_fs_path

from midline.model import DEFAULT_MODEL_DIR
from midline.model.engine import Engine
from midline.model.fim import FimFormatError
from midline.model.loader import ModelLoadError

from .completion import Completer
from .config import Config, ConfigError, camel
from .documents import Document, DocumentStore
from .postprocess import Suggestion
from .symbols import SymbolIndex

log = logging.getLogger(__name__)

VERSION = "0.1.0"


class MidlineServer(LanguageServer):
    """The server's state: open documents, settings, the model and its completer."""

    def __init__(self) -> None:
        super().__init__("midline", VERSION)
        self.documents = DocumentStore()
        self.config = Config()
        self.symbols = SymbolIndex()
        self.model_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="midline-model")
        self.completer: Completer | None = None
        self.engine_ready: asyncio.Future[Completer | None] | None = None
        self.root: str | None = None
        self.client_has_inline_completion = False

    @property
    def codec(self):
        return self.workspace.position_codec

    def load_engine(self) -> None:
        """(Re)load the model in the background; requests wait for it, then use it or answer nothing."""
        config = self.config
        path = config.model or str(DEFAULT_MODEL_DIR)

        def load() -> Engine:
            return Engine.load(path, device=config.device, fim_format=config.fim_format, trust_remote_code=config.trust_remote_code)

        async def run() -> Completer | None:
            try:
                engine = await asyncio.get_running_loop().run_in_executor(self.model_executor, load)
            except (ModelLoadError, FimFormatError, OSError, ValueError) as exc:
                self.report(f"midline: cannot load the model at {path}: {exc}")
                return None
            log.info("model %s loaded on %s (FIM format: %s)", path, engine.device, engine.fim.name)
            self.completer = Completer(engine, config, self.model_executor, symbols=self.symbols, root=self.root)
            return self.completer

        self.completer = None
        self.engine_ready = asyncio.ensure_future(run())

    async def get_completer(self) -> Completer | None:
        if self.engine_ready is None:
            self.load_engine()
        return await asyncio.shield(self.engine_ready)

    def apply_settings(self, settings: Any) -> None:
        """New settings from the client; a bad value keeps the old settings and says why."""
        try:
            new = Config.from_json(settings, base=self.config)
        except ConfigError as exc:
            self.report(f"midline: invalid settings, keeping the previous ones: {exc}")
            return
        reload = (new.model, new.device, new.fim_format, new.trust_remote_code) != (
            self.config.model, self.config.device, self.config.fim_format, self.config.trust_remote_code
        )
        self.config = new
        if reload and self.engine_ready is not None:
            self.load_engine()
        elif self.completer is not None:
            self.completer.config = new

    def report(self, message: str) -> None:
        log.error(message)
        self.window_show_message(types.ShowMessageParams(type=types.MessageType.Error, message=message))

    def document_at(self, uri: str, position: types.Position) -> tuple[Document, int]:
        """The open document and the cursor's offset; InvalidParams for an unknown document or position."""
        try:
            doc = self.documents.get(uri)
        except KeyError:
            raise JsonRpcInvalidParams(f"document not open: {uri}") from None
        try:
            return doc, doc.offset_at(position, self.codec)
        except ValueError as exc:
            raise JsonRpcInvalidParams(str(exc)) from None

    async def suggest(self, uri: str, position: types.Position, automatic: bool) -> tuple[Document, int, Suggestion] | None:
        doc, offset = self.document_at(uri, position)
        completer = await self.get_completer()
        if completer is None:
            return None
        self.symbols.refresh(self.documents, exclude=uri)
        suggestion = await completer.complete(doc, offset, automatic=automatic)
        return (doc, offset, suggestion) if suggestion is not None else None


server = MidlineServer()


@server.feature(types.INITIALIZE)
def initialize(ls: MidlineServer, params: types.InitializeParams) -> None:
    ls.root = to_fs_path(params.root_uri) if params.root_uri else params.root_path
    folders = params.workspace_folders or []
    if ls.root is None and folders:
        ls.root = to_fs_path(folders[0].uri)
    inline = params.capabilities.text_document and params.capabilities.text_document.inline_completion
    ls.client_has_inline_completion = inline is not None
    options = params.initialization_options
    if isinstance(options, dict) and isinstance(options.get("midline"), dict):
        options = options["midline"]
    ls.apply_settings(options)


@server.feature(types.INITIALIZED)
def initialized(ls: MidlineServer, params: types.InitializedParams) -> None:
    ls.load_engine()
    if ls.root and ls.config.context.cross_file:
        ls.thread_pool.submit(ls.symbols.index_workspace, ls.root)


@server.feature(types.SHUTDOWN)
def shutdown(ls: MidlineServer, params: None) -> None:
    for uri in [doc.uri for doc in ls.documents]:
        if ls.completer is not None:
            ls.completer.forget(uri)
    ls.model_executor.shutdown(wait=False, cancel_futures=True)


@server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
async def did_change_configuration(ls: MidlineServer, params: types.DidChangeConfigurationParams) -> None:
    settings = params.settings
    if isinstance(settings, dict) and "midline" in settings:
        settings = settings["midline"]
    elif not settings:  # pull model: ask the client for the section
        items = await ls.workspace_configuration_async(
            types.ConfigurationParams(items=[types.ConfigurationItem(section="midline")])
        )
        settings = items[0] if items else None
    ls.apply_settings(settings)


@server.feature(types.TEXT_DOCUMENT_DID_OPEN)
def did_open(ls: MidlineServer, params: types.DidOpenTextDocumentParams) -> None:
    item = params.text_document
    ls.documents.open(item.uri, item.language_id, item.version, item.text)


@server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
def did_change(ls: MidlineServer, params: types.DidChangeTextDocumentParams) -> None:
    ls.documents.change(params.text_document.uri, params.text_document.version, params.content_changes, ls.codec)


@server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
def did_close(ls: MidlineServer, params: types.DidCloseTextDocumentParams) -> None:
    ls.documents.close(params.text_document.uri)
    if ls.completer is not None:
        ls.completer.forget(params.text_document.uri)


@server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
async def inline_completion(ls: MidlineServer, params: types.InlineCompletionParams) -> types.InlineCompletionList:
    automatic = params.context.trigger_kind == types.InlineCompletionTriggerKind.Automatic
    found = await ls.suggest(params.text_document.uri, params.position, automatic)
    if found is None:
        return types.InlineCompletionList(items=[])
    doc, offset, suggestion = found
    replaced = _range(ls, doc, offset, suggestion) if suggestion.replace else None
    return types.InlineCompletionList(items=[types.InlineCompletionItem(insert_text=suggestion.text, range=replaced)])


@server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions())
async def completion(ls: MidlineServer, params: types.CompletionParams) -> types.CompletionList:
    """The fallback for clients without inline completion: one item holding the whole suggestion."""
    empty = types.CompletionList(is_incomplete=True, items=[])
    if ls.client_has_inline_completion:  # the client shows ghost text instead; don't suggest twice
        return empty
    automatic = params.context is None or params.context.trigger_kind != types.CompletionTriggerKind.Invoked
    found = await ls.suggest(params.text_document.uri, params.position, automatic)
    if found is None:
        return empty
    doc, offset, suggestion = found
    first_line = suggestion.text.strip().split("\n", 1)[0]
    # Vim-style clients insert a plain-text item only up to its first whitespace; a snippet goes in whole.
    snippet = get_capability(ls.client_capabilities, "text_document.completion.completion_item.snippet_support", False)
    new_text = _as_snippet(suggestion.text, doc.text, offset) if snippet else suggestion.text
    item = types.CompletionItem(
        label=first_line[:80] or suggestion.text.strip()[:80],
        kind=types.CompletionItemKind.Snippet,
        detail="midline",
        documentation=_code_block(ls, doc.language, suggestion.text),
        insert_text_format=types.InsertTextFormat.Snippet if snippet else types.InsertTextFormat.PlainText,
        text_edit=types.TextEdit(range=_range(ls, doc, offset, suggestion), new_text=new_text),
        sort_text="0",
        preselect=True,
    )
    return types.CompletionList(is_incomplete=True, items=[item])


def _as_snippet(text: str, document: str, offset: int) -> str:
    """`text` as an LSP snippet that expands to exactly `text`: `\\ $ }` escaped, and the cursor line's
    indentation taken off later lines (clients re-indent a snippet's lines to the cursor line)."""
    line = document[document.rfind("\n", 0, offset) + 1 : offset]
    indent = line[: len(line) - len(line.lstrip())]
    first, *rest = text.split("\n")
    lines = [first] + [later[len(indent):] if later.startswith(indent) else later for later in rest]
    return "\n".join(lines).replace("\\", "\\\\").replace("$", "\\$").replace("}", "\\}")


@server.command("midline.status")
def status(ls: MidlineServer, *args: Any) -> dict[str, Any]:
    """Model, device and latency for a status bar; counters for tests and benchmarks."""
    completer = ls.completer
    if completer is None:
        return {"ready": False, "model": ls.config.model or str(DEFAULT_MODEL_DIR)}
    return {
        "ready": True,
        "model": ls.config.model or str(DEFAULT_MODEL_DIR),
        "device": str(completer.engine.device),
        "fimFormat": completer.engine.fim.name,
        "generating": completer.generating,
        **_camel_keys(dataclasses.asdict(completer.stats)),
        "last": _camel_keys(dataclasses.asdict(completer.trace)),
    }


def _code_block(ls: MidlineServer, language: str, code: str) -> types.MarkupContent:
    """The suggestion as documentation: a fenced block where the client renders Markdown, else plain text."""
    item = get_capability(ls.client_capabilities, "text_document.completion.completion_item", None)
    if item is not None and types.MarkupKind.Markdown in (item.documentation_format or ()):
        return types.MarkupContent(kind=types.MarkupKind.Markdown, value=f"```{language}\n{code}\n```")
    return types.MarkupContent(kind=types.MarkupKind.PlainText, value=code)


def _camel_keys(values: dict[str, Any]) -> dict[str, Any]:
    return {camel(name): value for name, value in values.items()}


def _range(ls: MidlineServer, doc: Document, offset: int, suggestion: Suggestion) -> types.Range:
    """From the cursor over the characters the suggestion replaces (none for a plain insertion)."""
    return types.Range(start=doc.position_at(offset, ls.codec), end=doc.position_at(offset + suggestion.replace, ls.codec))
