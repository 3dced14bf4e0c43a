"""Issue 18, option (b): how fast a better PyTorch CPU path gets, side by side with llama.cpp in process, in one run.

A prototype decoder for midline's default model (a Llama) in plain PyTorch, batch 1, greedy, over a preallocated KV
cache, with far fewer ops per step than the engine: the norms' weights and attention's scaling folded into the
matrices, q/k/v in one matrix product and gate/up in another, rotary as roll + multiply-add, one small attention per
layer (grouped query heads share their KV head's cache). Its weights come as fp32, bf16 (activations cast to bf16
for the matrix products only) or int8 weight-only (per-output-channel scales, `torch.ops.aten._weight_int8pack_mm`),
eagerly or through `torch.compile`; prompt-lookup drafts as the engine's (`NgramIndex`, 4 drafts) or none.

Rows: midline's engine as the server runs it (fp32, drafts on, the baseline and the reference tokens), the
prototype's variants, midline's llama.cpp engine as the server runs it (option (a), model/llamacpp.py: q8_0, drafts
on), and llama.cpp f32/bf16/q8_0 through llama-cpp-python's own loop (bench/cpu_engines.py's runner; GGUFs from
`export_gguf`; no drafts). Same prompt ids as bench/cpu_engines.py, 2 threads,
rounds interleaved, medians. Then the cost before the first token, in fresh subprocesses: `import torch,
transformers` + loading the model, against `import llama_cpp, tokenizers` + loading the q8_0 GGUF and the tokenizer
(wall time, peak RSS from /proc/self/status VmHWM).

    flock /tmp/cpu.lock .venv/bin/python bench/torch_cpu_paths.py --out bench/torch_cpu_paths.md   # ~5 min, 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
import torch
import torch.nn.functional as F
from cpu_engines import THREADS, Run, engine_runner, export_gguf, llama_runner, prompts

from midline.model import DEFAULT_MODEL_DIR
from midline.model.engine import CPU_LOOKUP, Engine, NgramIndex, common_prefix
from midline.model.llamacpp import LlamaCppEngine

PACKED_ROWS = 16  # int8: rows up to which `_weight_int8pack_mm` is used (decode steps, drafts, short prompt tails)


def pack(weight: torch.Tensor, kind: str) -> object:
    """A `[out, in]` fp32 weight in the form `matmul` takes for `kind`."""
    if kind == "fp32":
        return weight.contiguous()
    if kind == "bf16":
        return weight.to(torch.bfloat16).contiguous()
    scale = weight.abs().amax(dim=1).clamp_min(1e-8) / 127  # int8: one scale per output channel
    return (weight / scale[:, None]).round().to(torch.int8).contiguous(), scale.to(torch.bfloat16)


def matmul(x: torch.Tensor, weight: object) -> torch.Tensor:
    """x `[T, in]` times a packed weight `[out, in]`: `[T, out]`, fp32 for fp32 weights, else bf16.

    int8: `_weight_int8pack_mm` (its fast CPU kernel wants bf16 activations; with fp32 ones it is 10-30x slower)
    for a few rows; a prompt's many rows go through the weight dequantized to bf16 (the kernel is slow for many).
    """
    if isinstance(weight, tuple):
        q, scale = weight
        if x.shape[0] > PACKED_ROWS:
            return F.linear(x.to(torch.bfloat16), q.to(torch.bfloat16) * scale[:, None])
        return torch.ops.aten._weight_int8pack_mm(x.to(torch.bfloat16), q, scale)
    assert isinstance(weight, torch.Tensor)
    return F.linear(x if weight.dtype == x.dtype else x.to(weight.dtype), weight)


class FastDecoder:
    """A Llama model's decode step in few ops, over a preallocated KV cache; prefix reuse between calls."""

    def __init__(self, model: torch.nn.Module, kind: str, max_len: int = 1024, lookup: int = CPU_LOOKUP,
                 compile: bool = False):
        config, inner = model.config, model.model
        self.kind, self.lookup = kind, lookup
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps, self.ffn = config.rms_norm_eps, config.intermediate_size
        self.layers = []
        with torch.no_grad():
            for layer in inner.layers:
                attn, mlp = layer.self_attn, layer.mlp
                g = layer.input_layernorm.weight.float()
                qkv = torch.cat((attn.q_proj.weight * attn.scaling, attn.k_proj.weight, attn.v_proj.weight))
                gu = torch.cat((mlp.gate_proj.weight, mlp.up_proj.weight)) * layer.post_attention_layernorm.weight
                self.layers.append((pack(qkv.float() * g, kind), pack(attn.o_proj.weight.float(), kind),
                                    pack(gu.float(), kind), pack(mlp.down_proj.weight.float(), kind)))
            self.head = pack(model.lm_head.weight.float() * inner.norm.weight.float(), kind)
            embed = inner.embed_tokens.weight.float()
            self.embed = embed.to(torch.bfloat16) if kind != "fp32" else embed.clone()  # one row read per token
            positions = torch.arange(max_len)
            cos, sin = inner.rotary_emb(embed[:1], positions[None])
            half = self.head_dim // 2
            self.cos, self.sin = cos[0].float(), torch.cat((-sin[0, :, :half], sin[0, :, half:]), dim=1).float()
        self.k = [torch.zeros(self.kv_heads, max_len, self.head_dim) for _ in self.layers]
        self.v = [torch.zeros(self.kv_heads, max_len, self.head_dim) for _ in self.layers]
        self.bias = torch.full((max_len, max_len), float("-inf")).triu(1)  # additive causal mask
        self.max_len = max_len
        self.ids: list[int] = []  # what the cache holds
        self.step = torch.compile(self.forward, dynamic=True, fullgraph=True) if compile else self.forward
        self.compiled = compile

    def forward(self, tokens: torch.Tensor, start: int, last_only: bool = False) -> torch.Tensor:
        """Logits `[T, V]` (`[1, V]` if `last_only`) of `tokens` `[T]` at positions start..., writing their keys and
        values into the cache."""
        T, end, D, H, KV = tokens.shape[0], start + tokens.shape[0], self.head_dim, self.heads, self.kv_heads
        x = self.embed[tokens].float()
        cos, sin = self.cos[start:end, None], self.sin[start:end, None]
        half = D // 2
        for (qkv_w, o_w, gu_w, down_w), k_cache, v_cache in zip(self.layers, self.k, self.v):
            qkv = matmul(F.rms_norm(x, (x.shape[-1],), eps=self.eps), qkv_w).float()
            qk = qkv[:, : (H + KV) * D].view(T, H + KV, D)
            qk = torch.addcmul(qk * cos, qk.roll(half, -1), sin)
            k_cache[:, start:end] = qk[:, H:].transpose(0, 1)
            v_cache[:, start:end] = qkv[:, (H + KV) * D :].view(T, KV, D).transpose(0, 1)
            q = qk[:, :H].transpose(0, 1).reshape(KV, H // KV * T, D)  # a KV head's query heads as extra rows
            scores = torch.matmul(q, k_cache[:, :end].transpose(1, 2))
            if T > 1:
                scores = (scores.view(KV, H // KV, T, end) + self.bias[start:end, :end]).view(KV, -1, end)
            o = torch.matmul(torch.softmax(scores, dim=-1), v_cache[:, :end]).view(H, T, D).transpose(0, 1)
            x = x + matmul(o.reshape(T, H * D), o_w)
            gu = matmul(F.rms_norm(x, (x.shape[-1],), eps=self.eps), gu_w)
            x = x + matmul(F.silu(gu[:, : self.ffn]) * gu[:, self.ffn :], down_w)
        x = x[-1:] if last_only else x
        return matmul(F.rms_norm(x, (x.shape[-1],), eps=self.eps), self.head).float()

    def run(self, tokens: list[int], start: int) -> tuple[list[int], list[float]]:
        """Greedy tokens after each of `tokens` fed at `start` (after the last only for a prompt longer than
        PACKED_ROWS), and their log-probabilities (as the server needs)."""
        tensor = torch.tensor(tokens)
        if len(tokens) > PACKED_ROWS:  # a prompt: eager (`step` is compiled for short steps)
            logits = self.forward(tensor, start, last_only=True)
        else:
            logits = self.step(tensor, start)
        chosen = logits.argmax(-1)
        logprobs = torch.log_softmax(logits, -1).gather(-1, chosen[:, None])[:, 0]
        return chosen.tolist(), logprobs.tolist()

    def generate(self, ids: list[int], n: int, cold: bool) -> tuple[float, float, list[int]]:
        """(first token s, total s, tokens): `n` greedy tokens after `ids`, the cache's common prefix reused."""
        start = time.perf_counter()
        reused = 0 if cold else min(common_prefix(self.ids, ids), len(ids) - 1)
        chosen, _ = self.run(ids[reused:], reused)
        out, first = [chosen[-1]], time.perf_counter() - start
        drafts = NgramIndex(ids) if self.lookup else None
        position = len(ids)
        while len(out) < n:
            if drafts is not None:
                drafts.append(out[-1])
            draft = drafts.draft(min(self.lookup, n - len(out) - 1)) if drafts is not None else []
            chosen, _ = self.run([out[-1], *draft], position)
            accepted = next((i for i, (d, c) in enumerate(zip(draft, chosen)) if d != c), len(draft))
            new = chosen[: accepted + 1]
            if drafts is not None:
                for token in new[:-1]:
                    drafts.append(token)
            out.extend(new)
            position += accepted + 1
        out = out[:n]
        self.ids = ids + out[:-1]
        return first, time.perf_counter() - start, out

    def warm(self) -> float:
        """Seconds to compile (or warm up) the step for 1 and several tokens."""
        started = time.perf_counter()
        for T, start in ((1, 5), (3, 7), (5, 20)):
            self.step(torch.zeros(T, dtype=torch.long), start)
        self.ids = []
        return time.perf_counter() - started


def fast_runner(decoder: FastDecoder) -> Run:
    def run(ids: list[int], n: int, cold: bool) -> tuple[float, float, list[int]]:
        with torch.inference_mode():
            return decoder.generate(ids, n, cold)
    return run


STARTUP = {
    "torch": """
import time; t0 = time.perf_counter()
import torch, transformers
t1 = time.perf_counter()
from midline.model.loader import load_model
from midline.model import DEFAULT_MODEL_DIR
torch.set_num_threads(2)
model, tokenizer, _ = load_model(DEFAULT_MODEL_DIR, device="cpu")
t2 = time.perf_counter()
""",
    "llama.cpp": """
import time; t0 = time.perf_counter()
import llama_cpp, tokenizers
t1 = time.perf_counter()
llm = llama_cpp.Llama(model_path=GGUF, n_ctx=1024, n_threads=2, n_threads_batch=2, flash_attn=False, verbose=False)
tokenizer = tokenizers.Tokenizer.from_file(TOKENIZER)
t2 = time.perf_counter()
""",
    "midline llama.cpp": """
import time; t0 = time.perf_counter()
from midline.model.llamacpp import LlamaCppEngine
from midline.model import DEFAULT_MODEL_DIR
t1 = time.perf_counter()
engine = LlamaCppEngine.load(DEFAULT_MODEL_DIR, threads=2)
t2 = time.perf_counter()
""",
}
REPORT = """
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
import sys
print(json.dumps({"import": t1 - t0, "load": t2 - t1, "hwm": int(status["VmHWM"].split()[0]) / 1024,
                  "torch": "torch" in sys.modules}))
"""


def startup(kind: str, gguf: Path) -> dict[str, float]:
    """One fresh process: import and load times, its whole wall time (interpreter start included), peak RSS MiB."""
    code = f"import json\nGGUF, TOKENIZER = {str(gguf)!r}, {str(DEFAULT_MODEL_DIR / 'tokenizer.json')!r}\n"
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code + STARTUP[kind] + REPORT], capture_output=True, text=True,
                         check=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall"] = time.perf_counter() - started
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", default="int8,bf16", help="kinds also run through torch.compile ('' for none)")
    parser.add_argument("--out", type=Path, help="write the report (markdown) here too")
    args = parser.parse_args(argv)

    load = os.getloadavg()[0]
    engine = Engine.load(DEFAULT_MODEL_DIR, device="cpu", threads=THREADS)
    engine.warmup()  # as the server does
    torch.set_num_threads(THREADS)
    ids, typed = prompts(engine)
    runners: dict[str, Run] = {"midline PyTorch engine (fp32, drafts on)": engine_runner(engine)}
    compile_s: dict[str, float] = {}
    for kind in ("fp32", "bf16", "int8"):
        for lookup in (CPU_LOOKUP, 0):
            decoder = FastDecoder(engine.model, kind, lookup=lookup)
            decoder.warm()
            runners[f"torch {kind} fused, drafts {'on' if lookup else 'off'}"] = fast_runner(decoder)
    for kind in filter(None, args.compile.split(",")):
        decoder = FastDecoder(engine.model, kind, compile=True)
        with torch.inference_mode():
            compile_s[kind] = decoder.warm()
        runners[f"torch {kind} fused, compiled, drafts on"] = fast_runner(decoder)
    with tempfile.TemporaryDirectory() as folder:
        paths = {kind: export_gguf(DEFAULT_MODEL_DIR, Path(folder) / f"midline-{kind}.gguf", kind)
                 for kind in ("f32", "bf16", "q8_0")}
        for kind, path in paths.items():
            runners[f"llama.cpp {kind}"] = llama_runner(path)
        chosen = LlamaCppEngine.load(DEFAULT_MODEL_DIR, threads=THREADS)  # option (a), as the server runs it
        chosen.warmup()
        runners[f"midline llama.cpp engine ({chosen.decode_path}, drafts on)"] = engine_runner(chosen)
        times: dict[str, dict[str, list[float]]] = {name: {} for name in runners}
        tokens: dict[str, list[int]] = {}
        for _ in range(args.repeats):
            for name, run in runners.items():  # interleaved: one of each per round
                cold_first, _, _ = run(ids, 1, True)
                first, total, out = run(ids, args.tokens, True)
                _, keystroke, _ = run(typed, args.tokens, False)
                row = times[name]
                for key, value in (("cold", cold_first), ("total", total), ("keystroke", keystroke),
                                   ("decode", (total - first) / (args.tokens - 1))):
                    row.setdefault(key, []).append(value * 1000)
                tokens[name] = out
        starts: dict[str, list[dict[str, float]]] = {kind: [] for kind in STARTUP}
        for _ in range(3):
            for kind in starts:
                starts[kind].append(startup(kind, paths["q8_0"]))
    reference = next(iter(tokens.values()))
    lines = [
        f"Prompt {len(ids)} tokens, {args.tokens} new tokens, greedy, {THREADS} threads, medians of {args.repeats} "
        f"interleaved rounds; load average {load:.1f} before, {os.getloadavg()[0]:.1f} after; torch "
        f"{torch.__version__}; {platform.processor() or platform.machine()}",
        "",
        "| engine | cold first token ms | cold + tokens ms | decode ms/token | keystroke ms | same greedy tokens |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in times.items():
        same = next((i for i, (a, b) in enumerate(zip(tokens[name], reference)) if a != b), len(reference))
        med = {k: statistics.median(v) for k, v in row.items()}
        lines.append(f"| {name} | {med['cold']:.0f} | {med['total']:.0f} | {med['decode']:.2f} | "
                     f"{med['keystroke']:.0f} | {same}/{len(reference)} |")
    lines += ["", "torch.compile time (1, 3 and 5 token steps, dynamic shapes): "
              + (", ".join(f"{k} {v:.0f} s" for k, v in compile_s.items()) or "not run"), "",
              "Before the first token, fresh processes, medians of 3:", "",
              "| path | import s | load s | process wall s | peak RSS MiB | torch imported |",
              "|---|---:|---:|---:|---:|---:|"]
    for kind, label in (("torch", "`import torch, transformers` + `load_model` (fp32)"),
                        ("llama.cpp", "`import llama_cpp, tokenizers` + q8_0 GGUF + tokenizer.json"),
                        ("midline llama.cpp", "`LlamaCppEngine.load` (q8_0 GGUF cached)")):
        med = {k: statistics.median(r[k] for r in starts[kind]) for k in ("import", "load", "wall", "hwm")}
        torch_in = "yes" if any(r["torch"] for r in starts[kind]) else "no"
        lines.append(f"| {label} | {med['import']:.2f} | {med['load']:.2f} | {med['wall']:.2f} | {med['hwm']:.0f} | "
                     f"{torch_in} |")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
