"""model/syntax.py: each shared helper's contract (offsets, lines, errors, definitions)."""

from __future__ import annotations

import pytest

from midline.model import syntax
from midline.model.fim import shown_path
from midline.model.syntax import (
    byte_offset,
    char_offset,
    definition_parts,
    docstring,
    error_count,
    header_colon,
    line_end,
    line_start,
    next_line,
    node_name,
    parse,
    parses,
    parsing_head,
    string_content,
    unwrap,
    utf8,
)
from midline.server.context import build_context
from midline.server.documents import Document
from midline.server.postprocess import postprocess


def _first(language: str, code: str):
    return parse(language, code).root_node.named_children[0]


# -- text and offsets --------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["ab\ncd\n", "ab\ncd", "\n\nx", ""])
@pytest.mark.parametrize("kind", [str, bytes])
def test_line_end_is_the_newline_and_next_line_the_index_after_it(text: str, kind: type) -> None:
    data = text if kind is str else text.encode()
    for index in range(len(data) + 1):
        start, end, after = line_start(data, index), line_end(data, index), next_line(data, index)
        newline = data.find(data[:0] + (b"\n" if kind is bytes else "\n"), index)
        assert start == (data[:index].rfind(b"\n" if kind is bytes else "\n") + 1)
        assert end == (len(data) if newline < 0 else newline)
        assert after == (len(data) if newline < 0 else newline + 1)


def test_line_helpers_at_line_ends_and_the_last_line() -> None:
    text = "ab\ncd"
    assert (line_start(text, 2), line_end(text, 2), next_line(text, 2)) == (0, 2, 3)  # on the "\n": its line
    assert (line_start(text, 3), line_end(text, 3), next_line(text, 3)) == (3, 5, 5)  # last line, no "\n"
    assert (line_start(text, 5), line_end(text, 5), next_line(text, 5)) == (3, 5, 5)
    assert (line_start(b"ab\ncd", 3), line_end(b"ab\ncd", 0), next_line(b"ab\ncd", 0)) == (3, 2, 3)


def test_byte_and_char_offsets_with_non_ascii_and_surrogates() -> None:
    text = "aé😀\ud800b"  # 1 + 2 + 4 + 3 (a lone surrogate, as JSON can carry) + 1 bytes
    data = utf8(text)
    assert len(data) == 11
    widths = [1, 2, 4, 3, 1]
    for index in range(len(text) + 1):
        byte = sum(widths[:index])
        assert byte_offset(text, index) == byte
        assert char_offset(data, byte) == index
    assert byte_offset("plain", 3) == 3 and char_offset(b"plain", 3) == 3


# -- parsers and errors ------------------------------------------------------------------------------


def test_error_count_counts_hidden_missing_nodes() -> None:
    code = "def f():\n    x = 1 return x\n"  # a hidden MISSING `_newline`: no ERROR or MISSING node shows it
    nodes, stack = [], [parse("python", code).root_node]
    while stack:
        nodes.append(stack.pop())
        stack.extend(nodes[-1].children)
    assert nodes[0].has_error and not any(n.is_error or n.is_missing for n in nodes)
    assert error_count("python", code) == 1
    assert error_count("python", "def f(x):\n    return x\n") == 0
    assert error_count("python", "x = (1,\n") >= 1
    assert error_count("c", "int f() { return 1 }") == 1


def test_parses_and_a_language_without_grammar() -> None:
    assert parses("python", "x = 1\n") is True
    assert parses("python", "x = (\n") is False
    assert parses("python", "s = '\ud800'\n") is True  # a lone surrogate is encoded, not refused
    assert parses("plaintext", "anything") is None
    assert syntax.new_parser("plaintext") is None
    with pytest.raises(ValueError):
        syntax.thread_parser("plaintext")


def test_a_completion_in_a_document_with_a_lone_surrogate_is_post_processed() -> None:
    # LSP's JSON can carry a lone surrogate; the syntax gate encodes it as tree positions count (it raised before).
    text = "s = '\ud800'\ndef f(x):\n    return \n"
    offset = text.index("return ") + len("return ")
    ctx = build_context(Document("file:///w/a.py", "python", 1, text), offset, count_tokens=len)
    suggestion = postprocess("x + 1\n", ctx, 6)
    assert suggestion is not None and suggestion.text == "x + 1"


# -- definitions -------------------------------------------------------------------------------------


def test_unwrap_through_python_decorators() -> None:
    node = _first("python", "@a\n@b\ndef f(x):\n    return x\n")
    assert node.type == "decorated_definition"
    assert unwrap(node, "python").type == "function_definition"
    assert unwrap(node, "python", fields_only=True).type == "function_definition"
    assert node_name(node, "python") == "f"
    plain = _first("python", "x = 1\n")
    assert unwrap(plain, "python") == plain and node_name(plain, "python") == ""


def test_unwrap_through_a_javascript_export() -> None:
    node = _first("javascript", "export function f(x) { return x; }\n")
    assert node.type == "export_statement"
    assert unwrap(node, "javascript").type == "function_declaration"
    assert node_name(node, "javascript") == node_name(node, "javascript", fields_only=True) == "f"


def test_unwrap_through_a_cpp_template_only_by_the_table() -> None:
    node = _first("cpp", "template <typename T>\nT biggest(T a, T b) { return a > b ? a : b; }\n")
    assert node.type == "template_declaration"
    assert unwrap(node, "cpp").type == "function_definition"
    assert unwrap(node, "cpp", fields_only=True) == node  # code actions' and hover's rule
    assert unwrap(node, "plaintext") == node  # no table entry: nothing is a wrapper


def test_definition_body_of_a_function_and_an_arrow_const() -> None:
    function = _first("javascript", "function f(x) { return x; }\n")
    arrow = _first("javascript", "const g = (x) => { return x; };\n")
    assert syntax.definition_body(function).type == "statement_block"
    assert syntax.definition_body(arrow).type == "statement_block"
    assert syntax.definition_body(_first("javascript", "const n = 1;\n")) is None


def test_header_colon_ends_the_header_not_a_later_colon() -> None:
    code = "def f(x: int) -> dict[str, int]:\n    return {'a': x}\n"
    node = _first("python", code)
    colon = header_colon(node)
    assert colon is not None and code[: colon.end_byte] == "def f(x: int) -> dict[str, int]:"
    klass = _first("python", "class C(B): pass\n")
    assert utf8("class C(B): pass\n")[: header_colon(klass).end_byte] == b"class C(B):"
    assert header_colon(_first("python", "x = 1\n")) is None


def test_docstring_is_a_block_opening_with_one_string() -> None:
    def body(code: str):
        return _first("python", code).child_by_field_name("body")

    found = docstring(body('def f():\n    """Does f."""\n    return 1\n'))
    assert found is not None and found.text == b'"""Does f."""'
    assert docstring(body('def f():\n    "doc", 1\n')) is None  # a tuple, not a docstring
    assert docstring(body("def f():\n    return 1\n    'late'\n")) is None
    assert docstring(parse("python", '"""Module."""\nx = 1\n').root_node) is not None
    assert docstring(None) is None


def test_string_content_is_between_the_quotes_of_a_plain_string() -> None:
    def string(code: str):
        return _first("python", code).named_children[0]

    assert string_content(string('"""Does f.\n"""\n')) == "Does f.\n"
    assert string_content(string("r'raw'\n")) == "raw"
    assert string_content(string('f"x{y}"\n')) is None and string_content(string('b"x"\n')) is None


def test_definition_parts_split_header_docstring_and_body() -> None:
    parts = definition_parts('    @cache\n    def f(x):\n        """Doc."""\n        return x\n')  # dedented first
    assert (parts.header, parts.indent, parts.docstring, parts.body) == (
        "@cache\ndef f(x):", "    ", "Doc.", "    return x\n")
    one_line = definition_parts("def f(x): return x")  # the body moves to its own line
    assert (one_line.header, one_line.indent, one_line.docstring, one_line.body) == (
        "def f(x):", "    ", None, "    return x\n")
    assert definition_parts('class C:\n    """Only a docstring."""\n').body == ""
    assert definition_parts("x = 1\n") is None and definition_parts("def f(:\n    pass\n") is None
    assert definition_parts("def f():\n    pass\n\n\ndef g():\n    pass\n") is None  # two definitions


def test_parsing_head_is_the_longest_head_of_whole_statements_that_parses() -> None:
    assert parsing_head("python", "x = 1\n") == "x = 1\n"
    assert parsing_head("python", "x = 1\n\n\ndef f(:\n    pass\n") == "x = 1\n"
    assert parsing_head("python", "def f(:\n") == ""


def test_shown_path_is_relative_to_the_folder_holding_it_and_never_absolute() -> None:
    # model/fim.py: the path prompts show (completion, code actions and hover share it)
    assert shown_path("/w/pkg/a.py", ["/w"]) == "pkg/a.py"
    assert shown_path("/v/lib/b.py", ["/w", "/v"]) == "lib/b.py"  # a second folder
    assert shown_path("/w/sub/c.py", ["/w/sub", "/w"]) == shown_path("/w/sub/c.py", ["/w", "/w/sub"]) == "c.py"
    assert shown_path("/elsewhere/a.py", ["/w"]) == "a.py"  # in no folder: the name alone
    assert shown_path("/w2/a.py", ["/w"]) == "a.py"  # (/w2 is not inside /w)
    assert shown_path("/w/a.py", []) == "a.py"
    assert shown_path("untitled:Untitled-1", ["/w"]) == "untitled:Untitled-1"
