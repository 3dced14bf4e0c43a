"""Completion context: token-budgeted windows, hole kinds and stable-first snippets."""

from __future__ import annotations

import pytest
from lsprotocol import types
from pygls.workspace.position_codec import PositionCodec

from midline.server.context import Hole, build_context, classify_hole
from midline.server.documents import Document
from midline.server.symbols import SymbolIndex


def chars(text: str) -> int:
    """A tokenizer stand-in: one token per character."""
    return len(text)


def words(text: str) -> int:
    return len(text.split())


def functions(n: int, body_lines: int = 6) -> str:
    out = []
    for i in range(n):
        body = "".join(f"    v{j} = step{j}(x{i})\n" for j in range(body_lines))
        out.append(f"def f{i}(x{i}):\n{body}    return v0\n\n\n")
    return "".join(out)


SOURCE = "import os\nfrom typing import Any\n\n\n" + functions(12)


def at(text: str, marker: str, delta: int = 0) -> int:
    return text.index(marker) + delta


def test_windows_are_whole_lines_within_the_budget() -> None:
    doc = Document("file:///w/m.py", "python", 1, SOURCE)
    offset = at(SOURCE, "v3 = step3(x6)", 5)  # mid-line
    ctx = build_context(doc, offset, count_tokens=chars, budget=400, prefix_share=0.75)
    assert ctx.prefix + ctx.suffix in SOURCE
    assert SOURCE[offset - len(ctx.prefix) : offset + len(ctx.suffix)] == ctx.prefix + ctx.suffix
    start, end = offset - len(ctx.prefix), offset + len(ctx.suffix)
    assert start == 0 or SOURCE[start - 1] == "\n"
    assert end == len(SOURCE) or SOURCE[end] == "\n"
    assert len(ctx.prefix) <= 300 and len(ctx.suffix) <= 100
    assert len(ctx.prefix) > 150 and len(ctx.suffix) > 50  # most of the budget is used
    assert ctx.line_prefix == "    v3 = " and ctx.line_suffix == "step3(x6)"


def test_prefix_keeps_the_cursor_line_even_over_budget() -> None:
    text = "a = 1\n" + "x = " + "y + " * 100 + "z\nb = 2\n"
    doc = Document("file:///w/m.py", "python", 1, text)
    offset = text.index("z\n")
    ctx = build_context(doc, offset, count_tokens=chars, budget=20)
    assert ctx.prefix == text[text.index("x = ") : offset]
    assert ctx.suffix == "z"


def test_whole_file_when_it_fits() -> None:
    doc = Document("file:///w/m.py", "python", 1, SOURCE)
    offset = at(SOURCE, "def f5")
    ctx = build_context(doc, offset, count_tokens=chars, budget=10_000)
    assert ctx.prefix == SOURCE[:offset] and ctx.suffix == SOURCE[offset:]
    assert ctx.snippets == []  # imports and scopes are already in the window; no index given


def test_unused_share_goes_to_the_other_side() -> None:
    doc = Document("file:///w/m.py", "python", 1, SOURCE)
    near_top = build_context(doc, at(SOURCE, "def f0"), count_tokens=chars, budget=400, prefix_share=0.75)
    assert near_top.prefix == SOURCE[: at(SOURCE, "def f0")]
    assert len(near_top.suffix) > 250  # more than its 100 tokens
    near_end = build_context(doc, SOURCE.index("return v0", SOURCE.index("def f11")), count_tokens=chars, budget=400,
                             prefix_share=0.5)
    assert len(near_end.prefix) > 250  # more than its 200 tokens


def test_prefix_starts_at_a_scope_boundary_when_possible() -> None:
    offset = at(SOURCE, "v4 = step4(x7)")
    python = build_context(Document("file:///w/m.py", "python", 1, SOURCE), offset, count_tokens=chars, budget=300,
                           prefix_share=0.9)
    plain = build_context(Document("file:///w/m.txt", "plaintext", 1, SOURCE), offset, count_tokens=chars, budget=300,
                          prefix_share=0.9)
    # Plain text is cut at whatever line fills the budget: here in the middle of f6.
    assert plain.prefix.startswith("    v")
    # Code is cut where f6 or f7 starts (whole function), not in the middle of f6.
    assert python.prefix.startswith("def f")
    assert len(python.prefix) <= len(plain.prefix)
    # The suffix ends where a statement of f7 or f7 itself ends, not inside a multi-line statement.
    assert python.suffix.rstrip("\n").endswith(("return v0", ")"))


def test_cut_never_splits_a_multi_line_statement_beside_the_cursor() -> None:
    call = "result = compute(\n" + "".join(f"    arg{i},\n" for i in range(10)) + ")\n"
    text = call + "x = 1\n" * 8 + "value = 1\n"
    offset = text.index("value")
    ctx = build_context(Document("file:///w/m.py", "python", 1, text), offset, count_tokens=chars, budget=80,
                        prefix_share=0.9)
    plain = build_context(Document("file:///w/m.txt", "plaintext", 1, text), offset, count_tokens=chars, budget=80,
                          prefix_share=0.9)
    assert plain.prefix.startswith("    arg8,\n")  # as many lines as fit
    assert ctx.prefix == "x = 1\n" * 8  # the statements after the call, not its tail


HOLES = [
    # (text with | at the cursor, language, hole)
    ("pri|nt(x)", "python", Hole.NONE),
    ("foo_b|ar = 1", "python", Hole.NONE),
    ("print(|)", "python", Hole.SINGLE_LINE),
    ("x = |foo", "python", Hole.SINGLE_LINE),
    ('s = "|"', "python", Hole.SINGLE_LINE),
    ("x = foo|", "python", Hole.MULTI_LINE),  # a complete line: nothing, more of it, or new lines
    ("x = foo|   ", "python", Hole.MULTI_LINE),
    ("x = |", "python", Hole.SINGLE_LINE),  # an unfinished line: finish it
    ("return x |", "python", Hole.SINGLE_LINE),  # a space typed: the line goes on
    ("x = 1  # the area|", "python", Hole.SINGLE_LINE),  # a comment goes on
    ("# the area|\nx = 1\n", "python", Hole.SINGLE_LINE),
    ("x = 1;  // the area|", "javascript", Hole.SINGLE_LINE),
    ("x = foo(1,|", "python", Hole.SINGLE_LINE),
    ("def f(x):\n    out.append(x)|\n    return out\n", "python", Hole.MULTI_LINE),
    ("if x:\n    y = (|\n", "python", Hole.MULTI_LINE),
    ("def f(x):|", "python", Hole.MULTI_LINE),
    ("def f(x):  |", "python", Hole.MULTI_LINE),
    ("def f(x):\n    |", "python", Hole.MULTI_LINE),
    ("def f(x):\n|\n    return x", "python", Hole.MULTI_LINE),
    ("items = [|", "python", Hole.MULTI_LINE),
    ("|", "python", Hole.MULTI_LINE),
    ("function f() {|", "javascript", Hole.MULTI_LINE),
    ("function f() {|}", "javascript", Hole.SINGLE_LINE),
    ("const g = () =>|", "typescript", Hole.MULTI_LINE),
    ("call(|", "go", Hole.MULTI_LINE),
    ("if x {|", "rust", Hole.MULTI_LINE),
    ("let a = b;|", "rust", Hole.MULTI_LINE),
    ("let a = b|", "rust", Hole.SINGLE_LINE),  # no `;` yet
    ("if x:|", "go", Hole.SINGLE_LINE),  # `:` opens a block in Python only
    ("Dear Sir {|", "plaintext", Hole.SINGLE_LINE),
    ("Dear Sir|", "plaintext", Hole.SINGLE_LINE),
    ("\n|\n", "plaintext", Hole.MULTI_LINE),
]


@pytest.mark.parametrize(("marked", "language", "hole"), HOLES)
def test_hole_kinds(marked: str, language: str, hole: Hole) -> None:
    text, offset = marked.replace("|", ""), marked.index("|")
    assert classify_hole(text, offset, language) is hole
    doc = Document("file:///w/x", language, 1, text)
    assert build_context(doc, offset, count_tokens=chars).hole is hole


GEOMETRY = '''\
class Vector:
    """A 2D vector."""

    def __init__(self, x: float, y: float):
        self.x, self.y = x, y

    def dot(self, other: "Vector") -> float:
        return self.x * other.x + self.y * other.y


def distance(a: Vector, b: Vector) -> float:
    """Euclidean distance."""
    return 0.0


def unused() -> None: ...
'''

APP = (
    "import math\nfrom geometry import Vector, distance\n\n\n"
    "class Scene:\n"
    '    """Things in space."""\n\n'
    "    def __init__(self):\n"
    "        self.items = []\n\n"
    + "".join(f"    # filler line {i}\n" for i in range(30))
    + "\n    def nearest(self, point: Vector) -> Vector:\n"
    '        """The item nearest to `point`."""\n'
    "        best = None\n"
    "        for item in self.items:\n"
    "            d = distance(point, item)\n"
    "            \n"
    "        return best\n"
)


def open_docs() -> tuple[Document, Document, SymbolIndex]:
    app = Document("file:///w/app.py", "python", 1, APP)
    geometry = Document("file:///w/geometry.py", "python", 1, GEOMETRY)
    index = SymbolIndex()
    index.refresh([app, geometry], exclude=app.uri)
    return app, geometry, index


def test_snippets_stable_first_with_other_files_definitions() -> None:
    app, _, index = open_docs()
    offset = APP.index("d = distance(point, item)\n") + len("d = distance(point, item)\n") + len("            ")
    ctx = build_context(app, offset, count_tokens=words, budget=60, symbols=index)
    assert ctx.hole is Hole.MULTI_LINE
    assert "import math" not in ctx.prefix and "class Scene" not in ctx.prefix  # cut off by the budget
    assert [s.path for s in ctx.snippets] == ["/w/geometry.py", "/w/app.py", "/w/app.py"]
    other, imports, scope = ctx.snippets
    assert "def distance(a: Vector, b: Vector) -> float:\n    \"\"\"Euclidean distance.\"\"\"" in other.text
    assert "class Vector:" in other.text and "unused" not in other.text
    assert imports.text == "import math\nfrom geometry import Vector, distance"
    assert "def nearest" in ctx.prefix  # the enclosing function is in the window, its class is not
    assert scope.text == 'class Scene:\n    """Things in space."""\n    ...'

    # One more keystroke: same snippets, same order (a prompt cache can reuse them).
    position = app.position_at(offset, PositionCodec())
    app.apply_change(types.TextDocumentContentChangePartial(range=types.Range(position, position), text="i"),
                     PositionCodec())
    again = build_context(app, offset + 1, count_tokens=words, budget=60, symbols=index)
    assert again.snippets == ctx.snippets


def test_snippets_respect_their_budget_and_count() -> None:
    app, _, index = open_docs()
    offset = APP.index("d = distance")
    ctx = build_context(app, offset, count_tokens=words, budget=60, symbols=index, snippet_budget=20)
    assert sum(words(s.text) for s in ctx.snippets) <= 20
    ctx = build_context(app, offset, count_tokens=words, budget=60, symbols=index, max_snippets=1)
    assert len(ctx.snippets) == 1
    assert build_context(app, offset, count_tokens=words, budget=60, symbols=index, snippet_budget=0).snippets == []


def test_definitions_of_the_file_itself_are_not_snippets() -> None:
    app, _, index = open_docs()
    index.refresh([app, Document("file:///w/geometry.py", "python", 1, GEOMETRY)])  # app indexed too
    offset = APP.index("d = distance")
    ctx = build_context(app, offset, count_tokens=words, budget=10_000, symbols=index)
    assert [s.path for s in ctx.snippets] == ["/w/geometry.py"]
    assert "Scene" not in ctx.snippets[0].text


def test_plain_text_gets_windows_only() -> None:
    text = "".join(f"line {i} of notes\n" for i in range(100))
    doc = Document("file:///w/notes.txt", "plaintext", 1, text)
    offset = text.index("line 50") + 4
    ctx = build_context(doc, offset, count_tokens=words, budget=40, symbols=SymbolIndex())
    assert ctx.language == "plaintext" and ctx.path == "/w/notes.txt"
    assert ctx.snippets == [] and ctx.hole is Hole.SINGLE_LINE
    assert ctx.prefix.startswith("line ") and ctx.prefix.endswith("line")
    assert words(ctx.prefix) <= 30 + 1 and ctx.suffix.endswith("notes")



# -- large documents: the cursor's line and the text post-processing sees are bounded


def test_a_long_cursor_line_is_cut_to_what_the_budget_could_hold() -> None:
    text = 'LABEL = "é"\nDATA = [' + "1, " * 300_000 + "2, " + "3, " * 300_000 + "0]\n\ndef f():\n    return 1\n"
    offset = text.index("2, ")
    counted: list[int] = []

    def count(piece: str) -> int:
        counted.append(len(piece))
        return len(piece)

    ctx = build_context(Document("file:///w/m.py", "python", 1, text), offset, count_tokens=count, budget=1000)
    assert max(counted) <= 16 * 750 and sum(counted) < 20_000  # not the 1.8 MB line
    assert ctx.prefix == text[offset - 16 * 750 : offset] and ctx.suffix == text[offset : offset + 4_000]
    assert ctx.text == text[offset - 4_000 : offset + 4_000]  # post-processing: 4,000 characters a side
    assert ctx.hole is Hole.SINGLE_LINE and ctx.line_suffix.startswith("2, 3, ")


def test_a_large_document_goes_to_post_processing_as_whole_definitions_around_the_cursor() -> None:
    text = functions(3_000)  # about 370,000 characters
    offset = at(text, "v3 = step3(x1500)", 5)
    ctx = build_context(Document("file:///w/m.py", "python", 1, text), offset, count_tokens=chars, budget=400)
    assert 20_000 < len(ctx.text) <= 33_000
    start = offset - ctx.offset
    assert text[start : start + len(ctx.text)] == ctx.text
    assert ctx.text.startswith("def f") and text[start - 3 : start] == "\n\n\n"  # whole definitions
    assert ctx.text.endswith("    return v0\n") and text[start + len(ctx.text) :].startswith("\n\ndef f")
    assert ctx.line_prefix == "    v3 = " and ctx.line_suffix == "step3(x1500)"
    small = Document("file:///w/m.py", "python", 1, SOURCE)  # under the limit: the whole document
    assert build_context(small, at(SOURCE, "def f5"), count_tokens=chars).text == SOURCE


@pytest.mark.parametrize("where", ["start", "end", "unfinished-end", "whitespace-end"])
def test_text_window_at_the_edges_of_a_large_document(where: str) -> None:
    text = functions(1_000) + {"start": "", "end": "", "unfinished-end": "total = ", "whitespace-end": "\n\n   "}[where]
    offset = 0 if where == "start" else len(text)
    ctx = build_context(Document("file:///w/m.py", "python", 1, text), offset, count_tokens=chars, budget=400)
    start = offset - ctx.offset
    assert len(ctx.text) <= 33_000 and text[start : start + len(ctx.text)] == ctx.text
    assert (start == 0) if where == "start" else (start + len(ctx.text) == len(text))


def test_the_window_of_a_large_document_is_whole_definitions_despite_lone_carriage_returns() -> None:
    text = "# old mac line\r" * 3_000 + functions(3_000)  # LSP counts a line at each "\r"; tree-sitter does not
    offset = at(text, "v3 = step3(x1500)", 5)
    ctx = build_context(Document("file:///w/m.py", "python", 1, text), offset, count_tokens=chars, budget=400)
    start = offset - ctx.offset
    assert text[start : start + len(ctx.text)] == ctx.text and ctx.text.startswith("def f")
