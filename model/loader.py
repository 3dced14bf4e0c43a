"""Load a local Hugging Face causal LM and its tokenizer, and optionally a LoRA adapter: safetensors only, never
the hub.

`load_model` checks the directory first, so every failure is a `ModelLoadError` that says what is
wrong and how to fix it, instead of a transformers traceback. An adapter (a peft directory, as
`midline-train finetune` writes) is merged into the weights at load, so generation runs the plain model;
peft is imported only then.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from midline.model import DEFAULT_MODEL_DIR
from midline.model.backend import ModelLoadError as ModelLoadError  # raised here; importable from here too

PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


def load_model(
    path: str | Path,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    trust_remote_code: bool = False,
    adapter: str | Path | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, torch.device]:
    """Model (in eval mode, on `device`), tokenizer and device, from a local model directory; with `adapter`, a LoRA
    adapter directory merged into it."""
    path = Path(path).expanduser()
    check_model_dir(path, trust_remote_code=trust_remote_code)
    adapter = Path(adapter).expanduser() if adapter is not None else None
    if adapter is not None:
        check_adapter_dir(adapter)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    tokenizer = _load_tokenizer(path, trust_remote_code)
    model = _load_weights(path, dtype, trust_remote_code)
    if adapter is not None:
        model = merge_adapter(model, adapter)
    try:
        # transformers declares `to` through functools.wraps(torch.nn.Module.to), which mypy reads as the unbound
        # method (wanting the module as its first argument).
        model = model.to(device)  # type: ignore[arg-type]
    except RuntimeError as e:  # typically out of memory
        raise ModelLoadError(
            f"could not move the model to {device}: {e}. Use a smaller model, dtype bfloat16, or device cpu"
        ) from e
    return model.eval(), tokenizer, device


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """auto: cuda if available, else cpu."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelLoadError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(
            f"device {device} was asked for, but CUDA is not available (no GPU, or a CPU-only torch): use auto or cpu"
        )
    return device


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """auto: bfloat16 on a GPU that supports it (else float16), float32 on cpu."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {dtype!r}: use auto, {', '.join(DTYPES)}") from None


def check_model_dir(path: Path, *, trust_remote_code: bool = False) -> dict:
    """The parsed config.json, after checking the directory has what loading needs."""
    config_file = path / "config.json"
    if _is_default(path) and not config_file.is_file():
        raise ModelLoadError(
            f"no default model yet ({path} has no config.json; a checkout without its model files?). Reinstall "
            "midline, run `midline-train tiny-model --out DIR` for a tiny test model, or set `midline.model` to a "
            "local model directory"
        )
    if not path.exists():
        raise ModelLoadError(
            f"model directory {path} does not exist: set `midline.model` to a local Hugging Face model "
            "directory (config.json, *.safetensors, tokenizer.json)"
        )
    if not path.is_dir():
        raise ModelLoadError(
            f"{path} is a file: point `midline.model` at the directory holding config.json, *.safetensors and "
            "tokenizer.json"
        )
    if not config_file.is_file():
        raise ModelLoadError(
            f"no config.json in {path}: not a Hugging Face model directory. Point `midline.model` at the "
            "directory that holds config.json, *.safetensors and tokenizer.json (GGUF or ONNX exports won't load)"
        )
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"{config_file} is unreadable or not valid JSON ({e}): re-download or re-export the model"
        ) from e
    if not any(path.glob("*.safetensors")):
        pickled = sorted(p.name for pattern in PICKLED_WEIGHTS for p in path.glob(pattern))
        if pickled:
            raise ModelLoadError(
                f"{path} has only pickled weights ({', '.join(pickled[:3])}): pickled .bin weights are refused "
                "(loading a pickle can run arbitrary code); convert to safetensors (load the model once, somewhere "
                "you trust, and `save_pretrained` it), or download the model's .safetensors files"
            )
        raise ModelLoadError(
            f"no model weights (*.safetensors) in {path}: copy the model's .safetensors files next to config.json"
        )
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ModelLoadError(
            f"no tokenizer in {path} (no tokenizer.json): copy the tokenizer files from where the model came from "
            f"into {path}"
        )
    _check_architecture(config, path, trust_remote_code)
    return config


ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def check_adapter_dir(path: Path) -> dict:
    """The parsed adapter_config.json of a peft adapter directory, after checking it has safetensors weights."""
    if not path.is_dir():
        raise ModelLoadError(
            f"adapter directory {path} does not exist: set `midline.adapter` to the adapter directory "
            "`midline-train finetune` wrote (OUT/adapter), or to null"
        )
    try:
        config = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(
            f"no {ADAPTER_CONFIG} in {path}: not a peft adapter directory (for a merged model, set `midline.model` "
            "to it and leave `midline.adapter` null)"
        ) from None
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path / ADAPTER_CONFIG} is unreadable or not valid JSON ({e})") from e
    if not (path / ADAPTER_WEIGHTS).is_file():
        pickled = sorted(p.name for pattern in PICKLED_WEIGHTS for p in path.glob(pattern))
        what = f"only pickled weights ({', '.join(pickled[:3])}), which are refused" if pickled else "no weights"
        raise ModelLoadError(
            f"the adapter in {path} has {what}: it needs {ADAPTER_WEIGHTS} (peft's save_pretrained writes it)"
        )
    if config.get("peft_type") != "LORA":
        raise ModelLoadError(f"the adapter in {path} is {config.get('peft_type')!r}; midline loads LoRA adapters")
    return config


def merge_adapter(model: PreTrainedModel, path: Path) -> PreTrainedModel:
    """The model with the LoRA adapter in `path` merged into its weights (peft, imported here only)."""
    try:
        from peft import PeftModel
    except ImportError:
        raise ModelLoadError(
            "loading an adapter needs peft, which is not installed: pip install 'peft>=0.17,<1' (or the train "
            "extra, pip install 'midline[train]'), or merge the adapter with `midline-train finetune --merge`"
        ) from None
    try:
        peft_model = PeftModel.from_pretrained(model, path, is_trainable=False, local_files_only=True)
        merged = peft_model.merge_and_unload()
    except Exception as e:
        raise ModelLoadError(
            f"could not apply the adapter in {path} to this model: {type(e).__name__}: {e}. An adapter fits only "
            "the base model it was trained on (its adapter_config.json names it)"
        ) from e
    return cast(PreTrainedModel, merged)


def _is_default(path: Path) -> bool:
    return path.resolve() == DEFAULT_MODEL_DIR.resolve()


def _check_architecture(config: dict, path: Path, trust_remote_code: bool) -> None:
    model_type = config.get("model_type")
    if model_type in transformers.CONFIG_MAPPING:
        return
    if "auto_map" in config:
        if trust_remote_code:
            return
        raise ModelLoadError(
            f"the {model_type or 'model'} architecture in {path} needs custom Python code shipped with the model "
            "(auto_map in config.json), which midline does not run by default. Allow it with trust_remote_code "
            "only if you trust that code, or use a model that transformers supports natively"
        )
    raise ModelLoadError(
        f"transformers {transformers.__version__} does not know model_type {model_type!r} ({path / 'config.json'}): "
        "upgrade transformers, or use a supported model"
    )


def _load_tokenizer(path: Path, trust_remote_code: bool) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise ModelLoadError(
            f"could not load the tokenizer in {path}: {e}. Copy the model's tokenizer files (tokenizer.json, "
            f"tokenizer_config.json) into {path}"
        ) from e


def _load_weights(path: Path, dtype: torch.dtype, trust_remote_code: bool) -> PreTrainedModel:
    transformers.utils.logging.disable_progress_bar()  # stderr is the editor's log: no progress bars there
    try:
        loaded = AutoModelForCausalLM.from_pretrained(
            path,
            local_files_only=True,
            use_safetensors=True,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            output_loading_info=True,
        )
        # from_pretrained's return type leaves out output_loading_info's (model, info) pair.
        model, info = cast("tuple[PreTrainedModel, dict[str, list[str]]]", loaded)
    except Exception as e:
        raise ModelLoadError(
            f"could not load the weights in {path}: {type(e).__name__}: {e}. The .safetensors files may be "
            "corrupt or truncated, or not match config.json (or not be a causal LM): re-download or re-export the model"
        ) from e
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise ModelLoadError(
            f"the weights in {path} lack {len(missing)} tensors the architecture needs (e.g. {missing[0]}): they don't "
            "match config.json, or a shard is missing. Re-download or re-export the model"
        )
    return model
