"""Start the real `midline serve` process over stdio and drive it with pytest-lsp's client."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from lsprotocol import types
from pytest_lsp import LanguageClient, make_test_lsp_client

SERVER = [sys.executable, "-m", "midline.server", "--log-level", "WARNING"]


def capabilities(*, inline: bool = True, encodings: list[str] | None = None) -> types.ClientCapabilities:
    """A client like VS Code (inline completion) or like Neovim 0.11 (completion only)."""
    return types.ClientCapabilities(
        general=types.GeneralClientCapabilities(position_encodings=encodings) if encodings else None,
        text_document=types.TextDocumentClientCapabilities(
            inline_completion=types.InlineCompletionClientCapabilities() if inline else None,
            completion=types.CompletionClientCapabilities(
                completion_item=types.ClientCompletionItemOptions(documentation_format=[types.MarkupKind.Markdown, types.MarkupKind.PlainText])
            ),
            synchronization=types.TextDocumentSyncClientCapabilities(),
        ),
        window=types.WindowClientCapabilities(show_message=types.ShowMessageRequestClientCapabilities()),
    )


@contextlib.asynccontextmanager
async def running_server(
    settings: dict[str, Any], root: Path, *, inline: bool = True, encodings: list[str] | None = None
) -> AsyncIterator[tuple[LanguageClient, types.InitializeResult]]:
    """A server process, initialized with `settings` as initializationOptions; shut down on exit."""
    client = make_test_lsp_client()
    await client.start_io(*SERVER)
    try:
        result = await client.initialize_session(
            types.InitializeParams(
                capabilities=capabilities(inline=inline, encodings=encodings),
                root_uri=root.as_uri(),
                initialization_options={"midline": settings},
            )
        )
        yield client, result
    finally:  # shut down even when the test failed, or stopping waits for the server forever
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.shutdown_session(), timeout=10)
        await client.stop()


def open_document(client: LanguageClient, uri: str, text: str, language: str = "python") -> None:
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(uri=uri, language_id=language, version=1, text=text))
    )


async def inline(client: LanguageClient, uri: str, line: int, character: int, *, automatic: bool = False) -> types.InlineCompletionList:
    kind = types.InlineCompletionTriggerKind.Automatic if automatic else types.InlineCompletionTriggerKind.Invoked
    return await client.text_document_inline_completion_async(
        types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(line=line, character=character),
            context=types.InlineCompletionContext(trigger_kind=kind),
        )
    )


async def status(client: LanguageClient) -> dict[str, Any]:
    return await client.workspace_execute_command_async(types.ExecuteCommandParams(command="midline.status"))
