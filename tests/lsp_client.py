"""Start the real `midline serve` process over stdio and drive it with pytest-lsp's client.

The server answers `initialize` before its model is loaded; `running_server` waits until `midline.status` says
the model is ready (or failed to load) unless asked not to, so that a test's first request reaches the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from lsprotocol import types
from pytest_lsp import LanguageClient, make_test_lsp_client

SERVER = [sys.executable, "-m", "midline.server", "--log-level", "WARNING"]
LOAD_TIMEOUT_S = 120.0  # torch's import and the model's load, on a busy machine


def capabilities(*, inline: bool = True, encodings: list[str] | None = None) -> types.ClientCapabilities:
    """A client like VS Code (inline completion) or like Neovim 0.11 (completion only)."""
    return types.ClientCapabilities(
        general=types.GeneralClientCapabilities(position_encodings=encodings) if encodings else None,
        text_document=types.TextDocumentClientCapabilities(
            inline_completion=types.InlineCompletionClientCapabilities() if inline else None,
            completion=types.CompletionClientCapabilities(
                completion_item=types.ClientCompletionItemOptions(
                    documentation_format=[types.MarkupKind.Markdown, types.MarkupKind.PlainText])
            ),
            synchronization=types.TextDocumentSyncClientCapabilities(),
        ),
        window=types.WindowClientCapabilities(show_message=types.ShowMessageRequestClientCapabilities()),
    )


@contextlib.asynccontextmanager
async def running_server(
    settings: dict[str, Any],
    root: Path,
    *,
    inline: bool = True,
    encodings: list[str] | None = None,
    loaded: bool = True,
    command: list[str] = SERVER,
    client_capabilities: types.ClientCapabilities | None = None,
) -> AsyncIterator[tuple[LanguageClient, types.InitializeResult]]:
    """A server process (`command`), initialized with `settings` as initializationOptions, its model loaded
    (or failed) unless `loaded` is false; shut down on exit. The client's capabilities are `client_capabilities`,
    else `capabilities(inline=inline, encodings=encodings)`."""
    client = make_test_lsp_client()
    await client.start_io(*command)
    try:
        result = await client.initialize_session(
            types.InitializeParams(
                capabilities=client_capabilities or capabilities(inline=inline, encodings=encodings),
                root_uri=root.as_uri(),
                initialization_options={"midline": settings},
            )
        )
        if loaded:
            await wait_until_loaded(client)
        yield client, result
    finally:  # shut down even when the test failed, or stopping waits for the server forever
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.shutdown_session(), timeout=10)
        await client.stop()


def open_document(client: LanguageClient, uri: str, text: str, language: str = "python") -> None:
    item = types.TextDocumentItem(uri=uri, language_id=language, version=1, text=text)
    client.text_document_did_open(types.DidOpenTextDocumentParams(text_document=item))


async def inline(client: LanguageClient, uri: str, line: int, character: int, *,
                 automatic: bool = False) -> types.InlineCompletionList:
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


async def wait_until_loaded(client: LanguageClient, timeout_s: float = LOAD_TIMEOUT_S) -> dict[str, Any]:
    """`midline.status` once the model is no longer loading (ready, or failed to load)."""
    deadline = time.monotonic() + timeout_s
    while (now := await status(client))["state"] == "loading":
        assert time.monotonic() < deadline, f"the model was still loading after {timeout_s:.0f} s"
        await asyncio.sleep(0.05)
    return now
