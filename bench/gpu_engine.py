"""transformers' eager `generate` vs midline's engine, side by side, in one run; plus greedy equality checks.

Models: (a) the default model (model/default), (b) a random-weight model with Qwen2.5-Coder-1.5B's shapes (no
download: random init, bf16 on CUDA). Prompts of 500/1500/4000 tokens of this repository's code (a model with a
shorter context gets its longest prompt instead). For each: time to first token,
total time for 16/32/64 new tokens (exact lengths: end tokens are ignored), decode ms per token and tokens/s,
and the ratio to the memory-bandwidth floor (weights + KV bytes read per token over a device-to-device copy
bandwidth measured here). Keystroke case: the same prompt plus one token, prefix reused: time to first token.
Rows: transformers eager, midline, and midline + lookup (prompt-lookup speculative decoding, 10 draft tokens).
Then midline's greedy tokens vs transformers' `generate(do_sample=False)` on a few prompts, PASS/FAIL.

    python bench/gpu_engine.py --out bench/gpu_engine.md             # on the GPU machine (about 3-5 minutes)
    python bench/gpu_engine.py --quick                               # fewer prompts and repeats
    python bench/gpu_engine.py --device cpu --quick                  # tiny shapes: checks that the script works
    python bench/gpu_engine.py --quick --profile --out bench/gpu_engine.md   # plus where midline's time goes

`--profile`: after each model's rows, torch.profiler over midline's cold prefill of the longest prompt and over 64
decode tokens (that prompt reused): wall time, the top 15 ops by device (CPU: self CPU) time and, on CUDA, kernels per
token and GPU-busy time vs wall time (low busy: launch-bound). Its sections go at the end of the report.

Each configuration runs in its own try/except: a failure prints its traceback and the run goes on.
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import transformers
from transformers import Qwen2Config, Qwen2ForCausalLM

from midline.model import DEFAULT_MODEL_DIR
from midline.model.engine import CPU_THREADS, Engine
from midline.model.loader import load_model
from midline.model.fim import detect

ROOT = Path(__file__).resolve().parents[1]
LINES: list[str] = []  # the markdown report, written to --out
LOOKUP = 10  # draft tokens for the prompt-lookup rows
PROFILES: list[str] = []  # --profile sections, printed as they come and put at the end of the report


def say(text: str = "") -> None:
    print(text, flush=True)


def report(text: str = "") -> None:
    say(text)
    LINES.append(text)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, reps: int) -> float:
    """Median wall seconds of `fn()` over `reps` runs (device synchronized around each)."""
    times = []
    for _ in range(reps):
        sync(device)
        started = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def copy_bandwidth(device: torch.device) -> float:
    """Bytes per second of a large device-to-device copy, counting the bytes read and the bytes written."""
    n = (1 << 30) if device.type == "cuda" else (1 << 26)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    seconds = timed(lambda: [dst.copy_(src) for _ in range(10)], device, 5) / 10
    return 2 * n / seconds


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the weights one decode step reads (an untied input embedding is only looked up, not read)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())  # tied weights are one parameter
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    return total - (embed.numel() * embed.element_size() if embed is not head else 0)


def kv_bytes_per_position(model: torch.nn.Module) -> int:
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * next(model.parameters()).element_size()


def code_prompt(tokenizer, n: int, vocab: int, skip: int = 0) -> list[int]:
    """`n` tokens of real code (this repository's Python files, as the default model's tokenizer reads them)."""
    if id(tokenizer) not in _CODE:
        text = "\n".join(p.read_text(encoding="utf-8") for d in ("server", "model", "training")
                         for p in sorted((ROOT / d).glob("*.py")))
        _CODE[id(tokenizer)] = tokenizer.encode(text, add_special_tokens=False)
    return [i % vocab for i in _CODE[id(tokenizer)][skip : skip + n]]


_CODE: dict[int, list[int]] = {}


def random_prompt(n: int, vocab: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(16, vocab, (n,), generator=g).tolist()  # clear of special tokens


def hf_generate(model, ids: list[int], n: int, device: torch.device) -> list[int]:
    """transformers' eager greedy generate (DynamicCache), exactly `n` tokens: its end token is an id no token has."""
    input_ids = torch.tensor([ids], device=device)
    out = model.generate(
        input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False, max_new_tokens=n,
        eos_token_id=[model.config.vocab_size], pad_token_id=model.generation_config.pad_token_id or 0,
    )
    return out[0, len(ids):].tolist()


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# -- the two models ---------------------------------------------------------------------------------


def default_model(device: torch.device, dtype: torch.dtype, tokenizer_dir: Path):
    model, tokenizer, _ = load_model(tokenizer_dir, device=device, dtype=dtype)
    return model, tokenizer


def qwen_shaped(device: torch.device, dtype: torch.dtype, tiny: bool, layers: int | None = None):
    """Random weights with Qwen2.5-Coder-1.5B's shapes (tiny ones for a CPU check of the script)."""
    shape = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936)
    if tiny:
        shape = dict(hidden_size=96, intermediate_size=256, num_hidden_layers=2, num_attention_heads=6,
                     num_key_value_heads=2, vocab_size=4096)
    if layers:
        shape["num_hidden_layers"] = layers
    config = Qwen2Config(**shape, tie_word_embeddings=True, max_position_embeddings=32768, rope_theta=1e6,
                         rms_norm_eps=1e-6)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(config)
    model = model.to(dtype).eval()
    model.generation_config.pad_token_id = 0
    return model


# -- measurements -------------------------------------------------------------------------------------


def bench_model(name: str, model, tokenizer, device: torch.device, args, bandwidth: float,
                rows: list[dict]) -> Engine | None:
    params = sum(p.numel() for p in model.parameters())
    say(f"\n== {name}: {params / 1e6:.1f}M parameters, {next(model.parameters()).dtype}")
    fmt = detect(tokenizer.get_vocab())
    engine = None
    try:
        engine = Engine(model, tokenizer, device, fmt)
        started = time.perf_counter()
        engine.warmup()
        say(f"midline warm-up (compile + graph capture + checks): {time.perf_counter() - started:.1f} s; "
            f"static path: {engine.static}")
    except Exception:
        say(f"!! midline engine for {name} failed to warm up:\n{traceback.format_exc()}")
    vocab = model.config.vocab_size
    floor_weights = weight_bytes(model)
    kv = kv_bytes_per_position(model)
    max_context = engine.max_context if engine else getattr(model.config, "max_position_embeddings", 1 << 30)
    lengths = [n for n in args.prompts if n + max(args.lengths) <= max_context]
    if len(lengths) < len(args.prompts):  # a short-context model: its longest prompt instead of the ones it can't take
        longest = (max_context - max(args.lengths)) // 100 * 100
        say(f"{name}: context {max_context}: prompts {[n for n in args.prompts if n not in lengths]} "
            f"replaced by {longest}")
        lengths = sorted({*lengths, longest})
    for n_prompt in lengths:
        ids = code_prompt(tokenizer, n_prompt, vocab)
        floor_ms = (floor_weights + kv * (n_prompt + 32)) / bandwidth * 1000
        for runner in ("transformers eager", "midline", "midline + lookup"):
            row = {"model": name, "prompt": n_prompt, "runner": runner, "floor_ms": floor_ms}
            try:
                say(f"-- {name}, {n_prompt}-token prompt, {runner}")
                if runner == "transformers eager":
                    reps = args.hf_reps
                    hf_generate(model, ids, 2, device)  # warm
                    for n in (1, *args.lengths):
                        row[n] = timed(lambda: hf_generate(model, ids, n, device), device,
                                       reps if n <= 16 else max(1, reps - 1)) * 1000
                else:
                    if engine is None:
                        raise RuntimeError("no engine (warm-up failed)")
                    reps = args.reps
                    engine.lookup = LOOKUP if runner == "midline + lookup" else 0

                    def cold(n):
                        engine.clear_cache()
                        g = engine.generate(ids, max_new_tokens=n, ignore_eos=True)
                        assert len(g.token_ids) == n, (len(g.token_ids), g.finish_reason)

                    cold(2)  # warm
                    for n in (1, *args.lengths):
                        row[n] = timed(lambda: cold(n), device, reps) * 1000
                    engine.generate(ids, max_new_tokens=1)  # the cache now holds `ids`
                    typed = iter(random_prompt(4 * reps + 8, vocab, seed=7))

                    def keystroke(n):
                        g = engine.generate(ids + [next(typed)], max_new_tokens=n, ignore_eos=True)
                        assert g.reused_tokens == len(ids), (g.reused_tokens, len(ids))

                    row["key1"] = timed(lambda: keystroke(1), device, reps) * 1000
                    row["key16"] = timed(lambda: keystroke(16), device, reps) * 1000
                longest = max(args.lengths)
                row["decode_ms"] = (row[longest] - row[1]) / (longest - 1)
                row["tok_s"] = longest / row[longest] * 1000
                row["x_floor"] = row["decode_ms"] / floor_ms
                rows.append(row)
                say("   " + ", ".join(f"{k}: {v:.2f}" for k, v in row.items() if isinstance(v, float)))
            except Exception:
                say(f"!! {name}, {n_prompt} tokens, {runner} failed:\n{traceback.format_exc()}")
            if engine is not None:
                engine.lookup = 0
            free(device)
    if args.profile and engine is not None:
        profile_engine(name, engine, code_prompt(tokenizer, max(lengths), vocab), device)
    return engine


# -- --profile ----------------------------------------------------------------------------------------


def _us(event, *names: str) -> float:
    """The first of `names` that `event` has, in microseconds (the device-time names moved across torch versions)."""
    for name in names:
        try:
            value = getattr(event, name)
        except Exception:
            continue
        if isinstance(value, (int, float)):
            return float(value)
    return 0.0


def _self_device(e) -> float:
    return _us(e, "self_device_time_total", "self_cuda_time_total")


def top_ops(prof, on_cuda: bool, n: int = 15, width: int = 70) -> list[str]:
    """The `n` ops with the most self device time (CPU: self CPU time) as a fixed-width table in a ``` block."""
    from torch.autograd import DeviceType

    averages = [e for e in prof.key_averages()
                if not (e.device_type != DeviceType.CPU and getattr(e, "is_user_annotation", False))]
    key = _self_device if on_cuda else (lambda e: _us(e, "self_cpu_time_total"))
    on_device = [e for e in averages
                 if e.device_type != DeviceType.CPU or getattr(e, "is_legacy", False)]  # as torch's table sums it
    total = sum(key(e) for e in (on_device if on_cuda else averages)) or 1.0
    if on_cuda:
        columns = ["calls", "self dev ms", "dev %", "dev total ms", "self CPU ms", "CPU total ms"]
    else:
        columns = ["calls", "self CPU ms", "CPU %", "CPU total ms"]
    lines = ["```", f"{'op':<{width}} " + " ".join(f"{c:>12}" for c in columns)]
    for e in sorted(averages, key=key, reverse=True)[:n]:
        cpu = [_us(e, "self_cpu_time_total") / 1000, _us(e, "cpu_time_total") / 1000]
        if on_cuda:
            device_ms = _us(e, "device_time_total", "cuda_time_total") / 1000
            values = [_self_device(e) / 1000, 100 * key(e) / total, device_ms, *cpu]
        else:
            values = [cpu[0], 100 * key(e) / total, cpu[1]]
        name = e.key if len(e.key) <= width else e.key[: width - 3] + "..."
        lines.append(f"{name:<{width}} {e.count:>12} " + " ".join(f"{v:>12.3f}" for v in values))
    lines.append("```")
    return lines


def device_stats(prof, wall_ms: float, plain_ms: float, tokens: int) -> str:
    """Kernels per token and GPU-busy time (union of the device events' spans) vs wall time; CUDA-graph kernels count
    where CUPTI reports them (a replay itself is one cudaGraphLaunch on the CPU side)."""
    from torch.autograd import DeviceType

    events = prof.events()
    launches = {name: sum(1 for e in events if e.device_type == DeviceType.CPU and e.name == name)
                for name in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cudaGraphLaunch")}
    launched = ", ".join(f"{name} {count / tokens:.1f}" for name, count in launches.items() if count) or "none seen"
    device = [e for e in events if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)
              and "annotation" not in (getattr(e, "activity_type", None) or "")]
    if not device:
        return (f"CPU-side launch calls per token: {launched}; no device events recorded: kernel count and GPU-busy "
                "time not measurable")
    kernels = [e for e in device if (getattr(e, "activity_type", None) or "kernel") == "kernel"
               and not e.name.startswith(("Memcpy", "Memset"))]
    busy, end = 0.0, float("-inf")
    for start, stop in sorted((e.time_range.start, e.time_range.end) for e in device):
        busy += max(0.0, stop - max(start, end))
        end = max(end, stop)
    busy /= 1000
    kernel_ms = sum(e.time_range.elapsed_us() for e in kernels) / 1000
    return (f"kernels: {len(kernels)} ({len(kernels) / tokens:.1f} per token, "
            f"mean {1000 * kernel_ms / max(1, len(kernels)):.1f} us); "
            f"CPU-side launch calls per token: {launched}; "
            f"GPU busy {busy:.2f} ms = {100 * busy / wall_ms:.0f}% of the profiled wall, "
            f"{100 * busy / plain_ms:.0f}% of the unprofiled wall "
            f"(idle {wall_ms - busy:.2f} ms, {(wall_ms - busy) / tokens:.3f} ms per token)")


def profile_engine(name: str, engine: Engine, ids: list[int], device: torch.device, n_new: int = 64) -> None:
    """--profile: midline's cold prefill of `ids` (1 token out), then `n_new` decode tokens with `ids` reused."""
    from torch.profiler import ProfilerActivity, profile

    def note(text: str = "") -> None:
        say(text)
        PROFILES.append(text)

    def prefill():
        engine.clear_cache()
        engine.generate(ids, max_new_tokens=1)

    def decode():
        g = engine.generate(ids, max_new_tokens=n_new, ignore_eos=True)
        assert len(g.token_ids) == n_new and g.reused_tokens == len(ids) - 1, (len(g.token_ids), g.reused_tokens)

    on_cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    for label, setup, fn, tokens in (("cold prefill", None, prefill, 1),
                                     (f"decode, {n_new} tokens, prompt reused", prefill, decode, n_new)):
        try:
            if setup:
                setup()
            plain_ms = timed(fn, device, 1) * 1000  # unprofiled, and a warm-up for the profiled run
            if setup:
                setup()
            with profile(activities=activities, record_shapes=False, profile_memory=False, with_stack=False) as prof:
                started = time.perf_counter()
                fn()
                sync(device)
                wall_ms = (time.perf_counter() - started) * 1000
            note()
            note(f"### {name}, {len(ids)}-token prompt: {label} (static path: {engine.static})")
            note()
            note(f"wall {wall_ms:.2f} ms profiled, {plain_ms:.2f} ms unprofiled ({plain_ms / tokens:.3f} ms per token)")
            if on_cuda:
                note(f"\n{device_stats(prof, wall_ms, plain_ms, tokens)}")
            note()
            for line in top_ops(prof, on_cuda):
                note(line)
        except Exception:
            say(f"!! profile {name}, {label} failed:\n{traceback.format_exc()}")
        free(device)


def check_equality(name: str, engine: Engine, device: torch.device, n_new: int, checks: list[str]) -> None:
    """midline's greedy tokens vs transformers' generate(do_sample=False), including prefix reuse between prompts and,
    where the engine has it on, prompt-lookup decoding."""
    model = engine.model
    vocab = model.config.vocab_size
    base = code_prompt(engine.tokenizer, 300, vocab, skip=5000)
    prompts = [("code A", base), ("A + 3 tokens (prefix reuse)", base + random_prompt(3, vocab, seed=12)),
               ("A edited mid-way", base[:150] + random_prompt(20, vocab, seed=13) + base[150:]),
               ("code B", code_prompt(engine.tokenizer, 120, vocab, skip=9000)),
               ("random tokens", random_prompt(200, vocab, seed=14))]
    engine.clear_cache()
    for label, ids in prompts:
        try:
            # both exactly n_new tokens, end tokens included
            ours = engine.generate(ids, max_new_tokens=n_new, ignore_eos=True)
            theirs = hf_generate(model, ids, n_new, device)
            if ours.token_ids == theirs:
                verdict = f"PASS ({len(theirs)} tokens identical, {ours.reused_tokens} reused)"
            else:
                at = next((i for i, (a, b) in enumerate(zip(ours.token_ids, theirs)) if a != b),
                          min(len(ours.token_ids), len(theirs)))
                with torch.inference_mode():
                    logits = model(torch.tensor([ids + theirs[:at]], device=device)).logits[0, -1].float()
                top = logits.topk(2).values
                gap = float((top[0] - top[1]) / logits.abs().max())
                near_tie = next(model.parameters()).dtype != torch.float32 and gap < 0.02
                verdict = (f"{'PASS (near tie)' if near_tie else 'FAIL'}: first difference at token {at} "
                           f"of {len(theirs)} (ours {ours.token_ids[at:at + 1]}, transformers {theirs[at:at + 1]}; "
                           f"top-2 logit gap {gap:.2g} of max |logit|)")
        except Exception:
            verdict = f"FAIL (error):\n{traceback.format_exc()}"
        checks.append(f"| {name} | {label} | {verdict} |")
        say(f"   equality {name}, {label}: {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="one prompt length per model, fewer repeats")
    parser.add_argument("--out", type=Path, help="write the markdown report here")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR,
                        help="the default model dir (default: %(default)s)")
    parser.add_argument("--skip", default="", help="comma-separated: default, qwen, equality")
    parser.add_argument("--profile", action="store_true",
                        help="torch.profiler over midline's prefill and decode per model")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    tiny = device.type == "cpu"
    if tiny:
        torch.set_num_threads(CPU_THREADS)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if tiny:
        args.prompts = [200] if args.quick else [64, 200, 1000]
    else:
        args.prompts = [1500] if args.quick else [500, 1500, 4000]
    args.lengths = (16, 32, 64)
    args.reps, args.hf_reps = (3, 2) if args.quick else (5, 3)
    skip = set(filter(None, args.skip.split(",")))
    began = time.perf_counter()

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    bandwidth = copy_bandwidth(device)
    report(f"Device: {gpu}; torch {torch.__version__}, transformers {transformers.__version__}, "
           f"Python {platform.python_version()}; "
           f"{dtype}; measured copy bandwidth {bandwidth / 1e12:.2f} TB/s (read + write)")
    report(f"Command: python bench/gpu_engine.py {' '.join(argv if argv is not None else sys.argv[1:])}")

    rows: list[dict] = []
    checks: list[str] = []
    if "default" not in skip:
        try:
            model, tokenizer = default_model(device, dtype, args.model)
            engine = bench_model("default model", model, tokenizer, device, args, bandwidth, rows)
            if engine is not None and "equality" not in skip:
                check_equality(f"default ({str(dtype).removeprefix('torch.')})", engine, device, 32, checks)
                engine.lookup = LOOKUP
                check_equality(f"default ({str(dtype).removeprefix('torch.')}), lookup", engine, device, 32, checks)
            del engine, model
            free(device)
            if "equality" not in skip and dtype != torch.float32:  # float32 has no bf16 rounding: equality is exact
                model, tokenizer = default_model(device, torch.float32, args.model)
                engine = Engine(model, tokenizer, device, detect(tokenizer.get_vocab()))
                engine.warmup()
                check_equality("default (float32)", engine, device, 32, checks)
                engine.lookup = LOOKUP
                check_equality("default (float32), lookup", engine, device, 32, checks)
                del engine, model
                free(device)
        except Exception:
            say(f"!! default model failed:\n{traceback.format_exc()}")
    if "qwen" not in skip:
        try:
            _, tokenizer = default_model(torch.device("cpu"), torch.float32, args.model)
            model = qwen_shaped(device, dtype, tiny)
            engine = bench_model("Qwen2.5-Coder-1.5B shape" if not tiny else "Qwen2 tiny shape", model, tokenizer,
                                 device, args, bandwidth, rows)
            if engine is not None and "equality" not in skip:
                check_equality(f"1.5B shape ({str(dtype).removeprefix('torch.')})", engine, device, 32, checks)
                engine.lookup = LOOKUP
                check_equality(f"1.5B shape ({str(dtype).removeprefix('torch.')}), lookup", engine, device, 32, checks)
            del engine, model
            free(device)
            if "equality" not in skip and dtype != torch.float32:  # the same shapes in float32, 2 layers: exactly
                model = qwen_shaped(device, torch.float32, tiny, layers=2)
                engine = Engine(model, tokenizer, device, detect(tokenizer.get_vocab()))
                engine.warmup()
                check_equality("1.5B shape, 2 layers (float32)", engine, device, 32, checks)
                engine.lookup = LOOKUP
                check_equality("1.5B shape, 2 layers (float32), lookup", engine, device, 32, checks)
                del engine, model
                free(device)
        except Exception:
            say(f"!! 1.5B-shape model failed:\n{traceback.format_exc()}")

    report()
    report("| model | prompt | runner | first token ms | 16 tok ms | 32 tok ms | 64 tok ms | decode ms/tok "
           "| tok/s (64) | floor ms/tok | x floor | keystroke first token ms | keystroke 16 tok ms |")
    report("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        def f(key, fmt="{:.1f}"):
            return fmt.format(r[key]) if key in r else ""
        report(f"| {r['model']} | {r['prompt']} | {r['runner']} | {f(1)} | {f(16)} | {f(32)} | {f(64)} "
               f"| {f('decode_ms', '{:.2f}')} | {f('tok_s', '{:.0f}')} | {f('floor_ms', '{:.2f}')} "
               f"| {f('x_floor', '{:.2f}')} | {f('key1')} | {f('key16')} |")
    speedups = []
    for r in rows:
        base = next((b for b in rows if b["runner"] == "transformers eager" and b["model"] == r["model"]
                     and b["prompt"] == r["prompt"]), None)
        if r["runner"] != "transformers eager" and base:
            speedups.append(f"- {r['model']}, {r['prompt']} tokens, {r['runner']}: first token {base[1] / r[1]:.1f}x, "
                            f"64 tokens {base[64] / r[64]:.1f}x faster than transformers eager")
    if speedups:
        report()
        report("\n".join(speedups))
    if device.type == "cuda":
        report()
        report("Targets (H100):")
        targets = [
            ("1.5B shape, 1500 tokens: first token <= 20 ms", "Qwen2.5-Coder-1.5B shape", 1500, 1, 20.0),
            ("1.5B shape, 1500 tokens: decode <= 1.3 ms/token", "Qwen2.5-Coder-1.5B shape", 1500, "decode_ms", 1.3),
            ("1.5B shape, 1500 tokens: 64 tokens <= 110 ms", "Qwen2.5-Coder-1.5B shape", 1500, 64, 110.0),
            ("1.5B shape, 1500 tokens: keystroke first token <= 8 ms", "Qwen2.5-Coder-1.5B shape", 1500, "key1", 8.0),
            ("default model, longest prompt measured (<= 1500 tokens): 32 tokens <= 10 ms",
             "default model", None, 32, 10.0),
        ]
        for label, model_name, prompt, key, limit in targets:
            mine = [r for r in rows if r["model"] == model_name and r["runner"] == "midline"
                    and (prompt is None and r["prompt"] <= 1500 or r["prompt"] == prompt)]
            r = max(mine, key=lambda r: r["prompt"], default=None)
            if r is None or key not in r:
                report(f"- {label}: not measured")
            else:
                verdict = "met" if r[key] <= limit else f"MISSED by {r[key] - limit:.2f} ({r[key] / limit:.2f}x)"
                report(f"- {label}: {r[key]:.2f} at {r['prompt']} tokens -> {verdict}")
    if checks:
        report()
        report("| greedy equality | prompt | result |")
        report("|---|---|---|")
        for line in checks:
            report(line)
    if PROFILES:
        report()
        LINES.extend(["## Profiles (--profile)", *PROFILES])  # printed already, as they came
    report()
    report(f"Total run time {time.perf_counter() - began:.0f} s.")
    if args.out:
        args.out.write_text("\n".join(LINES) + "\n", encoding="utf-8")
        say(f"wrote {args.out}")
    return 0 if all("FAIL" not in c for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
