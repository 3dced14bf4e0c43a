"""The layers import one way: model/ imports nothing above it, server/ nothing from training/.

Read from the source (every `import` and `from ... import`, relative ones resolved, inside functions
too), so a lazy import inside a function counts as much as one at the top of a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"model": "midline.model", "server": "midline.server", "training": "midline.training"}
FORBIDDEN = {
    "model": ("midline.server", "midline.training"),
    "server": ("midline.training",),
    "training": (),
}


def imported_modules(path: Path, package: str) -> set[str]:
    """The absolute names of the modules `path` (a module of `package`) imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)  # `from midline import server`
    return names


def violations(folder: str) -> list[str]:
    found = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for name in sorted(imported_modules(path, PACKAGES[folder])):
            if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN[folder]):
                found.append(f"{path.relative_to(ROOT)} imports {name}")
    return found


@pytest.mark.parametrize("folder", sorted(PACKAGES))
def test_layers_import_one_way(folder):
    assert violations(folder) == []


def test_the_check_sees_relative_and_lazy_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from ..server import documents\n    import midline.training.cli\n")
    names = imported_modules(module, "midline.model")
    assert "midline.server.documents" in names and "midline.training.cli" in names
