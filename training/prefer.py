"""Preference fine-tune (DPO) on the outcome record: accepted suggestions preferred over dismissed ones.

`midline-train rank --dpo --model DIR` runs it after the ranker. Pairs come from records that kept their prompt
(`outcomes.prompts`: the token ids the model was given): an accepted suggestion against each other suggestion of
the same answer (same prompt), and else against a dismissed answer's first suggestion at the same position kind
(each used once; a different prompt, so the pair compares how each is preferred under its own prompt). Pairs are
split into training and held-out ones by their accepted record (`rank.held_out`).

The loss is DPO's, -log sigmoid(beta * ((log pi(c) - log ref(c)) - (log pi(r) - log ref(r)))), where log pi is
the summed log-probability of a suggestion's tokens after its prompt under the model with LoRA adapters (peft, on
every linear layer, as `finetune`) and ref the same model with the adapters off (the frozen base). The report gives
the mean log-probability margin of accepted over dismissed suggestions before and after, per split; the adapter is
written to <out>/adapter for the server's `model` + `adapter` settings.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from midline.model import fim
from midline.training import rank as K
from midline.training.stage import write_json


@dataclass
class PreferConfig:
    steps: int = 30
    beta: float = 0.1
    lr: float = 5e-4
    batch: int = 4  # pairs per step
    rank: int = 8  # LoRA rank
    alpha: int = 16
    held_out: float = 0.2
    max_pairs: int = 0  # at most this many pairs, a seeded sample (0: all)
    seed: int = 0
    device: str = "auto"


@dataclass(frozen=True)
class Pair:
    """A preferred (accepted) and a dispreferred suggestion, each after its own prompt (token ids)."""

    chosen_prompt: tuple[int, ...]
    chosen: str
    rejected_prompt: tuple[int, ...]
    rejected: str
    record: str  # the accepted answer's id (its split)


def pairs(records: list[dict]) -> list[Pair]:
    """Accepted vs dismissed pairs (see the module docstring) from records that kept their prompt."""
    with_prompt = [r for r in records if isinstance(r.get("prompt"), list) and r["prompt"]]
    dismissed = {kind: [r for r in with_prompt if r.get("outcome") == "dismissed" and r.get("position") == kind]
                 for kind in {r.get("position") for r in with_prompt}}
    used = {kind: 0 for kind in dismissed}
    out = []
    for record in with_prompt:
        taken = K.accepted_index(record)
        if taken is None or not 0 <= taken < len(record["suggestions"]):
            continue
        prompt, chosen = tuple(record["prompt"]), record["suggestions"][taken]
        others = [s for i, s in enumerate(record["suggestions"]) if i != taken and s != chosen]
        out += [Pair(prompt, chosen, prompt, other, record["id"]) for other in others]
        kind = record.get("position")
        if not others and used.get(kind, 0) < len(dismissed.get(kind, [])):
            other = dismissed[kind][used[kind]]
            used[kind] += 1
            out.append(Pair(prompt, chosen, tuple(other["prompt"]), other["suggestions"][0], record["id"]))
    return out


def sequence_logprob(model, prompt: tuple[int, ...], completion: list[int], device: torch.device) -> torch.Tensor:
    """The summed log-probability of `completion`'s tokens after `prompt`."""
    ids = torch.tensor([list(prompt) + completion], device=device)
    logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[0, len(prompt) :, None]).sum()


def prefer(model_dir: Path, records: list[dict], out_dir: Path, c: PreferConfig = PreferConfig()) -> dict:
    """DPO-fine-tune `model_dir` on the records' pairs into `out_dir`; returns the summary (also summary.json)."""
    from peft import LoraConfig, get_peft_model

    from midline.model.loader import load_model
    from midline.training.finetune import save_adapter

    started = time.monotonic()
    all_pairs = pairs(records)
    if c.max_pairs and len(all_pairs) > c.max_pairs:
        all_pairs = random.Random(c.seed).sample(all_pairs, c.max_pairs)
    if not all_pairs:
        raise ValueError("the log has no accepted suggestion with a dismissed one to prefer it over and a prompt kept "
                         "(record with the outcomes.prompts setting on)")
    test = [p for p in all_pairs if K.held_out(p.record, c.held_out, c.seed)]
    train = [p for p in all_pairs if not K.held_out(p.record, c.held_out, c.seed)]
    if not train:  # (a handful of pairs, all held out: train on them all, hold none out)
        train, test = all_pairs, []
    base, tokenizer, device = load_model(model_dir, device=c.device, dtype="float32")
    vocab = base.get_input_embeddings().num_embeddings
    if max(max(p.chosen_prompt + p.rejected_prompt) for p in all_pairs) >= vocab:
        raise ValueError(f"the record's prompts hold token ids past {model_dir}'s vocabulary ({vocab}): give --model "
                         "the model that wrote them")
    encode = {text: fim.encode_text(tokenizer, text) for p in all_pairs for text in (p.chosen, p.rejected)}
    random.seed(c.seed)
    torch.manual_seed(c.seed)
    base.config.use_cache = False
    model = get_peft_model(base, LoraConfig(r=c.rank, lora_alpha=c.alpha, lora_dropout=0.0,
                                            target_modules="all-linear", task_type="CAUSAL_LM"))

    def logps(pair: Pair) -> tuple[torch.Tensor, torch.Tensor]:
        return (sequence_logprob(model, pair.chosen_prompt, encode[pair.chosen], device),
                sequence_logprob(model, pair.rejected_prompt, encode[pair.rejected], device))

    @torch.no_grad()
    def reference(pair: Pair) -> tuple[float, float]:
        with model.disable_adapter():
            chosen, rejected = logps(pair)
        return float(chosen), float(rejected)

    @torch.no_grad()
    def margin(split: list[Pair]) -> float | None:
        if not split:
            return None
        model.eval()
        values = [float(a - b) for a, b in map(logps, split)]
        return sum(values) / len(values)

    refs = {pair: reference(pair) for pair in all_pairs}
    before = {"train": margin(train), "held_out": margin(test)}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=c.lr, weight_decay=0.0)
    rng = random.Random(c.seed)
    losses = []
    for _ in range(c.steps):
        model.train()
        batch = rng.sample(train, min(c.batch, len(train)))
        loss = torch.zeros((), device=device)
        for pair in batch:
            chosen, rejected = logps(pair)
            ref_chosen, ref_rejected = refs[pair]
            loss = loss - F.logsigmoid(c.beta * ((chosen - ref_chosen) - (rejected - ref_rejected))) / len(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(round(float(loss.detach()), 5))
    after = {"train": margin(train), "held_out": margin(test)}
    save_adapter(model, out_dir / "adapter")
    summary = {"model": str(model_dir), "device": str(device), "config": asdict(c),
               "pairs": {"train": len(train), "held_out": len(test)}, "steps": c.steps, "losses": losses,
               "margin_before": before, "margin_after": after, "adapter": str(out_dir / "adapter"),
               "elapsed_s": round(time.monotonic() - started, 1)}
    write_json(out_dir / "summary.json", summary, indent=1)
    return summary
