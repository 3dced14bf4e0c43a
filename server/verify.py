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
            _say(report.nodeid, report.outcome)

    def pytest_collectreport(self, report):
        if report.failed:
            _say("", "collect-failed")


args = ["-q", "-p", "no:cacheprovider", "-p", "no:logging", "--rootdir", ".", *{node_ids!r}]
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
    state = sandbox_state()
    if not state.available:
        return not_run(test_source, state.detail)
    outcomes: dict[str, bool] = {}
    remaining = list(tests)
    runs = 0
    while remaining and runs <= len(tests):
        runs += 1
        report(f"running {len(remaining)} generated test{'s' * (len(remaining) != 1)} in the sandbox")
        mark = f"@@midline-{secrets.token_hex(8)}@@ "
        node_ids = [f"{test_file}::{name.replace('.', '::')}" for name in remaining]
        code = RUNNER.format(paths=list(paths), per_test=per_test_s, mark=mark, node_ids=node_ids)
        try:
            result = run_python(
                code,
                files={**files, test_file: test_source},
                read_only=list(paths),
                timeout_s=timeout_s,
                memory_mb=memory_mb,
                max_processes=64,
            )
        except SandboxUnavailable as e:
            return not_run(test_source, str(e))
        seen: dict[str, bool] = {}
        for line in result.stdout.split("\n"):
            if not line.startswith(mark):
                continue
            node_id, outcome = json.loads(line[len(mark):])
            if outcome == "collect-failed":
                return Verified(
                    keep_tests(test_source, []),
                    failed=tests,
                    runs=runs,
                    note="the generated test module does not import",
                )
            name = node_id.split("::", 1)[-1].split("[", 1)[0].replace("::", ".")
            seen[name] = seen.get(name, True) and outcome == "passed"
        outcomes.update(seen)
        pending = [name for name in remaining if name not in seen]
        if not seen and result.returncode in (2, 3, 4):  # pytest itself failed (interrupted, internal or usage error)
            outcomes.update({name: False for name in pending})
            tail = (result.stdout + result.stderr).strip().split("\n")[-1:]
            return Verified(
                keep_tests(test_source, []),
                failed=tests,
                runs=runs,
                note=f"pytest could not run: {tail[0] if tail else '?'}",
            )
        if pending:  # the run ended (killed, or the test exited the interpreter) during pending[0]
            outcomes[pending[0]] = False
        remaining = pending[1:]
    passed = [name for name in tests if outcomes.get(name)]
    return Verified(
        keep_tests(test_source, passed), passed=passed, failed=[n for n in tests if n not in passed], runs=runs
    )


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
