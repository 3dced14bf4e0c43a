"""The seam between the server and what generates: the `Backend` protocol, its prompts and its generations.

Two kinds of backend have it: the local model (`model/engine.py`'s `Engine`) and a serving engine over HTTP
(`model/remote.py`'s `RemoteEngine`). The server's `Completer` and `Assistant` are written against `Backend`
only: they encode a FIM prompt, generate from it, and size their windows with `count_tokens`.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, TypeAlias, TypeVar

from midline.model.fim import FimFormat, FimPrompt, Mode

if TYPE_CHECKING:
    from midline.model.remote import RemotePrompt

# What `Backend.encode` makes and `Backend.generate` takes: token ids for the local model, a `RemotePrompt`
# (rendered text, or llama.cpp's parts) for a served one. Either way a sequence, so `tuple(prompt)` is a cache key.
EncodedPrompt: TypeAlias = "list[int] | RemotePrompt"
# One backend's own kind of encoded prompt (`Backend` alone, as the server writes it, takes any).
PromptT = TypeVar("PromptT", bound=EncodedPrompt)

# How the model's confidence floors are given (its midline.json): one, or one per cursor position.
Floor: TypeAlias = "float | dict[str, float] | None"


class ModelLoadError(RuntimeError):
    """The model can't be loaded; the message says what is wrong and how to fix it. (Defined here, without
    torch, so that the server can catch it before the loader's modules are imported.)"""


@dataclass
class Generation:
    """One completion and how it ended."""

    text: str  # decoded generated text (stop token excluded)
    token_ids: list[int]
    finish_reason: str  # "eot" | "length" | "stop" | "cancelled" | "timeout"
    mean_logprob: float  # mean log-probability of the generated tokens (nan if none)
    prompt_tokens: int  # prompt length actually fed to the model (after any truncation)
    elapsed_s: float
    reused_tokens: int = 0  # leading prompt tokens whose KV cache came from the previous generation
    token_logprobs: list[float] = field(default_factory=list)  # log-probability of each generated token

    @classmethod
    def of(cls, text: str, token_ids: list[int], logprobs: list[float], finish_reason: str, prompt_tokens: int,
           elapsed_s: float, reused_tokens: int = 0) -> Generation:
        """A local engine's generation: its mean log-probability is that of its tokens' (nan for none)."""
        mean = sum(logprobs) / len(logprobs) if logprobs else math.nan
        return cls(text, token_ids, finish_reason, mean, prompt_tokens, elapsed_s, reused_tokens, logprobs)


class Backend(Protocol[PromptT]):
    """What the server uses of a model: a FIM format, a context size, token counts, encode and generate.

    `generate` takes what this backend's `encode` makes (`PromptT`). The attributes are only read, so a
    backend may hold narrower values (a served model always has a FIM format, and no floors)."""

    @property
    def fim(self) -> FimFormat | None:
        """The served model's FIM format (None: a chat model, which cannot encode FIM prompts)."""
        ...

    @property
    def device(self) -> Any:
        """Where generation runs, for logs and `midline.status`."""
        ...

    @property
    def max_context(self) -> int:
        """Prompt and answer together, in tokens."""
        ...

    @property
    def min_mean_logprob(self) -> Floor:
        """Hide a suggestion less sure than this (the model's own floor; None: none)."""
        ...

    @property
    def min_line_logprob(self) -> Floor:
        """Cut a suggestion at a later line less sure than this."""
        ...

    @property
    def languages(self) -> tuple[str, ...] | None:
        """Languages the model was trained on; None: any."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens in `text` (exact, or an over-estimate where the tokenizer is not at hand)."""
        ...

    def encode(self, prompt: FimPrompt, mode: Mode | None = None) -> PromptT:
        """`prompt` in the model's FIM format, ready for `generate`."""
        ...

    def generate(
        self,
        prompt: PromptT,
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        should_stop: Callable[[str], bool] | None = None,
        cancel: threading.Event | None = None,
        deadline: float | None = None,
    ) -> Generation:
        """Complete `prompt`, stopping at an end token, `max_new_tokens`, `should_stop`, `cancel` or `deadline`."""
        ...

    def token_ends(self, token_ids: list[int]) -> list[int]:
        """Where each token's text ends in the decoded text of `token_ids`."""
        ...


def decoded_ends(decode: Callable[[list[int]], str], token_ids: list[int]) -> list[int]:
    """Where each token's text ends in `decode(token_ids)` (a token that ends mid-character ends where it began)."""
    return [len(decode(token_ids[: i + 1])) for i in range(len(token_ids))]


# The cursor positions a confidence floor may name (`CompletionContext.position` in the server).
CURSOR_POSITIONS = ("mid_line", "line_end", "new_line")


def model_settings(path: Path) -> dict:
    """midline's serving settings that ship with a model (`midline.json` beside config.json; {} if none),
    e.g. `{"min_mean_logprob": -1.0, "min_line_logprob": -2.0, "languages": ["python"]}`: the mean token
    log-probability below which its suggestions are hidden, below which a line after a suggestion's first is
    cut with all that follows, and the languages it was trained on (completion is on for those by default).
    A floor may differ by cursor position: `{"mid_line": -1.0, "line_end": -0.6, "new_line": -1.2}`
    (`CompletionContext.position`; a position it does not name has no floor)."""
    file = path / "midline.json"
    if not file.is_file():
        return {}
    try:
        settings = json.loads(file.read_text(encoding="utf-8"))
        for key in ("min_mean_logprob", "min_line_logprob"):
            value = settings.get(key)
            floors = value if isinstance(value, dict) else {"": value}
            unknown = set(floors) - {"", *CURSOR_POSITIONS}
            if value is not None and (unknown or not all(_is_number(v) for v in floors.values())):
                raise ValueError(
                    f"{key} must be a number, or an object of numbers by cursor position "
                    f"({', '.join(CURSOR_POSITIONS)}); got {json.dumps(value)}"
                )
        languages = settings.get("languages")
        if languages is not None and not (isinstance(languages, list) and all(isinstance(x, str) for x in languages)):
            raise ValueError("languages must be a list of language ids")
    except (ValueError, AttributeError) as exc:
        raise ModelLoadError(f"{file}: {exc}") from None
    return settings


def _is_number(value: object) -> bool:
    """A finite JSON number (a boolean is not one)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
