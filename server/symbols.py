"""Imports, definitions and enclosing scopes of source files, read from their tree-sitter trees.

The language table (model/languages.py) names per language the node types that are imports,
definitions, classes whose members are definitions too, wrappers around a definition (decorators,
`export`, `template <...>`) and blocks whose children still count as top level (`#ifdef`, `namespace`,
Python `try:`). `SymbolIndex` keeps the definitions of workspace files by name, for cross-file context.
"""

from __future__ import annotations

import logging
import textwrap
import threading
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

import tree_sitter

from midline.model import syntax
from midline.model.languages import LANGUAGES, LanguageSpec
from midline.model.syntax import (
    cursor_node,
    definition_body,
    docstring,
    function_value,
    header_colon,
    line_start,
    node_text,
    unwrap,
)
from midline.server.files import MAX_FILE_BYTES, MAX_FILES, OpenVersions, is_under, path_key, source_files

if TYPE_CHECKING:
    from midline.server.documents import Document

Node = tree_sitter.Node
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Definition:
    """A function, method, class or type, reduced to its signature."""

    name: str
    kind: str  # function, method, class, struct, union, enum, interface, trait, impl, type
    signature: str  # header only: `def f(x):` + docstring, `fn f(x) -> T { ... }`; small types whole
    line: int  # 0-based row where the definition (with its decorators) starts
    path: str = ""  # the file, set by `SymbolIndex`
    scope: str = ""  # header of the enclosing class/impl/trait for members, "" at top level


_DOC_LINES = 8  # longer docstrings / doc comments are cut to their summary
_MAX_LINES = 12  # longer whole-text definitions (structs, types) are elided in the middle
_INDENT = "    "


def _text(source: bytes, start: int, end: int) -> str:
    """Source text from `start` to `end`, dedented as a block (its first line's indentation counts)."""
    first = line_start(source, start)
    if not source[first:start].strip():
        start = first
    return textwrap.dedent(source[start:end].decode("utf-8", "replace")).strip("\n").rstrip()


def _compact(text: str, max_lines: int = _MAX_LINES) -> str:
    lines = text.split("\n")
    if len(lines) <= max_lines:
        return text
    indent = lines[1][: len(lines[1]) - len(lines[1].lstrip())] or _INDENT
    return "\n".join([*lines[: max_lines - 2], indent + "...", lines[-1]])


def _declarator_name(node: Node) -> tuple[str | None, bool]:
    """Name in a C/C++ declarator chain, and whether the chain declares a function."""
    is_function = False
    d = node.child_by_field_name("declarator")
    while d is not None:
        if d.type == "function_declarator":
            is_function = True
        if d.type in ("identifier", "field_identifier", "type_identifier", "destructor_name", "operator_name"):
            return node_text(d), is_function
        inner = d.child_by_field_name("name" if d.type == "qualified_identifier" else "declarator")
        d = inner if inner is not None else (d.named_children[0] if d.named_children else None)
    return None, is_function


def _name(node: Node) -> str | None:
    """The defined name, or None when the node defines nothing we index (variables, forward decls)."""
    if node.type in ("lexical_declaration", "variable_declaration"):
        found = function_value(node)
        name = found[0].child_by_field_name("name") if found else None
    elif node.type == "impl_item":
        name = node.child_by_field_name("type")
        while name is not None and name.type == "generic_type":
            name = name.child_by_field_name("type")
    elif node.type in ("struct_specifier", "union_specifier", "enum_specifier", "class_specifier"):
        name = node.child_by_field_name("name") if node.child_by_field_name("body") else None
    else:
        name = node.child_by_field_name("name")
        if name is None and node.child_by_field_name("declarator") is not None:  # C, C++
            text, is_function = _declarator_name(node)
            return text if is_function or node.type == "type_definition" else None
    return node_text(name) if name is not None else None


def _doc_comment(node: Node, source: bytes) -> str:
    """Comments right above a definition (brace languages), if short."""
    comments: list[Node] = []  # nearest first
    prev, row = node.prev_named_sibling, node.start_point.row
    while prev is not None and "comment" in prev.type and prev.end_point.row >= row - 1:
        if source[line_start(source, prev.start_byte) : prev.start_byte].strip():
            break  # a trailing comment of the line above
        comments.append(prev)
        row, prev = prev.start_point.row, prev.prev_named_sibling
    if not comments:
        return ""
    text = _text(source, comments[-1].start_byte, comments[0].end_byte)
    return text + "\n" if text.count("\n") < _DOC_LINES else ""


def _docstring(body: Node, source: bytes) -> str:
    """The docstring opening a Python block, cut to its summary if long."""
    first = docstring(body)
    if first is None:
        return ""
    string = first.named_children[0]
    lines = _text(source, string.start_byte, string.end_byte).split("\n")
    if len(lines) > _DOC_LINES:
        end = node_text(string.children[-1]) if string.children else '"""'
        summary = lines[:_DOC_LINES - 1]
        if "" in summary[1:]:
            summary = summary[: summary.index("", 1)]
        lines = [*summary, end]
    return "\n".join(lines)


def _python_header(outer: Node, node: Node, source: bytes) -> tuple[str, Node | None]:
    body = node.child_by_field_name("body")
    colon = header_colon(node)
    end = colon.end_byte if colon is not None else node.end_byte
    return _text(source, outer.start_byte, end), body


def _header(outer: Node, node: Node, source: bytes, language: str) -> str | None:
    """The text of a definition up to its body, or None if it has no body to leave out."""
    if language == "python":
        return _python_header(outer, node, source)[0]
    body = definition_body(node)
    if body is None:
        return None
    return _text(source, outer.start_byte, body.start_byte)


def signature(node: Node, source: bytes, language: str) -> str:
    """A definition (or wrapper) rendered compactly: its header and docstring, body left out.

    Functions and classes lose their body (`{ ... }`, or `...` under a Python header and docstring);
    structs, enums, type aliases and prototypes are kept whole, elided in the middle when long.
    """
    spec = LANGUAGES.get(language)
    if spec is None:
        return _compact(_text(source, node.start_byte, node.end_byte))
    outer, node = node, unwrap(node, language)
    kind = spec.definitions.get(node.type, "")
    if language == "python":
        header, body = _python_header(outer, node, source)
        doc = _docstring(body, source) if body is not None else ""
        if not doc:
            return f"{header} ..."
        return header + "\n" + textwrap.indent(f"{doc}\n...", _INDENT)
    doc = _doc_comment(outer, source)
    has_body = kind in ("function", "method") or node.type in spec.containers
    head = _header(outer, node, source, language) if has_body else None
    if head is None:
        return doc + _compact(_text(source, outer.start_byte, outer.end_byte))
    block = definition_body(node)
    return doc + head + (" { ... }" if block is not None and source.startswith(b"{", block.start_byte) else " ...")


def _scope_header(outer: Node, node: Node, source: bytes, language: str) -> str:
    return _header(outer, node, source, language) or _text(source, outer.start_byte, node.end_byte).split("\n")[0]


def _top_level(parent: Node, spec: LanguageSpec) -> Iterator[Node]:
    """Children of a block, looking through transparent blocks (`#ifdef`, `namespace`, `try:`), in source
    order. Iterative: transparent blocks may nest as deep as the file does."""
    stack = [iter(parent.named_children)]
    while stack:
        child = next(stack[-1], None)
        if child is None:
            stack.pop()
        elif child.type in spec.transparent:
            stack.append(iter(child.named_children))
        else:
            yield child


def imports(tree: tree_sitter.Tree, source: bytes, language: str) -> list[str]:
    """The file's import statements (`import`, `use`, `#include`, ...) as source text, in order."""
    spec = LANGUAGES.get(language)
    if spec is None:
        return []
    nodes = [node for node in _top_level(tree.root_node, spec) if node.type in spec.imports]
    return [source[node.start_byte : node.end_byte].decode("utf-8", "replace").rstrip() for node in nodes]


def definitions(tree: tree_sitter.Tree, source: bytes, language: str) -> list[Definition]:
    """Top-level definitions and class members, in source order."""
    spec = LANGUAGES.get(language)
    return _collect(tree.root_node, source, language, spec) if spec is not None else []


_GO_KINDS = {"struct_type": "struct", "interface_type": "interface"}  # a Go type's kind by its type node


def _collect(root: Node, source: bytes, language: str, spec: LanguageSpec) -> list[Definition]:
    """Definitions under `root`, each container's members right after it (depth first, with an explicit
    stack: containers may nest as deep as the file does)."""
    out: list[Definition] = []
    stack: list[tuple[Iterator[Node], str]] = [(_top_level(root, spec), "")]  # (nodes left, their scope)
    while stack:
        nodes, scope = stack[-1]
        outer = next(nodes, None)
        if outer is None:
            stack.pop()
            continue
        node = unwrap(outer, language)
        kind = spec.definitions.get(node.type)
        if kind is None:
            continue
        if node.type == "type_declaration":  # Go: `type X struct {...}`, or a group of specs
            grouped = any(child.type == "(" for child in node.children)
            for type_spec in node.named_children:
                type_name = type_spec.child_by_field_name("name")
                if type_name is None or type_spec.type not in ("type_spec", "type_alias"):
                    continue
                type_node = type_spec.child_by_field_name("type")
                go_kind = _GO_KINDS.get(type_node.type if type_node else "", "type")
                if grouped:
                    text = "type " + _text(source, type_spec.start_byte, type_spec.end_byte)
                else:
                    text = _text(source, node.start_byte, node.end_byte)
                rendered = _doc_comment(node, source) + _compact(text)
                out.append(Definition(node_text(type_name), go_kind, rendered, node.start_point.row, scope=scope))
            continue
        name = _name(node)
        if not name:
            continue
        if scope and kind == "function":
            kind = "method"
        out.append(Definition(name, kind, signature(outer, source, language), outer.start_point.row, scope=scope))
        body = node.child_by_field_name("body")
        if node.type in spec.containers and body is not None:
            stack.append((_top_level(body, spec), _scope_header(outer, node, source, language)))
    return out


def render(defs: Sequence[Definition]) -> str:
    """Definitions of one file as compact source, members indented under their class's header.

    A class whose members are listed is shown by that header alone.
    """
    scopes = {d.scope for d in defs if d.scope}
    out: list[str] = []
    current = ""
    for d in defs:
        if d.scope != current:
            if current and not current.endswith(":"):
                out.append("}")
            if d.scope:
                out.append(d.scope if d.scope.endswith(":") else d.scope + " {")
            current = d.scope
        if d.scope:
            out.append(textwrap.indent(d.signature, _INDENT))
        elif not any(d.signature.startswith(s) or f"\n{s}" in d.signature for s in scopes):
            out.append(d.signature)
    if current and not current.endswith(":"):
        out.append("}")
    return "\n".join(out)


# -- around the cursor ----------------------------------------------------------------------------


def render_scope(scopes: Sequence[Node], source: bytes, language: str) -> str:
    """The innermost of `scopes` (outermost first) as a signature, under its parent's header."""
    inner = signature(scopes[-1], source, language)
    spec = LANGUAGES.get(language)
    if len(scopes) < 2 or spec is None:
        return inner
    parent = scopes[-2]
    scope = _scope_header(parent, unwrap(parent, language), source, language)
    return render([Definition("", "", inner, 0, scope=scope)])


def enclosing_scopes(tree: tree_sitter.Tree, byte_offset: int, language: str) -> list[Node]:
    """Definitions (functions, classes, ...) around a byte offset, outermost first, innermost last.

    A definition encloses offsets after its start up to and including its end; decorated, exported or
    templated definitions are given as their wrapper.
    """
    spec = LANGUAGES.get(language)
    if spec is None:
        return []
    scopes: list[Node] = []
    cursor = tree.walk()
    while cursor.goto_first_child_for_byte(max(byte_offset - 1, 0)) is not None:  # first child ending at or after
        child = cursor_node(cursor)
        if child.start_byte >= byte_offset:
            break
        if child.type in spec.definitions and (child.type == "type_declaration" or _name(child)):
            parent = child.parent
            scopes.append(parent if parent is not None and parent.type in spec.wrappers else child)
    return scopes


def identifiers_near(
    tree: tree_sitter.Tree, source: bytes, byte_offset: int, *, above: int = 15, below: int = 5, max_bytes: int = 4096
) -> list[str]:
    """Distinct identifier names used in the lines around the cursor (at most `max_bytes` either side),
    nearest first."""
    lo = byte_offset
    for _ in range(above + 1):  # back to the newline before the first line
        lo = source.rfind(b"\n", 0, lo)
        if lo < 0:
            break
    hi = byte_offset - 1
    for _ in range(below + 1):  # on to the newline after the last line
        hi = source.find(b"\n", hi + 1)
        if hi < 0:
            hi = len(source)
            break
    lo, hi = max(lo + 1, byte_offset - max_bytes), min(hi, byte_offset + max_bytes)
    found: list[tuple[int, str]] = []
    for leaf in _leaves(tree.walk(), lo, hi):
        if leaf.type.endswith("identifier"):
            distance = max(leaf.start_byte - byte_offset, byte_offset - leaf.end_byte, 0)
            found.append((distance, source[leaf.start_byte : leaf.end_byte].decode("utf-8", "replace")))
    found.sort(key=lambda item: item[0])
    return list(dict.fromkeys(name for _, name in found))


def _leaves(cursor: tree_sitter.TreeCursor, lo: int, hi: int) -> Iterator[Node]:
    """Leaf nodes overlapping the byte range [lo, hi], in order, under the cursor's node (which the cursor is
    back on at the end). Iterative: trees may be as deep as the file's nesting."""
    depth = 0  # of the cursor below its starting node
    while True:
        node = cursor_node(cursor)
        if node.child_count == 0:
            yield node
        elif cursor.goto_first_child_for_byte(lo) is not None:
            depth += 1
            if cursor_node(cursor).start_byte <= hi:
                continue  # descend into it
        while depth:  # done with the cursor's node: on to the next sibling in range, else up
            if cursor.goto_next_sibling() and cursor_node(cursor).start_byte <= hi:
                break
            cursor.goto_parent()
            depth -= 1
        else:
            return


# -- workspace index ------------------------------------------------------------------------------


class SymbolIndex:
    """Definitions of workspace files by name, for cross-file context.

    Open documents (`index_file`) take precedence over their disk copies (`index_disk`, `index_workspace`) until
    `release`d. Thread-safe: the workspace can be indexed in a background thread.
    """

    def __init__(self, max_per_name: int = 4) -> None:
        self.max_per_name = max_per_name  # a name defined in more files is too ambiguous to look up
        self._files: dict[str, list[Definition]] = {}
        self._names: dict[str, dict[str, list[Definition]]] = {}  # name -> path -> definitions
        self._live: set[str] = set()  # paths indexed from open documents
        self._open = OpenVersions()
        self._lock = threading.Lock()

    def index_file(self, path: str, text: str, language: str, tree: tree_sitter.Tree | None = None) -> None:
        """(Re)index an open document's text; `tree` is its current parse, if there is one. A document that
        fails to index counts as defining nothing (logged)."""
        self._store(path, _safe_definitions(path, text.encode("utf-8", "surrogatepass"), language, tree), live=True)

    def index_disk(self, path: str, source: bytes, language: str) -> None:
        """(Re)index a file read from disk, unless it is open (parsed with this thread's parser)."""
        with self._lock:
            if path_key(path) in self._live:
                return
        tree = syntax.thread_parser(language).parse(source) if language in LANGUAGES else None
        self._store(path, _safe_definitions(path, source, language, tree), live=False)

    def refresh(self, documents: Iterable[Document], exclude: str | None = None) -> None:
        """Index open documents changed since the last refresh (all but the URI `exclude`); release closed ones."""
        changed, closed = self._open.sync(documents, exclude)
        for doc in changed:
            self.index_file(doc.path, doc.text, doc.language, doc.tree)
        for path in closed:
            self.release(path)

    def release(self, path: str) -> None:
        """The document was closed: its disk copy may be indexed again."""
        with self._lock:
            self._live.discard(path_key(path))

    def forget(self, path: str) -> None:
        """Drop a file (deleted)."""
        self._store(path, [], live=False, force=True)

    def forget_under(self, root: str) -> int:
        """Drop the disk files under the folder `root` (removed from the workspace); returns how many."""
        with self._lock:
            keys = [key for key in self._files if key not in self._live and is_under(key, root)]
        for key in keys:
            self.forget(key)
        return len(keys)

    def index_workspace(self, root: str, max_files: int = MAX_FILES, max_bytes: int = MAX_FILE_BYTES) -> int:
        """Index source files under `root` (`files.source_files`: no hidden or build/dependency folders); returns
        how many."""
        count = 0
        for file in source_files(root, max_files=max_files, max_bytes=max_bytes):
            self.index_disk(file.path, file.source, file.language)
            count += 1
        return count

    def _store(self, path: str, defs: list[Definition], *, live: bool, force: bool = False) -> None:
        key = path_key(path)
        defs = [replace(d, path=path) for d in defs]
        with self._lock:
            if not live and not force and key in self._live:
                return
            if live:
                self._live.add(key)
            elif force:
                self._live.discard(key)
            for old in self._files.pop(key, ()):
                by_path = self._names.get(old.name)
                if by_path is not None:
                    by_path.pop(key, None)
                    if not by_path:
                        del self._names[old.name]
            if defs:
                self._files[key] = defs
            for d in defs:
                self._names.setdefault(d.name, {}).setdefault(key, []).append(d)

    def lookup(self, names: Iterable[str], exclude_path: str | None = None) -> list[Definition]:
        """Definitions of `names` in other files: in the order of `names`, each by path and line.

        Names defined in more than `max_per_name` files are skipped as ambiguous.
        """
        exclude = path_key(exclude_path) if exclude_path else None
        out: list[Definition] = []
        with self._lock:
            for name in dict.fromkeys(names):
                by_path = self._names.get(name)
                if not by_path:
                    continue
                paths = sorted(p for p in by_path if p != exclude)
                if len(paths) <= self.max_per_name:
                    out += [d for p in paths for d in by_path[p]]
        return out

    def definitions_in(self, path: str) -> list[Definition]:
        with self._lock:
            return list(self._files.get(path_key(path), ()))

    def __len__(self) -> int:
        return len(self._files)


def _safe_definitions(path: str, source: bytes, language: str, tree: tree_sitter.Tree | None) -> list[Definition]:
    """`definitions_of`, or [] when it fails: one file must not stop indexing the others (nor completion in
    other documents). Logged with the path and the error's type only, never the file's code."""
    try:
        return definitions_of(source, language, tree)
    except Exception as exc:  # any failure degrades to "defines nothing"
        log.warning("could not index %s (%s); skipped", path, type(exc).__name__)
        return []


def definitions_of(source: bytes, language: str, tree: tree_sitter.Tree | None = None) -> list[Definition]:
    """`definitions` of `source` (parsed here unless its `tree` is given); [] for a language outside the table."""
    if language not in LANGUAGES:
        return []
    if tree is None:
        parser = syntax.new_parser(language)
        if parser is None:
            return []
        tree = parser.parse(source)
    return definitions(tree, source, language)
