"""End to end in a real editor: headless Neovim 0.11 with midline's plugin (nvim/), set up as the README says,
against the real `midline serve` with the tiny random-weight test model. The driver (tests/nvim/plugin.lua) types
in insert mode; the plugin asks for inline completions and draws them as extmarks; each of its keys (accept all,
word, line; cycle; dismiss) is pressed, and the buffer must hold exactly the text the server's item says, with
every other line as it was. Explain opens a split and leaves the code's window alone; `:checkhealth midline`
reports the server; .tsx/.jsx buffers attach. One Neovim session runs every step (the model loads once); the tests
below each check one part of its record.
"""

from __future__ import annotations

import json
import os
import re
import sys

import pytest

from midline.model import languages

from ..neovim import NVIM_LUA, PLUGIN, PLUGIN_PLACEHOLDER, assert_stopped, readme_neovim_snippet, run_nvim
from .test_server import SETTINGS

# At the end of the comment, where the random-weight model's noise is valid Python; the user types the space.
CODE = '''import math


def area(radius):
    """Area of a circle."""
    # multiply the square of the radius by
    return math.pi * radius ** 2


print(area(2.0))
'''
LINE = 5  # 0-based: the comment
TYPED = " "
EXPLAIN_LINE = 6  # 0-based: in `area`'s body

# The plugin's word and line (ghost.lua's `word` and `first_line`), in Lua's character classes.
SPACE, WORD = r"[ \t\n\r\f\v]", r"[A-Za-z0-9_]"
NEXT_WORD = re.compile(rf"{SPACE}*{WORD}+|{SPACE}*[^A-Za-z0-9_ \t\n\r\f\v]+|{SPACE}+")
NEXT_LINE = re.compile(r"\n?[^\n]*")


def readme_init(tmp_path) -> str:
    """The README's setup, with this checkout's plugin folder for the placeholder path."""
    snippet = readme_neovim_snippet()
    assert PLUGIN_PLACEHOLDER in snippet
    init = tmp_path / "init.lua"
    init.write_text(snippet.replace(PLUGIN_PLACEHOLDER, str(PLUGIN)))
    return str(init)


@pytest.fixture(scope="module")
def session(tiny_model_dir, tmp_path_factory):
    """One run of the driver: its result and a report for failure messages."""
    tmp_path = tmp_path_factory.mktemp("nvim-plugin")
    workspace = tmp_path / "workspace"
    (workspace / ".git").mkdir(parents=True)
    source = workspace / "circle.py"
    source.write_text(CODE)
    for name in ("view.tsx", "view.jsx"):
        (workspace / name).write_text("export const answer = 42;\n")
    env = {
        # The README's default command, `midline serve`, from the environment running the tests.
        "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]),
        "MIDLINE_SETTINGS": json.dumps({"model": str(tiny_model_dir), **SETTINGS}),
        "MIDLINE_FILE": str(source),
        "MIDLINE_LINE": str(LINE + 1),
        "MIDLINE_TYPED": TYPED,
        "MIDLINE_EXPLAIN_LINE": str(EXPLAIN_LINE + 1),
        "MIDLINE_TIMEOUT_MS": "20000",
    }
    args = ["-u", readme_init(tmp_path), "-S", str(NVIM_LUA / "plugin.lua")]
    with run_nvim(args, workspace, tmp_path, env, timeout=90) as run:
        result = run.check()
        assert_stopped(result["server_pids"], run.report)
        yield result, run.report


def inline_texts(reply: dict) -> list[str]:
    """The insert texts of an inlineCompletion reply (a list, or an InlineCompletionList)."""
    items = reply if isinstance(reply, list) else reply.get("items", [])
    return [item["insertText"] for item in items]


def with_inserted(text: str) -> list[str]:
    """The document after `text` goes in at the cursor (after the typed space)."""
    lines = CODE.splitlines()
    lines[LINE] += TYPED + text
    return "\n".join(lines).split("\n")


def typed_lines() -> list[str]:
    return with_inserted("")


@pytest.mark.e2e
@pytest.mark.slow
def test_ghost_text_shows_the_servers_suggestion_without_changing_the_buffer(session):
    result, report = session
    assert result["setup"] is True and result["cmd"] == ["midline", "serve"], report
    step = result["all"]
    reply = step["reply"]
    assert reply["trigger"] == 2, report  # automatic: asked because the user typed
    assert reply["position"] == {"line": LINE, "character": len(CODE.splitlines()[LINE] + TYPED)}, report
    text = step["shown"]["text"]
    assert text and text == inline_texts(reply["reply"])[0], report
    assert step["lines"] == typed_lines(), report  # ghost text is not in the buffer

    # One extmark at the cursor: the first line as inline virtual text, the others as virtual lines.
    (mark,) = step["marks"]
    first, *others = text.split("\n")
    assert (mark["row"], mark["col"]) == (LINE, len(CODE.splitlines()[LINE] + TYPED)), report
    if first:
        assert mark["pos"] == "inline" and mark["text"] == [[first, "MidlineGhost"]], report
    assert (mark.get("lines") or []) == [[[line, "MidlineGhost"]] for line in others], report


@pytest.mark.e2e
@pytest.mark.slow
def test_accept_inserts_the_whole_suggestion(session):
    result, report = session
    step = result["all"]
    text = step["shown"]["text"]
    assert step["after"] == with_inserted(text), report
    end = with_inserted(text)
    assert step["cursor"] == [LINE + 1 + text.count("\n"), len(end[LINE + text.count("\n")])], report


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("how, pattern", [("word", NEXT_WORD), ("line", NEXT_LINE)])
def test_accept_word_and_line_insert_that_part_and_keep_the_rest(session, how, pattern):
    result, report = session
    step = result[how]
    text = step["shown"]["text"]
    piece = pattern.match(text).group(0)
    assert piece, report
    assert step["after"] == with_inserted(piece), f"{how} of {text!r}\n{report}"
    rest = text[len(piece):]
    if rest:  # the rest stays on screen, at the new cursor
        assert step["rest"]["text"] == rest, report
        assert len(step["rest_marks"]) == 1, report
    else:
        assert step.get("rest") is None, report


@pytest.mark.e2e
@pytest.mark.slow
def test_cycling_shows_the_servers_other_candidates(session):
    result, report = session
    step = result["cycle"]
    reply = step["explicit_reply"]
    assert reply["trigger"] == 1, report  # the first press asked explicitly, for the ranked candidates
    candidates = step["candidates"]
    assert candidates["items"] == inline_texts(reply["reply"]), report
    assert candidates["count"] >= 2, f"the server gave one candidate: {candidates}\n{report}"
    assert candidates["text"] != step["shown"]["text"], report  # another candidate than the one shown
    assert step["next"]["index"] == candidates["index"] % candidates["count"] + 1, report
    assert step["after"] == with_inserted(step["next"]["text"]), report  # Tab takes the one on screen


@pytest.mark.e2e
@pytest.mark.slow
def test_typing_the_suggestion_keeps_its_rest(session):
    result, report = session
    step = result["through"]
    text = step["shown"]["text"]
    if len(text) > 1 and text[0] not in "\n\t":
        assert step.get("rest") and step["rest"]["text"] == text[1:], report


@pytest.mark.e2e
@pytest.mark.slow
def test_dismiss_escape_and_pause_leave_no_ghost_text(session):
    result, report = session
    dismiss = result["dismiss"]
    assert dismiss.get("rest") is None and dismiss["rest_marks"] == [], report
    assert dismiss["after"] == typed_lines(), report
    assert result["escape"]["rest_marks"] == [], report
    assert result["paused"] == {"marks": []}, report  # nothing shown


@pytest.mark.e2e
@pytest.mark.slow
def test_explain_opens_a_split_and_leaves_the_code_alone(session):
    result, report = session
    explain = result["explain"]
    assert explain["windows"] == explain["windows_before"] + 1, report
    assert explain["code_window_buffer_is_code"] and explain["focus_stays"], report
    assert explain["code"] == result["original"] == CODE.splitlines(), report
    assert explain["text"][0] == "### `area`", report
    assert (explain["filetype"], explain["buftype"]) == ("markdown", "nofile"), report


@pytest.mark.e2e
@pytest.mark.slow
def test_checkhealth_reports_the_server(session, tiny_model_dir):
    result, report = session
    health = "\n".join(result["health"])
    assert re.search(r"OK Neovim 0\.1\d", health), health
    assert "OK server command: midline serve (" in health, health
    assert f"model {tiny_model_dir}, device cpu: ready" in health, health


@pytest.mark.e2e
@pytest.mark.slow
def test_tsx_and_jsx_buffers_attach(session):
    result, report = session
    assert result["attached"] == {"view.tsx": "typescriptreact", "view.jsx": "javascriptreact"}, report


def test_readme_setup_loads_the_plugin_from_its_folder():
    snippet = readme_neovim_snippet()
    assert f'vim.opt.runtimepath:append("{PLUGIN_PLACEHOLDER}")' in snippet
    assert (PLUGIN / "plugin" / "midline.lua").is_file() and (PLUGIN / "lua" / "midline" / "init.lua").is_file()


def test_plugin_filetypes_are_every_served_language():
    defaults = (PLUGIN / "lua" / "midline" / "init.lua").read_text()
    listed = re.search(r"filetypes = \{(.*?)\}", defaults, re.S)
    assert listed and re.findall(r'"([^"]+)"', listed[1]) == languages.vscode_ids()


@pytest.mark.e2e
def test_a_missing_server_command_is_reported_and_nothing_starts(tmp_path):
    workspace = tmp_path / "workspace"
    (workspace / ".git").mkdir(parents=True)
    (workspace / "a.py").write_text("x = 1\n")
    env = {"MIDLINE_FILE": str(workspace / "a.py"), "MIDLINE_CMD": json.dumps(["/nonexistent/midline", "serve"])}
    args = ["-u", "NONE", "--cmd", f"set runtimepath^={PLUGIN}", "-S", str(NVIM_LUA / "missing.lua")]
    with run_nvim(args, workspace, tmp_path, env, timeout=30) as run:
        result = run.check()
    assert result["setup"] is False, run.report
    (message,) = result["messages"]
    assert message["level"] == 4  # vim.log.levels.ERROR
    assert "`/nonexistent/midline serve` is not executable" in message["text"], run.report
    assert result["clients"] == 0, run.report
    assert "ERROR server command: /nonexistent/midline serve: not executable" in "\n".join(result["health"])



GHOST = "MidlineGhost"
CALL = ["def f(a, b):", "    total = g()", "    return total"]
CALL_DONE = ["def f(a, b):", "    total = g(a,", "        b)", "    return total"]


@pytest.mark.e2e
def test_keys_on_replies_of_several_lines_ranges_and_candidates(tmp_path):
    """Replies the random-weight model does not write (tests/nvim/ghost_keys.lua hands them to the plugin)."""
    args = ["-u", "NONE", "--cmd", f"set runtimepath^={PLUGIN}", "-S", str(NVIM_LUA / "ghost_keys.lua")]
    with run_nvim(args, tmp_path, tmp_path, {}, timeout=30) as run:
        cases = run.check()["cases"]
    report = json.dumps(cases, indent=1)

    # "a,\n        b)" replacing the `)` after the cursor: the first line drawn over the `)` (it moves down), the
    # second as a virtual line; each line key inserts one line, the last one replaces the `)`.
    shown, first, second = cases["lines"]
    assert shown["marks"] == [{"row": 1, "col": 14, "pos": "overlay", "text": [["a,", GHOST]],
                               "lines": [[["        b)", GHOST]]]}], report
    assert first["lines"] == ["def f(a, b):", "    total = g(a,)", "    return total"], report
    assert first["shown"]["text"] == "\n        b)" and first["marks"][0]["lines"] == [[["        b)", GHOST]]], report
    assert (second["lines"], second["cursor"], second["marks"]) == (CALL_DONE, [3, 10], []), report
    assert cases["all"][1]["lines"] == CALL_DONE and cases["all"][1]["cursor"] == [3, 10], report
    words = [step["lines"][1] for step in cases["words"][1:]]
    assert words == ["    total = g(a)", "    total = g(a,)", "    total = g(a,"], report
    assert cases["words"][-1]["lines"] == CALL_DONE and cases["words"][-1].get("shown") is None, report

    # A one-line suggestion that ends with the replaced `)`: inline, without it; accepted, one `)`.
    shown, accepted = cases["closing"]
    assert shown["marks"] == [{"row": 0, "col": 6, "pos": "inline", "text": [["x", GHOST]]}], report
    assert (accepted["lines"], accepted["cursor"]) == (["print(x)"], [1, 8]), report
    # The range counts UTF-16 units: `é` is one unit and two bytes.
    assert cases["utf16"][0]["marks"][0]["col"] == 13 and cases["utf16"][1]["lines"] == ["s = 'é' + g(s)"], report

    # Two candidates: the next key shows the second, Tab inserts it.
    shown, cycled, accepted = cases["cycle"]
    assert (shown["shown"]["text"], cycled["shown"]["text"], cycled["shown"]["index"]) == ("1", "2", 2), report
    assert cycled["lines"] == ["x = "] and accepted["lines"] == ["x = 2"], report
