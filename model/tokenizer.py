"""A model's tokenizer read with `tokenizers` alone (no transformers, no torch), for the llama.cpp engine.

It encodes and decodes exactly as the Hugging Face fast tokenizer of the same directory does with the arguments midline
uses (`fim.encode_text`: no added special tokens, special-token strings in the text encoded as text; decoding skips
special tokens and cleans up nothing): tests/model/test_llamacpp.py compares the two on real code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from midline.model.backend import ModelLoadError


class FastTokenizer:
    """tokenizer.json (and tokenizer_config.json's BOS and EOS tokens) as the part of a Hugging Face tokenizer midline
    uses: `fim.Tokenizer` (encode, convert_tokens_to_ids, bos_token_id), `eos_token_id`, `get_vocab` and `decode`."""

    def __init__(self, tokenizer: Tokenizer, config: dict[str, Any]):
        self._tokenizer = tokenizer
        self._vocab: dict[str, int] = tokenizer.get_vocab(with_added_tokens=True)
        self._special = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
        self.bos_token_id = self._vocab.get(_content(config.get("bos_token")) or "")
        self.eos_token_id = self._vocab.get(_content(config.get("eos_token")) or "")

    @classmethod
    def load(cls, path: Path) -> FastTokenizer:
        """The tokenizer of a model directory (its tokenizer.json; a ModelLoadError if it has none)."""
        file = path / "tokenizer.json"
        if not file.is_file():
            raise ModelLoadError(f"{path} has no tokenizer.json (the llama.cpp engine reads fast tokenizers only)")
        config_file = path / "tokenizer_config.json"
        config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
        return cls(Tokenizer.from_file(str(file)), config)

    def encode(
        self, text: str, add_special_tokens: bool = False, split_special_tokens: bool = True, verbose: bool = False
    ) -> list[int]:
        """Token ids of `text`; with `split_special_tokens`, a special token's string in it is encoded as text."""
        self._tokenizer.encode_special_tokens = split_special_tokens
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def convert_tokens_to_ids(self, tokens: str) -> int | None:
        return self._vocab.get(tokens)

    def get_vocab(self) -> dict[str, int]:
        return dict(self._vocab)

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def is_special(self, token: str) -> bool:
        return token in self._special


def _content(token: Any) -> str | None:
    """A tokenizer_config token entry's text (a string, or an AddedToken's dict)."""
    return token.get("content") if isinstance(token, dict) else token
