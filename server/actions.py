"""Code actions — explain, fix, generate tests, code from a comment — offered at once, computed when picked.

`ACTIONS` is the table of them: one `ActionSpec` each, naming its task (`model/tasks.py`), its LSP code
action kind, what it is about (the target code or a comment, `targets.py`), when it is offered and how
its title reads, and the coroutine that resolves it. Adding an action is one entry and its resolver.

`offers` (pure, no model) lists the actions that fit the selection, or else the tree-sitter node at the
cursor (the innermost function or class, else the statement) or the comment at the cursor; the server
lists them with `data` and no edit. When the user picks one, `codeAction/resolve` calls
`Actions.resolve`, which runs its resolver: it asks the model (`assistant.py`) and returns an `Outcome`:
an explanation, an edit of the document, a test file — or a message saying why there is none.

Gates: a fix is offered only if it differs from the original and the document with it is well formed where the
original was (`well_formed`: Python compiles it; tree-sitter finds no ERROR or MISSING node), then only if it passes
in the sandbox every test of the function's evidence that the original passes and one that the original fails
(`fix_evidence.py`: doctests, workspace tests naming it, a reproducible diagnostic); with no evidence it is offered
marked unverified, nothing run. Code from a comment only if the document still parses with it; Python tests only
if they pass against the current code in the sandbox (`verify.py`); other languages' tests are marked unverified.
Where `security.scan` covers actions, a fix, tests or code from a comment with a high security finding
(`security.py`) is still offered, with its `warning`: the server shows it, and has the editor ask before applying
the edit.
"""

from __future__ import annotations

import ast
import asyncio
import os
import re
import textwrap
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable, Sequence

from midline.model import languages, tasks
from midline.model.fim import FimPrompt, shown_path
from midline.model.syntax import line_start, parses, utf8
from midline.model.tasks import Task

from . import examples, fix_evidence, quality, security
from .assistant import Ask, Assistant, Cancelled, Failed, Progress, content_hash
from .config import Config, CurrentConfig, Settings
from .documents import Document
from .sandbox import sandbox_state
from .symbols import definitions_of
from .targets import Comment, Target, comment_at, target_at
from .fix_evidence import Evidence, Verdict
from .refine import Checked, refine
from .verify import UNVERIFIED, TestRun, Verified, run_tests, verify_tests

COMMENT, TARGET = "comment", "target"  # what an action is about: a comment (`comment_at`) or code (`target_at`)
FIELDS: dict[str, dict[str, type]] = {  # the fields of an action's `data` that name what it is about, by `about`
    COMMENT: {"at": int},
    TARGET: {"kind": str, "start": int, "end": int},
}


# -- the table ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Place:
    """Where actions are asked for: the document, what an action there is about (`subject`), the
    request's diagnostics as (0-based document line, message)."""

    doc: Document
    subject: Target | Comment
    diagnostics: Sequence[tuple[int, str]] = ()

    @property
    def target(self) -> Target:
        """The code a TARGET action is about (a COMMENT action's place has none)."""
        if isinstance(self.subject, Comment):
            raise TypeError("a comment action's place has no target code")
        return self.subject


@dataclass(frozen=True)
class Request:
    """What resolving a picked action works with besides the document and the action's `data`."""

    progress: Progress
    window: Callable[[Document, int], FimPrompt] | None  # the completion prompt at an offset
    read: Callable[[Path], str | None]  # a file's text (open documents first)


@dataclass(frozen=True)
class ActionSpec:
    """One code action: the task it asks, its LSP code action kind, what it is about, when it is
    offered and its title there, more `data` for resolving, and the coroutine that resolves it."""

    task: Task
    kind: str  # the LSP code action kind (vscode-client/src/codeActions.ts asks for it)
    about: str  # COMMENT or TARGET
    title: Callable[[Place], str]
    resolve: Callable[[Actions, Document, dict, Request], Awaitable[Outcome]]
    offered: Callable[[Place], bool] = lambda place: True
    data: Callable[[Place], dict] = lambda place: {}  # more `data` for resolving

    @property
    def name(self) -> str:
        """The action's name in LSP data: its task's."""
        return self.task.name

    @property
    def fields(self) -> dict[str, type]:
        """The fields of its `data` that resolving reads (besides `uri`)."""
        return FIELDS[self.about]


# -- offers ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Offer:
    """An action to list: its title, kind and the `data` that `codeAction/resolve` gets back."""

    action: str
    title: str
    kind: str
    data: dict


def offers(
    doc: Document,
    start: int,
    end: int,
    diagnostics: Sequence[tuple[int, str]] = (),
    only: Sequence[str] | None = None,
) -> list[Offer]:
    """The actions that fit the selection or the cursor (no model call), in `ACTIONS` order. `diagnostics`
    are the request context's, as (0-based document line, message); `only` filters by code action kind."""
    comment = comment_at(doc, start) if start == end or doc.text[start:end].strip() == "" else None
    target = target_at(doc, start, end) if comment is None else None
    out: list[Offer] = []
    for spec in ACTIONS:
        subject = comment if spec.about == COMMENT else target
        if subject is None:
            continue
        place = Place(doc, subject, diagnostics)
        if spec.offered(place):
            data = {
                "uri": doc.uri,
                "version": doc.version,
                **_named(subject, start),
                "action": spec.name,
                **spec.data(place),
            }
            out.append(Offer(spec.name, spec.title(place), spec.kind, data))
    if only:
        out = [o for o in out if any(o.kind == k or o.kind.startswith(k + ".") for k in only)]
    return out


def _named(subject: Target | Comment, at: int) -> dict:
    """What an action's `data` names its subject by (`FIELDS`; a comment by the cursor at `at`), with its
    content hash."""
    if isinstance(subject, Comment):
        return {"at": at, "start": subject.start, "insert": subject.insert, "hash": subject.hash}
    return {
        "start": subject.start,
        "end": subject.end,
        "hash": subject.hash,
        "name": subject.name,
        "kind": subject.kind,
    }


def _what(target: Target) -> str:
    """How a title names the target: `name`, else this statement, the selection, this code."""
    if target.name:
        return f"`{target.name}`"
    return {"statement": "this statement", "selection": "the selection"}.get(target.kind, "this code")


def _diagnostics_inside(place: Place) -> list[str]:
    """The request's diagnostics on the target's lines, as a fix prompt lists them (lines counted within the code)."""
    target = place.target
    first_row = place.doc.text.count("\n", 0, target.start)
    last_row = first_row + target.code.rstrip("\n").count("\n")
    return [
        tasks.diagnostic_line(line - first_row + 1, message)
        for line, message in place.diagnostics
        if first_row <= line <= last_row
    ]


def _fix_title(place: Place) -> str:
    inside = _diagnostics_inside(place)
    return f"midline: Fix {_what(place.target)}" + (f" ({_short(place.diagnostics[0][1])})" if inside else "")


def _tests_title(place: Place) -> str:
    verified = place.doc.language == "python" and sandbox_state().available
    return f"midline: Generate tests for {_what(place.target)}{'' if verified else ' (unverified)'}"


def _short(message: str, limit: int = 60) -> str:
    message = " ".join(message.split())
    return message if len(message) <= limit else message[: limit - 1] + "…"


# -- outcomes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Explanation:
    markdown: str


@dataclass(frozen=True)
class Replace:
    """Replace `start`..`end` (string indexes) of the document with `text`."""

    start: int
    end: int
    text: str
    warning: str | None = None  # the security scan's warning on `text` (security.warning_for), if any
    note: str | None = None  # what was checked (a fix: "passes 2 tests that failed before", "unverified: ...")
    findings: str | None = None  # the lint and security findings it adds (`quality.describe`), if any

    def titled(self, title: str) -> str:
        """An action's title with the note: `title: note` for what passed, `title (unverified: ...)` otherwise."""
        if not self.note:
            return title
        return f"{title} ({self.note})" if self.note.startswith(UNVERIFIED) else f"{title}: {self.note}"


@dataclass(frozen=True)
class TestFile:
    """Tests to write: a new file, or an addition at the end of an existing one (`existing` is its text)."""

    __test__ = False

    path: Path
    text: str  # the whole new file, or what to append
    existing: str | None
    verified: Verified | None  # None: not run (other languages)
    warning: str | None = None  # the security scan's warning on the generated tests (security.warning_for), if any
    findings: str | None = None  # the lint and security findings it adds (`quality.describe`), if any


@dataclass(frozen=True)
class Nothing:
    """No result, and why (shown to the user; as an error when the model failed)."""

    message: str
    error: bool = False


Outcome = Explanation | Replace | TestFile | Nothing


def _only_redefines(code: str, doc: Document) -> bool:
    """Whether `code` defines something, all of it already defined in `doc` (a model copying the file)."""
    names = {d.name for d in definitions_of(utf8(textwrap.dedent(code)), doc.language)}
    return bool(names) and names <= {d.name for d in definitions_of(utf8(doc.text), doc.language, doc.tree)}


# -- asks -----------------------------------------------------------------------------------------


def _as_task_code(code: str) -> str:
    """Code as the tasks take it: dedented, no blank lines around it, one final newline."""
    return textwrap.dedent(code).strip("\n").rstrip() + "\n"


def _ask(
    task: Task,
    language: str,
    inputs: Sequence[str],
    prompt: FimPrompt,
    parse: Callable[[str], str],
    messages: list[dict[str, str]],
) -> Ask:
    """An Ask of `task` in both shapes, cached by the task, the language and its `inputs`."""
    return Ask(task.name, content_hash(task.name, language, *inputs), prompt, parse=parse, messages=messages,
               parse_chat=task.parse_chat, stop=task.should_stop(language))


def explain_ask(code: str, language: str, path: str = "") -> Ask:
    """Explain a function or class (also hover's explanation: the two share the cache)."""
    code, task = _as_task_code(code), tasks.EXPLAIN
    return _ask(
        task,
        language,
        [code],
        task.prompt(code, language, path=path),
        lambda text: task.parse(text, language),
        task.messages(code, language),
    )


def fix_ask(code: str, diagnostics: list[str], language: str, path: str = "") -> Ask:
    code, task = _as_task_code(code), tasks.FIX
    return _ask(
        task,
        language,
        [code, *diagnostics],
        task.prompt(code, diagnostics, language, path=path),
        lambda text: task.parse(text, language),
        task.messages(code, diagnostics, language),
    )


def tests_ask(
    module_path: str, module_source: str, names: list[str], module: str, test_path: str, language: str,
    failures: Sequence[str] = (),
) -> Ask:
    """Ask for tests; `failures`: of an earlier attempt, fed back (`refine.py`)."""
    task = tasks.TESTS
    prompt = task.prompt(
        module_path, module_source, names, module=module, test_path=test_path, language=language, failures=failures
    )
    return _ask(
        task,
        language,
        [module_path, module_source, module, test_path, *names, *failures],
        prompt,
        lambda text: task.parse(prompt, text, language),
        task.messages(module_path, module_source, names, language, failures),
    )


def from_comment_ask(prompt: FimPrompt, comment: str, language: str, failures: Sequence[str] = ()) -> Ask:
    """Ask for the code a comment describes; `failures`: of an earlier attempt, fed back (`refine.py`)."""
    task = tasks.FROM_COMMENT
    return _ask(
        task,
        language,
        [prompt.prefix, prompt.suffix, *failures],
        task.prompt(prompt.prefix, prompt.suffix, path=prompt.path, snippets=prompt.snippets, language=language,
                    failures=failures),
        lambda text: task.parse(text, language),
        task.messages(comment, prompt.prefix[-4000:], language, failures),
    )


# -- gates ----------------------------------------------------------------------------------------


def fix_gate(document: str, target: Target, candidate: str, language: str) -> str | None:
    """The fix as the text replacing the target's lines, or None: empty, the same code, or the document with it
    is not well formed where the original was (`well_formed`)."""
    if not candidate.strip():
        return None
    fixed = _reindent(candidate, target.indent)
    if not target.code.endswith("\n"):
        fixed = fixed.rstrip("\n")
    if _normalized(fixed) == _normalized(target.code):
        return None
    after = document[: target.start] + fixed + document[target.end :]
    return fixed if well_formed(language, document, after, target.code, fixed) else None


def gate_failure(document: str, target: Target, candidate: str, language: str) -> str:
    """Why `fix_gate` refused a candidate, one line for the next ask: empty, the same code, or where it does not
    compile (Python) or parse."""
    if not candidate.strip():
        return "the model wrote no fix"
    fixed = _reindent(candidate, target.indent)
    if _normalized(fixed) == _normalized(target.code):
        return "the fix changed nothing"
    if language == "python":
        after = document[: target.start] + fixed + document[target.end :]
        for source in (after, textwrap.dedent(fixed)):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    compile(source, "<fix>", "exec", dont_inherit=True)
            except SyntaxError as exc:
                line = (exc.lineno or 0) - document[: target.start].count("\n") if source is after else exc.lineno
                return f"the fix does not compile: line {line}: {exc.msg}"
            except (ValueError, RecursionError, MemoryError) as exc:
                return f"the fix does not compile: {type(exc).__name__}"
    return "the fix does not parse"


def well_formed(language: str, before: str, after: str, code: str, fixed: str) -> bool:
    """Whether the document `after` (with `fixed` in place of `code`) is as well formed as `before`.

    Python: `after` compiles where `before` does (tree-sitter's Python grammar takes an indented first line and
    stray indentation, so it is not enough), else `fixed` alone, dedented, must be Python's `ast` — unless `code`
    is code tree-sitter reads and this Python does not (newer syntax): then as other languages. Other languages:
    tree-sitter finds no ERROR or MISSING node in `after` where it finds none in `before`, else none in `fixed`
    alone, dedented."""
    if language == "python":
        if python_compiles(before):
            return python_compiles(after)
        if python_compiles(textwrap.dedent(code), ast_only=True) or not parses(language, textwrap.dedent(code)):
            return python_compiles(textwrap.dedent(fixed), ast_only=True)
    if parses(language, before):
        return bool(parses(language, after))
    return bool(parses(language, textwrap.dedent(fixed)))


def python_compiles(source: str, ast_only: bool = False) -> bool:
    """Whether this Python compiles `source` as a module (`ast_only`: parses it, so `return` needs no function)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarning for odd escapes: the code still compiles
            if ast_only:
                ast.parse(source)
            else:
                compile(source, "<fix>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


def _normalized(code: str) -> str:
    return "\n".join(line.rstrip() for line in code.strip("\n").split("\n"))


def _reindent(code: str, indent: str) -> str:
    """Dedented `code` with every non-blank line indented by `indent`; ends with a newline."""
    code = textwrap.dedent(code).strip("\n")
    return "".join((indent + line if line.strip() else "") + "\n" for line in code.split("\n"))


# -- test files -----------------------------------------------------------------------------------


def test_file_for(module: Path, root: Path | None, language: str) -> Path:
    """Where a module's tests go: `tests/` at the workspace root if there is one, else beside the module;
    `test_<module>.py` (Go `<module>_test.go`, JavaScript/TypeScript `<module>.test.<ext>`)."""
    spec = languages.LANGUAGES.get(language, languages.PLAIN_TEXT)
    name = spec.test_file.format(stem=module.stem, suffix=module.suffix)
    if spec.tests_beside_module:
        return module.with_name(name)
    folder = root / "tests" if root is not None and (root / "tests").is_dir() else module.parent
    return folder / name


@dataclass(frozen=True)
class Placement:
    """Where a module's generated tests go: inside the workspace folder holding the module."""

    module: Path  # the module's real path (`..` segments and symlinks resolved)
    folder: Path  # the real path of the workspace folder holding it
    relative: Path  # the test file, relative to `folder`
    path: Path  # the test file as the editor names it: the workspace folder as given, then `relative`


OUTSIDE = (
    "Generate tests: the file is outside the workspace folder, so midline will not write a test file there;"
    " open its folder as the workspace to generate tests."
)


def place_tests(module: str, folders: Sequence[Path], language: str) -> Placement | str:
    """Where the tests of the module at `module` go, or why midline writes none: the module and its test
    file, with `..` segments and symlinks resolved, must both lie inside a workspace folder."""
    if not folders:
        return (
            "Generate tests: no workspace folder is open, so midline will not write a test file;"
            " open the project's folder first."
        )
    real = Path(os.path.realpath(module))
    holding = [(Path(os.path.realpath(folder)), folder) for folder in folders]
    holding = [(real_folder, folder) for real_folder, folder in holding if real.is_relative_to(real_folder)]
    if not holding:
        return OUTSIDE
    real_folder, folder = max(holding, key=lambda pair: len(pair[0].parts))  # the innermost
    test = Path(os.path.realpath(test_file_for(real, real_folder, language)))
    if not test.is_relative_to(real_folder):  # a symlinked tests/ folder
        return (
            "Generate tests: the test file would be outside the workspace folder (through a symlink),"
            " so midline will not write it; make the tests folder a real folder inside the workspace."
        )
    return Placement(real, real_folder, test.relative_to(real_folder), Path(folder) / test.relative_to(real_folder))


def python_module(module: Path, root: Path | None) -> tuple[str, Path]:
    """The module's dotted import name and the folder that must be on `sys.path` to import it
    (above its outermost package, a folder with `__init__.py`)."""
    parts = [module.stem]
    folder = module.parent
    while (folder / "__init__.py").is_file() and folder.parent != folder and (root is None or folder != root):
        parts.insert(0, folder.name)
        folder = folder.parent
    return ".".join(parts), folder


def merge_tests(existing: str, generated: str) -> str:
    """What to append to an existing test file: the generated tests without import lines it already has."""
    have = {line.strip() for line in existing.split("\n")}
    lines = [
        line for line in generated.split("\n") if not (re.match(r"(import|from)\s", line) and line.strip() in have)
    ]
    body = "\n".join(lines).strip("\n")
    if not existing.strip():
        return body + "\n"
    return ("" if existing.endswith("\n") else "\n") + "\n\n" + body + "\n"


# -- resolving ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FixRuns:
    """A fix's evidence, its runs on the current code and on the fix (None: not run), and the verdict."""

    verdict: Verdict
    evidence: Evidence
    before: TestRun | None = None
    after: TestRun | None = None

    @property
    def nothing_fails(self) -> bool:
        """The current code passes all of its tests: no fix can be judged better, so refining stops."""
        before = self.before
        return before is not None and before.ran and not before.note and \
            len(before.passed(self.evidence.tests)) == len(self.evidence.tests)


@dataclass(frozen=True)
class FixCheck:
    """A candidate fix that passed the gate: its text in place (re-indented) and the verdict on it."""

    fixed: str
    verdict: Verdict


class Actions:
    """Computes picked actions with the model, and caches what the model and the sandbox said."""

    config = CurrentConfig()  # the current settings, read from `settings` each time

    def __init__(
        self, assistant: Assistant, config: Config | Settings, root: str | None = None, folders: Sequence[str] = ()
    ) -> None:
        self.assistant = assistant
        self.settings = Settings.of(config)
        self.root = Path(root) if root else None
        self.folders = [Path(folder) for folder in folders]  # the workspace folders (the root counts as one)
        self._verified: OrderedDict[str, Verified] = OrderedDict()
        self._runs: OrderedDict[str, TestRun] = OrderedDict()  # evidence runs of fixes, by content

    async def resolve(
        self,
        doc: Document,
        data: dict,
        progress: Progress | None = None,
        window: Callable[[Document, int], FimPrompt] | None = None,
        read: Callable[[Path], str | None] = lambda path: path.read_text(encoding="utf-8") if path.is_file() else None,
    ) -> Outcome:
        """The outcome of the action in `data` (from `offers`) on `doc` as it is now.

        `window` gives the completion prompt at an offset (for code from a comment: the completer's
        token-budgeted windows and extra context); `read` gives a file's text (open documents first).
        """
        action = data.get("action")
        spec = BY_NAME.get(action) if isinstance(action, str) else None
        try:
            if data.get("version") != doc.version and not self._unchanged(doc, data, spec):
                return Nothing("The code changed since the action was offered; ask for the action again.")
            if spec is not None:
                return await spec.resolve(self, doc, data, Request(progress or Progress(), window, read))
        except Cancelled:
            return Nothing("cancelled")
        except Failed as exc:  # the model failed: its message, the only one shown
            return Nothing(str(exc), error=True)
        return Nothing(f"midline offers no action {data.get('action')!r}; ask for code actions again.")

    def _unchanged(self, doc: Document, data: dict, spec: ActionSpec | None) -> bool:
        """Whether what the action is about is as it was offered (the document changed elsewhere)."""
        if spec is not None and spec.about == COMMENT:
            comment = comment_at(doc, data.get("at", 0)) if 0 <= data.get("at", 0) <= len(doc.text) else None
            return comment is not None and comment.hash == data.get("hash") and comment.insert == data.get("insert")
        start, end = data.get("start", 0), data.get("end", 0)
        return 0 <= start <= end <= len(doc.text) and content_hash(doc.text[start:end]) == data.get("hash")

    def security_warning(self, code: str, language: str, before: str) -> str | None:
        """The security warning for an action result `code` below the document text `before` (it ends a line),
        where `security.scan` covers actions; else None."""
        return security.warning_for(code, language, context=before) if self.config.security.actions else None

    def shown(self, path: str | Path) -> str:
        """A path as the model sees it, as completion prompts show it: relative to the workspace folder holding it,
        else its file name."""
        return shown_path(path, self.workspace_folders())

    async def _explain(self, doc: Document, data: dict, request: Request) -> Outcome:
        target, progress = _target(doc, data), request.progress
        progress.report("explaining")
        explanation = await self.assistant.run(
            explain_ask(target.code, doc.language, self.shown(doc.path)), progress.cancel
        )
        if not explanation:
            return Nothing("The model gave no explanation; try again, or select less code.")
        title = f"`{target.name}`" if target.name else "the code"
        return Explanation(f"### {title}\n\n{explanation}\n")

    async def _fix(self, doc: Document, data: dict, request: Request) -> Outcome:
        """Ask for a fix, gate it and check it against the evidence; a candidate that fails is fed back (its
        compile error, or the tests it fails) into the next ask, within `actions.attempts` (`refine.py`)."""
        target, diagnostics, progress = _target(doc, data), list(data.get("diagnostics", [])), request.progress
        config, shown = self.config.actions, self.shown(doc.path)

        async def ask(attempt: int, previous: Checked[FixCheck] | None) -> list[str]:
            if attempt == 1 or previous is None:
                progress.report("writing a fix")
                answer = await self.assistant.run(fix_ask(target.code, diagnostics, doc.language, shown),
                                                  progress.cancel)
                return [answer] if answer else []
            compiled = previous.result is not None  # else the original code again, with why the fix did not compile
            code = textwrap.dedent(previous.answer) if compiled else target.code
            told = [*previous.failures, *(re.sub(r"^line \d+:\s*", "", d) for d in diagnostics)]
            return await self.assistant.candidates(
                fix_ask(code, told, doc.language, shown), config.candidates, progress.cancel
            )

        async def check(answer: str) -> Checked[FixCheck]:
            fixed = fix_gate(doc.text, target, answer, doc.language)
            if fixed is None:
                return Checked(answer, False, failures=[gate_failure(doc.text, target, answer, doc.language)], score=-1)
            fixed_text = doc.text[: target.start] + fixed + doc.text[target.end :]
            checked = await self._check_fix(doc, target, fixed_text, diagnostics, progress, request.read)
            verdict, after = checked.verdict, checked.after
            failures = fix_evidence.failures(checked.evidence, after)
            score = len(after.passed(checked.evidence.tests)) if after is not None else 0
            return Checked(answer, verdict.offered, FixCheck(fixed, verdict), failures, score, checked.nothing_fails)

        refined = await refine(ask, check, attempts=config.attempts, seconds=config.refine_ms / 1000,
                               report=progress.report)
        best = refined.best
        tried = f" ({refined.tried()})" if refined.attempts > 1 else ""
        if best is None or best.result is None:
            return Nothing(
                f"The model's fix did not parse or changed nothing{tried}, so it is not offered;"
                " try again, or fix the code by hand."
            )
        if not best.passed:
            return Nothing(
                f"The model's fix is not offered: {best.result.verdict.note}{tried};"
                " try again, or fix the code by hand."
            )
        fixed = best.result.fixed
        before = doc.text[: line_start(doc.text, target.start)]
        after_text = doc.text[: target.start] + fixed + doc.text[target.end :]
        findings = await self._findings(doc.text, after_text, doc.language)
        return Replace(target.start, target.end, fixed, self.security_warning(fixed, doc.language, before),
                       note=best.result.verdict.note + refined.on(), findings=findings)

    async def _findings(self, before: str, after: str, language: str) -> str | None:
        """The lint and security findings that `after` adds to `before` (`quality.py`), said in a line; None if none."""
        found = await asyncio.get_running_loop().run_in_executor(
            None, lambda: quality.added_findings(before, after, language)
        )
        return quality.describe(found)

    def _module_place(self, doc: Document) -> tuple[str, Path | None, list[Path], list[str]]:
        """How the sandbox imports the document's module: its dotted name, its path in a workspace folder (None
        outside one: then `midline_fixed_module`, a name no other module has), the folders to look for tests in
        and the `sys.path` entries (its import root and folder)."""
        place = place_tests(doc.path, self.workspace_folders(), doc.language) if doc.uri.startswith("file:") else None
        if isinstance(place, Placement):
            dotted, import_root = python_module(place.module, place.folder)
            return dotted, place.module, [place.folder], [str(import_root), str(place.folder)]
        return "midline_fixed_module", None, [], []

    async def _check_fix(
        self,
        doc: Document,
        target: Target,
        fixed_text: str,
        diagnostics: list[str],
        progress: Progress,
        read: Callable[[Path], str | None],
    ) -> FixRuns:
        """Run the evidence for the target (`fix_evidence.collect`) on the document and on `fixed_text` in the
        sandbox, and judge the fix; with no evidence nothing runs."""
        if doc.language != "python":
            return FixRuns(Verdict(True, f"{UNVERIFIED}: midline runs tests for Python only"), Evidence())
        if not target.name:
            return FixRuns(Verdict(True, f"{UNVERIFIED}: no tests found"), Evidence())
        dotted, module, folders, paths = self._module_place(doc)
        evidence = await asyncio.get_running_loop().run_in_executor(
            None, lambda: fix_evidence.collect(target.code, target.name, dotted, diagnostics, folders, read, module)
        )
        if not evidence:
            return FixRuns(fix_evidence.judge(evidence, None, None), evidence)
        progress.report(f"checking the fix: {evidence.describe()}, on the current code and on the fix")
        folder = module.parent if module is not None else None
        paths = list(dict.fromkeys([*paths, *evidence.paths]))
        before, after = await asyncio.gather(
            self._run_evidence(evidence, self._module_files(doc.text, dotted, folder, read), paths),
            self._run_evidence(evidence, self._module_files(fixed_text, dotted, folder, read), paths),
        )
        return FixRuns(fix_evidence.judge(evidence, before, after), evidence, before, after)

    async def _run_evidence(self, evidence: Evidence, files: dict[str, str], paths: list[str]) -> TestRun:
        """The evidence's tests run with `files` (the module, as it is or fixed) in the sandbox; cached by content."""
        named = [*sorted(files.items()), *sorted(evidence.test_files.items())]
        key = content_hash("evidence", *[part for pair in named for part in pair], *evidence.tests, *paths)
        if key in self._runs:
            return self._runs[key]
        config = self.config.actions

        def run() -> TestRun:
            return run_tests(
                evidence.test_files, evidence.tests, files=files, paths=paths, timeout_s=config.test_timeout_ms / 1000,
                per_test_s=config.per_test_timeout_ms / 1000, memory_mb=config.test_memory_mb,
            )

        result = await asyncio.get_running_loop().run_in_executor(None, run)
        self._runs[key] = result
        while len(self._runs) > max(1, config.cache_size):
            self._runs.popitem(last=False)
        return result

    @staticmethod
    def _module_files(
        text: str, dotted: str, folder: Path | None, read: Callable[[Path], str | None]
    ) -> dict[str, str]:
        """The sandbox's files for a module imported as `dotted` with source `text`: it, and its packages'
        `__init__.py` read from the folders above `folder` (the module's)."""
        files = {dotted.replace(".", "/") + ".py": text}
        for depth in range(dotted.count(".")):
            package = "/".join(dotted.split(".")[: dotted.count(".") - depth])
            files[package + "/__init__.py"] = (read(folder / "__init__.py") or "") if folder is not None else ""
            folder = folder.parent if folder is not None else None
        return files

    async def _from_comment(self, doc: Document, data: dict, request: Request) -> Outcome:
        """Write the code a comment describes. With input/output examples in it (`examples.py`; Python, where the
        sandbox runs) several candidates are written and run against them, the first that passes all is offered,
        and the failures of the best are fed back into the next ask (`refine.py`); else one answer, gated."""
        progress, window = request.progress, request.window
        comment = comment_at(doc, data["at"])
        if comment is None or comment.hash != data.get("hash"):
            return Nothing("There is no comment describing code to write here; write one, then ask again.")
        progress.report("writing code")
        if window is not None:
            prompt = window(doc, comment.insert)
        else:
            prompt = FimPrompt(doc.text[: comment.insert], doc.text[comment.replace_end :], path=self.shown(doc.path))
        if not prompt.prefix.endswith("\n"):
            prompt = FimPrompt(
                prompt.prefix + "\n", prompt.suffix, prompt.path, prompt.snippets, prompt.repo, prompt.comment
            )
        found = examples.read(comment.text) if doc.language == "python" else examples.Examples()
        if found and sandbox_state().available:
            return await self._synthesize(doc, comment, prompt, found, request)
        code = await self.assistant.run(from_comment_ask(prompt, comment.text, doc.language), progress.cancel)
        placed = self._placed(doc, comment, code or "")
        if isinstance(placed, Nothing):
            return placed
        note = f"{UNVERIFIED}: examples not run ({sandbox_state().detail})" if found else None
        return await self._inserted(doc, comment, placed, note)

    def _placed(self, doc: Document, comment: Comment, code: str) -> str | Nothing:
        """The text to insert for the code the model wrote for `comment` (re-indented, after a line break), or why
        there is none: no code, only functions the file has, or the document does not parse with it."""
        if not code.strip():
            return Nothing("The model wrote no code for this comment; try again, or describe the code in more detail.")
        if _only_redefines(code, doc):
            return Nothing(
                "The model only rewrote functions the file already has, so nothing is inserted;"
                " describe new code in the comment."
            )
        first = code.split("\n", 1)[0]
        if comment.indent and not first[: len(first) - len(first.lstrip())]:
            code = _reindent(code, comment.indent)  # a chat model's block, unindented
        text = ("" if doc.text[: comment.insert].endswith("\n") else "\n") + code
        new = doc.text[: comment.insert] + text + doc.text[comment.replace_end :]
        if parses(doc.language, new) is False and parses(doc.language, doc.text) is not False:
            return Nothing(
                "The model's code does not parse here, so it is not offered; try again, or reword the comment."
            )
        return text

    async def _inserted(self, doc: Document, comment: Comment, text: str, note: str | None) -> Replace:
        """The edit inserting `text` for `comment`, with its security warning and the findings it adds."""
        new = doc.text[: comment.insert] + text + doc.text[comment.replace_end :]
        gap = text[: len(text) - len(text.lstrip("\n"))]
        warning = self.security_warning(text.lstrip("\n"), doc.language, doc.text[: comment.insert] + gap)
        findings = await self._findings(doc.text, new, doc.language)
        return Replace(comment.insert, comment.replace_end, text, warning, note=note, findings=findings)

    async def _synthesize(
        self, doc: Document, comment: Comment, prompt: FimPrompt, found: examples.Examples, request: Request
    ) -> Outcome:
        """Candidates for `comment`, each run against its examples in the sandbox; the first that passes all."""
        progress, read, config = request.progress, request.read, self.config.actions
        dotted, module, _, paths = self._module_place(doc)
        folder = module.parent if module is not None else None
        described = _defined_above(doc, comment)  # a docstring's function

        async def ask(attempt: int, previous: Checked[int] | None) -> list[str]:
            failures = previous.failures if previous is not None else []
            progress.report(f"writing {config.candidates} candidates for {len(found)} examples")
            return await self.assistant.candidates(
                from_comment_ask(prompt, comment.text, doc.language, failures), config.candidates, progress.cancel
            )

        async def check(code: str) -> Checked[int]:
            placed = self._placed(doc, comment, code)
            if isinstance(placed, Nothing):
                return Checked(code, False, failures=[placed.message.split(";")[0]], score=-1)
            evidence = found.evidence(dotted, described or _first_defined(code))
            if not evidence:
                return Checked(code, False, failures=["the code defines no function to try the examples on"], score=-1)
            new = doc.text[: comment.insert] + placed + doc.text[comment.replace_end :]
            run = await self._run_evidence(evidence, self._module_files(new, dotted, folder, read), paths)
            if not run.ran:  # the sandbox failed since it was found available: as without one
                return Checked(placed, True, 0, final=True, failures=[run.note])
            passed = len(run.passed(evidence.tests))
            return Checked(placed, passed == len(evidence.tests), passed, fix_evidence.failures(evidence, run),
                           score=passed)

        refined = await refine(ask, check, attempts=config.attempts, seconds=config.refine_ms / 1000,
                               report=progress.report)
        best = refined.best
        if best is None:
            return Nothing("The model wrote no code for this comment; try again, or describe the code in more detail.")
        if not best.passed:
            most = f"the best passes {best.result} of {len(found)}" if best.result is not None else "none runs"
            return Nothing(
                f"No code the model wrote passes all {len(found)} examples of the comment ({most};"
                f" {refined.tried()}), so none is offered; try again, or write it by hand."
            )
        if best.result == 0 and best.failures:  # not run after all
            note = f"{UNVERIFIED}: examples not run ({best.failures[0]})"
        else:
            note = f"passes all {best.result} example{'s' * (best.result != 1)}" + refined.on()
        return await self._inserted(doc, comment, best.answer, note)

    def workspace_folders(self) -> list[Path]:
        """The workspace folders now, the root among them (the server keeps `folders` up to date; its completion
        prompts follow this list too)."""
        return list(dict.fromkeys([*self.folders, *([self.root] if self.root else [])]))

    async def _tests(self, doc: Document, data: dict, request: Request) -> Outcome:
        """Write tests for the target; Python tests are run against the current code in the sandbox and only the
        passing ones kept; when none passes, the failures are fed back into the next ask (`refine.py`)."""
        target, progress, read, config = _target(doc, data), request.progress, request.read, self.config.actions
        if not doc.uri.startswith("file:"):
            return Nothing(
                "Generate tests: the file is not saved in the workspace folder, so midline has nowhere to write tests;"
                " save it there first."
            )
        place = place_tests(doc.path, self.workspace_folders(), doc.language)
        if isinstance(place, str):
            return Nothing(place)
        module, test_path = place.module, place.path
        dotted, import_root = (
            python_module(module, place.folder) if doc.language == "python" else (module.stem, module.parent)
        )
        shown = shown_path(module, [place.folder])

        def ask_of(failures: Sequence[str] = ()) -> Ask:
            return tests_ask(shown, doc.text, [target.name], dotted, place.relative.as_posix(), doc.language, failures)

        async def ask(attempt: int, previous: Checked[Verified] | None) -> list[str]:
            progress.report("writing tests")
            if attempt == 1 or previous is None:
                source = await self.assistant.run(ask_of(), progress.cancel)
                return [source] if source else []
            return await self.assistant.candidates(ask_of(previous.failures), config.candidates, progress.cancel)

        async def check(source: str) -> Checked[Verified]:
            if doc.language != "python":
                return Checked(source, True)
            verified = await self._verify(source, doc, dotted, import_root, progress, read, place)
            offered = bool(verified.passed) or not verified.ran
            return Checked(source, offered, verified, verified.failures(), score=len(verified.passed))

        refined = await refine(ask, check, attempts=config.attempts if doc.language == "python" else 1,
                               seconds=config.refine_ms / 1000, report=progress.report)
        best = refined.best
        if best is None:
            return Nothing("The model wrote no tests; try again.")
        verified, source = best.result, best.answer
        if verified is not None:
            if not best.passed:
                note = f" ({verified.note})" if verified.note else ""
                tried = f" ({refined.tried()})" if refined.attempts > 1 else ""
                return Nothing(
                    f"None of the generated tests passed against the current code{note}{tried}, so none are offered;"
                    " try again, or check the code."
                )
            source = verified.source
        else:
            c = languages.resolve(doc.language).line_comment
            source = f"{c} midline: generated tests, {UNVERIFIED} (not run)\n{source}"
        warning = self.security_warning(source, doc.language, "")  # the tests as generated, before they join a file
        existing = read(test_path)
        text = merge_tests(existing, source) if existing is not None else source
        findings = await self._findings(existing or "", (existing or "") + text, doc.language)
        return TestFile(test_path, text, existing, verified, warning, findings)

    async def _verify(
        self,
        source: str,
        doc: Document,
        dotted: str,
        import_root: Path,
        progress: Progress,
        read: Callable[[Path], str | None],
        place: Placement,
    ) -> Verified:
        key = content_hash(source, doc.text, dotted)
        if key in self._verified:
            return self._verified[key]
        files = self._module_files(doc.text, dotted, place.module.parent, read)
        paths = list(dict.fromkeys(str(p) for p in (import_root, place.folder)))
        config = self.config.actions
        test_file = f"test_{dotted.split('.')[-1]}_midline.py"

        def run() -> Verified:
            return verify_tests(
                source, test_file=test_file, files=files, paths=paths, timeout_s=config.test_timeout_ms / 1000,
                per_test_s=config.per_test_timeout_ms / 1000, memory_mb=config.test_memory_mb, report=progress.report,
            )

        verified = await asyncio.get_running_loop().run_in_executor(None, run)
        self._verified[key] = verified
        while len(self._verified) > max(1, config.cache_size):
            self._verified.popitem(last=False)
        return verified


def _defined_above(doc: Document, comment: Comment) -> str | None:
    """The name of the function whose docstring `comment` is (the `def` line above it); None for a line comment."""
    if comment.replace_end == comment.insert:  # a line comment: the code goes below it
        return None
    found = re.findall(r"^[ \t]*(?:async[ \t]+)?def[ \t]+(\w+)", doc.text[: comment.start], re.MULTILINE)
    return found[-1] if found else None


def _first_defined(code: str) -> str | None:
    """The first function `code` defines at its top level (dedented), if any."""
    found = re.search(r"^(?:async[ \t]+)?def[ \t]+(\w+)", textwrap.dedent(code), re.MULTILINE)
    return found.group(1) if found else None


def _target(doc: Document, data: dict) -> Target:
    """The target an action's `data` names, as the document has it now."""
    return Target(data["kind"], data.get("name", ""), data["start"], data["end"], doc.text[data["start"] : data["end"]])


# -- the actions ----------------------------------------------------------------------------------

ACTIONS: tuple[ActionSpec, ...] = (
    ActionSpec(
        tasks.FROM_COMMENT, "refactor.midline.fromComment", COMMENT,
        title=lambda place: "midline: Write the code this comment describes",
        resolve=Actions._from_comment,
    ),
    ActionSpec(
        tasks.EXPLAIN, "refactor.midline.explain", TARGET,
        title=lambda place: f"midline: Explain {_what(place.target)}",
        resolve=Actions._explain,
    ),
    ActionSpec(
        tasks.FIX, "quickfix.midline.fix", TARGET,
        title=_fix_title,
        resolve=Actions._fix,
        offered=lambda place: place.doc.tree is not None,  # a fix must parse: only for languages with a grammar
        data=lambda place: {"diagnostics": _diagnostics_inside(place)},
    ),
    ActionSpec(
        tasks.TESTS, "refactor.midline.tests", TARGET,
        title=_tests_title,
        resolve=Actions._tests,
        offered=lambda place: place.target.kind in ("function", "class") and bool(place.target.name),
    ),
)
BY_NAME = {spec.name: spec for spec in ACTIONS}
