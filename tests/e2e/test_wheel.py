"""The release a user installs: a wheel built from this checkout carries the default model, the licence and
clean metadata, and installed alone into a new environment (no checkout on the path) it prints a completion.
"""

from __future__ import annotations

import email
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = ["pyproject.toml", "README.md", "LICENSE", "model", "server", "training"]
EXAMPLE = REPO / "tests" / "data" / "example.py"


def build_wheel(out: Path) -> Path:
    """`pip wheel` on a copy of the sources (setuptools builds in the tree it is given: not this one)."""
    src = out / "src"
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, src / name)
    pip_wheel = ["pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out / "dist"), str(src)]
    subprocess.run([sys.executable, "-m", *pip_wheel], check=True, capture_output=True, timeout=300)
    (wheel,) = (out / "dist").glob("midline-*.whl")
    return wheel


@pytest.mark.e2e
@pytest.mark.slow
def test_the_wheel_carries_the_model_and_installs_alone(tmp_path):
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = email.message_from_bytes(archive.read(metadata_name))
    default = {p.relative_to(REPO).as_posix() for p in (REPO / "model" / "default").iterdir()}
    assert {f"midline/{name}" for name in default} <= names, "the default model's files are in the wheel"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata["Requires-Python"] == ">=3.10"
    assert any(url.startswith("Repository, https://") for url in metadata.get_all("Project-URL"))
    assert not [n for n in names if n.startswith("tests/") or "__pycache__" in n]

    # A new environment with midline from the wheel only; its dependencies come from this one's site-packages
    # (a .pth line adds them to sys.path, and no .pth of theirs runs, so this checkout's editable install can't).
    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=False)
    bin_dir = env_dir / ("Scripts" if sys.platform == "win32" else "bin")
    python = str(bin_dir / "python")
    ask = "import sysconfig; print(sysconfig.get_path('purelib'))"
    purelib = Path(subprocess.check_output([python, "-c", ask], text=True).strip())
    (purelib / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    pip_install = ["pip", "--python", python, "install", "-q", "--no-deps", "--no-index", str(wheel)]
    subprocess.run([sys.executable, "-m", *pip_install], check=True, capture_output=True, timeout=300)
    run = tmp_path / "elsewhere"
    run.mkdir()
    shutil.copy2(EXAMPLE, run / "example.py")

    where = subprocess.run([python, "-c", "import midline.model as m; print(m.DEFAULT_MODEL_DIR)"],
                           cwd=run, capture_output=True, text=True, check=True)
    assert Path(where.stdout.strip()).is_relative_to(env_dir), where.stdout

    version = subprocess.run([bin_dir / "midline", "--version"], cwd=run, capture_output=True, text=True, check=True)
    assert version.stdout == f"midline {metadata['Version']}\n"

    # The quickstart's position, answered by the model inside the wheel.
    completed = subprocess.run([bin_dir / "midline", "complete", "example.py:18:11", "--device", "cpu"],
                               cwd=run, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip()
