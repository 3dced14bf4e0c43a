"""`midline-train index`: the attribution index of a corpus's training split, for the server's `attribution.index`.

Each training file's text becomes lexemes, every `ngram` consecutive lexemes one 64-bit hash, and of every `window`
consecutive hashes the smallest is kept (winnowing); the kept hashes of all files, sorted and unique, are written as
`<out>/fingerprints.npy` (uint64) with `<out>/index.json` (the format, the n-gram and window, what it was built
from) written last. The hashing and the lookup are the server's (`midline.server.attribution`): one definition,
so an index always matches what the server computes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from midline.server import attribution as A
from midline.training import corpus
from midline.training.stage import command_line, corpus_fingerprint, write_json, write_npy


def build_index(corpus_dir: Path, out_dir: Path, *, split: str = "train", ngram: int = A.NGRAM,
                window: int = A.WINDOW) -> dict:
    """Write the index of `corpus_dir`'s `split` to `out_dir`; returns its header."""
    if ngram < 1 or window < 1:
        raise ValueError(f"--ngram and --window must be at least 1 (got {ngram}, {window})")
    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    if not (corpus_dir / f"{split}.jsonl").is_file():
        raise ValueError(f"{corpus_dir} has no {split}.jsonl (a corpus from `midline-train corpus`)")
    start = time.monotonic()
    parts, files, words, size = [], 0, 0, 0
    for record in tqdm(corpus.read_split(corpus_dir, split), desc="index", unit="file"):
        lexemes = A.lexemes(record["text"])[0]
        parts.append(A.winnow(A.ngram_hashes(lexemes, ngram), window))
        files, words, size = files + 1, words + len(lexemes), size + len(record["text"].encode())
    fingerprints = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.uint64)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / A.HEADER).unlink(missing_ok=True)  # incomplete until the header is written again
    write_npy(out_dir / A.FINGERPRINTS, fingerprints)
    header = {"format": A.FORMAT, "version": A.VERSION, "ngram": ngram, "window": window,
              "corpus": str(corpus_dir.resolve()), "split": split, "corpus_fingerprint": corpus_fingerprint(corpus_dir),
              "files": files, "bytes": size, "lexemes": words, "fingerprints": int(len(fingerprints)),
              "index_bytes": int(fingerprints.nbytes), "elapsed_s": round(time.monotonic() - start, 2),
              "command": command_line()}
    write_json(out_dir / A.HEADER, header, indent=2)
    return header


def add_parser(stages: argparse._SubParsersAction) -> None:
    """Register the `index` subcommand."""
    p = stages.add_parser("index", help="the attribution index of a corpus's training split (server setting "
                                        "attribution.index)")
    p.add_argument("--corpus", type=Path, required=True, metavar="DIR", help="a corpus from the corpus stage")
    p.add_argument("--out", type=Path, required=True, metavar="INDEX", help="the index dir to write")
    p.add_argument("--split", default="train", choices=("train", "valid"), help="default: %(default)s")
    p.add_argument("--ngram", type=int, default=A.NGRAM,
                   help="lexemes per hashed span: the shortest verbatim span found (default: %(default)s)")
    p.add_argument("--window", type=int, default=A.WINDOW,
                   help="winnowing window: every span of ngram + window - 1 lexemes is found (default: %(default)s)")
    p.set_defaults(run=run)


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    h = build_index(args.corpus, args.out, split=args.split, ngram=args.ngram, window=args.window)
    print(f"index in {args.out}: {h['files']} files, {h['lexemes']:,} lexemes -> {h['fingerprints']:,} fingerprints "
          f"({h['index_bytes'] / 1e6:.1f} MB; every verbatim span of {h['ngram'] + h['window'] - 1}+ lexemes found) "
          f"in {h['elapsed_s']:.1f} s")
    return 0
