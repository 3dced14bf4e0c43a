"""What every training stage shares: atomic files, hashes, the corpus fingerprint, the command line, progress.

Atomic: a file is written to `<name>.tmp` beside it and moved into place (`os.replace`) only when whole,
so a killed stage leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shlex
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

SPLITS = ("train", "valid")


# -- atomic files ---------------------------------------------------------------------------------


def tmp_path(path: Path) -> Path:
    """Where `path` is written before it is moved into place: `<name>.tmp` beside it."""
    return path.with_name(path.name + ".tmp")


@contextmanager
def atomic_open(path: Path, mode: str = "w", *, fsync: bool = False) -> Iterator[IO]:
    """A file opened at `<path>.tmp` (text as UTF-8) and moved to `path` when the block ends without error
    (after an fsync, if asked); on an error the temporary file stays and `path` is untouched."""
    path = Path(path)
    tmp = tmp_path(path)
    with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as f:
        yield f
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_open(path) as f:
        f.write(text)


def write_json(path: Path, obj: Any, **dumps: Any) -> None:
    """Write `json.dumps(obj, **dumps)` to `path` atomically (no final newline)."""
    write_text(path, json.dumps(obj, **dumps))


def write_jsonl(path: Path, records: Iterable[dict]) -> None:
    """Write one JSON object a line (non-ASCII as is) to `path` atomically."""
    with atomic_open(path) as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def save_jsonl(records: Iterable[dict], path: Path) -> str:
    """Write one JSON object a line (non-ASCII as is) to `path` atomically, creating its folder; returns
    the file's sha256."""
    text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, text)
    return sha256_bytes(text)


def write_npy(path: Path, array, *, fsync: bool = False) -> None:
    """Save a numpy array (no pickles) to `path` atomically."""
    import numpy as np

    with atomic_open(path, "wb", fsync=fsync) as f:
        np.save(f, array, allow_pickle=False)


def read_json(path: Path, *, tolerant: bool = False) -> Any:
    """The JSON in `path`, or None if there is no such file (or, if `tolerant`, one unreadable or not JSON)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        if tolerant:
            return None
        raise


# -- hashes and fingerprints ----------------------------------------------------------------------


def sha256_bytes(data: bytes | str) -> str:
    """The hex sha256 of `data` (a str as UTF-8)."""
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file's bytes, read a MiB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def corpus_fingerprint(corpus_dir: Path) -> dict:
    """What identifies a corpus cheaply: its manifest's hash and the jsonl sizes."""
    corpus_dir = Path(corpus_dir)
    manifest = corpus_dir / "manifest.json"
    return {"manifest_sha256": sha256_file(manifest) if manifest.exists() else None,
            **{f"{s}_bytes": (corpus_dir / f"{s}.jsonl").stat().st_size for s in SPLITS}}


# -- the command line and progress ----------------------------------------------------------------


def command() -> list[str]:
    """This process's command line, the program by its name only (recorded in a stage's meta.json)."""
    return [Path(sys.argv[0]).name, *sys.argv[1:]]


def command_line() -> str:
    """This `midline-train` run's command line, one shell string (recorded in reports and model cards)."""
    return shlex.join(["midline-train", *sys.argv[1:]])


def expand_files(parser: argparse.ArgumentParser, patterns: list[str]) -> list[Path]:
    """Files matching the globs (`~` and `**` allowed), sorted; a usage error if a glob matches no file."""
    files: set[Path] = set()
    for pattern in patterns:
        matches = [Path(m) for m in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(m)]
        if not matches:
            parser.error(f"--files {pattern!r} matches no file")
        files.update(matches)
    return sorted(files)


def progress(items: list, enabled: bool, desc: str) -> Iterable:
    """`items`, with a progress bar on stderr if `enabled`."""
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="task", file=sys.stderr)
