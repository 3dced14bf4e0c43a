"""`midline-train`: one subcommand per training stage, in pipeline order.

    corpus -> tokenizer -> data -> train -> evaluate (and positions) -> export
    index: the attribution index of the training split, for the server's attribution check
    then, for code actions: sft-mine -> sft -> eval-tasks
    finetune: LoRA on any local FIM model (Qwen2.5-Coder, StarCoder2, ...) on one repository
    rank: learn from the outcome record (a ranker for the server; with --dpo a preference fine-tune)
    attention: what the model looks at for one completion (a heat map of attention per prompt line)
    and tiny-model, a placeholder model for tests and trying the server

Each stage's module has one `add_parser(stages)` (its subcommand, whose `run(parser, args)` it sets) and one `run`.
"""

from __future__ import annotations

import argparse

from midline.model import VERSION
from midline.training import (attention, attribution, corpus, data, evaluate, evaluate_tasks, export, finetune,
                              positions, rank, sft, sft_mine, tiny_model, tokenizer, train)

# The stages, in pipeline order (the order of `midline-train --help`).
STAGES = (
    corpus,
    tokenizer,
    data,
    train,
    evaluate,
    positions,  # completion where editors ask, and a typing replay
    export,
    attribution,  # `index`: the training split's attribution index, for the server
    sft_mine,  # instruction tasks (explain, tests, fix) mined from the corpus
    sft,  # a fine-tune on them
    evaluate_tasks,
    finetune,  # LoRA on any local FIM model, on one repository, in its own format
    rank,  # a ranker learnt from the outcome record (and a DPO fine-tune)
    attention,  # attention per prompt line for one completion
    tiny_model,
)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(parser, args)
    except (ValueError, OSError) as e:
        parser.error(str(e))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="midline-train",
                                     description="Train midline's FIM code model, stage by stage.")
    parser.add_argument("--version", action="version", version=f"midline-train {VERSION}")
    stages = parser.add_subparsers(title="stages", metavar="STAGE", required=True)
    for stage in STAGES:
        stage.add_parser(stages)
    return parser
