"""What a code action is about: the `Target` code (a selection widened to whole lines, else the innermost
function or class at the cursor, else the top-level statement) or the `Comment` describing code not yet
written (a block of line comments, or a docstring over a placeholder body).

Pure tree-sitter and text: no model. `actions.py` offers its actions for what `target_at` and
`comment_at` find, and finds them again when one is picked to check that the code did not change (by
content hash).
"""

from __future__ import annotations

from dataclasses import dataclass

import tree_sitter

from midline.model import languages
from midline.model.syntax import byte_offset, char_offset, line_start, next_line, node_name, node_text, unwrap

from .assistant import content_hash
from .documents import Document
from .symbols import enclosing_scopes

# words of class-like node types
_CLASS_TYPES = ("class", "struct", "enum", "interface", "trait", "impl", "record", "union", "type")


@dataclass(frozen=True)
class Target:
    """Code an action works on: whole lines of the document."""

    kind: str  # "function" | "class" | "statement" | "selection"
    name: str  # the function's or class's name, else ""
    start: int  # string index of its first line's start
    end: int  # string index after its last line (after the newline, if any)
    code: str  # the document's text from `start` to `end`

    @property
    def indent(self) -> str:
        first = self.code.split("\n", 1)[0]
        return first[: len(first) - len(first.lstrip())]

    @property
    def hash(self) -> str:
        return content_hash(self.code)


@dataclass(frozen=True)
class Comment:
    """A comment (or docstring) that describes code not yet written; the code goes at `insert`."""

    text: str
    start: int  # string index of its first line
    insert: int  # where the code goes: after the comment's last line
    replace_end: int  # end of what the code replaces (== insert, or the `pass` under a docstring)
    indent: str  # the code's indentation

    @property
    def hash(self) -> str:
        return content_hash(self.text, str(self.insert))


def _definition_kind(node: tree_sitter.Node, language: str) -> str:
    """A definition's target kind: "class" if its node type is class-like (a struct, enum, trait...), else
    "function"."""
    node_type = unwrap(node, language, fields_only=True).type
    return "class" if any(word in node_type for word in _CLASS_TYPES) else "function"


def _definition_target(node: tree_sitter.Node, language: str, first: int, last: int, code: str) -> Target:
    """The target a definition makes, its code spanning `first` to `last`."""
    return Target(_definition_kind(node, language), node_name(node, language, fields_only=True), first, last, code)


def _lines_of(doc: Document, node: tree_sitter.Node) -> tuple[int, int]:
    """The node's whole lines, as string indexes (start of its first line, after its last line)."""
    start, end = char_offset(doc.source, node.start_byte), char_offset(doc.source, node.end_byte)
    first = line_start(doc.text, start)
    if doc.text[first:start].strip():  # code before the node on its first line: start at the node
        first = start
    return first, next_line(doc.text, max(end - 1, start))


def target_at(doc: Document, start: int, end: int) -> Target | None:
    """The selection (`start` < `end`, widened to whole lines), else the innermost function or class
    around the cursor, else the top-level statement at it. None on blank lines and comments."""
    text = doc.text
    start, end = min(start, end), max(start, end)
    if start < end:
        first = line_start(text, start)
        last = end if end > first and text[end - 1] == "\n" else next_line(text, end)
        code = text[first:last]
        if not code.strip():
            return None
        node = _single_definition(doc, first, last)
        if node is not None:
            return _definition_target(node, doc.language, first, last, code)
        return Target("selection", "", first, last, code)
    if doc.tree is None:
        return None
    byte = byte_offset(text, start)
    line = text[line_start(text, start) : next_line(text, start)]
    probe = byte_offset(text, line_start(text, start) + len(line) - len(line.lstrip())) + 1 if line.strip() else byte
    scopes = enclosing_scopes(doc.tree, min(max(byte, probe), len(doc.source)), doc.language)
    if scopes:
        node = scopes[-1]
        first, last = _lines_of(doc, node)
        return _definition_target(node, doc.language, first, last, text[first:last])
    if not line.strip():
        return None
    for node in doc.tree.root_node.named_children:
        if node.start_byte <= max(byte, probe - 1) < node.end_byte or node.start_byte <= byte <= node.end_byte:
            if "comment" in node.type:
                return None
            first, last = _lines_of(doc, node)
            return Target("statement", "", first, last, text[first:last])
    return None


def _single_definition(doc: Document, first: int, last: int) -> tree_sitter.Node | None:
    """The function or class that the lines `first`..`last` hold exactly (blank lines aside), if one does."""
    if doc.tree is None or not doc.text[first:last].strip():
        return None
    lead = len(doc.text[first:last]) - len(doc.text[first:last].lstrip())
    scopes = enclosing_scopes(doc.tree, byte_offset(doc.text, first + lead) + 1, doc.language)
    if not scopes:
        return None
    start, end = _lines_of(doc, scopes[-1])
    return scopes[-1] if start == first and doc.text[end:last].strip() == "" else None


def comment_at(doc: Document, offset: int) -> Comment | None:
    """The comment block (line comments with one indentation) or docstring at the cursor, if the code
    it describes is not written yet: nothing follows it on the next line at its indentation or deeper
    (a docstring: its function has no body but `pass` or `...`)."""
    text = doc.text
    if doc.language == "python" and doc.tree is not None:
        found = _docstring_at(doc, doc.tree, offset)
        if found is not None:
            return found
    marker = languages.resolve(doc.language).line_comment
    lines = text.split("\n")
    row = text.count("\n", 0, offset)

    def is_comment(i: int, indent: str | None = None) -> bool:
        if not 0 <= i < len(lines):
            return False
        stripped = lines[i].lstrip()
        return stripped.startswith(marker) and (indent is None or lines[i][: len(lines[i]) - len(stripped)] == indent)

    if not is_comment(row):
        return None
    indent = lines[row][: len(lines[row]) - len(lines[row].lstrip())]
    top, bottom = row, row
    while is_comment(top - 1, indent):
        top -= 1
    while is_comment(bottom + 1, indent):
        bottom += 1
    after = lines[bottom + 1] if bottom + 1 < len(lines) else ""
    after_indent = len(after) - len(after.lstrip())
    if after.strip() and after_indent >= len(indent):
        return None  # code follows at once: the comment describes it
    start = doc.line_start(top)
    insert = next_line(text, doc.line_start(bottom))
    comment = "\n".join(line.strip() for line in lines[top : bottom + 1])
    return Comment(comment, start, insert, insert, indent)


def _docstring_at(doc: Document, tree: tree_sitter.Tree, offset: int) -> Comment | None:
    """The docstring at `offset` of a Python function whose body is only a placeholder (`pass`, `...`);
    `tree` is the document's parse."""
    byte = byte_offset(doc.text, offset)
    node = tree.root_node.descendant_for_byte_range(byte, byte)
    while node is not None and node.type not in ("string", "module"):
        node = node.parent
    if node is None or node.type != "string" or node.parent is None or node.parent.type != "expression_statement":
        return None
    statement = node.parent
    block = statement.parent
    if block is None or block.type != "block" or block.named_children[0] != statement:
        return None
    rest = block.named_children[1:]
    placeholder = all(
        s.type == "pass_statement"
        or (s.type == "expression_statement" and s.named_child_count == 1 and s.named_children[0].type == "ellipsis")
        for s in rest
    )
    if not placeholder or block.parent is None or block.parent.type != "function_definition":
        return None
    text = doc.text
    start, insert = _lines_of(doc, statement)
    replace_end = _lines_of(doc, rest[-1])[1] if rest else insert
    line = text[start:insert]
    indent = line[: len(line) - len(line.lstrip())]
    return Comment(node_text(node), start, insert, replace_end, indent)
