"""Refine on failure: check each answer, and feed what failed back into the next ask, within a small budget.

`refine` runs attempts: each asks the model (`ask`: the first ask as the action always asked it, later ones with
the failures of the best candidate so far in the prompt, several candidates from the batched engine where there is
one) and checks every candidate (`check`: the action's gates and sandbox run) until one passes, the checks say
nothing can mend it (`Checked.final`), `attempts` are made or the `seconds` are spent (an attempt, once started, is
finished). Each attempt and the outcome are reported as progress messages.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Checked(Generic[T]):
    """One candidate, checked: whether it passed, what to offer (or what it was), what failed, how much passed."""

    answer: str
    passed: bool
    result: T | None = None  # the action's own record of the check (a verdict, a verified test module...)
    failures: list[str] = field(default_factory=list)  # one line each, for the next ask
    score: float = 0.0  # how much passed: the best failed candidate's failures go into the next ask
    final: bool = False  # refining cannot help (nothing to check it by, or nothing was wrong): stop here


@dataclass(frozen=True)
class Refined(Generic[T]):
    """What refining came to: the passing candidate, else the best failed one (None: the model wrote nothing)."""

    best: Checked[T] | None
    attempt: int  # the attempt that wrote `best`
    attempts: int  # attempts made
    candidates: int  # candidates checked
    budget: int  # attempts allowed

    @property
    def passed(self) -> bool:
        return self.best is not None and self.best.passed

    def on(self) -> str:
        """`, on attempt 2 of 3` for a candidate that a later attempt wrote; "" for the first."""
        return f", on attempt {self.attempt} of {self.budget}" if self.attempt > 1 else ""

    def tried(self) -> str:
        """`3 attempts, 7 candidates`."""
        return f"{self.attempts} attempt{'s' * (self.attempts != 1)}, {self.candidates} candidate" + \
            "s" * (self.candidates != 1)


async def refine(
    ask: Callable[[int, Checked[T] | None], Awaitable[list[str]]],
    check: Callable[[str], Awaitable[Checked[T]]],
    *,
    attempts: int,
    seconds: float,
    report: Callable[[str], None] = lambda message: None,
) -> Refined[T]:
    """Ask (`ask(attempt, the best failed candidate so far)`) and check each candidate, attempt after attempt, until
    one passes; see the module's docstring."""
    deadline = time.monotonic() + seconds
    best: Checked[T] | None = None
    best_attempt, checked, made = 0, 0, 0
    for attempt in range(1, max(1, attempts) + 1):
        if attempt > 1:
            if time.monotonic() >= deadline:
                report(f"out of time for attempt {attempt} of {attempts}")
                break
            if best is None or not best.failures:
                break
            report(f"attempt {attempt} of {attempts}, told: {best.failures[0]}")
        made = attempt
        answers = list(dict.fromkeys(a for a in await ask(attempt, best) if a.strip()))
        for i, answer in enumerate(answers):
            if len(answers) > 1:
                report(f"attempt {attempt} of {attempts}: checking candidate {i + 1} of {len(answers)}")
            found = await check(answer)
            checked += 1
            if found.passed or found.final:
                if found.passed:
                    report(f"passed on attempt {attempt} of {attempts} (candidate {i + 1} of {len(answers)})")
                return Refined(found, attempt, attempt, checked, attempts)
            if best is None or found.score > best.score or (attempt > best_attempt and found.score == best.score):
                best, best_attempt = found, attempt
    if checked:
        report(f"no candidate passed: {made} attempt{'s' * (made != 1)}, {checked} candidates")
    return Refined(best, best_attempt, made, checked, attempts)
