"""Tree-sitter and offset helpers shared by the server, the tasks and training: one copy of each.

Parsers per language (grammars from model/languages.py), error counting (MISSING nodes included), a node's
text, a tree cursor's node, the longest head of code that parses, the definition inside a wrapper, a
definition's name, body, header colon and docstring, a Python string's content and a Python definition in
parts (header, docstring, body), and the offsets between string indexes and the UTF-8 byte offsets tree-sitter
counts. All text is encoded with `utf8` (lone surrogates, which LSP's JSON can carry, pass through).

Lines: `line_start` is the index of a line's first character, `line_end` the index of the "\\n" that
ends it (its content end), `next_line` the index after that "\\n"; each works on str and bytes alike.
"""

from __future__ import annotations

import functools
import textwrap
import threading
from dataclasses import dataclass
from typing import AnyStr

import tree_sitter

from midline.model.languages import LANGUAGES

Node = tree_sitter.Node

_FUNCTION_VALUES = frozenset({"arrow_function", "function_expression", "function", "generator_function"})


# -- text and offsets (string indexes vs UTF-8 byte offsets, as tree positions count) ---------------


def utf8(text: str) -> bytes:
    """The UTF-8 bytes tree-sitter sees (lone surrogates, which JSON can carry, pass through)."""
    return text.encode("utf-8", "surrogatepass")


def byte_offset(text: str, index: int) -> int:
    """The UTF-8 byte offset of string index `index` of `text`."""
    return index if text.isascii() else len(utf8(text[:index]))


def char_offset(data: bytes, byte: int) -> int:
    """The string index of byte offset `byte` (a character boundary) of `data`."""
    return byte if data.isascii() else len(data[:byte].decode("utf-8", "surrogatepass"))


def node_text(node: Node) -> str:
    """A node's source text, undecodable bytes replaced ("" for a tree parsed without its source bytes)."""
    text = node.text
    return text.decode("utf-8", "replace") if text is not None else ""


def cursor_node(cursor: tree_sitter.TreeCursor) -> Node:
    """The node a tree cursor is on (tree-sitter types it `Node | None`; a cursor from `walk()` is always on one)."""
    node = cursor.node
    if node is None:
        raise ValueError("the tree cursor is on no node")
    return node


def is_word(char: str) -> bool:
    """Whether `char` is part of an identifier or number (a letter, digit or underscore)."""
    return char.isalnum() or char == "_"


def _newline(text: AnyStr) -> AnyStr:
    return "\n" if isinstance(text, str) else b"\n"  # type: ignore[return-value]


def line_start(text: AnyStr, index: int) -> int:
    """The index of the first character of the line holding `index` (a "\\n" belongs to the line it ends)."""
    return text.rfind(_newline(text), 0, index) + 1


def line_end(text: AnyStr, index: int) -> int:
    """The index of the "\\n" ending the line holding `index` (the line's content end), else len(text)."""
    end = text.find(_newline(text), index)
    return len(text) if end < 0 else end


def next_line(text: AnyStr, index: int) -> int:
    """The index after the "\\n" ending the line holding `index` (the next line's start), else len(text)."""
    end = text.find(_newline(text), index)
    return len(text) if end < 0 else end + 1


# -- parsers ----------------------------------------------------------------------------------------


@functools.cache
def ts_language(name: str) -> tree_sitter.Language | None:
    """The tree-sitter Language for a language name, or None for plain text."""
    spec = LANGUAGES.get(name)
    if spec is None or spec.grammar is None:
        return None
    return tree_sitter.Language(spec.grammar())


def new_parser(name: str) -> tree_sitter.Parser | None:
    """A fresh parser (parsers are not thread-safe, so each user keeps its own)."""
    language = ts_language(name)
    return tree_sitter.Parser(language) if language is not None else None


_local = threading.local()


def thread_parser(name: str) -> tree_sitter.Parser:
    """This thread's parser for `name` (parsers are not thread-safe); ValueError without a grammar."""
    parsers: dict[str, tree_sitter.Parser] = _local.__dict__.setdefault("parsers", {})
    if name not in parsers:
        parser = new_parser(name)
        if parser is None:
            raise ValueError(f"no tree-sitter grammar for {name!r}")
        parsers[name] = parser
    return parsers[name]


def parse(language: str, text: str) -> tree_sitter.Tree:
    """`text` parsed with this thread's parser for `language`; ValueError without a grammar."""
    return thread_parser(language).parse(utf8(text))


# -- errors -----------------------------------------------------------------------------------------


def error_spans(node: Node) -> list[tuple[int, int]]:
    """Byte ranges of the syntax errors under `node`: ERROR and MISSING nodes.

    A MISSING node of a hidden token (Python's `_newline`, as in `f(x)return y`) is not among any node's
    children, so a node that has an error while none of its children do stands for it, with its own range.
    """
    spans: list[tuple[int, int]] = []
    stack = [node]
    while stack:
        node = stack.pop()
        if not node.has_error:
            continue
        flawed = [child for child in node.children if child.has_error]
        if node.is_error or node.is_missing or not flawed:
            spans.append((node.start_byte, node.end_byte))
        stack.extend(flawed)
    return sorted(spans)


def error_count(language: str, text: str) -> int:
    """How many syntax errors (ERROR and MISSING nodes, hidden ones included) `text` has."""
    return len(error_spans(parse(language, text).root_node))


def parses(language: str, code: str) -> bool | None:
    """Whether `code` parses without errors; None for a language without a grammar."""
    if ts_language(language) is None:
        return None
    return not parse(language, code).root_node.has_error


def parsing_head(language: str, code: str) -> str:
    """The longest head of `code` made of whole top-level statements that parses without errors (a
    language with a grammar); "" if there is none."""
    if parses(language, code):
        return code
    tree = parse(language, code)
    data = utf8(code)
    ends = [
        next_line(code, char_offset(data, n.end_byte))
        for n in tree.root_node.children
        if not n.has_error and n.type != "ERROR"
    ]
    for end in sorted(set(ends), reverse=True):
        if parses(language, code[:end]):
            return code[:end]
    lines = code.split("\n")
    for n in range(len(lines) - 1, 0, -1):  # no clean statement boundary: drop lines from the end
        head = "\n".join(lines[:n]) + "\n"
        if parses(language, head):
            return head
    return ""


# -- definitions ------------------------------------------------------------------------------------


def unwrap(node: Node, language: str, *, fields_only: bool = False) -> Node:
    """The definition inside the language's wrappers (decorated, exported, templated), else the node.

    A wrapper's `definition` field, else its `declaration` field, else its last named child. With
    `fields_only`, any node's `definition`/`declaration` field and nothing else (code actions' and hover's
    rule: a C++ `template <...>` stays as it is).
    """
    if fields_only:
        while (inner := node.child_by_field_name("definition") or node.child_by_field_name("declaration")) is not None:
            if inner.type == node.type:
                break
            node = inner
        return node
    spec = LANGUAGES.get(language)
    wrappers = spec.wrappers if spec is not None else frozenset()
    while node.type in wrappers:
        inner = node.child_by_field_name("definition") or node.child_by_field_name("declaration")
        if inner is None:
            named = node.named_children
            inner = named[-1] if named else None
        if inner is None:
            break
        node = inner
    return node


def node_name(node: Node, language: str, *, fields_only: bool = False) -> str:
    """The `name` field of the unwrapped definition (see `unwrap`), else ""."""
    name = unwrap(node, language, fields_only=fields_only).child_by_field_name("name")
    return node_text(name) if name is not None else ""


def function_value(node: Node) -> tuple[Node, Node] | None:
    """For `const f = (...) => ...` (a lexical or variable declaration): the declarator and its function value."""
    for declarator in node.named_children:
        value = declarator.child_by_field_name("value")
        if value is not None and value.type in _FUNCTION_VALUES:
            return declarator, value
    return None


def definition_body(node: Node) -> Node | None:
    """A definition's `body` field; for `const f = (...) => {...}`, its function value's body."""
    if node.type in ("lexical_declaration", "variable_declaration"):
        found = function_value(node)
        return found[1].child_by_field_name("body") if found else None
    return node.child_by_field_name("body")


def header_colon(node: Node) -> Node | None:
    """The ":" ending a Python definition's header: the last ":" child ending at or before the body's
    start (without a body: the last ":" child); None if there is none."""
    body = node.child_by_field_name("body")
    colon = None
    for child in node.children:
        if child.type == ":" and (body is None or child.end_byte <= body.start_byte):
            colon = child
    return colon


def is_string_statement(node: Node) -> bool:
    """Whether `node` is an expression statement made of one string literal (a Python docstring's form)."""
    return (
        node.type == "expression_statement" and node.named_child_count == 1 and node.named_children[0].type == "string"
    )


def docstring(body: Node | None) -> Node | None:
    """The docstring statement opening a block or module (see `is_string_statement`), else None."""
    first = body.named_children[0] if body is not None and body.named_child_count else None
    return first if first is not None and is_string_statement(first) else None


def string_content(string: Node) -> str | None:
    """The text between a Python string literal's quotes; None for f-strings, byte strings and concatenations."""
    start = next((c for c in string.children if c.type == "string_start"), None)
    end = next((c for c in reversed(string.children) if c.type == "string_end"), None)
    if start is None or end is None or any(c.type == "interpolation" for c in string.children):
        return None
    opener = node_text(start)
    if "b" in opener.lower() or "f" in opener.lower():
        return None
    text = node_text(string)
    return text[len(opener) : len(text) - len(node_text(end))]


@dataclass(frozen=True)
class Definition:
    """A Python function or class in parts (see `definition_parts`)."""

    header: str  # decorators + `def f(x):` / `class C(B):`
    indent: str  # the body's indentation
    docstring: str | None  # text between the quotes of its docstring, as written
    body: str  # the body after the docstring, each line ending with a newline ("" if none)


def definition_parts(code: str) -> Definition | None:
    """A Python function or class (dedented first) split into header, body indentation, docstring and
    body; a one-line body (`def f(x): return x`) moves to its own line, indented by four spaces. None if
    `code` is not one definition (comments aside) without syntax errors."""
    code = textwrap.dedent(code)
    data = utf8(code)
    roots = [n for n in parse("python", code).root_node.named_children if n.type != "comment"]
    if len(roots) != 1:
        return None
    outer = roots[0]
    node = unwrap(outer, "python")
    body = node.child_by_field_name("body")
    if node.type not in ("function_definition", "class_definition") or body is None or outer.has_error:
        return None
    colon = header_colon(node)
    if colon is None:
        return None
    header = data[outer.start_byte:colon.end_byte].decode("utf-8", "surrogatepass")
    header_end_line = code.count("\n", 0, char_offset(data, colon.end_byte))
    statements = body.named_children
    first = docstring(body)
    text = None
    if first is not None:
        text = string_content(first.named_children[0])
        rest_start = (
            next_line(code, char_offset(data, first.end_byte))
            if len(statements) == 1 or statements[1].start_point.row > first.end_point.row
            else char_offset(data, statements[1].start_byte)
        )
    else:
        rest_start = None
    if body.start_point.row == header_end_line:  # `def f(x): return x`: the body moves to its own line
        indent = "    "
        start = rest_start if rest_start is not None else char_offset(data, body.start_byte)
        rest = code[start:].strip()
        body_text = "".join(indent + line + "\n" for line in rest.split("\n")) if rest else ""
    else:
        body_line = line_start(code, char_offset(data, body.start_byte))
        indent = code[body_line:char_offset(data, body.start_byte)]
        indent = indent if not indent.strip() else "    "
        start = rest_start if rest_start is not None else body_line
        body_text = code[start:]
    return Definition(header, indent, text, body_text.rstrip() + "\n" if body_text.strip() else "")
