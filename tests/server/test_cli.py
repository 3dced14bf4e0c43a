"""`midline complete` as a newcomer runs it: a completion printed, or one clear line saying why not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "data" / "example.py"


def complete(location: str, model: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "midline.server.cli", "complete", location, "--model", str(model), "--device", "cpu"],
        capture_output=True, text=True, timeout=120,
    )


@pytest.mark.e2e
def test_prints_the_completion_at_a_position(tiny_model_dir):
    line = EXAMPLE.read_text().split("\n")[7]  # the quickstart's comment line
    result = complete(f"{EXAMPLE}:8:{len(line) + 1}", tiny_model_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_bad_locations_say_what_is_wrong(tiny_model_dir, tmp_path):
    for location, message in [
        (f"{EXAMPLE}:8", "expected FILE:LINE:COL"),
        (f"{EXAMPLE}:99:1", "no line 99"),
        (f"{EXAMPLE}:8:99", "columns run 1..41"),
        (f"{tmp_path / 'missing.py'}:1:1", "No such file"),
    ]:
        result = complete(location, tiny_model_dir)
        assert result.returncode == 2 and message in result.stderr, (location, result.stderr)


def test_version_is_the_distributions(capsys):
    from importlib import metadata

    from midline.server.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"midline {metadata.version('midline')}\n"
