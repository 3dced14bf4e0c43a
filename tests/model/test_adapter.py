"""A LoRA adapter (peft, as `midline-train finetune` writes it) merged into the model at load: the same outputs as the
peft model, safetensors only, clear errors, and no peft import without one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from midline.model.engine import Engine
from midline.model.loader import ModelLoadError, load_model
from midline.server.config import Config
from midline.server.server import open_engine

IDS = torch.tensor([[5, 17, 300, 42, 9, 77, 120]])


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir: Path, tmp_path_factory) -> Path:
    """A LoRA adapter on the tiny model with random (non-zero) weights, saved by peft."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, local_files_only=True)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                 init_lora_weights=False))
    out = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(out)
    return out


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def test_an_adapter_is_merged_at_load_and_gives_the_peft_models_outputs(tiny_model_dir, adapter_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, local_files_only=True).eval()
    want = _logits(PeftModel.from_pretrained(base, adapter_dir).eval())
    engine = Engine.load(tiny_model_dir, device="cpu", adapter=adapter_dir)
    assert type(engine.model).__name__ == "LlamaForCausalLM"  # merged: the plain model, on the fast decode path
    assert torch.allclose(_logits(engine.model), want, atol=1e-5)
    plain, _, _ = load_model(tiny_model_dir, device="cpu")
    assert not torch.allclose(_logits(plain), want, atol=1e-3)


def test_the_adapter_setting_loads_it_in_the_server(tiny_model_dir, adapter_dir):
    settings = Config.from_json({"model": str(tiny_model_dir), "adapter": str(adapter_dir), "device": "cpu"})
    engine = open_engine(settings)
    direct = Engine.load(tiny_model_dir, device="cpu", adapter=adapter_dir)
    assert isinstance(engine, Engine) and torch.equal(_logits(engine.model), _logits(direct.model))


def test_bad_adapters_are_refused_with_the_reason(tiny_model_dir, adapter_dir, tmp_path):
    def refused(path: Path) -> str:
        with pytest.raises(ModelLoadError) as e:
            load_model(tiny_model_dir, device="cpu", adapter=path)
        return str(e.value)

    assert "does not exist" in refused(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    assert "not a peft adapter directory" in refused(tmp_path / "empty")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text((adapter_dir / "adapter_config.json").read_text())
    (pickled / "adapter_model.bin").write_bytes(b"never unpickled")
    assert "only pickled weights (adapter_model.bin), which are refused" in refused(pickled)
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    (wrong / "adapter_config.json").write_text(json.dumps({**config, "r": 8}))  # other shapes than its weights
    (wrong / "adapter_model.safetensors").write_bytes((adapter_dir / "adapter_model.safetensors").read_bytes())
    assert "fits only the base model it was trained on" in refused(wrong)


def test_without_peft_an_adapter_says_how_to_install_it(tiny_model_dir, adapter_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` raises ImportError
    with pytest.raises(ModelLoadError, match=r"needs peft.*pip install 'peft>=0.17,<1'"):
        load_model(tiny_model_dir, device="cpu", adapter=adapter_dir)


@pytest.mark.slow
def test_no_adapter_no_peft(tiny_model_dir):
    """The server does not need peft: loading a model without an adapter never imports it."""
    code = ("import sys; from midline.model.engine import Engine; Engine.load(sys.argv[1], device='cpu'); "
            "assert 'peft' not in sys.modules, 'peft was imported'")
    subprocess.run([sys.executable, "-c", code, str(tiny_model_dir)], check=True, timeout=120)
