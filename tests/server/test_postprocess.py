"""Post-processing of raw model continuations, with real tree-sitter parsers.

A case is (language, document with `█` at the cursor, hole, raw candidate, expected); expected is None
(dropped), the suggestion's text, or (text, replace).
"""

from __future__ import annotations

import dataclasses

import pytest

from midline.server.context import CompletionContext, Hole, build_context
from midline.server import postprocess as postprocess_module
from midline.server.documents import Document
from midline.server.postprocess import Suggestion, block_complete, cut_unsure_lines, error_count, postprocess

CURSOR = "█"
MAX_LINES = 6
S, M, NONE = Hole.SINGLE_LINE, Hole.MULTI_LINE, Hole.NONE


def make_ctx(language: str, document: str, hole: Hole) -> CompletionContext:
    """A context whose prefix and suffix are the whole document split at the cursor marker."""
    offset = document.index(CURSOR)
    text = document.replace(CURSOR, "", 1)
    return CompletionContext(f"test.{language}", language, text, offset, text[:offset], text[offset:], hole)


def case(id: str, language: str, document: str, hole: Hole, raw: str, expected: str | tuple[str, int] | None):
    return pytest.param(language, document, hole, raw, expected, id=id)


POSTPROCESS_CASES = [
    # -- block end: indentation (Python)
    case("py-dedent-ends-block", "python", "def f(x):\n    y = x + 1\n    █\n", M,
         "return y\n\ndef g():\n    pass\n", "return y"),
    case("py-after-colon-opener", "python", "def f(x):█\n", M,
         "\n    return x * 2\nprint(f(1))\n", "\n    return x * 2"),
    case("py-blank-line-indent-from-candidate", "python", "def f(x):\n█", M,
         "    if x:\n        return 1\n    return 2\nf(3)\n", "    if x:\n        return 1\n    return 2"),
    case("py-closer-line-supplied-by-suffix", "python", "x = foo(\n    █\n)\n", M,
         "a,\n    b,\n)\nprint(x)", "a,\n    b,"),
    case("py-closer-line-kept-at-end-of-doc", "python", "x = [█", M,
         "\n    1,\n    2,\n]\nprint(x)\n", "\n    1,\n    2,\n]"),
    # -- block end: brackets
    case("js-closer-supplied-by-suffix", "javascript", "function f(x) {\n  █\n}\n", M,
         "const y = x + 1;\n  return y;\n}\n\nfunction g() {}\n", "const y = x + 1;\n  return y;"),
    case("js-closer-kept-at-end-of-doc", "javascript", "function f(x) {\n  █", M,
         "return x;\n}\n\nfunction g() {}", "return x;\n}"),
    case("js-new-top-level-definition", "javascript", "function f() {\n  █\n}", M,
         "return 1;\n\nfunction g() {\n  return 2;", "return 1;"),
    case("go-closer-supplied-by-suffix", "go", "package main\n\nfunc f(x int) int {\n\t█\n}\n", M,
         "y := x * 2\n\treturn y\n}\n\nfunc g() {}\n", "y := x * 2\n\treturn y"),
    case("rust-closer-mid-line", "rust", "fn f(x: i32) -> i32 {\n    █\n}\n", M,
         "x + 1 }\nfn g() {}", "x + 1"),
    case("rust-nested-blocks-kept", "rust", "fn f(x: i32) -> i32 {\n    █\n}\n", M,
         "if x > 0 {\n        x\n    } else {\n        0\n    }\n}\n",
         "if x > 0 {\n        x\n    } else {\n        0\n    }"),
    case("js-closer-line-kept-whole", "javascript", "foo(function () {\n  █", M,
         "bar();\n});\nbaz();", "bar();\n});"),
    case("c-closer-supplied-by-suffix", "c", "int f(int x) {\n    █\n}\n", M,
         "return x * 2;\n}\n\nint g(void) { return 0; }", "return x * 2;"),
    case("ts-method-end", "typescript", "class A {\n  m(): number {\n    █\n  }\n}\n", M,
         "return 1;\n  }\n\n  n() {}", "return 1;"),
    # -- overlap with the suffix
    case("single-line-overlap", "python", "x = foo(█, 2)\n", S, "1, 2)", "1"),
    case("single-line-only-repeats-suffix", "python", "foo(█, y)\n", S, ", y)", None),
    case("multi-line-overlap-next-line", "python", "def f(x):\n    █\n    return y\n", M,
         "y = x * 2\n    return y\n", "y = x * 2"),
    case("multi-line-only-next-line", "python", "def f(x):\n    █\n    return y\n", M, "return y\n", None),
    # -- auto-closed brackets: replace instead of duplicating
    case("auto-closed-paren", "python", "print(█)\n", S, '"hello")', ('"hello")', 1)),
    case("auto-closed-in-string", "python", 'd["█"]\n', S, 'key"]', ('key"]', 2)),
    case("auto-closed-with-terminator", "javascript", "foo(█);\n", S, "a, b);", ("a, b);", 2)),
    case("auto-closed-outer-left", "python", "print(len(█))\n", S, "x)", ("x)", 1)),
    case("auto-closed-not-closing", "python", "print(█)\n", S, "foo(x)", "foo(x)"),
    case("auto-closed-only-closer", "python", "print(█)\n", S, ")", None),
    # -- bracket balance (single line)
    case("unclosed-truncated", "python", "result = █\n", S, "compute(a, b", "compute"),
    case("unclosed-nothing-left", "python", "result = █\n", S, "(a + b", None),
    case("extra-closer-truncated", "python", "foo(█, y)\n", S, "x)", "x"),
    case("unterminated-string", "python", "x = █\n", S, 'print("hi', "print"),
    case("brackets-in-string-ignored", "python", "x = █\n", S, 'f(")")', 'f(")")'),
    # -- syntax gate
    case("gate-drops-broken", "python", "x = 1\n█\n", M, "y = = 2", None),
    case("gate-truncates-last-line", "python", "x = 1\n█\n", M, "y = 2\nz = (3 +", "y = 2"),
    case("gate-accepts-def-body", "python", "def f(x):\n    █", M, "return x + 1", "return x + 1"),
    case("gate-fixes-half-written-call", "python", "total = sum(█", M, "values)", "values)"),
    case("gate-cuts-line-at-token", "python", "x = █\n", S, "total + count count", "total + count"),
    case("gate-drops-single-line", "python", "foo(█)\n", S, "= 1)", None),
    case("gate-local-error-in-broken-doc", "python", "def f(x):\n    █", M, "return x +", None),
    case("gate-blames-not-unclosed-prefix", "python", "x = foo(█", M, "a, b", "a, b"),
    case("gate-js", "javascript", "const a = 1;\n█\n", M, "const b = 2;\nconst c = ;", "const b = 2;"),
    # -- drops and cleaning
    case("empty", "python", "x = █\n", S, "", None),
    case("whitespace-only", "python", "def f():\n    █\n", M, "  \n\n \t", None),
    case("repeated-lines", "python", "█\n", M, "print(x)\nprint(x)\nprint(x)\n", None),
    case("repeated-block", "python", "█\n", M, "a()\nb()\na()\nb()\na()\nb()", None),
    case("repeated-char", "plaintext", "Hello █\n", S, "aaaaaaaaa", None),
    case("repeated-word", "plaintext", "Hello █\n", S, "foo foo foo foo", None),
    case("repeated-closers", "python", "x = 1\n█", M, "))))))))", None),
    case("looping-tail-cut", "plaintext", "Hello █\n", S, "world, and Screen whi usageScreen whi usageScreen whi usage",
         "world, and Screen whi usage"),
    case("looping-lines-cut", "python", "def f(x):\n    █\n", M,
         "y = x + 1\n    z = y * 2\n    z = y * 2\n    z = y * 2\n    z = y * 2", "y = x + 1\n    z = y * 2"),
    case("short-repeats-in-data-kept", "python", "zeros = [█]\n", S, "None, None, None, None",
         "None, None, None, None"),
    case("trailing-whitespace", "python", "█", M, "x = 1   \ny = 2\t\n\n\n", "x = 1\ny = 2"),
    case("single-line-first-line", "python", "x = █\n", S, "compute()\ny = 2", "compute()"),
    case("single-line-after-newline", "python", "x = █\n", S, "\n    compute()\n", "compute()"),
    case("hole-none", "python", "fo█o\n", NONE, "bar", None),
    case("max-lines", "python", "█", M, "a = 1\nb = 2\nc = 3\nd = 4\ne = 5\nf = 6\ng = 7\nh = 8",
         "a = 1\nb = 2\nc = 3\nd = 4\ne = 5\nf = 6"),
    case("max-lines-after-opener", "python", "def f():█", M,
         "\n    a = 1\n    b = 2\n    c = 3\n    d = 4\n    e = 5\n    f = 6\n    g = 7",
         "\n    a = 1\n    b = 2\n    c = 3\n    d = 4\n    e = 5\n    f = 6"),
    case("plaintext-no-gate", "plaintext", "Dear team,\n█", M, "the build = = is broken;;\nThanks",
         "the build = = is broken;;\nThanks"),
    case("plaintext-no-blocks", "plaintext", "Notes:\n█", M, "1) one\n2) two\n}", "1) one\n2) two\n}"),
]


@pytest.mark.parametrize("language, document, hole, raw, expected", POSTPROCESS_CASES)
def test_postprocess(language: str, document: str, hole: Hole, raw: str, expected: str | tuple[str, int] | None):
    if isinstance(expected, str):
        expected = Suggestion(expected)
    elif isinstance(expected, tuple):
        expected = Suggestion(*expected)
    assert postprocess(raw, make_ctx(language, document, hole), MAX_LINES) == expected


BLOCK_COMPLETE_CASES = [
    case("single-line-partial", "python", "x = █\n", S, "foo(", False),
    case("single-line-newline", "python", "x = █\n", S, "foo()\n", True),
    case("single-line-leading-newline", "python", "x = █\n", S, "\n  ", False),
    case("multi-line-in-block", "python", "def f(x):\n    █\n", M, "y = x\n    return y\n", False),
    case("multi-line-dedent-partial", "python", "def f(x):\n    █\n", M, "return x\ndef", False),
    case("multi-line-dedent", "python", "def f(x):\n    █\n", M, "return x\ndef g():\n", True),
    case("multi-line-closer-partial", "javascript", "function f() {\n  █\n}", M, "return 1;\n}", False),
    case("multi-line-closer", "javascript", "function f() {\n  █\n}", M, "return 1;\n}\n", True),
    case("multi-line-own-brackets", "javascript", "function f() {\n  █\n}", M, "if (x) {\n    y();\n  }\n", False),
    case("multi-line-max-lines", "python", "█", M, "a\nb\nc\nd\ne\nf\n", True),
    case("multi-line-below-max-lines", "python", "█", M, "a\nb\nc\nd\ne\nf", False),
    case("multi-line-plaintext", "plaintext", "█", M, "a\n}\n", False),
    case("hole-none", "python", "fo█o\n", NONE, "", True),
]


@pytest.mark.parametrize("language, document, hole, text, expected", BLOCK_COMPLETE_CASES)
def test_block_complete(language: str, document: str, hole: Hole, text: str, expected: bool):
    assert block_complete(text, make_ctx(language, document, hole), MAX_LINES) is expected


@pytest.mark.parametrize(
    "language, source, errors",
    [
        pytest.param("python", "def f(x):\n    return x\n", 0, id="python-valid"),
        pytest.param("python", "x = (1,\n", 1, id="python-unclosed"),
        pytest.param("javascript", "const a = ;", 1, id="js-missing-expression"),
    ],
)
def test_error_count(language: str, source: str, errors: int):
    assert error_count(language, source) == errors


def test_cut_unsure_lines_keeps_lines_up_to_the_first_unsure_one():
    tokens = [("\n", -0.1), ("    a = 1", -3.0), ("\n", -0.1), ("    b", -0.2), (" = 2\n", -0.4), ("    c = ", -2.5),
              ("3", -1.0)]
    text = "".join(piece for piece, _ in tokens)
    ends = [len("".join(p for p, _ in tokens[: i + 1])) for i in range(len(tokens))]
    logprobs = [lp for _, lp in tokens]
    # Line 1 ("    a = 1") is the first with text: never cut, however unsure. Line 2 scores -0.3, line 3 -1.75.
    assert cut_unsure_lines(text, ends, logprobs, -2.0) == text
    assert cut_unsure_lines(text, ends, logprobs, -1.0) == "\n    a = 1\n    b = 2"
    assert cut_unsure_lines(text, ends, logprobs, -0.1) == "\n    a = 1"


# -- editor positions: the context the server builds (tree-based hole, block extent, implied indentation)


def serve(language: str, document: str, raw: str) -> Suggestion | None:
    """What the server shows for the model's `raw` text at the cursor of `document`, context built as served."""
    offset = document.index(CURSOR)
    doc = Document(f"file:///w/test.{language}", language, 1, document.replace(CURSOR, "", 1))
    return postprocess(raw, build_context(doc, offset, count_tokens=len), MAX_LINES)


LOOP = "def f(names):\n    out = []\n    for name in names:\n        out.append(name)█\n    return out\n"
BODY = "def f(x):\n    y = x + 1\n{cursor}\n    return y\n"


@pytest.mark.parametrize(
    "language, document, raw, expected",
    [
        # End of a complete line: an answer that starts a new line is a new-line suggestion, never glued on.
        pytest.param("python", LOOP, "\n        print(name)\n    return out\n", "\n        print(name)",
                     id="eol-new-line"),
        pytest.param("python", LOOP, "\n    return out\n", None, id="eol-new-line-is-the-next-line"),
        pytest.param("python", LOOP, "return out\n", None, id="eol-glued-statement-is-invalid"),
        pytest.param("python", "x = compute(1)█\ny = 2\n", "\nz = 3\nw = 4\n", "\nz = 3",
                     id="eol-one-statement-mid-block"),
        pytest.param("python", "x = █\n", "\n    compute()\n", "compute()", id="unfinished-line-finished"),
        # An indented blank line: the answer's own indentation is never added to the typed one.
        pytest.param("python", BODY.format(cursor="    █"), "    z = y * 2\n", "z = y * 2", id="indent-not-doubled"),
        pytest.param("python", BODY.format(cursor="    █"), "\n\n        z = y * 2\n", "z = y * 2",
                     id="indent-after-blank-lines"),
        # Column 0 of an empty line in a block: the implied indentation is prompted and returned.
        pytest.param("python", BODY.format(cursor="█"), "z = y * 2\n    return y\n", "    z = y * 2",
                     id="col0-indentation-returned"),
        pytest.param("javascript", "function f(x) {\n  let y = x;\n█\n}\n", "return y;\n}\n", "  return y;",
                     id="col0-braces"),
        pytest.param("python", "x = 1\n█\n", "y = 2\n", "y = 2", id="col0-top-level-no-indent"),
        # More code follows in the block: one statement (with the block it opens), not a run of lines.
        pytest.param("python", BODY.format(cursor="    █"), "z = 1\n    w = 2\n    return y\n", "z = 1",
                     id="one-statement"),
        pytest.param("python", BODY.format(cursor="    █"), "if y:\n        y += 1\n    w = 2\n",
                     "if y:\n        y += 1", id="one-compound-statement"),
        pytest.param("python", BODY.format(cursor="    █"), "z = f(\n        y,\n    )\n    w = 2\n",
                     "z = f(\n        y,\n    )", id="one-bracketed-statement"),
        # Nothing follows in the block (end of a function): several statements.
        pytest.param("python", "def f(x):\n    y = x + 1\n    █\n", "z = y\n    return z\n", "z = y\n    return z",
                     id="end-of-block-several"),
    ],
)
def test_serving_at_editor_positions(language: str, document: str, raw: str, expected: str | None):
    suggestion = serve(language, document, raw)
    assert (suggestion.text if suggestion else None) == expected


def test_block_complete_stops_after_one_statement_mid_block():
    offset = BODY.format(cursor="    █").index(CURSOR)
    doc = Document("file:///w/t.py", "python", 1, BODY.format(cursor="    "))
    ctx = build_context(doc, offset, count_tokens=len)
    assert not ctx.block
    assert not block_complete("z = f(\n        y,", ctx, MAX_LINES)
    assert not block_complete("if y:\n        y += 1\n", ctx, MAX_LINES)
    assert block_complete("z = 1\n    w", ctx, MAX_LINES)  # the next line has begun at the block's indentation
    assert block_complete("if y:\n        y += 1\n    w", ctx, MAX_LINES)


def test_syntax_gate_sees_a_missing_newline():
    # tree-sitter records `f(x)return y` as a MISSING _newline, a hidden node no child list shows.
    assert error_count("python", "for x in y:\n    out.append(x)return out\n") == 1
    assert error_count("python", "for x in y:\n    out.append(x)\n    return out\n") == 0


@pytest.mark.parametrize(
    "document, raw, expected",
    [
        pytest.param("def f(x):\n    █return x\n", "y = x + 1\n    return x\n", "y = x + 1\n    ", id="line-above"),
        pytest.param("def f(x):\n    █return x\n", "    y = x + 1\n", "y = x + 1\n    ",
                     id="line-above-indent-not-doubled"),
        pytest.param("█x = 1\n", "import os\n", "import os\n", id="line-above-col0"),
        pytest.param("def f(x):\n    █return x\n", "return x\n", None, id="line-above-only-repeats"),
        pytest.param("def f(x):\n    █return x\n", "y = (\n", None, id="line-above-unfinished"),
        pytest.param("def f(x):\n    █x\n", "return ", "return ", id="joins-without-line-break"),
    ],
)
def test_start_of_a_lines_code(document: str, raw: str, expected: str | None):
    suggestion = serve("python", document, raw)
    if not suggestion:
        shown = None
    else:
        shown = (suggestion.text, suggestion.replace) if suggestion.replace else suggestion.text
    assert shown == expected


@pytest.mark.parametrize(
    "document, raw, expected",
    [
        pytest.param("from█\n", "markdown_it import Markdown\n", None, id="merged-word-leaves-line-broken"),
        pytest.param("from█\n", " markdown_it import Markdown\n", " markdown_it import Markdown", id="finished-line"),
        pytest.param("if x█\n", " is None\n", None, id="if-without-colon"),
        pytest.param("x = [\n    1,█\n", " 2,\n", " 2,", id="line-inside-bracket-opened-above"),
        pytest.param("def f(x):\n    return█\n", "x\n", None, id="keyword-merged-into-a-name"),
    ],
)
def test_a_finished_line_is_left_without_errors(document: str, raw: str, expected: str | None):
    suggestion = serve("python", document, raw)
    assert (suggestion.text if suggestion else None) == expected


# -- large documents: the gate parses the part around the cursor, with the whole document's verdicts

LARGE_BODY = "def f{i}(x):\n    y = [x, {i}]\n    if y:\n        y.append(x)\n    return y\n\n\n"
LARGE = "".join(LARGE_BODY.format(i=i) for i in range(2_000)) + "class C:\n    def m(self, v):\n        █\n" + "".join(
    LARGE_BODY.format(i=i) for i in range(2_000, 4_000)
)
LARGE_LINE = "x = 1\nvalues = [" + "1, " * 100_000 + "█2, " + "3, " * 100_000 + "]\n"


def served_and_whole(document: str, raw: str) -> tuple[Suggestion | None, Suggestion | None]:
    """`raw` post-processed in the context as served, and in the same context given the whole document."""
    offset = document.index(CURSOR)
    text = document.replace(CURSOR, "", 1)
    ctx = build_context(Document("file:///w/big.py", "python", 1, text), offset, count_tokens=len)
    assert len(ctx.text) < len(text) // 4  # post-processing sees a part
    whole = text[:offset] + ctx.indent + text[offset:]
    whole_ctx = dataclasses.replace(ctx, text=whole, offset=offset + len(ctx.indent))
    return postprocess(raw, ctx, MAX_LINES), postprocess(raw, whole_ctx, MAX_LINES)


@pytest.mark.parametrize(
    "document, raw",
    [
        pytest.param(LARGE, "return v * 2\n", id="accepted"),
        pytest.param(LARGE, "return (v *\n", id="unclosed-bracket"),
        pytest.param(LARGE, "w = v + 1\n        return w\n", id="two-lines"),
        pytest.param(LARGE, "w = v +\n        return w\n", id="first-line-broken"),
        pytest.param(LARGE, "w = v + 1\n        return (w\n", id="cut-to-the-first-line"),
        pytest.param(LARGE, "x = '''\n", id="unterminated-string"),
        pytest.param(LARGE, "return v\n\ndef g(:\n", id="broken-definition-after"),
        pytest.param(LARGE_LINE, "2, 2, ", id="long-line"),
        pytest.param(LARGE_LINE, "2)]", id="long-line-wrong-closer"),
    ],
)
def test_gate_on_a_large_document_decides_as_on_the_whole_document(document: str, raw: str):
    served, whole = served_and_whole(document, raw)
    assert served == whole


def test_gate_on_a_large_document_parses_no_more_than_the_part_around_the_cursor(monkeypatch: pytest.MonkeyPatch):
    parsed: list[int] = []

    class Counting:
        def __init__(self, parser) -> None:
            self._parser = parser

        def parse(self, source: bytes, *args):
            parsed.append(len(source))
            return self._parser.parse(source, *args)

    real = postprocess_module.thread_parser
    monkeypatch.setattr(postprocess_module, "thread_parser", lambda language: Counting(real(language)))
    for document, raw in [(LARGE, "w = v +\n        return w\n"), (LARGE_LINE, "2)]")]:
        parsed.clear()
        text = document.replace(CURSOR, "", 1)
        ctx = build_context(Document("file:///w/big.py", "python", 1, text), document.index(CURSOR), count_tokens=len)
        postprocess(raw, ctx, MAX_LINES)
        assert parsed and max(parsed) < 70_000 and sum(parsed) < len(text) // 4
