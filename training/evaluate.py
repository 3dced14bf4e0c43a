"""Evaluate stage: infilling on held-out code through the server's own completion path, plus validation loss.

Tasks (`build_tasks`) come from the corpus's held-out split (valid.jsonl), Python files only, one task
per file and kind, chosen reproducibly from a seed and saved as JSON lines so every model sees the same:

- single_line: the rest of a code line after its first token (`    return| a + b`). The cursor needs
  text before it on the line: with only indentation there, the server sees a blank line (a multi-line hole).
- multi_line: the last statements of a `block` (a function body, the body of an if/for/with, ...),
  2-8 lines, from the start of the first masked statement (after its indentation) to the end of the block.
- random_span: a random character span over 1-3 lines, starting at no mid-identifier position.
- doctest: the last statements (1-8 lines) of a top-level function with doctests, kept only if the
  original code passes its doctests in the sandbox. The completed file is run there and the function's
  doctests decide pass@1.

Each task is completed exactly as the server would: `Completer.complete` on a `Document` of the text
with the hole (debounce and cache off), greedy. Figures per kind and overall:

- exact match: the document with the suggestion applied equals the original, comparing the
  inserted text with the masked text after stripping trailing whitespace from each line (and trailing
  blank lines). A suggestion that reuses auto-closed brackets (`replace`) is compared with
  the masked text plus the brackets it replaces.
- edit similarity: 1 - Levenshtein distance / length of the longer string (characters, same normalization).
- empty rate (no suggestion), mean/p50/p90 latency of `complete` in ms, generated tokens per task.
- functional (doctest tasks): pass rate of the original code (a sanity check: ~1.0) and pass@1.

Validation loss (`validation_loss`): the first K documents of valid.jsonl, each as EOT + text + EOT
(tokenized as plain text, special-token strings included), truncated to the model's context; the loss
of predicting every token after the first EOT. nats/token = total nats / tokens; bits per byte = total
nats / (ln 2 * UTF-8 bytes of the text scored).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
import tree_sitter

from midline.model import DEFAULT_MODEL_DIR, fim
from midline.model.backend import Backend
from midline.model.engine import Engine
from midline.model.loader import ModelLoadError
from midline.model.syntax import char_offset, is_word, new_parser, node_name, utf8
from midline.server.completion import Completer
from midline.server.config import Config
from midline.server.context import Hole, classify_hole
from midline.server.documents import Document
from midline.server.postprocess import Suggestion
from midline.server.sandbox import SandboxResult, run_python, sandbox_state
from midline.training import stage
from midline.training.metrics import edit_similarity, normalize
from midline.training.stage import command_line, save_jsonl, sha256_file
from midline.training.workspaces import Workspaces, task_root

KINDS = ("single_line", "multi_line", "random_span", "doctest")
MAX_FILE_CHARS = 100_000  # larger held-out files are skipped
MIN_MIDDLE_CHARS = 4  # non-space characters a masked text needs
BLOCK_LINES = (2, 8)
DOCTEST_LINES = (1, 8)
SPAN_LINES = 3
_TOKEN = re.compile(r"\w+|\S")
_DOCTEST_MODULE = "module_under_test.py"
_DOCTEST_RUNNER = """\
import doctest, sys, types
module = types.ModuleType("module_under_test")  # not __main__: `if __name__ == "__main__"` blocks stay off
module.__file__ = {file!r}
sys.modules[module.__name__] = module
with open(module.__file__, encoding="utf-8") as f:
    exec(compile(f.read(), module.__file__, "exec"), module.__dict__)
function = getattr(module, {name!r})
runner = doctest.DocTestRunner(verbose=False)
for test in doctest.DocTestFinder(recurse=False).find(function, {name!r}, module=module):
    runner.run(test)
results = runner.summarize(verbose=False)
print("doctests attempted", results.attempted, "failed", results.failed)
sys.exit(0 if results.attempted and not results.failed else 1)
"""


@dataclass(frozen=True)
class Task:
    """One infilling task: a file with a hole at `offset`, and the text that was there."""

    kind: str  # one of KINDS
    repo: str
    path: str
    text_with_hole: str  # prefix + suffix
    offset: int  # the cursor: where `middle` was
    middle: str
    hole: str  # the server's hole kind at the cursor (`classify_hole`): "single_line" | "multi_line"
    function: str | None = None  # doctest tasks: the function whose doctests check the completion

    @property
    def prefix(self) -> str:
        return self.text_with_hole[: self.offset]

    @property
    def suffix(self) -> str:
        return self.text_with_hole[self.offset :]

    @property
    def original(self) -> str:
        return self.prefix + self.middle + self.suffix


# -- corpus ---------------------------------------------------------------------------------------


def read_records(source: Path | Iterable[dict]) -> list[dict]:
    """{"repo", "path", "text"} records: a corpus dir (its valid.jsonl), a .jsonl file, or records as given."""
    if not isinstance(source, (str, Path)):
        return list(source)
    path = Path(source)
    if path.is_dir():
        path = path / "valid.jsonl"
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def python_records(records: list[dict]) -> list[dict]:
    """Python files of a sensible size, in a fixed order (so the input order does not matter)."""
    kept = [r for r in records if r["path"].endswith(".py") and 0 < len(r["text"]) <= MAX_FILE_CHARS]
    return sorted(kept, key=lambda r: (r.get("repo", ""), r["path"]))


# -- tasks ----------------------------------------------------------------------------------------


class Source:
    """A held-out file, parsed once, with line and offset helpers."""

    def __init__(self, record: dict, parser: tree_sitter.Parser) -> None:
        self.repo: str = record.get("repo", "")
        self.path: str = record["path"]
        self.text: str = record["text"]
        self.lines = self.text.split("\n")
        self.line_starts = [0]
        for line in self.lines[:-1]:
            self.line_starts.append(self.line_starts[-1] + len(line) + 1)
        self._ascii = self.text.isascii()
        self.tree = parser.parse(utf8(self.text))

    def offset(self, point: tree_sitter.Point) -> int:
        """String index of a tree-sitter (row, byte column) point."""
        row, column = point
        line = self.lines[row]
        if not self._ascii:
            column = char_offset(utf8(line), column)
        return self.line_starts[row] + column

    def task(self, kind: str, start: int, end: int, function: str | None = None) -> Task | None:
        """The task masking text[start:end], if it has enough content and the server would complete there."""
        middle = self.text[start:end]
        if len(middle.replace(" ", "").replace("\n", "")) < MIN_MIDDLE_CHARS:
            return None
        with_hole = self.text[:start] + self.text[end:]
        hole = classify_hole(with_hole, start, "python")
        if hole is Hole.NONE:
            return None
        return Task(kind, self.repo, self.path, with_hole, start, middle, hole.value, function)


def build_tasks(
    source: Path | Iterable[dict],
    *,
    per_kind: int,
    seed: int,
    doctests: int | None = None,
    sandbox_timeout_s: float = 10.0,
) -> list[Task]:
    """Up to `per_kind` tasks of each kind (doctest: up to `doctests`, default `per_kind`; 0 for none),
    at most one per file and kind. The same records and seed give the same tasks."""
    records = python_records(read_records(source))
    parser = new_parser("python")
    tasks: list[Task] = []
    for kind, pick in (("single_line", pick_single_line), ("multi_line", _pick_multi_line),
                       ("random_span", _pick_span)):
        tasks += sample_tasks(records, parser, kind, per_kind, seed, pick)
    if doctests is None:
        doctests = per_kind
    if doctests > 0:
        def check(task):
            return run_doctests(task.function, task.original, timeout_s=sandbox_timeout_s).ok
        tasks += sample_tasks(records, parser, "doctest", doctests, seed, _pick_doctest, check=check,
                              max_checks=4 * doctests + 8)
    return tasks


def sample_tasks(
    records: list[dict],
    parser: tree_sitter.Parser,
    kind: str,
    count: int,
    seed: int,
    pick: Callable[[Source, random.Random], Task | None],
    *,
    check: Callable[[Task], bool] | None = None,
    max_checks: int = 0,
) -> list[Task]:
    """Visit files in a seeded random order and take the task `pick` finds in each, until `count`."""
    rng = random.Random(f"{seed}:{kind}")  # a string seed is stable across processes
    order = list(range(len(records)))
    rng.shuffle(order)
    tasks: list[Task] = []
    checks = 0
    for i in order:
        if len(tasks) >= count or (check and checks >= max_checks):
            break
        task = pick(Source(records[i], parser), rng)
        if task is None:
            continue
        if check is not None:
            checks += 1
            if not check(task):
                continue
        tasks.append(task)
    return tasks


def string_rows(tree: tree_sitter.Tree) -> set[int]:
    """Rows of multi-line string literals (docstrings, mostly): prose, not code lines."""
    rows: set[int] = set()
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.type == "string":
            if node.end_point.row > node.start_point.row:
                rows.update(range(node.start_point.row, node.end_point.row + 1))
        else:
            stack.extend(node.children)
    return rows


def pick_single_line(src: Source, rng: random.Random) -> Task | None:
    """The rest of a random code line after its first token."""
    strings = string_rows(src.tree)
    rows = [row for row, line in enumerate(src.lines)
            if row not in strings and line.strip() and not line.lstrip().startswith("#")]
    rng.shuffle(rows)
    for row in rows[:20]:
        line = src.lines[row]
        indent = len(line) - len(line.lstrip())
        first = _TOKEN.match(line, indent)
        if first is None:
            continue
        start = src.line_starts[row] + first.end()
        task = src.task("single_line", start, src.line_starts[row] + len(line.rstrip()))
        if task is not None and task.hole == Hole.SINGLE_LINE.value:
            return task
    return None


def _blocks(tree: tree_sitter.Tree) -> Iterator[tree_sitter.Node]:
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.type == "block":
            yield node
        stack.extend(node.children)


def _statement_runs(src: Source, block: tree_sitter.Node, lines: tuple[int, int]) -> list[tuple[int, int]]:
    """(start, end) of each run of a block's last statements spanning `lines` lines and starting its line."""
    statements = [c for c in block.named_children if c.type != "comment"]
    if not statements:
        return []
    last = statements[-1]
    runs = []
    for statement in statements:
        row = statement.start_point.row
        span = last.end_point.row - row + 1
        line_prefix = src.lines[row][: src.offset(statement.start_point) - src.line_starts[row]]
        if lines[0] <= span <= lines[1] and not line_prefix.strip():
            runs.append((src.offset(statement.start_point), src.offset(last.end_point)))
    return runs


def _pick_multi_line(src: Source, rng: random.Random) -> Task | None:
    """A random run of a block's last statements, 2-8 lines."""
    if src.tree.root_node.has_error:
        return None
    runs = [run for block in _blocks(src.tree) for run in _statement_runs(src, block, BLOCK_LINES)]
    rng.shuffle(runs)
    for start, end in runs[:10]:
        task = src.task("multi_line", start, end)
        if task is not None and task.hole == Hole.MULTI_LINE.value:
            return task
    return None


def _pick_span(src: Source, rng: random.Random) -> Task | None:
    """A random span of 1-3 lines, moved back to the start of an identifier it would cut."""
    rows = [row for row, line in enumerate(src.lines) if line.strip()]
    for _ in range(10):
        if not rows:
            return None
        row = rng.choice(rows)
        line = src.lines[row]
        start = src.line_starts[row] + rng.randrange(len(line) - len(line.lstrip()), len(line))
        while start > 0 and is_word(src.text[start - 1]) and is_word(src.text[start]):
            start -= 1
        last = min(row + rng.randrange(SPAN_LINES), len(src.lines) - 1)
        last_end = src.line_starts[last] + len(src.lines[last])
        if last_end <= start + 1:
            continue
        task = src.task("random_span", start, rng.randrange(start + 1, last_end + 1))
        if task is not None:
            return task
    return None


def _pick_doctest(src: Source, rng: random.Random) -> Task | None:
    """The last statements (1-8 lines) of a random top-level function whose docstring has doctests."""
    if ">>>" not in src.text or src.tree.root_node.has_error:
        return None
    functions = [n for n in src.tree.root_node.named_children if n.type == "function_definition" and _has_doctests(n)]
    rng.shuffle(functions)
    for function in functions:
        body = function.child_by_field_name("body")
        code = _after_docstring(body)
        if code is None:
            continue
        runs = _statement_runs(src, code, DOCTEST_LINES)
        if not runs:
            continue
        name = node_name(function, "python")
        task = src.task("doctest", *runs[0], function=name)  # the longest run that fits
        if task is not None and task.hole == Hole.MULTI_LINE.value:
            return task
    return None


def _has_doctests(function: tree_sitter.Node) -> bool:
    body = function.child_by_field_name("body")
    docstring = docstring_of(body)
    return docstring is not None and b">>>" in docstring.text


def docstring_of(body: tree_sitter.Node | None) -> tree_sitter.Node | None:
    first = body.named_children[0] if body is not None and body.named_children else None
    if (first is not None and first.type == "expression_statement" and first.named_children
            and first.named_children[0].type == "string"):
        return first
    return None


class _Statements:
    """A block's statements after its docstring (what `_statement_runs` needs of a block)."""

    def __init__(self, children: list[tree_sitter.Node]) -> None:
        self.named_children = children


def _after_docstring(body: tree_sitter.Node) -> _Statements | None:
    docstring = docstring_of(body)
    rest = [c for c in body.named_children if c.start_byte > docstring.end_byte and c.type != "comment"]
    return _Statements(rest) if rest else None


# -- task files -----------------------------------------------------------------------------------


def save_tasks(tasks: list[Task], path: Path) -> str:
    """Write tasks as JSON lines; returns the file's sha256 (recorded in reports, to compare like with like)."""
    return save_jsonl([asdict(task) for task in tasks], path)


def load_tasks(path: Path) -> list[Task]:
    with Path(path).open(encoding="utf-8") as f:
        return [Task(**json.loads(line)) for line in f if line.strip()]


# -- scoring --------------------------------------------------------------------------------------


def target(task: Task, suggestion: Suggestion | None) -> str:
    """What the suggestion must insert to restore the original: the middle, plus any suffix text it replaces."""
    replace = suggestion.replace if suggestion else 0
    return task.middle + task.suffix[:replace]


def score(task: Task, suggestion: Suggestion | None) -> tuple[bool, float]:
    """(exact match, edit similarity) of a suggestion (None: nothing shown) against the task."""
    got = normalize(suggestion.text if suggestion else "")
    want = normalize(target(task, suggestion))
    return got == want, edit_similarity(got, want)


def completed_text(task: Task, suggestion: Suggestion | None) -> str:
    """The file after accepting the suggestion."""
    if suggestion is None:
        return task.text_with_hole
    return task.prefix + suggestion.text + task.suffix[suggestion.replace :]


def run_doctests(function: str, text: str, *, timeout_s: float = 10.0) -> SandboxResult:
    """Run the doctests of `function` in the module `text`, in the sandbox; `.ok` if all pass (and there are some)."""
    code = _DOCTEST_RUNNER.format(file=_DOCTEST_MODULE, name=function)
    return run_python(code, files={_DOCTEST_MODULE: text}, timeout_s=timeout_s)


# -- completion -----------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What the server answered for one task."""

    suggestion: Suggestion | None
    latency_ms: float
    tokens: int
    finish_reason: str  # of the generation; "none" when the server did not call the model
    mean_logprob: float = math.nan  # of the generated tokens (nan: no model call)
    shown_logprob: float = math.nan  # of the tokens that write the suggestion (what the confidence floor judges)


def eval_config(max_new_tokens: int, timeout_ms: int) -> Config:
    """The server's defaults, with what evaluation needs: no debounce, no cache, greedy (one candidate, also for an
    explicit request), a generous time limit."""
    return Config(
        max_new_tokens=max_new_tokens, debounce_ms=0, cache_size=0, temperature=0.0, timeout_ms=timeout_ms,
        candidates=1, automatic_candidates=1,
    )


def complete_tasks(
    engine: Backend, tasks: list[Task], config: Config, *, progress: bool = False, workspaces: Workspaces | None = None
) -> list[Outcome]:
    """Each task through `Completer.complete`, one fresh Completer per task (no state carried over); with
    `workspaces`, the Completer has the indexes of the task's repository, as the server has the workspace's."""
    return complete_side_by_side(engine, tasks, [config], progress=progress, workspaces=workspaces)[0]


def complete_side_by_side(
    engine: Backend, tasks: list[Task], configs: list[Config], *, progress: bool = False,
    workspaces: Workspaces | None = None
) -> list[list[Outcome]]:
    """`complete_tasks` under each of `configs`, task by task (each task under every config in turn, so that a
    change in the machine's load weighs on all of them alike, the engine's KV cache cleared in between, so that
    none reuses another's prompt); the outcomes per config."""
    return asyncio.run(_complete_all(engine, tasks, configs, progress, workspaces))


async def _complete_all(
    engine: Backend, tasks: list[Task], configs: list[Config], progress: bool, workspaces: Workspaces | None
) -> list[list[Outcome]]:
    outcomes: list[list[Outcome]] = [[] for _ in configs]
    with ThreadPoolExecutor(max_workers=1) as executor:
        await _warm_up(engine, configs[0], executor)
        for task in stage.progress(tasks, progress, "evaluate"):
            root = task_root(task.repo)
            symbols, retrieval = workspaces.indexes(task.repo) if workspaces is not None else (None, None)
            for config, done in zip(configs, outcomes):
                if len(configs) > 1 and (clear := getattr(engine, "clear_cache", None)) is not None:
                    await asyncio.get_running_loop().run_in_executor(executor, clear)  # no reuse of the other's prompt
                completer = Completer(engine, config, executor, root=str(root), symbols=symbols, retrieval=retrieval)
                doc = Document((root / task.path).as_uri(), "python", 1, task.text_with_hole)
                start = time.perf_counter()
                completion = await completer.complete(doc, task.offset)
                latency = (time.perf_counter() - start) * 1000
                generation = completion.generation
                tokens = len(generation.token_ids) if generation else 0
                done.append(Outcome(completion.suggestion, latency, tokens,
                                    generation.finish_reason if generation else "none",
                                    generation.mean_logprob if generation else math.nan, completion.confidence))
    return outcomes


async def _warm_up(engine: Backend, config: Config, executor: ThreadPoolExecutor) -> None:
    """One short completion first, so one-off start-up costs do not land on the first task's latency."""
    completer = Completer(engine, eval_config(4, config.timeout_ms), executor)
    await completer.complete(Document("file:///warm_up.py", "python", 1, "def f(x):\n    \n"), len("def f(x):\n    "))


# -- loss -----------------------------------------------------------------------------------------


def validation_loss(engine: Engine, texts: Iterable[str], *, max_tokens: int | None = None) -> dict:
    """Left-to-right loss on `texts` (each as EOT + text + EOT, truncated to the context): nats/token, bits/byte."""
    tokenizer, model = engine.tokenizer, engine.model
    eot = tokenizer.convert_tokens_to_ids(fim.EOT)
    context = min(engine.max_context, max_tokens or engine.max_context)
    nats = 0.0
    tokens = size = docs = 0
    for text in texts:
        if not text:
            continue
        ids, scored = _truncated_ids(tokenizer, text, eot, context - 1)
        inputs = torch.tensor([[eot] + ids[:-1]], device=engine.device)
        targets = torch.tensor(ids, device=engine.device)
        with torch.inference_mode():
            logits = model(input_ids=inputs).logits[0].float()
        nats += F.cross_entropy(logits, targets, reduction="sum").item()
        tokens += len(ids)
        size += len(scored.encode("utf-8", "surrogatepass"))
        docs += 1
    return {
        "docs": docs,
        "tokens": tokens,
        "bytes": size,
        "context": context,
        "nats_per_token": nats / tokens if tokens else None,
        "bits_per_byte": nats / (math.log(2) * size) if size else None,
    }


def _truncated_ids(tokenizer, text: str, eot: int, limit: int) -> tuple[list[int], str]:
    """Token ids of text + EOT, at most `limit` of them, and the text they cover."""
    encoded = tokenizer(text, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True,
                        verbose=False)
    ids = list(encoded["input_ids"]) + [eot]
    if len(ids) <= limit:
        return ids, text
    ids = ids[:limit]
    return ids, text[: encoded["offset_mapping"][limit - 1][1]]


# -- the report -----------------------------------------------------------------------------------


def summarize(rows: list[dict]) -> dict:
    """Figures of one group of per-task rows."""
    n = len(rows)
    if not n:
        return {"n": 0}
    latencies = sorted(r["latency_ms"] for r in rows)
    def mean(key):
        return sum(float(r[key]) for r in rows) / n
    return {
        "n": n,
        "exact_match": mean("exact_match"),
        "edit_similarity": mean("edit_similarity"),
        "empty_rate": mean("empty"),
        "latency_ms_mean": mean("latency_ms"),
        "latency_ms_p50": latencies[n // 2],
        "latency_ms_p90": latencies[min(n - 1, int(0.9 * n))],
        "tokens_mean": mean("tokens"),
        "timeouts": sum(r["finish_reason"] == "timeout" for r in rows),
    }


def _row(task: Task, outcome: Outcome) -> dict:
    exact, similarity = score(task, outcome.suggestion)
    return {
        "kind": task.kind, "repo": task.repo, "path": task.path, "offset": task.offset, "hole": task.hole,
        "exact_match": exact, "edit_similarity": similarity, "empty": outcome.suggestion is None,
        "latency_ms": outcome.latency_ms, "tokens": outcome.tokens, "finish_reason": outcome.finish_reason,
        "mean_logprob": None if math.isnan(outcome.mean_logprob) else round(outcome.mean_logprob, 4),
        "suggestion": outcome.suggestion.text if outcome.suggestion else None,
    }


def _functional(tasks: list[Task], outcomes: list[Outcome], rows: list[dict], timeout_s: float) -> dict:
    """Run each doctest task's original, holed and completed file in the sandbox. pass@1 counts the tasks
    whose original passes and whose holed file fails (so the masked code is what the doctests test)."""
    selected = originals = counted = passed = 0
    for task, outcome, row in zip(tasks, outcomes, rows):
        if task.kind != "doctest" or not task.function:
            continue
        selected += 1
        row["original_passed"] = run_doctests(task.function, task.original, timeout_s=timeout_s).ok
        if not row["original_passed"]:
            continue
        originals += 1
        row["hole_passed"] = run_doctests(task.function, task.text_with_hole, timeout_s=timeout_s).ok
        if row["hole_passed"]:  # the doctests don't need the masked code: no test of the completion
            continue
        counted += 1
        row["passed"] = run_doctests(task.function, completed_text(task, outcome.suggestion), timeout_s=timeout_s).ok
        passed += row["passed"]
    return {
        "tasks": selected,
        "original_passed": originals,
        "original_pass_rate": originals / selected if selected else None,
        "counted": counted,
        "passed": passed,
        "pass_at_1": passed / counted if counted else None,
    }


def evaluate(
    model_dir: Path,
    tasks: list[Task],
    *,
    device: str = "auto",
    max_new_tokens: int = 128,
    functional: bool = True,
    valid_texts: Iterable[str] | None = None,
    loss_docs: int = 100,
    timeout_ms: int = 60_000,
    sandbox_timeout_s: float = 10.0,
    progress: bool = False,
) -> dict:
    """Complete every task through the server's path and score it; with `valid_texts`, also the loss on the
    first `loss_docs` of them. Returns the report (JSON-ready)."""
    started = time.monotonic()
    engine = Engine.load(model_dir, device=device)
    config = eval_config(max_new_tokens, timeout_ms)
    outcomes = complete_tasks(engine, tasks, config, progress=progress)
    rows = [_row(task, outcome) for task, outcome in zip(tasks, outcomes)]
    kinds = [kind for kind in KINDS if any(task.kind == kind for task in tasks)]
    report = {
        "model": str(Path(model_dir).resolve()),
        "device": str(engine.device),
        "fim_format": engine.fim.name,
        "settings": {
            "max_new_tokens": max_new_tokens, "functional": functional, "timeout_ms": timeout_ms,
            "sandbox_timeout_s": sandbox_timeout_s, "loss_docs": loss_docs, "server_config": config.to_json(),
            "edit_similarity": "1 - levenshtein / max(len) on characters, trailing whitespace stripped per line",
        },
        "tasks": {"count": len(tasks), "by_kind": {kind: sum(t.kind == kind for t in tasks) for kind in kinds}},
        "metrics": {"overall": summarize(rows),
                    **{kind: summarize([r for r in rows if r["kind"] == kind]) for kind in kinds}},
        "functional": _functional(tasks, outcomes, rows, sandbox_timeout_s) if functional else None,
        "loss": None,
    }
    if valid_texts is not None and loss_docs > 0:
        report["loss"] = validation_loss(engine, _first(valid_texts, loss_docs))
    report["elapsed_s"] = time.monotonic() - started
    report["per_task"] = rows
    return report


def _first(texts: Iterable[str], count: int) -> Iterator[str]:
    for i, text in enumerate(texts):
        if i >= count:
            return
        yield text


def format_report(report: dict) -> str:
    """A small table of the figures."""
    lines = [f"{'kind':<12} {'n':>5} {'exact':>6} {'edit_sim':>8} {'empty':>6} {'ms/task':>8} {'tokens':>7}"]
    for kind, m in report["metrics"].items():
        if m.get("n"):
            lines.append(
                f"{kind:<12} {m['n']:>5} {m['exact_match']:>6.3f} {m['edit_similarity']:>8.3f} {m['empty_rate']:>6.3f} "
                f"{m['latency_ms_mean']:>8.1f} {m['tokens_mean']:>7.1f}"
            )
    functional = report.get("functional")
    if functional and functional["tasks"]:
        pass_at_1 = functional["pass_at_1"]
        lines.append(
            f"functional: pass@1 {'n/a' if pass_at_1 is None else f'{pass_at_1:.3f}'} "
            f"over {functional['counted']} doctest tasks "
            f"(original code passes {functional['original_passed']}/{functional['tasks']}; "
            "counted: the holed code fails)"
        )
    loss = report.get("loss")
    if loss and loss["tokens"]:
        lines.append(f"validation: {loss['nats_per_token']:.4f} nats/token, {loss['bits_per_byte']:.4f} bits/byte "
                     f"({loss['docs']} docs, {loss['tokens']} tokens)")
    return "\n".join(lines)


# -- command line ---------------------------------------------------------------------------------


def add_task_arguments(p: argparse.ArgumentParser, corpus_help: str) -> None:
    """The flags of every evaluation on held-out tasks: --model, --corpus, --tasks, --seed, --device."""
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, metavar="DIR",
                   help="model dir (default: %(default)s)")
    p.add_argument("--corpus", type=Path, metavar="DIR", help=corpus_help)
    p.add_argument("--tasks", type=Path, metavar="FILE",
                   help="task file (JSON lines): read if it exists, else built from --corpus and written")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")


def add_parser(stages: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The `evaluate` subcommand."""
    p = stages.add_parser("evaluate", help="infilling, functional and loss figures of a model on held-out code")
    add_task_arguments(p, "corpus dir: tasks and validation loss from its valid.jsonl")
    p.add_argument("--per-kind", type=int, default=100, help="tasks per kind (default: %(default)s)")
    p.add_argument("--doctests", type=int, metavar="N", help="doctest tasks at most (default: --per-kind)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--timeout-ms", type=int, default=60_000,
                   help="generation time limit per task (default: %(default)s)")
    p.add_argument("--no-functional", action="store_true", help="skip running doctests in the sandbox")
    p.add_argument("--loss-docs", type=int, default=100,
                   help="validation documents for the loss (default: %(default)s; 0: skip)")
    p.add_argument("--out", type=Path, metavar="FILE", help="write the JSON report here")
    p.add_argument("--tasks-only", action="store_true", help="build and save the --tasks file, evaluate nothing")
    p.set_defaults(run=run)
    return p


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if not args.no_functional and not (state := sandbox_state()).available:
        parser.error(f"doctest pass@1 runs code in the sandbox, which is off here: {state.detail}; "
                     "or pass --no-functional")
    tasks, tasks_file = _cli_tasks(parser, args)
    if not tasks:
        parser.error("no tasks: the held-out split has no Python files with code to mask")
    if args.tasks_only:
        print(f"{len(tasks)} tasks in {tasks_file}")
        return 0
    texts = (r["text"] for r in read_records(args.corpus)) if args.corpus else None
    try:
        report = evaluate(
            args.model, tasks, device=args.device, max_new_tokens=args.max_new_tokens,
            functional=not args.no_functional, valid_texts=texts, loss_docs=args.loss_docs,
            timeout_ms=args.timeout_ms, progress=sys.stderr.isatty(),
        )
    except (ModelLoadError, fim.FimFormatError) as e:
        parser.error(str(e))
    report["tasks"].update(file=str(tasks_file) if tasks_file else None,
                           sha256=sha256_file(tasks_file) if tasks_file else None, seed=args.seed)
    write_report(report, args.out, format_report(report))
    return 0


def write_report(report: dict, out: Path | None, table: str) -> None:
    """Record the command line in `report`, write it as JSON to `out` (if given) and print `table`."""
    report["command"] = command_line()
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(table)
    if out:
        print(f"wrote {out}")


def _cli_tasks(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[list[Task], Path | None]:
    """Tasks from --tasks if that file exists, else built from --corpus (and saved to --tasks, or next to --out)."""
    if args.tasks and args.tasks.exists():
        return load_tasks(args.tasks), args.tasks
    if not args.corpus:
        parser.error("evaluate needs --corpus DIR, or an existing --tasks FILE")
    doctests = 0 if args.no_functional else args.doctests
    tasks = build_tasks(args.corpus, per_kind=args.per_kind, seed=args.seed, doctests=doctests)
    path = args.tasks or (args.out.with_suffix(".tasks.jsonl") if args.out else None)
    if path:
        save_tasks(tasks, path)
    return tasks, path

