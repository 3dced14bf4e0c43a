"""Rank stage: learn from the outcome record which suggestions the user accepts.

    midline-train rank --log outcomes.jsonl --out work/rank            # -> work/rank/ranker.json, report.json
    midline-train rank --log outcomes.jsonl --out work/rank --dpo --model DIR   # and a preference fine-tune

The record (server/outcomes.py, `outcomes.record`) has one line per shown answer: its suggestions, each with the
features the server computed for it (server/ranker.py: mean and lowest token log-probability, length, lines, the
share post-processing kept, syntax validity, a partial repeat of the suffix, its rank in the model's order; and the
request's position kind, hole and language), and the outcome: the suggestion accepted, if any. Every suggestion is
one example, labelled 1 if it was the one accepted.

Answers are split into training and held-out ones by a seeded hash of their id (`--held-out`, a fifth). A logistic
regression (numpy: Newton's method with an L2 penalty, on features standardised with the training split's mean and
spread) predicts acceptance. Its floor, per position kind where that kind has `MIN_SUPPORT` training examples and
overall ("*"), is the lowest predicted acceptance at which the suggestions shown at or above it are accepted at
least `--precision` of the time in the training split (where none reaches it: the one with the best precision over
`MIN_SUPPORT` suggestions at least). The held-out figures: the ranker's AUC, the AUC of the mean log-probability
alone (the model's own ranking), and at the floor the share of suggestions shown, their precision and the share of
accepted ones kept. `ranker.json` is what the server's `ranker` setting reads.

With `--dpo`, the accepted suggestions are also preferred over dismissed ones in a LoRA fine-tune of `--model`
(training/prefer.py); that needs the prompts, which the record keeps only with `outcomes.prompts`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from midline.server import ranker as R
from midline.training.stage import write_json

MIN_SUPPORT = 10  # training examples a position kind needs for a floor of its own (and a floor's least support)


@dataclass
class Examples:
    """One row per shown suggestion: its vector, label, record id and position kind; and the languages seen."""

    x: np.ndarray
    y: np.ndarray
    ids: list[str]
    positions: list[str]
    languages: list[str]


def read_log(path: Path) -> tuple[list[dict], int]:
    """The records of an outcome log that carry features for each suggestion, and how many lines were skipped
    (unreadable JSON, or no features: a record written before features were kept)."""
    records, skipped = [], 0
    with open(path, encoding="utf-8", errors="surrogatepass") as lines:
        for line in lines:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                skipped += 1
                continue
            shown = record.get("suggestions") or []
            if isinstance(record, dict) and shown and len(record.get("features") or []) == len(shown):
                records.append(record)
            else:
                skipped += 1
    return records, skipped


def accepted_index(record: dict) -> int | None:
    """The index of the suggestion the record's answer had accepted, or None."""
    index = record.get("accepted")
    return index if record.get("outcome") == "accepted" and isinstance(index, int) else None


def examples(records: list[dict], languages: list[str] | None = None) -> Examples:
    """The records' suggestions as vectors (`R.vector`, over `languages`: default, those of the records)."""
    if languages is None:
        languages = sorted({r.get("language", "") for r in records})
    rows, labels, ids, positions = [], [], [], []
    for record in records:
        taken = accepted_index(record)
        for i, shown in enumerate(record["features"]):
            rows.append(R.vector(shown, record.get("position", ""), record.get("hole", ""), record.get("language", ""),
                                 languages))
            labels.append(float(i == taken))
            ids.append(str(record.get("id", "")))
            positions.append(record.get("position", ""))
    width = len(R.names(languages))
    return Examples(np.array(rows, dtype=np.float64).reshape(-1, width), np.array(labels), ids, positions, languages)


def held_out(record_id: str, share: float, seed: int) -> bool:
    """Whether the answer `record_id` is in the held-out split (a seeded hash: the same for every run)."""
    digest = hashlib.sha256(f"{seed}:{record_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each column's mean and spread (1 where it does not vary), missing values (nan) left out."""
    with np.errstate(all="ignore"):
        mean = np.nan_to_num(np.nanmean(x, axis=0), nan=0.0) if len(x) else np.zeros(x.shape[1])
        scale = np.nan_to_num(np.nanstd(x, axis=0), nan=0.0) if len(x) else np.ones(x.shape[1])
    return mean, np.where(scale > 1e-9, scale, 1.0)


def fit_logistic(z: np.ndarray, y: np.ndarray, l2: float = 1.0, iterations: int = 50) -> tuple[np.ndarray, float]:
    """Weights and bias of a logistic regression on standardised `z` (Newton's method; `l2` on the weights)."""
    n, d = z.shape
    a = np.hstack([z, np.ones((n, 1))])
    w = np.zeros(d + 1)
    penalty = np.full(d + 1, l2)
    penalty[-1] = 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(a @ w, -60, 60)))
        gradient = a.T @ (p - y) + penalty * w
        hessian = (a * (p * (1 - p))[:, None]).T @ a + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w[:-1], float(w[-1])


def auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """The area under the ROC curve (ties count a half); None without both labels."""
    positives, negatives = int(labels.sum()), int(len(labels) - labels.sum())
    if not positives or not negatives:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    start = 0
    while start < len(scores):  # average ranks over ties
        end = start
        while end + 1 < len(scores) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def floor_for(scores: np.ndarray, labels: np.ndarray, precision: float) -> float:
    """The lowest score at which the examples at or above it have at least `precision` accepted; where none has,
    the score with the best precision over `MIN_SUPPORT` examples or more (0.0: no examples)."""
    if not len(scores):
        return 0.0
    order = np.argsort(-scores, kind="mergesort")
    s, hits = scores[order], np.cumsum(labels[order])
    kept = np.arange(1, len(s) + 1)
    ends = [i for i in range(len(s)) if i + 1 == len(s) or s[i + 1] < s[i]]  # thresholds between distinct scores
    reaching = [i for i in ends if hits[i] / kept[i] >= precision]
    if reaching:
        return float(s[max(reaching)])
    supported = [i for i in ends if kept[i] >= MIN_SUPPORT] or ends
    return float(s[max(supported, key=lambda i: (hits[i] / kept[i], i))])


def at_floor(scores: np.ndarray, labels: np.ndarray, floors: np.ndarray) -> dict:
    """What a floor keeps: the share shown, their precision, and the share of accepted suggestions kept."""
    shown = scores >= floors
    accepted = int(labels.sum())
    return {"shown_share": float(shown.mean()) if len(shown) else None,
            "precision": float(labels[shown].mean()) if shown.any() else None,
            "accepted_kept": float(labels[shown].sum() / accepted) if accepted else None,
            "precision_without_floor": float(labels.mean()) if len(labels) else None}


def train_ranker(records: list[dict], *, share: float = 0.2, seed: int = 0, precision: float = 0.25,
                 l2: float = 1.0) -> tuple[R.Ranker, dict]:
    """The ranker fitted on the training split of `records`, and its report (held-out AUC and floor figures)."""
    data = examples(records)
    test = np.array([held_out(i, share, seed) for i in data.ids], dtype=bool)
    train = ~test
    if not train.any() or data.y[train].sum() == 0 or data.y[train].sum() == train.sum():
        raise ValueError(f"the log's training split has {int(train.sum())} suggestions, "
                         f"{int(data.y[train].sum())} of them accepted: a ranker needs accepted and other ones")
    mean, scale = standardise(data.x[train])
    z = np.where(np.isnan(data.x), mean, data.x)
    z = (z - mean) / scale
    weights, bias = fit_logistic(z[train], data.y[train], l2=l2)
    scores = 1.0 / (1.0 + np.exp(-np.clip(z @ weights + bias, -60, 60)))
    positions = np.array(data.positions)
    floor = {"*": floor_for(scores[train], data.y[train], precision)}
    for kind in R.POSITIONS:
        mask = train & (positions == kind)
        if mask.sum() >= MIN_SUPPORT and 0 < data.y[mask].sum():
            floor[kind] = floor_for(scores[mask], data.y[mask], precision)
    ranker = R.Ranker(tuple(data.languages), tuple(mean.tolist()), tuple(scale.tolist()), tuple(weights.tolist()),
                      bias, floor)
    floors = np.array([floor.get(kind, floor["*"]) for kind in positions])
    mean_logprob = np.nan_to_num(data.x[:, R.NUMERIC.index("mean_logprob")], nan=-1e9)
    report = {
        "records": len(records), "suggestions": len(data.y), "accepted": int(data.y.sum()),
        "split": {"held_out_share": share, "seed": seed, "train_suggestions": int(train.sum()),
                  "held_out_suggestions": int(test.sum()), "held_out_accepted": int(data.y[test].sum())},
        "held_out": {"auc": auc(scores[test], data.y[test]),
                     "auc_mean_logprob": auc(mean_logprob[test], data.y[test]),
                     "at_floor": at_floor(scores[test], data.y[test], floors[test])},
        "train": {"auc": auc(scores[train], data.y[train])},
        "precision_target": precision, "floor": floor,
        "weights": dict(zip(R.names(data.languages), (round(w, 4) for w in weights.tolist()))),
    }
    return ranker, report


def format_report(report: dict) -> str:
    h = report["held_out"]

    def show(value: float | None, digits: int = 3) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    f = h["at_floor"]
    return (f"{report['records']} answers, {report['suggestions']} suggestions, {report['accepted']} accepted; "
            f"held out: {report['split']['held_out_suggestions']} ({report['split']['held_out_accepted']} accepted)\n"
            f"held-out AUC {show(h['auc'])} (mean log-probability alone: {show(h['auc_mean_logprob'])})\n"
            f"floor {show(report['floor']['*'])} (precision target {report['precision_target']}): shows "
            f"{show(f['shown_share'])} of held-out suggestions, precision {show(f['precision'])} "
            f"(all: {show(f['precision_without_floor'])}), keeps {show(f['accepted_kept'])} of accepted ones")


# -- command line ---------------------------------------------------------------------------------


def add_parser(stages: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The `rank` subcommand."""
    p = stages.add_parser("rank", help="learn from the outcome record: a ranker of suggestions (the server's ranker "
                                       "setting), and with --dpo a preference fine-tune")
    p.add_argument("--log", type=Path, required=True, help="the outcome record (outcomes.jsonl)")
    p.add_argument("--out", type=Path, required=True, help="output folder: ranker.json, report.json (and dpo/)")
    p.add_argument("--held-out", type=float, default=0.2, help="share of answers held out (default: %(default)s)")
    p.add_argument("--precision", type=float, default=0.25,
                   help="the floor keeps suggestions accepted at least this often (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dpo", action="store_true",
                   help="also fine-tune --model (LoRA, DPO) to prefer accepted suggestions over dismissed ones")
    p.add_argument("--model", type=Path, help="with --dpo: the model that wrote the record's suggestions")
    p.add_argument("--steps", type=int, default=30, help="with --dpo: optimizer steps (default: %(default)s)")
    p.add_argument("--beta", type=float, default=0.1, help="with --dpo: DPO's beta (default: %(default)s)")
    p.add_argument("--max-pairs", type=int, default=0,
                   help="with --dpo: at most this many pairs, a seeded sample (default: all)")
    p.add_argument("--device", default="auto")
    p.set_defaults(run=run)
    return p


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if not 0 < args.held_out < 1 or not 0 < args.precision <= 1:
        parser.error("--held-out must be in (0, 1) and --precision in (0, 1]")
    if args.dpo and args.model is None:
        parser.error("--dpo needs --model: the model that wrote the record's suggestions")
    if not args.log.is_file():
        parser.error(f"no outcome record at {args.log}: turn on the outcomes.record setting, or give --log FILE")
    records, skipped = read_log(args.log)
    if not records:
        parser.error(f"{args.log} has no answers with features ({skipped} lines skipped): record with this midline")
    ranker, report = train_ranker(records, share=args.held_out, seed=args.seed, precision=args.precision)
    report["log"], report["skipped_lines"] = str(args.log), skipped
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "ranker.json", ranker.to_json(), indent=1)
    if args.dpo:
        from midline.training import prefer

        report["dpo"] = prefer.prefer(args.model, records, args.out / "dpo", prefer.PreferConfig(
            steps=args.steps, beta=args.beta, seed=args.seed, held_out=args.held_out, max_pairs=args.max_pairs,
            device=args.device))
    write_json(args.out / "report.json", report, indent=1)
    print(format_report(report))
    if args.dpo:
        d = report["dpo"]
        print(f"DPO: {d['pairs']['train']} pairs ({d['pairs']['held_out']} held out), {d['steps']} steps: "
              f"log-prob margin of accepted over dismissed {d['margin_before']['train']:.3f} -> "
              f"{d['margin_after']['train']:.3f} (held out: {_fmt(d['margin_before']['held_out'])} -> "
              f"{_fmt(d['margin_after']['held_out'])}); adapter in {d['adapter']}")
    print(f"ranker: {args.out / 'ranker.json'} (the server's `ranker` setting)")
    return 0


def _fmt(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.3f}"
