"""midline's CPU engines (PyTorch, and llama.cpp in process as the server runs it: model/llamacpp.py) vs llama.cpp
driven by llama-cpp-python's own generate loop, on midline's default model, side by side.

The default model is exported to GGUF by `midline-train export --gguf` (f32, bf16, q8_0) into a temporary folder;
every engine gets the same prompt token ids (a FIM prompt at a `return` of tests/data/example.py, in midline's
format), greedy, exactly `--tokens` new tokens (end tokens ignored), 2 threads, flash attention off. Rounds are
interleaved (each round runs every engine once) and repeated `--repeats` times; the table shows medians.

Columns: cold first token (empty cache: the whole prompt, then one token), the same with `--tokens` tokens, decode
ms per token ((tokens time - first token time) / (tokens - 1)), and a keystroke (the prompt with one more
character typed, the previous prompt's cache reused: `--tokens` tokens). Then how many of the greedy tokens each
row shares with midline's PyTorch engine before the first difference. midline's engines run with prompt-lookup
drafts, as served (greedy tokens are the same with or without them); llama-cpp-python's loop has none.

    python bench/cpu_engines.py --out bench/cpu_engines.md     # about 2 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

from midline.model import DEFAULT_MODEL_DIR
from midline.model.engine import Engine
from midline.model.fim import FimPrompt
from midline.model.llamacpp import LlamaCppEngine
from midline.model.gguf_export import export_gguf

EXAMPLE = Path(__file__).resolve().parent.parent / "tests" / "data" / "example.py"
THREADS = 2


def prompts(engine: Engine) -> tuple[list[int], list[int]]:
    """The FIM prompt's ids at the cursor, and after one more character typed there (the keystroke)."""
    text = EXAMPLE.read_text()
    cut = text.index("return", text.index("def mean")) + len("return")
    first = FimPrompt(prefix=text[:cut], suffix=text[cut:], path="stats/example.py")
    typed = FimPrompt(prefix=text[:cut] + " ", suffix=text[cut:], path="stats/example.py")
    return engine.encode(first), engine.encode(typed)


Run = Callable[[list[int], int, bool], tuple[float, float, list[int]]]  # (ids, tokens, cold) -> first s, total s, ids


def engine_runner(engine: Engine | LlamaCppEngine) -> Run:
    """One of midline's engines, as the server runs it (drafts on): first token timed by the stop callback."""
    def run(ids: list[int], n: int, cold: bool) -> tuple[float, float, list[int]]:
        if cold:
            engine.clear_cache()
        first: list[float] = []
        start = time.perf_counter()

        def mark(_text: str) -> bool:
            if not first:
                first.append(time.perf_counter() - start)
            return False

        out = engine.generate(ids, max_new_tokens=n, ignore_eos=True, should_stop=mark)
        return first[0], time.perf_counter() - start, out.token_ids
    return run


def llama_runner(path: Path) -> Run:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=1024, n_threads=THREADS, n_threads_batch=THREADS, n_batch=512,
                          flash_attn=False, verbose=False)

    def run(ids: list[int], n: int, cold: bool) -> tuple[float, float, list[int]]:
        if cold:
            llm.reset()  # forget the evaluated tokens (generate reuses their longest common prefix otherwise)
        out: list[int] = []
        first = 0.0
        start = time.perf_counter()
        for token in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
            if not out:
                first = time.perf_counter() - start
            out.append(token)
            if len(out) == n:
                break
        return first, time.perf_counter() - start, out
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--types", default="f32,bf16,q8_0", help="GGUF weight types (comma-separated)")
    parser.add_argument("--out", type=Path, help="write the report (markdown) here too")
    parser.add_argument("--no-engine", action="store_true", help="leave out midline's llama.cpp engine")
    args = parser.parse_args(argv)

    load = os.getloadavg()[0]
    engine = Engine.load(DEFAULT_MODEL_DIR, device="cpu", threads=THREADS)
    ids, typed = prompts(engine)
    runners: dict[str, Run] = {"midline PyTorch (fp32, drafts on)": engine_runner(engine)}
    if not args.no_engine:
        chosen = LlamaCppEngine.load(DEFAULT_MODEL_DIR, threads=THREADS)
        runners[f"midline llama.cpp engine ({chosen.decode_path}, drafts on)"] = engine_runner(chosen)
    with tempfile.TemporaryDirectory() as folder:
        for kind in args.types.split(","):
            path = export_gguf(DEFAULT_MODEL_DIR, Path(folder) / f"midline-{kind}.gguf", kind)
            runners[f"llama.cpp {kind}"] = llama_runner(path)
        times: dict[str, dict[str, list[float]]] = {name: {} for name in runners}
        tokens: dict[str, list[int]] = {}
        for _ in range(args.repeats):
            for name, run in runners.items():  # interleaved: one of each per round
                cold_first, _, _ = run(ids, 1, True)
                first, total, out = run(ids, args.tokens, True)
                _, keystroke, _ = run(typed, args.tokens, False)
                row = times[name]
                for key, value in (("cold", cold_first), ("total", total), ("keystroke", keystroke),
                                   ("decode", (total - first) / (args.tokens - 1))):
                    row.setdefault(key, []).append(value * 1000)
                tokens[name] = out
    reference = next(iter(tokens.values()))
    lines = [
        f"Prompt {len(ids)} tokens, {args.tokens} new tokens, greedy, {THREADS} threads, medians of {args.repeats} "
        f"interleaved rounds; load average {load:.1f} before, {os.getloadavg()[0]:.1f} after; "
        f"{platform.processor() or platform.machine()}",
        "",
        "| engine | cold first token ms | cold + tokens ms | decode ms/token | keystroke ms | same greedy tokens |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in times.items():
        same = next((i for i, (a, b) in enumerate(zip(tokens[name], reference)) if a != b), len(reference))
        med = {k: statistics.median(v) for k, v in row.items()}
        lines.append(f"| {name} | {med['cold']:.0f} | {med['total']:.0f} | {med['decode']:.1f} | "
                     f"{med['keystroke']:.0f} | {same}/{len(reference)} |")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
