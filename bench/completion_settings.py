"""Serving settings side by side on held-out infilling tasks: the context window and the line-confidence cut.

Every task goes through `Completer.complete` (the server's path, as in `midline-train evaluate`) once per variant.
Generations are memoised by prompt, so variants that differ only after the model (the confidence cuts) reuse the
same generations, and every row of the table comes from the same run. Prints a markdown table per task kind:
exact match, edit similarity, suggestions shown, characters shown, and characters right before the first wrong one
(what a user accepting word by word keeps).

    midline-train evaluate --corpus WORK/corpus --tasks WORK/tasks.jsonl ...   # writes the task file once
    python bench/completion_settings.py --tasks WORK/tasks.jsonl --device cpu
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

from midline.model import DEFAULT_MODEL_DIR
from midline.model.engine import Engine, Generation
from midline.server.config import Config, ContextConfig
from midline.training.evaluate import Task, complete_tasks, eval_config, load_tasks, normalize, score, target

OFF = -1e9  # a floor nothing is under


class MemoEngine:
    """An `Engine` whose generations are remembered by prompt (and length): a repeated prompt costs nothing."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._memo: dict[tuple, Generation] = {}
        self.calls = 0

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    def generate(self, prompt_ids: list[int], **kwargs) -> Generation:
        key = (tuple(prompt_ids), kwargs.get("max_new_tokens"))
        if key not in self._memo:
            self.calls += 1
            self._memo[key] = self._engine.generate(prompt_ids, **kwargs)
        return self._memo[key]


def variants(base: Config, window: int | None, floors: list[float]) -> dict[str, Config]:
    """The settings to compare: the shipped defaults, an older window, and line floors."""
    out: dict[str, Config] = {}
    if window:
        out[f"window {window} tokens"] = dataclasses.replace(
            base, min_line_logprob=OFF, context=dataclasses.replace(base.context, budget=window))
    out["default window, no line cut"] = dataclasses.replace(base, min_line_logprob=OFF)
    for floor in floors:
        out[f"default window, line floor {floor:g}"] = dataclasses.replace(base, min_line_logprob=floor)
    out["shipped settings"] = base
    return out


def common_prefix(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def figures(tasks: list[Task], outcomes) -> dict:
    n = len(tasks)
    exact = similarity = shown = chars = right = 0.0
    for task, outcome in zip(tasks, outcomes):
        hit, sim = score(task, outcome.suggestion)
        exact += hit
        similarity += sim
        if outcome.suggestion is not None:
            got = normalize(outcome.suggestion.text)
            shown += 1
            chars += len(got)
            right += common_prefix(got, normalize(target(task, outcome.suggestion)))
    return {"n": n, "exact": exact / n, "similarity": similarity / n, "shown": shown / n,
            "chars": chars / n, "right": right / n, "wrong": (chars - right) / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--tasks", type=Path, required=True, help="a task file written by `midline-train evaluate`")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--kinds", nargs="+", default=["single_line", "multi_line", "random_span"])
    parser.add_argument("--max-new-tokens", type=int, default=128, help="as in `midline-train evaluate` (default: 128)")
    parser.add_argument("--window", type=int, default=384, help="an older prefix+suffix budget to compare; 0: none")
    parser.add_argument("--line-floors", type=float, nargs="*", default=[-3.0, -2.5, -2.0, -1.5, -1.0])
    args = parser.parse_args()

    tasks = [task for task in load_tasks(args.tasks) if task.kind in args.kinds]
    engine = MemoEngine(Engine.load(args.model, device=args.device))
    base = dataclasses.replace(eval_config(args.max_new_tokens, 60_000), context=ContextConfig())
    print(f"model {args.model}, {len(tasks)} tasks from {args.tasks}, {engine.device}, {os.cpu_count()} cores; "
          f"shipped floors: mean {engine.min_mean_logprob}, line {engine.min_line_logprob}\n")
    results: dict[str, dict[str, dict]] = {}
    for name, config in variants(base, args.window, args.line_floors).items():
        started, calls = time.monotonic(), engine.calls
        outcomes = complete_tasks(engine, tasks, config)  # type: ignore[arg-type]
        results[name] = {kind: figures(*zip(*[(t, o) for t, o in zip(tasks, outcomes) if t.kind == kind]))
                         for kind in args.kinds if any(t.kind == kind for t in tasks)}
        results[name]["all"] = figures(tasks, outcomes)
        print(f"{name}: {engine.calls - calls} generations, {time.monotonic() - started:.0f} s", flush=True)
    for kind in [*results[next(iter(results))]]:
        print(f"\n{kind} (n={results[next(iter(results))][kind]['n']})\n")
        print("| settings | exact match | edit similarity | shown | chars shown | right chars | wrong chars |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, by_kind in results.items():
            f = by_kind[kind]
            print(f"| {name} | {f['exact']:.1%} | {f['similarity']:.3f} | {f['shown']:.1%} | {f['chars']:.1f} | "
                  f"{f['right']:.1f} | {f['wrong']:.1f} |")


if __name__ == "__main__":
    main()
