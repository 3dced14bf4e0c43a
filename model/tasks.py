"""Instruction tasks — explain, fix, generate tests, code from a comment — in the shapes a model is asked.

The one place these prompt shapes are defined: the server's code actions and hover build their prompts
here, and the training package (`training/sft.py`) formats its supervised examples here, so a model is
served exactly as it was fine-tuned.

A FIM completion model is asked in its own shape, as a `FimPrompt` (rendered in the model's format by
`model/fim.py`); the model generates the middle:

  explain       a function's docstring.  prefix = the definition's header + the indented opening `\"\"\"`;
                suffix = the closing `\"\"\"` + the body.  (Other languages: a line comment above the code.)
  tests         a test file that follows the module.  The module is a `file_sep` snippet; the test file's
                prefix is its header (`import pytest`, `from <module> import <names>`) and `def test_`.
  fix           the corrected version.  prefix = `# Buggy version:`, the code, its diagnostics as
                comments, and the marker line `# Fixed version:`; suffix = "".
  from comment  plain completion after the comment: prefix = the text up to the comment's end.

For each task, `<task>_prompt(...)` builds the prompt, `<task>_target(...)` the middle a training
example teaches (without end of text: `FimFormat.encode_example` adds it), `<task>_example(...)` both
from real code (None when the code has no such example), and `parse_<task>(...)` turns what the model
generated into the result. `should_stop(task, language)` ends a generation once its answer is written or
it has fallen into a loop (the parsers cut a loop down to its first copy). An instruction (chat) model is
asked with `<task>_messages(...)` (chat messages for `tokenizer.apply_chat_template`) and answers in
markdown; `parse_code_block` takes the code out of it.

Code passed in is dedented (a method as if it were top level); the caller re-indents results.
"""

from __future__ import annotations

import inspect
import re
import textwrap
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Callable, Sequence

import tree_sitter

from midline.model.fim import FimPrompt, Snippet
from midline.model import syntax
from midline.model.languages import resolve
from midline.model.syntax import char_offset, header_colon, is_string_statement, line_start, next_line, node_name, parse, unwrap, utf8

QUOTES = '"""'
FIX_BUGGY = "Buggy version:"
FIX_PROBLEMS = "Problems:"
FIX_MARKER = "Fixed version:"  # the line after which the model writes the corrected code
UNVERIFIED = "unverified"  # marks generated tests that were not run (languages other than Python)

Message = dict[str, str]


# -- when a generation is done --------------------------------------------------------------------

_LOOP_UNIT = (8, 200)  # characters in the repeated unit of a loop
_LOOP_PLAIN = 240  # a unit without letters (`, 22`, `---`) loops only once it fills this many characters


def should_stop(task: str, language: str = "python") -> Callable[[str], bool]:
    """When a generation for `task` ("explain", "fix", "tests", "fromComment") is done: explain once the
    closing quotes (other languages: a line that is no comment) are written, fix at a marker line of the
    prompt's, any task once it loops."""
    if task == "explain" and language == "python":
        end = re.compile(re.escape(QUOTES))
    elif task == "explain":
        end = re.compile(rf"\n\s*(?!{re.escape(resolve(language).line_comment)})\S")
    elif task == "fix":
        end = re.compile(rf"{re.escape(FIX_BUGGY)}|{re.escape(FIX_PROBLEMS)}|{re.escape(FIX_MARKER)}")
    else:
        end = None

    def done(text: str) -> bool:
        return (end is not None and end.search(text) is not None) or loop_start(text) is not None

    return done


def loop_start(text: str) -> int | None:
    """Where the loop `text` ends in starts repeating, after its first copy (of a loop of lines: after the first
    whole line of it); a loop is a unit of 8 to 200 characters three times or more in a row at the end (a unit
    without letters: over its last 240 characters). None if `text` does not end in one."""
    shortest, longest = _LOOP_UNIT
    for size in range(shortest, min(longest, len(text) // 3) + 1):
        unit = text[-size:]
        if text[-2 * size : -size] == unit == text[-3 * size : -2 * size] and (
            any(c.isalpha() for c in unit) or len(text) >= _LOOP_PLAIN + size and text[-_LOOP_PLAIN:] == text[-_LOOP_PLAIN - size : -size]
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


def explain_prompt(code: str, language: str = "python", *, path: str = "") -> FimPrompt:
    """Ask for the docstring of the function or class `code` (its own docstring, if any, is left out).

    Python: prefix = decorators and header (`def f(x):`) + newline + body indentation + `\"\"\"`;
    suffix = `\"\"\"` + newline + the body. Other languages, and Python code that is no definition:
    prefix = the line-comment marker and a space; suffix = newline + the code.
    """
    parts = _definition_parts(code) if language == "python" else None
    if parts is None:
        comment = resolve(language).line_comment
        return FimPrompt(prefix=f"{comment} ", suffix="\n" + _ended(code), path=path, comment=comment)
    return FimPrompt(prefix=f"{parts.header}\n{parts.indent}{QUOTES}", suffix=f"{QUOTES}\n{parts.body}", path=path)


def explain_target(docstring: str) -> str:
    """The middle for a docstring: its text as written between the quotes."""
    return docstring


def explain_example(code: str, language: str = "python", *, path: str = "") -> tuple[FimPrompt, str] | None:
    """(prompt, middle) from a Python function or class with a docstring; None without one."""
    if language != "python":
        return None
    parts = _definition_parts(code)
    if parts is None or parts.docstring is None or QUOTES in parts.docstring or not parts.docstring.strip():
        return None
    return explain_prompt(code, language, path=path), explain_target(parts.docstring)


def parse_explanation(output: str, language: str = "python") -> str:
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


def tests_prompt(
    module_path: str,
    module_source: str,
    names: Sequence[str] = (),
    *,
    module: str | None = None,
    test_path: str | None = None,
    language: str = "python",
) -> FimPrompt:
    """Ask for the tests of `names` in a module: the module as a `file_sep` snippet, then the test file
    (`test_path`, default `tests/test_<module>.py`) whose prefix is `tests_header` + `def test_`.

    `module` is the name the tests import (default: the file name without `.py`; a package module's
    dotted name, `pkg.shapes`, where the caller knows it). Other languages: the test file's prefix is
    the comment `// Tests for <names> (<module path>)` and a newline.
    """
    if language == "python":
        prefix = tests_header(module or module_name(module_path), names) + "def test_"
    else:
        prefix = f"{resolve(language).line_comment} Tests for {', '.join(names) or module_path} ({module_path})\n"
    return FimPrompt(
        prefix=prefix,
        suffix="",
        path=test_path or test_path_for(module_path),
        snippets=[Snippet(module_path, module_source)],
        comment=resolve(language).line_comment,
    )


_FIRST_TEST = re.compile(r"^def test_", re.MULTILINE)
_IMPORT_LINE = re.compile(r"^(?:import\s|from\s|@|#|$)")


def tests_target(test_source: str) -> str | None:
    """The middle for a real test file: everything after its first top-level `def test_` (None without one)."""
    match = _FIRST_TEST.search(test_source)
    return _ended(test_source[match.end():]) if match else None


def tests_example(module_path: str, module_source: str, test_source: str, *, test_path: str | None = None) -> tuple[FimPrompt, str] | None:
    """(prompt, middle) from a module and its test file.

    The names the test file imports from the module (`from <module> import a, b`) go in the header.
    None when the test file has no top-level `def test_`, or has anything but imports, decorators and
    comments before it (fixtures and helpers the fixed header would lose).
    """
    middle = tests_target(test_source)
    if middle is None:
        return None
    prelude = test_source[: _FIRST_TEST.search(test_source).start()]
    if not all(_IMPORT_LINE.match(line.strip()) for line in prelude.split("\n")):
        return None
    module = module_name(module_path)
    names: list[str] = []
    for match in re.finditer(rf"^from\s+(?:[\w.]+\.)?{re.escape(module)}\s+import\s+\(?([^)\n]+)\)?", prelude, re.MULTILINE):
        names += [n.strip() for n in match.group(1).split(",") if n.strip() and n.strip() != "*"]
    return tests_prompt(module_path, module_source, list(dict.fromkeys(names)), test_path=test_path), middle


def parse_tests(prompt: FimPrompt, output: str, language: str = "python") -> str:
    """The whole test module: the prompt's header + the generated text; for Python cut back to the longest
    run of whole top-level statements that parses (a generation stopped mid-function loses that function)."""
    text = prompt.prefix + without_loop(output)
    return _parsing_head(text) if language == "python" else _ended(text.rstrip())


@dataclass(frozen=True)
class TestFunction:
    """A test in a test module: `name` (`test_x`, or `TestCls.test_x` for a method) and its source span."""

    __test__ = False  # not a pytest class

    name: str
    start: int  # string index of its first line (decorators included)
    end: int  # string index after its last line


def test_functions(source: str) -> list[TestFunction]:
    """Top-level `test_*` functions and `test_*` methods of top-level `Test*` classes, in order."""
    out: list[TestFunction] = []
    data = utf8(source)
    root = parse("python", source).root_node
    for node in root.named_children:
        inner = unwrap(node, "python")
        name = node_name(inner, "python")
        if inner.type == "function_definition" and name.startswith("test"):
            out.append(TestFunction(name, char_offset(data, node.start_byte), next_line(source, char_offset(data, node.end_byte))))
        elif inner.type == "class_definition" and name.startswith("Test") and (body := inner.child_by_field_name("body")):
            for member in body.named_children:
                method = unwrap(member, "python")
                if method.type == "function_definition" and node_name(method, "python").startswith("test"):
                    start = char_offset(data, member.start_byte)
                    start = line_start(source, start)
                    out.append(TestFunction(f"{name}.{node_name(method, 'python')}", start, next_line(source, char_offset(data, member.end_byte))))
    return out


def keep_tests(source: str, keep: Sequence[str]) -> str:
    """`source` without the tests (see `test_functions`) not named in `keep`; a `Test*` class left
    without tests goes too."""
    tests = test_functions(source)
    drop = [t for t in tests if t.name not in keep]
    classes_kept = {t.name.split(".")[0] for t in tests if t.name in keep and "." in t.name}
    out = source
    for test in sorted(drop, key=lambda t: t.start, reverse=True):
        out = out[: test.start] + out[test.end:]
    root = parse("python", out).root_node
    data = utf8(out)
    for node in reversed(root.named_children):
        inner = unwrap(node, "python")
        name = node_name(inner, "python")
        if inner.type == "class_definition" and name.startswith("Test") and name not in classes_kept:
            if any(t.name.startswith(name + ".") for t in tests):
                out = out[: char_offset(data, node.start_byte)] + out[next_line(out, char_offset(data, node.end_byte)):]
    return re.sub(r"\n{4,}", "\n\n\n", out).rstrip() + "\n"


# -- fix ------------------------------------------------------------------------------------------


def diagnostic_line(line: int, message: str) -> str:
    """A diagnostic as a fix prompt lists it: `line 3: undefined name 'x'` (`line` counts from 1 within the code)."""
    return f"line {line}: {' '.join(message.split())}"


def fix_prompt(buggy_code: str, diagnostics: Sequence[str] = (), language: str = "python", *, path: str = "") -> FimPrompt:
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


def fix_target(fixed_code: str) -> str:
    """The middle for a fix: the corrected code, ending with a newline."""
    return _ended(fixed_code)


def fix_example(buggy_code: str, fixed_code: str, diagnostics: Sequence[str] = (), language: str = "python", *, path: str = "") -> tuple[FimPrompt, str]:
    """(prompt, middle) for a bug and its fix."""
    return fix_prompt(buggy_code, diagnostics, language, path=path), fix_target(fixed_code)


def parse_fix(output: str, language: str = "python") -> str:
    """The corrected code in generated text: up to a repeated marker line, without trailing blank lines."""
    output = without_loop(output)
    c = re.escape(resolve(language).line_comment)
    cut = re.search(rf"^\s*{c} ({re.escape(FIX_BUGGY)}|{re.escape(FIX_PROBLEMS)}|{re.escape(FIX_MARKER)})", output, re.MULTILINE)
    text = output[: cut.start()] if cut else output
    text = text.rstrip()
    return text + "\n" if text.strip() else ""


# -- code from a comment --------------------------------------------------------------------------


def from_comment_prompt(prefix: str, suffix: str, *, path: str = "", snippets: Sequence[Snippet] = (), language: str = "python") -> FimPrompt:
    """Ask for the code a comment describes: plain completion, `prefix` ending after the comment's line."""
    return FimPrompt(prefix=prefix, suffix=suffix, path=path, snippets=snippets, comment=resolve(language).line_comment)


def from_comment_target(implementation: str) -> str:
    """The middle for a comment's implementation: the code, ending with a newline."""
    return _ended(implementation)


def parse_from_comment(output: str, language: str = "python") -> str:
    """The implementation in generated text: for Python the longest head of whole statements that
    parses (indented code judged dedented), otherwise the text; without trailing blank lines, ending
    with a newline (empty if none)."""
    text = output = without_loop(output)
    if language == "python":  # (code under a docstring is indented: judge it dedented)
        dedented = textwrap.dedent(output)
        indent = output[: len(output) - len(output.lstrip())].rsplit("\n", 1)[-1] if dedented != output else ""
        text = textwrap.indent(_parsing_head(dedented), indent)
    text = text.rstrip()
    return text + "\n" if text.strip() else ""


# -- instruction (chat) models --------------------------------------------------------------------

SYSTEM = "You are an expert programmer. Answer concisely."


def explain_messages(code: str, language: str = "python") -> list[Message]:
    """Chat messages asking for a short markdown explanation: purpose, parameters, return value."""
    return _chat(
        f"Explain what this {language} code does in one short paragraph: its purpose, its parameters and "
        f"what it returns. Answer in markdown, without repeating the code.\n\n```{language}\n{_ended(code)}```"
    )


def fix_messages(buggy_code: str, diagnostics: Sequence[str] = (), language: str = "python") -> list[Message]:
    """Chat messages asking for the corrected code in one fenced block."""
    problems = "".join(f"- {' '.join(d.split())}\n" for d in diagnostics)
    problems = f"\n\nProblems reported:\n{problems}" if problems else ""
    return _chat(
        f"Fix the bugs in this {language} code.{problems}\n\n```{language}\n{_ended(buggy_code)}```\n\n"
        f"Reply with the whole corrected code in one ```{language} block, keeping its names and indentation."
    )


def tests_messages(module_path: str, module_source: str, names: Sequence[str] = (), language: str = "python") -> list[Message]:
    """Chat messages asking for a pytest module (other languages: the usual test framework)."""
    what = ", ".join(f"`{n}`" for n in names) or "the module"
    if language == "python":
        ask = f"Write a pytest test module for {what}. Import from `{module_name(module_path)}`; plain `def test_...` functions."
    else:
        ask = f"Write unit tests for {what} with the usual test framework for {language}."
    return _chat(f"`{module_path}`:\n\n```{language}\n{_ended(module_source)}```\n\n{ask} Reply with one ```{language} block.")


def from_comment_messages(comment: str, context: str, language: str = "python") -> list[Message]:
    """Chat messages asking for the code a comment describes, given the code around it."""
    return _chat(
        f"Here is a {language} file up to a comment that describes code not yet written:\n\n```{language}\n"
        f"{_ended(context)}```\n\nWrite the code the comment describes:\n{comment.strip()}\n\n"
        f"Reply with only that code in one ```{language} block, indented to follow the comment."
    )


def parse_code_block(text: str) -> str:
    """The first fenced code block of a markdown answer (its text if it has none), ending with a newline."""
    match = re.search(r"```[^\n`]*\n(.*?)(?:```|$)", text, re.DOTALL)
    code = (match.group(1) if match else text).rstrip()
    return code + "\n" if code.strip() else ""


def _chat(user: str) -> list[Message]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


# -- Python source helpers ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Definition:
    header: str  # decorators + `def f(x):` / `class C(B):`
    indent: str  # the body's indentation
    docstring: str | None  # text between the quotes of its docstring, as written
    body: str  # the body after the docstring, each line ending with a newline


def parses(code: str) -> bool:
    """Whether `code` is Python without syntax errors (tree-sitter)."""
    return bool(syntax.parses("python", code))


def _definition_parts(code: str) -> _Definition | None:
    """A dedented Python function or class split into header, docstring and body; None if `code` is not one."""
    code = textwrap.dedent(code)
    data = utf8(code)
    roots = [n for n in parse("python", code).root_node.named_children if n.type != "comment"]
    if len(roots) != 1:
        return None
    outer = roots[0]
    node = unwrap(outer, "python")
    body = node.child_by_field_name("body")
    if node.type not in ("function_definition", "class_definition") or body is None or outer.has_error:
        return None
    colon = header_colon(node)
    if colon is None:
        return None
    header = data[outer.start_byte:colon.end_byte].decode("utf-8", "surrogatepass")
    header_end_line = code.count("\n", 0, char_offset(data, colon.end_byte))
    statements = body.named_children
    docstring = None
    first = statements[0] if statements else None
    if first is not None and is_string_statement(first):
        docstring = _string_content(first.named_children[0])
        rest_start = next_line(code, char_offset(data, first.end_byte)) if len(statements) == 1 or statements[1].start_point.row > first.end_point.row else char_offset(data, statements[1].start_byte)
    else:
        rest_start = None
    body_row = body.start_point.row
    if body_row == header_end_line:  # `def f(x): return x`: the body moves to its own line
        indent = "    "
        start = rest_start if rest_start is not None else char_offset(data, body.start_byte)
        rest = code[start:].strip()
        body_text = "".join(indent + line + "\n" for line in rest.split("\n")) if rest else ""
    else:
        body_line = line_start(code, char_offset(data, body.start_byte))
        indent = code[body_line:char_offset(data, body.start_byte)]
        indent = indent if not indent.strip() else "    "
        start = rest_start if rest_start is not None else body_line
        body_text = code[start:]
    if docstring is not None and not body_text.strip():
        body_text = ""
    return _Definition(header, indent, docstring, _ended(body_text.rstrip()) if body_text.strip() else "")


def _string_content(string: tree_sitter.Node) -> str | None:
    """The text between a string literal's quotes; None for f-strings, byte strings and concatenations."""
    start = next((c for c in string.children if c.type == "string_start"), None)
    end = next((c for c in reversed(string.children) if c.type == "string_end"), None)
    if start is None or end is None or any(c.type == "interpolation" for c in string.children):
        return None
    opener = start.text.decode()
    if "b" in opener.lower() or "f" in opener.lower():
        return None
    return string.text.decode("utf-8", "replace")[len(opener): len(string.text.decode("utf-8", "replace")) - len(end.text.decode())]


def _parsing_head(code: str) -> str:
    """The longest head of `code` made of whole top-level statements that parses without errors."""
    if parses(code):
        return code
    tree = parse("python", code)
    data = utf8(code)
    ends = [next_line(code, char_offset(data, n.end_byte)) for n in tree.root_node.children if not n.has_error and n.type != "ERROR"]
    for end in sorted(set(ends), reverse=True):
        if parses(code[:end]):
            return code[:end]
    lines = code.split("\n")
    for n in range(len(lines) - 1, 0, -1):  # no clean statement boundary: drop lines from the end
        head = "\n".join(lines[:n]) + "\n"
        if parses(head):
            return head
    return ""


def _ended(text: str) -> str:
    return text if not text or text.endswith("\n") else text + "\n"
