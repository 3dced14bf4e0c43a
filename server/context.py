"""Context around the cursor: what the model sees, gathered with tree-sitter.

`build_context` turns a document and a cursor offset into a `CompletionContext`: token-budgeted prefix
and suffix windows cut at line boundaries, the kind of hole at the cursor, and extra snippets (imports,
enclosing signature, definitions from other files) ordered stable-first for prompt caching.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from midline.model.fim import Snippet


class Hole(enum.Enum):
    """What kind of completion fits at the cursor."""

    NONE = "none"  # mid-identifier: do not complete
    SINGLE_LINE = "single_line"  # code follows the cursor on its line
    MULTI_LINE = "multi_line"  # empty line, or right after a block opener


@dataclass
class CompletionContext:
    """Everything downstream stages need about one completion request."""

    path: str  # file path (or the URI when it has no path), as shown to the model
    language: str  # canonical language name from `languages.resolve`, "plaintext" if unknown
    text: str  # the whole document
    offset: int  # cursor, as an index into `text`
    prefix: str  # window of text before the cursor (ends at the cursor)
    suffix: str  # window of text after the cursor (starts at the cursor)
    hole: Hole
    snippets: list[Snippet] = field(default_factory=list)  # extra context, stable first

    @property
    def line_prefix(self) -> str:
        """Text of the cursor's line before the cursor."""
        return self.text[self.text.rfind("\n", 0, self.offset) + 1 : self.offset]

    @property
    def line_suffix(self) -> str:
        """Text of the cursor's line after the cursor."""
        end = self.text.find("\n", self.offset)
        return self.text[self.offset : end if end >= 0 else len(self.text)]
