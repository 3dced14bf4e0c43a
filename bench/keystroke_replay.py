"""Replay typing a file, one character per keystroke, through the server's completion path; two engines side by side.

A region in the middle of the file's longest function is cut out, then typed back character by character. Every
keystroke asks `Completer.complete` (the LSP handlers' path: context, SPM prompt, engine, post-processing) for a
suggestion from each of two engines that differ in one setting (`--compare`): prefix reuse off vs on (the default),
prompt-lookup drafts off vs on, or a Python (eager) decode step vs a compiled one. The two run interleaved on one
shared model, so machine load hits both alike. Prints a markdown table: latency percentiles over the keystrokes that
reached the model, mean prompt/reused/generated tokens and engine time per call, and generated tokens per second of
engine time.

    python bench/keystroke_replay.py --model model/default --file server/completion.py --chars 300
    python bench/keystroke_replay.py --compare lookup
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import itertools
import platform
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from lsprotocol import types
from pygls.workspace.position_codec import PositionCodec

from midline.model import DEFAULT_MODEL_DIR
from midline.model.engine import CPU_LOOKUP, Engine, Generation
from midline.server.completion import Completer
from midline.server.config import Config, ContextConfig
from midline.server.documents import Document

ROOT = Path(__file__).resolve().parents[1]
COMPARISONS = ("reuse", "lookup", "compile")


def sides(compare: str, lookup: int | None) -> list[tuple[str, dict]]:
    """The two sides of a comparison, as Engine settings: reuse on and `lookup` drafts (None: the engine's own) but for
    what is compared. The compile comparison's sides differ only in that the second compiles its steps."""
    base = {"reuse_prefix": True, "lookup": lookup}
    return {
        "reuse": [("reuse off", {**base, "reuse_prefix": False}), ("reuse on", base)],
        "lookup": [("lookup off", {**base, "lookup": 0}), ("lookup on", {**base, "lookup": lookup or CPU_LOOKUP})],
        "compile": [("eager steps", base), ("compiled steps", base)],
    }[compare]


@dataclass
class Run:
    """One side of the comparison: its completer and what each model-calling keystroke cost."""

    name: str
    completer: Completer
    latencies_ms: list[float] = field(default_factory=list)
    generations: list[Generation] = field(default_factory=list)
    suggestions: list[str | None] = field(default_factory=list)


def region(source: str, chars: int) -> tuple[int, int]:
    """At most `chars` characters from the middle of the longest function, whole lines (typing ends at a line end)."""
    functions = [n for n in ast.walk(ast.parse(source)) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    # of each line (1-based: starts[n - 1])
    starts = [0, *itertools.accumulate(len(line) + 1 for line in source.split("\n"))]
    if functions:
        f = max(functions, key=lambda n: n.end_lineno - n.lineno)
        lo, hi = starts[f.lineno], starts[f.end_lineno] - 1  # the body, after the def line
    else:
        lo, hi = 0, len(source)
    middle = (lo + hi) // 2
    start = source.rfind("\n", 0, max(lo, middle - chars // 2)) + 1
    end = source.rfind("\n", start + 1, min(start + chars, hi) + 1)  # the last line end within `chars`
    return start, end if end > start else min(start + chars, len(source))


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


async def replay(runs: list[Run], doc: Document, offset: int, typed: str) -> None:
    """Type `typed` at `offset`; after each character every run completes (alternating which goes first)."""
    codec = PositionCodec()
    for i, char in enumerate(typed):
        position = doc.position_at(offset, codec)
        change = types.TextDocumentContentChangePartial(range=types.Range(position, position), text=char)
        doc.apply_change(change, codec)
        doc.version += 1
        offset += 1
        for run in runs if i % 2 == 0 else runs[::-1]:
            started = time.perf_counter()
            completion = await run.completer.complete(doc, offset)
            elapsed_ms = (time.perf_counter() - started) * 1000
            if completion.generation is not None:  # the keystroke reached the model (not mid-word, not typed through)
                run.latencies_ms.append(elapsed_ms)
                run.generations.append(completion.generation)
                suggestion = completion.suggestion
                run.suggestions.append(suggestion.text if suggestion else None)


def while_compiling(engine: Engine, other: Engine, prompt: list[int]) -> str:
    """Compile `engine`'s steps in a background thread while `other` answers keystroke-sized requests (the prompt plus
    one token, 8 new tokens): what the compile costs, and how much it slows requests meanwhile."""

    def keystroke(i: int) -> float:
        started = time.perf_counter()
        other.generate(prompt + [5 + i % 50], max_new_tokens=8, ignore_eos=True)
        return (time.perf_counter() - started) * 1000

    other.generate(prompt, max_new_tokens=1)
    idle = [keystroke(i) for i in range(10)]
    began = time.perf_counter()
    thread, during = threading.Thread(target=engine.compile_steps), []
    thread.start()
    while thread.is_alive():
        during.append(keystroke(len(during)))
    if engine.decode_path != "static, compiled":
        raise SystemExit("compiling the decode steps failed")
    other.clear_cache()
    return (f"Compiling took {time.perf_counter() - began:.0f} s in the background. "
            f"Keystroke-sized requests meanwhile: "
            f"p50 {percentile(during, 50):.0f} ms, max {max(during):.0f} ms ({len(during)} requests); "
            f"idle: p50 {percentile(idle, 50):.0f} ms, max {max(idle):.0f} ms.")


def row(run: Run) -> dict[str, float]:
    g = run.generations
    return {
        "p50": percentile(run.latencies_ms, 50),
        "p95": percentile(run.latencies_ms, 95),
        "prompt": statistics.mean(x.prompt_tokens for x in g),
        "reused": statistics.mean(x.reused_tokens for x in g),
        "new": statistics.mean(len(x.token_ids) for x in g),
        "tok_s": sum(len(x.token_ids) for x in g) / sum(x.elapsed_s for x in g),
        "engine": statistics.mean(x.elapsed_s for x in g) * 1000,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="local model dir (default: %(default)s)")
    parser.add_argument("--file", type=Path, default=ROOT / "server" / "completion.py",
                        help="Python file to type (default: %(default)s)")
    parser.add_argument("--chars", type=int, default=300,
                        help="at most this many characters, whole lines where possible (default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="per suggestion (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the engine's CPU_THREADS)")
    parser.add_argument("--compare", choices=COMPARISONS, default="reuse",
                        help="what the two sides differ in: prefix reuse off / on; prompt-lookup drafts off / --lookup "
                             "(default: the CPU's); eager / compiled decode steps (default: %(default)s)")
    parser.add_argument("--lookup", type=int, default=None,
                        help="prompt-lookup draft tokens, both sides (default: the engine's own)")
    parser.add_argument("--budget", type=int, default=ContextConfig.budget,
                        help="prefix + suffix window in tokens (context.budget; the model's context may clamp it) "
                             "(default: %(default)s)")
    parser.add_argument("--path", choices=("auto", "static", "dynamic"), default="auto",
                        help="decode path: static KV cache, transformers' DynamicCache, or the engine's choice "
                             "(default: %(default)s)")
    args = parser.parse_args(argv)

    source = args.file.read_text(encoding="utf-8")
    start, end = region(source, args.chars)
    typed = source[start:end]
    doc = Document(args.file.resolve().as_uri(), "python", 0, source[:start] + source[end:])
    static = {"auto": None, "static": True, "dynamic": False}[args.path]
    base = Engine.load(args.model, device="cpu", threads=args.threads, static=static)
    config = Config(  # the keystroke path: one greedy answer
        debounce_ms=0, cache_size=0, max_new_tokens=args.max_new_tokens, context=ContextConfig(budget=args.budget),
        candidates=1,
    )
    executor = ThreadPoolExecutor(max_workers=1)  # as the server: one generation at a time
    runs = []
    for name, setting in sides(args.compare, args.lookup):
        engine = Engine(base.model, base.tokenizer, base.device, base.fim, static=base.static, **setting)
        if args.compare == "compile" and runs:
            compiling = while_compiling(engine, runs[0].completer.engine, base.tokenizer(doc.text)["input_ids"][-600:])
        runs.append(Run(name, Completer(engine, config, executor, root=str(args.file.resolve().parent))))

    warm = Document(doc.uri, "python", 0, doc.text)  # first calls pay one-off costs: not measured
    asyncio.run(replay([Run(r.name, r.completer) for r in runs], warm, start, typed[:8]))
    for r in runs:
        r.completer.engine.clear_cache()
        r.completer.forget(doc.uri)

    began = time.perf_counter()
    asyncio.run(replay(runs, doc, start, typed))
    wall = time.perf_counter() - began

    if not runs[0].generations:
        raise SystemExit("no keystroke reached the model (all mid-word?): try another --file or more --chars")
    off, on = (row(r) for r in runs)
    differ = sum(a.token_ids != b.token_ids for a, b in zip(runs[0].generations, runs[1].generations))
    differ += abs(len(runs[0].generations) - len(runs[1].generations))
    rel = args.file.resolve().relative_to(ROOT) if args.file.resolve().is_relative_to(ROOT) else args.file
    first, last = source.count(chr(10), 0, start) + 1, source.count(chr(10), 0, max(start, end - 1)) + 1
    lookups = " / ".join(str(r.completer.engine.lookup) for r in runs)
    print(f"typed {len(typed)} characters of {rel} (lines {first}-{last}), "
          f"{len(runs[0].latencies_ms)} keystrokes reached the model; model {args.model.name}, "
          f"max {args.max_new_tokens} new tokens, {'static' if base.static else 'dynamic'} decode path, "
          f"lookup {lookups}")
    print(f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads, torch {torch.__version__}; "
          f"wall {wall:.0f} s; generations identical on both sides: "
          f"{'yes' if not differ else f'NO ({differ} differ)'}\n")
    print(f"| {args.compare} | p50 ms/keystroke | p95 ms/keystroke | prompt tokens | reused tokens | new tokens "
          "| mean engine ms | tokens/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for run, r in zip(runs, (off, on)):
        print(f"| {run.name} | {r['p50']:.1f} | {r['p95']:.1f} | {r['prompt']:.0f} | {r['reused']:.0f} "
              f"| {r['new']:.1f} | {r['engine']:.1f} | {r['tok_s']:.0f} |")
    print(f"| ratio | {off['p50'] / on['p50']:.2f}x | {off['p95'] / on['p95']:.2f}x | | | "
          f"| {off['engine'] / on['engine']:.2f}x | {on['tok_s'] / off['tok_s']:.2f}x |")
    if args.compare == "compile":
        print(f"\n{compiling}")


if __name__ == "__main__":
    main()
