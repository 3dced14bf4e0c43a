"""Conversions between midline's records and the LSP's types, in the form each client takes.

Suggestions become inline completion items or (for clients without inline completion) a snippet
completion item; action outcomes become workspace edits (`documentChanges` where the client supports
them, else `changes`) or an explanation command; long tasks report work done progress. An outcome with a
security warning becomes an edit whose changes carry a change annotation that needs confirmation, where the
client takes them: the editor shows the edit and the warning, and applies it when the user confirms. What a
client supports is read from its capabilities, positions go through the negotiated position encoding.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.capabilities import get_capability
from pygls.lsp.server import LanguageServer
from pygls.workspace.position_codec import PositionCodec

from midline.model.syntax import line_start

from .actions import Replace, TestFile
from .assistant import Progress
from .config import camel
from .documents import Document
from .postprocess import Suggestion

log = logging.getLogger(__name__)

Capabilities = types.ClientCapabilities | None
# (uri, version, edits, create the file first): one document's part of a workspace edit.
FileEdits = tuple[str, int | None, list[types.TextEdit], bool]


def span(doc: Document, start: int, end: int, codec: PositionCodec) -> types.Range:
    """The range between two character offsets of `doc`."""
    return types.Range(start=doc.position_at(start, codec), end=doc.position_at(end, codec))


def replaced_range(doc: Document, offset: int, suggestion: Suggestion, codec: PositionCodec) -> types.Range:
    """From the cursor over the characters the suggestion replaces (none for a plain insertion)."""
    return span(doc, offset, offset + suggestion.replace, codec)


def inline_item(doc: Document, offset: int, suggestion: Suggestion, codec: PositionCodec) -> types.InlineCompletionItem:
    """The suggestion as ghost text; its range only where it replaces characters after the cursor."""
    replaced = replaced_range(doc, offset, suggestion, codec) if suggestion.replace else None
    return types.InlineCompletionItem(insert_text=suggestion.text, range=replaced)


def accept_commands(items: list, answer: str | None) -> list:
    """Inline or completion items, each with the command an editor runs when it is accepted (`midline.accepted`,
    with the answer's id and the item's index: the outcome record's accept); unchanged without an answer id."""
    if answer is not None:
        for index, item in enumerate(items):
            item.command = types.Command(
                title="midline: accepted", command="midline.accepted", arguments=[answer, index]
            )
    return items


def completion_item(
    capabilities: Capabilities, doc: Document, offset: int, suggestion: Suggestion, codec: PositionCodec, rank: int = 0
) -> types.CompletionItem:
    """The whole suggestion as one completion item: a snippet where the client takes snippets (Vim-style
    clients insert a plain-text item only up to its first whitespace), else plain text. Items sort by `rank`
    (0: the best, preselected)."""
    first_line = suggestion.text.strip().split("\n", 1)[0]
    snippet = get_capability(capabilities, "text_document.completion.completion_item.snippet_support", False)
    new_text = as_snippet(suggestion.text, doc.text, offset) if snippet else suggestion.text
    return types.CompletionItem(
        label=first_line[:80] or suggestion.text.strip()[:80],
        kind=types.CompletionItemKind.Snippet,
        detail="midline",
        documentation=code_block(capabilities, doc.language, suggestion.text),
        insert_text_format=types.InsertTextFormat.Snippet if snippet else types.InsertTextFormat.PlainText,
        text_edit=types.TextEdit(range=replaced_range(doc, offset, suggestion, codec), new_text=new_text),
        sort_text=str(rank),  # (at most MAX_CANDIDATES: one digit)
        preselect=rank == 0,
    )


def as_snippet(text: str, document: str, offset: int) -> str:
    """`text` as an LSP snippet that expands to exactly `text`: `\\ $ }` escaped, and the cursor line's
    indentation taken off later lines (clients re-indent a snippet's lines to the cursor line)."""
    line = document[line_start(document, offset) : offset]
    indent = line[: len(line) - len(line.lstrip())]
    first, *rest = text.split("\n")
    lines = [first] + [later[len(indent):] if later.startswith(indent) else later for later in rest]
    return "\n".join(lines).replace("\\", "\\\\").replace("$", "\\$").replace("}", "\\}")


def code_block(capabilities: Capabilities, language: str, code: str) -> types.MarkupContent:
    """The suggestion as documentation: a fenced block where the client renders Markdown, else plain text."""
    item = get_capability(capabilities, "text_document.completion.completion_item", None)
    if item is not None and types.MarkupKind.Markdown in (item.documentation_format or ()):
        return types.MarkupContent(kind=types.MarkupKind.Markdown, value=f"```{language}\n{code}\n```")
    return types.MarkupContent(kind=types.MarkupKind.PlainText, value=code)


def hover_markup(capabilities: Capabilities, text: str) -> types.MarkupContent:
    """A hover's Markdown text, marked as Markdown where the client renders it, else as plain text."""
    formats = get_capability(capabilities, "text_document.hover.content_format", None) or [types.MarkupKind.Markdown]
    kind = types.MarkupKind.Markdown if types.MarkupKind.Markdown in formats else types.MarkupKind.PlainText
    return types.MarkupContent(kind=kind, value=text)


def explanation_command(capabilities: Capabilities, markdown: str) -> types.Command:
    """`midline.showExplanation` for clients that render it (they say so in their capabilities:
    `experimental.midline.showExplanation`), else the server's own `midline.openExplanation`."""
    experimental = capabilities.experimental if capabilities else None
    midline = experimental.get("midline") if isinstance(experimental, dict) else None
    own = isinstance(midline, dict) and midline.get("showExplanation")
    command = "midline.showExplanation" if own else "midline.openExplanation"
    return types.Command(title="Show explanation", command=command, arguments=[markdown])


def document_changes(capabilities: Capabilities) -> bool:
    """Whether the client takes a workspace edit's `documentChanges` (versioned edits, file creation)."""
    edit = get_capability(capabilities, "workspace.workspace_edit", None)
    return edit is not None and bool(edit.document_changes or "create" in (edit.resource_operations or ()))


def change_annotations(capabilities: Capabilities) -> bool:
    """Whether the client takes change annotations (and so asks the user to confirm an edit that needs it)."""
    support = get_capability(capabilities, "workspace.workspace_edit.change_annotation_support", None)
    return document_changes(capabilities) and support is not None


SECURITY_ANNOTATION = "midline.security"  # the id of a security warning's change annotation


def security_annotation(warning: str) -> types.ChangeAnnotation:
    """A security warning (`security.warning_for`: its head line, then a line per finding) as a change annotation
    that needs confirmation: the label names the first finding, the description all of them."""
    findings = [line.strip() for line in warning.split("\n")[1:] if line.strip()] or [warning.strip()]
    more = f" (and {len(findings) - 1} more)" if len(findings) > 1 else ""
    return types.ChangeAnnotation(
        label=f"midline security: {findings[0]}{more}", needs_confirmation=True, description="; ".join(findings)
    )


def workspace_edit(
    capabilities: Capabilities, edits: list[FileEdits], warning: str | None = None
) -> types.WorkspaceEdit:
    """(uri, version, edits, create the file first) as a WorkspaceEdit in the form the client takes; with a
    `warning`, every change carries its `security_annotation` where the client takes change annotations."""
    if not document_changes(capabilities):
        return types.WorkspaceEdit(changes={uri: text_edits for uri, _, text_edits, _ in edits})
    annotation = SECURITY_ANNOTATION if warning and change_annotations(capabilities) else None
    changes: list = []
    for uri, version, text_edits, create in edits:
        if create:
            options = types.CreateFileOptions(ignore_if_exists=True)
            changes.append(types.CreateFile(uri=uri, options=options, annotation_id=annotation))
        document_edits: Sequence[types.TextEdit | types.AnnotatedTextEdit] = text_edits
        if annotation is not None:
            document_edits = [
                types.AnnotatedTextEdit(annotation, range=e.range, new_text=e.new_text) for e in text_edits
            ]
        identifier = types.OptionalVersionedTextDocumentIdentifier(uri=uri, version=version)
        changes.append(types.TextDocumentEdit(text_document=identifier, edits=document_edits))
    annotations = {annotation: security_annotation(warning)} if annotation is not None and warning else None
    return types.WorkspaceEdit(document_changes=changes, change_annotations=annotations)


def replace_edit(
    capabilities: Capabilities, doc: Document, replace: Replace, codec: PositionCodec
) -> types.WorkspaceEdit:
    """The replacement's text in place of `doc`'s characters from its start to its end, for the document's current
    version; with its security warning."""
    edit = types.TextEdit(range=span(doc, replace.start, replace.end, codec), new_text=replace.text)
    return workspace_edit(capabilities, [(doc.uri, doc.version, [edit], False)], replace.warning)


def tests_edit(
    capabilities: Capabilities, tests: TestFile, documents: Iterable[Document], codec: PositionCodec
) -> types.WorkspaceEdit:
    """Generated tests as an edit: a new file created with them, or them appended to the existing file
    (the open document's text and version if it is open, else the text on disk); with their security warning."""
    uri = tests.path.as_uri()
    open_doc = next((d for d in documents if Path(d.path) == tests.path), None)
    if tests.existing is None:
        at = types.Position(0, 0)
    else:
        doc = open_doc or Document(uri, None, 0, tests.existing)
        at = doc.position_at(len(doc.text), codec)
    edit = types.TextEdit(range=types.Range(at, at), new_text=tests.text)
    version = open_doc.version if open_doc else None
    return workspace_edit(capabilities, [(uri, version, [edit], tests.existing is None)], tests.warning)


@contextlib.asynccontextmanager
async def progress(ls: LanguageServer, title: str) -> AsyncIterator[Progress]:
    """Work done progress for a long task, where the client supports it; its cancel button sets `cancel`."""
    task = Progress()
    token = f"midline-{uuid.uuid4().hex}"
    created = False
    if get_capability(ls.client_capabilities, "window.work_done_progress", False):
        try:
            await ls.work_done_progress.create_async(token)
            created = True
        except Exception as exc:  # the client refused: work without progress
            log.debug("no work done progress: %s", exc)
    if not created:
        yield task
        return
    loop = asyncio.get_running_loop()
    future = ls.work_done_progress.tokens.get(token)
    if future is not None:
        future.add_done_callback(lambda f: task.cancel.set() if f.cancelled() else None)
    ls.work_done_progress.begin(token, types.WorkDoneProgressBegin(title=f"midline: {title}", cancellable=True))

    def report(message: str) -> None:
        loop.call_soon_threadsafe(ls.work_done_progress.report, token, types.WorkDoneProgressReport(message=message))

    task.report = report
    try:
        yield task
    finally:
        ls.work_done_progress.end(token, types.WorkDoneProgressEnd())
        ls.work_done_progress.tokens.pop(token, None)


def camel_keys(values: dict[str, Any]) -> dict[str, Any]:
    """A record's fields (`dataclasses.asdict`) with their wire names: `last_latency_ms` as `lastLatencyMs`."""
    return {camel(name): value for name, value in values.items()}
