"""The parts of a decode loop that need no tensors, shared by both local engines (PyTorch's `engine.Engine` and
llama.cpp's `llamacpp.LlamaCppEngine`): the stop checks, prompt-lookup drafts and the prefix kept between calls."""

from __future__ import annotations

import threading
import time
from typing import Callable, Collection, Iterator


def run_stops(
    steps: Iterator[list[tuple[int, float]]], n: int, max_new_tokens: int, stop_ids: Collection[int],
    decode: Callable[[list[int]], str], should_stop: Callable[[str], bool] | None, cancel: threading.Event | None,
    deadline: float | None, ignore_eos: bool,
) -> tuple[list[list[int]], list[list[float]], list[str]]:
    """The stop checks of a generation: each of `steps` is a (token, log-probability) per row, of `n` rows.

    A row ends on a stop token ("eot") or when `should_stop` says so after a token ("stop"); cancel and deadline
    end all rows ("cancelled", "timeout"), checked before each step; the rest end at `max_new_tokens` ("length").
    Returns each row's tokens, their log-probabilities and finish reason. A step is taken only while a row is open.
    """
    rows: list[list[int]] = [[] for _ in range(n)]
    logprobs: list[list[float]] = [[] for _ in range(n)]
    finish: list[str | None] = [None] * n
    for _ in range(max_new_tokens):
        halted: str | None = None
        if cancel is not None and cancel.is_set():
            halted = "cancelled"
        elif deadline is not None and time.monotonic() > deadline:
            halted = "timeout"
        if halted:
            finish = [f or halted for f in finish]
            break
        for r, (token, logprob) in enumerate(next(steps)):
            if finish[r]:
                continue
            if token in stop_ids and not ignore_eos:
                finish[r] = "eot"
                continue
            rows[r].append(token)
            logprobs[r].append(logprob)
            if should_stop is not None and should_stop(decode(rows[r])):
                finish[r] = "stop"
        if all(finish):
            break
    return rows, logprobs, [f or "length" for f in finish]


class NgramIndex:
    """Prompt lookup: the tokens that followed the most recent earlier occurrence of the last 3 (else 2) tokens.

    (A single token's last occurrence predicts too little: with one-token matches too, drafts paid off less on the CPU.)
    """

    SIZES = (3, 2)

    def __init__(self, ids: list[int]):
        self.ids: list[int] = []
        self.ends: dict[tuple[int, ...], int] = {}  # n-gram -> end of its latest occurrence (not counting the last)
        for token in ids:
            self.append(token)

    def append(self, token: int) -> None:
        end = len(self.ids)  # the n-grams ending at the old end are now "earlier"
        for n in self.SIZES:
            if end >= n:
                self.ends[tuple(self.ids[end - n : end])] = end
        self.ids.append(token)

    def draft(self, k: int) -> list[int]:
        end = len(self.ids)
        for n in self.SIZES:
            if end >= n and (at := self.ends.get(tuple(self.ids[end - n :]))) is not None:
                return self.ids[at : at + k]
        return []


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token id lists."""
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)

