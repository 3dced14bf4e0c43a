"""Security scan of model-written Python before it is shown or applied: bandit's checks, run in process.

`scan` parses the code in memory and runs bandit's node visitor over it with every bandit test loaded once per
process: no files, no subprocess. Other languages are not scanned. `Finding.blocks` is the policy (`HIDES`):
a completion with a blocking finding is hidden (`hides`), and an action result gets a diagnostic-style warning
(`warning_for`).

A completion is a fragment of a line, or of a block, so it is scanned in context: the lines it makes (the
cursor line's text before it + the fragment + the rest of its last line), dedented, below the import
statements of the text before it (bandit resolves `from subprocess import call`, and sees `yaml.load` only
where `yaml` is imported). Where those lines do not parse as they are, `if True:` headers open the indentation
levels the fragment dedents to, and an open block at its end gets a `pass`; where they still do not parse
(brackets left open), each line that parses alone is scanned. Findings on the imports are dropped.
"""

from __future__ import annotations

import ast
import functools
import io
import logging
import re
import textwrap
import warnings
from dataclasses import dataclass
from typing import Any

from midline.model import languages

_RANK = ("UNDEFINED", "LOW", "MEDIUM", "HIGH")  # bandit's severity and confidence levels, least first

# The policy: a finding blocks when bandit is at least MEDIUM confident of it (its LOW-confidence findings are
# guesses) and it is at least as severe as its test's entry here; tests not listed block at HIGH. The classes
# listed below HIGH are the ones a suggestion must never carry: bandit rates them lower because in reviewed
# code they are often deliberate, but a suggestion is unreviewed code one Tab away from the file.
HIDES: dict[str, str] = {
    "B602": "HIGH",  # subprocess with shell=True and a command built at run time (a literal command is LOW)
    "B605": "HIGH",  # os.system, os.popen, ... (a shell) with a command built at run time
    "B307": "MEDIUM",  # eval
    "B102": "MEDIUM",  # exec, eval's twin
    "B303": "MEDIUM",  # MD2, MD4, MD5 or SHA1 from pycrypto or cryptography
    "B324": "HIGH",  # hashlib's MD4, MD5 or SHA1 for security (usedforsecurity=False is not reported)
    "B105": "LOW",  # hard-coded password: a string assigned to, or compared with, a password name...
    "B106": "LOW",  # ...passed as a password argument...
    "B107": "LOW",  # ...or a password parameter's default (see _PASSWORD_NAME)
    "B506": "MEDIUM",  # yaml.load without a safe loader
    "B301": "MEDIUM",  # pickle, dill, shelve, jsonpickle or pandas.read_pickle loads
}
_OTHERS = "HIGH"
_LEAST_CONFIDENCE = "MEDIUM"
_HARD_CODED_PASSWORD = frozenset({"B105", "B106", "B107"})
# bandit's password names include `token`, and tokenizer code names its special tokens so (`eos_token =
# "</s>"`): a hard-coded password blocks only on a line that names a password or a secret, and not when empty.
_PASSWORD_NAME = re.compile(r"pas+wo?r?d|passphrase|pwd|secret", re.I)

_IMPORT = re.compile(r"^[ \t]*((?:from[ \t]+[\w.]+[ \t]+)?import[ \t]+(?:\([^)]*\)|[^\n]*))", re.M)


@dataclass(frozen=True)
class Finding:
    """One bandit finding in scanned code."""

    test_id: str  # bandit's test id, e.g. B602
    severity: str  # LOW, MEDIUM or HIGH
    confidence: str  # LOW, MEDIUM or HIGH
    line: int  # 1-based, in the code given to `scan` (a fragment's first line is line 1)
    message: str  # bandit's text
    source: str = ""  # the scanned line it is on, as scanned (with the fragment's line prefix)

    @property
    def blocks(self) -> bool:
        """Whether the policy (`HIDES`) counts this finding as high: it hides a completion, warns on an action."""
        if _RANK.index(self.confidence) < _RANK.index(_LEAST_CONFIDENCE):
            return False
        if self.test_id in _HARD_CODED_PASSWORD and (
            not _PASSWORD_NAME.search(self.source) or self.message.endswith(": ''")
        ):
            return False
        return _RANK.index(self.severity) >= _RANK.index(HIDES.get(self.test_id, _OTHERS))

    def __str__(self) -> str:
        return f"line {self.line}: {self.test_id} {self.message} ({self.severity.lower()} severity)"


def scan(code: str, language: str, *, context: str = "", after: str = "") -> list[Finding]:
    """bandit's findings in `code`, if it is Python (else none), by line.

    `context` is the text before `code` (a completion's prefix: its last line starts the fragment's first line,
    its imports name what the fragment calls); `after` is the text after it (the rest of its last line counts).
    """
    if languages.resolve(language).name != "python" or not code.strip():
        return []
    start = context.rfind("\n") + 1
    lines = (context[start:] + code + after.split("\n", 1)[0]).split("\n")
    source, origin = _module(_imports(context[:start]), lines)
    if source is None:
        return []
    findings = []
    for issue in _bandit(source):
        line = origin[issue.lineno - 1] if 0 < issue.lineno <= len(origin) else None
        if line is not None:
            findings.append(Finding(issue.test_id, issue.severity, issue.confidence, line, issue.text, lines[line - 1]))
    return sorted(findings, key=lambda finding: finding.line)


def hides(suggestion: str, language: str, *, context: str = "", after: str = "") -> Finding | None:
    """The first finding that hides a completion, or None (see `scan` for the arguments)."""
    return next((f for f in scan(suggestion, language, context=context, after=after) if f.blocks), None)


def warning_for(code: str, language: str, *, context: str = "") -> str | None:
    """A diagnostic-style warning for an action result (whole lines: a fix, a test module, code from a comment)
    that has blocking findings, one line each; None where it has none. `context` is the document before the
    code, up to a line break: its imports name what the code calls (`yaml` imported at the top of the file)."""
    found = [finding for finding in scan(code, language, context=context) if finding.blocks]
    if not found:
        return None
    return "\n".join(["midline: security warning (bandit):", *(f"  {finding}" for finding in found)])


# -- internals ----------------------------------------------------------------------------


@functools.cache
def _tests() -> Any:
    """bandit's test set, every test, loaded once (importing bandit takes ~0.15 s: only when first needed)."""
    stevedore = logging.getLogger("stevedore.extension")
    quiet = _UnusedFormatters()
    stevedore.addFilter(quiet)
    try:
        with warnings.catch_warnings():  # bandit loads its plugins with an argument its stevedore deprecates
            warnings.simplefilter("ignore", DeprecationWarning)
            from bandit.core import config, test_set
    finally:
        stevedore.removeFilter(quiet)
    return test_set.BanditTestSet(config.BanditConfig())


class _UnusedFormatters(logging.Filter):
    """Drops stevedore's error for a bandit report formatter that fails to load: importing bandit loads them all,
    and `sarif` needs the optional `sarif_om` (an editor shows every log line the server writes as an error).
    midline writes no reports; a test plugin that fails to load is still logged."""

    def __init__(self) -> None:
        super().__init__()
        from importlib.metadata import entry_points

        self.names = {entry.name for entry in entry_points(group="bandit.formatters")}

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.args[0] if isinstance(record.args, tuple) and record.args else None
        return not (str(record.msg).startswith("Could not load") and name in self.names)


def _bandit(source: str) -> list[Any]:
    """bandit's issues in `source` (which parses), from its node visitor: the part of its manager that scans
    one file, fed from memory."""
    tests = _tests()  # (first: it imports bandit)
    from bandit.core import metrics, node_visitor

    data = io.BytesIO(source.encode())  # the whole-file tests (B613, bidirectional characters) read this
    visitor = node_visitor.BanditNodeVisitor("./fragment.py", data, None, tests, False, {}, metrics.Metrics())
    visitor.process(source)
    return visitor.tester.results


def _imports(text: str) -> list[str]:
    """The import statements in `text` that parse alone, dedented."""
    found = [match.group(1).rstrip() for match in _IMPORT.finditer(text)]
    if _parses("\n".join(found)):
        return found
    return [statement for statement in found if _parses(statement)]


def _module(imports: list[str], lines: list[str]) -> tuple[str | None, list[int | None]]:
    """A module that holds `lines` (a fragment's, 1-based) below `imports`, and for each of its lines the
    fragment line it holds (None: an import, a header or a `pass`); None where nothing of it parses."""
    body, origin = _as_block(lines)
    if not _parses("\n".join(body)):
        body, origin = _line_by_line(lines)
    if not body:
        return None, []
    return "\n".join(imports + body), [None] * len(imports) + origin


def _as_block(lines: list[str]) -> tuple[list[str], list[int | None]]:
    """`lines` dedented, below an `if True:` header for each indentation level they dedent to below their
    first line's, and with a `pass` in a block they leave open."""
    code = textwrap.dedent("\n".join(lines)).split("\n")
    written = [(number, line) for number, line in enumerate(code, 1) if line.strip()]
    if not written:
        return [], []
    first, levels, lowest = _indent(written[0][1]), [], None
    for _, line in written[1:]:
        if len(indent := _indent(line)) < len(first) and (lowest is None or len(indent) < len(lowest)):
            levels.append(lowest := indent)
    headers = [level + "if True:" for level in reversed(levels)]
    origin: list[int | None] = [None] * len(headers) + list(range(1, len(code) + 1))
    last = written[-1][1]
    tail = [_indent(last) + "    pass"] if last.rstrip().endswith(":") else []
    return headers + code + tail, origin + [None] * len(tail)


def _line_by_line(lines: list[str]) -> tuple[list[str], list[int | None]]:
    """The lines of `lines` that parse alone (a block opener with a `pass`), dedented."""
    body: list[str] = []
    origin: list[int | None] = []
    for number, line in enumerate(lines, 1):
        statement = line.strip()
        if statement.endswith(":"):
            statement += " pass"
        if statement and _parses(statement):
            body.append(statement)
            origin.append(number)
    return body, origin


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _parses(source: str) -> bool:
    try:
        ast.parse(source)
    except (SyntaxError, ValueError):  # ValueError: a null character
        return False
    return True
