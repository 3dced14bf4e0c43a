"""Train stage: the loss falls, kill + resume equals an uninterrupted run, no pickle, DDP equals one process."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from midline.model import fim
from midline.training import train as T
from midline.training.data import DataConfig, PackedDataset, build_data
from midline.training.model import newton_schulz
from midline.training.train import PRESETS, TrainConfig, lr_at, train

from ..corpus_fixtures import write_corpus

BASE = TrainConfig(**PRESETS["tiny"], batch_size=4, grad_accum=1, max_steps=12, warmup_steps=2, lr=3e-3, min_lr=3e-4,
                   log_every=1, eval_every=6, eval_batches=2, checkpoint_every=4)
COMPARED = ("step", "tokens", "lr", "train_loss", "val_loss", "grad_norm")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: faster on a small shared CPU, and the same arithmetic in every run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_dir(tiny_model_dir, tmp_path_factory) -> Path:
    corpus = write_corpus(tmp_path_factory.mktemp("corpus"))
    out = tmp_path_factory.mktemp("data")
    build_data(corpus, tiny_model_dir, out, DataConfig(seq_len=64, workers=0))
    return out


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory) -> tuple[Path, dict]:
    """An uninterrupted run of BASE."""
    out = tmp_path_factory.mktemp("reference")
    return out, train(BASE, data_dir, out)


def rows(out: Path) -> list[dict]:
    with open(out / "loss.csv", newline="") as f:
        return list(csv.DictReader(f))


def curve(out: Path) -> list[tuple]:
    return [tuple(r[k] for k in COMPARED) for r in rows(out)]


class Killed(Exception):
    pass


def kill_at(n: int):
    def hook(step: int) -> None:
        if step == n:
            raise Killed

    return hook


def test_a_few_steps_reduce_the_loss_and_write_curves(reference):
    out, summary = reference
    log = rows(out)
    assert [int(r["step"]) for r in log] == list(range(1, 13))
    assert float(log[-1]["train_loss"]) < float(log[0]["train_loss"]) - 0.3
    assert float(log[0]["train_loss"]) == pytest.approx(math.log(1024), abs=0.3)  # starts near uniform
    val = [float(r["val_loss"]) for r in log if r["val_loss"]]
    assert len(val) == 2 and val[1] < val[0]
    assert summary["steps"] == 12 and summary["tokens"] == 12 * 4 * 64
    assert summary["val_loss"] == pytest.approx(val[-1], abs=1e-5)
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_checkpoints_are_safetensors_and_json_only(reference):
    out, _ = reference
    checkpoint = out / "checkpoint"
    assert sorted(p.name for p in checkpoint.iterdir()) == ["model.safetensors", "optimizer.safetensors",
                                                            "rng.safetensors", "state.json"]
    for path in out.rglob("*"):
        if path.is_file():
            assert path.suffix in {".safetensors", ".json", ".csv", ".png"}, path
            assert not path.read_bytes().startswith(b"\x80"), f"{path} looks pickled"
    for name in ("model", "optimizer", "rng"):
        with safe_open(checkpoint / f"{name}.safetensors", "pt") as f:
            assert list(f.keys())
    assert load_file(checkpoint / "rng.safetensors")["cpu"].dtype == torch.uint8
    state = json.loads((checkpoint / "state.json").read_text())
    assert (state["step"], state["tokens"], state["global_batch"]) == (12, 12 * 4 * 64, 4)
    assert {"epoch", "position", "elapsed_s", "config", "python_random", "numpy_random", "optimizer"} <= state.keys()
    assert "model.embed_tokens.weight" in load_file(checkpoint / "model.safetensors")  # tied head stored once
    assert not list(out.glob("*.tmp")) and not list(out.glob("*.old"))


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_kill_and_resume_equals_an_uninterrupted_run(optimizer, reference, data_dir, tmp_path):
    config = replace(BASE, optimizer=optimizer)
    if optimizer == "adamw":
        whole = reference[0]
    else:
        whole = tmp_path / "whole"
        train(config, data_dir, whole)
    run = tmp_path / "killed"
    with pytest.raises(Killed):
        train(config, data_dir, run, on_step=kill_at(7))  # checkpointed at 4; 5..7 are lost
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 4
    assert [int(r["step"]) for r in rows(run)] == list(range(1, 8))
    # killed between the two renames of a checkpoint swap: only checkpoint.old and a partial tmp remain
    os.replace(run / "checkpoint", run / "checkpoint.old")
    (run / "checkpoint.tmp").mkdir()
    (run / "checkpoint.tmp" / "model.safetensors").write_bytes(b"partial")
    with pytest.raises(Killed):
        train(config, data_dir, run, on_step=kill_at(10))  # resumes at 4, checkpoints at 8
    summary = train(config, data_dir, run)  # resumes at 8
    assert summary["steps"] == 12
    assert curve(run) == curve(whole)
    a, b = load_file(run / "checkpoint" / "model.safetensors"), load_file(whole / "checkpoint" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert train(config, data_dir, run)["steps"] == 12  # finished: resumes at the end and does nothing
    train(replace(config, max_steps=2), data_dir, run, fresh=True)
    assert [int(r["step"]) for r in rows(run)] == [1, 2]


def test_grad_accumulation_matches_a_bigger_batch(reference, data_dir, tmp_path):
    train(replace(BASE, batch_size=2, grad_accum=2, max_steps=4, eval_every=0), data_dir, tmp_path)
    for got, want in zip(rows(tmp_path), rows(reference[0])[:3]):
        assert float(got["train_loss"]) == pytest.approx(float(want["train_loss"]), abs=1e-5)


@pytest.mark.slow
def test_two_process_torchrun_matches_one_process(reference, data_dir, tmp_path):
    """DDP over gloo: 2 ranks x 2 rows == 1 process x 4 rows, step for step."""
    out = tmp_path / "ddp"
    flags = ["--preset", "tiny", "--batch-size", "2", "--grad-accum", "1", "--max-steps", "12", "--warmup-steps", "2",
             "--lr", "3e-3", "--min-lr", "3e-4", "--log-every", "1", "--eval-every", "6", "--eval-batches", "2",
             "--checkpoint-every", "4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "midline.training.train", "--data", str(data_dir), "--out", str(out), *flags]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got, want = rows(out), rows(reference[0])
    assert len(got) == len(want) == 12
    for g, w in zip(got, want):
        assert (g["step"], g["tokens"], g["lr"]) == (w["step"], w["tokens"], w["lr"])
        assert float(g["train_loss"]) == pytest.approx(float(w["train_loss"]), abs=1e-4)
        assert (g["val_loss"] == "") == (w["val_loss"] == "")
        if g["val_loss"]:
            assert float(g["val_loss"]) == pytest.approx(float(w["val_loss"]), abs=1e-4)
    assert json.loads((out / "checkpoint" / "state.json").read_text())["world"] == 2
    assert '"steps": 12' in proc.stdout and proc.stdout.count('"steps": 12') == 1  # only rank 0 prints


def test_saved_model_dir_loads_with_transformers_and_serves(reference):
    out, _ = reference
    model = AutoModelForCausalLM.from_pretrained(out / "model", local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(out / "model", local_files_only=True)
    assert model.config.model_type == "llama" and model.config.vocab_size == len(tokenizer) == 1024
    assert model.config.max_position_embeddings == 64 and tokenizer.model_max_length == 64
    assert tokenizer.eos_token == fim.EOT and tokenizer.pad_token == fim.FIM_PAD
    weights = load_file(out / "checkpoint" / "model.safetensors")
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())
    from midline.model.engine import Engine

    engine = Engine.load(out / "model", device="cpu")
    assert engine.fim is fim.MIDLINE
    ids = engine.encode(fim.FimPrompt("def f(x):\n    return ", "\n", path="f.py", repo="r"))
    assert model(torch.tensor([ids])).logits.shape == (1, len(ids), 1024)


def test_pad_targets_are_ignored(reference, data_dir):
    out, _ = reference
    model = AutoModelForCausalLM.from_pretrained(out / "model", local_files_only=True)
    ds = PackedDataset(data_dir, "train")
    row = next(ds[i] for i in range(len(ds)) if ds[i][-1] == ds.pad_id)
    n = int((row != ds.pad_id).sum())
    x = torch.from_numpy(row.astype("int64"))[None]
    with torch.no_grad():
        padded, trimmed = T.loss_sum(model, x, ds.pad_id), T.loss_sum(model, x[:, :n], ds.pad_id)
    assert padded.item() == pytest.approx(trimmed.item(), rel=1e-5)


def test_schedules():
    c = replace(BASE, lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=100, decay_frac=0.2)
    wsd = [lr_at(s, replace(c, schedule="wsd")) for s in range(100)]
    cosine = [lr_at(s, replace(c, schedule="cosine")) for s in range(100)]
    for lrs in (wsd, cosine):
        assert lrs[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])  # linear warmup
        assert lrs[-1] == pytest.approx(0.1) and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert wsd[10:80] == [1.0] * 70  # stable
    assert wsd[80:] == pytest.approx([1.0 - 0.9 * (s + 1) / 20 for s in range(20)])  # linear decay
    assert cosine[54] == pytest.approx(0.55, abs=0.02) and cosine[20] > 0.9 and cosine[90] < 0.15
    with pytest.raises(ValueError, match="schedule"):
        lr_at(50, replace(c, schedule="step"))


def test_newton_schulz_orthogonalizes():
    torch.manual_seed(0)
    for g in (torch.randn(64, 32), torch.randn(32, 96) * 100):
        s = torch.linalg.svdvals(newton_schulz(g).float())
        # every direction scaled to about 1 (Muon's quintic is loose on purpose)
        assert s.min() > 0.6 and s.max() < 1.25


def test_cli_init_from_a_model_dir(reference, data_dir, tmp_path, capsys):
    out = tmp_path / "finetune"
    argv = ["--data", str(data_dir), "--out", str(out), "--init", str(reference[0] / "model"), "--batch-size", "2",
            "--grad-accum", "1", "--max-steps", "50", "--warmup-steps", "1", "--eval-every", "0", "--log-every", "1",
            "--tokens", "256", "--no-compile"]
    assert T.main(argv) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.rindex("{\n") :])["steps"] == 2
    log = rows(out)
    assert len(log) == 2 and int(log[-1]["tokens"]) == 256  # --tokens 256 = 2 steps of 2 x 64
    assert float(log[0]["train_loss"]) < math.log(1024) - 0.3  # starts from the trained weights
    assert (out / "model" / "model.safetensors").exists()
