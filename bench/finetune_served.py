"""A fine-tune's adapter, served: the same held-out editor positions completed by the base model and by the base
model with `midline-train finetune`'s adapter (issue 17).

Both engines load as the server loads them (`Engine.load(model)` and `Engine.load(model, adapter=OUT/adapter)`,
which merges the adapter into the weights); the tasks are `midline-train positions`' kinds drawn from the
fine-tune's held-out folders (OUT/corpus/valid.jsonl), each completed through `Completer.complete` as `positions`
does (greedy, debounce and cache off, the model's confidence floors on unless `--no-floors`). Prints the figures
per kind, side by side, and every task where the two differ (cursor, expected text, base and adapter suggestions);
`--out` keeps it all.

    flock /tmp/cpu.lock python bench/finetune_served.py --model model/default --finetune OUT --per-kind 10 \
        --out served.json     # about 2 minutes on 2 cores for the default model
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

from midline.model.engine import Engine
from midline.training.evaluate import complete_tasks, eval_config
from midline.training.positions import KINDS, build_position_tasks, score_position, summarize_positions


def rows(engine: Engine, tasks: list, max_new_tokens: int, floors: bool) -> list[dict]:
    """Each task's figures and suggestion under `engine`."""
    config = eval_config(max_new_tokens, 60_000)
    if not floors:
        config = dataclasses.replace(config, min_mean_logprob=-math.inf)
    outcomes = complete_tasks(engine, tasks, config)
    return [{"kind": t.kind, "path": t.path, "offset": t.offset, **score_position(t, o.suggestion),
             "latency_ms": o.latency_ms, "tokens": o.tokens, "finish_reason": o.finish_reason,
             "suggestion": o.suggestion.text if o.suggestion else None,
             "expected": t.middle} for t, o in zip(tasks, outcomes)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="the base model the fine-tune started from")
    p.add_argument("--finetune", type=Path, required=True, help="the fine-tune's OUT (adapter/ and corpus/)")
    p.add_argument("--per-kind", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-floors", action="store_true", help="show every suggestion, however unsure")
    p.add_argument("--out", type=Path)
    args = p.parse_args()

    tasks = build_position_tasks(args.finetune / "corpus" / "valid.jsonl", per_kind=args.per_kind, functions=0,
                                 seed=args.seed)
    report: dict = {"tasks": len(tasks)}
    for name, adapter in (("base", None), ("adapter", args.finetune / "adapter")):
        start = time.monotonic()
        engine = Engine.load(args.model, device=args.device, adapter=adapter)
        report[name] = rows(engine, tasks, args.max_new_tokens, not args.no_floors)
        report[f"{name}_s"] = round(time.monotonic() - start, 1)
    kinds = [k for k in KINDS if any(t.kind == k for t in tasks)]
    report["metrics"] = {name: {kind: summarize_positions([r for r in report[name] if kind in ("overall", r["kind"])])
                                for kind in ["overall", *kinds]} for name in ("base", "adapter")}
    print(f"{len(tasks)} held-out positions; exact first line, base -> adapter (harmful: shown and wrong)")
    for kind in ["overall", *kinds]:
        b, a = report["metrics"]["base"][kind], report["metrics"]["adapter"][kind]
        print(f"  {kind:<20} n={b['n']:>3}  first {b['exact_first_line']:.3f} -> {a['exact_first_line']:.3f}  "
              f"harmful {b['harmful_rate']:.3f} -> {a['harmful_rate']:.3f}  "
              f"edit sim {b['edit_similarity']:.3f} -> {a['edit_similarity']:.3f}")
    for b, a in zip(report["base"], report["adapter"]):
        if b["suggestion"] != a["suggestion"]:
            print(f"\n{b['kind']} {b['path']}@{b['offset']}: expected {b['expected']!r}\n"
                  f"  base    {'OK ' if b['exact_first_line'] else '   '}{b['suggestion']!r}\n"
                  f"  adapter {'OK ' if a['exact_first_line'] else '   '}{a['suggestion']!r}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
