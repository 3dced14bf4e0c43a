"""Attribution check: does a suggestion repeat a long span of the model's training data verbatim?

`midline-train index` builds an index of a corpus's training split: the text as lexemes (identifiers, numbers and
single punctuation characters, so whitespace and layout do not matter), every run of `ngram` consecutive lexemes
hashed to 64 bits, and of each `window` consecutive hashes the smallest kept (winnowing, as in MOSS), sorted and
deduplicated: `fingerprints.npy` (uint64) beside `index.json` (format, version, ngram, window, what it was built
from). No pickles.

`AttributionIndex.match` hashes every n-gram of a suggestion and looks them up (numpy `searchsorted`). A hit is an
n-gram the training data holds verbatim; winnowing guarantees a hit for every verbatim span of at least `ngram +
window - 1` lexemes (it keeps one hash of each window of such a span), and may find shorter ones down to `ngram`.
The server hides a suggestion with a hit, as Copilot's duplication filter does when it blocks matches with public
code (the `attribution.index` setting; off by default).

numpy is imported when an index is first loaded, not at server start.
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

FORMAT = "midline-attribution-index"
VERSION = 1
NGRAM = 24  # lexemes hashed together: a hit is a verbatim span at least this long
WINDOW = 8  # winnowing window: every verbatim span of NGRAM + WINDOW - 1 lexemes is found
FINGERPRINTS = "fingerprints.npy"
HEADER = "index.json"
_LEXEME = re.compile(r"\w+|[^\w\s]")
_PRIME = 0x100000001B3  # the polynomial rolling hash's multiplier (mod 2**64)


class AttributionError(ValueError):
    """An index that cannot be used (missing, another format or version, damaged)."""


@dataclass(frozen=True)
class Match:
    """The longest verbatim span of a suggestion found in the index."""

    start: int  # character offsets in the suggestion
    end: int
    lexemes: int  # its length in lexemes (at least the index's ngram)

    def describe(self) -> str:
        """One line for the trace and logs (no code: the span is the suggestion's own text)."""
        return f"{self.lexemes} lexemes (characters {self.start}-{self.end}) appear verbatim in the training data"


def lexemes(text: str) -> tuple[list[str], list[int], list[int]]:
    """The text's lexemes with their start and end offsets."""
    found = list(_LEXEME.finditer(text))
    return [m[0] for m in found], [m.start() for m in found], [m.end() for m in found]


def ngram_hashes(words: list[str], n: int) -> np.ndarray:
    """A 64-bit hash per run of `n` consecutive lexemes, in order (crc32 per lexeme, then a polynomial rolling hash:
    the same in every process)."""
    import numpy as np

    if len(words) < n:
        return np.zeros(0, np.uint64)
    hashes = np.fromiter((zlib.crc32(w.encode()) for w in words), dtype=np.uint64, count=len(words))
    m = len(hashes) - n + 1
    out = hashes[:m].copy()
    prime = np.uint64(_PRIME)
    with np.errstate(over="ignore"):
        for k in range(1, n):
            out = out * prime + hashes[k : k + m]
    return out


def winnow(hashes: np.ndarray, window: int) -> np.ndarray:
    """The smallest hash of every `window` consecutive ones (all of them when there are fewer), unique and sorted."""
    import numpy as np

    if len(hashes) <= window:
        return np.unique(hashes)
    return np.unique(np.lib.stride_tricks.sliding_window_view(hashes, window).min(axis=1))


class AttributionIndex:
    """A loaded index: sorted fingerprints and the n-gram and window they were made with."""

    def __init__(self, fingerprints: np.ndarray, header: dict[str, Any]) -> None:
        self.fingerprints = fingerprints
        self.header = header
        self.ngram: int = header["ngram"]
        self.window: int = header["window"]

    @classmethod
    def load(cls, path: str | Path) -> AttributionIndex:
        """The index in dir `path` (index.json and fingerprints.npy); AttributionError saying why it cannot be used."""
        import numpy as np

        folder = Path(path).expanduser()
        try:
            header = json.loads((folder / HEADER).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise AttributionError(f"attribution index {folder}: no readable {HEADER} ({exc})") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("version") != VERSION:
            raise AttributionError(f"attribution index {folder}: not a {FORMAT} version {VERSION}")
        if not all(isinstance(header.get(k), int) and header[k] > 0 for k in ("ngram", "window")):
            raise AttributionError(f"attribution index {folder}: {HEADER} needs positive ngram and window")
        try:
            fingerprints = np.load(folder / FINGERPRINTS, allow_pickle=False, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise AttributionError(f"attribution index {folder}: {FINGERPRINTS} cannot be read ({exc})") from None
        if fingerprints.dtype != np.uint64 or fingerprints.ndim != 1:
            raise AttributionError(f"attribution index {folder}: {FINGERPRINTS} is not a 1-d uint64 array")
        return cls(np.asarray(fingerprints), header)

    def match(self, text: str) -> Match | None:
        """The longest span of the text whose n-grams are found in the index, as a span of the text; None if none
        is. Hits at most `window` apart are one span (the index keeps one n-gram of every `window`), so the span is
        from its first hit's n-gram to its last's: the verbatim run may reach up to window - 1 lexemes further."""
        import numpy as np

        words, starts, ends = lexemes(text)
        grams = ngram_hashes(words, self.ngram)
        if not len(grams) or not len(self.fingerprints):
            return None
        found = self.fingerprints[np.searchsorted(self.fingerprints, grams).clip(max=len(self.fingerprints) - 1)]
        hits = np.flatnonzero(found == grams)
        if not len(hits):
            return None
        breaks = np.flatnonzero(np.diff(hits) > self.window)
        first, last = np.r_[0, breaks + 1], np.r_[breaks, len(hits) - 1]
        longest = int(np.argmax(hits[last] - hits[first]))
        a, b = int(hits[first[longest]]), int(hits[last[longest]]) + self.ngram - 1  # lexemes a..b
        return Match(starts[a], ends[b], b - a + 1)
