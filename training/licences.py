"""Each corpus file's licence, as an SPDX id (or expression), and which licences are permissive.

Where a file's licence comes from, first found wins (`Licences.of`):

1. an `SPDX-License-Identifier:` line in the file's first lines (`spdx_header`);
2. its Python distribution (a site-packages file: the distribution whose RECORD lists the top-level package, its
   `License-Expression`, short `License` field, licence files or classifiers) or the stdlib (PSF-2.0);
3. the nearest `package.json` with a "license" (npm), or LICENSE/LICENCE/COPYING file, in its folder or one above
   it up to the source root (or the package's folder);
4. the Debian package that installed it (`/var/lib/dpkg/info/*.list`): its `/usr/share/doc/<package>/copyright`
   (the DEP-5 `Files: *` licence, else the text classified);
5. "unknown".

Licence texts are classified by distinctive phrases (`classify_text`); names and Debian's short names are
normalised to SPDX ids (`normalise`). `permissive` decides an expression: `A OR B` when either side is, `A AND
B` when both are.
"""

from __future__ import annotations

import functools
import json
import os
import re
from email.message import Message
from importlib.metadata import PathDistribution
from pathlib import Path
from typing import Iterable

UNKNOWN = "unknown"
PUBLIC_DOMAIN = "LicenseRef-public-domain"  # SPDX has no id for "Public Domain" (classifiers name it)
# Kept by default: no copyleft, no conditions beyond keeping a notice.
PERMISSIVE = frozenset({
    "MIT", "MIT-0", "MIT-CMU", "X11", "BSD-2-Clause", "BSD-3-Clause", "BSD-3-Clause-Clear", "BSD-4-Clause", "0BSD",
    "BSD", "Apache-2.0", "ISC", "PSF-2.0", "Python-2.0", "Zlib", "Unlicense", "CC0-1.0", "BSL-1.0", "HPND",
    "BlueOak-1.0.0", "WTFPL", "CC-BY-4.0", "Artistic-2.0", "UPL-1.0", "NCSA", "CNRI-Python", "FTL", "PostgreSQL",
    "Libpng", "libpng-2.0", "curl", "OpenSSL", PUBLIC_DOMAIN,
})
HEAD_LINES = 30  # an SPDX header is looked for in this many first lines
_SPDX = re.compile(r"SPDX-License-Identifier:\s*([^\n*]*?)\s*(?:\*/|-->|\n|$)")

# Lower-cased names (punctuation and "license"/"licence" removed) -> SPDX id.
_ALIASES = {
    "mit": "MIT", "expat": "MIT", "mit0": "MIT-0", "mitcmu": "MIT-CMU", "x11": "X11",
    "bsd": "BSD", "newbsd": "BSD-3-Clause", "modifiedbsd": "BSD-3-Clause", "bsd3clause": "BSD-3-Clause",
    "3clausebsd": "BSD-3-Clause", "bsd3": "BSD-3-Clause", "bsd2clause": "BSD-2-Clause", "bsd2": "BSD-2-Clause",
    "simplifiedbsd": "BSD-2-Clause", "freebsd": "BSD-2-Clause", "2clausebsd": "BSD-2-Clause", "0bsd": "0BSD",
    "bsd4clause": "BSD-4-Clause", "apache": "Apache-2.0", "apache2": "Apache-2.0", "apache20": "Apache-2.0",
    "apachesoftware": "Apache-2.0", "apachesoftware20": "Apache-2.0", "asl20": "Apache-2.0", "isc": "ISC",
    "psf": "PSF-2.0", "psf2": "PSF-2.0", "psf20": "PSF-2.0", "pythonsoftwarefoundation": "PSF-2.0",
    "python20": "Python-2.0",
    "zlib": "Zlib", "zliblibpng": "Zlib", "unlicense": "Unlicense", "theunlicense": "Unlicense",
    "publicdomain": PUBLIC_DOMAIN, "cc0": "CC0-1.0", "cc010": "CC0-1.0", "cc0universal": "CC0-1.0",
    "boostsoftware": "BSL-1.0", "bsl10": "BSL-1.0", "hpnd": "HPND", "historicalpermissionnoticeanddisclaimer": "HPND",
    "mpl20": "MPL-2.0", "mozillapublic20": "MPL-2.0", "mpl2": "MPL-2.0", "epl20": "EPL-2.0", "epl10": "EPL-1.0",
    "lgpl": "LGPL", "gpl": "GPL", "agpl": "AGPL", "gnulgpl": "LGPL", "gnugpl": "GPL",
    "gnulessergeneralpublic": "LGPL", "gnugeneralpublic": "GPL", "gnuaffero": "AGPL",
    "gnulibraryorlessergeneralpubliclgpl": "LGPL", "gnugeneralpublicgpl": "GPL", "gnuaffarogeneralpublicv3": "AGPL-3.0",
    "gnulessergeneralpublicv2orlaterlgplv2": "LGPL-2.0-or-later", "gnulessergeneralpublicv3lgplv3": "LGPL-3.0-only",
    "gnugeneralpublicv2gplv2": "GPL-2.0-only", "gnugeneralpublicv3gplv3": "GPL-3.0-only",
    "gnugeneralpublicv2orlatergplv2": "GPL-2.0-or-later", "gnugeneralpublicv3orlatergplv3": "GPL-3.0-or-later",
    "gnulessergeneralpublicv3orlaterlgplv3": "LGPL-3.0-or-later", "artistic2": "Artistic-2.0", "wtfpl": "WTFPL",
    "apache2llvmexceptions": "Apache-2.0 WITH LLVM-exception", "mit1": "MIT", "pd": PUBLIC_DOMAIN,
    "libpng": "Libpng", "postgresql": "PostgreSQL", "ftl": "FTL",
    "ncsa": "NCSA", "universityofillinoisncsaopensource": "NCSA", "blueoak100": "BlueOak-1.0.0", "upl10": "UPL-1.0",
}
# The GNU licences' short names: Debian's GPL-2+, GPLv3, LGPL-2.1-or-later, ...
_GNU = re.compile(r"(A?GPL|LGPL)[ -]?v?(\d(?:\.\d)?)(\+|-or-later| or later|-only)?", re.I)
_OPERATOR = re.compile(r"\s+(OR|AND|WITH)\s+|\s*/\s*(?=[A-Za-z])", re.I)
# Distinctive phrases of licence texts, each -> its id (by where it first appears in the text; see classify_text).
_PHRASES: tuple[tuple[str, str], ...] = (
    (r"apache license,?\s+version 2\.0|licensed under the apache license", "Apache-2.0"),
    (r"permission is hereby granted, free of charge", "MIT"),
    (r"permission to use, copy, modify, and(?:/or)? distribute this software for any purpose with or without fee "
     r"is hereby granted", "ISC"),
    (r"permission to use, copy, modify,? and distribute this software and its documentation for any purpose",
     "HPND"),
    (r"redistribution and use in source and binary forms", "BSD"),
    (r"mozilla public license,? v(?:ersion|\.) ?2\.0", "MPL-2.0"),
    (r"gnu lesser general public\s+license|gnu library general public\s+license", "LGPL"),
    (r"gnu affero general public\s+license", "AGPL"),
    (r"gnu general public\s+license", "GPL"),
    (r"python software foundation license|psf license agreement", "PSF-2.0"),
    (r"this is free and unencumbered software released into the public domain", "Unlicense"),
    (r"cc0 1\.0 universal|creative commons zero", "CC0-1.0"),
    (r"the origin of this software must not be misrepresented", "Zlib"),
    (r"boost software license", "BSL-1.0"),
    (r"eclipse public license", "EPL-2.0"),
)
_PHRASE = re.compile("|".join(f"(?P<p{i}>{p})" for i, (p, _) in enumerate(_PHRASES)), re.I)
_LICENCE_FILE = re.compile(r"(?:UN)?LICEN[CS]E|COPYING|COPYRIGHT|NOTICE", re.I)


def spdx_header(text: str) -> str | None:
    """The SPDX expression of an `SPDX-License-Identifier:` line in the text's first lines, normalised; or None."""
    head = "\n".join(text.split("\n", HEAD_LINES)[:HEAD_LINES])
    m = _SPDX.search(head) if "SPDX-License-Identifier" in head else None
    return normalise(m[1]) if m and m[1].strip() else None


def normalise(name: str) -> str:
    """An SPDX id or expression for a licence name (`MIT License`, `Apache 2.0`, `GPL-2+`, `MIT OR Apache-2.0`,
    `License :: OSI Approved :: BSD License`); a name it does not know is kept as it is, stripped."""
    name = name.strip()
    if "::" in name:  # a trove classifier
        name = name.split("::")[-1].strip()
    if _key(name) in _ALIASES:
        return _ALIASES[_key(name)]
    pieces = _OPERATOR.split(name)
    if len(pieces) == 1:
        return _one(name)
    out = []
    for i, piece in enumerate(pieces):
        if i % 2:
            out.append(f" {(piece or 'OR').upper()} ")
        else:
            m = re.fullmatch(r"(\(*)\s*(.*?)\s*(\)*)", piece.strip())
            out.append(m[1] + _one(m[2]) + m[3])  # type: ignore[index]
    return _unwrap("".join(out))


def _unwrap(expression: str) -> str:
    """The expression without parentheses around the whole of it."""
    while expression.startswith("(") and expression.endswith(")"):
        depth = 0
        for i, c in enumerate(expression):
            depth += (c == "(") - (c == ")")
            if depth == 0 and i < len(expression) - 1:
                return expression  # the first one closes before the end: `(A) OR (B)`
        expression = expression[1:-1].strip()
    return expression


def _one(name: str) -> str:
    """One licence's name (no operators) -> its SPDX id, or the name."""
    name = name.strip().strip("()").strip()
    if m := _GNU.fullmatch(name):
        family, version, later = m.groups()
        version = version if "." in version else f"{version}.0"
        return f"{family.upper()}-{version}-{'only' if later in (None, '-only') else 'or-later'}"
    return _ALIASES.get(_key(name), name)


def _key(name: str) -> str:
    name = re.sub(r"\b(?:the|licen[cs]es?|version|v(?=\d))\b", "", name.lower())
    return re.sub(r"[^a-z0-9]", "", name)


def classify_text(text: str) -> str:
    """The licence of a licence text (LICENSE, COPYING, a copyright file), by the distinctive phrase that comes
    first; UNKNOWN when none is there. BSD is told 2- from 3-clause by its endorsement clause, the GNU licences'
    versions by their text ('or any later version' in a notice makes it `-or-later`)."""
    if spdx := spdx_header(text):
        return spdx
    m = _PHRASE.search(text)
    if not m:
        return UNKNOWN
    found = _PHRASES[int(m.lastgroup[1:])][1]  # type: ignore[index]
    rest = text[m.start():].lower()
    if found == "BSD":
        return "BSD-3-Clause" if re.search(r"neither the name|names? of (?:its|the) contributors", rest) \
            else "BSD-2-Clause"
    if found == "ISC" and "provided that the above copyright notice" not in rest:
        return "0BSD"
    if found in ("LGPL", "GPL", "AGPL"):
        if found == "LGPL" and "library general public" in rest[:200]:
            version = "2.0"
        else:
            v = re.search(r"version (\d(?:\.\d)?)", rest[:2000])
            version = v[1] if v else "3" if found == "AGPL" else ""
        if not version:
            return found
        version = version if "." in version else f"{version}.0"
        notice = "terms and conditions" not in rest
        later = notice and re.search(r"any later\s+version", rest[:3000])
        return f"{found}-{version}-{'or-later' if later else 'only'}"
    return found


def permissive(expression: str, allowed: Iterable[str] = PERMISSIVE) -> bool:
    """Whether an SPDX expression is kept by the allow list: `A OR B` if either side is, `A AND B` if both are
    (`X WITH exception` as X)."""
    allowed = set(allowed)
    expression = expression.strip()
    if expression in allowed:
        return True
    parts = _split_top(expression, " OR ")
    if len(parts) > 1:
        return any(permissive(p, allowed) for p in parts)
    parts = _split_top(expression, " AND ")
    if len(parts) > 1:
        return all(permissive(p, allowed) for p in parts)
    if expression.startswith("(") and expression.endswith(")"):
        return permissive(expression[1:-1], allowed)
    return expression.split(" WITH ")[0].strip() in allowed


def _split_top(expression: str, op: str) -> list[str]:
    """The expression split at `op` outside parentheses (case-insensitive)."""
    parts, depth, start, upper = [], 0, 0, expression.upper()
    i = 0
    while i < len(expression):
        c = expression[i]
        depth += (c == "(") - (c == ")")
        if depth == 0 and upper.startswith(op, i):
            parts.append(expression[start:i])
            start = i = i + len(op)
            continue
        i += 1
    return [p.strip() for p in parts + [expression[start:]]]


class Licences:
    """Finds files' licences (see the module's docstring), caching what folders and packages have."""

    def __init__(self, stdlib: str, dpkg_info: str = "/var/lib/dpkg/info", doc: str = "/usr/share/doc") -> None:
        self.stdlib = stdlib.rstrip(os.sep) + os.sep
        self.dpkg_info, self.doc = Path(dpkg_info), Path(doc)
        self._dpkg_files: dict[str, str] | None = None

    def of(self, file: str, root: str) -> str:
        """The licence of `file` (found under the source `root`) from what is around it, without reading it (its
        SPDX header, read with the text, comes first: `spdx_header`)."""
        parts = Path(file).parts
        packages = [i for i, p in enumerate(parts[:-1]) if p in ("site-packages", "dist-packages")]
        if packages:
            site = str(Path(*parts[: packages[-1] + 1]))
            top = parts[packages[-1] + 1].split(".")[0] if len(parts) > packages[-1] + 1 else ""
            found = self._distribution(site, top)
            if found != UNKNOWN:
                return found
            root = str(Path(*parts[: packages[-1] + 2]))  # LICENSE files inside the package only
        elif file.startswith(self.stdlib):
            return "PSF-2.0"
        modules = [i for i, p in enumerate(parts[:-1]) if p == "node_modules"]
        if modules:  # an npm package: look no higher than its folder
            i = modules[-1] + (3 if parts[modules[-1] + 1].startswith("@") else 2)
            root = str(Path(*parts[:i])) if i < len(parts) else root
        found = self._beside(os.path.dirname(file), os.path.abspath(root))
        return found if found != UNKNOWN else self._debian(file)

    # -- a folder and the ones above it, up to the root

    def _beside(self, folder: str, root: str) -> str:
        found = self._folder(folder)
        if found != UNKNOWN or folder == root or not folder.startswith(root) or folder == os.path.dirname(folder):
            return found
        return self._beside(os.path.dirname(folder), root)

    @functools.lru_cache(maxsize=65536)
    def _folder(self, folder: str) -> str:
        """The licence a folder's package.json names, else its licence file's (UNKNOWN if neither)."""
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            return UNKNOWN
        if "package.json" in names:
            found = _package_json(os.path.join(folder, "package.json"))
            if found != UNKNOWN:
                return found
        for name in names:
            if _LICENCE_FILE.match(name) and os.path.isfile(path := os.path.join(folder, name)):
                found = classify_text(_read(path))
                if found != UNKNOWN:
                    return found
        return UNKNOWN

    # -- Python distributions

    @functools.lru_cache(maxsize=65536)
    def _distribution(self, site: str, top: str) -> str:
        dist = self._top_levels(site).get(top)
        return _distribution_licence(dist) if dist else UNKNOWN

    @functools.lru_cache(maxsize=64)
    def _top_levels(self, site: str) -> dict[str, PathDistribution]:
        """Top-level package or module name -> its distribution, from each *.dist-info's RECORD (or top_level.txt)."""
        tops: dict[str, PathDistribution] = {}
        for info in sorted(Path(site).glob("*.dist-info")) + sorted(Path(site).glob("*.egg-info")):
            dist = PathDistribution(info)
            names = set()
            for line in (dist.read_text("RECORD") or "").splitlines():
                first = line.split(",")[0].split("/")[0]
                if first and not first.endswith((".dist-info", ".egg-info", ".pth", ".data")) and first != "..":
                    names.add(first.split(".")[0] if first.endswith((".py", ".so", ".pyd")) else first)
            names.update((dist.read_text("top_level.txt") or "").split())
            for name in names:
                tops.setdefault(name, dist)
        return tops

    # -- Debian packages

    def _debian(self, file: str) -> str:
        package = self._dpkg().get(file)
        if not package:
            real = os.path.realpath(file)
            package = self._dpkg().get(real) if real != file else None
        return self._copyright(package) if package else UNKNOWN

    def _dpkg(self) -> dict[str, str]:
        """Installed file -> its Debian package, from dpkg's lists (read once; empty without dpkg)."""
        if self._dpkg_files is None:
            self._dpkg_files = {}
            for listing in sorted(self.dpkg_info.glob("*.list")):
                package = listing.stem.split(":")[0]
                for line in _read(str(listing)).splitlines():
                    self._dpkg_files.setdefault(line, package)
        return self._dpkg_files

    @functools.lru_cache(maxsize=4096)
    def _copyright(self, package: str) -> str:
        """A Debian package's licence: its copyright file's `Files: *` stanza's License (DEP-5), else the first
        stanza's, else the text classified."""
        text = _read(str(self.doc / package / "copyright"))
        if not text:
            return UNKNOWN
        if not text.startswith("Format:"):  # not machine-readable (DEP-5)
            return classify_text(text)
        stanzas = [s for s in re.split(r"\n\s*\n", text) if re.search(r"^Files:", s, re.M)]
        for stanza in sorted(stanzas, key=lambda s: not re.search(r"^Files:\s*\*\s*$", s, re.M)):
            if m := re.search(r"^License:[ \t]*(.*)$", stanza, re.M):
                return normalise(m[1]) if m[1].strip() else classify_text(stanza)
        return classify_text(text)


def _distribution_licence(dist: PathDistribution) -> str:
    """A distribution's licence: License-Expression; a short License field; the licence files' texts; classifiers."""
    meta: Message = dist.metadata  # type: ignore[assignment]
    if expression := (meta.get("License-Expression") or "").strip():
        return normalise(expression)
    field = (meta.get("License") or "").strip()
    vague = {"", UNKNOWN, "BSD", "GPL", "LGPL", "AGPL", "UNKNOWN", "Dual License", "Other/Proprietary License"}
    if field and "\n" not in field and len(field) < 80 and normalise(field) not in vague:
        return normalise(field)
    if field and len(field) >= 80 and (found := classify_text(field)) != UNKNOWN:  # the whole text in the field
        return found
    for name in meta.get_all("License-File") or []:
        for folder in ("licenses/", ""):
            if (text := dist.read_text(folder + name)) and (found := classify_text(text)) != UNKNOWN:
                return found
    classifiers = [normalise(c) for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    classifiers = [c for c in classifiers if c not in ("OSI Approved", "")]
    if classifiers:
        return " OR ".join(dict.fromkeys(classifiers))
    return normalise(field) if field and "\n" not in field else UNKNOWN


def _package_json(path: str) -> str:
    """An npm package.json's licence ("license": an expression, or {"type"}; old "licenses": a list)."""
    try:
        data = json.loads(_read(path) or "null")
    except ValueError:
        return UNKNOWN
    if not isinstance(data, dict):
        return UNKNOWN
    found = data.get("license") or data.get("licenses")
    if isinstance(found, list):
        found = " OR ".join(str(x.get("type", "") if isinstance(x, dict) else x) for x in found)
    elif isinstance(found, dict):
        found = found.get("type")
    if not isinstance(found, str) or not found.strip() or found.upper().startswith(("SEE LICEN", "UNLICENSED")):
        return UNKNOWN  # "SEE LICENSE IN <file>": the licence file beside it is read next
    return normalise(found)


def _read(path: str, limit: int = 200_000) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(limit)
    except OSError:
        return ""
