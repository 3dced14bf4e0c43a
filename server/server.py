"""midline's language server: a flat list of LSP features, each a few lines over the helper modules
(conversions to LSP's types in `lsp.py`, JSON-RPC checks in `protocol.py`).

Model work runs on one worker thread, off the event loop, so the server answers every request (and
`$/cancelRequest`) while it generates. The model loads there too, after `initialize` is answered: this module
imports neither torch nor transformers (the engine's modules are imported by the load), and until the model is
ready, completions, hover explanations and actions get empty answers at once while `midline.status` says
`loading`. A missing or broken model never stops the server: it says what is wrong once, with
`window/showMessage`, `midline.status` says `failed` and why, and completions are answered with nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams
from pygls.capabilities import get_capability
from pygls.lsp.server import LanguageServer
from pygls.uris import to_fs_path

from midline.model import DEFAULT_MODEL_DIR, VERSION
from midline.model.backend import Backend, ModelLoadError
from midline.model.fim import FimFormatError
from midline.model.remote import RemoteEngine, RemoteError, api_key_from

if TYPE_CHECKING:
    from midline.model.engine import Engine
    from midline.model.llamacpp import LlamaCppEngine

from . import actions, lsp
from .actions import Actions, Explanation, Nothing, Replace, TestFile
from .assistant import Assistant
from .completion import Completer, Completion
from .config import Config, ConfigError, CurrentConfig, Settings
from .documents import Document, DocumentStore, SyncProtocol, utf8
from .hover import Explainer, hover_target, render
from .model_thread import ModelThread
from .notebooks import SYNC_OPTIONS, CellView, NotebookStore, OutsideCell
from .outcomes import OutcomeLog
from .postprocess import Suggestion
from .protocol import MidlineProtocol, internal_error_text, parse_failure, quiet_pygls_logs, strict_converter
from .files import watch_glob
from .symbols import SymbolIndex
from .workspace import Workspace

log = logging.getLogger(__name__)


class ServerProtocol(MidlineProtocol, SyncProtocol):
    """Every request answered (MidlineProtocol), and the documents below as the only copy (SyncProtocol)."""


class MidlineServer(LanguageServer):
    """The server's state: open documents, settings, the model and its completer."""

    protocol: ServerProtocol
    config = CurrentConfig()  # the current settings: `settings.current`, which every component reads

    def __init__(self) -> None:
        quiet_pygls_logs()  # before pygls registers its features, a log line each
        super().__init__(
            "midline",
            VERSION,
            protocol_cls=ServerProtocol,
            converter_factory=strict_converter,
            notebook_document_sync=SYNC_OPTIONS,
        )
        self.failed_notifications: set[str] = set()  # methods whose internal error was shown, so each is shown once
        self.documents = DocumentStore()
        self.notebooks = NotebookStore()  # open notebooks; requests on a cell read it as part of the notebook's script
        self.settings = Settings()  # the one holder: assigning `config` (its `current`) changes it everywhere
        self.symbols = SymbolIndex()
        self.indexes = Workspace(self.settings, symbols=self.symbols)  # the folders' definitions and retrieval chunks
        self.model_executor = ModelThread("midline-model")  # a daemon: exit never waits for a load in progress
        self.completer: Completer | None = None
        self.engine_ready: asyncio.Future[Completer | None] | None = None
        self.root: str | None = None
        self.client_has_inline_completion = False
        self.client_watches_files = False  # can register a file watcher
        self.assistant = Assistant(self.engine, self.settings, self.model_executor, report=self.report)
        self.actions = Actions(self.assistant, self.settings)
        idle_ms = lambda: self.config.hover.idle_ms  # noqa: E731
        self.explainer = Explainer(self.assistant, self.model_busy, idle_ms, self.actions.shown)
        self.backend_error: str | None = None  # the last remote backend failure shown, so it is shown once
        self.load_error: str | None = None  # why the last load failed
        self.outcomes = OutcomeLog(self.settings, report=self.report)  # what became of shown suggestions (opt-in)

    @property
    def codec(self):
        return self.workspace.position_codec

    @property
    def model_state(self) -> str:
        """`loading` (also before `initialized` starts the load), `ready`, or `failed` (`load_error` says why)."""
        if self.completer is not None:
            return "ready"
        return "failed" if self.engine_ready is not None and self.engine_ready.done() else "loading"

    def model_busy(self) -> bool:
        """Whether background work should wait: the model is loading, or generating a completion."""
        return self.model_state == "loading" or (self.completer is not None and self.completer.generating)

    def load_engine(self) -> None:
        """(Re)load the model in the background; until it is ready, requests are answered without it."""
        config = self.config
        where = _backend_name(config)

        def load() -> Backend:
            return open_engine(config)

        async def run() -> Completer | None:
            try:
                engine = await asyncio.get_running_loop().run_in_executor(self.model_executor, load)
            except (ModelLoadError, FimFormatError, RemoteError, OSError, ValueError) as exc:
                self.load_error = f"cannot load {where}: {_load_failure(exc)}"
                self.report(f"midline: {self.load_error}")
                return None
            log.info("%s loaded on %s (FIM format: %s)", where, engine.device, _fim_name(engine))
            self.completer = Completer(
                engine, self.settings, self.model_executor, symbols=self.symbols, root=self.root,
                folders=self.actions.workspace_folders, retrieval=self.indexes.retrieval, report=self.report,
            )
            return self.completer

        self.completer, self.load_error = None, None
        self.engine_ready = asyncio.ensure_future(run())

    async def get_completer(self) -> Completer | None:
        """The completer once the model is ready, else None at once (starting the load if none has started)."""
        if self.engine_ready is None:
            self.load_engine()
        return self.completer

    async def engine(self) -> Backend | None:
        """The model once it is ready, else None at once."""
        completer = await self.get_completer()
        return completer.engine if completer is not None else None

    def unavailable(self) -> str | None:
        """Why there is no model to ask now (it is loading, or failed to load); None when it is ready."""
        if self.model_state == "loading":
            return "the model is still loading; ask again in a moment"
        return f"no model: {self.load_error}" if self.model_state == "failed" else None

    def noted(self, doc: Document, offset: int, completion: Completion, completer: Completer) -> Completion:
        """`completion`, noted in the outcome record (where it is on): a new answer, a typed-through one, or none."""
        latency = completer.stats.last_latency_ms  # (this request's: set just before complete() returned)
        self.outcomes.note(doc, offset, completion, latency, _model_label(self.config))
        return completion

    def read_text(self, path: Path) -> str | None:
        """A file's text: the open document's if it is open, else the disk's; None if neither."""
        for doc in self.documents:
            if Path(doc.path) == path:
                return doc.text
        try:
            return path.read_text(encoding="utf-8") if path.is_file() else None
        except (OSError, UnicodeDecodeError):
            return None

    def apply_settings(self, settings: Any) -> None:
        """New settings from the client; a bad value keeps the old settings and says why."""
        try:
            new = Config.from_json(settings, base=self.config)
        except ConfigError as exc:
            self.report(f"midline: invalid settings, keeping the previous ones: {exc}")
            return
        reload = (new.model, new.adapter, new.device, new.fim_format, new.trust_remote_code, new.backend) != (
            self.config.model,
            self.config.adapter,
            self.config.device,
            self.config.fim_format,
            self.config.trust_remote_code,
            self.config.backend,
        )
        self.config = new  # one assignment: every component reads the holder
        if reload and self.engine_ready is not None:
            self.load_engine()

    def report(self, message: str) -> None:
        log.error(message)
        self.window_show_message(types.ShowMessageParams(type=types.MessageType.Error, message=message))

    def report_server_error(self, error: Exception, source: Any) -> None:
        """pygls's out-of-band errors: an unparsable message is answered with ParseError, the rest only logged."""
        if parse_failure(error, source):
            self.protocol.parse_failed(error)
        else:
            log.error("server error (%s): %s", getattr(source, "__name__", source), type(error).__name__)

    def report_internal_error(self, method: str) -> None:
        """A notification's handler failed (the traceback is logged): say so once per method."""
        if method not in self.failed_notifications:
            self.failed_notifications.add(method)
            self.window_show_message(
                types.ShowMessageParams(type=types.MessageType.Error, message=internal_error_text(method))
            )

    def document(self, uri: str) -> Document:
        """The open document `uri`, or for a notebook cell its view as part of the notebook's script (`notebooks`);
        InvalidParams if neither is open."""
        if uri in self.notebooks:  # (before a text document of the same URI: a client may sync a cell both ways)
            return self.notebooks.view(uri)
        if uri in self.documents:
            return self.documents.get(uri)
        raise JsonRpcInvalidParams(
            f"The document {uri} is not open; send textDocument/didOpen (or, for a notebook cell,"
            " notebookDocument/didOpen) before asking about it."
        )

    def document_at(self, uri: str, position: types.Position) -> tuple[Document, int]:
        """The open document (or cell view) and the cursor's offset; InvalidParams for an unknown document or
        position."""
        doc = self.document(uri)
        try:
            return doc, doc.offset_at(position, self.codec)
        except ValueError as exc:
            raise JsonRpcInvalidParams(str(exc)) from None

    async def suggest(
        self, uri: str, position: types.Position, automatic: bool
    ) -> tuple[Document, int, list[Suggestion]] | None:
        """The suggestions at `position` in the document `uri`, best first (None: nothing to show)."""
        self.explainer.interrupt()  # typing first: stop any background hover explanation
        doc, offset = self.document_at(uri, position)
        completer = await self.get_completer()
        if completer is None:
            return None
        self.indexes.refresh(self.documents, exclude=uri)
        try:
            completion = await completer.complete(doc, offset, automatic=automatic)
            suggestions = self.noted(doc, offset, completion, completer).suggestions
        except RemoteError as exc:  # the serving engine is down or failing: say so once, answer nothing
            if str(exc) != self.backend_error:
                self.backend_error = str(exc)
                self.report(f"midline: {exc}")
            return None
        self.backend_error = None
        return (doc, offset, suggestions) if suggestions else None


def open_engine(config: Config) -> Backend:
    """The configured backend: the local model, or (`backend.kind` openai, llamacpp, ollama) a serving engine."""
    backend = config.backend
    if backend.kind == "local":
        path = Path(config.model).expanduser() if config.model else DEFAULT_MODEL_DIR
        engine = _llamacpp_engine(config, path) or _torch_engine(config, path)
        engine.warmup()  # compile and capture now, so no request pays for it
        return engine
    if backend.url is None:  # BackendConfig requires one for every served kind
        raise ValueError(f"backend.url is required for backend.kind {backend.kind}")
    return RemoteEngine.load(
        backend.kind,
        backend.url,
        model=backend.model,
        api_key=api_key_from(backend.api_key, backend.api_key_env),
        fim_format=config.fim_format,
        tokenizer=backend.tokenizer,
        max_context=backend.context_length,
        timeout_s=backend.timeout_ms / 1000,
    )


def _llamacpp_engine(config: Config, path: Path) -> LlamaCppEngine | None:
    """llama.cpp in process (`model/llamacpp.py`) where the `engine` setting asks for it, or allows it (auto) and it
    can serve this model here; else None. Neither torch nor transformers is imported on this path."""
    from midline.model import llamacpp

    if config.engine == "torch":
        return None
    reason = llamacpp.unsupported(path, device=config.device, adapter=config.adapter,
                                  trust_remote_code=config.trust_remote_code)
    if reason is not None:
        if config.engine == "llamacpp":
            raise ModelLoadError(f"the llama.cpp engine can't serve {path}: {reason}")
        log.info("serving with PyTorch: %s", reason)
        return None
    return llamacpp.LlamaCppEngine.load(path, fim_format=config.fim_format)


def _torch_engine(config: Config, path: Path) -> Engine:
    from midline.model.engine import Engine  # torch and transformers: imported here, off the startup path

    return Engine.load(path, device=config.device, fim_format=config.fim_format,
                       trust_remote_code=config.trust_remote_code, adapter=config.adapter)


def _load_failure(exc: Exception) -> str:
    """Why loading failed, in words: an OSError as its reason and file, not Python's `[Errno 13] ...`."""
    if isinstance(exc, OSError) and exc.strerror:
        file = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror.lower()}{file}; check the path and its permissions"
    return str(exc)


def _fim_name(engine: Backend) -> str | None:
    """The name of the backend's FIM format (None: a chat model, which has none)."""
    return engine.fim.name if engine.fim is not None else None


def _model_label(config: Config) -> str:
    """The model, as `midline.status` names it: its directory, or the served model's name (else the server's URL)."""
    if config.backend.kind == "local":
        return config.model or str(DEFAULT_MODEL_DIR)
    return config.backend.model or config.backend.url or ""


def _backend_name(config: Config) -> str:
    if config.backend.kind == "local":
        adapter = f" with the adapter {config.adapter}" if config.adapter else ""
        return f"the model at {config.model or DEFAULT_MODEL_DIR}{adapter}"
    return f"the {config.backend.kind} backend at {config.backend.url}"


server = MidlineServer()


@server.feature(types.INITIALIZE)
def initialize(ls: MidlineServer, params: types.InitializeParams) -> None:
    ls.root = to_fs_path(params.root_uri) if params.root_uri else params.root_path
    folders = params.workspace_folders or []
    if ls.root is None and folders:
        ls.root = to_fs_path(folders[0].uri)
    ls.actions.root = Path(ls.root) if ls.root else None
    ls.actions.folders = [Path(path) for folder in folders if (path := to_fs_path(folder.uri))]
    inline = params.capabilities.text_document and params.capabilities.text_document.inline_completion
    ls.client_has_inline_completion = inline is not None
    ls.client_watches_files = get_capability(
        params.capabilities, "workspace.did_change_watched_files.dynamic_registration", False
    )
    options = params.initialization_options
    if isinstance(options, dict) and isinstance(options.get("midline"), dict):
        options = options["midline"]
    ls.apply_settings(options)


@server.feature(types.INITIALIZED)
def initialized(ls: MidlineServer, params: types.InitializedParams) -> None:
    ls.load_engine()
    ls.indexes.set_folders(_folder_paths(ls))
    _watch_files(ls)


def _folder_paths(ls: MidlineServer) -> list[str]:
    """The workspace folders (as the actions know them), or the root alone for a client that names no folders."""
    return [str(path) for path in ls.actions.folders] or ([ls.root] if ls.root else [])


def _watch_files(ls: MidlineServer) -> None:
    """Ask the client to report source files created, changed and deleted on disk, if it can register a watcher."""
    if ls.client_watches_files:
        options = types.DidChangeWatchedFilesRegistrationOptions(
            watchers=[types.FileSystemWatcher(glob_pattern=watch_glob())]
        )
        registration = types.Registration(
            id="midline-files", method=types.WORKSPACE_DID_CHANGE_WATCHED_FILES, register_options=options
        )
        ls.client_register_capability(types.RegistrationParams(registrations=[registration]))


@server.feature(types.SHUTDOWN)
def shutdown(ls: MidlineServer, params: None) -> None:
    ls.explainer.stop()
    for uri in [doc.uri for doc in ls.documents] + [cell.doc.uri for nb in ls.notebooks for cell in nb.cells]:
        if ls.completer is not None:
            ls.completer.forget(uri)
    ls.model_executor.shutdown(wait=False, cancel_futures=True)
    ls.outcomes.flush()
    ls.indexes.close()


@server.feature(types.WORKSPACE_DID_CHANGE_WORKSPACE_FOLDERS)
def did_change_workspace_folders(ls: MidlineServer, params: types.DidChangeWorkspaceFoldersParams) -> None:
    """Follow added and removed folders (pygls has already updated its workspace's list)."""
    ls.actions.folders = [Path(path) for folder in ls.workspace.folders.values() if (path := to_fs_path(folder.uri))]
    ls.indexes.set_folders(_folder_paths(ls))


@server.feature(types.WORKSPACE_DID_CHANGE_WATCHED_FILES)
def did_change_watched_files(ls: MidlineServer, params: types.DidChangeWatchedFilesParams) -> None:
    """Source files created, changed or deleted on disk (the watcher `initialized` registers): indexed again."""
    for change in params.changes:
        if (path := to_fs_path(change.uri)) is None:
            continue
        if change.type == types.FileChangeType.Deleted:
            ls.indexes.deleted(path)
        else:
            ls.indexes.changed_on_disk(path)


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


@server.feature(types.TEXT_DOCUMENT_DID_SAVE)
def did_save(ls: MidlineServer, params: types.DidSaveTextDocumentParams) -> None:
    """Index the saved file again: the open document's text (else the disk's)."""
    uri = params.text_document.uri
    if uri in ls.documents:
        ls.indexes.saved(ls.documents.get(uri))
    elif path := to_fs_path(uri):
        ls.indexes.changed_on_disk(path)


@server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
def did_close(ls: MidlineServer, params: types.DidCloseTextDocumentParams) -> None:
    ls.documents.close(params.text_document.uri)
    ls.outcomes.close(params.text_document.uri)
    if ls.completer is not None:
        ls.completer.forget(params.text_document.uri)


@server.feature(types.NOTEBOOK_DOCUMENT_DID_OPEN)
def did_open_notebook(ls: MidlineServer, params: types.DidOpenNotebookDocumentParams) -> None:
    ls.notebooks.open(params.notebook_document, params.cell_text_documents)


@server.feature(types.NOTEBOOK_DOCUMENT_DID_CHANGE)
def did_change_notebook(ls: MidlineServer, params: types.DidChangeNotebookDocumentParams) -> None:
    """Cells added, removed or moved, their kinds and their text; a change naming an unknown notebook or cell is
    not applied (logged)."""
    try:
        ls.notebooks.change(params, ls.codec)
    except KeyError as exc:
        raise JsonRpcInvalidParams(exc.args[0]) from None


@server.feature(types.NOTEBOOK_DOCUMENT_DID_CLOSE)
def did_close_notebook(ls: MidlineServer, params: types.DidCloseNotebookDocumentParams) -> None:
    for uri in ls.notebooks.close(params.notebook_document.uri):
        ls.outcomes.close(uri)
        if ls.completer is not None:
            ls.completer.forget(uri)


@server.command("midline.accepted")
def accepted(ls: MidlineServer, *args: Any) -> None:
    """An editor accepted an item of a shown answer (its command): the outcome record's accept."""
    if len(args) != 2 or not isinstance(args[0], str) or type(args[1]) is not int or args[1] < 0:
        raise JsonRpcInvalidParams(
            "midline.accepted takes the answer's id (a string) and the item's index (an integer)."
        )
    ls.outcomes.accepted(args[0], args[1])


@server.command("midline.documentDigest")
def document_digest(ls: MidlineServer, *args: Any) -> dict[str, Any] | None:
    """An open document's version and the SHA-256 of its UTF-8 text (None if it is not open): a client checks
    that the server's copy matches its own without the text crossing back."""
    uri = args[0] if args and isinstance(args[0], str) else ""
    if uri in ls.notebooks:  # a cell: its own text
        doc = ls.notebooks.cell(uri)
    elif uri in ls.documents:
        doc = ls.documents.get(uri)
    else:
        return None
    return {"version": doc.version, "sha256": hashlib.sha256(utf8(doc.text)).hexdigest()}


@server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
async def inline_completion(ls: MidlineServer, params: types.InlineCompletionParams) -> types.InlineCompletionList:
    automatic = params.context.trigger_kind == types.InlineCompletionTriggerKind.Automatic
    found = await ls.suggest(params.text_document.uri, params.position, automatic)
    if found is None:
        return types.InlineCompletionList(items=[])
    doc, offset, suggestions = found  # in rank order: the editor shows the first and cycles through the rest
    items = [lsp.inline_item(doc, offset, suggestion, ls.codec) for suggestion in suggestions]
    return types.InlineCompletionList(items=lsp.accept_commands(items, ls.outcomes.showing(doc.uri)))


@server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions())
async def completion(ls: MidlineServer, params: types.CompletionParams) -> types.CompletionList:
    """The fallback for clients without inline completion: an item holding each whole suggestion, in rank order."""
    empty = types.CompletionList(is_incomplete=True, items=[])
    if ls.client_has_inline_completion:  # the client shows ghost text instead; don't suggest twice
        return empty
    automatic = params.context is None or params.context.trigger_kind != types.CompletionTriggerKind.Invoked
    found = await ls.suggest(params.text_document.uri, params.position, automatic)
    if found is None:
        return empty
    doc, offset, suggestions = found
    capabilities = ls.client_capabilities
    items = [lsp.completion_item(capabilities, doc, offset, s, ls.codec, rank) for rank, s in enumerate(suggestions)]
    return types.CompletionList(is_incomplete=True, items=lsp.accept_commands(items, ls.outcomes.showing(doc.uri)))


# -- code actions and hover -------------------------------------------------------------------------


@server.feature(
    types.TEXT_DOCUMENT_CODE_ACTION,
    types.CodeActionOptions(code_action_kinds=[spec.kind for spec in actions.ACTIONS], resolve_provider=True),
)
def code_action(ls: MidlineServer, params: types.CodeActionParams) -> list[types.CodeAction] | None:
    """Explain / Fix / Generate tests / Code from a comment, listed without a model call."""
    if not ls.config.actions.enable:
        return None
    doc, start = ls.document_at(params.text_document.uri, params.range.start)
    _, end = ls.document_at(params.text_document.uri, params.range.end)
    # (as lines of the document: a cell's lines are counted in its notebook's script)
    lines = [doc.line_at(doc.offset_at(d.range.start, ls.codec, clamp=True))[0] for d in params.context.diagnostics]
    diagnostics = [(line, d.message) for line, d in zip(lines, params.context.diagnostics)]
    offers = actions.offers(doc, start, end, diagnostics, params.context.only)
    return [types.CodeAction(title=o.title, kind=o.kind, data=o.data) for o in offers] or None


@server.feature(types.CODE_ACTION_RESOLVE)
async def resolve_code_action(ls: MidlineServer, action: types.CodeAction) -> types.CodeAction:
    """The picked action, computed now: an edit, or the explanation as a command. An edit with a security warning
    needs confirmation where the client takes change annotations (the title stays: a client takes from a resolve
    only the properties its `resolveSupport` lists, VS Code only `edit`), and the warning is shown as a message."""
    doc, data = _action_data(ls, action.data)
    completer = await ls.get_completer()
    if completer is None and not ls.config.actions.model and (why := ls.unavailable()):  # an answer now, not a wait
        message = f"midline: {action.title.removeprefix('midline: ')}: {why}."
        ls.window_show_message(types.ShowMessageParams(type=types.MessageType.Info, message=message))
        return action
    window = completer.prompts.window if completer is not None else None
    async with lsp.progress(ls, action.title.removeprefix("midline: ")) as progress:
        outcome = await ls.actions.resolve(doc, data, progress, window, read=ls.read_text)
    capabilities = ls.client_capabilities
    if isinstance(outcome, Explanation):
        action.command = lsp.explanation_command(capabilities, outcome.markdown)
    elif isinstance(outcome, Replace):
        try:
            in_cell = doc.in_cell(outcome) if isinstance(doc, CellView) else outcome
            action.edit = lsp.replace_edit(capabilities, doc, in_cell, ls.codec)
        except OutsideCell:  # the code it replaces runs on into a neighbouring notebook cell
            message = "midline: the code runs on past this notebook cell, so midline cannot replace it; split it."
            ls.window_show_message(types.ShowMessageParams(type=types.MessageType.Info, message=message))
            return action
        if outcome.note:  # what was checked (a fix): in the title, and as a message for clients that take the edit
            action.title = outcome.titled(action.title)
            ls.window_show_message(types.ShowMessageParams(type=types.MessageType.Info, message=action.title))
    elif isinstance(outcome, TestFile):
        action.edit = lsp.tests_edit(capabilities, outcome, ls.documents, ls.codec)
    elif isinstance(outcome, Nothing) and outcome.error:  # the model failed: one error message
        ls.report(f"midline: {outcome.message}")
    elif isinstance(outcome, Nothing) and outcome.message != "cancelled":
        ls.window_show_message(
            types.ShowMessageParams(type=types.MessageType.Info, message=f"midline: {outcome.message}")
        )
    if isinstance(outcome, (Replace, TestFile)) and outcome.warning:
        ls.window_show_message(types.ShowMessageParams(type=types.MessageType.Warning, message=outcome.warning))
    if isinstance(outcome, (Replace, TestFile)) and outcome.findings:  # lint and security findings it adds
        message = f"midline: {action.title.removeprefix('midline: ')} {outcome.findings}"
        ls.window_show_message(types.ShowMessageParams(type=types.MessageType.Info, message=message))
    return action


# The fields of a code action's `data` (from actions.offers) that resolving reads, by action.
_DATA_FIELDS: dict[str, dict[str, type]] = {spec.name: spec.fields for spec in actions.ACTIONS}
_OPTIONAL_FIELDS: dict[str, type] = {"name": str, "diagnostics": list, "version": int}


def _action_data(ls: MidlineServer, data: Any) -> tuple[Document, dict[str, Any]]:
    """The open document and the `data` of a code action midline offered; InvalidParams saying what is wrong."""
    again = "resolve only code actions that midline offered, or ask for code actions again"

    def invalid(problem: str) -> JsonRpcInvalidParams:
        return JsonRpcInvalidParams(f"Invalid params for codeAction/resolve: {problem}; {again}.")

    if not isinstance(data, dict):
        raise invalid("data is missing" if data is None else "data must be an object")
    action = data.get("action")
    if action not in _DATA_FIELDS:
        raise invalid(f"data.action must be one of {', '.join(_DATA_FIELDS)}")
    required = {"uri": str, **_DATA_FIELDS[action]}
    for key, kind in [*required.items(), *_OPTIONAL_FIELDS.items()]:
        value = data.get(key)
        if value is None and key not in required:
            continue
        if not isinstance(value, kind) or isinstance(value, bool) or (isinstance(value, int) and value < 0):
            raise invalid(f"data.{key} is required" if value is None else f"data.{key} must be {_WORDS[kind]}")
    if not all(isinstance(line, str) for line in data.get("diagnostics") or []):
        raise invalid("data.diagnostics must be an array of strings")
    if actions.BY_NAME[action].about == actions.TARGET and data["start"] > data["end"]:
        raise invalid("data.start must not be after data.end")
    if data["uri"] not in ls.documents and data["uri"] not in ls.notebooks:
        raise JsonRpcInvalidParams(f"The document {data['uri']} is not open; {again} once it is.")
    doc = ls.document(data["uri"])
    if max(data.get(key, 0) for key in ("at", "start", "end")) > len(doc.text):
        raise invalid("the action's place is past the end of the document")
    return doc, data


_WORDS = {str: "a string", int: "a non-negative integer", list: "an array"}


@server.command("midline.openExplanation")
async def open_explanation(ls: MidlineServer, *args: Any) -> None:
    """Show an explanation in editors without midline's client: a markdown document, else a message."""
    if len(args) != 1 or not isinstance(args[0], str) or not args[0].strip():
        raise JsonRpcInvalidParams("midline.openExplanation takes one argument, the explanation's Markdown text.")
    markdown = args[0]
    if get_capability(ls.client_capabilities, "window.show_document.support", False):
        folder = Path(tempfile.gettempdir()) / "midline-explanations"
        folder.mkdir(exist_ok=True)
        path = folder / f"explanation-{hashlib.sha256(markdown.encode()).hexdigest()[:12]}.md"
        path.write_text(markdown, encoding="utf-8")
        result = await ls.window_show_document_async(types.ShowDocumentParams(uri=path.as_uri(), take_focus=True))
        if result is not None and result.success:
            return
    ls.window_show_message(types.ShowMessageParams(type=types.MessageType.Info, message=markdown))


@server.feature(types.TEXT_DOCUMENT_HOVER)
def hover(ls: MidlineServer, params: types.HoverParams) -> types.Hover | None:
    """A function or class name's signature, and its explanation once computed (never waits for the model)."""
    if not ls.config.hover.enable:
        return None
    doc, offset = ls.document_at(params.text_document.uri, params.position)
    target = hover_target(doc, offset, ls.symbols)
    if target is None:
        return None
    explanation = ls.explainer.lookup(target)
    enabled = ls.completer.enabled(doc) if ls.completer is not None else ls.config.enabled_for(doc.language_id)
    if explanation is None and ls.config.hover.explain and enabled:
        ls.explainer.request(target)
    contents = lsp.hover_markup(ls.client_capabilities, render(target, explanation))
    return types.Hover(contents=contents, range=lsp.span(doc, target.start, target.end, ls.codec))


@server.command("midline.status")
def status(ls: MidlineServer, *args: Any) -> dict[str, Any]:
    """The model's state (`loading`, `ready`, or `failed` with its `error`), model, device and latency for a
    status bar; counters for tests and benchmarks; the sandbox for generated tests ("bubblewrap 0.8.0, seccomp",
    or "off: " and why they are offered unverified)."""
    from .sandbox import sandbox_state

    completer = ls.completer
    sandbox = sandbox_state().description
    if completer is None:
        failed = {"error": ls.load_error} if ls.model_state == "failed" else {}
        return {"ready": False, "state": ls.model_state, **failed, "model": _model_label(ls.config), "sandbox": sandbox}
    return {
        "ready": True,
        "state": "ready",
        "model": _model_label(ls.config),
        "sandbox": sandbox,
        "index": ls.indexes.stats(),
        "device": str(completer.engine.device),
        "fimFormat": _fim_name(completer.engine),
        "decodePath": getattr(completer.engine, "decode_path", "remote"),
        "languages": getattr(completer.engine, "languages", None),  # the model's own; None: any
        "generating": completer.generating,
        **lsp.camel_keys(dataclasses.asdict(completer.stats)),
        "last": lsp.camel_keys(dataclasses.asdict(completer.trace)),
        "actions": {**lsp.camel_keys(dataclasses.asdict(ls.assistant.stats)), "generating": ls.assistant.generating},
        "hover": {"explained": ls.explainer.computed, "pending": ls.explainer.pending},
        "outcomes": ls.outcomes.status(),
        "ranker": _ranker_status(completer),
        "attribution": _attribution_status(completer),
    }


def _attribution_status(completer: Completer) -> dict[str, Any] | None:
    """The `attribution.index` setting's state for `midline.status`: the index's size, or why it is not used; None
    when unset."""
    index = completer.attribution_index()
    if completer.config.attribution.index is None:
        return None
    if index is None:
        return {"index": completer.config.attribution.index, "error": completer.attribution_error}
    return {"index": completer.config.attribution.index, "fingerprints": len(index.fingerprints),
            "ngram": index.ngram, "window": index.window}


def _ranker_status(completer: Completer) -> dict[str, Any] | None:
    """The `ranker` setting's state for `midline.status`: its file, or why it is not used; None when unset."""
    ranker = completer.ranker()
    if completer.config.ranker is None:
        return None
    return {"file": completer.config.ranker, **({"error": completer.ranker_error} if ranker is None else {})}
