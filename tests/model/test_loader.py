"""`load_model`: a local model dir loads offline; every broken dir gives a message saying what and how to fix."""

from __future__ import annotations

import socket

import pytest
import torch

from midline.model import loader
from midline.model.loader import ModelLoadError, load_model, resolve_device, resolve_dtype


def test_loads_tiny_model_offline(tiny_model_dir, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("loading a local model must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    model, tokenizer, device = load_model(tiny_model_dir, device="cpu")
    assert device == torch.device("cpu")
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32
    assert model.config.vocab_size == len(tokenizer)


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing", r"does not exist.*midline\.model"),
        ("file", r"is a file"),
        ("no_config", r"no config\.json"),
        ("bad_config", r"not valid JSON"),
        ("bin_only", r"pickled \.bin weights are refused.*convert to safetensors"),
        ("no_weights", r"no model weights \(\*\.safetensors\)"),
        ("no_tokenizer", r"no tokenizer"),
        ("remote_code", r"needs custom Python code.*trust_remote_code"),
        ("corrupt_weights", r"could not load the weights.*corrupt"),
        ("wrong_weights", r"lack \d+ tensors"),
    ],
)
def test_broken_dirs_say_what_and_how(broken_model_dir, kind, message):
    with pytest.raises(ModelLoadError, match=message):
        load_model(broken_model_dir(kind), device="cpu")


def test_missing_default_model_says_run_tiny_model(tmp_path, monkeypatch):
    default = tmp_path / "default"
    default.mkdir()
    (default / "README.md").write_text("the default model goes here")
    monkeypatch.setattr(loader, "DEFAULT_MODEL_DIR", default)
    with pytest.raises(ModelLoadError, match=r"no default model yet.*midline-train tiny-model.*midline\.model"):
        load_model(default)


def test_device_and_dtype_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        resolve_dtype("float8", torch.device("cpu"))
    with pytest.raises(ModelLoadError, match="unknown device"):
        resolve_device("toaster")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ModelLoadError, match="CUDA is not available"):
            resolve_device("cuda")
