"""Data stage: tokenize the corpus into FIM training examples packed into fixed-length rows.

The recipe (the knobs are `DataConfig`):
- Context-level FIM. Each document is cut at line ends into chunks that fit one row with their FIM tokens,
  and each chunk becomes one example: with probability `fim_rate` a FIM example (SPM with probability
  `spm_rate`, else PSM), otherwise plain left-to-right text. A FIM middle is a line span (an editor's
  hole: the rest of a line, or whole lines) with probability `line_span_rate`, else the span between
  two uniform character positions; with probability `end_rate` it then runs on to the chunk's end (an
  empty suffix: typing at the end of a file, which uniform spans almost never leave). Every example ends with EOT and
  lies whole inside one row, so a middle always ends in EOT. That is the `holes="chars"` recipe (the default, the
  shipped model's).
- `holes="ast"`: holes where an editor asks, chosen with the file's tree-sitter tree (AST-FIM, Gong et al.
  2025, "Structure-Aware Fill-in-the-Middle Pretraining for Code"). The shares of FIM middles (`AST_HOLES`):
    lines      0.22  whole line(s): the prefix ends with "\n" + indentation, the suffix starts with "\n"
                     (a fresh line after Enter)
    line_rest  0.14  the rest of a line from a token start, never inside a word (typing mid-line)
    node       0.24  a complete AST node (`AST_NODES`): an expression 0.35, a statement 0.2, a run of sibling
                     statements 0.2, a whole block body 0.25 (after `def ...:` + Enter)
    new_line   0.12  "\n" + indentation + the next line(s), from the end of a complete line
    empty      0.08  nothing, at the end of a complete line (0.6) or at a line's code start (0.4)
    end        0.10  from one of the chunk's last lines to its end (an empty suffix: the end of a file)
    chars      0.10  today's uniform span, for robustness (the only holes that may cut a word)
  A line is complete when a statement (a child of a block, `LanguageSpec.blocks`, or of the root) ends
  at its end or starts the next code line. Multi-line holes take one more line with probability
  `MORE_LINES`, and end at a complete line. Holes never cut a word: only the chars share starts or ends
  between two word characters. Nodes come from a parse of the whole document; a node hole lies inside
  the chunk, spans at most `MAX_NODE_LINES` lines and has no syntax errors, and where the drawn kind
  does not fit a smaller one is taken (a node inside a statement that is too big, one statement for a
  run). Without a grammar, or where the parse has errors, holes are line-based: node holes become whole
  lines, and every line counts as complete. `line_span_rate` and `end_rate` apply to the chars recipe only.
- The layout is the server's: `MIDLINE.encode_example(FimPrompt(prefix, suffix, path=, repo=), middle)`,
  i.e. the served prompt, the middle, EOT (`fmt=` another family's `FimFormat`, for `finetune.py`). `mask_prompt`
  (a fine-tune's: `finetune.py`, `--mask-prompt`) stores a FIM prompt's ids negated, `~id`, so the loss falls on
  the middle and EOT only (plain examples, 1 - `fim_rate` of them, stay taught whole). With
  probability `context_rate` an example carries the file-level context the server sends (`<repo_name>repo`,
  `<file_sep>path`); plain examples too.
- Packing: whole examples, best-fit into rows of seq_len + 1 tokens; a row's tail is FIM_PAD, whose
  targets the loss ignores.
- Shards: shard k of a split is the packing of a fixed run of corpus lines (about `shard_rows` rows),
  written atomically with a JSON sidecar; a killed build resumes at the first missing shard, and
  meta.json is written last. Each document's randomness is seeded by (seed, split, line number), so
  the output depends on neither the number of workers nor on resumes.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import multiprocessing
import os
import random
import re
import shutil
import sys
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from midline.model.fim import EOT, FIM_PAD, MIDLINE, FimFormat, FimPrompt, encode_text
from midline.model.languages import LanguageSpec, resolve
from midline.model.syntax import is_word, line_start, thread_parser
from midline.training.stage import SPLITS, command, corpus_fingerprint, sha256_file, write_json, write_npy

SLACK = 8  # tokens kept free in a chunk's budget: a FIM split can tokenize a little longer than the whole
BYTES_PER_TOKEN = 3.5  # for sizing shards from corpus bytes before tokenizing
TASK_BYTES = 1 << 20  # corpus bytes per worker task
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@dataclass
class DataConfig:
    seq_len: int = 1024  # tokens the model sees per row; rows hold seq_len + 1 (inputs, then shifted targets)
    fim_rate: float = 0.9  # share of examples in FIM form; the rest are plain left-to-right
    spm_rate: float = 0.5  # share of FIM examples in SPM (midline's serving default); the rest PSM
    line_span_rate: float = 0.5  # share of FIM middles cut at line ends, like an editor's holes; the rest uniform
    end_rate: float = 0.1  # share of FIM middles that run on to the chunk's end (an empty suffix)
    holes: str = "chars"  # FIM hole recipe: "chars" (uniform spans, line_span_rate, end_rate) or "ast" (AST_HOLES)
    context_rate: float = 0.9  # share of examples with the repo name + file path the server sends
    mask_prompt: bool = False  # completion-only loss (a fine-tune's): FIM prompts' ids negated, read not taught
    seed: int = 0
    shard_rows: int = 16384  # about this many rows per shard (shards are sized from corpus bytes)
    workers: int | None = None  # tokenizing processes; None: one per core, 0: in this process


# -- examples -------------------------------------------------------------------------------------


def fim_split(text: str, rng: random.Random, line_span_rate: float = 0.0,
              end_rate: float = 0.0) -> tuple[str, str, str]:
    """(prefix, middle, suffix); they join back to `text`. With probability `line_span_rate` a line span
    (`line_span`), else two uniform character positions (the FIM paper's split); then, with probability
    `end_rate`, the middle runs on to the end of `text` (an empty suffix)."""
    if rng.random() < line_span_rate and (span := line_span(text, rng)):
        i, j = span
    else:
        i, j = sorted((rng.randint(0, len(text)), rng.randint(0, len(text))))
    if end_rate and rng.random() < end_rate:  # (no draw at 0: data built before this knob is unchanged)
        j = len(text)
    return text[:i], text[i:j], text[j:]


def line_span(text: str, rng: random.Random, max_lines: int = 8) -> tuple[int, int] | None:
    """A hole the way an editor makes one: from a point in a non-blank line (its indentation, half the
    time: a whole-line hole) to the end of that line or of one of the next few lines (1 + geometric(1/2),
    at most `max_lines`), the newline left in the suffix. None if `text` has no non-blank line."""
    lines = text.splitlines(keepends=True)
    starts = list(itertools.accumulate((len(line) for line in lines), initial=0))
    candidates = [k for k, line in enumerate(lines) if line.strip()]
    if not candidates:
        return None
    k = rng.choice(candidates)
    n = 1
    while n < max_lines and rng.random() < 0.5:
        n += 1
    line = lines[k].rstrip("\r\n")
    indent = starts[k] + len(line) - len(line.lstrip())
    i = indent if rng.random() < 0.5 else rng.randint(indent, starts[k] + len(line))
    last = min(k + n, len(lines)) - 1
    return i, starts[last] + len(lines[last].rstrip("\r\n"))


# -- syntax-aware holes (holes="ast") -------------------------------------------------------------

HOLES = ("chars", "ast")
AST_HOLES = {"lines": 0.22, "line_rest": 0.14, "node": 0.24, "new_line": 0.12, "empty": 0.08, "end": 0.10,
             "chars": 0.10}
AST_NODES = {"expression": 0.35, "statement": 0.2, "statements": 0.2, "block": 0.25}  # the kinds of "node" holes
MORE_LINES = 0.35  # chance that a multi-line hole takes one more line (again and again, up to MAX_LINES)
MAX_LINES = 8
MAX_NODE_LINES = 16  # node holes span at most this many lines (a bigger node is drawn again, then whole lines)
TRIES = 8  # draws of a line for a hole that needs a complete line, or a node, before whole lines instead
EMPTY_AT_LINE_END = 0.6  # share of empty middles at the end of a complete line; the rest at a line's code start
_TOKEN = re.compile(r"\w+|[^\w\s]")  # token starts for cutting a line: words whole, punctuation one by one


class Syntax:
    """A document's tree-sitter tree, asked in character offsets: which statement and nodes lie at a character."""

    def __init__(self, text: str, spec: LanguageSpec):
        data = text.encode("utf-8", "surrogatepass")
        self.tree = thread_parser(spec.name).parse(data)
        self.root = self.tree.root_node
        self.blocks = spec.blocks
        self._bytes = None  # character -> byte offset, when they differ
        if len(data) != len(text):
            points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
            widths = 1 + (points >= 0x80) + (points >= 0x800) + (points >= 0x10000)
            self._bytes = np.concatenate([[0], np.cumsum(widths)])

    @classmethod
    def of(cls, text: str, path: str) -> Syntax | None:
        """The syntax of `text`, a file at `path`; None for a language without a grammar."""
        spec = resolve(None, path)
        return cls(text, spec) if spec.grammar is not None else None

    def span(self, node) -> tuple[int, int]:
        """The node's (start, end) in characters."""
        if self._bytes is None:
            return node.start_byte, node.end_byte
        return int(np.searchsorted(self._bytes, node.start_byte)), int(np.searchsorted(self._bytes, node.end_byte))

    def starts_token(self, i: int) -> bool:
        """Whether a token of the tree starts at character i (and i is not inside one, like `==` or a triple quote)."""
        b = i if self._bytes is None else int(self._bytes[i])
        return self.root.descendant_for_byte_range(b, b + 1).start_byte == b

    def statement(self, i: int) -> tuple[object | None, list]:
        """(the statement at character i: the node under a block or the root that holds i's token; the named
        nodes between that token and it, innermost first). (None, []) where the syntax has errors."""
        b = i if self._bytes is None else int(self._bytes[i])
        node, inside = self.root.descendant_for_byte_range(b, b + 1), []
        while node is not None and node != self.root:
            parent = node.parent
            if parent is None or parent == self.root or parent.type in self.blocks:
                return (None, []) if node.has_error else (node, inside)
            if node.is_named:
                inside.append(node)
            node = parent
        return None, []


def _geometric(rng: random.Random, p: float, cap: int) -> int:
    n = 0
    while n < cap and rng.random() < p:
        n += 1
    return n


def _in_word(text: str, i: int) -> bool:
    """Whether position i of `text` lies between two word characters (inside an identifier or number)."""
    return 0 < i < len(text) and is_word(text[i - 1]) and is_word(text[i])


class _Chunk:
    """A chunk of a document `offset` characters in, with the document's syntax (or None), and where its
    lines' code starts (`indents`), where they end before the newline (`ends`) and before trailing blanks
    (`tails`); `code` lists the non-blank lines. The hole kinds are its methods."""

    def __init__(self, text: str, syntax: Syntax | None, offset: int):
        self.text, self.syntax, self.offset = text, syntax, offset
        self.indents, self.ends, self.tails = [], [], []
        at = 0
        for line in text.split("\n"):
            body = line.rstrip("\r")
            self.indents.append(at + len(body) - len(body.lstrip()))
            self.ends.append(at + len(body))
            self.tails.append(at + len(body.rstrip()))
            at += len(line) + 1
        self.code = [k for k in range(len(self.ends)) if self.indents[k] < self.tails[k]]  # non-blank lines

    def fits(self, node) -> bool:
        """Whether the node lies in the chunk."""
        start, end = self.syntax.span(node)
        return self.offset <= start < end <= self.offset + len(self.text)

    def small(self, node) -> bool:
        """Whether the node lies in the chunk and spans at most MAX_NODE_LINES lines."""
        start, end = self.syntax.span(node)
        return self.fits(node) and self.text.count("\n", start - self.offset, end - self.offset) < MAX_NODE_LINES

    def complete(self, n: int) -> bool:
        """Whether code line n (an index into `code`) ends complete: a statement ends at its end or starts
        the next code line. True without syntax, or where it has errors (line-based holes)."""
        if self.syntax is None:
            return True
        k = self.code[n]
        node, _ = self.syntax.statement(self.offset + self.tails[k] - 1)
        if node is None or self.syntax.span(node)[1] == self.offset + self.tails[k]:
            return True
        if n + 1 == len(self.code):
            return False
        start = self.offset + self.indents[self.code[n + 1]]
        node, _ = self.syntax.statement(start)
        return node is None or self.syntax.span(node)[0] == start

    def last_line(self, rng: random.Random, n: int) -> int:
        """The last code line of a hole from code line n on: a few more lines, then on to a complete end."""
        last = min(n + _geometric(rng, MORE_LINES, MAX_LINES - 1), len(self.code) - 1)
        for m in range(last, min(last + MAX_LINES, len(self.code))):
            if self.complete(m):
                return m
        return last

    def token_cuts(self, k: int) -> list[int]:
        """Where line k can be cut after its first token: after a blank, or where a token of the tree starts (not
        inside `==`, a triple quote or an escape); without syntax, anywhere but inside a word or a run of one
        punctuation character."""
        text, cuts = self.text, []
        for m in itertools.islice(_TOKEN.finditer(text, self.indents[k], self.tails[k]), 1, None):
            i = m.start()  # (never inside a word: the pattern takes words whole)
            token = self.syntax.starts_token(self.offset + i) if self.syntax is not None else text[i - 1] != text[i]
            if token or text[i - 1].isspace():
                cuts.append(i)
        return cuts

    # each hole kind: (start, end) in the chunk, or None where it does not fit

    def lines(self, rng: random.Random) -> tuple[int, int]:
        n = rng.randrange(len(self.code))
        return self.indents[self.code[n]], self.ends[self.code[self.last_line(rng, n)]]

    def line_rest(self, rng: random.Random) -> tuple[int, int] | None:
        for _ in range(3):
            n = rng.randrange(len(self.code))
            if cuts := self.token_cuts(self.code[n]):
                last = self.last_line(rng, n) if rng.random() < MORE_LINES else n
                return rng.choice(cuts), self.ends[self.code[last]]
        return None

    def new_line(self, rng: random.Random) -> tuple[int, int] | None:
        if len(self.code) < 2:
            return None
        for _ in range(TRIES):
            n = rng.randrange(len(self.code) - 1)
            if self.complete(n):
                return self.ends[self.code[n]], self.ends[self.code[self.last_line(rng, n + 1)]]
        return None

    def empty(self, rng: random.Random) -> tuple[int, int]:
        if rng.random() < EMPTY_AT_LINE_END:
            for _ in range(TRIES):
                n = rng.randrange(len(self.code))
                if self.complete(n):
                    return self.ends[self.code[n]], self.ends[self.code[n]]
        i = self.indents[self.code[rng.randrange(len(self.code))]]
        return i, i

    def end(self, rng: random.Random) -> tuple[int, int]:
        n = max(0, len(self.code) - 1 - _geometric(rng, 0.5, MAX_LINES - 1))
        k, r = self.code[n], rng.random()
        if r < 0.25 and n > 0 and self.complete(n - 1):  # a new line at the end of a file
            return self.ends[self.code[n - 1]], len(self.text)
        if r < 0.45 and (cuts := self.token_cuts(k)):
            return rng.choice(cuts), len(self.text)
        return self.indents[k], len(self.text)

    def node(self, rng: random.Random) -> tuple[int, int, str] | None:
        """A complete node of at most MAX_NODE_LINES lines: (start, end, kind), kind one of AST_NODES (a
        smaller one where the drawn one does not fit)."""
        if self.syntax is None:
            return None
        drawn = rng.choices(list(AST_NODES), weights=list(AST_NODES.values()))[0]
        for _ in range(TRIES):
            k = self.code[rng.randrange(len(self.code))]
            i = rng.randrange(self.indents[k], self.tails[k])
            if found := self._node_at(i if not self.text[i].isspace() else self.indents[k], drawn, rng):
                return found
        return None

    def _node_at(self, i: int, kind: str, rng: random.Random) -> tuple[int, int, str] | None:
        statement, inside = self.syntax.statement(self.offset + i)
        if statement is None:
            return None
        if not self.small(statement):  # it runs out of the chunk, or is too big: a node inside it
            kind = "expression"
        first = last = statement
        if kind == "block":
            block = self._block(statement)
            if block is not None and block.named_child_count:
                first, last = block.named_child(0), block.named_child(block.named_child_count - 1)
            else:
                kind = "statements"
        if kind == "expression":  # a node inside the statement, around the drawn character, else one of its parts
            def part(n) -> bool:
                return self.small(n) and n.type not in self.syntax.blocks and not n.is_extra

            inside = [n for n in inside if part(n)] or [n for n in statement.named_children if part(n)]
            if inside:
                first = last = rng.choice(inside)
            elif self.small(statement):
                kind = "statement"
            else:
                return None
        if kind == "statements":
            for _ in range(1 + _geometric(rng, 0.5, MAX_LINES - 2)):
                after = last.next_named_sibling
                if after is None or not self.fits(after):
                    break
                last = after
            kind = "statements" if last != statement else "statement"
        start, end = self.syntax.span(first)[0] - self.offset, self.syntax.span(last)[1] - self.offset
        if start >= end or self.text.count("\n", start, end) >= MAX_NODE_LINES:
            return None
        if first.is_extra and self.text[line_start(self.text, start) : start].strip():
            return None  # a comment after code: no hole starts there
        return start, end, kind

    def _block(self, statement):
        """The block around `statement`, else one inside it (a top-level definition's body), if it lies in the chunk."""
        around = statement.parent
        if around is not None and around.type in self.syntax.blocks and not around.has_error and self.fits(around):
            return around
        level = [statement]
        for _ in range(2):
            level = [c for n in level for c in n.named_children]
            for node in level:
                if node.type in self.syntax.blocks and self.fits(node):
                    return node
        return None


def ast_split(text: str, rng: random.Random, syntax: Syntax | None = None,
              offset: int = 0) -> tuple[str, str, str, str]:
    """(prefix, middle, suffix, kind): a hole in `text` (a chunk of a document, `offset` characters into it)
    of a kind drawn from AST_HOLES; `syntax` is the document's (None: line-based holes). The kind is the
    hole's own: a node's kind from AST_NODES, "lines" where the drawn kind did not fit."""
    chunk = _Chunk(text, syntax, offset)
    kind = rng.choices(list(AST_HOLES), weights=list(AST_HOLES.values()))[0]
    if not chunk.code:  # only blank lines
        kind = "chars"
    span = None
    if kind == "node" and (found := chunk.node(rng)):
        *span, kind = found
    elif kind in ("line_rest", "new_line", "empty", "end"):
        span = getattr(chunk, kind)(rng)
    if kind == "chars":
        prefix, middle, suffix = fim_split(text, rng)
        return prefix, middle, suffix, kind
    if span is None or _in_word(text, span[0]) or _in_word(text, span[1]):
        kind, span = "lines", chunk.lines(rng)
    i, j = span
    return text[:i], text[i:j], text[j:], kind


def fim_example(text: str, rng: random.Random, tokenizer, config: DataConfig, *, path: str = "",
                repo: str = "", fmt: FimFormat = MIDLINE) -> list[int]:
    """One example's ids, ending with EOT: FIM (PSM or SPM) or plain left-to-right, with or without path/repo."""
    syntax = Syntax.of(text, path) if config.holes == "ast" else None
    return _example(text, rng, tokenizer, config, path, repo, syntax=syntax, fmt=fmt)[0]


def _example(text: str, rng: random.Random, tokenizer, config: DataConfig, path: str, repo: str, fim: bool = True, *,
             syntax: Syntax | None = None, offset: int = 0, holes: Counter | None = None,
             fmt: FimFormat = MIDLINE) -> tuple[list[int], str, bool]:
    """(ids, kind: "psm" | "spm" | "plain", has file context), in `fmt`'s layout; with `config.mask_prompt`, a FIM
    example's prompt ids negated (`~id`: read, not taught). With the ast recipe, `text` lies `offset`
    characters into a document whose syntax is `syntax`, and `holes` counts the FIM hole's kind."""
    if rng.random() >= config.context_rate:
        path = repo = ""
    if fim and rng.random() < config.fim_rate:
        mode = "spm" if rng.random() < config.spm_rate else "psm"
        if config.holes == "ast":
            prefix, middle, suffix, hole = ast_split(text, rng, syntax, offset)
            if holes is not None:
                holes[f"hole_{hole}"] += 1
        else:
            prefix, middle, suffix = fim_split(text, rng, config.line_span_rate, config.end_rate)
        prompt = FimPrompt(prefix, suffix, path=path, repo=repo)
        ids = fmt.encode_example(prompt, middle, tokenizer, mode)
        if config.mask_prompt:  # encode_example = encode(prompt) + the middle + EOT
            read = len(ids) - len(encode_text(tokenizer, middle) if middle else []) - 1
            ids = [~i for i in ids[:read]] + ids[read:]
        return ids, mode, bool(path or repo)
    eot = tokenizer.convert_tokens_to_ids(fmt.eot)
    ids = header_ids(tokenizer, path, repo, fmt) + encode_text(tokenizer, text) + [eot]
    return ids, "plain", bool(path or repo)


def header_ids(tokenizer, path: str = "", repo: str = "", fmt: FimFormat = MIDLINE) -> list[int]:
    """The file-level context the server puts before its FIM tokens (`<repo_name>repo\\n<file_sep>path\\n`)."""
    ids = fmt.encode(FimPrompt("", "", path=path, repo=repo), tokenizer, "psm")
    return ids[: ids.index(tokenizer.convert_tokens_to_ids(fmt.prefix))]  # up to the (empty) FIM part


def shown_repo(repo: str) -> str:
    """The repository name as the server shows it: its workspace folder's name ("owner/name" -> "name")."""
    return repo.rstrip("/").rsplit("/", 1)[-1]


def chunks(text: str, tokenizer, budget: int) -> list[str]:
    """`text` cut at line ends into pieces of about `budget` tokens at most (mid-line only inside a longer line)."""
    starts = [s for s, _ in tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).offsets]
    if len(starts) <= budget:
        return [text]
    line_ends = [m.end() for m in re.finditer("\n", text)]
    out, c0 = [], 0
    while c0 < len(text):
        t0 = bisect.bisect_left(starts, c0)
        if t0 + budget >= len(starts):
            out.append(text[c0:])
            break
        limit = starts[t0 + budget]  # the chunk ends at or before this character
        j = bisect.bisect_right(line_ends, limit) - 1
        end = line_ends[j] if j >= 0 and line_ends[j] > c0 else max(limit, c0 + 1)
        out.append(text[c0:end])
        c0 = end
    return out


def document_examples(text: str, rng: random.Random, tokenizer, config: DataConfig, *, path: str = "", repo: str = "",
                      stats: Counter | None = None, fmt: FimFormat = MIDLINE) -> list[tuple[list[int], str, bool]]:
    """A document's examples, one per chunk, each at most seq_len + 1 tokens: (ids, kind, has context), in `fmt`'s
    layout. `stats` counts the ast recipe's hole kinds (`hole_<kind>`). With `config.mask_prompt` (a fine-tune's
    completion-only loss) the prompt's ids are negated, and a chunk whose FIM split runs over is halved, never
    taken as plain text."""
    room = config.seq_len + 1
    _check_holes(config)
    syntax = Syntax.of(text, path) if config.holes == "ast" and config.fim_rate > 0 else None
    if len(header_ids(tokenizer, path, repo, fmt)) > room // 4:  # an absurd path: leave the context out
        path = repo = ""
    budget = room - len(fmt.encode(FimPrompt("", "", path=path, repo=repo), tokenizer)) - 1 - SLACK
    if budget < 8:
        raise ValueError(f"seq_len {config.seq_len} is too short for FIM examples")
    out = []
    pieces = chunks(text, tokenizer, budget)
    todo = list(zip(itertools.accumulate((len(p) for p in pieces), initial=0), pieces))[::-1]  # (offset, chunk)
    while todo:
        offset, chunk = todo.pop()
        holes: Counter = Counter()
        example = _example(chunk, rng, tokenizer, config, path, repo, syntax=syntax, offset=offset, holes=holes,
                           fmt=fmt)
        if len(example[0]) > room and not config.mask_prompt:  # the FIM split ran over the whole: plain text fits
            holes.clear()
            example = _example(chunk, rng, tokenizer, config, path, repo, fim=False, fmt=fmt)
        if len(example[0]) > room:  # the chunk estimate was off: halve it (rare)
            cut = chunk.rfind("\n", 0, len(chunk) // 2) + 1 or len(chunk) // 2
            todo += [(offset + cut, chunk[cut:]), (offset, chunk[:cut])]
            continue
        out.append(example)
        if stats is not None:
            stats.update(holes)
    return out


# -- packing --------------------------------------------------------------------------------------


def pack(lengths: list[int], room: int) -> list[list[int]]:
    """Best fit: rows of example indices, in order, each row's lengths summing to at most `room`."""
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free tokens, row), sorted
    for i, n in enumerate(lengths):
        k = bisect.bisect_left(free, (n, -1))
        if k == len(free):
            rows.append([i])
            left, row = room - n, len(rows) - 1
        else:
            left, row = free.pop(k)
            rows[row].append(i)
            left -= n
        if left > 0:
            bisect.insort(free, (left, row))
    return rows


# -- the stage ------------------------------------------------------------------------------------


def build_data(corpus_dir: Path, tokenizer_dir: Path, out_dir: Path, config: DataConfig, *, force: bool = False,
               command: list[str] | None = None) -> dict:
    """Tokenize, FIM and pack `corpus_dir`'s train/valid jsonl into `out_dir`; returns meta.json's content
    (`command`, the command line, is recorded in it)."""
    corpus_dir, tokenizer_dir, out_dir = Path(corpus_dir), Path(tokenizer_dir), Path(out_dir)
    for split in SPLITS:
        if not (corpus_dir / f"{split}.jsonl").is_file():
            raise FileNotFoundError(f"{corpus_dir / f'{split}.jsonl'} is missing: build the corpus stage first")
    _check_holes(config)
    tokenizer = load_tokenizer(tokenizer_dir)
    params = {**asdict(config), "workers": None, "tokenizer_sha256": sha256_file(tokenizer_dir / "tokenizer.json"),
              "corpus": corpus_fingerprint(corpus_dir)}
    if not config.mask_prompt:  # recorded when on only: builds from before the option still resume
        del params["mask_prompt"]
    if config.holes == "ast":  # the mixture is code, not a knob: a changed one must not resume old shards
        params.update(ast_holes=AST_HOLES, ast_nodes=AST_NODES, more_lines=MORE_LINES, max_lines=MAX_LINES,
                      max_node_lines=MAX_NODE_LINES, tries=TRIES, empty_at_line_end=EMPTY_AT_LINE_END)
    meta_path = out_dir / "meta.json"
    if force and out_dir.exists():
        _clean(out_dir)
    elif meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("complete") and meta.get("params") == params:
            return meta
        _check_params(meta.get("params"), params, meta_path)
    out_dir.mkdir(parents=True, exist_ok=True)

    workers = (os.cpu_count() or 1) if config.workers is None else config.workers
    pool = None
    if workers > 0:  # fork is instant; spawn would re-import transformers in every worker
        ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
        pool = ctx.Pool(workers, initializer=_init_worker, initargs=(str(tokenizer_dir), config))
    else:
        _init_worker(str(tokenizer_dir), config)
    pad, dtype = tokenizer.convert_tokens_to_ids(FIM_PAD), _dtype(len(tokenizer), config.mask_prompt)
    try:
        splits = {split: _build_split(corpus_dir / f"{split}.jsonl", split, out_dir, config, params, pool, pad, dtype)
                  for split in SPLITS}
    finally:
        if pool is not None:
            pool.close()
            pool.join()

    (out_dir / "tokenizer").mkdir(exist_ok=True)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).exists():
            shutil.copyfile(tokenizer_dir / name, out_dir / "tokenizer" / name)
    meta = {
        "seq_len": config.seq_len, "dtype": dtype.name, "vocab_size": len(tokenizer),
        "pad_id": pad, "eot_id": tokenizer.convert_tokens_to_ids(EOT), "tokenizer": str(tokenizer_dir.resolve()),
        "format": MIDLINE.name, "fim_rate": config.fim_rate, "spm_rate": config.spm_rate,
        "line_span_rate": config.line_span_rate, "end_rate": config.end_rate, "holes": config.holes,
        "context_rate": config.context_rate, "seed": config.seed, "splits": splits, "params": params,
        "command": command, "complete": True,
    }
    write_json(meta_path, meta, indent=1)
    return meta


def load_tokenizer(tokenizer_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)


def _build_split(path: Path, split: str, out_dir: Path, config: DataConfig, params: dict, pool, pad: int,
                 dtype: np.dtype) -> dict:
    """Write `split`'s shards (skipping finished ones) and return the split's totals."""
    from tqdm import tqdm

    room, target = config.seq_len + 1, int(config.shard_rows * config.seq_len * BYTES_PER_TOKEN)
    totals: Counter = Counter()
    shards: list[str] = []
    pending: deque = deque()
    bar = tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=f"data {split}", mininterval=2, disable=None)

    def finish() -> None:
        index, name, nbytes, result = pending.popleft()
        tokens, lengths, stats = _merge(result.get() if hasattr(result, "get") else result)
        order = np.random.default_rng([config.seed, SPLITS.index(split), index]).permutation(len(lengths))
        stats["rows"] = _write_shard(out_dir / name, tokens, lengths, order, room, pad, dtype)
        stats.update(tokens=int(lengths.sum()), examples=len(lengths))
        write_json(out_dir / name.replace(".npy", ".json"), {"params": params, "stats": dict(stats)}, indent=1)
        totals.update(stats)
        bar.update(nbytes)

    for index, first, lines, nbytes in _groups(path, target):
        name = f"{split}-{index:05d}.npy"
        shards.append(name)
        sidecar = out_dir / name.replace(".npy", ".json")
        if sidecar.exists():  # finished by an earlier run
            done = json.loads(sidecar.read_text())
            _check_params(done["params"], params, sidecar)
            totals.update(done["stats"])
            bar.update(nbytes)
            continue
        tasks = [(split, first + i, lines[i : i + n]) for i, n in _task_spans(lines)]
        result = pool.map_async(_encode_task, tasks) if pool is not None else [_encode_task(t) for t in tasks]
        pending.append((index, name, nbytes, result))
        if len(pending) > 1:  # tokenize the next shard while this one is packed and written
            finish()
    while pending:
        finish()
    bar.close()
    tokens, rows = totals["tokens"], totals["rows"]
    holes = {k.removeprefix("hole_"): totals[k] for k in sorted(totals) if k.startswith("hole_")}
    counts = ("rows", "tokens", "examples", "documents", "chars", "psm", "spm", "plain", "context")
    return {"shards": shards, **{k: totals[k] for k in counts},
            "fill": round(tokens / (rows * room), 4) if rows else 0.0, **({"holes": holes} if holes else {})}


def _groups(path: Path, target_bytes: int) -> Iterator[tuple[int, int, list[str], int]]:
    """(shard index, first line number, lines, bytes): runs of the jsonl of about `target_bytes`."""
    index, first, lines, size = 0, 0, [], 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f):
            lines.append(raw.decode("utf-8"))
            size += len(raw)
            if size >= target_bytes:
                yield index, first, lines, size
                index, first, lines, size = index + 1, number + 1, [], 0
    if lines or index == 0:
        yield index, first, lines, size


def _task_spans(lines: list[str]) -> Iterator[tuple[int, int]]:
    start, size = 0, 0
    for i, line in enumerate(lines):
        size += len(line)
        if size >= TASK_BYTES:
            yield start, i + 1 - start
            start, size = i + 1, 0
    if start < len(lines):
        yield start, len(lines) - start


_WORKER: dict = {}


def _init_worker(tokenizer_dir: str, config: DataConfig) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER.update(tokenizer=load_tokenizer(Path(tokenizer_dir)), config=config)


def _encode_task(task: tuple[str, int, list[str]]) -> tuple[np.ndarray, np.ndarray, Counter]:
    """Corpus lines -> (all their examples' ids concatenated, each example's length, counts)."""
    split, first, lines = task
    tokenizer, config = _WORKER["tokenizer"], _WORKER["config"]
    ids: list[int] = []
    lengths: list[int] = []
    stats: Counter = Counter()
    for number, line in enumerate(lines, first):
        if not line.strip():
            continue
        doc = json.loads(line)
        if not doc["text"]:
            continue
        rng = random.Random(f"{config.seed}/{split}/{number}")
        for example, kind, context in document_examples(doc["text"], rng, tokenizer, config, path=doc.get("path", ""),
                                                        repo=shown_repo(doc.get("repo", "")), stats=stats):
            ids += example
            lengths.append(len(example))
            stats[kind] += 1
            stats["context"] += context
        stats["documents"] += 1
        stats["chars"] += len(doc["text"])
    return np.array(ids, dtype=np.int32), np.array(lengths, dtype=np.int64), stats


def _merge(results: list) -> tuple[np.ndarray, np.ndarray, Counter]:
    stats: Counter = Counter()
    for r in results:
        stats.update(r[2])
    if not results:
        return np.zeros(0, np.int32), np.zeros(0, np.int64), stats
    return np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results]), stats


def packed_rows(tokens: np.ndarray, lengths: np.ndarray, order: np.ndarray, room: int, pad: int, dtype) -> np.ndarray:
    """The examples (concatenated in `tokens`, taken in `order`) best-fit into rows of `room`, padded with `pad`."""
    starts = np.cumsum(lengths) - lengths
    rows = pack([int(lengths[i]) for i in order], room)
    out = np.full((len(rows), room), pad, dtype=dtype)
    for r, members in enumerate(rows):
        at = 0
        for k in members:
            i = order[k]
            n = int(lengths[i])
            out[r, at : at + n] = tokens[starts[i] : starts[i] + n]
            at += n
    return out


def _write_shard(path: Path, tokens: np.ndarray, lengths: np.ndarray, order: np.ndarray, room: int, pad: int,
                 dtype: np.dtype) -> int:
    """Pack the examples (taken in `order`) into rows padded with `pad`, written atomically to `path`; returns the
    row count."""
    out = packed_rows(tokens, lengths, order, room, pad, dtype)
    write_npy(path, out, fsync=True)
    return len(out)


def _dtype(vocab_size: int, signed: bool = False) -> np.dtype:
    """The rows' dtype: uint16 where the ids fit, int32 for a bigger vocabulary or negated (`~id`) prompts."""
    return np.dtype(np.uint16 if vocab_size <= 65535 and not signed else np.int32)


def _check_holes(config: DataConfig) -> None:
    if config.holes not in HOLES:
        raise ValueError(f"unknown FIM hole recipe {config.holes!r} (known: {', '.join(HOLES)})")


def _check_params(found: dict | None, wanted: dict, where: Path) -> None:
    if found != wanted:
        raise ValueError(f"{where} was built with other settings, tokenizer or corpus; "
                         "pass --force (force=True) to rebuild")


def _clean(out_dir: Path) -> None:
    """Remove this stage's files (only those) from `out_dir`."""
    for p in out_dir.iterdir():
        if p.name == "meta.json" or re.fullmatch(r"(train|valid)-\d{5}\.(npy|json)(\.tmp)?", p.name):
            p.unlink()
    shutil.rmtree(out_dir / "tokenizer", ignore_errors=True)


# -- reading --------------------------------------------------------------------------------------


class PackedDataset:
    """A split's rows, memory-mapped, and a deterministic batch order: epoch e is a permutation seeded by (seed, e).

    Global batch s is rows order[s*B:(s+1)*B] of its epoch, so a run resumed at step s sees exactly the
    batches an uninterrupted one would; rank r of w gets the r-th contiguous slice of each global batch.
    """

    def __init__(self, data_dir: Path, split: str = "train", *, seed: int = 0):
        data_dir = Path(data_dir)
        meta = read_meta(data_dir)
        self.meta, self.split, self.seed = meta, split, seed
        self.seq_len, self.pad_id, self.eot_id = meta["seq_len"], meta["pad_id"], meta["eot_id"]
        self.shards = [np.load(data_dir / name, mmap_mode="r", allow_pickle=False)
                       for name in meta["splits"][split]["shards"]]
        self.offsets = np.cumsum([0] + [len(s) for s in self.shards])
        self._order: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> np.ndarray:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        s = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return np.asarray(self.shards[s][i - self.offsets[s]])

    def rows(self, indices: np.ndarray) -> np.ndarray:
        """Rows at `indices`, in that order: [len(indices), seq_len + 1]."""
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(indices), self.seq_len + 1), dtype=self.shards[0].dtype if self.shards else np.uint16)
        shard = np.searchsorted(self.offsets, indices, side="right") - 1
        for s in np.unique(shard):
            at = shard == s
            local = indices[at] - self.offsets[s]
            sort = np.argsort(local)  # read the memmap in order
            rows = self.shards[s][local[sort]]
            out[np.flatnonzero(at)[sort]] = rows
        return out

    def order(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self)))
        return self._order[1]

    def steps_per_epoch(self, batch_size: int) -> int:
        return len(self) // batch_size

    def position(self, step: int, batch_size: int) -> tuple[int, int]:
        """(epoch, batch within the epoch) of global step `step`."""
        per_epoch = self.steps_per_epoch(batch_size)
        if per_epoch == 0:
            raise ValueError(f"the {self.split} split has {len(self)} rows, fewer than one batch of {batch_size}")
        return divmod(step, per_epoch)

    def batch(self, step: int, batch_size: int, *, rank: int = 0, world: int = 1) -> np.ndarray:
        """Rank `rank`'s slice of global batch `step` (batch_size rows in all): [batch_size // world, seq_len + 1]."""
        if batch_size % world:
            raise ValueError(f"batch size {batch_size} is not a multiple of the world size {world}")
        epoch, k = self.position(step, batch_size)
        per_rank = batch_size // world
        start = k * batch_size + rank * per_rank
        return self.rows(self.order(epoch)[start : start + per_rank])

    def batches(self, batch_size: int, *, start_step: int = 0, rank: int = 0, world: int = 1) -> Iterator[np.ndarray]:
        """Batches from global step `start_step` on, endlessly (epoch after epoch)."""
        step = start_step
        while True:
            yield self.batch(step, batch_size, rank=rank, world=world)
            step += 1


def read_meta(data_dir: Path) -> dict:
    path = Path(data_dir) / "meta.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run the data stage (midline-train data) first")
    meta = json.loads(path.read_text())
    if not meta.get("complete"):
        raise ValueError(f"the data in {data_dir} is incomplete: run the data stage again to finish it")
    return meta


# -- command line ---------------------------------------------------------------------------------


def add_parser(stages) -> None:
    """The `data` subcommand."""
    d = DataConfig()
    p = stages.add_parser("data", help="tokenize, FIM and pack the corpus into training rows")
    p.add_argument("--corpus", type=Path, required=True, metavar="DIR",
                   help="the corpus stage's output (train.jsonl, valid.jsonl)")
    p.add_argument("--tokenizer", type=Path, required=True, metavar="DIR")
    p.add_argument("--out", type=Path, required=True, metavar="DIR")
    p.add_argument("--seq-len", type=int, default=d.seq_len)
    p.add_argument("--fim-rate", type=float, default=d.fim_rate)
    p.add_argument("--spm-rate", type=float, default=d.spm_rate)
    p.add_argument("--line-span-rate", type=float, default=d.line_span_rate,
                   help="share of FIM middles cut at line ends")
    p.add_argument("--end-rate", type=float, default=d.end_rate,
                   help="share of FIM middles that run to the chunk's end (empty suffix)")
    p.add_argument("--holes", choices=HOLES, default=d.holes,
                   help="FIM hole recipe: chars (uniform spans, --line-span-rate, --end-rate) "
                        "or ast (editor-like holes chosen with tree-sitter)")
    p.add_argument("--context-rate", type=float, default=d.context_rate, help="share of examples with repo name + path")
    p.add_argument("--mask-prompt", action="store_true",
                   help="teach the FIM middles only (a fine-tune's completion-only loss): prompts are read, not taught")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--shard-rows", type=int, default=d.shard_rows)
    p.add_argument("--workers", type=int, default=None, help="default: one per core; 0: no subprocesses")
    p.add_argument("--force", action="store_true", help="rebuild even if the output is complete")
    p.set_defaults(run=run)


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    config = DataConfig(seq_len=args.seq_len, fim_rate=args.fim_rate, spm_rate=args.spm_rate,
                        line_span_rate=args.line_span_rate, end_rate=args.end_rate, holes=args.holes,
                        context_rate=args.context_rate, mask_prompt=args.mask_prompt, seed=args.seed,
                        shard_rows=args.shard_rows, workers=args.workers)
    start = time.monotonic()
    meta = build_data(args.corpus, args.tokenizer, args.out, config, force=args.force, command=command())
    for split, s in meta["splits"].items():
        print(f"{split}: {s['documents']} documents -> {s['examples']} examples "
              f"({s['psm']} PSM, {s['spm']} SPM, {s['plain']} plain), "
              f"{s['rows']} rows x {meta['seq_len'] + 1}, {s['tokens']} tokens ({s['fill']:.1%} full), "
              f"{len(s['shards'])} shards")
        if s.get("holes"):
            total = sum(s["holes"].values())
            print(f"  {split} holes: " + ", ".join(f"{k} {v} ({v / total:.1%})" for k, v in s["holes"].items()))
    print(f"wrote {args.out} in {time.monotonic() - start:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m midline.training.data")
    add_parser(parser.add_subparsers(required=True))
    args = parser.parse_args(["data", *(sys.argv[1:] if argv is None else argv)])
    return args.run(parser, args)


if __name__ == "__main__":
    raise SystemExit(main())
