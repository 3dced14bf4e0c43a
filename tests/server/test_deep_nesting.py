"""Deeply nested files (hundreds of blocks, thousands of brackets) in every language: symbol indexing,
context, error spans, post-processing, hover, actions and training holes walk them without
RecursionError, and one such file (or any file that fails to index) does not stop workspace indexing
or completion elsewhere, down to the real server over stdio."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from pathlib import Path

import pytest
import pytest_asyncio
from lsprotocol import types

from midline.model import syntax as languages
from midline.server import symbols
from midline.server.targets import target_at
from midline.server.context import Hole, build_context, classify_hole
from midline.server.documents import Document
from midline.server.hover import hover_target
from midline.server.postprocess import error_count, postprocess
from midline.server.symbols import SymbolIndex
from midline.training import data

from ..lsp_client import inline, open_document, running_server

BLOCKS = 1500  # nested blocks in brace languages
PY_BLOCKS = 600  # nested Python blocks
BRACKETS = 10_000  # nested brackets in one expression

EXTENSIONS = {"python": "py", "javascript": "js", "typescript": "ts", "typescriptreact": "tsx", "go": "go",
              "rust": "rs", "java": "java", "c": "c", "cpp": "cpp"}


def nested_blocks(language: str) -> str:
    """A function whose body nests `BLOCKS` blocks (Python: `PY_BLOCKS` `if`s), `mark()` innermost."""
    if language == "python":  # (one space a level keeps the file small)
        ifs = "".join(" " * (i + 1) + f"if x{i}:\n" for i in range(PY_BLOCKS))
        return "import os\n\n\ndef deep(x):\n" + ifs + " " * (PY_BLOCKS + 1) + "mark()\n"
    inner = "{" * BLOCKS + "mark();" + "}" * BLOCKS
    return {
        "go": f"package p\n\nfunc deep() {{\n{inner}\n}}\n",
        "rust": f"fn deep() {{\n{inner}\n}}\n",
        "java": f"class Deep {{\n  void deep() {{\n{inner}\n  }}\n}}\n",
        "c": f"#include <stdio.h>\nint deep(void) {{\n{inner}\n}}\n",
        "cpp": f"#include <vector>\nint deep() {{\n{inner}\n}}\n",
    }.get(language, f"import fs from 'fs';\nfunction deep() {{\n{inner}\n}}\n")


def nested_brackets(language: str) -> str:
    """One expression nesting `BRACKETS` brackets around `mark`."""
    if language in ("python", "javascript", "typescript", "typescriptreact"):
        expr = "[" * BRACKETS + "mark" + "]" * BRACKETS
    else:
        expr = "(" * BRACKETS + "mark" + ")" * BRACKETS
    return {
        "python": f"x = {expr}\n",
        "go": f"package p\n\nvar x = {expr}\n",
        "rust": f"fn deep() {{\n    let x = {expr};\n}}\n",
        "java": f"class Deep {{\n  int x = {expr};\n}}\n",
        "c": f"int x = {expr};\n",
        "cpp": f"int x = {expr};\n",
    }.get(language, f"let x = {expr};\n")


def nested_containers(language: str) -> str:
    """Definitions nested in containers or in blocks that count as top level, `BLOCKS` deep."""
    if language == "python":
        tries = "".join(" " * i + f"try:\n{' ' * (i + 1)}def f{i}(): pass\n" for i in range(PY_BLOCKS))
        return tries + " " * PY_BLOCKS + "pass\n" + "".join(" " * i + f"finally:\n{' ' * (i + 1)}pass\n"
                                                            for i in reversed(range(PY_BLOCKS)))
    if language == "java":
        return "".join(f"class C{i} {{\n  void m{i}() {{}}\n" for i in range(BLOCKS)) + "}\n" * BLOCKS
    if language == "cpp":
        return "".join(f"namespace n{i} {{\nint f{i}();\n" for i in range(BLOCKS)) + "}\n" * BLOCKS
    return "".join(f"#ifdef A{i}\nint f{i}(void);\n" for i in range(BLOCKS)) + "#endif\n" * BLOCKS


SHAPES = [(language, nested_blocks) for language in EXTENSIONS] + [
    (language, nested_brackets) for language in EXTENSIONS]
SHAPES += [(language, nested_containers) for language in ("python", "java", "cpp", "c")]


def chars(text: str) -> int:
    return len(text)


@pytest.fixture(params=SHAPES, ids=lambda p: f"{p[0]}-{p[1].__name__}")
def deep_doc(request) -> Document:
    language, make = request.param
    return Document(f"file:///w/deep.{EXTENSIONS[language]}", language, 1, make(language))


def test_symbols_walk_deep_trees(deep_doc: Document) -> None:
    doc = deep_doc
    mark = doc.text.find("mark")
    byte = len(doc.text[:mark].encode()) if mark >= 0 else len(doc.source) // 2
    defs = symbols.definitions(doc.tree, doc.source, doc.language)
    symbols.imports(doc.tree, doc.source, doc.language)
    symbols.enclosing_scopes(doc.tree, byte, doc.language)
    if mark >= 0:
        assert "mark" in symbols.identifiers_near(doc.tree, doc.source, byte)
    if doc.text.startswith(("try:", "class C0", "namespace n0", "#ifdef")):  # nested_containers
        levels = PY_BLOCKS if doc.language == "python" else BLOCKS
        assert len(defs) >= levels * (0.8 if doc.language == "python" else 1)  # (Python's parser gives up past ~500)
        # in source order
        assert [d.name for d in defs[:2]] == (["C0", "m0"] if doc.language == "java" else ["f0", "f1"])
        if doc.language == "java":
            assert defs[3].name == "m1" and defs[3].scope.startswith("class C1")
    index = SymbolIndex()
    index.index_file(doc.path, doc.text, doc.language, doc.tree)
    assert len(index.definitions_in(doc.path)) == len(defs)


def test_context_errors_postprocess_hover_and_actions_walk_deep_trees(deep_doc: Document) -> None:
    doc = deep_doc
    index = SymbolIndex()
    index.index_file("/w/other.py", "def mark():\n    return 1\n", "python")
    offset = doc.text.find("mark")
    offset = offset if offset >= 0 else len(doc.text) // 2
    ctx = build_context(doc, offset, count_tokens=chars, budget=256, symbols=index)
    if (doc.text[offset : offset + 4] == "mark"
            and classify_hole(doc.text, offset, doc.language, doc.tree) is not Hole.NONE):
        assert any("def mark()" in s.text for s in ctx.snippets)  # cross-file context still found
    languages.error_spans(doc.tree.root_node)
    error_count(doc.language, doc.text)
    for hole in (Hole.SINGLE_LINE, Hole.MULTI_LINE):
        postprocess("value\n", dataclasses.replace(ctx, hole=hole), max_lines=4)
    hover_target(doc, offset, index)
    target_at(doc, offset, offset)


@pytest.mark.parametrize("language", ["python", "java", "c"])
def test_training_holes_walk_deep_trees(language: str) -> None:
    text = nested_blocks(language)
    syntax = data.Syntax.of(text, f"deep.{EXTENSIONS[language]}")
    rng = random.Random(0)
    for _ in range(5):
        prefix, middle, suffix, _kind = data.ast_split(text, rng, syntax)
        assert prefix + middle + suffix == text


@pytest.fixture
def secret_code_fails(monkeypatch) -> None:
    """symbols.definitions raises on any source that mentions secret_code (a file that fails to index)."""
    real = symbols.definitions

    def failing(tree, source, language):
        if b"secret_code" in source:
            raise ValueError("boom")
        return real(tree, source, language)

    monkeypatch.setattr(symbols, "definitions", failing)


def test_index_workspace_goes_on_past_deep_and_failing_files(tmp_path: Path, secret_code_fails, caplog) -> None:
    (tmp_path / "a_deep.py").write_text(nested_containers("python"))
    (tmp_path / "b_deep.cpp").write_text(nested_containers("cpp"))
    (tmp_path / "c_broken.py").write_text("def secret_code():\n    pass\n")
    (tmp_path / "d_later.py").write_text("def later_helper(x):\n    return x\n")
    index = SymbolIndex()
    with caplog.at_level(logging.WARNING, logger="midline.server.symbols"):
        assert index.index_workspace(str(tmp_path)) == 4
    assert index.lookup(["later_helper"])[0].path == str(tmp_path / "d_later.py")
    # the deep files are indexed
    assert {Path(d.path).name for d in index.lookup(["f1"])} == {"a_deep.py", "b_deep.cpp"}
    assert [Path(d.path).name for d in index.lookup([f"f{BLOCKS - 1}"])] == ["b_deep.cpp"]  # to their innermost level
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "c_broken.py" in warnings[0] and "ValueError" in warnings[0]
    assert "secret_code" not in warnings[0]  # no user code in the log


def test_a_document_that_fails_to_index_degrades_to_no_cross_file_context(secret_code_fails, monkeypatch,
                                                                          caplog) -> None:
    """A refresh over open documents skips one that fails; completion context then has no cross-file snippets."""
    good = Document("file:///w/good.py", "python", 1, "def helper(x):\n    return x\n")
    bad = Document("file:///w/bad.py", "python", 1, "def secret_code():\n    pass\n")
    here = Document("file:///w/here.py", "python", 1, "y = helper(1)\nz = \n")
    index = SymbolIndex()
    with caplog.at_level(logging.WARNING):
        index.refresh([good, bad, here], exclude=here.uri)
        assert [d.name for d in index.lookup(["helper"])] == ["helper"]
        offset = here.text.index("z = ") + 4
        assert any("def helper" in s.text
                   for s in build_context(here, offset, count_tokens=chars, symbols=index).snippets)

        def broken_lookup(names, exclude_path=None):
            raise RuntimeError("index broken")

        monkeypatch.setattr(index, "lookup", broken_lookup)
        ctx = build_context(here, offset, count_tokens=chars, symbols=index)
    assert ctx.prefix.endswith("z = ") and not any("helper" in s.text for s in ctx.snippets)
    assert not any("secret_code" in r.getMessage() for r in caplog.records)


# -- end to end ----------------------------------------------------------------------------------

SETTINGS = {"debounceMs": 0, "maxNewTokens": 8, "timeoutMs": 20000, "hover": {"explain": False}}
ORDINARY = ("from d_later import later_helper\n\n\n"
            "def area(radius):\n    # multiply the radius by \n    return later_helper(radius)\n")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def deep_lsp(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("deep-workspace")
    (root / "a_deep.py").write_text(nested_blocks("python"))
    (root / "b_deep.c").write_text(nested_brackets("c"))
    (root / "d_later.py").write_text('def later_helper(x):\n    """Help later."""\n    return x\n')
    async with running_server({"model": str(tiny_model_dir), **SETTINGS}, root) as (client, _):
        yield client, root


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.e2e
async def test_e2e_a_deep_file_breaks_neither_completion_elsewhere_nor_workspace_indexing(deep_lsp):
    client, root = deep_lsp
    deep_uri, bracket_uri, ordinary_uri = ((root / name).as_uri() for name in ("a_deep.py", "b_deep.c", "ordinary.py"))
    open_document(client, deep_uri, (root / "a_deep.py").read_text())
    open_document(client, bracket_uri, (root / "b_deep.c").read_text(), "c")
    open_document(client, ordinary_uri, ORDINARY)
    row = 4
    result = await inline(client, ordinary_uri, row, len(ORDINARY.split("\n")[row]))  # raised before: RecursionError
    assert isinstance(result, types.InlineCompletionList)
    deep_lines = (root / "a_deep.py").read_text().split("\n")
    last = len(deep_lines) - 2
    assert isinstance(await inline(client, deep_uri, last, len(deep_lines[last])), types.InlineCompletionList)
    # The file after the deep ones in the workspace is indexed: hover shows its signature from the index.
    at = ORDINARY.rindex("later_helper") + 3
    position = types.Position(line=ORDINARY[:at].count("\n"), character=at - ORDINARY.rindex("\n", 0, at) - 1)
    hover = None
    for _ in range(100):
        hover = await client.text_document_hover_async(
            types.HoverParams(text_document=types.TextDocumentIdentifier(uri=ordinary_uri), position=position)
        )
        if hover is not None:
            break
        await asyncio.sleep(0.1)
    assert hover is not None and "def later_helper(x):" in hover.contents.value
