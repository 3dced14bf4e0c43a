"""`midline-train` end to end on a small corpus: corpus -> tokenizer -> data -> train -> evaluate -> export,
then the exported model serves a completion through the same engine the server uses."""

from __future__ import annotations

import json
import shutil
import sysconfig
from pathlib import Path

import pytest
import torch

from midline.model.engine import Engine
from midline.model.fim import FimPrompt
from midline.training.cli import main

STDLIB = Path(sysconfig.get_paths()["stdlib"])
PACKAGES = ("json", "email", "http", "urllib", "xml/dom", "wsgiref")


def small_source_tree(root: Path) -> Path:
    """A few stdlib packages copied as separate "repositories" (the unit the corpus splits by)."""
    for package in PACKAGES:
        for file in sorted((STDLIB / package).glob("*.py"))[:6]:
            target = root / package.replace("/", "_") / file.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(file, target)
    shutil.copy(STDLIB / "LICENSE.txt", root / "LICENSE.txt")  # PSF-2.0: the corpus stage keeps permissive files
    return root


@pytest.mark.slow
def test_midline_train_runs_every_stage(tmp_path):
    torch.set_num_threads(1)  # 2 shared cores: one thread is much faster for a tiny model
    src = small_source_tree(tmp_path / "src")
    corpus, tok, data, run, report, out = (tmp_path / name
                                           for name in ("corpus", "tok", "data", "run", "eval.json", "model"))

    assert main(["corpus", "--sources", str(src), "--out", str(corpus), "--valid-fraction", "0.2",
                 "--workers", "1"]) == 0
    manifest = json.loads((corpus / "manifest.json").read_text())
    assert manifest["split"]["train"]["files"] > 0 and manifest["split"]["valid"]["files"] > 0

    assert main(["tokenizer", "--corpus", str(corpus), "--vocab-size", "600", "--out", str(tok)]) == 0
    assert main(["data", "--corpus", str(corpus), "--tokenizer", str(tok), "--out", str(data), "--seq-len", "128",
                 "--workers", "0"]) == 0
    assert main([
        "train", "--data", str(data), "--out", str(run), "--preset", "tiny", "--max-steps", "12", "--batch-size", "4",
        "--eval-every", "6", "--eval-batches", "2", "--warmup-steps", "2", "--device", "cpu", "--no-compile",
    ]) == 0
    losses = [line.split(",") for line in (run / "loss.csv").read_text().splitlines()[1:]]
    assert len(losses) >= 2

    assert main([
        "evaluate", "--model", str(run / "model"), "--corpus", str(corpus), "--per-kind", "2", "--no-functional",
        "--max-new-tokens", "8", "--loss-docs", "3", "--device", "cpu", "--out", str(report),
    ]) == 0
    figures = json.loads(report.read_text())
    assert figures["fim_format"] == "midline" and figures["metrics"]["overall"]["n"] >= 4
    assert figures["loss"]["bits_per_byte"] > 0

    assert main(["export", "--run", str(run), "--out", str(out), "--corpus", str(corpus), "--data", str(data),
                 "--eval", str(report)]) == 0
    card = (out / "README.md").read_text()
    assert f"| kept | {manifest['counts']['kept']} |" in card and "exact" in card.lower()

    engine = Engine.load(out, device="cpu")
    assert engine.fim.name == "midline"
    ids = engine.encode(FimPrompt("def add(a, b):\n    return ", "\n", path="calc.py", repo="demo"))
    generation = engine.generate(ids, max_new_tokens=4)
    assert generation.prompt_tokens == len(ids) and generation.finish_reason in ("eot", "length")
