"""Tokenizer stage: a byte-level BPE tokenizer with midline's FIM tokens reserved from the start.

Byte-level means every string round-trips exactly (whitespace, tabs, any unicode), which code needs.
The special tokens take ids 0..6 in `fim.SPECIAL_TOKENS` order, EOT first.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from midline.model.fim import EOT, FIM_PAD, SPECIAL_TOKENS
from midline.training import corpus
from midline.training.stage import expand_files


def train_tokenizer(files: Iterable[Path], vocab_size: int, out_dir: Path) -> PreTrainedTokenizerFast:
    """Train on the files' text, save to `out_dir` (loadable with `AutoTokenizer`), and return it."""
    files = [Path(f) for f in files]
    if not files:
        raise ValueError("no files to train the tokenizer on")
    return train_tokenizer_on_texts(_texts(files), vocab_size, out_dir, length=len(files))


def train_tokenizer_on_texts(
    texts: Iterable[str], vocab_size: int, out_dir: Path, *, length: int | None = None,
    special_tokens: Sequence[str] = SPECIAL_TOKENS, bos: str | None = EOT, eos: str = EOT, pad: str | None = FIM_PAD,
) -> PreTrainedTokenizerFast:
    """Train on texts (e.g. a corpus split), save to `out_dir`, and return the tokenizer. The special tokens are
    midline's unless given (another family's, for `tiny_model.make_family_model`); they take the first ids."""
    if vocab_size < 256 + len(special_tokens):
        raise ValueError(f"vocab_size must be at least {256 + len(special_tokens)} "
                         f"(256 bytes + {len(special_tokens)} special tokens)")

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)  # in code, whitespace is content
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=length)

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        additional_special_tokens=[t for t in special_tokens if t not in (bos, eos)],
        clean_up_tokenization_spaces=False,
    )
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(out_dir)
    return wrapped


def _texts(files: list[Path]) -> Iterator[str]:
    for path in files:
        yield path.read_text(encoding="utf-8", errors="replace")


# -- command line ---------------------------------------------------------------------------------


def add_parser(stages) -> None:
    """The `tokenizer` subcommand."""
    p = stages.add_parser("tokenizer", help="train a byte-level BPE tokenizer with midline's FIM tokens")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--corpus", type=Path, metavar="DIR", help="a corpus from the corpus stage (its train split)")
    source.add_argument("--files", nargs="+", metavar="GLOB", help="training text files (globs, ** allowed)")
    p.add_argument("--vocab-size", type=int, default=16384)
    p.add_argument("--out", type=Path, required=True, metavar="DIR")
    p.add_argument("--force", action="store_true", help="train again even if DIR has a tokenizer")
    p.set_defaults(run=run)


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if (args.out / "tokenizer.json").is_file() and not args.force:
        print(f"{args.out} already has a tokenizer (--force to train again)")
        return 0
    start = time.monotonic()
    if args.corpus:
        texts = (record["text"] for record in corpus.read_split(args.corpus, "train"))
        tok = train_tokenizer_on_texts(texts, args.vocab_size, args.out)
        source = str(args.corpus)
    else:
        files = expand_files(parser, args.files)
        tok = train_tokenizer(files, args.vocab_size, args.out)
        source = f"{len(files)} files"
    print(f"wrote a tokenizer (vocab {len(tok)}, {source}) to {args.out} in {time.monotonic() - start:.1f} s")
    return 0
