"""Several candidates on the position evaluation: what ranking buys, and what the batched pass costs.

Each position task of a `midline-train positions` tasks file (its typing-replay tasks aside) is completed as an
explicit request through `Completer.complete`, the evaluation's settings (`evaluate.eval_config`: greedy, no cache
or debounce, the model's confidence floors), twice in turn: with `candidates` 1 (the greedy answer alone) and N
(the greedy answer and N-1 samples in one batched pass, ranked by mean log-probability, filtered and merged as the
server does). The engine's KV caches are cleared before each request, so neither reuses the other's prompt.
Scored with the position evaluation's `score_position`, per kind and over all tasks:

- greedy: the greedy answer's first line is right (`exact_first_line`);
- top1: the first of the N candidates' is (what the editor shows first);
- any: one of the suggestions is (what cycling through them can reach);
- shown (a suggestion shown at all), suggestions per answer, harmful (shown first, first line wrong);
- ms per request, N=1 and N, mean and p50.

    python bench/candidates.py --model model/default --tasks WORK/positions.tasks.jsonl --n 3 --out candidates.json
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from midline.model.engine import Engine
from midline.server.completion import Completer, Completion
from midline.server.config import Config
from midline.server.documents import Document
from midline.training.evaluate import Task, eval_config, load_tasks
from midline.training.positions import KINDS, score_position


async def complete(
    engine: Engine, task: Task, config: Config, executor: ThreadPoolExecutor
) -> tuple[Completion, float]:
    """One explicit request for `task` through a fresh Completer, from a cold KV cache; its latency in ms."""
    await asyncio.get_running_loop().run_in_executor(executor, engine.clear_cache)
    root = Path("/", task.repo or "workspace")
    completer = Completer(engine, config, executor, root=str(root))
    doc = Document((root / task.path).as_uri(), "python", 1, task.text_with_hole)
    started = time.perf_counter()
    completion = await completer.complete(doc, task.offset)
    return completion, (time.perf_counter() - started) * 1000


def row(task: Task, greedy: tuple[Completion, float], ranked: tuple[Completion, float]) -> dict:
    """The figures of one task: greedy alone, and the N candidates' first and any."""
    (one, one_ms), (many, many_ms) = greedy, ranked
    first = score_position(task, many.suggestion)
    return {
        "kind": task.kind,
        "greedy": score_position(task, one.suggestion)["exact_first_line"],
        "top1": first["exact_first_line"],
        "any": any(score_position(task, s)["exact_first_line"] for s in many.suggestions or [None]),
        "shown_greedy": one.suggestion is not None,
        "shown": many.suggestion is not None,
        "suggestions": len(many.suggestions),
        "harmful_greedy": score_position(task, one.suggestion)["harmful"],
        "harmful": first["harmful"],
        "ms_1": one_ms,
        "ms_n": many_ms,
    }


def summarize(rows: list[dict]) -> dict:
    n = len(rows)
    share = lambda key: sum(bool(r[key]) for r in rows) / n  # noqa: E731
    return {
        "n": n,
        **{key: share(key) for key in ("greedy", "top1", "any", "shown_greedy", "shown", "harmful_greedy", "harmful")},
        "suggestions_per_answer": sum(r["suggestions"] for r in rows) / max(1, sum(r["shown"] for r in rows)),
        **{f"{key}_mean": statistics.fmean(r[key] for r in rows) for key in ("ms_1", "ms_n")},
        **{f"{key}_p50": statistics.median(r[key] for r in rows) for key in ("ms_1", "ms_n")},
    }


async def run_all(engine: Engine, tasks: list[Task], configs: tuple[Config, Config]) -> list[dict]:
    rows = []
    with ThreadPoolExecutor(max_workers=1) as executor:
        await complete(engine, tasks[0], configs[1], executor)  # one-off costs (the batch's cache) off the figures
        for i, task in enumerate(tasks):
            order = configs if i % 2 == 0 else configs[::-1]  # (alternating: the machine's load weighs on both alike)
            done = [await complete(engine, task, config, executor) for config in order]
            rows.append(row(task, *(done if i % 2 == 0 else done[::-1])))
            print(f"\r{i + 1}/{len(tasks)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("model/default"))
    parser.add_argument("--tasks", type=Path, required=True, help="a `midline-train positions` tasks file")
    parser.add_argument("--n", type=int, default=Config().candidates, help="candidates per explicit request")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    args = parser.parse_args()

    engine = Engine.load(args.model, device=args.device)
    engine.warmup()
    tasks = [t for t in load_tasks(args.tasks) if t.kind in KINDS]
    base = eval_config(args.max_new_tokens, 60_000)
    configs = (dataclasses.replace(base, candidates=1), dataclasses.replace(base, candidates=args.n))
    rows = asyncio.run(run_all(engine, tasks, configs))
    kinds = [k for k in KINDS if any(r["kind"] == k for r in rows)]
    report = {
        "model": str(args.model.resolve()), "device": str(engine.device), "n": args.n, "tasks": str(args.tasks),
        "overall": summarize(rows), **{k: summarize([r for r in rows if r["kind"] == k]) for k in kinds},
        "per_task": rows,
    }
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    print(f"{'kind':<20} {'n':>4} {'greedy':>7} {'top1':>7} {'any':>7} {'shown':>13} {'harmful':>13}", end="")
    print(f" {'ms N=1':>8} {'ms N':>8}")
    for kind in ["overall", *kinds]:
        m = report[kind]
        print(f"{kind:<20} {m['n']:>4} {m['greedy']:>7.3f} {m['top1']:>7.3f} {m['any']:>7.3f} "
              f"{m['shown_greedy']:>6.3f} {m['shown']:>6.3f} {m['harmful_greedy']:>6.3f} {m['harmful']:>6.3f} "
              f"{m['ms_1_mean']:>8.1f} {m['ms_n_mean']:>8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
