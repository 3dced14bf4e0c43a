"""Languages midline knows: the one table of language facts, one `LanguageSpec` per language.

Each entry holds the LSP and VS Code language ids, file extensions, the tree-sitter grammar, the comment
marker, string quotes, block openers, the words that start a definition, the node types of blocks,
imports, definitions and calls, and where generated tests go. The server (context, post-processing,
symbols, code actions), the tasks and training (FIM holes chosen with tree-sitter) all read it; the VS Code
client's language list is checked against it by tests/model/test_languages.py. Grammars come from the official
per-language wheels (tree-sitter-python, ...), which work offline. A language without a grammar here is
served as plain text. Parsers and tree helpers are in model/syntax.py (which imports this module, never the
reverse).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePath
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping


@dataclass(frozen=True)
class LanguageSpec:
    """Everything midline knows about one language (entries name every field after `line_comment`)."""

    name: str  # canonical LSP language id, e.g. "python"
    extensions: tuple[str, ...]
    line_comment: str  # used to render extra context and task prompts as comments
    indent_blocks: bool = False  # True: blocks end by dedent (Python); False: by closing brackets
    grammar: Callable[[], object] | None = None  # returns the grammar's language pointer; None: plain text
    # node types of statement blocks: function bodies, loop/if bodies, class bodies
    blocks: frozenset[str] = frozenset()
    # VS Code language ids served as this language (the client's list is checked against them by a test)
    vscode_ids: tuple[str, ...] = ()
    # lexical syntax for post-processing's bracket counting
    quotes: tuple[str, ...] = ()  # string delimiters, longest first
    multiline_quotes: frozenset[str] = frozenset()  # delimiters whose strings may span lines
    # line endings that open a block
    block_openers: tuple[str, ...] = ("{", "(", "[", "=>")  # the next line is a block body (holes, `ends_block`)
    indent_openers: tuple[str, ...] = ("{", "(", "[")  # code ending with one goes on one level deeper
    dedenters: tuple[str, ...] = ()  # statements after which the next line is one level shallower
    # the column-0 line that starts a new definition (one union over all languages: `definition_line`)
    definition_starts: tuple[str, ...] = ()  # line prefixes ("@", "#include")
    definition_modifiers: tuple[str, ...] = ()  # words that may precede a definition keyword
    definition_keywords: tuple[str, ...] = ()  # words that start a definition
    # node types for symbols (imports, definitions, enclosing scopes)
    imports: frozenset[str] = frozenset()  # import statements
    definitions: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)  # type -> kind
    containers: frozenset[str] = frozenset()  # definitions whose body members are definitions too
    wrappers: frozenset[str] = frozenset()  # nodes around one definition (decorators, export, template)
    transparent: frozenset[str] = frozenset()  # blocks whose children count as top level
    calls: frozenset[str] = frozenset()  # call expressions (no user yet; checked against the grammar)
    # where a module's generated tests go
    test_file: str = "test_{stem}{suffix}"  # the test file's name, from the module's stem and suffix
    tests_beside_module: bool = False  # True: next to the module, never in the workspace's tests/


def _grammar(module: str, attr: str = "language") -> Callable[[], object]:
    def load() -> object:
        return getattr(__import__(module), attr)()

    return load


def _types(types: str) -> frozenset[str]:
    """A set of node types written as one space-separated string."""
    return frozenset(types.split())


def _kinds(**types: str) -> Mapping[str, str]:
    """Definition node types by kind (`class_` for "class"), space-separated: node type -> kind."""
    return MappingProxyType({type_: kind.rstrip("_") for kind, names in types.items() for type_ in names.split()})


_JS_BLOCKS = _types("statement_block class_body switch_body")
_JS_QUOTES: dict[str, Any] = {"quotes": ('"', "'", "`"), "multiline_quotes": frozenset("`")}
_JS_SYMBOLS: dict[str, Any] = {
    "imports": _types("import_statement"),
    "definitions": _kinds(
        function="function_declaration generator_function_declaration"
        " lexical_declaration variable_declaration",  # declarations only as `const f = (...) => ...`, `= function`
        class_="class_declaration",
        method="method_definition",
    ),
    "containers": _types("class_declaration"),
    "wrappers": _types("export_statement"),
}
_JS: dict[str, Any] = {
    **_JS_QUOTES,
    **_JS_SYMBOLS,
    "definition_modifiers": ("export", "default", "async"),
    "definition_keywords": ("function", "class"),
    "calls": _types("call_expression new_expression"),
    "test_file": "{stem}.test{suffix}",
}
_TS: dict[str, Any] = {
    **_JS,
    "blocks": _JS_BLOCKS | {"interface_body", "enum_body"},
    "definitions": MappingProxyType(
        {
            **_JS_SYMBOLS["definitions"],
            **_kinds(
                function="function_signature",
                class_="abstract_class_declaration",
                method="abstract_method_signature",
                interface="interface_declaration",
                type="type_alias_declaration",
                enum="enum_declaration",
            ),
        }
    ),
    "containers": _types("class_declaration abstract_class_declaration"),
    "transparent": _types("ambient_declaration"),
    "definition_modifiers": ("export", "default", "async", "abstract"),
    "definition_keywords": ("function", "class", "interface", "enum"),
}
_C: dict[str, Any] = {
    "quotes": ('"', "'"),
    "definition_starts": ("#include",),
    "definition_modifiers": ("static",),
    "blocks": _types("compound_statement field_declaration_list enumerator_list"),
    "imports": _types("preproc_include"),
    "calls": _types("call_expression"),
}
_C_DEFINITIONS = _kinds(
    function="function_definition declaration",  # declarations only as prototypes
    struct="struct_specifier",
    union="union_specifier",
    enum="enum_specifier",
    type="type_definition",
)
_PREPROC = "preproc_ifdef preproc_if preproc_else preproc_elif preproc_elifdef"

LANGUAGES: dict[str, LanguageSpec] = {
    spec.name: spec
    for spec in (
        LanguageSpec(
            "python", (".py", ".pyi", ".pyw"), "#",
            indent_blocks=True,
            grammar=_grammar("tree_sitter_python"),
            blocks=_types("block"),
            vscode_ids=("python",),
            quotes=('"""', "'''", '"', "'"),
            multiline_quotes=frozenset({'"""', "'''"}),
            block_openers=(":", "(", "[", "{"),
            indent_openers=(":",),
            dedenters=("return", "pass", "raise", "break", "continue"),
            definition_starts=("@",),
            definition_modifiers=("async",),
            definition_keywords=("def", "class"),
            imports=_types("import_statement import_from_statement future_import_statement"),
            definitions=_kinds(function="function_definition", class_="class_definition"),
            containers=_types("class_definition"),
            wrappers=_types("decorated_definition"),
            transparent=_types("if_statement try_statement block else_clause elif_clause except_clause finally_clause"),
            calls=_types("call"),
        ),
        LanguageSpec(
            "javascript", (".js", ".mjs", ".cjs", ".jsx"), "//",
            grammar=_grammar("tree_sitter_javascript"),
            blocks=_JS_BLOCKS,
            vscode_ids=("javascript", "javascriptreact"),  # the JavaScript grammar parses JSX
            **_JS,
        ),
        LanguageSpec(
            "typescript", (".ts", ".mts", ".cts"), "//",
            grammar=_grammar("tree_sitter_typescript", "language_typescript"),
            vscode_ids=("typescript",),
            **_TS,
        ),
        LanguageSpec(
            "typescriptreact", (".tsx",), "//",
            grammar=_grammar("tree_sitter_typescript", "language_tsx"),
            vscode_ids=("typescriptreact",),
            **_TS,
        ),
        LanguageSpec(
            "go", (".go",), "//",
            grammar=_grammar("tree_sitter_go"),
            blocks=_types("block field_declaration_list"),
            vscode_ids=("go",),
            **_JS_QUOTES,
            definition_keywords=("func",),
            imports=_types("import_declaration"),
            definitions=_kinds(function="function_declaration", method="method_declaration", type="type_declaration"),
            calls=_types("call_expression"),
            test_file="{stem}_test{suffix}",
            tests_beside_module=True,
        ),
        LanguageSpec(
            "rust", (".rs",), "//",
            grammar=_grammar("tree_sitter_rust"),
            blocks=_types("block declaration_list field_declaration_list match_block"),
            vscode_ids=("rust",),
            quotes=('"',),  # `'` also starts lifetimes
            multiline_quotes=frozenset('"'),
            definition_modifiers=("pub", "unsafe", "async"),
            definition_keywords=("fn", "struct", "enum", "trait", "impl", "mod"),
            imports=_types("use_declaration extern_crate_declaration"),
            definitions=_kinds(
                function="function_item function_signature_item", struct="struct_item", enum="enum_item",
                union="union_item", trait="trait_item", impl="impl_item", type="type_item",
            ),
            containers=_types("trait_item impl_item"),
            calls=_types("call_expression macro_invocation"),
        ),
        LanguageSpec(
            "java", (".java",), "//",
            grammar=_grammar("tree_sitter_java"),
            blocks=_types("block class_body interface_body constructor_body switch_block"),
            vscode_ids=("java",),
            quotes=('"', "'"),
            definition_starts=("@",),
            definition_modifiers=("public", "private", "protected", "static", "abstract", "final"),
            definition_keywords=("class", "interface", "enum"),
            imports=_types("import_declaration"),
            definitions=_kinds(
                class_="class_declaration record_declaration",
                interface="interface_declaration annotation_type_declaration",
                enum="enum_declaration",
                method="method_declaration constructor_declaration",
            ),
            containers=_types("class_declaration interface_declaration enum_declaration record_declaration"),
            transparent=_types("enum_body_declarations"),
            calls=_types("method_invocation object_creation_expression"),
        ),
        LanguageSpec(
            "c", (".c", ".h"), "//",
            grammar=_grammar("tree_sitter_c"),
            vscode_ids=("c",),
            **_C,
            definition_keywords=("struct", "enum"),
            definitions=_C_DEFINITIONS,
            transparent=_types(_PREPROC),
        ),
        LanguageSpec(
            "cpp", (".cc", ".cpp", ".cxx", ".hpp", ".hh", ".hxx"), "//",
            grammar=_grammar("tree_sitter_cpp"),
            vscode_ids=("cpp",),
            **_C,
            definition_keywords=("struct", "enum", "class"),
            definitions=MappingProxyType(
                {
                    **_C_DEFINITIONS,
                    **_kinds(class_="class_specifier", function="field_declaration", type="alias_declaration"),
                }
            ),
            containers=_types("class_specifier"),
            wrappers=_types("template_declaration"),
            transparent=_types(f"{_PREPROC} namespace_definition linkage_specification declaration_list"),
        ),
    )
}

# No grammar: no blocks or tables; the brace languages' openers; no comment rule in bracket counting.
PLAIN_TEXT = LanguageSpec("plaintext", (), "#")

# Language ids editors send that mean one of the above: the table's other VS Code ids, and a few more.
_ALIASES = {
    **{id_: spec.name for spec in LANGUAGES.values() for id_ in spec.vscode_ids if id_ != spec.name},
    "py": "python",
    "c++": "cpp",
    "golang": "go",
}



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

def vscode_ids() -> list[str]:
    """The VS Code language ids midline serves, in table order (extension.ts and package.json list these)."""
    return [id_ for spec in LANGUAGES.values() for id_ in spec.vscode_ids]


# Code ending with one of these opens a block in some language (the language-agnostic rule).
INDENT_OPENERS: tuple[str, ...] = tuple(
    dict.fromkeys(opener for spec in (*LANGUAGES.values(), PLAIN_TEXT) for opener in spec.indent_openers)
)


def _alternatives(words: Iterable[str]) -> str:
    return "|".join(sorted(set(words)))


def definition_line() -> re.Pattern[str]:
    """A line (matched at column 0) that starts a definition in any language: one union over the table,
    so a Python block also ends at a column-0 `fn`/`struct` line, as it always has."""
    specs = LANGUAGES.values()
    starts = sorted({s for spec in specs for s in spec.definition_starts})
    start = "|".join(re.escape(s) + (r"\b" if s[-1].isalnum() else "") for s in starts)
    modifiers = _alternatives(m for spec in specs for m in spec.definition_modifiers)
    keywords = _alternatives(k for spec in specs for k in spec.definition_keywords)
    return re.compile(rf"{start}|(?:(?:{modifiers})\s+)*(?:{keywords})\b")
