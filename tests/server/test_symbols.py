"""Imports, definitions, scopes and the workspace index, on small real snippets of each language."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from midline.model import syntax as languages
from midline.server import symbols
from midline.server.documents import Document


def parse(language: str, code: str):
    source = textwrap.dedent(code).encode()
    return languages.new_parser(language).parse(source), source


CASES = {
    "python": (
        '''
        from __future__ import annotations
        import os, sys
        try:
            import ujson as json
        except ImportError:
            import json

        @dataclass
        class Point(Base):
            """A point.

            With details.
            """
            x: int = 0

            def norm(self, p: int = 2) -> float:
                return 0.0

        async def fetch(url: str,
                        timeout: float = 1.0) -> bytes:
            """Get it."""
            return b""
        ''',
        ["from __future__ import annotations", "import os, sys", "import ujson as json", "import json"],
        [
            ("Point", "class",
             '@dataclass\nclass Point(Base):\n    """A point.\n\n    With details.\n    """\n    ...'),
            ("norm", "method", "def norm(self, p: int = 2) -> float: ..."),
            ("fetch", "function",
             'async def fetch(url: str,\n                timeout: float = 1.0) -> bytes:\n    """Get it."""\n    ...'),
        ],
    ),
    "javascript": (
        """
        import fs from "fs";
        import { join } from "path";
        export function read(p) { return fs.readFileSync(p); }
        const twice = (x) => x * 2;
        class Cache extends Map {
          get(key) { return super.get(key); }
        }
        """,
        ['import fs from "fs";', 'import { join } from "path";'],
        [
            ("read", "function", "export function read(p) { ... }"),
            ("twice", "function", "const twice = (x) => ..."),
            ("Cache", "class", "class Cache extends Map { ... }"),
            ("get", "method", "get(key) { ... }"),
        ],
    ),
    "typescript": (
        """
        import type { A } from "./a";
        /** Options. */
        export interface Options { depth: number; name?: string }
        export type Id = string | number;
        export function run(o: Options): Id { return 1; }
        """,
        ['import type { A } from "./a";'],
        [
            ("Options", "interface", "/** Options. */\nexport interface Options { depth: number; name?: string }"),
            ("Id", "type", "export type Id = string | number;"),
            ("run", "function", "export function run(o: Options): Id { ... }"),
        ],
    ),
    "typescriptreact": (
        """
        import React from "react";
        export const Button = (props: { label: string }) => {
          return <button>{props.label}</button>;
        };
        """,
        ['import React from "react";'],
        [("Button", "function", "export const Button = (props: { label: string }) => { ... }")],
    ),
    "go": (
        """
        package geo

        import (
        \t"fmt"
        \t"math"
        )

        // Point is a point.
        type Point struct {
        \tX, Y float64
        }

        func (p Point) Norm() float64 { return math.Hypot(p.X, p.Y) }
        func New(x, y float64) *Point {
        \treturn &Point{x, y}
        }
        """,
        ['import (\n\t"fmt"\n\t"math"\n)'],
        [
            ("Point", "struct", "// Point is a point.\ntype Point struct {\n\tX, Y float64\n}"),
            ("Norm", "method", "func (p Point) Norm() float64 { ... }"),
            ("New", "function", "func New(x, y float64) *Point { ... }"),
        ],
    ),
    "rust": (
        """
        use std::fmt;
        use crate::geo::{Point, Line};

        pub struct Grid { cells: Vec<u8> }

        impl Grid {
            pub fn new(n: usize) -> Self { Grid { cells: vec![0; n] } }
        }

        pub trait Draw { fn draw(&self, out: &mut String); }
        """,
        ["use std::fmt;", "use crate::geo::{Point, Line};"],
        [
            ("Grid", "struct", "pub struct Grid { cells: Vec<u8> }"),
            ("Grid", "impl", "impl Grid { ... }"),
            ("new", "method", "pub fn new(n: usize) -> Self { ... }"),
            ("Draw", "trait", "pub trait Draw { ... }"),
            ("draw", "method", "fn draw(&self, out: &mut String);"),
        ],
    ),
    "java": (
        """
        package a;
        import java.util.List;
        import static java.lang.Math.max;

        public class Stack<T> {
            private List<T> items;
            public Stack() { items = null; }
            /** Pushes. */
            public void push(T item) { items.add(item); }
        }
        """,
        ["import java.util.List;", "import static java.lang.Math.max;"],
        [
            ("Stack", "class", "public class Stack<T> { ... }"),
            ("Stack", "method", "public Stack() { ... }"),
            ("push", "method", "/** Pushes. */\npublic void push(T item) { ... }"),
        ],
    ),
    "c": (
        """
        #ifndef VEC_H
        #define VEC_H
        #include <stddef.h>
        #include "alloc.h"

        typedef struct { double x, y; } vec2;
        struct list { struct list *next; };
        vec2 vec_add(vec2 a, vec2 b);
        static inline double vec_dot(vec2 a, vec2 b) {
            return a.x * b.x + a.y * b.y;
        }
        #endif
        """,
        ["#include <stddef.h>", '#include "alloc.h"'],
        [
            ("vec2", "type", "typedef struct { double x, y; } vec2;"),
            ("list", "struct", "struct list { struct list *next; }"),
            ("vec_add", "function", "vec2 vec_add(vec2 a, vec2 b);"),
            ("vec_dot", "function", "static inline double vec_dot(vec2 a, vec2 b) { ... }"),
        ],
    ),
    "cpp": (
        """
        #include <vector>
        namespace geo {
        template <typename T>
        class Shape : public Base {
         public:
          explicit Shape(T size);
          T area() const { return size_ * size_; }
         private:
          T size_;
        };
        int count(const std::vector<int>& v);
        }
        """,
        ["#include <vector>"],
        [
            ("Shape", "class", "template <typename T>\nclass Shape : public Base { ... }"),
            ("Shape", "method", "explicit Shape(T size);"),
            ("area", "method", "T area() const { ... }"),
            ("count", "function", "int count(const std::vector<int>& v);"),
        ],
    ),
}


@pytest.mark.parametrize("language", list(CASES))
def test_imports_and_definitions(language: str) -> None:
    code, expected_imports, expected_definitions = CASES[language]
    tree, source = parse(language, code)
    assert symbols.imports(tree, source, language) == expected_imports
    found = symbols.definitions(tree, source, language)
    assert [(d.name, d.kind, d.signature) for d in found] == expected_definitions


def test_members_know_their_class_and_render_under_it() -> None:
    tree, source = parse("python", CASES["python"][0])
    found = symbols.definitions(tree, source, "python")
    assert [d.scope for d in found] == ["", "@dataclass\nclass Point(Base):", ""]
    assert [d.line for d in found] == [8, 16, 19]
    assert symbols.render(found) == textwrap.dedent('''\
        @dataclass
        class Point(Base):
            def norm(self, p: int = 2) -> float: ...
        async def fetch(url: str,
                        timeout: float = 1.0) -> bytes:
            """Get it."""
            ...''')
    tree, source = parse("rust", CASES["rust"][0])
    rendered = symbols.render(symbols.definitions(tree, source, "rust"))
    assert "impl Grid {\n    pub fn new(n: usize) -> Self { ... }\n}" in rendered
    assert "impl Grid { ... }" not in rendered  # shown by its header, above its members


def test_long_docstrings_and_bodies_are_cut() -> None:
    doc = "\n".join(f"    line {i}" for i in range(20))
    tree, source = parse("python", f'def f():\n    """Summary.\n\n{doc}\n    """\n    return 1\n')
    [d] = symbols.definitions(tree, source, "python")
    assert d.signature == 'def f():\n    """Summary.\n    """\n    ...'
    fields = "\n".join(f"  f{i}: number;" for i in range(30))
    tree, source = parse("typescript", f"interface Big {{\n{fields}\n}}\n")
    [d] = symbols.definitions(tree, source, "typescript")
    assert d.signature.split("\n") == ["interface Big {", *[f"  f{i}: number;" for i in range(9)], "  ...", "}"]


def test_enclosing_scopes_innermost_last() -> None:
    code = "class A:\n    @property\n    def f(self):\n        x = 1\n        return x\n\ndef g():\n    pass\n"
    tree, source = parse("python", code)
    offset = source.index(b"return")
    scopes = symbols.enclosing_scopes(tree, offset, "python")
    assert [s.type for s in scopes] == ["class_definition", "decorated_definition"]
    assert symbols.render_scope(scopes, source, "python") == "class A:\n    @property\n    def f(self): ..."
    assert symbols.enclosing_scopes(tree, source.index(b"return x") + 8, "python")  # end of the body: still inside
    assert symbols.enclosing_scopes(tree, 0, "python") == []
    tree, source = parse("go", "package a\nfunc F() {\n\tx := 1\n}\n")
    [scope] = symbols.enclosing_scopes(tree, source.index(b"x :="), "go")
    assert symbols.signature(scope, source, "go") == "func F() { ... }"


def test_identifiers_near_nearest_first() -> None:
    lines = [f"v{i} = helper{i}(x)" for i in range(40)]
    tree, source = parse("python", "\n".join(lines) + "\n")
    offset = source.index(b"v20 =")
    names = symbols.identifiers_near(tree, source, offset, above=2, below=1)
    assert names[0] == "v20"
    assert set(names) == {"v18", "helper18", "v19", "helper19", "v20", "helper20", "v21", "helper21", "x"}
    assert names.index("helper20") < names.index("v18")


def test_symbol_index_over_a_workspace(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "geo.py").write_text("class Point:\n    def norm(self): ...\n\ndef dist(a, b): ...\n")
    (tmp_path / "web.ts").write_text("export function render(x: number): string { return ''; }\n")
    (tmp_path / "notes.txt").write_text("def not_code(): pass\n")
    for skipped in ("node_modules", ".venv", ".hidden", "__pycache__", "build", "dist"):
        (tmp_path / skipped).mkdir()
        (tmp_path / skipped / "x.py").write_text("def dist(): ...\n")
    (tmp_path / "huge.py").write_text("def huge(): ...\n" + "#" * 2000)
    index = symbols.SymbolIndex()
    assert index.index_workspace(str(tmp_path), max_bytes=1000) == 2
    geo = str(tmp_path / "pkg" / "geo.py")
    found = index.lookup(["render", "dist", "huge", "not_code", "Point"])
    assert [(d.name, d.path) for d in found] == [("render", str(tmp_path / "web.ts")), ("dist", geo), ("Point", geo)]
    assert index.lookup(["dist"], exclude_path=geo) == []

    # An open document wins over its disk copy, also when the workspace is indexed again.
    doc = Document((tmp_path / "pkg" / "geo.py").as_uri(), "python", 2, "def dist(a, b, c): ...\n")
    index.refresh([doc])
    index.index_workspace(str(tmp_path))
    assert [d.signature for d in index.lookup(["dist", "Point"])] == ["def dist(a, b, c): ..."]
    index.refresh([])  # closed: the disk copy counts again
    index.index_workspace(str(tmp_path))
    assert [d.name for d in index.lookup(["dist", "Point"])] == ["dist", "Point"]


def test_ambiguous_names_are_not_looked_up(tmp_path: Path) -> None:
    index = symbols.SymbolIndex(max_per_name=2)
    for i in range(3):
        index.index_file(str(tmp_path / f"m{i}.py"), "def main(): ...\n", "python")
    index.index_file(str(tmp_path / "u.py"), "def unique(): ...\n", "python")
    assert [d.name for d in index.lookup(["main", "unique"])] == ["unique"]
    assert len(index.lookup(["main"], exclude_path=str(tmp_path / "m0.py"))) == 2
