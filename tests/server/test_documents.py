"""Open documents: incremental sync in UTF-16/UTF-8/UTF-32 positions and incremental re-parsing."""

from __future__ import annotations

import bisect
import re
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lsprotocol import types
from pygls.workspace.position_codec import PositionCodec

from midline.server import documents
from midline.server.documents import Document, DocumentStore

UTF16 = PositionCodec(types.PositionEncodingKind.Utf16)
UTF8 = PositionCodec(types.PositionEncodingKind.Utf8)
UTF32 = PositionCodec(types.PositionEncodingKind.Utf32)
CODECS = {"utf-16": UTF16, "utf-8": UTF8, "utf-32": UTF32}
_UNIT_BYTES = {"utf-16": 2, "utf-8": 1, "utf-32": 4}
_ENCODING = {"utf-16": "utf-16-le", "utf-8": "utf-8", "utf-32": "utf-32-le"}


def position(text: str, offset: int, encoding: str) -> types.Position:
    """Client position of a string index, computed by encoding the line (independently of the codec)."""
    line_start = text.rfind("\n", 0, offset) + 1
    units = len(text[line_start:offset].encode(_ENCODING[encoding])) // _UNIT_BYTES[encoding]
    return types.Position(line=text.count("\n", 0, offset), character=units)


def edit(text: str, start: int, end: int, new: str, encoding: str) -> types.TextDocumentContentChangePartial:
    rng = types.Range(position(text, start, encoding), position(text, end, encoding))
    return types.TextDocumentContentChangePartial(range=rng, text=new)


def change(start: tuple[int, int], end: tuple[int, int], new: str) -> types.TextDocumentContentChangePartial:
    """The client's change of the (line, character) range `start`..`end` to `new`."""
    return types.TextDocumentContentChangePartial(range=types.Range(types.Position(*start), types.Position(*end)),
                                                  text=new)


def shape(tree) -> list[tuple]:
    """Every node with its type and extent: equal shapes mean equal trees."""
    out = []
    cursor = tree.walk()
    while True:
        node = cursor.node
        out.append((node.type, node.start_byte, node.end_byte, tuple(node.start_point), tuple(node.end_point),
                    node.is_missing))
        if cursor.goto_first_child():
            continue
        while not cursor.goto_next_sibling():
            if not cursor.goto_parent():
                return out


def assert_synced(doc: Document) -> None:
    assert doc.source == doc.text.encode("utf-8")
    fresh = doc.parser.parse(doc.source)
    assert shape(doc.tree) == shape(fresh)
    assert str(doc.tree.root_node) == str(fresh.root_node)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8", "utf-32"])
def test_incremental_edits_with_astral_and_cjk_text(encoding: str) -> None:
    codec = CODECS[encoding]
    text = 'def f():\n    s = "😀漢字😀"\n    return s\n'
    doc = Document("file:///w/a.py", "python", 1, text)
    steps = [  # (where, how many characters to replace, new text), found in the current text
        ("漢", 0, "x"),  # insert between an emoji and CJK
        ('"😀', 2, '"😀é'),  # right after the first emoji
        ("s =", 1, "漢字"),  # replace an identifier with CJK
        ("return", 0, "😀 = 1\n    "),  # a new line starting with an astral character
        ("漢字 =", 6, ""),  # delete across the emoji line's start
    ]
    for anchor, length, new in steps:
        start = doc.text.index(anchor)
        expected = doc.text[:start] + new + doc.text[start + length :]
        doc.apply_change(edit(doc.text, start, start + length, new, encoding), codec)
        assert doc.text == expected
        assert_synced(doc)


def test_utf16_positions_count_surrogate_pairs() -> None:
    doc = Document("file:///w/a.py", "python", 1, 'x = "😀漢"\n')
    # UTF-16: the emoji is two code units, so 漢 starts at character 7 (x, space, =, space, ", 😀 x2).
    assert doc.offset_at(types.Position(0, 7), UTF16) == 6
    assert doc.offset_at(types.Position(0, 9), UTF8) == 6  # the emoji is four UTF-8 bytes
    assert doc.position_at(6, UTF16) == types.Position(0, 7)
    assert doc.position_at(7, UTF8) == types.Position(0, 12)  # 漢 is three bytes
    doc.apply_change(change((0, 5), (0, 7), ""), UTF16)
    assert doc.text == 'x = "漢"\n'


def test_crlf_and_lone_cr_line_breaks() -> None:
    doc = Document("file:///w/a.py", "python", 1, "a = 1\r\nb = 2\rc = 3\n")
    assert doc.offset_at(types.Position(1, 0), UTF16) == 7
    assert doc.offset_at(types.Position(2, 1), UTF16) == 14
    assert doc.offset_at(types.Position(0, 5), UTF16) == 5  # end of line, before "\r\n"
    with pytest.raises(ValueError):
        doc.offset_at(types.Position(0, 6), UTF16)
    doc.apply_change(change((1, 4), (2, 4), "9\nd = "), UTF16)
    assert doc.text == "a = 1\r\nb = 9\nd = 3\n"
    assert_synced(doc)


alphabet = st.sampled_from(list("ab_(): =\n\n    \"#😀漢字éx1"))
texts = st.text(alphabet, max_size=60)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), texts, st.sampled_from(["utf-16", "utf-8"]), st.sampled_from(["python", "javascript"]))
def test_random_edit_sequences(data: st.DataObject, initial: str, encoding: str, language: str) -> None:
    doc = Document("file:///w/a", language, 1, initial)
    expected = initial
    for _ in range(data.draw(st.integers(1, 6))):
        start = data.draw(st.integers(0, len(expected)))
        end = data.draw(st.integers(start, min(len(expected), start + 12)))
        new = data.draw(st.text(alphabet, max_size=10))
        doc.apply_change(edit(expected, start, end, new, encoding), CODECS[encoding])
        expected = expected[:start] + new + expected[end:]
        assert doc.text == expected
        assert_synced(doc)


def spy_on_parses(doc: Document) -> list:
    """Swap the document's parser for one that records each parse's old tree; the list it fills."""
    calls, real = [], doc.parser

    class Spy:
        def parse(self, source, old_tree=None):
            calls.append(old_tree)
            return real.parse(source, old_tree)

    doc.parser = Spy()
    return calls


def test_reparse_reuses_the_old_tree() -> None:
    doc = Document("file:///w/a.py", "python", 1, "def a():\n    return 1\n\ndef b():\n    return 2\n")
    real = doc.parser
    old_tree = doc.tree
    unchanged = [child.id for child in old_tree.root_node.children[0].children]  # the body of `a`
    calls = spy_on_parses(doc)
    doc.apply_change(edit(doc.text, doc.text.index("2"), doc.text.index("2") + 1, "3", "utf-16"), UTF16)
    assert calls == []  # a change parses nothing: the tree's first use does
    doc.tree
    assert calls == [old_tree]
    # Subtrees outside the edit are shared with the old tree, not rebuilt.
    assert [child.id for child in doc.tree.root_node.children[0].children] == unchanged
    fresh = real.parse(doc.source)
    assert [child.id for child in fresh.root_node.children[0].children] != unchanged


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8"])
def test_edit_moves_old_nodes_to_their_new_rows_and_columns(encoding: str) -> None:
    doc = Document("file:///w/a.py", "python", 1, "a = 1\nb = 2\nc = 3\nd = 4\ne = '😀'\n")
    old_tree = doc.tree  # edited in place on the next use: its later nodes shift by the edit's bytes and points
    start = doc.text.index("1")
    doc.apply_change(edit(doc.text, start, doc.text.index("4"), "漢\n", encoding), CODECS[encoding])
    assert doc.text == "a = 漢\n4\ne = '😀'\n"
    reparsed = doc.tree.root_node.children[-1]
    moved = old_tree.root_node.children[-1]
    assert (moved.start_byte, moved.start_point, moved.end_point) == (reparsed.start_byte, (2, 0), (2, 10))


def test_full_document_change_reparses_from_scratch() -> None:
    doc = Document("file:///w/a.go", "go", 1, "package a\n")
    doc.apply_change(types.TextDocumentContentChangeWholeDocument(text="package b\n\nfunc F() {}\n"), UTF16)
    assert doc.text == "package b\n\nfunc F() {}\n"
    assert "function_declaration" in str(doc.tree.root_node)
    assert_synced(doc)


def test_out_of_range_request_positions_raise() -> None:
    doc = Document("file:///w/a.py", "python", 1, "ab\ncd😀\n")
    assert doc.offset_at(types.Position(1, 4), UTF16) == 6  # end of line: fine
    assert doc.offset_at(types.Position(2, 0), UTF16) == 7  # the empty last line
    with pytest.raises(ValueError, match="past the end of line 1"):
        doc.offset_at(types.Position(1, 5), UTF16)
    with pytest.raises(ValueError, match="line 3 is past the end"):
        doc.offset_at(types.Position(3, 0), UTF16)
    with pytest.raises(ValueError):
        doc.position_at(99, UTF16)


def test_out_of_range_edits_are_clamped() -> None:
    doc = Document("file:///w/a.py", "python", 1, "ab\ncd\n")
    # Past the line end means the line end; past the last line means the end of the document.
    doc.apply_change(change((0, 99), (0, 120), "!"), UTF16)
    doc.apply_change(change((9, 0), (9, 0), "z"), UTF16)
    assert doc.text == "ab!\ncd\nz"
    assert_synced(doc)


def test_plain_text_document_has_no_tree() -> None:
    doc = Document("untitled:Untitled-1", "plaintext", 1, "hello 😀")
    assert doc.tree is None and doc.language == "plaintext" and doc.path == "untitled:Untitled-1"
    doc.apply_change(edit(doc.text, 6, 7, "world", "utf-16"), UTF16)
    assert doc.text == "hello world"


def test_language_from_extension_and_path_from_uri() -> None:
    doc = Document("file:///w/my%20dir/main.rs", "", 1, "fn main() {}\n")
    assert doc.language == "rust" and doc.path == "/w/my dir/main.rs" and doc.tree is not None


def test_store() -> None:
    store = DocumentStore()
    store.open("file:///w/a.py", "python", 1, "x = 1\n")
    store.open("file:///w/b.ts", "typescript", 1, "let y = 2;\n")
    doc = store.change("file:///w/a.py", 3, [
        change((0, 4), (0, 5), "2"),
        change((1, 0), (1, 0), "z = x\n"),
    ], UTF16)
    assert doc.text == "x = 2\nz = x\n" and doc.version == 3
    assert sorted(d.uri for d in store) == ["file:///w/a.py", "file:///w/b.ts"]
    store.close("file:///w/a.py")
    with pytest.raises(KeyError):
        store.get("file:///w/a.py")
    assert [d.uri for d in store] == ["file:///w/b.ts"]


@given(st.text(st.sampled_from(list("a\r\n漢😀")), max_size=30))
def test_line_table_counts_lsp_line_breaks(text: str) -> None:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    doc = Document("file:///w/a.txt", "plaintext", 1, text)
    for number, line in enumerate(lines):
        start = doc.offset_at(types.Position(number, 0), UTF16)
        end = doc.offset_at(types.Position(number, len(line.encode("utf-16-le")) // 2), UTF16)
        assert text[start:end] == line


def test_only_lsp_line_breaks_split_lines() -> None:
    text = "a\x0bb\x0cc\x1cd\x1de\x1ef\x85g\u2028h\u2029i\rj\r\nk\nl"
    doc = Document("file:///w/a.txt", "plaintext", 1, text)
    assert doc.line_count() == 4
    assert doc.offset_at(types.Position(0, 16), UTF16) == text.index("i")  # past the form feed etc.: same line
    assert doc.position_at(text.index("h"), UTF16) == types.Position(0, 14)
    doc.apply_change(change((0, 4), (0, 5), "X"), UTF16)
    assert doc.text == text.replace("c", "X")


def _reference_offset(line: str, character: int, encoding: str) -> int:
    """Characters a position covers, counted one by one (a unit inside a character covers it)."""
    width = {"utf-16": lambda c: 2 if ord(c) > 0xFFFF else 1,
             "utf-8": lambda c: len(c.encode("utf-8", "surrogatepass")), "utf-32": lambda c: 1}
    total = reached = 0
    while reached < len(line) and total < character:
        total += width[encoding](line[reached])
        reached += 1
    return reached


@settings(max_examples=300, deadline=None)
@given(st.text(st.sampled_from(["a", "é", "漢", "😀", "\ud83d", "\ude00", "\x85"]), max_size=40), st.integers(0, 200),
       st.sampled_from(list(CODECS)))
def test_positions_convert_like_counting_each_character(line: str, character: int, encoding: str) -> None:
    doc = Document("file:///w/a.txt", "plaintext", 1, line)
    codec, expected = CODECS[encoding], _reference_offset(line, character, encoding)
    assert doc.offset_at(types.Position(0, character), codec, clamp=True) == expected
    units = len(line.encode(_ENCODING[encoding], "surrogatepass")) // _UNIT_BYTES[encoding]
    assert doc.position_at(len(line), codec) == types.Position(0, units)


@settings(max_examples=150, deadline=None)
@given(st.data(), st.text(st.sampled_from(list("ab\r\n\x0c漢")), max_size=80))
def test_line_index_matches_a_fresh_split_after_edits(data: st.DataObject, initial: str) -> None:
    with mock.patch.object(documents._LineIndex, "BLOCK", 4):  # many small blocks: edits split and merge them
        doc = Document("file:///w/a.txt", "plaintext", 1, initial)
        for _ in range(data.draw(st.integers(1, 8))):
            start = data.draw(st.integers(0, len(doc.text)))
            end = data.draw(st.integers(start, min(len(doc.text), start + 20)))
            doc.replace(start, end, data.draw(st.text(st.sampled_from(list("xy\r\n\n")), max_size=12)))
            starts = [0] + [m.end() for m in re.finditer(r"\r\n|\r|\n", doc.text)]
            assert doc.line_count() == len(starts)
            assert [doc._lines.start(line) for line in range(len(starts))] == starts
            for offset in range(len(doc.text) + 1):
                line = bisect.bisect_right(starts, offset) - 1
                assert doc._lines.locate(offset) == (line, starts[line])


def test_keystrokes_parse_nothing_and_the_next_use_reparses_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A keystroke's cost does not grow with the document: no parse, no encoding of the text, and a line
    index rewritten only where the edit is; the tree's next use re-parses once, incrementally."""
    lines = [f"def f{i}(x):\n    return x + {i}\n" for i in range(5000)]
    doc = Document("file:///w/a.py", "python", 1, "".join(lines))
    split, encoded = [], []
    real = doc.parser
    old_tree = doc.tree
    calls = spy_on_parses(doc)
    line_lengths, encode = documents._line_lengths, documents.utf8
    monkeypatch.setattr(documents, "_line_lengths", lambda text: split.append(len(text)) or line_lengths(text))
    monkeypatch.setattr(documents, "utf8", lambda text: encoded.append(len(text)) or encode(text))
    row = 2 * 2500 + 1  # `return x + 2500`
    for i, char in enumerate("y * 2 + "):
        doc.apply_change(change((row, 15 + i), (row, 15 + i), char), UTF16)
    assert calls == [] and encoded == []
    assert max(split) < 100  # two or three lines of the 10,000, each keystroke
    assert "return x + y * 2 + 2500\n" in doc.text
    assert doc.tree is not None and calls == [old_tree]
    assert doc.tree is not None and calls == [old_tree]  # up to date: not parsed again
    doc.parser = real
    assert_synced(doc)


@pytest.mark.parametrize("text", ["a\nbé😀\r\nc\rd", "", "x\n", "\n\n"])
def test_line_lookups_and_byte_offsets(text: str) -> None:
    doc = Document("file:///w/a.py", "python", 1, text)
    starts = [0] + [m.end() for m in re.finditer(r"\r\n|\r|\n", text)]
    assert [doc.line_start(line) for line in range(len(starts) + 1)] == [*starts, len(text)]
    for offset in range(len(text) + 1):
        line = bisect.bisect_right(starts, offset) - 1
        assert doc.line_at(offset) == (line, starts[line])
        assert doc.byte_offset(offset) == len(text[:offset].encode("utf-8"))
