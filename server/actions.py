"""Code actions — explain, fix, generate tests, code from a comment — offered at once, computed when picked.

`offers` (pure, no model) says which actions fit the selection, or else the tree-sitter node at the
cursor (the innermost function or class, else the statement) or the comment at the cursor; the server
lists them with `data` and no edit. When the user picks one, `codeAction/resolve` calls
`Actions.resolve`, which asks the model (`assistant.py`, prompts from `model/tasks.py`) and returns an
`Outcome`: an explanation, an edit of the document, a test file — or a message saying why there is none.

Gates: a fix is offered only if it parses (tree-sitter) and differs from the original; code from a
comment only if the document still parses with it; Python tests only if they pass against the current
code in the sandbox (`verify.py`); other languages' tests are marked unverified.
"""

from __future__ import annotations

import asyncio
import os
import re
import textwrap
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import tree_sitter

from midline.model import languages, tasks
from midline.model.syntax import byte_offset, char_offset, line_start, next_line, node_name, parses, unwrap, utf8
from midline.model.fim import FimPrompt, shown_path

from .assistant import Ask, Assistant, Cancelled, Failed, Progress, content_hash
from .config import Config, CurrentConfig, Settings
from .documents import Document
from .symbols import definitions_of, enclosing_scopes
from .sandbox import sandbox_state
from .verify import Verified, verify_tests

EXPLAIN, FIX, TESTS, FROM_COMMENT = tasks.EXPLAIN.name, tasks.FIX.name, tasks.TESTS.name, tasks.FROM_COMMENT.name
KINDS = {
    EXPLAIN: "refactor.midline.explain",
    FIX: "quickfix.midline.fix",
    TESTS: "refactor.midline.tests",
    FROM_COMMENT: "refactor.midline.fromComment",
}
_CLASS_TYPES = ("class", "struct", "enum", "interface", "trait", "impl", "record", "union", "type")


# -- what the action is about ---------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Code an action works on: whole lines of the document."""

    kind: str  # "function" | "class" | "statement" | "selection"
    name: str  # the function's or class's name, else ""
    start: int  # string index of its first line's start
    end: int  # string index after its last line (after the newline, if any)
    code: str  # the document's text from `start` to `end`

    @property
    def indent(self) -> str:
        first = self.code.split("\n", 1)[0]
        return first[: len(first) - len(first.lstrip())]

    @property
    def hash(self) -> str:
        return content_hash(self.code)


@dataclass(frozen=True)
class Comment:
    """A comment (or docstring) that describes code not yet written; the code goes at `insert`."""

    text: str
    start: int  # string index of its first line
    insert: int  # where the code goes: after the comment's last line
    replace_end: int  # end of what the code replaces (== insert, or the `pass` under a docstring)
    indent: str  # the code's indentation

    @property
    def hash(self) -> str:
        return content_hash(self.text, str(self.insert))


def _definition_kind(node: tree_sitter.Node, language: str) -> str:
    return "class" if any(word in unwrap(node, language, fields_only=True).type for word in _CLASS_TYPES) else "function"


def _lines_of(doc: Document, node: tree_sitter.Node) -> tuple[int, int]:
    """The node's whole lines, as string indexes (start of its first line, after its last line)."""
    start, end = char_offset(doc.source, node.start_byte), char_offset(doc.source, node.end_byte)
    first = line_start(doc.text, start)
    if doc.text[first:start].strip():  # code before the node on its first line: start at the node
        first = start
    return first, next_line(doc.text, max(end - 1, start))


def target_at(doc: Document, start: int, end: int) -> Target | None:
    """The selection (`start` < `end`, widened to whole lines), else the innermost function or class
    around the cursor, else the top-level statement at it. None on blank lines and comments."""
    text = doc.text
    start, end = min(start, end), max(start, end)
    if start < end:
        first = line_start(text, start)
        last = end if end > first and text[end - 1] == "\n" else next_line(text, end)
        code = text[first:last]
        if not code.strip():
            return None
        node = _single_definition(doc, first, last)
        if node is not None:
            return Target(_definition_kind(node, doc.language), node_name(node, doc.language, fields_only=True), first, last, code)
        return Target("selection", "", first, last, code)
    if doc.tree is None:
        return None
    byte = byte_offset(text, start)
    line = text[line_start(text, start) : next_line(text, start)]
    probe = byte_offset(text, line_start(text, start) + len(line) - len(line.lstrip())) + 1 if line.strip() else byte
    scopes = enclosing_scopes(doc.tree, min(max(byte, probe), len(doc.source)), doc.language)
    if scopes:
        node = scopes[-1]
        first, last = _lines_of(doc, node)
        return Target(_definition_kind(node, doc.language), node_name(node, doc.language, fields_only=True), first, last, text[first:last])
    if not line.strip():
        return None
    for node in doc.tree.root_node.named_children:
        if node.start_byte <= max(byte, probe - 1) < node.end_byte or node.start_byte <= byte <= node.end_byte:
            if "comment" in node.type:
                return None
            first, last = _lines_of(doc, node)
            return Target("statement", "", first, last, text[first:last])
    return None


def _single_definition(doc: Document, first: int, last: int) -> tree_sitter.Node | None:
    """The function or class that the lines `first`..`last` hold exactly (blank lines aside), if one does."""
    if doc.tree is None or not doc.text[first:last].strip():
        return None
    lead = len(doc.text[first:last]) - len(doc.text[first:last].lstrip())
    scopes = enclosing_scopes(doc.tree, byte_offset(doc.text, first + lead) + 1, doc.language)
    if not scopes:
        return None
    start, end = _lines_of(doc, scopes[-1])
    return scopes[-1] if start == first and doc.text[end:last].strip() == "" else None


def comment_at(doc: Document, offset: int) -> Comment | None:
    """The comment block (line comments with one indentation) or docstring at the cursor, if the code
    it describes is not written yet: nothing follows it on the next line at its indentation or deeper
    (a docstring: its function has no body but `pass` or `...`)."""
    text = doc.text
    if doc.language == "python" and doc.tree is not None:
        found = _docstring_at(doc, offset)
        if found is not None:
            return found
    marker = languages.resolve(doc.language).line_comment
    lines = text.split("\n")
    row = text.count("\n", 0, offset)

    def is_comment(i: int, indent: str | None = None) -> bool:
        if not 0 <= i < len(lines):
            return False
        stripped = lines[i].lstrip()
        return stripped.startswith(marker) and (indent is None or lines[i][: len(lines[i]) - len(stripped)] == indent)

    if not is_comment(row):
        return None
    indent = lines[row][: len(lines[row]) - len(lines[row].lstrip())]
    top, bottom = row, row
    while is_comment(top - 1, indent):
        top -= 1
    while is_comment(bottom + 1, indent):
        bottom += 1
    after = lines[bottom + 1] if bottom + 1 < len(lines) else ""
    after_indent = len(after) - len(after.lstrip())
    if after.strip() and after_indent >= len(indent):
        return None  # code follows at once: the comment describes it
    start = doc.line_start(top)
    insert = next_line(text, doc.line_start(bottom))
    comment = "\n".join(line.strip() for line in lines[top : bottom + 1])
    return Comment(comment, start, insert, insert, indent)


def _docstring_at(doc: Document, offset: int) -> Comment | None:
    byte = byte_offset(doc.text, offset)
    node = doc.tree.root_node.descendant_for_byte_range(byte, byte)
    while node is not None and node.type not in ("string", "module"):
        node = node.parent
    if node is None or node.type != "string" or node.parent is None or node.parent.type != "expression_statement":
        return None
    statement = node.parent
    block = statement.parent
    if block is None or block.type != "block" or block.named_children[0] != statement:
        return None
    rest = block.named_children[1:]
    placeholder = all(
        s.type == "pass_statement" or (s.type == "expression_statement" and s.named_child_count == 1 and s.named_children[0].type == "ellipsis")
        for s in rest
    )
    if not placeholder or block.parent is None or block.parent.type != "function_definition":
        return None
    text = doc.text
    start, insert = _lines_of(doc, statement)
    replace_end = _lines_of(doc, rest[-1])[1] if rest else insert
    line = text[start:insert]
    indent = line[: len(line) - len(line.lstrip())]
    return Comment(node.text.decode("utf-8", "replace"), start, insert, replace_end, indent)


# -- offers ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Offer:
    """An action to list: its title, kind and the `data` that `codeAction/resolve` gets back."""

    action: str
    title: str
    kind: str
    data: dict


def offers(doc: Document, start: int, end: int, diagnostics: list[tuple[int, str]] = (), only: list[str] | None = None) -> list[Offer]:
    """The actions that fit the selection or the cursor (no model call). `diagnostics` are the
    request context's, as (0-based document line, message); `only` filters by code action kind."""
    out: list[Offer] = []
    base = {"uri": doc.uri, "version": doc.version}
    comment = comment_at(doc, start) if start == end or doc.text[start:end].strip() == "" else None
    if comment is not None:
        data = {**base, "action": FROM_COMMENT, "at": start, "start": comment.start, "insert": comment.insert, "hash": comment.hash}
        out.append(Offer(FROM_COMMENT, "midline: Write the code this comment describes", KINDS[FROM_COMMENT], data))
    target = target_at(doc, start, end) if comment is None else None
    if target is not None:
        what = f"`{target.name}`" if target.name else {"statement": "this statement", "selection": "the selection"}.get(target.kind, "this code")
        data = {**base, "start": target.start, "end": target.end, "hash": target.hash, "name": target.name, "kind": target.kind}
        out.append(Offer(EXPLAIN, f"midline: Explain {what}", KINDS[EXPLAIN], {**data, "action": EXPLAIN}))
        if doc.tree is not None:  # a fix must parse: only for languages with a grammar
            first_row = doc.text.count("\n", 0, target.start)
            last_row = first_row + target.code.rstrip("\n").count("\n")
            inside = [tasks.diagnostic_line(line - first_row + 1, message) for line, message in diagnostics if first_row <= line <= last_row]
            title = f"midline: Fix {what}" + (f" ({_short(diagnostics[0][1])})" if inside else "")
            out.append(Offer(FIX, title, KINDS[FIX], {**data, "action": FIX, "diagnostics": inside}))
        if target.kind in ("function", "class") and target.name:
            unverified = "" if doc.language == "python" and sandbox_state().available else " (unverified)"
            out.append(Offer(TESTS, f"midline: Generate tests for {what}{unverified}", KINDS[TESTS], {**data, "action": TESTS}))
    if only:
        out = [o for o in out if any(o.kind == k or o.kind.startswith(k + ".") for k in only)]
    return out


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


@dataclass(frozen=True)
class TestFile:
    """Tests to write: a new file, or an addition at the end of an existing one (`existing` is its text)."""

    __test__ = False

    path: Path
    text: str  # the whole new file, or what to append
    existing: str | None
    verified: Verified | None  # None: not run (other languages)


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


def explain_ask(code: str, language: str, path: str = "") -> Ask:
    """Explain a function or class (also hover's explanation: the two share the cache)."""
    code = _as_task_code(code)
    return Ask(
        EXPLAIN,
        content_hash(EXPLAIN, language, code),
        tasks.EXPLAIN.prompt(code, language, path=path),
        parse=lambda text: tasks.EXPLAIN.parse(text, language),
        messages=tasks.EXPLAIN.messages(code, language),
        parse_chat=tasks.EXPLAIN.parse_chat,
        stop=tasks.EXPLAIN.should_stop(language),
    )


def fix_ask(code: str, diagnostics: list[str], language: str, path: str = "") -> Ask:
    code = _as_task_code(code)
    return Ask(
        FIX,
        content_hash(FIX, language, code, *diagnostics),
        tasks.FIX.prompt(code, diagnostics, language, path=path),
        parse=lambda text: tasks.FIX.parse(text, language),
        messages=tasks.FIX.messages(code, diagnostics, language),
        parse_chat=tasks.FIX.parse_chat,
        stop=tasks.FIX.should_stop(language),
    )


def tests_ask(module_path: str, module_source: str, names: list[str], module: str, test_path: str, language: str) -> Ask:
    prompt = tasks.TESTS.prompt(module_path, module_source, names, module=module, test_path=test_path, language=language)
    return Ask(
        TESTS,
        content_hash(TESTS, language, module_path, module_source, module, test_path, *names),
        prompt,
        parse=lambda text: tasks.TESTS.parse(prompt, text, language),
        messages=tasks.TESTS.messages(module_path, module_source, names, language),
        parse_chat=tasks.TESTS.parse_chat,
        stop=tasks.TESTS.should_stop(language),
    )


def from_comment_ask(prompt: FimPrompt, comment: str, language: str) -> Ask:
    context = prompt.prefix[-4000:]
    return Ask(
        FROM_COMMENT,
        content_hash(FROM_COMMENT, language, prompt.prefix, prompt.suffix),
        tasks.FROM_COMMENT.prompt(prompt.prefix, prompt.suffix, path=prompt.path, snippets=prompt.snippets, language=language),
        parse=lambda text: tasks.FROM_COMMENT.parse(text, language),
        messages=tasks.FROM_COMMENT.messages(comment, context, language),
        parse_chat=tasks.FROM_COMMENT.parse_chat,
        stop=tasks.FROM_COMMENT.should_stop(language),
    )


# -- gates ----------------------------------------------------------------------------------------


def fix_gate(document: str, target: Target, candidate: str, language: str) -> str | None:
    """The fix as the text replacing the target's lines, or None: empty, the same code, or it does not
    parse (on its own, dedented, or in the document in place of the target)."""
    if not candidate.strip():
        return None
    fixed = _reindent(candidate, target.indent)
    if not target.code.endswith("\n"):
        fixed = fixed.rstrip("\n")
    if _normalized(fixed) == _normalized(target.code):
        return None
    alone = parses(language, textwrap.dedent(fixed))
    if alone is None:
        return None
    if alone or parses(language, document[: target.start] + fixed + document[target.end :]):
        return fixed
    return None


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


OUTSIDE = "Generate tests: the file is outside the workspace folder, so midline will not write a test file there; open its folder as the workspace to generate tests."


def place_tests(module: str, folders: Sequence[Path], language: str) -> Placement | str:
    """Where the tests of the module at `module` go, or why midline writes none: the module and its test
    file, with `..` segments and symlinks resolved, must both lie inside a workspace folder."""
    if not folders:
        return "Generate tests: no workspace folder is open, so midline will not write a test file; open the project's folder first."
    real = Path(os.path.realpath(module))
    holding = [(Path(os.path.realpath(folder)), folder) for folder in folders]
    holding = [(real_folder, folder) for real_folder, folder in holding if real.is_relative_to(real_folder)]
    if not holding:
        return OUTSIDE
    real_folder, folder = max(holding, key=lambda pair: len(pair[0].parts))  # the innermost
    test = Path(os.path.realpath(test_file_for(real, real_folder, language)))
    if not test.is_relative_to(real_folder):  # a symlinked tests/ folder
        return "Generate tests: the test file would be outside the workspace folder (through a symlink), so midline will not write it; make the tests folder a real folder inside the workspace."
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
    lines = [line for line in generated.split("\n") if not (re.match(r"(import|from)\s", line) and line.strip() in have)]
    body = "\n".join(lines).strip("\n")
    if not existing.strip():
        return body + "\n"
    return ("" if existing.endswith("\n") else "\n") + "\n\n" + body + "\n"


# -- resolving ------------------------------------------------------------------------------------


class Actions:
    """Computes picked actions with the model, and caches what the model and the sandbox said."""

    config = CurrentConfig()  # the current settings, read from `settings` each time

    def __init__(self, assistant: Assistant, config: Config | Settings, root: str | None = None, folders: Sequence[str] = ()) -> None:
        self.assistant = assistant
        self.settings = Settings.of(config)
        self.root = Path(root) if root else None
        self.folders = [Path(folder) for folder in folders]  # the workspace folders (the root counts as one)
        self._verified: OrderedDict[str, Verified] = OrderedDict()

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
        progress = progress or Progress()
        action = data.get("action")
        try:
            if data.get("version") != doc.version and not self._unchanged(doc, data):
                return Nothing("The code changed since the action was offered; ask for the action again.")
            if action == FROM_COMMENT:
                return await self._from_comment(doc, data, progress, window)
            target = Target(data["kind"], data.get("name", ""), data["start"], data["end"], doc.text[data["start"] : data["end"]])
            if action == EXPLAIN:
                return await self._explain(doc, target, progress)
            if action == FIX:
                return await self._fix(doc, target, list(data.get("diagnostics", [])), progress)
            if action == TESTS:
                return await self._tests(doc, target, progress, read)
        except Cancelled:
            return Nothing("cancelled")
        except Failed as exc:  # the model failed: its message, the only one shown
            return Nothing(str(exc), error=True)
        return Nothing(f"midline offers no action {action!r}; ask for code actions again.")

    def _unchanged(self, doc: Document, data: dict) -> bool:
        if data.get("action") == FROM_COMMENT:
            comment = comment_at(doc, data.get("at", 0)) if 0 <= data.get("at", 0) <= len(doc.text) else None
            return comment is not None and comment.hash == data.get("hash") and comment.insert == data.get("insert")
        start, end = data.get("start", 0), data.get("end", 0)
        return 0 <= start <= end <= len(doc.text) and content_hash(doc.text[start:end]) == data.get("hash")

    def shown(self, path: str | Path) -> str:
        """A path as the model sees it: relative to the workspace root when inside it (as completion shows it)."""
        return shown_path(path, self.root)

    async def _explain(self, doc: Document, target: Target, progress: Progress) -> Outcome:
        progress.report("explaining")
        explanation = await self.assistant.run(explain_ask(target.code, doc.language, self.shown(doc.path)), progress.cancel)
        if not explanation:
            return Nothing("The model gave no explanation; try again, or select less code.")
        title = f"`{target.name}`" if target.name else "the code"
        return Explanation(f"### {title}\n\n{explanation}\n")

    async def _fix(self, doc: Document, target: Target, diagnostics: list[str], progress: Progress) -> Outcome:
        progress.report("writing a fix")
        candidate = await self.assistant.run(fix_ask(target.code, diagnostics, doc.language, self.shown(doc.path)), progress.cancel)
        fixed = fix_gate(doc.text, target, candidate or "", doc.language)
        if fixed is None:
            return Nothing("The model's fix did not parse or changed nothing, so it is not offered; try again, or fix the code by hand.")
        return Replace(target.start, target.end, fixed)

    async def _from_comment(self, doc: Document, data: dict, progress: Progress, window) -> Outcome:
        comment = comment_at(doc, data["at"])
        if comment is None or comment.hash != data.get("hash"):
            return Nothing("There is no comment describing code to write here; write one, then ask again.")
        progress.report("writing code")
        if window is not None:
            prompt = window(doc, comment.insert)
        else:
            prompt = FimPrompt(doc.text[: comment.insert], doc.text[comment.replace_end :], path=self.shown(doc.path))
        if not prompt.prefix.endswith("\n"):
            prompt = FimPrompt(prompt.prefix + "\n", prompt.suffix, prompt.path, prompt.snippets, prompt.repo, prompt.comment)
        code = await self.assistant.run(from_comment_ask(prompt, comment.text, doc.language), progress.cancel)
        if not code or not code.strip():
            return Nothing("The model wrote no code for this comment; try again, or describe the code in more detail.")
        if _only_redefines(code, doc):
            return Nothing("The model only rewrote functions the file already has, so nothing is inserted; describe new code in the comment.")
        first = code.split("\n", 1)[0]
        if comment.indent and not first[: len(first) - len(first.lstrip())]:
            code = _reindent(code, comment.indent)  # a chat model's block, unindented
        text = ("" if doc.text[: comment.insert].endswith("\n") else "\n") + code
        new = doc.text[: comment.insert] + text + doc.text[comment.replace_end :]
        if parses(doc.language, new) is False and parses(doc.language, doc.text) is not False:
            return Nothing("The model's code does not parse here, so it is not offered; try again, or reword the comment.")
        return Replace(comment.insert, comment.replace_end, text)

    def workspace_folders(self) -> list[Path]:
        return list(dict.fromkeys([*self.folders, *([self.root] if self.root else [])]))

    async def _tests(self, doc: Document, target: Target, progress: Progress, read) -> Outcome:
        if not doc.uri.startswith("file:"):
            return Nothing("Generate tests: the file is not saved in the workspace folder, so midline has nowhere to write tests; save it there first.")
        place = place_tests(doc.path, self.workspace_folders(), doc.language)
        if isinstance(place, str):
            return Nothing(place)
        module, test_path = place.module, place.path
        dotted, import_root = python_module(module, place.folder) if doc.language == "python" else (module.stem, module.parent)
        progress.report("writing tests")
        shown = shown_path(module, place.folder)
        ask = tests_ask(shown, doc.text, [target.name], dotted, place.relative.as_posix(), doc.language)
        source = await self.assistant.run(ask, progress.cancel)
        if not source or not source.strip():
            return Nothing("The model wrote no tests; try again.")
        verified = None
        if doc.language == "python":
            verified = await self._verify(source, doc, dotted, import_root, progress, read, place)
            if verified.ran and not verified.passed:
                return Nothing(f"None of the generated tests passed against the current code{' (' + verified.note + ')' if verified.note else ''}, so none are offered; try again, or check the code.")
            source = verified.source
        else:
            c = languages.resolve(doc.language).line_comment
            source = f"{c} midline: generated tests, {tasks.UNVERIFIED} (not run)\n{source}"
        existing = read(test_path)
        text = merge_tests(existing, source) if existing is not None else source
        return TestFile(test_path, text, existing, verified)

    async def _verify(self, source: str, doc: Document, dotted: str, import_root: Path, progress: Progress, read, place: Placement) -> Verified:
        key = content_hash(source, doc.text, dotted)
        if key in self._verified:
            return self._verified[key]
        files = {dotted.replace(".", "/") + ".py": doc.text}
        folder = place.module.parent
        for depth in range(dotted.count(".")):  # the packages' __init__.py, for a package module
            package = "/".join(dotted.split(".")[: dotted.count(".") - depth])
            files[package + "/__init__.py"] = read(folder / "__init__.py") or ""
            folder = folder.parent
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


