"""End to end: the real `midline serve` process over stdio, driven by pytest-lsp's client, with a tiny real model."""

from __future__ import annotations

import asyncio
import importlib
import time

import pytest
import pytest_asyncio
from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams, JsonRpcRequestCancelled

from midline.model.llamacpp import CPU_THREADS
from midline.model.syntax import new_parser

from ..lsp_client import inline, open_document, running_server, status

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.e2e]

# The test model has random weights: its text is noise, so requests sit at the end of a comment,
# where any one line is valid Python and the syntax gate lets a suggestion through.
SETTINGS = {"debounceMs": 0, "maxNewTokens": 24, "timeoutMs": 20000}

CODE = '''import math


def area(radius):
    """Area of a circle."""
    # multiply the square of the radius by 
    return math.pi * radius ** 2


print(area(2.0))
'''
COMMENT_LINE = 5  # "    # multiply the square of the radius by "


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lsp(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("workspace")
    (root / "shapes.py").write_text("def square(side):\n    return side * side\n")
    async with running_server({"model": str(tiny_model_dir), **SETTINGS}, root) as (client, result):
        yield client, result, root


async def test_capabilities(lsp):
    _, result, _ = lsp
    caps = result.capabilities
    assert caps.inline_completion_provider is not None
    assert caps.completion_provider is not None
    assert caps.position_encoding == types.PositionEncodingKind.Utf16
    sync = caps.text_document_sync
    assert sync.change == types.TextDocumentSyncKind.Incremental and sync.open_close


async def test_inline_completion_round_trip_is_valid_python(lsp):
    client, _, root = lsp
    uri = (root / "circle.py").as_uri()
    open_document(client, uri, CODE)
    line = CODE.split("\n")[COMMENT_LINE]
    result = await inline(client, uri, COMMENT_LINE, len(line))
    # An explicit request: up to `candidates` (3) suggestions, distinct, each valid where it goes.
    assert 1 <= len(result.items) <= 3 and len({item.insert_text for item in result.items}) == len(result.items)
    for item in result.items:
        assert item.insert_text.strip()
        lines = CODE.split("\n")
        lines[COMMENT_LINE] += item.insert_text
        tree = new_parser("python").parse("\n".join(lines).encode())
        assert not tree.root_node.has_error


async def test_repeated_request_is_served_from_cache(lsp):
    client, _, root = lsp
    uri = (root / "cached.py").as_uri()
    open_document(client, uri, CODE)
    line = CODE.split("\n")[COMMENT_LINE]
    first = await inline(client, uri, COMMENT_LINE, len(line))
    before = await status(client)
    second = await inline(client, uri, COMMENT_LINE, len(line))
    after = await status(client)
    assert [i.insert_text for i in second.items] == [i.insert_text for i in first.items]
    assert after["modelCalls"] == before["modelCalls"] and after["cacheHits"] == before["cacheHits"] + 1


async def test_typing_through_answers_without_the_model(lsp):
    client, _, root = lsp
    uri = (root / "typed.py").as_uri()
    open_document(client, uri, CODE)
    line = CODE.split("\n")[COMMENT_LINE]
    first = (await inline(client, uri, COMMENT_LINE, len(line))).items[0].insert_text
    assert len(first) >= 2
    typed = first[0]
    client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
            content_changes=[
                types.TextDocumentContentChangePartial(
                    range=types.Range(start=types.Position(COMMENT_LINE, len(line)),
                                      end=types.Position(COMMENT_LINE, len(line))),
                    text=typed,
                )
            ],
        )
    )
    before = await status(client)
    rest = await inline(client, uri, COMMENT_LINE, len(line) + len(typed), automatic=True)
    after = await status(client)
    assert [i.insert_text for i in rest.items] == [first[1:]]
    assert after["typedThrough"] == before["typedThrough"] + 1 and after["modelCalls"] == before["modelCalls"]


def unavailable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return True
    return False


async def test_position_outside_document_is_invalid_params_and_server_keeps_serving(lsp):
    client, _, root = lsp
    uri = (root / "short.py").as_uri()
    open_document(client, uri, "x = 1\n")
    with pytest.raises(JsonRpcInvalidParams):
        await inline(client, uri, 40, 0)
    with pytest.raises(JsonRpcInvalidParams):
        await inline(client, uri, 0, 99)
    with pytest.raises(JsonRpcInvalidParams):
        await inline(client, (root / "never-opened.py").as_uri(), 0, 0)
    assert (await status(client))["ready"]
    # a Llama layout on the CPU: llama.cpp in process where it is installed, else PyTorch's static cache, eager steps
    threads = f"{CPU_THREADS} thread{'s' * (CPU_THREADS > 1)}"
    expected = "static" if unavailable("llama_cpp") else f"llama.cpp, q8_0, {threads}"
    assert (await status(client))["decodePath"] == expected


async def test_unknown_language_gets_plain_text_context(lsp):
    client, _, root = lsp
    uri = (root / "notes.cob").as_uri()
    open_document(client, uri, "IDENTIFICATION DIVISION.\nPROGRAM-ID. HELLO.\n\n", language="cobol")
    result = await inline(client, uri, 2, 0)
    assert result.items and all(item.insert_text.strip() for item in result.items)


async def test_cancel_stops_generation(lsp):
    client, _, root = lsp
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"midline": {"maxNewTokens": 2048, "maxLines": 100000,
                                                                 "enable": {"plaintext": True}}})
    )
    uri = (root / "long.txt").as_uri()
    open_document(client, uri, "Once upon a time\n\n", language="plaintext")
    params = types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        position=types.Position(line=1, character=0),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
    )
    request = asyncio.ensure_future(client.protocol.send_request_async(types.TEXT_DOCUMENT_INLINE_COMPLETION, params,
                                                                       "long-one"))
    for _ in range(200):  # wait until the model is generating
        if (await status(client))["generating"]:
            break
        await asyncio.sleep(0.01)
    client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="long-one"))
    with pytest.raises(JsonRpcRequestCancelled):
        await request
    start = time.monotonic()
    while (await status(client))["generating"]:
        assert time.monotonic() - start < 2.0, "generation ran on after the request was cancelled"
        await asyncio.sleep(0.02)
    assert (await status(client))["cancelled"] >= 1
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"midline": {"maxNewTokens": 24, "maxLines": 12}})
    )


async def test_superseded_automatic_request_answers_empty(lsp):
    client, _, root = lsp
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"midline": {"debounceMs": 300}}))
    uri = (root / "debounced.py").as_uri()
    open_document(client, uri, CODE)
    line = CODE.split("\n")[COMMENT_LINE]
    first = asyncio.ensure_future(inline(client, uri, COMMENT_LINE, len(line), automatic=True))
    await asyncio.sleep(0.05)
    second = await inline(client, uri, COMMENT_LINE, len(line), automatic=True)
    assert len((await first).items) == 0
    assert len(second.items) == 1
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"midline": {"debounceMs": 0}}))


async def test_bad_settings_are_reported_and_previous_kept(lsp):
    client, _, _ = lsp
    client.messages.clear()
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"midline": {"maxNewTokens": "lots"}}))
    for _ in range(100):
        if client.messages:
            break
        await asyncio.sleep(0.02)
    assert client.messages and "maxNewTokens" in client.messages[0].message
    assert (await status(client))["ready"]


async def test_completion_fallback_for_clients_without_inline_completion(tiny_model_dir, tmp_path):
    async with running_server({"model": str(tiny_model_dir), **SETTINGS}, tmp_path, inline=False) as (client, _):
        uri = (tmp_path / "circle.py").as_uri()
        open_document(client, uri, CODE)
        line = CODE.split("\n")[COMMENT_LINE]
        result = await client.text_document_completion_async(
            types.CompletionParams(
                text_document=types.TextDocumentIdentifier(uri=uri),
                position=types.Position(COMMENT_LINE, len(line)),
                context=types.CompletionContext(trigger_kind=types.CompletionTriggerKind.Invoked),
            )
        )
        assert 1 <= len(result.items) <= 3  # the candidates, in rank order: the first preselected
        ranks = [(item.sort_text, item.preselect) for item in result.items]
        assert ranks == [(str(i), i == 0) for i in range(len(result.items))]
        for item in result.items:
            edit = item.text_edit
            assert edit.new_text.strip() and edit.range.start == types.Position(COMMENT_LINE, len(line))


async def test_missing_model_reports_once_and_answers_empty(tmp_path):
    async with running_server({"model": str(tmp_path / "no-such-model")}, tmp_path) as (client, _):
        uri = (tmp_path / "a.py").as_uri()
        open_document(client, uri, CODE)
        result = await inline(client, uri, 6, 4)
        assert len(result.items) == 0
        result = await inline(client, uri, 6, 4)
        assert len(result.items) == 0
        errors = [m for m in client.messages if m.type == types.MessageType.Error]
        assert len(errors) == 1 and "no-such-model" in errors[0].message


async def test_utf8_position_encoding_when_offered(tiny_model_dir, tmp_path):
    settings = {"model": str(tiny_model_dir), **SETTINGS, "enable": {"plaintext": True}}
    async with running_server(settings, tmp_path, encodings=["utf-8", "utf-16"]) as (client, result):
        assert result.capabilities.position_encoding == types.PositionEncodingKind.Utf8
        uri = (tmp_path / "u.txt").as_uri()
        text = 's = "漢字😀"  # café\n'
        open_document(client, uri, text, language="plaintext")
        with pytest.raises(JsonRpcInvalidParams):  # 23 UTF-8 bytes is past the end of the line
            await inline(client, uri, 0, len(text.encode()) + 1)
        await inline(client, uri, 0, len('s = "漢字'.encode()))
        assert (await status(client))["last"]["linePrefix"] == 's = "漢字'  # UTF-8 bytes became the right offset


async def test_generation_past_the_time_limit_answers_empty(lsp):
    client, _, root = lsp
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"midline": {"timeoutMs": 1}}))
    uri = (root / "slow.py").as_uri()
    open_document(client, uri, CODE)
    before = await status(client)
    result = await inline(client, uri, COMMENT_LINE, len(CODE.split("\n")[COMMENT_LINE]))
    after = await status(client)
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"midline": {"timeoutMs": 20000}}))
    assert len(result.items) == 0
    assert after["timeouts"] == before["timeouts"] + 1 and after["last"]["finishReason"] == "timeout"
