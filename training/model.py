"""Model building for the train stage: a transformers Llama (loads with AutoModelForCausalLM, peft, vLLM and
llama.cpp's converter), its optimizers (fused AdamW, or Muon for hidden matrices + AdamW for the rest),
and saving it as a Hugging Face model directory."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM


def build_model(*, vocab_size: int, hidden_size: int, layers: int, heads: int, kv_heads: int, intermediate_size: int,
                max_positions: int, rope_theta: float, tie_embeddings: bool, bos_id: int, eos_id: int,
                pad_id: int) -> LlamaForCausalLM:
    """A randomly initialized Llama (seed torch first for reproducible weights)."""
    if hidden_size % heads or heads % kv_heads:
        raise ValueError(f"hidden_size ({hidden_size}) must be a multiple of heads ({heads}), "
                         f"and heads of kv_heads ({kv_heads})")
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions, rope_theta=rope_theta, tie_word_embeddings=tie_embeddings,
        bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id,
                                               do_sample=False)
    return model


def load_model(path: Path) -> LlamaForCausalLM:
    """An existing Hugging Face Llama directory (safetensors), in fp32, to train further."""
    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True, use_safetensors=True)
    return model


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights count once


# -- optimizers -----------------------------------------------------------------------------------


def param_groups(model: torch.nn.Module, *, lr: float, weight_decay: float, muon_lr: float | None = None) -> list[dict]:
    """nanoGPT's groups: matrices decay, norms don't. With `muon_lr`, hidden matrices (in the decoder
    layers) form a Muon group, and embeddings/head/norms stay with AdamW (`use_muon` marks which)."""
    hidden, decay, no_decay = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if muon_lr is not None and p.ndim == 2 and ".layers." in f".{name}":
            hidden.append(p)
        elif p.ndim >= 2:
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "base_lr": lr},
              {"params": no_decay, "weight_decay": 0.0, "base_lr": lr}]
    if muon_lr is not None:
        # decoupled decay at the same rate per step as AdamW's (lr * weight_decay)
        muon = {"params": hidden, "weight_decay": weight_decay * lr / muon_lr, "base_lr": muon_lr, "use_muon": True}
        groups = [muon] + [{**g, "use_muon": False} for g in groups]
    return [{**g, "lr": g["base_lr"]} for g in groups]


def newton_schulz(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """An approximately orthogonal matrix near g's U V^T (Keller Jordan's quintic iteration, in bf16)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.bfloat16()
    tall = g.size(-2) > g.size(-1)
    if tall:
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        m = x @ x.mT
        x = a * x + (b * m + c * m @ m) @ x
    return x.mT if tall else x


class Muon(torch.optim.Optimizer):
    """Muon (github.com/KellerJordan/Muon): Nesterov momentum whose update for a 2-D hidden matrix is
    orthogonalized by Newton-Schulz; groups with use_muon=False (embeddings, head, norms) get AdamW."""

    def __init__(self, groups: list[dict], momentum: float = 0.95, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8):
        super().__init__(groups, {"momentum": momentum, "betas": betas, "eps": eps, "weight_decay": 0.0})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if group["use_muon"]:
                    if not state:
                        state["momentum_buffer"] = torch.zeros_like(p)
                    buf = state["momentum_buffer"]
                    buf.lerp_(p.grad, 1 - group["momentum"])
                    update = newton_schulz(p.grad.lerp(buf, group["momentum"]))
                    update = update.to(p.dtype) * max(1.0, p.size(-2) / p.size(-1)) ** 0.5
                else:
                    if not state:
                        state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                    state["step"] += 1
                    (b1, b2), t = group["betas"], state["step"]
                    state["exp_avg"].lerp_(p.grad, 1 - b1)
                    state["exp_avg_sq"].lerp_(p.grad.square(), 1 - b2)
                    update = state["exp_avg"] / (1 - b1**t)
                    update = update / ((state["exp_avg_sq"] / (1 - b2**t)).sqrt() + group["eps"])
                p.mul_(1 - lr * wd).add_(update, alpha=-lr)


def make_optimizer(model: torch.nn.Module, *, name: str, lr: float, muon_lr: float, weight_decay: float,
                   betas: tuple[float, float], device: torch.device) -> torch.optim.Optimizer:
    if name == "adamw":
        groups = param_groups(model, lr=lr, weight_decay=weight_decay)
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=device.type == "cuda")
    if name == "muon":
        return Muon(param_groups(model, lr=lr, weight_decay=weight_decay, muon_lr=muon_lr), betas=betas)
    raise ValueError(f"unknown optimizer {name!r}: use adamw or muon")
