"""Languages midline knows: LSP language ids, file extensions, tree-sitter grammars, comment syntax.

Grammars come from the official per-language wheels (tree-sitter-python, ...), which work offline.
A language without a grammar here is served as plain text.
"""

from __future__ import annotations

import functools
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


def _grammar(module: str, attr: str = "language") -> Callable[[], object]:
    def load() -> object:
        return getattr(__import__(module), attr)()

    return load


LANGUAGES: dict[str, LanguageSpec] = {
    spec.name: spec
    for spec in (
        LanguageSpec("python", (".py", ".pyi", ".pyw"), "#", True, _grammar("tree_sitter_python")),
        LanguageSpec("javascript", (".js", ".mjs", ".cjs", ".jsx"), "//", False, _grammar("tree_sitter_javascript")),
        LanguageSpec("typescript", (".ts", ".mts", ".cts"), "//", False, _grammar("tree_sitter_typescript", "language_typescript")),
        LanguageSpec("typescriptreact", (".tsx",), "//", False, _grammar("tree_sitter_typescript", "language_tsx")),
        LanguageSpec("go", (".go",), "//", False, _grammar("tree_sitter_go")),
        LanguageSpec("rust", (".rs",), "//", False, _grammar("tree_sitter_rust")),
        LanguageSpec("java", (".java",), "//", False, _grammar("tree_sitter_java")),
        LanguageSpec("c", (".c", ".h"), "//", False, _grammar("tree_sitter_c")),
        LanguageSpec("cpp", (".cc", ".cpp", ".cxx", ".hpp", ".hh", ".hxx"), "//", False, _grammar("tree_sitter_cpp")),
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
