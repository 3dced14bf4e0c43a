"""End to end: random incremental edits sent to the real `midline serve` leave its text equal to the editor's.

A reference editor applies the same edits with the LSP specification's rules: lines break only at
"\\n", "\\r\\n" and "\\r"; a character past the end of its line means the line's end; a line past the
end of the document means the document's end. The edits carry every other character Python counts as
a line break (\\x0b \\x0c \\x1c-\\x1e \\x85 \\u2028 \\u2029), astral characters (surrogate pairs in
UTF-16), and out-of-range positions, in each position encoding the server negotiates.
"""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path

import pytest
from lsprotocol import types

from ..lsp_client import open_document, running_server

SEED = 13
SEQUENCES = 120  # per encoding
ALPHABET = ["a", "b", "z", " ", "\t", "\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028",
            "\u2029", "é", "漢", "😀", "𝔸"]
_BREAK = re.compile(r"\r\n|\r|\n")
_CODEC = {"utf-16": ("utf-16-le", 2), "utf-8": ("utf-8", 1), "utf-32": ("utf-32-le", 4)}


def units(text: str, encoding: str) -> int:
    """Length of `text` in the encoding's code units."""
    codec, width = _CODEC[encoding]
    return len(text.encode(codec)) // width


def lines(text: str) -> list[tuple[int, int]]:
    """(start, end) string indexes of each line's content, as LSP splits lines."""
    out, start = [], 0
    for match in _BREAK.finditer(text):
        out.append((start, match.start()))
        start = match.end()
    return out + [(start, len(text))]


def offset(text: str, position: types.Position, encoding: str) -> int:
    """The editor's string index of a position (positions fall between characters, or past the end)."""
    spans = lines(text)
    if position.line >= len(spans):
        return len(text)
    start, end = spans[position.line]
    count = 0
    for index in range(start, end):
        if count >= position.character:
            return index
        count += units(text[index], encoding)
    return end


def random_text(rng: random.Random, most: int) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, most)))


def random_position(rng: random.Random, text: str, encoding: str) -> types.Position:
    """In range, past its line's end, or past the document's end (by a little, or by a lot)."""
    spans = lines(text)
    line = rng.randrange(len(spans))
    start, end = spans[line]
    kind = rng.random()
    if kind < 0.15:
        return types.Position(len(spans) + rng.choice([0, 1, 5, 2**31 - 1 - len(spans)]), rng.randint(0, 9))
    length = units(text[start:end], encoding)
    if kind < 0.35:
        return types.Position(line, length + rng.choice([1, 2, 7, 2**31 - 1 - length]))
    return types.Position(line, units(text[start : rng.randint(start, end)], encoding))


def random_change(rng: random.Random, text: str, encoding: str) -> types.TextDocumentContentChangeEvent:
    if rng.random() < 0.03:
        return types.TextDocumentContentChangeWholeDocument(text=random_text(rng, 20))
    a, b = random_position(rng, text, encoding), random_position(rng, text, encoding)
    start, end = sorted([a, b], key=lambda p: (p.line, p.character))
    return types.TextDocumentContentChangePartial(range=types.Range(start, end), text=random_text(rng, 6))


def apply(text: str, change: types.TextDocumentContentChangeEvent, encoding: str) -> str:
    """The reference editor's text after one change."""
    if isinstance(change, types.TextDocumentContentChangeWholeDocument):
        return change.text
    start, end = offset(text, change.range.start, encoding), offset(text, change.range.end, encoding)
    return text[:start] + change.text + text[end:]


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


async def server_digest(client, uri: str) -> dict | None:
    return await client.workspace_execute_command_async(types.ExecuteCommandParams(command="midline.documentDigest",
                                                                                   arguments=[uri]))


async def fuzz(client, encoding: str, seed: int) -> list[int]:
    """Run SEQUENCES random edit sequences; the seeds of those whose server text differs from the editor's."""
    diverged = []
    for sequence in range(SEQUENCES):
        rng = random.Random(f"{seed}-{encoding}-{sequence}")
        uri = f"file:///fuzz/{encoding}/{sequence}.py"
        text = random_text(rng, 30)
        open_document(client, uri, text)
        version = 1
        for _ in range(rng.randint(1, 8)):
            changes = []
            for _ in range(rng.choice([1, 1, 1, 2, 3])):  # changes in one notification apply in order
                change = random_change(rng, text, encoding)
                text = apply(text, change, encoding)
                changes.append(change)
            version += 1
            client.text_document_did_change(
                types.DidChangeTextDocumentParams(
                    text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
                    content_changes=changes
                )
            )
        answer = await server_digest(client, uri)
        if answer is None or answer["sha256"] != digest(text) or answer["version"] != version:
            diverged.append(sequence)
        client.text_document_did_close(types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=uri)))
    return diverged


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("encoding", ["utf-16", "utf-8", "utf-32"])
@pytest.mark.e2e
async def test_random_edits_keep_the_server_text_equal_to_the_editors(encoding: str, tmp_path: Path) -> None:
    offered = None if encoding == "utf-16" else [encoding, "utf-16"]
    async with running_server({"model": str(tmp_path / "no-model")}, tmp_path, encodings=offered) as (client, result):
        assert result.capabilities.position_encoding == encoding
        diverged = await fuzz(client, encoding, SEED)
    assert diverged == [], f"{len(diverged)} of {SEQUENCES} sequences diverged (seed {SEED}, first: {diverged[:10]})"


def test_reference_editor_follows_the_specification() -> None:
    text = "ab\r\ncd\x0bef\u2028g\rh😀i"
    assert [text[s:e] for s, e in lines(text)] == ["ab", "cd\x0bef\u2028g", "h😀i"]
    assert offset(text, types.Position(0, 99), "utf-16") == 2  # past the line's end: the line's end
    assert offset(text, types.Position(9, 0), "utf-16") == len(text)  # past the last line: the document's end
    assert offset(text, types.Position(2, 3), "utf-16") == text.index("i")  # the emoji is two UTF-16 units
    assert offset(text, types.Position(2, 5), "utf-8") == text.index("i")  # and four UTF-8 bytes
    assert offset(text, types.Position(2, 2), "utf-32") == text.index("i")
