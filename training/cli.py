"""`midline-train`: one subcommand per training stage, in pipeline order.

    corpus -> tokenizer -> data -> train -> evaluate (and positions) -> export    (and tiny-model, a placeholder)
    then, for code actions: sft-mine -> sft -> eval-tasks
"""

from __future__ import annotations

import argparse
import glob
import os
import time
from pathlib import Path

from midline.model import DEFAULT_MODEL_DIR
from midline.training import corpus, data, evaluate, evaluate_tasks, export, positions, sft, sft_mine, train


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(parser, args)
    except (ValueError, OSError) as e:
        parser.error(str(e))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="midline-train", description="Train midline's FIM code model, stage by stage.")
    stages = parser.add_subparsers(title="stages", metavar="STAGE", required=True)
    corpus.add_parser(stages)

    p = stages.add_parser("tokenizer", help="train a byte-level BPE tokenizer with midline's FIM tokens")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--corpus", type=Path, metavar="DIR", help="a corpus from the corpus stage (its train split)")
    source.add_argument("--files", nargs="+", metavar="GLOB", help="training text files (globs, ** allowed)")
    p.add_argument("--vocab-size", type=int, default=16384)
    p.add_argument("--out", type=Path, required=True, metavar="DIR")
    p.add_argument("--force", action="store_true", help="train again even if DIR has a tokenizer")
    p.set_defaults(run=tokenizer)

    data.add_parser(stages)
    train.add_parser(stages)
    evaluate.add_parser(stages)
    positions.add_parser(stages)  # completion where editors ask, and a typing replay
    export.add_parser(stages)
    sft_mine.add_parser(stages)  # instruction tasks (explain, tests, fix) mined from the corpus
    sft.add_parser(stages)  # a fine-tune on them
    evaluate_tasks.add_parser(stages)

    p = stages.add_parser("tiny-model", help="make a tiny random-weight model (for tests and trying the server)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="where to write it (the shipped model lives in %s)" % DEFAULT_MODEL_DIR)
    p.add_argument("--files", nargs="+", metavar="GLOB", help="tokenizer corpus (default: ~300 files of Python's stdlib)")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--max-positions", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=tiny_model)
    return parser


def tokenizer(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from midline.training.tokenizer import train_tokenizer, train_tokenizer_on_texts

    if (args.out / "tokenizer.json").is_file() and not args.force:
        print(f"{args.out} already has a tokenizer (--force to train again)")
        return 0
    start = time.monotonic()
    if args.corpus:
        texts = (record["text"] for record in corpus.read_split(args.corpus, "train"))
        tok = train_tokenizer_on_texts(texts, args.vocab_size, args.out)
        source = str(args.corpus)
    else:
        files = expand(parser, args.files)
        tok = train_tokenizer(files, args.vocab_size, args.out)
        source = f"{len(files)} files"
    print(f"wrote a tokenizer (vocab {len(tok)}, {source}) to {args.out} in {time.monotonic() - start:.1f} s")
    return 0


def tiny_model(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from midline.training.tiny_model import make_tiny_model

    files = expand(parser, args.files) if args.files else None
    start = time.monotonic()
    out = make_tiny_model(
        args.out, corpus_files=files, vocab_size=args.vocab_size, hidden_size=args.hidden_size,
        layers=args.layers, heads=args.heads, max_positions=args.max_positions, seed=args.seed,
    )
    print(f"wrote a tiny random-weight model to {out} in {time.monotonic() - start:.1f} s")
    return 0


def expand(parser: argparse.ArgumentParser, patterns: list[str]) -> list[Path]:
    """Files matching the globs, sorted; a usage error if a glob matches no file."""
    files: set[Path] = set()
    for pattern in patterns:
        matches = [Path(m) for m in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(m)]
        if not matches:
            parser.error(f"--files {pattern!r} matches no file")
        files.update(matches)
    return sorted(files)
