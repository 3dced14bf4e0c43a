"""Memory and time of `midline-train finetune` on a model of Qwen2.5-Coder-1.5B's exact shape (issue 17).

A random-weight Qwen2 model with Qwen2.5-Coder-1.5B's shape (hidden 1536, 28 layers, 12 heads, 2 key/value heads,
MLP 8960, vocabulary 151,936, tied embeddings, RoPE theta 1e6: 1.54B parameters) and a small byte-level BPE
tokenizer that carries Qwen's real FIM tokens (so `fim.detect` finds the qwen format, as for the real model) is
written to `--work`/model once (bf16 safetensors, 3.1 GB); then `finetune.finetune` runs `--steps` LoRA steps on
`--repo` in this process. Reported (`--work`/result.json): the resident memory after the first step and the peak
over the later ones (on a GPU also torch's peak allocated memory), seconds per step and tokens per second over
steps 2 to n-1 (the first warms up, the last also measures the held-out loss), and the matmul FLOPs per second
those imply. Random weights: the losses mean nothing; time and memory are the real model's at this batch and length.

    flock /tmp/cpu.lock python bench/finetune_1p5b.py --work /tmp/ft1p5b --steps 4 --batch 1 --seq-len 512
    python bench/finetune_1p5b.py --work /tmp/ft1p5b --device cuda --steps 20 --batch 8 --seq-len 1024

On 2 CPU cores the first took 4 minutes and 13.5 GiB at its peak (fp32), after a minute writing the model; add
`--gradient-checkpointing` to measure it on too. The second measures on one GPU what BENCHMARKS.md estimates (bf16 and
gradient checkpointing are the GPU defaults).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sysconfig
import time
from pathlib import Path
from typing import Any

import torch

from midline.training import finetune as F

SHAPE: dict[str, Any] = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
             num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1e6,
             tie_word_embeddings=True, rms_norm_eps=1e-6)  # Qwen2.5-Coder-1.5B's config.json


def make_model(out: Path, seed: int = 0) -> None:
    """Qwen2.5-Coder-1.5B's shape, random weights (bf16), with a 4096-token tokenizer carrying Qwen's special
    tokens (the embedding keeps all 151,936 rows, as the real one has more rows than its tokenizer has tokens)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from midline.training.tiny_model import FAMILIES, stdlib_corpus
    from midline.training.tokenizer import train_tokenizer_on_texts

    spec, files = FAMILIES["qwen2"], stdlib_corpus(limit=100)
    tokenizer = train_tokenizer_on_texts((f.read_text(errors="replace") for f in files), 4096, out,
                                         length=len(files), special_tokens=spec.special_tokens, bos=spec.bos,
                                         eos=spec.eos, pad=spec.pad)
    tokenizer.save_pretrained(out)
    eot = tokenizer.convert_tokens_to_ids(spec.eos)
    config = Qwen2Config(**SHAPE, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM._from_config(config, torch_dtype=torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    (out / "README.md").write_text("# Random weights in Qwen2.5-Coder-1.5B's shape (bench/finetune_1p5b.py)\n")


def rss_gb(field: str = "VmRSS") -> float:
    """This process's resident memory now (VmRSS) or its peak (VmHWM), from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def after_step(step: int, seen: dict) -> None:
    """Note when each step ended; after the first (the model loaded, the optimizer's state made), the memory, and
    restart the peak so that the one reported is the later steps' (Linux: clear_refs 5)."""
    seen.setdefault("ends", []).append(time.perf_counter())
    if step == 1:
        seen["rss_after_step_1_gb"] = rss_gb()
        seen["peak_rss_load_and_step_1_gb"] = rss_gb("VmHWM")
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass


def step_figures(ends: list[float], tokens_per_step: int) -> dict:
    """Seconds per step and tokens per second over steps 2 to n-1: the first warms up, the last also measures the
    held-out loss and writes the checkpoint."""
    times = [b - a for a, b in zip(ends[:-2], ends[1:-1])]
    if not times:
        raise SystemExit("time at least 3 steps (--steps 3): the first and the last are not timed")
    seconds = sum(times) / len(times)
    return {"steps_timed": len(times), "s_per_step": seconds, "tokens_per_s": tokens_per_step / seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True, help="model/ (made once) and ft/ go here")
    p.add_argument("--repo", type=Path, default=Path(sysconfig.get_paths()["stdlib"]) / "json",
                   help="the repository to fine-tune on (default: the stdlib's json package, small)")
    p.add_argument("--steps", type=int, default=4, help="steps 2 to n-1 are timed")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--samples", type=int, default=1)
    p.add_argument("--valid-fraction", type=float, default=0.001,
                   help="held-out share (default: below any file's, so the smallest file alone: the held-out loss "
                        "before and after costs little)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto", help="auto: fp32 on a CPU, bf16 on a GPU")
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="default: on a GPU only")
    args = p.parse_args()

    model_dir = args.work / "model"
    if not (model_dir / "config.json").is_file():
        start = time.monotonic()
        maker = multiprocessing.get_context("spawn").Process(target=make_model, args=(model_dir,))
        maker.start()  # in a child process, so that this one's peak memory is the fine-tune's alone
        maker.join()
        if maker.exitcode != 0:
            raise SystemExit(f"making the model failed ({maker.exitcode})")
        print(f"wrote {model_dir} in {time.monotonic() - start:.0f} s", flush=True)

    config = F.FinetuneConfig(steps=args.steps, batch=args.batch, seq_len=args.seq_len, samples=args.samples,
                              valid_fraction=args.valid_fraction, eval_every=0, checkpoint_every=0,
                              device=args.device, dtype=args.dtype,
                              gradient_checkpointing=args.gradient_checkpointing, extensions=(".py",))
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    seen: dict = {}
    summary = F.finetune(model_dir, args.repo, args.work / "ft", config, fresh=True,
                         on_step=lambda step: after_step(step, seen))
    figures = step_figures(seen.pop("ends"), args.batch * (args.seq_len + 1))
    parameters = summary["parameters"] - summary["trainable"]
    non_embedding = parameters - SHAPE["vocab_size"] * SHAPE["hidden_size"]
    result = {
        "device": summary["device"], "dtype": summary["dtype"], "threads": torch.get_num_threads(),
        "gradient_checkpointing": summary["gradient_checkpointing"], "batch": args.batch, "seq_len": args.seq_len,
        "parameters": parameters, "non_embedding_parameters": non_embedding, "trainable": summary["trainable"],
        **figures,
        # frozen weights: forward 2N, backward to the activations 2N (no weight gradients); +2N recomputed under
        # gradient checkpointing. The output layer runs on the taught tokens only, so N is the non-embedding count.
        "flops_per_s": (6 if summary["gradient_checkpointing"] else 4) * non_embedding * figures["tokens_per_s"],
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,  # the whole run's
        **seen,
        "peak_rss_after_step_1_gb": rss_gb("VmHWM"),  # steps 2.. and the held-out loss after
        "peak_cuda_gb": torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else None,
        "total_s": summary["total_s"],
    }
    (args.work / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
