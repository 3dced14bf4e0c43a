"""The server answers `initialize` before its model loads, and answers every request at once while it loads.

torch and transformers are imported by the model's load, on the model thread, never on the way to the first
answer; until the model is ready, completions and actions are answered without it and `midline.status` says
`loading` (then `ready`, or `failed` and why). The model thread is a daemon, so `exit` ends the process at once,
even mid-load.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time

import pytest
from lsprotocol import types

from midline.server.model_thread import ModelThread

from ..lsp_client import inline, open_document, running_server, status, wait_until_loaded
from tests.server.test_actions import code_actions
from tests.server.test_protocol import RawServer
from .test_server import CODE, COMMENT_LINE, SETTINGS

HEAVY = ("torch", "transformers")  # seconds to import: the model thread does it
LAZY = ("numpy",)  # 0.2 s: the first retrieval search imports it (server/retrieval.py)


def test_the_server_module_imports_no_model_library():
    """`midline serve` imports the CLI and the server module before it can answer: neither pulls in torch, or
    numpy."""
    check = (
        "import json, sys; import midline.server.cli, midline.server.server; "
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(HEAVY + LAZY)!r}))))"
    )
    run = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == []


@pytest.mark.asyncio
@pytest.mark.e2e
async def test_requests_before_the_model_is_ready_are_answered_at_once(tiny_model_dir, tmp_path):
    # PyTorch's load (importing torch) takes seconds: long enough to ask during it (llama.cpp's takes a fraction of one)
    settings = {"model": str(tiny_model_dir), "engine": "torch", **SETTINGS}
    async with running_server(settings, tmp_path, loaded=False) as (client, _):
        assert (await status(client))["state"] == "loading"  # initialize was answered first
        uri = (tmp_path / "circle.py").as_uri()
        open_document(client, uri, CODE)
        column = len(CODE.split("\n")[COMMENT_LINE])
        assert len((await inline(client, uri, COMMENT_LINE, column)).items) == 0
        listed = await code_actions(client, uri, 3, 5)  # def area
        client.messages.clear()
        await client.code_action_resolve_async(next(a for a in listed if a.kind == "refactor.midline.explain"))
        loading = await status(client)
        assert loading["state"] == "loading" and not loading["ready"], "the answers above waited for the model"
        shown = [m.message for m in client.messages]
        assert len(shown) == 1 and shown[0].startswith("midline: Explain"), shown
        assert "the model is still loading" in shown[0], shown

        assert (await wait_until_loaded(client))["state"] == "ready"
        assert (await inline(client, uri, COMMENT_LINE, column)).items  # the same request, now with the model


@pytest.mark.asyncio
@pytest.mark.e2e
async def test_a_model_that_fails_to_load_is_a_status_not_a_wait(tmp_path):
    async with running_server({"model": str(tmp_path / "no-such-model")}, tmp_path) as (client, _):
        failed = await status(client)
        assert failed["state"] == "failed" and not failed["ready"] and "no-such-model" in failed["error"]
        uri = (tmp_path / "a.py").as_uri()
        open_document(client, uri, CODE)
        assert len((await asyncio.wait_for(inline(client, uri, 6, 4), timeout=10)).items) == 0
        at = types.Position(3, 5)  # def area
        hover = await client.text_document_hover_async(types.HoverParams(types.TextDocumentIdentifier(uri), at))
        assert hover is not None and "area" in str(hover.contents)  # the signature, without the model


def test_the_model_thread_runs_calls_in_order_and_the_process_does_not_wait_for_it():
    thread = ModelThread("test-model")
    assert thread._thread.daemon
    hold, ran = threading.Event(), []
    first = thread.submit(hold.wait)
    second = thread.submit(ran.append, 2)
    third = thread.submit(ran.append, 3)
    failing = thread.submit(int, "not a number")
    assert not second.done()  # one call at a time: the first holds the thread
    hold.set()
    assert third.result(timeout=10) is None and ran == [2, 3] and first.result() is True
    with pytest.raises(ValueError):
        failing.result(timeout=10)
    hold.clear()
    thread.submit(hold.wait)
    waiting = thread.submit(ran.append, 4)
    thread.shutdown(wait=False, cancel_futures=True)
    assert waiting.cancelled()
    with pytest.raises(RuntimeError):
        thread.submit(ran.append, 5)
    hold.set()
    thread._thread.join(timeout=10)
    assert ran == [2, 3] and not thread._thread.is_alive()


@pytest.mark.e2e
def test_exit_does_not_wait_for_the_model_to_load(tmp_path):
    """An editor that quits right after starting the server: `shutdown` and `exit` while the model thread still
    imports torch end the process at once (exit joined that thread, for seconds, when it was not a daemon)."""
    server = RawServer(tmp_path / "server.log")
    try:
        assert server.initialize(tmp_path) is not None
        state = server.request("state", "workspace/executeCommand", {"command": "midline.status", "arguments": []})
        assert state is not None and state["result"]["state"] == "loading", state
        started = time.monotonic()
        assert server.close() == 0
        assert time.monotonic() - started < 2.0, "exit waited for the model thread"
    finally:
        if server.process.poll() is None:
            server.process.kill()
