"""Notebook cells: the store and a cell's view as part of the notebook's script (mapping, changes), then the real
`midline serve` over LSP 3.17 notebook sync, with the tiny model served over HTTP so each prompt it saw is recorded."""

from __future__ import annotations

import hashlib
import random
import re

import pytest
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.workspace.position_codec import PositionCodec

from midline.server.actions import Replace
from midline.server.notebooks import CELL_SEPARATOR, SYNC_OPTIONS, NotebookStore, OutsideCell

from ..lsp_client import inline, running_server, status
from ..model_server import answer
from tests.server.test_actions import client_capabilities, code_actions

NOTEBOOK = "file:///ws/analysis.ipynb"
MARKDOWN, CODE = types.NotebookCellKind.Markup, types.NotebookCellKind.Code
NOTE = "# Sales\nLoad the sales data and plot revenue by month."
IMPORTS = (
    "%matplotlib inline\nimport pandas as pd\nimport matplotlib.pyplot as plt\n\n\n"
    'def by_month(df):\n    return df.groupby("month")["revenue"].sum()'
)
EDITED = 'df = pd.read_csv("sales.csv")\nmonthly = by_month(df)\nplt.plot()'
BELOW = "plt.show()"
CODEC = PositionCodec(types.PositionEncodingKind.Utf16)


def cell_uri(name: str, notebook: str = "analysis.ipynb") -> str:
    return f"vscode-notebook-cell:/ws/{notebook}#{name}"


def item(name: str, text: str, language: str = "python") -> types.TextDocumentItem:
    return types.TextDocumentItem(cell_uri(name), language, 1, text)


CELLS = [(MARKDOWN, item("note", NOTE, "markdown")), (CODE, item("imports", IMPORTS)), (CODE, item("edited", EDITED)),
         (CODE, item("below", BELOW))]


def open_params(cells=CELLS) -> types.DidOpenNotebookDocumentParams:
    notebook = types.NotebookDocument(NOTEBOOK, "jupyter-notebook", 1, [types.NotebookCell(k, i.uri) for k, i in cells])
    return types.DidOpenNotebookDocumentParams(notebook, [i for _, i in cells])


def change_params(version: int, *, start: int = 0, delete: int = 0, cells=(), opened=(), closed=(), edits=()):
    """A notebookDocument/didChange: cells `start` to `start + delete` become `cells` (kind, uri), `opened` items
    added, `closed` URIs removed; `edits` as (cell URI, version, range, text)."""
    structure = None
    if cells or delete or opened or closed:
        structure = types.NotebookDocumentCellChangeStructure(
            types.NotebookCellArrayChange(start, delete, [types.NotebookCell(k, u) for k, u in cells]),
            did_open=list(opened), did_close=[types.TextDocumentIdentifier(u) for u in closed],
        )
    content = [
        types.NotebookDocumentCellContentChanges(
            types.VersionedTextDocumentIdentifier(uri=uri, version=v), [types.TextDocumentContentChangePartial(r, text)]
        )
        for uri, v, r, text in edits
    ]
    change = types.NotebookDocumentChangeEvent(
        cells=types.NotebookDocumentCellChanges(structure=structure, text_content=content or None)
    )
    notebook = types.VersionedNotebookDocumentIdentifier(version=version, uri=NOTEBOOK)
    return types.DidChangeNotebookDocumentParams(notebook, change)


def at(line: int, character: int) -> types.Range:
    return types.Range(types.Position(line, character), types.Position(line, character))


# -- the store and the mapping ----------------------------------------------------------------------------------

SCRIPT_ABOVE = (
    "# # Sales\n# Load the sales data and plot revenue by month.\n\n"
    "# %matplotlib inline\nimport pandas as pd\nimport matplotlib.pyplot as plt\n\n\n"
    'def by_month(df):\n    return df.groupby("month")["revenue"].sum()\n\n'
)


def test_a_cell_reads_as_its_notebooks_script_in_its_own_coordinates():
    store = NotebookStore()
    store.open(open_params().notebook_document, open_params().cell_text_documents)
    view = store.view(cell_uri("edited"))
    assert view.text == SCRIPT_ABOVE + EDITED + CELL_SEPARATOR + BELOW
    assert view.start == len(SCRIPT_ABOVE) and view.text[view.start :].startswith(EDITED)
    assert (view.path, view.language, view.uri, view.version) == ("/ws/analysis.py", "python", cell_uri("edited"), 1)
    offset = view.offset_at(types.Position(2, 9), CODEC)  # plt.plot(|)
    assert view.text[:offset].endswith("\nplt.plot(") and view.text[offset:] == ")" + CELL_SEPARATOR + BELOW
    assert view.position_at(offset, CODEC) == types.Position(2, 9)
    assert view.position_at(view.start, CODEC) == types.Position(0, 0)
    with pytest.raises(OutsideCell, match="outside the cell"):
        view.position_at(view.start - 1, CODEC)
    with pytest.raises(OutsideCell):
        view.position_at(view.start + len(EDITED) + 1, CODEC)
    with pytest.raises(ValueError, match="past the end"):  # a position the cell does not have
        view.offset_at(types.Position(3, 0), CODEC)
    assert store.view(cell_uri("edited")) is view  # made once per change of the notebook
    # an action's replacement: whole lines of the cell's end stop at its end; one reaching another cell is refused
    end = view.start + len(EDITED)
    assert view.in_cell(Replace(offset, end + 1, "x\n")) == Replace(offset, end, "x")
    assert view.in_cell(Replace(view.start, end, "y")) == Replace(view.start, end, "y")
    for outside in (Replace(view.start - 1, end, "z\n"), Replace(offset, end + 3, "z\n")):
        with pytest.raises(OutsideCell, match="reaches past the cell"):
            view.in_cell(outside)
    imports = store.view(cell_uri("imports"))  # the cell verbatim, its magic too
    assert imports.start == SCRIPT_ABOVE.index("\n\n") + 2 and imports.text[imports.start :].startswith(IMPORTS)


def test_other_languages_are_left_out_and_the_first_cell_starts_the_script():
    cells = [(CODE, item("sql", "SELECT 1", "sql")), (CODE, item("first", "x = 1")), (CODE, item("empty", "  \n")),
             (CODE, item("js", "let y = 2", "javascript")), (MARKDOWN, item("md", "Then y.", "markdown"))]
    store = NotebookStore()
    store.open(open_params(cells).notebook_document, open_params(cells).cell_text_documents)
    python = store.view(cell_uri("first"))
    assert (python.text, python.start) == ("x = 1\n\n# Then y.", 0)
    js = store.view(cell_uri("js"))
    assert (js.text, js.start, js.path) == ("let y = 2\n\n// Then y.", 0, "/ws/analysis.js")


def test_cells_added_moved_removed_and_edited_keep_their_text():
    store = NotebookStore()
    store.open(open_params().notebook_document, open_params().cell_text_documents)
    edited = cell_uri("edited")
    # a cell added above the edited one, and a line typed at the edited cell's top
    store.change(change_params(2, start=2, cells=[(CODE, cell_uri("target"))], opened=[item("target", "target = 1000")],
                               edits=[(edited, 2, at(0, 0), "# revenue\n")]), CODEC)
    view = store.view(edited)
    assert view.text[: view.start].endswith("sum()\n\ntarget = 1000\n\n")
    assert view.text[view.start :].startswith("# revenue\n" + EDITED) and view.version == 2
    assert view.position_at(view.offset_at(types.Position(3, 9), CODEC), CODEC) == types.Position(3, 9)
    # the last cell moved to the top, the markdown cell removed
    store.change(change_params(3, start=0, delete=5, cells=[(CODE, cell_uri("below")), (CODE, cell_uri("imports")),
                                                            (CODE, cell_uri("target")), (CODE, edited)],
                               closed=[cell_uri("note")]), CODEC)
    view = store.view(edited)
    assert view.text.startswith("plt.show()\n\n# %matplotlib inline\n") and view.text.endswith(EDITED)
    assert "Sales" not in view.text and cell_uri("note") not in store
    # bad changes are refused whole, the text kept
    for bad in (
        change_params(4, edits=[(cell_uri("nowhere"), 2, at(0, 0), "x")]),
        change_params(4, start=3, delete=2, cells=[]),  # past the last cell
        change_params(4, start=0, delete=1, cells=[(CODE, cell_uri("unopened"))]),
        change_params(4, start=0, delete=1, edits=[(cell_uri("below"), 2, at(0, 0), "x")]),  # a cell the change removes
    ):
        with pytest.raises(KeyError):
            store.change(bad, CODEC)
        assert store.view(edited) is view
    bad = types.DidChangeNotebookDocumentParams(types.VersionedNotebookDocumentIdentifier(2, "file:///ws/other.ipynb"),
                                                types.NotebookDocumentChangeEvent())
    with pytest.raises(KeyError, match="other.ipynb is not open"):
        store.change(bad, CODEC)
    assert sorted(store.close(NOTEBOOK)) == sorted(cell_uri(n) for n in ("below", "imports", "target", "edited"))
    with pytest.raises(KeyError, match="in no open notebook"):
        store.view(edited)


def test_typing_in_a_cell_edits_its_view_in_place():
    store = NotebookStore()
    store.open(open_params().notebook_document, open_params().cell_text_documents)
    edited = cell_uri("edited")
    view, other = store.view(edited), store.view(cell_uri("below"))
    rng = random.Random(16)
    for version in range(2, 202):
        cell = store.cell(edited)
        line = rng.randrange(cell.line_count() + 1)  # a line past the end too: clamped, as LSP says
        start, end = sorted((types.Position(line, rng.randrange(12)), types.Position(line + rng.randrange(2), 3)))
        text = rng.choice(["x", "", "(", ")\n", "\n    ", "é", "def f():\n"])
        store.change(change_params(version, edits=[(edited, version, types.Range(start, end), text)]), CODEC)
    assert store.view(edited) is view and view.version == 201  # edited in place: parsed incrementally
    cell = store.cell(edited)
    fresh = NotebookStore()
    fresh.open(open_params([*CELLS[:2], (CODE, item("edited", cell.text)), CELLS[3]]).notebook_document,
               open_params([*CELLS[:2], (CODE, item("edited", cell.text)), CELLS[3]]).cell_text_documents)
    again = fresh.view(edited)
    assert view.text == again.text and view.start == again.start
    assert str(view.tree.root_node) == str(again.tree.root_node)
    assert store.view(cell_uri("below")) is not other and cell.text in store.view(cell_uri("below")).text


def test_the_sync_options_name_every_language_and_markdown():
    (selector,) = SYNC_OPTIONS.notebook_selector
    languages = {cell.language for cell in selector.cells or []}
    assert selector.notebook == "*" and {"python", "typescript", "markdown"} <= languages


# -- over the protocol ----------------------------------------------------------------------------------------



def notebook_client() -> types.ClientCapabilities:
    """A client like VS Code with vscode-languageclient: notebook sync, inline completion, resolvable code actions."""
    capabilities = client_capabilities()
    assert capabilities.text_document is not None
    capabilities.text_document.inline_completion = types.InlineCompletionClientCapabilities()
    capabilities.notebook_document = types.NotebookDocumentClientCapabilities(
        types.NotebookDocumentSyncClientCapabilities()
    )
    return capabilities


def fim_parts(prompt: str, fim) -> tuple[str, str]:
    """The prefix and suffix windows of a prompt the model saw (each runs from its token to the next FIM token, in
    either order)."""
    tokens = "|".join(re.escape(token) for token in (fim.prefix, fim.suffix, fim.middle))
    parts = dict(re.findall(rf"({tokens})(.*?)(?={tokens})", prompt, flags=re.DOTALL))
    return parts[fim.prefix], parts[fim.suffix]


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.e2e
async def test_midline_serve_completes_a_notebook_cell_with_the_cells_around_it(served, tiny_engine, tiny_model_dir,
                                                                               tmp_path):
    served.reset()
    served.feed = answer("monthly.index, monthly.values)")
    backend = {"kind": "openai", "url": served.url, "tokenizer": str(tiny_model_dir)}
    edited = cell_uri("edited")
    async with running_server({"debounceMs": 0, "backend": backend}, tmp_path,
                              client_capabilities=notebook_client()) as (client, result):
        sync = result.capabilities.notebook_document_sync
        assert isinstance(sync, types.NotebookDocumentSyncOptions) and sync.notebook_selector[0].notebook == "*"
        client.notebook_document_did_open(open_params())

        async def complete(line: int, character: int) -> tuple[types.InlineCompletionList, str, str]:
            """The answer at a position of the edited cell, and the prefix and suffix the model saw."""
            served.requests.clear()
            answered = await inline(client, edited, line, character)
            (request,) = served.requests
            return answered, *fim_parts(request["payload"]["prompt"], tiny_engine.fim)

        answered, prefix, suffix = await complete(2, 9)  # plt.plot(|)
        assert prefix.endswith(SCRIPT_ABOVE + 'df = pd.read_csv("sales.csv")\nmonthly = by_month(df)\nplt.plot(')
        assert suffix == ")" + CELL_SEPARATOR + BELOW
        assert "analysis.py" in served.requests[0]["payload"]["prompt"]
        (shown,) = answered.items
        assert shown.insert_text == "monthly.index, monthly.values)"
        assert shown.range == types.Range(types.Position(2, 9), types.Position(2, 10))  # the cell's ")"

        # hover: a function from the cell above, the range the hovered name's in the cell
        hovered = await client.text_document_hover_async(
            types.HoverParams(types.TextDocumentIdentifier(edited), types.Position(1, 12))
        )
        assert hovered is not None and "def by_month(df):" in hovered.contents.value
        assert hovered.range == types.Range(types.Position(1, 10), types.Position(1, 18))

        # a code action on the function in the import cell: the fix's edit is in that cell's coordinates
        served.feed = answer('def by_month(df):\n    return df.groupby("month")["revenue"].mean()\n')
        imports = cell_uri("imports")
        fix = next(a for a in await code_actions(client, imports, 5, 6) if a.kind == "quickfix.midline.fix")
        resolved = await client.code_action_resolve_async(fix)
        (change,) = resolved.edit.document_changes
        assert change.text_document.uri == imports and change.text_document.version == 1
        assert change.edits[0].range == types.Range(types.Position(5, 0), types.Position(6, 47))  # to the cell's end
        assert change.edits[0].new_text == 'def by_month(df):\n    return df.groupby("month")["revenue"].mean()'

        # cells added above, a line typed at the top of the edited cell, then the markdown removed and the last
        # cell moved to the top
        served.feed = answer("monthly.index, monthly.values)")
        client.notebook_document_did_change(change_params(
            2, start=2, cells=[(CODE, cell_uri("target"))], opened=[item("target", "target = 1000")],
            edits=[(edited, 2, at(0, 0), "# revenue\n")],
        ))
        answered, prefix, suffix = await complete(3, 9)
        assert prefix.endswith('sum()\n\ntarget = 1000\n\n# revenue\ndf = pd.read_csv("sales.csv")\n'
                               "monthly = by_month(df)\nplt.plot(")
        assert answered.items[0].range == types.Range(types.Position(3, 9), types.Position(3, 10))
        client.notebook_document_did_change(change_params(
            3, start=0, delete=5, closed=[cell_uri("note")],
            cells=[(CODE, cell_uri("below")), (CODE, cell_uri("imports")), (CODE, cell_uri("target")), (CODE, edited)],
        ))
        answered, prefix, suffix = await complete(3, 9)
        assert prefix.startswith("plt.show()\n\n# %matplotlib inline\n") and "Sales" not in prefix
        assert suffix == ")"
        digest = await client.workspace_execute_command_async(
            types.ExecuteCommandParams(command="midline.documentDigest", arguments=[edited])
        )  # a cell's own text, as the editor has it
        assert digest == {"version": 2, "sha256": hashlib.sha256(("# revenue\n" + EDITED).encode()).hexdigest()}

        # bad input: a change to an unknown notebook is dropped, a request on an unknown cell answered with an error
        client.notebook_document_did_change(types.DidChangeNotebookDocumentParams(
            types.VersionedNotebookDocumentIdentifier(9, "file:///ws/other.ipynb"), types.NotebookDocumentChangeEvent()
        ))
        with pytest.raises(JsonRpcException, match="other.ipynb#x is not open"):
            await inline(client, cell_uri("x", "other.ipynb"), 0, 0)
        assert (await status(client))["ready"]
        assert not [m for m in client.messages if m.type == types.MessageType.Error]

        # closing the notebook forgets its cells
        client.notebook_document_did_close(types.DidCloseNotebookDocumentParams(
            types.NotebookDocumentIdentifier(NOTEBOOK), [types.TextDocumentIdentifier(cell_uri(n))
                                                         for n in ("below", "imports", "target", "edited")]
        ))
        with pytest.raises(JsonRpcException, match="notebookDocument/didOpen"):
            await inline(client, edited, 0, 0)
