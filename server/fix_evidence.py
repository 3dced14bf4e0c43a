"""The evidence a Python fix is judged by, and the judgement: run it on the current code and on the fix.

Evidence for a function or class (`collect`): the doctests in its docstrings, the pytest tests of the workspace
that name it (test files `test_*.py` / `*_test.py` under the workspace folders, read from open documents first;
a test counts when its source names the function), and the request's diagnostics that can be reproduced: a
message `CALL returned X, expected Y` or `assert EXPR` whose expression names the function. The doctests and the
reproductions become one generated pytest module; the workspace's test files are copied as they are.

`judge` compares the two sandboxed runs (`verify.run_tests`): a fix is offered only if every test that passed
before still passes and at least one that failed now passes; with no evidence at all it is offered marked
unverified, and nothing is run.
"""

from __future__ import annotations

import ast
import os
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .files import SKIP_DIRS
from .verify import TestRun, node_id, test_functions

GENERATED = "test_midline_evidence.py"  # the generated module of doctests and reproductions, in the work dir
MAX_TEST_FILES = 20  # workspace test files naming the function, at most
MAX_WORKSPACE_TESTS = 40  # their tests, at most
MAX_WALKED = 5000  # files looked at by name while finding test files, per folder
_TEST_FILE = re.compile(r"^(test_\w+|\w+_test)\.py$")
_RETURNED = re.compile(r"^(?P<call>.+?) returned (?P<got>.+?), expected (?P<want>.+)$")
_ASSERT = re.compile(r"^(?:AssertionError:\s*)?assert (?P<expr>.+)$")
_HEADER = '''\
"""midline's evidence for a fix: the function's doctests and reproduced diagnostics."""
import ast
import doctest
import importlib

_module = importlib.import_module({module!r})


def _doctest(text, name):
    test = doctest.DocTestParser().get_doctest(text, dict(vars(_module)), name, _module.__file__, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    said = []
    runner.run(test, out=said.append)
    assert not runner.failures, "".join(said)[-2000:]


def _reproduce(expression):
    namespace = dict(vars(_module))
    tree = ast.parse(expression, mode="eval").body
    if isinstance(tree, ast.Compare) and len(tree.ops) == 1 and isinstance(tree.ops[0], ast.Eq):
        call, want = ast.unparse(tree.left), eval(ast.unparse(tree.comparators[0]), namespace)
        got = eval(call, namespace)
        assert got == want, f"{{call}} returned {{got!r}}, expected {{want!r}}"
    else:
        assert eval(expression, namespace), expression
'''


@dataclass
class Evidence:
    """Tests to judge a fix by: test modules to write (name -> source) and the node ids to run, with what they are."""

    test_files: dict[str, str] = field(default_factory=dict)
    tests: list[str] = field(default_factory=list)  # node ids
    doctests: int = 0
    workspace: int = 0
    reproductions: int = 0
    examples: int = 0  # a comment's input/output examples (`examples.py`), for code from a comment
    paths: list[str] = field(default_factory=list)  # the workspace test files' folders (for their own imports)

    def __bool__(self) -> bool:
        return bool(self.tests)

    def describe(self) -> str:
        """`2 doctests, 3 workspace tests and 1 reproduced diagnostic`."""
        parts = [_count(n, word) for n, word in ((self.doctests, "doctest"), (self.workspace, "workspace test"),
                                                 (self.reproductions, "reproduced diagnostic"),
                                                 (self.examples, "example")) if n]
        return " and ".join([", ".join(parts[:-1]), parts[-1]] if len(parts) > 1 else parts)


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


# -- collecting -----------------------------------------------------------------------------------


def collect(
    code: str,
    name: str,
    module: str,
    diagnostics: Sequence[str],
    folders: Sequence[Path],
    read: Callable[[Path], str | None],
    exclude: Path | None = None,
) -> Evidence:
    """The evidence for the function or class `name` whose source is `code`, in the module imported as `module`;
    `diagnostics` as the fix prompt lists them (`line 3: message`); test files under `folders` (not `exclude`,
    the module itself), read with `read`."""
    found = doctests(code)
    expressions = reproductions(diagnostics, name)
    evidence = generated(module, {"doctest": found, "reproduction": expressions})
    evidence.doctests, evidence.reproductions = len(found), len(expressions)
    for i, (path, source, names) in enumerate(workspace_tests(name, folders, read, exclude)):
        copied = f"test_midline_{i}_{path.name}"
        evidence.test_files[copied] = source
        evidence.tests += [node_id(copied, test) for test in names]
        evidence.workspace += len(names)
        evidence.paths.append(str(path.parent))
    evidence.paths = list(dict.fromkeys(evidence.paths))
    return evidence


def generated(module: str, tests: dict[str, Sequence[tuple[str, str] | str]]) -> Evidence:
    """Evidence of one generated test module (`GENERATED`) for the module imported as `module`: a test
    `test_<kind>_<i>` per item of each kind, a doctest for a (name, text) pair, `_reproduce` for an expression."""
    evidence, written = Evidence(), []
    for kind, items in tests.items():
        for i, item in enumerate(items):
            call = f"_doctest({item[1]!r}, {item[0]!r})" if isinstance(item, tuple) else f"_reproduce({item!r})"
            written.append(f"def test_{kind}_{i}():\n    {call}\n")
    if written:
        evidence.test_files[GENERATED] = _HEADER.format(module=module) + "".join("\n\n" + w for w in written)
        evidence.tests += [node_id(GENERATED, t.name) for t in test_functions(evidence.test_files[GENERATED])]
    return evidence


def doctests(code: str) -> list[tuple[str, str]]:
    """(qualified name, docstring) of each docstring with `>>>` examples in `code` (a function or class)."""
    try:
        tree = ast.parse(textwrap.dedent(code))
    except (SyntaxError, ValueError, RecursionError):
        return []
    out: list[tuple[str, str]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                qualified = prefix + child.name
                text = ast.get_docstring(child, clean=False)
                if text and ">>>" in text:
                    out.append((qualified, text))
                visit(child, qualified + ".")

    visit(tree, "")
    return out


def reproductions(diagnostics: Sequence[str], name: str) -> list[str]:
    """Expressions that are true when the diagnostics are gone: `CALL returned X, expected Y` is `(CALL) == (Y)`,
    `assert EXPR` is `EXPR`; only Python expressions that name `name`."""
    out = []
    for line in diagnostics:
        message = re.sub(r"^line \d+:\s*", "", line.strip())
        if match := _RETURNED.match(message):
            expression = f"({match['call']}) == ({match['want']})"
        elif match := _ASSERT.match(message):
            expression = match["expr"]
        else:
            continue
        if _names(expression, name) and expression not in out:
            out.append(expression)
    return out


def _names(expression: str, name: str) -> bool:
    """Whether `expression` is a Python expression that uses `name` (a name or an attribute)."""
    try:
        tree = ast.parse(expression, mode="eval")
    except (SyntaxError, ValueError, RecursionError):
        return False
    return any((isinstance(n, ast.Name) and n.id == name) or (isinstance(n, ast.Attribute) and n.attr == name)
               for n in ast.walk(tree))


def workspace_tests(
    name: str, folders: Sequence[Path], read: Callable[[Path], str | None], exclude: Path | None = None
) -> list[tuple[Path, str, list[str]]]:
    """The workspace's test files whose tests name `name`: (path, source, the names of those tests), at most
    `MAX_TEST_FILES` files and `MAX_WORKSPACE_TESTS` tests."""
    word = re.compile(rf"\b{re.escape(name)}\b")
    out: list[tuple[Path, str, list[str]]] = []
    count = 0
    for path in find_test_files(folders):
        if len(out) >= MAX_TEST_FILES or count >= MAX_WORKSPACE_TESTS:
            break
        if exclude is not None and os.path.realpath(path) == os.path.realpath(exclude):
            continue
        source = read(path)
        if not source or not word.search(source):
            continue
        names = [t.name for t in test_functions(source) if word.search(source[t.start : t.end])]
        names = names[: MAX_WORKSPACE_TESTS - count]
        if names:
            out.append((path, source, names))
            count += len(names)
    return out


def find_test_files(folders: Sequence[Path]) -> list[Path]:
    """Python test files (`test_*.py`, `*_test.py`) under the folders, outside hidden and build folders, sorted."""
    found: dict[str, Path] = {}
    for folder in folders:
        walked = 0
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in SKIP_DIRS)
            walked += len(filenames)
            for filename in sorted(filenames):
                if _TEST_FILE.match(filename):
                    path = Path(dirpath) / filename
                    found.setdefault(os.path.realpath(path), path)
            if walked >= MAX_WALKED:
                break
    return sorted(found.values())




# -- judging --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """Whether to offer a fix, and what was checked: the title's note, or why it is not offered."""

    offered: bool
    note: str


def judge(evidence: Evidence, before: TestRun | None, after: TestRun | None) -> Verdict:
    """Offer a fix only if it passes every test the current code passes and passes one it fails; with no
    evidence, or no sandbox, or tests that cannot run on the current code, offer it marked unverified."""
    if not evidence:
        return Verdict(True, "unverified: no tests found")
    if before is None or after is None or not before.ran or not after.ran:
        why = next((run.note for run in (before, after) if run is not None and run.note), "")
        return Verdict(True, f"unverified: tests not run ({why or 'no sandbox'})")
    tests = evidence.tests
    if before.note or all(n.split("::", 1)[0] in before.uncollected for n in tests):
        return Verdict(True, f"unverified: the tests do not run on the current code ({before.note or 'import'})")
    passed_before, passed_after = set(before.passed(tests)), set(after.passed(tests))
    broken = [n for n in tests if n in passed_before and n not in passed_after]
    fixed = [n for n in tests if n not in passed_before and n in passed_after]
    if broken:
        return Verdict(False, f"it breaks {_count(len(broken), 'test')} that passed before ({_shown(broken)})")
    if len(passed_before) == len(tests):
        return Verdict(False, f"the current code passes all {_count(len(tests), 'test')} ({evidence.describe()})")
    if not fixed:
        failing = len(tests) - len(passed_before)
        fail = "fails" if failing == 1 else "fail"
        return Verdict(False, f"it still fails the {_count(failing, 'test')} that {fail} now ({evidence.describe()})")
    note = f"passes {_count(len(fixed), 'test')} that failed before"
    kept = len(passed_before)
    return Verdict(True, note + (f" and the {kept} that passed" if kept else ""))


_GENERATED_NAMES = {"doctest": "a doctest", "reproduction": "the diagnostic", "example": "an example"}


def _shown(node_ids: Sequence[str], most: int = 3) -> str:
    """Test names for a message: `test_mean, test_spread` (the evidence module's generated names explained)."""
    names = [n.split("::", 1)[-1].replace("::", ".") for n in node_ids[:most]]
    names = [re.sub(r"^test_(doctest|reproduction|example)_\d+$", lambda m: _GENERATED_NAMES[m[1]], n) for n in names]
    return ", ".join(dict.fromkeys(names)) + (", ..." if len(node_ids) > most else "")


def failures(evidence: Evidence, run: TestRun | None, most: int = 3) -> list[str]:
    """What failed in a run of the evidence, one line each for a prompt: `test_spread failed: test_stats.py:9:
    assert 1.41 == 1.0`, `an example failed: add(2, 3) returned 6, expected 5` (the generated module's own
    frame left out); at most `most`."""
    if run is None:
        return []
    out: list[str] = []
    for node in evidence.tests:
        if run.outcomes.get(node, False) or len(out) >= most:
            continue
        message = run.messages.get(node, "")
        if message.startswith(GENERATED + ":"):
            message = message.split(": ", 1)[-1]
        out.append(f"{_shown([node])} failed" + (f": {message}" if message else ""))
    return out
