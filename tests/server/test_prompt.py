"""Prompts sized to the model's context: the layout's measured cost, the budgets, and the fit of whole prompts."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from lsprotocol import types

from midline.model.fim import FimPrompt
from midline.model.remote import RemoteEngine
from midline.server import server as handlers
from midline.server.completion import Completer
from midline.server.config import Config
from midline.server.documents import Document
from midline.server.prompt import MIN_WINDOWS, PromptBuilder
from midline.server.symbols import SymbolIndex

GEOMETRY = (
    "class Vector:\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n\n\n"
    "def distance(a, b):\n    return 0.0\n"
)
LONG_FILE = (
    "from geometry import Vector, distance\n\n"
    + "".join(f"value_{i} = {i} * {i}\n" for i in range(3000))
    + "\n\ndef nearest(point: Vector):\n    d = distance(point, point)\n    "
)
# A path of about 300 model tokens: with a guessed layout cost, its prompts would overflow the room.
DEEP = "/".join(f"deeply_nested_package_{i}" for i in range(40))


def settings(mode: str = "auto") -> Config:
    """Windows bounded by the model's room, not by `context.budget`."""
    return Config.from_json({"maxNewTokens": 16, "fimMode": mode, "context": {"budget": 100_000}})


def document(root, path: str, text: str = LONG_FILE) -> Document:
    return Document((root / path).as_uri(), "python", 1, text)


@pytest.mark.parametrize("mode", ["spm", "psm"])
@pytest.mark.parametrize("path", ["app.py", f"{DEEP}/app.py"])
def test_a_prompt_at_the_budget_fits_the_room(tiny_engine, tmp_path, path, mode):
    builder = PromptBuilder(tiny_engine, settings(mode), root=tmp_path)
    doc = document(tmp_path, path)
    prompt = builder.build(doc, len(LONG_FILE))
    assert prompt is not None and prompt.fim.path == path
    assert prompt.tokens == len(tiny_engine.encode(prompt.fim, mode)) == len(prompt.encoded)
    assert prompt.tokens <= builder.room == tiny_engine.max_context - 16
    windows = tiny_engine.count_tokens(prompt.fim.prefix) + tiny_engine.count_tokens(prompt.fim.suffix)
    assert builder.budgets(doc.path).windows - 20 < windows  # the windows take their whole budget


def test_snippets_from_a_file_with_a_long_path_still_fit(tiny_engine, tmp_path):
    """The headers of other files' snippets are not known before the context is built: a prompt that is over
    is built again with smaller windows."""
    app = document(tmp_path, "app.py")
    geometry = document(tmp_path, f"{DEEP}/geometry.py", GEOMETRY)
    index = SymbolIndex()
    index.refresh([app, geometry], exclude=app.uri)
    builder = PromptBuilder(tiny_engine, settings(), root=tmp_path, symbols=index)
    first = builder.context(app, len(LONG_FILE))
    assert first.snippets and first.snippets[0].path == geometry.path
    assert len(tiny_engine.encode(builder.fim_prompt(first))) > builder.room  # the first build is over...
    prompt = builder.build(app, len(LONG_FILE))
    assert prompt is not None and prompt.fim.snippets[0].path == f"{DEEP}/geometry.py"
    assert prompt.tokens == len(prompt.encoded) <= builder.room  # ...the prompt is not
    assert len(prompt.fim.prefix) < len(first.prefix)


def test_the_layout_is_measured_per_path_in_the_models_tokens(tiny_engine, tmp_path):
    builder = PromptBuilder(tiny_engine, settings(), root=tmp_path)
    short, deep = builder.layout(str(tmp_path / "app.py")), builder.layout(str(tmp_path / DEEP / "app.py"))
    bare = FimPrompt("", "", path=f"{DEEP}/app.py", repo=tmp_path.name)
    assert deep.frame == len(tiny_engine.encode(bare)) and deep.frame > short.frame + 100
    assert deep.per_snippet > short.per_snippet > 0
    short_budget, deep_budget = (builder.budgets(str(tmp_path / path)) for path in ("app.py", f"{DEEP}/app.py"))
    assert short_budget.windows - deep_budget.windows == deep.frame - short.frame
    builder.layout(str(tmp_path / "app.py"))
    assert builder._layout.cache_info().hits >= 1  # measured once per path and layout


def test_a_short_context_gives_snippets_a_quarter_and_keeps_some_windows(tiny_engine, tmp_path, monkeypatch):
    builder = PromptBuilder(tiny_engine, settings(), root=tmp_path)
    path = str(tmp_path / "app.py")
    monkeypatch.setattr(tiny_engine, "max_context", 400)
    budgets, layout = builder.budgets(path), builder.layout(path)
    room = builder.room - layout.frame
    assert budgets.snippets + Config().context.max_snippets * layout.per_snippet == room // 4
    assert budgets.windows + budgets.snippets + 6 * layout.per_snippet + layout.frame == builder.room
    monkeypatch.setattr(tiny_engine, "max_context", 16 + layout.frame + 8)  # no room at all
    assert builder.budgets(path).windows == MIN_WINDOWS


def test_no_hole_no_prompt_but_a_window_at_any_offset(tiny_engine, tmp_path):
    builder = PromptBuilder(tiny_engine, settings(), root=tmp_path)
    doc = document(tmp_path, "pkg/app.py")
    mid_word = LONG_FILE.index("nearest") + 3
    assert builder.build(doc, mid_word) is None
    window = builder.window(doc, mid_word)
    assert window.prefix.endswith("def nea") and window.path == "pkg/app.py" and window.repo == tmp_path.name


def test_a_remote_backend_counts_with_its_local_tokenizer(tiny_engine, tmp_path):
    """A remote prompt is text: its length is counted part by part, as the local model encodes the same prompt."""
    remote = RemoteEngine(
        "openai",
        "http://127.0.0.1:9",
        fim_format=tiny_engine.fim,
        tokenizer=tiny_engine.tokenizer,
        max_context=tiny_engine.max_context,
    )
    builder = PromptBuilder(remote, settings(), root=tmp_path)
    prompt = builder.build(document(tmp_path, f"{DEEP}/app.py"), len(LONG_FILE))
    assert prompt is not None and isinstance(prompt.encoded.text, str)
    assert prompt.tokens == len(tiny_engine.encode(prompt.fim)) <= builder.room


USES_GEOMETRY = ("from geometry import Vector, distance\n\n\n"
                 "def nearest(point: Vector):\n    d = distance(point, point)\n    ")


def test_paths_are_shown_relative_to_the_folder_holding_them(tiny_engine, tmp_path):
    """The indexes cover every workspace folder: a definition from the second folder is shown relative to it, a
    file there is completed as that folder's repository, and a file in no folder shows its name alone. The real
    Completer with the tiny model; the builder follows the folder list it is given as it changes."""
    one, two = tmp_path / "one", tmp_path / "two"
    app, geometry = document(one, "app.py", USES_GEOMETRY), document(two, "lib/geometry.py", GEOMETRY)
    index = SymbolIndex()
    index.refresh([app, geometry], exclude=app.uri)
    folders = [one]
    with ThreadPoolExecutor(max_workers=1) as executor:
        completer = Completer(tiny_engine, settings(), executor, root=str(one), folders=lambda: folders, symbols=index)
        before = asyncio.run(completer.complete(app, len(USES_GEOMETRY))).prompt
        folders.append(two)  # the second folder joins the workspace
        made = asyncio.run(completer.complete(app, len(USES_GEOMETRY))).prompt
        elsewhere = document(tmp_path / "elsewhere", "tools/notes.py", USES_GEOMETRY)
        outside = asyncio.run(completer.complete(elsewhere, len(USES_GEOMETRY))).prompt
    assert before is not None and made is not None and outside is not None
    assert [s.path for s in before.fim.snippets] == ["geometry.py"]  # in no folder yet: its name alone
    assert (made.fim.path, made.fim.repo, [s.path for s in made.fim.snippets]) == ("app.py", "one", ["lib/geometry.py"])
    assert (outside.fim.path, outside.fim.repo) == ("notes.py", "one")
    for prompt in (before, made, outside):
        assert str(tmp_path) not in tiny_engine.tokenizer.decode(prompt.encoded)  # no absolute path reaches the model
    in_two = completer.prompts.fim_prompt(completer.prompts.context(document(two, "lib/use.py"), len(LONG_FILE)))
    assert (in_two.path, in_two.repo) == ("lib/use.py", "two")  # the second folder's own repository
    nested = completer.prompts.fim_prompt(completer.prompts.context(document(two, "lib/sub/x.py"), 10))
    folders.append(two / "lib")  # a folder inside another: the innermost holds the file
    inner = completer.prompts.fim_prompt(completer.prompts.context(document(two, "lib/sub/x.py"), 10))
    assert (nested.path, nested.repo, inner.path, inner.repo) == ("lib/sub/x.py", "two", "sub/x.py", "lib")


def test_the_servers_prompts_follow_its_workspace_folders(tiny_model_dir: Path, tmp_path):
    """The server's handlers, in process: the completer shows paths relative to the folders `initialize` names,
    and follows the list the server keeps for its actions (which `didChangeWorkspaceFolders` replaces)."""
    one, two = tmp_path / "one", tmp_path / "two"
    for folder in (one, two):
        folder.mkdir()

    async def scenario() -> None:
        server = handlers.MidlineServer()
        folders = [types.WorkspaceFolder(folder.as_uri(), folder.name) for folder in (one, two)]
        params = types.InitializeParams(
            capabilities=types.ClientCapabilities(), root_uri=one.as_uri(), workspace_folders=folders,
            initialization_options={"model": str(tiny_model_dir), "device": "cpu"},
        )
        handlers.initialize(server, params)
        handlers.initialized(server, types.InitializedParams())
        completer = await server.engine_ready
        assert completer is not None
        assert (completer.prompts.shown(str(two / "lib/a.py")), completer.prompts.repo(str(two / "lib/a.py"))) == (
            "lib/a.py", "two")
        server.actions.folders = [one]  # `two` removed
        assert completer.prompts.shown(str(two / "lib/a.py")) == "a.py"
        server.model_executor.shutdown(wait=True)
        server.indexes.close()

    asyncio.run(scenario())
