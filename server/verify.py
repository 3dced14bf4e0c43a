"""Run generated tests against the current code in the sandbox, and keep the ones that pass.

`verify_tests` writes the module under test (the editor's text, saved or not) and the test file into the
work dir of `midline.server.sandbox.run_python` (kernel isolation: no network, no other processes, a
read-only view of the Python environment and the workspace; time, memory and disk limits) and runs
pytest there with a small plugin that prints each test's outcome as it finishes and interrupts a test
at `per_test_s`. A run killed as a whole (a hang in native code, the memory limit) is retried without
the test that was running, so one bad test costs only itself. Where the sandbox is not available,
nothing is run: the tests come back marked unverified, with the reason.
"""

from __future__ import annotations

import importlib.util
import json
import secrets
from dataclasses import dataclass, field
from typing import Callable

from midline.model import tasks
from midline.server.sandbox import SandboxUnavailable, run_python, sandbox_state

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


sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "-p", "no:logging", "--rootdir", ".", *{node_ids!r}], plugins=[_Report()]))
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
    header = f"# midline: generated tests, {tasks.UNVERIFIED} ({note})\n"
    return Verified(header + test_source, note=note, ran=False)


def pytest_available() -> bool:
    return importlib.util.find_spec("pytest") is not None


def verify_tests(
    test_source: str,
    *,
    test_file: str,
    files: dict[str, str],
    paths: list[str] = (),
    timeout_s: float = 30.0,
    per_test_s: float = 5.0,
    memory_mb: int = 1024,
    report: Callable[[str], None] = lambda message: None,
) -> Verified:
    """Run the tests of `test_source` (written to `test_file`, with `files` beside it: the module under
    test, its packages' `__init__.py`) in the sandbox; `paths` go on `sys.path` after the work dir (the
    workspace, for the module's own imports; visible read-only). Returns the source with only the passing
    tests, or all of them marked unverified (`ran` False) where the sandbox is not available."""
    tests = [t.name for t in tasks.test_functions(test_source)]
    if not tests:
        return Verified(tasks.keep_tests(test_source, []), note="the model wrote no complete tests")
    if not pytest_available():
        return Verified(test_source, note="pytest is not installed in midline's Python environment, so the tests were not run")
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
            result = run_python(code, files={**files, test_file: test_source}, read_only=list(paths), timeout_s=timeout_s,
                                memory_mb=memory_mb, max_processes=64)
        except SandboxUnavailable as e:
            return not_run(test_source, str(e))
        seen: dict[str, bool] = {}
        for line in result.stdout.split("\n"):
            if not line.startswith(mark):
                continue
            node_id, outcome = json.loads(line[len(mark):])
            if outcome == "collect-failed":
                return Verified(tasks.keep_tests(test_source, []), failed=tests, runs=runs, note="the generated test module does not import")
            name = node_id.split("::", 1)[-1].split("[", 1)[0].replace("::", ".")
            seen[name] = seen.get(name, True) and outcome == "passed"
        outcomes.update(seen)
        pending = [name for name in remaining if name not in seen]
        if not seen and result.returncode in (2, 3, 4):  # pytest itself failed (interrupted, internal or usage error)
            outcomes.update({name: False for name in pending})
            tail = (result.stdout + result.stderr).strip().split("\n")[-1:]
            return Verified(tasks.keep_tests(test_source, []), failed=tests, runs=runs, note=f"pytest could not run: {tail[0] if tail else '?'}")
        if pending:  # the run ended (killed, or the test exited the interpreter) during pending[0]
            outcomes[pending[0]] = False
        remaining = pending[1:]
    passed = [name for name in tests if outcomes.get(name)]
    return Verified(tasks.keep_tests(test_source, passed), passed=passed, failed=[n for n in tests if n not in passed], runs=runs)
