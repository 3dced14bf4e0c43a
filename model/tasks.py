"""Instruction tasks — explain, fix, generate tests, code from a comment — in the shapes a model is asked.

The one place these prompt shapes are defined: the server's code actions and hover build their prompts
here, and the training package (`training/sft.py`, `training/evaluate_tasks.py`) formats its examples and
tasks here, so a model is served exactly as it was fine-tuned and evaluated.

Each task is one `Task` record — `EXPLAIN`, `TESTS`, `FIX`, `FROM_COMMENT`, and `TASKS` by name (the name
is also the code action's in LSP data and the assistant's cache key) — which callers look up once
instead of branching on the task's name. A FIM completion model is asked in its own shape, as a
`FimPrompt` (rendered in the model's format by `model/fim.py`); the model generates the middle:

  explain       a function's docstring.  prefix = the definition's header + the indented opening `\"\"\"`;
                suffix = the closing `\"\"\"` + the body.  (Other languages: a line comment above the code.)
  tests         a test file that follows the module.  The module is a `file_sep` snippet; the test file's
                prefix is its header (`import pytest`, `from <module> import <names>`) and `def test_`.
  fix           the corrected version.  prefix = `# Buggy version:`, the code, its diagnostics as
                comments, and the marker line `# Fixed version:`; suffix = "".
  fromComment   plain completion after the comment: prefix = the text up to the comment's end.

A record's `prompt(...)` builds the prompt, `target(...)` the middle a training example teaches (without
end of text: `FimFormat.encode_example` adds it), `example(...)` both from real code (None when the code
has no such example), and `parse(...)` turns what the model generated into the result; `should_stop(language)`
ends a generation once its answer is written or it has fallen into a loop (the parsers cut a loop down to
its first copy). An instruction (chat) model is asked with `messages(...)` (chat messages for
`tokenizer.apply_chat_template`) and answers in markdown, which `parse_chat` reads. Training's records
(JSON lines: a task's inputs by name, see `Task`) become prompts and examples through `record_prompt` and
`record_example`; a task without them (code from a comment) is not learnt from mined code.

Code passed in is dedented (a method as if it were top level); the caller re-indents results.
"""

from __future__ import annotations

import inspect
import re
import textwrap
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Callable, Sequence

from midline.model.fim import FimPrompt, Snippet
from midline.model.languages import resolve
from midline.model.syntax import definition_parts, parsing_head

QUOTES = '"""'
FIX_BUGGY = "Buggy version:"
FIX_PROBLEMS = "Problems:"
FIX_MARKER = "Fixed version:"  # the line after which the model writes the corrected code
FEEDBACK = "An earlier attempt failed:"  # a refined ask (server/refine.py) lists the failures under this line
SYSTEM = "You are an expert programmer. Answer concisely."

Message = dict[str, str]
Example = tuple[FimPrompt, str]  # (prompt, middle)
Record = dict[str, Any]  # a task's inputs by name, as training's JSON lines hold them


@dataclass(frozen=True)
class Task:
    """One instruction task: its prompt shapes, how its answers are read, and when a generation is done.

    Records (training's JSON lines) hold the inputs by name: explain {code, path}; fix {buggy, fixed,
    path}; tests {path, module (its source)} and either {test, test_path, import_name} (a mined module and
    test file pair) or {name} (the function to test, eval-tasks').
    """

    name: str  # also the code action's name in LSP data and the assistant's cache key
    prompt: Callable[..., FimPrompt]  # the task's inputs -> the FIM prompt
    target: Callable[..., str | None]  # real code -> the middle a training example teaches
    parse: Callable[..., str]  # the completion model's text -> the result
    messages: Callable[..., list[Message]]  # the task's inputs -> chat messages
    parse_chat: Callable[[str], str]  # an instruction model's markdown answer -> the result
    end: Callable[[str], str] | None = None  # language -> a regex found once the answer is written
    example: Callable[..., Example | None] | None = None  # real code -> (prompt, middle)
    record_prompt: Callable[[Record], FimPrompt] | None = None  # a record -> the prompt the server sends
    record_example: Callable[[Record], Example | None] | None = None  # a record -> (prompt, middle)

    def should_stop(self, language: str = "python") -> Callable[[str], bool]:
        """When a generation of this task is done: once `end` matches (explain: the closing quotes, or a
        line that is no comment; fix: a marker line of the prompt's), or once it loops."""
        end = re.compile(self.end(language)) if self.end is not None else None

        def done(text: str) -> bool:
            return (end is not None and end.search(text) is not None) or loop_start(text) is not None

        return done


# -- loops ----------------------------------------------------------------------------------------

_LOOP_UNIT = (8, 200)  # characters in the repeated unit of a loop
_LOOP_PLAIN = 240  # a unit without letters (`, 22`, `---`) loops only once it fills this many characters


def loop_start(text: str) -> int | None:
    """Where the loop `text` ends in starts repeating, after its first copy (of a loop of lines: after the first
    whole line of it); a loop is a unit of 8 to 200 characters three times or more in a row at the end (a unit
    without letters: over its last 240 characters). None if `text` does not end in one."""
    shortest, longest = _LOOP_UNIT
    for size in range(shortest, min(longest, len(text) // 3) + 1):
        unit = text[-size:]
        if text[-2 * size : -size] == unit == text[-3 * size : -2 * size] and (
            any(c.isalpha() for c in unit)
            or (len(text) >= _LOOP_PLAIN + size and text[-_LOOP_PLAIN:] == text[-_LOOP_PLAIN - size : -size])
        ):
            start = len(text) - 3 * size
            while start > 0 and text[start - 1] == text[start - 1 + size]:  # the loop may begin mid-unit
                start -= 1
            line_end = text.find("\n", start + size - 1, start + 2 * size)  # a loop of lines: cut after a whole line
            return line_end + 1 if line_end >= 0 else start + size
    return None


def without_loop(text: str) -> str:
    """`text` with a loop at its end cut down to its first copy."""
    cut = loop_start(text)
    return text if cut is None else text[:cut]


# -- explain --------------------------------------------------------------------------------------


def _explain_prompt(code: str, language: str = "python", *, path: str = "") -> FimPrompt:
    """Ask for the docstring of the function or class `code` (its own docstring, if any, is left out).

    Python: prefix = decorators and header (`def f(x):`) + newline + body indentation + `\"\"\"`;
    suffix = `\"\"\"` + newline + the body. Other languages, and Python code that is no definition:
    prefix = the line-comment marker and a space; suffix = newline + the code.
    """
    parts = definition_parts(code) if language == "python" else None
    if parts is None:
        comment = resolve(language).line_comment
        return FimPrompt(prefix=f"{comment} ", suffix="\n" + _ended(code), path=path, comment=comment)
    return FimPrompt(prefix=f"{parts.header}\n{parts.indent}{QUOTES}", suffix=f"{QUOTES}\n{parts.body}", path=path)


def _explain_target(docstring: str) -> str:
    """The middle for a docstring: its text as written between the quotes."""
    return docstring


def _explain_example(code: str, language: str = "python", *, path: str = "") -> Example | None:
    """(prompt, middle) from a Python function or class with a docstring; None without one."""
    if language != "python":
        return None
    parts = definition_parts(code)
    if parts is None or parts.docstring is None or QUOTES in parts.docstring or not parts.docstring.strip():
        return None
    return _explain_prompt(code, language, path=path), _explain_target(parts.docstring)


def _parse_explanation(output: str, language: str = "python") -> str:
    """The explanation in generated text: up to the closing quotes (or the end of the comment block),
    dedented and stripped. Empty if there is none."""
    output = without_loop(output)
    if language == "python":
        text = output.split(QUOTES, 1)[0]
        return inspect.cleandoc(text).strip()
    marker = resolve(language).line_comment
    lines = []
    for i, line in enumerate(output.split("\n")):
        stripped = line.strip()
        if i > 0 and not stripped.startswith(marker):
            break
        lines.append(stripped[len(marker):].strip() if stripped.startswith(marker) else stripped)
    return "\n".join(lines).strip()


def _explain_messages(code: str, language: str = "python") -> list[Message]:
    """Chat messages asking for a short markdown explanation: purpose, parameters, return value."""
    return _chat(
        f"Explain what this {language} code does in one short paragraph: its purpose, its parameters and "
        f"what it returns. Answer in markdown, without repeating the code.\n\n```{language}\n{_ended(code)}```"
    )


def _explain_end(language: str) -> str:
    """Python: the closing quotes; other languages: a line that is no comment."""
    if language == "python":
        return re.escape(QUOTES)
    return rf"\n\s*(?!{re.escape(resolve(language).line_comment)})\S"


def summary(explanation: str) -> str:
    """The first paragraph of an explanation, on one line (for hover)."""
    paragraph = explanation.strip().split("\n\n", 1)[0]
    return " ".join(paragraph.split())


# -- tests ----------------------------------------------------------------------------------------


def module_name(module_path: str) -> str:
    """The name a test file imports a module by: its file name without the extension."""
    return PurePosixPath(module_path.replace("\\", "/")).stem


def test_path_for(module_path: str) -> str:
    """Where a module's tests go when nothing else is known: `tests/test_<module>.py`."""
    return f"tests/test_{module_name(module_path)}.py"


def tests_header(module: str, names: Sequence[str] = ()) -> str:
    """The start of a test file: `import pytest`, the module's names (or the module), two blank lines."""
    imports = f"from {module} import {', '.join(names)}" if names else f"import {module}"
    return f"import pytest\n\n{imports}\n\n\n"


def _tests_prompt(
    module_path: str,
    module_source: str,
    names: Sequence[str] = (),
    *,
    module: str | None = None,
    test_path: str | None = None,
    language: str = "python",
    failures: Sequence[str] = (),
) -> FimPrompt:
    """Ask for the tests of `names` in a module: the module as a `file_sep` snippet, then the test file
    (`test_path`, default `tests/test_<module>.py`) whose prefix is `tests_header` + `def test_`; `failures` (of an
    earlier attempt) go as comments (`feedback`) above `def test_`.

    `module` is the name the tests import (default: the file name without `.py`; a package module's
    dotted name, `pkg.shapes`, where the caller knows it). Other languages: the test file's prefix is
    the comment `// Tests for <names> (<module path>)` and a newline.
    """
    c = resolve(language).line_comment
    if language == "python":
        prefix = tests_header(module or module_name(module_path), names) + feedback(failures, c) + "def test_"
    else:
        prefix = f"{c} Tests for {', '.join(names) or module_path} ({module_path})\n" + feedback(failures, c)
    return FimPrompt(
        prefix=prefix,
        suffix="",
        path=test_path or test_path_for(module_path),
        snippets=[Snippet(module_path, module_source)],
        comment=resolve(language).line_comment,
    )


_FIRST_TEST = re.compile(r"^def test_", re.MULTILINE)
_IMPORT_LINE = re.compile(r"^(?:import\s|from\s|@|#|$)")


def _tests_target(test_source: str) -> str | None:
    """The middle for a real test file: everything after its first top-level `def test_` (None without one)."""
    match = _FIRST_TEST.search(test_source)
    return _ended(test_source[match.end():]) if match else None


def _tests_example(
    module_path: str, module_source: str, test_source: str, *, test_path: str | None = None, module: str | None = None
) -> Example | None:
    """(prompt, middle) from a module and its test file; `module` as `prompt` takes it (a package
    module's dotted name).

    The names the test file imports from the module (`from [<package>.]<module> import a, b`) go in the
    header. None when the test file has no top-level `def test_`, or has anything but imports,
    decorators and comments before it (fixtures and helpers the fixed header would lose).
    """
    middle, first_test = _tests_target(test_source), _FIRST_TEST.search(test_source)
    if middle is None or first_test is None:  # (both are None or neither)
        return None
    prelude = test_source[: first_test.start()]
    if not all(_IMPORT_LINE.match(line.strip()) for line in prelude.split("\n")):
        return None
    stem = module_name(module_path)
    names: list[str] = []
    for match in re.finditer(
        rf"^from\s+(?:[\w.]+\.)?{re.escape(stem)}\s+import\s+\(?([^)\n]+)\)?", prelude, re.MULTILINE
    ):
        names += [n.strip() for n in match.group(1).split(",") if n.strip() and n.strip() != "*"]
    prompt = _tests_prompt(module_path, module_source, list(dict.fromkeys(names)), module=module, test_path=test_path)
    return prompt, middle


def _parse_tests(prompt: FimPrompt, output: str, language: str = "python") -> str:
    """The whole test module: the prompt's header + the generated text; for Python cut back to the longest
    run of whole top-level statements that parses (a generation stopped mid-function loses that function)."""
    text = without_feedback(prompt.prefix, resolve(language).line_comment) + without_loop(output)
    return parsing_head("python", text) if language == "python" else _ended(text.rstrip())


def _tests_messages(
    module_path: str, module_source: str, names: Sequence[str] = (), language: str = "python",
    failures: Sequence[str] = (),
) -> list[Message]:
    """Chat messages asking for a pytest module (other languages: the usual test framework)."""
    what = ", ".join(f"`{n}`" for n in names) or "the module"
    if language == "python":
        ask = (
            f"Write a pytest test module for {what}. Import from `{module_name(module_path)}`; "
            "plain `def test_...` functions."
        )
    else:
        ask = f"Write unit tests for {what} with the usual test framework for {language}."
    return _chat(
        f"`{module_path}`:\n\n```{language}\n{_ended(module_source)}```\n\n{ask}{_told(failures)} "
        f"Reply with one ```{language} block."
    )


# -- fix ------------------------------------------------------------------------------------------


def diagnostic_line(line: int, message: str) -> str:
    """A diagnostic as a fix prompt lists it: `line 3: undefined name 'x'` (`line` counts from 1 within the code)."""
    return f"line {line}: {' '.join(message.split())}"


def _fix_prompt(
    buggy_code: str, diagnostics: Sequence[str] = (), language: str = "python", *, path: str = ""
) -> FimPrompt:
    """Ask for the corrected version of `buggy_code`:

        # Buggy version:
        <buggy code>
        # Problems:
        # - line 3: undefined name 'x'
        # Fixed version:
        <the model writes here>

    (`# Problems:` only when there are diagnostics; `//` for brace languages.) The suffix is empty.
    """
    c = resolve(language).line_comment
    lines = [f"{c} {FIX_BUGGY}\n", _ended(buggy_code)]
    if diagnostics:
        lines.append(f"{c} {FIX_PROBLEMS}\n")
        lines += [f"{c} - {' '.join(d.split())}\n" for d in diagnostics]
    lines.append(f"{c} {FIX_MARKER}\n")
    return FimPrompt(prefix="".join(lines), suffix="", path=path, comment=c)


def _fix_target(fixed_code: str) -> str:
    """The middle for a fix: the corrected code, ending with a newline."""
    return _ended(fixed_code)


def _fix_example(
    buggy_code: str, fixed_code: str, diagnostics: Sequence[str] = (), language: str = "python", *, path: str = ""
) -> Example:
    """(prompt, middle) for a bug and its fix."""
    return _fix_prompt(buggy_code, diagnostics, language, path=path), _fix_target(fixed_code)


_FIX_MARKERS = f"({re.escape(FIX_BUGGY)}|{re.escape(FIX_PROBLEMS)}|{re.escape(FIX_MARKER)})"


def _parse_fix(output: str, language: str = "python") -> str:
    """The corrected code in generated text: up to a repeated marker line, without trailing blank lines."""
    output = without_loop(output)
    c = re.escape(resolve(language).line_comment)
    cut = re.search(rf"^\s*{c} {_FIX_MARKERS}", output, re.MULTILINE)
    text = output[: cut.start()] if cut else output
    text = text.rstrip()
    return text + "\n" if text.strip() else ""


def _fix_messages(buggy_code: str, diagnostics: Sequence[str] = (), language: str = "python") -> list[Message]:
    """Chat messages asking for the corrected code in one fenced block."""
    problems = "".join(f"- {' '.join(d.split())}\n" for d in diagnostics)
    problems = f"\n\nProblems reported:\n{problems}" if problems else ""
    return _chat(
        f"Fix the bugs in this {language} code.{problems}\n\n```{language}\n{_ended(buggy_code)}```\n\n"
        f"Reply with the whole corrected code in one ```{language} block, keeping its names and indentation."
    )


def _fix_end(language: str) -> str:
    """A marker line of the prompt's, in any language."""
    return _FIX_MARKERS


# -- code from a comment --------------------------------------------------------------------------


def _from_comment_prompt(
    prefix: str, suffix: str, *, path: str = "", snippets: Sequence[Snippet] = (), language: str = "python",
    failures: Sequence[str] = (),
) -> FimPrompt:
    """Ask for the code a comment describes: plain completion, `prefix` ending after the comment's line; `failures`
    (of an earlier attempt) go below it as comments at its indentation (`feedback`)."""
    c = resolve(language).line_comment
    last = prefix.rstrip("\n").rsplit("\n", 1)[-1]
    prefix += feedback(failures, c, last[: len(last) - len(last.lstrip())])
    return FimPrompt(prefix=prefix, suffix=suffix, path=path, snippets=snippets, comment=c)


def _from_comment_target(implementation: str) -> str:
    """The middle for a comment's implementation: the code, ending with a newline."""
    return _ended(implementation)


def _parse_from_comment(output: str, language: str = "python") -> str:
    """The implementation in generated text: for Python the longest head of whole statements that
    parses (indented code judged dedented), otherwise the text; without trailing blank lines, ending
    with a newline (empty if none)."""
    text = output = without_loop(output)
    if language == "python":  # (code under a docstring is indented: judge it dedented)
        dedented = textwrap.dedent(output)
        indent = output[: len(output) - len(output.lstrip())].rsplit("\n", 1)[-1] if dedented != output else ""
        text = textwrap.indent(parsing_head("python", dedented), indent)
    text = text.rstrip()
    return text + "\n" if text.strip() else ""


def _from_comment_messages(
    comment: str, context: str, language: str = "python", failures: Sequence[str] = ()
) -> list[Message]:
    """Chat messages asking for the code a comment describes, given the code around it."""
    return _chat(
        f"Here is a {language} file up to a comment that describes code not yet written:\n\n```{language}\n"
        f"{_ended(context)}```\n\nWrite the code the comment describes:\n{comment.strip()}{_told(failures)}\n\n"
        f"Reply with only that code in one ```{language} block, indented to follow the comment."
    )


# -- feedback -------------------------------------------------------------------------------------


def feedback(failures: Sequence[str], comment: str = "#", indent: str = "") -> str:
    """The failures of an earlier attempt as comment lines: `# An earlier attempt failed:`, `# - <failure>`;
    "" without failures."""
    if not failures:
        return ""
    lines = [f"{comment} {FEEDBACK}", *(f"{comment} - {' '.join(f.split())}" for f in failures)]
    return "".join(f"{indent}{line}\n" for line in lines)


def without_feedback(text: str, comment: str = "#") -> str:
    """`text` without the `feedback` comment blocks in it."""
    c = re.escape(comment)
    return re.sub(rf"^[ \t]*{c} {re.escape(FEEDBACK)}\n(?:[ \t]*{c} - .*\n)*", "", text, flags=re.MULTILINE)


def _told(failures: Sequence[str]) -> str:
    """The failures of an earlier attempt for a chat message."""
    return "".join([f"\n\n{FEEDBACK}\n", *(f"- {' '.join(f.split())}\n" for f in failures)]) if failures else ""


# -- instruction (chat) answers -------------------------------------------------------------------


def parse_code_block(text: str) -> str:
    """The first fenced code block of a markdown answer (its text if it has none), ending with a newline."""
    match = re.search(r"```[^\n`]*\n(.*?)(?:```|$)", text, re.DOTALL)
    code = (match.group(1) if match else text).rstrip()
    return code + "\n" if code.strip() else ""


def _chat(user: str) -> list[Message]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def _ended(text: str) -> str:
    return text if not text or text.endswith("\n") else text + "\n"


# -- the tasks ------------------------------------------------------------------------------------

EXPLAIN = Task(
    name="explain",
    prompt=_explain_prompt,
    target=_explain_target,
    parse=_parse_explanation,
    messages=_explain_messages,
    parse_chat=str.strip,
    end=_explain_end,
    example=_explain_example,
    record_prompt=lambda record: _explain_prompt(record["code"], path=record["path"]),
    record_example=lambda record: _explain_example(record["code"], path=record["path"]),
)

TESTS = Task(
    name="tests",
    prompt=_tests_prompt,
    target=_tests_target,
    parse=_parse_tests,
    messages=_tests_messages,
    parse_chat=parse_code_block,
    example=_tests_example,
    record_prompt=lambda record: _tests_prompt(
        record["path"],
        record["module"],
        [record["name"]],
        module=record.get("import_name"),
        test_path=record.get("test_path"),
    ),
    record_example=lambda record: _tests_example(
        record["path"],
        record["module"],
        record["test"],
        test_path=record["test_path"],
        module=record.get("import_name"),
    ),
)

FIX = Task(
    name="fix",
    prompt=_fix_prompt,
    target=_fix_target,
    parse=_parse_fix,
    messages=_fix_messages,
    parse_chat=parse_code_block,
    end=_fix_end,
    example=_fix_example,
    record_prompt=lambda record: _fix_prompt(record["buggy"], path=record["path"]),
    record_example=lambda record: _fix_example(record["buggy"], record["fixed"], path=record["path"]),
)

FROM_COMMENT = Task(
    name="fromComment",
    prompt=_from_comment_prompt,
    target=_from_comment_target,
    parse=_parse_from_comment,
    messages=_from_comment_messages,
    parse_chat=parse_code_block,
)

TASKS: dict[str, Task] = {task.name: task for task in (EXPLAIN, TESTS, FIX, FROM_COMMENT)}
