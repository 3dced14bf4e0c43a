r"""Confidence floors by cursor position, calibrated on a `midline-train positions --no-floors` report.

The server hides a suggestion whose shown tokens' mean log-probability is under the model's floor for the
cursor's position (`CompletionContext.position`: "mid_line", "line_end", "new_line"): the tokens that write what
post-processing kept (`completion.shown_logprob`), not those it cut (at a line end the model writes on past the
shown line, e.g. the next function). This reads a report made with every suggestion shown (its rows'
`shown_logprob`; a report from before it existed has only `mean_logprob`, of all generated tokens, and is read by
that), maps each task to the position the server saw, and for each position prints what a floor keeps and hides:
suggestions whose first line is right, and those whose first line is wrong. The floor chosen for a position is the
highest, up to `--max-floor`, that hides at most `--keep-loss` of the right suggestions; with a few right
suggestions a position (tens of tasks each), a higher floor is noise. Only the `--calibrate` positions get one
(default: all three); the others keep `--default`. The typing replay (the positions report's other half) is the
check of a chosen floor: run the evaluation again with it. The last line is the `min_mean_logprob` object for the
model's midline.json.

    midline-train positions --model model/default --tasks WORK/positions.tasks.jsonl --no-floors \
        --out WORK/no-floors.json
    python bench/position_floors.py WORK/no-floors.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

FLOORS = [round(-3.0 + 0.1 * i, 1) for i in range(31)]  # -3.0 .. 0.0 nats


def position(row: dict) -> str:
    """The position the server saw for a task row (see `CompletionContext.position`)."""
    if row["hole"] != "multi_line":
        return "mid_line"
    return "line_end" if row["cursor"].split("█", 1)[0].strip() else "new_line"


def confidence(row: dict) -> float | None:
    """What the server's floor judges for a task row: the shown tokens' mean log-probability (None: not known)."""
    return row["shown_logprob"] if "shown_logprob" in row else row["mean_logprob"]


def split(rows: list[dict], floor: float | None) -> tuple[int, int, int, int]:
    """(right kept, wrong kept, right hidden, wrong hidden) of the shown suggestions under `floor`."""
    counts = [0, 0, 0, 0]
    for row in rows:
        mean = confidence(row)
        hidden = floor is not None and mean is not None and mean < floor
        counts[2 * hidden + (not row["exact_first_line"])] += 1
    return counts[0], counts[1], counts[2], counts[3]


def choose(rows: list[dict], keep_loss: float, max_floor: float) -> float | None:
    """The highest floor up to `max_floor` that hides at most `keep_loss` of the right suggestions (None: none
    needed)."""
    right = split(rows, None)[0]
    fitting = [floor for floor in FLOORS if floor <= max_floor and split(rows, floor)[2] <= keep_loss * right]
    best = max(fitting, default=None)
    return None if best is None or split(rows, best)[3] == 0 else best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="a `midline-train positions --no-floors --out` report")
    parser.add_argument("--keep-loss", type=float, default=0.1,
                        help="share of right suggestions a floor may hide (default: %(default)s)")
    parser.add_argument("--max-floor", type=float, default=-0.6, help="the highest floor chosen (default: %(default)s)")
    parser.add_argument("--calibrate", nargs="+", default=["mid_line", "line_end", "new_line"],
                        help="positions to calibrate (default: %(default)s)")
    parser.add_argument("--default", type=float, default=-1.0,
                        help="the floor of the other positions (default: %(default)s)")
    args = parser.parse_args(argv)
    report = json.loads(args.report.read_text())
    shown = [r for r in report["per_task"] if not r["empty"]]
    chosen = {name: args.default for name in ("mid_line", "line_end", "new_line") if name not in args.calibrate}
    for name in ("mid_line", "line_end", "new_line"):
        rows = [r for r in shown if position(r) == name]
        kinds = sorted({r["kind"] for r in rows})
        print(f"\n{name}: {len(rows)} suggestions shown without a floor ({', '.join(kinds)})\n")
        print("| floor | right kept | wrong kept | right hidden | wrong hidden |")
        print("|---:|---:|---:|---:|---:|")
        for floor in [None, -2.0, -1.5, -1.2, -1.0, -0.8, -0.6, -0.5, -0.4, -0.3]:
            print(f"| {'none' if floor is None else floor} | " + " | ".join(map(str, split(rows, floor))) + " |")
        if name in args.calibrate:
            if (floor := choose(rows, args.keep_loss, args.max_floor)) is not None:
                chosen[name] = floor
            print(f"\nchosen: {floor}")
    print("\nmin_mean_logprob:", json.dumps(chosen))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
