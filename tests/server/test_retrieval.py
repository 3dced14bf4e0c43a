"""Repository retrieval: the chunk index (server/retrieval.py), its place in the prompt (context.py, the Completer's
prompt with the tiny model), and its freshness across saves, file events and folder changes (server/workspace.py,
and the real server over stdio)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from lsprotocol import types
from pytest_lsp import make_test_lsp_client

from midline.model.fim import Snippet
from midline.server import retrieval
from midline.server.completion import Completer
from midline.server.config import Config, ContextConfig
from midline.server.context import build_context
from midline.server.documents import Document
from midline.server.files import source_files, watch_glob
from midline.server.retrieval import RetrievalIndex, windows
from midline.server.symbols import SymbolIndex
from midline.server.workspace import Workspace

from ..lsp_client import SERVER, capabilities, open_document, status

# A function with distinctive names, planted in one file of a workspace of unrelated code; the query is a
# near copy of it, typed in another file.
PLANTED = '''\
def merge_invoice_totals(invoices, currency_table):
    grand_total = 0
    for invoice in invoices:
        rate = currency_table.lookup(invoice.currency)
        grand_total += invoice.amount * rate
    return round(grand_total, 2)
'''
QUERY_DOC = '''\
import decimal


def merge_credit_totals(credits, currency_table):
    grand_total = 0
    for credit in credits:
        rate = currency_table.lookup(credit.currency)
        '''


RETRIEVAL_ON = Config(context=ContextConfig(retrieval=True))


def _filler(name: str, lines: int = 30) -> str:
    """Unrelated code: functions over other names."""
    body = [f"def {name}_step_{i}(value_{i}, scale):\n    return value_{i} * scale + {i}\n" for i in range(lines // 3)]
    return "\n\n".join(body)


def _workspace(tmp_path: Path) -> Path:
    (tmp_path / "pkg").mkdir(parents=True)
    (tmp_path / "pkg" / "billing.py").write_text(_filler("ledger") + "\n\n" + PLANTED + "\n\n" + _filler("audit"))
    (tmp_path / "pkg" / "geometry.py").write_text(_filler("shape", 60))
    (tmp_path / "pkg" / "text.py").write_text(_filler("word", 45))
    return tmp_path


def _index(root: Path) -> RetrievalIndex:
    index = RetrievalIndex()
    for file in source_files(str(root)):
        index.index_disk(file.path, file.source)
    return index


# -- the index --------------------------------------------------------------------------------------


def test_windows_overlap_by_half_and_skip_blank_edges():
    text = "\n".join(f"value_{i} = other_{i}" if i % 7 else "" for i in range(30))
    chunks = windows(text)
    assert [(start, end) for start, end, _ in chunks] == [(1, 12), (6, 18), (12, 24), (18, 30)]
    assert chunks[0][2][:2] == ["value_1", "other_1"]  # identifier tokens, in order
    assert windows("x = 1\ny = 2\n") == []  # too few identifiers (one-letter names are none)


def test_the_planted_similar_chunk_is_retrieved_first(tmp_path: Path):
    index = _index(_workspace(tmp_path))
    billing = str(tmp_path / "pkg" / "billing.py")
    [best, *_] = index.search(QUERY_DOC, limit=3)
    assert best.path == billing and "def merge_invoice_totals(invoices, currency_table):" in best.text
    assert "currency_table.lookup(invoice.currency)" in best.text
    assert index.search(QUERY_DOC, exclude_path=billing) == []  # the document's own file is never retrieved
    assert index.search("return value") == []  # too little in common with any chunk


def test_overlapping_chunks_of_a_file_are_retrieved_once(tmp_path: Path):
    index = _index(_workspace(tmp_path))
    found = index.search(QUERY_DOC, limit=4)
    spans = [(c.start, c.end) for c in found if c.path.endswith("billing.py")]
    assert all(a_end <= b_start or b_end <= a_start for (a_start, a_end) in spans for (b_start, b_end) in spans
               if (a_start, a_end) != (b_start, b_end))


def test_updates_replace_and_drop_a_files_chunks(tmp_path: Path):
    index = _index(_workspace(tmp_path))
    billing = str(tmp_path / "pkg" / "billing.py")
    index.index_disk(billing, _filler("other").encode())  # changed on disk: the planted function is gone
    assert all("merge_invoice_totals" not in c.text for c in index.search(QUERY_DOC))
    index.index_disk(str(tmp_path / "pkg" / "moved.py"), PLANTED.encode())
    assert index.search(QUERY_DOC)[0].path == str(tmp_path / "pkg" / "moved.py")
    index.forget(str(tmp_path / "pkg" / "moved.py"))
    assert index.search(QUERY_DOC) == []
    assert index.forget_under(str(tmp_path / "pkg")) == 3 and len(index) == 0


def test_an_open_document_wins_over_its_disk_copy_until_released(tmp_path: Path):
    index = RetrievalIndex()
    path = str(tmp_path / "billing.py")
    doc = Document(Path(path).as_uri(), "python", 3, PLANTED)
    index.refresh([doc])  # open (not the one being edited): indexed from the editor's text
    index.index_disk(path, _filler("stale").encode())  # the disk copy is older
    assert "merge_invoice_totals" in index.search(QUERY_DOC)[0].text
    index.refresh([])  # closed: the disk copy counts again
    index.index_disk(path, _filler("stale").encode())
    assert index.search(QUERY_DOC) == []


def test_the_document_being_edited_is_left_for_later_but_counts_as_recent(tmp_path: Path):
    index = RetrievalIndex()
    editing = Document((tmp_path / "a.py").as_uri(), "python", 1, PLANTED)
    index.refresh([editing], exclude=editing.uri)
    assert len(index) == 0 and list(index._recent) == [str(tmp_path / "a.py")]
    index.refresh([editing], exclude=None)  # the user moved to another document: now it is indexed
    assert len(index) == 1


def test_recent_files_come_first_among_equally_similar_chunks(tmp_path: Path):
    index = RetrievalIndex()
    first, second = str(tmp_path / "one.py"), str(tmp_path / "two.py")
    for path in (first, second):
        index.index_disk(path, PLANTED.encode())
    assert [c.path for c in index.search(QUERY_DOC)] == [first, second]  # a tie: in index order
    index.touch(second)
    found = index.search(QUERY_DOC)
    assert [c.path for c in found] == [second, first] and found[0].score == pytest.approx(2 * found[1].score)


def test_memory_is_bounded_and_an_open_document_pushes_out_the_oldest_disk_file(tmp_path: Path):
    index = RetrievalIndex(max_files=2)
    paths = [str(tmp_path / f"f{i}.py") for i in range(3)]
    for path in paths:
        index.index_disk(path, _filler(Path(path).stem).encode())
    assert [p in index for p in paths] == [True, True, False]  # full: disk files are left out
    index.index_file(str(tmp_path / "open.py"), PLANTED)
    assert [p in index for p in paths] == [False, True, False] and str(tmp_path / "open.py") in index
    small = RetrievalIndex(max_bytes=len(PLANTED) - 1)
    small.index_file(str(tmp_path / "open.py"), PLANTED)
    assert len(small) == 0  # a document larger than the whole budget is not indexed


def test_reindexing_many_times_keeps_the_results_and_reuses_rows(tmp_path: Path):
    index = _index(_workspace(tmp_path))
    before = [(c.path, c.start, c.score) for c in index.search(QUERY_DOC)]
    chunks = index.size[1]
    for _ in range(100):
        for file in source_files(str(tmp_path)):
            index.index_disk(file.path, file.source)
    assert [(c.path, c.start, c.score) for c in index.search(QUERY_DOC)] == before
    assert index.size[1] == chunks and len(index._keys) <= 1024 < 100 * chunks  # dropped rows are swept and reused


# -- the prompt -------------------------------------------------------------------------------------


def _words(text: str) -> int:
    return len(text.split())


def test_retrieved_chunks_share_the_snippet_budget_after_definitions(tmp_path: Path):
    root = _workspace(tmp_path)
    (root / "pkg" / "rates.py").write_text("class CurrencyTable:\n    def lookup(self, currency): ...\n")
    symbols = SymbolIndex()
    symbols.index_workspace(str(root))
    index = _index(root)
    doc = Document((root / "pkg" / "credits.py").as_uri(), "python", 1, QUERY_DOC + "\n")
    offset = len(QUERY_DOC)

    def snippets(budget: int) -> list[Snippet]:
        return build_context(doc, offset, count_tokens=_words, symbols=symbols, retrieval=index,
                             snippet_budget=budget).snippets

    found = snippets(512)
    # the chunk first (stable first: retrieval changes most)
    assert [Path(s.path).name for s in found][:1] == ["billing.py"]
    assert "merge_invoice_totals" in found[0].text
    without = build_context(doc, offset, count_tokens=_words, symbols=symbols, snippet_budget=512).snippets
    assert found[1:] == without  # the definitions and local snippets as before, after it
    assert snippets(sum(_words(s.text) for s in without)) == without  # no budget left: no chunk
    assert all(_words(s.text) for s in snippets(10)) and sum(_words(s.text) for s in snippets(60)) <= 60


def test_a_chunk_already_in_the_window_is_not_repeated(tmp_path: Path):
    index = RetrievalIndex()
    index.index_disk(str(tmp_path / "copy.py"), PLANTED.encode())
    text = PLANTED + ("\n\ndef merge_credit_totals(credits, currency_table):\n"
                      "    rate = currency_table.lookup(credits)\n    ")
    doc = Document((tmp_path / "here.py").as_uri(), "python", 1, text)
    ctx = build_context(doc, len(text), count_tokens=_words, retrieval=index)
    assert all("merge_invoice_totals" not in s.text for s in ctx.snippets)


def test_the_planted_chunk_lands_in_the_completers_prompt(tmp_path: Path, tiny_engine):
    """Through the real Completer and the tiny model's tokenizer: the prompt the model gets holds the chunk, under
    its path relative to the workspace; with `context.retrieval` off it does not."""
    root = _workspace(tmp_path)
    index = _index(root)
    doc = Document((root / "pkg" / "credits.py").as_uri(), "python", 1, QUERY_DOC + "\n")
    with ThreadPoolExecutor(max_workers=1) as executor:
        config = Config(max_new_tokens=4, debounce_ms=0, context=ContextConfig(retrieval=True))
        completer = Completer(tiny_engine, config, executor, root=str(root), retrieval=index)
        prompt = completer.prompts.build(doc, len(QUERY_DOC))
        assert prompt is not None
        planted = [s for s in prompt.fim.snippets if "merge_invoice_totals" in s.text]
        assert [s.path for s in planted] == ["pkg/billing.py"]
        assert "currency_table.lookup(invoice.currency)" in tiny_engine.decode(prompt.encoded)
        completer.config = dataclasses.replace(config, context=ContextConfig())  # off: the default
        prompt = completer.prompts.build(doc, len(QUERY_DOC))
        assert prompt is not None and all("merge_invoice_totals" not in s.text for s in prompt.fim.snippets)
        assert asyncio.run(completer.complete(doc, len(QUERY_DOC))).generation is not None  # and the model answers it


# -- freshness: the workspace -----------------------------------------------------------------------


def _inline(fn, *args):
    """A `submit` that runs the function at once (the background, made synchronous for the test)."""
    fn(*args)


def test_workspace_follows_folders_and_file_events(tmp_path: Path):
    one, two = _workspace(tmp_path / "one"), tmp_path / "two"
    two.mkdir()
    (two / "extra.py").write_text(_filler("extra"))
    (two / "node_modules").mkdir()
    workspace = Workspace(RETRIEVAL_ON, _inline)
    workspace.set_folders([str(one)])
    assert len(workspace.retrieval) == 3 and len(workspace.symbols) == 3
    workspace.set_folders([str(one), str(two)])  # a folder added: scanned
    assert str(two / "extra.py") in workspace.retrieval and workspace.symbols.lookup(["extra_step_0"])

    planted = one / "pkg" / "billing.py"
    planted.write_text(_filler("renamed"))  # changed on disk
    workspace.changed_on_disk(str(planted))
    assert all("merge_invoice_totals" not in c.text for c in workspace.retrieval.search(QUERY_DOC))
    assert workspace.symbols.lookup(["renamed_step_0"]) and not workspace.symbols.lookup(["merge_invoice_totals"])
    (two / "new.py").write_text(PLANTED)  # created
    workspace.changed_on_disk(str(two / "new.py"))
    (two / "node_modules" / "dep.py").write_text(PLANTED)  # in a skipped folder: ignored
    workspace.changed_on_disk(str(two / "node_modules" / "dep.py"))
    workspace.changed_on_disk(str(tmp_path / "outside.py"))  # outside every folder: ignored
    assert [c.path for c in workspace.retrieval.search(QUERY_DOC)] == [str(two / "new.py")]
    (two / "new.py").unlink()
    workspace.deleted(str(two / "new.py"))
    assert workspace.retrieval.search(QUERY_DOC) == [] and not workspace.symbols.lookup(["merge_invoice_totals"])

    workspace.set_folders([str(one)])  # a folder removed: its files dropped
    assert str(two / "extra.py") not in workspace.retrieval and not workspace.symbols.lookup(["extra_step_0"])
    assert len(workspace.retrieval) == 3


def test_an_index_turned_on_is_scanned_at_the_next_request(tmp_path: Path):
    root = _workspace(tmp_path)
    config = Config()  # retrieval off (the default)
    workspace = Workspace(config, _inline)
    workspace.set_folders([str(root)])
    assert len(workspace.retrieval) == 0 and len(workspace.symbols) == 3  # off: no chunks kept
    workspace.config = dataclasses.replace(config, context=ContextConfig(retrieval=True))
    workspace.refresh([])
    assert len(workspace.retrieval) == 3


def test_a_saved_document_is_indexed_at_once(tmp_path: Path):
    workspace = Workspace(RETRIEVAL_ON, _inline)
    doc = Document((tmp_path / "saved.py").as_uri(), "python", 5, PLANTED)
    workspace.saved(doc)
    assert workspace.retrieval.search(QUERY_DOC)[0].path == str(tmp_path / "saved.py")
    assert workspace.symbols.lookup(["merge_invoice_totals"])


def test_the_watch_glob_names_every_languages_extensions():
    glob = watch_glob()
    assert glob.startswith("**/*.{")
    assert all(ext in glob.split("{")[1] for ext in ("py", "ts", "rs", "go", "java", "cpp"))


def test_no_code_in_logs_above_debug(tmp_path: Path, caplog):
    caplog.set_level("DEBUG", logger=retrieval.__name__)
    index = RetrievalIndex(max_files=1)
    index.index_disk(str(tmp_path / "a.py"), PLANTED.encode())
    index.index_disk(str(tmp_path / "b.py"), PLANTED.encode())  # full: logged at DEBUG, by path
    assert all(record.levelname == "DEBUG" and "merge_invoice" not in record.getMessage() for record in caplog.records)



# -- freshness: the real server over stdio ----------------------------------------------------------


async def _eventually(check, timeout_s: float = 60.0):
    """Poll `check()` (async) until it returns something truthy; its last value."""
    deadline = time.monotonic() + timeout_s
    while not (value := await check()):
        assert time.monotonic() < deadline, "the server's indexes did not catch up"
        await asyncio.sleep(0.05)
    return value


@pytest.mark.e2e
async def test_the_server_follows_saves_watched_files_and_folder_changes(tiny_model_dir: Path, tmp_path: Path):
    one = _workspace(tmp_path / "one")
    two = tmp_path / "two"
    two.mkdir()
    (two / "extra.py").write_text("def extra_helper(count):\n    return count + 1\n")
    client = make_test_lsp_client()
    registrations: list[types.Registration] = []

    @client.feature(types.CLIENT_REGISTER_CAPABILITY)
    def register(params: types.RegistrationParams) -> None:
        registrations.extend(params.registrations)

    caps = capabilities()
    caps.workspace = types.WorkspaceClientCapabilities(
        workspace_folders=True,
        did_change_watched_files=types.DidChangeWatchedFilesClientCapabilities(dynamic_registration=True)
    )
    await client.start_io(*SERVER)
    try:
        await client.initialize_session(types.InitializeParams(
            capabilities=caps, root_uri=one.as_uri(), workspace_folders=[types.WorkspaceFolder(one.as_uri(), "one")],
            initialization_options={"midline": {"model": str(tiny_model_dir), "context": {"retrieval": True},
                                                "hover": {"explain": False}}},
        ))
        use = one / "use.py"
        open_document(client, use.as_uri(), "extra_helper(1)\nbrand_new()\nsaved_only()\n")

        async def index() -> dict | None:
            now = await status(client)
            return now.get("index") if now.get("ready") else None

        async def hover(line: int) -> str | None:
            params = types.HoverParams(types.TextDocumentIdentifier(use.as_uri()), types.Position(line, 2))
            found = await client.text_document_hover_async(params)
            return found.contents.value if found is not None else None

        await _eventually(lambda: _when(index(), lambda i: i and i["retrievalFiles"] == 3))
        first = await index()
        assert first == {"folders": 1, "definitionFiles": 3, "retrievalFiles": 3,
                         "retrievalChunks": first["retrievalChunks"]}
        [watcher] = registrations
        assert watcher.method == types.WORKSPACE_DID_CHANGE_WATCHED_FILES
        assert watcher.register_options["watchers"][0]["globPattern"] == watch_glob()
        assert await hover(0) is None  # `two` is not in the workspace yet

        added = types.WorkspaceFoldersChangeEvent(added=[types.WorkspaceFolder(two.as_uri(), "two")], removed=[])
        client.workspace_did_change_workspace_folders(types.DidChangeWorkspaceFoldersParams(added))
        assert "def extra_helper(count)" in await _eventually(lambda: hover(0))
        assert (await index())["folders"] == 2

        new = two / "new.py"
        new.write_text("def brand_new():\n    return 'made after startup'\n")
        created = types.FileEvent(new.as_uri(), types.FileChangeType.Created)
        client.workspace_did_change_watched_files(types.DidChangeWatchedFilesParams([created]))
        assert "def brand_new()" in await _eventually(lambda: hover(1))
        billing = one / "pkg" / "billing.py"
        billing.write_text(billing.read_text() + "\n\n" + _filler("grown", 60))
        changed = types.FileEvent(billing.as_uri(), types.FileChangeType.Changed)
        client.workspace_did_change_watched_files(types.DidChangeWatchedFilesParams([changed]))
        await _eventually(lambda: _when(index(), lambda i: i["retrievalChunks"] > first["retrievalChunks"] + 2))
        new.unlink()
        deleted = types.FileEvent(new.as_uri(), types.FileChangeType.Deleted)
        client.workspace_did_change_watched_files(types.DidChangeWatchedFilesParams([deleted]))
        await _eventually(lambda: _when(hover(1), lambda text: text is None))

        saved = one / "saved.py"  # open, with text not yet on disk: known to the indexes once saved
        open_document(client, saved.as_uri(), "def saved_only():\n    return 'from the editor'\n")
        assert await hover(2) is None
        client.text_document_did_save(types.DidSaveTextDocumentParams(types.TextDocumentIdentifier(saved.as_uri())))
        assert "def saved_only()" in await _eventually(lambda: hover(2))

        removed = types.WorkspaceFoldersChangeEvent(added=[], removed=[types.WorkspaceFolder(two.as_uri(), "two")])
        client.workspace_did_change_workspace_folders(types.DidChangeWorkspaceFoldersParams(removed))
        await _eventually(lambda: _when(hover(0), lambda text: text is None))
        assert (await index())["folders"] == 1
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.shutdown_session(), timeout=10)
        await client.stop()


async def _when(value, predicate) -> bool:
    """Whether the awaited `value` satisfies `predicate` (for `_eventually`)."""
    return bool(predicate(await value))
