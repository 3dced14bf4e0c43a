"""Tokenizer stage: a byte-level BPE tokenizer with midline's FIM tokens reserved from the start.

Byte-level means every string round-trips exactly (whitespace, tabs, any unicode), which code needs.
The special tokens take ids 0..6 in `fim.SPECIAL_TOKENS` order, EOT first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from midline.model.fim import EOT, FIM_PAD, SPECIAL_TOKENS


def train_tokenizer(files: Iterable[Path], vocab_size: int, out_dir: Path) -> PreTrainedTokenizerFast:
    """Train on the files' text, save to `out_dir` (loadable with `AutoTokenizer`), and return it."""
    files = [Path(f) for f in files]
    if not files:
        raise ValueError("no files to train the tokenizer on")
    return train_tokenizer_on_texts(_texts(files), vocab_size, out_dir, length=len(files))


def train_tokenizer_on_texts(
    texts: Iterable[str], vocab_size: int, out_dir: Path, *, length: int | None = None
) -> PreTrainedTokenizerFast:
    """Train on texts (e.g. a corpus split), save to `out_dir`, and return the tokenizer."""
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} (256 bytes + {len(SPECIAL_TOKENS)} special tokens)")

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)  # in code, whitespace is content
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=length)

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOT,
        eos_token=EOT,
        pad_token=FIM_PAD,
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
        clean_up_tokenization_spaces=False,
    )
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(out_dir)
    return wrapped


def _texts(files: list[Path]) -> Iterator[str]:
    for path in files:
        yield path.read_text(encoding="utf-8", errors="replace")
