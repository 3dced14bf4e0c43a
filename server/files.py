"""The workspace's files as midline's indexes read them: which ones (`source_files`, `read_source`: files of a
language in the table, outside hidden and build/dependency folders, not huge, not binary), keyed how
(`path_key`), and which open documents changed since an index last looked (`OpenVersions`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING, Iterable, Iterator

from midline.model import languages

if TYPE_CHECKING:
    from midline.server.documents import Document

SKIP_DIRS = frozenset({"node_modules", ".venv", "venv", "__pycache__", "build", "dist", ".git", "target"})
MAX_FILES = 2_000  # files read from one folder
MAX_FILE_BYTES = 1_000_000  # larger files are left out
_BINARY_PROBE = 8_192  # a NUL byte in this many first bytes: a binary file


@dataclass(frozen=True)
class SourceFile:
    """A workspace file read from disk: its path, its language's name (`languages.resolve`) and its bytes."""

    path: str
    language: str
    source: bytes


def path_key(path: str) -> str:
    """How indexes key a file: absolute paths normalized (`a/./b` is `a/b`), others as given."""
    return os.path.normpath(path) if os.path.isabs(path) else path


def is_under(path: str, root: str) -> bool:
    """Whether the path is inside the folder `root` (both absolute)."""
    root = path_key(root).rstrip(os.sep)
    return path_key(path).startswith(root + os.sep)


def skipped(path: str, root: str | None = None) -> bool:
    """Whether a folder on the way from `root` (else from the filesystem root) to `path` is skipped: hidden, or a
    build or dependency folder."""
    parts = PurePath(os.path.relpath(path, root) if root else path).parts[:-1]
    return any(part.startswith(".") or part in SKIP_DIRS for part in parts if part not in (os.sep, ".."))


def read_source(path: str, max_bytes: int = MAX_FILE_BYTES) -> SourceFile | None:
    """The file, if it is one midline indexes: a language with a grammar, at most `max_bytes`, readable, not binary."""
    language = languages.resolve(None, path)
    if language.grammar is None:
        return None
    try:
        if not os.path.isfile(path) or os.path.getsize(path) > max_bytes:
            return None
        with open(path, "rb") as f:
            source = f.read(max_bytes + 1)
    except OSError:
        return None
    if len(source) > max_bytes or b"\0" in source[:_BINARY_PROBE]:
        return None
    return SourceFile(path, language.name, source)


def source_files(root: str, *, max_files: int = MAX_FILES, max_bytes: int = MAX_FILE_BYTES) -> Iterator[SourceFile]:
    """The files under `root` that `read_source` takes, at most `max_files`, skipping hidden and build/dependency
    folders; in a fixed (sorted) order."""
    count = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in SKIP_DIRS)
        for filename in sorted(filenames):
            if count >= max_files:
                return
            found = read_source(os.path.join(dirpath, filename), max_bytes)
            if found is not None:
                count += 1
                yield found


def watch_glob() -> str:
    """A glob over the extensions of every language with a grammar (`**/*.{py,pyi,...}`), for file watchers."""
    extensions = sorted(
        {ext.lstrip(".") for spec in languages.LANGUAGES.values() if spec.grammar for ext in spec.extensions}
    )
    return "**/*.{" + ",".join(extensions) + "}"


class OpenVersions:
    """The version of each open document an index has seen, to index only the ones changed since."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[int, str]] = {}  # URI -> (version, path)

    def sync(self, documents: Iterable[Document], exclude: str | None = None) -> tuple[list[Document], list[str]]:
        """The open documents new or changed since the last sync, but the URI `exclude` (the one being edited: seen
        when it is not excluded any more), recorded as seen; and the paths of the documents closed since."""
        changed, open_uris = [], set()
        for doc in documents:
            open_uris.add(doc.uri)
            if doc.uri != exclude and self._seen.get(doc.uri) != (doc.version, doc.path):
                changed.append(doc)
                self._seen[doc.uri] = (doc.version, doc.path)
        closed = [self._seen.pop(uri)[1] for uri in [uri for uri in self._seen if uri not in open_uris]]
        return changed, closed
