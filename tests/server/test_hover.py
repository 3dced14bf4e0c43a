"""Hover: the definition under the cursor, the markdown, the background explainer, and end to end."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import pytest_asyncio
from lsprotocol import types

from midline.model.engine import Generation
from midline.server.actions import explain_ask
from midline.server.assistant import Assistant
from midline.server.config import Config
from midline.server.documents import Document
from midline.server.hover import Explainer, hover_target, render
from midline.server.symbols import SymbolIndex

from ..lsp_client import open_document, status
from tests.server.test_actions import FakeEngine, client_capabilities, code_actions, ready_status, serve

CODE = '''import functools


@functools.cache
def area(
    radius: float,
) -> float:
    """Area of a circle."""
    return 3.14 * radius ** 2


class Circle:
    def grow(self, by):
        self.radius += by


size = area(2.0)
'''


def doc(text: str = CODE, language: str = "python") -> Document:
    return Document("file:///work/shapes.py", language, 1, text)


def test_hover_target_on_a_definition_and_on_a_use():
    d = doc()
    at_def = hover_target(d, CODE.index("area(\n") + 2)
    assert (at_def.name, at_def.signature) == ("area", "@functools.cache\ndef area(\n    radius: float,\n) -> float:")
    assert at_def.code.startswith("@functools.cache\ndef area(") and at_def.code.endswith("radius ** 2")
    assert CODE[at_def.start : at_def.end] == "area"
    at_use = hover_target(d, CODE.index("area(2.0)") + 4)  # just after the name counts too
    assert (at_use.signature, at_use.code) == (at_def.signature, at_def.code)
    assert CODE[at_use.start : at_use.end] == "area"
    method = hover_target(d, CODE.index("grow"))
    assert method.signature == "def grow(self, by):" and method.code.startswith("    def grow")
    assert hover_target(d, CODE.index("Circle")).signature == "class Circle:"


def test_no_hover_off_function_and_class_names():
    d = doc()
    assert hover_target(d, CODE.index("size")) is None  # a variable
    assert hover_target(d, CODE.index("radius:")) is None  # a parameter
    assert hover_target(d, CODE.index("3.14")) is None
    assert hover_target(doc("area(1)\n", "plaintext"), 1) is None


def test_hover_on_a_name_defined_in_another_file_shows_its_signature():
    index = SymbolIndex()
    index.index_file("/work/geometry.py", 'def volume(r):\n    """Volume of a ball."""\n    return r ** 3\n', "python")
    target = hover_target(doc("from geometry import volume\n\nvolume(2)\n"), len("from geometry import volume\n\nvol"),
                          index)
    assert target.signature == 'def volume(r):\n    """Volume of a ball."""\n    ...' and target.code is None


def test_render_is_the_signature_then_one_paragraph():
    target = hover_target(doc(), CODE.index("grow"))
    assert render(target, None) == "```python\ndef grow(self, by):\n```"
    assert render(target, "Grows the circle\nby `by`.\n\nArgs: by") == (
        "```python\ndef grow(self, by):\n```\n\nGrows the circle by `by`.")


class BlockingEngine(FakeEngine):
    """Answers once released; a cancel stops it first."""

    def __init__(self) -> None:
        super().__init__('Grows it."""')
        self.release = threading.Event()

    def generate(self, ids, *, max_new_tokens, should_stop=None, cancel=None, deadline=None):
        self.calls += 1
        self.started.set()
        while not self.release.is_set():
            if cancel.wait(0.01):
                return Generation("", [], "cancelled", 0.0, 3, 0.0)
        return Generation(self.text, [], "eot", 0.0, 3, 0.0)


def test_explainer_waits_for_idle_and_yields_to_completions():
    engine = BlockingEngine()

    async def get_engine():
        return engine

    assistant = Assistant(get_engine, Config(), ThreadPoolExecutor(max_workers=1))
    busy = {"now": True}
    explainer = Explainer(assistant, lambda: busy["now"], lambda: 300)
    target = hover_target(doc(), CODE.index("grow"))

    async def go():
        explainer.request(target)
        await asyncio.sleep(0.2)
        assert engine.calls == 0  # a completion is generating: wait
        busy["now"] = False
        await asyncio.get_running_loop().run_in_executor(None, engine.started.wait, 5)
        explainer.interrupt()  # a completion request: the explanation stops, and is queued again
        for _ in range(200):
            if explainer.pending and assistant.stats.cancelled:
                break
            await asyncio.sleep(0.01)
        assert explainer.pending == 1 and assistant.stats.cancelled == 1  # queued again, for after 300 ms of quiet
        engine.release.set()
        for _ in range(500):
            if explainer.lookup(target) is not None:
                break
            await asyncio.sleep(0.01)

    asyncio.run(go())
    assert explainer.lookup(target) == "Grows it." and explainer.computed == 1 and engine.calls == 2
    assert assistant.cached(explain_ask(target.code, "python")) == "Grows it."  # the Explain action's cache


# -- end to end ---------------------------------------------------------------------------------

SETTINGS = {"debounceMs": 0, "maxNewTokens": 16, "actions": {"maxNewTokens": 32}, "hover": {"idleMs": 0}}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lsp(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("hover")
    async with serve({"model": str(tiny_model_dir), **SETTINGS}, root, client_capabilities()) as client:
        yield client, root


async def hover(client, uri: str, needle: str, delta: int = 0, text: str = CODE) -> types.Hover | None:
    offset = text.index(needle) + delta
    line = text.count("\n", 0, offset)
    character = offset - (text.rfind("\n", 0, offset) + 1)
    return await client.text_document_hover_async(
        types.HoverParams(text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line, character))
    )


async def explained(client, count: int) -> dict:
    for _ in range(1000):
        now = await status(client)
        if now["ready"] and now["hover"]["explained"] >= count:
            return now
        await asyncio.sleep(0.02)
    pytest.fail("no background explanation")


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.e2e
async def test_e2e_hover_answers_at_once_then_explains_in_the_background(lsp):
    client, root = lsp
    uri = (root / "shapes.py").as_uri()
    open_document(client, uri, CODE)
    await ready_status(client)
    first = await hover(client, uri, "grow")
    assert first.contents.kind == types.MarkupKind.Markdown
    assert first.contents.value == "```python\ndef grow(self, by):\n```"  # signature only: nothing cached yet
    row = CODE[: CODE.index("grow")].count("\n")
    assert first.range == types.Range(types.Position(row, 8), types.Position(row, 12))
    done = await explained(client, 1)
    second = await hover(client, uri, "grow")
    assert second.contents.value.startswith(first.contents.value)
    assert (await status(client))["hover"] == {"explained": 1, "pending": 0}  # not explained twice

    # The Explain action finds hover's explanation in the shared cache.
    explain = (await code_actions(client, uri, row, 8))[0]
    await client.code_action_resolve_async(explain)
    after = (await status(client))["actions"]
    assert after["calls"] == done["actions"]["calls"] and after["cacheHits"] == done["actions"]["cacheHits"] + 1

    assert await hover(client, uri, "size") is None
    assert await hover(client, uri, "3.14") is None


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.e2e
async def test_e2e_hover_never_waits_for_the_model(lsp, tiny_chat_model_dir):
    client, root = lsp
    uri = (root / "busy.py").as_uri()
    open_document(client, uri, CODE)
    settings = {"actions": {"model": str(tiny_chat_model_dir), "maxNewTokens": 8000}}  # a long answer
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"midline": settings}))
    row = CODE[: CODE.index("class Circle")].count("\n")
    fix = next(a for a in await code_actions(client, uri, row, 2) if a.kind == "quickfix.midline.fix")
    request = asyncio.ensure_future(client.protocol.send_request_async(types.CODE_ACTION_RESOLVE, fix, "busy-fix"))
    for _ in range(1000):
        if (await status(client))["actions"]["generating"]:
            break
        await asyncio.sleep(0.01)
    start = time.monotonic()
    answer = await hover(client, uri, "area(2.0)")
    assert time.monotonic() - start < 1.0 and answer.contents.value.startswith("```python\n@functools.cache\ndef area(")
    client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="busy-fix"))
    with pytest.raises(Exception):
        await request
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"midline": {"actions": {"model": None, "maxNewTokens": 32}}})
    )


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.e2e
async def test_e2e_hover_settings(lsp):
    client, root = lsp
    uri = (root / "settings.py").as_uri()
    open_document(client, uri, CODE)
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"midline": {"hover": {"explain": False}}}))
    before = (await status(client))["hover"]
    assert (await hover(client, uri, "Circle")).contents.value == "```python\nclass Circle:\n```"
    await asyncio.sleep(0.2)
    assert (await status(client))["hover"] == before  # nothing queued or computed
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"midline": {"hover": {"enable": False}}}))
    assert await hover(client, uri, "Circle") is None
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"midline": {"hover": {"enable": True, "explain": True}}})
    )
