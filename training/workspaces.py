"""Held-out repositories as workspaces: what the server would know about a task's repository.

A task (`evaluate.Task`) carries one file with a hole; in an editor the rest of its repository is on disk, and the
server indexes it: definitions by name (`SymbolIndex`, for cross-file definitions) and chunks (`RetrievalIndex`, for
repository retrieval). `Workspaces` builds both indexes once per repository from the corpus split's records, at the
paths the evaluation's documents have (`/<repo>/<path>`, under the root the Completer is given). A task's own file is
indexed too, as the original (with the answer in it): search and lookup exclude the document's own path, as the
server's indexes exclude the document being edited.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from midline.model import languages
from midline.server.retrieval import RetrievalIndex
from midline.server.symbols import SymbolIndex


def task_root(repo: str) -> PurePosixPath:
    """The workspace folder of a task's repository, as the evaluation's documents and Completers see it."""
    return PurePosixPath("/", repo or "workspace")


class Workspaces:
    """The indexes of each held-out repository, built on first use from `records` ({"repo", "path", "text"})."""

    def __init__(self, records: list[dict]) -> None:
        self._files: dict[str, list[dict]] = {}
        for record in records:
            self._files.setdefault(record.get("repo", ""), []).append(record)
        self._built: dict[str, tuple[SymbolIndex, RetrievalIndex]] = {}

    def indexes(self, repo: str) -> tuple[SymbolIndex, RetrievalIndex]:
        """(definitions, chunks) of the repository's files."""
        if repo not in self._built:
            symbols, retrieval = SymbolIndex(), RetrievalIndex()
            root = task_root(repo)
            for record in self._files.get(repo, []):
                path = str(root / record["path"])
                source = record["text"].encode("utf-8", "surrogatepass")
                language = languages.resolve(None, path)
                if language.grammar is not None:
                    symbols.index_disk(path, source, language.name)
                    retrieval.index_disk(path, source)
            self._built[repo] = symbols, retrieval
        return self._built[repo]

    def files(self, repo: str) -> int:
        """How many files the repository has (its tasks' files included)."""
        return len(self._files.get(repo, []))
