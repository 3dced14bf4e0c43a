"""Notebooks (LSP 3.17 notebook documents): their cells, kept in order, and a cell read as part of one script.

A request on a cell (completion, hover, code actions) reads a `CellView`: a `Document` whose text is the notebook
as the script a data scientist would write, in notebook order: the code cells in the cell's language as they are
(IPython magics such as `%matplotlib inline` or `!pip install` commented out, as jupytext writes them), markdown
cells as comments (they often say what the code below does), cells of other languages left out, each separated by a
blank line, and the cell itself, verbatim, at `start`. The model thus sees the cells above as its prefix and those
below as its suffix. The view's positions, what the client sends and gets back, are the cell's own: an answer's
ranges never count the cells above. Its path is the notebook's with the language's extension (`analysis.ipynb` is
shown as `analysis.py`): FIM models learn from source files, whose path tells the language.

The cells' text is the only copy (pygls keeps none: `documents.SyncProtocol`), edited in place as any document's.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import PurePath
from typing import Iterable, Iterator, Sequence

from lsprotocol import types
from pygls.uris import to_fs_path
from pygls.workspace.position_codec import PositionCodec

from midline.model import languages

from .actions import Replace
from .documents import Document

# Cells every notebook type syncs: those in a language midline knows, and markdown (shown to the model as comments).
SYNC_OPTIONS = types.NotebookDocumentSyncOptions(
    notebook_selector=[
        types.NotebookDocumentFilterWithCells(
            notebook="*",
            cells=[types.NotebookCellLanguage(language) for language in [*languages.vscode_ids(), "markdown"]],
        )
    ]
)
CELL_SEPARATOR = "\n\n"  # between cells in the script: a blank line, as between a module's top-level blocks
_MAGIC = re.compile(r"^([ \t]*)(?=[%!])", re.MULTILINE)  # an IPython magic or shell line: not Python


class OutsideCell(ValueError):
    """An offset of a cell's view outside the cell: no position in the cell's coordinates."""


class CellView(Document):
    """A cell as part of its notebook's script (module docstring): the script's text, parsed as one document, with
    the cell's text at `start`; its positions (`offset_at`, `position_at`) are the cell's."""

    def __init__(self, cell: Document, text: str, start: int, path: str) -> None:
        super().__init__(cell.uri, cell.language_id, cell.version, text)
        self.path = path
        self.cell = cell
        self.start = start

    def offset_at(self, position: types.Position, codec: PositionCodec, *, clamp: bool = False) -> int:
        """The script's string index of a position in the cell."""
        return self.start + self.cell.offset_at(position, codec, clamp=clamp)

    def position_at(self, offset: int, codec: PositionCodec) -> types.Position:
        """The cell's position of a string index of the script; OutsideCell for one outside the cell."""
        if not self.start <= offset <= self.start + len(self.cell.text):
            raise OutsideCell(f"offset {offset} of the notebook's script is outside the cell {self.uri}")
        return self.cell.position_at(offset - self.start, codec)

    def in_cell(self, replace: Replace) -> Replace:
        """A replacement of the script's text as one of the cell's: one running on into the line break that ends the
        cell in the script (a whole-line edit of its last line) stops at the cell's end, its text's last line break
        dropped with it. OutsideCell for one that reaches into another cell."""
        end = self.start + len(self.cell.text)
        if replace.end > end and not self.text[end : replace.end].strip() and replace.text.endswith("\n"):
            replace = dataclasses.replace(replace, end=end, text=replace.text[:-1])
        if not self.start <= replace.start <= replace.end <= end:
            raise OutsideCell(f"the replaced code reaches past the cell {self.uri}")
        return replace


@dataclass
class Cell:
    kind: types.NotebookCellKind
    doc: Document  # its text document: language, version and text


class Notebook:
    """One open notebook: its cells in order."""

    def __init__(self, uri: str, version: int, cells: list[Cell]) -> None:
        self.uri = uri
        self.version = version
        self.cells = cells
        self._views: dict[str, CellView] = {}  # by cell URI, until the notebook changes

    @property
    def path(self) -> str:
        return to_fs_path(self.uri) or self.uri

    def changed(self) -> None:
        """The cells changed (added, removed, moved, kinds): every view is made again."""
        self._views.clear()

    def edit(
        self,
        cell: Document,
        changes: Sequence[types.TextDocumentContentChangeEvent],
        version: int,
        codec: PositionCodec,
    ) -> None:
        """Edits of `cell`'s text, made in its view too (a keystroke re-parses it incrementally, as any document);
        the other cells' views, which hold its text as code of theirs, are made again."""
        view = self._views.get(cell.uri)
        self._views = {cell.uri: view} if view is not None else {}
        for change in changes:
            if view is None or not isinstance(change, types.TextDocumentContentChangePartial):
                cell.apply_change(change, codec)
                self._views, view = {}, None
                continue
            points = (change.range.start, change.range.end)
            start, end = sorted(cell.offset_at(point, codec, clamp=True) for point in points)
            cell.replace(start, end, change.text)
            view.replace(view.start + start, view.start + end, change.text)
        cell.version = version
        if view is not None:
            view.version = version

    def view(self, cell: Document) -> CellView:
        """`cell` as part of the notebook's script (made again after the cells change, or another cell's text)."""
        if (view := self._views.get(cell.uri)) is None:
            text, start = script(self.cells, cell)
            view = self._views[cell.uri] = CellView(cell, text, start, shown_path(self.path, cell.language))
        return view


def script(cells: Sequence[Cell], cell: Document) -> tuple[str, int]:
    """The notebook's cells as one script around `cell` (module docstring), and where `cell`'s text starts in it."""
    spec = languages.resolve(cell.language_id)
    parts: list[str] = []
    start = 0
    for other in cells:
        if other.doc is cell:
            start = sum(len(part) + len(CELL_SEPARATOR) for part in parts)
            parts.append(cell.text)
        elif (text := _as_code(other, spec)).strip():
            parts.append(text)
    return CELL_SEPARATOR.join(parts), start


def _as_code(cell: Cell, spec: languages.LanguageSpec) -> str:
    """Another cell as code of `spec`'s language: markdown as comments, magics commented out; "" for a cell in
    another language (or markdown in a language without line comments)."""
    text = cell.doc.text.strip("\n").rstrip()
    if cell.kind == types.NotebookCellKind.Markup:
        if not spec.line_comment:
            return ""
        return "\n".join(f"{spec.line_comment} {line}".rstrip() for line in text.split("\n"))
    if languages.resolve(cell.doc.language_id) is not spec:
        return ""
    return _MAGIC.sub(rf"\1{spec.line_comment} ", text) if spec.name == "python" else text


def shown_path(notebook_path: str, language_id: str) -> str:
    """The notebook's path with its language's file extension (unchanged for a language without one)."""
    extensions = languages.resolve(language_id).extensions
    path = PurePath(notebook_path)
    return str(path.with_suffix(extensions[0])) if extensions and path.suffix else notebook_path


class NotebookStore:
    """The notebooks the editor has open, by URI, and the notebook of each cell."""

    def __init__(self) -> None:
        self._notebooks: dict[str, Notebook] = {}
        self._of_cell: dict[str, str] = {}  # cell URI -> notebook URI

    def open(self, notebook: types.NotebookDocument, texts: Iterable[types.TextDocumentItem]) -> Notebook:
        """A notebook and its cells' text documents (a cell the client sent no text for is kept empty, so that the
        cells' indexes stay the client's)."""
        docs = {item.uri: _document(item) for item in texts}
        if notebook.uri in self._notebooks:
            self.close(notebook.uri)
        cells = [Cell(cell.kind, docs.get(cell.document) or _empty(cell.document)) for cell in notebook.cells]
        opened = self._notebooks[notebook.uri] = Notebook(notebook.uri, notebook.version, cells)
        self._of_cell.update((cell.doc.uri, notebook.uri) for cell in cells)
        return opened

    def change(self, params: types.DidChangeNotebookDocumentParams, codec: PositionCodec) -> None:
        """Apply a change: cells' kinds, cells added, removed or moved, cells' text edited (in that order, as LSP
        says). KeyError naming what is unknown (the notebook, a cell) before anything is applied."""
        notebook = self.notebook(params.notebook_document.uri)
        cells = params.change.cells
        if cells is not None:
            _check_cells(notebook, cells)
            if cells.data or cells.structure:
                notebook.changed()
            by_uri = {cell.doc.uri: cell for cell in notebook.cells}
            for data in cells.data or []:
                if data.document in by_uri:
                    by_uri[data.document].kind = data.kind
            if cells.structure is not None:
                self._restructure(notebook, cells.structure, by_uri)
            for content in cells.text_content or []:
                cell = self._cell(notebook, content.document.uri)
                notebook.edit(cell, content.changes, content.document.version, codec)
        notebook.version = params.notebook_document.version

    def _restructure(
        self, notebook: Notebook, structure: types.NotebookDocumentCellChangeStructure, by_uri: dict[str, Cell]
    ) -> None:
        """Cells `array.start` to `start + deleteCount` become `array.cells`: opened ones new, the others moved."""
        array = structure.array
        opened = {item.uri: _document(item) for item in structure.did_open or []}
        new = [
            Cell(cell.kind, opened[cell.document]) if cell.document in opened else by_uri[cell.document]
            for cell in array.cells or []
        ]
        notebook.cells[array.start : array.start + array.delete_count] = new
        for closed in structure.did_close or []:
            if closed.uri not in opened and all(cell.doc.uri != closed.uri for cell in notebook.cells):
                self._of_cell.pop(closed.uri, None)
        self._of_cell.update((uri, notebook.uri) for uri in opened)

    def close(self, uri: str) -> list[str]:
        """Forget a notebook; the URIs of its cells."""
        notebook = self._notebooks.pop(uri, None)
        cells = [cell.doc.uri for cell in notebook.cells] if notebook is not None else []
        for cell in cells:
            self._of_cell.pop(cell, None)
        return cells

    def notebook(self, uri: str) -> Notebook:
        """The open notebook; KeyError saying it is not open."""
        try:
            return self._notebooks[uri]
        except KeyError:
            raise KeyError(f"The notebook {uri} is not open; send notebookDocument/didOpen first") from None

    def cell(self, uri: str) -> Document:
        """A cell's own text document; KeyError if it is in no open notebook."""
        return self._cell(self._notebook_of(uri), uri)

    def view(self, uri: str) -> CellView:
        """The cell `uri` as part of its notebook's script; KeyError if it is in no open notebook."""
        notebook = self._notebook_of(uri)
        return notebook.view(self._cell(notebook, uri))

    def __contains__(self, uri: object) -> bool:
        """Whether `uri` is a cell of an open notebook."""
        return uri in self._of_cell

    def __iter__(self) -> Iterator[Notebook]:
        return iter(list(self._notebooks.values()))

    def _notebook_of(self, cell_uri: str) -> Notebook:
        if cell_uri not in self._of_cell:
            raise KeyError(f"The cell {cell_uri} is in no open notebook")
        return self._notebooks[self._of_cell[cell_uri]]

    @staticmethod
    def _cell(notebook: Notebook, uri: str) -> Document:
        for cell in notebook.cells:
            if cell.doc.uri == uri:
                return cell.doc
        raise KeyError(f"The cell {uri} is not in the notebook {notebook.uri}")


def _document(item: types.TextDocumentItem) -> Document:
    return Document(item.uri, item.language_id, item.version, item.text)


def _empty(uri: str) -> Document:
    """A cell the client sent no text for: empty, in no language (so it adds nothing to a script)."""
    return Document(uri, None, 0, "")


def _check_cells(notebook: Notebook, changes: types.NotebookDocumentCellChanges) -> None:
    """KeyError naming the first cell a change moves or edits that the notebook does not have (nor the change
    opens), or a cell range outside it."""
    uris = [cell.doc.uri for cell in notebook.cells]
    known = set(uris)
    if changes.structure is not None:
        array = changes.structure.array
        if not 0 <= array.start <= array.start + array.delete_count <= len(uris):
            raise KeyError(
                f"The cells {array.start} to {array.start + array.delete_count} are outside the notebook"
                f" {notebook.uri} ({len(uris)} cells)"
            )
        known |= {item.uri for item in changes.structure.did_open or []}
        for cell in array.cells or []:
            if cell.document not in known:
                raise KeyError(f"The cell {cell.document} is neither in the notebook {notebook.uri} nor opened")
        kept = uris[: array.start] + uris[array.start + array.delete_count :]
        known = {*kept, *(cell.document for cell in array.cells or [])}
    for content in changes.text_content or []:
        if content.document.uri not in known:
            raise KeyError(f"The cell {content.document.uri} is not in the notebook {notebook.uri}")
