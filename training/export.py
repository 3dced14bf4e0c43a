"""Export stage: a trained run as the model directory midline ships and loads by default.

`export` reads `<run>/model` (safetensors only) and writes, to `midline.model.DEFAULT_MODEL_DIR` unless told
otherwise: config.json, bfloat16 safetensors in shards of at most `max_shard_mb` MB (with their index),
the tokenizer files, generation_config.json (greedy; eos = EOT, pad = FIM_PAD) and a model card README.md
(data and filter counts, tokenizer, architecture, hyperparameters, tokens seen, training time and
hardware, evaluation figures, and the commands that made it).

The weights must total at most 60 MB, in files of at most 16 MiB (what comes back from the training
machine, and what the package ships); a single tensor cannot be split across files, so the largest one
must fit a shard. The new directory is written beside the old one, checked by loading it with midline's
loader, then swapped in; files in the old directory that are not model files are carried over.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from midline.model import DEFAULT_MODEL_DIR, fim, languages
from midline.model.loader import ModelLoadError, check_model_dir, load_model, resolve_dtype
from midline.model import gguf_export
from midline.training.stage import command_line

MAX_TOTAL_MB = 60.0  # all weight files together, in MB (10^6 bytes)
MAX_FILE_BYTES = 16 * 2**20  # any one file
MB = 10**6
# Files an export writes or replaces; anything else in the output directory is kept.
MODEL_FILES = (
    "config.json", "generation_config.json", "README.md", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt",
    "tokenizer.model", "chat_template.jinja",
)
MODEL_SUFFIXES = (".safetensors", ".safetensors.index.json")


class ExportError(RuntimeError):
    """The model can't be exported as asked; the message says why and what to do."""


def export(
    run_dir: Path,
    out_dir: Path = DEFAULT_MODEL_DIR,
    *,
    corpus_dir: Path | None = None,
    data_dir: Path | None = None,
    eval_report: Path | None = None,
    command: str | list[str] | None = None,
    hardware: str | None = None,
    dtype: str = "bfloat16",
    max_shard_mb: float = 15.0,
    max_total_mb: float = MAX_TOTAL_MB,
    allow_large: bool = False,
) -> Path:
    """Export `<run_dir>/model` to `out_dir` (see the module docstring); returns `out_dir`."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    transformers.utils.logging.disable_progress_bar()
    model, tokenizer = _load(run_dir / "model", dtype)
    _check_sizes(model, max_shard_mb, max_total_mb, allow_large)
    _set_generation_config(model, tokenizer)
    card = CardInputs.gather(model, tokenizer, run_dir, corpus_dir, data_dir, eval_report, command, hardware)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-export-", dir=out_dir.parent))
    try:
        model.save_pretrained(staging, max_shard_size=int(max_shard_mb * MB))
        tokenizer.save_pretrained(staging)
        card.files = _weight_files(staging)
        (staging / "README.md").write_text(model_card(card), encoding="utf-8")
        if card.languages:  # the server completes these languages by default (engine.model_settings)
            (staging / "midline.json").write_text(json.dumps({"languages": card.languages}, indent=2) + "\n",
                                                  encoding="utf-8")
        _check_files(staging, max_total_mb, allow_large)
        _verify(staging, model)
        _install(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


# -- loading and checks ---------------------------------------------------------------------------


def _load(model_dir: Path, dtype: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    check_model_dir(model_dir)  # safetensors only, with clear errors
    torch_dtype = resolve_dtype(dtype, torch.device("cpu"))
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, use_safetensors=True,
                                                 dtype=torch_dtype)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    fim.detect(tokenizer.get_vocab())  # FimFormatError if the tokenizer lacks FIM tokens
    return model.eval(), tokenizer


def _check_sizes(model: PreTrainedModel, max_shard_mb: float, max_total_mb: float, allow_large: bool) -> None:
    """Refuse before writing: weights over `max_total_mb`, or a tensor that fits no shard."""
    if allow_large:
        return
    sizes = _tensor_bytes(model)
    total = sum(sizes.values())
    if total > max_total_mb * MB:
        raise ExportError(
            f"the weights total {total / MB:.1f} MB, over the {max_total_mb:g} MB limit of a shipped model: "
            "train a smaller model, or pass --allow-large to export it anyway"
        )
    name, largest = max(sizes.items(), key=lambda item: item[1])
    if largest > min(max_shard_mb * MB, MAX_FILE_BYTES):
        raise ExportError(
            f"tensor {name} is {largest / MB:.1f} MB, more than a {max_shard_mb:g} MB shard: a tensor cannot be split "
            "across files. Use a smaller vocabulary or hidden size (or a larger --max-shard-mb, up to 16 MiB)"
        )


def _tensor_bytes(model: PreTrainedModel) -> dict[str, int]:
    """Bytes of each distinct tensor (tied weights count once, as they are saved once)."""
    sizes: dict[str, int] = {}
    seen: set[int] = set()
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        sizes[name] = tensor.numel() * tensor.element_size()
    return sizes


def _set_generation_config(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Greedy decoding that ends at EOT and pads with FIM_PAD (midline's own tokens)."""
    vocab = tokenizer.get_vocab()
    eos = vocab.get(fim.EOT, tokenizer.eos_token_id)
    pad = vocab.get(fim.FIM_PAD, tokenizer.pad_token_id)
    model.config.eos_token_id, model.config.pad_token_id = eos, pad
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, pad_token_id=pad,
                                               do_sample=False)


def _weight_files(folder: Path) -> list[tuple[str, int]]:
    return sorted((p.name, p.stat().st_size) for p in folder.glob("*.safetensors"))


def _check_files(folder: Path, max_total_mb: float, allow_large: bool) -> None:
    """What was written: every file under 16 MiB, weights within the total."""
    if allow_large:
        return
    too_big = [f"{p.name} ({p.stat().st_size / 2**20:.1f} MiB)" for p in folder.iterdir()
               if p.stat().st_size > MAX_FILE_BYTES]
    if too_big:
        raise ExportError(f"files over 16 MiB: {', '.join(too_big)}; lower --max-shard-mb")
    total = sum(size for _, size in _weight_files(folder))
    if total > max_total_mb * MB:
        raise ExportError(f"the weight files total {total / MB:.1f} MB, over the {max_total_mb:g} MB limit; "
                          "pass --allow-large to export anyway")


def _verify(folder: Path, model: PreTrainedModel) -> None:
    """Load the export with midline's loader and check it holds exactly the (cast) weights."""
    loaded, tokenizer, _ = load_model(folder, device="cpu", dtype=model.dtype)
    fim.detect(tokenizer.get_vocab())
    expected = model.state_dict()
    for name, tensor in loaded.state_dict().items():
        if name in expected and not torch.equal(tensor, expected[name]):
            raise ExportError(f"the exported weights differ from the run's at {name}")


def _install(staging: Path, out_dir: Path) -> None:
    """Swap the staged directory in for `out_dir`, carrying over files that are not model files."""
    staging.chmod(0o755)
    for path in staging.iterdir():
        path.chmod(0o644)
    if not out_dir.exists():
        os.rename(staging, out_dir)
        return
    for path in out_dir.iterdir():
        if not is_model_file(path.name) and not (staging / path.name).exists():
            if path.is_dir() and not path.is_symlink():
                shutil.copytree(path, staging / path.name, symlinks=True)
            else:
                shutil.copy2(path, staging / path.name, follow_symlinks=False)
    old = out_dir.with_name(f".{out_dir.name}-old-{uuid.uuid4().hex[:8]}")
    os.rename(out_dir, old)
    os.rename(staging, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def is_model_file(name: str) -> bool:
    return name in MODEL_FILES or name.endswith(MODEL_SUFFIXES)


# -- the model card -------------------------------------------------------------------------------


@dataclass
class CardInputs:
    """Everything the model card reports; any input may be missing."""

    config: dict[str, Any]
    parameters: int
    tokenizer: dict[str, Any]
    state: dict[str, Any] | None = None
    loss: dict[str, Any] | None = None
    manifest: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    report: dict[str, Any] | None = None
    commands: list[str] = field(default_factory=list)
    hardware: str | None = None
    files: list[tuple[str, int]] = field(default_factory=list)

    @property
    def languages(self) -> list[str]:
        """The languages of the corpus's file extensions (none without a corpus manifest)."""
        extensions = ((self.manifest or {}).get("params") or {}).get("extensions") or []
        names = {languages.resolve(None, f"file{ext}").name for ext in extensions}
        return sorted(names - {languages.PLAIN_TEXT.name})

    @classmethod
    def gather(
        cls,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        run_dir: Path,
        corpus_dir: Path | None,
        data_dir: Path | None,
        eval_report: Path | None,
        command: str | list[str] | None,
        hardware: str | None,
    ) -> CardInputs:
        state = _read_json(run_dir / "checkpoint" / "state.json")
        manifest = _read_json(Path(corpus_dir) / "manifest.json") if corpus_dir else None
        data = _read_json(Path(data_dir) / "meta.json") if data_dir else None
        report = _read_json(Path(eval_report)) if eval_report else None
        given = [command] if isinstance(command, str) else list(command or [])
        recorded = [d.get("command") for d in (manifest, data, state, report) if d]
        return cls(
            config=model.config.to_dict(),
            parameters=sum(p.numel() for p in model.parameters()),
            tokenizer=_tokenizer_facts(tokenizer),
            state=state,
            loss=_last_loss(run_dir / "loss.csv"),
            manifest=manifest,
            data=data,
            report=report,
            commands=list(dict.fromkeys(_command_lines(recorded) + given)),
            hardware=_hardware(state) or hardware,
        )


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ExportError(f"could not read {path}: {e}") from e


def _command_lines(values: list[Any]) -> list[str]:
    """Recorded commands as shell lines (a stage may record a string or an argv list)."""
    lines = []
    for value in values:
        if isinstance(value, str) and value:
            lines.append(value)
        elif isinstance(value, list) and value:
            lines.append(shlex.join(map(str, value)))
    return lines


def _tokenizer_facts(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    vocab = tokenizer.get_vocab()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    kind = type(backend.model).__name__ if backend is not None else type(tokenizer).__name__
    if backend is not None and type(backend.pre_tokenizer).__name__ == "ByteLevel":
        kind = f"byte-level {kind}"
    return {"kind": kind, "vocab_size": len(tokenizer),
            "special": {t: vocab[t] for t in fim.SPECIAL_TOKENS if t in vocab}}


def _last_loss(path: Path) -> dict | None:
    """The last row of loss.csv, and how many rows it has."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        return None
    return {"rows": len(rows), "last": rows[-1]} if rows else None


def _hardware(state: dict | None) -> str | None:
    """The device the run recorded (e.g. `torch.cuda.get_device_name()`), if any; with the process count."""
    state = state or {}
    for source in (state, state.get("config") or {}):
        for key in ("device_name", "hardware", "gpu"):
            if source.get(key):
                world = state.get("world")
                return f"{world} x {source[key]}" if isinstance(world, int) and world > 1 else str(source[key])
    return None


def model_card(card: CardInputs) -> str:
    """The README.md of the exported model."""
    sections = [
        _card_intro(card), _card_use(), _card_data(card), _card_tokenizer(card), _card_architecture(card),
        _card_training(card), _card_evaluation(card), _card_commands(card), _card_licence(card), _card_limitations(),
    ]
    return "\n\n".join(s.strip("\n") for s in sections if s) + "\n"


def _card_intro(card: CardInputs) -> str:
    weights = sum(size for _, size in card.files)
    base = ((card.state or {}).get("config") or {}).get("init")
    origin = f"fine-tuned from `{base}`" if base else "trained from scratch"
    return (
        f"# midline code model ({card.parameters / 1e6:.1f}M parameters)\n\n"
        f"A {card.config.get('model_type', 'causal')} language model {origin} with `midline-train` for "
        "fill-in-the-middle code completion, served by midline's language server. It is midline's default model.\n\n"
        f"Weights: {card.config.get('dtype') or card.config.get('torch_dtype') or 'bfloat16'} safetensors, "
        f"{len(card.files)} file(s), {weights / MB:.1f} MB.\n\n"
        f"Languages: {', '.join(card.languages) or 'not recorded'} (the training corpus's; its `midline.json` names "
        "them, and midline completes only those by default)."
    )


def _card_use() -> str:
    return f"""## Use

midline loads this directory by default (`midline.model` unset). With transformers, load it as a causal LM
(`AutoModelForCausalLM.from_pretrained(path)`) and prompt in midline's FIM format, suffix first (SPM):

```
{fim.FIM_SUFFIX}{{suffix}}{fim.FIM_PREFIX}{{prefix}}{fim.FIM_MIDDLE}
```

The model writes the middle and ends it with `{fim.EOT}`. The PSM order (prefix first) is trained too.
Other files can come first as `{fim.FILE_SEP}path\\ncode` documents (see `midline/model/fim.py`)."""


def _card_data(card: CardInputs) -> str:
    if not card.manifest:
        return "## Training data\n\nNot recorded (export without `--corpus`)."
    m = card.manifest
    parts = ["## Training data"]
    for title, key in (("Counts", "counts"), ("Filters and redactions", "redactions"), ("Split", "split")):
        if m.get(key) is not None:
            parts.append(f"{title}:\n\n{_table(m[key])}")
    if m.get("params") is not None:
        parts.append(f"Corpus parameters:\n\n{_table(m['params'])}")
    return "\n\n".join(parts)


def _card_tokenizer(card: CardInputs) -> str:
    t = card.tokenizer
    special = {f"`{token}`": i for token, i in t["special"].items()}
    return (f"## Tokenizer\n\n{t['kind']}, vocabulary {t['vocab_size']:,} tokens. Special tokens:\n\n"
            + _table(special, header=("token", "id")))


def _card_architecture(card: CardInputs) -> str:
    c = card.config
    hidden, heads = c.get("hidden_size"), c.get("num_attention_heads")
    rope = c.get("rope_parameters") or {}
    facts = {
        "architecture": ", ".join(c.get("architectures") or [c.get("model_type", "?")]),
        "layers": c.get("num_hidden_layers"),
        "hidden size": hidden,
        "MLP size": c.get("intermediate_size"),
        "attention heads": heads,
        "key/value heads": c.get("num_key_value_heads", heads),
        "head size": c.get("head_dim") or (hidden // heads if hidden and heads else None),
        "vocabulary": c.get("vocab_size"),
        "context length": c.get("max_position_embeddings"),
        "RoPE theta": rope.get("rope_theta", c.get("rope_theta")),
        "tied embeddings": c.get("tie_word_embeddings"),
        "parameters": card.parameters,
    }
    return "## Architecture\n\n" + _table({k: v for k, v in facts.items() if v is not None})


def _card_training(card: CardInputs) -> str:
    state = card.state or {}
    facts = {
        "steps": state.get("step"),
        "tokens seen": state.get("tokens_seen", state.get("tokens")),
        "training time": _duration(state["elapsed_s"]) if state.get("elapsed_s") is not None else None,
        "hardware": card.hardware,
        "processes": state.get("world"),
        "final train loss": state.get("train_loss"),
        "final validation loss": state.get("val_loss"),
    }
    if card.loss:
        facts |= {f"last logged {k}": v for k, v in card.loss["last"].items()}
    facts = {k: v for k, v in facts.items() if v is not None}
    parts = ["## Training", _table(facts) if facts else "Not recorded (no checkpoint/state.json in the run)."]
    if state.get("config"):
        parts.append("Hyperparameters:\n\n" + _table(state["config"]))
    if card.data:
        shown = {k: v for k, v in card.data.items() if k not in ("params", "complete", "tokenizer")}
        parts.append("Training examples (data stage):\n\n" + _table(shown))
    return "\n\n".join(parts)


def _card_evaluation(card: CardInputs) -> str:
    report = card.report
    if not report:
        return "## Evaluation\n\nNot recorded (export without `--eval`)."
    rows = []
    for kind, m in (report.get("metrics") or {}).items():
        if m.get("n"):
            rows.append([kind, m["n"], _pct(m.get("exact_match")), _pct(m.get("edit_similarity")),
                         _pct(m.get("empty_rate")), _num(m.get("latency_ms_mean")), _num(m.get("tokens_mean"))])
    parts = [
        "## Evaluation",
        "Infilling on held-out files through midline's own completion path (prompt building, greedy decoding, "
        "post-processing), as `midline-train evaluate` reports it:",
        _grid(["tasks", "n", "exact match", "edit similarity", "empty", "latency ms", "tokens"], rows),
    ]
    functional = report.get("functional")
    if functional and functional.get("tasks"):
        parts.append(
            f"Functional: pass@1 {_pct(functional.get('pass_at_1'))} on {functional.get('counted')} functions "
            "whose doctests the original code passes and the code with the hole fails "
            f"({functional.get('original_passed')}/{functional.get('tasks')} originals pass)."
        )
    loss = report.get("loss")
    if loss and loss.get("tokens"):
        parts.append(
            f"Validation loss: {_num(loss.get('nats_per_token'), 4)} nats/token, "
            f"{_num(loss.get('bits_per_byte'), 4)} bits/byte "
            f"({loss.get('docs')} held-out documents, {loss.get('tokens'):,} tokens)."
        )
    settings = report.get("settings") or {}
    tasks = report.get("tasks") or {}
    parts.append(
        f"Settings: device {report.get('device', '?')}, max new tokens {settings.get('max_new_tokens', '?')}, "
        f"task file sha256 `{tasks.get('sha256') or '?'}`."
    )
    return "\n\n".join(parts)


def _card_commands(card: CardInputs) -> str:
    if not card.commands:
        return "## Reproduce\n\nThe commands were not recorded."
    return "## Reproduce\n\n```sh\n" + "\n".join(card.commands) + "\n```"


def _card_licence(card: CardInputs) -> str:
    """The weights' licence (midline's), and the training data's licences where the corpus recorded them."""
    text = ("## Licence\n\nThe weights are released under Apache-2.0, midline's licence (`LICENSE` in its "
            "repository).")
    licences = (card.manifest or {}).get("licences")
    if licences and all(isinstance(v, dict) for v in licences.values()):  # {licence: {files, bytes, tokens}}
        rows = [[k, f"{v.get('files', 0):,}", f"{v.get('bytes', 0) / 1e6:.1f}", f"{v.get('tokens', 0):,}"]
                for k, v in licences.items()]
        tokens = card.manifest.get("tokens", "")  # type: ignore[union-attr]
        return (f"{text} The corpus's files' licences (training and validation), as the corpus stage recorded them "
                f"(tokens {tokens}):\n\n"
                + _grid(["licence", "files", "MB", "tokens"], rows))
    if licences:
        return f"{text} The training files' licences, as the corpus stage recorded them:\n\n{_table(licences)}"
    return f"{text} The corpus stage did not record the training files' licences."


def _card_limitations() -> str:
    return """## Limitations

A small model trained for short completions: it knows common code patterns, not your project's, and it is
often wrong. It can reproduce code from its training data. Review what it suggests."""


def _table(data: Any, header: tuple[str, str] = ("", "")) -> str:
    """A two-column markdown table of a (flattened) mapping; other values as one line."""
    if not isinstance(data, dict):
        return f"`{json.dumps(data)}`"
    rows = [[k, _value(v)] for k, v in _flatten(data).items()]
    return _grid(list(header), rows)


def _grid(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat |= _flatten(value, name + ".")
        else:
            flat[name] = value
    return flat


def _value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{int(value):,}" if value.is_integer() and abs(value) < 1e15 else f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return f"{len(value)} items" if len(value) > 8 else f"`{json.dumps(value)}`"
    return str(value)


def _num(value: Any, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min ({seconds:,.0f} s)" if hours else f"{minutes} min ({seconds:,.0f} s)"


# -- command line ---------------------------------------------------------------------------------


def add_parser(stages: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The `export` subcommand."""
    p = stages.add_parser("export",
                          help="write a trained run as midline's default model (bf16, sharded, with a model card), "
                               "or a model directory as GGUF for llama.cpp (--gguf)")
    p.add_argument("--run", dest="run_dir", type=Path, metavar="DIR",
                   help="training run dir (with model/ and checkpoint/state.json); required unless --gguf")
    p.add_argument("--out", type=Path, metavar="PATH",
                   help=f"the model directory (default: {DEFAULT_MODEL_DIR}); with --gguf the .gguf file "
                        "(default: <model name>-<type>.gguf here)")
    p.add_argument("--gguf", choices=gguf_export.WEIGHT_TYPES, metavar="TYPE",
                   help=f"write --model as one GGUF file with these weights ({', '.join(gguf_export.WEIGHT_TYPES)})")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, metavar="DIR",
                   help="with --gguf: any local FIM model directory midline loads (default: midline's model)")
    p.add_argument("--pre", type=gguf_export.valid_pre_name, metavar="NAME",
                   help="with --gguf: llama.cpp's pre-tokenizer name, when midline cannot tell it from tokenizer.json")
    p.add_argument("--corpus", type=Path, metavar="DIR", help="corpus dir, for the data section (manifest.json)")
    p.add_argument("--data", type=Path, metavar="DIR", help="data dir, for the example settings (meta.json)")
    p.add_argument("--eval", type=Path, metavar="FILE",
                   help="evaluation report (JSON from `midline-train evaluate --out`)")
    p.add_argument("--command", action="append", metavar="STR",
                   help="a command that made the model, for the card (repeatable)")
    p.add_argument("--hardware", metavar="STR", help="training hardware, if the run did not record it")
    p.add_argument("--max-shard-mb", type=float, default=15.0, help="weight file size in MB (default: %(default)s)")
    p.add_argument("--allow-large", action="store_true",
                   help=f"allow weights over {MAX_TOTAL_MB:g} MB and files over 16 MiB")
    p.set_defaults(run=run)  # (so --run is stored as run_dir)
    return p


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.gguf:
        try:
            path = gguf_export.export_gguf(args.model, args.out, args.gguf, pre=args.pre)
        except (gguf_export.GgufExportError, fim.FimFormatError) as e:
            parser.error(str(e))
        print(f"wrote {path} ({path.stat().st_size / MB:.1f} MB, {args.gguf})")
        return 0
    if args.run_dir is None:
        parser.error("export needs --run DIR (or --gguf TYPE to write a model directory as GGUF)")
    commands = [*(args.command or []), command_line()]
    try:
        out = export(
            args.run_dir, args.out or DEFAULT_MODEL_DIR, corpus_dir=args.corpus, data_dir=args.data,
            eval_report=args.eval, command=commands,
            hardware=args.hardware, max_shard_mb=args.max_shard_mb, allow_large=args.allow_large,
        )
    except (ExportError, ModelLoadError, fim.FimFormatError) as e:
        parser.error(str(e))
    files = _weight_files(out)
    print(f"exported {len(files)} weight file(s), {sum(size for _, size in files) / MB:.1f} MB, to {out}")
    return 0
