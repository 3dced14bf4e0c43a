"""eval-tasks stage: the instruction tasks on held-out code, asked and read exactly as the server does.

Tasks come from the corpus's held-out split (valid.jsonl: whole packages the model never trained on),
chosen reproducibly from a seed (files in a seeded order, at most one task per file and kind) and
saved as JSON lines, so every model is measured on the same:

- explain: a function or class with a docstring (`sft_mine.explain_records`). The model fills the docstring
  slot of `tasks.EXPLAIN.prompt`; `tasks.EXPLAIN.parse` reads the answer, which is compared with the
  real docstring (both `inspect.cleandoc`-ed): ROUGE-L F1 over lower-cased word tokens, character edit
  similarity (1 - Levenshtein / longer length), exact match.
- fix: a synthetic bug in a function (`sft_mine.mutate`). The model writes after `tasks.FIX.prompt`'s marker;
  `tasks.FIX.parse` reads the answer. fix rate: the answer equals the original function (trailing
  whitespace aside); same tree: the answer's syntax tree equals the original's (formatting and comments
  aside); parses; unchanged: the answer is the buggy code again. With the sandbox (not `--no-run`) each answer
  also goes through the server's fix path twice, side by side: without verification (today's gates before issue
  20: tree-sitter parses it, it differs) and with it (`actions.fix_gate`, Python compiling the whole module, then
  `fix_evidence`: the function's doctests run on the buggy module and on the fixed one, `judge` decides; no
  doctests: offered unverified). Reported per side: offered (the server would show it), right among offered (same
  tree), wrong offered. `--fix-doctests` builds fix tasks only from functions whose doctests pass on the module
  and fail on the bug (a user with a failing doctest), so verification has evidence to run.
- tests: a public top-level function of a held-out module that imports on its own (no relative imports;
  checked in the sandbox), and a mutant of it. The model writes the test module after
  `tasks.TESTS.prompt`'s header; `tasks.TESTS.parse` reads it; the server's `verify_tests` runs it in the
  sandbox (`server/sandbox.py`) against the module and keeps the passing tests, which then run
  against the mutant. pass rate: at least one test passes on the correct code (the server has something
  to offer); kill rate: the kept tests pass on the correct code and fail on the mutant (they test it).
  A mutant can be equivalent to the original, so the kill rate's ceiling is a little under 1.

Generation is greedy through `Engine.generate` on `engine.encode(prompt)` (the format's default layout,
as the server's assistant sends it), with the task's stop condition and a token limit per kind.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import random
import re
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

from midline.model import tasks
from midline.model.syntax import definition_parts, line_start, node_name, parse, parses, unwrap, utf8
from midline.training import sft_mine
from midline.training.evaluate import add_task_arguments, write_report
from midline.training.metrics import edit_similarity, normalize, rouge_l, same_tree
from midline.server.sandbox import SandboxUnavailable, run_python, sandbox_state
from midline.server import actions, examples, fix_evidence, quality
from midline.server.actions import Actions, Nothing, Replace, TestFile, fix_gate
from midline.server.assistant import Assistant
from midline.server.config import ActionsConfig, Config
from midline.server.documents import Document
from midline.server.targets import Target
from midline.server.verify import run_tests, test_functions, verify_tests
from midline.training import stage
from midline.training.stage import save_jsonl, sha256_file

KINDS = tuple(task.name for task in (tasks.EXPLAIN, tasks.FIX, tasks.TESTS))  # evaluated, in --max-new-tokens order
MAX_MODULE_CHARS = 6000  # tests tasks: modules small enough that the prompt fits a 1k-token context
_RELATIVE_IMPORT = re.compile(r"^\s*from\s+\.", re.MULTILINE)
_IMPORT_CHECK = """\
import importlib, sys
module = importlib.import_module({module!r})
assert module.__file__.endswith({file!r}), module.__file__
assert callable(getattr(module, {name!r}))
"""


# -- tasks ----------------------------------------------------------------------------------------


def build_tasks(corpus_dir: Path, *, per_kind: int, tests: int, seed: int,
                sandbox_timeout_s: float = 20.0, fix_doctests: bool = False, synthesis: int = 0) -> list[dict]:
    """Up to `per_kind` explain and fix tasks, `tests` tests tasks and `synthesis` synthesis tasks from the corpus's
    valid.jsonl (`fix_doctests`: fix tasks whose doctests catch the bug, `doctested_fix_task`; synthesis:
    `synthesis_task`)."""
    docs = [json.loads(line) for line in open(Path(corpus_dir) / "valid.jsonl", encoding="utf-8") if line.strip()]
    docs = sorted((d for d in docs if d["path"].endswith(".py") and 0 < len(d["text"]) <= 200_000),
                  key=lambda d: (d["repo"], d["path"]))
    config = sft_mine.MineConfig(seed=seed)
    out: list[dict] = []
    for kind in KINDS:
        count = tests if kind == tasks.TESTS.name else per_kind
        rng = random.Random(f"{seed}:{kind}")
        order = list(range(len(docs)))
        rng.shuffle(order)
        found, checks = [], 0
        for i in order:
            if len(found) >= count or (checks > 3 * count + 8 and not (kind == "fix" and fix_doctests)):
                break
            doc = docs[i]
            if kind == "fix" and fix_doctests:
                task = doctested_fix_task(doc, rng, sandbox_timeout_s)
                if task is not None:
                    found.append(task)
                continue
            if kind == "tests":
                task = _tests_task(doc, rng)
                if task is None:
                    continue
                checks += 1
                if not _imports(task, sandbox_timeout_s):
                    continue
                found.append(task)
                continue
            tree = parse("python", doc["text"])
            mined = sft_mine.explain_records if kind == "explain" else sft_mine.fix_records
            records = mined(doc, tree, rng, config)
            if records:
                found.append(rng.choice(records) | ({"module": doc["text"]} if kind == "fix" else {}))
        out += found
    rng = random.Random(f"{seed}:synthesis")
    order = list(range(len(docs)))
    rng.shuffle(order)
    found = []
    for i in order:
        if len(found) >= synthesis:
            break
        task = synthesis_task(docs[i], rng, sandbox_timeout_s)
        if task is not None:
            found.append(task)
    return out + found


def synthesis_task(doc: dict, rng: random.Random, timeout_s: float) -> dict | None:
    """A synthesis task: a module-level function whose docstring carries examples (`examples.read`) that pass on the
    module in the sandbox; the task is the module with the function's body after the docstring replaced by `pass`
    (code from a comment, at a docstring). None if none fits."""
    text = doc["text"]
    if ">>>" not in text and "->" not in text:
        return None
    tree = parse("python", text)
    data = utf8(text)
    functions = [n for n in tree.root_node.named_children if unwrap(n, "python").type == "function_definition"]
    rng.shuffle(functions)
    for node in functions[:8]:
        code = sft_mine.definition_code(data, node)
        parts = definition_parts(code) if code else None
        if code is None or parts is None or parts.docstring is None or text.count(code.rstrip("\n")) != 1:
            continue
        found = examples.read(parts.docstring)
        name = node_name(node, "python")
        if not found or not parts.body.strip():
            continue
        evidence = found.evidence(FIX_MODULE, name)
        if not evidence or len(_evidence_run(evidence, text, timeout_s).passed(evidence.tests)) < len(evidence.tests):
            continue
        start = text.index(code.rstrip("\n"))
        body_at = start + code.index(parts.body) if parts.body in code else -1
        if body_at < 0:
            continue
        indent = parts.body[: len(parts.body) - len(parts.body.lstrip())]
        stub = text[:body_at] + indent + "pass\n" + text[start + len(code.rstrip("\n")) + 1:]
        return {"kind": "synthesis", "repo": doc["repo"], "path": doc["path"], "name": name, "reference": code,
                "module": text, "stub": stub, "docstring_at": stub.index(parts.docstring, start),
                "examples": len(evidence.tests)}
    return None


def _tests_task(doc: dict, rng: random.Random) -> dict | None:
    """A tests task for a module: a public top-level function of it with a mutant; None if none fits."""
    path = PurePosixPath(doc["path"])
    text = doc["text"]
    if (len(text) > MAX_MODULE_CHARS or path.stem == "__init__" or sft_mine.tested_module(doc["path"])
            or not path.stem.isidentifier() or _RELATIVE_IMPORT.search(text) or "__main__" in path.stem):
        return None
    tree = parse("python", text)
    if tree.root_node.has_error:
        return None
    data = utf8(text)
    functions = [n for n in tree.root_node.named_children
                 if unwrap(n, "python").type == "function_definition" and not node_name(n, "python").startswith("_")
                 and n.end_point.row - n.start_point.row >= 2]
    rng.shuffle(functions)
    for node in functions:
        code = sft_mine.definition_code(data, node)
        found = sft_mine.mutate(code, rng) if code else None
        if found is None:
            continue
        start = line_start(data, node.start_byte)
        mutated = data[:start] + found[1].rstrip("\n").encode() + data[node.end_byte :]
        mutant = mutated.decode("utf-8", "surrogatepass")
        if not sft_mine.compiles(mutant):
            continue
        return {"kind": "tests", "repo": doc["repo"], "path": doc["path"], "name": node_name(node, "python"),
                "mutation": found[0], "module": text, "mutant": mutant}
    return None


def doctested_fix_task(doc: dict, rng: random.Random, timeout_s: float) -> dict | None:
    """A fix task from a module-level function with doctests and a bug (`sft_mine.mutate`) they catch: the doctests
    pass on the module and fail with the bug (run in the sandbox as the server runs them); None if none fits."""
    text = doc["text"]
    if ">>>" not in text or len(text) > 200_000:
        return None
    tree = parse("python", text)
    data = utf8(text)
    config = sft_mine.MineConfig()
    functions = [n for n in tree.root_node.named_children if unwrap(n, "python").type == "function_definition"
                 and ">>>" in data[n.start_byte:n.end_byte].decode("utf-8", "replace")]
    rng.shuffle(functions)
    for node in functions[:4]:
        code = sft_mine.definition_code(data, node)
        if code is None or len(code) > config.max_fix_chars or text.count(code.rstrip("\n")) != 1:
            continue
        found = sft_mine.mutate(code, rng)
        if found is None:
            continue
        task = {"kind": "fix", "repo": doc["repo"], "path": doc["path"], "name": node_name(node, "python"),
                "mutation": found[0], "buggy": found[1], "fixed": code, "module": text, "evidence": "doctests"}
        buggy_module, _, evidence = _fix_place(task)
        if not evidence:
            continue
        right, wrong = (_evidence_run(evidence, m, timeout_s).passed(evidence.tests) for m in (text, buggy_module))
        if len(right) == len(evidence.tests) > len(wrong):
            return task
    return None


def _files(task: dict, source: str) -> dict[str, str]:
    """The sandbox's files for a tests task: the module at the top, importable by its name (`tasks.module_name`)."""
    return {f"{tasks.module_name(task['path'])}.py": source}


def _imports(task: dict, timeout_s: float) -> bool:
    """Whether the module imports on its own in the sandbox, by the name a generated test imports it by."""
    module = tasks.module_name(task["path"])
    code = _IMPORT_CHECK.format(module=module, file=f"{module}.py", name=task["name"])
    return run_python(code, files=_files(task, task["module"]), timeout_s=timeout_s, memory_mb=1024).ok


def prompt_of(task: dict):
    """The prompt the server sends for a task (its kind's `record_prompt`)."""
    return tasks.TASKS[task["kind"]].record_prompt(task)


def save_tasks(items: list[dict], path: Path) -> str:
    """Write tasks as JSON lines; returns the file's sha256."""
    return save_jsonl(items, path)


def load_tasks(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# -- scoring --------------------------------------------------------------------------------------


def score_explain(task: dict, output: str) -> dict:
    got = tasks.EXPLAIN.parse(output)
    want = inspect.cleandoc(tasks.EXPLAIN.record_example(task)[1]).strip()
    return {"result": got, "rouge_l": rouge_l(got, want), "edit_similarity": edit_similarity(got, want),
            "exact": got == want, "empty": not got}


def score_fix(task: dict, output: str) -> dict:
    got = tasks.FIX.parse(output)
    fixed, buggy = normalize(task["fixed"]), normalize(task["buggy"])
    return {"result": got, "fixed": normalize(got) == fixed, "same_tree": same_tree(got, task["fixed"]),
            "parses": bool(got) and bool(parses("python", got)), "unchanged": normalize(got) == buggy,
            "edit_similarity": edit_similarity(normalize(got), fixed), "empty": not got}


FIX_MODULE = "midline_fixed_module"  # the module's name in the sandbox (the server's, for a file outside a folder)


def _fix_place(task: dict) -> tuple[str, Target, fix_evidence.Evidence]:
    """The buggy module (the task's module with the bug in place of the function, else the buggy function alone),
    the fix's target in it, and its evidence as the server collects it (no workspace, no diagnostics)."""
    module, fixed, buggy = task.get("module"), task["fixed"], task["buggy"]
    start = module.find(fixed.rstrip("\n")) if module and module.count(fixed.rstrip("\n")) == 1 else -1
    if start < 0:
        module, start, fixed = fixed, 0, fixed
    end = start + len(fixed.rstrip("\n")) + (1 if module[start + len(fixed.rstrip("\n")):].startswith("\n") else 0)
    text = module[:start] + buggy + module[end:]
    target = Target("function", task.get("name") or "", start, start + len(buggy), buggy)
    evidence = fix_evidence.collect(buggy, target.name, FIX_MODULE, [], [], lambda path: None)
    return text, target, evidence


def _evidence_run(evidence: fix_evidence.Evidence, module: str, timeout_s: float):
    return run_tests(evidence.test_files, evidence.tests, files={f"{FIX_MODULE}.py": module}, timeout_s=timeout_s)


def verify_fix(task: dict, answer: str, *, timeout_s: float = 30.0) -> dict:
    """The answer through the server's fix path, without verification (tree-sitter parses it, it differs: the gates
    before issue 20) and with it (`fix_gate`, then the evidence run on the buggy and the fixed module, `judge`)."""
    text, target, evidence = _fix_place(task)
    row = {"offered_plain": bool(answer.strip()) and bool(parses("python", answer))
           and normalize(answer) != normalize(task["buggy"]), "offered_verified": False, "verified": False,
           "withheld": "", "evidence_tests": len(evidence.tests)}
    fixed = fix_gate(text, target, answer, "python") if answer.strip() else None
    if fixed is None:
        row["withheld"] = "gate"
        return row
    after = text[: target.start] + fixed + text[target.end :]
    runs = [_evidence_run(evidence, module, timeout_s) for module in (text, after)] if evidence else [None, None]
    verdict = fix_evidence.judge(evidence, *runs)
    row.update(offered_verified=verdict.offered, verified=verdict.offered and not verdict.note.startswith("unverified"),
               withheld="" if verdict.offered else "tests", note=verdict.note)
    return row


def score_tests(task: dict, output: str, *, timeout_s: float = 30.0) -> dict:
    """Run the generated tests as the server does (`verify_tests` keeps the passing ones), then the kept ones on the
    mutant."""
    source = tasks.TESTS.parse(prompt_of(task), output)
    test_file = f"test_{tasks.module_name(task['path'])}.py"
    written = [t.name for t in test_functions(source)]
    row = {"result": source, "tests": len(written), "passed": 0, "passes": False, "kills": False, "note": ""}
    if not written:
        row["note"] = "no complete test"
        return row
    on_code = verify_tests(source, test_file=test_file, files=_files(task, task["module"]), timeout_s=timeout_s)
    if not on_code.ran:
        raise SandboxUnavailable(on_code.note)
    row.update(passed=len(on_code.passed), passes=bool(on_code.passed), note=on_code.note)
    if on_code.passed:
        on_mutant = verify_tests(on_code.source, test_file=test_file, files=_files(task, task["mutant"]),
                                 timeout_s=timeout_s)
        row["kills"] = bool(on_mutant.failed) or not on_mutant.passed
    return row


# -- the server's action path: verification, refinement and synthesis ---------------------------------------


class ServerPath:
    """The server's code actions (`Actions.resolve`) on the loaded engine, as the server runs them, with
    `actions.attempts` 1 (verified only) and `attempts` (verified and refined), and `candidates` per refined ask;
    one assistant, so the first attempt's greedy answer is generated once for both."""

    def __init__(self, engine, *, attempts: int, candidates: int, max_new_tokens: int, timeout_s: float) -> None:
        self.attempts, self.candidates = attempts, candidates
        settings = ActionsConfig(max_new_tokens=max_new_tokens, timeout_ms=600_000, refine_ms=600_000,
                                 test_timeout_ms=int(timeout_s * 1000))

        async def get():
            return engine

        self.assistant = Assistant(get, Config(actions=settings), ThreadPoolExecutor(max_workers=1))
        self.settings = settings

    def resolve(self, doc: Document, action: str, at: int, *, attempts: int, candidates: int,
                root: Path | None = None) -> tuple[object, float]:
        """The outcome of `action` offered at `at`, and the seconds it took."""
        config = Config(actions=ActionsConfig(**{**vars(self.settings), "attempts": attempts,
                                                 "candidates": candidates}))
        offer = next((o for o in actions.offers(doc, at, at) if o.action == action), None)
        if offer is None:
            return Nothing(f"no {action} offered"), 0.0
        started = time.monotonic()
        outcome = asyncio.run(Actions(self.assistant, config, str(root) if root else None).resolve(doc, offer.data))
        return outcome, time.monotonic() - started


def _eval_uri(task: dict) -> str:
    """A document outside any workspace folder (its module is `midline_fixed_module` in the sandbox, as a file
    outside the folders is in the server)."""
    return f"file:///midline-eval/{PurePosixPath(task['path']).name}"


def refined_fix(task: dict, server: ServerPath) -> dict:
    """The fix task through the server's fix path with one attempt and with `server.attempts`: offered, right (the
    same tree as the original), the attempt that wrote it."""
    text, target, _ = _fix_place(task)
    doc = Document(_eval_uri(task), "python", 1, text)
    row: dict = {}
    for side, attempts in (("once", 1), ("refined", server.attempts)):
        outcome, took = server.resolve(doc, "fix", target.start, attempts=attempts, candidates=server.candidates)
        offered = isinstance(outcome, Replace)
        right = offered and same_tree(textwrap.dedent(outcome.text), task["fixed"])
        row[f"server_{side}"] = {"offered": offered, "right": right, "s": round(took, 2),
                                 "note": outcome.note if isinstance(outcome, Replace) else outcome.message[:300]}
    return row


def refined_tests(task: dict, server: ServerPath, timeout_s: float) -> dict:
    """The tests task through the server's tests path (the module in a workspace folder) with one attempt and with
    `server.attempts`: the kept tests pass on the code (offered), and fail on the mutant (kill)."""
    row: dict = {}
    with tempfile.TemporaryDirectory(prefix="midline-eval-") as folder:
        path = Path(folder) / f"{tasks.module_name(task['path'])}.py"
        path.write_text(task["module"], encoding="utf-8")
        doc = Document(path.as_uri(), "python", 1, task["module"])
        at = re.search(rf"^def {re.escape(task['name'])}\b", task["module"], re.MULTILINE)
        for side, attempts in (("once", 1), ("refined", server.attempts)):
            outcome, took = server.resolve(doc, "tests", at.start() if at else 0, attempts=attempts,
                                           candidates=server.candidates, root=Path(folder))
            passes = isinstance(outcome, TestFile) and outcome.verified is not None and bool(outcome.verified.passed)
            kills = False
            if passes and isinstance(outcome, TestFile) and outcome.verified is not None:
                test_file = f"test_{tasks.module_name(task['path'])}_midline.py"
                on_mutant = verify_tests(outcome.verified.source, test_file=test_file,
                                         files=_files(task, task["mutant"]), timeout_s=timeout_s)
                kills = bool(on_mutant.failed) or not on_mutant.passed
            row[f"server_{side}"] = {"passes": passes, "kills": kills, "s": round(took, 2)}
    return row


def score_synthesis(task: dict, server: ServerPath) -> dict:
    """The synthesis task through the server's code-from-a-comment path at the function's docstring: one greedy
    answer, `server.candidates` candidates, and candidates with refinement; offered = passes all the examples. The
    quality figures (`quality.measure`) of the offered function (the last side's) and of the reference."""
    doc = Document(_eval_uri(task), "python", 1, task["stub"])
    row: dict = {"examples": task["examples"]}
    sides = (("greedy", 1, 1), ("candidates", 1, server.candidates), ("refined", server.attempts, server.candidates))
    offered_module = None
    for side, attempts, candidates in sides:
        outcome, took = server.resolve(doc, "fromComment", task["docstring_at"], attempts=attempts,
                                       candidates=candidates)
        offered = isinstance(outcome, Replace)
        row[f"server_{side}"] = {"offered": offered, "s": round(took, 2),
                                 "note": outcome.note if isinstance(outcome, Replace) else outcome.message[:300]}
        if isinstance(outcome, Replace):
            offered_module = doc.text[: outcome.start] + outcome.text + doc.text[outcome.end :]
    row["quality_reference"] = quality.measure(task["reference"], task["module"])
    if offered_module is not None:
        start = task["stub"].index(task["reference"].split("\n", 1)[0])
        end = start + len(offered_module) - len(task["stub"]) + len(_stub_function(task))
        row["quality_generated"] = quality.measure(offered_module[start:end], offered_module)
    return row


def _stub_function(task: dict) -> str:
    """The stub's function (header, docstring, `pass`) as it stands in the stub module."""
    stub, first = task["stub"], task["reference"].split("\n", 1)[0]
    start = stub.index(first)
    end = stub.index("pass\n", task["docstring_at"]) + len("pass\n")
    return stub[start:end]


def fix_quality(task: dict, answer: str) -> dict:
    """`quality.measure` of the model's fix in the module, and of the original function (the reference)."""
    text, target, _ = _fix_place(task)
    row = {"quality_reference": quality.measure(task["fixed"], task.get("module") or task["fixed"])}
    fixed = fix_gate(text, target, answer, "python") if answer.strip() else None
    if fixed is not None:
        row["quality_generated"] = quality.measure(fixed, text[: target.start] + fixed + text[target.end :])
    return row


# -- running --------------------------------------------------------------------------------------


def max_new_tokens(task: dict, engine, limits: dict[str, int]) -> int:
    if task["kind"] == "fix":  # the corrected code is about as long as the buggy one
        return min(limits["fix"], engine.count_tokens(task["buggy"]) + 32)
    return limits[task["kind"]]


def evaluate_tasks(model_dir: Path, items: list[dict], *, device: str = "auto", limits: dict[str, int] | None = None,
                   run_tests: bool = True, sandbox_timeout_s: float = 30.0, progress: bool = False,
                   attempts: int = 1, candidates: int = 3) -> dict:
    """Generate an answer to every task with the model and score it; returns the report (JSON-ready). With `attempts`
    over 1 (and the sandbox), fix and tests tasks also go through the server's action path with one attempt and with
    `attempts` (refinement, `candidates` per refined ask); synthesis tasks always do."""
    from midline.model.engine import Engine

    limits = {"explain": 128, "fix": 512, "tests": 384, **(limits or {})}
    started = time.monotonic()
    engine = Engine.load(model_dir, device=device, reuse_prefix=False)
    server = ServerPath(engine, attempts=attempts, candidates=candidates, max_new_tokens=limits["fix"],
                        timeout_s=sandbox_timeout_s)
    rows = []
    for task in stage.progress(items, progress, "eval-tasks"):
        if task["kind"] == "synthesis":
            if run_tests:
                rows.append({"kind": "synthesis", "repo": task["repo"], "path": task["path"], "name": task["name"],
                             **score_synthesis(task, server)})
            continue
        ids = engine.encode(prompt_of(task))
        generation = engine.generate(ids, max_new_tokens=max_new_tokens(task, engine, limits),
                                     should_stop=tasks.TASKS[task["kind"]].should_stop())
        row = {"kind": task["kind"], "repo": task["repo"], "path": task["path"], "name": task.get("name"),
               "tokens": len(generation.token_ids), "finish_reason": generation.finish_reason,
               "prompt_tokens": generation.prompt_tokens}
        if task["kind"] == "explain":
            row.update(score_explain(task, generation.text))
        elif task["kind"] == "fix":
            row.update(score_fix(task, generation.text), mutation=task["mutation"])
            row.update(fix_quality(task, row["result"]))
            if run_tests:
                row.update(verify_fix(task, row["result"], timeout_s=sandbox_timeout_s))
                if attempts > 1:
                    row.update(refined_fix(task, server))
        elif run_tests:
            row.update(score_tests(task, generation.text, timeout_s=sandbox_timeout_s), mutation=task["mutation"])
            if attempts > 1:
                row.update(refined_tests(task, server, sandbox_timeout_s))
        else:
            row.update(result=tasks.TESTS.parse(prompt_of(task), generation.text))
        rows.append(row)
    report = {
        "model": str(Path(model_dir).resolve()), "device": str(engine.device), "fim_format": engine.fim.name,
        "settings": {"max_new_tokens": limits, "run_tests": run_tests, "sandbox_timeout_s": sandbox_timeout_s,
                     "decoding": "greedy", "attempts": attempts, "candidates": candidates,
                     "lint": f"ruff --isolated --select {','.join(quality.RUFF_RULES)}"},
        "tasks": {"count": len(items),
                  "by_kind": {k: n for k in (*KINDS, "synthesis")
                              if (n := sum(t["kind"] == k for t in items)) or k != "synthesis"}},
        "metrics": summarize(rows, run_tests),
        "elapsed_s": round(time.monotonic() - started, 1),
        "per_task": rows,
    }
    return report


def summarize(rows: list[dict], run_tests: bool = True) -> dict:
    def mean(group: list[dict], key: str) -> float | None:
        return sum(float(r[key]) for r in group) / len(group) if group else None

    explain = [r for r in rows if r["kind"] == "explain"]
    fix = [r for r in rows if r["kind"] == "fix"]
    tests_ = [r for r in rows if r["kind"] == "tests"]
    out = {
        "explain": {"n": len(explain), "rouge_l": mean(explain, "rouge_l"),
                    "edit_similarity": mean(explain, "edit_similarity"), "exact": mean(explain, "exact"),
                    "empty": mean(explain, "empty"), "tokens_mean": mean(explain, "tokens")},
        "fix": {"n": len(fix), "fix_rate": mean(fix, "fixed"), "same_tree": mean(fix, "same_tree"),
                "parses": mean(fix, "parses"), "unchanged": mean(fix, "unchanged"),
                "edit_similarity": mean(fix, "edit_similarity"), "tokens_mean": mean(fix, "tokens"),
                "by_mutation": {m: {"n": len(g), "fix_rate": mean(g, "fixed")} for m in sft_mine.MUTATIONS
                                if (g := [r for r in fix if r["mutation"] == m])}},
        "tests": {"n": len(tests_), "tokens_mean": mean(tests_, "tokens")},
    }
    if run_tests and fix:
        out["fix"]["verification"] = {side: _offered(fix, f"offered_{side}") for side in ("plain", "verified")}
        out["fix"]["verification"]["verified"].update(
            with_evidence=sum(r["evidence_tests"] > 0 for r in fix), verified=sum(r["verified"] for r in fix),
            withheld_by_gate=sum(r["withheld"] == "gate" and r["offered_plain"] for r in fix),
            withheld_by_tests=sum(r["withheld"] == "tests" for r in fix))
    if run_tests and tests_:
        out["tests"].update(pass_rate=mean(tests_, "passes"), kill_rate=mean(tests_, "kills"),
                            tests_mean=mean(tests_, "tests"), passed_mean=mean(tests_, "passed"))
    if fix and "server_once" in fix[0]:
        out["fix"]["refinement"] = {side: {"offered": sum(r[f"server_{side}"]["offered"] for r in fix),
                                           "right": sum(r[f"server_{side}"]["right"] for r in fix),
                                           "s_mean": mean([r[f"server_{side}"] for r in fix], "s")}
                                    for side in ("once", "refined")}
    if tests_ and "server_once" in tests_[0]:
        out["tests"]["refinement"] = {side: {"pass_rate": mean([r[f"server_{side}"] for r in tests_], "passes"),
                                             "kill_rate": mean([r[f"server_{side}"] for r in tests_], "kills"),
                                             "s_mean": mean([r[f"server_{side}"] for r in tests_], "s")}
                                      for side in ("once", "refined")}
    synthesis = [r for r in rows if r["kind"] == "synthesis"]
    out["synthesis"] = {"n": len(synthesis), "examples_mean": mean(synthesis, "examples"),
                        **{side: {"success_rate": mean([r[f"server_{side}"] for r in synthesis], "offered"),
                                  "s_mean": mean([r[f"server_{side}"] for r in synthesis], "s")}
                           for side in ("greedy", "candidates", "refined") if synthesis}}
    out["quality"] = {kind: _quality(group) for kind, group in (("fix", fix), ("synthesis", synthesis)) if group}
    return out


def _quality(rows: list[dict]) -> dict:
    """Means of `quality.measure`'s figures over the generated code (where there is some) and the references."""
    out = {}
    for side in ("generated", "reference"):
        measured = [r[f"quality_{side}"] for r in rows if f"quality_{side}" in r]
        out[side] = {"n": len(measured)}
        for key in ("complexity", "lint", "security"):
            have = [m[key] for m in measured if m[key] is not None]
            out[side][key] = sum(have) / len(have) if have else None
    return out


def _offered(rows: list[dict], key: str) -> dict:
    """What the server shows on one side: offered, right among offered (same tree), wrong offered; counts."""
    shown = [r for r in rows if r[key]]
    right = sum(r["same_tree"] for r in shown)
    return {"offered": len(shown), "right": right, "wrong": len(shown) - right,
            "precision": right / len(shown) if shown else None}


def format_report(report: dict) -> str:
    m = report["metrics"]
    def f(v):
        return "n/a" if v is None else f"{v:.3f}"
    lines = []
    e, x, t = m["explain"], m["fix"], m["tests"]
    if e["n"]:
        lines.append(f"explain  n={e['n']:<4} ROUGE-L {f(e['rouge_l'])}  edit similarity {f(e['edit_similarity'])}  "
                     f"exact {f(e['exact'])}  empty {f(e['empty'])}")
    if x["n"]:
        lines.append(f"fix      n={x['n']:<4} fix rate {f(x['fix_rate'])}  same tree {f(x['same_tree'])}  "
                     f"parses {f(x['parses'])}  unchanged {f(x['unchanged'])}")
        by_mutation = ", ".join(f"{k} {f(v['fix_rate'])} ({v['n']})" for k, v in x["by_mutation"].items())
        lines.append("         by mutation: " + by_mutation)
        if "verification" in x:
            plain, checked = x["verification"]["plain"], x["verification"]["verified"]
            for label, side in (("without verification", plain), ("with verification   ", checked)):
                lines.append(f"         {label}: offered {side['offered']}/{x['n']}, right {side['right']}, "
                             f"wrong {side['wrong']}")
            lines.append(f"         verification: {checked['with_evidence']} with doctests, {checked['verified']} "
                         f"offered verified, withheld {checked['withheld_by_gate']} by the compile gate and "
                         f"{checked['withheld_by_tests']} by the tests")
    for label, side in (("without refinement", "once"), ("with refinement   ", "refined")):
        if "refinement" in x:
            r = x["refinement"][side]
            lines.append(f"         server path, {label}: offered {r['offered']}/{x['n']}, right {r['right']}, "
                         f"{f(r['s_mean'])} s a task")
    if t["n"]:
        if "pass_rate" in t:
            lines.append(f"tests    n={t['n']:<4} pass on the code {f(t['pass_rate'])}  "
                         f"pass and kill the mutant {f(t['kill_rate'])}  "
                         f"tests written {f(t['tests_mean'])}, passing {f(t['passed_mean'])} per task")
        else:
            lines.append(f"tests    n={t['n']:<4} (not run)")
        for label, side in (("without refinement", "once"), ("with refinement   ", "refined")):
            if "refinement" in t:
                r = t["refinement"][side]
                lines.append(f"         server path, {label}: pass on the code {f(r['pass_rate'])}  pass and kill "
                             f"{f(r['kill_rate'])}  {f(r['s_mean'])} s a task")
    y = m.get("synthesis", {})
    if y.get("n"):
        lines.append(f"synth    n={y['n']:<4} examples {f(y['examples_mean'])} per task; passes all examples: "
                     + ", ".join(f"{side} {f(y[side]['success_rate'])} ({f(y[side]['s_mean'])} s)"
                                 for side in ("greedy", "candidates", "refined")))
    for kind, q in m.get("quality", {}).items():
        lines.append(f"quality  {kind:<9} " + "; ".join(
            f"{side} (n={q[side]['n']}): complexity {f(q[side]['complexity'])}, lint {f(q[side]['lint'])}, "
            f"security {f(q[side]['security'])}" for side in ("generated", "reference")))
    return "\n".join(lines)


# -- command line ---------------------------------------------------------------------------------


def add_parser(stages) -> None:
    """The `eval-tasks` subcommand."""
    p = stages.add_parser("eval-tasks", help="explain / fix / tests figures of a model on held-out code")
    add_task_arguments(p, "corpus dir: tasks from its valid.jsonl")
    p.add_argument("--per-kind", type=int, default=100, help="explain and fix tasks each (default: %(default)s)")
    p.add_argument("--tests", type=int, default=30, help="tests tasks (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, nargs=3, metavar=("EXPLAIN", "FIX", "TESTS"), default=[128, 512, 384])
    p.add_argument("--no-run", action="store_true", help="do not run the generated tests in the sandbox")
    p.add_argument("--fix-doctests", action="store_true",
                   help="fix tasks only from functions whose doctests catch the bug (verification has evidence)")
    p.add_argument("--synthesis", type=int, default=0,
                   help="synthesis tasks: held-out functions whose docstrings carry examples (default: %(default)s)")
    p.add_argument("--attempts", type=int, default=1,
                   help="over 1: fix and tests tasks also through the server's path with one attempt and with this "
                        "many (refinement); synthesis's refined side (default: %(default)s)")
    p.add_argument("--candidates", type=int, default=3, help="candidates per refined ask (default: %(default)s)")
    p.add_argument("--out", type=Path, metavar="FILE", help="write the JSON report here")
    p.set_defaults(run=run)


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if not args.no_run and not (state := sandbox_state()).available:
        parser.error(f"the tests tasks run generated tests in the sandbox, which is off here: {state.detail}; "
                     "or pass --no-run")
    if args.tasks and args.tasks.exists():
        items, tasks_file = load_tasks(args.tasks), args.tasks
    elif args.corpus:
        items = build_tasks(args.corpus, per_kind=args.per_kind, tests=0 if args.no_run else args.tests, seed=args.seed,
                            fix_doctests=args.fix_doctests, synthesis=0 if args.no_run else args.synthesis)
        tasks_file = args.tasks or (args.out.with_suffix(".tasks.jsonl") if args.out else None)
        if tasks_file:
            save_tasks(items, tasks_file)
    else:
        parser.error("eval-tasks needs --corpus DIR, or an existing --tasks FILE")
    if not items:
        parser.error("no tasks: the held-out split has no functions to ask about")
    limits = dict(zip(KINDS, args.max_new_tokens))
    report = evaluate_tasks(args.model, items, device=args.device, limits=limits, run_tests=not args.no_run,
                            progress=sys.stderr.isatty(), attempts=args.attempts, candidates=args.candidates)
    report["tasks"].update(file=str(tasks_file) if tasks_file else None, seed=args.seed,
                           sha256=sha256_file(tasks_file) if tasks_file else None)
    write_report(report, args.out, format_report(report))
    return 0
