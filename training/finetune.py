"""Finetune stage: LoRA (peft) on any local Hugging Face FIM model, on one repository, in that model's own format.

    midline-train finetune --model ~/models/Qwen2.5-Coder-1.5B --repo ~/src/myproject --out work/ft [--merge]

Steps, each skipped when done (a killed run continues where it stopped):

1. corpus (`repository_corpus`, <out>/corpus): the repository's files through the corpus stage's rules
   (`corpus.filter_reason`, `corpus.redact`, exact and MinHash near dedup), paths relative to the repository
   root and the root folder's name as the repository, as the server shows them. The split, since there is one
   repository: whole directories (a file's parent folder, `.` for the root) go to validation in seeded-hash
   order until about `valid_fraction` of the bytes (`corpus.choose_valid`), so held-out code is a folder the
   model never saw; a repository with a single folder is split by file the same way. Training files that
   share a long token run with a held-out file are dropped (`corpus.contaminated`).
2. data (<out>/data, the data stage's layout, read by `data.PackedDataset`): every file drawn `samples` times
   into FIM examples by `data.document_examples` with the syntax-aware holes (`holes="ast"`), in the model's
   FIM format (`fim.detect` on its tokenizer, as the server does; `fim_format` overrides) and the layout the
   server sends (the format's default mode, with the repository name and path), the prompt's ids negated so
   the loss falls on the middle and its end token only; packed whole into rows of seq_len + 1.
3. train (<out>/checkpoint, loss.csv): LoRA adapters on every linear layer of the base model, AdamW with
   warmup + cosine (`train.lr_at`), bf16 and gradient checkpointing on a GPU, fp32 on a CPU; batch k is a pure
   function of (seed, k), and a checkpoint (adapter, optimizer, RNG: safetensors + JSON) every
   `checkpoint_every` steps, so a resumed run ends exactly where an uninterrupted one does.
4. output: <out>/adapter (peft's adapter_config.json + adapter_model.safetensors), for the server's `model` +
   `adapter` settings; with `merge`, <out>/merged, a whole model directory; <out>/summary.json with the
   held-out loss (per middle token) before and after.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from midline.model import fim
from midline.model.languages import LANGUAGES
from midline.training import corpus as C
from midline.training.data import DataConfig, PackedDataset, document_examples, packed_rows
from midline.training.stage import command, read_json, sha256_bytes, write_json, write_npy, write_text

DEFAULT_EXTENSIONS = tuple(sorted({e for spec in LANGUAGES.values() for e in spec.extensions}))


@dataclass
class FinetuneConfig:
    rank: int = 16  # LoRA rank
    alpha: int = 32  # LoRA alpha (the update is scaled by alpha / rank)
    dropout: float = 0.05  # LoRA dropout
    steps: int = 200
    lr: float = 2e-4  # peak learning rate (warmup, then cosine to a tenth)
    warmup: int = 10  # warmup steps
    seq_len: int = 1024  # tokens per row
    batch: int = 8  # rows per step
    samples: int = 4  # FIM examples drawn from each file (different holes)
    valid_fraction: float = 0.1  # share of the repository's bytes held out, by folder
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    fim_format: str = ""  # "": detected from the tokenizer
    eval_every: int = 50  # steps between held-out losses (and the end)
    checkpoint_every: int = 50  # steps between checkpoints (and the end)
    device: str = "auto"  # auto: cuda if available
    dtype: str = "auto"  # auto: bf16 on a GPU, fp32 on a CPU
    gradient_checkpointing: bool | None = None  # None: on a GPU only
    seed: int = 0


# -- 1. the repository as a corpus ----------------------------------------------------------------


def repository_corpus(repo_dir: Path, out_dir: Path, *, valid_fraction: float = 0.1, seed: int = 0,
                      extensions: tuple[str, ...] = DEFAULT_EXTENSIONS, min_bytes: int = 64,
                      max_bytes: int = 1_000_000) -> dict:
    """Write <out>/train.jsonl and valid.jsonl ({"repo", "path", "text"}) and manifest.json for one repository;
    returns the manifest (the finished one's, if its sources and settings are the same)."""
    repo_dir, out_dir = Path(repo_dir).expanduser().resolve(), Path(out_dir)
    if not repo_dir.is_dir():
        raise ValueError(f"--repo {repo_dir} is not a directory")
    params = dict(repo=str(repo_dir), valid_fraction=valid_fraction, seed=seed, extensions=list(extensions),
                  min_bytes=min_bytes, max_bytes=max_bytes)
    old = read_json(out_dir / "manifest.json", tolerant=True)
    if old and old.get("complete") and old.get("params") == params:
        return old
    try:
        listed = C.list_files([str(repo_dir)], extensions)
    except ValueError:
        listed = []
    counts: Counter = Counter(seen=len(listed))
    docs, meta, hashes = [], [], []
    for _, _, file, size, _ in listed:
        text, reason = C.read_source(file, size, min_bytes, max_bytes)
        reason = reason or C.filter_reason(text)
        if reason:
            counts[reason] += 1
            continue
        redacted, found = C.redact(text)
        path = Path(file).relative_to(repo_dir).as_posix()
        docs.append({"repo": repo_dir.name, "path": path, "text": redacted})
        meta.append({"sha": sha256_bytes(text), "bytes": len(redacted.encode()), "redactions": found})
        hashes.append(C.minhash(text, 256, 5))
    if not docs:
        raise ValueError(f"no files to train on in {repo_dir} (extensions {', '.join(extensions)}; {dict(counts)})")
    drop = C.dedup(meta, np.stack(hashes), 0.7, counts)
    kept = [(d, m) for d, m, dropped in zip(docs, meta, drop) if not dropped]
    units = [str(Path(d["path"]).parent) for d, _ in kept]
    if len(set(units)) < 2:  # one folder: split by file
        units = [d["path"] for d, _ in kept]
    unit_bytes: Counter = Counter()
    for unit, (_, m) in zip(units, kept):
        unit_bytes[unit] += m["bytes"]
    held_out = C.choose_valid(unit_bytes, valid_fraction, seed)
    valid = [d for unit, (d, _) in zip(units, kept) if unit in held_out]
    grams = [C.ngram_hashes(d["text"], 13) for d in valid]
    grams_all = np.unique(np.concatenate(grams)) if grams else np.zeros(0, np.uint64)
    train = []
    for unit, (d, _) in zip(units, kept):
        if unit in held_out:
            continue
        if C.contaminated(d["text"], grams_all, 13):
            counts["contaminated"] += 1
        else:
            train.append(d)
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, part in (("train", train), ("valid", valid)):
        write_text(out_dir / f"{split}.jsonl", "".join(json.dumps(d) + "\n" for d in part))
    redactions = Counter()
    for _, m in kept:
        redactions.update(m["redactions"])
    manifest = {"params": params, "counts": {k: counts[k] for k in C.COUNTS if k != "kept"},
                "redactions": {k: redactions[k] for k in C.REDACTIONS},
                "split": {"train": {"files": len(train), "bytes": sum(len(d["text"].encode()) for d in train)},
                          "valid": {"files": len(valid), "bytes": sum(len(d["text"].encode()) for d in valid)}},
                "held_out": sorted(held_out), "complete": True}
    write_json(out_dir / "manifest.json", manifest, indent=1)
    return manifest


# -- 2. FIM examples in the model's format, the prompt masked --------------------------------------


def example_config(fmt: fim.FimFormat, seq_len: int, seed: int) -> DataConfig:
    """The data stage's recipe for a fine-tune: every example FIM, syntax-aware holes, in the layout the server sends
    (the format's default mode, with the repository name and path), the prompt masked."""
    return DataConfig(seq_len=seq_len, fim_rate=1.0, spm_rate=1.0 if fmt.default_mode == "spm" else 0.0,
                      holes="ast", context_rate=1.0, mask_prompt=True, seed=seed)


def file_examples(doc: dict, tokenizer, fmt: fim.FimFormat, config: DataConfig, draw: int) -> list[list[int]]:
    """Draw `draw` of a file's examples: its chunks' FIM examples, the prompt's ids negated (`~id`)."""
    rng = random.Random(f"{config.seed}/{draw}/{doc['path']}")
    return [ids for ids, _, _ in document_examples(doc["text"], rng, tokenizer, config, path=doc["path"],
                                                   repo=doc["repo"], fmt=fmt)]


def build_rows(corpus_dir: Path, out_dir: Path, tokenizer, fmt: fim.FimFormat, c: FinetuneConfig) -> dict:
    """<out>/meta.json and {split}-00000.npy (int32 rows, the prompt's ids negated, padding `~eot`); returns meta."""
    config = example_config(fmt, c.seq_len, c.seed)
    params = {"data": asdict(config), "samples": c.samples, "format": fmt.name,
              "vocab": sha256_bytes(json.dumps(sorted(tokenizer.get_vocab().items()))),
              "corpus": {s: sha256_bytes((corpus_dir / f"{s}.jsonl").read_bytes()) for s in ("train", "valid")}}
    old = read_json(out_dir / "meta.json", tolerant=True)
    if old and old.get("complete") and old.get("params") == params:
        return old
    eot = tokenizer.convert_tokens_to_ids(fmt.eot)
    room, splits = c.seq_len + 1, {}
    out_dir.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid"):
        docs = list(C.read_split(corpus_dir, split))
        examples = [ids for doc in docs for draw in range(c.samples)
                    for ids in file_examples(doc, tokenizer, fmt, config, draw)]
        lengths = np.array([len(e) for e in examples], dtype=np.int64)
        tokens = np.array([i for e in examples for i in e], dtype=np.int32)
        order = np.random.default_rng([c.seed, len(splits)]).permutation(len(examples))
        rows = packed_rows(tokens, lengths, order, room, ~eot, np.int32)
        write_npy(out_dir / f"{split}-00000.npy", rows)
        splits[split] = {"shards": [f"{split}-00000.npy"], "files": len(docs), "examples": len(examples),
                         "rows": len(rows), "tokens": int(lengths.sum()), "taught": int((tokens >= 0).sum())}
    meta = {"seq_len": c.seq_len, "dtype": "int32", "vocab_size": len(tokenizer), "pad_id": ~eot, "eot_id": eot,
            "format": fmt.name, "params": params, "splits": splits, "complete": True}
    write_json(out_dir / "meta.json", meta, indent=1)
    return meta


# -- 3. LoRA training ------------------------------------------------------------------------------


def middle_loss_sum(model, rows: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy (fp32) of the taught targets of rows [n, seq_len + 1] (ids >= 0: the middles and their end
    tokens; the negated prompt ids and padding are read, not taught). The output layer runs on the taught positions
    alone: a tenth of them, and with a 152k vocabulary (Qwen2.5-Coder) the full logits would take most of the memory.
    A model whose logits are more than its output layer (soft-capped or scaled) gets the full forward instead."""
    from midline.training import train as T

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if any(getattr(base.config, k, None) for k in ("final_logit_softcapping", "logit_scale", "logits_scaling")):
        return T.loss_sum(model, rows, pad=-1)
    inputs, targets = rows[:, :-1], rows[:, 1:]
    body = getattr(base, base.base_model_prefix)
    hidden = body(input_ids=torch.where(inputs < 0, ~inputs, inputs), use_cache=False).last_hidden_state
    taught = targets >= 0
    logits = base.get_output_embeddings()(hidden[taught])
    return F.cross_entropy(logits.float(), targets[taught], reduction="sum")


@torch.no_grad()
def held_out_loss(model, data: PackedDataset, batch: int, device: torch.device, autocast) -> float:
    """Mean loss per taught token over all of `data`'s rows, in order."""
    from midline.training import train as T

    total, count = 0.0, 0
    model.eval()
    for i in range(0, len(data), batch):
        rows = T._to_device(data.rows(np.arange(i, min(i + batch, len(data)))), device)
        with autocast:
            total += float(middle_loss_sum(model, rows))
        count += int((rows[:, 1:] >= 0).sum())
    model.train()
    return total / max(count, 1) if len(data) else float("nan")


def finetune(model_dir: Path, repo_dir: Path, out_dir: Path, c: FinetuneConfig = FinetuneConfig(), *,
             merge: bool = False, fresh: bool = False, on_step=None, command: list[str] | None = None) -> dict:
    """Fine-tune `model_dir` with LoRA on `repo_dir` into `out_dir` (resuming its checkpoint unless `fresh`); returns
    the summary written to <out>/summary.json. `on_step(step)` runs after every step (tests simulate a kill)."""
    from peft import LoraConfig, get_peft_model

    from midline.model.loader import load_model
    from midline.training import train as T

    model_dir, out_dir = Path(model_dir).expanduser(), Path(out_dir)
    started = time.monotonic()
    base, tokenizer, device = load_model(model_dir, device=c.device, dtype=c.dtype)
    fmt = fim.get(c.fim_format) if c.fim_format else fim.detect(tokenizer.get_vocab())
    manifest = repository_corpus(repo_dir, out_dir / "corpus", valid_fraction=c.valid_fraction, seed=c.seed,
                                 extensions=tuple(c.extensions))
    meta = build_rows(out_dir / "corpus", out_dir / "data", tokenizer, fmt, c)
    train_data = PackedDataset(out_dir / "data", "train", seed=c.seed)
    valid_data = PackedDataset(out_dir / "data", "valid", seed=c.seed)
    if len(train_data) < c.batch:
        raise ValueError(f"the repository gave {len(train_data)} training rows of {c.seq_len + 1} tokens, fewer than "
                         f"one batch of {c.batch}: lower --batch or --seq-len, or raise --samples")

    random.seed(c.seed)
    np.random.seed(c.seed)
    torch.manual_seed(c.seed)
    base.config.use_cache = False
    checkpointing = c.gradient_checkpointing if c.gradient_checkpointing is not None else device.type == "cuda"
    if checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = LoraConfig(r=c.rank, lora_alpha=c.alpha, lora_dropout=c.dropout, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    model = get_peft_model(base, lora)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=c.lr, weight_decay=0.0, betas=(0.9, 0.95))
    bf16 = base.dtype == torch.bfloat16
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    schedule = T.TrainConfig(lr=c.lr, min_lr=c.lr / 10, warmup_steps=min(c.warmup, max(1, c.steps // 10)),
                             schedule="cosine", max_steps=c.steps)
    params = json.loads(json.dumps({  # (as state.json gives them back)
        "config": {k: v for k, v in asdict(c).items() if k not in ("eval_every", "checkpoint_every", "device")},
        "model": str(model_dir.resolve()), "data": meta["params"]}))

    step, state = 0, {}
    if fresh:
        for name in ("checkpoint", "checkpoint.old"):
            shutil.rmtree(out_dir / name, ignore_errors=True)
    checkpoint = T.find_checkpoint(out_dir)
    if checkpoint is not None:
        if json.loads((checkpoint / "state.json").read_text())["params"] != params:
            raise ValueError(f"{checkpoint} was trained with other settings, model or data: pass --fresh to start over")
        state = load_adapter_checkpoint(checkpoint, model, optimizer)
        step = state["step"]
    T._truncate_csv(out_dir / "loss.csv", step)

    def held_out() -> float:
        return held_out_loss(model, valid_data, c.batch, device, autocast)

    loss_before = state.get("loss_before")
    if loss_before is None:
        loss_before = held_out()
    total = sum(p.numel() for p in model.parameters())
    print(f"{'resuming at step ' + str(step) if step else 'fine-tuning'}: {fmt.name} format, "
          f"{sum(p.numel() for p in trainable) / 1e6:.2f}M of {total / 1e6:.1f}M parameters trained (LoRA r={c.rank}), "
          f"{len(train_data)} rows x {c.seq_len + 1}, {c.steps} steps of {c.batch}, on {device}"
          f"{' bf16' if bf16 else ''}{', gradient checkpointing' if checkpointing else ''}; "
          f"held-out loss {loss_before:.4f}", flush=True)
    elapsed_before, run_start = state.get("elapsed_s", 0.0), time.monotonic()
    tokens_seen, val_loss = state.get("tokens", 0), state.get("val_loss")
    while step < c.steps:
        lr = T.lr_at(step, schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr
        t0 = time.perf_counter()
        batch = T._to_device(train_data.batch(step, c.batch), device)
        count = (batch[:, 1:] >= 0).sum().float()
        with autocast:
            loss = middle_loss_sum(model, batch) / count.clamp(min=1)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens_seen += int(batch.numel())
        evaluate_now = step == c.steps or (c.eval_every > 0 and step % c.eval_every == 0)
        if evaluate_now:
            val_loss = held_out()
        elapsed = elapsed_before + time.monotonic() - run_start
        T._append_csv(out_dir / "loss.csv", dict(
            step=step, tokens=tokens_seen, lr=f"{lr:.6g}", train_loss=f"{loss.item():.6f}",
            val_loss=f"{val_loss:.6f}" if evaluate_now else "", grad_norm=f"{float(grad_norm):.4f}",
            elapsed_s=f"{elapsed:.1f}", tokens_per_s=f"{batch.numel() / (time.perf_counter() - t0):.0f}"))
        if evaluate_now:
            print(f"step {step}/{c.steps}: loss {loss.item():.4f}, held-out {val_loss:.4f}", flush=True)
        if step == c.steps or (c.checkpoint_every > 0 and step % c.checkpoint_every == 0):
            save_adapter_checkpoint(out_dir, model, optimizer, dict(
                step=step, tokens=tokens_seen, elapsed_s=elapsed, val_loss=val_loss, loss_before=loss_before,
                params=params, command=command or state.get("command")))
        if on_step is not None:
            on_step(step)

    save_adapter(model, out_dir / "adapter")
    merged = None
    if merge:
        merged = out_dir / "merged"
        save_merged(model, tokenizer, model_dir, merged)
    run_s = time.monotonic() - run_start
    summary = {
        "model": str(model_dir), "repo": str(Path(repo_dir).expanduser().resolve()), "format": fmt.name,
        "device": str(device), "dtype": str(base.dtype).removeprefix("torch."), "gradient_checkpointing": checkpointing,
        "parameters": total, "trainable": sum(p.numel() for p in trainable), "steps": step, "tokens": tokens_seen,
        "held_out": {"files": manifest["split"]["valid"]["files"], "folders": manifest["held_out"],
                     "rows": len(valid_data), "loss_before": loss_before, "loss_after": val_loss},
        "train": {"files": manifest["split"]["train"]["files"], "rows": len(train_data)},
        "elapsed_s": round(elapsed_before + run_s, 1), "total_s": round(time.monotonic() - started, 1),
        "adapter": str(out_dir / "adapter"), "merged": str(merged) if merged else None,
        "command": command or state.get("command"),
    }
    write_json(out_dir / "summary.json", summary, indent=1)
    return summary


def save_adapter_checkpoint(out_dir: Path, model, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """<out>/checkpoint/: the adapter's tensors, the optimizer, the RNG (safetensors) and state.json, swapped in
    whole."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    from midline.training import train as T

    tmp = out_dir / "checkpoint.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()},
              tmp / "adapter.safetensors")
    tensors, rest = T._flatten_optimizer(optimizer.state_dict())
    save_file(tensors, tmp / "optimizer.safetensors")
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_file(rng, tmp / "rng.safetensors")
    (tmp / "state.json").write_text(json.dumps({**state, "optimizer": rest}, indent=1))  # last: complete
    T._swap_in(tmp, out_dir / "checkpoint")


def load_adapter_checkpoint(path: Path, model, optimizer: torch.optim.Optimizer) -> dict:
    """Restore the adapter, optimizer and RNG from `path`; returns state.json."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from midline.training import train as T

    state = json.loads((path / "state.json").read_text())
    result = set_peft_model_state_dict(model, load_file(path / "adapter.safetensors"))
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"{path} holds another adapter (e.g. {result.unexpected_keys[0]}): pass --fresh")
    optimizer.load_state_dict(T._unflatten_optimizer(load_file(path / "optimizer.safetensors"), state["optimizer"]))
    rng = load_file(path / "rng.safetensors")
    torch.set_rng_state(rng["cpu"])
    cuda = [rng[f"cuda.{i}"] for i in range(len(rng) - 1)]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    return state


def save_adapter(model, dst: Path) -> None:
    """peft's adapter directory (adapter_config.json, adapter_model.safetensors), swapped in whole."""
    from midline.training import train as T

    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    T._swap_in(tmp, dst)


def save_merged(model, tokenizer, model_dir: Path, dst: Path) -> None:
    """The base model with the adapter merged in (`model` is unwrapped: call it last): a whole model directory
    (safetensors, tokenizer, the base's midline.json), swapped in whole."""
    from midline.training import train as T

    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged = model.merge_and_unload()
    merged.config.use_cache = True
    merged.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if (settings := model_dir / "midline.json").is_file():  # the base model's languages and confidence floors
        shutil.copyfile(settings, tmp / "midline.json")
    T._swap_in(tmp, dst)


# -- command line ---------------------------------------------------------------------------------


def add_parser(stages) -> None:
    """The `finetune` subcommand."""
    d = FinetuneConfig()
    p = stages.add_parser("finetune", help="LoRA fine-tune of any local FIM model on a repository, in its own FIM "
                                           "format; writes an adapter (and, with --merge, a merged model)")
    p.add_argument("--model", type=Path, required=True, metavar="DIR", help="a local Hugging Face causal-LM directory")
    p.add_argument("--repo", type=Path, required=True, metavar="DIR", help="the repository to learn")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="work dir: corpus/, data/, checkpoint/, loss.csv, adapter/, merged/, summary.json")
    p.add_argument("--merge", action="store_true", help="also write OUT/merged, the model with the adapter merged in")
    p.add_argument("--fresh", action="store_true", help="start over even if OUT has a checkpoint")
    for f in fields(FinetuneConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "extensions":
            p.add_argument(flag, nargs="+", default=list(d.extensions), metavar="EXT",
                           help="file extensions to learn (default: every language midline knows)")
        elif f.name == "gradient_checkpointing":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help="default: on a GPU only")
        elif f.name == "fim_format":
            p.add_argument(flag, choices=list(fim.FORMATS), default="", help="default: detected from the tokenizer")
        else:
            p.add_argument(flag, type=type(getattr(d, f.name)), default=getattr(d, f.name),
                           help="default: %(default)s")
    p.set_defaults(run=run)


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    config = FinetuneConfig(**{f.name: getattr(args, f.name) for f in fields(FinetuneConfig)})
    config.extensions = tuple(e if e.startswith(".") else "." + e for e in config.extensions)
    summary = finetune(args.model, args.repo, args.out, config, merge=args.merge, fresh=args.fresh,
                       command=command())
    h = summary["held_out"]
    print(f"held-out loss per middle token: {h['loss_before']:.4f} -> {h['loss_after']:.4f} "
          f"({h['files']} files in {', '.join(h['folders']) or 'none'}); {summary['elapsed_s']:.0f} s")
    print(f"adapter: {summary['adapter']}" + (f"; merged model: {summary['merged']}" if summary["merged"] else ""))
    return 0
