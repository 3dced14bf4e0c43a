"""Provenance: each corpus file's licence (training/licences.py), the permissive default filter, and the manifest's
tables by licence and language."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pytest

from midline.training import corpus, export
from midline.training import licences as L
from midline.training.cli import main

from .test_corpus import MIT, module

STDLIB = sysconfig.get_paths()["stdlib"]

APACHE = "                                 Apache License\n                           Version 2.0, January 2004\n"
BSD = ("Copyright (c) 2020, Someone\n\nRedistribution and use in source and binary forms, with or without "
       "modification, are permitted provided that the following conditions are met:\n1. ...\n2. ...\n")
BSD3 = BSD + "3. Neither the name of the copyright holder nor the names of its contributors may be used ...\n"
ISC = ("Permission to use, copy, modify, and/or distribute this software for any purpose with or without fee is hereby "
       "granted, provided that the above copyright notice and this permission notice appear in all copies.\n")
ZERO_BSD = ("Permission to use, copy, modify, and/or distribute this software for any purpose with or without fee is "
            "hereby granted.\n\nTHE SOFTWARE IS PROVIDED \"AS IS\" ...\n")
GPL2 = ("                    GNU GENERAL PUBLIC LICENSE\n                       Version 2, June 1991\n\n"
        "                    TERMS AND CONDITIONS FOR COPYING, DISTRIBUTION AND MODIFICATION\n"
        "... either version 2 of the License, or (at your option) any later version.\n")
GPL2_NOTICE = ("This program is free software; you can redistribute it and/or modify it under the terms of the GNU "
               "General Public License as published by the Free Software Foundation; either version 2 of the "
               "License, or\n"
               "(at your option) any later version.\n")
LGPL21 = "                  GNU LESSER GENERAL PUBLIC LICENSE\n                       Version 2.1, February 1999\n\n"
MPL = "Mozilla Public License Version 2.0\n==================================\n"
ZLIB = ("This software is provided 'as-is', without any express or implied warranty. ...\n"
        "1. The origin of this software must not be misrepresented; you must not claim ...\n")
UNLICENSE = "This is free and unencumbered software released into the public domain.\n"


@pytest.mark.parametrize("text, licence", [
    (MIT, "MIT"), (APACHE, "Apache-2.0"), (BSD, "BSD-2-Clause"), (BSD3, "BSD-3-Clause"), (ISC, "ISC"),
    (ZERO_BSD, "0BSD"), (GPL2, "GPL-2.0-only"), (GPL2_NOTICE, "GPL-2.0-or-later"), (LGPL21, "LGPL-2.1-only"),
    (MPL, "MPL-2.0"), (ZLIB, "Zlib"), (UNLICENSE, "Unlicense"),
    ("Copyright 2020 Someone. All rights reserved.\n", "unknown"),
    ("// SPDX-License-Identifier: BSD-3-Clause OR MIT\n" + GPL2, "BSD-3-Clause OR MIT"),
])
def test_licence_texts_are_classified(text, licence):
    assert L.classify_text(text) == licence


def test_the_python_licence_text_is_psf():
    assert L.classify_text((Path(STDLIB) / "LICENSE.txt").read_text()) == "PSF-2.0"


@pytest.mark.parametrize("name, spdx", [
    ("MIT License", "MIT"), ("Apache 2.0", "Apache-2.0"), ("Apache Software License", "Apache-2.0"),
    ("License :: OSI Approved :: BSD License", "BSD"), ("new BSD", "BSD-3-Clause"), ("GPL-2+", "GPL-2.0-or-later"),
    ("GPL-2", "GPL-2.0-only"), ("LGPLv3", "LGPL-3.0-only"), ("MIT/Apache-2.0", "MIT OR Apache-2.0"),
    ("(MIT OR Apache-2.0) AND Zlib", "(MIT OR Apache-2.0) AND Zlib"),
    ("((GPL-2.0 WITH x) OR MIT)", "(GPL-2.0-only WITH x) OR MIT"), ("Python Software Foundation License", "PSF-2.0"),
    ("GPL-2 with Linux-syscall-note", "GPL-2.0-only WITH Linux-syscall-note"), ("Public Domain", L.PUBLIC_DOMAIN),
    ("Some Custom Licence 1.0", "Some Custom Licence 1.0"),
])
def test_names_are_normalised_to_spdx(name, spdx):
    assert L.normalise(name) == spdx


@pytest.mark.parametrize("expression, kept", [
    ("MIT", True), ("GPL-3.0-only", False), ("unknown", False), ("MIT OR GPL-3.0-only", True),
    ("MIT AND GPL-3.0-only", False), ("(GPL-2.0-only OR MIT) AND Apache-2.0", True),
    ("Apache-2.0 WITH LLVM-exception", True), ("MPL-2.0", False),
])
def test_permissive_reads_or_and_and(expression, kept):
    assert L.permissive(expression) is kept


def test_an_allow_list_replaces_the_permissive_set():
    assert L.permissive("GPL-2.0-only", ["GPL-2.0-only"]) and not L.permissive("MIT", ["GPL-2.0-only"])


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def dist_info(site: Path, name: str, top: str, **fields: str | list[str]) -> None:
    """A *.dist-info whose RECORD lists `top` and whose METADATA has `fields` (a list: the field repeated)."""
    lines = [f"Name: {name}", "Version: 1.0"]
    for key, value in fields.items():
        lines += [f"{key.replace('_', '-')}: {v}" for v in (value if isinstance(value, list) else [value])]
    write(site / f"{name}-1.0.dist-info", {"METADATA": "\n".join(lines) + "\n",
                                           "RECORD": f"{top}/__init__.py,,\n{name}-1.0.dist-info/METADATA,,\n"})


def test_a_files_licence_comes_from_its_package_or_folder(tmp_path):
    site = tmp_path / "env" / "lib" / "site-packages"
    dist_info(site, "alpha", "alpha", License_Expression="MIT OR Apache-2.0")
    dist_info(site, "beta_dist", "beta", License="BSD", Classifier="License :: OSI Approved :: BSD License",
              License_File="LICENSE")
    write(site / "beta_dist-1.0.dist-info", {"licenses/LICENSE": BSD3})
    dist_info(site, "gamma", "gamma", Classifier=["License :: OSI Approved :: GNU General Public License v3 (GPLv3)"])
    write(site, {"alpha/__init__.py": "", "beta/x/y.py": "", "gamma/__init__.py": "", "loose/m.py": "",
                 "loose/LICENSE.txt": ISC})
    npm = write(tmp_path / "node_modules", {
        "left-pad/package.json": json.dumps({"name": "left-pad", "license": "WTFPL"}), "left-pad/index.js": "",
        "@scope/pkg/package.json": json.dumps({"name": "@scope/pkg", "license": "SEE LICENSE IN LICENSE.md"}),
        "@scope/pkg/LICENSE.md": APACHE, "@scope/pkg/dist/a.js": "",
        "old/package.json": json.dumps({"licenses": [{"type": "MIT"}, {"type": "Apache-2.0"}]}), "old/lib/o.js": "",
    })
    checkout = write(tmp_path / "src", {"COPYING": GPL2, "proj/deep/er/c.c": "", "other/LICENSE": MPL, "other/x.h": ""})
    found = L.Licences(STDLIB, dpkg_info=str(tmp_path / "none"))

    def of(path: Path, root: Path) -> str:
        return found.of(str(path), str(root))

    assert of(site / "alpha/__init__.py", site) == "MIT OR Apache-2.0"  # License-Expression
    assert of(site / "beta/x/y.py", site) == "BSD-3-Clause"  # a vague "BSD": the licence file says which
    assert of(site / "gamma/__init__.py", site) == "GPL-3.0-only"  # the classifier
    assert of(site / "loose/m.py", site) == "ISC"  # no distribution: the LICENSE in its package
    assert of(npm / "left-pad/index.js", npm) == "WTFPL"
    assert of(npm / "@scope/pkg/dist/a.js", npm) == "Apache-2.0"  # SEE LICENSE IN: the file beside package.json
    assert of(npm / "old/lib/o.js", npm) == "MIT OR Apache-2.0"  # the old "licenses" list
    assert of(checkout / "proj/deep/er/c.c", checkout) == "GPL-2.0-only"  # up to the source root
    assert of(checkout / "other/x.h", checkout) == "MPL-2.0"  # the nearest one
    assert of(checkout / "proj/deep/er/c.c", checkout / "proj") == "unknown"  # never above the root
    assert of(Path(STDLIB) / "json/decoder.py", STDLIB) == "PSF-2.0"


def test_a_system_files_licence_comes_from_its_debian_package(tmp_path):
    info = write(tmp_path / "info", {"libfoo-dev:amd64.list": f"{tmp_path}/include/foo.h\n",
                                     "libbar-dev.list": f"{tmp_path}/include/bar.h\n"})
    doc = write(tmp_path / "doc", {
        "libfoo-dev/copyright": "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"
                                "Files: debian/*\nLicense: GPL-2+\n\nFiles: *\nCopyright: 2020 Foo\nLicense: Zlib\n",
        "libbar-dev/copyright": "This is the Debian prepackaged version of bar.\n\n" + GPL2_NOTICE.replace(
            "GNU General", "GNU Lesser General").replace("version 2", "version 2.1"),
    })
    include = write(tmp_path / "include", {"foo.h": "", "bar.h": "", "baz.h": ""})
    found = L.Licences(STDLIB, dpkg_info=str(info), doc=str(doc))
    assert found.of(str(include / "foo.h"), str(include)) == "Zlib"  # the `Files: *` stanza
    assert found.of(str(include / "bar.h"), str(include)) == "LGPL-2.1-or-later"  # not DEP-5: the text
    assert found.of(str(include / "baz.h"), str(include)) == "unknown"  # no package


# -- the corpus stage ---------------------------------------------------------------------------------------------

def js_module(seed: int) -> str:
    """A plausible JavaScript module, different for every seed."""
    body = module(seed).replace("def ", "function ").replace('"""', "//").replace("import ", "// import ")
    return "".join(line.rstrip(":") + (" {}" if line.startswith("function") else "") + "\n"
                   for line in body.splitlines() if not line.startswith(" "))


def mixed_tree(root: Path) -> Path:
    """Python, JavaScript and C files under MIT, GPL (a header beside MIT), unknown and Apache (package.json)."""
    return write(root, {
        "mitpy/LICENSE": MIT, **{f"mitpy/m{i}.py": module(i) for i in range(4)},
        "mitpy/gpl.py": "# SPDX-License-Identifier: GPL-2.0-only\n" + module(10),
        "nolicence/n.py": module(11),
        "web/package.json": json.dumps({"name": "web", "license": "Apache-2.0"}),
        **{f"web/src/w{i}.js": js_module(20 + i) for i in range(2)},
        "clib/COPYING": ZLIB, "clib/c.h": "\n".join(f"int f{i}(int x, int y);  /* {module(30)[:40]!r} */"
                                                    for i in range(30)) + "\n",
    })


def test_the_corpus_keeps_permissive_files_and_tabulates_language_and_licence(tmp_path, tiny_model_dir):
    src = mixed_tree(tmp_path / "src")
    m = corpus.build_corpus([src], tmp_path / "out", valid_fraction=0.0, workers=1,
                            extensions=corpus.language_extensions(["all"]))
    assert m["counts"]["licence"] == 2 and m["licences_dropped"] == {"GPL-2.0-only": 1, "unknown": 1}
    assert m["counts"]["seen"] == sum(n for k, n in m["counts"].items() if k != "seen")
    records = {r["path"]: r["licence"] for r in corpus.read_split(tmp_path / "out", "train")}
    assert records == {**{f"m{i}.py": "MIT" for i in range(4)}, "src/w0.js": "Apache-2.0", "src/w1.js": "Apache-2.0",
                       "c.h": "Zlib"}
    assert set(m["licences"]) == {"MIT", "Apache-2.0", "Zlib"} and m["licences"]["MIT"]["files"] == 4
    assert {k: v["files"] for k, v in m["languages"].items()} == {"python": 4, "javascript": 2, "c": 1}
    assert m["by_language"]["javascript"] == {"Apache-2.0": m["languages"]["javascript"]}
    estimated = m["licences"]["MIT"]
    assert m["tokens"] == "estimated: UTF-8 bytes / 4"
    assert estimated["tokens"] == pytest.approx(estimated["bytes"] / 4, 1e-3)

    counted = corpus.build_corpus([src], tmp_path / "counted", valid_fraction=0.0, workers=1, licences=None,
                                  tokenizer=tiny_model_dir)
    assert counted["counts"]["licence"] == 0 and set(counted["licences"]) == {"MIT", "GPL-2.0-only", "unknown"}
    assert set(counted["languages"]) == {"python"}  # the default extensions: Python's
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    texts = [r["text"] for r in corpus.read_split(tmp_path / "counted", "train") if r["licence"] == "MIT"]
    assert counted["licences"]["MIT"]["tokens"] == sum(len(tok.encode(t).ids) for t in texts)
    assert counted["tokens"] == f"counted with {tiny_model_dir}"

    card = export._card_licence(export.CardInputs(config={}, parameters=1, tokenizer={}, manifest=counted))
    assert "| licence | files | MB | tokens |" in card and "| MIT | 4 |" in card


def test_the_cli_reads_chosen_languages_and_licences_and_reports_them(tmp_path, capsys):
    src = mixed_tree(tmp_path / "src")
    assert main(["corpus", "--sources", str(src), "--out", str(tmp_path / "out"), "--valid-fraction", "0",
                 "--workers", "1", "--languages", "c", "javascript", "--licences", "zlib", "GPL-2.0-only"]) == 0
    printed = capsys.readouterr().out
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["params"]["licences"] == ["GPL-2.0-only", "Zlib"] and set(m["licences"]) == {"Zlib"}
    assert m["licences_dropped"] == {"Apache-2.0": 2}
    assert "    c: 1 files" in printed and "      Zlib: 1 files" in printed
    assert "dropped for their licence: Apache-2.0 2" in printed
    with pytest.raises(SystemExit):
        main(["corpus", "--out", str(tmp_path / "x"), "--languages", "cobol"])
    assert "unknown language cobol" in capsys.readouterr().err
