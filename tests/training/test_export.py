"""Export stage: a loadable bf16, sharded model dir with a model card, within the size limits, swapped in safely."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from midline.model import fim
from midline.model.engine import Engine
from midline.model.fim import FimPrompt
from midline.model.loader import ModelLoadError
from midline.training import export as ex

SHARD_MB = 0.15  # the tiny model (~0.5 MB in bf16; largest tensor 131 KB) then needs several shards

MANIFEST = {
    "counts": {"repos": 12, "files_seen": 48213, "files_kept": 31977},
    "redactions": {"emails": 214, "api_keys": 9},
    "split": {"train": 30123, "valid": 1854},
    "params": {"max_file_bytes": 100000, "extensions": [".py", ".pyi", ".md"]},
    "command": "midline-train corpus --out corpus",
}
DATA_META = {
    "seq_len": 1024, "fim_rate": 0.9, "spm_rate": 0.5, "tokenizer": "/somewhere/tok", "complete": True,
    "params": {"seed": 0}, "splits": {"train": {"rows": 5000, "shards": [f"train-{i:05d}.npy" for i in range(20)]}},
    "command": ["midline-train", "data", "--out", "data"],
}
STATE = {  # as the train stage writes it, plus the device name
    "step": 3000, "tokens": 196608000, "elapsed_s": 7384.2, "world": 1, "train_loss": 1.91, "val_loss": 2.02,
    "device_name": "NVIDIA H100 80GB HBM3", "python_random": [3, list(range(625)), None],
    "config": {"lr": 0.0006, "batch_size": 64, "warmup_steps": 200, "weight_decay": 0.1, "device": "auto"},
}
REPORT = {
    "device": "cuda", "settings": {"max_new_tokens": 128}, "tasks": {"sha256": "ab" * 32},
    "metrics": {
        "overall": {"n": 300, "exact_match": 0.4123, "edit_similarity": 0.7311, "empty_rate": 0.05,
                    "latency_ms_mean": 41.5, "tokens_mean": 17.2},
        "single_line": {"n": 100, "exact_match": 0.5567, "edit_similarity": 0.8222, "empty_rate": 0.02,
                        "latency_ms_mean": 30.1, "tokens_mean": 9.0},
    },
    "functional": {"tasks": 40, "original_passed": 39, "original_pass_rate": 0.975, "passed": 13, "pass_at_1": 13 / 39},
    "loss": {"docs": 100, "tokens": 512000, "nats_per_token": 1.2345, "bits_per_byte": 0.5432},
    "command": "midline-train evaluate --model run/model --corpus corpus",
}


@pytest.fixture(scope="module")
def inputs(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    """A run dir (tiny model + state.json + loss.csv), corpus and data dirs, and an eval report."""
    root = tmp_path_factory.mktemp("export-inputs")
    run = root / "run"
    shutil.copytree(tiny_model_dir, run / "model")
    (run / "checkpoint").mkdir()
    (run / "checkpoint" / "state.json").write_text(json.dumps(STATE))
    (run / "loss.csv").write_text("step,loss\n100,6.5\n3000,1.87\n")
    for name, payload in (("corpus/manifest.json", MANIFEST), ("data/meta.json", DATA_META), ("report.json", REPORT)):
        (root / name).parent.mkdir(exist_ok=True)
        (root / name).write_text(json.dumps(payload))
    return {"run": run, "corpus": root / "corpus", "data": root / "data", "eval": root / "report.json"}


@pytest.fixture(scope="module")
def exported(inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exported") / "default"
    return ex.export(
        inputs["run"], out, corpus_dir=inputs["corpus"], data_dir=inputs["data"], eval_report=inputs["eval"],
        command="midline-train export --run run", max_shard_mb=SHARD_MB,
    )


def test_the_corpus_languages_are_named_for_the_server(exported):
    assert json.loads((exported / "midline.json").read_text()) == {"languages": ["python"]}
    assert "Languages: python" in (exported / "README.md").read_text()
    assert Engine.load(exported, device="cpu").languages == ("python",)


def test_weights_are_bf16_safetensors_in_small_shards(exported):
    shards = sorted(exported.glob("*.safetensors"))
    assert len(shards) >= 2 and (exported / "model.safetensors.index.json").is_file()
    index = json.loads((exported / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {p.name for p in shards}
    for shard in shards:
        assert shard.stat().st_size <= SHARD_MB * 1e6 + 16_384  # tensor bytes + the file's JSON header
        with safe_open(shard, "pt") as f:
            assert {f.get_slice(name).get_dtype() for name in f.keys()} == {"BF16"}
    assert json.loads((exported / "config.json").read_text())["dtype"] == "bfloat16"
    assert not list(exported.glob("*.bin"))


def test_generation_config_is_greedy_and_ends_at_eot(exported, tiny_tokenizer):
    config = json.loads((exported / "generation_config.json").read_text())
    assert config["eos_token_id"] == tiny_tokenizer.convert_tokens_to_ids(fim.EOT)
    assert config["pad_token_id"] == tiny_tokenizer.convert_tokens_to_ids(fim.FIM_PAD)
    assert config["do_sample"] is False


def test_export_loads_with_transformers_and_midline(exported):
    model = AutoModelForCausalLM.from_pretrained(exported, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(exported, local_files_only=True)
    assert model.config.num_hidden_layers == 2 and tokenizer.convert_tokens_to_ids(fim.FIM_MIDDLE) == 3
    engine = Engine.load(exported, device="cpu")
    assert engine.fim is fim.MIDLINE
    prompt = engine.encode(FimPrompt(prefix="def add(a, b):\n    return ", suffix="\n\nprint(add(1, 2))\n",
                                     path="calc.py"))
    generation = engine.generate(prompt, max_new_tokens=4)
    assert generation.prompt_tokens == len(prompt) and generation.token_ids
    assert generation.finish_reason in ("length", "eot", "stop")


def test_model_card_reports_data_architecture_training_and_eval(exported):
    card = (exported / "README.md").read_text()
    for expected in (
        "48,213", "31,977", "api_keys", "| valid | 1,854 |",  # corpus counts, redactions, split
        "byte-level BPE", "`<\\|midline:fim_middle\\|>` | 3",  # tokenizer
        "| layers | 2 |", "| hidden size | 64 |", "| key/value heads | 4 |", "| vocabulary | 1,024 |", "| parameters |",
        "| tokens seen | 196,608,000 |", "2 h 03 min", "| hardware | NVIDIA H100 80GB HBM3 |", "| lr | 0.0006 |",
        "| fim_rate | 0.9 |", "| final validation loss | 2.02 |", "| last logged loss | 1.87 |",
        "| splits.train.rows | 5,000 |", "| splits.train.shards | 20 items |",
        "| overall | 300 | 41.2% | 73.1% |", "pass@1 33.3%", "0.5432 bits/byte",  # eval figures
        # commands
        "midline-train corpus --out corpus", "midline-train data --out data", "midline-train export --run run",
    ):
        assert expected in card, expected
    assert "python_random" not in card and "/somewhere/tok" not in card


def test_unrelated_files_are_kept_and_old_model_files_replaced(inputs, tmp_path):
    out = tmp_path / "default"
    out.mkdir()
    (out / "README.md").write_text("placeholder\n")
    (out / "NOTES.txt").write_text("keep me\n")
    (out / "extra").mkdir()
    (out / "extra" / "x.txt").write_text("keep me too\n")
    (out / "model.safetensors").write_bytes(b"stale")
    ex.export(inputs["run"], out, max_shard_mb=SHARD_MB)
    assert (out / "NOTES.txt").read_text() == "keep me\n" and (out / "extra" / "x.txt").is_file()
    assert (out / "README.md").read_text().startswith("# midline code model")
    assert not (out / "model.safetensors").exists()  # the stale single file would shadow the shards
    assert sorted(p.name for p in tmp_path.iterdir()) == ["default"]  # no staging or backup dirs left


def test_size_limits_are_enforced(inputs, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ex.ExportError, match="over the 0.1 MB limit"):
        ex.export(inputs["run"], out, max_shard_mb=SHARD_MB, max_total_mb=0.1)
    with pytest.raises(ex.ExportError, match="cannot be split"):
        ex.export(inputs["run"], out, max_shard_mb=0.05)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    ex.export(inputs["run"], out, max_shard_mb=SHARD_MB, max_total_mb=0.1, allow_large=True)
    assert (out / "config.json").is_file()


def test_pickled_weights_are_refused(inputs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(inputs["run"] / "model", run / "model")
    (run / "model" / "model.safetensors").unlink()
    (run / "model" / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(ModelLoadError, match="pickled"):
        ex.export(run, tmp_path / "out")


def test_cli(inputs, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    ex.add_parser(parser.add_subparsers())
    defaults = parser.parse_args(["export", "--run", "r"])
    assert defaults.out is None and defaults.run_dir == Path("r")  # None: DEFAULT_MODEL_DIR (--gguf: a file)
    args = parser.parse_args(["export", "--run", str(inputs["run"]), "--out", str(tmp_path / "m"), "--max-shard-mb",
                              str(SHARD_MB), "--eval", str(inputs["eval"]), "--command",
                              "midline-train train --out run"])
    assert args.run(parser, args) == 0
    assert "exported" in capsys.readouterr().out
    card = (tmp_path / "m" / "README.md").read_text()
    assert "midline-train train --out run" in card and "pass@1" in card


def test_model_card_states_the_licence_and_tabulates_recorded_data_licences():
    bare = ex._card_licence(ex.CardInputs(config={}, parameters=1, tokenizer={}))
    assert "released under Apache-2.0" in bare and "did not record the training files' licences" in bare
    recorded = ex._card_licence(ex.CardInputs(config={}, parameters=1, tokenizer={}, manifest={"licences": {"MIT": 3}}))
    assert "| MIT | 3 |" in recorded
