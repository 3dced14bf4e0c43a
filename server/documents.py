"""Open documents: their text, kept in sync with the editor, and a tree-sitter tree updated incrementally.

Positions from the client count characters in the negotiated encoding (UTF-16 unless told otherwise);
a `PositionCodec` turns them into indexes into the Python string. Tree-sitter counts UTF-8 bytes and
rows split at "\\n" only, so each edit is described to it in bytes and (row, byte column) points.
"""

from __future__ import annotations

import bisect
import itertools
import re
from typing import Iterable, Iterator

import tree_sitter
from lsprotocol import types
from pygls.uris import to_fs_path
from pygls.workspace.position_codec import PositionCodec

from midline.model import languages

# Line breaks as LSP counts them.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_LONE_CR = re.compile(r"\r(?!\n)")


def utf8(text: str) -> bytes:
    """The UTF-8 bytes tree-sitter sees (lone surrogates, which JSON can carry, pass through)."""
    return text.encode("utf-8", "surrogatepass")


def _point(data: bytes, offset: int) -> tuple[int, int]:
    """Tree-sitter point (row, byte column) of a byte offset."""
    return data.count(b"\n", 0, offset), offset - (data.rfind(b"\n", 0, offset) + 1)


class Document:
    """One open document: text, version, language, and (for known languages) a parse tree."""

    def __init__(self, uri: str, language_id: str | None, version: int, text: str) -> None:
        self.uri = uri
        self.path: str = to_fs_path(uri) or uri
        self.language: str = languages.resolve(language_id, self.path).name
        self.language_id: str = language_id or self.language  # as the editor named it (for `enable`)
        self.version = version
        self.parser: tree_sitter.Parser | None = languages.new_parser(self.language)
        self._set_text(text)
        self.tree: tree_sitter.Tree | None = self.parser.parse(self.source) if self.parser else None

    def _set_text(self, text: str) -> None:
        self.text = text
        self.source: bytes = utf8(text)  # what the tree was parsed from
        self._starts: list[int] | None = None

    # -- positions ------------------------------------------------------------------------------

    def line_starts(self) -> list[int]:
        """String index where each line starts (computed once per version)."""
        if self._starts is None:
            if _LONE_CR.search(self.text):
                self._starts = [0] + [m.end() for m in _LINE_BREAK.finditer(self.text)]
            else:  # only "\n" and "\r\n": a faster way to the same table
                lengths = map(len, self.text.split("\n"))
                self._starts = list(itertools.accumulate(lengths, lambda start, n: start + n + 1, initial=0))[:-1]
        return self._starts

    def _line(self, line: int) -> str:
        """Text of a line, without its line break."""
        starts = self.line_starts()
        end = starts[line + 1] if line + 1 < len(starts) else len(self.text)
        return self.text[starts[line] : end].rstrip("\r\n")

    def offset_at(self, position: types.Position, codec: PositionCodec, *, clamp: bool = False) -> int:
        """String index of a client position.

        Out of range positions raise ValueError, or with `clamp` (how LSP treats edits) fall back to
        the end of the line, or of the document.
        """
        starts = self.line_starts()
        if position.line < 0 or position.character < 0:
            raise ValueError(f"negative position {position.line}:{position.character}")
        if position.line >= len(starts):
            if clamp:
                return len(self.text)
            raise ValueError(f"line {position.line} is past the end of the document ({len(starts)} lines)")
        line = self._line(position.line)
        length = codec.client_num_units(line)
        if position.character > length and not clamp:
            raise ValueError(
                f"character {position.character} is past the end of line {position.line} "
                f"({length} {codec.encoding} code units)"
            )
        if position.character >= length:
            return starts[position.line] + len(line)
        # The codec reads only the position's own line.
        column = codec.position_from_client_units([line], types.Position(0, position.character)).character
        return starts[position.line] + column

    def position_at(self, offset: int, codec: PositionCodec) -> types.Position:
        """Client position of a string index."""
        if not 0 <= offset <= len(self.text):
            raise ValueError(f"offset {offset} is outside the document (length {len(self.text)})")
        starts = self.line_starts()
        line = bisect.bisect_right(starts, offset) - 1
        return types.Position(line, codec.client_num_units(self.text[starts[line] : offset]))

    # -- edits ----------------------------------------------------------------------------------

    def apply_change(self, change: types.TextDocumentContentChangeEvent, codec: PositionCodec) -> None:
        """Apply one content change: a full replacement, or an incremental edit of a range."""
        if not isinstance(change, types.TextDocumentContentChangePartial):
            self._set_text(change.text)
            self.tree = self.parser.parse(self.source) if self.parser else None
            return
        start = self.offset_at(change.range.start, codec, clamp=True)
        end = self.offset_at(change.range.end, codec, clamp=True)
        start, end = min(start, end), max(start, end)
        old_text, old_source = self.text, self.source
        self._set_text(old_text[:start] + change.text + old_text[end:])
        if self.tree is None or self.parser is None:
            return
        start_byte = len(utf8(old_text[:start]))
        old_end_byte = start_byte + len(utf8(old_text[start:end]))
        new_end_byte = start_byte + len(utf8(change.text))
        self.tree.edit(
            start_byte,
            old_end_byte,
            new_end_byte,
            _point(old_source, start_byte),
            _point(old_source, old_end_byte),
            _point(self.source, new_end_byte),
        )
        self.tree = self.parser.parse(self.source, self.tree)


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
