"""Shared fixtures: one tiny random-weight model per test session, and broken copies of it; and the tiers' check."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator

import pytest

from midline.training.tiny_model import make_tiny_model, stdlib_corpus

BROKEN_KINDS = ("missing", "file", "no_config", "bad_config", "bin_only", "no_weights", "no_tokenizer", "remote_code",
                "corrupt_weights", "wrong_weights")


@pytest.fixture(scope="session", autouse=True)
def conversion_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Models converted for llama.cpp (model/llamacpp.py) go to this session's folder, not the user's cache; servers
    started by tests inherit it."""
    path = tmp_path_factory.mktemp("midline-cache")
    previous = os.environ.get("MIDLINE_CACHE")
    os.environ["MIDLINE_CACHE"] = str(path)
    yield path
    if previous is None:
        del os.environ["MIDLINE_CACHE"]
    else:
        os.environ["MIDLINE_CACHE"] = previous


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny midline-format model dir (vocab 1024, hidden 64, 2 layers), built once per session in ~1 s."""
    out = tmp_path_factory.mktemp("tiny-model")
    return make_tiny_model(out, corpus_files=stdlib_corpus(limit=40), vocab_size=1024, hidden_size=64, layers=2,
                           heads=4)


CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


@pytest.fixture(scope="session")
def tiny_chat_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model as a chat model: a chat template, and no end-of-turn token at all, so that its
    answers always run to the token limit (a generation long enough to cancel)."""
    path = tmp_path_factory.mktemp("chat") / "model"
    shutil.copytree(tiny_model_dir, path)
    tokenizer_config = json.loads((path / "tokenizer_config.json").read_text())
    tokenizer_config.pop("eos_token", None)
    tokenizer_config["chat_template"] = CHAT_TEMPLATE
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    for name in ("config.json", "generation_config.json"):
        config = json.loads((path / name).read_text())
        config["eos_token_id"] = None
        (path / name).write_text(json.dumps(config))
    return path


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir: Path):
    """The tiny model loaded once, on cpu."""
    from midline.model.engine import Engine

    return Engine.load(tiny_model_dir, device="cpu")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)


@pytest.fixture
def broken_model_dir(tiny_model_dir: Path, tmp_path: Path) -> Callable[[str], Path]:
    """`broken_model_dir(kind)`: a copy of the tiny model broken one way (see BROKEN_KINDS)."""

    def make(kind: str) -> Path:
        path = tmp_path / kind
        if kind == "missing":
            return path
        if kind == "file":
            path.write_text("not a directory")
            return path
        shutil.copytree(tiny_model_dir, path)
        weights = path / "model.safetensors"
        if kind == "no_config":
            (path / "config.json").unlink()
        elif kind == "bad_config":
            (path / "config.json").write_text("{not json")
        elif kind == "bin_only":
            weights.unlink()
            (path / "pytorch_model.bin").write_bytes(b"never unpickled")
        elif kind == "no_weights":
            weights.unlink()
        elif kind == "no_tokenizer":
            (path / "tokenizer.json").unlink()
        elif kind == "remote_code":
            _edit_config(path, model_type="exotic",
                         auto_map={"AutoModelForCausalLM": "modeling_exotic.ExoticForCausalLM"})
        elif kind == "corrupt_weights":
            weights.write_bytes(weights.read_bytes()[:1000])
        elif kind == "wrong_weights":  # valid safetensors for a deeper model than the file holds
            _edit_config(path, num_hidden_layers=4)
        else:
            raise ValueError(f"unknown kind {kind!r}; known: {BROKEN_KINDS}")
        return path

    return make


def _edit_config(path: Path, **changes) -> None:
    config_file = path / "config.json"
    config = json.loads(config_file.read_text())
    config.update(changes)
    config_file.write_text(json.dumps(config))


# -- tiers: `-m "not e2e and not slow"` is the quick tier (pyproject.toml registers the marks) ----------

def _tier_limit() -> float | None:
    """MIDLINE_CHECK_TIERS=1 fails an unmarked test that takes over 5 s (setup and call); a number is the limit in s."""
    value = os.environ.get("MIDLINE_CHECK_TIERS", "")
    if value in ("", "0"):
        return None
    return 5.0 if value == "1" else float(value)


_SETUP_S = pytest.StashKey[float]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = (yield).get_result()
    limit = _tier_limit()
    if limit is None or item.get_closest_marker("e2e") or item.get_closest_marker("slow"):
        return
    if report.when == "setup":
        item.stash[_SETUP_S] = report.duration
    elif report.when == "call" and report.passed:
        seconds = item.stash.get(_SETUP_S, 0.0) + report.duration
        if seconds > limit:
            report.outcome = "failed"
            report.longrepr = (f"{item.nodeid} took {seconds:.1f} s (setup and call), over {limit:g} s: "
                               "mark it slow (or e2e), or make it quicker")
