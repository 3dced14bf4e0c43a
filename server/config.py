"""midline's settings: one typed, defaulted tree, read from initializationOptions and
`workspace/didChangeConfiguration` (section `midline`). Keys are camelCase on the wire.

Types are strict (`"false"` is not false, `12.9` is not an integer): a wrong value is a ConfigError that
names the setting (`midline.enable.python`) and what it must be, and the server keeps its previous settings.

A server's components share one `Settings` holder and read its `current` Config (through `CurrentConfig`),
so a change is one assignment.

The README's configuration table documents exactly these fields.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from midline.model import languages

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")  # a settings section


MAX_CANDIDATES = 8  # most suggestions one request samples


class ConfigError(ValueError):
    """A setting has the wrong type or value; the message names it (`midline.context.budget`) and says why."""


@dataclass
class ContextConfig:
    """How much of the file, and of other files, goes into a prompt (in model tokens)."""

    budget: int = 1536  # prefix + suffix window
    prefix_share: float = 0.75  # share of `budget` for the text before the cursor
    snippet_budget: int = 512  # extra context: imports, enclosing signature, other files' definitions
    max_snippets: int = 6
    cross_file: bool = True  # look up definitions in other open documents and workspace files
    retrieval: bool = False  # add chunks of other files similar to the lines around the cursor (retrieval.py)

    def __post_init__(self) -> None:
        _check("context.budget", self.budget, self.budget >= 16, "at least 16")
        _check("context.prefixShare", self.prefix_share, 0.0 < self.prefix_share <= 1.0, "in (0, 1]")
        _check("context.snippetBudget", self.snippet_budget, self.snippet_budget >= 0, "at least 0")
        _check("context.maxSnippets", self.max_snippets, self.max_snippets >= 0, "at least 0")


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
    attempts: int = 3  # asks of a fix, tests or code from a comment whose check fails, the failure fed back each time
    refine_ms: int = 30000  # no new attempt starts after this long
    candidates: int = 3  # candidates per ask for code from a comment with examples, and per refined ask

    def __post_init__(self) -> None:
        _check("actions.attempts", self.attempts, 1 <= self.attempts <= 8, "in 1..8")
        _check("actions.refineMs", self.refine_ms, self.refine_ms >= 0, "at least 0")
        _check("actions.candidates", self.candidates, 1 <= self.candidates <= 8, "in 1..8")
        _check("actions.maxNewTokens", self.max_new_tokens, 1 <= self.max_new_tokens <= 8192, "in 1..8192")
        _check("actions.timeoutMs", self.timeout_ms, self.timeout_ms > 0, "at least 1")
        _check("actions.testTimeoutMs", self.test_timeout_ms, self.test_timeout_ms > 0, "at least 1")
        _check("actions.perTestTimeoutMs", self.per_test_timeout_ms, self.per_test_timeout_ms > 0, "at least 1")
        _check("actions.testMemoryMb", self.test_memory_mb, self.test_memory_mb >= 64, "at least 64")
        _check("actions.cacheSize", self.cache_size, self.cache_size >= 0, "at least 0")


@dataclass
class HoverConfig:
    """Hover on a function or class name: its signature, and a model explanation once one is computed."""

    enable: bool = True
    explain: bool = True  # explain hovered definitions in the background (while no completion is generating)
    idle_ms: int = 500  # quiet time after the last completion request before a background explanation starts

    def __post_init__(self) -> None:
        _check("hover.idleMs", self.idle_ms, self.idle_ms >= 0, "at least 0")


@dataclass
class SecurityConfig:
    """The security scan (bandit, `security.py`) of Python the model writes: a completion with a high finding is
    hidden, an action result gets a warning."""

    scan: Literal["off", "completions", "actions", "all"] = "all"  # what is scanned

    @property
    def completions(self) -> bool:
        """Whether completions are scanned."""
        return self.scan in ("completions", "all")

    @property
    def actions(self) -> bool:
        """Whether action results (fix, tests, code from a comment) are scanned."""
        return self.scan in ("actions", "all")


@dataclass
class AttributionConfig:
    """The attribution check (`attribution.py`): a completion that repeats a long span of the model's training data
    verbatim is hidden."""

    index: str | None = None  # an index dir from `midline-train index` (the model's training split); None = off


@dataclass
class OutcomesConfig:
    """A local record of what became of each shown suggestion (outcomes.py): off unless asked for, never sent."""

    record: bool = False  # append each shown answer and its outcome (accepted, typed, dismissed) to `file`
    file: str | None = None  # the JSONL file; None = outcomes.jsonl in midline's data folder ($XDG_DATA_HOME/midline)
    prompts: bool = False  # also keep each prompt (your code, as token ids) for `midline-train rank --dpo`


@dataclass
class BackendConfig:
    """Where completions come from: the local model, or a serving engine over HTTP (midline.model.remote)."""

    kind: Literal["local", "openai", "llamacpp", "ollama"] = "local"
    url: str | None = None  # the server's base URL, e.g. http://localhost:8000 (openai also takes .../v1)
    model: str | None = None  # model name sent to the server (vLLM's served name; required for ollama)
    api_key_env: str | None = None  # environment variable holding an API key, sent as "Authorization: Bearer"
    api_key: str | None = None  # the key itself, where an environment variable can't be used
    # local dir with the served model's tokenizer.json: exact token counts, FIM format detection
    tokenizer: str | None = None
    context_length: int = 4096  # the served model's context window, in tokens
    timeout_ms: int = 10000  # longest wait to connect, or for the next whole answer (a stream event, else the body)

    def __post_init__(self) -> None:
        url_ok = self.kind == "local" or re.match(r"https?://[^/\s]", self.url or "") is not None
        _check("backend.url", self.url, url_ok, f"an http:// or https:// URL for backend.kind {self.kind}")
        model_ok = self.kind != "ollama" or bool(self.model)
        _check("backend.model", self.model, model_ok, "a model name for backend.kind ollama")
        _check("backend.contextLength", self.context_length, self.context_length >= 64, "at least 64")
        _check("backend.timeoutMs", self.timeout_ms, self.timeout_ms > 0, "at least 1")


@dataclass
class Config:
    """Every setting, with its default."""

    model: str | None = None  # local model directory; None = the model shipped with midline
    adapter: str | None = None  # LoRA adapter directory (`midline-train finetune`), merged into `model` at load
    device: Literal["auto", "cuda", "cpu"] = "auto"
    # what runs a local model: auto = llama.cpp where no CUDA GPU is used and llama-cpp-python is installed, else torch
    engine: Literal["auto", "torch", "llamacpp"] = "auto"
    fim_format: str | None = None  # None = detect from the tokenizer (midline, qwen, starcoder2, ...)
    fim_mode: Literal["auto", "psm", "spm"] = "auto"  # auto = the format's preferred layout
    trust_remote_code: bool = False
    max_new_tokens: int = 64
    max_lines: int = 12  # of a multi-line suggestion
    candidates: int = 3  # suggestions for an explicit request, sampled in one batched pass, ranked (1: greedy)
    automatic_candidates: int = 1  # the same for an automatic request while no other completion generates
    # wait after an automatic trigger; explicit requests skip it (0: typing-through and cancellation do better)
    debounce_ms: int = 0
    timeout_ms: int = 5000  # generation time limit; past it the answer is empty
    min_mean_logprob: float | None = None  # hide suggestions less confident than this; None = the model's own floor
    # cut a suggestion at its first later line less confident than this; None = the model's
    min_line_logprob: float | None = None
    # a learnt ranker (`midline-train rank`'s ranker.json): orders suggestions by predicted acceptance and applies
    # its floor instead of the model's; None = rank by mean log-probability
    ranker: str | None = None
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None  # sampling seed, for reproducible sampled suggestions
    cache_size: int = 256  # completions remembered by context
    enable: dict[str, bool] = field(
        default_factory=lambda: {"*": True, "plaintext": False, "markdown": False, "scminput": False}
    )  # per language id; "*" is the default for others
    context: ContextConfig = field(default_factory=ContextConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    outcomes: OutcomesConfig = field(default_factory=OutcomesConfig)
    actions: ActionsConfig = field(default_factory=ActionsConfig)
    hover: HoverConfig = field(default_factory=HoverConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    attribution: AttributionConfig = field(default_factory=AttributionConfig)

    def __post_init__(self) -> None:
        _check("maxNewTokens", self.max_new_tokens, 1 <= self.max_new_tokens <= 2048, "in 1..2048")
        _check("maxLines", self.max_lines, self.max_lines >= 1, "at least 1")
        _check("candidates", self.candidates, 1 <= self.candidates <= MAX_CANDIDATES, f"in 1..{MAX_CANDIDATES}")
        automatic = self.automatic_candidates
        _check("automaticCandidates", automatic, 1 <= automatic <= MAX_CANDIDATES, f"in 1..{MAX_CANDIDATES}")
        _check("debounceMs", self.debounce_ms, self.debounce_ms >= 0, "at least 0")
        _check("timeoutMs", self.timeout_ms, self.timeout_ms > 0, "at least 1")
        _check("temperature", self.temperature, self.temperature >= 0.0, "at least 0")
        _check("topP", self.top_p, 0.0 < self.top_p <= 1.0, "in (0, 1]")
        _check("cacheSize", self.cache_size, self.cache_size >= 0, "at least 0")

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
        """Settings from the client, laid over `base` (default: the defaults); `base` is never changed.

        Raises ConfigError, naming every wrong setting: types are never coerced (`"false"` is not false)."""
        if data is None:
            return base or cls()
        if not isinstance(data, dict):
            raise ConfigError(f"midline settings must be an object; got {_show(data)}")
        return _structure(cls, _merge((base or cls()).to_json(), data), "midline")

    def to_json(self) -> dict[str, Any]:
        """The settings as the client spells them (camelCase keys, nested sections)."""
        return _unstructure(self)


class Settings:
    """The one holder of a server's current Config: every component reads `current` through it, so a
    settings change is one assignment and no component can keep a stale copy."""

    def __init__(self, current: Config | None = None) -> None:
        self.current = current if current is not None else Config()

    @classmethod
    def of(cls, config: Config | Settings) -> Settings:
        """`config` if it is a holder already, else a new holder of its own for it."""
        return config if isinstance(config, Settings) else cls(config)


class CurrentConfig:
    """A component's `config` attribute: the current Config of its holder, `self.settings`; assigning
    one replaces it in the holder, for every component sharing it."""

    def __get__(self, owner: Any, kind: type | None = None) -> Config:
        return self if owner is None else owner.settings.current  # type: ignore[return-value]

    def __set__(self, owner: Any, config: Config) -> None:
        owner.settings.current = config


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# Strict coercion, one helper per type: each returns the value or raises ConfigError naming `key`.


def as_bool(value: Any, key: str) -> bool:
    """Only JSON true or false."""
    if not isinstance(value, bool):
        raise _wrong(key, "true or false", value)
    return value


def as_int(value: Any, key: str) -> int:
    """Only a JSON integer: not 12.9, 12.0, "12" or true."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong(key, "an integer", value)
    return value


def as_float(value: Any, key: str) -> float:
    """A finite JSON number (integers too), not a string or a boolean."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _wrong(key, "a number", value)
    return float(value)


def as_str(value: Any, key: str) -> str:
    """Only a JSON string."""
    if not isinstance(value, str):
        raise _wrong(key, "a string", value)
    return value


def as_choice(value: Any, key: str, choices: tuple[str, ...]) -> str:
    """One of `choices`, exactly."""
    if not isinstance(value, str) or value not in choices:
        raise _wrong(key, "one of " + ", ".join(_show(choice) for choice in choices), value)
    return value


def as_bool_map(value: Any, key: str) -> dict[str, bool]:
    """An object of names (language ids) to true or false."""
    if not isinstance(value, dict):
        raise _wrong(key, "an object of language ids to true or false", value)
    errors, out = [], {}
    for name, flag in value.items():
        try:
            out[name] = as_bool(flag, f"{key}.{name}")
        except ConfigError as exc:
            errors.append(str(exc))
    _raise_all(errors)
    return out


_SCALARS: dict[Any, Callable[[Any, str], Any]] = {bool: as_bool, int: as_int, float: as_float, str: as_str}


def _value(type_: Any, value: Any, key: str) -> Any:
    """`value` as the field type `type_` (a scalar, Literal, dict[str, bool], a section, or one of these | None)."""
    args = get_args(type_)
    if type(None) in args:
        if value is None:
            return None
        (inner,) = [arg for arg in args if arg is not type(None)]
        try:
            return _value(inner, value, key)
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("; got ", " or null; got ", 1)) from None  # "must be a string or null"
    if get_origin(type_) is Literal:
        return as_choice(value, key, args)
    if get_origin(type_) is dict:
        return as_bool_map(value, key)
    if isinstance(type_, type) and is_dataclass(type_):
        return _structure(type_, value, key)
    return _SCALARS[type_](value, key)


def _structure(cls: type[T], data: Any, path: str) -> T:
    """A settings section from its JSON object: every key known, every value of its field's type."""
    if not isinstance(data, dict):
        raise _wrong(path, "an object", data)
    names = {camel(f.name): f.name for f in fields(cls)}
    hints = _hints(cls)
    errors, values = [], {}
    for key, value in data.items():
        if key not in names:
            errors.append(_unknown(path, key, list(names)))
            continue
        try:
            values[names[key]] = _value(hints[names[key]], value, f"{path}.{key}")
        except ConfigError as exc:
            errors.append(str(exc))
    _raise_all(errors)
    return cls(**values)


def _unstructure(section: Any) -> dict[str, Any]:
    return {
        camel(f.name): _unstructure(value) if is_dataclass(value) else dict(value) if isinstance(value, dict) else value
        for f in fields(section)
        for value in [getattr(section, f.name)]
    }


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _check(key: str, value: Any, ok: bool, requirement: str) -> None:
    """A range rule of one setting (`key` below `midline`)."""
    if not ok:
        raise _wrong(f"midline.{key}", requirement, value)


def _wrong(key: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"{key} must be {expected}; got {_show(value)}")


def _unknown(path: str, key: Any, known: list[str]) -> str:
    close = difflib.get_close_matches(str(key), known, n=1)
    return f"{path}.{key} is not a setting" + (f" (did you mean {path}.{close[0]}?)" if close else "")


def _raise_all(errors: list[str]) -> None:
    if errors:
        raise ConfigError("; ".join(errors))


def _show(value: Any) -> str:
    """A value as JSON spells it, cut short."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
