"""An instruction (chat) model for code actions: any local Hugging Face chat model, asked with its chat template.

Optional (`actions.model`): without one, actions ask the completion model in FIM shapes (`model/tasks.py`).
Loading goes through `model/loader.py` (safetensors only, never the hub); the model must have a chat
template. `generate` decodes greedily with `Engine.generate`, stopping at an end-of-turn token, the token
limit, a cancel event or a deadline.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from midline.model.engine import Engine
from midline.model.loader import ModelLoadError, load_model

# End-of-turn tokens of the chat families (besides the tokenizer's and generation config's EOS).
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")


@dataclass
class ChatReply:
    """One answer and how it ended."""

    text: str
    finish_reason: str  # "eot" | "length" | "cancelled" | "timeout"
    tokens: int
    elapsed_s: float


class InstructModel:
    """A loaded chat model and its tokenizer, decoded by midline's engine."""

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, device: torch.device, path: str = ""
    ) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ModelLoadError(
                f"the model at {path or '?'} has no chat template: actions.model must be an instruction (chat) model"
            )
        self.tokenizer = tokenizer
        self.path = path
        self.engine = Engine(model, tokenizer, device, None, stop_tokens=END_OF_TURN, static=False)

    @classmethod
    def load(cls, path: str | Path, *, device: str = "auto", trust_remote_code: bool = False) -> InstructModel:
        model, tokenizer, device_ = load_model(path, device=device, trust_remote_code=trust_remote_code)
        return cls(model, tokenizer, device_, str(path))

    @property
    def stop_ids(self) -> frozenset[int]:
        return self.engine.stop_ids

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
        max_context = self.engine.max_context
        ids = ids[-max(max_context // 2, max_context - max_new_tokens):]  # the prompt's end, at least half the context
        max_new_tokens = max(1, min(max_new_tokens, max_context - len(ids)))
        reply = self.engine.generate(ids, max_new_tokens=max_new_tokens, cancel=cancel, deadline=deadline)
        return ChatReply(reply.text, reply.finish_reason, len(reply.token_ids), reply.elapsed_s)
