"""Input/output examples in a comment or docstring that describes code to write, as checks to run on a candidate.

Three forms are read (Python code is assumed: the checks run in the Python sandbox):

- doctest lines: `>>> f(2)` with the expected output on the lines below (statements without output before an
  example, `>>> xs = [1, 2]`, run before it; `# doctest: +SKIP` ones left out);
- a call and its result: `f(2) -> 4`, `f(2) => 4`, `f(2) == 4`, `f(2) returns 4`, `f(2) gives 4`;
- prose: `returns 4 for 2` (also `for x=2`, `given 2`, `when given 2`), a call of the function being written.

Each example is one check: a doctest (name, text) or an expression `(CALL) == (WANT)`, the form
`fix_evidence.generated` runs (a failure says `f(2) returned 5, expected 4`). Both sides must be Python
expressions; anything else is prose, and no example.
"""

from __future__ import annotations

import ast
import doctest
import re
import textwrap
from dataclasses import dataclass, field

from . import fix_evidence

_MARKER = re.compile(r"^\s*(#|//)\s?")
_ARROW = re.compile(r"\b(?P<call>[A-Za-z_][\w.]*\()")
_RESULT = re.compile(r"^\s*(?:->|=>|→|==|returns|gives|is)\s+")
_PROSE = re.compile(r"\breturns?\s+(?P<want>.+?)\s+(?:for|when given|given)\s+(?P<args>.+)$", re.IGNORECASE)
_CUTS = re.compile(r"[.;,:]?\s+|[.;,:]$")


@dataclass
class Examples:
    """A comment's examples: doctests as (name, text) pairs, and `(CALL) == (WANT)` expressions; prose examples
    (`returns 4 for 2`) name no function and wait for one (`named`)."""

    doctests: list[tuple[str, str]] = field(default_factory=list)
    expressions: list[str] = field(default_factory=list)
    prose: list[tuple[str, str]] = field(default_factory=list)  # (arguments, result)

    def __len__(self) -> int:
        return len(self.doctests) + len(self.expressions) + len(self.prose)

    def checks(self, name: str | None) -> list[tuple[str, str] | str]:
        """Every example as a check: the prose ones as calls of `name` (left out without one)."""
        prose = [f"({name}({args})) == ({want})" for args, want in self.prose] if name else []
        return [*self.doctests, *self.expressions, *prose]

    def evidence(self, module: str, name: str | None) -> fix_evidence.Evidence:
        """The checks as evidence (`fix_evidence.generated`) on the module imported as `module`."""
        evidence = fix_evidence.generated(module, {"example": self.checks(name)})
        evidence.examples = len(evidence.tests)
        return evidence


def read(comment: str) -> Examples:
    """The examples in a comment (its line-comment markers, or a docstring's quotes, still on)."""
    text = textwrap.dedent("\n".join(_MARKER.sub("", line) for line in _unquoted(comment).split("\n")))
    out = Examples()
    setup: list[str] = []
    try:
        parsed = doctest.DocTestParser().get_examples(text)
    except ValueError:  # a malformed doctest (inconsistent indentation)
        parsed = []
    for example in parsed:
        if example.options.get(doctest.SKIP):  # `# doctest: +SKIP`: not run, so no example
            continue
        if not example.want.strip():
            setup.append(example.source)
            continue
        lines = [*setup, example.source]
        shown = "".join(">>> " + line.rstrip("\n").replace("\n", "\n... ") + "\n" for line in lines)
        out.doctests.append((f"example_{len(out.doctests)}", shown + example.want))
    for line in text.split("\n"):
        if line.lstrip().startswith((">>>", "...")):
            continue
        out.expressions += [e for e in _calls(line) if e not in out.expressions]
        if (match := _PROSE.search(line)) and not _ARROW.search(match["args"]):
            want, args = _expression(match["want"], whole=True), _expression(match["args"])
            if want and args:
                out.prose.append((args, want))
    return out


def _unquoted(comment: str) -> str:
    """A docstring's text without its quotes and prefix; a line comment as it is."""
    match = re.fullmatch(r'\s*[rRuU]?("""|\'\'\'|"|\')(.*)\1\s*', comment, re.DOTALL)
    return match.group(2) if match else comment


def _calls(line: str) -> list[str]:
    """`(CALL) == (WANT)` for each `CALL -> WANT` (or `==`, `returns`, ...) on the line."""
    out = []
    for match in _ARROW.finditer(line):
        call = _balanced(line, match.start("call"), match.end("call") - 1)
        if call is None:
            continue
        rest = line[match.start("call") + len(call):]
        if (result := _RESULT.match(rest)) and (want := _expression(rest[result.end():], shortest=True)):
            out.append(f"({call}) == ({want})")
    return out


def _balanced(line: str, start: int, opening: int) -> str | None:
    """The call starting at `start` whose `(` is at `opening`, up to its matching `)`; None if unclosed or not
    Python."""
    depth = 0
    for i in range(opening, len(line)):
        depth += {"(": 1, ")": -1}.get(line[i], 0)
        if depth == 0:
            call = line[start : i + 1]
            return call if _parses(call) else None
    return None


def _expression(text: str, whole: bool = False, shortest: bool = False) -> str | None:
    """The longest (`shortest`: shortest) head of `text` that is a Python expression, cut where a sentence would go
    on (`.`, `;`, `,` and the words after); `whole`: only all of it (trailing punctuation aside)."""
    text = text.strip()
    ends = sorted({len(text), *(m.start() for m in _CUTS.finditer(text))}, reverse=not shortest)
    for end in ([len(text)] if whole else ends):
        head = text[:end].strip().rstrip(".;,:").strip()
        if head and _parses(head):
            return head
    return None


def _parses(expression: str) -> bool:
    """Whether `expression` is a Python expression with concrete values: no free names but True, False, None
    and called functions (`f(x) -> y` is a description, `f(2) -> 4` an example)."""
    try:
        tree = ast.parse(expression, mode="eval")
    except (SyntaxError, ValueError, RecursionError):
        return False
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    called |= {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute) and id(n) in called}
    return all(n.id in ("True", "False", "None") or id(n) in called
               for n in ast.walk(tree) if isinstance(n, ast.Name))
