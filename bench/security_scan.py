"""How long the security scan of a suggestion takes (`security.hides`, as the completer calls it).

Suggestions are cut from real code (this repository's Python files by default): at a seeded random line of a
function body, the cursor after the line's indentation, the suggestion the next 1, 5 or 30 lines, the context the
4,000 characters before the cursor (about the prompt's prefix window) and the rest of the line after. Each one is
scanned once after a warm-up; the first scan of a process also imports bandit and loads its tests, timed apart.
Times are wall-clock and, for a shared machine, the scanning thread's CPU time (what it costs without waiting).
Also printed: how many suggestions parse as a block (else they are scanned line by line) and how many real-code
suggestions the policy would hide (false alarms, unless the code is insecure).

    python bench/security_scan.py                  # server/ model/ training/, 200 suggestions a size
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

from midline.server import security

ROOT = Path(__file__).resolve().parents[1]


def suggestions(files: list[Path], lines: int, count: int, seed: int) -> list[tuple[str, str, str]]:
    """(context, suggestion, after) cut from `files`: `count` cursors at indented lines with `lines` more below."""
    rng = random.Random(seed)
    texts = [path.read_text(encoding="utf-8") for path in files]
    out = []
    while len(out) < count:
        text = rng.choice(texts)
        starts = [0] + [i + 1 for i, char in enumerate(text) if char == "\n"]
        row = rng.randrange(len(starts))
        line_end = text.find("\n", starts[row])
        line = text[starts[row] : line_end]
        if not line.startswith("    ") or not line.strip() or row + lines >= len(starts):
            continue
        cursor = starts[row] + len(line) - len(line.lstrip())
        end = starts[row + lines] - 1  # the end of the suggestion's last line
        out.append((text[max(0, cursor - 4000) : cursor], text[cursor:end], text[end : end + 1]))
    return out


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", default=["server", "model", "training"])
    parser.add_argument("--count", type=int, default=200, help="suggestions of each size")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 5, 30], help="suggestion lengths in lines")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    files = sorted(path for name in args.paths for path in (ROOT / name).rglob("*.py"))

    started = time.perf_counter()
    security.hides("import os\nos.system(cmd)", "python")
    print(f"first scan (imports bandit, loads its tests): {(time.perf_counter() - started) * 1000:.0f} ms")
    print(f"{len(files)} files; {args.count} suggestions a size\n")
    print("| lines | median ms | p95 ms | max ms | CPU median ms | CPU p95 ms | scanned as a block | hidden |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        cases = suggestions(files, size, args.count, args.seed + size)
        times, cpu, hidden = [], [], []
        for context, code, after in cases:
            begun, begun_cpu = time.perf_counter(), time.thread_time()
            finding = security.hides(code, "python", context=context, after=after)
            times.append((time.perf_counter() - begun) * 1000)
            cpu.append((time.thread_time() - begun_cpu) * 1000)
            if finding is not None:
                hidden.append(finding)
        start = [context[context.rfind("\n") + 1 :] + code + after.split("\n", 1)[0] for context, code, after in cases]
        blocks = sum(security._parses("\n".join(security._as_block(lines.split("\n"))[0])) for lines in start)
        print(
            f"| {size} | {statistics.median(times):.2f} | {p95(times):.2f} | {max(times):.2f} "
            f"| {statistics.median(cpu):.2f} | {p95(cpu):.2f} | {blocks}/{len(cases)} | {len(hidden)} |"
        )
        for finding in hidden:
            print(f"    hidden: {finding} -- {finding.source.strip()[:80]}")


if __name__ == "__main__":
    main()
