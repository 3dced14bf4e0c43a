"""One settings holder: after `workspace/didChangeConfiguration` every component of the server reads the new values."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

from lsprotocol import types

from midline.server import server as handlers
from midline.server.config import Config, Settings
from midline.server.server import MidlineServer

from tests.test_readme import settings as dotted

MANIFEST = Path(__file__).resolve().parents[2] / "vscode-client/package.json"


async def _change(server: MidlineServer, settings: dict[str, Any]) -> None:
    await handlers.did_change_configuration(server, types.DidChangeConfigurationParams(settings={"midline": settings}))


def _seen(server: MidlineServer) -> dict[str, Any]:
    """What each component reads now."""
    assert server.completer is not None
    return {
        "completer": server.completer.config.debounce_ms,
        "assistant": server.assistant.config.actions.max_new_tokens,
        "actions": server.actions.config.actions.test_timeout_ms,
        "explainer": server.explainer.idle_ms(),
    }


def test_a_settings_change_reaches_every_component(tiny_model_dir: Path):
    """The server's handlers, called in process: a change while the model loads and one after it both reach the
    completer, the assistant, the actions and the hover explainer; an invalid one changes nothing anywhere."""

    async def scenario() -> None:
        server = MidlineServer()
        shown: list[str] = []
        server.report = shown.append  # type: ignore[method-assign]
        options = {"model": str(tiny_model_dir), "device": "cpu", "debounceMs": 0}
        handlers.initialize(server, types.InitializeParams(capabilities=types.ClientCapabilities(),
                                                           initialization_options=options))
        hold = threading.Event()
        server.model_executor.submit(hold.wait)  # the model loads only once the first change is in
        handlers.initialized(server, types.InitializedParams())
        await _change(server, {"debounceMs": 7, "actions": {"maxNewTokens": 77, "testTimeoutMs": 7000},
                               "hover": {"idleMs": 70}})
        assert server.engine_ready is not None and not server.engine_ready.done()
        hold.set()
        assert await server.engine_ready is not None
        assert _seen(server) == {"completer": 7, "assistant": 77, "actions": 7000, "explainer": 70}

        await _change(server, {"debounceMs": 9, "actions": {"maxNewTokens": 99, "testTimeoutMs": 9000},
                               "hover": {"idleMs": 90}})
        assert _seen(server) == {"completer": 9, "assistant": 99, "actions": 9000, "explainer": 90}

        await _change(server, {"debounceMs": 1, "actions": {"maxNewTokens": "lots"}})
        assert _seen(server) == {"completer": 9, "assistant": 99, "actions": 9000, "explainer": 90}
        assert len(shown) == 1 and "midline.actions.maxNewTokens" in shown[0], shown
        server.model_executor.shutdown(wait=True)

    asyncio.run(scenario())


def test_a_component_given_a_config_has_a_holder_of_its_own():
    from midline.server.actions import Actions

    holder = Settings(Config(debounce_ms=5))
    assert Settings.of(holder) is holder and Settings.of(Config()).current == Config()
    acts = Actions(None, Config(debounce_ms=3))  # type: ignore[arg-type]
    acts.config = Config(debounce_ms=4)  # assigning replaces the holder's current settings
    assert acts.settings.current.debounce_ms == 4 and holder.current.debounce_ms == 5


def test_every_setting_is_a_vs_code_setting_with_its_default():
    """The extension contributes every server setting as `midline.<key>`, with the server's default, and only
    its own four besides."""
    properties = json.loads(MANIFEST.read_text(encoding="utf-8"))["contributes"]["configuration"]["properties"]
    contributed = {key.removeprefix("midline."): spec.get("default") for key, spec in properties.items()}
    server = dotted(Config().to_json())
    assert {key: contributed.get(key, "(missing)") for key in server} == server
    assert set(contributed) - set(server) == {"pythonPath", "serverCommand", "logLevel", "trace.server"}
