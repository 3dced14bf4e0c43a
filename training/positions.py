"""Positions stage: completion where editors ask for it, and a typing replay, on held-out Python.

`midline-train evaluate` cuts holes mid-line; editors ask elsewhere too: on the fresh line after Enter, at the end
of a complete line, at the start of a line, in an empty function. Tasks (`build_position_tasks`) come from the
corpus's held-out split (valid.jsonl) as in `evaluate`: Python files without syntax errors, at most one task per
file and kind, chosen reproducibly from a seed, saved as JSON lines (`evaluate.Task`: the document as the editor
has it, the cursor, and the text the cursor should get, `middle`). A *code line* is one simple statement alone on
its line (no comment or second statement beside it, no trailing space, not a string such as a docstring). Kinds:

- enter_col0: a code line in a block (a function body, ...) emptied, cursor at column 0 (an editor that does not
  auto-indent). Expected: the whole line, indentation included.
- enter_indented: the same with the line's indentation typed (an auto-indenting editor). Expected: the code.
- line_start: a code line in a block deleted whole (its line break too), the cursor at the start of the code of
  the line that followed (same indentation), as after Home there, to write a line before it. Expected: the deleted
  code + "\\n" + the indentation back to the following line's code.
- end_of_line_next: the cursor at the end of a code line, the next line (a code line) deleted whole. Expected:
  "\\n" + that line.
- end_of_line_nothing: the cursor at the end of a code line, nothing deleted. Expected: "" (showing nothing is
  right; any suggestion is not exact and harmful).
- mid_line: the rest of a code line after its first token (`evaluate`'s single_line: `    return| a + b`).
- empty_block: a function's body after its docstring (1-10 lines) deleted, leaving `def ...:` (and the docstring)
  and a fresh line with the body's indentation typed. Expected: the body.
- end_of_file: the last 1-3 code lines of the file deleted with what follows them; the cursor on a fresh line at
  the end of the text, with the first deleted line's indentation typed. Expected: the deleted lines.

Each task is completed as `evaluate` does (`complete_tasks`: `Completer.complete`, debounce and cache off,
greedy). Figures per kind and overall, over all tasks unless said:

- exact_first_line: the suggestion's first line, applied at the cursor, gives the document line the expected text
  gives: the same row and text (trailing space aside), where the row is that of the first non-blank character the
  text inserts (the cursor's row when it inserts none). Indentation the suggestion returns and indentation
  already typed compare alike. A suggestion of only white space counts as nothing shown.
- exact_match and edit_similarity: `evaluate.score` on the whole text; empty_rate.
- harmful_rate: shown and exact_first_line wrong.
- invalid_syntax_rate, of the *shown* suggestions: the completed document has more tree-sitter errors than the
  original file (ERROR and MISSING nodes, and nodes with an error but no erroring child: the MISSING nodes of
  hidden tokens, such as `_newline` in `out.append(x)return out`, that `node.children` does not list).
- glued: shown suggestions, where the expected text starts with a line break, whose first line appends a second
  statement to the cursor's line instead of continuing it: the line then holds more statements (children of a
  module or block) or the document more errors (`out.append(x)return out`), or that first line is a statement by
  itself (not a lone name) that merged into valid code (`old_stderr = sys.stderr` after `old_stdout = sys.stdout`
  makes `sys.stdoutold_stderr`). Continuations such as `.copy()` or ` + 1` are wrong, not glued.
- mid_word_starts: shown suggestions at a cursor after white space (a line start) whose first word is the tail of
  a longer one (`eturn True`): no keyword and no whole word of the document, but the end of one of its words.
- latency of `Completer.complete` in ms.

Typing replay (`replay`): held-out functions (top-level or methods, 3-25 lines, body on its own lines) are typed
back into the file with their body deleted (the `def` line kept), one character at a time into one `Document` as
an editor sends changes, with one `Completer` per function configured as the server (cache on, debounce 0,
greedy). Enter inserts the line break and the next line's indentation (auto-indent; those characters are not
counted as typed). At pause points (a line start after auto-indent; after a non-word character that follows a
word character) the replay asks `complete(automatic=True)`; if the suggestion's first line is exactly the rest of
the line to type (and not empty), it is accepted: its characters count as accepted and the cursor jumps past them.
Figures: the share of accepted characters, suggestions shown and accepted, p50/p95 time to ghost text. With
`--outcomes FILE` each answer goes to an outcome record as the server writes it (server/outcomes.py, prompts kept):
accepted when its first line is what comes next, else typed through or dismissed; `midline-train rank` learns from it.

Repository context (`--retrieval off|on|both`): each task's Completer gets the indexes of its repository's other
held-out files (`workspaces.Workspaces`), as the server indexes the workspace: cross-file definitions, and retrieved
chunks (`context.retrieval`) unless off. With both, each position task is completed without and with retrieval in
turn (the engine's cache cleared in between), and the report has both sets of figures (`without_retrieval`) and the
tasks retrieval changed (`retrieval`).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import keyword
import math
import random
import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import tree_sitter
from lsprotocol import types
from midline.model import fim
from midline.model.backend import Backend
from midline.model.languages import resolve
from midline.model.loader import ModelLoadError
from midline.model.syntax import error_count, header_colon, is_word, line_end, line_start, new_parser, node_name, parse
from midline.server.completion import Completer
from midline.server.config import Config, OutcomesConfig
from midline.server.outcomes import OutcomeLog
from midline.server.context import Hole, classify_hole
from midline.server.documents import Document
from midline.server.postprocess import Suggestion
from midline.server.server import open_engine
from midline.training.evaluate import (
    add_task_arguments,
    MIN_MIDDLE_CHARS,
    Outcome,
    Source,
    Task,
    complete_side_by_side,
    completed_text,
    docstring_of,
    eval_config,
    load_tasks,
    pick_single_line,
    python_records,
    read_records,
    sample_tasks,
    save_tasks,
    score,
    string_rows,
    summarize,
    write_report,
)
from midline.training.stage import sha256_file
from midline.training.workspaces import Workspaces, task_root
from pygls.workspace.position_codec import PositionCodec

KINDS = (
    "enter_col0", "enter_indented", "line_start", "end_of_line_next", "end_of_line_nothing", "mid_line",
    "empty_block", "end_of_file",
)
REPLAY = "replay"  # the kind of a typing-replay task: `middle` is the function body to type
BODY_LINES = (1, 10)  # empty_block
END_LINES = (1, 2, 3)  # end_of_file
FUNCTION_LINES = (3, 25)  # replay
BLOCKS = resolve("python").blocks
_STATEMENT_PARENTS = BLOCKS | {"module"}

Complete = Callable[[Document, int], Awaitable[Suggestion | None]]
Pick = Callable[[Source, random.Random], Task | None]


# -- tasks ----------------------------------------------------------------------------------------


def build_position_tasks(source, *, per_kind: int, functions: int, seed: int) -> list[Task]:
    """Up to `per_kind` tasks of each kind and `functions` replay tasks from held-out records (a corpus dir, a
    .jsonl file, or records); at most one per file and kind. The same records and seed give the same tasks."""
    records = python_records(read_records(source))
    parser = new_parser("python")
    tasks: list[Task] = []
    for kind, pick in [*PICKS.items(), (REPLAY, _pick_function)]:
        count = functions if kind == REPLAY else per_kind
        tasks += sample_tasks(records, parser, kind, count, seed, _without_errors(pick))
    return tasks


def _without_errors(pick: Pick) -> Pick:
    return lambda src, rng: None if src.tree.root_node.has_error else pick(src, rng)


def _task(src: Source, kind: str, start: int, end: int, typed: int = 0) -> Task | None:
    """text[start:end] deleted but its first `typed` characters (typed by the user or the editor), the cursor after
    them; expected: the rest of text[start:end]. None if too little is expected or the server sees no hole."""
    cursor = start + typed
    middle = src.text[cursor:end]
    if kind != "end_of_line_nothing" and len("".join(middle.split())) < MIN_MIDDLE_CHARS:
        return None
    text = src.text[:cursor] + src.text[end:]
    hole = classify_hole(text, cursor, "python")
    if hole is Hole.NONE:
        return None
    return Task(kind, src.repo, src.path, text, cursor, middle, hole.value)


def _nodes(tree: tree_sitter.Tree) -> Iterator[tree_sitter.Node]:
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(node.children))


def _statements(tree: tree_sitter.Tree) -> Iterator[tree_sitter.Node]:
    """Statements: the children of the module and of blocks (comments aside)."""
    for node in _nodes(tree):
        if node.type in _STATEMENT_PARENTS:
            yield from (child for child in node.named_children if child.type != "comment")


def _is_string(statement: tree_sitter.Node) -> bool:
    children = statement.named_children
    return (statement.type == "expression_statement" and len(children) == 1
            and children[0].type in ("string", "concatenated_string"))


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _code_lines(src: Source, *, in_block: bool = False) -> dict[int, tree_sitter.Node]:
    """Row -> the simple statement alone on it (code lines), in a block only with `in_block`."""
    lines = {}
    for node in _statements(src.tree):
        row = node.start_point.row
        if node.end_point.row != row or _is_string(node) or (in_block and node.parent.type not in BLOCKS):
            continue
        line = src.lines[row]
        if line[_indent(line) :] == src.text[src.offset(node.start_point) : src.offset(node.end_point)]:
            lines[row] = node
    return lines


def _statement_rows(src: Source) -> set[int]:
    """Rows where a statement starts, after only indentation."""
    rows = set()
    for node in _statements(src.tree):
        row = node.start_point.row
        if src.offset(node.start_point) == src.line_starts[row] + _indent(src.lines[row]):
            rows.add(row)
    return rows


def _row_end(src: Source, row: int) -> int:
    """The index of the "\\n" ending row `row` (`syntax.line_end`'s contract, by row number)."""
    return src.line_starts[row] + len(src.lines[row])


def _shuffled(items, rng: random.Random, limit: int = 20) -> list:
    """At most `limit` of `items` (rows, or nodes) in a seeded random order."""
    items = sorted(items, key=lambda item: getattr(item, "start_byte", item))
    rng.shuffle(items)
    return items[:limit]


def _pick_enter(kind: str) -> Pick:
    def pick(src: Source, rng: random.Random) -> Task | None:
        """A code line in a block emptied (enter_col0), or emptied to its indentation (enter_indented)."""
        for row in _shuffled(_code_lines(src, in_block=True), rng):
            typed = _indent(src.lines[row]) if kind == "enter_indented" else 0
            if task := _task(src, kind, src.line_starts[row], _row_end(src, row), typed):
                return task
        return None

    return pick


def _pick_line_start(src: Source, rng: random.Random) -> Task | None:
    """A code line in a block deleted whole; the cursor at the code of the next line, which has its indentation."""
    starts = _statement_rows(src)
    rows = [r for r in _code_lines(src, in_block=True)
            if r + 1 in starts and _indent(src.lines[r]) == _indent(src.lines[r + 1])]
    for row in _shuffled(rows, rng):
        indent = _indent(src.lines[row])
        if task := _task(src, "line_start", src.line_starts[row], src.line_starts[row + 1] + indent, indent):
            return task
    return None


def _pick_end_of_line_next(src: Source, rng: random.Random) -> Task | None:
    """The cursor at the end of a code line; the next line, a code line too, deleted."""
    code = _code_lines(src)
    for row in _shuffled([r for r in code if r + 1 in code], rng):
        if task := _task(src, "end_of_line_next", _row_end(src, row), _row_end(src, row + 1)):
            return task
    return None


def _pick_end_of_line_nothing(src: Source, rng: random.Random) -> Task | None:
    """The cursor at the end of a code line of the complete file."""
    for row in _shuffled(_code_lines(src), rng):
        if task := _task(src, "end_of_line_nothing", _row_end(src, row), _row_end(src, row)):
            return task
    return None


def _pick_mid_line(src: Source, rng: random.Random) -> Task | None:
    task = pick_single_line(src, rng)
    return dataclasses.replace(task, kind="mid_line") if task else None


def _pick_empty_block(src: Source, rng: random.Random) -> Task | None:
    """A function's body after its docstring, 1-10 lines, deleted; its indentation typed on the fresh line."""
    functions = [n for n in _nodes(src.tree) if n.type == "function_definition"]
    for function in _shuffled(functions, rng):
        body = function.child_by_field_name("body")
        docstring = docstring_of(body)
        code = [c for c in body.named_children
                if c.type != "comment" and (docstring is None or c.start_byte > docstring.end_byte)]
        if not code:
            continue
        first, last = code[0].start_point, code[-1].end_point
        start, end = src.offset(first), src.offset(last)
        row_start, indent = src.line_starts[first.row], _indent(src.lines[first.row])
        if start != row_start + indent or end != _row_end(src, last.row):  # the body has its lines to itself
            continue
        if (BODY_LINES[0] <= last.row - first.row + 1 <= BODY_LINES[1]
                and (task := _task(src, "empty_block", row_start, end, indent))):
            return task
    return None


def _pick_end_of_file(src: Source, rng: random.Random) -> Task | None:
    """The last 1-3 non-blank lines, all code, the first starting a statement, deleted to the end of the file; the
    first one's indentation typed."""
    prose = string_rows(src.tree) | {n.start_point.row for n in _statements(src.tree) if _is_string(n)}
    rows = [row for row, line in enumerate(src.lines) if line.strip()]
    starts = _statement_rows(src)
    for k in _shuffled(END_LINES, rng):
        last = rows[-k:]
        if (len(rows) <= k or last[0] not in starts
                or any(r in prose or src.lines[r].lstrip().startswith("#") for r in last)):
            continue
        if task := _task(src, "end_of_file", src.line_starts[last[0]], len(src.text), _indent(src.lines[last[0]])):
            return task
    return None


def _pick_function(src: Source, rng: random.Random) -> Task | None:
    """For the replay: a top-level function or method of 3-25 lines with its body (on its own lines) deleted,
    the cursor at the end of its `def` line; `middle` is the body from that line's break."""
    functions = [n for n in _nodes(src.tree) if n.type == "function_definition" and _top_level_or_method(n)
                 and FUNCTION_LINES[0] <= n.end_point.row - n.start_point.row + 1 <= FUNCTION_LINES[1]]
    for function in _shuffled(functions, rng):
        body = function.child_by_field_name("body")
        colon = header_colon(function)
        header = colon.end_point.row
        start, end = src.offset(colon.end_point), src.offset(body.end_point)
        own_lines = (body.start_point.row > header and start == _row_end(src, header)
                     and end == _row_end(src, body.end_point.row))
        if own_lines and (task := _task(src, REPLAY, start, end)):
            return dataclasses.replace(task, function=node_name(function, "python"))
    return None


def _top_level_or_method(function: tree_sitter.Node) -> bool:
    parent = function.parent
    if parent.type == "decorated_definition":
        parent = parent.parent
    return parent.type == "module" or (parent.type == "block" and parent.parent.type == "class_definition")


PICKS: dict[str, Pick] = {
    "enter_col0": _pick_enter("enter_col0"),
    "enter_indented": _pick_enter("enter_indented"),
    "line_start": _pick_line_start,
    "end_of_line_next": _pick_end_of_line_next,
    "end_of_line_nothing": _pick_end_of_line_nothing,
    "mid_line": _pick_mid_line,
    "empty_block": _pick_empty_block,
    "end_of_file": _pick_end_of_file,
}


# -- scoring --------------------------------------------------------------------------------------


def syntax_errors(text: str) -> int:
    """ERROR and MISSING nodes in the parse of `text`, hidden MISSING tokens included (`syntax.error_count`)."""
    return error_count("python", text)


def _statements_on(text: str, row: int) -> int:
    """Statements starting on `row`."""
    return sum(n.start_point.row == row for n in _statements(parse("python", text)))


def _is_statement(line: str) -> bool:
    """Whether `line` is a statement on its own: it starts with a word, parses without errors, and is not a lone
    name (`s`, a continuation of the word before the cursor) unless a keyword (`return`, `pass`)."""
    code = line.strip()
    return (bool(re.match(r"\w", code)) and (not re.fullmatch(r"\w+", code) or keyword.iskeyword(code))
            and syntax_errors(code + "\n") == 0)


def _shown_line(text: str, cursor: int, inserted: str) -> tuple[int, str]:
    """(row, text without trailing space) of the line of `text` where `inserted`, inserted at `cursor`, shows its
    first non-blank character; the cursor's row if it has none."""
    at = cursor + len(inserted) - len(inserted.lstrip())
    return text.count("\n", 0, at), text[line_start(text, at) : line_end(text, at)].rstrip()


def score_position(task: Task, suggestion: Suggestion | None) -> dict:
    """The figures of one task (see the module docstring); None where a figure does not apply."""
    shown = suggestion if suggestion is not None and suggestion.text.strip() else None
    got = _shown_line(completed_text(task, shown), task.offset, shown.text if shown else "")
    want = _shown_line(task.original, task.offset, task.middle)
    exact, similarity = score(task, shown)
    invalid = glued = mid_word = None
    if shown:
        invalid = syntax_errors(completed_text(task, shown)) > syntax_errors(task.original)
        mid_word = not task.prefix[-1:].strip() and _starts_mid_word(shown.text, task.text_with_hole)
        first = shown.text.split("\n", 1)[0]
        if task.middle.startswith("\n"):
            row = task.prefix.count("\n")
            line = dataclasses.replace(shown, text=first)
            glued = bool(first.strip()) and (
                _statements_on(completed_text(task, line), row) > _statements_on(task.text_with_hole, row)
                or syntax_errors(completed_text(task, line)) > syntax_errors(task.text_with_hole)
                or _is_statement(first)
            )
    return {
        "exact_first_line": got == want,
        "exact_match": exact,
        "edit_similarity": similarity,
        "empty": shown is None,
        "harmful": shown is not None and got != want,
        "invalid_syntax": invalid,
        "glued": glued,
        "mid_word": mid_word,
        "shown_line": got[1],
        "expected_line": want[1],
    }


_WORD = re.compile(r"[A-Za-z_]\w*")


def _starts_mid_word(text: str, document: str) -> bool:
    """Whether `text`, inserted at a line start, begins with the tail of a word: its first word is no keyword
    and no whole word of the document, but the document has a longer word ending with it (`eturn`, `rch.get`)."""
    first = _WORD.match(text.lstrip())
    if first is None or keyword.iskeyword(first[0]):
        return False
    words = set(_WORD.findall(document)) | set(keyword.kwlist)
    return first[0] not in words and any(w.endswith(first[0]) for w in words)


def _row(task: Task, outcome: Outcome) -> dict:
    text, start = task.text_with_hole, line_start(task.text_with_hole, task.offset)
    cursor_line = text[start : line_end(text, task.offset)]
    return {
        "kind": task.kind, "repo": task.repo, "path": task.path, "offset": task.offset, "hole": task.hole,
        **score_position(task, outcome.suggestion),
        "latency_ms": outcome.latency_ms, "tokens": outcome.tokens, "finish_reason": outcome.finish_reason,
        "mean_logprob": None if math.isnan(outcome.mean_logprob) else round(outcome.mean_logprob, 4),
        "shown_logprob": None if math.isnan(outcome.shown_logprob) else round(outcome.shown_logprob, 4),
        "cursor": cursor_line[: task.offset - start] + "█" + cursor_line[task.offset - start :],
        "suggestion": outcome.suggestion.text if outcome.suggestion else None,
        "replace": outcome.suggestion.replace if outcome.suggestion else 0,
        "expected": task.middle,
    }


def summarize_positions(rows: list[dict]) -> dict:
    """`evaluate.summarize`'s figures of a group of rows, and the position figures."""
    summary = summarize(rows)
    if not rows:
        return summary
    shown = [r for r in rows if not r["empty"]]
    glued = [r["glued"] for r in rows if r["glued"] is not None]
    return {
        **summary,
        "exact_first_line": sum(r["exact_first_line"] for r in rows) / len(rows),
        "harmful_rate": sum(r["harmful"] for r in rows) / len(rows),
        "shown": len(shown),
        "invalid_syntax_rate": sum(r["invalid_syntax"] for r in shown) / len(shown) if shown else None,
        "glued": sum(glued) if any(r["kind"].startswith("end_of_line") for r in rows) else None,
        "mid_word_starts": sum(bool(r.get("mid_word")) for r in shown),
        "glued_of_shown": sum(glued) / len(glued) if glued else None,
    }


# -- typing replay --------------------------------------------------------------------------------


async def replay_function(task: Task, complete: Complete, *, uri: str = "file:///workspace/replay.py",
                          accept: Callable[[], None] | None = None) -> dict:
    """Type `task.middle` at `task.offset` into a Document of `task.text_with_hole` (see the module docstring),
    asking `complete` at the pause points (`accept` runs when a suggestion is accepted). Returns the function's
    figures."""
    doc = Document(uri, "python", 1, task.text_with_hole)
    codec = PositionCodec()
    typed, cursor, i = task.middle, task.offset, 0
    indentation = requests = shown = accepted = accepted_chars = 0
    latencies: list[float] = []
    accepted_texts: list[str] = []
    pause = False

    def insert(text: str) -> None:
        nonlocal cursor
        position = doc.position_at(cursor, codec)
        change = types.TextDocumentContentChangePartial(range=types.Range(position, position), text=text)
        doc.apply_change(change, codec)
        doc.version += 1
        cursor += len(text)

    while i < len(typed):
        if pause:
            pause = False
            started = time.perf_counter()
            suggestion = await complete(doc, cursor)
            latencies.append((time.perf_counter() - started) * 1000)
            requests += 1
            shown += suggestion is not None and bool(suggestion.text.strip())
            end = typed.find("\n", i)
            rest = typed[i : end if end >= 0 else len(typed)]
            if suggestion is not None and rest and suggestion.text.split("\n", 1)[0] == rest:
                if accept is not None:
                    accept()
                insert(rest)
                i += len(rest)
                accepted, accepted_chars = accepted + 1, accepted_chars + len(rest)
                accepted_texts.append(rest)
                continue
        char = typed[i]
        if char == "\n":  # Enter, and the editor's auto-indent
            line = typed[i + 1 :].split("\n", 1)[0]
            indent = line[: _indent(line)]
            insert(char + indent)
            i += 1 + len(indent)
            indentation += len(indent)
            pause = True
        else:
            insert(char)
            pause = not is_word(char) and i > 0 and is_word(typed[i - 1])
            i += 1
    if doc.text != task.original:
        raise RuntimeError(f"the replay of {task.path}:{task.function} typed a different text")
    return {
        "repo": task.repo, "path": task.path, "function": task.function, "chars": len(typed) - indentation,
        "accepted_chars": accepted_chars, "requests": requests, "shown": shown, "accepted": accepted,
        "latencies_ms": [round(x, 1) for x in latencies], "accepted_texts": accepted_texts,
    }


def replay(engine: Backend, tasks: list[Task], config: Config, workspaces: Workspaces | None = None,
           model: str = "") -> list[dict]:
    """Each replay task typed through its own `Completer` (`config` as the server's; with `workspaces`, the indexes
    of the task's repository). With `config.outcomes.record`, each answer goes to the outcome record as the server
    writes it (an accepted suggestion: one whose first line is what comes next), labelled with `model`."""
    return asyncio.run(_replay_all(engine, tasks, config, workspaces, model))


async def _replay_all(engine: Backend, tasks: list[Task], config: Config, workspaces: Workspaces | None,
                      model: str) -> list[dict]:
    rows = []
    outcomes = OutcomeLog(config)
    with ThreadPoolExecutor(max_workers=1) as executor:
        for task in tasks:
            root = task_root(task.repo)
            uri = (root / task.path).as_uri()
            symbols, retrieval = workspaces.indexes(task.repo) if workspaces is not None else (None, None)
            completer = Completer(engine, config, executor, root=str(root), symbols=symbols, retrieval=retrieval)

            async def suggest(doc: Document, offset: int) -> Suggestion | None:
                completion = await completer.complete(doc, offset, automatic=True)
                outcomes.note(doc, offset, completion, completer.stats.last_latency_ms, model)
                return completion.suggestion

            def accept() -> None:
                if (shown := outcomes.showing(uri)) is not None:
                    outcomes.accepted(shown, 0)

            row = await replay_function(task, suggest, uri=uri, accept=accept)
            outcomes.close(uri)
            rows.append({**row, "model_calls": completer.stats.model_calls})
    return rows


def summarize_replay(rows: list[dict]) -> dict:
    latencies = sorted(x for r in rows for x in r["latencies_ms"])

    def total(key: str) -> int:
        return sum(r[key] for r in rows)

    return {
        "functions": len(rows), "chars": total("chars"), "accepted_chars": total("accepted_chars"),
        "accepted_share": total("accepted_chars") / total("chars") if rows else None,
        "requests": total("requests"), "shown": total("shown"), "accepted": total("accepted"),
        "model_calls": sum(r.get("model_calls", 0) for r in rows),
        "latency_ms_p50": latencies[len(latencies) // 2] if latencies else None,
        "latency_ms_p95": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] if latencies else None,
    }


# -- the report -----------------------------------------------------------------------------------


def with_retrieval(config: Config, on: bool) -> Config:
    """`config` with `context.retrieval` on or off."""
    return dataclasses.replace(config, context=dataclasses.replace(config.context, retrieval=on))


def evaluate_positions(
    model_dir: Path, tasks: list[Task], *, device: str = "auto", max_new_tokens: int = 64, timeout_ms: int = 60_000,
    progress: bool = False, floors: bool = True, workspaces: Workspaces | None = None, retrieval: str | None = None,
    record: Path | None = None, engine_kind: str = "torch",
) -> dict:
    """Complete the position tasks and type the replay tasks with one engine; returns the report (JSON-ready).
    Without `floors`, every suggestion is shown whatever its confidence (to calibrate the model's floors). With
    `workspaces`, each task's Completer has its repository's indexes; `retrieval` "on" or "off" sets
    `context.retrieval`, and "both" completes each position task without retrieval too: the report's `metrics`
    are with it, `without_retrieval` holds the same figures without it. With `record`, the typing replay writes
    its answers to that outcome record (JSONL, appended; prompts kept), for `midline-train rank`. `engine_kind` is
    the server's `engine` setting (torch, llamacpp, or auto: what the server would choose here)."""
    started = time.monotonic()
    engine = open_engine(Config.from_json({"model": str(model_dir), "device": device, "engine": engine_kind}))
    config = eval_config(max_new_tokens, timeout_ms)
    if not floors:
        config = dataclasses.replace(config, min_mean_logprob=-math.inf)
    if retrieval is not None:
        config = with_retrieval(config, retrieval != "off")
    configs = [config, with_retrieval(config, False)] if retrieval == "both" else [config]
    positions = [t for t in tasks if t.kind != REPLAY]
    outcomes = complete_side_by_side(engine, positions, configs, progress=progress, workspaces=workspaces)
    rows, *others = [[_row(task, outcome) for task, outcome in zip(positions, done)] for done in outcomes]
    replay_config = dataclasses.replace(config, cache_size=Config().cache_size)
    if record is not None:
        replay_config = dataclasses.replace(
            replay_config, outcomes=OutcomesConfig(record=True, file=str(record), prompts=True))
    typing = replay(engine, [t for t in tasks if t.kind == REPLAY], replay_config, workspaces, Path(model_dir).name)
    kinds = [kind for kind in KINDS if any(r["kind"] == kind for r in rows)]
    report = {
        "model": str(Path(model_dir).resolve()),
        "device": str(engine.device),
        "engine": f"{type(engine).__name__} ({getattr(engine, 'decode_path', '')})",
        "fim_format": engine.fim.name,
        "settings": {"max_new_tokens": max_new_tokens, "timeout_ms": timeout_ms, "server_config": config.to_json(),
                     "replay_server_config": replay_config.to_json()},
        "tasks": {"count": len(tasks),
                  "by_kind": {kind: sum(t.kind == kind for t in tasks) for kind in [*kinds, REPLAY]}},
        "metrics": _metrics(rows, kinds),
        "replay": summarize_replay(typing),
        "elapsed_s": time.monotonic() - started,
        "per_task": rows,
        "per_function": typing,
    }
    if others:
        report["without_retrieval"] = {"server_config": configs[1].to_json(), "metrics": _metrics(others[0], kinds),
                                       "per_task": others[0]}
        report["retrieval"] = _retrieval_summary(positions, rows, others[0], workspaces)
    return report


def _metrics(rows: list[dict], kinds: list[str]) -> dict:
    return {"overall": summarize_positions(rows),
            **{k: summarize_positions([r for r in rows if r["kind"] == k]) for k in kinds}}


def _retrieval_summary(tasks: list[Task], with_rows: list[dict], without_rows: list[dict],
                       workspaces: Workspaces | None) -> dict:
    """How retrieval changed the tasks: prompts it changed (a different suggestion or latency aside, a task whose
    repository has other files), first lines it made right and made wrong."""
    changed = [a["suggestion"] != b["suggestion"] for a, b in zip(with_rows, without_rows)]
    return {
        "tasks_in_repos_with_other_files": sum(workspaces.files(t.repo) > 1 for t in tasks) if workspaces else 0,
        "suggestion_changed": sum(changed),
        "first_line_fixed": sum(a["exact_first_line"] and not b["exact_first_line"]
                                for a, b in zip(with_rows, without_rows)),
        "first_line_broken": sum(b["exact_first_line"] and not a["exact_first_line"]
                                 for a, b in zip(with_rows, without_rows)),
    }


def format_positions(report: dict) -> str:
    """A small table of the figures, and the replay's."""
    lines = [f"{'kind':<20} {'n':>4} {'first':>6} {'exact':>6} {'edit_sim':>8} {'empty':>6} {'harmful':>7} "
             f"{'invalid':>7} {'glued':>5} {'midword':>7} {'ms/task':>8}"]
    for kind, m in report["metrics"].items():
        if m.get("n"):
            invalid = "-" if m["invalid_syntax_rate"] is None else f"{m['invalid_syntax_rate']:.3f}"
            glued = "-" if m["glued"] is None else str(m["glued"])
            lines.append(
                f"{kind:<20} {m['n']:>4} {m['exact_first_line']:>6.3f} {m['exact_match']:>6.3f} "
                f"{m['edit_similarity']:>8.3f} {m['empty_rate']:>6.3f} {m['harmful_rate']:>7.3f} {invalid:>7} "
                f"{glued:>5} {m['mid_word_starts']:>7} {m['latency_ms_mean']:>8.1f}"
            )
    if "without_retrieval" in report:
        lines += ["", _format_retrieval(report)]
    r = report["replay"]
    if r["functions"]:
        lines.append(
            f"typing replay: {r['functions']} functions, {r['chars']} characters: {r['accepted_share']:.1%} accepted "
            f"({r['accepted_chars']} in {r['accepted']} suggestions); {r['requests']} requests, {r['shown']} shown, "
            f"{r['model_calls']} model calls; "
            f"time to ghost text p50 {r['latency_ms_p50']:.0f} ms, p95 {r['latency_ms_p95']:.0f} ms"
        )
    return "\n".join(lines)


def _format_retrieval(report: dict) -> str:
    """The position figures without and with retrieval, side by side."""
    lines = [f"{'without / with retrieval':<20} {'n':>4} {'first':>13} {'exact':>13} {'empty':>13} {'harmful':>13} "
             f"{'ms/task':>15}"]
    for kind, on in report["metrics"].items():
        off = report["without_retrieval"]["metrics"][kind]
        if on.get("n"):
            pairs = [f"{off[key]:>6.3f} {on[key]:>6.3f}"
                     for key in ("exact_first_line", "exact_match", "empty_rate", "harmful_rate")]
            lines.append(f"{kind:<20} {on['n']:>4} {' '.join(pairs)} "
                         f"{off['latency_ms_mean']:>7.1f} {on['latency_ms_mean']:>7.1f}")
    r = report["retrieval"]
    lines.append(
        f"retrieval changed {r['suggestion_changed']} suggestions "
        f"({r['tasks_in_repos_with_other_files']} tasks in repositories with other files): "
        f"{r['first_line_fixed']} first lines made right, {r['first_line_broken']} made wrong"
    )
    return "\n".join(lines)


# -- command line ---------------------------------------------------------------------------------


def add_parser(stages: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The `positions` subcommand."""
    p = stages.add_parser("positions", help="completion where editors ask (after Enter, at line ends, ...) and a "
                                            "typing replay, on held-out code")
    add_task_arguments(p, "corpus dir (or .jsonl): tasks from its valid.jsonl")
    p.add_argument("--per-kind", type=int, default=100, help="position tasks per kind (default: %(default)s)")
    p.add_argument("--functions", type=int, default=20, help="functions to type in the replay (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--timeout-ms", type=int, default=60_000,
                   help="generation time limit per request (default: %(default)s)")
    p.add_argument("--out", type=Path, metavar="FILE", help="write the JSON report here")
    p.add_argument("--tasks-only", action="store_true", help="build and save the --tasks file, evaluate nothing")
    p.add_argument("--no-floors", action="store_true",
                   help="show every suggestion, however unsure (to calibrate the model's confidence floors)")
    p.add_argument("--outcomes", type=Path, metavar="FILE",
                   help="write the typing replay's answers to this outcome record (JSONL, appended; prompts kept; "
                        "accepted: the first line is what comes next), for `midline-train rank`")
    p.add_argument("--engine", choices=("torch", "llamacpp", "auto"), default="torch",
                   help="what runs the model, as the server's `engine` setting (default: %(default)s)")
    p.add_argument("--retrieval", choices=("off", "on", "both"),
                   help="give each task its repository's other files from --corpus, as the server's workspace "
                        "(cross-file definitions; retrieved chunks unless off); both: each position task without and "
                        "with retrieval, side by side")
    p.set_defaults(run=run)
    return p


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.tasks and args.tasks.exists():
        tasks, tasks_file = load_tasks(args.tasks), args.tasks
    elif args.corpus:
        tasks = build_position_tasks(args.corpus, per_kind=args.per_kind, functions=args.functions, seed=args.seed)
        tasks_file = args.tasks or (args.out.with_suffix(".tasks.jsonl") if args.out else None)
        if tasks_file:
            save_tasks(tasks, tasks_file)
    else:
        parser.error("positions needs --corpus DIR, or an existing --tasks FILE")
    if not tasks:
        parser.error("no tasks: the held-out split has no Python files with code lines")
    if args.tasks_only:
        print(f"{len(tasks)} tasks in {tasks_file}")
        return 0
    workspaces = None
    if args.retrieval:
        if not args.corpus:
            parser.error("--retrieval needs --corpus: the tasks' repositories' other files come from its held-out "
                         "split")
        workspaces = Workspaces(read_records(args.corpus))
    try:
        report = evaluate_positions(args.model, tasks, device=args.device, max_new_tokens=args.max_new_tokens,
                                    timeout_ms=args.timeout_ms, progress=sys.stderr.isatty(), floors=not args.no_floors,
                                    workspaces=workspaces, retrieval=args.retrieval, record=args.outcomes,
                                    engine_kind=args.engine)
    except (ModelLoadError, fim.FimFormatError) as e:
        parser.error(str(e))
    report["tasks"].update(file=str(tasks_file) if tasks_file else None,
                           sha256=sha256_file(tasks_file) if tasks_file else None, seed=args.seed)
    write_report(report, args.out, format_positions(report))
    return 0
