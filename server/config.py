"""midline's settings: one typed, defaulted tree, read from initializationOptions and
`workspace/didChangeConfiguration` (section `midline`). Keys are camelCase on the wire.

The README's configuration table documents exactly these fields.
"""

from __future__ import annotations

import re

from dataclasses import dataclass, field, fields
from typing import Any, Literal

import cattrs
import cattrs.v
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from midline.model import languages


class ConfigError(ValueError):
    """A setting has the wrong type or value."""


@dataclass
class ContextConfig:
    """How much of the file, and of other files, goes into a prompt (in model tokens)."""

    budget: int = 1536  # prefix + suffix window
    prefix_share: float = 0.75  # share of `budget` for the text before the cursor
    snippet_budget: int = 512  # extra context: imports, enclosing signature, other files' definitions
    max_snippets: int = 6
    cross_file: bool = True  # look up definitions in other open documents and workspace files

    def __post_init__(self) -> None:
        _check(self.budget >= 16, "context.budget must be at least 16 tokens")
        _check(0.0 < self.prefix_share <= 1.0, "context.prefixShare must be in (0, 1]")
        _check(self.snippet_budget >= 0 and self.max_snippets >= 0, "context.snippetBudget/maxSnippets must be >= 0")


@dataclass
class ActionsConfig:
    """Code actions (explain, fix, generate tests, code from a comment), computed when picked."""

    enable: bool = True
    model: str | None = None  # local instruction (chat) model directory; None = ask the completion model in FIM shapes
    max_new_tokens: int = 384  # most tokens the model writes for one action
    timeout_ms: int = 60000  # generation time limit for one action
    test_timeout_ms: int = 30000  # sandboxed run of generated tests, in all
    per_test_timeout_ms: int = 5000  # one generated test
    test_memory_mb: int = 1024  # address-space limit of the sandboxed test run
    cache_size: int = 64  # action results remembered, by the code's content hash

    def __post_init__(self) -> None:
        _check(1 <= self.max_new_tokens <= 8192, "actions.maxNewTokens must be in 1..8192")
        _check(self.timeout_ms > 0 and self.test_timeout_ms > 0 and self.per_test_timeout_ms > 0, "actions timeouts must be > 0")
        _check(self.test_memory_mb >= 64, "actions.testMemoryMb must be at least 64")
        _check(self.cache_size >= 0, "actions.cacheSize must be >= 0")


@dataclass
class HoverConfig:
    """Hover on a function or class name: its signature, and a model explanation once one is computed."""

    enable: bool = True
    explain: bool = True  # explain hovered definitions in the background (while no completion is generating)
    idle_ms: int = 500  # quiet time after the last completion request before a background explanation starts

    def __post_init__(self) -> None:
        _check(self.idle_ms >= 0, "hover.idleMs must be >= 0")


@dataclass
class BackendConfig:
    """Where completions come from: the local model, or a serving engine over HTTP (midline.model.remote)."""

    kind: Literal["local", "openai", "llamacpp", "ollama"] = "local"
    url: str | None = None  # the server's base URL, e.g. http://localhost:8000 (openai also takes .../v1)
    model: str | None = None  # model name sent to the server (vLLM's served name; required for ollama)
    api_key_env: str | None = None  # environment variable holding an API key, sent as "Authorization: Bearer"
    api_key: str | None = None  # the key itself, where an environment variable can't be used
    tokenizer: str | None = None  # local dir with the served model's tokenizer.json: exact token counts, FIM format detection
    context_length: int = 4096  # the served model's context window, in tokens
    timeout_ms: int = 10000  # longest wait to connect, or for the server's next bytes

    def __post_init__(self) -> None:
        if self.kind != "local":
            _check(
                bool(self.url) and re.match(r"https?://[^/\s]", self.url or "") is not None,
                f"backend.url must be an http:// or https:// URL for backend.kind {self.kind}, got {self.url!r}",
            )
        _check(self.kind != "ollama" or bool(self.model), "backend.model is required for backend.kind ollama")
        _check(self.context_length >= 64 and self.timeout_ms > 0, "backend.contextLength must be >= 64 and backend.timeoutMs > 0")


@dataclass
class Config:
    """Every setting, with its default."""

    model: str | None = None  # local model directory; None = the model shipped with midline
    device: Literal["auto", "cuda", "cpu"] = "auto"
    fim_format: str | None = None  # None = detect from the tokenizer (midline, qwen, starcoder2, ...)
    fim_mode: Literal["auto", "psm", "spm"] = "auto"  # auto = the format's preferred layout
    trust_remote_code: bool = False
    max_new_tokens: int = 64
    max_lines: int = 12  # of a multi-line suggestion
    debounce_ms: int = 0  # wait after an automatic trigger; explicit requests skip it (0: typing-through and cancellation do better)
    timeout_ms: int = 5000  # generation time limit; past it the answer is empty
    min_mean_logprob: float | None = None  # hide suggestions less confident than this; None = the model's own floor
    min_line_logprob: float | None = None  # cut a suggestion at its first later line less confident than this; None = the model's
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None  # sampling seed, for reproducible sampled suggestions
    cache_size: int = 256  # completions remembered by context
    enable: dict[str, bool] = field(
        default_factory=lambda: {"*": True, "plaintext": False, "markdown": False, "scminput": False}
    )  # per language id; "*" is the default for others
    context: ContextConfig = field(default_factory=ContextConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    actions: ActionsConfig = field(default_factory=ActionsConfig)
    hover: HoverConfig = field(default_factory=HoverConfig)

    def __post_init__(self) -> None:
        _check(1 <= self.max_new_tokens <= 2048, "maxNewTokens must be in 1..2048")
        _check(self.max_lines >= 1, "maxLines must be >= 1")
        _check(self.debounce_ms >= 0 and self.timeout_ms > 0, "debounceMs must be >= 0 and timeoutMs > 0")
        _check(self.temperature >= 0.0 and 0.0 < self.top_p <= 1.0, "temperature must be >= 0 and topP in (0, 1]")
        _check(self.cache_size >= 0, "cacheSize must be >= 0")

    def enabled_for(self, language_id: str, model_languages: tuple[str, ...] | None = None) -> bool:
        """Whether to complete in `language_id`: its own `enable` entry if it has one; else, for a model that
        names the languages it was trained on, whether it is one of them; else the `"*"` entry."""
        if language_id in self.enable:
            return self.enable[language_id]
        if model_languages is not None and languages.resolve(language_id).name not in model_languages:
            return False
        return self.enable.get("*", True)

    @classmethod
    def from_json(cls, data: Any, base: Config | None = None) -> Config:
        """Settings from the client, laid over `base` (default: the defaults). Raises ConfigError."""
        if data is None:
            return base or cls()
        if not isinstance(data, dict):
            raise ConfigError(f"midline settings must be an object, got {type(data).__name__}")
        merged = _merge(_converter.unstructure(base or cls()), data)
        try:
            return _converter.structure(merged, cls)
        except (cattrs.BaseValidationError, ValueError, TypeError) as exc:
            raise ConfigError(_explain(exc)) from None

    def to_json(self) -> dict[str, Any]:
        return _converter.unstructure(self)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _explain(exc: BaseException) -> str:
    """One line per problem, naming the setting as the client spells it (midline.maxNewTokens)."""
    if not isinstance(exc, cattrs.BaseValidationError):
        return str(exc)

    def describe(error: BaseException, type_: Any) -> str:
        if isinstance(error, ConfigError):
            return str(error)
        return cattrs.v.format_exception(error, type_)

    lines = cattrs.transform_error(exc, path="midline", format_exception=describe)
    return "; ".join(re.sub(r"[a-z]+(?:_[a-z]+)+", lambda m: camel(m.group()), line) for line in lines)


_converter = cattrs.Converter(forbid_extra_keys=True)
for _cls in (ContextConfig, BackendConfig, ActionsConfig, HoverConfig, Config):
    _renames = {f.name: override(rename=camel(f.name)) for f in fields(_cls)}
    _converter.register_structure_hook(_cls, make_dict_structure_fn(_cls, _converter, _cattrs_forbid_extra_keys=True, **_renames))
    _converter.register_unstructure_hook(_cls, make_dict_unstructure_fn(_cls, _converter, **_renames))
