"""Corpora for the training tests, in the corpus stage's format."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

from midline.training.tiny_model import stdlib_corpus


def write_corpus(out: Path, n_train: int = 14, n_valid: int = 3) -> Path:
    """A corpus in the corpus stage's format: small stdlib files, plus an empty, a minified and a tricky document."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [f for f in stdlib_corpus(limit=120) if f.stat().st_size < 12_000][: n_train + n_valid]
    docs = [{"repo": "python/cpython", "path": f.relative_to(root).as_posix(), "text": f.read_text()} for f in files]
    docs[1:1] = [
        {"repo": "acme/empty", "path": "empty.py", "text": ""},
        {"repo": "acme/web", "path": "static/app.min.js",
         "text": "var a=" + ",".join(f"x{i}" for i in range(600)) + ";\n"},
        {"repo": "acme/odd", "path": "odd.py",
         "text": 's = "<|endoftext|> <|midline:fim_pad|>"  # ünïcödé 🙂\n\tx = 1\r\n'},
    ]
    out.mkdir(parents=True, exist_ok=True)
    for split, part in (("train", docs[: n_train + 3]), ("valid", docs[n_train + 3 :])):
        (out / f"{split}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in part))
    (out / "manifest.json").write_text(json.dumps({"documents": len(docs)}))
    return out
