"""Open documents: their text, kept in sync with the editor, and a tree-sitter tree brought up to date on use.

midline's copy is the only copy: `SyncProtocol` keeps pygls from keeping (and editing) its own, so each
change's positions reach `Document` as the client sent them. Positions count characters in the negotiated
encoding (UTF-16 unless told otherwise); lines break at "\\n", "\\r\\n" and "\\r" only, as LSP says; a position
past the end of its line means the line's end, and a line past the document's end the document's end.

A keystroke costs no parse and no pass over the document in Python: lines are indexed in blocks (`_LineIndex`)
and the tree is re-parsed, incrementally and once for all edits since, when something reads it. Tree-sitter
counts UTF-8 bytes and rows split at "\\n" only, so the edit is described to it in bytes and (row, byte column)
points.
"""

from __future__ import annotations

import bisect
import itertools
import re
from typing import Any, Generator, Iterable, Iterator

import tree_sitter
from lsprotocol import types
from pygls.protocol import LanguageServerProtocol, lsp_method
from pygls.uris import to_fs_path
from pygls.workspace.position_codec import PositionCodec

from midline.model import languages
from midline.model.syntax import byte_offset, new_parser, utf8

# Line breaks as LSP counts them.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_CODECS = {"utf-8": ("utf-8", 1), "utf-16": ("utf-16-le", 2), "utf-32": ("utf-32-le", 4)}
_UTF8_LEADS = bytes(b for b in range(256) if not 0x80 <= b < 0xC0)  # bytes that start a character
_NOT_LOW_SURROGATE = bytes(b for b in range(256) if not 0xDC <= b <= 0xDF)  # high bytes of UTF-16 units


def _point(data: bytes, offset: int) -> tuple[int, int]:
    """Tree-sitter point (row, byte column) of a byte offset."""
    return data.count(b"\n", 0, offset), offset - (data.rfind(b"\n", 0, offset) + 1)


# -- positions in code units ------------------------------------------------------------------------


def _encoding(codec: PositionCodec) -> str:
    """The codec's encoding as "utf-8", "utf-16" or "utf-32" (UTF-16 for any other, as pygls does)."""
    name = str(getattr(codec.encoding, "value", codec.encoding))
    return name if name in _CODECS else "utf-16"


def _char_units(char: str, encoding: str) -> int:
    code = ord(char)
    if encoding == "utf-16":
        return 2 if code > 0xFFFF else 1
    if encoding == "utf-8":
        return 1 if code < 0x80 else 2 if code < 0x800 else 3 if code < 0x10000 else 4
    return 1


def units(text: str, encoding: str) -> int:
    """Length of `text` in code units of the encoding (a lone surrogate is one UTF-16 unit, three UTF-8 bytes)."""
    if encoding == "utf-32" or text.isascii():
        return len(text)
    name, width = _CODECS[encoding]
    return len(text.encode(name, "surrogatepass")) // width


def _characters(text: str, count: int, encoding: str) -> int:
    """How many characters of `text` its first `count` code units reach (a unit inside a character reaches
    it); at most len(text). C speed, but for text holding lone surrogates."""
    if encoding == "utf-32" or text.isascii():
        return min(count, len(text))
    text = text[:count]  # every character is at least one unit
    try:
        if encoding == "utf-8":
            data = text.encode("utf-8")[:count]
            return len(data) - len(data.translate(None, _UTF8_LEADS))  # less the continuation bytes
        data = text.encode("utf-16-le")[: 2 * count]
        return len(data) // 2 - len(data[1::2].translate(None, _NOT_LOW_SURROGATE))  # less second halves of pairs
    except UnicodeEncodeError:  # lone surrogates (two would count as one pair): count one by one
        reached = total = 0
        while reached < len(text) and total < count:
            total += _char_units(text[reached], encoding)
            reached += 1
        return reached


# -- the line index -----------------------------------------------------------------------------------


def _line_lengths(text: str) -> list[int]:
    """Length of each line of `text`, its line break included (the last line, perhaps empty, has none)."""
    if "\r" not in text:
        lengths = [len(line) + 1 for line in text.split("\n")]
        lengths[-1] -= 1
        return lengths
    ends = [m.end() for m in _LINE_BREAK.finditer(text)]
    return [end - start for start, end in zip([0, *ends], [*ends, len(text)])]


class _LineIndex:
    """Where each line starts in a text edited in place.

    Line lengths (breaks included) are kept in blocks of about BLOCK lines, with each block's first line and
    first character: an edit rewrites the lengths of the lines it touches in one block, and finding a line or
    an offset is a bisect over the blocks and a sum or bisect within one.
    """

    BLOCK = 1024

    def __init__(self, lengths: list[int]) -> None:
        self._blocks = [lengths[i : i + self.BLOCK] for i in range(0, len(lengths), self.BLOCK)]
        self._sums = [sum(block) for block in self._blocks]
        self._reindex()

    def _reindex(self) -> None:
        self._first_line = list(itertools.accumulate(map(len, self._blocks), initial=0))
        self._first_char = list(itertools.accumulate(self._sums, initial=0))

    def __len__(self) -> int:
        return self._first_line[-1]

    def start(self, line: int) -> int:
        """String index where `line` (0 <= line < len(self)) starts."""
        b = bisect.bisect_right(self._first_line, line) - 1
        return self._first_char[b] + sum(itertools.islice(self._blocks[b], line - self._first_line[b]))

    def locate(self, offset: int) -> tuple[int, int]:
        """The line holding string index `offset` (a line's break belongs to it), and where that line starts."""
        b = min(bisect.bisect_right(self._first_char, offset), len(self._blocks)) - 1
        block, start = self._blocks[b], self._first_char[b]
        ends = list(itertools.accumulate(block))
        i = min(bisect.bisect_right(ends, offset - start), len(block) - 1)
        return self._first_line[b] + i, start + (ends[i - 1] if i else 0)

    def replace(self, first: int, last: int, lengths: list[int]) -> None:
        """Lines first..last-1 become lines of `lengths`."""
        b0 = bisect.bisect_right(self._first_line, first) - 1
        b1 = bisect.bisect_right(self._first_line, last - 1) - 1
        merged = (
            self._blocks[b0][: first - self._first_line[b0]] + lengths + self._blocks[b1][last - self._first_line[b1] :]
        )
        if len(merged) < self.BLOCK // 2 and b1 + 1 < len(self._blocks):  # no drift to many tiny blocks
            b1 += 1
            merged += self._blocks[b1]
        size = self.BLOCK if len(merged) > 2 * self.BLOCK else len(merged)
        pieces = [merged[i : i + size] for i in range(0, len(merged), size)]
        self._blocks[b0 : b1 + 1] = pieces
        self._sums[b0 : b1 + 1] = [sum(piece) for piece in pieces]
        self._reindex()


# -- documents ----------------------------------------------------------------------------------------


class Document:
    """One open document: text, version, language, and (for known languages) a parse tree."""

    def __init__(self, uri: str, language_id: str | None, version: int, text: str) -> None:
        self.uri = uri
        self.path: str = to_fs_path(uri) or uri
        self.language: str = languages.resolve(language_id, self.path).name
        self.language_id: str = language_id or self.language  # as the editor named it (for `enable`)
        self.version = version
        self.parser: tree_sitter.Parser | None = new_parser(self.language)
        self._tree: tree_sitter.Tree | None = None
        self._parsed = b""  # the source `_tree` was parsed from
        self._unchanged: tuple[int, int] | None = None  # characters kept at the start and end since that parse
        self._set_text(text)

    def _set_text(self, text: str) -> None:
        """Replace the whole text (the tree will be parsed afresh)."""
        self._text = text
        self._source: bytes | None = None
        self._lines = _LineIndex(_line_lengths(text))
        self._tree, self._unchanged = None, None

    @property
    def text(self) -> str:
        return self._text

    @property
    def source(self) -> bytes:
        """The text's UTF-8 bytes, which tree positions count (encoded on first use after a change)."""
        if self._source is None:
            self._source = utf8(self._text)
        return self._source

    @property
    def tree(self) -> tree_sitter.Tree | None:
        """The parse of `source`; after edits, re-parsed on first use (once, incrementally, for all of them)."""
        if self.parser is None:
            return None
        if self._tree is None:
            self._tree = self.parser.parse(self.source)
        elif self._unchanged is not None:
            self._tree.edit(*self._pending_edit(self._unchanged))
            self._tree = self.parser.parse(self.source, self._tree)
        self._parsed, self._unchanged = self.source, None
        return self._tree

    def _pending_edit(
        self, unchanged: tuple[int, int]
    ) -> tuple[int, int, int, tuple[int, int], tuple[int, int], tuple[int, int]]:
        """The edits since the last parse as one tree-sitter edit: the span between the `unchanged` ends."""
        head, tail = unchanged
        start = len(utf8(self._text[:head]))
        kept = len(utf8(self._text[len(self._text) - tail :]))
        old_end, new_end = len(self._parsed) - kept, len(self.source) - kept
        return (
            start,
            old_end,
            new_end,
            _point(self._parsed, start),
            _point(self._parsed, old_end),
            _point(self.source, new_end),
        )

    # -- positions ------------------------------------------------------------------------------

    def line_count(self) -> int:
        return len(self._lines)

    def line_at(self, offset: int) -> tuple[int, int]:
        """The line holding string index `offset` (0 <= offset <= len(text)), and where that line starts."""
        return self._lines.locate(offset)

    def line_start(self, line: int) -> int:
        """String index where `line` starts; the text's length for a line past the last."""
        return self._lines.start(line) if line < len(self._lines) else len(self._text)

    def byte_offset(self, offset: int) -> int:
        """The UTF-8 byte offset, as tree positions count, of string index `offset` (no encoding for ASCII text)."""
        return byte_offset(self._text, offset)

    def _line_span(self, line: int) -> tuple[int, int]:
        """String indexes of a line's start and of its end (where its line break starts)."""
        start = self._lines.start(line)
        if line + 1 >= len(self._lines):
            return start, len(self._text)
        end = self._lines.start(line + 1)
        return start, end - (2 if self._text[end - 2 : end] == "\r\n" else 1)

    def _line(self, line: int) -> str:
        """Text of a line, without its line break."""
        start, end = self._line_span(line)
        return self._text[start:end]

    def offset_at(self, position: types.Position, codec: PositionCodec, *, clamp: bool = False) -> int:
        """String index of a client position.

        Out of range positions raise ValueError, or with `clamp` (how LSP treats edits) fall back to
        the end of the line, or of the document.
        """
        if position.line < 0 or position.character < 0:
            raise ValueError(f"negative position {position.line}:{position.character}")
        if position.line >= len(self._lines):
            if clamp:
                return len(self._text)
            raise ValueError(f"line {position.line} is past the end of the document ({len(self._lines)} lines)")
        start, end = self._line_span(position.line)
        encoding = _encoding(codec)
        if position.character > end - start and not clamp:  # past the end in characters: maybe in units
            length = units(self._text[start:end], encoding)
            if position.character > length:
                raise ValueError(
                    f"character {position.character} is past the end of line {position.line}"
                    f" ({length} {encoding} code units)"
                )
        return start + _characters(
            self._text[start : min(end, start + position.character)], position.character, encoding
        )

    def position_at(self, offset: int, codec: PositionCodec) -> types.Position:
        """Client position of a string index."""
        if not 0 <= offset <= len(self._text):
            raise ValueError(f"offset {offset} is outside the document (length {len(self._text)})")
        line, start = self._lines.locate(offset)
        return types.Position(line, units(self._text[start:offset], _encoding(codec)))

    # -- edits ----------------------------------------------------------------------------------

    def apply_change(self, change: types.TextDocumentContentChangeEvent, codec: PositionCodec) -> None:
        """Apply one content change: a full replacement, or an incremental edit of a range."""
        if not isinstance(change, types.TextDocumentContentChangePartial):
            self._set_text(change.text)
            return
        start = self.offset_at(change.range.start, codec, clamp=True)
        end = self.offset_at(change.range.end, codec, clamp=True)
        self.replace(min(start, end), max(start, end), change.text)

    def replace(self, start: int, end: int, new: str) -> None:
        """Replace text[start:end] with `new`, re-indexing only the lines the edit touches."""
        old = self._text
        text = "".join((old[:start], new, old[end:]))
        # The line before the edit is re-split too: a "\n" inserted after its "\r" joins its line break.
        first = max(self._lines.locate(start)[0] - 1, 0)
        last = self._lines.locate(end)[0] + 1
        span_end = self._lines.start(last) if last < len(self._lines) else len(old)
        lengths = _line_lengths(text[self._lines.start(first) : span_end + len(text) - len(old)])
        if last < len(self._lines):
            lengths.pop()  # the empty rest after the span's final line break
        self._lines.replace(first, last, lengths)
        head, tail = self._unchanged or (len(old), len(old))
        self._unchanged = (min(head, start), min(tail, len(old) - end))
        self._text, self._source = text, None


class SyncProtocol(LanguageServerProtocol):
    """pygls's protocol without pygls's copy of each document: open, change and close (of text documents and of
    notebooks) go straight to the server's handlers, with the client's positions untouched (pygls's copy would
    rewrite out-of-range ones in place and split lines where LSP does not)."""

    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params: types.DidOpenTextDocumentParams) -> Generator[Any, Any, None]:
        yield from self._to_handler(types.TEXT_DOCUMENT_DID_OPEN, params)

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: types.DidChangeTextDocumentParams) -> Generator[Any, Any, None]:
        yield from self._to_handler(types.TEXT_DOCUMENT_DID_CHANGE, params)

    @lsp_method(types.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(self, params: types.DidCloseTextDocumentParams) -> Generator[Any, Any, None]:
        yield from self._to_handler(types.TEXT_DOCUMENT_DID_CLOSE, params)

    @lsp_method(types.NOTEBOOK_DOCUMENT_DID_OPEN)
    def lsp_notebook_document__did_open(
        self, params: types.DidOpenNotebookDocumentParams
    ) -> Generator[Any, Any, None]:
        yield from self._to_handler(types.NOTEBOOK_DOCUMENT_DID_OPEN, params)

    @lsp_method(types.NOTEBOOK_DOCUMENT_DID_CHANGE)
    def lsp_notebook_document__did_change(
        self, params: types.DidChangeNotebookDocumentParams
    ) -> Generator[Any, Any, None]:
        yield from self._to_handler(types.NOTEBOOK_DOCUMENT_DID_CHANGE, params)

    @lsp_method(types.NOTEBOOK_DOCUMENT_DID_CLOSE)
    def lsp_notebook_document__did_close(
        self, params: types.DidCloseNotebookDocumentParams
    ) -> Generator[Any, Any, None]:
        yield from self._to_handler(types.NOTEBOOK_DOCUMENT_DID_CLOSE, params)

    def _to_handler(self, method: str, params: Any) -> Generator[Any, Any, None]:
        if (handler := self.fm.features.get(method)) is not None:
            yield handler, (params,), None


class DocumentStore:
    """The documents the editor has open, by URI."""

    def __init__(self) -> None:
        self._docs: dict[str, Document] = {}

    def open(self, uri: str, language_id: str | None, version: int, text: str) -> Document:
        doc = self._docs[uri] = Document(uri, language_id, version, text)
        return doc

    def change(
        self, uri: str, version: int, changes: Iterable[types.TextDocumentContentChangeEvent], codec: PositionCodec
    ) -> Document:
        """Apply the changes in order (each one's positions refer to the text after the previous)."""
        doc = self.get(uri)
        for change in changes:
            doc.apply_change(change, codec)
        doc.version = version
        return doc

    def close(self, uri: str) -> None:
        self._docs.pop(uri, None)

    def get(self, uri: str) -> Document:
        """The open document; KeyError if it is not open."""
        return self._docs[uri]

    def __contains__(self, uri: object) -> bool:
        return uri in self._docs

    def __iter__(self) -> Iterator[Document]:
        return iter(list(self._docs.values()))

    def __len__(self) -> int:
        return len(self._docs)
