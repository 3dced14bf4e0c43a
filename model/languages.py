"""Languages midline knows: LSP language ids, file extensions, tree-sitter grammars, comment syntax and
the syntax facts that serving and training share (which tree-sitter nodes are statement blocks).

The one table of language facts: the server (context, post-processing) and training (FIM holes chosen
with tree-sitter) both import it. Grammars come from the official per-language wheels
(tree-sitter-python, ...), which work offline. A language without a grammar here is served as plain text.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from pathlib import PurePath
from typing import Callable

import tree_sitter


@dataclass(frozen=True)
class LanguageSpec:
    """What the server needs to know about one language."""

    name: str  # canonical LSP language id, e.g. "python"
    extensions: tuple[str, ...]
    line_comment: str  # used to render extra context as comments
    indent_blocks: bool  # True: blocks end by dedent (Python); False: by closing brackets
    grammar: Callable[[], object] | None  # returns the grammar's language pointer
    blocks: frozenset[str] = frozenset()  # node types of statement blocks: function bodies, loop/if bodies, class bodies


def _grammar(module: str, attr: str = "language") -> Callable[[], object]:
    def load() -> object:
        return getattr(__import__(module), attr)()

    return load


def _blocks(types: str) -> frozenset[str]:
    return frozenset(types.split())


_JS_BLOCKS = _blocks("statement_block class_body switch_body")
_C_BLOCKS = _blocks("compound_statement field_declaration_list enumerator_list")

LANGUAGES: dict[str, LanguageSpec] = {
    spec.name: spec
    for spec in (
        LanguageSpec("python", (".py", ".pyi", ".pyw"), "#", True, _grammar("tree_sitter_python"), _blocks("block")),
        LanguageSpec("javascript", (".js", ".mjs", ".cjs", ".jsx"), "//", False, _grammar("tree_sitter_javascript"), _JS_BLOCKS),
        LanguageSpec("typescript", (".ts", ".mts", ".cts"), "//", False, _grammar("tree_sitter_typescript", "language_typescript"), _JS_BLOCKS | {"interface_body", "enum_body"}),
        LanguageSpec("typescriptreact", (".tsx",), "//", False, _grammar("tree_sitter_typescript", "language_tsx"), _JS_BLOCKS | {"interface_body", "enum_body"}),
        LanguageSpec("go", (".go",), "//", False, _grammar("tree_sitter_go"), _blocks("block field_declaration_list")),
        LanguageSpec("rust", (".rs",), "//", False, _grammar("tree_sitter_rust"), _blocks("block declaration_list field_declaration_list match_block")),
        LanguageSpec("java", (".java",), "//", False, _grammar("tree_sitter_java"), _blocks("block class_body interface_body constructor_body switch_block")),
        LanguageSpec("c", (".c", ".h"), "//", False, _grammar("tree_sitter_c"), _C_BLOCKS),
        LanguageSpec("cpp", (".cc", ".cpp", ".cxx", ".hpp", ".hh", ".hxx"), "//", False, _grammar("tree_sitter_cpp"), _C_BLOCKS),
    )
}

PLAIN_TEXT = LanguageSpec("plaintext", (), "#", False, None)

# Language ids editors send that mean one of the above.
_ALIASES = {"javascriptreact": "javascript", "py": "python", "c++": "cpp", "golang": "go"}


def resolve(language_id: str | None, path: str | None = None) -> LanguageSpec:
    """The spec for an LSP language id, else for the file extension, else plain text."""
    if language_id:
        key = _ALIASES.get(language_id.lower(), language_id.lower())
        if key in LANGUAGES:
            return LANGUAGES[key]
    if path:
        suffix = PurePath(path).suffix.lower()
        for spec in LANGUAGES.values():
            if suffix in spec.extensions:
                return spec
    return PLAIN_TEXT


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


def is_word(char: str) -> bool:
    """Whether `char` is part of an identifier or number (a letter, digit or underscore)."""
    return char.isalnum() or char == "_"


def error_spans(node: tree_sitter.Node) -> list[tuple[int, int]]:
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
