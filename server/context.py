"""Context around the cursor: what the model sees, gathered with tree-sitter.

`build_context` turns a document and a cursor offset into a `CompletionContext`: token-budgeted prefix
and suffix windows cut at line boundaries, the kind of hole at the cursor, and extra snippets (imports,
enclosing signature, definitions from other files, similar chunks of other files) ordered stable-first for
prompt caching. In a large
document, post-processing gets the top-level nodes around the cursor (`text_window`), not the whole text.
"""

from __future__ import annotations

import enum
import itertools
import logging
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import tree_sitter

from midline.model import languages, syntax
from midline.model.syntax import cursor_node, error_spans, is_word, utf8
from midline.model.fim import Snippet
from midline.server.documents import Document
from midline.server.retrieval import Chunk, RetrievalIndex
from midline.server.symbols import (
    Definition,
    SymbolIndex,
    enclosing_scopes,
    identifiers_near,
    imports,
    render,
    render_scope,
)

log = logging.getLogger(__name__)


class Hole(enum.Enum):
    """What kind of completion fits at the cursor."""

    NONE = "none"  # mid-identifier: do not complete
    SINGLE_LINE = "single_line"  # code follows the cursor on its line, or its line's statement is unfinished
    MULTI_LINE = "multi_line"  # blank line, block opener, or the end of a complete line: new lines may follow


@dataclass
class CompletionContext:
    """Everything downstream stages need about one completion request."""

    path: str  # file path (or the URI when it has no path), as shown to the model
    language: str  # canonical language name from `languages.resolve`, "plaintext" if unknown
    text: str  # the document, or past a size limit the part around the cursor that post-processing sees
    offset: int  # cursor, as an index into `text`
    prefix: str  # window of text before the cursor (ends at the cursor)
    suffix: str  # window of text after the cursor (starts at the cursor)
    hole: Hole
    snippets: list[Snippet] = field(default_factory=list)  # extra context, stable first
    block: bool = True  # nothing follows in the cursor's block: the answer may be several statements, else one
    indent: str = ""  # indentation the server typed for the user at column 0 of an empty line (in `text` and
    # `prefix`; the suggestion starts with it)

    @property
    def position(self) -> str:
        """Where the cursor is, as the model's confidence floors tell positions apart: "mid_line" (finishing a
        line), "line_end" (the end of a line with code), "new_line" (a blank line)."""
        if self.hole is not Hole.MULTI_LINE:
            return "mid_line"
        return "line_end" if self.line_prefix.strip() else "new_line"

    @property
    def line_prefix(self) -> str:
        """Text of the cursor's line before the cursor."""
        return self.text[syntax.line_start(self.text, self.offset) : self.offset]

    @property
    def line_suffix(self) -> str:
        """Text of the cursor's line after the cursor."""
        return self.text[self.offset : syntax.line_end(self.text, self.offset)]


def build_context(
    doc: Document,
    offset: int,
    *,
    count_tokens: Callable[[str], int],
    budget: int = 1536,
    prefix_share: float = 0.75,
    symbols: SymbolIndex | None = None,
    max_snippets: int = 6,
    snippet_budget: int = 512,
    retrieval: RetrievalIndex | None = None,
) -> CompletionContext:
    """The context for a completion at `offset` in `doc`.

    The windows hold about `budget` model tokens, `prefix_share` of them for the prefix (a side that
    reaches the end of the file gives what it does not use to the other). Snippets, at most
    `max_snippets` of about `snippet_budget` tokens in all, come stable first: chunks of other files
    similar to the lines around the cursor (`retrieval`), definitions from other files of names used near
    the cursor, then this file's imports and the enclosing signature when the prefix window cut them off.
    """
    text = doc.text
    byte_offset = doc.byte_offset(offset)
    prefix_start, suffix_end = _windows(doc, offset, byte_offset, count_tokens, budget, prefix_share)
    prefix, suffix = text[prefix_start:offset], text[offset:suffix_end]
    hole = classify_hole(text, offset, doc.language, doc.tree, byte_offset)
    snippets: list[Snippet] = []
    if doc.tree is not None and hole is not Hole.NONE:  # (no completion mid-word: spare the lookups)
        window_byte = byte_offset - len(utf8(prefix))
        snippets = _snippets(
            doc,
            byte_offset,
            window_byte,
            (prefix, suffix),
            count_tokens,
            symbols,
            retrieval,
            max_snippets,
            snippet_budget,
        )
    indent = implied_indent(text, offset, doc.language) if hole is Hole.MULTI_LINE else ""
    if indent:  # prompt as if the editor had indented the empty line
        text, prefix, offset = text[:offset] + indent + text[offset:], prefix + indent, offset + len(indent)
    block = hole is not Hole.NONE and ends_block(text, offset, doc.language)
    start, end = text_window(doc, offset - len(indent), byte_offset)
    text = text[start : end + len(indent)]
    return CompletionContext(
        doc.path, doc.language, text, offset - start, prefix, suffix, hole, snippets, block, indent
    )


# -- the text post-processing sees ----------------------------------------------------------------

_WHOLE_TEXT = 64_000  # characters: a document up to this size goes to post-processing whole
_TEXT_WINDOW = 32_000  # characters: past it, about this much around the cursor
_LINE_WINDOW = 4_000  # characters on each side of the cursor of a line longer than `_TEXT_WINDOW`


def text_window(doc: Document, offset: int, byte_offset: int) -> tuple[int, int]:
    """The part of `doc` that post-processing (its syntax gate above all) sees, as string indexes.

    The whole document up to `_WHOLE_TEXT` characters. Past that, whole lines: the top-level nodes around the
    cursor that fit in `_TEXT_WINDOW` bytes together (they parse alone as they do in the whole document),
    at least the cursor's own; one longer than `_TEXT_WINDOW` characters on a side is cut there at a line
    start, or `_LINE_WINDOW` characters from the cursor when the cursor's line alone is longer.
    """
    text = doc.text
    if len(text) <= _WHOLE_TEXT:
        return 0, len(text)
    row, _ = doc.line_at(offset)
    first = last = byte_offset  # whole lines as the tree counts them (a lone "\r" ends no line there)
    if doc.tree is not None and (span := _top_level_span(doc.tree.root_node, byte_offset, _TEXT_WINDOW)) is not None:
        first, last = min(first, span[0]), max(last, span[1])
    source = doc.source
    start, end = (
        syntax.char_offset(source, syntax.line_start(source, first)),
        syntax.char_offset(source, syntax.next_line(source, last)),
    )
    if offset - start > _TEXT_WINDOW:
        cut_row, _ = doc.line_at(offset - _TEXT_WINDOW)
        start = doc.line_start(cut_row + 1) if cut_row < row else offset - _LINE_WINDOW
    if end - offset > _TEXT_WINDOW:
        cut_row, cut = doc.line_at(offset + _TEXT_WINDOW)
        end = cut if cut_row > row else offset + _LINE_WINDOW
    return start, end


def _top_level_span(root: tree_sitter.Node, byte_offset: int, limit: int) -> tuple[int, int] | None:
    """Start and end bytes of the root's children around `byte_offset`: the one holding it (or the two
    beside it), then neighbours on both sides while all of them span at most `limit` bytes. None if empty."""
    cursor = root.walk()  # (Node.first_child_for_byte gives a null node, which crashes, past the last child)
    after = cursor_node(cursor) if cursor.goto_first_child_for_byte(byte_offset) is not None else None  # ends after it
    before: tree_sitter.Node | None
    if after is not None and after.start_byte <= byte_offset:
        before = after  # it holds the offset
    elif after is not None:
        before = after.prev_sibling
    else:
        before = root.child(root.child_count - 1) if root.child_count else None
    lo, hi = before or after, after or before
    if lo is None or hi is None:
        return None
    grew = True
    while grew:
        grew = False
        if (node := lo.prev_sibling) is not None and hi.end_byte - node.start_byte <= limit:
            lo, grew = node, True
        if (node := hi.next_sibling) is not None and node.end_byte - lo.start_byte <= limit:
            hi, grew = node, True
    return lo.start_byte, hi.end_byte


# -- hole -----------------------------------------------------------------------------------------

def classify_hole(
    text: str, offset: int, language: str, tree: tree_sitter.Tree | None = None, byte_offset: int | None = None
) -> Hole:
    """What kind of completion fits at `offset` (`tree`: the parse of `text`, parsed here if not given;
    `byte_offset`: the offset's in UTF-8, counted here if not given).

    NONE in the middle of a word; SINGLE_LINE when code follows the cursor on its line (also when only
    closing brackets or quotes do: `foo(|)`); MULTI_LINE on a blank line, or at the end of a line that ends
    with a block opener (`:` `(` `[` `{` in Python; `{` `(` `[` `=>` in brace languages). At the end of any
    other line, SINGLE_LINE after a typed space or in a comment (the line goes on), else the tree decides:
    MULTI_LINE if the line's code is complete (the answer may be nothing, more of the line, or new lines),
    SINGLE_LINE if it has a syntax error (`x = foo(1,|`: finish the line). Plain text: SINGLE_LINE.
    """
    before = text[offset - 1] if offset > 0 else ""
    after = text[offset] if offset < len(text) else ""
    if is_word(before) and is_word(after):
        return Hole.NONE
    line_start = syntax.line_start(text, offset)
    line_end = syntax.line_end(text, offset)
    line_prefix, line_suffix = text[line_start:offset], text[offset:line_end]
    if line_suffix.strip():
        return Hole.SINGLE_LINE
    if not line_prefix.strip():
        return Hole.MULTI_LINE
    spec = languages.resolve(language)
    if spec.grammar is None:
        return Hole.SINGLE_LINE
    if line_prefix.rstrip().endswith(spec.block_openers):
        return Hole.MULTI_LINE
    if line_prefix[-1].isspace():  # a space typed after code: the line goes on (`return |`, `# area of |`)
        return Hole.SINGLE_LINE
    if tree is None:
        tree = syntax.parse(spec.name, text)
    at = syntax.byte_offset(text, offset) if byte_offset is None else byte_offset
    start, end = at - len(utf8(text[line_start:offset])), at + len(utf8(text[offset:line_end]))
    typed_in = tree.root_node.descendant_for_byte_range(at - 1, at)
    if typed_in is not None and "comment" in typed_in.type:  # a comment goes on too
        return Hole.SINGLE_LINE
    broken = any(first <= end and last >= start for first, last in error_spans(tree.root_node))
    return Hole.SINGLE_LINE if broken else Hole.MULTI_LINE


def implied_indent(text: str, offset: int, language: str) -> str:
    """The indentation an editor would give an empty line at `offset` when the cursor is at its column 0, or "".

    That of the code line above, one level deeper after a block opener (`:` in Python, `{` `(` `[`
    elsewhere), one level shallower after Python's `return`/`pass`/`raise`/`break`/`continue`; deeper
    still if the code line below is (the cursor is above a block's first line), shallower if the line
    below is and a blank line separates the cursor from the code above. Plain text: "".
    """
    line_start = syntax.line_start(text, offset)
    spec = languages.resolve(language)
    if offset != line_start or text[offset:syntax.line_end(text, offset)] or spec.grammar is None:
        return ""
    above = next((line for _, line in _lines_up(text, line_start) if line.strip()), None)
    if above is None:
        return ""
    unit = _indent_unit(text)
    indent = _leading(above)
    code = above.strip()
    if code.endswith(spec.indent_openers):
        indent += unit
    elif spec.indent_blocks and _dedents(spec, code):
        indent = indent[: max(0, len(indent) - len(unit))]
    below = next((line for _, line in _lines_down(text, syntax.line_end(text, offset)) if line.strip()), None)
    if below is not None:
        below_indent = _leading(below.lstrip("\n"))
        blank_above = line_start >= 1 and not text[syntax.line_start(text, line_start - 1) : line_start].strip()
        if len(below_indent) > len(indent) or (blank_above and len(below_indent) < len(indent)):
            indent = below_indent
    return indent


def ends_block(text: str, offset: int, language: str) -> bool:
    """Whether the cursor is where its block's code ends: no code line follows in the same block (an empty
    block body, the end of a block or of the file), so the answer may be several statements; else one.

    A following code line is outside the block when it is indented less than the cursor's line (than its
    body, after a block opener) or starts with a closer.
    """
    line_start = syntax.line_start(text, offset)
    line = text[line_start:syntax.line_end(text, offset)]
    below = next((line for _, line in _lines_down(text, syntax.line_end(text, offset)) if line.strip()), None)
    if below is None:
        return True
    below = below.lstrip("\n")
    width = _width(line if line.strip() else text[line_start:offset])
    spec = languages.resolve(language)
    if line.rstrip().endswith(spec.block_openers):
        width += 1
    return _width(below) < width or below.lstrip()[:1] in (")", "]", "}")


def _dedents(spec: languages.LanguageSpec, code: str) -> bool:
    """Whether `code` starts with one of the language's dedenting statements (Python's `return`, `pass`, ...)."""
    return bool(spec.dedenters) and re.match(rf"(?:{'|'.join(map(re.escape, spec.dedenters))})\b", code) is not None


def _leading(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _width(line: str) -> int:
    """Width of the leading whitespace, a tab counting 4."""
    return len(_leading(line).expandtabs(4))


def _indent_unit(text: str) -> str:
    """One level of indentation in `text`: a tab if its first indented line starts with one, else the
    smallest indentation step between consecutive code lines (4 spaces if none)."""
    widths = []
    for line in text.split("\n", 2000):
        if line.strip():
            if line[0] == "\t":
                return "\t"
            widths.append(len(_leading(line)))
    steps = [b - a for a, b in zip(widths, widths[1:]) if b > a]
    return " " * min(steps) if steps else "    "


# -- windows --------------------------------------------------------------------------------------


def _lines_up(text: str, line_start: int) -> Iterator[tuple[int, str]]:
    """Lines above `line_start`, nearest first, as (their start, their text with its newline)."""
    end = line_start
    while end > 0:
        start = syntax.line_start(text, end - 1)
        yield start, text[start:end]
        end = start


def _lines_down(text: str, line_end: int) -> Iterator[tuple[int, str]]:
    """Lines below the one ending at `line_end`, nearest first, as (their end, newline + their text)."""
    start = line_end
    while start < len(text):
        end = syntax.line_end(text, start + 1)
        yield end, text[start:end]
        start = end


_CHARS_PER_TOKEN = 16  # generous: a token budget holds fewer characters than this many per token


def _line_chars(budget: int) -> int:
    """Characters of the cursor's line a window side with `budget` tokens takes at most (4,000 at least)."""
    return max(_CHARS_PER_TOKEN * budget, 4_000)


class _Side:
    """The whole lines on one side of the cursor, taken nearest first while they fit a token budget."""

    def __init__(self, lines: Iterator[tuple[int, str]], count_tokens: Callable[[str], int]) -> None:
        self._lines = lines
        self._count = count_tokens
        self.cuts: list[int] = []  # window edge when lines up to this one are taken
        self._costs: list[int] = []
        self.taken = 0
        self.complete = False  # every line fits

    def fit(self, budget: int) -> int:
        """Take as many lines as fit `budget`; return the unused budget if they all fit, else 0."""
        used = self.taken = 0
        while True:
            if self.taken == len(self._costs):
                line = next(self._lines, None)
                if line is None:
                    self.complete = True
                    return max(budget - used, 0)
                self.cuts.append(line[0])
                self._costs.append(self._count(line[1]))
            if used + self._costs[self.taken] > budget:
                self.complete = False
                return 0
            used += self._costs[self.taken]
            self.taken += 1

    def edge(self, default: int, rows: Iterable[int], good_rows: set[int]) -> int:
        """Where the window ends: at the furthest line taken, or, if the side was cut, at a nearer line
        in `good_rows` (`rows` are the lines' rows, nearest first) that keeps at least half of them."""
        if self.taken == 0:
            return default
        if not self.complete and good_rows:
            rows = list(itertools.islice(rows, self.taken))
            for i in range(self.taken - 1, (self.taken - 1) // 2 - 1, -1):
                if rows[i] in good_rows:
                    return self.cuts[i]
        return self.cuts[self.taken - 1]


def _windows(
    doc: Document, offset: int, byte_offset: int, count_tokens: Callable[[str], int], budget: int, prefix_share: float
) -> tuple[int, int]:
    """Start of the prefix window and end of the suffix window, as string indexes."""
    text = doc.text
    line_start = syntax.line_start(text, offset)
    line_end = syntax.line_end(text, offset)
    prefix_budget = int(budget * prefix_share)
    # The cursor's line goes in whole, but never more of it than a side's budget could hold.
    first = max(line_start, offset - _line_chars(prefix_budget))
    last = min(line_end, offset + _line_chars(budget - prefix_budget))
    suffix_budget = budget - prefix_budget - count_tokens(text[offset:last])
    prefix_budget -= count_tokens(text[first:offset])
    up = _Side(_lines_up(text, line_start) if first == line_start else iter(()), count_tokens)
    down = _Side(_lines_down(text, line_end) if last == line_end else iter(()), count_tokens)
    spare = down.fit(suffix_budget + up.fit(prefix_budget))
    if spare and not up.complete:
        up.fit(prefix_budget + spare)
    starts: set[int] = set()
    ends: set[int] = set()
    row = text.count("\n", 0, offset)
    if doc.tree is not None and not (up.complete and down.complete):
        starts, ends = _boundary_rows(doc.tree, byte_offset, max(row - up.taken, 0), row + down.taken)
    start = up.edge(first, itertools.count(row - 1, -1), starts)
    end = down.edge(last, itertools.count(row + 1), ends)
    return start, end


def _end_row(node: tree_sitter.Node) -> int:
    """Last row with text of the node (a node ending in a newline ends at column 0 of the next row)."""
    row, column = node.end_point
    return row - 1 if column == 0 and row > node.start_point.row else row


def _boundary_rows(
    tree: tree_sitter.Tree, byte_offset: int, first_row: int, last_row: int
) -> tuple[set[int], set[int]]:
    """Rows a prefix window may start at, and rows a suffix window may end with, without cutting a
    syntax node beside the cursor in two: those of the cursor's ancestors and of their children
    (top-level statements, class members, statements of the enclosing function, ...). Only the children
    on rows first_row..last_row (the lines the windows may take) are looked at."""
    starts: set[int] = set()
    ends: set[int] = set()
    node: tree_sitter.Node | None = tree.root_node
    while node is not None:
        children = _named_children_on(node, first_row, last_row)
        node = None
        previous_end = -1  # a row where an earlier sibling still runs is no clean start
        for child in children:
            if child.start_byte >= byte_offset:
                break
            if child.start_point.row > previous_end:
                starts.add(child.start_point.row)
            previous_end = max(previous_end, _end_row(child))
            if byte_offset <= child.end_byte:
                node = child
        next_start = 1 << 62  # a row where a later sibling already starts is no clean end
        for child in reversed(children):
            if child.end_byte < byte_offset:
                break
            if _end_row(child) < next_start:
                ends.add(_end_row(child))
            next_start = min(next_start, child.start_point.row)
    return starts, ends


def _named_children_on(node: tree_sitter.Node, first_row: int, last_row: int) -> list[tree_sitter.Node]:
    """The named children of `node` that reach row `first_row` or later and start by row `last_row`."""
    cursor = node.walk()
    if cursor.goto_first_child_for_point((first_row, 0)) is None:
        return []
    children: list[tree_sitter.Node] = []
    while (child := cursor_node(cursor)).start_point.row <= last_row:
        if child.is_named:
            children.append(child)
        if not cursor.goto_next_sibling():
            break
    return children


# -- snippets -------------------------------------------------------------------------------------


def _snippets(
    doc: Document,
    byte_offset: int,
    window_byte: int,
    window: tuple[str, str],
    count_tokens: Callable[[str], int],
    index: SymbolIndex | None,
    retrieval: RetrievalIndex | None,
    max_snippets: int,
    budget: int,
) -> list[Snippet]:
    """Extra context, chosen most relevant first (this file's enclosing signature and missing imports, definitions
    of the names used near the cursor, then chunks similar to the lines around it with what budget is left),
    returned stable first."""
    tree, source, language = doc.tree, doc.source, doc.language
    assert tree is not None
    prefix, suffix = window
    local: list[Snippet] = []
    used = 0
    scopes = [s for s in enclosing_scopes(tree, byte_offset, language) if s.start_byte < window_byte]
    missing = [line for line in imports(tree, source, language) if line not in prefix + suffix]
    for text in (render_scope(scopes, source, language) if scopes else "", "\n".join(missing)):
        cost = count_tokens(text) if text else 0
        if text and used + cost <= budget and len(local) < max_snippets:
            local.append(Snippet(doc.path, text))
            used += cost
    picked: list[Definition] = []
    if index is not None:
        paths: set[str] = set()
        for d in _cross_file(doc, byte_offset, index):
            if d.path not in paths and len(paths) + len(local) >= max_snippets:
                continue
            cost = count_tokens(d.signature)
            if used + cost <= budget:
                picked.append(d)
                paths.add(d.path)
                used += cost
    picked.sort(key=lambda d: (d.path, d.line))
    other_files = [Snippet(path, render(list(defs))) for path, defs in itertools.groupby(picked, key=lambda d: d.path)]
    similar: list[Snippet] = []
    if retrieval is not None and len(local) + len(other_files) < max_snippets:
        for chunk in _similar(doc, prefix, suffix, retrieval, max_snippets - len(local) - len(other_files)):
            cost = count_tokens(chunk.text)
            if used + cost <= budget:
                similar.append(Snippet(chunk.path, chunk.text))
                used += cost
    # the most similar chunk last of them; imports before the signature
    return similar[::-1] + other_files + local[::-1]


QUERY_LINES = (12, 3)  # lines above the cursor (its own included) and below it that make the retrieval query
_SEEN_SHARE = 0.5  # a chunk with this share of its lines in the windows already adds too little


def _similar(doc: Document, prefix: str, suffix: str, retrieval: RetrievalIndex, limit: int) -> list[Chunk]:
    """Chunks of other files most like the lines around the cursor, best first, but those mostly in the windows
    already; none when retrieval fails (logged without the document's code)."""
    above = prefix.split("\n")[-QUERY_LINES[0] :]
    below = suffix.split("\n")[: QUERY_LINES[1] + 1]
    query = "\n".join(above) + "\n".join(below)
    try:
        chunks = retrieval.search(query, exclude_path=doc.path, limit=2 * limit)
    except Exception as exc:  # any failure degrades to no retrieved context
        log.warning("retrieval failed for %s (%s); completing without it", doc.path, type(exc).__name__)
        return []
    seen = {line.strip() for line in (prefix + suffix).split("\n")}
    fresh = []
    for chunk in chunks:
        lines = [line.strip() for line in chunk.text.split("\n") if line.strip()]
        if sum(line in seen for line in lines) < _SEEN_SHARE * len(lines):
            fresh.append(chunk)
    return fresh[:limit]


def _cross_file(doc: Document, byte_offset: int, index: SymbolIndex) -> list[Definition]:
    """Definitions in other files of the names used near the cursor; none when looking them up fails (the
    completion goes on without cross-file context; logged without the document's code)."""
    assert doc.tree is not None
    try:
        return index.lookup(identifiers_near(doc.tree, doc.source, byte_offset), exclude_path=doc.path)
    except Exception as exc:  # any failure degrades to no cross-file context
        log.warning("cross-file context failed for %s (%s); completing without it", doc.path, type(exc).__name__)
        return []
