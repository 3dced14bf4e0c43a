"""Quality of model-written Python: lint findings (ruff), security findings (bandit) and cyclomatic complexity (radon).

An action result is compared with the code it replaces (`added_findings`): the findings in the document with the
result that the document without it does not have (by rule and message, not line) are what the result adds, and
the action says so. `eval-tasks` reports all three for generated code and its reference (`measure`).

Lint runs ruff (installed with midline's `test` extra) as a subprocess on the code through stdin, `--isolated`
(no configuration files) with ruff's own default rule set, `RUFF_RULES`: syntax errors, undefined and unused names,
imports not at the top, comparisons with None/True (E4, E7, E9, F); where ruff is not installed there is no lint.
Security is bandit's every finding, through `security.scan` (in process). Complexity is radon's (the `train`
extra): the sum of the cyclomatic complexity of the code's top-level functions and classes, None without radon.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
import textwrap
from collections import Counter
from dataclasses import dataclass

from . import security

log = logging.getLogger(__name__)

RUFF_RULES = ("E4", "E7", "E9", "F")  # ruff's default rule set (`ruff check` with no configuration)
LINT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Finding:
    """One finding: its tool's rule code, message and 1-based line."""

    tool: str  # "ruff" or "bandit"
    code: str  # F841, B307
    message: str
    line: int

    def __str__(self) -> str:
        return f"{self.code} {self.message} (line {self.line})"


def ruff_available() -> bool:
    return importlib.util.find_spec("ruff") is not None


def lint(source: str) -> list[Finding] | None:
    """ruff's findings in the Python `source` (`RUFF_RULES`), by line; None where ruff is not installed or fails."""
    if not ruff_available():
        return None
    command = [sys.executable, "-m", "ruff", "check", "--isolated", "--select", ",".join(RUFF_RULES),
               "--output-format", "json", "--no-cache", "--exit-zero", "--stdin-filename", "code.py", "-"]
    try:
        done = subprocess.run(command, input=source, capture_output=True, text=True, timeout=LINT_TIMEOUT_S)
        found = json.loads(done.stdout or "[]")
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
        log.warning("ruff failed: %s", type(exc).__name__)
        return None
    out = [Finding("ruff", f.get("code") or "E999", f.get("message", ""), f.get("location", {}).get("row", 0))
           for f in found]
    return sorted(out, key=lambda f: (f.line, f.code))


def security_findings(source: str, language: str = "python") -> list[Finding]:
    """bandit's findings in `source` (every one, not only those that block: `security.Finding.blocks`)."""
    return [Finding("bandit", f.test_id, f.message, f.line) for f in security.scan(source, language)]


def complexity(source: str) -> int | None:
    """radon's cyclomatic complexity of `source`: the sum over its top-level functions and classes; None without
    radon or where it does not parse."""
    try:
        from radon.complexity import cc_visit
    except ImportError:
        return None
    try:
        return sum(block.complexity for block in cc_visit(source))
    except (SyntaxError, ValueError, RecursionError):
        return None


def added(before: list[Finding], after: list[Finding]) -> list[Finding]:
    """The findings of `after` that `before` does not have, counted by tool, rule and message (lines move)."""
    have = Counter((f.tool, f.code, f.message) for f in before)
    out = []
    for finding in after:
        key = (finding.tool, finding.code, finding.message)
        if have[key]:
            have[key] -= 1
        else:
            out.append(finding)
    return out


def added_findings(before: str, after: str, language: str) -> list[Finding]:
    """The lint and security findings the document `after` has and `before` has not (Python; else none)."""
    if language != "python":
        return []
    lint_before, lint_after = lint(before), lint(after)
    found = added(lint_before or [], lint_after or []) if lint_after is not None else []
    return found + added(security_findings(before), security_findings(after))


def describe(found: list[Finding], most: int = 3) -> str | None:
    """`adds 1 lint finding (F841 ...) and 1 security finding (B307 ...)`; None for none."""
    parts = []
    for tool, word in (("ruff", "lint"), ("bandit", "security")):
        mine = [f for f in found if f.tool == tool]
        if mine:
            shown = "; ".join(str(f) for f in mine[:most]) + ("; ..." if len(mine) > most else "")
            parts.append(f"{len(mine)} {word} finding{'s' * (len(mine) != 1)} ({shown})")
    return "adds " + " and ".join(parts) if parts else None


def measure(code: str, module: str | None = None) -> dict:
    """eval-tasks' figures for `code` (a function): its complexity, and its lint and security findings, counted on its
    own lines of `module` (the module with `code` in place, so that names it imports are known), else of `code`
    alone; lint None without ruff."""
    where = module if module is not None and code.rstrip() in module else code
    first = where[: where.index(code.rstrip())].count("\n") + 1
    last = first + code.rstrip().count("\n")

    def inside(found: list[Finding]) -> int:
        return sum(first <= f.line <= last for f in found)

    found = lint(where)
    return {"complexity": complexity(textwrap.dedent(code)), "lint": None if found is None else inside(found),
            "security": inside(security_findings(where))}
