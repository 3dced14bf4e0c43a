"""What the attribution check costs per suggestion, and what it finds (`AttributionIndex.match`, as the completer
calls it).

Suggestions are cut from a corpus's files: at a seeded random indented line, the next 1, 5 or 30 lines. From the
indexed split (train) each one is a verbatim copy of training data: the share found is the recall for that length
(a 1-line cut is mostly shorter than the guaranteed span). From the held-out split (valid: other packages) the share
found is how often unseen code still shares a long verbatim span with the training data (licence headers, vendored
copies, generated boilerplate). Times are wall-clock per `match` call after a warm-up; the index load (memory-mapped,
numpy's import included in a fresh process) is timed apart.

    python bench/attribution.py --index work/index --corpus work/corpus     # 300 suggestions a size and split
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

from midline.server.attribution import AttributionIndex
from midline.training.corpus import read_split


def cuts(texts: list[str], lines: int, count: int, seed: int) -> list[str]:
    """`count` suggestions of `lines` lines, each from the indentation of a random indented line on."""
    rng = random.Random(seed)
    out: list[str] = []
    for _ in range(count * 50):
        if len(out) == count:
            break
        rows = rng.choice(texts).split("\n")
        row = rng.randrange(len(rows))
        if row + lines > len(rows) or not rows[row].startswith("    ") or not rows[row].strip():
            continue
        out.append("\n".join([rows[row].lstrip(), *rows[row + 1 : row + lines]]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--corpus", type=Path, required=True, help="the corpus the index was built from")
    parser.add_argument("--count", type=int, default=300, help="suggestions of each size and split")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 5, 30], help="suggestion lengths in lines")
    parser.add_argument("--files", type=int, default=3000, help="files sampled from each split")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    started = time.perf_counter()
    index = AttributionIndex.load(args.index)
    index.match("warm up the import and the first pages of the index " * 8)
    load_ms = (time.perf_counter() - started) * 1000
    print(f"index: {len(index.fingerprints):,} fingerprints, {index.fingerprints.nbytes / 1e6:.1f} MB, ngram "
          f"{index.ngram}, window {index.window}; loaded and first lookup in {load_ms:.0f} ms")
    print("| split | lines | suggestions | found | median µs | p95 µs |")
    print("|---|---|---|---|---|---|")
    rng = random.Random(args.seed)
    for split in ("train", "valid"):
        texts = [r["text"] for r in read_split(args.corpus, split)]
        texts = rng.sample(texts, min(args.files, len(texts)))
        for lines in args.sizes:
            found, times = 0, []
            for text in cuts(texts, lines, args.count, args.seed + lines):
                t = time.perf_counter()
                found += index.match(text) is not None
                times.append((time.perf_counter() - t) * 1e6)
            times.sort()
            print(f"| {split} | {lines} | {len(times)} | {found / max(1, len(times)):.1%} | "
                  f"{statistics.median(times):.0f} | {times[int(0.95 * (len(times) - 1))]:.0f} |")


if __name__ == "__main__":
    main()
