"""The workspace's indexes, kept fresh: the symbol index (definitions by name) and the retrieval index (chunks
similar to the code at the cursor), over every workspace folder.

`Workspace` scans each folder once per index in the background (one walk and one read per file feed both),
re-reads a file when it is saved or a watcher reports it created or changed, drops it when deleted, and drops a
folder's files when the folder leaves the workspace. An index is kept only while its setting wants it
(`context.crossFile`, `context.retrieval`), and the folders are scanned for it on the first request after it is
turned on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor

from midline.server.config import Config, CurrentConfig, Settings
from midline.server.documents import Document
from midline.server.files import is_under, path_key, read_source, skipped, source_files
from midline.server.retrieval import RetrievalIndex
from midline.server.symbols import SymbolIndex

log = logging.getLogger(__name__)

Submit = Callable[..., "Future | object"]  # runs a function in the background (an executor's `submit`)


class Workspace:
    """The workspace folders and the indexes over their files."""

    config = CurrentConfig()

    def __init__(
        self,
        config: Config | Settings,
        submit: Submit | None = None,
        *,
        symbols: SymbolIndex | None = None,
        retrieval: RetrievalIndex | None = None,
    ) -> None:
        self.settings = Settings.of(config)  # the server's holder: the settings say which indexes to keep
        # Background work runs in order on one thread of its own, unless the caller gives another `submit`.
        self._executor = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="midline-index") if submit is None else None
        )
        self.submit: Submit = submit or self._executor.submit  # type: ignore[union-attr]
        self.symbols = symbols if symbols is not None else SymbolIndex()
        self.retrieval = retrieval if retrieval is not None else RetrievalIndex()
        self.folders: list[str] = []
        # index -> folders scanned (or under way)
        self._scanned: dict[str, set[str]] = {"symbols": set(), "retrieval": set()}
        self._lock = threading.Lock()

    @property
    def _wanted(self) -> dict[str, bool]:
        """The indexes the settings want: definitions for `context.crossFile`, chunks for `context.retrieval`."""
        context = self.config.context
        return {"symbols": context.cross_file, "retrieval": context.retrieval}

    def set_folders(self, folders: Iterable[str]) -> None:
        """The workspace folders now: new ones are scanned, the files of removed ones dropped."""
        folders = list(dict.fromkeys(path_key(folder) for folder in folders))
        removed = [folder for folder in self.folders if folder not in folders]
        self.folders = folders
        for folder in removed:
            with self._lock:
                for scanned in self._scanned.values():
                    scanned.discard(folder)
            dropped = self.symbols.forget_under(folder), self.retrieval.forget_under(folder)
            log.info("workspace folder removed: %s (%d files dropped)", folder, max(dropped))
        self._scan_missing()

    def refresh(self, documents: Iterable[Document], exclude: str | None = None) -> None:
        """Index the open documents changed since the last request (`exclude`: the URI being edited), and scan the
        folders for an index turned on since."""
        documents = list(documents)
        self.symbols.refresh(documents, exclude)  # (always: hover reads it too)
        if self._wanted["retrieval"]:
            self.retrieval.refresh(documents, exclude)
        self._scan_missing()

    def saved(self, doc: Document) -> None:
        """An open document was saved: index its text now, in the background (the document being edited is
        otherwise indexed only once the user moves to another)."""
        path, text, language = doc.path, doc.text, doc.language
        self._background(self._index_open, path, text, language)

    def _index_open(self, path: str, text: str, language: str) -> None:
        self.symbols.index_file(path, text, language)
        if self._wanted["retrieval"]:
            self.retrieval.index_file(path, text)
            self.retrieval.touch(path)

    def changed_on_disk(self, path: str) -> None:
        """A file was created or changed on disk (a watcher's event): read it again in the background."""
        if self._watched(path):
            self._background(self._read, path)

    def deleted(self, path: str) -> None:
        """A file (or a folder: its files) was deleted on disk."""
        self.symbols.forget(path)
        self.retrieval.forget(path)
        self.symbols.forget_under(path)
        self.retrieval.forget_under(path)

    def stats(self) -> dict[str, int]:
        """What is indexed, for `midline.status`: folders, files with definitions, files and chunks for retrieval."""
        files, chunks, _ = self.retrieval.size
        return {
            "folders": len(self.folders),
            "definitionFiles": len(self.symbols),
            "retrievalFiles": files,
            "retrievalChunks": chunks,
        }

    def close(self) -> None:
        """Stop background work (shutdown): scans under way end at their next file."""
        self.folders = []
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    # -- internals ----------------------------------------------------------------------------

    def _background(self, fn: Callable[..., None], *args: object) -> None:
        self.submit(_logged, fn, *args)

    def _watched(self, path: str) -> bool:
        """Whether `path` is in a workspace folder and not in a skipped (hidden, build, dependency) folder of it."""
        root = next((folder for folder in self.folders if is_under(path, folder)), None)
        return root is not None and not skipped(path, root)

    def _read(self, path: str) -> None:
        file = read_source(path)
        if file is None:  # gone, too large or binary now: whatever was indexed is stale
            self.deleted(path)
            return
        if self._wanted["symbols"]:
            self.symbols.index_disk(file.path, file.source, file.language)
        if self._wanted["retrieval"]:
            self.retrieval.index_disk(file.path, file.source)

    def _scan_missing(self) -> None:
        """Scan each folder for each wanted index it was not scanned for."""
        wanted = self._wanted
        for folder in self.folders:
            with self._lock:
                names = [name for name, on in wanted.items() if on and folder not in self._scanned[name]]
                for name in names:
                    self._scanned[name].add(folder)
            if names:
                self._background(self._scan, folder, names)

    def _scan(self, folder: str, names: list[str]) -> None:
        """Index the files under `folder` into the indexes `names`; stops early if the folder is removed meanwhile."""
        count = 0
        for file in source_files(folder):
            if folder not in self.folders:
                return
            if "symbols" in names:
                self.symbols.index_disk(file.path, file.source, file.language)
            if "retrieval" in names:
                self.retrieval.index_disk(file.path, file.source)
            count += 1
        log.info("indexed %d files of %s (%s)", count, folder, ", ".join(names))


def _logged(fn: Callable[..., None], *args: object) -> None:
    """Run `fn`; a failure is logged (its type; the traceback at DEBUG, as it may quote code), never raised into an
    executor's future that nobody reads."""
    try:
        fn(*args)
    except Exception as exc:
        log.warning("indexing failed in %s (%s)", fn.__name__, type(exc).__name__)
        log.debug("indexing failure", exc_info=True)
