"""SFT stage: a fine-tune of a trained model on the instruction tasks of `sft_mine.py`, asked in the
server's own prompt shapes, with the loss on the answers only.

    midline-train sft --model model/default --corpus work/corpus --mined work/sft-mined --out work/sft

Examples: `task_example(record)` turns a mined record into the (FimPrompt, middle) pair of
`midline.model.tasks`, so an example is laid out exactly as the server asks.

Data (`build_sft_data`): each example is `FimFormat.encode_example(prompt, middle)`, i.e. the served
prompt, the middle and EOT, in the format's default layout (SPM for midline, as the server sends it).
The prompt's tokens are stored negated (`~id`): the model reads them, and `train.loss_sum` takes no
loss on them, so the loss falls on the middle and EOT only. A share of plain FIM examples of the corpus
(`fim_share` of the tokens, the data stage's recipe, full loss) keeps completion quality. Examples are
packed whole into rows like the data stage's, in the same meta.json + .npy layout (int32), so
`train.train` fine-tunes on them unchanged: resumable, checkpointed, on any device.

The stage: mine (`sft_mine.mine`, unless --mined), build the rows, `train.train` from the model's weights
(`init`), and `export.export` the result. Every step skips work already done, so a killed run continues
where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import random
import re
import shutil
import sys
import typing
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Iterator

import numpy as np

from midline.model import DEFAULT_MODEL_DIR, tasks
from midline.model.fim import EOT, FIM_PAD, MIDLINE, FimFormat, FimPrompt, encode_text
from midline.model.syntax import is_string_statement, node_name, parse, unwrap
from midline.server.verify import keep_tests, test_functions
from midline.training.sft_mine import KINDS, MineConfig, mine, mine_config, mine_flags, read_records, sample
from midline.training.stage import SPLITS, command, corpus_fingerprint, read_json, sha256_file, write_json, write_npy

# -- examples: records in the server's prompt shapes ----------------------------------------------


def task_example(record: dict) -> tuple[FimPrompt, str] | None:
    """(prompt, middle) of a record, built by its task's record (`midline.model.tasks`) exactly as the server
    builds the prompt."""
    task = tasks.TASKS.get(record["kind"])
    if task is None or task.record_example is None:
        raise ValueError(f"unknown record kind {record['kind']!r}")
    return task.record_example(record)


def encode_record(record: dict, tokenizer, room: int, fmt: FimFormat = MIDLINE,
                  mode: str | None = None) -> tuple[list[int], int] | None:
    """(ids, prompt length) of a record's example — `fmt.encode_example`: the served prompt, the middle,
    end of text — in at most `room` tokens; None if it does not fit. A tests record too long is shrunk
    first (`shrink_tests`)."""
    for variant in shrink_tests(record) if record["kind"] == "tests" else [record]:
        example = task_example(variant)
        if example is None:
            continue
        prompt, middle = example
        ids = fmt.encode_example(prompt, middle, tokenizer, mode)
        if len(ids) <= room:  # encode_example = encode(prompt) + the middle's text + EOT
            return ids, len(ids) - len(encode_text(tokenizer, middle)) - 1
    return None


def shrink_tests(record: dict, tries: int = 6) -> Iterator[dict]:
    """The tests record, then smaller versions of it: the module reduced to the definitions the tests
    use (and the test file's imports from it to those names), then the first half of the tests, and so
    on down to one test."""
    yield record
    names = [t.name for t in test_functions(record["test"])]
    keep = len(names)
    module = tasks.module_name(record["path"])
    for _ in range(tries):
        test = record["test"] if keep == len(names) else keep_tests(record["test"], names[:keep])
        used = set(re.findall(r"\w+", tasks.TESTS.target(test) or ""))
        yield {**record, "test": _imports_used(test, module, used), "module": prune_module(record["module"], used)}
        if keep <= 1:
            return
        keep = max(1, keep // 2)


def _imports_used(test: str, module: str, used: set[str]) -> str:
    """The test file with its `from <package.>module import a, b as c` lines down to the names it uses."""

    def keep(match: re.Match) -> str:
        names = [n.strip() for n in match.group(2).split(",") if n.strip()]
        kept = [n for n in names if set(n.split()) & used]
        return f"{match.group(1)}{', '.join(kept)}" if kept else ""

    return re.sub(rf"^(from\s+(?:[\w.]+\.)?{re.escape(module)}\s+import\s+)\(?([^)\n]+)\)?[ \t]*$", keep, test,
                  flags=re.MULTILINE)


def prune_module(source: str, names: set[str]) -> str:
    """The module without its docstring and its top-level functions and classes not in `names` (the
    imports and the rest stay)."""
    data = source.encode("utf-8", "surrogatepass")
    out, at = [], 0
    for i, node in enumerate(parse("python", source).root_node.named_children):
        docstring = i == 0 and is_string_statement(node)
        if docstring or (unwrap(node, "python").type in ("function_definition", "class_definition")
                         and node_name(node, "python") not in names):
            out.append(data[at:node.start_byte])
            at = node.end_byte
            if data[at:at + 1] == b"\n":
                at += 1
    out.append(data[at:])
    return re.sub(r"\n{4,}", "\n\n\n", b"".join(out).decode("utf-8", "surrogatepass")).lstrip("\n")


# -- data: packed rows, the prompt's tokens stored negated ----------------------------------------


@dataclass
class SftConfig:
    seq_len: int = 0  # tokens per row; 0: the model's context length
    fim_share: float = 0.3  # share of the tokens from plain FIM examples of the corpus (full loss), to keep completion
    max_per_kind: int = 0  # at most this many examples of each kind per split (a seeded sample; 0: all)
    tests_repeat: int = 2  # copies of each tests example (a few hundred in a corpus, tens of thousands of others)
    valid_examples: int = 3000  # held-out examples for the validation loss (a seeded sample; 0: all)
    mode: str = ""  # FIM layout of the examples; "": the format's default, as the server sends them
    seed: int = 0
    shard_rows: int = 16384
    workers: int | None = None  # tokenizing processes; None: one per core, 0: in this process


def masked(ids: list[int], prompt_len: int) -> np.ndarray:
    """An example as stored in rows: its first `prompt_len` ids negated (`~id`, no loss), the rest as they are."""
    out = np.asarray(ids, dtype=np.int32)
    out[:prompt_len] = ~out[:prompt_len]
    return out


def build_sft_data(mined_dir: Path, corpus_dir: Path | None, tokenizer_dir: Path, out_dir: Path, config: SftConfig, *,
                   force: bool = False, command: list[str] | None = None) -> dict:
    """Encode and pack the mined records (and `fim_share` of corpus FIM examples) into `out_dir`, in the
    data stage's layout (meta.json, {split}-NNNNN.npy, tokenizer/); returns meta.json's content."""
    from midline.training import data as D

    mined_dir, tokenizer_dir, out_dir = Path(mined_dir), Path(tokenizer_dir), Path(out_dir)
    if config.fim_share > 0 and corpus_dir is None:
        raise ValueError("a FIM share needs the corpus (--corpus), or pass --fim-share 0")
    if not 0 <= config.fim_share < 1:
        raise ValueError(f"fim_share must be in [0, 1), got {config.fim_share}")
    tokenizer = D.load_tokenizer(tokenizer_dir)
    seq_len = config.seq_len or _context_length(tokenizer_dir)
    mined_meta = read_json(mined_dir / "meta.json")
    if not (mined_meta or {}).get("complete"):
        raise FileNotFoundError(f"{mined_dir} holds no finished mining: run `midline-train sft-mine` first")
    params = {**asdict(config), "seq_len": seq_len, "workers": None,
              "tokenizer_sha256": sha256_file(tokenizer_dir / "tokenizer.json"), "mined": mined_meta["params"],
              "corpus": corpus_fingerprint(corpus_dir) if corpus_dir and config.fim_share else None}
    meta_path = out_dir / "meta.json"
    old = read_json(meta_path)
    if old and old.get("complete") and old.get("params") == params and not force:
        return old
    out_dir.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)
    for stale in out_dir.glob("*-[0-9][0-9][0-9][0-9][0-9].npy"):
        stale.unlink()

    mode = config.mode or None
    data_config = D.DataConfig(seq_len=seq_len, seed=config.seed, workers=0)
    workers = (os.cpu_count() or 1) if config.workers is None else config.workers
    pool = None
    if workers > 0:
        ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
        pool = ctx.Pool(workers, initializer=_init_worker,
                        initargs=(str(tokenizer_dir), seq_len + 1, mode, data_config))
    else:
        _init_worker(str(tokenizer_dir), seq_len + 1, mode, data_config)
    pad = tokenizer.convert_tokens_to_ids(FIM_PAD)
    splits = {}
    try:
        for split in SPLITS:
            rng = random.Random(f"{config.seed}/{split}")
            records = _choose(read_records(mined_dir, split), config, split, rng)
            asked = _run_jobs(pool, _encode_records, [records[i : i + 256] for i in range(0, len(records), 256)])
            stats = Counter(asked[2])
            sft_tokens = int(asked[1].sum())
            want = round(sft_tokens * config.fim_share / (1 - config.fim_share))
            fim = _fim_examples(pool, Path(corpus_dir) if corpus_dir else None, split, want, rng) if want else _empty()
            stats.update(fim[2])
            ids = np.concatenate([asked[0], fim[0]])
            lengths = np.concatenate([asked[1], fim[1]])
            order = np.random.default_rng([config.seed, SPLITS.index(split)]).permutation(len(lengths))
            shards, rows = _write_rows(out_dir, split, ids, lengths, order, seq_len + 1, pad, config.shard_rows)
            loss_tokens = int((ids >= 0).sum())  # tokens the loss is taken on: all but the prompts
            splits[split] = {"shards": shards, "rows": rows, "examples": len(lengths), "tokens": int(lengths.sum()),
                             "sft_tokens": sft_tokens, "fim_tokens": int(fim[1].sum()), "loss_tokens": loss_tokens,
                             "fill": round(int(lengths.sum()) / (rows * (seq_len + 1)), 4) if rows else 0.0,
                             **dict(sorted(stats.items()))}
    finally:
        if pool is not None:
            pool.close()
            pool.join()

    (out_dir / "tokenizer").mkdir(exist_ok=True)
    for name in D.TOKENIZER_FILES:
        if (tokenizer_dir / name).exists():
            shutil.copyfile(tokenizer_dir / name, out_dir / "tokenizer" / name)
    meta = {
        "seq_len": seq_len, "dtype": "int32", "vocab_size": len(tokenizer), "pad_id": pad,
        "eot_id": tokenizer.convert_tokens_to_ids(EOT), "tokenizer": str(tokenizer_dir.resolve()),
        "format": MIDLINE.name, "sft": True, "masking": "prompt tokens stored as ~id (no loss)", "splits": splits,
        "params": params, "command": command, "complete": True,
    }
    write_json(meta_path, meta, indent=1)
    return meta


def _context_length(model_dir: Path) -> int:
    config = read_json(Path(model_dir) / "config.json") or {}
    return int(config.get("max_position_embeddings") or 1024)


def _choose(records: list[dict], c: SftConfig, split: str, rng: random.Random) -> list[dict]:
    """At most max_per_kind records of each kind (and valid_examples in all for the held-out split); the
    training split's tests records `tests_repeat` times."""
    if c.max_per_kind:
        by_kind = defaultdict(list)
        for r in records:
            by_kind[r["kind"]].append(r)
        records = [r for kind in KINDS for r in sample(by_kind[kind], c.max_per_kind, rng)]
    if split == "valid" and c.valid_examples:
        records = sample(records, c.valid_examples, rng)
    if split == "train" and c.tests_repeat > 1:
        records += [r for r in records if r["kind"] == "tests"] * (c.tests_repeat - 1)
    return records


_WORKER: dict = {}


def _init_worker(tokenizer_dir: str, room: int, mode: str | None, data_config) -> None:
    from midline.training.data import load_tokenizer

    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER.update(tokenizer=load_tokenizer(Path(tokenizer_dir)), room=room, mode=mode, data_config=data_config)


Encoded = tuple[np.ndarray, np.ndarray, Counter]  # (ids of all examples, each example's length, counts)


def _encode_records(records: list[dict]) -> Encoded:
    tokenizer, room, mode = _WORKER["tokenizer"], _WORKER["room"], _WORKER["mode"]
    parts, lengths, stats = [], [], Counter()
    for record in records:
        encoded = encode_record(record, tokenizer, room, mode=mode)
        if encoded is None:
            stats[f"{record['kind']}_dropped"] += 1
            continue
        parts.append(masked(*encoded))
        lengths.append(len(encoded[0]))
        stats[record["kind"]] += 1
    return _joined(parts, lengths, stats)


def _encode_documents(docs: list[dict]) -> Encoded:
    from midline.training.data import document_examples, shown_repo

    tokenizer, config = _WORKER["tokenizer"], _WORKER["data_config"]
    parts, lengths, stats = [], [], Counter()
    for doc in docs:
        rng = random.Random(f"{config.seed}/fim/{doc['repo']}/{doc['path']}")
        for ids, _, _ in document_examples(doc["text"], rng, tokenizer, config, path=doc.get("path", ""),
                                           repo=shown_repo(doc.get("repo", ""))):
            parts.append(np.asarray(ids, dtype=np.int32))
            lengths.append(len(ids))
            stats["fim"] += 1
    return _joined(parts, lengths, stats)


def _fim_examples(pool, corpus_dir: Path, split: str, tokens: int, rng: random.Random) -> Encoded:
    """About `tokens` tokens of FIM examples from the corpus split's documents, taken in a seeded order."""
    from midline.training.data import BYTES_PER_TOKEN

    docs = [json.loads(line) for line in open(corpus_dir / f"{split}.jsonl", encoding="utf-8") if line.strip()]
    docs = [d for d in docs if d["text"]]
    rng.shuffle(docs)
    budget, taken = tokens * BYTES_PER_TOKEN * 1.15, 0
    chosen = []
    for doc in docs:
        if taken >= budget:
            break
        chosen.append(doc)
        taken += len(doc["text"].encode("utf-8", "surrogatepass"))
    ids, lengths, stats = _run_jobs(pool, _encode_documents, [chosen[i : i + 32] for i in range(0, len(chosen), 32)])
    keep = int(np.searchsorted(np.cumsum(lengths), tokens)) + 1  # the examples up to `tokens`
    if keep < len(lengths):
        ids, lengths, stats = ids[: int(lengths[:keep].sum())], lengths[:keep], Counter(fim=keep)
    return ids, lengths, stats


def _run_jobs(pool, function, jobs: list) -> Encoded:
    results = pool.map(function, jobs, chunksize=1) if pool is not None else [function(job) for job in jobs]
    stats: Counter = Counter()
    for r in results:
        stats.update(r[2])
    if not results:
        return _empty()
    return np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results]), stats


def _joined(parts: list[np.ndarray], lengths: list[int], stats: Counter) -> Encoded:
    return (np.concatenate(parts) if parts else np.zeros(0, np.int32)), np.asarray(lengths, dtype=np.int64), stats


def _empty() -> Encoded:
    return np.zeros(0, np.int32), np.zeros(0, np.int64), Counter()


def _write_rows(out_dir: Path, split: str, ids: np.ndarray, lengths: np.ndarray, order: np.ndarray, room: int, pad: int,
                shard_rows: int) -> tuple[list[str], int]:
    """Pack the examples (in `order`) whole into rows of `room` tokens padded with `pad`; write them in
    shards of `shard_rows` rows. Returns (shard file names, rows)."""
    from midline.training.data import packed_rows

    out = packed_rows(ids, lengths, order, room, pad, np.int32)
    names = []
    for s in range(0, max(len(out), 1), shard_rows):
        name = f"{split}-{s // shard_rows:05d}.npy"
        write_npy(out_dir / name, out[s : s + shard_rows])
        names.append(name)
    return names, len(out)


# -- the stage: mine, rows, fine-tune, export -----------------------------------------------------

# The fine-tune's defaults (any TrainConfig field can be set): a short cosine run at a tenth of the
# pre-training learning rate, validated and checkpointed often.
SFT_TRAIN = dict(lr=3e-4, min_lr=3e-5, warmup_steps=20, schedule="cosine", weight_decay=0.0, batch_size=32,
                 grad_accum=2, eval_every=100, eval_batches=10, log_every=10, checkpoint_minutes=2.0)
SHAPE_FIELDS = {"hidden_size", "layers", "heads", "kv_heads", "intermediate_size", "max_positions", "rope_theta",
                "tie_embeddings", "init"}


def finetune(model_dir: Path, out_dir: Path, *, corpus_dir: Path | None, mined_dir: Path | None = None,
             export_dir: Path | None = None, mine_config: MineConfig = MineConfig(),
             sft_config: SftConfig = SftConfig(), train_overrides: dict | None = None, epochs: float = 1.0,
             fresh: bool = False, command: list[str] | None = None, on_step=None) -> dict:
    """The `sft` stage: mine `corpus_dir` into <out>/mined (unless `mined_dir`), build <out>/data, fine-tune
    `model_dir` into <out>/run (resuming its checkpoint unless `fresh`), and export to `export_dir`
    (default <out>/export). Returns a summary."""
    from midline.training import export, train

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if mined_dir is None:
        if corpus_dir is None:
            raise ValueError("sft needs --corpus (to mine it) or --mined")
        mined_dir = out_dir / "mined"
        mine(corpus_dir, mined_dir, mine_config, command=command)
    data_dir, run_dir = out_dir / "data", out_dir / "run"
    meta = build_sft_data(mined_dir, corpus_dir, model_dir, data_dir, sft_config, command=command)
    config = train.TrainConfig(**{**SFT_TRAIN, **(train_overrides or {})})
    global_batch = config.batch_size * config.grad_accum * int(os.environ.get("WORLD_SIZE", "1"))
    if not (train_overrides or {}).get("max_steps") and not config.tokens:
        config = replace(config, max_steps=max(1, math.ceil(epochs * meta["splits"]["train"]["rows"] / global_batch)))
    config = replace(config, init=str(model_dir), warmup_steps=min(config.warmup_steps, max(1, config.max_steps // 10)))
    summary = train.train(config, data_dir, run_dir, fresh=fresh, command=command, on_step=on_step)
    export_dir = Path(export_dir) if export_dir else out_dir / "export"
    export.export(run_dir, export_dir, corpus_dir=corpus_dir, data_dir=data_dir,
                  command=[shlex_join(command)] if command else None)
    if (settings := model_dir / "midline.json").is_file():  # the base model's confidence floors, until recalibrated
        shutil.copyfile(settings, export_dir / "midline.json")
    return {**summary,
            "data": {split: {k: v for k, v in s.items() if k != "shards"} for split, s in meta["splits"].items()},
            "export": str(export_dir)}


def shlex_join(argv: list[str]) -> str:
    import shlex

    return shlex.join(argv)


# -- command line ---------------------------------------------------------------------------------


def add_parser(stages) -> None:
    """The `sft` subcommand."""
    s = SftConfig()
    p = stages.add_parser("sft", help="fine-tune a model on the mined tasks (+ a share of FIM), loss on the answers "
                                      "only; then export")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, metavar="DIR",
                   help="the model to fine-tune (default: %(default)s)")
    p.add_argument("--corpus", type=Path, metavar="DIR",
                   help="the corpus: mined unless --mined, and the FIM share's source")
    p.add_argument("--mined", type=Path, metavar="DIR",
                   help="`sft-mine` output (default: mine --corpus into OUT/mined)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="work dir: mined/, data/, run/ (checkpoint/, model/, loss.csv)")
    p.add_argument("--export", type=Path, metavar="DIR",
                   help="where the fine-tuned model is exported (default: OUT/export)")
    p.add_argument("--epochs", type=float, default=1.0,
                   help="passes over the SFT rows, unless --max-steps or --tokens (default: %(default)s)")
    p.add_argument("--fim-share", type=float, default=s.fim_share,
                   help="share of tokens from plain FIM examples (default: %(default)s)")
    p.add_argument("--seq-len", type=int, default=s.seq_len,
                   help="tokens per row (default: the model's context length)")
    p.add_argument("--max-per-kind", type=int, default=s.max_per_kind,
                   help="examples of each kind at most (default: all)")
    p.add_argument("--valid-examples", type=int, default=s.valid_examples,
                   help="held-out examples for the validation loss (default: %(default)s)")
    p.add_argument("--tests-repeat", type=int, default=s.tests_repeat,
                   help="copies of each tests example (default: %(default)s)")
    p.add_argument("--fresh", action="store_true", help="start the fine-tune over even if OUT/run has a checkpoint")
    mine_flags(p, MineConfig())
    from midline.training.train import CHOICES, TrainConfig, _int

    hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        if f.name in SHAPE_FIELDS or f.name == "seed":  # (--seed is the mining flag's, and seeds all)
            continue
        kind, flag = hints[f.name], "--" + f.name.replace("_", "-")
        default = SFT_TRAIN.get(f.name, f.default)
        if bool in (kind, *typing.get_args(kind)):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS)
        else:
            p.add_argument(flag, type=_int if kind is int else kind, default=argparse.SUPPRESS,
                           choices=CHOICES.get(f.name), help=f"default: {default!r}")
    p.set_defaults(run=run)

def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from midline.training.train import TrainConfig

    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
                 if hasattr(args, f.name) and f.name not in SHAPE_FIELDS}
    overrides["seed"] = args.seed
    sft_config = SftConfig(seq_len=args.seq_len, fim_share=args.fim_share, max_per_kind=args.max_per_kind,
                           tests_repeat=args.tests_repeat, valid_examples=args.valid_examples, seed=args.seed,
                           workers=args.workers)
    summary = finetune(args.model, args.out, corpus_dir=args.corpus, mined_dir=args.mined, export_dir=args.export,
                       mine_config=mine_config(args), sft_config=sft_config, train_overrides=overrides,
                       epochs=args.epochs, fresh=args.fresh, command=command())
    print(json.dumps(summary, indent=1))
    return 0
