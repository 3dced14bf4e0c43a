"""An instruction (chat) model for code actions: any local Hugging Face chat model, asked with its chat template.

Optional (`actions.model`): without one, actions ask the completion model in FIM shapes (`model/tasks.py`).
Loading goes through `model/loader.py` (safetensors only, never the hub); the model must have a chat
template. `generate` is a plain greedy loop over the model's KV cache that stops at an end-of-turn
token, the token limit, a cancel event or a deadline.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from midline.model.loader import ModelLoadError, load_model


@dataclass
class ChatReply:
    """One answer and how it ended."""

    text: str
    finish_reason: str  # "eot" | "length" | "cancelled" | "timeout"
    tokens: int
    elapsed_s: float


class InstructModel:
    """A loaded chat model and its tokenizer."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, device: torch.device, path: str = "") -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ModelLoadError(f"the model at {path or '?'} has no chat template: actions.model must be an instruction (chat) model")
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.path = path
        self.stop_ids = _stop_ids(tokenizer, model)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str | Path, *, device: str = "auto", trust_remote_code: bool = False) -> InstructModel:
        model, tokenizer, device_ = load_model(path, device=device, trust_remote_code=trust_remote_code)
        return cls(model, tokenizer, device_, str(path))

    def prompt_ids(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """The conversation rendered with the model's chat template, ready for the assistant's turn.

        Templates that refuse a system message (Gemma's) get it folded into the first user message.
        """
        try:
            text = self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        except Exception:  # jinja2 TemplateError from `raise_exception('System role not supported')`
            system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
            rest = [dict(m) for m in messages if m["role"] != "system"]
            if system and rest:
                rest[0]["content"] = f"{system}\n\n{rest[0]['content']}"
            text = self.tokenizer.apply_chat_template(rest, tokenize=False, add_generation_prompt=True)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def generate(
        self,
        messages: Sequence[dict[str, str]],
        *,
        max_new_tokens: int = 512,
        cancel: threading.Event | None = None,
        deadline: float | None = None,
    ) -> ChatReply:
        """The assistant's greedy answer to `messages`."""
        ids = self.prompt_ids(messages)
        max_context = getattr(self.model.config, "max_position_embeddings", None) or 4096
        ids = ids[-max(max_context // 2, max_context - max_new_tokens):]  # the prompt's end, at least half the context
        max_new_tokens = min(max_new_tokens, max_context - len(ids))
        start = time.monotonic()
        tokens: list[int] = []
        finish = "length"
        with self._lock, torch.inference_mode():
            cache = None
            feed = ids
            for _ in range(max_new_tokens):
                if cancel is not None and cancel.is_set():
                    finish = "cancelled"
                    break
                if deadline is not None and time.monotonic() > deadline:
                    finish = "timeout"
                    break
                out = self.model(input_ids=torch.tensor([feed], device=self.device), past_key_values=cache, use_cache=True)
                cache = out.past_key_values
                token = int(out.logits[0, -1].argmax())
                if token in self.stop_ids:
                    finish = "eot"
                    break
                tokens.append(token)
                feed = [token]
        text = self.tokenizer.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return ChatReply(text.rstrip("\ufffd"), finish, len(tokens), time.monotonic() - start)


def _stop_ids(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> frozenset[int]:
    """End-of-turn ids: the tokenizer's and generation config's EOS, and the chat families' end-of-turn tokens it has."""
    ids: set[int] = set()
    generation_config = getattr(model, "generation_config", None)
    for eos in (tokenizer.eos_token_id, getattr(generation_config, "eos_token_id", None)):
        if isinstance(eos, int):
            ids.add(eos)
        elif eos:
            ids.update(eos)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>") if t in vocab)
    return frozenset(ids)
