"""The server's log holds the user's code (documents, prompts, suggestions, explanations) only at DEBUG.

The real server runs with its stderr, the log an editor keeps, written to a file; at INFO it is asked for a
completion, a hover, an explanation and its status over a document whose names appear nowhere else. At DEBUG
the same log does hold the suggestion, so the check below can see a leak.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from lsprotocol import types

from ..lsp_client import inline, open_document, running_server, status
from tests.server.test_actions import code_actions

pytestmark = [pytest.mark.asyncio, pytest.mark.e2e]

# The test model's text is noise; at the end of a comment any one line is valid Python, so it is shown.
CODE = '''import math


def zanzibar_quokka(radius):
    """Area of a circle."""
    # multiply the square of the radius by 
    return math.pi * radius ** 2
'''
LINE = 5
NAMES = ("zanzibar_quokka", "multiply the square of the radius")
SETTINGS = {"debounceMs": 0, "maxNewTokens": 24, "timeoutMs": 20000, "hover": {"idleMs": 0}}


def logged_server(log: Path, level: str) -> list[str]:
    """`midline serve` at `level`, its stderr (the log) written to `log`."""
    redirect = "import os, sys; os.dup2(os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)"
    serve = "from midline.server.cli import main; sys.exit(main(['serve', '--log-level', sys.argv[2]]))"
    return [sys.executable, "-c", f"{redirect}; {serve}", str(log), level]


async def _session(model: Path, root: Path, level: str) -> tuple[str, list[str]]:
    """The log of a session at `level`, and the texts the server answered with (suggestion, explanation)."""
    log = root / f"server-{level}.log"
    answered: list[str] = []
    command = logged_server(log, level)
    async with running_server({"model": str(model), **SETTINGS}, root, command=command) as (client, _):
        uri = (root / "area.py").as_uri()
        open_document(client, uri, CODE)
        result = await inline(client, uri, LINE, len(CODE.split("\n")[LINE]))
        answered += sorted((item.insert_text for item in result.items), key=len, reverse=True)  # the longest first
        name = types.Position(3, 6)  # zanzibar_quokka
        await client.text_document_hover_async(types.HoverParams(types.TextDocumentIdentifier(uri), name))
        if level != "DEBUG":
            listed = await code_actions(client, uri, 3, 6)
            explain = next(a for a in listed if a.kind == "refactor.midline.explain")
            explain = await client.code_action_resolve_async(explain)
            answered += [str(arg) for arg in (explain.command.arguments or [])] if explain.command else []
        await status(client)
    return log.read_text(encoding="utf-8", errors="replace"), answered


def logged(code: str, log: str) -> bool:
    """Whether `code` is in `log`, as it is or as JSON spells it inside a logged message."""
    return code in log or json.dumps(code)[1:-1] in log


async def test_an_info_log_holds_no_code(tiny_model_dir, tmp_path):
    text, answered = await _session(tiny_model_dir, tmp_path, "INFO")
    assert "loaded on" in text  # the log was written, at INFO
    suggestion = answered[0].strip()
    assert len(suggestion) >= 6, answered  # long enough to be found if it were logged
    for code in (*NAMES, suggestion, *[a.strip() for a in answered[1:]]):
        assert not logged(code, text), f"{code!r} is in the INFO log:\n{text}"
    assert "Registered" not in text and "Sending data" not in text  # pygls's per-feature and per-message lines


async def test_a_debug_log_does_hold_the_suggestion(tiny_model_dir, tmp_path):
    text, answered = await _session(tiny_model_dir, tmp_path, "DEBUG")
    assert answered and answered[0].strip() and logged(answered[0].strip(), text)
