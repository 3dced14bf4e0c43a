"""The language table (model/languages.py): the VS Code client serves its languages, every node type it
names exists in its grammar, and the rules derived from it are the ones the server always used."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from midline.model import languages
from midline.model.languages import LANGUAGES, PLAIN_TEXT
from midline.model.syntax import ts_language

ROOT = Path(__file__).resolve().parents[2]
NODE_FIELDS = ("blocks", "imports", "definitions", "containers", "wrappers", "transparent", "calls")
# The column-0 definition rule as post-processing wrote it before the table held its words.
LITERAL_DEFINITION = re.compile(
    r"@|#include\b|(?:(?:export|pub|public|private|protected|static|async|abstract|final|default|unsafe)\s+)*"
    r"(?:def|class|function|func|fn|struct|enum|trait|impl|interface|mod)\b"
)


def test_extension_serves_the_tables_languages():
    source = (ROOT / "vscode-client/src/extension.ts").read_text(encoding="utf-8")
    listed = re.search(r"export const LANGUAGES = \[(.*?)\];", source, re.S)
    assert listed and re.findall(r'"([^"]+)"', listed[1]) == languages.vscode_ids()


def test_package_json_activates_on_the_tables_languages():
    manifest = json.loads((ROOT / "vscode-client/package.json").read_text(encoding="utf-8"))
    events = [e.removeprefix("onLanguage:") for e in manifest["activationEvents"] if e.startswith("onLanguage:")]
    assert events == languages.vscode_ids()


def test_every_vscode_id_resolves_to_its_entry():
    ids = languages.vscode_ids()
    assert len(ids) == len(set(ids))
    for spec in LANGUAGES.values():
        assert spec.vscode_ids and all(languages.resolve(id_).name == spec.name for id_ in spec.vscode_ids)


@pytest.mark.parametrize("path", ["nvim/lua/midline/init.lua", "tests/nvim/plain_lsp.lua"])
def test_neovim_filetypes_are_served(path):
    listed = re.search(r"filetypes = \{(.*?)\}", (ROOT / path).read_text(encoding="utf-8"), re.S)
    assert listed and set(re.findall(r'"([^"]+)"', listed[1])) <= set(languages.vscode_ids())


@pytest.mark.parametrize("name", list(LANGUAGES))
def test_every_node_type_exists_in_its_grammar(name):
    spec = LANGUAGES[name]
    grammar = ts_language(name)
    assert grammar is not None
    for field in NODE_FIELDS:
        unknown = [t for t in getattr(spec, field) if grammar.id_for_node_kind(t, True) is None]
        assert not unknown, f"{name}.{field}: {unknown}"
    assert spec.containers <= set(spec.definitions)


def test_extensions_are_unique_and_resolve_to_their_entry():
    extensions = [ext for spec in LANGUAGES.values() for ext in spec.extensions]
    assert len(extensions) == len(set(extensions))
    for spec in LANGUAGES.values():
        for ext in spec.extensions:
            assert re.fullmatch(r"\.[a-z0-9+]+", ext) and languages.resolve(None, f"file{ext}") is spec


def test_definition_line_is_the_literal_union():
    pattern = languages.definition_line().pattern
    head, rest = pattern.split("|(?:(?:", 1)
    modifiers, keywords = re.fullmatch(r"(.*)\)\\s\+\)\*\(\?:(.*)\)\\b", rest).groups()
    assert set(head.split("|")) == {"@", r"\#include\b"}
    assert set(modifiers.split("|")) == set(
        "export pub public private protected static async abstract final default unsafe".split())
    assert set(keywords.split("|")) == set("def class function func fn struct enum trait impl interface mod".split())
    lines = ["@app.route('/')", "#include <x.h>", "#includes", "export default async function f", "pub fn f()",
             "public static final class A", "fn(x)", "impl = 1", "struct.pack()", "functional()", "func main()",
             "abstract class A", "mod tests", "define(x)", "  def f():", "x = 1",
             "unsafe impl Send", "default"]  # fmt: skip
    for line in lines:
        assert bool(languages.definition_line().match(line)) == bool(LITERAL_DEFINITION.match(line)), line


def test_openers_and_plain_text_defaults():
    assert set(languages.INDENT_OPENERS) == {":", "{", "(", "["}
    assert LANGUAGES["python"].block_openers == (":", "(", "[", "{") and LANGUAGES["python"].indent_openers == (":",)
    assert PLAIN_TEXT.block_openers == ("{", "(", "[", "=>") and PLAIN_TEXT.indent_openers == ("{", "(", "[")
    assert PLAIN_TEXT.grammar is None and PLAIN_TEXT.line_comment == "#" and not PLAIN_TEXT.quotes
    assert all(spec.block_openers == PLAIN_TEXT.block_openers for spec in LANGUAGES.values() if not spec.indent_blocks)


def test_spec_stays_hashable():
    assert len({*LANGUAGES.values(), PLAIN_TEXT}) == len(LANGUAGES) + 1
