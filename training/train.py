"""Train stage: a Llama-architecture FIM code model trained with plain PyTorch.

    python -m midline.training.train --data DATA --out RUN --preset 40m --tokens 2e9
    torchrun --standalone --nproc_per_node 8 -m midline.training.train --data DATA --out RUN ...

One script for CPU (tests), one GPU (bf16 autocast, torch.compile, fused AdamW, TF32) and several (DDP
under torchrun: each rank takes its slice of every global batch). Batch k is a pure function of (seed, k)
(`PackedDataset.batch`), so a run killed at any point resumes from <out>/checkpoint/ with no lost or
repeated batches. Checkpoints are safetensors + JSON, never pickle; <out>/model/ is a Hugging Face model
directory; <out>/loss.csv and loss.png are the curves.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import shutil
import sys
import time
import typing
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from midline.training.data import PackedDataset, load_tokenizer
from midline.training import stage
from midline.training.model import build_model, count_params, load_model, make_optimizer


@dataclass
class TrainConfig:
    # model: a transformers LlamaConfig (vocab from the tokenizer); the defaults are the 40m preset
    hidden_size: int = 512
    layers: int = 10
    heads: int = 8
    kv_heads: int = 4
    intermediate_size: int = 1536
    max_positions: int = 0  # 0: the data's seq_len
    rope_theta: float = 100_000.0
    tie_embeddings: bool = True
    init: str = ""  # start from this Hugging Face model dir (fine-tuning) instead of random weights
    # batch: batch_size * grad_accum * world rows of seq_len (+1) tokens per optimizer step
    batch_size: int = 32  # rows per device per micro-step
    grad_accum: int = 4
    # optimizer
    optimizer: str = "adamw"  # "adamw" | "muon" (Muon for hidden matrices, AdamW for embeddings/norms)
    lr: float = 2e-3  # peak AdamW learning rate
    min_lr: float = 2e-4
    muon_lr: float = 0.02  # peak Muon learning rate (scaled by the same schedule)
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    clip: float = 1.0  # gradient norm clipping (0: off)
    # schedule
    schedule: str = "wsd"  # "wsd" (warmup, stable, linear decay) | "cosine"
    warmup_steps: int = 200
    decay_frac: float = 0.2  # WSD: the last fraction of steps decays to min_lr
    max_steps: int = 10_000
    tokens: int = 0  # > 0: max_steps = tokens / (global batch * seq_len)
    # evaluation, logging, checkpoints
    eval_every: int = 250  # steps between validations (0: only at the end)
    eval_batches: int = 20
    log_every: int = 10  # steps between loss.csv rows; checkpoints are taken right after a row
    checkpoint_minutes: float = 5.0
    checkpoint_every: int = 0  # also every this many steps (0: by time only)
    # system
    device: str = "auto"  # auto: cuda if available
    dtype: str = "auto"  # "bf16" (autocast) | "fp32"; auto: bf16 on CUDA, fp32 on CPU
    compile: bool | None = None  # torch.compile; None: on CUDA only
    seed: int = 0


PRESETS: dict[str, dict] = {  # model shapes; parameters with a 16k vocab (32k) and tied embeddings
    # 1.1M (2.2M): tests, smoke runs
    "tiny": dict(hidden_size=64, layers=2, heads=4, kv_heads=2, intermediate_size=192),
    "20m": dict(hidden_size=384, layers=8, heads=6, kv_heads=2, intermediate_size=1152),  # 20M (26M)
    # 28M (36M): the default model, 57 MB in bf16
    "28m": dict(hidden_size=448, layers=10, heads=7, kv_heads=1, intermediate_size=1216),
    "40m": dict(hidden_size=512, layers=10, heads=8, kv_heads=4, intermediate_size=1536),  # 40M (48M)
}
CHOICES = {"optimizer": ("adamw", "muon"), "schedule": ("wsd", "cosine"), "dtype": ("auto", "bf16", "fp32")}
CSV_FIELDS = ("step", "tokens", "lr", "train_loss", "val_loss", "grad_norm", "elapsed_s", "tokens_per_s")


def lr_at(step: int, c: TrainConfig) -> float:
    """AdamW learning rate for step `step` (0-based): linear warmup, then cosine to min_lr, or WSD:
    constant, then linear to min_lr over the last decay_frac of the steps. The last step gets min_lr."""
    if step < c.warmup_steps:
        return c.lr * (step + 1) / c.warmup_steps
    if c.schedule == "cosine":
        progress = (step + 1 - c.warmup_steps) / max(1, c.max_steps - c.warmup_steps)
        return c.min_lr + 0.5 * (1 + math.cos(math.pi * min(1.0, progress))) * (c.lr - c.min_lr)
    if c.schedule == "wsd":
        decay_steps = max(1, round(c.decay_frac * c.max_steps))
        progress = (step + 1 - (c.max_steps - decay_steps)) / decay_steps
        return c.lr + (c.min_lr - c.lr) * min(1.0, max(0.0, progress))
    raise ValueError(f"unknown schedule {c.schedule!r}: use wsd or cosine")


def train(config: TrainConfig, data_dir: Path, out_dir: Path, *, tokenizer_dir: Path | None = None, fresh: bool = False,
          on_step: Callable[[int], None] | None = None, command: list[str] | None = None) -> dict:
    """Train (or resume: out_dir/checkpoint, unless `fresh`) until max_steps; returns a summary.
    `on_step(step)` runs after every step (tests use it to simulate a kill); `command` is recorded in state.json."""
    rank, world, local_rank = _init_distributed(config)
    try:
        return _train(config, Path(data_dir), Path(out_dir), tokenizer_dir, fresh, on_step, command, rank, world,
                      local_rank)
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(c: TrainConfig, data_dir: Path, out_dir: Path, tokenizer_dir: Path | None, fresh: bool, on_step, command,
           rank: int, world: int, local_rank: int) -> dict:
    device = _device(c.device, local_rank)
    bf16 = c.dtype == "bf16" or (c.dtype == "auto" and device.type == "cuda")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    master = rank == 0
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"

    train_data = PackedDataset(data_dir, "train", seed=c.seed)
    val_data = PackedDataset(data_dir, "valid", seed=c.seed)
    seq_len, pad = train_data.seq_len, train_data.pad_id
    tokenizer = load_tokenizer(Path(tokenizer_dir) if tokenizer_dir else _tokenizer_dir(data_dir, train_data.meta))
    global_batch = c.batch_size * c.grad_accum * world
    tokens_per_step = global_batch * seq_len
    c = replace(c, max_positions=c.max_positions or seq_len,
                max_steps=math.ceil(c.tokens / tokens_per_step) if c.tokens else c.max_steps)

    random.seed(c.seed)
    np.random.seed(c.seed)
    torch.manual_seed(c.seed)
    if c.init:
        raw = load_model(Path(c.init))
        if raw.config.vocab_size != len(tokenizer):
            raise ValueError(f"{c.init} has a vocabulary of {raw.config.vocab_size}, the tokenizer {len(tokenizer)}")
        m = raw.config  # record the shape actually trained
        c = replace(c, hidden_size=m.hidden_size, layers=m.num_hidden_layers, heads=m.num_attention_heads,
                    kv_heads=m.num_key_value_heads, intermediate_size=m.intermediate_size,
                    max_positions=m.max_position_embeddings, tie_embeddings=m.tie_word_embeddings,
                    rope_theta=m.rope_parameters["rope_theta"])
    else:
        raw = build_model(vocab_size=len(tokenizer), hidden_size=c.hidden_size, layers=c.layers, heads=c.heads,
                          kv_heads=c.kv_heads, intermediate_size=c.intermediate_size, max_positions=c.max_positions,
                          rope_theta=c.rope_theta, tie_embeddings=c.tie_embeddings, bos_id=train_data.eot_id,
                          eos_id=train_data.eot_id, pad_id=pad)
    raw.to(device)
    optimizer = make_optimizer(raw, name=c.optimizer, lr=c.lr, muon_lr=c.muon_lr, weight_decay=c.weight_decay,
                               betas=(c.beta1, c.beta2), device=device)

    step, state = 0, {}
    checkpoint = None if fresh else find_checkpoint(out_dir)
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, raw, optimizer)
        step = state["step"]
        if state["global_batch"] != global_batch:
            raise ValueError(f"{checkpoint} was trained with a global batch of {state['global_batch']} rows, "
                             f"not {global_batch}: keep batch_size * grad_accum * world, or start a new run (--fresh)")
    if master:
        out_dir.mkdir(parents=True, exist_ok=True)
        if fresh:  # so that a fresh run killed before its first checkpoint doesn't resume the old run
            for name in ("checkpoint", "checkpoint.old"):
                shutil.rmtree(out_dir / name, ignore_errors=True)
        _truncate_csv(out_dir / "loss.csv", step)
        print(f"{'resuming at step ' + str(step) if step else 'training'}: {count_params(raw) / 1e6:.1f}M parameters, "
              f"{global_batch} x {seq_len} tokens per step, {c.max_steps} steps, "
              f"on {world} x {device.type}{' bf16' if bf16 else ''}", flush=True)

    model = torch.compile(raw) if (c.compile if c.compile is not None else device.type == "cuda") else raw
    eval_model = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None,
                                        broadcast_buffers=False)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    tokens_seen, elapsed_before, val_loss = state.get("tokens", 0), state.get("elapsed_s", 0.0), state.get("val_loss")
    start = time.monotonic()
    last_checkpoint, row_time, row_tokens = start, time.perf_counter(), tokens_seen
    window = torch.zeros((), device=device)  # sum of per-step mean losses since the last row (this rank's share)
    window_steps, train_loss, grad_norm = 0, state.get("train_loss"), torch.zeros(())
    while step < c.max_steps:
        lr = lr_at(step, c)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * lr / c.lr
        rows = train_data.batch(step, global_batch, rank=rank, world=world)  # [batch_size * grad_accum, seq_len + 1]
        batch = _to_device(rows, device)
        count = target_count(batch, pad).float()  # on the device: no host sync
        if world > 1:
            dist.all_reduce(count)  # targets in the whole global batch: the loss is their mean
        for micro in range(c.grad_accum):
            x = batch[micro * c.batch_size : (micro + 1) * c.batch_size]
            with nullcontext() if world == 1 or micro == c.grad_accum - 1 else model.no_sync():
                with autocast:
                    loss = loss_sum(model, x, pad)
                (loss * (world / count)).backward()  # DDP averages over ranks: world/count makes it the global mean
            window += loss.detach() / count
        if c.clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(raw.parameters(), c.clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens_seen += tokens_per_step
        window_steps += 1

        evaluate_now = step == c.max_steps or (c.eval_every > 0 and step % c.eval_every == 0)
        if evaluate_now or step % c.log_every == 0:
            if world > 1:
                dist.all_reduce(window)
            train_loss = window.item() / window_steps
            window.zero_()
            window_steps = 0
            tokens_per_s = (tokens_seen - row_tokens) / (time.perf_counter() - row_time)
            if evaluate_now:
                val_loss = evaluate(eval_model, val_data, c, rank, world, device, autocast)
            elapsed = elapsed_before + time.monotonic() - start
            if master:
                _append_csv(out_dir / "loss.csv", dict(
                    step=step, tokens=tokens_seen, lr=f"{lr:.6g}", train_loss=f"{train_loss:.6f}",
                    val_loss=f"{val_loss:.6f}" if evaluate_now else "", grad_norm=f"{float(grad_norm):.4f}",
                    elapsed_s=f"{elapsed:.1f}", tokens_per_s=f"{tokens_per_s:.0f}"))
                print(f"step {step}/{c.max_steps}: loss {train_loss:.4f}"
                      + (f", val {val_loss:.4f}" if evaluate_now else "")
                      + f", lr {lr:.3g}, {tokens_per_s:,.0f} tok/s", flush=True)
                if evaluate_now:
                    plot(out_dir / "loss.csv", out_dir / "loss.png")
                due = (step == c.max_steps or (c.checkpoint_every > 0 and step % c.checkpoint_every == 0)
                       or time.monotonic() - last_checkpoint >= c.checkpoint_minutes * 60)
                if due:  # only right after a row, so no partial loss window needs saving
                    epoch, position = train_data.position(step, global_batch)
                    save_checkpoint(out_dir, raw, optimizer, tokenizer, dict(
                        step=step, epoch=epoch, position=position, tokens=tokens_seen, elapsed_s=elapsed,
                        global_batch=global_batch, world=world, device_name=device_name, train_loss=train_loss,
                        val_loss=val_loss, data=str(data_dir), config=asdict(c),
                        command=command or state.get("command")))
                    last_checkpoint = time.monotonic()
            row_time, row_tokens = time.perf_counter(), tokens_seen
        if on_step is not None:
            on_step(step)

    run_time = time.monotonic() - start
    if master and (out_dir / "loss.csv").exists():
        plot(out_dir / "loss.csv", out_dir / "loss.png")
    return {"steps": step, "tokens": tokens_seen, "train_loss": train_loss, "val_loss": val_loss,
            "params": count_params(raw), "elapsed_s": round(elapsed_before + run_time, 1),
            "tokens_per_s": round((tokens_seen - state.get("tokens", 0)) / max(run_time, 1e-9)), "out": str(out_dir)}


def loss_sum(model: torch.nn.Module, rows: torch.Tensor, pad: int) -> torch.Tensor:
    """Summed next-token cross-entropy (fp32) over rows [n, seq_len + 1]; pad targets are ignored, and so are
    ids stored negated (`~id`: context the model reads but is not taught to write, e.g. an SFT prompt)."""
    inputs, targets = rows[:, :-1], rows[:, 1:]
    logits = model(input_ids=torch.where(inputs < 0, ~inputs, inputs), use_cache=False).logits
    targets = targets.masked_fill((targets == pad) | (targets < 0), -100)
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum")


def target_count(rows: torch.Tensor, pad: int) -> torch.Tensor:
    """How many targets of rows [n, seq_len + 1] `loss_sum` counts."""
    targets = rows[:, 1:]
    return ((targets != pad) & (targets >= 0)).sum()


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: PackedDataset, c: TrainConfig, rank: int, world: int, device: torch.device,
             autocast) -> float:
    """Mean loss per target token over a fixed set of validation rows (eval_batches global batches)."""
    per_step = c.batch_size * world
    n = min(len(data), c.eval_batches * per_step)
    n = n - n % per_step or n
    mine = data.order(0)[:n][rank::world]
    total, count = torch.zeros((), device=device), torch.zeros((), device=device)
    model.eval()
    for i in range(0, len(mine), c.batch_size):
        x = _to_device(data.rows(mine[i : i + c.batch_size]), device)
        with autocast:
            total += loss_sum(model, x, data.pad_id)
        count += target_count(x, data.pad_id)
    model.train()
    if world > 1:
        dist.all_reduce(total)
        dist.all_reduce(count)
    return (total / count).item()


def _to_device(rows: np.ndarray, device: torch.device) -> torch.Tensor:
    x = torch.from_numpy(rows.astype(np.int32))
    if device.type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
    return x.long()


def _device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(f"cuda:{local_rank}" if name == "cuda" else name)


def _init_distributed(c: TrainConfig) -> tuple[int, int, int]:
    """(rank, world, local rank); under torchrun, joins the process group (nccl on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = c.device != "cpu" and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(local_rank)
            dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
        else:
            dist.init_process_group("gloo")
    return rank, world, local_rank


def _tokenizer_dir(data_dir: Path, meta: dict) -> Path:
    copy = data_dir / "tokenizer"
    return copy if (copy / "tokenizer.json").exists() else Path(meta["tokenizer"])


# -- checkpoints: safetensors for tensors, JSON for the rest ---------------------------------------


def save_checkpoint(out_dir: Path, raw: torch.nn.Module, optimizer: torch.optim.Optimizer, tokenizer,
                    state: dict) -> None:
    """Write <out>/checkpoint/ (model, optimizer, RNG, state.json) and <out>/model/, each swapped in whole."""
    tmp = out_dir / "checkpoint.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_model_tensors(raw), tmp / "model.safetensors")
    tensors, rest = _flatten_optimizer(optimizer.state_dict())
    save_file(tensors, tmp / "optimizer.safetensors")
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_file(rng, tmp / "rng.safetensors")
    np_state = np.random.get_state(legacy=False)
    np_state["state"]["key"] = np_state["state"]["key"].tolist()
    version, mt, gauss = random.getstate()
    state = {**state, "optimizer": rest, "python_random": [version, list(mt), gauss], "numpy_random": np_state}
    (tmp / "state.json").write_text(json.dumps(state, indent=1))  # last: a checkpoint with state.json is complete
    _swap_in(tmp, out_dir / "checkpoint")
    save_hf_model(raw, tokenizer, out_dir / "model")


def find_checkpoint(out_dir: Path) -> Path | None:
    """The complete checkpoint in out_dir, if any (checkpoint.old holds it if a swap was interrupted)."""
    for name in ("checkpoint", "checkpoint.old"):
        if (out_dir / name / "state.json").exists():
            return out_dir / name
    return None


def load_checkpoint(path: Path, raw: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore model, optimizer and RNG states from `path`; returns state.json."""
    state = json.loads((path / "state.json").read_text())
    tensors = load_file(path / "model.safetensors")
    expected = _model_tensors(raw).keys()
    if tensors.keys() != expected:
        raise ValueError(f"{path} holds a different model (differing tensors: {sorted(tensors.keys() ^ expected)[:4]})")
    with torch.no_grad():
        for name, t in raw.state_dict().items():
            if name in tensors:
                t.copy_(tensors[name])
    base_lrs = [g["base_lr"] for g in optimizer.param_groups]  # the current config's, not the checkpoint's
    optimizer.load_state_dict(_unflatten_optimizer(load_file(path / "optimizer.safetensors"), state["optimizer"]))
    for group, base_lr in zip(optimizer.param_groups, base_lrs):
        group["base_lr"] = base_lr
    rng = load_file(path / "rng.safetensors")
    torch.set_rng_state(rng["cpu"])
    cuda = [rng[f"cuda.{i}"] for i in range(len(rng) - 1)]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    version, mt, gauss = state["python_random"]
    random.setstate((version, tuple(mt), gauss))
    np_state = state["numpy_random"]
    np_state["state"]["key"] = np.array(np_state["state"]["key"], dtype=np.uint32)
    np.random.set_state(np_state)
    return state


def save_hf_model(raw: torch.nn.Module, tokenizer, dst: Path) -> None:
    """A Hugging Face model dir (config, safetensors weights, generation config, tokenizer), swapped in whole."""
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    raw.save_pretrained(tmp)
    tokenizer.model_max_length = raw.config.max_position_embeddings
    tokenizer.save_pretrained(tmp)
    _swap_in(tmp, dst)


def _model_tensors(raw: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with tied tensors once (safetensors refuses shared storage)."""
    out, seen = {}, set()
    for name, t in raw.state_dict().items():
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            out[name] = t.detach().cpu().contiguous()
    return out


def _flatten_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer state dict as {"<param index>.<name>": tensor} and a JSON-able rest."""
    tensors, scalars = {}, {}
    for index, param_state in sd["state"].items():
        for name, value in param_state.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    state: dict[int, dict] = defaultdict(dict)
    for key, value in [*tensors.items(), *rest["scalars"].items()]:
        index, name = key.split(".", 1)
        state[int(index)][name] = value
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in rest["param_groups"]]
    return {"state": dict(state), "param_groups": groups}


def _swap_in(tmp: Path, dst: Path) -> None:
    """Move the finished dir `tmp` to `dst`; at every moment `dst` or `dst.old` is a complete copy."""
    old = dst.with_name(dst.name + ".old")
    if dst.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
    os.replace(tmp, dst)
    shutil.rmtree(old, ignore_errors=True)


# -- loss curves ----------------------------------------------------------------------------------


def _truncate_csv(path: Path, step: int) -> None:
    """Keep loss.csv's rows up to `step` (the resumed checkpoint), so a resumed run never repeats a step."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f)
                if None not in r.values() and r["step"].isdigit() and int(r["step"]) <= step]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _append_csv(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, CSV_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def plot(csv_path: Path, png_path: Path) -> None:
    """Train/validation loss and the learning rate against step, to a PNG (Agg, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    fig = Figure(figsize=(9, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([int(r["step"]) for r in rows], [float(r["train_loss"]) for r in rows], label="train", lw=1)
    val = [r for r in rows if r["val_loss"]]
    ax.plot([int(r["step"]) for r in val], [float(r["val_loss"]) for r in val], "o-", label="valid", ms=3)
    ax.set(xlabel="step", ylabel="loss (nats / token)",
           title=f"{csv_path.parent.name}: {rows[-1]['tokens'] if rows else 0} tokens")
    ax.grid(alpha=0.3)
    lr = ax.twinx()
    lr.plot([int(r["step"]) for r in rows], [float(r["lr"]) for r in rows], color="gray", alpha=0.4, lw=1, label="lr")
    lr.set_ylabel("learning rate")
    ax.legend(loc="upper right")
    tmp = png_path.with_name(png_path.name + ".tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, png_path)


# -- command line ---------------------------------------------------------------------------------


def add_parser(stages) -> None:
    """The `train` subcommand: --data --out [--tokenizer] [--preset] [--fresh], and a flag per TrainConfig field."""
    p = stages.add_parser("train", help="train the FIM model on the data stage's rows (resumes from <out>/checkpoint)")
    p.add_argument("--data", type=Path, required=True, metavar="DIR", help="the data stage's output")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="run dir: checkpoint/, model/, loss.csv, loss.png")
    p.add_argument("--tokenizer", type=Path, metavar="DIR", help="default: the data dir's copy")
    p.add_argument("--preset", choices=PRESETS, help="model shape (default: 40m); explicit flags override it")
    p.add_argument("--fresh", action="store_true", help="start over even if <out>/checkpoint exists")
    hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        kind = hints[f.name]
        flag = "--" + f.name.replace("_", "-")
        if bool in (kind, *typing.get_args(kind)):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS)
        else:
            p.add_argument(flag, type=_int if kind is int else kind, default=argparse.SUPPRESS,
                           choices=CHOICES.get(f.name), metavar="DIR" if f.name == "init" else None,
                           help=f"default: {f.default!r}")
    p.set_defaults(run=run)


def _int(text: str) -> int:
    """An int, also written like 2e9 or 2_000_000."""
    value = float(text.replace("_", ""))
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"not an integer: {text}")
    return int(value)


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    config = TrainConfig(**{**PRESETS.get(args.preset or "", {}), **given})
    command = stage.command()
    summary = train(config, args.data, args.out, tokenizer_dir=args.tokenizer, fresh=args.fresh, command=command)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m midline.training.train")
    add_parser(parser.add_subparsers(required=True))
    args = parser.parse_args(["train", *(sys.argv[1:] if argv is None else argv)])
    return args.run(parser, args)


if __name__ == "__main__":
    raise SystemExit(main())
