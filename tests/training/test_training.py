"""Training stages built so far: the tokenizer, the tiny model, and the `midline-train` CLI."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from midline.model import fim
from midline.model.loader import load_model
from midline.training.cli import main
from midline.training.tiny_model import make_tiny_model, stdlib_corpus
from midline.training.tokenizer import train_tokenizer

TRICKY = [
    "",
    " ",
    "\t\tindented\twith tabs\t",
    "    four\n        eight\n\n\n",
    "windows\r\nline\r\nends\r\n",
    "trailing spaces   \n   ",
    "ünïcödé, 漢字, العربية, emoji 🙂👩‍💻, combining é, zero\u200bwidth, nul\x00byte",
    "literal <|endoftext|> and <|midline:fim_middle|> in text",
]


@pytest.fixture(scope="module")
def corpus() -> list[Path]:
    return stdlib_corpus(limit=10)


def test_special_tokens_come_first(tiny_tokenizer):
    assert tiny_tokenizer.convert_ids_to_tokens(list(range(len(fim.SPECIAL_TOKENS)))) == list(fim.SPECIAL_TOKENS)
    assert tiny_tokenizer.eos_token == tiny_tokenizer.bos_token == fim.EOT
    assert tiny_tokenizer.pad_token == fim.FIM_PAD
    for i, token in enumerate(fim.SPECIAL_TOKENS):
        assert tiny_tokenizer.encode(token, add_special_tokens=False) == [i]
        assert tiny_tokenizer.encode(f"x{token}y", add_special_tokens=False)[1] == i  # never split
    assert tiny_tokenizer.encode("x", add_special_tokens=True) == tiny_tokenizer.encode("x", add_special_tokens=False)


@pytest.mark.parametrize("text", TRICKY)
def test_round_trip_exact(tiny_tokenizer, text):
    ids = tiny_tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)
    assert tiny_tokenizer.decode(ids) == text
    assert not set(ids) & set(range(len(fim.SPECIAL_TOKENS)))


@settings(max_examples=60, deadline=None)
@given(text=st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=80))
def test_round_trip_any_text(tiny_tokenizer, text):
    ids = tiny_tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)
    assert tiny_tokenizer.decode(ids) == text


def test_train_tokenizer_saves_a_loadable_tokenizer(corpus, tmp_path):
    trained = train_tokenizer(corpus, 512, tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert len(loaded) == len(trained) == 512
    code = "def f(a, b):\n\treturn a + b\n"
    assert loaded.encode(code) == trained.encode(code)
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(corpus, 100, tmp_path)
    with pytest.raises(ValueError, match="no files"):
        train_tokenizer([], 512, tmp_path)


def test_stdlib_corpus_is_deterministic_and_skips_tests():
    files = stdlib_corpus(limit=50)
    assert files == stdlib_corpus(limit=50)
    assert 0 < len(files) <= 50
    root = Path(sysconfig.get_paths()["stdlib"])
    for f in files:
        parts = f.relative_to(root).parts
        assert f.suffix == ".py" and not {"test", "tests", "site-packages"} & set(parts)


def test_tiny_model_is_deterministic(corpus, tmp_path):
    def build(name):
        return make_tiny_model(tmp_path / name, corpus_files=corpus, vocab_size=300, hidden_size=32, layers=1, heads=2,
                               max_positions=256)

    a, b = build("a"), build("b")
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    assert "random weights" in (a / "README.md").read_text()
    config = json.loads((a / "config.json").read_text())
    assert (config["model_type"], config["max_position_embeddings"], config["eos_token_id"]) == ("llama", 256, 0)
    assert json.loads((a / "generation_config.json").read_text())["eos_token_id"] == 0
    assert not list(a.glob("*.bin"))


def test_cli_tiny_model(corpus, tmp_path, capsys):
    out = tmp_path / "cli-model"
    globs = [str(f) for f in corpus[:5]]
    assert main(["tiny-model", "--out", str(out), "--files", *globs, "--vocab-size", "300", "--hidden-size", "32",
                 "--layers", "1", "--heads", "2"]) == 0
    assert f"wrote a tiny random-weight model to {out}" in capsys.readouterr().out
    model, tokenizer, _ = load_model(out, device="cpu")
    assert model.config.hidden_size == 32 and len(tokenizer) == 300


def test_cli_tokenizer(corpus, tmp_path, capsys):
    folder = corpus[0].parent
    assert main(["tokenizer", "--files", str(folder / "a*.py"), "--vocab-size", "400", "--out", str(tmp_path)]) == 0
    assert "wrote a tokenizer (vocab 400" in capsys.readouterr().out
    assert AutoTokenizer.from_pretrained(tmp_path, local_files_only=True).convert_tokens_to_ids(fim.EOT) == 0
    assert main(["tokenizer", "--files", str(folder / "a*.py"), "--out", str(tmp_path)]) == 0
    assert "already has a tokenizer" in capsys.readouterr().out  # a finished stage is skipped
    with pytest.raises(SystemExit):
        main(["tokenizer", "--files", str(tmp_path / "nothing*.py"), "--out", str(tmp_path / "other")])
