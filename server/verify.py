"""Run generated tests against the current code in the sandbox, and keep the ones that pass.

`verify_tests` writes the module under test (the editor's text, saved or not) and the test file into the
work dir of `midline.server.sandbox.run_python` (kernel isolation: no network, no other processes, a
read-only view of the Python environment and the workspace; time, memory and disk limits) and runs
pytest there with a small plugin that prints each test's outcome as it finishes and interrupts a test
at `per_test_s`. A run killed as a whole (a hang in native code, the memory limit) is retried without
the test that was running, so one bad test costs only itself. Where the sandbox is not available,
nothing is run: the tests come back marked unverified, with the reason.

The pytest-module surgery is here too: `test_functions` names the tests of a module as pytest does
(`test_x`, `TestCls.test_x`), `keep_tests` cuts a module down to some of them (the passing ones; SFT's
shrinking of a tests example).
"""

from __future__ import annotations

import importlib.util
import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Callable, Sequence

from midline.model.syntax import char_offset, line_start, next_line, node_name, parse, unwrap, utf8
from midline.server.sandbox import SandboxUnavailable, run_python, sandbox_state

UNVERIFIED = "unverified"  # marks generated tests that were not run (where there is no sandbox, other languages)

RUNNER = """\
import json, os, signal, sys
os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
sys.path[1:1] = {paths!r}
import pytest


def _too_long(signum, frame):
    raise TimeoutError("the test ran past its time limit ({per_test}s)")


def _why(report):
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is None:
        return str(report.longrepr)[-600:]
    return "%s:%d: %s" % (os.path.basename(str(crash.path)), crash.lineno, crash.message[:1200])


def _say(*fields):
    sys.__stdout__.write("\\n" + {mark!r} + json.dumps(fields) + "\\n")
    sys.__stdout__.flush()


class _Report:
    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item):
        signal.signal(signal.SIGALRM, _too_long)
        signal.setitimer(signal.ITIMER_REAL, {per_test})
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or report.outcome != "passed":
            _say(report.nodeid, report.outcome, _why(report) if report.failed else "")

    def pytest_collectreport(self, report):
        if report.failed:
            _say(report.nodeid, "collect-failed", _why(report))


args = ["-q", "-p", "no:cacheprovider", "-p", "no:logging", "--rootdir", ".", "--continue-on-collection-errors",
        *{node_ids!r}]
sys.exit(pytest.main(args, plugins=[_Report()]))
"""


@dataclass
class Verified:
    """Generated tests after a sandboxed run: `source` keeps the passing ones."""

    source: str
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    runs: int = 0
    note: str = ""  # why nothing could be verified, if so
    ran: bool = True  # False: not run at all (no sandbox here); `source` is then marked unverified
    messages: dict[str, str] = field(default_factory=dict)  # why a test failed (`failure_message`), by test name

    def failures(self, most: int = 3) -> list[str]:
        """What failed, one line each for a prompt: `test_add failed: test_calc.py:7: assert 4 == 5`."""
        lines = [f"{name} failed" + (f": {self.messages[name]}" if name in self.messages else "")
                 for name in self.failed[:most]]
        return [self.note] if self.note else lines


def not_run(test_source: str, reason: str) -> Verified:
    """The tests as written, marked unverified: the sandbox could not run them (`reason`)."""
    note = f"not run: {reason}"
    header = f"# midline: generated tests, {UNVERIFIED} ({note})\n"
    return Verified(header + test_source, note=note, ran=False)


def pytest_available() -> bool:
    return importlib.util.find_spec("pytest") is not None


def verify_tests(
    test_source: str,
    *,
    test_file: str,
    files: dict[str, str],
    paths: Sequence[str] = (),
    timeout_s: float = 30.0,
    per_test_s: float = 5.0,
    memory_mb: int = 1024,
    report: Callable[[str], None] = lambda message: None,
) -> Verified:
    """Run the tests of `test_source` (written to `test_file`, with `files` beside it: the module under
    test, its packages' `__init__.py`) in the sandbox; `paths` go on `sys.path` after the work dir (the
    workspace, for the module's own imports; visible read-only). Returns the source with only the passing
    tests, or all of them marked unverified (`ran` False) where the sandbox is not available."""
    tests = [t.name for t in test_functions(test_source)]
    if not tests:
        return Verified(keep_tests(test_source, []), note="the model wrote no complete tests")
    if not pytest_available():
        return Verified(
            test_source, note="pytest is not installed in midline's Python environment, so the tests were not run"
        )
    node_ids = [node_id(test_file, name) for name in tests]
    run = run_tests(
        {test_file: test_source}, node_ids, files=files, paths=paths, timeout_s=timeout_s, per_test_s=per_test_s,
        memory_mb=memory_mb, report=lambda n: report(f"running {n} generated test{'s' * (n != 1)} in the sandbox"),
    )
    if not run.ran:
        return not_run(test_source, run.note)
    if run.uncollected:
        why = next(iter(run.messages.values()), "")
        return Verified(keep_tests(test_source, []), failed=tests, runs=run.runs,
                        note="the generated test module does not import" + (f": {why}" if why else ""))
    if run.note:  # pytest itself could not run
        return Verified(keep_tests(test_source, []), failed=tests, runs=run.runs, note=run.note)
    passed = [name for name, node in zip(tests, node_ids) if run.outcomes.get(node)]
    messages = {name: run.messages[node] for name, node in zip(tests, node_ids) if node in run.messages}
    return Verified(
        keep_tests(test_source, passed), passed=passed, failed=[n for n in tests if n not in passed], runs=run.runs,
        messages=messages,
    )


def node_id(test_file: str, name: str) -> str:
    """The pytest node id of the test `name` (`test_x`, `TestCls.test_x`) in `test_file`."""
    return f"{test_file}::{name.replace('.', '::')}"


@dataclass
class TestRun:
    """How tests ran in the sandbox: passed or not, by node id (parametrized cases together)."""

    __test__ = False  # not a pytest class

    outcomes: dict[str, bool] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)  # why a test failed: `failure_message`, by node id
    uncollected: list[str] = field(default_factory=list)  # test files that did not import
    runs: int = 0
    note: str = ""  # pytest could not run, or (`ran` False) why nothing ran
    ran: bool = True  # False: the sandbox is not available here

    def passed(self, node_ids: Sequence[str]) -> list[str]:
        return [n for n in node_ids if self.outcomes.get(n)]


def run_tests(
    test_files: dict[str, str],
    node_ids: Sequence[str],
    *,
    files: dict[str, str],
    paths: Sequence[str] = (),
    timeout_s: float = 30.0,
    per_test_s: float = 5.0,
    memory_mb: int = 1024,
    report: Callable[[int], None] = lambda remaining: None,
) -> TestRun:
    """Run the tests `node_ids` (`node_id`) of `test_files` (name -> source), with `files` beside them, in one
    sandboxed pytest run, and again without the test that was running when a run was killed (a hang in native
    code, the memory limit, an exit). A test of a file that does not import fails. `report` gets the number of
    tests each run has left."""
    state = sandbox_state()
    if not state.available:
        return TestRun(note=state.detail, ran=False)
    out = TestRun()
    remaining = list(node_ids)
    while remaining and out.runs <= len(node_ids):
        out.runs += 1
        report(len(remaining))
        mark = f"@@midline-{secrets.token_hex(8)}@@ "
        code = RUNNER.format(paths=list(paths), per_test=per_test_s, mark=mark, node_ids=remaining)
        try:
            result = run_python(
                code,
                files={**files, **test_files},
                read_only=list(paths),
                timeout_s=timeout_s,
                memory_mb=memory_mb,
                max_processes=64,
            )
        except SandboxUnavailable as e:
            return TestRun(note=str(e), ran=False)
        seen: dict[str, bool] = {}
        for line in result.stdout.split("\n"):
            if not line.startswith(mark):
                continue
            node, outcome, why = json.loads(line[len(mark):])
            if outcome == "collect-failed":
                out.uncollected.append(node)
                seen.update({n: False for n in remaining if n.split("::", 1)[0] == node})
                out.messages.update({n: failure_message(why) for n in remaining if n.split("::", 1)[0] == node})
                continue
            node = node.split("[", 1)[0]
            seen[node] = seen.get(node, True) and outcome == "passed"
            if why and node not in out.messages:
                out.messages[node] = failure_message(why)
        out.outcomes.update(seen)
        pending = [n for n in remaining if n not in seen]
        if not seen and result.returncode in (2, 3, 4):  # pytest itself failed (interrupted, internal or usage error)
            out.outcomes.update({n: False for n in pending})
            tail = (result.stdout + result.stderr).strip().split("\n")[-1:]
            out.note = f"pytest could not run: {tail[0] if tail else '?'}"
            return out
        if pending:  # the run ended (killed, or the test exited the interpreter) during pending[0]
            out.outcomes[pending[0]] = False
            out.messages[pending[0]] = f"the test run ended: {result.killed_reason or 'the test exited'}"
        remaining = pending[1:]
    return out


def failure_message(why: str, limit: int = 300) -> str:
    """A test's failure as one line for a prompt or a message: the last frame's `file:line: message`, pytest's
    `assert` explanation and a doctest's report folded, the sandbox's paths and doctest's rulers left out."""
    head, _, message = why.partition(": ")
    if message.startswith("AssertionError: ") and "\nassert " in message:  # `assert x, why`: the why alone
        message = message[len("AssertionError: "):].split("\nassert ", 1)[0]
    lines = [line.strip() for line in message.split("\n")]
    lines = [line for line in lines if line and not line.startswith(("*****", "File \"", "+"))]
    text = " ".join(" ".join(lines).split())
    text = f"{head}: {text}" if head and text else text or why.strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- the tests of a test module -------------------------------------------------------------------


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
            end = next_line(source, char_offset(data, node.end_byte))
            out.append(TestFunction(name, char_offset(data, node.start_byte), end))
        elif (
            inner.type == "class_definition" and name.startswith("Test") and (body := inner.child_by_field_name("body"))
        ):
            for member in body.named_children:
                method = unwrap(member, "python")
                if method.type == "function_definition" and node_name(method, "python").startswith("test"):
                    start = char_offset(data, member.start_byte)
                    start = line_start(source, start)
                    end = next_line(source, char_offset(data, member.end_byte))
                    out.append(TestFunction(f"{name}.{node_name(method, 'python')}", start, end))
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
