"""Turn the model's raw continuation into what the editor shows, or drop it.

`postprocess` runs once per finished generation:

  single-line hole: first line -> reuse auto-closed brackets, else trim overlap with the line suffix
                    -> balance brackets; at the start of a line's code, a first line the model ended is a
                    new line above that code
  multi-line hole:  strip trailing whitespace -> stop at the end of the cursor's block -> stop where the
                    suffix's next line is repeated -> at most `max_lines` lines -> trim overlap with the line suffix
  both:             cut a looping tail first; drop empty and repetitive text -> syntax gate (tree-sitter;
                    plain text skips it)

`cut_unsure_lines` runs before it when the model gave per-token log-probabilities: a line after the first
that the model was unsure of (its tokens' mean log-probability under a floor) is cut, with all that follows.
`kept_end` says which part of the model's text a suggestion kept (the tokens the confidence floor judges).

`block_complete` runs after every generated token and applies the cheap stopping rules of the same
pipeline, so generation ends as soon as the answer is whole.
"""

from __future__ import annotations

import functools
import itertools
import re
from dataclasses import dataclass
from typing import Iterator, NamedTuple

from midline.model.languages import (
    INDENT_OPENERS,
    LANGUAGES,
    PLAIN_TEXT,
    definition_line,
    resolve,
)
from midline.model import syntax
from midline.model.syntax import error_count, error_spans, is_word, thread_parser, utf8  # noqa: F401 (error_count: re-exported)

from .context import CompletionContext, Hole

_PAIRS = {"(": ")", "[": "]", "{": "}"}
_OPENER_OF = {close: open_ for open_, close in _PAIRS.items()}
_BRACKETS = frozenset("()[]{}")

# A line suffix an editor typically auto-inserted: closers and quotes, then maybe one terminator.
_AUTO_CLOSED = re.compile(r"([)\]}\"'`]+)([:;,]?)\s*")
# A line that starts a new top-level definition (one language-agnostic union of the table's words).
_DEFINITION = definition_line()
# A short unit (up to 10 characters) repeated at least four times in a row.
_REPEATED_UNIT = re.compile(r"(\S.{0,9}?)(?:\s*\1){3,}", re.S)
# A longer unit (8 to 80 characters, with a letter) three times in a row: a model stuck in a loop.
_LOOP = re.compile(r"(?=[^\n]*[A-Za-z])(.{8,80}?)\1{2,}", re.S)
_TOKEN = re.compile(r"\w+|\S")
_MAX_GATE_TRIES = 12  # parses per candidate at most, the full candidate included


@dataclass(frozen=True)
class Suggestion:
    """What the editor inserts at the cursor."""

    text: str  # text to insert at the cursor
    replace: int = 0  # number of characters right after the cursor (on the cursor's line) that `text` replaces


def block_complete(text: str, ctx: CompletionContext, max_lines: int) -> bool:
    """True once `text` already holds a whole answer, so generation can stop early. Cheap: no parsing."""
    if ctx.hole is Hole.NONE:
        return True
    if ctx.hole is Hole.SINGLE_LINE:
        return "\n" in text.lstrip()
    end = text.rfind("\n")
    if end < 0:
        return False
    complete = text[:end]  # only whole lines: the last one may still grow
    if not ctx.block and text[end + 1 :].strip():  # (a started line shows its indentation: enough to end a statement)
        complete = text
    if not ctx.block and _statement_lines(_normalize_start(complete, ctx).split("\n"), ctx) is not None:
        return True
    return complete.count("\n") + 1 >= _line_budget(text, max_lines) or _block_end(complete, ctx) is not None


def cut_unsure_lines(text: str, token_ends: list[int], token_logprobs: list[float], floor: float) -> str:
    """`text` up to the first line after its first non-blank one whose tokens' mean log-probability is under
    `floor`. A token counts for the line its last character is on (a newline ends its line)."""
    sums: dict[int, list[float]] = {}
    start = 0
    for end, logprob in zip(token_ends, token_logprobs):
        if end > start:  # (a token that ends mid-character has no text of its own yet)
            sums.setdefault(text.count("\n", 0, end - 1), []).append(logprob)
            start = end
    lines = text.split("\n")
    first = next((i for i, line in enumerate(lines) if line.strip()), len(lines))
    for i in range(first + 1, len(lines)):
        if (scores := sums.get(i)) and sum(scores) / len(scores) < floor:
            return "\n".join(lines[:i])
    return text


def kept_end(raw: str, shown: str) -> int | None:
    """Where the part of the model's text `raw` that the suggestion text `shown` keeps ends: just after the character
    of `raw` that gives `shown`'s last non-blank one; None where `shown` has none, or is not made of `raw`'s first
    non-blank characters.

    Post-processing (`cut_unsure_lines` and `postprocess`) only drops blank lines and white space before the answer,
    re-indents it and cuts its end, and the server adds the indentation it typed, so `shown`'s non-blank characters
    are `raw`'s first ones, in order: the kept part is `raw` up to the last of them (white space before it, which
    places the answer, included; what was cut after it not)."""
    wanted = [char for char in shown if not char.isspace()]
    if not wanted:
        return None
    found = 0
    for at, char in enumerate(raw):
        if char.isspace():
            continue
        if char != wanted[found]:
            return None
        found += 1
        if found == len(wanted):
            return at + 1
    return None


def postprocess(text: str, ctx: CompletionContext, max_lines: int) -> Suggestion | None:
    """Clean a raw candidate; None to drop it."""
    if ctx.hole is Hole.NONE:
        return None
    text = _cut_loop(text)
    if ctx.hole is Hole.SINGLE_LINE and _opens_line(text, ctx):
        suggestion = _new_line_before(text, ctx)
    elif ctx.hole is Hole.SINGLE_LINE:
        suggestion = _fit_line(_first_line(text, ctx), ctx)
    else:
        suggestion = _fit_block(text, ctx, max_lines)
    if suggestion is None or _is_repetitive(suggestion.text):
        return None
    suggestion = _syntax_gate(suggestion, ctx)
    if suggestion is None or not ctx.indent:
        return suggestion
    return Suggestion(ctx.indent + suggestion.text, suggestion.replace)  # the indentation the server typed


def repeats_suffix(suggestion: Suggestion, ctx: CompletionContext) -> bool:
    """Whether `suggestion` only writes again what already follows it: the text after the cursor (past what it
    replaces), leading white space aside, starts with it."""
    text = suggestion.text.strip()
    return bool(text) and ctx.suffix[suggestion.replace :].lstrip().startswith(text)


# -- single-line holes ----------------------------------------------------------------------------


def _first_line(text: str, ctx: CompletionContext) -> str:
    """The first line with content; a line after leading newlines loses its indentation (it joins the cursor's
    line). Trailing space is dropped unless code follows the cursor (`return |x`)."""
    lines = text.split("\n")
    if lines[0].strip():
        line = lines[0].rstrip()
        return line + " " if lines[0] != line and is_word(ctx.line_suffix[:1]) else line
    return next((line.strip() for line in lines[1:] if line.strip()), "")


def _opens_line(text: str, ctx: CompletionContext) -> bool:
    """At the start of a line's code (only indentation before the cursor), an answer that ends its first line
    writes a new line above the code instead of joining it."""
    first, newline, _ = text.partition("\n")
    return not ctx.line_prefix.strip() and bool(first.strip()) and bool(newline)


def _new_line_before(text: str, ctx: CompletionContext) -> Suggestion | None:
    """The answer's first line, then a line break and the cursor's indentation back to the line's code."""
    line = text.partition("\n")[0].rstrip()
    if ctx.line_prefix:
        line = line.lstrip()  # (the indentation is typed)
    if line.strip() == ctx.line_suffix.strip():  # it would only repeat the line
        return None
    return Suggestion(line + "\n" + ctx.line_prefix)


def _fit_line(line: str, ctx: CompletionContext) -> Suggestion | None:
    """Fit one line between the line prefix and suffix: reuse auto-closed closers or trim overlap, then balance."""
    suffix = ctx.line_suffix
    if not _AUTO_CLOSED.fullmatch(suffix):
        line = _trim_overlap(line, suffix)
    lexicon = _lexicon(ctx.language)
    quote, free, spare = _line_balance(ctx.line_prefix, ctx.line_suffix, ctx.language)
    marks = _scan(line, lexicon, quote)
    reused, replace = _reused_closers(line, marks, suffix)
    end = _balanced_end(line, marks, reused, free, spare)
    if end < len(line):  # the shorter line may reuse fewer closers
        line = line[:end].rstrip()
        _, replace = _reused_closers(line, _scan(line, lexicon, quote), suffix)
    if not line.strip() or line == suffix[:replace]:
        return None
    return Suggestion(line, replace)


def _trim_overlap(text: str, line_suffix: str) -> str:
    """Drop the longest end of `text` that the line suffix starts with (it is already there)."""
    for size in range(min(len(text), len(line_suffix)), 0, -1):
        if text.endswith(line_suffix[:size]):
            return text[:-size].rstrip()
    return text


def _reused_closers(line: str, marks: list[_Mark], line_suffix: str) -> tuple[int, int]:
    """(closers, characters) of an auto-closed line suffix that `line` writes itself and so replaces.

    Applies when the line suffix is only closers/quotes (plus maybe `:`, `;` or `,`): the line's closers of
    brackets and strings opened before the cursor replace the suffix's, in order, instead of duplicating them.
    """
    auto = _AUTO_CLOSED.fullmatch(line_suffix)
    if not auto:
        return 0, 0
    closers, terminator = auto.groups()
    excess = _match(marks)[1]
    count = 0
    while count < min(len(excess), len(closers)) and excess[count].char == closers[count]:
        count += 1
    if count == len(closers) and terminator:
        after = excess[count - 1].at + 1
        if line[after : after + 1] == terminator:
            return count, count + 1
    return count, count


@functools.lru_cache(maxsize=8)
def _line_balance(line_prefix: str, line_suffix: str, language: str) -> tuple[str | None, int, int]:
    """(open quote at the cursor, brackets the line prefix leaves open that nothing after the cursor closes,
    closers in the line suffix with nothing on the line to close). Cached: the same for every candidate."""
    lexicon = _lexicon(language)
    prefix_marks, quote = _scan_state(line_prefix, lexicon)
    opened = len(_match(prefix_marks)[0])
    closed = len(_match(_scan(line_suffix, lexicon, quote))[1])
    return quote, max(0, opened - closed), max(0, closed - opened)


def _balanced_end(line: str, marks: list[_Mark], reused: int, free: int, spare: int) -> int:
    """End of the longest prefix of `line` that leaves its brackets and strings balanced.

    Closers of what was opened before the cursor are allowed for the `reused` auto-closed ones plus `free`
    more; up to `spare` brackets may stay open when the line suffix has that many surplus closers.
    A mismatched or surplus closer ends the line just before it.
    """
    stack: list[str] = []
    excess = 0
    last_ok = 0

    def ok() -> bool:
        return len(stack) <= spare and all(char in _PAIRS for char in stack)

    for mark in marks:
        if mark.opens:
            if ok():
                last_ok = mark.at
            stack.append(mark.char)
        elif stack and stack[-1] == _OPENER_OF.get(mark.char, mark.char):
            stack.pop()
        elif stack:
            return mark.at if ok() else last_ok
        else:
            excess += 1
            if excess > reused + free:
                return mark.at
    return len(line) if ok() else last_ok


# -- multi-line holes -----------------------------------------------------------------------------


def _fit_block(text: str, ctx: CompletionContext, max_lines: int) -> Suggestion | None:
    """Cut a multi-line candidate to the cursor's block, before the suffix, and to `max_lines` lines (one
    statement where more code follows in the block)."""
    text = _strip_trailing(_normalize_start(text, ctx))
    if (end := _block_end(text, ctx)) is not None:
        text = _strip_trailing(text[:end])
    text = _cut_at_suffix_line(text, ctx)
    lines = text.split("\n")
    keep = _line_budget(text, max_lines)
    if not ctx.block:
        keep = min(keep, _statement_lines(lines, ctx) or len(lines))
    text = "\n".join(lines[:keep])
    text = _trim_overlap(text, ctx.line_suffix) if ctx.line_suffix.strip() else text
    return Suggestion(text) if text.strip() else None


def _normalize_start(text: str, ctx: CompletionContext) -> str:
    """On an indented blank line the cursor already stands at the block's indentation: the answer's first
    line starts there, without indentation of its own (never doubled) and without blank lines before it."""
    if ctx.line_prefix.strip() or not ctx.line_prefix:
        return text
    first = next((i for i, line in enumerate(text.split("\n")) if line.strip()), None)
    if first is None:
        return text
    start = sum(len(line) + 1 for line in text.split("\n")[:first])
    return text[start:].lstrip(" \t")


def _statement_lines(lines: list[str], ctx: CompletionContext) -> int | None:
    """How many of `lines` hold one statement: the rest of the cursor's line if it has code, else the first
    line with code; then the lines it leaves open (unclosed brackets, or a block under a block opener or
    indented deeper). None while `lines` could still be that statement."""
    if not lines[0].strip() and ctx.line_prefix.strip() == "" and len(lines) == 1:
        return None
    start = (
        0
        if lines[0].strip() or not ctx.line_prefix.strip()
        else next((i for i, line in enumerate(lines) if line.strip()), None)
    )
    if start is None:
        return None
    base = _indent(ctx.line_prefix + lines[0] if start == 0 else lines[start])
    spec = resolve(ctx.language)
    openers = spec.indent_openers
    lexicon = _lexicon(ctx.language)
    head = ctx.line_prefix if start == 0 else ""
    for end in range(start + 1, len(lines)):
        line = lines[end]
        if not line.strip():
            continue
        statement = head + "\n".join(lines[start:end])
        open_ = _match(_brackets(_scan(statement, lexicon)))[0]
        if not open_ and _indent(line) <= base and not statement.rstrip().endswith(openers):
            return end
    return None


def _strip_trailing(text: str) -> str:
    """Without trailing whitespace on each line and without trailing blank lines."""
    return "\n".join(line.rstrip() for line in text.split("\n")).rstrip()


def _line_budget(text: str, max_lines: int) -> int:
    """Lines `text` may have: `max_lines`, plus the empty rest of the cursor's line when it starts with a newline."""
    first, newline, _ = text.partition("\n")
    return max_lines + bool(newline and not first.strip())


def _cut_at_suffix_line(text: str, ctx: CompletionContext) -> str:
    """Cut before the first generated line that equals the suffix's next non-empty line (never re-insert it)."""
    following = next((line.rstrip() for line in ctx.suffix.split("\n")[1:] if line.strip()), None)
    if following is None:
        return text
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if (ctx.line_prefix + line if i == 0 else line).rstrip() == following:
            return _strip_trailing("\n".join(lines[:i]))
    return text


def _block_end(text: str, ctx: CompletionContext) -> int | None:
    """Where the block the cursor is in ends within `text` (an index to cut at), or None.

    The earliest of: a closer of a bracket opened before the cursor (`_closer_end`), a new top-level
    definition while the cursor is indented (`_definition_end`), and for indent languages a dedent
    (`_dedent_end`). Plain text has no blocks.
    """
    spec = resolve(ctx.language)
    if spec.grammar is None:
        return None
    lines = text.split("\n")
    indent = _block_indent(lines, ctx)
    ends = [_closer_end(text, ctx), _definition_end(lines, indent)]
    if spec.indent_blocks:
        ends.append(_dedent_end(lines, indent))
    return min((end for end in ends if end is not None), default=None)


def _block_indent(lines: list[str], ctx: CompletionContext) -> int | None:
    """Least indentation of lines in the cursor's block; None until the candidate shows it.

    The cursor line's indentation, plus one (any deeper indentation) after a block opener. On a blank line
    it is where the candidate's first line starts.
    """
    line_prefix = ctx.line_prefix
    if line_prefix.strip():
        opens = line_prefix.rstrip().endswith(INDENT_OPENERS)
        return _indent(line_prefix) + opens
    for i, line in enumerate(lines):
        if line.strip():
            return _indent(line_prefix + line if i == 0 else line)
    return None


def _indent(line: str) -> int:
    """Width of the leading whitespace, a tab counting 4."""
    return len(line[: len(line) - len(line.lstrip())].expandtabs(4))


def _line_starts(lines: list[str]) -> Iterator[tuple[int, str]]:
    """(offset, line) for each line after the first (the first continues the cursor's line)."""
    offset = len(lines[0]) + 1
    for line in lines[1:]:
        yield offset, line
        offset += len(line) + 1


def _dedent_end(lines: list[str], indent: int | None) -> int | None:
    """Start of the first line indented less than the block (lines starting with a closer are left to `_closer_end`)."""
    if indent is None:
        return None
    for offset, line in _line_starts(lines):
        stripped = line.strip()
        if stripped and stripped[0] not in _OPENER_OF and _indent(line) < indent:
            return offset
    return None


def _definition_end(lines: list[str], indent: int | None) -> int | None:
    """Start of the first unindented line that starts a definition, when the cursor's block is indented."""
    if not indent:
        return None
    return next((offset for offset, line in _line_starts(lines) if _DEFINITION.match(line)), None)


def _closer_end(text: str, ctx: CompletionContext) -> int | None:
    """Where the candidate closes a bracket opened before the cursor (more closers than openers), or None.

    If the suffix's first unmatched closer is the same character, the suffix already closes the block: cut
    before the closer's line when the closer starts it, else just before the closer. Otherwise the candidate
    closes it itself: keep the closer's whole line (e.g. `});`) and stop there.
    """
    lexicon = _lexicon(ctx.language)
    excess = _match(_brackets(_scan(text, lexicon)))[1]
    if not excess:
        return None
    closer = excess[0]
    line_start = syntax.line_start(text, closer.at)
    if _suffix_closer(ctx.suffix, ctx.language) == closer.char:
        own_line = not text[line_start : closer.at].strip() and (line_start > 0 or not ctx.line_prefix.strip())
        return line_start if own_line else closer.at
    return syntax.line_end(text, closer.at)


@functools.lru_cache(maxsize=8)
def _suffix_closer(suffix: str, language: str) -> str | None:
    """The suffix's first closer of a bracket opened before the cursor (cached: one suffix per request)."""
    excess = _match(_brackets(_scan(suffix, _lexicon(language))))[1]
    return excess[0].char if excess else None


# -- brackets and strings -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Lexicon:
    """Just enough lexical syntax to skip strings and comments when counting brackets."""

    quotes: tuple[str, ...] = ()  # string delimiters, longest first
    multiline: frozenset[str] = frozenset()  # delimiters whose strings may span lines
    comment: str | None = None  # line comment start


@functools.cache
def _lexicon(language: str) -> _Lexicon:
    """The table's lexical syntax for `language`; plain text (and any unknown id) has no quotes or comments."""
    spec = LANGUAGES.get(language, PLAIN_TEXT)
    return _Lexicon(spec.quotes, spec.multiline_quotes, spec.line_comment if spec.grammar is not None else None)


class _Mark(NamedTuple):
    """A bracket or string delimiter outside strings and comments."""

    at: int  # its string index (not `index`: that is tuple's method)
    char: str
    opens: bool


def _scan(text: str, lexicon: _Lexicon, quote: str | None = None) -> list[_Mark]:
    """Brackets and string delimiters of `text`, which starts inside a `quote` string if given."""
    return _scan_state(text, lexicon, quote)[0]


def _scan_state(text: str, lexicon: _Lexicon, quote: str | None = None) -> tuple[list[_Mark], str | None]:
    """`_scan`, plus the string still open at the end of `text` (None outside strings).

    Simple on purpose: escapes are skipped, a line comment runs to the end of the line, and a string that
    cannot span lines ends silently at a newline.
    """
    marks: list[_Mark] = []
    i = 0
    while i < len(text):
        char = text[i]
        if quote is not None:
            if char == "\\":
                i += 2
                continue
            if text.startswith(quote, i):
                marks.append(_Mark(i, quote, False))
                i += len(quote)
                quote = None
                continue
            if char == "\n" and quote not in lexicon.multiline:
                quote = None
            i += 1
        elif char in _BRACKETS:
            marks.append(_Mark(i, char, char in _PAIRS))
            i += 1
        elif lexicon.comment and text.startswith(lexicon.comment, i):
            newline = text.find("\n", i)
            i = len(text) if newline < 0 else newline
        elif opening := next((q for q in lexicon.quotes if text.startswith(q, i)), None):
            marks.append(_Mark(i, opening, True))
            quote = opening
            i += len(opening)
        else:
            i += 1
    return marks, quote


def _brackets(marks: list[_Mark]) -> list[_Mark]:
    """Only the bracket marks (for multi-line text, where a string may end silently at a newline)."""
    return [mark for mark in marks if mark.char in _BRACKETS]


def _match(marks: list[_Mark]) -> tuple[list[str], list[_Mark]]:
    """(openers left open, closers of things opened before `marks` began). Mismatched closers are ignored."""
    stack: list[str] = []
    excess: list[_Mark] = []
    for mark in marks:
        if mark.opens:
            stack.append(mark.char)
        elif not stack:
            excess.append(mark)
        elif stack[-1] == _OPENER_OF.get(mark.char, mark.char):
            stack.pop()
    return stack, excess


# -- filters --------------------------------------------------------------------------------------


def _is_repetitive(text: str) -> bool:
    """Degenerate output: a line or block of lines three times in a row, or a short unit filling most of it."""
    lines = [line.rstrip() for line in text.split("\n") if line.strip()]
    if _repeats_lines(lines, times=3):
        return True
    compact = text.strip()
    return len(compact) >= 6 and any(len(m[0]) >= 0.75 * len(compact) for m in _REPEATED_UNIT.finditer(compact))


def _cut_loop(text: str) -> str:
    """Text up to the first copy of a unit that then repeats (where the model fell into a loop);
    nothing if the loop is all there is."""
    match = _LOOP.search(text)
    if match is None:
        return text
    return text[: match.start() + len(match.group(1))] if text[: match.start()].strip() else ""


def _repeats_lines(lines: list[str], times: int) -> bool:
    """Whether some block of consecutive lines occurs `times` times in a row."""
    for size in range(1, len(lines) // times + 1):
        for start in range(len(lines) - size * times + 1):
            block = lines[start : start + size]
            if all(lines[start + k * size : start + (k + 1) * size] == block for k in range(1, times)):
                return True
    return False


# -- syntax gate ----------------------------------------------------------------------------------


def _syntax_gate(suggestion: Suggestion, ctx: CompletionContext) -> Suggestion | None:
    """The longest version of `suggestion` (itself, then shorter ones) that adds no syntax errors; None if none.

    Languages without a grammar pass unchanged.
    """
    if resolve(ctx.language).grammar is None:
        return suggestion
    baseline = len(_baseline_spans(ctx.language, ctx.text))
    line = _line_to_finish(ctx)
    if is_word(suggestion.text[:1]) and _keyword_before(ctx):  # `return` + `x` makes `returnx`, which parses
        return None
    for candidate in itertools.islice(_shorter(suggestion, ctx), _MAX_GATE_TRIES):
        if not _adds_errors(candidate, ctx, baseline, line):
            return candidate
    return None


def _line_to_finish(ctx: CompletionContext) -> int | None:
    """Byte offset of the cursor's line start when a single-line answer must leave that line without syntax
    errors: nothing follows the cursor on it and its errors all start on it (`from █`, `x = █`; not a line
    inside a bracket opened above). None otherwise."""
    if ctx.hole is not Hole.SINGLE_LINE or ctx.line_suffix.strip():
        return None
    line_start = syntax.byte_offset(ctx.text, ctx.offset - len(ctx.line_prefix))
    line_end = syntax.byte_offset(ctx.text, ctx.offset)
    on_line = [
        first for first, last in _baseline_spans(ctx.language, ctx.text) if first <= line_end and last >= line_start
    ]
    return line_start if on_line and min(on_line) >= line_start else None


def _adds_errors(candidate: Suggestion, ctx: CompletionContext, baseline: int, line: int | None = None) -> bool:
    """Whether inserting `candidate` adds syntax errors (ERROR and MISSING nodes).

    It does if the document then has more errors than before, or if an error lies within the inserted text:
    a document broken at the cursor (`x = █`) already counts one error there, which a broken candidate
    would only trade for another. Errors that reach outside it (an unclosed bracket before the cursor) and
    missing nodes right after it are not the candidate's. Fixing errors is fine (completing `def f(x):`).
    A candidate that finishes a line broken only on that line (`line`: its start) must leave it without
    errors (`from` + `markdown_it import X` makes `frommarkdown_it`, an error the line had before).
    """
    before = ctx.text[: ctx.offset]
    document = before + candidate.text + ctx.text[ctx.offset + candidate.replace :]
    spans = _error_spans(ctx.language, document)
    start = len(utf8(before))
    end = start + len(utf8(candidate.text))
    if line is not None and any(first <= end and last >= line for first, last in spans):
        return True
    return len(spans) > baseline or any(start <= first < end and last <= end for first, last in spans)


def _keyword_before(ctx: CompletionContext) -> bool:
    """Whether the cursor's line is just a keyword token of the document's tree (`from█`, `    return█`):
    a statement's keyword, not the start of a longer name (`x = for█mat(y)` may be typed)."""
    word = ctx.line_prefix.strip()
    if not word.isidentifier():
        return False
    at = syntax.byte_offset(ctx.text, ctx.offset)
    node = thread_parser(ctx.language).parse(utf8(ctx.text)).root_node.descendant_for_byte_range(at - 1, at)
    return node is not None and not node.is_named and node.type == word


def _shorter(suggestion: Suggestion, ctx: CompletionContext) -> Iterator[Suggestion]:
    """`suggestion`, then shorter versions, longest first: without trailing lines, or for a single line cut
    at token boundaries (refitted, so replaced closers stay consistent)."""
    yield suggestion
    seen = {suggestion.text}
    if ctx.hole is Hole.SINGLE_LINE and "\n" in suggestion.text:  # a new line before the code: whole or not at all
        return
    if ctx.hole is Hole.SINGLE_LINE:
        ends = [m.end() for m in _TOKEN.finditer(suggestion.text)]
        shorter = (_fit_line(suggestion.text[:end], ctx) for end in reversed(ends))
    else:
        lines = suggestion.text.split("\n")
        shorter = (Suggestion(_strip_trailing("\n".join(lines[:n]))) for n in range(len(lines) - 1, 0, -1))
    for candidate in shorter:
        if candidate is not None and candidate.text.strip() and candidate.text not in seen:
            seen.add(candidate.text)
            yield candidate


@functools.lru_cache(maxsize=8)
def _baseline_spans(language: str, text: str) -> tuple[tuple[int, int], ...]:
    """Errors of the document without a candidate: the same for every candidate of one request, so cached
    (keyed by the document alone, as the cursor does not change it)."""
    return tuple(_error_spans(language, text))


def _error_spans(language: str, source: str) -> list[tuple[int, int]]:
    """Byte ranges of the ERROR and MISSING nodes in the parse of `source` (by this module's `thread_parser`)."""
    return error_spans(thread_parser(language).parse(utf8(source)).root_node)
