"""Fill-in-the-middle prompt formats: the one place midline's FIM tokens and layouts are defined.

Serving (`midline.server`) builds completion prompts here and training (`midline.training`) builds its
examples here, so a model trained by midline is served exactly as it was trained. Other model families'
formats follow their model cards; `detect` picks one from a tokenizer's special tokens.

Layouts, with P/S/M the family's prefix/suffix/middle tokens:
  PSM: P prefix S suffix M  -> middle EOT
  SPM: S suffix P prefix M  -> middle EOT   (midline; the prefix sits next to the middle, and the
                                             stable suffix comes first so a KV cache can reuse it)
Extra context goes first, as `<file_sep>` documents where the family has repository tokens, otherwise
as comments at the top of the prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath
from typing import Iterable, Literal, Protocol, Sequence

Mode = Literal["psm", "spm"]

# midline's own special tokens. The tokenizer reserves these from the start (training stage 2).
EOT = "<|endoftext|>"
FIM_PREFIX = "<|midline:fim_prefix|>"
FIM_SUFFIX = "<|midline:fim_suffix|>"
FIM_MIDDLE = "<|midline:fim_middle|>"
FIM_PAD = "<|midline:fim_pad|>"
FILE_SEP = "<|midline:file_sep|>"
REPO_NAME = "<|midline:repo_name|>"
SPECIAL_TOKENS: tuple[str, ...] = (EOT, FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE, FIM_PAD, FILE_SEP, REPO_NAME)


def holding_folder(path: str | PurePath, folders: Iterable[str | PurePath]) -> PurePath | None:
    """The innermost of the workspace `folders` that holds `path` (compared as written), or None."""
    inside = [PurePath(folder) for folder in folders if PurePath(path).is_relative_to(folder)]
    return max(inside, key=lambda folder: len(folder.parts), default=None)


def shown_path(path: str | PurePath, folders: Iterable[str | PurePath]) -> str:
    """A path as the model sees it in prompts, in POSIX form: relative to the innermost workspace folder that holds
    it, as training shows a file's path in its repository; a path in no folder (a file opened from elsewhere, an
    unsaved document's name) by its file name alone, never absolute: the user's home path means nothing to the
    model, and a remote backend has no business seeing it."""
    path = PurePath(path)
    folder = holding_folder(path, folders)
    return path.relative_to(folder).as_posix() if folder else path.name


class FimFormatError(ValueError):
    """The model's tokenizer has no fill-in-the-middle tokens midline knows, or a layout is unsupported."""


class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer that prompt encoding uses."""

    bos_token_id: int | None

    def encode(
        self, text: str, add_special_tokens: bool = ..., split_special_tokens: bool = ..., verbose: bool = ...
    ) -> list[int]: ...

    # Hugging Face's takes a token or a list of them (and returns an id or a list); test doubles give None
    # for a token they lack.
    def convert_tokens_to_ids(self, tokens: str) -> int | list[int] | None: ...


@dataclass(frozen=True)
class Snippet:
    """A piece of extra context: code from `path` (another file, or a part of this one)."""

    path: str
    text: str


@dataclass(frozen=True)
class FimPrompt:
    """What to put around the hole: the windows, the file, and extra context (stable parts first)."""

    prefix: str
    suffix: str
    path: str = ""
    snippets: Sequence[Snippet] = ()
    repo: str = ""
    comment: str = "#"  # line-comment marker of the file's language, for families without file tokens


# A segment is (text, is_special_token).
Segment = tuple[str, bool]


@dataclass(frozen=True)
class FimFormat:
    """One model family's FIM tokens and layouts."""

    name: str
    prefix: str
    suffix: str
    middle: str
    eot: str  # what ends a middle
    stops: tuple[str, ...] = ()  # further tokens that end generation
    file_sep: str | None = None
    repo_name: str | None = None
    modes: tuple[Mode, ...] = ("psm",)
    bos: bool = False  # prepend the tokenizer's BOS token
    path_in_prefix: bool = False  # StarCoder2: the FIM file's path follows <fim_prefix>
    spaced: bool = False  # CodeLlama: "<PRE> {prefix} <SUF>{suffix} <MID>"

    @property
    def default_mode(self) -> Mode:
        return self.modes[0]

    @property
    def stop_tokens(self) -> tuple[str, ...]:
        """Every special token that ends a completion (end of text, and any FIM/file token)."""
        tokens = [self.eot, *self.stops, self.prefix, self.suffix, self.middle, self.file_sep, self.repo_name]
        return tuple(dict.fromkeys(t for t in tokens if t))

    # -- layout ---------------------------------------------------------------------------------

    def segments(self, prompt: FimPrompt, mode: Mode | None = None) -> list[Segment]:
        """The prompt as text and special-token segments, ending just before the middle."""
        mode = mode or self.default_mode
        if mode not in self.modes:
            raise FimFormatError(
                f"the {self.name} FIM format has no {mode.upper()} layout (it has: {', '.join(self.modes)})"
            )
        out: list[Segment] = []
        prefix = prompt.prefix
        if self.file_sep:
            if self.repo_name and prompt.repo:
                out += [(self.repo_name, True), (prompt.repo + ("" if self.path_in_prefix else "\n"), False)]
            for snippet in prompt.snippets:
                out += [(self.file_sep, True), (f"{snippet.path}\n{_ended(snippet.text)}", False)]
            if self.path_in_prefix:  # ...<file_sep><fim_prefix>path\ncode
                if prompt.snippets or prompt.repo:
                    out.append((self.file_sep, True))
                if prompt.path:
                    prefix = f"{prompt.path}\n{prefix}"
            elif prompt.path or prompt.snippets:
                out += [(self.file_sep, True), (f"{prompt.path}\n", False)]
        else:
            prefix = _as_comments(prompt) + prefix
        if self.spaced:
            return out + [
                (self.prefix, True),
                (f" {prefix} ", False),
                (self.suffix, True),
                (f"{prompt.suffix} ", False),
                (self.middle, True),
            ]
        if mode == "psm":
            return out + [
                (self.prefix, True),
                (prefix, False),
                (self.suffix, True),
                (prompt.suffix, False),
                (self.middle, True),
            ]
        if self.name == "codestral":  # [SUFFIX]suffix[PREFIX]prefix, no middle token
            return out + [(self.suffix, True), (prompt.suffix, False), (self.prefix, True), (prefix, False)]
        return out + [
            (self.suffix, True),
            (prompt.suffix, False),
            (self.prefix, True),
            (prefix, False),
            (self.middle, True),
        ]

    def render(self, prompt: FimPrompt, mode: Mode | None = None) -> str:
        """The prompt as one string (for remote backends that take text)."""
        return "".join(text for text, _ in self.segments(prompt, mode))

    def encode(self, prompt: FimPrompt, tokenizer: Tokenizer, mode: Mode | None = None) -> list[int]:
        """Token ids of the prompt. Text segments are encoded one by one, never parsed for special tokens."""
        ids = [tokenizer.bos_token_id] if self.bos and tokenizer.bos_token_id is not None else []
        for text, special in self.segments(prompt, mode):
            if special:
                ids.append(_special_id(tokenizer, text))
            elif text:
                ids += encode_text(tokenizer, text)
        return ids

    def encode_example(
        self, prompt: FimPrompt, middle: str, tokenizer: Tokenizer, mode: Mode | None = None
    ) -> list[int]:
        """A training example: the served prompt, then the middle and end of text."""
        ids = self.encode(prompt, tokenizer, mode)
        if middle:
            ids += encode_text(tokenizer, middle)
        return ids + [_special_id(tokenizer, self.eot)]

    def required_tokens(self) -> tuple[str, ...]:
        return tuple(t for t in (self.prefix, self.suffix, self.middle) if t)


def encode_text(tokenizer: Tokenizer, text: str) -> list[int]:
    """Ids of plain text: a special token's string inside it (`"<|endoftext|>"` in a docstring) stays text.
    (Text longer than the model's context is fine here: no warning about it.)"""
    return tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True, verbose=False)


def _ended(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"


def _as_comments(prompt: FimPrompt) -> str:
    """Extra context as line comments, for families without file tokens (Continue/Tabby style)."""
    lines: list[str] = []
    c = prompt.comment
    for snippet in prompt.snippets:
        lines.append(f"{c} Path: {snippet.path}")
        lines += [f"{c} {line}".rstrip() for line in snippet.text.rstrip("\n").split("\n")]
    if lines and prompt.path:
        lines.append(f"{c} Path: {prompt.path}")
    return "".join(line + "\n" for line in lines)


def _special_id(tokenizer: Tokenizer, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    unk = getattr(tokenizer, "unk_token_id", None)
    unknown = unk is not None and token_id == unk and token != getattr(tokenizer, "unk_token", None)
    if not isinstance(token_id, int) or unknown:
        raise FimFormatError(f"the tokenizer has no token {token!r}")
    return token_id


MIDLINE = FimFormat(
    "midline", FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE, EOT,
    stops=(FIM_PAD,), file_sep=FILE_SEP, repo_name=REPO_NAME, modes=("spm", "psm"),
)
QWEN = FimFormat(
    "qwen", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|endoftext|>",
    stops=("<|fim_pad|>", "<|im_end|>"), file_sep="<|file_sep|>", repo_name="<|repo_name|>",
)
STARCODER2 = FimFormat(
    "starcoder2", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<|endoftext|>",
    stops=("<fim_pad>",), file_sep="<file_sep>", repo_name="<repo_name>", path_in_prefix=True,
)
STARCODER = FimFormat(
    "starcoder", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<|endoftext|>", stops=("<fim_pad>",),
)
DEEPSEEK = FimFormat(
    "deepseek", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>", "<｜end▁of▁sentence｜>",
    stops=("<|EOT|>",), bos=True,
)
CODELLAMA = FimFormat("codellama", "<PRE>", "<SUF>", "<MID>", "<EOT>", stops=("</s>",), bos=True, spaced=True)
CODESTRAL = FimFormat("codestral", "[PREFIX]", "[SUFFIX]", "", "</s>", modes=("spm",), bos=True)

# Detection order matters: more specific first (StarCoder2 before StarCoder; midline before all).
FORMATS: dict[str, FimFormat] = {
    f.name: f for f in (MIDLINE, QWEN, STARCODER2, STARCODER, DEEPSEEK, CODELLAMA, CODESTRAL)
}


def detect(vocab: Iterable[str]) -> FimFormat:
    """The FIM format whose tokens the vocabulary has; FimFormatError naming the problem if none."""
    tokens = set(vocab)
    for fmt in FORMATS.values():
        if all(t in tokens for t in fmt.required_tokens()):
            if fmt is STARCODER2 and "<file_sep>" not in tokens:
                continue
            return fmt
    raise FimFormatError(
        "this model's tokenizer has no fill-in-the-middle tokens (looked for midline, Qwen2.5-Coder, "
        "StarCoder, DeepSeek-Coder, CodeLlama and Codestral FIM tokens). It may be a chat/instruct model, "
        "which cannot complete code in the middle of a file: use a base code model with FIM training, "
        f"or set `midline.fimFormat` to one of: {', '.join(FORMATS)}"
    )


def get(name: str) -> FimFormat:
    """The format called `name` (config override)."""
    try:
        return FORMATS[name]
    except KeyError:
        raise FimFormatError(f"unknown FIM format {name!r}; known: {', '.join(FORMATS)}") from None
